"""Turning ``sqlite3`` exceptions into :mod:`uow.errors`.

SQLite names the violated constraint in its message (``UNIQUE constraint
failed: users.email``) and, since Python 3.11, in ``sqlite_errorname``
(``SQLITE_CONSTRAINT_PRIMARYKEY``); both are read. SQLite reports no SQLSTATE,
so ``sqlstate`` stays ``None``. A foreign-key failure names neither table nor
column; the connection works those out when it can (see
:mod:`uow_sqlite.diagnose`) and passes them in.
"""

from __future__ import annotations

import re
import sqlite3

from uow.errors import ConstraintKind, IntegrityError, OperationalError, SerializationFailure, StorageError
from uow.model import TableInfo

_KIND_BY_NAME: dict[str, ConstraintKind] = {
    "SQLITE_CONSTRAINT_PRIMARYKEY": "primary_key",
    "SQLITE_CONSTRAINT_ROWID": "primary_key",
    "SQLITE_CONSTRAINT_UNIQUE": "unique",
    "SQLITE_CONSTRAINT_NOTNULL": "not_null",
    "SQLITE_CONSTRAINT_FOREIGNKEY": "foreign_key",
    "SQLITE_CONSTRAINT_CHECK": "check",
}

_KIND_BY_MESSAGE: tuple[tuple[str, ConstraintKind], ...] = (
    ("UNIQUE constraint failed", "unique"),
    ("NOT NULL constraint failed", "not_null"),
    ("FOREIGN KEY constraint failed", "foreign_key"),
    ("CHECK constraint failed", "check"),
)

_COLUMNS = re.compile(r"constraint failed: (.+)$")
_OPERATIONAL_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL")


def constraint_kind(exc: sqlite3.IntegrityError) -> ConstraintKind:
    """``"unique"``, ``"primary_key"``, ``"not_null"``, ``"foreign_key"`` or ``"check"``."""
    name = getattr(exc, "sqlite_errorname", None)
    if name in _KIND_BY_NAME:
        return _KIND_BY_NAME[name]
    message = str(exc)
    for prefix, kind in _KIND_BY_MESSAGE:
        if message.startswith(prefix):
            return kind
    return "check"


def constraint_target(exc: sqlite3.IntegrityError) -> tuple[str | None, tuple[str, ...], str | None]:
    """``(table, columns, constraint name)`` as far as SQLite's message tells.

    ``"UNIQUE constraint failed: t.a, t.b"`` gives ``("t", ("a", "b"), None)``;
    ``"CHECK constraint failed: positive_age"`` gives the constraint name.
    """
    match = _COLUMNS.search(str(exc))
    if match is None:
        return None, (), None
    detail = match.group(1)
    if constraint_kind(exc) == "check":
        return None, (), detail
    table: str | None = None
    columns: list[str] = []
    for item in detail.split(", "):
        owner, dot, column = item.rpartition(".")
        if not dot:
            return None, (), detail
        table = owner
        columns.append(column)
    return table, tuple(columns), None


def integrity_error(
    exc: sqlite3.IntegrityError,
    *,
    table: TableInfo | None = None,
    row_index: int | None = None,
    fk_table: str | None = None,
    fk_columns: tuple[str, ...] = (),
) -> IntegrityError:
    """The :class:`uow.errors.IntegrityError` for a constraint SQLite refused.

    ``table`` is the table the statement wrote, used to tell a primary-key
    clash from a unique one; ``fk_table`` and ``fk_columns`` name the columns
    of a failed foreign key when they were worked out.
    """
    kind = constraint_kind(exc)
    target_table, columns, constraint = constraint_target(exc)
    if kind == "foreign_key":
        target_table, columns = fk_table, fk_columns
    elif kind == "unique" and table is not None and target_table == table.name:
        constraint = _unique_constraint_name(table, columns)
        if columns == (table.key_column,):
            kind = "primary_key"
    error = IntegrityError(
        str(exc),
        kind=kind,
        table=target_table,
        columns=columns,
        constraint=constraint,
        row_index=row_index,
    )
    error.__cause__ = exc
    return error


def _unique_constraint_name(table: TableInfo, columns: tuple[str, ...]) -> str | None:
    """The name PostgreSQL gives the unique constraint (or primary key) of
    ``table`` over ``columns``, which SQLite does not report: errors name it
    alike on every adapter."""
    if columns == (table.key_column,):
        return f"{table.name}_pkey"
    if len(columns) == 1 and columns[0] in table.unique_columns:
        return f"{table.name}_{columns[0]}_key"
    return next((u.name for u in table.unique_together if u.columns == columns), None)


def _is_operational(exc: sqlite3.Error, name: str, message: str) -> bool:
    if name.startswith(_OPERATIONAL_NAMES) or "closed" in message or "database is locked" in message:
        return True
    return isinstance(exc, sqlite3.OperationalError) and not name.startswith("SQLITE_ERROR")


def storage_error(exc: sqlite3.Error) -> StorageError:
    """The :mod:`uow.errors` exception for a ``sqlite3`` error other than a constraint.

    A busy snapshot (a deferred transaction that read an older snapshot tried to
    write after another connection committed) is a
    :class:`~uow.errors.SerializationFailure`: running the unit of work again
    may succeed. Busy, locked, I/O and closed-connection errors are
    :class:`~uow.errors.OperationalError`; the rest :class:`~uow.errors.StorageError`.
    """
    if isinstance(exc, sqlite3.IntegrityError):
        return integrity_error(exc)
    name = getattr(exc, "sqlite_errorname", None) or ""
    message = str(exc)
    error: StorageError
    if name == "SQLITE_BUSY_SNAPSHOT":
        error = SerializationFailure(
            f"{message}: another transaction wrote since this one read; run the unit of work again "
            "(engine.run_in_transaction does)"
        )
    elif _is_operational(exc, name, message):
        error = OperationalError(message)
    else:
        error = StorageError(message)
    error.__cause__ = exc
    return error


__all__ = ["constraint_kind", "constraint_target", "integrity_error", "storage_error"]
