"""Evaluating a :class:`uow.statements.Select` over one table.

Rows are visited in primary-key order (as SQLite scans a rowid table), then
sorted stably by the ``ORDER BY`` terms with NULLs first ascending and last
descending, then offset and limited. Conditions use :func:`uow.conditions.matches`,
so NULLs follow SQL's three-valued logic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from uow.conditions import Condition, matches, stored_order
from uow.errors import StorageError
from uow.statements import Select
from uow_memory.table import TableData


def _filtered(table: TableData, where: Condition | None) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    items = table.rows.items()
    if where is None:
        yield from items
        return
    names = table.schema.info.column_names
    try:
        for key, row in items:
            if matches(where, dict(zip(names, row))):
                yield key, row
    except KeyError as exc:
        raise StorageError(f"no such column: {table.name}.{exc.args[0]}") from None
    except TypeError as exc:
        raise StorageError(f"cannot evaluate the condition on {table.name}: {exc}") from exc


def matching_keys(table: TableData, where: Condition | None) -> list[Any]:
    """Keys of the rows ``where`` keeps, in key order."""
    return _key_order([key for key, _ in _filtered(table, where)])


def _key_order(keys: list[Any]) -> list[Any]:
    with contextlib.suppress(TypeError):  # keys of mixed types keep insertion order
        keys.sort()
    return keys


def _sort_key(position: int) -> Callable[[tuple[Any, ...]], tuple[bool, Any]]:
    """NULLs before every value (so after them when the sort is reversed)."""

    def key(row: tuple[Any, ...]) -> tuple[bool, Any]:
        value = row[position]
        return (value is not None, stored_order(value))

    return key


def select_rows(table: TableData, select: Select) -> list[tuple[Any, ...]]:
    """The stored rows a ``"rows"`` select returns, in order (not copied)."""
    found = dict(_filtered(table, select.where))
    rows = [found[key] for key in _key_order(list(found))]
    index = table.schema.info.column_index
    for term in reversed(select.order_by):
        position = index.get(term.column)
        if position is None:
            raise StorageError(f"no such column: {table.name}.{term.column}")
        try:
            rows.sort(key=_sort_key(position), reverse=term.descending)
        except TypeError as exc:
            raise StorageError(f"cannot order {table.name} by {term.column}: {exc}") from exc
    start = select.offset or 0
    stop = None if select.limit is None else start + select.limit
    if start or stop is not None:
        rows = rows[start:stop]
    return rows


def run_select(table: TableData, select: Select) -> list[tuple[Any, ...]]:
    """Every row (copied), the count or the existence a select asks for.

    ``count`` and ``exists`` honour ``limit`` and ``offset``: they describe the
    rows the same select in ``"rows"`` mode would return.
    """
    if select.mode == "count" and not select.offset and select.limit is None:
        return [(sum(1 for _ in _filtered(table, select.where)),)]
    if select.mode == "count":
        return [(len(select_rows(table, select)),)]
    if select.mode == "exists":
        return [(bool(select_rows(table, select)),)]
    copy_out = table.schema.codec.copy_out
    return [copy_out(row) for row in select_rows(table, select)]


__all__ = ["matching_keys", "run_select", "select_rows"]
