"""A connection to a memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio.lowlevel

from uow.adapter import Connection
from uow.batches import Batch, BatchResult
from uow.errors import ConfigurationError, OperationalError, StorageError, UnsupportedOperationError
from uow.model import TableInfo
from uow.statements import Select
from uow_memory.reads import run_select, select_rows
from uow_memory.store import MemoryStore
from uow_memory.table import TableData
from uow_memory.transaction import ISOLATION_LEVELS, Transaction
from uow_memory.writes import BatchWriter


class MemoryConnection(Connection):
    """A connection to a :class:`~uow_memory.store.MemoryStore`.

    Reads see the snapshot taken at :meth:`begin` plus the transaction's own
    writes. The first write takes the store's writer lock, held until
    :meth:`commit` or :meth:`rollback`; a second writer waits for it for up to
    ``lock_timeout`` seconds. Outside a transaction every call runs in a
    transaction of its own (autocommit).
    """

    def __init__(self, store: MemoryStore, *, lock_timeout: float | None = 30.0):
        self.store = store
        self.lock_timeout = lock_timeout
        self._tx: Transaction | None = None
        self._closed = False

    # --- state ----------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self._tx is not None

    @property
    def closed(self) -> bool:
        """Whether the connection was closed."""
        return self._closed

    def close(self) -> None:
        """Roll back any open transaction and refuse further use."""
        self._end(commit=False)
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise OperationalError("the memory connection is closed")

    def _require_tx(self, action: str) -> Transaction:
        self._check_open()
        if self._tx is None:
            raise OperationalError(f"cannot {action}: no transaction is active")
        return self._tx

    def _end(self, *, commit: bool) -> None:
        tx, self._tx = self._tx, None
        if tx is not None and tx.writing:
            tx.end()
            if commit:
                self.store.publish(tx.tables)
            self.store.lock.release(self)

    async def _write_access(self, tx: Transaction) -> None:
        if tx.writing:
            return
        await self.store.lock.acquire(self, self.lock_timeout)
        try:
            if self._tx is not tx:
                raise OperationalError("the memory connection was closed while it waited for the write lock")
            tx.start_writing()
        except BaseException:
            self.store.lock.release(self)
            raise

    async def _enter(self) -> tuple[Transaction, bool]:
        """The transaction to run a statement in, and whether it is implicit."""
        self._check_open()
        await anyio.lowlevel.checkpoint()
        if self._tx is not None:
            return self._tx, False
        self._tx = Transaction(self.store)
        return self._tx, True

    # --- transactions -------------------------------------------------------------

    async def begin(self, isolation: str | None = None) -> None:
        self._check_open()
        if isolation not in ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation level {isolation!r}; use 'read committed', 'repeatable read' or 'serializable'"
            )
        if self._tx is not None:
            raise OperationalError("cannot begin: a transaction is already active")
        await anyio.lowlevel.checkpoint()
        self._tx = Transaction(self.store, isolation)

    async def commit(self) -> None:
        self._require_tx("commit")
        self._end(commit=True)

    async def rollback(self) -> None:
        self._check_open()
        self._end(commit=False)

    async def savepoint(self, name: str) -> None:
        self._require_tx("set a savepoint").savepoint(name)

    async def release_savepoint(self, name: str) -> None:
        self._require_tx("release a savepoint").release(name)

    async def rollback_to_savepoint(self, name: str) -> None:
        self._require_tx("roll back to a savepoint").rollback_to(name)

    # --- statements -------------------------------------------------------------

    async def apply(self, batch: Batch) -> BatchResult:
        tx, implicit = await self._enter()
        try:
            await self._write_access(tx)
            result = BatchWriter(tx).apply(batch)
        except BaseException:
            if implicit:
                self._end(commit=False)
            raise
        if implicit:
            self._end(commit=True)
        return result

    async def _read(self, select: Select) -> tuple[Transaction, bool]:
        tx, implicit = await self._enter()
        try:
            if select.for_update:
                await self._write_access(tx)
            tx.before_read()
        except BaseException:
            if implicit:
                self._end(commit=False)
            raise
        return tx, implicit

    async def fetch(self, select: Select) -> list[tuple[Any, ...]]:
        tx, implicit = await self._read(select)
        try:
            return run_select(tx.table(select.table.name), select)
        finally:
            if implicit:
                self._end(commit=True)

    async def stream(self, select: Select, chunk_size: int = 1000) -> AsyncIterator[list[tuple[Any, ...]]]:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        tx, implicit = await self._read(select)
        try:
            table = tx.table(select.table.name)
            rows = select_rows(table, select) if select.mode == "rows" else run_select(table, select)
        finally:
            if implicit:
                self._end(commit=True)
        if select.mode != "rows":
            yield rows
            return
        copy_out = table.schema.codec.copy_out
        for start in range(0, len(rows), chunk_size):
            yield [copy_out(row) for row in rows[start : start + chunk_size]]
            await anyio.lowlevel.checkpoint()

    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        raise UnsupportedOperationError(
            "the memory adapter does not run SQL (supports_raw_sql is False); use the query API, "
            "or an sqlite:// or postgresql:// engine for execute_raw"
        )

    # --- schema -------------------------------------------------------------------

    async def create_tables(self, tables: Sequence[TableInfo]) -> None:
        await self._ddl(tables, drop=False)

    async def drop_tables(self, tables: Sequence[TableInfo]) -> None:
        await self._ddl(tables, drop=True)

    async def _ddl(self, tables: Sequence[TableInfo], *, drop: bool) -> None:
        tx, implicit = await self._enter()
        try:
            await self._write_access(tx)
            if drop:
                _refuse_dropping_referenced(tx.tables, {info.name for info in tables})
            for info in tables:
                if drop:
                    tx.drop(info.name)
                else:
                    tx.create(info)
        except BaseException:
            if implicit:
                self._end(commit=False)
            raise
        if implicit:
            self._end(commit=True)


def _refuse_dropping_referenced(tables: Mapping[str, TableData], dropped: set[str]) -> None:
    """Refuse, as PostgreSQL does, to drop a table another table kept references."""
    for name, table in tables.items():
        if name in dropped:
            continue
        for fk in table.schema.info.foreign_keys:
            if fk.target_table in dropped:
                raise StorageError(
                    f"cannot drop table {fk.target_table}: {name}.{fk.column} references it (drop {name} too)",
                    sqlstate="2BP01",
                )


__all__ = ["MemoryConnection"]
