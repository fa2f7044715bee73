"""The ``memory://`` adapter."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import anyio.lowlevel

from uow.adapter import Adapter, Connection
from uow.errors import ConfigurationError, OperationalError
from uow_memory.connection import MemoryConnection
from uow_memory.store import MemoryStore, named_store

_POOL_OPTIONS = frozenset({"pool_size", "min_size", "max_size", "max_overflow", "pool_timeout", "pool_recycle"})


class MemoryAdapter(Adapter):
    """A database kept in process memory, behaving like SQLite in WAL mode.

    ``memory://`` gives a new private store; ``memory://name`` shares the store
    called ``name`` with every adapter in the process that uses that URL.
    Option ``lock_timeout`` (seconds, default 30; also accepted in the URL
    query) bounds how long a writer waits for another one to finish. There is
    no pool: :meth:`acquire` makes a connection and :meth:`release` closes it.
    """

    scheme: ClassVar[str] = "memory"
    supports_raw_sql: ClassVar[bool] = False

    def __init__(self, store: MemoryStore | None = None, *, lock_timeout: float | None = 30.0):
        self.store = store if store is not None else MemoryStore()
        self.lock_timeout = lock_timeout
        self._connections: set[MemoryConnection] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryAdapter:
        parts = urlsplit(url)
        if parts.scheme != cls.scheme:
            raise ConfigurationError(f"the memory adapter needs a memory:// URL, not {url!r}")
        merged: dict[str, Any] = dict(parse_qsl(parts.query))
        merged.update(options)
        unknown = set(merged) - _POOL_OPTIONS - {"lock_timeout"}
        if unknown:
            known = ", ".join(sorted(_POOL_OPTIONS | {"lock_timeout"}))
            raise ConfigurationError(
                f"unknown option(s) for memory://: {', '.join(sorted(unknown))}; known options: {known}"
            )
        lock_timeout = merged.get("lock_timeout", 30.0)
        try:
            timeout = None if lock_timeout is None else float(lock_timeout)
        except (TypeError, ValueError):
            raise ConfigurationError(f"lock_timeout must be a number of seconds, not {lock_timeout!r}") from None
        if timeout is not None and timeout < 0:
            raise ConfigurationError("lock_timeout must not be negative")
        name = (parts.netloc + parts.path).strip("/")
        return cls(named_store(name) if name else None, lock_timeout=timeout)

    @property
    def connections(self) -> int:
        """How many connections are acquired and not yet released."""
        return len(self._connections)

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()

    async def acquire(self) -> Connection:
        if self._closed:
            raise OperationalError("the memory adapter is closed")
        await anyio.lowlevel.checkpoint()
        connection = MemoryConnection(self.store, lock_timeout=self.lock_timeout)
        self._connections.add(connection)
        return connection

    async def release(self, connection: Connection, *, discard: bool = False) -> None:
        if not isinstance(connection, MemoryConnection):
            raise ConfigurationError(f"{connection!r} is not a memory connection")
        connection.close()
        self._connections.discard(connection)


__all__ = ["MemoryAdapter"]
