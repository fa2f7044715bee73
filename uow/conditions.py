"""Row conditions: the WHERE clauses adapters compile and memory evaluates.

Conditions are frozen msgspec Structs, so bulk events that carry one encode
with the journal. Column names in a condition always come from model metadata;
values always travel as parameters.

:func:`evaluate` gives SQL's three-valued answer (``True``, ``False`` or
``None`` for unknown) over a row given as a mapping of column to value; the
memory adapter and journal replay use it, so Python and SQL agree on NULLs.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

CompareOp = Literal["eq", "ne", "lt", "le", "gt", "ge"]


class Condition(msgspec.Struct, frozen=True, tag_field="op", tag=True):
    """Base of every condition; combine with ``&``, ``|`` and ``~``."""

    def __and__(self, other: Condition) -> Condition:
        return And((self, other))

    def __or__(self, other: Condition) -> Condition:
        return Or((self, other))

    def __invert__(self) -> Condition:
        return Not(self)


class Compare(Condition, frozen=True, tag="compare"):
    """``column <op> value``; a ``None`` value never matches (use :class:`IsNull`)."""

    column: str
    cmp: CompareOp
    value: Any


class In(Condition, frozen=True, tag="in"):
    """``column IN values`` (``NOT IN`` when ``negate``)."""

    column: str
    values: tuple[Any, ...]
    negate: bool = False


class IsNull(Condition, frozen=True, tag="is_null"):
    """``column IS NULL`` (``IS NOT NULL`` when ``negate``)."""

    column: str
    negate: bool = False


class Like(Condition, frozen=True, tag="like"):
    """``column LIKE pattern ESCAPE '\\'``: ``%`` any run, ``_`` one character.

    Case-sensitive unless ``case_insensitive``; adapters must honour both.
    """

    column: str
    pattern: str
    case_insensitive: bool = False


class Between(Condition, frozen=True, tag="between"):
    """``column BETWEEN low AND high`` (both ends included)."""

    column: str
    low: Any
    high: Any


class And(Condition, frozen=True, tag="and"):
    """All of ``items`` hold (true when empty)."""

    items: tuple[ConditionItem, ...]


class Or(Condition, frozen=True, tag="or"):
    """Any of ``items`` holds (false when empty)."""

    items: tuple[ConditionItem, ...]


class Not(Condition, frozen=True, tag="not"):
    """``item`` does not hold."""

    item: ConditionItem


AnyCondition = Compare | In | IsNull | Like | Between | And | Or | Not

if TYPE_CHECKING:
    ConditionItem: TypeAlias = Condition
else:
    # decoders need the tagged union to read nested conditions back (a bare
    # Condition only accepts its own tag); type checkers see the base class
    ConditionItem = AnyCondition


def escape_like(text: str) -> str:
    """Escape ``%``, ``_`` and the escape character itself for a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def equals_all(values: Mapping[str, Any]) -> Condition:
    """``col1 = v1 AND col2 = v2 ...``; a ``None`` value means ``IS NULL``."""
    items: list[Condition] = [
        IsNull(column) if value is None else Compare(column, "eq", value) for column, value in values.items()
    ]
    return items[0] if len(items) == 1 else And(tuple(items))


def columns_of(condition: Condition) -> set[str]:
    """Every column a condition reads."""
    if isinstance(condition, (And, Or)):
        return set().union(*(columns_of(c) for c in condition.items))
    if isinstance(condition, Not):
        return columns_of(condition.item)
    return {condition.column}  # type: ignore[attr-defined]


def datetime_operands(condition: Condition) -> list[tuple[str, bool]]:
    """``(column, whether the value is aware)`` for each datetime or time a
    condition compares a column with."""
    if isinstance(condition, (And, Or)):
        return [found for item in condition.items for found in datetime_operands(item)]
    if isinstance(condition, Not):
        return datetime_operands(condition.item)
    if isinstance(condition, Compare):
        values: tuple[Any, ...] = (condition.value,)
    elif isinstance(condition, In):
        values = condition.values
    elif isinstance(condition, Between):
        values = (condition.low, condition.high)
    else:
        return []
    return [(condition.column, v.tzinfo is not None) for v in values if isinstance(v, (dt.datetime, dt.time))]


