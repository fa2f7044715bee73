"""The journal: a session's append-only list of change events.

The session appends one event per mutating call. A *mark* is a position in the
journal; savepoints and transactions remember one, and rolling back truncates
the journal to it (the session then undoes the removed events on the tracked
objects, newest first, from the old values they carry).

:func:`replay` applies events to plain rows, which makes the journal an oracle:
replaying what a session did gives what storage must hold. :func:`encode` and
:func:`decode` move journals through JSON or MessagePack.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, overload

import msgspec

from uow.arithmetic import ColumnMath, computed_row, has_math
from uow.conditions import And, Between, Compare, Condition, In, Not, Or, matches
from uow.errors import ReplayError, ValidationError
from uow.events import (
    ROW_CHANGES,
    AnyEvent,
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Inserted,
    RowEvent,
    Updated,
    Upserted,
)
from uow.model import TableInfo


class Journal:
    """Append-only events with a flushed mark and the keys storage generated."""

    __slots__ = (
        "_events",
        "_flushed",
        "_truncations",
        "_pending_refs",
        "generated_keys",
        "written_keys",
        "upserted_rows",
        "next_seq",
        "append",
        "size",
    )

    def __init__(self) -> None:
        self._events: list[AnyEvent] = []
        self._flushed = 0
        self._truncations = 0
        self._pending_refs: tuple[tuple[int, int, int], frozenset[int]] = ((0, 0, 0), frozenset())
        self.generated_keys: dict[int, Any] = {}
        """ref -> primary key of a row whose events were recorded without it
        (see :attr:`JournalView.generated_keys`)."""
        self.upserted_rows: dict[int, dict[str, Any]] = {}
        """seq -> the row an upsert left, as the database returned it."""
        self.written_keys: dict[int, Any] = {}
        """seq -> key of the row an event wrote, where the event named another:
        an upsert that landed, through a conflict on another unique column, on
        a row with another key; an insert whose object's key changed before
        its flush."""
        # both run once per recorded event: bound C methods rather than Python ones
        # (truncate() deletes in place, so the list stays the same object)
        self.next_seq: Callable[[], int] = itertools.count(1).__next__
        """The sequence number for the next event (and reserve it)."""
        self.append: Callable[[AnyEvent], None] = self._events.append
        """Record one event."""
        self.size: Callable[[], int] = self._events.__len__
        """:attr:`mark` as a call in C, for the paths that run once per added object."""

    @property
    def mark(self) -> int:
        """The current end of the journal, to truncate back to later."""
        return len(self._events)

    @property
    def flushed_mark(self) -> int:
        """How many events storage has applied (in the current or an earlier transaction)."""
        return self._flushed

    def mark_flushed(self) -> None:
        """Every event so far has been applied to storage."""
        self._flushed = len(self._events)

    @property
    def pending(self) -> Sequence[AnyEvent]:
        """The events not yet applied to storage, oldest first."""
        return self._events[self._flushed :]

    def has_pending(self) -> bool:
        """Whether any event waits for a flush."""
        return self._flushed < len(self._events)

    def pending_refs(self) -> frozenset[int]:
        """The refs of the rows that pending events are about.

        Kept until the journal changes, so asking once per tracked object (as
        ``is_modified`` or ``expunge`` in a loop do) reads the pending events
        once, not once per call. Appends are seen by the length, flushes by the
        mark and truncations by their count.
        """
        version = (len(self._events), self._flushed, self._truncations)
        cached_version, refs = self._pending_refs
        if cached_version != version:
            refs = frozenset(ref for ref in (getattr(event, "ref", None) for event in self.pending) if ref is not None)
            self._pending_refs = (version, refs)
        return refs

    def inserted_keys_since(self, mark: int) -> dict[int, Any]:
        """seq -> key of each row that an event after ``mark`` inserted (an
        insert, or an upsert that found no row), where the key is known. An
        upsert that landed on a row with another key than it named found one."""
        keys: dict[int, Any] = {}
        for event in self._events[mark:]:
            if isinstance(event, Inserted):
                key = self.written_keys.get(event.seq, event.key)  # a key changed before the flush
            elif isinstance(event, Upserted) and event.old is None and event.seq not in self.written_keys:
                key = event.key
            else:
                continue
            if key is None:
                key = self.generated_keys.get(event.ref)
            if key is not None:
                keys[event.seq] = key
        return keys

    def truncate(self, mark: int) -> list[AnyEvent]:
        """Remove and return the events after ``mark`` (oldest first)."""
        self._truncations += 1
        removed = self._events[mark:]
        del self._events[mark:]
        self._flushed = min(self._flushed, mark)
        for event in removed:
            if isinstance(event, Inserted):
                self.generated_keys.pop(event.ref, None)
                self.written_keys.pop(event.seq, None)
            elif isinstance(event, Upserted):
                # not its ref's key: an upsert onto a tracked row shares the ref of that row's insert
                self.written_keys.pop(event.seq, None)
                self.upserted_rows.pop(event.seq, None)
        return removed

    def view(self) -> JournalView:
        """A read-only view that follows the journal."""
        return JournalView(self)

    def events(self) -> list[AnyEvent]:
        """A copy of every event."""
        return list(self._events)

    def events_since(self, mark: int) -> list[AnyEvent]:
        """A copy of the events after ``mark``."""
        return self._events[mark:]


class JournalView(Sequence[AnyEvent]):
    """Read-only, live view of a session's journal (``session.journal``)."""

    __slots__ = ("_journal",)

    def __init__(self, journal: Journal):
        self._journal = journal

    @overload
    def __getitem__(self, index: int) -> AnyEvent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AnyEvent]: ...

    def __getitem__(self, index: int | slice) -> AnyEvent | Sequence[AnyEvent]:
        return self._journal._events[index]

    def __len__(self) -> int:
        return len(self._journal._events)

    def __iter__(self) -> Iterator[AnyEvent]:
        return iter(list(self._journal._events))

    @property
    def pending(self) -> Sequence[AnyEvent]:
        """Events not yet flushed."""
        return tuple(self._journal.pending)

    @property
    def flushed(self) -> Sequence[AnyEvent]:
        """Events storage has applied."""
        return tuple(self._journal._events[: self._journal.flushed_mark])

    @property
    def generated_keys(self) -> Mapping[int, Any]:
        """ref -> key, for the row events recorded without their row's key:
        the key the database generated for an insert, the key assigned to a
        new object after its insert was recorded, or the key of the row an
        upsert without a key landed on. A read-only view that follows the
        journal (copy it to keep the keys of one moment)."""
        return MappingProxyType(self._journal.generated_keys)

    def key_of(self, event: RowEvent) -> Any:
        """The primary key of the row an event is about, generated ones
        included; for an upsert, of the row it landed on."""
        if event.key is None:
            return self._journal.generated_keys.get(event.ref)
        return self._journal.written_keys.get(event.seq, event.key)

    def upserted_row(self, event: Upserted) -> Mapping[str, Any] | None:
        """The row an upsert left, as the database returned it (``None``
        before its flush)."""
        return self._journal.upserted_rows.get(event.seq)

    def encode(self, format: Literal["json", "msgpack"] = "json") -> bytes:
        """Every event, encoded (see :func:`encode`)."""
        return encode(self._journal._events, format)

    def __repr__(self) -> str:
        return f"<journal: {len(self)} events, {len(self._journal.pending)} pending>"


