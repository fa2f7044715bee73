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
from typing import Any, Literal, NoReturn

import msgspec

from uow.errors import QueryError, StorageError

Operator = Literal["+", "-", "*"]

_INT64 = range(-(2**63), 2**63)

# PostgreSQL's NUMERIC range, to the last digit: within it a sum, difference or
# product of decimals is exact; past it, as there, it is an error
_DECIMALS = decimal.Context(
    prec=147456,
    Emax=131071,
    Emin=-16383,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)


_MIN_EXPONENT = -16383
_SMALLEST = decimal.Decimal(1).scaleb(_MIN_EXPONENT)


class ColumnMath(msgspec.Struct, frozen=True, tag_field="expr", tag="column_math", omit_defaults=True):
    """``column <op> operand``: the value of a column of the same row, plus,
    minus or times ``operand``. ``Product.stock - 1`` builds one; ``table``
    names the column's table when it was built from a model's column."""

    column: str
    op: Operator
    operand: Any
    table: str | None = None

    def __repr__(self) -> str:
        return f"{self.column} {self.op} {self.operand!r}"

    def _refuse(self, *_: Any) -> NoReturn:
        raise QueryError(f"{self!r} is one operation on a column; a bulk update takes no more than that")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __neg__ = _refuse


def compute(op: Operator, value: Any, operand: Any) -> Any:
    """``value <op> operand`` as PostgreSQL computes it: ``None`` when either
    is ``None`` (SQL's NULL), decimals exactly, and
    :class:`~uow.errors.StorageError` (SQLSTATE 22003) for an integer past 64
    bits, a float past its range (or below it, for a product), and a result
    that is not a number (``inf - inf``)."""
    if value is None or operand is None:
        return None
    if isinstance(value, decimal.Decimal) or isinstance(operand, decimal.Decimal):
        try:
            result = _DECIMAL_OPERATIONS[op](_DECIMALS, decimal.Decimal(value), decimal.Decimal(operand))
            if result.is_finite() and result.as_tuple().exponent < _MIN_EXPONENT:  # type: ignore[operator]
                # PostgreSQL keeps at most 16383 digits after the point, rounding the rest
                result = result.quantize(_SMALLEST, rounding=decimal.ROUND_HALF_UP, context=_DECIMALS)
        except (decimal.DecimalException, MemoryError):
            raise _out_of_range(value, op, operand, "a decimal") from None
        return result
    result = value + operand if op == "+" else value - operand if op == "-" else value * operand
    if type(result) is int:
        if result not in _INT64:
            raise _out_of_range(value, op, operand, "a 64-bit integer")
    elif type(result) is float:
        finite = math.isfinite(value) and math.isfinite(operand)
        underflow = op == "*" and result == 0.0 and value != 0.0 and operand != 0.0
        if math.isnan(result) or (finite and math.isinf(result)) or underflow:
            raise _out_of_range(value, op, operand, "a float")
    return result


def _out_of_range(value: Any, op: Operator, operand: Any, kind: str) -> StorageError:
    return StorageError(f"{value!r} {op} {operand!r} is out of range for {kind}", sqlstate="22003")


def computed_row(values: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` for one row: each :class:`ColumnMath` computed from ``row``."""
    return {
        column: compute(value.op, row.get(value.column), value.operand) if type(value) is ColumnMath else value
        for column, value in values.items()
    }


def has_math(values: Mapping[str, Any]) -> bool:
    """Whether any of ``values`` is computed from the row."""
    return any(type(value) is ColumnMath for value in values.values())


_DECIMAL_OPERATIONS = {
    "+": decimal.Context.add,
    "-": decimal.Context.subtract,
    "*": decimal.Context.multiply,
}

OPERATORS: frozenset[str] = frozenset(_DECIMAL_OPERATIONS)
"""The operators :class:`ColumnMath` takes."""

__all__ = ["OPERATORS", "ColumnMath", "Operator", "compute", "computed_row", "has_math"]
