"""The identity map: one Python object per stored row, with its snapshot.

Each tracked object has an :class:`InstanceState`: its session-local ``ref``,
its table, its status and a *snapshot*, the tuple of column values the journal
says it has. Assignments on the object that the journal has not recorded yet
are the difference between the object and its snapshot; the session turns them
into ``Updated`` events at flush.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any, cast

import msgspec

from uow.assignments import WATCHED, Sink, holds_unwatched_children, set_attribute
from uow.model import TableInfo, detached_value, is_model


class Status(Enum):
    """Where a tracked object stands."""

    PENDING = "pending"
    """Added; its insert is not flushed."""
    PERSISTENT = "persistent"
    """Its row is in storage (in this transaction at least)."""
    DELETED = "deleted"
    """Deleted; the delete is not flushed."""
    GONE = "gone"
    """Deleted and flushed; kept until commit so a rollback can revive it."""
    DETACHED = "detached"
    """Not tracked."""


LIVE = (Status.PENDING, Status.PERSISTENT)
"""The statuses of an object the session writes: new or stored, not deleted."""


# gc=False: the cyclic garbage collector never tracks states. A session makes one
# per tracked object (20k for 10k users with a post each), and while they were
# tracked the collections set off by a long unit of work walked them all again. A
# state refers to its object, its table, a snapshot of column values and a dict
# of refs (numbers); the only things that refer to a state are the identity map
# and the session's own locals. A cycle through a state would need its object to
# lead back to it, but an object leads on only to column values and, through
# relations, to other model objects, and neither refers to a state or to the
# session's identity map. So, as for events, only a column value that refers
# back to the session could close such a cycle. Cycles among model objects
# (a post and its author's list of posts) do not pass through a state and are
# collected as before once the session lets the objects go.
class InstanceState(msgspec.Struct, gc=False, eq=False):
    """What the session knows about one tracked object."""

    obj: Any
    ref: int
    table: TableInfo
    snapshot: tuple[Any, ...]
    """The column values the journal says the object has."""
    status: Status
    expired: bool = False
    parent_refs: dict[str, int] | None = None
    """Foreign-key columns waiting for a parent's generated key (column -> parent ref)."""

    @property
    def key(self) -> Any:
        """The primary key as the journal knows it."""
        return self.snapshot[self.table.key_index]

    def current(self) -> tuple[Any, ...]:
        """The object's column values now."""
        return self.table.values_of(self.obj)

    def changes(self, now: tuple[Any, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(old, new) values of the columns assigned since the snapshot; ``now``:
        the object's values when the caller has just read them."""
        if now is None:
            now = self.current()
        if now == self.snapshot:
            return {}, {}
        old, new, _ = self.table.diff(self.snapshot, now)
        return old, new

    def set_values(self, values: dict[str, Any]) -> None:
        """Assign column values on the object and in the snapshot (the object
        gets its own copy of a value it could change in place)."""
        obj = self.obj
        mutable = self.table.mutable_columns
        for name, value in values.items():
            set_attribute(obj, name, detached_value(value) if mutable and name in mutable else value)
        snapshot = list(self.snapshot)
        index = self.table.column_index
        for name, value in values.items():
            snapshot[index[name]] = value
        self.snapshot = tuple(snapshot)

    def restore_snapshot(self) -> None:
        """Undo assignments the journal has not recorded."""
        obj = self.obj
        table = self.table
        snapshot = table.detached(self.snapshot) if table.mutable_indexes else self.snapshot
        for name, value in zip(table.column_names, snapshot):
            set_attribute(obj, name, value)

    def __repr__(self) -> str:
        return f"<state {self.table.name} ref={self.ref} {self.status.value}>"


_SWEEP_FLOOR = 1024
"""Objects remembered before the first sweep of dead entries."""


class _LetGo:
    """Objects by identity, held weakly: the ones the identity map let go of
    for one reason. An entry whose object is gone is dead: it can never match,
    even when the id is reused, and dead entries are swept out in one pass
    once the dict has doubled since the last sweep (no callback per object:
    that doubles the cost of letting one go)."""

    __slots__ = ("refs", "_sweep_at")

    def __init__(self) -> None:
        self.refs: dict[int, weakref.ref[Any]] = {}
        self._sweep_at = _SWEEP_FLOOR

    def add(self, obj: Any) -> None:
        refs = self.refs
        refs[id(obj)] = weakref.ref(obj)
        if len(refs) >= self._sweep_at:
            self.refs = {key: ref for key, ref in refs.items() if ref() is not None}
            self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self.refs))

    def discard(self, obj: Any) -> None:
        found = self.refs.get(id(obj))
        if found is not None and found() is obj:
            del self.refs[id(obj)]

    def __contains__(self, obj: Any) -> bool:
        found = self.refs.get(id(obj))
        return found is not None and found() is obj

    def __len__(self) -> int:
        return len(self.refs)

    def clear(self) -> None:
        self.refs.clear()


