"""SQLite statement text and value conversion.

Storage choices (what a row looks like in the file):

- ``integer`` INTEGER; a generated integer primary key is
  ``INTEGER PRIMARY KEY AUTOINCREMENT``: the key is the rowid, and
  AUTOINCREMENT makes SQLite never hand out a key again after its row was
  deleted (audit records and outbox events keep pointing at one row only), at
  the cost of one ``sqlite_sequence`` update per insert statement;
- ``float`` REAL, ``boolean`` INTEGER 0/1 (read back as ``bool``), ``text``
  TEXT, ``bytes`` BLOB;
- ``datetime`` TEXT in ISO-8601 with microseconds always written, so text order
  is time order. A naive value stays naive; an aware value is stored converted
  to UTC (``+00:00``) and read back as an equal, UTC-aware datetime, the way
  PostgreSQL's ``timestamptz`` behaves;
- ``date`` and ``time`` TEXT in ISO format (times always with microseconds);
- ``decimal`` TEXT (exact, read back as ``Decimal``); comparisons and sorting
  use the ``uow_decimal`` collation, registered on every connection, which
  compares the texts as ``Decimal`` values: ``10 > 9`` and ``1.0 = 1.00`` hold,
  digit for digit, as for the other adapters (a cast to REAL would round past
  15 digits);
- ``uuid`` TEXT in the canonical hyphenated form, read back as ``UUID``;
- ``json`` TEXT written by ``msgspec.json``, read back with the column's type
  (``dict``, ``list``, a Struct, ...);
- Enum columns store the member's ``value`` and read back the member.

LIKE: a case-sensitive ``Like`` compiles to ``GLOB`` with the pattern
translated (SQLite's own LIKE ignores ASCII case by default), which keeps the
built-in C implementation and prefix index use. A case-insensitive ``Like``
calls ``uow_ilike(value, pattern)``, a deterministic Python function registered
on every connection that runs :func:`uow.conditions.like_regex`, so Unicode
case folding (``É``/``é``, ``Ä``/``ä``) matches the memory adapter exactly
instead of SQLite's ASCII-only folding.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from uow.adapter import json_decoder, json_text
from uow.arithmetic import ColumnMath, Operator, compute
from uow.conditions import Between, Compare, Condition, In, Like, like_regex
from uow.errors import StorageError
from uow.model import ColumnInfo, TableInfo
from uow.sql import Converter, Params, SqlDialect
from uow.statements import Select

ILIKE_FUNCTION = "uow_ilike"
"""Name of the SQL function registered on each connection for case-insensitive LIKE."""

DECIMAL_COLLATION = "uow_decimal"
"""Name of the collation registered on each connection that orders decimal text by value."""


def decimal_collation(left: str, right: str) -> int:
    """-1, 0 or 1 as the decimals ``left`` and ``right`` (stored text) compare;
    text that is no number (written outside uow) compares as text, after numbers."""
    try:
        a, b = decimal.Decimal(left), decimal.Decimal(right)
        if a.is_nan() or b.is_nan():  # written outside uow: after every number, as PostgreSQL orders it
            return int(a.is_nan()) - int(b.is_nan())
    except decimal.InvalidOperation:
        a_number, b_number = _is_number(left), _is_number(right)
        if a_number != b_number:
            return -1 if a_number else 1
        return (left > right) - (left < right)
    return (a > b) - (a < b)


MATH_FUNCTION = "uow_math"
"""Name of the SQL function registered on each connection that computes a
bulk update's column arithmetic (``stock - 1``) as uow does everywhere."""

_math_failures = threading.local()


def column_math(value: Any, op: Operator, operand: Any, kind: str) -> Any:
    """``value <op> operand`` of stored values of a column of ``kind``: decimals
    exactly (SQLite's own arithmetic would make floats of their text), and an
    integer past 64 bits refused (SQLite's would make a float of it)."""
    decimals = kind == "decimal"
    try:
        result = compute(
            op,
            None if value is None else decimal.Decimal(value) if decimals else value,
            decimal.Decimal(operand) if decimals else operand,
        )
    except StorageError as exc:  # SQLite reports only that a function raised: kept for the error
        _math_failures.error = exc
        raise
    return _encode_decimal(result) if decimals else result


