"""asyncpg exceptions turned into :mod:`uow.errors`.

Constraint violations become :class:`~uow.errors.IntegrityError` with the
constraint name, table and columns PostgreSQL reports (the columns parsed from
its ``Key (a, b)=(…)`` detail) and, when the failing row can be recognised in
the batch, its index. Serialization failures and deadlocks become
:class:`~uow.errors.SerializationFailure`; a lost, refused or timed-out
connection becomes :class:`~uow.errors.OperationalError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from uow.errors import ConstraintKind, IntegrityError, OperationalError, SerializationFailure, StorageError
from uow.model import TableInfo
from uow_postgres.dialect import NOT_A_NUMBER

_INTEGRITY_KINDS: dict[str, ConstraintKind] = {
    "23505": "unique",
    "23503": "foreign_key",
    "23502": "not_null",
    "23514": "check",
}
_SERIALIZATION = {"40001", "40P01"}
# Connection exceptions, insufficient resources, operator intervention (shutdown,
# query cancelled by timeout), system errors.
_OPERATIONAL_CLASSES = ("08", "53", "57", "58")
_KEY_DETAIL = re.compile(r"^Key \((?P<columns>.*?)\)=\((?P<values>.*)\)(?: already exists| is (?:not present|still))")


class Failure:
    """Where a statement failed: the batch's table, columns and rows, for the
    error's ``table``, ``columns`` and ``row_index``.

    ``make_rows``, when given, makes the rows only if an error needs them, so a
    batch that sends columns need not build rows on the way.
    """

    __slots__ = ("table", "columns", "_rows", "_make_rows")

    def __init__(
        self,
        table: TableInfo | None,
        columns: Sequence[str] = (),
        rows: Sequence[Sequence[Any]] = (),
        *,
        make_rows: Callable[[], Sequence[Sequence[Any]]] | None = None,
    ):
        self.table = table
        self.columns = columns
        self._rows = rows
        self._make_rows = make_rows

    @property
    def rows(self) -> Sequence[Sequence[Any]]:
        if self._make_rows is not None:
            self._rows, self._make_rows = self._make_rows(), None
        return self._rows


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection can no longer be trusted."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
        return True
    return isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "").startswith(_OPERATIONAL_CLASSES)


def translate(exc: BaseException, failure: Failure | None = None) -> StorageError:
    """The :mod:`uow.errors` exception for a driver exception (raise it ``from exc``)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate: str | None = exc.sqlstate
        message = str(exc)
        if sqlstate in _INTEGRITY_KINDS:
            return _integrity_error(exc, sqlstate, failure)
        if sqlstate in _SERIALIZATION:
            table = failure.table.name if failure and failure.table else None
            return SerializationFailure(message, table=table, sqlstate=sqlstate)
        if str(sqlstate or "").startswith(_OPERATIONAL_CLASSES):
            return OperationalError(message, sqlstate=sqlstate)
        if sqlstate == "22P02" and NOT_A_NUMBER in message:  # the dialect's refusal of a NaN result
            return StorageError(f"a bulk update's {NOT_A_NUMBER} (NaN)", sqlstate="22003")
        return StorageError(message, sqlstate=sqlstate)
    if isinstance(exc, StorageError):  # raised by uow itself while encoding a value: said already
        return StorageError(str(exc), sqlstate=exc.sqlstate)
    if isinstance(exc, TimeoutError):
        return OperationalError(f"the database did not answer in time ({type(exc).__name__})")
    if is_connection_error(exc):
        # found by the client: the SQLSTATE a server reports for a connection it no longer has
        sqlstate = "08006" if isinstance(exc, OSError) else "08003"
        return OperationalError(
            f"the connection to PostgreSQL was lost ({type(exc).__name__}: {exc})", sqlstate=sqlstate
        )
    return StorageError(f"{type(exc).__name__}: {exc}")


