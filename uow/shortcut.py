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
   gives up, and no table with a unique constraint over several columns has
   rows that may give up values of it beside rows that may take them;
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

import itertools
import operator
from collections import defaultdict
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
    refs = list(map(_REF, events))
    if len(set(refs)) != len(refs):
        return None
    grouped = _group(events, tables)
    if grouped is None:
        return None
    groups, index = grouped
    edges = _dependencies(groups, index)
    if edges is None or not _no_unique_handover(groups) or _may_hand_over_together(groups):
        return None
    ranks = table_ranks({group.table.name: group.table for group in groups})

    def place(group: _Group) -> tuple[int, int]:
        return phase_rank(group.phase, group.table.name, ranks)

    if any(place(before) >= place(after) for before, after in edges):
        return None
    groups.sort(key=lambda group: (place(group), group.first))
    return [_batch(group) for group in groups]


class _Index:
    """Where the rows that others may depend on are: inserts by ref and by
    (table, key), deletes by (table, key); keys per table name."""

    __slots__ = ("inserts_by_ref", "inserts_by_key", "deletes_by_key")

    def __init__(self) -> None:
        self.inserts_by_ref: dict[int, _Group] = {}
        self.inserts_by_key: defaultdict[str, dict[Any, _Group]] = defaultdict(dict)
        self.deletes_by_key: defaultdict[str, dict[Any, _Group]] = defaultdict(dict)


_PHASE_OF_KIND: dict[type, int] = {
    Inserted: INSERT,
    Updated: UPDATE,
    SoftDeleted: UPDATE,
    Restored: UPDATE,
    Deleted: DELETE,
}
_TABLE_NAME = operator.attrgetter("table")
_REF = operator.attrgetter("ref")
_SEQ = operator.attrgetter("seq")
_KEY = operator.attrgetter("key")
_VALUES = operator.attrgetter("values")
_OLD = operator.attrgetter("old")
_NEW = operator.attrgetter("new")
_KEYS = operator.methodcaller("keys")
_PARENT_REFS = operator.attrgetter("parent_refs")


def _group(events: Sequence[Event], tables: Mapping[str, TableInfo]) -> tuple[list[_Group], _Index] | None:
    """The events grouped by batch shape, and where the rows are; ``None`` when
    an event does not fit the shortcut.

    The events are first split by phase and table in one pass; inserts and
    deletes are then read field by field (``map`` over an ``attrgetter``, a
    loop in C), since every row of a flush of many rows needs the same few
    fields. A group's ``first`` is the ``seq`` of its first event, which orders
    groups as the position in the journal would (``seq`` grows along it).
    """
    phases = map(_PHASE_OF_KIND.get, map(type, events))
    by_phase_and_table: defaultdict[tuple[int | None, str], list[Any]] = defaultdict(list)
    for event, where in zip(events, zip(phases, map(_TABLE_NAME, events))):
        by_phase_and_table[where].append(event)
    groups: list[_Group] = []
    index = _Index()
    for (phase, name), members in by_phase_and_table.items():
        table = tables[name]
        if phase == INSERT:
            made = _insert_groups(table, members, index)
        elif phase == DELETE:
            made = _delete_groups(table, members, index)
        elif phase == UPDATE:
            made = _update_groups(table, members)
        else:
            return None  # upserts and bulk events are for the general planner
        if made is None:
            return None
        groups.extend(made)
    groups.sort(key=lambda group: group.first)  # the order the groups were met in
    return groups, index


def _filled(group: _Group, events: list[Any], keys: list[Any], values: list[Mapping[str, Any]]) -> _Group:
    """``group`` with the refs and seqs of ``events``, their ``keys`` and ``values``."""
    group.refs = list(map(_REF, events))
    group.seqs = list(map(_SEQ, events))
    group.keys = keys
    group.values = values
    return group


