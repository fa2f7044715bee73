"""The session: tracked objects, the journal, transactions and savepoints.

>>> async with AsyncSession(engine) as session:          # doctest: +SKIP
...     alice = User(name="Alice", email="alice@example.com")
...     session.add(alice)
...     session.add(Post(title="Hello", author=alice))
...     print(session.plan().explain())
...     await session.commit()

Every mutating call appends one event to ``session.journal``. ``flush()`` plans
the pending events (:mod:`uow.planner`) and applies the batches in one
transaction; ``rollback()`` and savepoint rollbacks truncate the journal and undo
the removed events on the tracked objects in place, without a query.

This module holds tracking, change detection, the flush and transactions.
:class:`AsyncSession` takes the rest from one mixin per job: reads
(:mod:`uow.reads`), immediate operations (:mod:`uow.immediate`), relations and
foreign keys kept in step (:mod:`uow.linking`), delete cascades
(:mod:`uow.cascade`), undo (:mod:`uow.undo`) and ``merge`` (:mod:`uow.merging`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import gc
import inspect
import itertools
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import anyio
import msgspec

from uow.adapter import Connection
from uow.arithmetic import INT64
from uow.assignments import WATCHED, set_attribute
from uow.batches import (
    Batch,
    BatchResult,
    DeleteBatch,
    FlushPlan,
    InsertBatch,
    UpdateBatch,
    UpsertBatch,
    resolve_pending,
)
from uow.cascade import CascadeMixin
from uow.conditions import Compare, In
from uow.criteria import text_is_storable
from uow.engine import Engine
from uow.errors import (
    CommitHookError,
    ConcurrencyError,
    ConfigurationError,
    DetachedInstanceError,
    IntegrityError,
    ModelDefinitionError,
    NoResultFound,
    OperationalError,
    SessionStateError,
    StorageError,
    ValidationError,
)
from uow.events import (
    AnyEvent,
    Deleted,
    Inserted,
    Restored,
    RowEvent,
    SoftDeleted,
    Updated,
)
from uow.identity import IdentityMap, InstanceState, Status
from uow.immediate import ImmediateMixin
from uow.journal import Journal, JournalView
from uow.linking import LinkingMixin
from uow.merging import MergeMixin
from uow.model import (
    Model,
    TableInfo,
    converted_value,
    detached_value,
    is_model,
    is_nan,
    table_info,
)
from uow.planner import plan_flush
from uow.reads import ReadsMixin
from uow.stale import RelationChecks
from uow.statements import Select
from uow.undo import UndoMixin

M = TypeVar("M", bound=Model)

_current_session: contextvars.ContextVar[weakref.ref[AsyncSession] | None] = contextvars.ContextVar(
    "uow_session", default=None
)
"""The session of ``async with``, held weakly: everything scheduled in the
block keeps its context (asyncpg's statement-cache timers live five minutes),
and a strong reference there would keep a closed session and its journal."""

# Status.X goes through the enum's metaclass (about 0.1 µs); the paths that run
# once per row use these names instead
_PENDING, _PERSISTENT, _DELETED, _GONE = Status.PENDING, Status.PERSISTENT, Status.DELETED, Status.GONE
_LIVE = (_PENDING, _PERSISTENT)
_UNFLUSHED = (_PENDING, _DELETED)


def current_session() -> AsyncSession | None:
    """The session of the running task (set by ``async with session``), or ``None``."""
    held = _current_session.get()
    return None if held is None else held()


def require_current_session() -> AsyncSession:
    """The session of the running task; raises :class:`SessionStateError` when none."""
    session = current_session()
    if session is None:
        raise SessionStateError("no session is active in this task; use 'async with AsyncSession(engine)'")
    return session


_utc_now, _UTC = dt.datetime.now, dt.UTC


def _now() -> dt.datetime:
    return _utc_now(_UTC)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a stretch of flush bookkeeping
    that does no I/O.

    Planning and settling a flush allocate a few short-lived containers per
    row; with the collector on, that many allocations set off collections that
    walk the session's tracked objects and states again and again (about half
    of the planning time at 10k rows). Nothing collectable is lost: the
    collector runs as usual once it is enabled again.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(eq=False)  # found by identity: a stack of savepoints is searched at every release
class _Savepoint:
    name: str
    mark: int
    had_writes: bool
    lists_seen: int
    """How many changed lists of children flushes had seen when it was set."""
    locks_seen: int = 0
    """How many rows locking reads had locked when it was set."""


@dataclass
class FlushOutcome:
    generated: dict[int, Any] = field(default_factory=dict)
    upserted_rows: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    rowcounts: dict[int, int] = field(default_factory=dict)
    updated_rows: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)
    """By seq: the rows a bulk update with computed values updated."""


class AsyncSession(LinkingMixin, CascadeMixin, UndoMixin, ImmediateMixin, MergeMixin, ReadsMixin):
    """A unit of work over one engine, used by one task at a time.

    ``auto_commit``: every immediate operation (``insert``, ``update``,
    ``remove``, ``upsert``, ``bulk_*``, ``soft_delete``...) commits at once,
    except inside a ``begin()`` block, a savepoint or a before-commit hook,
    where it commits with the transaction; when that commit is refused, the
    transaction is rolled back.
    ``atomic``: ``async with`` commits on a clean exit. ``auto_rollback``: when
    ``async with`` is left without committing, tracked objects are restored in
    place from the journal (the database transaction is rolled back either way).
    ``autoflush``: reads flush pending events first. ``isolation``: the
    transaction isolation level, where the backend has levels.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        auto_commit: bool = False,
        auto_rollback: bool = True,
        autoflush: bool = True,
        atomic: bool = False,
        isolation: str | None = None,
    ):
        self.engine = engine
        self.auto_commit = auto_commit
        self.auto_rollback = auto_rollback
        self.autoflush = autoflush
        self.atomic = atomic
        self.isolation = _isolation_level(isolation)
        self._journal = Journal()
        self._identity = IdentityMap()
        self._tables: dict[str, TableInfo] = {}
        self._tables_by_type: dict[type, TableInfo] = {}
        self._relation_checks = RelationChecks(self._tables)
        self._connection: Connection | None = None
        self._in_tx = False
        self._transactions = 0
        """How many transactions this session has begun (a stream tells its own from a later one)."""
        self._tx_start = 0
        self._tx_writes = False
        self._savepoints: list[_Savepoint] = []
        self._savepoint_counter = 0
        self._in_begin_block = False
        self._streams_open = 0
        """Streams reading in the open transaction: a failed flush must not end it."""
        self._raw_sql_in = -1
        """The number of the transaction execute_raw last ran in (see _transactions)."""
        self._locked: list[tuple[TableInfo, Any]] = []
        """(table, key) of the rows locking reads locked in the open transaction."""
        self._updating: dict[int, Mapping[str, Any]] = {}
        """id(object) -> the checked values of the update() recording what was
        pending before it (see LinkingMixin._moved_by_key)."""
        self._unreleased: str | None = None
        """The last flush's savepoint while it is not released: the next savepoint
        releases it in the same round trip, and the transaction's end with it."""
        self._refs = itertools.count(1)
        """The session-local refs of tracked objects, in the order they are made."""
        self._new_ref: Callable[[], int] = self._refs.__next__
        """The ref for the next tracked object (a bound C method: called per object added)."""
        self._adding: dict[int, int] = {}
        self._changed_lists: list[tuple[int, InstanceState, str]] = []
        """(journal mark, owner's state, relation name) of each list of
        children a flush saw changed in this transaction, in mark order."""
        self._unlinked_parents: list[tuple[int, InstanceState, str, Any]] = []
        """(journal mark, child's state, relation name, parent) of each
        many-to-one relation a ``set null`` emptied in this transaction: an
        undo that takes the unlink back gives the relation its parent back."""
        self._orphans_deleted = False
        """Whether comparing deleted an object taken out of a list of children
        (its delete's cascades are applied after)."""
        self._gone: list[InstanceState] = []
        """States whose delete this transaction flushed."""
        self._committed_gone: list[InstanceState] = []
        """States whose delete is committed: the next flush lets them go."""
        self._untracked_writes: list[tuple[int, int]] = []
        """(journal mark, ref drawn then) of each write in this transaction that
        tracked objects do not follow (bulk updates and deletes, raw SQL):
        objects read after one may hold values a rollback past it undoes."""
        self._busy: str | None = None
        self._hook_task: int | None = None
        self._hooks_savepoint: _Savepoint | None = None
        """The savepoint the before-commit hooks run in, while they run."""
        """The task running before-commit hooks, while they run (they may not end the transaction)."""
        self._cascaded_upto = 0
        self._context_tokens: list[contextvars.Token[weakref.ref[AsyncSession] | None]] = []
        self._entered_by: int | None = None
        """The task inside ``async with`` this session, while one is."""
        for model in engine.models.values():
            self._table(model)

    def __del__(self) -> None:
        if getattr(self, "_connection", None) is not None:
            # the connection (and its transaction) cannot be given back from here
            warnings.warn(
                "an AsyncSession was dropped while it held a database connection, which its pool "
                "never gets back; close sessions (async with AsyncSession(...), or await session.close())",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    # --- context ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        task = anyio.get_current_task().id
        if self._context_tokens and self._entered_by != task:
            raise SessionStateError(
                "this session is open in another task (async with); a session serves one task at a time "
                "(give each task its own session)"
            )
        self._entered_by = task
        self._context_tokens.append(_current_session.set(weakref.ref(self)))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None and (self.atomic or self.auto_commit) and self._has_work():
                await self.commit()
        finally:
            try:
                await self.close(restore=self.auto_rollback)
            finally:
                _current_session.reset(self._context_tokens.pop())
                if not self._context_tokens:
                    self._entered_by = None

    @contextmanager
    def _exclusive(self, operation: str) -> Any:
        busy = self._busy
        if busy is not None and not self._in_hook_task():
            raise self._busy_error()
        self._busy = operation
        try:
            yield
        finally:
            self._busy = busy

    def _check_idle(self) -> None:
        if self._busy is not None and not self._in_hook_task():
            raise self._busy_error()

    def _busy_error(self) -> SessionStateError:
        return SessionStateError(
            f"session is busy with {self._busy}, in another task or in a call made while it runs (an "
            "after-commit hook, a worker thread); a session serves one task at a time (give each task "
            "its own session)"
        )

    def _in_hook_task(self) -> bool:
        """Whether this is the task running before-commit hooks, which use the
        session while its commit is under way."""
        if self._hook_task is None:
            return False
        try:
            return self._hook_task == anyio.get_current_task().id
        except RuntimeError:  # a worker thread, which runs no task: not the hooks' task
            return False

    # --- public state -----------------------------------------------------------

    @property
    def journal(self) -> JournalView:
        """The read-only, live journal of every event this session recorded."""
        return self._journal.view()

    def in_transaction(self) -> bool:
        """Whether a database transaction is open."""
        return self._in_tx

    def is_modified(self, obj: Model) -> bool:
        """Whether ``obj`` has changes not yet flushed (recorded or assigned)."""
        state = self._state(obj)
        if state.status in (Status.PENDING, Status.DELETED):
            return True
        current = state.current()
        return (
            current != state.snapshot
            or not state.table.typed_as_stored(current)  # True for an int 1: equal, yet refused or converted
            or state.ref in self._journal.pending_refs()
            or self._relations_changed(state)
        )

    def __contains__(self, obj: object) -> bool:
        state = self._identity.state_of(obj)
        return state is not None and state.status in _LIVE

    def __iter__(self) -> Any:
        return iter([s.obj for s in self._identity.states() if s.status in _LIVE])

    def __len__(self) -> int:
        return sum(1 for s in self._identity.states() if s.status in _LIVE)

    def plan(self) -> FlushPlan:
        """The plan ``flush()`` would apply now; nothing is written.

        Like the first step of a flush, this records pending assignments,
        relation changes and cascades in the journal, so the plan is exactly
        what the next flush applies (a later rollback undoes them as usual).
        """
        self._check_idle()
        with _collector_paused():
            self._collect_changes()
            return plan_flush(self._journal.pending, self._tables)

    # --- bookkeeping ------------------------------------------------------------

    def _table(self, model: type[Any]) -> TableInfo:
        info = table_info(model)
        known = self._tables.get(info.name)
        if known is None:
            self._tables[info.name] = info
            self._relation_checks = RelationChecks(self._tables)  # a new table may refer to known ones
            for fk in info.foreign_keys:
                if fk.target_table not in self._tables and fk.target_table != info.name:
                    from uow.model import resolve_model

                    self._table(resolve_model(fk.target_table))
        elif known is not info:
            raise ConfigurationError(
                f"table {info.name!r} is mapped by both {known.model.__qualname__} and "
                f"{info.model.__qualname__}; one session can use only one of them"
            )
        return info

    def _table_of(self, obj: Any) -> TableInfo:
        table = self._tables_by_type.get(type(obj))
        if table is None:
            if not is_model(obj):
                if isinstance(obj, (list, tuple, set)):
                    hint = ": a call takes one object (add_all() takes several)"
                elif isinstance(obj, type):
                    hint = ": pass an object of the model, not the class"
                else:
                    hint = ""
                raise ModelDefinitionError(f"{obj!r} is not an instance of a model with a table{hint}")
            table = self._tables_by_type[type(obj)] = self._table(type(obj))
        return table

    def _state(self, obj: Any) -> InstanceState:
        state = self._identity.state_of(obj)
        if state is None and self._identity.was_deleted(obj):
            raise DetachedInstanceError(f"{type(obj).__name__} {obj!r} is deleted in this session")
        if state is None or state.status is Status.DETACHED:
            raise DetachedInstanceError(
                f"{type(obj).__name__} {obj!r} is not tracked by this session; add() it, or get() it first"
            )
        return state

    def _live_state(self, obj: Any) -> InstanceState:
        state = self._state(obj)
        if state.status not in _LIVE:
            raise SessionStateError(f"{type(obj).__name__} {obj!r} is deleted in this session")
        return state

    def _has_work(self) -> bool:
        return self._in_tx or self._journal.has_pending() or self._has_assignments()

    def _has_assignments(self) -> bool:
        """Whether a tracked object holds assignments not recorded yet (columns,
        relations or lists of children)."""
        return any(
            state.status in _LIVE and (state.current() != state.snapshot or self._relations_changed(state))
            for state in self._identity.states_to_compare()
        )

    def _record(self, event: AnyEvent, *about: InstanceState) -> None:
        """Append ``event``; the states it is about become findable by ref
        until the transaction ends (undo and the flush look them up so)."""
        for state in about:
            self._identity.remember(state)
        self._journal.append(event)

    # --- unit of work: add / delete ----------------------------------------------

    def add(self, obj: Model) -> None:
        """Track a new object; its insert is recorded now and flushed later.

        Parents assigned through relations are added too. Adding an object that
        is already tracked does nothing.
        """
        if self._busy is not None:
            self._check_idle()
        mark = self._journal.size()
        try:
            self._add(obj)
        except BaseException:
            self._undo_recorded(mark)  # the parents it added on the way, if any
            raise

    def add_all(self, objects: Iterable[Any]) -> None:
        """:meth:`add` each object; when one is refused, none is added."""
        self._check_idle()
        with self._undone_on_error(self._journal.mark):
            for obj in objects:
                self._add(obj)

    def _add(self, obj: Any, links: dict[str, int] | None = None, at: dt.datetime | None = None) -> InstanceState:
        """Track ``obj`` as new and record its insert, with the parents and
        children it brings along; their events share the time ``at`` (now by default)."""
        # runs once per new object: the lookups of _table_of, track() and
        # _record are written out here to spare their calls
        table = self._tables_by_type.get(type(obj)) or self._table_of(obj)
        identity = self._identity
        obj_id = id(obj)
        state = identity.by_obj.get(obj_id)
        if state is not None and state.status in _LIVE:
            return state
        watcher = WATCHED.get(obj_id)
        if watcher is not None and watcher is not identity.assigned:
            self._refuse_tracked_elsewhere(obj)
        if state is not None and identity.lookups:  # a state of the object no longer live
            identity.unlook(state)
        if at is None:
            at = _utc_now(_UTC)
        ref = self._new_ref()
        waiting = None
        if table.parent_relations:
            self._adding[obj_id] = ref  # parents that point back at obj link to this ref
            try:
                waiting = self._link_parents(obj, table, at)
            finally:
                del self._adding[obj_id]
        if links:
            waiting = {**waiting, **links} if waiting else dict(links)
        values = table.values_of(obj)
        if not table.typed_as_stored(values):
            values = self._convert_row(table, obj, values)
        for index in table.required_indexes:
            # a foreign key waiting for a new parent's key is filled at flush
            if values[index] is None and not (waiting and table.column_names[index] in waiting):
                self._refuse_null(table, index)
        if table.mutable_indexes:
            values = table.detached(values)  # the snapshot and the event keep their own copies
        key = values[table.key_index]
        if key is not None:
            other = identity.get(table, key)
            if other is not None and other.obj is not obj and other.status in _LIVE:
                raise SessionStateError(
                    f"another {type(obj).__name__} with {table.key_column}={key!r} is already tracked; "
                    "use merge() to copy this one onto it"
                )
        new_state = InstanceState(obj, ref, table, values, _PENDING, False, waiting)
        identity.by_obj[obj_id] = new_state
        if watcher is None:  # what identity.track() does to watch it, written out
            WATCHED[obj_id] = identity.assigned
        if table.mutable_indexes:
            identity.compared[obj_id] = new_state
        elif obj_id in identity.compared:  # an earlier state of the object (new_state is new)
            del identity.compared[obj_id]
        if key is not None:
            identity.index_key(new_state)
        identity.by_ref[ref] = new_state
        if identity.lookups:
            identity.reindex(new_state)
        journal = self._journal
        # the state owns `waiting` (settling keys after a flush edits it): the event gets a copy
        journal.append(
            Inserted(
                seq=journal.next_seq(),
                at=at,
                table=table.name,
                ref=ref,
                key=key,
                values=table.row_dict(values),
                parent_refs=dict(waiting) if waiting else {},
            )
        )
        if table.child_relations:
            self._add_children(obj, table, new_state, at, adding=True)
        return new_state

    def _refuse_tracked_elsewhere(self, obj: Any) -> None:
        """Refuse an object another session tracks: an object is tracked by one
        session at a time (its assignments are noted for that one)."""
        watcher = WATCHED.get(id(obj))
        if watcher is not None and watcher is not self._identity.assigned:
            raise SessionStateError(
                f"{type(obj).__name__} {obj!r} is tracked by another session; expunge it there, "
                "or merge() a copy into this one"
            )

    def _validate_new_row(self, table: TableInfo, values: tuple[Any, ...]) -> None:
        for index in table.required_indexes:
            if values[index] is None:
                self._refuse_null(table, index)

    def _refuse_null(self, table: TableInfo, index: int) -> None:
        column = table.columns[index]
        raise ValidationError(f"{table.model.__name__}.{column.name} is None but the column is NOT NULL; set a value")

    def delete(self, obj: Model) -> None:
        """Mark a tracked object deleted; the delete is flushed later.

        Tracked children whose foreign key cascades are deleted with it at flush,
        and those with ``on_delete="set null"`` lose the reference.
        """
        if self._busy is not None:
            self._check_idle()
        state = self._identity.by_obj.get(id(obj))
        if state is None or state.status not in _LIVE:
            state = self._live_state(obj)  # raises the error that says why
        self._delete(state)

    def _delete(self, state: InstanceState) -> None:
        # runs once per deleted object: assignments made before the delete are
        # recorded first, as at a flush, then the delete, both at one moment
        at = _utc_now(_UTC)
        table = state.table
        obj_id = id(state.obj)
        identity = self._identity
        if obj_id in identity.assigned or obj_id in identity.compared:  # else it is as its snapshot says
            if table.relations and table.holds_relations(state.obj):
                self._sync_relations(state, deleting=True)
            now = table.values_of(state.obj)
            if now != state.snapshot:
                self._record_assigned(state, now, at)
            elif not table.typed_as_stored(now):
                self._convert_row(table, state.obj, now)  # equal, but of a type the column refuses
        state.status = _DELETED
        snapshot = state.snapshot
        identity.by_ref[state.ref] = state
        journal = self._journal
        journal.append(
            Deleted(
                seq=journal.next_seq(),
                at=at,
                table=table.name,
                ref=state.ref,
                key=snapshot[table.key_index],
                old=table.row_dict(snapshot),
            )
        )

    # --- change detection -------------------------------------------------------

    def _record_changes(
        self, state: InstanceState, event_type: type[Updated | SoftDeleted | Restored] = Updated
    ) -> None:
        """Turn assignments on ``state.obj`` since its snapshot into an event."""
        if state.table.relations:
            self._sync_relations(state)
        old, new = state.changes()
        if not new:
            return
        self._record_update(state, old, new, event_type)

    def _record_update(
        self,
        state: InstanceState,
        old: dict[str, Any],
        new: dict[str, Any],
        event_type: type[Updated | SoftDeleted | Restored] = Updated,
        parent_refs: dict[str, int] | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        table = state.table
        mutable = table.mutable_columns
        if mutable and not mutable.isdisjoint(new):
            new = {c: detached_value(v) if c in mutable else v for c, v in new.items()}
        version = table.version_column
        if version is not None and state.status is _PERSISTENT:
            if version in new:
                # an assigned version is the one the change was made from (a merged
                # copy, a form): another one than the row's means the row moved on
                raise ConcurrencyError(
                    f"{table.model.__name__} {table.key_column}={state.key!r} is at {version} {old[version]!r}, "
                    f"but the change was made from {version} {new[version]!r}: another transaction changed "
                    "it since; load it again",
                    table=table.name,
                    keys=(state.key,),
                )
            current = state.snapshot[table.column_index[version]]
            old[version] = current
            new[version] = (current or 0) + 1
            set_attribute(state.obj, version, new[version])
        new_key = table.key_column in new
        if new_key:
            if state.status is _PERSISTENT:
                raise ValidationError(
                    f"{table.model.__name__}.{table.key_column} of a stored row cannot change "
                    f"({old[table.key_column]!r} -> {new[table.key_column]!r}); delete and add instead"
                )
            other = self._identity.get(table, new[table.key_column])
            if other is not None and other is not state and other.status in _LIVE:
                raise SessionStateError(
                    f"another {table.model.__name__} with {table.key_column}={new[table.key_column]!r} is "
                    "already tracked; use merge() to copy this one onto it"
                )
        if state.parent_refs:
            for column in new:
                if not parent_refs or column not in parent_refs:
                    state.parent_refs.pop(column, None)
        if parent_refs:
            state.parent_refs = {**(state.parent_refs or {}), **parent_refs}
        unchanged = table.unchanged_partners(state.snapshot, new) if table.shares_unique else None
        # only the recorded columns join the snapshot: other assignments still wait for their own event
        snapshot = list(state.snapshot)
        column_index = table.column_index
        for column, value in new.items():
            snapshot[column_index[column]] = value
        identity = self._identity
        old_key = state.key
        if new_key:  # a new object given its key after add: found by it from now on
            identity.unindex_key(state, old_key)
            state.snapshot = tuple(snapshot)
            identity.index_key(state)
        else:
            state.snapshot = tuple(snapshot)
        if identity.lookups:
            identity.reindex(state)
        seq = self._journal.next_seq()
        if at is None:
            at = _now()
        if event_type is Updated and parent_refs:
            event: Updated | SoftDeleted | Restored = Updated(
                seq=seq,
                at=at,
                table=table.name,
                ref=state.ref,
                key=state.key,
                old=old,
                new=new,
                parent_refs=dict(parent_refs),
                unchanged=unchanged,
            )
        elif unchanged is not None:
            event = event_type(
                seq=seq, at=at, table=table.name, ref=state.ref, key=state.key, old=old, new=new, unchanged=unchanged
            )
        else:  # an Updated event's parent_refs defaults to a new empty dict
            event = event_type(seq=seq, at=at, table=table.name, ref=state.ref, key=state.key, old=old, new=new)
        self._record(event, state)
        if new_key and old_key is not None:
            self._children_follow_key(state, old_key)

    def _collect_changes(self, *, scan: bool = True) -> None:
        """Record cascades and every assignment since the last flush; with
        ``scan`` false only the cascades, for a caller that knows every
        assignment is recorded already (an immediate operation, which records
        them first and then only its own changes, all as events)."""
        if self._committed_gone:
            self._let_go_of_committed_deletes()
        self._cascade_deletes()
        if not scan:
            return
        at = _utc_now(_UTC)  # the assignments found here are all recorded at this moment
        identity = self._identity
        for state in identity.states_to_compare():
            # most states are unchanged: for those the work is one tuple comparison
            # (done in C), plus the relations of tables that have some
            if state.status not in _LIVE:
                if state.table.child_relations:
                    self._refuse_new_children(state)
                continue
            # what _record_found does, written out: this loop runs once per assigned object
            # (10k in a flush of 10k updates), so it spares a call each
            table = state.table
            if table.relations and table.holds_relations(state.obj):
                self._sync_relations(state)
            now = table.values_of(state.obj)
            if now != state.snapshot:
                if table.parent_relations:
                    self._follow_keys_assigned_over_none(state)
                self._record_assigned(state, now, at)
            elif not table.typed_as_stored(now):
                # equal to the snapshot (True == 1) but of a type the column refuses or converts
                self._convert_row(table, state.obj, now)
        if self._orphans_deleted:  # their delete actions apply to their own tracked children
            self._orphans_deleted = False
            self._cascade_deletes()
        # only now: when recording one raises, every assigned object is compared again next time
        identity.compared_all()

    def _record_found(self, state: InstanceState, at: dt.datetime) -> None:
        """Record the assignments on one live object as a flush finds them."""
        table = state.table
        if table.relations and table.holds_relations(state.obj):
            self._sync_relations(state)
        now = table.values_of(state.obj)
        if now != state.snapshot:
            if table.parent_relations:
                self._follow_keys_assigned_over_none(state)
            self._record_assigned(state, now, at)
        elif not table.typed_as_stored(now):
            self._convert_row(table, state.obj, now)  # equal, but of a type the column refuses

    def _let_go_of_committed_deletes(self) -> None:
        """Stop tracking the objects whose delete is committed: they are only
        remembered (weakly), so relations never point at them. Done at the next
        flush rather than at commit, as most sessions end after their commit."""
        detach = self._identity.detach
        for state in self._committed_gone:
            if state.status is _GONE:
                detach(state)
        self._committed_gone.clear()

    def _record_assigned(self, state: InstanceState, now: tuple[Any, ...], at: dt.datetime) -> None:
        """Record the columns assigned on ``state.obj`` since its snapshot, as
        one ``Updated`` event at ``at``; ``now``: the object's values."""
        table = state.table
        if not table.typed_as_stored(now):
            now = self._convert_row(table, state.obj, now)
        if table.version_column is not None or state.parent_refs:
            self._record_diff(state, now, at)
            return
        # the common row, without a version to bump or a key to wait for: the
        # columns that differ are exactly what the event records, so the values
        # read become the snapshot as they are
        old, new, kept = table.diff(state.snapshot, now)
        if not new:
            return
        # an equal but distinct value is not recorded, so the snapshot must keep the
        # one it had; a changed key needs the checks of _record_update, a JSON value
        # the copy _record_update makes (the object's own may change in place), and a
        # column of a unique constraint over several the values of the others
        if kept or table.primary_key.name in new or table.mutable_indexes or table.shares_unique:
            self._record_update(state, old, new, at=at)
            return
        state.snapshot = now
        identity = self._identity
        if identity.lookups:
            identity.reindex(state)
        journal = self._journal
        identity.by_ref[state.ref] = state
        journal.append(
            Updated(
                seq=journal.next_seq(),
                at=at,
                table=table.name,
                ref=state.ref,
                key=now[table.key_index],
                old=old,
                new=new,
            )
        )

    def _record_diff(self, state: InstanceState, now: tuple[Any, ...], at: dt.datetime) -> None:
        old, new = state.changes(now)
        if new:
            self._record_update(state, old, new, at=at)

    def _convert_row(self, table: TableInfo, obj: Any, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """``values`` (``obj``'s) with each value whose type its column does
        not store as it is converted (an ``int`` for a ``float`` column, a
        string for an enum), also on ``obj``; :class:`ValidationError` for a
        value that does not fit. ``None`` is left to the NOT NULL checks."""
        converted = list(values)
        for index, value in enumerate(values):
            if value is None or (
                type(value) in table.value_types[index]
                and not is_nan(value)
                and not (type(value) is str and "\x00" in value)
            ):
                continue
            column = table.columns[index]
            fitted = converted_value(table, column, value)
            if fitted is not value:
                set_attribute(obj, column.name, fitted)
                converted[index] = fitted
        return tuple(converted)

    # --- flush --------------------------------------------------------------------

    async def flush(self) -> None:
        """Apply every pending change to the database, in one go.

        Atomic: if any batch fails, none of this flush stays applied, its events
        stay pending, and the error names the event, model, key and constraint.
        """
        with self._exclusive("flush"):
            await self._flush()

    async def _connection_for_work(self) -> Connection:
        if self._connection is None:
            self._connection = await self.engine.acquire()
        if not self._in_tx:
            try:
                await self._connection.begin(self.isolation)
            except BaseException:
                await self._drop_connection(discard=True)
                raise
            self._in_tx = True
            self._transactions += 1
            self._tx_start = self._journal.flushed_mark
            self._tx_writes = False
            self._locked.clear()
        return self._connection

    async def _flush(self, *, scan: bool = True, done_by_database: Collection[int] = ()) -> FlushOutcome:
        """Record the assignments (unless not ``scan``) and apply every pending
        event, but those whose ``seq`` is in ``done_by_database``: changes a
        foreign key's action makes in the database by itself (they are
        journaled, and settled here, all the same)."""
        with _collector_paused():
            self._collect_changes(scan=scan)
            if not self._journal.has_pending():
                return FlushOutcome()
            pending = list(self._journal.pending)
            written = [e for e in pending if e.seq not in done_by_database] if done_by_database else pending
            plan = plan_flush(written, self._tables)
        connection = await self._connection_for_work()
        savepoint = None
        if (
            self._tx_writes
            or self._savepoints
            or self._streams_open
            or self._raw_sql_in == self._transactions
            or self._locked
            or self.isolation in _SNAPSHOT_LEVELS
        ):
            # a failed flush then undoes only itself, and the transaction goes on: with what it
            # wrote (raw SQL may have), an open stream's cursor, its locks, or the snapshot its reads saw
            self._savepoint_counter += 1
            savepoint = f"uow_flush_{self._savepoint_counter}"
            try:
                await self._set_savepoint(connection, savepoint)
            except OperationalError as exc:  # the connection is lost, and the transaction with it
                with anyio.CancelScope(shield=True):
                    await self._undo_failed_flush(connection, None, exc)
                raise
        try:
            outcome = await self._apply(connection, plan)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._undo_failed_flush(connection, savepoint, exc)
                if isinstance(exc, IntegrityError) and exc.event is None:
                    await self._explain_integrity_error(exc, plan, pending)
            raise
        if savepoint is not None:
            # released by the next savepoint, in the same round trip, or by the
            # transaction's end: a flush per row costs one round trip less
            self._unreleased = savepoint
        with _collector_paused():
            self._after_flush(outcome, pending)
        return outcome

    async def _set_savepoint(self, connection: Connection, name: str) -> None:
        """Set a savepoint, releasing the last flush's on the way."""
        released, self._unreleased = self._unreleased, None
        if released is None:
            await connection.savepoint(name)
        else:
            await connection.replace_savepoint(released, name)

    async def _undo_failed_flush(self, connection: Connection, savepoint: str | None, exc: BaseException) -> None:
        lost = isinstance(exc, OperationalError)
        try:
            if savepoint is not None and not lost:
                await connection.rollback_to_savepoint(savepoint)
                await connection.release_savepoint(savepoint)
                return
            await connection.rollback()
            self._in_tx = False
            self._unreleased = None
            if lost:
                await self._drop_connection(discard=True)
        except Exception:
            await self._drop_connection(discard=True)
        # the transaction, with its savepoints, locks and what earlier flushes wrote, is gone
        self._savepoints.clear()
        self._locked.clear()
        if self._tx_writes:  # say so in the objects too
            self._undo_to(self._tx_start, lists_seen=0)
            self._tx_writes = False

    async def _drop_connection(self, *, discard: bool = False) -> None:
        connection, self._connection = self._connection, None
        self._in_tx = False
        self._unreleased = None
        if connection is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.engine.adapter.release(connection, discard=discard)
                except Exception:
                    if not discard:
                        await self.engine.adapter.release(connection, discard=True)

    def _key_of_ref(self, generated: Mapping[int, Any]) -> Callable[[int], Any]:
        def key_of_ref(ref: int) -> Any:
            if ref in generated:
                return generated[ref]
            if ref in self._journal.generated_keys:
                return self._journal.generated_keys[ref]
            state = self._identity.by_ref.get(ref)
            if state is not None and state.key is not None:
                return state.key
            raise SessionStateError(f"row ref {ref} has no key yet: its parent row was never inserted")

        return key_of_ref

    async def _apply(self, connection: Connection, plan: FlushPlan) -> FlushOutcome:
        outcome = FlushOutcome()
        key_of_ref = self._key_of_ref(outcome.generated)
        for index, batch in enumerate(plan.batches):
            resolved = resolve_pending(batch, key_of_ref)
            try:
                result = await connection.apply(resolved)
            except IntegrityError as exc:
                exc.batch_index = index
                raise
            self._check_result(resolved, result)
            if isinstance(batch, InsertBatch) and batch.returning_key:
                assert result.keys is not None
                outcome.generated.update(zip(batch.refs, result.keys))
            elif isinstance(batch, UpsertBatch) and result.rows is not None:
                outcome.upserted_rows.update(zip(batch.refs, result.rows))
            elif batch.kind in ("bulk_update", "bulk_delete"):
                outcome.rowcounts[batch.seqs[0]] = result.rowcount
                if result.rows is not None:
                    outcome.updated_rows[batch.seqs[0]] = result.rows
        return outcome

    def _check_result(self, batch: Batch, result: BatchResult) -> None:
        if (
            isinstance(batch, InsertBatch)
            and batch.returning_key
            and (result.keys is None or len(result.keys) != len(batch.rows))
        ):
            raise StorageError(f"the adapter returned no keys for the insert into {batch.table.name}")
        if isinstance(batch, (UpdateBatch, DeleteBatch)):
            expected = len(batch.rows) if isinstance(batch, UpdateBatch) else len(batch.keys)
            if result.rowcount != expected:
                if isinstance(batch, UpdateBatch):
                    keys = [row[len(batch.columns)] for row in batch.rows]
                    checked = batch.check_version
                else:
                    keys = list(batch.keys)
                    checked = batch.expected_versions is not None
                verb = "UPDATE" if isinstance(batch, UpdateBatch) else "DELETE"
                shown = ", ".join(repr(k) for k in keys[:10]) + (" ..." if len(keys) > 10 else "")
                raise ConcurrencyError(
                    f"{verb} {batch.table.name} matched {result.rowcount} of {expected} rows by "
                    f"{batch.table.key_column} [{shown}]"
                    + (f" and {batch.table.version_column}" if checked else "")
                    + ": another transaction changed or deleted them, or the database deleted them by a cascade "
                    "from a row this session deleted through a parent it had not loaded; roll back and retry",
                    table=batch.table.name,
                    keys=tuple(keys),
                )

    async def _explain_integrity_error(self, exc: IntegrityError, plan: FlushPlan, pending: list[AnyEvent]) -> None:
        """Fill in which event caused a constraint error."""
        if exc.batch_index is None:
            return
        index = exc.batch_index
        batch = plan.batches[index]
        row = exc.row_index
        if row is None and len(batch.seqs) == 1:
            row = 0
        if row is None:
            row = await self._find_failing_row(plan, index)
        if row is None or row >= len(batch.seqs):
            return
        seq = batch.seqs[row]
        event = next((e for e in pending if e.seq == seq), None)
        if event is None:
            return
        exc.event = event
        exc.model = self._tables[event.table].model
        exc.key = getattr(event, "key", None)
        if exc.key is None and isinstance(event, RowEvent):
            exc.key = f"<new, ref {event.ref}>"

    async def _find_failing_row(self, plan: FlushPlan, failed_index: int) -> int | None:
        """Replay the failed flush row by row inside a savepoint that is rolled
        back, to learn which row the database refuses."""
        began_here = False
        try:
            connection = self._connection
            if connection is None:
                return None
            if not self._in_tx:
                await connection.begin(self.isolation)
                began_here = True
            await connection.savepoint("uow_diagnose")
            try:
                outcome = FlushOutcome()
                key_of_ref = self._key_of_ref(outcome.generated)
                for batch in plan.batches[:failed_index]:
                    result = await connection.apply(resolve_pending(batch, key_of_ref))
                    if isinstance(batch, InsertBatch) and batch.returning_key and result.keys:
                        outcome.generated.update(zip(batch.refs, result.keys))
                batch = plan.batches[failed_index]
                for position, single in enumerate(_single_rows(batch)):
                    try:
                        await connection.apply(resolve_pending(single, key_of_ref))
                    except IntegrityError:
                        return position
                return None
            finally:
                await connection.rollback_to_savepoint("uow_diagnose")
                await connection.release_savepoint("uow_diagnose")
        except Exception:
            return None
        finally:
            if began_here and self._connection is not None:
                try:
                    await self._connection.rollback()
                except Exception:
                    await self._drop_connection(discard=True)

    def _after_flush(self, outcome: FlushOutcome, pending: list[AnyEvent]) -> None:
        identity = self._identity
        by_ref = identity.by_ref
        generated_keys = self._journal.generated_keys
        gone = self._gone
        gone_before = len(gone)
        generated_keys.update(outcome.generated)
        identity.settle_keys(outcome.generated)
        # one pass over the events: a status set here (pending -> persistent,
        # deleted -> gone) never changes whether a state is live. Statuses change
        # on inserts and deletes, and only inserts and updates carry parent refs:
        # any other event (most updates) needs no lookup. Events are final
        # classes, so their type is compared rather than tested with isinstance.
        for event in pending:
            if type(event) is Inserted:
                state = by_ref.get(event.ref)
                if state is None:
                    continue
                if event.key is None:
                    if event.ref not in generated_keys and state.key is not None and state.status is _PENDING:
                        generated_keys[event.ref] = state.key  # a key assigned after the insert was recorded
                elif state.key != event.key and state.status is _PENDING:
                    self._journal.written_keys[event.seq] = state.key  # its given key changed before the flush
                if event.parent_refs and state.parent_refs:
                    self._settle_parent_keys(state, event.parent_refs, generated_keys)
                if state.status is _PENDING:
                    state.status = _PERSISTENT
            elif type(event) is Deleted:
                state = by_ref.get(event.ref)
                if state is not None and state.status is _DELETED:
                    state.status = _GONE  # still known by object, so relations do not add it back
                    gone.append(state)
            elif type(event) is Updated and event.parent_refs:
                state = by_ref.get(event.ref)
                if state is not None and state.parent_refs:
                    self._settle_parent_keys(state, event.parent_refs, generated_keys)
        if len(gone) > gone_before:
            identity.unindex_states(itertools.islice(gone, gone_before, None))
        self._journal.mark_flushed()
        self._tx_writes = True

    def _settle_parent_keys(
        self, state: InstanceState, parent_refs: Mapping[str, int], generated_keys: dict[int, Any]
    ) -> None:
        """Foreign keys of ``state`` that an event left waiting for a parent's
        generated key, and still wait for that parent, get the key."""
        waiting = state.parent_refs
        if waiting is None or state.status not in _LIVE:
            return
        for column, parent_ref in parent_refs.items():
            if waiting.get(column) == parent_ref:
                parent_key = generated_keys.get(parent_ref)
                if parent_key is not None:
                    del waiting[column]
                    set_attribute(state.obj, column, parent_key)
                    snapshot = list(state.snapshot)
                    snapshot[state.table.column_index[column]] = parent_key
                    state.snapshot = tuple(snapshot)
                    if self._identity.lookups:
                        self._identity.reindex(state)

    # --- transactions ---------------------------------------------------------------

    async def commit(self) -> None:
        """Flush, then commit the transaction. Objects keep their values.

        The engine's ``before_commit_hooks`` run between the last flush and
        the commit; when one raises, nothing it wrote stays, the transaction
        stays open with the session's flushed work, and ``commit`` raises
        that error.
        """
        self._refuse_in_commit_hooks("commit")
        with self._exclusive("commit"):
            await self._commit()

    def _refuse_in_commit_hooks(self, operation: str) -> None:
        if self._in_hook_task():
            raise SessionStateError(
                f"{operation} inside a before-commit hook: the hook runs in the transaction being "
                "committed, which ends when the hooks return"
            )

    async def _commit(self) -> None:
        await self._flush()
        if self.engine.before_commit_hooks and self._in_tx:
            await self._run_before_commit_hooks()
        connection = self._connection
        if connection is not None and self._in_tx:
            with anyio.CancelScope(shield=True):
                try:
                    await connection.commit()
                except BaseException:
                    await self._drop_connection(discard=True)
                    self._undo_to(self._tx_start, lists_seen=0)
                    self._reset_transaction()
                    raise
                self._in_tx = False
        self._committed_gone.extend(self._gone)
        committed = self._journal.events_since(self._tx_start)
        self._reset_transaction()
        await self._drop_connection()
        failed: list[Exception] = []
        # inside a hook, current_session() is the session committing: its journal
        # knows the keys the database generated (journal.key_of(event))
        token = _current_session.set(weakref.ref(self))
        try:
            for hook in self.engine.commit_hooks:  # each runs: one failing does not undo the commit or stop the rest
                try:
                    result = hook(committed)
                    if inspect.isawaitable(result):  # an async hook
                        await result
                except Exception as exc:
                    failed.append(exc)
        finally:
            _current_session.reset(token)
        if failed:
            raise CommitHookError(failed) from failed[0]

    async def _run_before_commit_hooks(self) -> None:
        """Run the engine's before-commit hooks inside a savepoint, so that a
        hook that raises leaves nothing behind, then flush what they wrote."""
        if self._journal.mark == self._tx_start:
            return  # nothing recorded in this transaction
        # the hooks work through the session's own calls, which let this task in while it commits
        self._hook_task = anyio.get_current_task().id
        token = _current_session.set(weakref.ref(self))
        try:
            savepoint = await self.begin_nested()
            self._hooks_savepoint = savepoint._started()
            try:
                for hook in self.engine.before_commit_hooks:
                    # each hook sees what the hooks before it did, assignments and cascades
                    # included: they are recorded by a flush (which has nothing to do for the first)
                    await self.flush()
                    result = hook(self, self._journal.events_since(self._tx_start))
                    if inspect.isawaitable(result):
                        await result
                await self.flush()
            except BaseException:
                await savepoint.rollback()
                raise
            await savepoint.commit()
        finally:
            _current_session.reset(token)
            self._hook_task = None
            self._hooks_savepoint = None

    def _reset_transaction(self) -> None:
        self._tx_start = self._journal.mark
        self._tx_writes = False
        self._savepoints.clear()
        self._locked.clear()
        self._unreleased = None
        self._gone.clear()
        self._untracked_writes.clear()
        self._changed_lists.clear()
        self._unlinked_parents.clear()
        # nothing can be undone past this point: states need not be found by ref any more
        self._identity.by_ref.clear()

    async def rollback(self) -> None:
        """Roll the transaction back and restore every tracked object in place:
        old values back, rolled-back inserts detached (generated keys cleared),
        deleted objects tracked again. No query is made."""
        self._refuse_in_commit_hooks("rollback")
        with self._exclusive("rollback"):
            await self._rollback()

    async def _rollback(self, *, restore: bool = True) -> None:
        with anyio.CancelScope(shield=True):
            if self._connection is not None and self._in_tx:
                try:
                    await self._connection.rollback()
                    self._in_tx = False
                except Exception:
                    await self._drop_connection(discard=True)
            await self._drop_connection()
            if restore:
                self._undo_to(self._tx_start, lists_seen=0)
            else:
                self._journal.truncate(self._tx_start)
            self._reset_transaction()

    # --- savepoints and transaction contexts --------------------------------------

    def begin_nested(self) -> SavepointTransaction:
        """A savepoint: ``async with session.begin_nested():`` rolls back to it
        (restoring objects in place) when the block raises and releases it
        otherwise; ``sp = await session.begin_nested()`` then ``await
        sp.commit()`` or ``await sp.rollback()`` does the same by hand."""
        return SavepointTransaction(self)

    async def _begin_savepoint(self) -> _Savepoint:
        with self._exclusive("begin_nested"):
            await self._flush()
            connection = await self._connection_for_work()
            self._savepoint_counter += 1
            savepoint = _Savepoint(
                f"uow_sp_{self._savepoint_counter}",
                self._journal.mark,
                self._tx_writes,
                len(self._changed_lists),
                len(self._locked),
            )
            await self._set_savepoint(connection, savepoint.name)
            self._savepoints.append(savepoint)
            return savepoint

    async def _release_savepoint(self, savepoint: _Savepoint) -> None:
        with self._exclusive("savepoint release"):
            if savepoint not in self._savepoints:
                raise SessionStateError("this savepoint was already released or rolled back, or its transaction ended")
            self._refuse_savepoint_outside_hooks(savepoint)
            await self._flush()
            assert self._connection is not None
            self._unreleased = None  # a flush's savepoint set since goes with it
            # shielded: a release cancelled half-way may still run to its end (SQLite's
            # worker thread does), and the savepoints listed must be what the database has
            with anyio.CancelScope(shield=True):
                await self._connection.release_savepoint(savepoint.name)
                del self._savepoints[self._savepoints.index(savepoint) :]

    async def _rollback_savepoint(self, savepoint: _Savepoint) -> None:
        with self._exclusive("savepoint rollback"):
            if savepoint not in self._savepoints:
                raise SessionStateError("this savepoint was already released or rolled back, or its transaction ended")
            self._refuse_savepoint_outside_hooks(savepoint)
            with anyio.CancelScope(shield=True):
                assert self._connection is not None
                self._unreleased = None  # a flush's savepoint set since goes with it
                try:
                    await self._connection.rollback_to_savepoint(savepoint.name)
                    await self._connection.release_savepoint(savepoint.name)
                except Exception:
                    await self._rollback()
                    raise
                del self._savepoints[self._savepoints.index(savepoint) :]
                self._undo_to(savepoint.mark, savepoint.lists_seen)
                self._tx_writes = savepoint.had_writes
                relock = self._locked[savepoint.locks_seen :]
                del self._locked[savepoint.locks_seen :]
                for table, key in relock:  # until locked again, their values may be old
                    state = self._identity.get(table, key)
                    if state is not None and state.status is Status.PERSISTENT:
                        state.expired = True
            if relock:
                await self._lock_again(relock)

    async def _lock_again(self, rows: list[tuple[TableInfo, Any]]) -> None:
        """Lock again the rows locking reads locked inside a savepoint rolled
        back: PostgreSQL lets go of them with it (SQLite and the memory
        adapter keep their one lock), and a lock lasts until the transaction
        ends. Their tracked objects take the rows' values again."""
        by_table: dict[TableInfo, list[Any]] = {}
        for table, key in rows:
            by_table.setdefault(table, []).append(key)
        connection = await self._connection_for_work()
        for table, keys in by_table.items():
            select = Select(table, In(table.key_column, tuple(dict.fromkeys(keys))), for_update=True)
            found = await connection.fetch(select)
            self._note_locked(table, found)
            self._materialize_all(table, found, True)

    def _note_locked(self, table: TableInfo, rows: Sequence[Sequence[Any]]) -> None:
        """Remember the rows a locking read locked, and let them overwrite
        the values of their tracked objects, as the next read of an expired
        object does: what is locked is what the objects hold from now on."""
        identity = self._identity
        index = table.key_index
        locked = self._locked
        for row in rows:
            key = row[index]
            locked.append((table, key))
            state = identity.get(table, key)
            if state is not None and state.status is Status.PERSISTENT:
                state.expired = True

    def _refuse_savepoint_outside_hooks(self, savepoint: _Savepoint) -> None:
        """Before-commit hooks may end only savepoints they set: ending one set
        before the commit would end the hooks' own savepoint with it."""
        hooks = self._hooks_savepoint
        if (
            hooks is not None
            and savepoint is not hooks
            and self._savepoints.index(savepoint) < self._savepoints.index(hooks)
        ):
            raise SessionStateError(
                "a before-commit hook cannot release or roll back a savepoint set before the commit; "
                "end it before committing"
            )

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Self]:
        """A transaction block: commits on a clean exit; rolls back when the
        block raises or its commit is refused (not after ``CommitHookError``:
        the transaction is committed). ``auto_commit`` operations inside it
        commit with the block.

        ``async with session.begin(): ...``. Raises :class:`SessionStateError` if
        the session already holds unsaved work (changes recorded, flushed or
        only assigned) or is inside another ``begin()`` block: the block's
        commit or rollback would take that work with it (use
        :meth:`begin_nested` for a block inside a transaction).
        """
        if self._in_begin_block:
            raise SessionStateError("the session is already in a begin() block; use begin_nested() inside it")
        raw_sql = self._in_tx and self._raw_sql_in == self._transactions  # it may have written
        if self._journal.has_pending() or self._tx_writes or raw_sql or self._has_assignments():
            raise SessionStateError(
                "the session already has work in progress; commit or roll it back first, or use begin_nested()"
            )
        self._in_begin_block = True
        try:
            try:
                yield self
            except BaseException:
                await self.rollback()
                raise
            try:
                await self.commit()
            except CommitHookError:
                raise  # the transaction is committed: nothing to roll back
            except BaseException:
                await self.rollback()  # a refused commit ends the block as an error in it does
                raise
        finally:
            self._in_begin_block = False

    transaction = begin

    async def close(self, *, restore: bool = True) -> None:
        """Roll back any open transaction, release the connection and forget
        every tracked object. With ``restore`` the objects first get back the
        values they had at the last commit."""
        self._refuse_in_commit_hooks("close")
        with self._exclusive("close"):
            await self._rollback(restore=restore)
            self._identity.clear()
            self._committed_gone.clear()

    # --- reads ------------------------------------------------------------------

    async def get(self, model: type[M], key: Any, *, with_deleted: bool = False, for_update: bool = False) -> M | None:
        """The object with primary key ``key``, or ``None``.

        A tracked object is returned without a query. Soft-deleted rows are
        left out unless ``with_deleted``. ``for_update`` reads the row and
        locks it until the transaction ends, as ``query(model).for_update()``
        does (see :meth:`uow.query.Query.for_update`): a tracked object takes
        the locked row's values.
        """
        # written out, without helper calls: a get by key is the session's hottest read
        if self._busy is not None:
            self._check_idle()
        if for_update:
            return await self._locked_get(model, key, with_deleted)
        table = self._tables_by_type.get(model) if isinstance(model, type) else None
        if table is None:
            table = self._tables_by_type[model] = self._table(model)
        if type(key) is not table.primary_key.python_type:
            key = self._check_key(table, key)
        state = self._identity.get(table, key)
        if state is not None and not state.expired:
            if state.status not in _LIVE:
                return None
            return self._visible(state, with_deleted)  # type: ignore[no-any-return]
        key = self._check_key(table, key)  # the checks of a key no row can hold, before a read
        busy, self._busy = self._busy, "get"
        try:
            if self.autoflush and self._journal.has_pending():
                await self._flush()
            connection = self._connection if self._in_tx else None
            if connection is None:
                connection = await self._connection_for_work()
            rows = await connection.fetch(Select(table, Compare(table.key_column, "eq", key)))
        finally:
            self._busy = busy
        if not rows:
            if state is not None and not (self._journal.has_pending() and state.ref in self._journal.pending_refs()):
                self._identity.detach(state)  # expired, and its row is gone: as refresh() does
            return None
        state = self._load_row(table, rows[0])
        if table.soft_delete_column is None:
            return state.obj  # type: ignore[no-any-return]
        return self._visible(state, with_deleted)  # type: ignore[no-any-return]

    async def _locked_get(self, model: type[M], key: Any, with_deleted: bool) -> M | None:
        """``get(model, key, for_update=True)``: a locking read by key, soft-deleted
        rows included (and locked), then left out unless ``with_deleted``."""
        table = self._table(model)
        key = self._check_key(table, key)
        found = await self.query(model).with_deleted().for_update().get(key)
        if found is None:
            state = self._identity.get(table, key)
            if state is not None and state.status is _PERSISTENT:
                self._identity.detach(state)  # its row is gone (another transaction deleted it): as refresh() does
            return None
        state = self._identity.state_of(found)
        return found if state is None else self._visible(state, with_deleted)

    def _visible(self, state: InstanceState, with_deleted: bool) -> Any:
        column = state.table.soft_delete_column
        if column is not None and not with_deleted and getattr(state.obj, column) is not None:
            return None
        return state.obj

    async def get_or_raise(
        self, model: type[M], key: Any, *, with_deleted: bool = False, for_update: bool = False
    ) -> M:
        """Like :meth:`get`, but raises :class:`NoResultFound` when there is no such row."""
        found = await self.get(model, key, with_deleted=with_deleted, for_update=for_update)
        if found is None:
            raise NoResultFound(f"no {model.__name__} with {table_info(model).key_column}={key!r}")
        return found

    get_one = get_or_raise

    def _check_key(self, table: TableInfo, key: Any) -> Any:
        python_type = table.primary_key.python_type
        if not (isinstance(python_type, type) and isinstance(key, python_type) and not isinstance(key, bool)):
            try:
                key = msgspec.convert(key, python_type, strict=False)
            except msgspec.ValidationError as exc:
                raise ValidationError(
                    f"{key!r} is not a valid {table.model.__name__}.{table.key_column}: {exc}"
                ) from None
        # no row holds these, and the drivers cannot all send them: refused alike on every adapter
        if type(key) is int and key not in INT64:
            raise ValidationError(
                f"{key!r} is not a valid {table.model.__name__}.{table.key_column}: beyond 64-bit integers"
            )
        if type(key) is str and not text_is_storable(key):
            raise ValidationError(
                f"{key!r} is not a valid {table.model.__name__}.{table.key_column}: text with a NUL character "
                "or a lone surrogate"
            )
        return key

    def _load_row(self, table: TableInfo, row: Sequence[Any]) -> InstanceState:
        """The tracked object for a fetched row; a tracked object keeps its values
        (unless expired), so unflushed changes are never overwritten by a read."""
        key = row[table.key_index]
        state = self._identity.get(table, key)
        if state is not None:
            if state.expired:
                self._set_values_following(state, table.row_dict(tuple(row)))
                state.expired = False
            return state
        snapshot = table.detached(row) if table.mutable_indexes else tuple(row)
        state = InstanceState(table.from_row(row), self._new_ref(), table, snapshot, _PERSISTENT)
        self._identity.track(state, key)
        return state

    async def refresh(self, obj: Model) -> None:
        """Reload a tracked object's columns from the database, discarding
        assignments not yet flushed. Raises :class:`NoResultFound` (and stops
        tracking it) when its row is gone."""
        with self._exclusive("refresh"):
            state = self._live_state(obj)
            journal = self._journal
            if not self.autoflush and journal.has_pending() and state.ref in journal.pending_refs():
                # the next flush would write them over what refresh reads
                raise SessionStateError(
                    f"{type(obj).__name__} has changes recorded but not flushed (autoflush is off); "
                    "flush or roll back before refresh()"
                )
            if state.status is _PERSISTENT:
                # discarded before the autoflush below, which would write them
                state.restore_snapshot()
                self._unload_unflushed_relations(state)
            if self.autoflush and self._journal.has_pending():
                await self._flush()
            if state.status is Status.PENDING or state.key is None:
                raise SessionStateError(f"{type(obj).__name__} is not stored yet; flush it before refresh()")
            connection = await self._connection_for_work()
            table = state.table
            rows = await connection.fetch(Select(table, Compare(table.key_column, "eq", state.key)))
            if not rows:
                self._identity.detach(state)
                raise NoResultFound(f"{table.model.__name__} {table.key_column}={state.key!r} no longer exists")
            state.restore_snapshot()
            self._set_values_following(state, table.row_dict(tuple(rows[0])))
            state.expired = False

    def expire(self, obj: Model) -> None:
        """Let the next read of this row overwrite the object's values (reads
        never overwrite a tracked object otherwise). Nothing is loaded now."""
        self._check_idle()
        self._live_state(obj).expired = True

    def expire_all(self) -> None:
        """:meth:`expire` every tracked object."""
        self._check_idle()
        for state in self._identity.states():
            state.expired = True

    def expunge(self, obj: Model) -> None:
        """Stop tracking an object that has no unflushed changes (recorded
        events or assignments since its last flush)."""
        if self._busy is not None:
            self._check_idle()
        state = self._identity.by_obj.get(id(obj))
        if state is None or state.status is Status.DETACHED:
            state = self._state(obj)  # raises DetachedInstanceError
        self._expunge(state)

    def _expunge(self, state: InstanceState) -> None:
        journal = self._journal
        if (
            state.status in _UNFLUSHED
            or (journal.has_pending() and state.ref in journal.pending_refs())
            or (state.status is _PERSISTENT and state.table.values_of(state.obj) != state.snapshot)
            or self._relations_changed(state)
        ):
            raise SessionStateError(
                f"{state.table.model.__name__} ref {state.ref} has unflushed changes; flush or roll back first"
            )
        self._identity.detach(state)

    def expunge_all(self) -> None:
        """Stop tracking every object (there must be no unflushed changes,
        recorded or assigned)."""
        self._check_idle()
        # a pending object's insert is a pending event: the assignments left are on stored ones
        if self._journal.has_pending() or self._has_assignments():
            raise SessionStateError("the session has unflushed changes; flush or roll back first")
        for state in self._identity.states():
            self._identity.detach(state)


ISOLATION_LEVELS = ("read committed", "repeatable read", "serializable")
"""The isolation levels a session accepts (``None``: the backend's default)."""

_SNAPSHOT_LEVELS = ("repeatable read", "serializable")
"""Levels whose transaction reads one snapshot, which a failed flush keeps."""


def _isolation_level(isolation: str | None) -> str | None:
    """``isolation`` in lower case, checked when the session is made rather
    than at its first transaction (where each adapter would say it its own way)."""
    if isolation is None:
        return None
    level = isolation.strip().lower() if isinstance(isolation, str) else isolation
    if level not in ISOLATION_LEVELS:
        raise ConfigurationError(
            f"unknown isolation level {isolation!r}; use one of {', '.join(map(repr, ISOLATION_LEVELS))} "
            "or None for the backend's default"
        )
    return level


def _single_rows(batch: Batch) -> list[Batch]:
    if isinstance(batch, DeleteBatch):
        versions = batch.expected_versions
        return [
            replace(
                batch,
                keys=[key],
                expected_versions=None if versions is None else [versions[i]],
                refs=batch.refs[i : i + 1],
                seqs=batch.seqs[i : i + 1],
            )
            for i, key in enumerate(batch.keys)
        ]
    if isinstance(batch, (InsertBatch, UpdateBatch, UpsertBatch)):
        return [
            replace(batch, rows=[row], refs=batch.refs[i : i + 1], seqs=batch.seqs[i : i + 1])
            for i, row in enumerate(batch.rows)
        ]
    return [batch]


class SavepointTransaction:
    """A savepoint inside the session's transaction (see :meth:`AsyncSession.begin_nested`)."""

    def __init__(self, session: AsyncSession):
        self._session = session
        self._savepoint: _Savepoint | None = None

    async def start(self) -> SavepointTransaction:
        """Set the savepoint (flushing pending changes first). A handle sets
        one savepoint: once it is released or rolled back, take a new one
        from ``begin_nested()``."""
        if self._savepoint is None:
            self._savepoint = await self._session._begin_savepoint()
        elif self._savepoint not in self._session._savepoints:
            raise SessionStateError(
                "this savepoint was already released or rolled back; begin a new one with begin_nested()"
            )
        return self

    def __await__(self) -> Generator[Any, None, SavepointTransaction]:
        return self.start().__await__()

    async def commit(self) -> None:
        """Release the savepoint, keeping its changes in the transaction."""
        await self._session._release_savepoint(self._started())

    async def rollback(self) -> None:
        """Undo everything since the savepoint, in the database and in the objects."""
        await self._session._rollback_savepoint(self._started())

    def _started(self) -> _Savepoint:
        if self._savepoint is None:
            raise SessionStateError(
                "this savepoint was never set: await session.begin_nested(), or use it in async with"
            )
        return self._savepoint

    async def __aenter__(self) -> SavepointTransaction:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._savepoint is not None
        if self._savepoint not in self._session._savepoints:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()


class SessionOptions(TypedDict, total=False):
    """The keyword options of :class:`AsyncSession`, for the calls that pass
    them on (``session_context``, ``sessionmaker``, ``run_in_transaction``),
    so that a type checker catches a misspelt one."""

    auto_commit: bool
    auto_rollback: bool
    autoflush: bool
    atomic: bool
    isolation: str | None


@asynccontextmanager
async def session_context(engine: Engine, **options: Unpack[SessionOptions]) -> AsyncIterator[AsyncSession]:
    """A session that commits when the block succeeds and rolls back when it
    raises: ``async with session_context(engine) as session: ...``."""
    options.setdefault("atomic", True)
    async with AsyncSession(engine, **options) as session:
        yield session


class sessionmaker:
    """Makes sessions for one engine with shared options::

    Session = sessionmaker(engine, autoflush=False)
    async with Session() as session: ...
    """

    def __init__(self, engine: Engine, **options: Unpack[SessionOptions]):
        self.engine = engine
        self.options = options

    def __call__(self, **overrides: Unpack[SessionOptions]) -> AsyncSession:
        options: SessionOptions = {**self.options, **overrides}
        return AsyncSession(self.engine, **options)


__all__ = [
    "AsyncSession",
    "SavepointTransaction",
    "SessionOptions",
    "current_session",
    "require_current_session",
    "session_context",
    "sessionmaker",
]
