"""The exception hierarchy: everything uow raises derives from :class:`UowError`.

Driver exceptions never leave an adapter unwrapped; the original is kept as
``__cause__`` and, where the database gave one, its SQLSTATE as ``sqlstate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from uow.events import AnyEvent
    from uow.model import Model

ConstraintKind = Literal["primary_key", "unique", "foreign_key", "not_null", "check"]
"""What an :class:`IntegrityError` says was violated."""


class UowError(Exception):
    """Base class of every error raised by uow."""


class ConfigurationError(UowError):
    """An engine URL, option or adapter registration is wrong."""


class ModelDefinitionError(UowError):
    """A model class declares something uow cannot map to a table."""


class ValidationError(UowError, ValueError):
    """A value does not fit its column, or a field name is unknown; raised before
    anything is recorded or written."""


class SessionStateError(UowError):
    """The session, or an object in it, is not in a state that allows the call."""


class DetachedInstanceError(SessionStateError):
    """The object is not tracked by this session."""


class RelationNotLoadedError(UowError, AttributeError):
    """A relation was read that was not loaded; uow never loads lazily."""


class NoResultFound(UowError):
    """A query that must return a row returned none."""


class MultipleResultsFound(UowError):
    """A query that must return at most one row returned several."""


class QueryError(UowError):
    """A query names an unknown field or lookup, or is malformed."""


class UnknownFieldError(QueryError, AttributeError):
    """A query, or a class-level column expression (``User.agee``), names a field
    the model does not have; the message lists the fields it has."""


class UnsupportedOperationError(UowError):
    """The adapter in use cannot do what was asked (for example raw SQL on memory)."""


class CycleError(UowError):
    """Rows reference each other in a cycle that no nullable foreign key can break.

    ``tables`` names the tables in the cycle and ``rows`` the ``(table, key or
    ref)`` pairs of the rows involved.
    """

    def __init__(self, message: str, *, tables: tuple[str, ...], rows: tuple[tuple[str, Any], ...]):
        super().__init__(message)
        self.tables = tables
        self.rows = rows


class StorageError(UowError):
    """The database refused or failed an operation.

    ``sqlstate`` holds the database's error code when it reports one.
    """

    sqlstate: str | None = None

    def __init__(self, message: str, *, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class OperationalError(StorageError):
    """The connection failed, timed out or was lost."""


class PoolTimeoutError(OperationalError):
    """No connection became free in time."""


class IntegrityError(StorageError):
    """A constraint was violated.

    ``kind`` is one of ``"primary_key"``, ``"unique"``, ``"foreign_key"``,
    ``"not_null"`` or ``"check"``; ``constraint`` the constraint's name where the
    database gives one; ``table`` and ``columns`` what it covers. When the error
    comes out of a flush, the session fills ``event`` (the journal event whose
    row was refused), ``model`` and ``key``.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ConstraintKind,
        table: str | None = None,
        columns: tuple[str, ...] = (),
        constraint: str | None = None,
        sqlstate: str | None = None,
        row_index: int | None = None,
    ):
        super().__init__(message, sqlstate=sqlstate)
        self.kind = kind
        self.table = table
        self.columns = columns
        self.constraint = constraint
        self.row_index = row_index
        self.batch_index: int | None = None
        self.event: AnyEvent | None = None
        self.model: type[Model] | None = None
        self.key: Any = None

    def __str__(self) -> str:
        text = super().__str__()
        if self.event is not None:
            model = self.model.__name__ if self.model is not None else self.table
            text += f" (event #{self.event.seq} {type(self.event).__name__} on {model} key={self.key!r})"
        return text


class ConcurrencyError(StorageError):
    """Another transaction changed or deleted a row this session updates.

    Raised when an update or delete by key matches fewer rows than expected,
    including a version-column mismatch under optimistic locking. ``table`` and
    ``keys`` name the stale rows.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        keys: tuple[Any, ...] = (),
        sqlstate: str | None = None,
    ):
        super().__init__(message, sqlstate=sqlstate)
        self.table = table
        self.keys = keys


class SerializationFailure(ConcurrencyError):
    """The database aborted the transaction to keep it serializable (SQLSTATE 40001
    or a deadlock, 40P01); re-running the whole unit of work may succeed."""


class ReplayError(UowError, KeyError):
    """:func:`uow.replay` met an event about a row it does not hold (one
    stored before the events began: pass it in ``base``). Also a ``KeyError``."""

    def __str__(self) -> str:  # a KeyError would show its message quoted
        return str(self.args[0]) if self.args else ""


class AuditChainError(UowError):
    """An audit trail's chain does not hold: ``entry_id`` names the first entry
    that was edited, removed or slipped in (``None`` when the chain's end is missing)."""

    def __init__(self, entry_id: int | None, reason: str):
        self.entry_id = entry_id
        super().__init__(f"audit entry {entry_id} {reason}" if entry_id is not None else f"audit chain: {reason}")


class CommitHookError(UowError):
    """The transaction **is committed**, but engine commit hooks raised. Every
    hook ran; ``errors`` holds what each failing one raised, in order (the
    first is also the ``__cause__``)."""

    def __init__(self, errors: Sequence[Exception]):
        self.errors = tuple(errors)
        names = ", ".join(f"{type(e).__name__}: {e}" for e in self.errors)
        super().__init__(f"the transaction is committed, but {len(self.errors)} commit hook(s) raised: {names}")


__all__ = [
    "AuditChainError",
    "CommitHookError",
    "ConcurrencyError",
    "ConstraintKind",
    "ConfigurationError",
    "CycleError",
    "DetachedInstanceError",
    "IntegrityError",
    "ModelDefinitionError",
    "MultipleResultsFound",
    "NoResultFound",
    "OperationalError",
    "PoolTimeoutError",
    "QueryError",
    "ReplayError",
    "RelationNotLoadedError",
    "SerializationFailure",
    "SessionStateError",
    "StorageError",
    "UnknownFieldError",
    "UnsupportedOperationError",
    "UowError",
    "ValidationError",
]
