"""The planner's shortcut: batches straight from the events, without a graph
node per row, for flushes whose rows do not depend on rows of their own batch.

Most flushes are many rows of a few shapes: new users each with a new post, one
column changed on loaded rows, rows deleted with their children. For those the
general planner (:mod:`uow.planner`) builds an operation per row, links the
operations and sorts them, only to emit one batch per (table, kind, columns).
The shortcut groups the events by that shape directly and orders the groups.

It applies when

1. every row (``ref``) has exactly one event, and every update changes each
   column it names: there is nothing to coalesce or drop;
2. no row takes a unique value (or key) that another row of the same flush
   gives up;
3. no row depends on a row of its own group (through a foreign key), and
   every dependency goes from a group that the general planner's fallback
   order (:func:`uow.shapes.phase_rank`) already puts strictly first.

Under these conditions the general planner, which always emits the ready group
that comes first by (phase, table depth, first row), finds every group whole
when its turn comes, so its plan is the groups in that order, each with its rows
in journal order. That is the plan built here. When a condition does not hold,
:func:`plan_shortcut` returns ``None`` and the general planner runs; the tests
check that both plan alike wherever the shortcut applies.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from uow.batches import Batch, DeleteBatch, InsertBatch, PendingKey, UpdateBatch
from uow.events import Deleted, Event, Inserted, Restored, SoftDeleted, Updated
from uow.model import TableInfo
from uow.shapes import DELETE, INSERT, UPDATE, checks_version, phase_rank, table_ranks, update_columns


class _Group:
    """The rows of one batch-to-be, in journal order."""

    __slots__ = ("phase", "table", "columns", "flag", "first", "refs", "seqs", "keys", "values", "parent_refs", "olds")

    def __init__(self, phase: int, table: TableInfo, columns: tuple[str, ...], flag: bool, first: int):
        self.phase = phase
        self.table = table
        self.columns = columns
        self.flag = flag  # inserts: the key is generated; updates and deletes: the version is checked
        self.first = first
        self.refs: list[int] = []
        self.seqs: list[int] = []
        self.keys: list[Any] = []
        self.values: list[Mapping[str, Any]] = []  # inserts: the row; updates: the new values; deletes: the old row
        self.parent_refs: list[Mapping[str, int] | None] = []
        self.olds: list[Mapping[str, Any]] = []  # updates only: the old values of the columns they change


def plan_shortcut(events: Sequence[Event], tables: Mapping[str, TableInfo]) -> list[Batch] | None:
    """The plan of row events (no upserts or bulk events) when the shortcut
    applies (see the module's docstring), else ``None``."""
    refs = [event.ref for event in events]  # type: ignore[attr-defined]
    if len(set(refs)) != len(refs):
        return None
    grouped = _group(events, tables)
    if grouped is None:
        return None
    groups, index = grouped
    edges = _dependencies(groups, index)
    if edges is None or not _no_unique_handover(groups):
        return None
    ranks = table_ranks({group.table.name: group.table for group in groups})

    def place(group: _Group) -> tuple[int, int]:
        return phase_rank(group.phase, group.table.name, ranks)

    if any(place(before) >= place(after) for before, after in edges):
        return None
    groups.sort(key=lambda group: (place(group), group.first))
    return [_batch(group) for group in groups]


class _Index:
    """Where the rows that others may depend on are: inserts by ref and by key,
    deletes by key."""

    __slots__ = ("inserts_by_ref", "inserts_by_key", "deletes_by_key")

    def __init__(self) -> None:
        self.inserts_by_ref: dict[int, _Group] = {}
        self.inserts_by_key: dict[tuple[str, Any], _Group] = {}
        self.deletes_by_key: dict[tuple[str, Any], _Group] = {}


def _group(events: Sequence[Event], tables: Mapping[str, TableInfo]) -> tuple[list[_Group], _Index] | None:
    """The events grouped by batch shape, in the order the groups were met,
    and where the rows are; ``None`` when an event does not fit the shortcut."""
    groups: dict[tuple[Any, ...], _Group] = {}
    index = _Index()
    inserts_by_ref = index.inserts_by_ref
    event: Any  # a row event: the checks of its type below are by identity, cheaper than isinstance
    for position, event in enumerate(events):
        kind = type(event)
        table = tables[event.table]
        if kind is Inserted:
            key = event.key
            generated = key is None and table.primary_key.generated
            shape: tuple[Any, ...] = (INSERT, table.name, generated)
            group = groups.get(shape)
            if group is None:
                columns = table.non_key_columns if generated else table.column_names
                group = groups[shape] = _Group(INSERT, table, columns, generated, position)
            inserts_by_ref[event.ref] = group
            if key is not None:
                where = (table.name, key)
                if where in index.inserts_by_key:
                    return None
                index.inserts_by_key[where] = group
            values: Mapping[str, Any] = event.values
            parent_refs: Mapping[str, int] | None = event.parent_refs or None
            old: Mapping[str, Any] = values
        elif kind is Deleted:
            key = event.key
            old = values = event.old
            checked = checks_version(table, old)
            shape = (DELETE, table.name, checked)
            group = groups.get(shape)
            if group is None:
                group = groups[shape] = _Group(DELETE, table, (), checked, position)
            if key is not None:
                where = (table.name, key)
                if where in index.deletes_by_key:
                    return None
                index.deletes_by_key[where] = group
            parent_refs = None
        elif kind is Updated or kind is SoftDeleted or kind is Restored:
            key = event.key
            values = event.new
            old = event.old
            parent_refs = event.parent_refs if kind is Updated else None
            if parent_refs:
                # the general planner keeps the links of the columns the update names
                parent_refs = {c: parent_refs[c] for c in values if c in parent_refs}
            parent_refs = parent_refs or None
            if parent_refs is not None or old.keys() != values.keys():
                old = {column: old.get(column) for column in values}
            for column, value in values.items():
                changed = old[column] != value  # the general planner's test, not the negation of ==
                if not changed and (parent_refs is None or column not in parent_refs):
                    return None  # a column that ends where it started: the general planner drops it
            columns = update_columns(table, values)
            checked = checks_version(table, old)
            shape = (UPDATE, table.name, columns, checked)
            group = groups.get(shape)
            if group is None:
                group = groups[shape] = _Group(UPDATE, table, columns, checked, position)
        else:
            return None
        group.refs.append(event.ref)
        group.seqs.append(event.seq)
        group.keys.append(key)
        group.values.append(values)
        group.parent_refs.append(parent_refs)
        group.olds.append(old)
    return list(groups.values()), index


def _dependencies(groups: list[_Group], index: _Index) -> set[tuple[_Group, _Group]] | None:
    """(before, after) for every pair of groups with a row of ``after`` that
    needs a row of ``before`` written first; ``None`` when a row needs a row of
    its own group (or itself, through a key not generated yet)."""
    edges: set[tuple[_Group, _Group]] = set()
    inserts_by_ref, inserts_by_key, deletes_by_key = index.inserts_by_ref, index.inserts_by_key, index.deletes_by_key
    for group in groups:
        table = group.table
        if not table.foreign_keys:
            continue
        rows = zip(group.refs, group.keys, group.values, group.parent_refs, group.olds)
        for ref, key, values, parent_refs, old in rows:
            for fk in table.foreign_keys:
                column, target = fk.column, fk.target_table
                if group.phase != DELETE:
                    # a row pointing at a new parent is written after the parent's insert
                    parent: _Group | None = None
                    itself = False
                    if parent_refs is not None and column in parent_refs:
                        parent = inserts_by_ref.get(parent_refs[column])
                        itself = parent_refs[column] == ref
                    elif column in values and values[column] is not None:
                        parent = inserts_by_key.get((target, values[column]))
                        itself = group.phase == INSERT and target == table.name and values[column] == key
                    if parent is not None:
                        if itself and key is not None:
                            pass  # a row may reference itself when its key is known
                        elif parent is group:
                            return None
                        else:
                            edges.add((parent, group))
                if group.phase != INSERT and column in old:
                    # a row letting go of a parent (or deleted) goes before the parent's delete
                    released = old[column]
                    if isinstance(released, PendingKey):
                        return None
                    doomed = deletes_by_key.get((target, released))
                    if doomed is None or (group.phase == DELETE and target == table.name and released == key):
                        continue
                    if doomed is group:
                        return None
                    edges.add((group, doomed))
    return edges


def _no_unique_handover(groups: list[_Group]) -> bool:
    """Whether no row takes a unique value (or key) that another row gives up
    in this flush; such pairs are ordered by the general planner."""
    givers = [group for group in groups if group.phase == DELETE or _names_unique_column(group)]
    takers = [group for group in groups if group.phase == INSERT or _names_unique_column(group)]
    if not givers or not takers:
        return True
    given_up: dict[tuple[str, str, Any], int] = {}
    for group in givers:
        table = group.table
        for ref, key, values, old in zip(group.refs, group.keys, group.values, group.olds):
            for column in table.unique_columns:
                value = old.get(column)
                if value is not None and (group.phase == DELETE or column in values):
                    given_up[(table.name, column, value)] = ref
            if group.phase == DELETE and key is not None:
                given_up[(table.name, table.key_column, key)] = ref
    if not given_up:
        return True
    for group in takers:
        table = group.table
        for ref, key, values in zip(group.refs, group.keys, group.values):
            for column in table.unique_columns:
                value = key if group.phase == INSERT and column == table.key_column else values.get(column)
                if value is None or isinstance(value, PendingKey):
                    continue
                giver = given_up.get((table.name, column, value))
                if giver is not None and giver != ref:
                    return False
    return True


def _names_unique_column(group: _Group) -> bool:
    """Whether the rows of an update group change a unique column."""
    return group.phase == UPDATE and any(column in group.columns for column in group.table.unique_columns)


def _rows(group: _Group) -> list[tuple[Any, ...]]:
    """Each row's values of the group's columns, a :class:`PendingKey` where a
    parent's key is awaited."""
    columns = group.columns
    if len(columns) > 1:
        get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = operator.itemgetter(*columns)
    else:
        get = lambda values: tuple([values[c] for c in columns])  # noqa: E731  (itemgetter of one is no tuple)
    links = group.parent_refs
    if not any(links):
        return list(map(get, group.values))
    waiting = [c for c in set().union(*filter(None, links)) if c in columns]
    if len(waiting) == 1 and all(links):
        # one column waits for a parent's key (a child of one new parent, the
        # common case): built column by column, in C, when every row waits
        column = waiting[0]
        try:
            pending = list(map(PendingKey, map(operator.itemgetter(column), links)))  # type: ignore[arg-type]
        except KeyError:
            pass  # some row's key is known: row by row below
        else:
            built = [pending if c == column else list(map(operator.itemgetter(c), group.values)) for c in columns]
            return list(zip(*built))
    position = {c: i for i, c in enumerate(columns)}
    rows: list[tuple[Any, ...]] = []
    for values, parent_refs in zip(group.values, group.parent_refs):
        row = get(values)
        if parent_refs:
            patched = list(row)
            for column, parent_ref in parent_refs.items():
                if column in position:
                    patched[position[column]] = PendingKey(parent_ref)
            row = tuple(patched)
        rows.append(row)
    return rows


def _row_keys(group: _Group) -> list[Any]:
    if None not in group.keys:
        return group.keys
    return [key if key is not None else PendingKey(ref) for key, ref in zip(group.keys, group.refs)]


def _batch(group: _Group) -> Batch:
    table = group.table
    if group.phase == INSERT:
        return InsertBatch(
            table, group.columns, _rows(group), returning_key=group.flag, refs=group.refs, seqs=group.seqs
        )
    if group.phase == UPDATE:
        keys = _row_keys(group)
        version = table.version_column
        if len(group.columns) == 1 and not group.flag and not any(group.parent_refs):
            # one changed column, the most common update: each row built in one step
            column = group.columns[0]
            rows = [(values[column], key) for values, key in zip(group.values, keys)]
            return UpdateBatch(table, group.columns, rows, refs=group.refs, seqs=group.seqs)
        values = _rows(group)
        if group.flag and version is not None:
            rows = [(*row, key, old[version]) for row, key, old in zip(values, keys, group.olds)]
        else:
            rows = [(*row, key) for row, key in zip(values, keys)]
        return UpdateBatch(table, group.columns, rows, check_version=group.flag, refs=group.refs, seqs=group.seqs)
    versions = None
    if group.flag and table.version_column is not None:
        version = table.version_column
        versions = [old[version] for old in group.olds]
    return DeleteBatch(table, _row_keys(group), versions, refs=group.refs, seqs=group.seqs)


__all__ = ["plan_shortcut"]
