"""Read statements handed to adapters.

A :class:`Select` names one table, a condition and an order; the adapter
returns rows as tuples in the table's column order (``TableInfo.column_names``).
The query builder (:mod:`uow.query`) produces these; adapters never see user
strings as identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uow.conditions import Condition
from uow.model import TableInfo


@dataclass(frozen=True, slots=True)
class OrderBy:
    """Sort by ``column``, descending when ``descending``; NULLs sort first
    ascending and last descending on every adapter."""

    column: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Select:
    """Rows of ``table`` matching ``where``, ordered, limited and offset.

    ``mode`` asks for the rows (``"rows"``), their number (``"count"``: one row
    holding one integer) or whether any exists (``"exists"``: one row holding one
    boolean).
    """

    table: TableInfo
    where: Condition | None = None
    order_by: tuple[OrderBy, ...] = ()
    limit: int | None = None
    offset: int | None = None
    mode: Literal["rows", "count", "exists"] = "rows"
    for_update: bool = False


__all__ = ["OrderBy", "Select"]
