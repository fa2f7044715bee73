"""One table's rows and the indexes kept beside them.

Rows are tuples in ``TableInfo.column_names`` order in a dict keyed by primary
key. Each unique constraint has a value -> key index and each foreign-key column a
value -> set of keys index (so deleting a parent finds its children without a
scan). A :class:`TableData` is copied as a whole when a transaction first
writes to it (copy on write); nothing else shares it from then on. While the
transaction has a savepoint, each change is also logged, so that rolling back
to the savepoint undoes the changes made since, in reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uow.model import ForeignKeyInfo, TableInfo
from uow_memory.values import RowCodec, index_key


class UniqueIndex:
    """One unique constraint: its columns, their positions in a row and its name."""

    __slots__ = ("columns", "constraint", "positions")

    def __init__(self, columns: tuple[str, ...], positions: tuple[int, ...], constraint: str):
        self.columns = columns
        self.positions = positions
        self.constraint = constraint

    def entry(self, row: tuple[Any, ...]) -> Any:
        """What the index files ``row`` under, or ``None`` when one of the
        columns is NULL (such a row clashes with no other)."""
        if len(self.positions) == 1:
            value = row[self.positions[0]]
            return None if value is None else index_key(value)
        return self.entry_of(tuple(row[p] for p in self.positions))

    @staticmethod
    def entry_of(values: tuple[Any, ...]) -> Any:
        """What the index files a row under that holds ``values`` in the
        constraint's columns (in their order), or ``None`` as for :meth:`entry`."""
        if any(value is None for value in values):
            return None
        if len(values) == 1:
            return index_key(values[0])
        return tuple(map(index_key, values))

    def values(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The values of the constraint's columns in ``row``."""
        return tuple(row[p] for p in self.positions)


class TableSchema:
    """What the store derives once from a :class:`TableInfo`."""

    __slots__ = (
        "codec",
        "foreign_keys",
        "generated",
        "info",
        "key_index",
        "name",
        "not_null",
        "unique",
        "version_index",
    )

    def __init__(self, info: TableInfo):
        self.info = info
        self.name = info.name
        self.codec = RowCodec(info)
        self.key_index = info.key_index
        self.generated = info.primary_key.generated
        self.not_null: tuple[int, ...] = tuple(i for i, c in enumerate(info.columns) if not c.nullable)
        self.unique: tuple[UniqueIndex, ...] = tuple(
            UniqueIndex((c.name,), (i,), f"{info.name}_{c.name}_key")
            for i, c in enumerate(info.columns)
            if c.unique and not c.primary_key
        ) + tuple(
            UniqueIndex(u.columns, tuple(info.column_index[c] for c in u.columns), u.name) for u in info.unique_together
        )
        """Every unique constraint but the primary key: a column's ``Unique()`` and
        the model's ``constraints``."""
        self.foreign_keys: tuple[tuple[ForeignKeyInfo, int], ...] = tuple(
            (fk, info.column_index[fk.column]) for fk in info.foreign_keys
        )
        self.version_index = None if info.version_column is None else info.column_index[info.version_column]


class TableData:
    """The rows of one table with its unique and foreign-key indexes."""

    __slots__ = ("refs", "rows", "schema", "undo_log", "unique")

    def __init__(
        self,
        schema: TableSchema,
        rows: dict[Any, tuple[Any, ...]],
        unique: dict[tuple[str, ...], dict[Any, Any]],
        refs: dict[str, dict[Any, set[Any]]],
    ):
        self.schema = schema
        self.rows = rows
        self.unique = unique
        self.refs = refs
        self.undo_log: list[Change] | None = None
        """Where changes are logged while the owning transaction has a savepoint."""

    @classmethod
    def empty(cls, info: TableInfo) -> TableData:
        """A new table with no rows."""
        schema = TableSchema(info)
        return cls(
            schema,
            {},
            {index.columns: {} for index in schema.unique},
            {fk.column: {} for fk, _ in schema.foreign_keys},
        )

    def copy(self) -> TableData:
        """An independent copy (rows are immutable tuples and are shared)."""
        return TableData(
            self.schema,
            dict(self.rows),
            {name: dict(index) for name, index in self.unique.items()},
            {name: {value: set(keys) for value, keys in index.items()} for name, index in self.refs.items()},
        )

    @property
    def name(self) -> str:
        """The table's name."""
        return self.schema.name

    def key_of_unique(self, columns: tuple[str, ...], entry: Any) -> Any:
        """The key of the row filed under ``entry`` (:meth:`UniqueIndex.entry`)
        by the unique constraint over ``columns``, or ``None``."""
        return self.unique[columns].get(entry)

    def unique_index(self, columns: Sequence[str]) -> UniqueIndex | None:
        """The unique constraint over exactly ``columns`` (in any order), if any."""
        wanted = set(columns)
        if len(wanted) != len(columns):
            return None
        return next((index for index in self.schema.unique if set(index.columns) == wanted), None)

    def referencing(self, column: str, value: Any) -> set[Any]:
        """Keys of rows whose foreign-key ``column`` holds ``value`` (do not mutate)."""
        return self.refs[column].get(index_key(value), _EMPTY)

    def put(self, key: Any, row: tuple[Any, ...]) -> None:
        """Store ``row`` under ``key`` (absent) and index it; checks are the caller's."""
        self.rows[key] = row
        if self.undo_log is not None:
            self.undo_log.append((self, key, None))
        for unique in self.schema.unique:
            entry = unique.entry(row)
            if entry is not None:
                self.unique[unique.columns][entry] = key
        for fk, index in self.schema.foreign_keys:
            value = row[index]
            if value is not None:
                self.refs[fk.column].setdefault(index_key(value), set()).add(key)

    def remove(self, key: Any) -> tuple[Any, ...] | None:
        """Take the row with ``key`` out of the table and its indexes; return it."""
        row = self.rows.pop(key, None)
        if row is None:
            return None
        if self.undo_log is not None:
            self.undo_log.append((self, key, row))
        for unique in self.schema.unique:
            entry = unique.entry(row)
            if entry is not None:
                self.unique[unique.columns].pop(entry, None)
        for fk, index in self.schema.foreign_keys:
            value = row[index]
            if value is not None:
                hashed = index_key(value)
                keys = self.refs[fk.column].get(hashed)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.refs[fk.column][hashed]
        return row

    def undo(self, key: Any, removed: tuple[Any, ...] | None) -> None:
        """Undo one logged change: put back the ``removed`` row, or take out
        the row put under ``key`` (``removed`` is ``None``)."""
        if removed is None:
            self.remove(key)
        else:
            self.put(key, removed)


Change = tuple[TableData, Any, "tuple[Any, ...] | None"]
"""A logged change: (table, key, the row removed, or ``None`` for a row put)."""

_EMPTY: set[Any] = set()

__all__ = ["Change", "TableData", "TableSchema", "UniqueIndex"]
