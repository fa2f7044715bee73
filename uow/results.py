"""Results of ``session.execute(select(...))``.

A select of one model yields model objects, so :class:`Result` and its
:meth:`~Result.scalars` view hold the same objects; ``scalars()`` is there so
code written against SQLAlchemy's ``(await session.execute(stmt)).scalars().all()``
reads the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from uow.errors import MultipleResultsFound, NoResultFound

M = TypeVar("M")


class ScalarResult(Generic[M]):
    """The objects a statement returned, in order."""

    __slots__ = ("_objects", "_model_name")

    def __init__(self, objects: Sequence[M], model_name: str):
        self._objects = list(objects)
        self._model_name = model_name

    def all(self) -> list[M]:
        """Every object (a new list)."""
        return list(self._objects)

    def first(self) -> M | None:
        """The first object, or ``None``."""
        return self._objects[0] if self._objects else None

    def one(self) -> M:
        """The only object; :class:`NoResultFound` or :class:`MultipleResultsFound` otherwise."""
        found = self.one_or_none()
        if found is None:
            raise NoResultFound(f"the statement returned no {self._model_name}")
        return found

    def one_or_none(self) -> M | None:
        """The only object or ``None``; :class:`MultipleResultsFound` when several."""
        if len(self._objects) > 1:
            raise MultipleResultsFound(f"the statement returned {len(self._objects)} {self._model_name} rows")
        return self.first()

    def __iter__(self) -> Iterator[M]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._objects)} {self._model_name}>"


class Result(ScalarResult[M]):
    """What ``session.execute(stmt)`` returns: the objects, with ``scalars()``."""

    __slots__ = ()

    def scalars(self) -> ScalarResult[M]:
        """The same objects as a :class:`ScalarResult`."""
        return ScalarResult(self._objects, self._model_name)


__all__ = ["Result", "ScalarResult"]
