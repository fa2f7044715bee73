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
"""

from __future__ import annotations

import contextvars
import datetime as dt
import gc
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

import anyio
import msgspec

from uow.adapter import Connection
from uow.assignments import WATCHED, ChildList, relation_assigned, set_attribute, unwatched_list
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
from uow.conditions import Compare, Condition, equals_all, matches
from uow.engine import Engine
from uow.errors import (
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
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Inserted,
    Restored,
    RowEvent,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.identity import IdentityMap, InstanceState, Status
from uow.journal import Journal, JournalView
from uow.model import (
    NOT_LOADED,
    UNLINKED,
    ColumnInfo,
    ForeignKeyInfo,
    Model,
    TableInfo,
    detached_value,
    is_model,
    table_info,
)
from uow.planner import plan_flush
from uow.reads import ReadsMixin
from uow.stale import RelationChecks, names_another_parent, undo_suspects, unload_stale_relations
from uow.statements import Select

M = TypeVar("M", bound=Model)

_current_session: contextvars.ContextVar[AsyncSession | None] = contextvars.ContextVar("uow_session", default=None)

# Status.X goes through the enum's metaclass (about 0.1 µs); the paths that run
# once per row use these names instead
_PENDING, _PERSISTENT, _DELETED, _GONE = Status.PENDING, Status.PERSISTENT, Status.DELETED, Status.GONE
_LIVE = (_PENDING, _PERSISTENT)
_UNFLUSHED = (_PENDING, _DELETED)


def current_session() -> AsyncSession | None:
    """The session of the running task (set by ``async with session``), or ``None``."""
    return _current_session.get()


def require_current_session() -> AsyncSession:
    """The session of the running task; raises :class:`SessionStateError` when none."""
    session = _current_session.get()
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


@dataclass
class _Savepoint:
    name: str
    mark: int
    had_writes: bool


@dataclass
class _FlushOutcome:
    generated: dict[int, Any] = field(default_factory=dict)
    upserted_rows: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    rowcounts: dict[int, int] = field(default_factory=dict)


def _converted(table: TableInfo, column: ColumnInfo, value: Any) -> Any:
    """``value`` as its column's Python type, strictly (no ``"7"`` for an ``int``)."""
    try:
        return msgspec.convert(value, column.python_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{table.model.__name__}.{column.name}: {exc} (got {value!r})") from None


def _refers_to(obj: Any, column: str, key: Any) -> bool:
    """Whether ``obj``'s foreign key ``column`` holds ``key`` (a stored row's)."""
    return key is not None and getattr(obj, column) == key


class AsyncSession(ReadsMixin):
    """A unit of work over one engine, used by one task at a time.

    ``auto_commit``: every immediate operation (``insert``, ``update``,
    ``remove``, ``upsert``, ``bulk_*``, ``soft_delete``...) commits at once.
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
        self.isolation = isolation
        self._journal = Journal()
        self._identity = IdentityMap()
        self._tables: dict[str, TableInfo] = {}
        self._tables_by_type: dict[type, TableInfo] = {}
        self._relation_checks = RelationChecks(self._tables)
        self._connection: Connection | None = None
        self._in_tx = False
        self._tx_start = 0
        self._tx_writes = False
        self._savepoints: list[_Savepoint] = []
        self._savepoint_counter = 0
        self._unreleased: str | None = None
        """The last flush's savepoint while it is not released: the next savepoint
        releases it in the same round trip, and the transaction's end with it."""
        self._new_ref: Callable[[], int] = itertools.count(1).__next__
        """The ref for the next tracked row (a bound C method: reads call it per row)."""
        self._adding: dict[int, int] = {}
        self._gone: list[InstanceState] = []
        """States whose delete this transaction flushed."""
        self._committed_gone: list[InstanceState] = []
        """States whose delete is committed: the next flush lets them go."""
        self._untracked_writes: list[tuple[int, int]] = []
        """(journal mark, ref drawn then) of each write in this transaction that
        tracked objects do not follow (bulk updates and deletes, raw SQL):
        objects read after one may hold values a rollback past it undoes."""
        self._busy: str | None = None
        self._cascaded_upto = 0
        self._context_tokens: list[contextvars.Token[AsyncSession | None]] = []
        for model in engine.models.values():
            self._table(model)

    # --- context ------------------------------------------------------------

    async def __aenter__(self) -> AsyncSession:
        self._context_tokens.append(_current_session.set(self))
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

    @contextmanager
    def _exclusive(self, operation: str) -> Any:
        if self._busy is not None:
            raise SessionStateError(
                f"session is busy with {self._busy} in another task; a session serves one task at a time "
                "(give each task its own session)"
            )
        self._busy = operation
        try:
            yield
        finally:
            self._busy = None

    def _check_idle(self) -> None:
        if self._busy is not None:
            raise SessionStateError(
                f"session is busy with {self._busy} in another task; a session serves one task at a time"
            )

    # --- public state -----------------------------------------------------------

    @property
    def journal(self) -> JournalView:
        """The read-only, live journal of every event this session recorded."""
        return self._journal.view()

    def in_transaction(self) -> bool:
        """Whether a database transaction is open."""
        return self._in_tx

    def is_modified(self, obj: Any) -> bool:
        """Whether ``obj`` has changes not yet flushed (recorded or assigned)."""
        state = self._state(obj)
        if state.status in (Status.PENDING, Status.DELETED):
            return True
        return (
            state.current() != state.snapshot
            or state.ref in self._journal.pending_refs()
            or self._relations_changed(state)
        )

    def _relations_changed(self, state: InstanceState) -> bool:
        """Whether a relation of ``state.obj`` holds a change the next flush
        writes: a many-to-one relation naming another parent than its foreign
        key does, or unlinking a set one, or a list holding a new object."""
        table = state.table
        obj = state.obj
        if not table.relations or not table.holds_relations(obj):
            return False
        identity = self._identity
        for read, _, column, target_key in self._relation_checks.relations(table):
            value = read(obj)
            if value is None or value is NOT_LOADED:
                continue
            if column is not None:
                if value is UNLINKED:
                    if getattr(obj, column) is not None:
                        return True
                elif names_another_parent(obj, column, value, target_key):
                    return True
            elif isinstance(value, list) and any(map(identity.is_new, value)):
                return True
        return False

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
                raise ModelDefinitionError(f"{obj!r} is not an instance of a model with a table")
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
        return (
            self._in_tx
            or self._journal.has_pending()
            or any(s.status in _LIVE and s.current() != s.snapshot for s in self._identity.states_to_compare())
        )

    def _record(self, event: AnyEvent, *about: InstanceState) -> None:
        """Append ``event``; the states it is about become findable by ref
        until the transaction ends (undo and the flush look them up so)."""
        for state in about:
            self._identity.remember(state)
        self._journal.append(event)

    # --- unit of work: add / delete ----------------------------------------------

    def add(self, obj: Any) -> None:
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
            if values[index] is None:
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
            self._add_children(obj, table, new_state, at)
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

    def _link_parents(self, obj: Any, table: TableInfo, at: dt.datetime) -> dict[str, int] | None:
        """Add new parents assigned through many-to-one relations and fill the
        foreign keys; returns the columns waiting for a generated key, if any."""
        waiting: dict[str, int] | None = None
        for column, read_parent in table.parent_relations:
            parent = read_parent(obj)
            if parent is None or parent is NOT_LOADED:
                continue
            if parent is UNLINKED:
                self._unlink(obj, table, column)
                continue
            parent_id = id(parent)
            if parent_id in self._adding:  # a cycle of new objects: the planner breaks it
                set_attribute(obj, column, None)
                if waiting is None:
                    waiting = {}
                waiting[column] = self._adding[parent_id]
                continue
            parent_state = self._identity.by_obj.get(parent_id)  # a tracked object is a model
            if parent_state is None:
                if type(parent) not in self._tables_by_type and not is_model(parent):
                    continue
                if self._identity.was_let_go(parent):  # one test for both: mostly it was not
                    if self._identity.was_detached(parent):
                        # expunged here: its row is linked, never inserted again
                        key = self._table_of(parent).key_of(parent)
                        if key is not None:
                            set_attribute(obj, column, key)
                        continue
                    self._refuse_deleted_parent(table, column, parent)
                parent_state = self._add(parent, None, at)
            elif parent_state.status not in _LIVE:
                self._refuse_deleted_parent(table, column, parent)
            parent_key = parent_state.snapshot[parent_state.table.key_index]
            if parent_key is not None:
                set_attribute(obj, column, parent_key)
            else:
                set_attribute(obj, column, None)
                if waiting is None:
                    waiting = {}
                waiting[column] = parent_state.ref
        return waiting

    def _unlink(self, obj: Any, table: TableInfo, column: str) -> None:
        """``None`` was assigned to the many-to-one relation through ``column``:
        empty the foreign key, and let the relation read ``None`` as loaded."""
        set_attribute(obj, column, None)
        for name, relation in table.relations.items():
            if relation.local_column == column and not relation.many:
                getattr(table.model, name).set_loaded(obj, None)

    def _refuse_deleted_parent(self, table: TableInfo, column: str, parent: Any) -> None:
        name = next(n for n, r in table.relations.items() if not r.many and r.local_column == column)
        parent_table = self._table_of(parent)
        raise SessionStateError(
            f"{table.model.__name__}.{name} holds {parent_table.model.__name__} "
            f"{parent_table.key_column}={parent_table.key_of(parent)!r}, which is deleted in this session; "
            "assign a live object or None"
        )

    def _refuse_new_children(self, state: InstanceState) -> None:
        """Refuse new objects in a one-to-many list of an object deleted in
        this session: they would point at a row that is going away."""
        identity = self._identity
        for column, read_children in state.table.child_relations:
            children = read_children(state.obj)
            if not isinstance(children, (list, tuple)):
                continue
            for child in children:
                if identity.is_new(child):
                    table = state.table
                    name = next(n for n, r in table.relations.items() if r.many and r.remote_column == column)
                    raise SessionStateError(
                        f"a new {type(child).__name__} is in {table.model.__name__}.{name} of "
                        f"{table.model.__name__} {table.key_column}={state.key!r}, which is deleted in this "
                        "session; add it to a live object instead"
                    )

    def _add_children(self, obj: Any, table: TableInfo, state: InstanceState, at: dt.datetime | None = None) -> None:
        """Add new children listed in one-to-many relations, linked to ``obj``;
        a list of them becomes ``obj``'s own :class:`ChildList`, so that a child
        appended later is noted."""
        for (column, read_children), name in zip(table.child_relations, table.child_relation_names):
            children = read_children(obj)
            if not isinstance(children, (list, tuple)):
                continue
            if unwatched_list(children, obj):
                children = ChildList(children, obj)
                set_attribute(obj, name, children)
            for child in children:
                if self._identity.state_of(child) is not None or self._identity.was_let_go(child):
                    continue
                if state.key is not None:
                    set_attribute(child, column, state.key)
                    self._add(child, None, at)
                else:
                    set_attribute(child, column, None)
                    self._add(child, {column: state.ref}, at)

    def delete(self, obj: Any) -> None:
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
        # only the recorded columns join the snapshot: other assignments still wait for their own event
        snapshot = list(state.snapshot)
        column_index = table.column_index
        for column, value in new.items():
            snapshot[column_index[column]] = value
        identity = self._identity
        if new_key:  # a new object given its key after add: found by it from now on
            identity.unindex_key(state, state.key)
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
            )
        else:  # an Updated event's parent_refs defaults to a new empty dict
            event = event_type(seq=seq, at=at, table=table.name, ref=state.ref, key=state.key, old=old, new=new)
        self._record(event, state)

    def _sync_relations(self, state: InstanceState, *, deleting: bool = False) -> None:
        """Add new objects assigned to the relations of ``state.obj`` (a table
        with relations) and bring its foreign keys in line with its parents.
        ``deleting``: the object is being deleted, so a relation holding a
        deleted object is left alone rather than refused."""
        table = state.table
        obj = state.obj
        if table.child_relations:
            self._add_children(obj, table, state)
        for column, read_parent in table.parent_relations:
            parent = read_parent(obj)
            if parent is None:
                if self._key_assigned_over_none(state, column):
                    self._follow_column(state, column)
                continue
            if parent is NOT_LOADED:
                continue
            if parent is UNLINKED:
                self._unlink(obj, table, column)
                if state.parent_refs and column in state.parent_refs:
                    # an event already waits for the parent's key: say the column stays empty
                    self._record_update(state, {column: None}, {column: None})
                continue
            parent_state = self._identity.by_obj.get(id(parent))  # a tracked object is a model
            if parent_state is None:
                if type(parent) not in self._tables_by_type and not is_model(parent):
                    continue
                if self._identity.was_detached(parent):
                    # expunged here: its row is linked, never inserted again
                    key = self._table_of(parent).key_of(parent)
                    if key is not None and getattr(obj, column) != key:
                        if self._column_assigned_over(state, column, key):
                            self._follow_column(state, column)
                            continue
                        set_attribute(obj, column, key)
                        if state.parent_refs:
                            state.parent_refs.pop(column, None)
                    continue
                if self._identity.was_deleted(parent):  # its delete is committed
                    parent_key = self._table_of(parent).key_of(parent)
                    if self._column_assigned_over(state, column, parent_key):
                        self._follow_column(state, column)  # moved off it by its key since
                    elif not deleting and (
                        relation_assigned(self._identity.assigned, obj, column)
                        or not _refers_to(obj, column, parent_key)
                    ):
                        self._refuse_deleted_parent(table, column, parent)
                    continue
                parent_state = self._add(parent)
            elif parent_state.status not in _LIVE:
                # deleted here: a child it already had is left to the foreign key's
                # on_delete; pointing a live object at it is refused
                if self._column_assigned_over(state, column, parent_state.key):
                    self._follow_column(state, column)  # moved off it by its key since
                elif not deleting and (
                    relation_assigned(self._identity.assigned, obj, column)
                    or not _refers_to(obj, column, parent_state.key)
                ):
                    self._refuse_deleted_parent(table, column, parent)
                continue
            parent_key = parent_state.snapshot[parent_state.table.key_index]
            if parent_key is not None:
                if getattr(obj, column) != parent_key:
                    if self._column_assigned_over(state, column, parent_key):
                        self._follow_column(state, column)
                        continue
                    set_attribute(obj, column, parent_key)
                if state.parent_refs:
                    state.parent_refs.pop(column, None)
            elif getattr(obj, column) is not None and self._column_assigned_over(state, column, None):
                # given a key since, while the relation still holds the new parent it waited for
                if state.parent_refs:
                    state.parent_refs.pop(column, None)
                self._follow_column(state, column)
            elif (state.parent_refs or {}).get(column) != parent_state.ref:
                index = table.column_index[column]
                old_value = state.snapshot[index]
                set_attribute(obj, column, None)
                self._record_update(state, {column: old_value}, {column: None}, parent_refs={column: parent_state.ref})

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

    def _follow_keys_assigned_over_none(self, state: InstanceState) -> None:
        """Let a many-to-one relation a read left ``None`` follow a foreign key
        assigned since: it holds nothing, so no sync of relations looked at it."""
        obj = state.obj
        for column, read_parent in state.table.parent_relations:
            if read_parent(obj) is None and self._key_assigned_over_none(state, column):
                self._follow_column(state, column)

    def _key_assigned_over_none(self, state: InstanceState, column: str) -> bool:
        """Whether the foreign key ``column`` was assigned since the snapshot
        while its relation holds the ``None`` a read left (no parent, or one
        left out as soft-deleted): a relation holding no object names no
        parent, so the column is the newer word unless the relation was
        assigned since."""
        return self._column_assigned_over(state, column, state.snapshot[state.table.column_index[column]])

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
        # one it had; a changed key needs the checks of _record_update, and a JSON
        # value the copy _record_update makes (the object's own may change in place)
        if kept or table.primary_key.name in new or table.mutable_indexes:
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

    def _cascade_deletes(self) -> None:
        """Apply foreign-key delete actions to tracked children of deleted rows."""
        pending = self._journal.pending
        if not pending:
            return
        if not self._deletes_act():
            self._cascaded_upto = pending[-1].seq
            return
        deleted_keys: dict[str, set[Any]] = {}
        deleted_refs: dict[str, set[int]] = {}
        for event in pending:
            if isinstance(event, Deleted) and event.seq > self._cascaded_upto:
                if event.key is not None:
                    deleted_keys.setdefault(event.table, set()).add(event.key)
                deleted_refs.setdefault(event.table, set()).add(event.ref)
        self._cascaded_upto = pending[-1].seq
        self._cascade(deleted_keys, deleted_refs)

    def _deletes_act(self) -> bool:
        """Whether a foreign key of a known table acts on deletes of its parent
        (without one, no tracked child changes when a row is deleted)."""
        return any(fk.on_delete in ("cascade", "set null") for t in self._tables.values() for fk in t.foreign_keys)

    def _tracked_children(
        self, table: TableInfo, fks: Sequence[ForeignKeyInfo], deleted_keys: Mapping[str, set[Any]], refs: set[int]
    ) -> list[InstanceState]:
        """The tracked states of ``table`` that may point through ``fks`` at a
        deleted row, in the order they were tracked: by the foreign key in
        their snapshots (a lookup the identity map keeps), by an assignment not
        recorded yet, or by the ref of a new parent whose key they wait for.
        Rather than every tracked object of the table."""
        identity = self._identity
        found: dict[int, InstanceState] = {}
        for fk in fks:
            keys = deleted_keys.get(fk.target_table)
            if keys:
                index = (table.column_index[fk.column],)
                for key in keys:
                    for state in identity.find_by_columns(table, index, (key,)):
                        found[state.ref] = state
        by_obj = identity.by_obj
        for obj_id in (*identity.assigned, *identity.compared):
            assigned = by_obj.get(obj_id)
            if assigned is not None and assigned.table is table:
                found[assigned.ref] = assigned
        if refs:
            # a state waits for a parent's key only while an event saying so is pending
            by_ref = identity.by_ref
            for event in self._journal.pending:
                if (
                    isinstance(event, (Inserted, Updated))
                    and event.parent_refs
                    and event.table == table.name
                    and not refs.isdisjoint(event.parent_refs.values())
                ):
                    waiting = by_ref.get(event.ref)
                    if waiting is not None:
                        found[waiting.ref] = waiting
        return [found[ref] for ref in sorted(found)]

    def _foreign_keys_acting_on(self, parents: Iterable[str]) -> dict[TableInfo, list[ForeignKeyInfo]]:
        """The foreign keys of known tables that act (``cascade``, ``set null``)
        on deletes of rows of the ``parents`` tables, by the table holding them."""
        parents = set(parents)
        acting: dict[TableInfo, list[ForeignKeyInfo]] = {}
        for table in self._tables.values():
            for fk in table.foreign_keys:
                if fk.on_delete in ("cascade", "set null") and fk.target_table in parents:
                    acting.setdefault(table, []).append(fk)
        return acting

    def _cascade(self, deleted_keys: dict[str, set[Any]], deleted_refs: dict[str, set[int]]) -> None:
        """Delete (``cascade``) or unlink (``set null``) the tracked children of
        the given deleted rows (keys and refs by table), recursively, as the
        database will."""
        while deleted_keys or deleted_refs:
            acting = self._foreign_keys_acting_on(deleted_keys.keys() | deleted_refs.keys())
            if not acting:  # rows nothing points at with an action (most deletes): no object to look at
                break
            refs = set().union(*deleted_refs.values())
            next_keys: dict[str, set[Any]] = {}
            next_refs: dict[str, set[int]] = {}
            children = [s for t, fks in acting.items() for s in self._tracked_children(t, fks, deleted_keys, refs)]
            for state in children:
                if state.status not in _LIVE:
                    continue
                for fk in acting[state.table]:
                    if state.table.parent_relations and self._relation_links_elsewhere(state, fk.column):
                        continue  # moved or unlinked through its relation: the flush writes that first
                    value = getattr(state.obj, fk.column)
                    waiting_ref = (state.parent_refs or {}).get(fk.column)
                    keys = deleted_keys.get(fk.target_table)
                    hit = (keys is not None and value in keys) or (waiting_ref is not None and waiting_ref in refs)
                    if not hit or state.status not in _LIVE:
                        continue
                    if fk.on_delete == "cascade":
                        self._delete(state)
                        if state.key is not None:
                            next_keys.setdefault(state.table.name, set()).add(state.key)
                        next_refs.setdefault(state.table.name, set()).add(state.ref)
                    else:
                        set_attribute(state.obj, fk.column, None)
                        if state.parent_refs:
                            state.parent_refs.pop(fk.column, None)
                        self._unlink_deleted_parents(state, fk.column)
                        self._record_found(state, _utc_now(_UTC))
            deleted_keys, deleted_refs = next_keys, next_refs
        if self._journal.pending:
            self._cascaded_upto = self._journal.pending[-1].seq

    def _relation_links_elsewhere(self, state: InstanceState, column: str) -> bool:
        """Whether the many-to-one relation through ``column`` holds what the
        next flush writes into that column instead of what it holds now: an
        unlink, anything assigned since (a deleted parent is refused then), or
        a parent that is not deleted (a relation wins over its column). A
        relation still holding the deleted parent it was loaded with says
        nothing here: the column decides."""
        for relation_column, read_parent in state.table.parent_relations:
            if relation_column != column:
                continue
            parent = read_parent(state.obj)
            if parent is UNLINKED or relation_assigned(self._identity.assigned, state.obj, column):
                return True  # assigned since: the flush writes it (and refuses a deleted parent)
            if parent is None or parent is NOT_LOADED:
                return False
            parent_state = self._identity.by_obj.get(id(parent))
            if parent_state is not None:
                key = parent_state.key
            elif not is_model(parent) or self._identity.was_deleted(parent):
                return False
            else:
                key = self._table_of(parent).key_of(parent)  # new, or expunged: its row stays
            live = parent_state is None or parent_state.status in _LIVE
            return live and (key is None or not self._column_assigned_over(state, column, key))
        return False

    def _column_assigned_over(self, state: InstanceState, column: str, parent_key: Any) -> bool:
        """Whether the foreign key ``column`` was assigned since the snapshot
        while the relation through it still holds the parent the snapshot
        names (with key ``parent_key``, ``None`` for no parent) and was not
        assigned since itself: then the column is the newer word."""
        obj = state.obj
        assigned: bool = getattr(obj, column) != parent_key
        return (
            assigned
            and state.snapshot[state.table.column_index[column]] == parent_key
            and not relation_assigned(self._identity.assigned, obj, column)
        )

    def _follow_column(self, state: InstanceState, column: str) -> None:
        """Point the many-to-one relations through the foreign key ``column``
        at what it now holds, where they hold another parent: the tracked
        parent with that key, ``None`` for none, else not loaded. For a column
        assigned since the snapshot while its relation still held the parent
        the snapshot names (the assignment is the newer word), and for values
        the session writes into an object from elsewhere (a bulk update, a
        read of an expired row, a refresh, an upsert), so that a later flush
        does not write the old parent back."""
        table = state.table
        obj = state.obj
        key = getattr(obj, column)
        for name, relation in table.relations.items():
            if relation.many or relation.local_column != column:
                continue
            descriptor = getattr(table.model, name)
            held = descriptor.raw(obj)
            if held is NOT_LOADED or held is UNLINKED:  # an unlink the next flush writes stays
                continue
            target = table_info(relation.target)
            if key is None:
                if held is not None:
                    descriptor.set_loaded(obj, None)
                continue
            if held is not None and getattr(held, target.key_column, None) == key:
                continue
            parent_state = self._identity.get(target, key)
            live = parent_state is not None and parent_state.status in _LIVE
            descriptor.set_loaded(obj, parent_state.obj if live else NOT_LOADED)  # type: ignore[union-attr]

    def _set_values_following(self, state: InstanceState, values: dict[str, Any]) -> None:
        """:meth:`IdentityMap.set_values`, with the relations through the
        foreign keys among ``values`` following them (:meth:`_follow_column`)."""
        self._identity.set_values(state, values)
        table = state.table
        if table.parent_relations:
            for column, _ in table.parent_relations:
                if column in values:
                    self._follow_column(state, column)

    def _unlink_deleted_parents(self, state: InstanceState, column: str) -> None:
        """Set to ``None`` the many-to-one relations through ``column`` that
        hold an object deleted in this session (its ``set null`` took effect)."""
        table = state.table
        for name, relation in table.relations.items():
            if relation.many or relation.local_column != column:
                continue
            parent = getattr(table.model, name).reader(state.obj)
            parent_state = self._identity.state_of(parent)
            if parent_state is not None and parent_state.status not in _LIVE:
                getattr(table.model, name).set_loaded(state.obj, None)

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
            self._tx_start = self._journal.flushed_mark
            self._tx_writes = False
        return self._connection

    async def _flush(self, *, scan: bool = True) -> _FlushOutcome:
        with _collector_paused():
            self._collect_changes(scan=scan)
            if not self._journal.has_pending():
                return _FlushOutcome()
            pending = list(self._journal.pending)
            plan = plan_flush(pending, self._tables)
        connection = await self._connection_for_work()
        savepoint = None
        if self._tx_writes or self._savepoints:
            # a failed flush then undoes only itself, and the transaction goes on
            self._savepoint_counter += 1
            savepoint = f"uow_flush_{self._savepoint_counter}"
            await self._set_savepoint(connection, savepoint)
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
        if self._tx_writes:
            # the transaction, with what earlier flushes wrote, is gone: say so in the objects too
            self._undo_to(self._tx_start)
            self._tx_writes = False
            self._savepoints.clear()

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

    async def _apply(self, connection: Connection, plan: FlushPlan) -> _FlushOutcome:
        outcome = _FlushOutcome()
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
                    + ": another transaction changed or deleted them; roll back and retry",
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
                outcome = _FlushOutcome()
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

    def _after_flush(self, outcome: _FlushOutcome, pending: list[AnyEvent]) -> None:
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
        self, state: InstanceState, parent_refs: dict[str, int], generated_keys: dict[int, Any]
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
        """Flush, then commit the transaction. Objects keep their values."""
        with self._exclusive("commit"):
            await self._commit()

    async def _commit(self) -> None:
        await self._flush()
        connection = self._connection
        if connection is not None and self._in_tx:
            with anyio.CancelScope(shield=True):
                try:
                    await connection.commit()
                except BaseException:
                    await self._drop_connection(discard=True)
                    self._undo_to(self._tx_start)
                    self._reset_transaction()
                    raise
                self._in_tx = False
        self._committed_gone.extend(self._gone)
        committed = self._journal.events()[self._tx_start :]
        self._reset_transaction()
        await self._drop_connection()
        for hook in self.engine.commit_hooks:
            hook(committed)

    def _reset_transaction(self) -> None:
        self._tx_start = self._journal.mark
        self._tx_writes = False
        self._savepoints.clear()
        self._unreleased = None
        self._gone.clear()
        self._untracked_writes.clear()
        # nothing can be undone past this point: states need not be found by ref any more
        self._identity.by_ref.clear()

    async def rollback(self) -> None:
        """Roll the transaction back and restore every tracked object in place:
        old values back, rolled-back inserts detached (generated keys cleared),
        deleted objects tracked again. No query is made."""
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
                self._undo_to(self._tx_start)
            else:
                self._journal.truncate(self._tx_start)
            self._reset_transaction()

    def _undo_to(self, mark: int) -> None:
        """Undo assignments not recorded yet, then truncate the journal to
        ``mark`` and undo the removed events in place."""
        identity = self._identity
        assigned = identity.assigned
        touched: list[InstanceState] = []  # a relation of these may name an undone link
        for state in identity.states_to_compare():
            restored = state.status in (*_LIVE, Status.DELETED) and state.current() != state.snapshot
            if restored:
                state.restore_snapshot()
            if restored or id(state.obj) in assigned or state.table.child_relations:
                touched.append(state)
        identity.compared_all()
        self._undo_recorded(mark, touched)

    def _undo_recorded(self, mark: int, touched: Iterable[InstanceState] = ()) -> None:
        """Truncate the journal to ``mark`` and undo the removed events in
        place; assignments not recorded yet stay as they are. ``touched``:
        states whose relations may name an undone link besides the ones the
        removed events lead to (see :mod:`uow.stale`)."""
        inserted_keys = self._journal.inserted_keys_since(mark)
        removed = self._journal.truncate(mark)
        if not removed and not touched:
            self._expire_read_after_undone_writes(mark)
            return
        suspects = undo_suspects(removed, inserted_keys, self._identity, self._tables, self._relation_checks)
        detached: dict[int, Any] = {}
        for event in reversed(removed):
            self._undo(event, detached)
            if event.seq in inserted_keys:
                self._let_go_of_vanished_row(self._tables[event.table], inserted_keys[event.seq], detached)
        unload_stale_relations(itertools.chain(touched, suspects), detached, self._identity, self._relation_checks)
        self._expire_read_after_undone_writes(mark)
        self._cascaded_upto = min(self._cascaded_upto, removed[0].seq - 1) if removed else self._cascaded_upto

    def _note_untracked_write(self) -> None:
        """A write tracked objects do not follow is about to run (see
        :meth:`_expire_read_after_undone_writes`)."""
        self._untracked_writes.append((self._journal.mark, self._new_ref()))

    def _expire_read_after_undone_writes(self, mark: int) -> None:
        """Expire the objects read after a write that tracked objects do not
        follow, when undoing back to ``mark`` undoes that write: they may hold
        what it wrote, so their next read gives them what the database holds.
        Refs only grow, so an object read after the write has a greater ref
        than the one drawn with it."""
        undone = [ref for at, ref in self._untracked_writes if at >= mark]
        if not undone:
            return
        self._untracked_writes = [(at, ref) for at, ref in self._untracked_writes if at < mark]
        first = min(undone)
        for state in self._identity.by_obj.values():
            if state.ref > first and state.status in _LIVE:
                state.expired = True

    def _let_go_of_vanished_row(self, table: TableInfo, key: Any, detached: dict[int, Any]) -> None:
        """The row an undone insert wrote is gone: an object read from it since
        (say a row of ``bulk_insert``, or one expunged and read again) stops
        being tracked too, so no read answers with it."""
        state = self._identity.get(table, key)
        if state is None or state.status not in _LIVE:
            return
        self._identity.untrack(state)
        state.status = Status.DETACHED
        detached[id(state.obj)] = state.obj

    def _undo(self, event: AnyEvent, detached: dict[int, Any]) -> None:
        """Undo one event in place; objects it lets go of go into ``detached``."""
        by_ref = self._identity.by_ref
        if isinstance(event, Inserted):
            state = by_ref.get(event.ref)
            if state is None:
                return
            # untracked, not detached for good: adding it again (a retry) inserts it
            self._identity.untrack(state)
            self._identity.forget_let_go(state.obj)
            state.status = Status.DETACHED
            detached[id(state.obj)] = state.obj
            values = dict(event.values)
            if state.table.primary_key.generated and event.key is None:
                values[state.table.key_column] = None
            state.set_values(values)
            state.parent_refs = None
            by_ref.pop(event.ref, None)
        elif isinstance(event, (Updated, SoftDeleted, Restored)):
            state = by_ref.get(event.ref)
            if state is not None:
                if state.table.key_column in event.new:  # the key a new object was given
                    self._identity.unindex_key(state, state.key)
                    self._identity.set_values(state, dict(event.old))
                    self._identity.index_key(state)
                else:
                    self._identity.set_values(state, dict(event.old))
                state.parent_refs = None
        elif isinstance(event, Deleted):
            state = by_ref.get(event.ref)
            if state is not None:
                self._revive(state, event.old)
        elif isinstance(event, Upserted):
            state = by_ref.get(event.ref)
            if state is None:
                return
            if event.old is None:
                self._identity.untrack(state)
                self._identity.forget_let_go(state.obj)
                state.status = Status.DETACHED
                detached[id(state.obj)] = state.obj
                values = dict(event.values)
                if state.table.primary_key.generated and event.key is None:
                    values[state.table.key_column] = None
                state.set_values({k: v for k, v in values.items()})
                by_ref.pop(event.ref, None)
            else:
                self._identity.set_values(state, dict(event.old))
        elif isinstance(event, BulkUpdated):
            for ref, old in event.old.items():
                state = by_ref.get(ref)
                if state is not None:
                    self._identity.set_values(state, dict(old))
        elif isinstance(event, BulkDeleted):
            for ref, old in event.old.items():
                state = by_ref.get(ref)
                if state is not None:
                    self._revive(state, old)

    def _revive(self, state: InstanceState, old: Mapping[str, Any]) -> None:
        self._identity.set_values(state, dict(old))
        state.status = Status.PERSISTENT
        self._identity.track(state)

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
            savepoint = _Savepoint(f"uow_sp_{self._savepoint_counter}", self._journal.mark, self._tx_writes)
            await self._set_savepoint(connection, savepoint.name)
            self._savepoints.append(savepoint)
            return savepoint

    async def _release_savepoint(self, savepoint: _Savepoint) -> None:
        with self._exclusive("savepoint release"):
            if savepoint not in self._savepoints:
                raise SessionStateError("this savepoint was already released or rolled back")
            await self._flush()
            assert self._connection is not None
            self._unreleased = None  # a flush's savepoint set since goes with it
            await self._connection.release_savepoint(savepoint.name)
            del self._savepoints[self._savepoints.index(savepoint) :]

    async def _rollback_savepoint(self, savepoint: _Savepoint) -> None:
        with self._exclusive("savepoint rollback"):
            if savepoint not in self._savepoints:
                raise SessionStateError("this savepoint was already released or rolled back")
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
                self._undo_to(savepoint.mark)
                self._tx_writes = savepoint.had_writes

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """A transaction block: commits on a clean exit, rolls back on an error.

        ``async with session.begin(): ...``. Raises :class:`SessionStateError` if
        the session already holds unsaved work (use :meth:`begin_nested`).
        """
        if self._journal.has_pending() or self._tx_writes:
            raise SessionStateError(
                "the session already has work in progress; commit or roll it back first, or use begin_nested()"
            )
        try:
            yield self
        except BaseException:
            await self.rollback()
            raise
        await self.commit()

    transaction = begin

    async def close(self, *, restore: bool = True) -> None:
        """Roll back any open transaction, release the connection and forget
        every tracked object. With ``restore`` the objects first get back the
        values they had at the last commit."""
        with self._exclusive("close"):
            await self._rollback(restore=restore)
            self._identity.clear()
            self._committed_gone.clear()

    # --- reads ------------------------------------------------------------------

    async def get(self, model: type[M], key: Any, *, with_deleted: bool = False) -> M | None:
        """The object with primary key ``key``, or ``None``.

        A tracked object is returned without a query. Soft-deleted rows are
        left out unless ``with_deleted``.
        """
        # written out, without helper calls: a get by key is the session's hottest read
        if self._busy is not None:
            self._check_idle()
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
        self._busy = "get"
        try:
            if self.autoflush and self._journal.has_pending():
                await self._flush()
            connection = self._connection if self._in_tx else None
            if connection is None:
                connection = await self._connection_for_work()
            rows = await connection.fetch(Select(table, Compare(table.key_column, "eq", key)))
        finally:
            self._busy = None
        if not rows:
            return None
        state = self._load_row(table, rows[0])
        if table.soft_delete_column is None:
            return state.obj  # type: ignore[no-any-return]
        return self._visible(state, with_deleted)  # type: ignore[no-any-return]

    def _visible(self, state: InstanceState, with_deleted: bool) -> Any:
        column = state.table.soft_delete_column
        if column is not None and not with_deleted and getattr(state.obj, column) is not None:
            return None
        return state.obj

    async def get_or_raise(self, model: type[M], key: Any, *, with_deleted: bool = False) -> M:
        """Like :meth:`get`, but raises :class:`NoResultFound` when there is no such row."""
        found = await self.get(model, key, with_deleted=with_deleted)
        if found is None:
            raise NoResultFound(f"no {model.__name__} with {table_info(model).key_column}={key!r}")
        return found

    get_one = get_or_raise

    def _check_key(self, table: TableInfo, key: Any) -> Any:
        python_type = table.primary_key.python_type
        if isinstance(python_type, type) and isinstance(key, python_type) and not isinstance(key, bool):
            return key
        try:
            return msgspec.convert(key, python_type, strict=False)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{key!r} is not a valid {table.model.__name__}.{table.key_column}: {exc}") from None

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

    async def refresh(self, obj: Any) -> None:
        """Reload a tracked object's columns from the database, discarding
        assignments not yet flushed. Raises :class:`NoResultFound` (and stops
        tracking it) when its row is gone."""
        with self._exclusive("refresh"):
            state = self._live_state(obj)
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

    def _unload_unflushed_relations(self, state: InstanceState) -> None:
        """Unload the relations of ``state.obj`` that say something its row
        does not: a many-to-one object without the key the foreign key holds
        (or an unlink), a list holding an object not tracked yet."""
        table = state.table
        obj = state.obj
        identity = self._identity
        for name, relation in table.relations.items():
            descriptor = getattr(table.model, name)
            value = descriptor.raw(obj)
            if value is None or value is NOT_LOADED:
                continue
            if relation.many:
                stale = isinstance(value, list) and any(identity.state_of(v) is None for v in value)
            else:
                key_column = table_info(relation.target).key_column
                stale = names_another_parent(obj, relation.local_column, value, key_column)  # type: ignore[arg-type]
            if stale:
                descriptor.set_loaded(obj, NOT_LOADED)

    def expire(self, obj: Any) -> None:
        """Let the next read of this row overwrite the object's values (reads
        never overwrite a tracked object otherwise). Nothing is loaded now."""
        self._check_idle()
        self._live_state(obj).expired = True

    def expire_all(self) -> None:
        """:meth:`expire` every tracked object."""
        self._check_idle()
        for state in self._identity.states():
            state.expired = True

    def expunge(self, obj: Any) -> None:
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
        if self._journal.has_pending() or any(
            state.status is _PERSISTENT and (state.current() != state.snapshot or self._relations_changed(state))
            for state in self._identity.states_to_compare()
        ):
            raise SessionStateError("the session has unflushed changes; flush or roll back first")
        for state in self._identity.states():
            self._identity.detach(state)

    async def merge(self, obj: M) -> M:
        """The tracked object for ``obj``'s key with ``obj``'s column values
        copied onto it (loaded if needed), and the parents its many-to-one
        relations hold assigned to it; ``obj`` itself is added when no such
        row exists. The changes are flushed later, like assignments."""
        table = self._table_of(obj)
        state = self._identity.state_of(obj)
        if state is not None and state.status in _LIVE:
            return obj
        key = table.key_of(obj)
        if key is None:
            self.add(obj)
            return obj
        target = await self.get(type(obj), key, with_deleted=True)
        if target is None:
            self.add(obj)
            return obj
        for name, value in zip(table.column_names, table.values_of(obj)):
            setattr(target, name, value)
        for name, relation in table.relations.items():
            if relation.many:
                continue
            parent = getattr(table.model, name).raw(obj)
            if parent is not NOT_LOADED:  # the copy's parent, as if assigned on the target (it wins over the key)
                setattr(target, name, None if parent is UNLINKED else parent)
        return target

    # --- immediate operations -----------------------------------------------------

    async def _done(self) -> None:
        if self.auto_commit:
            await self._commit()

    # An immediate operation is all or nothing: when it is refused, or its flush
    # fails, its own events are dropped and the objects it changed restored, so
    # a caller that handles the error can go on with the session (and an
    # auto_commit session's next operation does not fail again on them). Events
    # recorded before it stay pending, as after any failed flush. Assignments
    # made before it are recorded first, so that undoing its events from the
    # mark leaves them alone.

    def _immediate_start(self) -> int:
        """Record the assignments made so far; the journal mark where the
        immediate operation's own events begin."""
        self._collect_changes()
        return self._journal.mark

    @contextmanager
    def _undone_on_error(self, mark: int) -> Iterator[None]:
        """Undo the events recorded after ``mark`` when the block raises."""
        try:
            yield
        except BaseException:
            self._undo_recorded(mark)
            raise

    def _assign_now(
        self,
        state: InstanceState,
        values: Mapping[str, Any],
        mark: int,
        event_type: type[Updated | SoftDeleted | Restored] = Updated,
    ) -> None:
        """Assign ``values`` on the object and record them as one event; when
        that is refused, the events after ``mark`` are undone and the object
        is put back as it was."""
        try:
            for name, value in values.items():
                set_attribute(state.obj, name, value)
            self._record_changes(state, event_type)
        except BaseException:
            self._undo_recorded(mark)
            state.restore_snapshot()
            raise

    async def insert(self, obj: M) -> M:
        """Insert ``obj`` now (its generated key is set when this returns)."""
        with self._exclusive("insert"):
            await self._insert_now([obj])
        return obj

    async def insert_all(self, objects: Iterable[M]) -> list[M]:
        """Insert every object now, in as few statements as the planner allows;
        when one is refused, none is inserted."""
        listed = list(objects)
        with self._exclusive("insert_all"):
            await self._insert_now(listed)
        return listed

    async def _insert_now(self, objects: Sequence[Any]) -> None:
        mark = self._immediate_start()
        with self._undone_on_error(mark):
            for obj in objects:
                self._add(obj)
        await self._flush_recorded(mark)
        await self._done()

    async def update(self, obj: M, **values: Any) -> M:
        """Set ``values`` on a tracked object and write them now."""
        with self._exclusive("update"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            self._assign_now(state, self._checked_values(state.table, values), mark)
            await self._flush_recorded(mark)
            await self._done()
        return obj

    @staticmethod
    def _detached_values(table: TableInfo, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with a copy of each value that could be changed in place,
        for an event that must not share them with the caller."""
        mutable = table.mutable_columns
        if not mutable or mutable.isdisjoint(values):
            return values
        return {c: detached_value(v) if c in mutable else v for c, v in values.items()}

    def _checked_values(self, table: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if name not in table.column_index:
                raise ValidationError(
                    f"{table.model.__name__} has no column {name!r}; columns: {', '.join(table.column_names)}"
                )
            column = table.columns[table.column_index[name]]
            if value is None:
                if not column.nullable and not column.generated:
                    raise ValidationError(f"{table.model.__name__}.{name} cannot be None (NOT NULL)")
                checked[name] = None
                continue
            checked[name] = _converted(table, column, value)
        return checked

    def _convert_row(self, table: TableInfo, obj: Any, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """``values`` (``obj``'s) with each value whose type its column does
        not store as it is converted (an ``int`` for a ``float`` column, a
        string for an enum), also on ``obj``; :class:`ValidationError` for a
        value that does not fit. ``None`` is left to the NOT NULL checks."""
        converted = list(values)
        for index, value in enumerate(values):
            if value is None or type(value) in table.value_types[index]:
                continue
            column = table.columns[index]
            fitted = _converted(table, column, value)
            if fitted is not value:
                set_attribute(obj, column.name, fitted)
                converted[index] = fitted
        return tuple(converted)

    async def remove(self, obj: Any) -> None:
        """Delete a tracked object now."""
        with self._exclusive("remove"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            with self._undone_on_error(mark):
                self._delete(state)
            await self._flush_recorded(mark)
            await self._done()

    async def force_delete(self, obj: Any) -> None:
        """Delete a soft-deletable object for good, now."""
        await self.remove(obj)

    async def soft_delete(self, obj: Any) -> None:
        """Hide a row by setting its soft-delete column (``deleted_at``), now."""
        with self._exclusive("soft_delete"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            column = self._soft_delete_column(state.table)
            if getattr(obj, column) is None:
                self._assign_now(state, {column: _now()}, mark, SoftDeleted)
            await self._flush_recorded(mark)
            await self._done()

    async def restore(self, obj: Any) -> None:
        """Clear a row's soft-delete column, now."""
        with self._exclusive("restore"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            column = self._soft_delete_column(state.table)
            if getattr(obj, column) is not None:
                self._assign_now(state, {column: None}, mark, Restored)
            await self._flush_recorded(mark)
            await self._done()

    def _soft_delete_column(self, table: TableInfo) -> str:
        if table.soft_delete_column is None:
            raise ModelDefinitionError(
                f"{table.model.__name__} has no soft-delete column; add the SoftDelete mixin to the model"
            )
        return table.soft_delete_column

    async def upsert(
        self,
        obj: M,
        conflict_target: Sequence[str] | None = None,
        update_fields: Sequence[str] | None = None,
    ) -> M:
        """Insert ``obj``, or when a row with the same ``conflict_target`` values
        exists (the primary key by default) update ``update_fields`` of it (every
        other column by default; ``()`` to leave it as it is). Returns the tracked
        object for the resulting row, with the values the database holds."""
        return (await self.upsert_all([obj], conflict_target, update_fields))[0]

    async def upsert_all(
        self,
        objects: Iterable[M],
        conflict_target: Sequence[str] | None = None,
        update_fields: Sequence[str] | None = None,
    ) -> list[M]:
        """:meth:`upsert` every object, batched."""
        listed = list(objects)
        with self._exclusive("upsert"):
            await self._flush()
            # every object is checked before any is recorded: a refused one leaves nothing behind
            planned = [self._planned_upsert(obj, conflict_target, update_fields) for obj in listed]
            mark = self._journal.mark
            with self._undone_on_error(mark):
                events = self._record_upserts(listed, planned)
            outcome = await self._flush_recorded(mark)
            results: list[M] = []
            for event, obj in events:
                if event is None:
                    results.append(obj)
                    continue
                results.append(self._settle_upsert(event, obj, outcome))
            await self._done()
        return results

    def _record_upserts(
        self,
        objects: Sequence[Any],
        planned: Sequence[tuple[TableInfo, tuple[str, ...], dict[str, Any] | None, tuple[str, ...]]],
    ) -> list[tuple[Upserted | None, Any]]:
        """Record each planned upsert (a plain insert where it has no values to
        conflict on); ``(event or None, object)`` pairs, in order."""
        events: list[tuple[Upserted | None, Any]] = []
        for obj, (table, target, values, fields) in zip(objects, planned):
            if values is None:
                self._add(obj)  # no key to conflict on: a plain insert
                events.append((None, obj))
                continue
            tracked = self._tracked_match(table, target, values)
            ref = tracked.ref if tracked is not None else self._new_ref()
            event = Upserted(
                seq=self._journal.next_seq(),
                at=_now(),
                table=table.name,
                ref=ref,
                key=values.get(table.key_column),
                values=values,
                conflict_target=target,
                update_fields=fields,
                old=table.row_dict(tracked.snapshot) if tracked is not None else None,
            )
            self._record(event, *([tracked] if tracked is not None else []))
            events.append((event, obj))
        return events

    def _planned_upsert(
        self, obj: Any, conflict_target: Sequence[str] | None, update_fields: Sequence[str] | None
    ) -> tuple[TableInfo, tuple[str, ...], dict[str, Any] | None, tuple[str, ...]]:
        """``(table, conflict target, checked values, fields to update)`` of one
        upsert; values ``None`` when it is a plain insert (a key to generate is
        its conflict target). :class:`ValidationError` for a bad name or value."""
        table = self._table_of(obj)
        self._refuse_tracked_elsewhere(obj)
        target = tuple(conflict_target or (table.key_column,))
        for column in target:
            if column not in table.column_index:
                raise ValidationError(f"{table.model.__name__} has no column {column!r} to conflict on")
        values = table.row_dict(table.values_of(obj))
        if table.primary_key.generated and values[table.key_column] is None:
            if table.key_column in target:
                return table, target, None, ()  # a plain insert: add() links the parents
            del values[table.key_column]
        if table.parent_relations:
            self._fill_keys_of_parents(table, obj, values)
        values = self._detached_values(table, self._checked_values(table, values))
        version = table.version_column
        if update_fields is None:
            # the version is never copied from the object: the database bumps it on update
            fields = tuple(c for c in values if c not in target and c != table.key_column and c != version)
        else:
            fields = tuple(update_fields)
        for column in fields:
            if column not in table.column_index:
                raise ValidationError(f"{table.model.__name__} has no column {column!r} to update")
            if column == version:
                raise ValidationError(
                    f"{table.model.__name__}.{column} is the version, which every update bumps: "
                    "leave it out of update_fields"
                )
        return table, target, values, fields

    def _fill_keys_of_parents(self, table: TableInfo, obj: Any, values: dict[str, Any]) -> None:
        """Set in ``values`` (the columns an upsert writes) the key of the
        parent each many-to-one relation of ``obj`` holds, as a flush would:
        an upsert writes a row, not the objects around it, so a parent that
        has no key yet is refused (add or insert it first), as is a deleted one."""
        for column, read_parent in table.parent_relations:
            parent = read_parent(obj)
            if parent is None or parent is NOT_LOADED or not (parent is UNLINKED or is_model(parent)):
                continue
            if parent is UNLINKED:
                values[column] = None
                continue
            state = self._identity.state_of(parent)
            if (state is not None and state.status not in _LIVE) or self._identity.was_deleted(parent):
                self._refuse_deleted_parent(table, column, parent)
            key = state.key if state is not None else self._table_of(parent).key_of(parent)
            if key is None:
                name = next(n for n, r in table.relations.items() if not r.many and r.local_column == column)
                raise SessionStateError(
                    f"{table.model.__name__}.{name} holds a new {type(parent).__name__}: an upsert writes "
                    "one row, not the objects its relations hold; add or insert the parent first"
                )
            values[column] = key

    def _tracked_match(
        self, table: TableInfo, target: tuple[str, ...], values: Mapping[str, Any]
    ) -> InstanceState | None:
        if target == (table.key_column,):
            state = self._identity.get(table, values.get(table.key_column))
            return state if state is not None and state.status in _LIVE else None
        # through a lookup the identity map keeps by these columns: a loop of
        # upserts on a unique column finds each match without walking the table's objects
        indexes = tuple(table.column_index[c] for c in target)
        found = self._identity.find_by_columns(table, indexes, tuple(values.get(c) for c in target))
        live = [state for state in found if state.status in _LIVE]
        if not live:
            return None
        return min(live, key=lambda state: (state.key is None, state.ref))  # a stored row's object first

    def _settle_upsert(self, event: Upserted, obj: Any, outcome: _FlushOutcome) -> Any:
        table = self._tables[event.table]
        row = outcome.upserted_rows.get(event.ref)
        state = self._identity.by_ref.get(event.ref)
        if row is None:
            return obj
        if event.key is None:  # the journal learns the key of the row it landed on, as for an insert
            self._journal.generated_keys[event.ref] = row[table.key_index]
        if state is not None and state.status in _LIVE:
            self._set_values_following(state, table.row_dict(tuple(row)))
            return state.obj
        key = row[table.key_index]
        existing = self._identity.get(table, key)
        if existing is not None and existing.status in _LIVE:
            self._set_values_following(existing, table.row_dict(tuple(row)))
            return existing.obj
        new_state = InstanceState(obj, event.ref, table, tuple(row), Status.PERSISTENT)
        new_state.set_values(table.row_dict(tuple(row)))
        self._identity.track(new_state)
        self._identity.remember(new_state)  # undoing the upsert finds it by ref
        return obj

    async def save(self, obj: M) -> M:
        """Insert or update ``obj`` by primary key (upsert of every column)."""
        return await self.upsert(obj)

    async def save_all(self, objects: Iterable[M]) -> list[M]:
        """:meth:`save` every object."""
        return await self.upsert_all(objects)

    async def bulk_insert(self, model: type[M], rows: Iterable[Mapping[str, Any] | M]) -> int:
        """Insert many rows without tracking objects for them; returns the count.

        Rows are mappings of column to value or model instances. Each row is
        journaled as an insert, so rollback and audit still see it.
        """
        table = self._table(model)
        with self._exclusive("bulk_insert"):
            checked: list[tuple[Any, ...]] = []  # every row is checked before any is recorded
            for row in rows:
                if isinstance(row, Mapping):
                    unknown = set(row) - set(table.column_index)
                    if unknown:
                        raise ValidationError(f"{model.__name__} has no column(s) {', '.join(sorted(unknown))}")
                    try:
                        instance = msgspec.convert(dict(row), model, strict=True)
                    except msgspec.ValidationError as exc:
                        raise ValidationError(f"{model.__name__}: {exc} (got {dict(row)!r})") from None
                elif type(row) is model:
                    instance = row
                else:
                    raise ValidationError(
                        f"bulk_insert({model.__name__}, ...) takes mappings or {model.__name__} objects, got {row!r}"
                    )
                values = table.values_of(instance)
                if not table.typed_as_stored(values):
                    values = self._convert_row(table, instance, values)
                self._validate_new_row(table, values)
                checked.append(table.detached(values) if table.mutable_indexes else values)
            mark = self._immediate_start()
            at = _now()
            for values in checked:
                self._record(
                    Inserted(
                        seq=self._journal.next_seq(),
                        at=at,
                        table=table.name,
                        ref=self._new_ref(),
                        key=values[table.key_index],
                        values=table.row_dict(values),
                    )
                )
            count = len(checked)
            await self._flush_recorded(mark)
            await self._done()
        return count

    async def bulk_update(self, model: type[Any], values: Mapping[str, Any], **filters: Any) -> int:
        """``UPDATE model SET values WHERE column = value AND ...``; returns the
        number of rows changed. Tracked objects that match are updated in place."""
        table = self._table(model)
        self._checked_values(table, values)
        return await self._bulk_update_where(table, values, self._filters(table, filters))

    async def _bulk_update_where(self, table: TableInfo, values: Mapping[str, Any], where: Condition | None) -> int:
        """``UPDATE table SET values WHERE where``, journaled as one BulkUpdated;
        the tracked objects ``where`` matches (evaluated in Python) change in place."""
        checked = self._detached_values(table, self._checked_values(table, values))
        if table.key_column in checked:
            raise ValidationError(f"bulk_update cannot change the primary key {table.key_column!r}")
        with self._exclusive("bulk_update"):
            await self._flush()
            matched = self._matching(table, where)
            self._note_untracked_write()
            # the database bumps every matched row's version too, as an update does
            bumped = table.version_column if table.version_column not in checked else None
            changed = [*checked, bumped] if bumped is not None else list(checked)
            old: dict[int, dict[str, Any]] = {}
            for state in matched:
                old[state.ref] = {c: state.snapshot[table.column_index[c]] for c in changed}
            event = BulkUpdated(
                seq=self._journal.next_seq(),
                at=_now(),
                table=table.name,
                where=where,  # type: ignore[arg-type]
                values=checked,
                old=old,
            )
            self._record(event, *matched)
            for state in matched:
                values = dict(checked)
                if bumped is not None:
                    values[bumped] = (old[state.ref][bumped] or 0) + 1
                self._set_values_following(state, values)
            outcome = await self._flush_recorded(self._journal.mark - 1)
            await self._done()
        return outcome.rowcounts.get(event.seq, 0)

    async def bulk_delete(self, model: type[Any], **filters: Any) -> int:
        """``DELETE FROM model WHERE column = value AND ...``; returns the number
        of rows deleted. Tracked objects that match stop being tracked."""
        table = self._table(model)
        return await self._bulk_delete_where(table, self._filters(table, filters))

    async def _bulk_delete_where(self, table: TableInfo, where: Condition | None) -> int:
        """``DELETE FROM table WHERE where``, journaled as one BulkDeleted; the
        tracked objects ``where`` matches (evaluated in Python) stop being tracked."""
        with self._exclusive("bulk_delete"):
            await self._flush()
            mark = self._journal.mark
            self._note_untracked_write()
            matched = self._matching(table, where)
            deleted_keys = {state.key for state in matched}
            if self._has_dependents(table):
                # untracked rows may go too: learn their keys to update tracked children
                connection = await self._connection_for_work()
                deleted_keys.update(row[table.key_index] for row in await connection.fetch(Select(table, where)))
            for state in matched:
                state.status = Status.GONE
                self._identity.unindex_key(state, state.key)
            self._gone.extend(matched)
            self._cascade({table.name: deleted_keys}, {})
            self._collect_changes()  # the set-null assignments, before the bulk event
            event = BulkDeleted(
                seq=self._journal.next_seq(),
                at=_now(),
                table=table.name,
                where=where,  # type: ignore[arg-type]
                old={s.ref: table.row_dict(s.snapshot) for s in matched},
            )
            self._record(event, *matched)
            outcome = await self._flush_recorded(mark)
            await self._done()
        return outcome.rowcounts.get(event.seq, 0)

    async def _flush_recorded(self, mark: int) -> _FlushOutcome:
        """Flush what an immediate operation recorded after ``mark`` (and what
        was pending before it); if it fails, the operation's events are dropped
        and the objects they changed restored."""
        try:
            return await self._flush(scan=False)  # the operation recorded every assignment
        except BaseException:
            if self._journal.flushed_mark <= mark:
                self._undo_to(mark)
            raise

    def _has_dependents(self, table: TableInfo) -> bool:
        """Whether a tracked object may be a child the database changes when a
        row of ``table`` is deleted."""
        child_tables = {
            child.name
            for child in self._tables.values()
            if any(
                fk.target_table == table.name and fk.on_delete in ("cascade", "set null") for fk in child.foreign_keys
            )
        }
        return bool(child_tables) and any(
            state.table.name in child_tables and state.status in _LIVE for state in self._identity.states()
        )

    def _filters(self, table: TableInfo, filters: Mapping[str, Any]) -> Condition | None:
        if not filters:
            return None
        for name in filters:
            if name not in table.column_index:
                raise ValidationError(
                    f"{table.model.__name__} has no column {name!r} to filter on; "
                    f"columns: {', '.join(table.column_names)}"
                )
        checked = {
            name: (None if v is None else self._checked_values(table, {name: v})[name]) for name, v in filters.items()
        }
        return equals_all(checked)

    def _matching(self, table: TableInfo, where: Condition | None) -> list[InstanceState]:
        return [
            state
            for state in self._identity.keyed_states(table)  # a stored row's object has its key
            if state.status is Status.PERSISTENT and matches(where, table.row_dict(state.snapshot))
        ]

    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL in the session's transaction with values as parameters (the
        adapter's placeholder style: ``?`` for SQLite, ``$1`` for PostgreSQL).
        Pending changes are flushed first."""
        with self._exclusive("execute_raw"):
            if self.autoflush:
                await self._flush()
            connection = await self._connection_for_work()
            self._note_untracked_write()
            return await connection.execute_raw(sql, params)


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
        """Set the savepoint (flushing pending changes first)."""
        if self._savepoint is None:
            self._savepoint = await self._session._begin_savepoint()
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    async def commit(self) -> None:
        """Release the savepoint, keeping its changes in the transaction."""
        assert self._savepoint is not None, "the savepoint was not started"
        await self._session._release_savepoint(self._savepoint)

    async def rollback(self) -> None:
        """Undo everything since the savepoint, in the database and in the objects."""
        assert self._savepoint is not None, "the savepoint was not started"
        await self._session._rollback_savepoint(self._savepoint)

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


@asynccontextmanager
async def session_context(engine: Engine, **options: Any) -> AsyncIterator[AsyncSession]:
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

    def __init__(self, engine: Engine, **options: Any):
        self.engine = engine
        self.options = options

    def __call__(self, **overrides: Any) -> AsyncSession:
        return AsyncSession(self.engine, **{**self.options, **overrides})


__all__ = [
    "AsyncSession",
    "SavepointTransaction",
    "current_session",
    "require_current_session",
    "session_context",
    "sessionmaker",
]
