"""Working out which row and which foreign key a failed batch tripped over.

SQLite stops a batch at the first refused row but does not say which one, and
a foreign-key failure names neither table nor column. These helpers run in the
connection's worker thread after the batch was undone: they replay the batch
row by row to find the failing row, and probe the referenced (or referencing)
tables to name the foreign key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from uow.conditions import Condition
from uow.errors import IntegrityError
from uow.model import TableInfo
from uow_sqlite.dialect import SQLiteDialect
from uow_sqlite.errors import constraint_kind, integrity_error

Statement = tuple[str, Sequence[Any]]
Probe = Callable[[sqlite3.Connection, int], tuple[str | None, tuple[str, ...]]]
"""``(connection, failing row index) -> (table, columns)`` of a failed foreign key."""


def find_failure(
    raw: sqlite3.Connection,
    original: sqlite3.IntegrityError,
    table: TableInfo,
    replay: Sequence[Statement] | None,
    probe: Probe | None,
) -> IntegrityError:
    """Replay ``replay`` one statement at a time (the caller undoes it) and
    describe the first one SQLite refuses."""
    if replay is not None:
        for index, (sql, params) in enumerate(replay):
            try:
                raw.execute(sql, params).fetchall()
            except sqlite3.IntegrityError as failed:
                fk_table: str | None = None
                fk_columns: tuple[str, ...] = ()
                if probe is not None and constraint_kind(failed) == "foreign_key":
                    fk_table, fk_columns = probe(raw, index)
                return integrity_error(failed, table=table, row_index=index, fk_table=fk_table, fk_columns=fk_columns)
    return integrity_error(original, table=table)


def missing_parents(
    dialect: SQLiteDialect,
    table: TableInfo,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key_position: int | None = None,
) -> Probe:
    """A probe naming the foreign-key columns of a written row whose parent row
    does not exist; for an update (the row's key at ``key_position``) with no
    missing parent, the children still referencing the row."""

    def probe(raw: sqlite3.Connection, index: int) -> tuple[str | None, tuple[str, ...]]:
        row = rows[index]
        missing: list[str] = []
        for fk in table.foreign_keys:
            if fk.column not in columns:
                continue
            value = row[columns.index(fk.column)]
            if value is None:
                continue
            sql = f"SELECT 1 FROM {dialect.quote(fk.target_table)} WHERE {dialect.quote(fk.target_column)} = ? LIMIT 1"
            if raw.execute(sql, (value,)).fetchone() is None:
                missing.append(fk.column)
        if missing:
            return table.name, tuple(missing)
        if key_position is None:
            return None, ()
        return referencing_children(dialect, table, lambda i: rows[i][key_position], "on_update")(raw, index)

    return probe


def referencing_children(
    dialect: SQLiteDialect, table: TableInfo, key_of: Callable[[int], Any], action: str = "on_delete"
) -> Probe:
    """A probe naming the child table and column that still reference the key
    of the failing row (a refused delete, or a refused key change)."""

    def probe(raw: sqlite3.Connection, index: int) -> tuple[str | None, tuple[str, ...]]:
        key = key_of(index)
        if key is None:
            return None, ()
        for child, column in _restricting_children(raw, table, action):
            sql = f"SELECT 1 FROM {dialect.quote(child)} WHERE {dialect.quote(column)} = ? LIMIT 1"
            if raw.execute(sql, (key,)).fetchone() is not None:
                return child, (column,)
        return None, ()

    return probe


def children_of_matched(dialect: SQLiteDialect, table: TableInfo, where: Condition | None) -> Probe:
    """A probe naming the child table and column that still reference a row
    a refused bulk delete matched."""

    def probe(raw: sqlite3.Connection, index: int) -> tuple[str | None, tuple[str, ...]]:
        params = dialect.params()
        condition = "" if where is None else " WHERE " + dialect.condition(where, table, params)
        matched = f"SELECT {dialect.quote(table.key_column)} FROM {dialect.quote(table.name)}{condition}"
        for child, column in _restricting_children(raw, table, "on_delete"):
            sql = f"SELECT 1 FROM {dialect.quote(child)} WHERE {dialect.quote(column)} IN ({matched}) LIMIT 1"
            if raw.execute(sql, params.values).fetchone() is not None:
                return child, (column,)
        return None, ()

    return probe


def _restricting_children(raw: sqlite3.Connection, table: TableInfo, action: str) -> list[tuple[str, str]]:
    """(child table, column) of each foreign key to ``table``'s key that refuses ``action``."""
    found = raw.execute(
        f'SELECT m.name, f."from", f."to" FROM sqlite_master AS m '
        f"JOIN pragma_foreign_key_list(m.name) AS f "
        f"WHERE m.type = 'table' AND f.\"table\" = ? AND f.{action} IN ('NO ACTION', 'RESTRICT')",
        (table.name,),
    ).fetchall()
    return [(child, column) for child, column, target in found if target in (None, table.key_column)]


__all__ = ["Probe", "Statement", "children_of_matched", "find_failure", "missing_parents", "referencing_children"]
