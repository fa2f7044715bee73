"""One pooled asyncpg connection behind the :class:`uow.adapter.Connection` API.

Every batch is one statement and one round trip whatever its size: columns
travel as arrays and ``unnest`` turns them back into rows (see
:mod:`uow_postgres.dialect`). Large inserts go through COPY instead, after one
statement that draws their generated keys when the database makes them.

Every driver call goes through :meth:`PostgresConnection._call`, which wraps
driver errors in :mod:`uow.errors` and remembers when the connection can no
longer be trusted (connection lost, or a call cancelled half-way), so that
releasing it closes it instead of returning it to the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import asyncpg.pool

from uow.adapter import Connection
from uow.batches import (
    Batch,
    BatchResult,
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    InsertBatch,
    UpdateBatch,
    UpsertBatch,
)
from uow.errors import ConfigurationError, IntegrityError, OperationalError, StorageError
from uow.model import ForeignKeyInfo, TableInfo
from uow.statements import Select
from uow_postgres.dialect import PostgresDialect
from uow_postgres.errors import Failure, is_connection_error, translate

T = TypeVar("T")

_BEGIN = {
    None: "BEGIN",
    "read committed": "BEGIN ISOLATION LEVEL READ COMMITTED",
    "repeatable read": "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "serializable": "BEGIN ISOLATION LEVEL SERIALIZABLE",
}

if TYPE_CHECKING:
    RawConnection = asyncpg.pool.PoolConnectionProxy[Any]
else:
    RawConnection = asyncpg.pool.PoolConnectionProxy


def _rowcount(status: str) -> int:
    """The row count at the end of a command status such as ``UPDATE 3``."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


def _columns_of(rows: Sequence[Sequence[Any]], encoders: Sequence[Callable[[Any], Any] | None]) -> list[Any]:
    """Rows turned into one list per column, each encoded for the driver.

    Each column is read with an itemgetter: ``zip(*rows)`` would make one
    iterator object per row, and at 10k rows inside a session those set off
    collections of its whole heap (a full one took 25-45 ms).
    """
    columns: list[Any] = []
    for index, encode in enumerate(encoders):
        column = list(map(itemgetter(index), rows))
        columns.append(column if encode is None else encode(column))
    return columns


def _several_statements(sql: str) -> bool:
    """Whether ``sql`` holds a ``;`` between statements (outside quotes and comments)."""
    text = sql.strip().rstrip(";")
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char in "'\"":
            end = text.find(char, index + 1)
            index = length if end < 0 else end + 1
            continue
        if text.startswith("--", index):
            end = text.find("\n", index)
            index = length if end < 0 else end + 1
            continue
        if text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = length if end < 0 else end + 2
            continue
        if char == "$":
            tag_end = text.find("$", index + 1)
            tag = text[index : tag_end + 1] if tag_end > 0 else ""
            if tag and (tag == "$$" or tag[1:-1].isidentifier()):
                end = text.find(tag, tag_end + 1)
                index = length if end < 0 else end + len(tag)
                continue
        if char == ";":
            return True
        index += 1
    return False