_NOT_FILED = object()


class _Lookup:
    """The tracked states of one table by the values of some of its columns
    in their snapshots: each state is filed once, under what its snapshot held
    when it was last :meth:`filed <file>` (the value itself for one column, the
    tuple of values for several)."""

    __slots__ = ("single", "values_of", "states", "filed_under")

    def __init__(self, indexes: tuple[int, ...], states: Iterable[InstanceState]) -> None:
        self.single = len(indexes) == 1
        # filed by the value itself when there is one column, by a tuple otherwise
        self.values_of: Callable[[tuple[Any, ...]], Any] = operator.itemgetter(*indexes)
        self.states: dict[Any, list[InstanceState]] = {}
        self.filed_under: dict[int, Any] = {}
        """id(state) -> the values it is filed under (a filed state is alive: the
        lookup holds it)."""
        self.file_new(states)

    def file(self, state: InstanceState) -> None:
        """File the state under its snapshot's values (and no longer under
        the ones it had before)."""
        values = self.values_of(state.snapshot)
        before = self.filed_under.get(id(state), _NOT_FILED)
        if before is not _NOT_FILED:
            if before == values:
                return
            self._take_out(state, before)
        self.states.setdefault(values, []).append(state)
        self.filed_under[id(state)] = values

    def file_new(self, states: Iterable[InstanceState]) -> None:
        """:meth:`file` of states never filed before (the new objects of a
        read), in one loop."""
        filed_under = self.filed_under
        by_values = self.states
        values_of = self.values_of
        for state in states:
            values = values_of(state.snapshot)
            found = by_values.get(values)
            if found is None:
                by_values[values] = [state]
            else:
                found.append(state)
            filed_under[id(state)] = values

    def discard(self, state: InstanceState) -> None:
        before = self.filed_under.pop(id(state), _NOT_FILED)
        if before is not _NOT_FILED:
            self._take_out(state, before)

    def _take_out(self, state: InstanceState, values: Any) -> None:
        found = self.states[values]
        found.remove(state)
        if not found:
            del self.states[values]

    def find(self, values: tuple[Any, ...]) -> list[InstanceState]:
        """The states filed under ``values`` (one per column)."""
        return list(self.states.get(values[0] if self.single else values, ()))


