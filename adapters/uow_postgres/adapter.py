"""The PostgreSQL adapter: an asyncpg pool behind :class:`uow.adapter.Adapter`.

Pool settings come from the URL's query string or from keyword options
(keywords win)::

    create_engine("postgresql://app@db/app?max_size=20&command_timeout=5")
    create_engine("postgresql://app@db/app", max_size=20, acquire_timeout=2.5)

=================================  ============================================
``min_size`` / ``max_size``        connections kept open / at most (2 / 10)
``command_timeout``                seconds a statement may run (no limit)
``statement_cache_size``           prepared statements kept per connection (100)
``acquire_timeout``                seconds to wait for a free connection (30),
                                   then :class:`uow.errors.PoolTimeoutError`
``max_inactive_connection_lifetime``  seconds before an idle connection closes (300)
``connect_timeout``                seconds to open a connection (60)
``copy_threshold``                 rows from which inserts with known keys use
                                   COPY (100; COPY measured 1.4-2x faster
                                   than an unnest INSERT from 100 rows up)
=================================  ============================================

``ssl`` and ``server_settings`` keywords are passed to asyncpg as they are.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import asyncpg.pool

from uow.adapter import Adapter, Connection, require_asyncio
from uow.errors import ConfigurationError, OperationalError, PoolTimeoutError
from uow_postgres.connection import PostgresConnection, RawConnection
from uow_postgres.dialect import PostgresDialect
from uow_postgres.errors import translate

_INT_OPTIONS = ("min_size", "max_size", "statement_cache_size", "copy_threshold")
_FLOAT_OPTIONS = ("command_timeout", "acquire_timeout", "max_inactive_connection_lifetime", "connect_timeout")
_PASSED_THROUGH = ("ssl", "server_settings")
_DEFAULTS: dict[str, Any] = {
    "min_size": 2,
    "max_size": 10,
    "statement_cache_size": 100,
    "copy_threshold": 100,
    "command_timeout": None,
    "acquire_timeout": 30.0,
    "max_inactive_connection_lifetime": 300.0,
    "connect_timeout": 60.0,
}
RELEASE_TIMEOUT = 5.0
"""Seconds a release may spend rolling back before the connection is closed instead."""


def _option(name: str, value: Any) -> Any:
    if value is None or name in _PASSED_THROUGH:
        return value
    try:
        number = int(value) if name in _INT_OPTIONS else float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"PostgreSQL option {name}={value!r} must be a number") from None
    if number < 0 or (isinstance(number, float) and math.isnan(number)):
        raise ConfigurationError(f"PostgreSQL option {name}={value!r} must not be negative")
    return number


def parse_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL for asyncpg (pool options removed from its query) and the settings."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a PostgreSQL URL: {url!r} (expected postgresql://…)")
    settings = dict(_DEFAULTS)
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _DEFAULTS:
            settings[name] = _option(name, value)
        elif name == "pool_timeout":
            settings["acquire_timeout"] = _option("acquire_timeout", value)
        else:
            kept.append((name, value))
    for name, value in options.items():
        if name not in _DEFAULTS and name not in _PASSED_THROUGH:
            known = ", ".join(sorted([*_DEFAULTS, *_PASSED_THROUGH]))
            raise ConfigurationError(f"unknown PostgreSQL option {name!r}; known options: {known}")
        settings[name] = _option(name, value)
    if settings["min_size"] > settings["max_size"]:
        raise ConfigurationError(f"min_size ({settings['min_size']}) exceeds max_size ({settings['max_size']})")
    return urlunsplit(parts._replace(query=urlencode(kept))), settings


class PostgresAdapter(Adapter):
    """PostgreSQL through an asyncpg connection pool (``postgresql://`` URLs)."""

    scheme: ClassVar[str] = "postgresql"
    supports_raw_sql: ClassVar[bool] = True
    paramstyle: ClassVar[str] = "numeric"

    def __init__(self, dsn: str, settings: dict[str, Any]):
        self.dsn = dsn
        self.settings = settings
        self.dialect = PostgresDialect()
        self._pool: asyncpg.pool.Pool[Any] | None = None  # the pool opened by open()
        self._opening = anyio.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresAdapter:
        dsn, settings = parse_url(url, options)
        return cls(dsn, settings)

    async def open(self) -> None:
        require_asyncio("PostgreSQL", "asyncpg")
        async with self._opening:
            if self._pool is not None:
                return
            settings = self.settings
            extra = {name: settings[name] for name in _PASSED_THROUGH if settings.get(name) is not None}
            try:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=settings["min_size"],
                    max_size=settings["max_size"],
                    command_timeout=settings["command_timeout"],
                    statement_cache_size=settings["statement_cache_size"],
                    max_inactive_connection_lifetime=settings["max_inactive_connection_lifetime"],
                    timeout=settings["connect_timeout"],
                    **extra,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise OperationalError(f"cannot connect to PostgreSQL: {translate(exc)}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(RELEASE_TIMEOUT):
                        await pool.close()
                except (Exception, TimeoutError):
                    pool.terminate()

    async def acquire(self) -> Connection:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        timeout = self.settings["acquire_timeout"]
        try:
            with anyio.fail_after(timeout):
                raw: RawConnection = await self._pool.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"no PostgreSQL connection became free within {timeout} s "
                f"(max_size={self.settings['max_size']}); raise max_size or acquire_timeout"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc
        return PostgresConnection(raw, self.dialect, copy_threshold=self.settings["copy_threshold"])

    async def release(self, connection: Connection, *, discard: bool = False) -> None:
        """Return the connection to the pool outside any transaction.

        A connection still in a transaction is rolled back first; if that fails,
        or the connection's state is unknown (a call was cancelled half-way, the
        link broke, or ``discard``), it is closed instead, so the pool only ever
        holds clean connections. Cancellation cannot interrupt this.
        """
        assert isinstance(connection, PostgresConnection)
        raw = connection.raw
        pool = self._pool
        with anyio.CancelScope(shield=True):
            try:
                close = discard or connection.broken or raw.is_closed()
                if not raw.is_closed():
                    # a cancelled statement leaves asyncpg sending a cancel request on
                    # the side; let it finish, or closing races with it
                    await _cancellation_done(raw)
                if not close and raw.is_in_transaction():
                    try:
                        with anyio.fail_after(RELEASE_TIMEOUT):
                            await raw.execute("ROLLBACK")
                    except (Exception, TimeoutError):
                        close = True
                if close:
                    raw.terminate()
                if pool is not None:
                    with anyio.fail_after(RELEASE_TIMEOUT):
                        await pool.release(raw)
            except (Exception, TimeoutError):
                # Already handed back by asyncpg (the link broke), or the pool's
                # own reset failed: make sure the connection is closed.
                with contextlib.suppress(Exception):
                    raw.terminate()


async def _cancellation_done(raw: RawConnection) -> None:
    protocol = getattr(raw, "_protocol", None)
    is_cancelling = getattr(protocol, "_is_cancelling", None)
    if is_cancelling is not None and is_cancelling():
        with contextlib.suppress(Exception):
            await protocol._wait_for_cancellation(RELEASE_TIMEOUT)  # type: ignore[union-attr]


__all__ = ["PostgresAdapter", "parse_url"]