def _integrity_error(exc: asyncpg.PostgresError, sqlstate: str, failure: Failure | None) -> IntegrityError:
    kind = _INTEGRITY_KINDS[sqlstate]
    constraint: str | None = getattr(exc, "constraint_name", None)
    table_name: str | None = getattr(exc, "table_name", None)
    detail: str = getattr(exc, "detail", None) or ""
    columns: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    match = _KEY_DETAIL.match(detail)
    if match:
        columns = tuple(_split_list(match.group("columns"), identifiers=True))
        values = tuple(_split_list(match.group("values"), identifiers=False))
    column_name: str | None = getattr(exc, "column_name", None)
    if not columns and column_name:
        columns = (column_name,)
    table = failure.table if failure else None
    if kind == "foreign_key" and " is still referenced from table " in detail:
        # a parent row deleted (or its key changed) under children: the error is about the
        # children's table (PostgreSQL's table_name), not the batch's
        table = None
        columns = _constrained_column(constraint, table_name)
    if kind == "unique" and (
        (constraint or "").endswith("_pkey") or (table is not None and columns == (table.key_column,))
    ):
        kind = "primary_key"
    if table is not None:
        table_name = table.name
    row_index = _find_row(kind, columns, values, failure) if failure else None
    return IntegrityError(
        str(exc),
        kind=kind,
        table=table_name,
        columns=columns,
        constraint=constraint,
        sqlstate=sqlstate,
        row_index=row_index,
    )


def _constrained_column(constraint: str | None, table_name: str | None) -> tuple[str, ...]:
    """The column of a foreign key PostgreSQL named by default (``<table>_<column>_fkey``,
    as for the keys uow creates), or ``()``: for another name, and for one
    PostgreSQL shortened to its 63-byte limit, which may have cut the column's."""
    prefix = f"{table_name}_"
    if (
        constraint
        and table_name
        and len(constraint.encode()) < _MAX_IDENTIFIER
        and constraint.startswith(prefix)
        and constraint.endswith("_fkey")
    ):
        return (constraint[len(prefix) : -len("_fkey")],)
    return ()


_MAX_IDENTIFIER = 63


def _split_list(text: str, *, identifiers: bool) -> list[str]:
    """Split PostgreSQL's ``a, "b c"`` column list or ``1, x`` value list."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if identifiers and char == '"':
            if quoted and text[index + 1 : index + 2] == '"':
                current.append('"')
                index += 1
            else:
                quoted = not quoted
        elif char == "," and not quoted and text[index + 1 : index + 2] == " ":
            items.append("".join(current))
            current = []
            index += 1
        else:
            current.append(char)
        index += 1
    items.append("".join(current))
    return items


def _find_row(kind: str, columns: tuple[str, ...], values: tuple[str, ...], failure: Failure) -> int | None:
    """The index of the batch row the error is about, when it can be told."""
    if not failure.rows or not columns:
        return None
    if len(failure.rows) == 1:
        return 0
    positions = {name: i for i, name in enumerate(failure.columns)}
    if kind == "not_null":
        position = positions.get(columns[0])
        if position is None:
            return 0  # the column is not written at all: every row fails, the first first
        return next((i for i, row in enumerate(failure.rows) if row[position] is None), None)
    if len(values) != len(columns) or any(c not in positions for c in columns):
        return None
    wanted = [(positions[c], v) for c, v in zip(columns, values)]
    matching = [index for index, row in enumerate(failure.rows) if all(_as_text(row[p]) == v for p, v in wanted)]
    if not matching:
        return None
    # rows are written in order: of two rows of the batch holding one unique value, the
    # second is refused (unless a stored row holds it too and refused the first: the error
    # cannot tell, and names the second, which holds the same value)
    return matching[1] if kind in ("unique", "primary_key") and len(matching) > 1 else matching[0]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(getattr(value, "value", value))


__all__ = ["Failure", "is_connection_error", "translate"]
