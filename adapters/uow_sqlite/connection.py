"""One SQLite connection, on aiosqlite's worker thread.

The connection runs in autocommit mode (``isolation_level=None``) so the
adapter, not the ``sqlite3`` module, decides where transactions start and end.
Work that needs several ``sqlite3`` calls (a batch, a schema change) is sent to
the worker thread as one function, one thread hop, through :func:`run_sync`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast

import aiosqlite

from uow.adapter import Connection
from uow.batches import Batch, BatchResult
from uow.errors import ConfigurationError, OperationalError, SerializationFailure, StorageError
from uow.model import TableInfo
from uow.statements import Select
from uow_sqlite.config import SQLiteConfig
from uow_sqlite.dialect import (
    DECIMAL_COLLATION,
    ILIKE_FUNCTION,
    MATH_FUNCTION,
    SQLiteDialect,
    column_math,
    decimal_collation,
    ilike,
)
from uow_sqlite.errors import storage_error
from uow_sqlite.schema import children_first, parents_first
from uow_sqlite.writes import apply_batch

T = TypeVar("T")

_ISOLATION_LEVELS = (None, "read committed", "repeatable read", "serializable")


async def run_sync(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(sqlite3 connection)`` on the connection's worker thread.

    aiosqlite keeps its queue of thread calls private (``_execute``); this is
    the one place that uses it, so several ``sqlite3`` calls cost one hop.
    """
    raw = db._conn  # raises ValueError when the connection is closed
    return cast(T, await cast(Any, db)._execute(fn, raw))


def _statements(raw: sqlite3.Connection, statements: Sequence[str], defer_foreign_keys: bool = False) -> None:
    """Run DDL atomically: in its own transaction unless one is already open."""
    own = not raw.in_transaction
    if own:
        raw.execute("BEGIN")
    try:
        if defer_foreign_keys:  # a pragma for the open transaction, reset at its end
            raw.execute("PRAGMA defer_foreign_keys = ON")
        for statement in statements:
            raw.execute(statement)
    except BaseException:
        if own:
            raw.execute("ROLLBACK")
        raise
    if own:
        raw.execute("COMMIT")


def _drop(raw: sqlite3.Connection, statements: Sequence[str], dropped: set[str]) -> None:
    references = raw.execute(
        'SELECT m.name, f."from", f."table" FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f '
        "WHERE m.type = 'table' AND f.\"table\" IN (SELECT name FROM sqlite_master WHERE type = 'table')"
    ).fetchall()
    for child, column, parent in references:
        if parent in dropped and child not in dropped:
            raise StorageError(
                f"cannot drop table {parent}: {child}.{column} references it (drop {child} too)", sqlstate="2BP01"
            )
    _statements(raw, statements, defer_foreign_keys=True)


