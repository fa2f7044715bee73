"""``merge()``: a detached copy of a row (and the objects its relations hold)
brought into the session. :class:`~uow.session.AsyncSession` inherits it from
:class:`MergeMixin`.

A copy is what a form, an API payload or another session hands over: objects
with the keys of stored rows, tracked by nobody. Merging one copies its
columns onto the tracked object with that key (read first if needed), and
merges the objects its relations hold the same way, so that a copy of a
parent or of a child becomes the tracked object for its row rather than a
new row with a key that is taken. Each copy in the graph is merged once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from uow.identity import LIVE, IdentityMap
from uow.model import NOT_LOADED, UNLINKED, Model, TableInfo, is_model

if TYPE_CHECKING:
    from uow.query import Query

M = TypeVar("M", bound=Model)


class MergeMixin:
    """``merge`` for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        _identity: IdentityMap

        def _table_of(self, obj: Any) -> TableInfo: ...
        def add(self, obj: Any) -> None: ...
        async def get(self, model: type[M], key: Any, *, with_deleted: bool = False) -> M | None: ...
        def query(self, model: type[M]) -> Query[M]: ...

    async def merge(self, obj: M) -> M:
        """The tracked object for ``obj``'s key with ``obj``'s column values
        copied onto it (read with ``get`` if needed), its relations given what
        ``obj``'s hold, each object there merged the same way (a parent, the
        children of a list); ``obj`` itself is added when no such row exists.
        The changes are flushed later, like assignments."""
        merged: M = await self._merge(obj, {})
        return merged

    async def _merge(self, obj: Any, merged: dict[int, Any], *, add: bool = True) -> Any:
        """:meth:`merge` of one object of the graph; ``merged``: id of each
        copy merged so far -> what it became. A new object is added unless
        ``add`` is false: a new child of a list is added with the owner that
        lists it, which fills its foreign key (perhaps a NOT NULL one) then."""
        done = merged.get(id(obj))
        if done is not None:
            return done
        table = self._table_of(obj)
        state = self._identity.state_of(obj)
        if state is not None and state.status in LIVE:
            merged[id(obj)] = obj
            return obj
        key = table.key_of(obj)
        target = None if key is None else await self.get(type(obj), key, with_deleted=True)
        merged[id(obj)] = obj if target is None else target
        # every read happens before any assignment, so no flush in between sees half a merge
        relations = await self._merged_relations(obj, target, table, merged)
        if target is None:
            for name, value in relations.items():
                setattr(obj, name, value)
            if add:
                self.add(obj)
            return obj
        for name, value in zip(table.column_names, table.values_of(obj)):
            setattr(target, name, value)
        for name, value in relations.items():  # as if assigned on the target: they win over its keys
            setattr(target, name, value)
        return target

    async def _merged_relations(
        self, obj: Any, target: Any | None, table: TableInfo, merged: dict[int, Any]
    ) -> dict[str, Any]:
        """What each relation ``obj`` holds becomes on the merged object: a
        parent merged (``None`` for none), a list of children merged one by
        one. A list of a relation that deletes orphans is read on ``target``
        first, so that the children it leaves out are orphans."""
        values: dict[str, Any] = {}
        for name, relation in table.relations.items():
            held = getattr(table.model, name).raw(obj)
            if held is NOT_LOADED:
                continue
            if not relation.many:
                if held is None or held is UNLINKED:
                    values[name] = None
                else:
                    values[name] = await self._merge(held, merged) if is_model(held) else held
                continue
            if not isinstance(held, (list, tuple)):
                continue
            descriptor = getattr(table.model, name)
            if target is not None and relation.delete_orphans and descriptor.raw(target) is NOT_LOADED:
                # read before the children are merged: their merge assigns on tracked
                # objects, which this read's autoflush would write half done
                key_column = table.key_column
                await self.query(table.model).filter(**{key_column: table.key_of(target)}).include(descriptor).one()
            values[name] = [await self._merge(child, merged, add=False) if is_model(child) else child for child in held]
        return values


__all__ = ["MergeMixin"]