# --- replay ---------------------------------------------------------------------

Rows = dict[str, dict[Any, dict[str, Any]]]
"""table name -> primary key -> column values."""


def replay(
    events: Iterable[AnyEvent],
    tables: Mapping[str, TableInfo] | Iterable[TableInfo],
    *,
    base: Rows | None = None,
    generated_keys: Mapping[int, Any] | None = None,
) -> Rows:
    """Apply events, one by one, to rows and return the result.

    ``base`` holds the rows before the first event (empty when ``None``; it is
    not modified); ``generated_keys`` gives the key of rows whose events were
    recorded before the database generated their key (``session.journal
    .generated_keys``). Bulk events match rows with the same three-valued logic
    SQL uses. Foreign-key actions are not simulated: the session records the
    changes it makes to tracked children as events of their own. ``tables``:
    by table name, or just the ``TableInfo`` of each (as for :func:`decode`).
    """
    if not isinstance(tables, Mapping):
        tables = {table.name: table for table in tables}
    rows: Rows = {name: {k: dict(v) for k, v in table.items()} for name, table in (base or {}).items()}
    keys = dict(generated_keys or {})
    ref_keys: dict[int, Any] = {}
    events = list(events)
    # new rows given a key after add(): inserted under their ref, moved to the key when it is given
    # (generated_keys holds the last, which another row may hold until then)
    given_later = {
        e.ref for e in events if isinstance(e, Updated) and e.table in tables and tables[e.table].key_column in e.new
    }

    def key_of(event: RowEvent) -> Any:
        if event.key is not None:
            return event.key
        if event.ref in keys and not (type(event) is Inserted and event.ref in given_later):
            return keys[event.ref]
        return ref_keys.get(event.ref, ("ref", event.ref))

    for event in events:
        table = tables.get(event.table)
        if table is None:
            raise ReplayError(f"an event of table {event.table!r}, which tables lacks: give its table_info() too")
        table_rows = rows.setdefault(event.table, {})
        if isinstance(event, Inserted):
            key = key_of(event)
            ref_keys[event.ref] = key
            values = dict(event.values)
            values[table.key_column] = key
            for column, parent_ref in event.parent_refs.items():
                values[column] = keys.get(parent_ref, ref_keys.get(parent_ref))
            table_rows[key] = values
        elif isinstance(event, ROW_CHANGES):
            # a row inserted here is found by its ref: a new object's key may change before its flush
            key = ref_keys[event.ref] if event.ref in ref_keys else key_of(event)
            row = table_rows.get(key)
            if row is None:
                raise ReplayError(
                    f"event #{event.seq} {type(event).__name__} changes {event.table} row {key!r}, which no "
                    "earlier event inserted and base does not hold: pass the rows stored before as base="
                )
            row.update(event.new)
            for column, parent_ref in getattr(event, "parent_refs", {}).items():
                row[column] = keys.get(parent_ref, ref_keys.get(parent_ref))
            moved_to = event.new.get(table.key_column)
            if moved_to is not None and moved_to != key:
                table_rows[moved_to] = table_rows.pop(key)
                if event.ref in ref_keys:
                    ref_keys[event.ref] = moved_to
        elif isinstance(event, Deleted):
            table_rows.pop(ref_keys[event.ref] if event.ref in ref_keys else key_of(event), None)
        elif isinstance(event, Upserted):
            _replay_upsert(event, table, table_rows, key_of(event))
        elif isinstance(event, (BulkUpdated, BulkDeleted)):
            _replay_bulk(event, table, table_rows)
    return rows


