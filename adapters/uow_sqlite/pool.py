"""A small pool of SQLite connections, on anyio primitives."""

from __future__ import annotations

import contextlib

import anyio

from uow.errors import OperationalError, PoolTimeoutError, StorageError
from uow_sqlite.config import SQLiteConfig
from uow_sqlite.connection import SQLiteConnection, open_connection
from uow_sqlite.dialect import SQLiteDialect


class ConnectionPool:
    """Up to ``config.pool_size`` connections, opened on demand and reused.

    A ``:memory:`` database is a single connection (each SQLite connection to
    ``:memory:`` would be a separate, empty database), so sessions take turns
    with it. Waiting longer than ``config.timeout`` for a free connection
    raises :class:`uow.errors.PoolTimeoutError`.
    """

    def __init__(self, config: SQLiteConfig, dialect: SQLiteDialect):
        self._config = config
        self._dialect = dialect
        self._slots: anyio.Semaphore | None = None
        self._idle: list[SQLiteConnection] = []
        self._open: set[SQLiteConnection] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open now, in use or idle."""
        return len(self._open)

    def _semaphore(self) -> anyio.Semaphore:
        if self._slots is None:
            self._slots = anyio.Semaphore(self._config.pool_size)
        return self._slots

    async def acquire(self) -> SQLiteConnection:
        """A free connection, opening one when the pool has room."""
        if self._closed:
            raise OperationalError("the SQLite adapter is closed")
        slots = self._semaphore()
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(self._config.timeout):
                    await slots.acquire()
            except TimeoutError:
                raise PoolTimeoutError(
                    f"no SQLite connection became free within {self._config.timeout:g} s "
                    f"(pool_size={self._config.pool_size})"
                ) from None
        try:
            if self._idle:
                return self._idle.pop()
            connection = await open_connection(self._config, self._dialect)
            self._open.add(connection)
            return connection
        except BaseException:
            slots.release()
            raise

    async def release(self, connection: SQLiteConnection, *, discard: bool = False) -> None:
        """Take a connection back, rolling back a transaction left open.

        With ``discard`` the connection is closed, except the one connection of
        a ``:memory:`` database, whose data would go with it: that one is rolled
        back and kept, and closed only if even that fails.
        """
        if connection not in self._open:
            raise ValueError("this connection does not belong to this pool")
        slots = self._semaphore()
        try:
            with anyio.CancelScope(shield=True):
                if not discard or self._config.in_memory:
                    try:
                        await connection.reset()
                        discard = False
                    except StorageError:
                        discard = True
                if discard or self._closed:
                    self._open.discard(connection)
                    await _close_quietly(connection)
                else:
                    self._idle.append(connection)
        finally:
            slots.release()

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        connections, self._open, self._idle = list(self._open), set(), []
        with anyio.CancelScope(shield=True):
            for connection in connections:
                await _close_quietly(connection)


async def _close_quietly(connection: SQLiteConnection) -> None:
    # Closing a broken connection may fail; it is gone either way.
    with contextlib.suppress(Exception):
        await connection.close()


__all__ = ["ConnectionPool"]
