"""The query builder and statements.

Two spellings of the same read, sharing every builder method:

- ``session.query(User)`` gives a :class:`Query` bound to the session, with
  terminal coroutines (``all``, ``first``, ``one``, ``count``, ``update`` ...);
- ``select(User)`` gives a :class:`SelectStatement`, bound to nothing, run by
  ``session.execute(stmt)``, ``session.scalars(stmt)``, ``session.stream(stmt)``
  or ``session.parallel_exec([...])``.

Builders are immutable: every method returns a new one, so a base query can be
shared and refined::

    adults = session.query(User).filter(age__gte=18)
    first_ten = await adults.order_by("-age", "name").limit(10).all()
    stmt = select(User).where(User.age >= 18).order_by(User.name)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from uow.conditions import And, Compare, Condition, IsNull, Not
from uow.criteria import compile_criterion, compile_lookups, order_terms
from uow.errors import MultipleResultsFound, NoResultFound, QueryError
from uow.model import Model, RelationDescriptor, TableInfo, table_info
from uow.statements import OrderBy, Select

if TYPE_CHECKING:
    from typing import Self

    from uow.session import AsyncSession

M = TypeVar("M", bound=Model)

Deleted = Literal["exclude", "include", "only"]


class _Builder(Generic[M]):
    """The builder methods :class:`Query` and :class:`SelectStatement` share.

    Their arguments are typed ``Any``: a type checker sees ``User.age`` as an
    ``int`` and ``Post.author`` as a ``User | None`` (the instance types), while
    at run time they are column expressions and relations, checked here.
    """

    __slots__ = (
        "model",
        "table",
        "_where",
        "_order",
        "_limit",
        "_offset",
        "_includes",
        "_deleted",
        "_autoflush",
        "_for_update",
    )

    model: type[M]
    table: TableInfo
    _where: tuple[Condition, ...]
    _order: tuple[OrderBy, ...]
    _limit: int | None
    _offset: int | None
    _includes: tuple[RelationDescriptor, ...]
    _deleted: Deleted
    _autoflush: bool | None
    _for_update: bool

    def _init(self, model: type[M]) -> None:
        self.model = model
        self.table = table_info(model)
        self._where = ()
        self._order = ()
        self._limit = None
        self._offset = None
        self._includes = ()
        self._deleted = "exclude"
        self._autoflush = None
        self._for_update = False

    def _copy(self, **changes: Any) -> Self:
        clone = object.__new__(type(self))
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                object.__setattr__(clone, name, changes.get(name, getattr(self, name)))
        return clone

    # --- which rows --------------------------------------------------------------

    def where(self, *criteria: Any) -> Self:
        """Keep rows matching every criterion: column expressions
        (``User.age >= 18``), :class:`~uow.criteria.Q` objects or conditions."""
        return self._copy(_where=self._where + tuple(compile_criterion(self.table, c) for c in criteria))

    def filter(self, *criteria: Any, **lookups: Any) -> Self:
        """Keep rows matching every criterion and lookup: ``filter(age__gte=18,
        name="Ann")``. Lookups: eq (the default), ne, lt, lte, gt, gte, in,
        not_in, is_null, between, contains, icontains, startswith, istartswith,
        endswith, iendswith."""
        query = self.where(*criteria)
        if lookups:
            query = query._copy(_where=(*query._where, compile_lookups(self.table, lookups)))
        return query

    def exclude(self, *criteria: Any, **lookups: Any) -> Self:
        """Leave out rows matching all of the criteria and lookups. SQL's
        three-valued logic holds: ``exclude(age__gt=3)`` also leaves out rows
        whose ``age`` is NULL."""
        parts = [compile_criterion(self.table, c) for c in criteria]
        if lookups:
            parts.append(compile_lookups(self.table, lookups))
        if not parts:
            return self
        return self._copy(_where=(*self._where, Not(parts[0] if len(parts) == 1 else And(tuple(parts)))))

    def with_deleted(self) -> Self:
        """Include soft-deleted rows (in the result and in ``include``-d relations)."""
        return self._copy(_deleted="include")

    def only_deleted(self) -> Self:
        """Only soft-deleted rows (``include``-d relations then keep soft-deleted rows too)."""
        if self.table.soft_delete_column is None:
            raise QueryError(
                f"{self.model.__name__} has no soft-delete column; only_deleted() needs the SoftDelete mixin"
            )
        return self._copy(_deleted="only")

    # --- order and window ----------------------------------------------------------

    def order_by(self, *keys: Any) -> Self:
        """Sort by columns: ``order_by("-age", "name")`` or
        ``order_by(User.age.desc(), User.name)``. Later calls add terms after
        earlier ones. NULLs come first ascending and last descending."""
        return self._copy(_order=self._order + order_terms(self.table, keys))

    def limit(self, count: int | None) -> Self:
        """Return at most ``count`` rows (``None``: no limit)."""
        return self._copy(_limit=_window("limit", count))

    def offset(self, count: int | None) -> Self:
        """Skip the first ``count`` rows."""
        return self._copy(_offset=_window("offset", count))

    # --- relations and options -----------------------------------------------------

    def include(self, *relations: Any) -> Self:
        """Load relations with one extra query per relation (an ``IN`` on the keys).

        Each relation applies to the objects of its model loaded most recently:
        the query's own rows, or those an earlier relation of the same
        ``include`` loaded. So nesting is spelled by listing the path in order::

            session.query(User).include(User.posts, Post.comments)
            session.query(Post).include(Post.author)
            session.query(Category).include(Category.parent, Category.parent)  # grandparents

        A relation that is not included raises
        :class:`~uow.errors.RelationNotLoadedError` when read; nothing is ever
        loaded lazily.
        """
        loaded = {self.model, *(_target(r) for r in self._includes)}
        for relation in relations:
            if not isinstance(relation, RelationDescriptor):
                raise QueryError(f"include() takes relations such as Post.author, not {relation!r}")
            if relation.model not in loaded:
                raise QueryError(
                    f"include({relation.model.__name__}.{relation.name}): no {relation.model.__name__} objects "
                    f"are loaded by this query; include a relation that loads them first, for example "
                    f"include(<{self.model.__name__}.relation to {relation.model.__name__}>, "
                    f"{relation.model.__name__}.{relation.name})"
                )
            loaded.add(_target(relation))
        return self._copy(_includes=self._includes + relations)

    def no_autoflush(self) -> Self:
        """Do not flush the session's pending changes before this read."""
        return self._copy(_autoflush=False)

    def for_update(self) -> Self:
        """Lock the rows read until the transaction ends, so that no other
        transaction changes or deletes them meanwhile: ``SELECT … FOR UPDATE``
        on PostgreSQL (those rows), the database's write lock on SQLite and
        the memory adapter (a writer at a time). Another transaction's locking
        read or write of them waits.

        The read flushes first, even with autoflush off, and the tracked
        objects of the rows it reads take the rows' values, which another
        transaction may have changed since the session read them: what is
        computed from them next is computed from what is locked. Relations
        in ``include`` are read without a lock; ``count``, ``exists``,
        ``stream`` and ``parallel_exec`` refuse a locking read.
        """
        return self._copy(_for_update=True)

    # --- compilation -----------------------------------------------------------

    def condition(self) -> Condition | None:
        """The WHERE condition, soft-delete filter included."""
        items = list(self._where)
        column = self.table.soft_delete_column
        if column is not None and self._deleted != "include":
            items.append(IsNull(column, negate=self._deleted == "only"))
        if not items:
            return None
        return items[0] if len(items) == 1 else And(tuple(items))

    def compile(self, mode: Literal["rows", "count", "exists"] = "rows") -> Select:
        """The adapter-level :class:`~uow.statements.Select` for this read."""
        if mode == "rows":
            return Select(
                self.table, self.condition(), self._order, self._limit, self._offset, for_update=self._for_update
            )
        if self._for_update:
            raise QueryError(f"{mode}() locks no rows: read them with for_update().all() instead")
        return Select(self.table, self.condition(), (), self._limit, self._offset, mode=mode)

    @property
    def includes(self) -> tuple[RelationDescriptor, ...]:
        """The relations to load, in order."""
        return self._includes

    @property
    def deleted(self) -> Deleted:
        """``"exclude"`` (default), ``"include"`` or ``"only"`` soft-deleted rows."""
        return self._deleted

    @property
    def autoflush(self) -> bool | None:
        """``False`` after :meth:`no_autoflush`; ``None`` follows the session."""
        return self._autoflush

    @property
    def locks(self) -> bool:
        """Whether the read locks its rows (:meth:`for_update`)."""
        return self._for_update

    def __repr__(self) -> str:
        parts = [f"{type(self).__name__}({self.model.__name__})"]
        condition = self.condition()
        if condition is not None:
            parts.append(f"where={condition!r}")
        if self._order:
            parts.append("order_by=" + ", ".join(("-" if o.descending else "") + o.column for o in self._order))
        if self._limit is not None:
            parts.append(f"limit={self._limit}")
        if self._offset is not None:
            parts.append(f"offset={self._offset}")
        if self._includes:
            parts.append("include=" + ", ".join(repr(r) for r in self._includes))
        if self._for_update:
            parts.append("for_update")
        return " ".join(parts)