def _replay_bulk(event: BulkUpdated | BulkDeleted, table: TableInfo, table_rows: dict[Any, dict[str, Any]]) -> None:
    try:
        if isinstance(event, BulkUpdated):
            # a versioned table's rows get their version bumped, unless the event sets it
            bumped = table.version_column if table.version_column not in event.values else None
            computes = has_math(event.values)
            for row in table_rows.values():
                if matches(event.where, row):
                    row.update(computed_row(event.values, row) if computes else event.values)
                    if bumped is not None:
                        row[bumped] = (row.get(bumped) or 0) + 1
        else:
            for key in [k for k, row in table_rows.items() if matches(event.where, row)]:
                del table_rows[key]
    except TypeError as exc:  # values Python cannot compare (a naive and an aware datetime)
        raise ReplayError(f"event #{event.seq} {type(event).__name__} on {table.name}: {exc}") from None


def _replay_upsert(event: Upserted, table: TableInfo, table_rows: dict[Any, dict[str, Any]], key: Any) -> None:
    target = {c: event.values.get(c) for c in event.conflict_target}
    if event.conflict_target == (table.key_column,):
        target = {table.key_column: key}
    # as in SQL, a NULL in the conflict target conflicts with no row
    existing = (
        None
        if any(v is None for v in target.values())
        else next((row for row in table_rows.values() if all(row.get(c) == v for c, v in target.items())), None)
    )
    if existing is not None:
        existing.update({c: event.values[c] for c in event.update_fields})
        version = table.version_column
        if event.update_fields and version is not None:
            existing[version] = (existing.get(version) or 0) + 1
        return
    values = dict(event.values)
    values.setdefault(table.key_column, key)
    table_rows[values[table.key_column]] = values


# --- encoding ---------------------------------------------------------------------

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_decoder = msgspec.json.Decoder(list[AnyEvent])
_msgpack_decoder = msgspec.msgpack.Decoder(list[AnyEvent])


def encode(events: Iterable[AnyEvent], format: Literal["json", "msgpack"] = "json") -> bytes:
    """Encode events as a JSON array or a MessagePack array.

    JSON has no infinity or NaN: such a float is written as the string
    ``"inf"``, ``"-inf"`` or ``"nan"``, which :func:`decode` types back."""
    _check_format(format)
    listed = list(events)
    if format == "msgpack":
        try:
            return _msgpack_encoder.encode(listed)
        except OverflowError as exc:  # an integer past 64 bits (one a flush refused, still pending)
            raise ValidationError(f"MessagePack holds integers of 64 bits at most: {exc}") from None
    try:
        probe: bytes | None = _msgpack_encoder.encode(listed)
    except OverflowError:  # JSON holds it: written in the slower pass
        probe = None
    if probe is not None and not _NON_FINITE_FLOAT.search(probe):
        return _json_encoder.encode(listed)
    # msgspec would write each as null: spelled out instead, in a slower pass over built-in values
    return _json_encoder.encode(json_safe(msgspec.to_builtins(listed)))


