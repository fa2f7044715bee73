"""Column arithmetic in bulk updates: ``Product.stock - 1``.

A bulk update may set a numeric column from a numeric column of the same row
plus, minus or times a value::

    await session.query(Product).filter(sku="A").update(stock=Product.stock - 1)

The database computes it, row by row, so concurrent decrements never lose one
another. The same computation (:func:`compute`) runs wherever uow applies the
update in Python: on tracked objects, in :func:`uow.replay`, in the memory
adapter, and in SQLite, which lacks exact decimals and 64-bit overflow checks.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from uow.errors import StorageError

Operator = Literal["+", "-", "*"]

_INT64 = range(-(2**63), 2**63)

# exact: a sum, difference or product of finite decimals needs no rounding at this precision
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


class ColumnMath(msgspec.Struct, frozen=True, tag_field="expr", tag="column_math"):
    """``column <op> operand``: the value of a column of the same row, plus,
    minus or times ``operand``. ``Product.stock - 1`` builds one."""

    column: str
    op: Operator
    operand: Any

    def __repr__(self) -> str:
        return f"{self.column} {self.op} {self.operand!r}"


def compute(op: Operator, value: Any, operand: Any) -> Any:
    """``value <op> operand`` as the databases compute it: ``None`` when either
    is ``None`` (SQL's NULL), decimals exactly, and
    :class:`~uow.errors.StorageError` (SQLSTATE 22003) for an integer past 64
    bits or a float past its range."""
    if value is None or operand is None:
        return None
    if isinstance(value, decimal.Decimal) or isinstance(operand, decimal.Decimal):
        return _EXACT_OPERATIONS[op](_EXACT, decimal.Decimal(value), decimal.Decimal(operand))
    result = value + operand if op == "+" else value - operand if op == "-" else value * operand
    if type(result) is int and result not in _INT64:
        raise StorageError(f"{value!r} {op} {operand!r} is out of range for a 64-bit integer", sqlstate="22003")
    if type(result) is float and math.isinf(result) and math.isfinite(value) and math.isfinite(operand):
        raise StorageError(f"{value!r} {op} {operand!r} is out of range for a float", sqlstate="22003")
    return result


def computed_row(values: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` for one row: each :class:`ColumnMath` computed from ``row``."""
    return {
        column: compute(value.op, row.get(value.column), value.operand) if type(value) is ColumnMath else value
        for column, value in values.items()
    }


def has_math(values: Mapping[str, Any]) -> bool:
    """Whether any of ``values`` is computed from the row."""
    return any(type(value) is ColumnMath for value in values.values())


_EXACT_OPERATIONS = {
    "+": decimal.Context.add,
    "-": decimal.Context.subtract,
    "*": decimal.Context.multiply,
}

__all__ = ["ColumnMath", "Operator", "compute", "computed_row", "has_math"]