class PostgresConnection(Connection):
    """A connection checked out of the adapter's pool for one session."""

    __slots__ = ("raw", "dialect", "copy_threshold", "broken", "interrupted")

    def __init__(self, raw: RawConnection, dialect: PostgresDialect, *, copy_threshold: int):
        self.raw = raw
        self.dialect = dialect
        self.copy_threshold = copy_threshold
        self.broken = False
        """Set when the connection's state is unknown: it must be closed, not reused."""
        self.interrupted = False
        """Set when a read (``fetch``, ``stream``, ``execute_raw``) was cancelled
        half-way: the server may have aborted the transaction, so calls other
        than a rollback are refused until one works."""

    async def _call(
        self, operation: Callable[[], Awaitable[T]], failure: Failure | None = None, *, read: bool = False
    ) -> T:
        if self.interrupted:
            raise self._interrupted()
        try:
            return await operation()
        except Exception as exc:
            raise self._failed(exc, failure) from exc
        except BaseException:
            # Cancelled while the server may still be working on the statement.
            # A read may run long enough for the cancel to abort the transaction;
            # the session's own statements recover by a rollback to a savepoint.
            self.broken = True
            self.interrupted = self.interrupted or read
            raise

    async def _recover(self, sql: str) -> None:
        """Run a rollback (of the transaction or to a savepoint), which a call
        cancelled half-way does not stop: once it works, calls go on, though
        the connection is still closed rather than pooled when released."""
        self.interrupted = False
        try:
            await self._call(lambda: self.raw.execute(sql))
        except BaseException:
            self.interrupted = True
            raise

    def _interrupted(self) -> OperationalError:
        """The error for any call but a rollback after a call was cancelled half
        way: the server may have cancelled the statement, aborting the
        transaction, and a later statement would fail with "current transaction
        is aborted", which does not say why."""
        return OperationalError(
            "an earlier call on this connection was cancelled half-way, so its transaction may be aborted; "
            "roll back, then run the work again"
        )

    def _failed(self, exc: Exception, failure: Failure | None = None) -> Exception:
        """The :mod:`uow.errors` error for a driver error; a lost connection is
        marked broken."""
        if is_connection_error(exc):
            self.broken = True
        return translate(exc, failure)

    async def _run(self, method: str, sql: str, args: Sequence[Any], failure: Failure | None = None) -> Any:
        """``_call`` of one asyncpg method (``"fetchrow"`` …) with positional arguments."""
        return await self._call(lambda: getattr(self.raw, method)(sql, *args), failure)

    def in_transaction(self) -> bool:
        """Whether the server has a transaction open (failed ones included)."""
        try:
            return self.raw.is_in_transaction()
        except asyncpg.InterfaceError:  # the link broke and asyncpg gave the connection back
            return False

    # --- transactions ------------------------------------------------------------

    async def begin(self, isolation: str | None = None) -> None:
        statement = _BEGIN.get(isolation.lower() if isolation else None)
        if statement is None:
            raise ConfigurationError(
                f"unknown isolation level {isolation!r}; use 'read committed', 'repeatable read' or 'serializable'"
            )
        await self._run("execute", statement, ())

    async def commit(self) -> None:
        await self._call(lambda: self.raw.execute("COMMIT"))

    async def rollback(self) -> None:
        await self._recover("ROLLBACK")

    async def savepoint(self, name: str) -> None:
        await self._call(lambda: self.raw.execute(f"SAVEPOINT {self.dialect.quote(name)}"))

    async def release_savepoint(self, name: str) -> None:
        await self._call(lambda: self.raw.execute(f"RELEASE SAVEPOINT {self.dialect.quote(name)}"))

    async def rollback_to_savepoint(self, name: str) -> None:
        await self._recover(f"ROLLBACK TO SAVEPOINT {self.dialect.quote(name)}")

    async def replace_savepoint(self, released: str, name: str) -> None:
        # without arguments asyncpg sends the simple query protocol, which takes
        # several statements in one message: one round trip for both
        quote = self.dialect.quote
        await self._call(lambda: self.raw.execute(f"RELEASE SAVEPOINT {quote(released)}; SAVEPOINT {quote(name)}"))

    # --- writes ------------------------------------------------------------------

    async def apply(self, batch: Batch) -> BatchResult:
        if isinstance(batch, InsertBatch):
            result = await self._insert(batch)
            if not batch.returning_key:
                await self._follow_given_keys(batch.table, batch.columns, batch.rows)
            return result
        if isinstance(batch, UpdateBatch):
            return await self._update(batch)
        if isinstance(batch, DeleteBatch):
            return await self._delete(batch)
        if isinstance(batch, UpsertBatch):
            result = await self._upsert(batch)
            await self._follow_given_keys(batch.table, batch.columns, batch.rows)
            return result
        if isinstance(batch, BulkUpdateBatch):
            sql, params = self.dialect.bulk_update(batch.table, dict(batch.values), batch.where)
            if batch.computes:  # the updated rows come back
                records = await self._call(lambda: self.raw.fetch(sql, *params))
                rows = list(map(self.dialect.row_decoder(batch.table), records))
                return BatchResult(rowcount=len(rows), rows=rows)
            return BatchResult(rowcount=_rowcount(await self._call(lambda: self.raw.execute(sql, *params))))
        if isinstance(batch, BulkDeleteBatch):
            sql, params = self.dialect.bulk_delete(batch.table, batch.where)
            return BatchResult(rowcount=_rowcount(await self._call(lambda: self.raw.execute(sql, *params))))
        raise TypeError(f"unknown batch {batch!r}")

    async def _follow_given_keys(self, table: TableInfo, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Move the key sequence of a table whose integer keys are generated
        past the greatest key these rows were written with."""
        key = table.primary_key
        if not (key.generated and key.kind == "integer") or key.name not in columns:
            return
        position = list(columns).index(key.name)
        given = [row[position] for row in rows if type(row[position]) is int]
        if given:
            sql, top = self.dialect.follow_given_key(table), max(given)
            await self._call(lambda: self.raw.execute(sql, top))

    def _arrays(self, table: TableInfo, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
        return _columns_of(rows, self.dialect.column_encoders(table, columns))

    async def _insert(self, batch: InsertBatch) -> BatchResult:
        table, columns, rows = batch.table, batch.columns, batch.rows
        if not rows:
            return BatchResult(rowcount=0, keys=[] if batch.returning_key else None)
        failure = Failure(table, columns, rows)
        if batch.returning_key:
            key_expression = self.dialect.generated_key_expression(table)
            if key_expression is None:
                return await self._insert_one_by_one(batch, failure)
            if len(rows) >= self.copy_threshold:
                return await self._copy_with_drawn_keys(batch, key_expression, failure)
            sql = self.dialect.insert_returning_keys(table, columns, key_expression)
            args = self._arrays(table, columns, rows) if columns else [len(rows)]
            keys: list[Any] = await self._call(lambda: self.raw.fetchval(sql, *args), failure)
            return BatchResult(rowcount=len(keys), keys=keys)
        if len(rows) >= self.copy_threshold and columns:
            arrays = self._arrays(table, columns, rows)
            status = await self._call(
                lambda: self.raw.copy_records_to_table(table.name, records=zip(*arrays), columns=list(columns)),
                failure,
            )
            return BatchResult(rowcount=_rowcount(status))
        if not columns:
            return await self._insert_one_by_one(batch, failure)
        sql = self.dialect.insert_rows(table, columns)
        status = await self._call(lambda: self.raw.execute(sql, *self._arrays(table, columns, rows)), failure)
        return BatchResult(rowcount=_rowcount(status))

    async def _copy_with_drawn_keys(self, batch: InsertBatch, key_expression: str, failure: Failure) -> BatchResult:
        """Draw one key per row in one statement, then COPY the rows with key i
        written into row i.

        The keys are paired with the rows here, by position, so nothing depends
        on the order in which the database inserts or returns rows. Measured at
        10k rows, transaction included: users (three columns, one unique) 32 ms
        against 44 ms for the one-statement insert and 42 ms for a plain
        ``INSERT … SELECT … unnest … RETURNING``; posts (a foreign key checked
        per row) 63 against 70 and 68. From 100 rows on the two round trips
        cost no more than the one statement.
        """
        table, columns = batch.table, batch.columns
        draw = self.dialect.draw_keys(key_expression)
        keys: list[Any] = await self._call(lambda: self.raw.fetchval(draw, len(batch.rows)), failure)
        arrays = self._arrays(table, columns, batch.rows)
        names = [table.key_column, *columns]
        await self._call(
            lambda: self.raw.copy_records_to_table(table.name, records=zip(keys, *arrays), columns=names), failure
        )
        return BatchResult(rowcount=len(keys), keys=keys)

    async def _insert_one_by_one(self, batch: InsertBatch, failure: Failure) -> BatchResult:
        """Row by row, for keys no SQL expression can draw ahead of the insert."""
        sql = self.dialect.insert(batch.table, batch.columns, batch.returning_key)
        encode = self.dialect.row_encoder(batch.table, batch.columns)
        keys: list[Any] = []
        for index, row in enumerate(batch.rows):
            one = Failure(failure.table, failure.columns, [row])
            try:
                keys.append(await self._run("fetchval", sql, encode(row), one))
            except IntegrityError as exc:
                exc.row_index = index
                raise
        return BatchResult(rowcount=len(keys), keys=keys if batch.returning_key else None)

    async def _update(self, batch: UpdateBatch) -> BatchResult:
        table, rows = batch.table, batch.rows
        if not rows:
            return BatchResult(rowcount=0)
        names = [*batch.columns, table.key_column]
        if batch.check_version:
            assert table.version_column is not None
            names.append(table.version_column)
        failure = Failure(table, names, rows)
        arrays = self._arrays(table, names, rows)
        if not batch.columns:
            sql = self.dialect.count_matching(table, batch.check_version)
            return BatchResult(rowcount=int(await self._call(lambda: self.raw.fetchval(sql, *arrays), failure)))
        sql = self.dialect.update_rows(table, batch.columns, batch.check_version)
        return BatchResult(rowcount=_rowcount(await self._call(lambda: self.raw.execute(sql, *arrays), failure)))

    async def _delete(self, batch: DeleteBatch) -> BatchResult:
        table = batch.table
        if not batch.keys:
            return BatchResult(rowcount=0)
        check_version = batch.expected_versions is not None
        names = [table.key_column]
        values = [batch.keys]
        if batch.expected_versions is not None:
            assert table.version_column is not None
            names.append(table.version_column)
            values.append(batch.expected_versions)
        encoders = self.dialect.column_encoders(table, names)
        arrays = [column if encode is None else encode(column) for encode, column in zip(encoders, values)]
        # the rows are made only if an error has to name one
        failure = Failure(table, names, make_rows=lambda: list(zip(*values)))
        sql = self.dialect.delete_keys(table, check_version)
        return BatchResult(rowcount=_rowcount(await self._call(lambda: self.raw.execute(sql, *arrays), failure)))

    async def _upsert(self, batch: UpsertBatch) -> BatchResult:
        table, columns, rows = batch.table, batch.columns, batch.rows
        if not rows:
            return BatchResult(rowcount=0, rows=[])
        failure = Failure(table, columns, rows)
        decode = self.dialect.row_decoder(table)
        target_positions = [columns.index(c) for c in batch.conflict_target]
        if any(row[p] is None for row in rows for p in target_positions):
            # A NULL in the conflict target never conflicts and cannot be matched
            # back to its input row by value: write those batches row by row.
            sql = self.dialect.upsert(table, columns, batch.conflict_target, batch.update_columns)
            encode = self.dialect.row_encoder(table, columns)
            results = []
            for row in rows:
                record = await self._run("fetchrow", sql, encode(row), Failure(table, columns, [row]))
                assert record is not None
                results.append(decode(record))
            return BatchResult(rowcount=len(results), rows=results)
        sql = self.dialect.upsert_rows(table, columns, batch.conflict_target, batch.update_columns)
        records = await self._call(lambda: self.raw.fetch(sql, *self._arrays(table, columns, rows)), failure)
        if len(records) != len(rows):
            raise StorageError(
                f"upsert into {table.name} returned {len(records)} rows for {len(rows)} input rows; "
                "the conflict target must be unique within a batch and not changed by the update"
            )
        return BatchResult(rowcount=len(records), rows=[decode(record) for record in records])

    # --- reads -------------------------------------------------------------------

    async def fetch(self, select: Select) -> list[tuple[Any, ...]]:
        sql, params = self.dialect.select(select)
        # _call written out: every get by key is one fetch, and the wrapper's
        # extra coroutine and closure cost more than the rest of this method
        if self.interrupted:
            raise self._interrupted()
        try:
            records = await self.raw.fetch(sql, *params)
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = self.interrupted = True
            raise
        # map() keeps the per-record loop in C (decode is the tuple type itself
        # when no column needs converting)
        if select.mode != "rows":
            return list(map(tuple, records))
        return list(map(self.dialect.row_decoder(select.table), records))

    async def stream(self, select: Select, chunk_size: int = 1000) -> AsyncIterator[list[tuple[Any, ...]]]:
        if self.interrupted:
            raise self._interrupted()
        sql, params = self.dialect.select(select)
        decode = self.dialect.row_decoder(select.table) if select.mode == "rows" else tuple
        if self.in_transaction():
            async for chunk in self._chunks(sql, params, chunk_size, decode):
                yield chunk
            return
        # A server-side cursor lives in a transaction: open one just for it.
        await self.begin()
        try:
            async for chunk in self._chunks(sql, params, chunk_size, decode):
                yield chunk
        finally:
            if not self.broken:
                await self.rollback()

    async def _chunks(
        self, sql: str, params: list[Any], chunk_size: int, decode: Callable[[Any], tuple[Any, ...]]
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        cursor = await self._call(lambda: self.raw.cursor(sql, *params), read=True)
        while True:
            records = await self._call(lambda: cursor.fetch(chunk_size), read=True)
            if records:
                yield [decode(record) for record in records]
            if len(records) < chunk_size:
                return

    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run caller-written SQL with ``$1``-style parameters and return its rows.

        Several statements separated by ``;`` (and no parameters) run through
        PostgreSQL's simple protocol, which returns no rows.
        """
        args = list(params or ())
        if not args and _several_statements(sql):
            await self._call(lambda: self.raw.execute(sql), read=True)
            return []
        records = await self._call(lambda: self.raw.fetch(sql, *args), read=True)
        return [tuple(record) for record in records]

    # --- schema ------------------------------------------------------------------

    async def create_tables(self, tables: Sequence[TableInfo]) -> None:
        """Create the tables missing, parents first; a foreign key to a table
        created after its own (tables referencing each other) is added once
        both exist."""
        position = {table.name: index for index, table in enumerate(tables)}
        later: list[tuple[TableInfo, ForeignKeyInfo]] = []
        for index, table in enumerate(tables):
            forward = [fk for fk in table.foreign_keys if position.get(fk.target_table, -1) > index]
            if forward:
                exists = await self._run(
                    "fetchval", "SELECT to_regclass($1) IS NOT NULL", (self.dialect.quote(table.name),)
                )
                if exists:
                    continue
                later += [(table, fk) for fk in forward]
            for statement in self.dialect.create_table(table, deferred_foreign_keys={fk.column for fk in forward}):
                await self._run("execute", statement, ())
        for table, fk in later:
            await self._run("execute", self.dialect.add_foreign_key(table, fk), ())
        await self.raw.reload_schema_state()

    async def drop_tables(self, tables: Sequence[TableInfo]) -> None:
        if tables:
            await self._call(lambda: self.raw.execute(self.dialect.drop_tables(tables)))
            await self.raw.reload_schema_state()


__all__ = ["PostgresConnection"]