_NON_FINITE_FLOAT = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]", re.DOTALL)
"""A float64 in MessagePack whose exponent bits are all set: an infinity or a
NaN. Bytes of a string or a blob may look the same, which costs the slow pass,
never a wrong result."""


def json_safe(value: Any) -> Any:
    """``value`` (built-in types only) with non-finite floats as strings."""
    if type(value) is float:
        return value if math.isfinite(value) else repr(value)
    if type(value) is dict:
        return {k: json_safe(v) for k, v in value.items()}
    if type(value) is list or type(value) is tuple:
        return [json_safe(v) for v in value]
    return value


def decode(
    data: bytes,
    tables: Mapping[str, TableInfo] | Iterable[TableInfo],
    format: Literal["json", "msgpack"] = "json",
) -> list[AnyEvent]:
    """Decode what :func:`encode` produced back into equal events.

    Column values are untyped in the encoded form (a datetime is a string in
    JSON), so ``tables`` gives each column's type to restore them.
    """
    _check_format(format)
    by_name = tables if isinstance(tables, Mapping) else {t.name: t for t in tables}
    try:
        raw: list[AnyEvent] = (_json_decoder if format == "json" else _msgpack_decoder).decode(data)
    except msgspec.MsgspecError as exc:
        raise ValidationError(f"not a journal encoded as {format}: {exc}") from None
    missing = {event.table for event in raw} - by_name.keys()
    if missing:
        raise ValidationError(f"tables lacks {sorted(missing)}: give the table_info() of every table the events name")
    try:
        return [_retype(event, by_name[event.table]) for event in raw]
    except msgspec.MsgspecError as exc:
        raise ValidationError(f"a journal value does not fit its column in tables: {exc}") from None


def _check_format(format: str) -> None:
    if format not in ("json", "msgpack"):
        raise ValidationError(f"a journal is encoded as 'json' or 'msgpack', not {format!r}")


def _retype(event: AnyEvent, table: TableInfo) -> AnyEvent:
    changes: dict[str, Any] = {}
    if isinstance(event, RowEvent) and event.key is not None:
        changes["key"] = _value(table, table.key_column, event.key)
    bulk = isinstance(event, (BulkUpdated, BulkDeleted))
    for name in ("values", "old", "new", "unchanged"):
        values = getattr(event, name, None)
        if isinstance(values, dict) and values and not bulk:
            changes[name] = _row(table, values)
    if isinstance(event, BulkUpdated):
        changes["values"] = {c: typed_column_value(table, c, v) for c, v in event.values.items()}
    if isinstance(event, (BulkUpdated, BulkDeleted)):
        changes["old"] = {ref: _row(table, row) for ref, row in event.old.items()}
        if event.where is not None:
            changes["where"] = _retype_condition(event.where, table)
    return msgspec.structs.replace(event, **changes) if changes else event


def _row(table: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
    return {column: _value(table, column, value) for column, value in values.items()}


def typed_column_value(table: TableInfo, column: str, value: Any) -> Any:
    """A bulk update's value: a :class:`ColumnMath` comes back as a mapping
    carrying its tag, its operand untyped (only a number column takes one:
    a JSON column's value may look the same)."""
    if (
        type(value) is dict
        and value.get("expr") == "column_math"
        and column in table.column_index
        and table.columns[table.column_index[column]].kind in ("integer", "float", "decimal")
    ):
        math = msgspec.convert(value, ColumnMath)
        return ColumnMath(math.column, math.op, _value(table, column, math.operand))
    return _value(table, column, value)


def _value(table: TableInfo, column: str, value: Any) -> Any:
    if value is None or column not in table.column_index:
        return value
    python_type = table.columns[table.column_index[column]].python_type
    return msgspec.convert(value, python_type, strict=False)


def _retype_condition(condition: Condition, table: TableInfo) -> Any:
    if isinstance(condition, (And, Or)):
        return type(condition)(tuple(_retype_condition(c, table) for c in condition.items))
    if isinstance(condition, Not):
        return Not(_retype_condition(condition.item, table))
    if isinstance(condition, Compare):
        return Compare(condition.column, condition.cmp, _value(table, condition.column, condition.value))
    if isinstance(condition, In):
        values = tuple(_value(table, condition.column, v) for v in condition.values)
        return In(condition.column, values, condition.negate)
    if isinstance(condition, Between):
        low = _value(table, condition.column, condition.low)
        return Between(condition.column, low, _value(table, condition.column, condition.high))
    return condition


__all__ = ["Journal", "JournalView", "Rows", "decode", "encode", "replay"]