def math_failure() -> StorageError | None:
    """The error ``column_math`` last raised in this thread (the connection's), taken."""
    error: StorageError | None = getattr(_math_failures, "error", None)
    _math_failures.error = None
    return error


def _is_number(text: str) -> bool:
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    return True


_TYPES = {
    "integer": "INTEGER",
    "float": "REAL",
    "boolean": "INTEGER",
    "text": "TEXT",
    "bytes": "BLOB",
    "datetime": "TEXT",
    "date": "TEXT",
    "time": "TEXT",
    "decimal": "TEXT",
    "uuid": "TEXT",
    "json": "TEXT",
}

_SQL_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_GLOB_SPECIAL = frozenset("*?[")


def ilike(value: Any, pattern: Any) -> int | None:
    """``value ILIKE pattern`` with ``\\`` as escape, as SQL sees it (NULL in, NULL out)."""
    if value is None or pattern is None:
        return None
    return int(like_regex(str(pattern), True).fullmatch(str(value)) is not None)


def like_to_glob(pattern: str) -> str:
    """A GLOB pattern matching exactly what the LIKE ``pattern`` (``\\`` escape) matches."""
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            literal = next(chars, "\\")
            parts.append(f"[{literal}]" if literal in _GLOB_SPECIAL else literal)
        elif char == "%":
            parts.append("*")
        elif char == "_":
            parts.append("?")
        elif char in _GLOB_SPECIAL:
            parts.append(f"[{char}]")
        else:
            parts.append(char)
    return "".join(parts)


def _encode_datetime(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat(timespec="microseconds")
    return value


def _encode_float(value: Any) -> Any:
    if value != value:
        raise StorageError(f"SQLite cannot store {value!r}: it would keep NULL instead")
    return value


def _encode_time(value: Any) -> Any:
    return value.isoformat(timespec="microseconds") if isinstance(value, dt.time) else value


def _encode_date(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def _encode_decimal(value: Any) -> Any:
    return str(value) if isinstance(value, (decimal.Decimal, int, float)) else value


def _decode_decimal(value: Any) -> decimal.Decimal:
    return value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))


