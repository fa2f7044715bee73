"""What rows a query keeps and in what order: lookups, ``Q`` objects, ORDER BY.

``filter(age__gte=18, name__startswith="A")`` spells a condition as keyword
lookups: ``<field>__<lookup>=value``, a bare ``<field>=value`` meaning ``eq``.
:class:`Q` holds lookups (and column expressions) and combines with ``&``,
``|`` and ``~``. Everything here compiles, against one model's
:class:`~uow.model.TableInfo`, to a :class:`uow.conditions.Condition`, checking
on the way that every field exists (:class:`~uow.errors.UnknownFieldError`
otherwise, listing the fields) and that every value fits its column.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from uow.arithmetic import INT64
from uow.conditions import (
    And,
    Between,
    Compare,
    Condition,
    In,
    IsNull,
    Like,
    Not,
    Or,
    escape_like,
)
from uow.errors import QueryError, UnknownFieldError
from uow.expressions import Column, Ordering, Predicate
from uow.model import TableInfo
from uow.statements import OrderBy


def _like(pattern: Callable[[str], str], case_insensitive: bool = False) -> Callable[[str, Any], Condition]:
    def build(column: str, value: Any) -> Condition:
        if not isinstance(value, str):
            raise QueryError(f"a text lookup on {column!r} needs a str value, not {value!r}")
        return Like(column, pattern(escape_like(value)), case_insensitive)

    return build


def _is_null(column: str, value: Any) -> Condition:
    if not isinstance(value, bool):
        raise QueryError(f"{column}__is_null takes True or False, not {value!r}")
    return IsNull(column, negate=not value)


def _between(column: str, value: Any) -> Condition:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise QueryError(f"{column}__between takes a (low, high) pair, not {value!r}")
    return Between(column, value[0], value[1])


def _in(negate: bool) -> Callable[[str, Any], Condition]:
    def build(column: str, value: Any) -> Condition:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise QueryError(f"{column}__{'not_in' if negate else 'in'} takes a list of values, not {value!r}")
        return In(column, tuple(value), negate=negate)

    return build


def _compare(cmp: Any) -> Callable[[str, Any], Condition]:
    def build(column: str, value: Any) -> Condition:
        if value is None and cmp in ("eq", "ne"):
            return IsNull(column, negate=cmp == "ne")
        return Compare(column, cmp, value)

    return build


LOOKUPS: dict[str, Callable[[str, Any], Condition]] = {
    "eq": _compare("eq"),
    "ne": _compare("ne"),
    "lt": _compare("lt"),
    "lte": _compare("le"),
    "gt": _compare("gt"),
    "gte": _compare("ge"),
    "in": _in(False),
    "not_in": _in(True),
    "is_null": _is_null,
    "between": _between,
    "contains": _like(lambda text: f"%{text}%"),
    "icontains": _like(lambda text: f"%{text}%", True),
    "startswith": _like(lambda text: f"{text}%"),
    "istartswith": _like(lambda text: f"{text}%", True),
    "endswith": _like(lambda text: f"%{text}"),
    "iendswith": _like(lambda text: f"%{text}", True),
}
"""Every lookup ``filter()`` understands, by name."""


class Q:
    """A condition spelled with lookups, combinable with ``&``, ``|`` and ``~``::

        session.query(User).filter(Q(age__lt=13) | Q(age__gt=65))
        session.query(User).filter(~Q(name__startswith="A"), age__gte=18)

    Positional arguments may be other ``Q`` objects or column expressions
    (``User.age >= 18``); everything given to one ``Q`` must hold (AND).
    """

    __slots__ = ("_kind", "_children", "_lookups")

    def __init__(self, *criteria: Q | Predicate | Condition, **lookups: Any):
        self._kind = "and"
        self._children: tuple[Q | Predicate | Condition, ...] = criteria
        self._lookups: dict[str, Any] = lookups

    @classmethod
    def _combined(cls, kind: str, children: tuple[Q | Predicate | Condition, ...]) -> Q:
        combined = cls()
        combined._kind = kind
        combined._children = children
        return combined

    def __and__(self, other: Q | Predicate | Condition) -> Q:
        return Q._combined("and", (self, other))

    def __rand__(self, other: Q | Predicate | Condition) -> Q:
        return Q._combined("and", (other, self))

    def __or__(self, other: Q | Predicate | Condition) -> Q:
        return Q._combined("or", (self, other))

    def __ror__(self, other: Q | Predicate | Condition) -> Q:
        return Q._combined("or", (other, self))

    def __invert__(self) -> Q:
        return Q._combined("not", (self,))

    def compile(self, table: TableInfo) -> Condition:
        """The checked condition this ``Q`` stands for on ``table``."""
        parts = [compile_criterion(table, child) for child in self._children]
        if self._kind == "not":
            return Not(parts[0])
        if self._kind == "or":
            return Or(tuple(parts))
        if self._lookups:
            lookups = compile_lookups(table, self._lookups)
            parts.extend(lookups.items if isinstance(lookups, And) else (lookups,))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def __repr__(self) -> str:
        if self._kind == "and" and not self._children:
            return f"Q({', '.join(f'{k}={v!r}' for k, v in self._lookups.items())})"
        return f"Q.{self._kind}{self._children!r}"


def compile_lookups(table: TableInfo, lookups: Mapping[str, Any]) -> Condition:
    """``age__gte=18, name="x"`` as one checked condition (AND of every lookup)."""
    items: list[Condition] = []
    for spec, value in lookups.items():
        field, _, lookup = spec.rpartition("__")
        if not field or (lookup not in LOOKUPS and spec in table.column_index):
            field, lookup = spec, "eq"
        _check_field(table, field)
        build = LOOKUPS.get(lookup)
        if build is None:
            raise QueryError(
                f"unknown lookup {lookup!r} in {spec!r} on {table.model.__name__}; lookups: {', '.join(LOOKUPS)}"
            )
        items.append(check_condition(table, build(field, value)))
    if len(items) == 1:
        return items[0]
    return And(tuple(items))


def compile_criterion(table: TableInfo, criterion: Q | Predicate | Condition) -> Condition:
    """A ``Q``, a column expression or a raw condition, checked against ``table``."""
    if isinstance(criterion, Q):
        return criterion.compile(table)
    if isinstance(criterion, Predicate):
        for model in criterion.models:
            if model is not table.model:
                raise QueryError(
                    f"the expression {criterion.condition!r} reads {model.__name__} columns, "
                    f"but the query is on {table.model.__name__}"
                )
        return check_condition(table, criterion.condition)
    if isinstance(criterion, Condition):
        return check_condition(table, criterion)
    if isinstance(criterion, Column):
        raise QueryError(f"{criterion!r} is a column, not a condition; compare it: where({criterion!r} == value)")
    raise QueryError(f"where() takes column expressions, Q objects or conditions, not {criterion!r}")


def check_condition(table: TableInfo, condition: Condition) -> Condition:
    """``condition`` with every column checked and every value converted to
    its column's type; text patterns only on text columns, and nothing but
    ``IS NULL`` on JSON columns (databases compare JSON values each their
    own way: key order, ``true`` against ``1``, ``1.0`` against ``1``)."""
    if isinstance(condition, (Compare, In, Between, Like)):
        _check_field(table, condition.column)
        _refuse_json(table, condition.column, "compared")
    if isinstance(condition, Compare):
        if condition.value is None:
            return condition
        return Compare(condition.column, condition.cmp, _value(table, condition.column, condition.value))
    if isinstance(condition, In):
        values = tuple(None if v is None else _value(table, condition.column, v) for v in condition.values)
        return In(condition.column, values, condition.negate)
    if isinstance(condition, Between):
        low, high = (None if v is None else _value(table, condition.column, v) for v in (condition.low, condition.high))
        return Between(condition.column, low, high)
    if isinstance(condition, IsNull):
        _check_field(table, condition.column)
        return condition
    if isinstance(condition, Like):
        column = table.columns[table.column_index[condition.column]]
        python_type = column.python_type
        if column.kind != "text" or (isinstance(python_type, type) and issubclass(python_type, enum.Enum)):
            raise QueryError(
                f"{table.model.__name__}.{condition.column} is not a text column; "
                "contains/startswith/endswith/like need one"
            )
        if _ends_in_a_lone_escape(condition.pattern):
            raise QueryError(
                f"the pattern {condition.pattern!r} ends with the escape character \\; "
                "write \\\\ for a backslash itself"
            )
        if not text_is_storable(condition.pattern):
            raise QueryError(f"{table.model.__name__}.{condition.column}: {_NUL_REFUSED}")
        return condition
    if isinstance(condition, And):
        return And(tuple(check_condition(table, c) for c in condition.items))
    if isinstance(condition, Or):
        return Or(tuple(check_condition(table, c) for c in condition.items))
    if isinstance(condition, Not):
        return Not(check_condition(table, condition.item))
    raise QueryError(f"unknown condition {condition!r}")


def order_terms(table: TableInfo, keys: Iterable[str | Column[Any] | Ordering]) -> tuple[OrderBy, ...]:
    """``"-age"``, ``"name"``, ``User.age`` or ``User.age.desc()`` as ORDER BY terms."""
    terms: list[OrderBy] = []
    for key in keys:
        if isinstance(key, str):
            descending = key.startswith("-")
            name = key[1:] if descending or key.startswith("+") else key
        elif isinstance(key, (Column, Ordering)):
            if key.model is not table.model:
                raise QueryError(f"cannot order {table.model.__name__} rows by {key!r}")
            name = key.name if isinstance(key, Column) else key.column
            descending = isinstance(key, Ordering) and key.descending
        else:
            raise QueryError(f"order_by() takes field names ('-age') or columns (User.age.desc()), not {key!r}")
        _check_field(table, name)
        _refuse_json(table, name, "ordered")
        terms.append(OrderBy(name, descending))
    return tuple(terms)


def _check_field(table: TableInfo, name: str) -> None:
    if name not in table.column_index:
        relation = " (a relation: load it with include())" if name in table.relations else ""
        raise UnknownFieldError(
            f"{table.model.__name__} has no column {name!r}{relation}; columns: {', '.join(table.column_names)}"
        )


def _refuse_json(table: TableInfo, name: str, how: str) -> None:
    if table.columns[table.column_index[name]].kind == "json":
        raise QueryError(
            f"{table.model.__name__}.{name} is a JSON column: its values cannot be {how} alike on every "
            "database (only is_null applies); use execute_raw for the database's own JSON operators"
        )


def _ends_in_a_lone_escape(pattern: str) -> bool:
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    return trailing % 2 == 1


def _value(table: TableInfo, column_name: str, value: Any) -> Any:
    column = table.columns[table.column_index[column_name]]
    python_type = column.python_type
    if value.__class__ is not python_type:
        try:
            value = msgspec.convert(value, python_type, strict=True)
        except (msgspec.ValidationError, TypeError) as exc:
            raise QueryError(
                f"{table.model.__name__}.{column_name}: {value!r} does not fit the column ({exc})"
            ) from None
    if column.kind == "integer" and type(value) is int and value not in INT64:
        raise QueryError(f"{table.model.__name__}.{column_name}: {value!r} does not fit the column (64-bit integers)")
    if type(value) is str and not text_is_storable(value):
        raise QueryError(f"{table.model.__name__}.{column_name}: {_NUL_REFUSED}")
    return value


def text_is_storable(text: str) -> bool:
    """Whether every database stores ``text`` as it is: no NUL character (which
    PostgreSQL refuses) and no lone surrogate (which no UTF-8 text holds)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_NUL_REFUSED = (
    "text with a NUL character or a lone surrogate is not a value databases agree on "
    "(PostgreSQL refuses NUL, SQLite's pattern matching stops at it; no UTF-8 text holds a lone surrogate)"
)


__all__ = [
    "LOOKUPS",
    "Q",
    "check_condition",
    "compile_criterion",
    "compile_lookups",
    "order_terms",
    "text_is_storable",
]
