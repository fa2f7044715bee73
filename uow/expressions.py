"""Column expressions: ``User.age >= 18`` at class level.

Reading a column field on a model *class* (``User.age``) gives a
:class:`Column`; comparing it gives a :class:`Predicate`, which wraps a
:class:`uow.conditions.Condition` and remembers the model it is about.
Predicates combine with ``&``, ``|`` and ``~``::

    adults = select(User).where((User.age >= 18) & User.name.startswith("A"))
    select(User).order_by(User.age.desc(), User.name)

Only class attribute access is redirected (through
:class:`uow.model.ModelMeta`); reading ``user.age`` on an instance is the plain
msgspec slot read it always was (see ``docs/querying.md`` for the timings).

Values are checked against the column's type when a query uses the predicate,
since that is where the table is known; they always travel as parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from uow.arithmetic import ColumnMath, Operator
from uow.conditions import (
    And,
    Between,
    Compare,
    CompareOp,
    Condition,
    In,
    IsNull,
    Like,
    Not,
    Or,
    escape_like,
)
from uow.errors import QueryError

T = TypeVar("T")
"""The type of a column's values."""


class Predicate:
    """A condition on one model's columns; combine with ``&``, ``|`` and ``~``.

    ``condition`` is the :class:`uow.conditions.Condition` it compiles to and
    ``models`` the model classes whose columns it reads.
    """

    __slots__ = ("condition", "models")

    def __init__(self, condition: Condition, models: frozenset[type[Any]]):
        self.condition = condition
        self.models = models

    def __and__(self, other: Predicate | bool) -> Predicate:
        if isinstance(other, Predicate):
            return Predicate(_flat(And, self.condition, other.condition), self.models | other.models)
        return NotImplemented

    def __or__(self, other: Predicate | bool) -> Predicate:
        if isinstance(other, Predicate):
            return Predicate(_flat(Or, self.condition, other.condition), self.models | other.models)
        return NotImplemented

    if TYPE_CHECKING:
        # ``(User.age >= 18) & ...``: a type checker reads the class attribute as
        # the field's type, so it sees a bool where there is a predicate (on
        # either side); a real bool is refused at run time all the same
        def __rand__(self, other: bool) -> Predicate: ...
        def __ror__(self, other: bool) -> Predicate: ...

    def __invert__(self) -> Predicate:
        return Predicate(Not(self.condition), self.models)

    def __bool__(self) -> NoReturn:
        raise TypeError(
            "a column expression has no truth value: combine expressions with & | ~ "
            "(not and / or / not) and compare with == inside where()"
        )

    def __repr__(self) -> str:
        return f"<Predicate {self.condition!r}>"


def _flat(kind: type[And] | type[Or], left: Condition, right: Condition) -> Condition:
    """``kind((left, right))`` with nested conditions of the same kind merged,
    so ``a & b & c`` is one AND of three."""
    items: list[Condition] = []
    for side in (left, right):
        if isinstance(side, kind):
            items.extend(side.items)
        else:
            items.append(side)
    return kind(tuple(items))


class Ordering:
    """One ORDER BY term: ``User.age.desc()`` or ``User.name.asc()``."""

    __slots__ = ("model", "column", "descending")

    def __init__(self, model: type[Any], column: str, descending: bool):
        self.model = model
        self.column = column
        self.descending = descending

    def __repr__(self) -> str:
        return f"{self.model.__name__}.{self.column}.{'desc' if self.descending else 'asc'}()"


