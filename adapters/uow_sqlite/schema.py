"""Ordering tables by their foreign keys for schema changes."""

from __future__ import annotations

from collections.abc import Sequence

from uow.model import TableInfo


def parents_first(tables: Sequence[TableInfo]) -> list[TableInfo]:
    """``tables`` with every referenced table before the tables referencing it.

    Self references and cycles are left where they fall (SQLite accepts a
    reference to a table created later).
    """
    by_name = {table.name: table for table in tables}
    ordered: list[TableInfo] = []
    seen: set[str] = set()

    def visit(table: TableInfo, path: frozenset[str]) -> None:
        if table.name in seen:
            return
        for fk in table.foreign_keys:
            parent = by_name.get(fk.target_table)
            if parent is not None and parent.name not in path:
                visit(parent, path | {parent.name})
        if table.name not in seen:
            seen.add(table.name)
            ordered.append(table)

    for table in tables:
        visit(table, frozenset({table.name}))
    return ordered


def children_first(tables: Sequence[TableInfo]) -> list[TableInfo]:
    """``tables`` with every referencing table before the tables it references."""
    return list(reversed(parents_first(tables)))


__all__ = ["children_first", "parents_first"]
