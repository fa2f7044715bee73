"""Column arithmetic in bulk updates: ``Product.stock - 1``.

A bulk update may set a numeric column from a numeric column of the same row
plus, minus or times a value::

    await session.query(Product).filter(sku="A").update(stock=Product.stock - 1)

The database computes it, row by row, so concurrent decrements never lose one
another, and returns the rows, whose values the tracked objects take. The same
computation (:func:`compute`) runs wherever uow applies the update itself: in
:func:`uow.replay`, in the memory adapter, and in SQLite, which lacks exact
decimals and 64-bit overflow checks.
"""

from __future__ import annotations

import decimal
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn, get_args

import msgspec

from uow.errors import QueryError, StorageError

Operator = Literal["+", "-", "*"]

INT64 = range(-(2**63), 2**63)
"""The integers an integer column holds on every adapter."""

OPERATORS: frozenset[str] = frozenset(get_args(Operator))
"""The operators :class:`ColumnMath` takes."""

_OPERATIONS: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


# PostgreSQL's NUMERIC: at most 131072 digits before the point and 16383 after.
# Within that a sum, difference or product of decimals is exact; past it, as
# there, it is an error, but digits past the 16383rd after the point are rounded
_NUMERIC_SCALE = 16383
_DECIMALS = decimal.Context(
    prec=147456,
    Emax=131071,
    Emin=-_NUMERIC_SCALE,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)
_NUMERIC_STEP = decimal.Decimal(1).scaleb(-_NUMERIC_SCALE)


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

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __pow__ = __rpow__ = _refuse
    __neg__ = __pos__ = __abs__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse


def compute(op: Operator, value: Any, operand: Any) -> Any:
    """``value <op> operand`` as PostgreSQL computes it: ``None`` when either
    is ``None`` (SQL's NULL), decimals exactly, and
    :class:`~uow.errors.StorageError` (SQLSTATE 22003) for an integer past 64
    bits, a float past its range (or below it, for a product), a decimal past
    ``NUMERIC``'s, and a result that is not a number (``inf - inf``)."""
    operation = _OPERATIONS.get(op)
    if operation is None:
        raise QueryError(f"{op!r} is not an operator of column arithmetic: one of {', '.join(sorted(OPERATORS))}")
    if value is None or operand is None:
        return None
    if isinstance(value, decimal.Decimal) or isinstance(operand, decimal.Decimal):
        return _decimal_result(operation, op, decimal.Decimal(value), decimal.Decimal(operand))
    result = operation(value, operand)
    if type(result) is int:
        if result not in INT64:
            raise _out_of_range(value, op, operand, "a 64-bit integer")
    elif type(result) is float:
        finite = math.isfinite(value) and math.isfinite(operand)
        underflow = op == "*" and result == 0.0 and value != 0.0 and operand != 0.0
        if math.isnan(result) or (finite and math.isinf(result)) or underflow:
            raise _out_of_range(value, op, operand, "a float")
    return result


def _decimal_result(
    operation: Callable[[Any, Any], Any], op: Operator, value: decimal.Decimal, operand: decimal.Decimal
) -> decimal.Decimal:
    try:
        with decimal.localcontext(_DECIMALS):
            result: decimal.Decimal = operation(value, operand)
            exponent = result.as_tuple().exponent
            if isinstance(exponent, int) and exponent < -_NUMERIC_SCALE:
                result = result.quantize(_NUMERIC_STEP, rounding=decimal.ROUND_HALF_UP)
    except (decimal.DecimalException, MemoryError):
        raise _out_of_range(value, op, operand, "a decimal") from None
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


__all__ = ["INT64", "OPERATORS", "ColumnMath", "Operator", "compute", "computed_row", "has_math"]
