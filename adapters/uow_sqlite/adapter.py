"""The SQLite adapter: URL parsing, the pool and connections put together."""

from __future__ import annotations

from typing import Any, ClassVar

from uow.adapter import Adapter, Connection, require_asyncio
from uow_sqlite.config import SQLiteConfig, parse_url
from uow_sqlite.connection import SQLiteConnection
from uow_sqlite.dialect import SQLiteDialect
from uow_sqlite.pool import ConnectionPool


class SQLiteAdapter(Adapter):
    """SQLite through aiosqlite, registered as the ``sqlite`` URL scheme.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and
    ``sqlite://:memory:`` (or ``sqlite:///:memory:``); options, as keywords or in
    the URL query: ``pool_size`` (default 5; always 1 in memory), ``timeout``
    seconds to wait for a connection (default 30) and ``busy_timeout``
    milliseconds to wait on another connection's lock (default 5000).

    Every connection runs with ``PRAGMA foreign_keys = ON``; file databases
    also with ``journal_mode = WAL`` and ``synchronous = NORMAL``. Needs asyncio
    (aiosqlite's worker threads report back through the asyncio loop).
    """

    scheme: ClassVar[str] = "sqlite"
    supports_raw_sql: ClassVar[bool] = True
    paramstyle: ClassVar[str] = "qmark"

    def __init__(self, config: SQLiteConfig):
        self.config = config
        self.dialect = SQLiteDialect()
        self._pool = ConnectionPool(config, self.dialect)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteAdapter:
        return cls(parse_url(url, **options))

    async def close(self) -> None:
        await self._pool.close()

    async def acquire(self) -> SQLiteConnection:
        require_asyncio("SQLite", "aiosqlite")
        return await self._pool.acquire()

    async def release(self, connection: Connection, *, discard: bool = False) -> None:
        if not isinstance(connection, SQLiteConnection):
            raise TypeError(f"not a SQLite connection: {connection!r}")
        await self._pool.release(connection, discard=discard)

    def __repr__(self) -> str:
        return f"<SQLiteAdapter {self.config.path!r} pool_size={self.config.pool_size}>"


__all__ = ["SQLiteAdapter"]