def _window(name: str, count: int | None) -> int | None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise QueryError(f"{name}() takes a whole number >= 0 or None, not {count!r}")
    return count


def _target(relation: RelationDescriptor) -> type[Any]:
    return table_info(relation.model).relations[relation.name].target  # type: ignore[no-any-return]


class SelectStatement(_Builder[M]):
    """A read of one model, run by ``session.execute(stmt)`` and friends; make
    one with :func:`select`."""

    __slots__ = ()

    def __init__(self, model: type[M]):
        self._init(model)


def select(model: type[M]) -> SelectStatement[M]:
    """A statement reading ``model`` rows::

    stmt = select(User).where(User.age >= 18).order_by(User.name).limit(10)
    users = (await session.execute(stmt)).scalars().all()
    """
    return SelectStatement(model)


class Query(_Builder[M]):
    """A read bound to a session: ``session.query(User)``. Build it up, then
    await one of its terminals."""

    __slots__ = ("session",)

    session: AsyncSession

    def __init__(self, session: AsyncSession, model: type[M]):
        self._init(model)
        self.session = session

    # --- terminals ---------------------------------------------------------------

    async def all(self) -> list[M]:
        """Every matching object, through the identity map."""
        return await self.session._read_objects(self)

    async def first(self) -> M | None:
        """The first matching object, or ``None`` (reads at most one row; a
        smaller ``limit``, ``limit(0)``, still applies)."""
        found = await self.session._read_objects(self.limit(1 if self._limit is None else min(self._limit, 1)))
        return found[0] if found else None

    async def one(self) -> M:
        """The only matching object; :class:`~uow.errors.NoResultFound` when
        there is none, :class:`~uow.errors.MultipleResultsFound` when several."""
        found = await self.one_or_none()
        if found is None:
            raise NoResultFound(f"no {self.model.__name__} matches {self!r}")
        return found

    async def one_or_none(self) -> M | None:
        """The only matching object or ``None``; :class:`MultipleResultsFound` when several."""
        found = await self.session._read_objects(self.limit(2 if self._limit is None else min(self._limit, 2)))
        if len(found) > 1:
            raise MultipleResultsFound(f"more than one {self.model.__name__} matches {self!r}")
        return found[0] if found else None

    async def count(self) -> int:
        """How many rows match (``limit`` and ``offset`` apply)."""
        return int(await self.session._read_value(self, "count"))

    async def exists(self) -> bool:
        """Whether any row matches."""
        return bool(await self.session._read_value(self, "exists"))

    async def get(self, key: Any) -> M | None:
        """The matching object with primary key ``key``, or ``None``. Without
        filters, includes or :meth:`for_update` a tracked object is returned
        without a query.

        Only the filters (and includes) apply: a get by key ignores the
        query's ``order_by``, ``limit`` and ``offset``, with filters or without.
        """
        plain = not self._where and not self._includes and self._deleted != "only" and not self._for_update
        if plain:
            return await self.session.get(self.model, key, with_deleted=self._deleted == "include")
        key = self.session._check_key(self.table, key)
        by_key = self._copy(_order=(), _limit=None, _offset=None)
        return await by_key.where(Compare(self.table.key_column, "eq", key)).first()

    def stream(self, chunk_size: int = 1000, *, track: bool = False) -> AsyncGenerator[M, None]:
        """``session.stream(self, chunk_size=chunk_size, track=track)``."""
        return self.session.stream(self, chunk_size=chunk_size, track=track)

    def __aiter__(self) -> AsyncIterator[M]:
        return self.stream()

    # --- bulk writes -------------------------------------------------------------

    async def update(self, **values: Any) -> int:
        """``UPDATE ... SET values WHERE <this query's condition>``, now;
        returns the number of rows changed. Journaled as one ``BulkUpdated``
        event; tracked objects that match are updated in place."""
        self._check_bulk("update")
        return await self.session._bulk_update_where(self.table, values, self.condition())

    async def delete(self) -> int:
        """``DELETE ... WHERE <this query's condition>``, now (a real delete,
        also on soft-delete models); returns the number of rows deleted.
        Journaled as one ``BulkDeleted`` event; tracked objects that match stop
        being tracked."""
        self._check_bulk("delete")
        return await self.session._bulk_delete_where(self.table, self.condition())

    def _check_bulk(self, operation: str) -> None:
        if self._limit is not None or self._offset is not None:
            raise QueryError(f"{operation}() applies to every matching row; drop limit() and offset()")
        if self._includes:
            raise QueryError(f"{operation}() does not load relations; drop include()")


Readable = Query[Any] | SelectStatement[Any]
"""Anything the session's read methods accept."""


def readables(reads: Iterable[Readable]) -> Sequence[Readable]:
    """The reads as a list, each checked to be a query or statement."""
    listed = list(reads)
    for read in listed:
        if not isinstance(read, _Builder):
            raise QueryError(f"expected a query or select() statement, not {read!r}")
    return listed


__all__ = ["Query", "Readable", "SelectStatement", "select"]