def _insert_groups(table: TableInfo, events: list[Inserted], index: _Index) -> list[_Group] | None:
    """Inserts into one table: a group of rows with keys to generate and one
    of rows with their key given, as the events have them."""
    keys = list(map(_KEY, events))
    new_count = keys.count(None) if table.primary_key.generated else 0
    parts: list[tuple[list[Inserted], list[Any], bool]] = [(events, keys, new_count > 0)]
    if 0 < new_count < len(keys):
        new = [e for e in events if e.key is None]
        given = [e for e in events if e.key is not None]
        parts = [(new, [None] * new_count, True), (given, list(map(_KEY, given)), False)]
    made: list[_Group] = []
    for members, member_keys, generated in parts:
        columns = table.non_key_columns if generated else table.column_names
        group = _Group(INSERT, table, columns, generated, members[0].seq)
        _filled(group, members, member_keys, list(map(_VALUES, members)))
        group.olds = group.values
        group.parent_refs = [links or None for links in map(_PARENT_REFS, members)]
        index.inserts_by_ref.update(zip(group.refs, itertools.repeat(group)))
        if not generated and not _index_keys(table, group, index.inserts_by_key):
            return None  # one key inserted twice: left to the general planner
        made.append(group)
    return made


def _delete_groups(table: TableInfo, events: list[Deleted], index: _Index) -> list[_Group] | None:
    """Deletes from one table: one group, or two when some rows check a version."""
    parts: list[tuple[list[Deleted], bool]] = [(events, False)]
    if table.version_column is not None:
        checked = [checks_version(table, event.old) for event in events]
        if all(checked):
            parts = [(events, True)]
        elif any(checked):
            parts = [
                ([e for e, c in zip(events, checked) if c], True),
                ([e for e, c in zip(events, checked) if not c], False),
            ]
    made: list[_Group] = []
    for members, flag in parts:
        olds = list(map(_OLD, members))
        group = _filled(_Group(DELETE, table, (), flag, members[0].seq), members, list(map(_KEY, members)), olds)
        group.olds = olds
        group.parent_refs = [None] * len(members)
        if not _index_keys(table, group, index.deletes_by_key):
            return None  # one key deleted twice
        made.append(group)
    return made


def _index_keys(table: TableInfo, group: _Group, by_key: defaultdict[str, dict[Any, _Group]]) -> bool:
    """Enter the group's rows in ``by_key``; ``False`` when a key is there twice."""
    keys = group.keys
    if None in keys:
        keys = [key for key in keys if key is not None]
    indexed = by_key[table.name]
    if len(set(keys)) != len(keys) or not indexed.keys().isdisjoint(keys):
        return False
    indexed.update(zip(keys, itertools.repeat(group)))
    return True


def _update_groups(table: TableInfo, events: list[Updated | SoftDeleted | Restored]) -> list[_Group] | None:
    """Updates of one table, grouped by the columns they change and whether
    they check a version; row by row, since those differ per row, unless every
    row changes the same columns in the same way (:func:`_one_shape_of_updates`)."""
    same = _one_shape_of_updates(table, events)
    if same is not None:
        return [same]
    groups: dict[tuple[tuple[str, ...], bool], _Group] = {}
    for event in events:
        values = event.new
        old = event.old
        parent_refs: Mapping[str, int] | None = event.parent_refs if type(event) is Updated else None
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
        group = groups.get((columns, checked))
        if group is None:
            group = groups[(columns, checked)] = _Group(UPDATE, table, columns, checked, event.seq)
        group.refs.append(event.ref)
        group.seqs.append(event.seq)
        group.keys.append(event.key)
        group.values.append(values)
        group.parent_refs.append(parent_refs)
        group.olds.append(old)
    return list(groups.values())


def _one_shape_of_updates(table: TableInfo, events: list[Updated | SoftDeleted | Restored]) -> _Group | None:
    """The one group of ``events`` when all are plain ``Updated`` events of a
    table without a version column, none waits for a parent's key, and every
    row changes the same columns, each to a value that differs (``!=``) from
    its old one; else ``None``, and the updates are grouped row by row.

    The usual flush of updates (one field changed on many loaded rows) is
    this: its checks run column by column, in C, instead of per row.
    """
    if table.version_column is not None or set(map(type, events)) != {Updated}:
        return None
    if any(map(_PARENT_REFS, events)):
        return None
    news: list[Mapping[str, Any]] = list(map(_NEW, events))
    olds: list[Mapping[str, Any]] = list(map(_OLD, events))
    if len(set(map(tuple, news))) != 1 or not all(map(operator.eq, map(_KEYS, olds), map(_KEYS, news))):
        return None
    for column in news[0]:
        read = operator.itemgetter(column)
        if not all(map(operator.ne, map(read, olds), map(read, news))):
            return None  # a column that ends where it started: the row-by-row grouping decides
    group = _Group(UPDATE, table, update_columns(table, news[0]), False, events[0].seq)
    _filled(group, events, list(map(_KEY, events)), news)
    group.olds = olds
    group.parent_refs = [None] * len(events)
    return group