def stored_order(value: Any) -> Any:
    """What a database orders and compares a value by: an enum by the value
    it stores (an ``Enum`` of strings has no order of its own in Python)."""
    return value.value if isinstance(value, enum.Enum) else value


_COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: stored_order(a) < stored_order(b),
    "le": lambda a, b: stored_order(a) <= stored_order(b),
    "gt": lambda a, b: stored_order(a) > stored_order(b),
    "ge": lambda a, b: stored_order(a) >= stored_order(b),
}

_like_cache: dict[tuple[str, bool], re.Pattern[str]] = {}


def like_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    """The regular expression equal to a LIKE pattern with ``\\`` as escape."""
    cached = _like_cache.get((pattern, case_insensitive))
    if cached is not None:
        return cached
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    compiled = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))
    if len(_like_cache) < 1024:
        _like_cache[(pattern, case_insensitive)] = compiled
    return compiled


_LOOKUPS: dict[int, tuple[In, Container[Any]]] = {}
"""id(an In) -> (the In, its values as a set): a condition is evaluated row
after row, and a long IN list searched as a tuple costs rows x values."""


def _lookup_of(condition: In) -> Container[Any]:
    values = condition.values
    if len(values) < 8:
        return values
    cached = _LOOKUPS.get(id(condition))
    if cached is not None and cached[0] is condition:
        return cached[1]
    try:
        lookup: Container[Any] = frozenset(values)
    except TypeError:  # a value that cannot be hashed: searched as it is
        lookup = values
    if len(_LOOKUPS) >= 64:
        _LOOKUPS.clear()
    _LOOKUPS[id(condition)] = (condition, lookup)  # the condition is held: its id stays its own
    return lookup


def evaluate(condition: Condition | None, row: Mapping[str, Any]) -> bool | None:
    """SQL's answer for ``row``: ``True``, ``False`` or ``None`` (unknown)."""
    if condition is None:
        return True
    if isinstance(condition, Compare):
        value = row[condition.column]
        if value is None or condition.value is None:
            return None
        return bool(_COMPARE[condition.cmp](value, condition.value))
    if isinstance(condition, In):
        if not condition.values:  # even NULL is (NOT) IN an empty list, as in SQLite and PostgreSQL's ALL/ANY
            return condition.negate
        value = row[condition.column]
        if value is None:
            return None
        found = value in _lookup_of(condition)
        if not found and None in condition.values:
            return None
        return found != condition.negate
    if isinstance(condition, IsNull):
        return (row[condition.column] is None) != condition.negate
    if isinstance(condition, Like):
        value = row[condition.column]
        if value is None:
            return None
        return like_regex(condition.pattern, condition.case_insensitive).fullmatch(str(value)) is not None
    if isinstance(condition, Between):
        # value >= low AND value <= high, where a NULL side is unknown: one
        # false side makes it false (so NOT BETWEEN true) even against a NULL
        value = row[condition.column]
        if value is None:
            return None
        low = None if condition.low is None else stored_order(value) >= stored_order(condition.low)
        high = None if condition.high is None else stored_order(value) <= stored_order(condition.high)
        if low is False or high is False:
            return False
        return None if low is None or high is None else True
    if isinstance(condition, And):
        result: bool | None = True
        for item in condition.items:
            answer = evaluate(item, row)
            if answer is False:
                return False
            if answer is None:
                result = None
        return result
    if isinstance(condition, Or):
        result = False
        for item in condition.items:
            answer = evaluate(item, row)
            if answer is True:
                return True
            if answer is None:
                result = None
        return result
    if isinstance(condition, Not):
        answer = evaluate(condition.item, row)
        return None if answer is None else not answer
    raise TypeError(f"unknown condition {condition!r}")


def matches(condition: Condition | None, row: Mapping[str, Any]) -> bool:
    """Whether a WHERE clause keeps ``row`` (unknown counts as no)."""
    return evaluate(condition, row) is True


__all__ = [
    "And",
    "AnyCondition",
    "Between",
    "Compare",
    "CompareOp",
    "Condition",
    "In",
    "IsNull",
    "Like",
    "Not",
    "Or",
    "columns_of",
    "datetime_operands",
    "equals_all",
    "escape_like",
    "evaluate",
    "like_regex",
    "matches",
    "stored_order",
]
