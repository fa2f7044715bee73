"""Value handling: what the store keeps and what it hands back.

The store never shares a mutable object with its callers. JSON values are
kept as plain JSON (dicts, lists and scalars, as a database stores them, which
the store's filters compare) and decoded on the way out into the column's
annotated type, as the other adapters do (a tuple comes back as a tuple, a
Struct as that Struct).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec

from uow.adapter import json_decoder, json_text
from uow.errors import StorageError
from uow.model import ColumnInfo, TableInfo

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

Converter = Callable[[Any], Any]


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value, in the shape a database gives back;
    :class:`StorageError` for one the SQL adapters refuse (see :func:`json_text`)."""
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if isinstance(value, str) and "\x00" not in value:
        return value
    return _decode(json_text(value))


def _store_bytes(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _identity(value: Any) -> Any:
    return value


_INT64 = range(-(2**63), 2**63)


def _store_int(value: Any) -> Any:
    # what SQLite and PostgreSQL store: 64-bit integers
    if type(value) is int and value not in _INT64:
        raise TypeError("an integer column holds 64 bits")
    return value


def _store_text(value: Any) -> Any:
    # what SQLite and PostgreSQL store: text that is valid UTF-8 (no lone surrogate)
    if isinstance(value, str) and not value.isascii():
        value.encode()  # UnicodeEncodeError for a lone surrogate
    return value


def _store_datetime(value: Any) -> Any:
    # what SQLite and PostgreSQL store: an aware value as the same instant in UTC,
    # which must be a datetime (year 1 at +05:45 is not)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        try:
            return value.astimezone(dt.UTC)
        except OverflowError as exc:
            raise TypeError(f"{value!r} is out of range in UTC") from exc
    return value


def converter_for(column: ColumnInfo) -> Converter:
    """The function that turns a value given for ``column`` into the stored value."""
    if column.kind == "datetime":
        return _store_datetime
    if column.kind == "json":
        return copy_json
    if column.kind == "bytes":
        return _store_bytes
    if column.kind == "integer":
        return _store_int
    if column.kind == "text":
        return _store_text
    return _identity


class RowCodec:
    """Copies rows of one table in and out of the store.

    Only JSON columns need work on the way out; tables without them hand back
    their (immutable) tuples as they are.
    """

    __slots__ = ("converters", "json_columns", "table")

    def __init__(self, table: TableInfo):
        self.table = table
        self.converters: tuple[Converter, ...] = tuple(converter_for(c) for c in table.columns)
        self.json_columns: tuple[tuple[int, Callable[[bytes], Any]], ...] = tuple(
            (i, json_decoder(c.python_type)) for i, c in enumerate(table.columns) if c.kind == "json"
        )
        """(index, decoder into the column's type) of each JSON column."""

    def store_value(self, index: int, value: Any) -> Any:
        """The value to keep for column number ``index``."""
        try:
            return self.converters[index](value)
        except (TypeError, UnicodeEncodeError, msgspec.EncodeError, msgspec.DecodeError) as exc:
            column = self.table.column_names[index]
            raise StorageError(f"cannot store {value!r} in {self.table.name}.{column}: {exc}") from exc

    def copy_out(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row a caller may mutate freely without touching the store."""
        if not self.json_columns:
            return row
        values = list(row)
        for index, decode in self.json_columns:
            value = values[index]
            if value is not None:
                values[index] = decode(_encode(value))
        return tuple(values)


def index_key(value: Any) -> Any:
    """A hashable stand-in for ``value`` in an index (JSON values are encoded)."""
    try:
        hash(value)
    except TypeError:
        return ("\0json", _encode(value))
    return value


__all__ = ["RowCodec", "copy_json", "converter_for", "index_key"]
