"""What puts rows in one batch, and which batch goes first when nothing else decides.

Shared by the planner (:mod:`uow.planner`) and its shortcut
(:mod:`uow.shortcut`), which must agree on both: rows of one table, kind and
column set share a statement shape; between batches, inserts come before updates
and updates before deletes, parents are inserted before children and deleted
after them (the table's depth in the foreign-key graph).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uow.model import TableInfo

INSERT, UPDATE, DELETE = 0, 1, 2
"""Phases, in the order they run when no dependency says otherwise."""


def insert_columns(table: TableInfo, key: Any) -> tuple[str, ...]:
    """The columns an insert writes: all but a key the database generates."""
    if key is None and table.primary_key.generated:
        return table.non_key_columns
    return table.column_names


def update_columns(table: TableInfo, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns of ``values`` in table order (cached per order met)."""
    met = tuple(values)
    columns = table.column_order.get(met)
    if columns is None:
        columns = tuple([c for c in table.column_names if c in values])
        if len(table.column_order) < 256:  # a handful of update shapes per table in practice
            table.column_order[met] = columns
    return columns


def checks_version(table: TableInfo, old: Mapping[str, Any]) -> bool:
    """Whether a write must match the version storage holds (optimistic locking)."""
    version = table.version_column
    return version is not None and old.get(version) is not None


def table_ranks(tables: Mapping[str, TableInfo]) -> dict[str, int]:
    """Depth of each table in the foreign-key graph (parents lower); a table
    outside ``tables`` counts as a parent of depth 0."""
    ranks: dict[str, int] = {}

    def rank(name: str, visiting: frozenset[str]) -> int:
        if name in ranks:
            return ranks[name]
        table = tables.get(name)
        depth = 0
        if table is not None:
            for fk in table.foreign_keys:
                if fk.target_table != name and fk.target_table not in visiting:
                    depth = max(depth, rank(fk.target_table, visiting | {name}) + 1)
        ranks[name] = depth
        return depth

    for name in tables:
        rank(name, frozenset({name}))
    return ranks


def phase_rank(phase: int, table: str, ranks: Mapping[str, int]) -> tuple[int, int]:
    """Where a batch goes when no dependency decides: by phase, then parents
    first for inserts and updates, children first for deletes."""
    rank = ranks.get(table, 0)
    return (phase, -rank if phase == DELETE else rank)


__all__ = [
    "DELETE",
    "INSERT",
    "UPDATE",
    "checks_version",
    "insert_columns",
    "phase_rank",
    "table_ranks",
    "update_columns",
]