def _encode_uuid(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _decode_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _encode_json(value: Any) -> str:
    return json_text(value).decode()


def _encode_enum(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _is_enum(python_type: Any) -> bool:
    return isinstance(python_type, type) and issubclass(python_type, enum.Enum)


class SQLiteDialect(SqlDialect):
    """The :class:`uow.sql.SqlDialect` for SQLite 3.35 or later (RETURNING, NULLS FIRST)."""

    name = "sqlite"
    no_limit_clause = " LIMIT -1"

    def __init__(self) -> None:
        self._row_decoders: dict[int, tuple[TableInfo, Callable[[Sequence[Any]], tuple[Any, ...]]]] = {}
        self._json_decoders: dict[Any, Converter] = {}

    # --- types --------------------------------------------------------------

    def column_type(self, column: ColumnInfo) -> str:
        return _TYPES[column.kind]

    def encoder(self, column: ColumnInfo) -> Converter | None:
        if _is_enum(column.python_type):
            return _encode_enum
        kind = column.kind
        if kind == "float":
            return _encode_float
        if kind == "datetime":
            return _encode_datetime
        if kind == "date":
            return _encode_date
        if kind == "time":
            return _encode_time
        if kind == "decimal":
            return _encode_decimal
        if kind == "uuid":
            return _encode_uuid
        if kind == "json":
            return _encode_json
        return None

    def decoder(self, column: ColumnInfo) -> Converter | None:
        if _is_enum(column.python_type):
            enum_type: Converter = column.python_type
            return enum_type
        kind = column.kind
        if kind == "boolean":
            return bool
        if kind == "float":
            return float
        if kind == "datetime":
            return dt.datetime.fromisoformat
        if kind == "date":
            return dt.date.fromisoformat
        if kind == "time":
            return dt.time.fromisoformat
        if kind == "decimal":
            return _decode_decimal
        if kind == "uuid":
            return _decode_uuid
        if kind == "json":
            try:
                cached = self._json_decoders.get(column.python_type)
            except TypeError:  # an unhashable annotation
                return json_decoder(column.python_type)
            if cached is None:
                cached = self._json_decoders[column.python_type] = json_decoder(column.python_type)
            return cached
        return None

    def row_decoder(self, table: TableInfo) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """As the base, built once per table."""
        cached = self._row_decoders.get(id(table))
        if cached is not None and cached[0] is table:
            return cached[1]
        decode = super().row_decoder(table)
        self._row_decoders[id(table)] = (table, decode)
        return decode

    # --- schema -------------------------------------------------------------

    def column_math(self, table: TableInfo, column: str, math: ColumnMath, params: Params) -> str:
        operand = params.add(self.encode_value(table, column, math.operand))
        kind = table.columns[table.column_index[column]].kind
        return f"{MATH_FUNCTION}({self.quote(math.column)}, '{math.op}', {operand}, '{kind}')"

    def column_definition(self, table: TableInfo, column: ColumnInfo) -> str:
        """As the base, with AUTOINCREMENT on a generated integer key and NOT NULL
        on every other key (SQLite otherwise lets a non-integer key be NULL)."""
        if not column.primary_key:
            return super().column_definition(table, column)
        column_type = self.column_type(column)
        if column.generated and column_type == "INTEGER":
            return f"{self.quote(column.name)} INTEGER PRIMARY KEY AUTOINCREMENT"
        return f"{self.quote(column.name)} {column_type} PRIMARY KEY NOT NULL"

    # --- reads --------------------------------------------------------------

    def select(self, select: Select) -> tuple[str, list[Any]]:
        """As the base; ``for_update`` is dropped, since SQLite has no row locks
        (the connection takes the whole database's write lock instead)."""
        if select.for_update:
            select = msgspec.structs.replace(select, for_update=False)
        return super().select(select)

    def sort_key(self, table: TableInfo, column: str) -> str:
        quoted = self.quote(column)
        if self._is_decimal(table, column):
            return f"{quoted} COLLATE {DECIMAL_COLLATION}"
        return quoted

    def condition(self, condition: Condition, table: TableInfo, params: Params) -> str:
        if isinstance(condition, Like):
            column = self.quote(condition.column)
            if condition.case_insensitive:
                return f"{ILIKE_FUNCTION}({column}, {params.add(condition.pattern)})"
            return f"{column} GLOB {params.add(like_to_glob(condition.pattern))}"
        if isinstance(condition, (Compare, Between, In)) and self._is_decimal(table, condition.column):
            return self._decimal_condition(condition, table, params)
        return super().condition(condition, table, params)

    def _is_decimal(self, table: TableInfo, column: str) -> bool:
        index = table.column_index.get(column)
        return index is not None and table.columns[index].kind == "decimal"

    def _decimal_condition(self, condition: Compare | Between | In, table: TableInfo, params: Params) -> str:
        # the column's collation decides every comparison it takes part in (IN too)
        column = f"{self.quote(condition.column)} COLLATE {DECIMAL_COLLATION}"

        def value(raw: Any) -> str:
            return params.add(self.encode_value(table, condition.column, raw))

        if isinstance(condition, Compare):
            return f"{column} {_SQL_COMPARE[condition.cmp]} {value(condition.value)}"
        if isinstance(condition, Between):
            return f"{column} BETWEEN {value(condition.low)} AND {value(condition.high)}"
        if not condition.values:
            return "1 = 1" if condition.negate else "1 = 0"
        holders = ", ".join(value(v) for v in condition.values)
        return f"{column} {'NOT ' if condition.negate else ''}IN ({holders})"

    # --- writes -------------------------------------------------------------

    def insert_with_keys(self, table: TableInfo, columns: Sequence[str], count: int) -> str:
        """One INSERT of ``count`` rows, each given as its key then ``columns``."""
        row = "(" + ", ".join("?" * (len(columns) + 1)) + ")"
        return (
            f"INSERT INTO {self.quote(table.name)} ({self.column_list(table, [table.key_column, *columns])}) "
            f"VALUES {', '.join([row] * count)}"
        )

    def max_key(self, table: TableInfo) -> str:
        """The largest key of ``table``."""
        return f"SELECT max({self.quote(table.key_column)}) FROM {self.quote(table.name)}"


__all__ = ["ILIKE_FUNCTION", "SQLiteDialect", "ilike", "like_to_glob"]
