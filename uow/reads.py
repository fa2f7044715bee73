"""The session's read methods: ``query``, ``execute``, ``scalars``, ``stream``,
``parallel_exec``. :class:`AsyncSession` inherits them from :class:`ReadsMixin`.

Rules every read keeps (see ``docs/querying.md``):

- Rows go through the identity map. A row whose object the session tracks
  gives that same object, and its values are left alone: unflushed changes are
  never overwritten by a read (``expire(obj)`` opts in to overwriting it on
  the next read, ``refresh(obj)`` reloads it now). A row deleted in the session
  but not flushed yet is left out.
- Reads flush first when the session's ``autoflush`` is on (the default), so
  they see the session's own changes; ``query.no_autoflush()`` skips it.
- Relations are loaded only by ``include``, never lazily.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import msgspec

from uow.adapter import Connection
from uow.assignments import relation_assigned
from uow.conditions import And, In
from uow.errors import QueryError, SessionStateError
from uow.identity import IdentityMap, InstanceState, Status
from uow.loading import RelationLoader
from uow.model import Model, TableInfo
from uow.query import Query, Readable, readables
from uow.results import Result, ScalarResult
from uow.statements import Select

if TYPE_CHECKING:
    from uow.engine import Engine
    from uow.query import _Builder

M = TypeVar("M", bound=Model)
M1 = TypeVar("M1", bound=Model)
M2 = TypeVar("M2", bound=Model)
M3 = TypeVar("M3", bound=Model)


class ReadsMixin:
    """Reads for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        engine: Engine
        autoflush: bool
        _identity: IdentityMap
        _connection: Connection | None
        _in_tx: bool
        _transactions: int
        _gone: list[InstanceState]
        _streams_open: int
        _new_ref: Callable[[], int]
        _refs: Iterator[int]

        def _exclusive(self, operation: str) -> AbstractContextManager[None]: ...
        async def _flush(self) -> Any: ...
        async def _connection_for_work(self) -> Connection: ...
        def _load_row(self, table: TableInfo, row: Any) -> InstanceState: ...
        def _note_locked(self, table: TableInfo, rows: Sequence[Sequence[Any]]) -> None: ...
        def _table(self, model: type[Any]) -> TableInfo: ...

    # --- public -------------------------------------------------------------------

    def query(self, model: type[M]) -> Query[M]:
        """A query of ``model`` rows bound to this session::

        adults = await session.query(User).filter(age__gte=18).order_by("-age").all()
        """
        self._table(model)
        return Query(self, model)  # type: ignore[arg-type]

    async def execute(self, statement: _Builder[M]) -> Result[M]:
        """Run a ``select(...)`` statement (or a query); the result holds the
        objects: ``(await session.execute(stmt)).scalars().all()``."""
        return Result(await self._read_objects(statement), statement.model.__name__)

    async def scalars(self, statement: _Builder[M]) -> ScalarResult[M]:
        """``(await session.execute(statement)).scalars()``."""
        return (await self.execute(statement)).scalars()

    async def scalar(self, statement: _Builder[M]) -> M | None:
        """The first object the statement returns, or ``None``."""
        limit = statement._limit
        found = await self._read_objects(statement.limit(1 if limit is None else min(limit, 1)))
        return found[0] if found else None

    async def stream(
        self, statement: _Builder[M], *, chunk_size: int = 1000, track: bool = False
    ) -> AsyncGenerator[M, None]:
        """Yield the objects of a read chunk by chunk, holding about one chunk
        in memory (a server-side cursor on PostgreSQL, chunked reads elsewhere)::

            async for user in session.stream(select(User), chunk_size=500):
                send_newsletter(user)

        Objects the session already tracks are yielded as they are (same
        object, values untouched); other rows become objects the session does
        **not** track, unless ``track=True``, since keeping them would hold every
        row in memory. Change an untracked one through ``await session.merge(obj)``.
        Relations in ``include`` are loaded per chunk, one query per relation.

        The stream reads inside the session's transaction: committing or
        rolling back before it is exhausted makes its next chunk raise
        :class:`~uow.errors.SessionStateError`. Close a stream you
        leave early with ``contextlib.aclosing`` to free its cursor at once.
        """
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise QueryError(f"chunk_size must be a whole number >= 1, not {chunk_size!r}")
        if statement.locks:
            raise QueryError("stream() locks no rows: read them with for_update().all() instead")
        table = statement.table
        with self._exclusive("stream"):
            await self._autoflush(statement)
            connection = await self._connection_for_work()
            # the pool may hand the same connection back for a later transaction:
            # the stream goes on only in the transaction it began in
            transaction = self._transactions
            chunks = connection.stream(statement.compile(), chunk_size)
        self._streams_open += 1
        try:
            while True:
                with self._exclusive("stream"):
                    if self._connection is not connection or not self._in_tx or self._transactions != transaction:
                        raise SessionStateError(
                            "the transaction this stream reads in ended (commit or rollback) before the stream "
                            "was exhausted; finish the stream first"
                        )
                    try:
                        rows = await chunks.__anext__()
                    except StopAsyncIteration:
                        return
                    objects = self._materialize_all(table, rows, track)
                    if statement.includes:
                        await self._relation_loader(connection.fetch, statement, track_all=track).load(
                            statement.model, objects, statement.includes
                        )
                for obj in objects:
                    yield obj
        finally:
            self._streams_open -= 1
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]

    @overload
    async def parallel_exec(self, reads: tuple[_Builder[M1]]) -> tuple[list[M1]]: ...
    @overload
    async def parallel_exec(self, reads: tuple[_Builder[M1], _Builder[M2]]) -> tuple[list[M1], list[M2]]: ...
    @overload
    async def parallel_exec(
        self, reads: tuple[_Builder[M1], _Builder[M2], _Builder[M3]]
    ) -> tuple[list[M1], list[M2], list[M3]]: ...
    @overload
    async def parallel_exec(self, reads: Iterable[Readable]) -> list[list[Any]]: ...

    async def parallel_exec(self, reads: Iterable[Any]) -> Sequence[list[Any]]:
        """Run independent reads concurrently, each on its own pooled
        connection, and return their objects in the order given::

            users, posts = await session.parallel_exec([select(User), session.query(Post).include(Post.author)])

        Given a tuple of up to three reads, it returns a tuple, whose lists a
        type checker knows the models of.

        The reads run **outside the session's transaction**, each in a short
        read transaction of its own: they see committed data only, not this
        session's pending or flushed-but-uncommitted changes (so nothing is
        autoflushed). Their rows still go through the identity map, and rows
        whose object the session deleted (flushed in its open transaction or
        not flushed yet) are left out, in ``include``-d relations too, as a
        read inside the transaction leaves them out.
        """
        listed = readables(reads)
        if any(read.locks for read in listed):
            raise QueryError(
                "parallel_exec() reads outside the session's transaction, where a lock would not last: "
                "read with for_update() through the session"
            )
        results: list[list[Any]] = [[] for _ in listed]
        gone: dict[TableInfo, frozenset[Any]] = {}

        async def run(index: int, read: _Builder[Any]) -> None:
            connection = await self.engine.acquire()
            clean = False
            try:
                await connection.begin()
                fetch = _leaving_out(gone, connection.fetch) if gone else connection.fetch
                results[index] = await self._load(read, fetch, track_all=True)
                with anyio.CancelScope(shield=True):
                    await connection.rollback()
                clean = True
            finally:
                with anyio.CancelScope(shield=True):
                    await self.engine.adapter.release(connection, discard=not clean)

        with self._exclusive("parallel_exec"):
            gone.update(self._keys_deleted_in_transaction())
            try:
                async with anyio.create_task_group() as group:
                    for index, read in enumerate(listed):
                        group.start_soon(run, index, read)
            except ExceptionGroup as failed:  # the reads' own errors, not a group of them
                raise _first_error(failed) from failed
        return tuple(results) if isinstance(reads, tuple) else results

    # --- used by Query ------------------------------------------------------------

    async def _read_objects(self, read: _Builder[M]) -> list[M]:
        with self._exclusive("query"):
            if read.locks:
                await self._flush()  # the objects it reads take their rows' values: none may hold changes
            else:
                await self._autoflush(read)
            connection = await self._connection_for_work()
            return await self._load(read, connection.fetch, track_all=True)

    async def _read_value(self, read: _Builder[Any], mode: Literal["count", "exists"]) -> Any:
        with self._exclusive("query"):
            await self._autoflush(read)
            connection = await self._connection_for_work()
            rows = await connection.fetch(read.compile(mode))
            return rows[0][0]

    # --- machinery ----------------------------------------------------------------

    def _keys_deleted_in_transaction(self) -> dict[TableInfo, frozenset[Any]]:
        """The keys, by table, of rows whose delete the open transaction
        flushed and no tracked object holds again: committed data still has
        them, the transaction does not. (A delete not flushed yet keeps its
        object under its key, and reads leave that row out already.)"""
        found: dict[TableInfo, set[Any]] = {}
        identity = self._identity
        for state in self._gone:
            if state.status is not Status.GONE:  # revived by a savepoint's rollback
                continue
            table = state.table
            key = state.snapshot[table.key_index]
            if identity.get(table, key) is None:
                found.setdefault(table, set()).add(key)
        return {table: frozenset(keys) for table, keys in found.items()}

    async def _autoflush(self, read: _Builder[Any]) -> None:
        if read.autoflush if read.autoflush is not None else self.autoflush:
            await self._flush()

    async def _load(
        self,
        read: _Builder[M],
        fetch: Callable[[Select], Awaitable[list[tuple[Any, ...]]]],
        *,
        track_all: bool,
    ) -> list[M]:
        table = read.table
        rows = await fetch(read.compile())
        if read.locks:
            self._note_locked(table, rows)
        objects = self._materialize_all(table, rows, track_all)
        if read.includes:
            await self._relation_loader(fetch, read, track_all=track_all).load(read.model, objects, read.includes)
        return objects

    def _relation_loader(
        self, fetch: Callable[[Select], Awaitable[list[tuple[Any, ...]]]], read: _Builder[Any], *, track_all: bool
    ) -> RelationLoader:
        def is_tracked(obj: Any) -> bool:
            return self._identity.state_of(obj) is not None

        def assigned_since_flush(obj: Any, column: str) -> bool:
            identity = self._identity
            state = identity.state_of(obj)
            if state is None:
                return False
            if state.parent_refs and column in state.parent_refs:  # waiting for a parent's generated key
                return True
            return relation_assigned(identity.assigned, obj, column)

        return RelationLoader(
            fetch,
            self._materialize,
            keep_deleted=read.deleted != "exclude",
            track_all=track_all,
            is_tracked=is_tracked,
            assigned_since_flush=assigned_since_flush,
        )

    def _materialize_all(self, table: TableInfo, rows: Sequence[Sequence[Any]], track: bool) -> list[Any]:
        """:meth:`_materialize` for each row, in order, leaving out ``None``."""
        if not track:
            return [obj for row in rows if (obj := self._materialize(table, row, False)) is not None]

        def tracked(row: Sequence[Any]) -> Any:
            return self._materialize(table, row, True)

        # most rows of a read are not tracked yet: the identity map makes and tracks
        # those in one loop, without two calls and three lookups per row
        return self._identity.load(table, rows, self._refs, tracked)

    def _materialize(self, table: TableInfo, row: Sequence[Any], track: bool) -> Any:
        """The object for a fetched row: the tracked one if any (values kept
        unless expired), else a new one, tracked when ``track``; ``None`` for a
        row whose object is deleted in the session but not flushed."""
        state = self._identity.get(table, row[table.key_index])
        if state is not None:
            if state.status is Status.DELETED:
                return None
            return self._load_row(table, row).obj
        if track:
            return self._load_row(table, row).obj
        return table.from_row(row)


def _first_error(group: BaseExceptionGroup[Exception]) -> BaseException:
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


def _leaving_out(
    gone: dict[TableInfo, frozenset[Any]], fetch: Callable[[Select], Awaitable[list[tuple[Any, ...]]]]
) -> Callable[[Select], Awaitable[list[tuple[Any, ...]]]]:
    """``fetch`` leaving out the rows with the keys in ``gone`` (by table)."""

    async def fetch_leaving_out(select: Select) -> list[tuple[Any, ...]]:
        table = select.table
        keys = gone.get(table)
        if keys is None or select.mode != "rows":
            return await fetch(select)
        if select.limit is not None or select.offset is not None:
            # the window is counted without those rows, as in the transaction
            excluded = In(table.key_column, tuple(keys), negate=True)
            where = excluded if select.where is None else And((select.where, excluded))
            return await fetch(msgspec.structs.replace(select, where=where))
        index = table.key_index
        return [row for row in await fetch(select) if row[index] not in keys]

    return fetch_leaving_out


__all__ = ["ReadsMixin"]
