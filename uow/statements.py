"""Read statements handed to adapters.

A :class:`Select` names one table, a condition and an order; the adapter
returns rows as tuples in the table's column order (``TableInfo.column_names``).
The query builder (:mod:`uow.query`) produces these; adapters never see user
strings as identifiers.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from uow.conditions import Condition
from uow.model import TableInfo


# msgspec structs rather than frozen dataclasses: a Select is made for every
# read, and a frozen dataclass of seven fields takes about 1 µs to construct
# against 0.1 µs (a get by key of an untracked row costs 50-80 µs in all)
class OrderBy(msgspec.Struct, frozen=True):
    """Sort by ``column``, descending when ``descending``; NULLs sort first
    ascending and last descending on every adapter."""

    column: str
    descending: bool = False


class Select(msgspec.Struct, frozen=True):
    """Rows of ``table`` matching ``where``, ordered, limited and offset.

    ``mode`` asks for the rows (``"rows"``), their number (``"count"``: one row
    holding one integer) or whether any exists (``"exists"``: one row holding one
    boolean). Copy one with changes with ``msgspec.structs.replace``.
    """

    table: TableInfo
    where: Condition | None = None
    order_by: tuple[OrderBy, ...] = ()
    limit: int | None = None
    offset: int | None = None
    mode: Literal["rows", "count", "exists"] = "rows"
    for_update: bool = False


__all__ = ["OrderBy", "Select"]