class Column(Generic[T]):
    """A model's column at class level: ``User.age``.

    Comparisons build :class:`Predicate` objects; ``== None`` and ``!= None``
    mean ``IS NULL`` and ``IS NOT NULL``. ``T`` is the type of the column's
    values (``col(User.age)`` is a ``Column[int]``), so that a type checker
    refuses a value of another type. A comparison whose value is ``None``
    otherwise never matches, as in SQL.
    """

    __slots__ = ("model", "name")

    def __init__(self, model: type[Any], name: str):
        self.model = model
        self.name = name

    def _predicate(self, condition: Condition) -> Predicate:
        return Predicate(condition, frozenset((self.model,)))

    def _compare(self, cmp: CompareOp, value: Any) -> Predicate:
        if isinstance(value, Column):
            raise QueryError(
                f"{self!r} is compared with the column {value!r}; comparing two columns is not supported, "
                "compare with a value"
            )
        return self._predicate(Compare(self.name, cmp, value))

    def __eq__(self, value: object) -> Predicate:  # type: ignore[override]
        if value is None:
            return self.is_null()
        return self._compare("eq", value)

    def __ne__(self, value: object) -> Predicate:  # type: ignore[override]
        if value is None:
            return self.is_not_null()
        return self._compare("ne", value)

    def __lt__(self, value: T) -> Predicate:
        return self._compare("lt", value)

    def __le__(self, value: T) -> Predicate:
        return self._compare("le", value)

    def __gt__(self, value: T) -> Predicate:
        return self._compare("gt", value)

    def __ge__(self, value: T) -> Predicate:
        return self._compare("ge", value)

    def __hash__(self) -> int:
        return hash((self.model, self.name))

    # arithmetic, for the values of a bulk update: update(stock=Product.stock - 1)

    def _math(self, op: Operator, operand: Any) -> ColumnMath:
        if isinstance(operand, (Column, ColumnMath)):
            raise QueryError(f"{self!r} {op} {operand!r}: arithmetic takes a column and a value, not two columns")
        table: str = type.__getattribute__(self.model, "__uow_table_name__")
        return ColumnMath(self.name, op, operand, table)

    def __add__(self, operand: T) -> ColumnMath:
        return self._math("+", operand)

    def __radd__(self, operand: T) -> ColumnMath:
        return self._math("+", operand)

    def __sub__(self, operand: T) -> ColumnMath:
        return self._math("-", operand)

    def __rsub__(self, operand: T) -> NoReturn:
        raise QueryError(f"{operand!r} - {self!r}: write the column first ({self!r} - value, or * -1 and +)")

    def _no_arithmetic(self, *_: Any) -> NoReturn:
        raise QueryError(f"{self!r}: a bulk update computes a column plus, minus or times a number, nothing else")

    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _no_arithmetic
    __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _no_arithmetic

    def __mul__(self, operand: T) -> ColumnMath:
        return self._math("*", operand)

    def __rmul__(self, operand: T) -> ColumnMath:
        return self._math("*", operand)

    def __bool__(self) -> NoReturn:
        raise TypeError(f"{self!r} has no truth value; compare it (User.age >= 18) inside where()")

    def in_(self, values: Iterable[T]) -> Predicate:
        """``column IN (values)``."""
        return self._predicate(In(self.name, _values(self, values)))

    def not_in(self, values: Iterable[T]) -> Predicate:
        """``column NOT IN (values)`` (NULLs never match, as in SQL)."""
        return self._predicate(In(self.name, _values(self, values), negate=True))

    def is_null(self) -> Predicate:
        """``column IS NULL``."""
        return self._predicate(IsNull(self.name))

    def is_not_null(self) -> Predicate:
        """``column IS NOT NULL``."""
        return self._predicate(IsNull(self.name, negate=True))

    def between(self, low: T | None, high: T | None) -> Predicate:
        """``column BETWEEN low AND high``, both ends included."""
        return self._predicate(Between(self.name, low, high))

    def like(self, pattern: str) -> Predicate:
        """``column LIKE pattern``: ``%`` any run, ``_`` one character, ``\\`` escapes;
        case-sensitive on every adapter."""
        return self._predicate(Like(self.name, _text(self, pattern)))

    def ilike(self, pattern: str) -> Predicate:
        """:meth:`like`, ignoring case (see docs/querying.md on non-ASCII letters)."""
        return self._predicate(Like(self.name, _text(self, pattern), case_insensitive=True))

    def contains(self, text: str) -> Predicate:
        """The column holds ``text`` (taken literally, ``%`` and ``_`` included)."""
        return self.like(f"%{escape_like(_text(self, text))}%")

    def icontains(self, text: str) -> Predicate:
        """:meth:`contains`, ignoring case."""
        return self.ilike(f"%{escape_like(_text(self, text))}%")

    def startswith(self, text: str) -> Predicate:
        """The column starts with ``text`` (taken literally)."""
        return self.like(f"{escape_like(_text(self, text))}%")

    def istartswith(self, text: str) -> Predicate:
        """:meth:`startswith`, ignoring case."""
        return self.ilike(f"{escape_like(_text(self, text))}%")

    def endswith(self, text: str) -> Predicate:
        """The column ends with ``text`` (taken literally)."""
        return self.like(f"%{escape_like(_text(self, text))}")

    def iendswith(self, text: str) -> Predicate:
        """:meth:`endswith`, ignoring case."""
        return self.ilike(f"%{escape_like(_text(self, text))}")

    def asc(self) -> Ordering:
        """Ascending order by this column (NULLs first)."""
        return Ordering(self.model, self.name, False)

    def desc(self) -> Ordering:
        """Descending order by this column (NULLs last)."""
        return Ordering(self.model, self.name, True)

    def __repr__(self) -> str:
        return f"{self.model.__name__}.{self.name}"


def col(attribute: T) -> Column[T]:
    """``User.age`` typed as a :class:`Column`, for type checkers, which see the
    instance type (``int``): ``col(User.name).in_(["a", "b"])``."""
    if not isinstance(attribute, Column):
        raise QueryError(f"col() takes a model's column at class level, such as User.age, not {attribute!r}")
    return attribute


def asc(attribute: Any) -> Ordering:
    """``order_by(asc(User.age))``: ascending, NULLs first."""
    return col(attribute).asc()


def desc(attribute: Any) -> Ordering:
    """``order_by(desc(User.age))``: descending, NULLs last."""
    return col(attribute).desc()


def _values(column: Column[Any], values: Iterable[Any]) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise QueryError(f"{column!r}.in_() takes a list or tuple of values, not {values!r}")
    return tuple(values)


def _text(column: Column[Any], value: Any) -> str:
    if not isinstance(value, str):
        raise QueryError(f"{column!r}: a text pattern must be a str, not {value!r}")
    return value


__all__ = ["Column", "Ordering", "Predicate", "asc", "col", "desc"]
