"""The storage adapter contract.

An adapter owns connections to one database and speaks its dialect. The core
never builds SQL; it hands adapters :mod:`uow.batches` to write and
:class:`uow.statements.Select` to read. A backend is one package that subclasses
:class:`Adapter` and :class:`Connection` and registers the adapter class under
the entry-point group ``uow.adapters`` with its URL scheme as the name::

    [project.entry-points."uow.adapters"]
    mydb = "uow_mydb:MyDbAdapter"

Every adapter must pass the conformance suite in :mod:`uow.testing`.

Rules every adapter keeps:

- rows travel as tuples in ``TableInfo.column_names`` order, with Python values
  of the column's type (``datetime``, ``Decimal``, ``UUID``, ``bool``, a JSON
  value as its column's annotation says, through :func:`json_decoder`),
  whatever the database stores;
- constraint violations raise :class:`uow.errors.IntegrityError` with ``kind``,
  ``table``, ``columns`` and, when known, ``row_index`` (the failing row of the
  batch); every other driver error is wrapped in a :class:`uow.errors.StorageError`
  subclass, with the driver's exception as ``__cause__``;
- ``apply`` never commits: the session decides when a transaction ends.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import msgspec

from uow.batches import Batch, BatchResult
from uow.errors import ConfigurationError, StorageError
from uow.model import TableInfo
from uow.statements import Select


class Connection(ABC):
    """One connection, used by one session at a time.

    A session calls :meth:`begin` before its first statement and ends every
    transaction with :meth:`commit` or :meth:`rollback`.
    """

    @abstractmethod
    async def begin(self, isolation: str | None = None) -> None:
        """Start a transaction, at ``isolation`` (``"read committed"``,
        ``"repeatable read"``, ``"serializable"``) where the backend has levels."""

    @abstractmethod
    async def commit(self) -> None:
        """Commit the transaction."""

    @abstractmethod
    async def rollback(self) -> None:
        """Roll the transaction back."""

    @abstractmethod
    async def savepoint(self, name: str) -> None:
        """Set a savepoint inside the transaction."""

    @abstractmethod
    async def release_savepoint(self, name: str) -> None:
        """Forget a savepoint, keeping what was done since."""

    @abstractmethod
    async def rollback_to_savepoint(self, name: str) -> None:
        """Undo everything since the savepoint; the savepoint stays set."""

    async def replace_savepoint(self, released: str, name: str) -> None:
        """Release the savepoint ``released`` (the last one set) and set ``name``
        in its place. A session calls this rather than the two methods when it
        releases a flush's savepoint late, at its next savepoint; a backend that
        can send both statements in one round trip overrides it."""
        await self.release_savepoint(released)
        await self.savepoint(name)

    @abstractmethod
    async def apply(self, batch: Batch) -> BatchResult:
        """Write one batch (see :mod:`uow.batches` for what each kind returns)."""

    @abstractmethod
    async def fetch(self, select: Select) -> list[tuple[Any, ...]]:
        """Run a read and return every row."""

    @abstractmethod
    def stream(self, select: Select, chunk_size: int = 1000) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Run a read and yield its rows in chunks, holding at most about one
        chunk in memory."""

    @abstractmethod
    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL written by the caller with values as parameters, returning
        the rows it produced (none for statements without results)."""

    @abstractmethod
    async def create_tables(self, tables: Sequence[TableInfo]) -> None:
        """Create the tables, with their constraints, if they do not exist."""

    @abstractmethod
    async def drop_tables(self, tables: Sequence[TableInfo]) -> None:
        """Drop the tables if they exist."""


class Adapter(ABC):
    """A database: makes connections and owns the pool, if the backend has one."""

    scheme: ClassVar[str]
    """The URL scheme this adapter is registered under, for messages."""

    supports_raw_sql: ClassVar[bool] = True
    """Whether :meth:`Connection.execute_raw` works."""

    paramstyle: ClassVar[str] = "qmark"
    """How ``execute_raw`` expects parameters: ``"qmark"`` (``?``) or ``"numeric"`` (``$1``)."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: Any) -> Adapter:
        """Build an adapter from a URL and keyword options (pool sizes and the
        like); do no I/O yet."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the pool; called once by the engine before first use."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection; the adapter is not used again."""

    @abstractmethod
    async def acquire(self) -> Connection:
        """A connection for one session, waiting for a free one if needed.

        Raises :class:`uow.errors.PoolTimeoutError` when none frees up in time.
        """

    @abstractmethod
    async def release(self, connection: Connection, *, discard: bool = False) -> None:
        """Give a connection back, outside any transaction. With ``discard`` (it
        may be in an unknown state) the adapter closes it instead of reusing it."""


def require_asyncio(adapter: str, driver: str) -> None:
    """Raise :class:`~uow.errors.ConfigurationError` unless an asyncio event
    loop runs this task: the adapter's driver runs on asyncio only (under
    trio it would fail deep inside the driver with a message that does not
    say so)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(
            f"the {adapter} adapter needs asyncio ({driver} runs on asyncio only); "
            "on trio, use memory:// or run the program with asyncio"
        ) from None


_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def json_text(value: Any) -> bytes:
    """``value`` as the JSON text every adapter stores. A value no database
    stores alike raises :class:`~uow.errors.StorageError`, so every adapter
    refuses it at the flush: text with a lone surrogate (no UTF-8 text holds
    it) or with a NUL character (PostgreSQL's ``JSONB`` refuses it)."""
    try:
        text = _json_encode(value)
    except UnicodeEncodeError as exc:
        raise StorageError(f"cannot store {value!r} as JSON: {exc}") from exc
    # msgspec writes NUL as \u0000; a backslash written before "u0000" also shows it,
    # so the value itself is looked through only then
    if b"\\u0000" in text and _holds_nul(_json_decode(text)):
        raise StorageError(
            f"cannot store {value!r} as JSON: text with a NUL character is not a value databases agree on "
            "(PostgreSQL refuses it)"
        )
    return text


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(map(_holds_nul, value))
    return False


def json_decoder(python_type: Any) -> Callable[[str | bytes], Any]:
    """What turns stored JSON text into a value of a JSON column's annotated
    type (``dict[str, int]``, ``tuple[int, ...]``, a ``msgspec.Struct``), as
    every adapter hands it back. A stored value of another shape (written by
    raw SQL, or before the annotation changed) comes back as plain JSON rather
    than failing the read."""
    plain: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
    try:
        typed: msgspec.json.Decoder[Any] = msgspec.json.Decoder(python_type)
    except TypeError:  # an annotation msgspec cannot decode into
        return plain.decode

    def decode(text: str | bytes) -> Any:
        try:
            return typed.decode(text)
        except msgspec.ValidationError:
            return plain.decode(text)

    return decode


__all__ = ["Adapter", "Connection", "json_decoder", "json_text", "require_asyncio"]