def _fetch(raw: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return raw.execute(sql, params).fetchall()


def _fetch_locked(raw: sqlite3.Connection, lock: str, sql: str, params: Sequence[Any]) -> list[Any]:
    raw.execute(lock)
    return raw.execute(sql, params).fetchall()


def _replace_savepoint(raw: sqlite3.Connection, released: str, name: str) -> None:
    """Both statements in one trip to the connection's thread."""
    raw.execute(f"RELEASE SAVEPOINT {released}")
    raw.execute(f"SAVEPOINT {name}")


def _busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorname", None) or "").startswith("SQLITE_BUSY")


def _in_transaction(raw: sqlite3.Connection) -> bool:
    return raw.in_transaction


class SQLiteConnection(Connection):
    """A :class:`uow.adapter.Connection` over one aiosqlite connection."""

    def __init__(self, db: aiosqlite.Connection, dialect: SQLiteDialect):
        self._db = db
        self._dialect = dialect
        self._deferred = False
        """A deferred transaction is open (a plain ``BEGIN``)."""
        self._streams: set[aiosqlite.Cursor] = set()
        """Cursors of streams not read to their end: each holds a read snapshot
        until closed, even past the end of its transaction."""

    @property
    def raw(self) -> aiosqlite.Connection:
        """The aiosqlite connection underneath."""
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await run_sync(self._db, fn)
        except sqlite3.Error as exc:
            error = storage_error(exc)
            if self._deferred and type(error) is OperationalError and _busy(exc):
                # a deferred transaction that must take the write lock another
                # connection holds: SQLite fails it at once rather than wait (the
                # wait could deadlock), and it cannot succeed on its snapshot
                # anyway, so running the unit of work again is the way out
                error = SerializationFailure(
                    f"{exc}: another connection holds the write lock this transaction needs; run the unit of "
                    "work again (engine.run_in_transaction does)"
                )
            raise error from exc
        except (OverflowError, UnicodeEncodeError) as exc:
            # a parameter SQLite cannot bind: an int beyond 64 bits, a lone surrogate
            raise StorageError(f"SQLite cannot store a value: {exc}") from exc
        except ValueError as exc:
            if "closed" in str(exc) or "no active connection" in str(exc):
                raise StorageError(f"the SQLite connection is closed: {exc}") from exc
            raise

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._run(partial(_fetch, sql=sql, params=params))

    # --- transactions ----------------------------------------------------------

    async def begin(self, isolation: str | None = None) -> None:
        """Start a transaction.

        SQLite transactions are always serializable. ``"serializable"`` starts
        with ``BEGIN IMMEDIATE``, taking the database's write lock at once, so a
        transaction that reads and then writes cannot fail later because another
        connection wrote in between; every other level uses a plain (deferred)
        ``BEGIN``, which lets readers run side by side until they write.
        """
        if isolation not in _ISOLATION_LEVELS:
            raise ConfigurationError(f"unknown isolation level {isolation!r}")
        await self._execute("BEGIN IMMEDIATE" if isolation == "serializable" else "BEGIN")
        self._deferred = isolation != "serializable"

    async def commit(self) -> None:
        await self._close_streams()
        await self._execute("COMMIT")
        self._deferred = False

    async def rollback(self) -> None:
        self._deferred = False
        await self._close_streams()
        await self._execute("ROLLBACK")

    async def _close_streams(self) -> None:
        """Close the cursors of streams left unfinished: a stream ends with its
        transaction, and an open cursor would keep the connection reading an
        old snapshot in the next one."""
        streams, self._streams = self._streams, set()
        for cursor in streams:
            with contextlib.suppress(sqlite3.Error, ValueError):  # ValueError: the connection is closed
                await cursor.close()

    async def savepoint(self, name: str) -> None:
        await self._execute(f"SAVEPOINT {self._dialect.quote(name)}")

    async def release_savepoint(self, name: str) -> None:
        await self._execute(f"RELEASE SAVEPOINT {self._dialect.quote(name)}")

    async def rollback_to_savepoint(self, name: str) -> None:
        await self._execute(f"ROLLBACK TO SAVEPOINT {self._dialect.quote(name)}")

    async def replace_savepoint(self, released: str, name: str) -> None:
        quote = self._dialect.quote
        await self._run(partial(_replace_savepoint, released=quote(released), name=quote(name)))

    async def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection."""
        return await self._run(_in_transaction)

    # --- writes ----------------------------------------------------------------

    async def apply(self, batch: Batch) -> BatchResult:
        return await self._run(partial(apply_batch, dialect=self._dialect, batch=batch))

    # --- reads -----------------------------------------------------------------

    async def fetch(self, select: Select) -> list[tuple[Any, ...]]:
        sql, params = self._dialect.select(select)
        if select.for_update:
            # SQLite locks no rows: a statement that writes nothing takes the database's
            # write lock, which the transaction keeps to its end, as FOR UPDATE keeps a row's
            lock = f"DELETE FROM {self._dialect.quote(select.table.name)} WHERE 0"
            rows = await self._run(partial(_fetch_locked, lock=lock, sql=sql, params=params))
        else:
            rows = await self._execute(sql, params)
        if select.mode == "count":
            return [(int(rows[0][0]),)]
        if select.mode == "exists":
            return [(bool(rows[0][0]),)]
        decode = self._dialect.row_decoder(select.table)
        return [decode(row) for row in rows]

    async def stream(self, select: Select, chunk_size: int = 1000) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Yield rows ``chunk_size`` at a time from one open cursor."""
        if select.mode != "rows":
            yield await self.fetch(select)
            return
        sql, params = self._dialect.select(select)
        decode = self._dialect.row_decoder(select.table)
        if select.for_update:  # as fetch takes it
            await self._execute(f"DELETE FROM {self._dialect.quote(select.table.name)} WHERE 0")
        try:
            cursor = await self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc
        self._streams.add(cursor)
        try:
            while True:
                try:
                    chunk = await cursor.fetchmany(chunk_size)
                except sqlite3.Error as exc:
                    raise storage_error(exc) from exc
                if not chunk:
                    return
                yield [decode(row) for row in chunk]
        finally:
            if cursor in self._streams:  # not closed with its transaction already
                self._streams.discard(cursor)
                await cursor.close()

    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``?`` placeholders; rows come back as tuples of what
        SQLite stores (no conversion to column types)."""
        rows = await self._execute(sql, tuple(params or ()))
        return [tuple(row) for row in rows]

    # --- schema ----------------------------------------------------------------

    async def create_tables(self, tables: Sequence[TableInfo]) -> None:
        """Create the tables, parents before children, in one transaction."""
        statements = [s for table in parents_first(tables) for s in self._dialect.create_table(table)]
        await self._run(partial(_statements, statements=statements))

    async def drop_tables(self, tables: Sequence[TableInfo]) -> None:
        """Drop the tables, children first, in one transaction (with foreign-key
        checks deferred to its end, so tables referencing each other go too);
        refused, as PostgreSQL does, while a table left in place references one."""
        statements = [self._dialect.drop_table(table) for table in children_first(tables)]
        await self._run(partial(_drop, statements=statements, dropped={table.name for table in tables}))

    # --- lifecycle -------------------------------------------------------------

    async def reset(self) -> None:
        """Close unfinished streams and roll back a transaction left open."""
        await self._close_streams()
        if await self.in_transaction():
            await self.rollback()

    async def close(self) -> None:
        """Close the underlying connection."""
        await self._db.close()


async def open_connection(config: SQLiteConfig, dialect: SQLiteDialect) -> SQLiteConnection:
    """Connect and set the pragmas every uow connection runs with."""
    try:
        db = await aiosqlite.connect(config.path, isolation_level=None, timeout=config.busy_timeout / 1000)
    except sqlite3.Error as exc:
        raise storage_error(exc) from exc
    connection = SQLiteConnection(db, dialect)
    try:
        await db.create_function(ILIKE_FUNCTION, 2, ilike, deterministic=True)
        await db.create_function(MATH_FUNCTION, 4, column_math, deterministic=True)
        await connection._run(partial(_configure, config=config))
    except BaseException:
        await db.close()
        raise
    return connection


def _configure(raw: sqlite3.Connection, config: SQLiteConfig) -> None:
    raw.create_collation(DECIMAL_COLLATION, decimal_collation)
    raw.execute("PRAGMA foreign_keys = ON")
    raw.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout)}")
    if not config.in_memory:
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("PRAGMA synchronous = NORMAL")


__all__ = ["SQLiteConnection", "open_connection", "run_sync"]