def _dependencies(groups: list[_Group], index: _Index) -> set[tuple[_Group, _Group]] | None:
    """(before, after) for every pair of groups with a row of ``after`` that
    needs a row of ``before`` written first; ``None`` when a row needs a row of
    its own group (or itself, through a key not generated yet)."""
    edges: set[tuple[_Group, _Group]] = set()
    for group in groups:
        for fk in group.table.foreign_keys:
            if group.phase != DELETE:
                # a row pointing at a new parent is written after the parent's insert
                parents = _parent_groups(group, fk.column, fk.target_table, index)
                if parents is None:
                    return None
                edges.update((parent, group) for parent in parents)
            if group.phase != INSERT:
                # a row letting go of a parent (or deleted) goes before the parent's delete
                doomed = _doomed_groups(group, fk.column, fk.target_table, index)
                if doomed is None:
                    return None
                edges.update((group, parent) for parent in doomed)
    return edges


def _parent_groups(group: _Group, column: str, target: str, index: _Index) -> set[_Group] | None:
    """The other groups that insert a parent the rows of ``group`` point at
    through ``column``: by the ref a row waits on, or by the key it names;
    ``None`` when a parent is in ``group`` itself (a row naming its own given
    key excepted)."""
    by_ref, by_key = index.inserts_by_ref, index.inserts_by_key.get(target, {})
    found = [
        by_ref.get(links[column]) if links and column in links else by_key.get(values.get(column))
        for values, links in zip(group.values, group.parent_refs)
    ]
    parents = set(filter(None, found))
    if group in parents:
        parents.discard(group)
        rows = zip(group.refs, group.keys, group.values, group.parent_refs, found)
        for ref, key, values, links, parent in rows:
            if parent is not group:
                continue
            if links and column in links:
                itself = links[column] == ref
            else:
                itself = group.phase == INSERT and target == group.table.name and values[column] == key
            if not itself or key is None:
                return None
    return parents


def _doomed_groups(group: _Group, column: str, target: str, index: _Index) -> set[_Group] | None:
    """The other groups that delete a parent the rows of ``group`` let go of
    through ``column``; ``None`` when one is in ``group`` itself (a row that
    points at itself excepted) or a row lets go of a key not generated yet."""
    released = [old.get(column) for old in group.olds]
    if PendingKey in set(map(type, released)):
        return None
    by_key = index.deletes_by_key.get(target)
    if by_key is None:
        return set()
    found = list(map(by_key.get, released))
    doomed = set(filter(None, found))
    if group in doomed:
        doomed.discard(group)
        for key, value, parent in zip(group.keys, released, found):
            if parent is group and not (group.phase == DELETE and target == group.table.name and value == key):
                return None
    return doomed


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


def _may_hand_over_together(groups: list[_Group]) -> bool:
    """Whether a table with unique constraints over several columns has rows
    that may give up such values and rows that may take them in this flush:
    the general planner orders those (it knows each row's whole values)."""
    giving = {
        group.table.name
        for group in groups
        if group.table.unique_together and (group.phase == DELETE or _names_column_together(group))
    }
    return bool(giving) and any(
        group.table.name in giving and (group.phase == INSERT or _names_column_together(group)) for group in groups
    )


def _names_column_together(group: _Group) -> bool:
    """Whether the rows of an update group change a column of a unique
    constraint over several columns."""
    return group.phase == UPDATE and any(column in group.table.shares_unique for column in group.columns)


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
            # one changed column, the most common update: the rows zipped from that column and the keys
            rows = list(zip(map(operator.itemgetter(group.columns[0]), group.values), keys))
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
