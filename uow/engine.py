"""Engines: one database, found by URL scheme, with its adapter and pool.

>>> engine = create_engine("sqlite:///app.db")   # doctest: +SKIP
>>> async with engine:                            # doctest: +SKIP
...     await engine.create_all(User, Post)

Adapters are looked up in the entry-point group ``uow.adapters`` by the URL's
scheme (``memory``, ``sqlite``, ``postgresql``, ...), so third-party backends
plug in the same way the built-in ones do.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import anyio

from uow.adapter import Adapter, Connection
from uow.errors import ConfigurationError, OperationalError, SerializationFailure
from uow.model import Model, TableInfo, model_tables, table_info

if TYPE_CHECKING:
    from uow.events import AnyEvent
    from uow.session import AsyncSession, SessionOptions

T = TypeVar("T")

_adapter_classes: dict[str, type[Adapter]] = {}


def register_adapter(scheme: str, adapter_class: type[Adapter]) -> None:
    """Register an adapter class for a URL scheme in this process (entry points
    are the usual way; this is for adapters defined at run time, such as in tests)."""
    _adapter_classes[scheme] = adapter_class


def adapter_class_for(scheme: str) -> type[Adapter]:
    """The adapter class registered for ``scheme``."""
    if scheme in _adapter_classes:
        return _adapter_classes[scheme]
    found = [ep for ep in entry_points(group="uow.adapters") if ep.name == scheme]
    if not found:
        known = sorted({ep.name for ep in entry_points(group="uow.adapters")} | set(_adapter_classes))
        raise ConfigurationError(
            f"no storage adapter for URL scheme {scheme!r}; installed: {', '.join(known) or 'none'}"
        )
    try:
        adapter_class = found[0].load()
    except ImportError as exc:
        raise ConfigurationError(
            f"the adapter for {scheme!r} could not be imported ({exc}); install its extra, "
            f"for example pip install 'uow[{'postgres' if scheme.startswith('postgres') else scheme}]'"
        ) from exc
    if not (isinstance(adapter_class, type) and issubclass(adapter_class, Adapter)):
        raise ConfigurationError(f"entry point {scheme!r} does not name an Adapter subclass")
    _adapter_classes[scheme] = adapter_class
    return adapter_class


def scheme_of(url: str) -> str:
    """The adapter scheme of a URL (``postgresql+asyncpg://`` gives ``postgresql``)."""
    if "://" not in url:
        raise ConfigurationError(f"not a database URL: {url!r} (expected scheme://...)")
    return url.split("://", 1)[0].split("+", 1)[0].lower()


class Engine:
    """A database: its adapter, its connection pool and the models created in it.

    Create with :func:`create_engine`; use ``async with`` (or call
    :meth:`dispose`) to close its connections.
    """

    def __init__(self, url: str, adapter: Adapter):
        self.url = url
        self.adapter = adapter
        self._opened = False
        self._disposed = False
        self._open_lock = anyio.Lock()
        self.models: dict[str, type[Model]] = {}
        self.commit_hooks: list[Callable[[list[AnyEvent]], Awaitable[None] | None]] = []
        """Called after every commit with the events it committed."""
        self.before_commit_hooks: list[Callable[[AsyncSession, list[AnyEvent]], Awaitable[None] | None]] = []
        """Called inside every transaction about to commit, after its last
        flush, with the session and the transaction's events; what they write
        through the session commits with the data, or not at all."""

    @property
    def dialect(self) -> str:
        """The adapter's URL scheme."""
        return self.adapter.scheme

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        async with self._open_lock:
            if self._disposed:
                raise OperationalError("this engine was disposed: its pool is closed for good (create another engine)")
            if not self._opened:
                await self.adapter.open()
                self._opened = True

    async def acquire(self) -> Connection:
        """A connection from the pool (sessions do this for you)."""
        await self._ensure_open()
        return await self.adapter.acquire()

    def register(self, *models: type[Model]) -> list[TableInfo]:
        """Make models known to the engine's sessions without creating tables."""
        infos = [table_info(m) for m in models]
        for info in infos:
            known = self.models.get(info.name)
            if known is not None and known is not info.model:
                raise ConfigurationError(
                    f"table {info.name!r} is already mapped by {known.__qualname__}; "
                    f"{info.model.__qualname__} cannot map it too in the same engine"
                )
            self.models[info.name] = info.model
        return infos

    async def create_all(self, *models: type[Model]) -> None:
        """Create the tables of ``models`` (with their constraints) if missing."""
        self.register(*models)
        tables = model_tables(list(models))
        await self._in_transaction(lambda connection: connection.create_tables(tables))

    async def drop_all(self, *models: type[Model]) -> None:
        """Drop the tables of ``models`` (every registered model when none given)."""
        chosen = list(models) or list(self.models.values())
        tables = list(reversed(model_tables(chosen)))
        await self._in_transaction(lambda connection: connection.drop_tables(tables))

    async def _in_transaction(self, work: Callable[[Connection], Any]) -> None:
        connection = await self.acquire()
        try:
            await connection.begin()
            try:
                await work(connection)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await connection.rollback()
                raise
            with anyio.CancelScope(shield=True):
                await connection.commit()
        finally:
            with anyio.CancelScope(shield=True):
                await self.adapter.release(connection)

    async def run_in_transaction(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        retries: int = 5,
        backoff: float = 0.02,
        max_backoff: float = 1.0,
        retry_on: type[Exception] | tuple[type[Exception], ...] = SerializationFailure,
        **session_options: Unpack[SessionOptions],
    ) -> T:
        """Run ``work(session)`` as one transaction, committed when it returns,
        and run it again from the start on a serialization failure or deadlock
        (SQLSTATE 40001, 40P01), up to ``retries`` more times with jittered
        exponential backoff. ``retry_on`` replaces the errors that run it
        again: ``retry_on=ConcurrencyError`` also runs it when optimistic
        locking refused a write (a ``Versioned`` row another transaction
        changed since ``work`` read it), and covers serialization failures,
        its subclass.

        The contract PostgreSQL-compatible distributed databases ask of clients::

            async def transfer(session):
                source = await session.get_one(Account, 1)
                target = await session.get_one(Account, 2)
                source.balance -= 10
                target.balance += 10

            await engine.run_in_transaction(transfer, isolation="serializable")

        ``work`` must be safe to run again: each attempt gets a fresh session,
        and only the attempt that commits leaves anything behind.
        """
        from uow.session import AsyncSession

        attempt = 0
        while True:
            try:
                async with AsyncSession(self, **session_options) as session:
                    result = await work(session)
                    await session.commit()
                return result
            except retry_on:
                attempt += 1
                if attempt > retries:
                    raise
                delay = min(max_backoff, backoff * 2 ** (attempt - 1))
                await anyio.sleep(delay * random.uniform(0.5, 1.5))

    async def dispose(self) -> None:
        """Close every connection; the engine is not used afterwards (a session
        that needs a connection gets :class:`~uow.errors.OperationalError`)."""
        self._disposed = True
        with anyio.CancelScope(shield=True):
            async with self._open_lock:  # an open under way finishes first, and is closed here
                if self._opened:
                    await self.adapter.close()
                    self._opened = False

    async def __aenter__(self) -> Engine:
        await self._ensure_open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispose()

    def __repr__(self) -> str:
        return f"<Engine {self.adapter.scheme}>"


def create_engine(url: str, **options: Any) -> Engine:
    """An :class:`Engine` for ``url``; ``options`` go to the adapter.

    ``memory://``, ``sqlite:///path.db``, ``sqlite://:memory:``,
    ``postgresql://user@host/db`` (with the ``postgres`` extra installed).
    No connection is made until the engine is first used. A ``+driver``
    suffix in the scheme is ignored (``postgresql+asyncpg://`` is
    ``postgresql://``): the adapter gets the URL without it.
    """
    scheme = scheme_of(url)
    adapter_class = adapter_class_for(scheme)
    return Engine(url, adapter_class.from_url(scheme + "://" + url.split("://", 1)[1], **options))


__all__ = ["Engine", "adapter_class_for", "create_engine", "register_adapter", "scheme_of"]