class IdentityMap:
    """Tracked objects by object identity and by (table, key), and by ref the
    ones the current transaction's events are about.

    ``by_ref`` is what undo, the planner's pending parent keys and the
    bookkeeping after a flush look states up by. Only states named by an event
    of the open transaction need to be found that way, so a state enters it
    when the session records an event about it (:meth:`remember`) and the
    session empties it when the transaction ends: rows that are only loaded and
    read never cost an entry.

    The map watches the objects it tracks (:mod:`uow.assignments`): an
    assignment on one notes it in ``assigned``, so :meth:`states_to_compare`
    names the states a flush must compare with their snapshots rather than
    every tracked one.
    """

    __slots__ = (
        "by_ref",
        "by_obj",
        "_by_key",
        "lookups",
        "_detached",
        "_deleted",
        "assigned",
        "compared",
        "__weakref__",
    )

    def __init__(self) -> None:
        self.by_ref: dict[int, InstanceState] = {}
        """ref -> state, for the states the open transaction's events name."""
        self.by_obj: dict[int, InstanceState] = {}
        """id(object) -> state, for every tracked object (:meth:`state_of` reads it)."""
        self._by_key: dict[TableInfo, dict[Any, InstanceState]] = {}
        self.lookups: dict[TableInfo, dict[tuple[int, ...], _Lookup]] = {}
        """For the tables looked up by columns other than the key (an upsert on a
        unique column): the states by those columns' values in their snapshots."""
        self._detached = _LetGo()
        """Objects :meth:`detach` let go of while their rows exist (expunged)."""
        self._deleted = _LetGo()
        """Objects :meth:`detach` let go of after their rows were deleted."""
        self.assigned: Sink = {}
        """Ids of tracked objects assigned to since the last comparison: this
        map's sink in :data:`uow.assignments.WATCHED`."""
        self.compared: dict[int, InstanceState] = {}
        """id(object) -> state, for the objects compared at every flush: their
        changes are not all assignments (a JSON value changed in place), or
        another identity map watches them."""
        # a map dropped without clear() must not leave its objects' ids watched
        weakref.finalize(self, _stop_watching, self.by_obj, self.assigned)

    def find_by_columns(
        self, table: TableInfo, indexes: tuple[int, ...], values: tuple[Any, ...]
    ) -> list[InstanceState]:
        """The tracked states of ``table`` whose snapshots hold ``values`` in
        the columns at ``indexes`` (any status; deleted ones too until untracked).

        The first lookup by a set of columns walks every tracked state once;
        from then on the map keeps it up to date (:meth:`reindex`), so a loop of
        upserts on a unique column does not walk them again per call.
        """
        lookups = self.lookups.setdefault(table, {})
        lookup = lookups.get(indexes)
        if lookup is None:
            lookup = lookups[indexes] = _Lookup(indexes, [s for s in self.by_obj.values() if s.table is table])
        by_obj = self.by_obj
        return [state for state in lookup.find(values) if by_obj.get(id(state.obj)) is state]

    def reindex(self, state: InstanceState) -> None:
        """Keep the lookups by columns (:meth:`find_by_columns`) finding a state
        that was just tracked or whose snapshot just changed. Callers test
        ``self.lookups`` first: most sessions never build one."""
        lookups = self.lookups.get(state.table)
        if lookups and self.by_obj.get(id(state.obj)) is state:  # an untracked state is filed nowhere
            for lookup in lookups.values():
                lookup.file(state)

    def unlook(self, state: InstanceState) -> None:
        """Take a state no longer tracked out of the lookups by columns."""
        for lookup in self.lookups.get(state.table, {}).values():
            lookup.discard(state)

    def set_values(self, state: InstanceState, values: dict[str, Any]) -> None:
        """:meth:`InstanceState.set_values` of a tracked state, keeping the
        lookups by columns up to date."""
        state.set_values(values)
        if self.lookups:
            self.reindex(state)

    def state_of(self, obj: Any) -> InstanceState | None:
        """The state of a tracked object, or ``None``."""
        return self.by_obj.get(id(obj))

    def get(self, table: TableInfo, key: Any) -> InstanceState | None:
        """The tracked state with that key, or ``None``."""
        rows = self._by_key.get(table)
        return None if rows is None else rows.get(key)

    def remember(self, state: InstanceState) -> None:
        """Make the state findable by its ref (an event about it is being recorded)."""
        self.by_ref[state.ref] = state

    def track(self, state: InstanceState, key: Any = None) -> None:
        """Start tracking (or track again) an object; ``key``: its key, when the
        caller has it at hand (else read from the snapshot)."""
        obj_id = id(state.obj)
        replaced = self.by_obj.get(obj_id)
        if replaced is not None and replaced is not state and self.lookups:
            self.unlook(replaced)
        self.by_obj[obj_id] = state
        # watch it: note its assignments, or compare it at every flush where they
        # cannot tell all its changes (a JSON column, another map watching it)
        sink = self.assigned
        table = state.table
        if WATCHED.setdefault(obj_id, sink) is not sink or table.mutable_indexes:
            self.compared[obj_id] = state
        else:
            if obj_id in self.compared:  # an earlier state of the object
                del self.compared[obj_id]
            if table.child_relations and holds_unwatched_children(state.obj, table.child_relations):
                # a list no change to which is noted: the next flush looks at the
                # object, and makes the list a ChildList of its own
                sink.setdefault(obj_id, None)
        if key is None:
            key = state.key
        if key is not None:
            self._by_key.setdefault(state.table, {})[key] = state
        if self.lookups:
            self.reindex(state)

    def load(
        self,
        table: TableInfo,
        rows: Sequence[Sequence[Any]],
        refs: Iterator[int],
        tracked: Callable[[Sequence[Any]], Any],
    ) -> list[Any]:
        """The objects for fetched rows of ``table``, in order: a row whose key is
        tracked goes to ``tracked`` (its object, or ``None`` to leave it out); any
        other row becomes a new object, tracked as persistent with the next ref
        of ``refs``.

        The same as :meth:`track` per new row, with the lookups bound once: a
        read of many rows is mostly this.
        """
        by_key = self._by_key.setdefault(table, {})
        keys = list(map(operator.itemgetter(table.key_index), rows))
        if table.mutable_indexes or self.lookups.get(table) or not _all_new(keys, by_key):
            return self._load_one_by_one(table, rows, refs, tracked, by_key)
        # every row is new, none needs a copy of its values, no lookup files
        # them: make and track them a column at a time (the loops run in C)
        objects = list(map(table.from_row, rows))
        ids = list(map(id, objects))
        # a tuple row is its own snapshot (tuple() of a tuple is the tuple itself)
        snapshots = cast("Sequence[tuple[Any, ...]]", rows) if type(rows[0]) is tuple else list(map(tuple, rows))
        states = list(
            map(
                InstanceState,
                objects,
                itertools.islice(refs, len(objects)),
                itertools.repeat(table),
                snapshots,
                itertools.repeat(Status.PERSISTENT),
            )
        )
        self.by_obj.update(zip(ids, states))
        # a new object's id is in no sink (see WATCHED): watch them all here
        WATCHED.update(zip(ids, itertools.repeat(self.assigned)))
        by_key.update(zip(keys, states))
        return objects

    def _load_one_by_one(
        self,
        table: TableInfo,
        rows: Iterable[Sequence[Any]],
        refs: Iterator[int],
        tracked: Callable[[Sequence[Any]], Any],
        by_key: dict[Any, InstanceState],
    ) -> list[Any]:
        by_obj = self.by_obj
        from_row = table.from_row
        key_index = table.key_index
        persistent = Status.PERSISTENT
        watch = WATCHED.setdefault
        sink = self.assigned
        compared = self.compared
        mutable = bool(table.mutable_indexes)
        looked_up: list[InstanceState] | None = [] if self.lookups.get(table) else None
        objects: list[Any] = []
        for row in rows:
            key = row[key_index]
            if key in by_key:
                obj = tracked(row)
                if obj is not None:
                    objects.append(obj)
                continue
            obj = from_row(row)
            snapshot = table.detached(row) if mutable else tuple(row)
            state = InstanceState(obj, next(refs), table, snapshot, persistent)
            obj_id = id(obj)
            by_obj[obj_id] = state
            if watch(obj_id, sink) is not sink or mutable:
                compared[obj_id] = state
            if key is not None:
                by_key[key] = state
            if looked_up is not None:
                looked_up.append(state)
            objects.append(obj)
        if looked_up:
            for lookup in self.lookups[table].values():
                lookup.file_new(looked_up)
        return objects

    def index_key(self, state: InstanceState) -> None:
        """Register the state under its (possibly new) key."""
        key = state.key
        if key is not None:
            self._by_key.setdefault(state.table, {})[key] = state

    def settle_keys(self, generated: Mapping[int, Any]) -> None:
        """Write keys storage generated (ref -> key) into the objects and
        snapshots of the states with those refs, and index them by key."""
        by_ref = self.by_ref
        table: TableInfo | None = None
        for ref, key in generated.items():
            state = by_ref.get(ref)
            if state is None:
                continue
            if state.table is not table:  # the keys of one batch come together: look its table up once
                table = state.table
                index = table.key_index
                name = table.column_names[index]
                rows = self._by_key.setdefault(table, {})
            set_attribute(state.obj, name, key)
            snapshot = list(state.snapshot)
            snapshot[index] = key
            state.snapshot = tuple(snapshot)
            if key is not None:
                rows[key] = state
            if self.lookups:
                self.reindex(state)

    def unindex_key(self, state: InstanceState, key: Any) -> None:
        """Forget the state under ``key``."""
        rows = self._by_key.get(state.table)
        if rows is not None and rows.get(key) is state:
            del rows[key]

    def unindex_states(self, states: Iterable[InstanceState]) -> None:
        """:meth:`unindex_key` of each state under its snapshot's key (the
        states of a flush's deletes, which come table by table)."""
        table: TableInfo | None = None
        for state in states:
            if state.table is not table:
                table = state.table
                index = table.key_index
                rows = self._by_key.get(table, {})
            key = state.snapshot[index]
            if rows.get(key) is state:
                del rows[key]

    def untrack(self, state: InstanceState) -> None:
        """Stop tracking an object (its ref stays known for undo)."""
        by_obj = self.by_obj
        obj_id = id(state.obj)
        if by_obj.get(obj_id) is state:
            del by_obj[obj_id]
            if WATCHED.get(obj_id) is self.assigned:
                del WATCHED[obj_id]
            if self.compared:
                self.compared.pop(obj_id, None)
            if self.lookups:
                self.unlook(state)
        self.unindex_key(state, state.snapshot[state.table.key_index])

    def detach(self, state: InstanceState) -> None:
        """Stop tracking an object for good (expunged, its row gone, or its
        delete committed): :meth:`was_detached` and :meth:`was_deleted` tell it
        apart from an object never tracked."""
        deleted = state.status is Status.GONE
        self.untrack(state)
        state.status = Status.DETACHED
        obj = state.obj
        if deleted:
            self._detached.discard(obj)
            self._deleted.add(obj)
        else:
            self._deleted.discard(obj)
            self._detached.add(obj)

    def was_detached(self, obj: Any) -> bool:
        """Whether ``obj`` is an object this map let go of while its row exists
        (and not tracked since): relations link its row, never add it back as a
        new row."""
        return obj in self._detached

    def forget_let_go(self, obj: Any) -> None:
        """No longer remember ``obj`` as let go of: it was tracked again, and
        the insert that tracked it was undone (adding it again inserts it)."""
        self._detached.discard(obj)
        self._deleted.discard(obj)

    def is_new(self, obj: Any) -> bool:
        """Whether ``obj`` is a model object this map neither tracks nor let go
        of: one a flush would add (a child in a list, say)."""
        return id(obj) not in self.by_obj and is_model(obj) and not self.was_let_go(obj)

    def was_let_go(self, obj: Any) -> bool:
        """:meth:`was_detached` or :meth:`was_deleted`."""
        if not self._detached.refs and not self._deleted.refs:  # most sessions never let go of one
            return False
        return obj in self._detached or obj in self._deleted

    def was_deleted(self, obj: Any) -> bool:
        """Whether ``obj`` is an object this map let go of once its row was
        deleted (and not tracked since): relations must not point at it."""
        return obj in self._deleted

    def states_to_compare(self) -> list[InstanceState]:
        """The tracked states that may differ from their snapshots: the ones
        assigned to since :meth:`compared_all` and the ones always compared,
        in the order they were tracked (by ref)."""
        by_obj = self.by_obj
        compared = self.compared
        found = [state for obj_id, state in compared.items() if by_obj.get(obj_id) is state]
        if len(found) != len(compared):  # objects no longer tracked under these states
            compared = self.compared = {id(state.obj): state for state in found}
        assigned = self.assigned
        if assigned:
            tracked = by_obj.get
            found += [state for obj_id in assigned if (state := tracked(obj_id)) is not None and obj_id not in compared]
        if len(found) > 1:
            found.sort(key=_by_ref)
        return found

    def compared_all(self) -> None:
        """Every state :meth:`states_to_compare` named was compared (and its
        changes recorded): forget the assignments noted so far."""
        self.assigned.clear()

    def states(self) -> Iterator[InstanceState]:
        """Every tracked state (not the ones only kept for undo)."""
        return iter(list(self.by_obj.values()))

    def keyed_states(self, table: TableInfo) -> list[InstanceState]:
        """The states of ``table`` indexed by key: every tracked one that has a
        key (objects let go of are unindexed), and deleted ones until their
        delete is flushed."""
        rows = self._by_key.get(table)
        return list(rows.values()) if rows else []

    def __len__(self) -> int:
        return len(self.by_obj)

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self.by_obj

    def clear(self) -> None:
        """Forget everything."""
        _stop_watching(self.by_obj, self.assigned)
        self.assigned.clear()
        self.compared.clear()
        self.by_ref.clear()
        self.by_obj.clear()
        self._by_key.clear()
        self.lookups.clear()
        self._detached.clear()
        self._deleted.clear()


def _all_new(keys: list[Any], by_key: dict[Any, InstanceState]) -> bool:
    """Whether ``keys`` are all different, none is ``None`` and none is tracked."""
    if not keys:
        return False
    distinct = set(keys)
    return len(distinct) == len(keys) and None not in distinct and by_key.keys().isdisjoint(distinct)


def _stop_watching(by_obj: Mapping[int, InstanceState], sink: Sink) -> None:
    """Take the objects of ``by_obj`` that ``sink`` watches out of WATCHED."""
    watched = WATCHED.get
    for obj_id in by_obj:
        if watched(obj_id) is sink:
            del WATCHED[obj_id]


_by_ref = operator.attrgetter("ref")


__all__ = ["LIVE", "IdentityMap", "InstanceState", "Status"]
