"""The planner: pending events in, an ordered :class:`~uow.batches.FlushPlan` out.

A pure function of (events, tables); no I/O, no session. Three steps:

1. **Coalesce** the events of each row (its ``ref``) into one operation: insert
   then updates becomes one insert with the final values; insert then delete
   becomes nothing; several updates become one update of the changed columns.
2. **Order** the operations by their dependencies, found from foreign-key
   columns alone: a child is inserted after the parent it points to, a parent is
   deleted after the children pointing at it are deleted or moved away, a row
   that takes a unique value (or primary key) comes after the row that gave it
   up in the same flush. A dependency cycle is broken by inserting one row
   with a nullable foreign key left NULL and setting it by a follow-up update;
   when no nullable key breaks it, :class:`~uow.errors.CycleError` names the rows.
3. **Batch**: ready operations of the same table, kind and column set go into one
   batch (one statement shape, one round trip).

Upserts and bulk updates or deletes keep their place in the journal: the
operations before them are planned and applied first.
"""

from __future__ import annotations

import heapq
import operator
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from uow.batches import (
    Batch,
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    FlushPlan,
    InsertBatch,
    PendingKey,
    UpdateBatch,
    UpsertBatch,
)
from uow.errors import CycleError
from uow.events import (
    ROW_CHANGES,
    AnyEvent,
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Event,
    Inserted,
    Restored,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.model import ForeignKeyInfo, TableInfo
from uow.shapes import DELETE, INSERT, UPDATE, checks_version, insert_columns, phase_rank, table_ranks, update_columns
from uow.shortcut import plan_shortcut

_INSERT, _UPDATE, _DELETE = INSERT, UPDATE, DELETE
_PHASE_NAME = ("insert", "update", "delete")


class _Op:
    """One row's coalesced operation; a node of the dependency graph."""

    __slots__ = (
        "table",
        "ref",
        "phase",
        "key",
        "values",
        "old",
        "parent_refs",
        "first_seq",
        "last_seq",
        "successors",
        "waiting_on",
        "order",
        "shared",
        "unchanged",
    )

    def __init__(
        self,
        table: TableInfo,
        ref: int,
        phase: int,
        key: Any,
        seq: int,
        values: Mapping[str, Any] | None = None,
        old: Mapping[str, Any] | None = None,
        parent_refs: Mapping[str, int] | None = None,
        *,
        shared: bool = False,
    ):
        self.table = table
        self.ref = ref
        self.phase = phase
        self.key = key
        # an event's own dictionaries while shared (read only: own() copies them first)
        self.values = cast("dict[str, Any]", {} if values is None else values)
        self.old = cast("dict[str, Any]", {} if old is None else old)
        self.parent_refs = cast("dict[str, int]", {} if parent_refs is None else parent_refs)
        self.unchanged: Mapping[str, Any] | None = None
        """Updates: the values of columns it leaves alone that share a unique
        constraint over several columns with a column it changes."""
        # True while values, old and parent_refs are the dictionaries of the one event
        # the op was made from (events are never changed, so reading them is safe):
        # own() copies them before the first change
        self.shared = shared
        self.first_seq = seq
        self.last_seq = seq
        self.successors: list[_Op] = []
        self.waiting_on = 0
        self.order = 0

    def own(self) -> None:
        """Copy the event's dictionaries before changing them."""
        if self.shared:
            self.values = dict(self.values)
            self.old = dict(self.old)
            self.parent_refs = dict(self.parent_refs)
            self.shared = False

    def label(self) -> tuple[str, Any]:
        return (self.table.name, self.key if self.key is not None else f"ref {self.ref}")

    def __repr__(self) -> str:
        return f"<{_PHASE_NAME[self.phase]} {self.table.name} {self.label()[1]}>"


def plan_flush(events: Sequence[AnyEvent | Event], tables: Mapping[str, TableInfo]) -> FlushPlan:
    """Order ``events`` into batches; ``tables`` maps each table name to its info.

    >>> plan_flush(session.journal.pending, tables).explain()  # doctest: +SKIP
    """
    if not any(issubclass(kind, _BARRIERS) for kind in set(map(type, events))):
        # the common flush: only row events, one segment, no links to follow (the
        # loop below would reach the same single plan_segment(last=True)); most
        # such flushes need no graph of rows at all
        planned = plan_shortcut(events, tables)
        if planned is None:
            planned = _plan_rows(events, tables, {})
        return FlushPlan(tuple(planned))
    batches: list[Batch] = []
    segment: list[Event] = []
    upserts: list[Upserted] = []
    # (ref, column) -> parent ref, for foreign keys that earlier segments fill
    # from a key generated in this flush: a later segment sees them as pending
    links: dict[tuple[int, str], int] = {}

    def plan_segment(*, last: bool = False) -> None:
        nonlocal segment
        batches.extend(_plan_rows(segment, tables, links))
        if not last:  # only later segments read the links
            _follow_links(segment, links)
        segment = []

    for event in events:
        if isinstance(event, Upserted):
            plan_segment()
            upserts.append(event)
            continue
        if upserts:
            batches.extend(_plan_upserts(upserts, tables))
            upserts = []
        if isinstance(event, BulkUpdated):
            plan_segment()
            batches.append(BulkUpdateBatch(tables[event.table], event.where, dict(event.values), seqs=[event.seq]))
        elif isinstance(event, BulkDeleted):
            plan_segment()
            batches.append(BulkDeleteBatch(tables[event.table], event.where, seqs=[event.seq]))
        else:
            segment.append(event)
    if upserts:
        batches.extend(_plan_upserts(upserts, tables))
    plan_segment(last=True)
    return FlushPlan(tuple(batches))


_BARRIERS = (Upserted, BulkUpdated, BulkDeleted)
"""Events that end a segment: the row events before them are planned first."""


def _follow_links(events: Sequence[Event], links: dict[tuple[int, str], int]) -> None:
    """Update ``links`` with the pending foreign keys ``events`` set or replace."""
    for event in events:
        if isinstance(event, (Inserted, Updated, SoftDeleted, Restored)):
            ref: int = event.ref
            columns = event.values if isinstance(event, Inserted) else event.new
            parent_refs: Mapping[str, int] = getattr(event, "parent_refs", {})
            for column in columns:
                if column in parent_refs:
                    links[(ref, column)] = parent_refs[column]
                else:
                    links.pop((ref, column), None)


# --- coalescing -----------------------------------------------------------------


def _coalesce(
    events: Sequence[Event], tables: Mapping[str, TableInfo], links: Mapping[tuple[int, str], int]
) -> list[_Op]:
    ops: dict[int, _Op | None] = {}
    deleted_keys: set[tuple[str, Any]] = set()
    for event in events:
        ref: int = event.ref  # type: ignore[attr-defined]
        table = tables[event.table]
        op = ops.get(ref)
        if isinstance(event, Inserted):
            values, parent_refs = event.values, event.parent_refs
            ops[ref] = _Op(table, ref, _INSERT, event.key, event.seq, values, None, parent_refs, shared=True)
        elif isinstance(event, ROW_CHANGES):
            parent_refs = getattr(event, "parent_refs", {})
            if op is None and not links and not parent_refs and event.old.keys() == event.new.keys():
                # the first change of a stored row: the op is the event itself
                op = ops[ref] = _Op(table, ref, _UPDATE, event.key, event.seq, event.new, event.old, None, shared=True)
                op.unchanged = event.unchanged
                continue
            if op is None:
                op = ops[ref] = _Op(table, ref, _UPDATE, event.key, event.seq)
            op.own()
            if event.unchanged and op.phase == _UPDATE:
                # a column changed later was unchanged before: its old value is in op.old then
                op.unchanged = {**event.unchanged, **(op.unchanged or {})}
            for column, value in event.new.items():
                if op.phase == _UPDATE and column not in op.old:
                    old = event.old.get(column)
                    if old is None and (ref, column) in links:
                        old = PendingKey(links[(ref, column)])  # stored by an earlier segment of this flush
                    op.old[column] = old
                op.values[column] = value
                if column in parent_refs:
                    op.parent_refs[column] = parent_refs[column]
                else:
                    op.parent_refs.pop(column, None)
            op.last_seq = event.seq
            if op.key is None:
                op.key = event.key
            elif op.phase == _INSERT and table.key_column in event.new:
                op.key = event.new[table.key_column]  # a new row's key changed before its flush
        elif isinstance(event, Deleted):
            if event.key is not None:
                deleted_keys.add((event.table, event.key))
            if op is not None and op.phase == _INSERT:
                ops[ref] = None  # inserted and deleted in one flush: nothing to store
                continue
            key = event.key if event.key is not None or op is None else op.key
            if op is None and not links:
                ops[ref] = _Op(table, ref, _DELETE, key, event.seq, None, event.old, None, shared=True)
                continue
            deleted = _Op(table, ref, _DELETE, key, event.seq)
            deleted.old = dict(event.old)
            if links:
                for fk in table.foreign_keys:  # stored by an earlier segment of this flush
                    if deleted.old.get(fk.column) is None and (ref, fk.column) in links:
                        deleted.old[fk.column] = PendingKey(links[(ref, fk.column)])
            if op is not None:
                deleted.first_seq = op.first_seq
                deleted.old.update(op.old)  # what storage still holds, the version included
            ops[ref] = deleted
    result: list[_Op] = []
    for op in ops.values():
        if op is None:
            continue
        if op.phase == _UPDATE:
            changed = {
                c: v
                for c, v in op.values.items()
                if c in op.parent_refs or op.old.get(c, _MISSING) != v or _relinked(op.table, c, v, deleted_keys)
            }
            if not changed:
                continue
            op.values = changed
        result.append(op)
    return result


_MISSING: Any = object()


def _relinked(table: TableInfo, column: str, value: Any, deleted: set[tuple[str, Any]]) -> bool:
    """Whether a foreign key that ends where it started pointed, in between, away
    from a parent row deleted (and given again) in the same flush: it must let
    go before the delete and point back after the new insert."""
    if value is None:
        return False
    return any(fk.column == column and (fk.target_table, value) in deleted for fk in table.foreign_keys)


# --- ordering -----------------------------------------------------------------


def _plan_rows(
    events: Sequence[Event], tables: Mapping[str, TableInfo], links: Mapping[tuple[int, str], int]
) -> list[Batch]:
    if not events:
        return []
    ops = _coalesce(events, tables, links)
    if not ops:
        return []
    _link(ops)
    return _emit(ops)


def _edge(before: _Op, after: _Op) -> None:
    if before is after:
        return
    before.successors.append(after)
    after.waiting_on += 1


def _link(ops: list[_Op]) -> None:
    inserts_by_ref: dict[int, _Op] = {}
    inserts_by_key: dict[tuple[str, Any], _Op] = {}
    deletes_by_key: dict[tuple[str, Any], _Op] = {}
    deletes_by_ref: dict[int, _Op] = {}
    for op in ops:
        if op.phase == _INSERT:
            inserts_by_ref[op.ref] = op
            if op.key is not None:
                inserts_by_key[(op.table.name, op.key)] = op
        elif op.phase == _DELETE:
            deletes_by_ref[op.ref] = op
            if op.key is not None:
                deletes_by_key[(op.table.name, op.key)] = op
    only_deletes = len(deletes_by_ref) == len(ops)

    for op in ops:
        if op.phase == _DELETE:
            continue
        for fk in op.table.foreign_keys:
            if fk.column not in op.values and fk.column not in op.parent_refs:
                continue
            parent: _Op | None = None
            if fk.column in op.parent_refs:
                parent = inserts_by_ref.get(op.parent_refs[fk.column])
            elif op.values[fk.column] is not None:
                parent = inserts_by_key.get((fk.target_table, op.values[fk.column]))
            if parent is None:
                continue
            if parent is op and op.key is not None:
                continue  # a row may reference itself when its key is known
            if parent is op:
                op.successors.append(op)  # self reference through a generated key: a cycle to break
                op.waiting_on += 1
                continue
            _edge(parent, op)

    # children leave (deleted or pointed elsewhere) before the parent is deleted
    for op in ops:
        if op.phase == _INSERT:
            continue
        for fk in op.table.foreign_keys:
            if fk.column not in op.old:
                continue
            old = op.old[fk.column]
            if isinstance(old, PendingKey):
                parent = deletes_by_ref.get(old.ref)
            else:
                parent = deletes_by_key.get((fk.target_table, old))
            if parent is not None and parent is not op:
                _edge(op, parent)

    # a unique value (or key) that one row gives up is taken by another only afterwards,
    # whatever order the journal recorded them in (assignments are recorded at flush)
    if only_deletes:
        return  # nothing takes a value: no need to list the ones given up
    if any(op.table.unique_together for op in ops):
        _order_handovers_together(ops)
    released: dict[tuple[str, str, Any], _Op] = {}
    for op in ops:
        if op.phase == _INSERT:
            continue
        for column in op.table.unique_columns:
            if column in op.old and op.old[column] is not None:
                if op.phase == _UPDATE and column not in op.values:
                    continue
                released[(op.table.name, column, op.old[column])] = op
        if op.phase == _DELETE and op.key is not None:
            released[(op.table.name, op.table.key_column, op.key)] = op
    if not released:
        return
    for op in ops:
        if op.phase == _DELETE:
            continue
        for column in op.table.unique_columns:
            value = op.key if (op.phase == _INSERT and column == op.table.key_column) else op.values.get(column)
            if value is None or isinstance(value, PendingKey):
                continue
            giver = released.get((op.table.name, column, value))
            if giver is not None and giver is not op:
                _edge(giver, op)


def _order_handovers_together(ops: list[_Op]) -> None:
    """What :func:`_link` does for unique values, for the constraints over
    several columns: a row that takes the values another row gives up in the
    same flush comes after it."""
    released: dict[tuple[str, str, tuple[Any, ...]], _Op] = {}
    for op in ops:
        if op.phase == _INSERT:
            continue
        for constraint in op.table.unique_together:
            if op.phase == _UPDATE and op.values.keys().isdisjoint(constraint.columns):
                continue
            given_up = _values_together(op, constraint.columns, before=True)
            if given_up is not None:
                released[(op.table.name, constraint.name, given_up)] = op
    if not released:
        return
    for op in ops:
        if op.phase == _DELETE:
            continue
        for constraint in op.table.unique_together:
            if op.phase == _UPDATE and op.values.keys().isdisjoint(constraint.columns):
                continue
            taken = _values_together(op, constraint.columns, before=False)
            giver = None if taken is None else released.get((op.table.name, constraint.name, taken))
            if giver is not None and giver is not op:
                _edge(giver, op)


def _values_together(op: _Op, columns: tuple[str, ...], *, before: bool) -> tuple[Any, ...] | None:
    """The values of ``columns`` in ``op``'s row before the flush (``before``)
    or after it; ``None`` when one is NULL (it clashes with nothing), a key not
    generated yet, or not known (a journal recorded without ``unchanged``)."""
    values: list[Any] = []
    key_column = op.table.key_column
    for column in columns:
        if op.phase == _INSERT:
            value = op.key if column == key_column else op.values.get(column)
        elif not before and column in op.values:
            value = op.values[column]
        elif column in op.old:
            value = op.old[column]
        else:
            value = None if op.unchanged is None else op.unchanged.get(column)
        if value is None or isinstance(value, PendingKey):
            return None
        values.append(value)
    return tuple(values)


def _group_key(op: _Op) -> tuple[Any, ...]:
    table = op.table
    if op.phase == _INSERT:
        return (_INSERT, table.name, insert_columns(table, op.key), op.key is None and table.primary_key.generated)
    if op.phase == _UPDATE:
        return (_UPDATE, table.name, update_columns(table, op.values), checks_version(table, op.old))
    return (_DELETE, table.name, (), checks_version(table, op.old))


def _emit(ops: list[_Op]) -> list[Batch]:
    table_rank = _table_ranks(ops)
    for index, op in enumerate(ops):
        op.order = index
    ready: dict[tuple[Any, ...], list[_Op]] = defaultdict(list)
    for op in ops:
        if op.waiting_on == 0:
            ready[_group_key(op)].append(op)
    remaining = len(ops)
    batches: list[Batch] = []
    while remaining:
        if not ready:
            # breaking a cycle adds one operation (the follow-up or clearing update)
            remaining += _break_cycle([op for op in ops if op.waiting_on > 0], ready)
            continue
        group_key = min(ready, key=lambda k: _priority(k, ready[k], table_rank))
        group = ready.pop(group_key)
        group.sort(key=lambda op: op.order)
        batches.append(_batch(group_key, group))
        remaining -= len(group)
        for op in group:
            for successor in op.successors:
                successor.waiting_on -= 1
                if successor.waiting_on == 0:
                    ready[_group_key(successor)].append(successor)
    return batches


def _priority(key: tuple[Any, ...], group: list[_Op], table_rank: Mapping[str, int]) -> tuple[int, int, int]:
    return (*phase_rank(key[0], key[1], table_rank), min(op.order for op in group))


def _table_ranks(ops: list[_Op]) -> dict[str, int]:
    return table_ranks({op.table.name: op.table for op in ops})


def _break_cycle(blocked: list[_Op], ready: dict[tuple[Any, ...], list[_Op]]) -> int:
    """Break one cycle among ``blocked`` through a nullable foreign key; returns
    how many operations that added."""
    component = _find_cycle(blocked)
    members = set(map(id, component))
    for child in component:
        if child.phase == _INSERT:
            for fk in child.table.foreign_keys:
                column_info = child.table.columns[child.table.column_index[fk.column]]
                if not column_info.nullable:
                    continue
                parent = _parent_in(child, fk.column, component)
                if parent is None:
                    continue
                _defer_foreign_key(child, fk.column, parent, ready)
                return 1
        if child.phase != _INSERT:  # a deleted row, or an updated one that also takes a freed unique value
            for fk in child.table.foreign_keys:
                column_info = child.table.columns[child.table.column_index[fk.column]]
                released = child.old.get(fk.column)
                if not column_info.nullable or released is None:
                    continue
                parent = next(
                    (
                        op
                        for op in child.successors
                        if id(op) in members and op.phase == _DELETE and _is_row(op, fk.target_table, released)
                    ),
                    None,
                )
                if parent is None:
                    continue
                _clear_before_delete(child, fk.column, parent, ready)
                return 1
    for child in component:
        if child.phase != _UPDATE:
            continue
        for fk in child.table.foreign_keys:
            if fk.column not in child.values or len(child.values) == 1:
                continue
            parent = _parent_in(child, fk.column, component)
            if parent is None:
                continue
            _split_update(child, fk, parent, ready)
            return 1
    swap = all(op.phase == _UPDATE for op in component)
    raise CycleError(
        (
            "these rows swap unique values, which no statement order allows; "
            "give one an intermediate value and flush first: "
            if swap
            else "these rows depend on each other in a cycle that no nullable foreign key can break: "
        )
        + ", ".join(f"{table} {key}" for table, key in (op.label() for op in component)),
        tables=tuple(dict.fromkeys(op.table.name for op in component)),
        rows=tuple(op.label() for op in component),
    )


def _parent_in(child: _Op, column: str, component: list[_Op]) -> _Op | None:
    for op in component:
        if child not in op.successors:
            continue
        if column in child.parent_refs and op.phase == _INSERT and op.ref == child.parent_refs[column]:
            return op
        value = child.values.get(column)
        if value is not None and op.phase == _INSERT and op.key == value:
            return op
    return None


def _defer_foreign_key(child: _Op, column: str, parent: _Op, ready: dict[tuple[Any, ...], list[_Op]]) -> None:
    """Insert ``child`` with ``column`` NULL now and set it after ``parent``."""
    child.own()
    value = child.values[column]
    child.values[column] = None
    _set_after(child, column, value, None, parent, ready)


def _split_update(child: _Op, fk: ForeignKeyInfo, parent: _Op, ready: dict[tuple[Any, ...], list[_Op]]) -> None:
    """Update ``child`` without ``fk``'s column now, and set that column after
    ``parent`` is inserted: for an update that both waits for a new parent and
    frees a unique value that parent takes."""
    child.own()
    released = child.old.pop(fk.column, None)
    follow_up = _set_after(child, fk.column, child.values.pop(fk.column), released, parent, ready)
    # the row now lets go of its old parent in the follow-up: a delete of that
    # parent waits for it
    for successor in child.successors:
        if successor.phase == _DELETE and _is_row(successor, fk.target_table, released):
            _edge(follow_up, successor)


def _set_after(
    child: _Op, column: str, value: Any, old: Any, parent: _Op, ready: dict[tuple[Any, ...], list[_Op]]
) -> _Op:
    """A follow-up update setting ``child``'s ``column`` (from ``old``) to
    ``value`` once both ``parent`` and ``child`` are written; ``child`` no
    longer waits for ``parent``, and is ready when nothing else holds it."""
    follow_up = _Op(child.table, child.ref, _UPDATE, child.key, child.last_seq)
    follow_up.values = {column: value}
    follow_up.old = {column: old}
    if column in child.parent_refs:
        follow_up.parent_refs[column] = child.parent_refs.pop(column)
    follow_up.order = child.order
    parent.successors.remove(child)
    child.waiting_on -= 1
    _edge(parent, follow_up)
    _edge(child, follow_up)
    if child.waiting_on == 0:
        ready[_group_key(child)].append(child)
    return follow_up


def _is_row(op: _Op, table: str, key: Any) -> bool:
    """Whether ``op`` is about the row of ``table`` with primary key ``key``
    (a :class:`PendingKey` for a row whose key is not generated yet)."""
    if op.table.name != table:
        return False
    if isinstance(key, PendingKey):
        return op.ref == key.ref
    return op.key is not None and op.key == key


def _clear_before_delete(child: _Op, column: str, parent: _Op, ready: dict[tuple[Any, ...], list[_Op]]) -> None:
    """Set ``child``'s ``column`` to NULL before ``parent`` is deleted."""
    clearing = _Op(child.table, child.ref, _UPDATE, child.key, child.first_seq)
    clearing.values = {column: None}
    clearing.old = {column: child.old[column]}
    clearing.order = child.order
    child.successors.remove(parent)
    parent.waiting_on -= 1
    _edge(clearing, parent)
    _edge(clearing, child)
    ready[_group_key(clearing)].append(clearing)


def _find_cycle(blocked: list[_Op]) -> list[_Op]:
    """The operations of one strongly connected component with a cycle."""
    members = {id(op) for op in blocked}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[_Op] = []
    on_stack: set[int] = set()
    counter = 0
    found: list[_Op] = []

    def strongconnect(root: _Op) -> None:
        nonlocal counter, found
        work: list[tuple[_Op, int]] = [(root, 0)]
        index[id(root)] = low[id(root)] = counter
        counter += 1
        stack.append(root)
        on_stack.add(id(root))
        while work and not found:
            node, position = work[-1]
            successors = [s for s in node.successors if id(s) in members]
            if position < len(successors):
                work[-1] = (node, position + 1)
                nxt = successors[position]
                if id(nxt) not in index:
                    index[id(nxt)] = low[id(nxt)] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(id(nxt))
                    work.append((nxt, 0))
                elif id(nxt) in on_stack:
                    low[id(node)] = min(low[id(node)], index[id(nxt)])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[id(parent)] = min(low[id(parent)], low[id(node)])
            if low[id(node)] == index[id(node)]:
                component: list[_Op] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(id(member))
                    component.append(member)
                    if member is node:
                        break
                if len(component) > 1 or node in node.successors:
                    found = component

    for op in blocked:
        if id(op) not in index and not found:
            strongconnect(op)
    if not found:  # cannot happen when ops are blocked, but keep the error useful
        found = blocked
    return sorted(found, key=lambda op: op.order)


# --- batches ------------------------------------------------------------------


def _rows(group: list[_Op], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Each op's values of ``columns`` as a tuple, a :class:`PendingKey` where a
    parent's key is awaited."""
    # one itemgetter call (in C) per row instead of a lookup per column in Python
    if len(columns) > 1:
        get: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*columns)
    else:
        get = lambda values: tuple([values[c] for c in columns])  # noqa: E731  (itemgetter of one is no tuple)
    position = {c: i for i, c in enumerate(columns)}
    rows: list[tuple[Any, ...]] = []
    for op in group:
        row = get(op.values)
        if op.parent_refs:
            patched = list(row)
            for column, parent_ref in op.parent_refs.items():
                if column in position:
                    patched[position[column]] = PendingKey(parent_ref)
            row = tuple(patched)
        rows.append(row)
    return rows


def _row_key(op: _Op) -> Any:
    return op.key if op.key is not None else PendingKey(op.ref)


def _batch(group_key: tuple[Any, ...], group: list[_Op]) -> Batch:
    phase, _, columns, flag = group_key
    table = group[0].table
    refs = [op.ref for op in group]
    seqs = [op.first_seq if phase == _DELETE else op.last_seq for op in group]
    if phase == _INSERT:
        return InsertBatch(table, columns, _rows(group, columns), returning_key=flag, refs=refs, seqs=seqs)
    if phase == _UPDATE:
        version = table.version_column
        values = _rows(group, columns)
        if flag:
            rows = [(*row, _row_key(op), op.old[version]) for row, op in zip(values, group)]  # type: ignore[index]
        else:
            rows = [(*row, _row_key(op)) for row, op in zip(values, group)]
        return UpdateBatch(table, columns, rows, check_version=flag, refs=refs, seqs=seqs)
    keys = [_row_key(op) for op in group]
    versions = [op.old[table.version_column] for op in group] if flag and table.version_column else None
    return DeleteBatch(table, keys, versions, refs=refs, seqs=seqs)


def _plan_upserts(events: list[Upserted], tables: Mapping[str, TableInfo]) -> list[Batch]:
    batches: list[Batch] = []
    current: UpsertBatch | None = None
    seen: set[tuple[Any, ...]] = set()
    for event in events:
        table = tables[event.table]
        columns = tuple(c for c in table.column_names if c in event.values)
        target_value = tuple(event.values.get(c) for c in event.conflict_target)
        shape = (table.name, columns, event.conflict_target, event.update_fields)
        if (
            current is None
            or (current.table.name, current.columns, current.conflict_target, current.update_columns) != shape
            or target_value in seen
        ):
            current = UpsertBatch(table, columns, [], event.conflict_target, event.update_fields)
            batches.append(current)
            seen = set()
        seen.add(target_value)
        current.rows.append(tuple(event.values[c] for c in columns))
        current.refs.append(event.ref)
        current.seqs.append(event.seq)
    for batch in batches:
        if isinstance(batch, UpsertBatch):
            _parents_first(batch)
    return batches


def _parents_first(batch: UpsertBatch) -> None:
    """Order the rows of an upsert batch so that a row pointing (through a
    foreign key to its own table) at the key of another row of the batch
    comes after it, as a flush orders inserts: databases that check a
    foreign key row by row (SQLite, the memory adapter) would refuse the
    other order, which PostgreSQL, checking at the statement's end, takes.
    Otherwise the rows keep the order given. Rows pointing at each other in
    a cycle, which only PostgreSQL would take, raise :class:`CycleError`."""
    table, columns, rows = batch.table, batch.columns, batch.rows
    if table.key_column not in columns or len(rows) < 2:
        return
    own = [
        columns.index(fk.column) for fk in table.foreign_keys if fk.target_table == table.name and fk.column in columns
    ]
    if not own:
        return
    key_at = columns.index(table.key_column)
    position_of = {row[key_at]: i for i, row in enumerate(rows) if row[key_at] is not None}
    children: dict[int, list[int]] = {}
    waiting = [0] * len(rows)
    for i, row in enumerate(rows):
        for parent in {position_of[row[p]] for p in own if row[p] in position_of} - {i}:
            children.setdefault(parent, []).append(i)
            waiting[i] += 1
    if not children:
        return
    ready = [i for i in range(len(rows)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)  # the earliest ready row: as close to the order given as can be
        order.append(i)
        for child in children.get(i, ()):
            waiting[child] -= 1
            if not waiting[child]:
                heapq.heappush(ready, child)
    if len(order) < len(rows):
        cycle = tuple((table.name, rows[i][key_at]) for i in range(len(rows)) if waiting[i])
        raise CycleError(
            "these rows of one upsert point at each other in a cycle, which only some databases take in one "
            f"statement: insert them (the flush breaks the cycle), or upsert them in two steps: {cycle}",
            tables=(table.name,),
            rows=cycle,
        )
    batch.rows[:] = [rows[i] for i in order]
    batch.refs[:] = [batch.refs[i] for i in order]
    batch.seqs[:] = [batch.seqs[i] for i in order]


__all__ = ["plan_flush"]
