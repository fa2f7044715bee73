"""The session's immediate operations: ``insert``, ``update``, ``remove``,
``soft_delete``, ``restore``, ``upsert``, ``save``, the ``bulk_*`` calls and
``execute_raw``, each written (and with ``auto_commit`` committed, outside
``begin()`` blocks, savepoints and before-commit hooks) before it returns.
:class:`~uow.session.AsyncSession` inherits them from :class:`ImmediateMixin`.

An immediate operation is all or nothing: when it is refused, or its flush
fails, its own events are dropped and the objects it changed restored, so a
caller that handles the error can go on with the session (and an
``auto_commit`` session's next operation does not fail again on them). Events
recorded before it stay pending, as after any failed flush (with
``auto_commit``, a commit refused after the operation rolls the transaction
back, with everything recorded before it). The exception is an upsert refused
with ``ConcurrencyError`` after its write: that write stays in the
transaction, to be rolled back. Assignments made
before it are recorded first, so that undoing its events from the mark leaves
them alone.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from uow.adapter import Connection
from uow.arithmetic import INT64, OPERATORS, ColumnMath, has_math
from uow.assignments import set_attribute
from uow.conditions import Condition, datetime_operands, equals_all, matches
from uow.criteria import text_is_storable
from uow.errors import ConcurrencyError, ModelDefinitionError, QueryError, SessionStateError, ValidationError
from uow.events import BulkDeleted, BulkUpdated, Deleted, Inserted, Restored, SoftDeleted, Updated, Upserted
from uow.identity import LIVE, IdentityMap, InstanceState, Status
from uow.journal import Journal
from uow.model import NOT_LOADED, UNLINKED, Model, TableInfo, converted_value, detached_value, is_model
from uow.statements import Select

if TYPE_CHECKING:
    from uow.session import FlushOutcome

M = TypeVar("M", bound=Model)


class ImmediateMixin:
    """Immediate operations for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        auto_commit: bool
        autoflush: bool
        _hook_task: int | None
        _in_begin_block: bool
        _savepoints: list[Any]
        _identity: IdentityMap
        _journal: Journal
        _tables: dict[str, TableInfo]
        _gone: list[InstanceState]
        _updating: dict[int, Mapping[str, Any]]
        _transactions: int
        _raw_sql_in: int

        def _exclusive(self, operation: str) -> AbstractContextManager[None]: ...
        async def _commit(self) -> None: ...
        async def _rollback(self, *, restore: bool = True) -> None: ...
        async def _flush(self, *, scan: bool = True, done_by_database: Collection[int] = ()) -> FlushOutcome: ...
        async def _connection_for_work(self) -> Connection: ...
        def _collect_changes(self, *, scan: bool = True) -> None: ...
        def _undo_recorded(self, mark: int, touched: Iterable[InstanceState] = ()) -> None: ...
        def _undo_to(self, mark: int, lists_seen: int | None = None) -> None: ...
        def _record_changes(self, state: InstanceState, event_type: type[Any] = ...) -> None: ...
        def _record(self, event: Any, *about: InstanceState) -> None: ...
        def _note_untracked_write(self) -> None: ...
        def _live_state(self, obj: Any) -> InstanceState: ...
        def _table(self, model: type[Any]) -> TableInfo: ...
        def _table_of(self, obj: Any) -> TableInfo: ...
        def _add(self, obj: Any) -> InstanceState: ...
        def _delete(self, state: InstanceState) -> None: ...
        def _convert_row(self, table: TableInfo, obj: Any, values: tuple[Any, ...]) -> tuple[Any, ...]: ...
        def _validate_new_row(self, table: TableInfo, values: tuple[Any, ...]) -> None: ...
        def _refuse_tracked_elsewhere(self, obj: Any) -> None: ...
        def _refuse_deleted_parent(self, table: TableInfo, column: str, parent: Any) -> None: ...
        def _set_values_following(self, state: InstanceState, values: dict[str, Any]) -> None: ...
        def _cascade(self, deleted_keys: dict[str, set[Any]], deleted_refs: dict[str, set[int]]) -> None: ...
        def _has_dependents(self, table: TableInfo) -> bool: ...
        def _new_ref(self) -> int: ...

    def _commits_each_operation(self) -> bool:
        """``auto_commit``, outside before-commit hooks (their writes commit with
        the transaction), ``begin()`` blocks (which commit at their end) and
        savepoints (a commit would end them)."""
        return self.auto_commit and self._hook_task is None and not self._in_begin_block and not self._savepoints

    async def _done(self) -> None:
        if self._commits_each_operation():
            await self._flush()  # a refused flush leaves the session as any refused flush does
            try:
                await self._commit()
            except BaseException:
                # all or nothing: the commit was refused (by a before-commit hook or
                # the database), so the operation goes back with its transaction
                await self._rollback()
                raise

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
            table = self._live_state(obj).table
            checked = self._checked_values(table, values)
            # recording what is pending first must not delete, as an orphan taken out
            # of a list, an object this update moves to another owner by its key
            self._updating = {id(obj): checked}
            try:
                mark = self._immediate_start()
            finally:
                self._updating = {}
            state = self._live_state(obj)
            # the object gets its own copy of a JSON value, down to its nested parts: the
            # caller's value (which conversion copies one level deep at most) stays theirs
            self._assign_now(state, self._detached_values(table, checked), mark)
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
            checked[name] = converted_value(table, column, value)
        return checked

    async def remove(self, obj: Model) -> None:
        """Delete a tracked object now."""
        with self._exclusive("remove"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            with self._undone_on_error(mark):
                self._delete(state)
            await self._flush_recorded(mark)
            await self._done()

    async def force_delete(self, obj: Model) -> None:
        """Delete a soft-deletable object for good, now."""
        await self.remove(obj)

    async def soft_delete(self, obj: Model) -> None:
        """Hide a row by setting its soft-delete column (``deleted_at``), now."""
        with self._exclusive("soft_delete"):
            mark = self._immediate_start()
            state = self._live_state(obj)
            column = self._soft_delete_column(state.table)
            if getattr(obj, column) is None:
                self._assign_now(state, {column: dt.datetime.now(dt.UTC)}, mark, SoftDeleted)
            await self._flush_recorded(mark)
            await self._done()

    async def restore(self, obj: Model) -> None:
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
        conflict_target: str | Sequence[str] | None = None,
        update_fields: str | Sequence[str] | None = None,
    ) -> M:
        """Insert ``obj``, or when a row with the same ``conflict_target`` values
        exists (the primary key by default) update ``update_fields`` of it (every
        other column by default; ``()`` to leave it as it is). Returns the tracked
        object for the resulting row, with the values the database holds."""
        return (await self.upsert_all([obj], conflict_target, update_fields))[0]

    async def upsert_all(
        self,
        objects: Iterable[M],
        conflict_target: str | Sequence[str] | None = None,
        update_fields: str | Sequence[str] | None = None,
    ) -> list[M]:
        """:meth:`upsert` every object, batched."""
        listed = list(objects)
        with self._exclusive("upsert"):
            # checked before the flush of what was pending, so that a refused upsert
            # writes nothing, and after it, once parents added since have their keys
            for obj in listed:
                self._planned_upsert(obj, conflict_target, update_fields, ahead=True)
            await self._flush()
            # every object is checked before any is recorded: a refused one leaves nothing behind
            planned = [self._planned_upsert(obj, conflict_target, update_fields) for obj in listed]
            mark = self._journal.mark
            with self._undone_on_error(mark):
                events = self._record_upserts(listed, planned)
            outcome = await self._flush_recorded(mark)
            results: list[M] = []
            try:
                for event, obj in events:
                    results.append(obj if event is None else self._settle_upsert(event, obj, outcome))
            except ConcurrencyError:
                if self._commits_each_operation():  # its write is flushed: it must not commit with a later one
                    await self._rollback()
                raise
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
                at=dt.datetime.now(dt.UTC),
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
        self,
        obj: Any,
        conflict_target: str | Sequence[str] | None,
        update_fields: str | Sequence[str] | None,
        *,
        ahead: bool = False,
    ) -> tuple[TableInfo, tuple[str, ...], dict[str, Any] | None, tuple[str, ...]]:
        """``(table, conflict target, checked values, fields to update)`` of one
        upsert; values ``None`` when it is a plain insert (a key to generate is
        its conflict target). :class:`ValidationError` for a bad name or value.
        ``ahead``: checked before the pending changes are flushed, so a parent
        the session added and has not inserted yet is let through (it has a
        key by the time the upsert is planned for good)."""
        table = self._table_of(obj)
        self._refuse_tracked_elsewhere(obj)
        # one column may be named alone: "sku" is ("sku",), not the letters of it
        if isinstance(conflict_target, str):
            conflict_target = (conflict_target,)
        if isinstance(update_fields, str):
            update_fields = (update_fields,)
        target = tuple(conflict_target or (table.key_column,))
        for column in target:
            if column not in table.column_index:
                raise ValidationError(f"{table.model.__name__} has no column {column!r} to conflict on")
            if table.columns[table.column_index[column]].kind == "json":
                raise ValidationError(
                    f"{table.model.__name__}.{column} is a JSON column: databases compare JSON values each "
                    "their own way, so an upsert cannot conflict on it"
                )
        if len(target) == 1 and target[0] not in table.unique_columns:
            # several columns may match a unique index made outside the model: the database decides
            raise ValidationError(
                f"{table.model.__name__}.{target[0]} is neither the primary key nor Unique(): "
                "an upsert conflicts on a column whose values are unique"
            )
        values = table.row_dict(table.values_of(obj))
        if table.primary_key.generated and values[table.key_column] is None:
            if table.key_column in target:
                if ahead:  # the values add() will check, those it can check before the parents are linked
                    self._checked_values(table, {name: value for name, value in values.items() if value is not None})
                return table, target, None, ()  # a plain insert: add() links the parents
            del values[table.key_column]
        if table.parent_relations:
            self._fill_keys_of_parents(table, obj, values, ahead)
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
            if column == table.key_column:
                raise ValidationError(
                    f"{table.model.__name__}.{column} is the primary key, which a stored row keeps: "
                    "leave it out of update_fields"
                )
            if column == version:
                raise ValidationError(
                    f"{table.model.__name__}.{column} is the version, which every update bumps: "
                    "leave it out of update_fields"
                )
        return table, target, values, fields

    def _fill_keys_of_parents(self, table: TableInfo, obj: Any, values: dict[str, Any], ahead: bool = False) -> None:
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
            if (state is not None and state.status not in LIVE) or self._identity.was_deleted(parent):
                self._refuse_deleted_parent(table, column, parent)
            key = state.key if state is not None else self._table_of(parent).key_of(parent)
            if key is None and ahead and state is not None and state.status is Status.PENDING:
                continue  # its insert is pending: the flush before the upsert gives it a key
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
            return state if state is not None and state.status in LIVE else None
        wanted = tuple(values.get(c) for c in target)
        if None in wanted:  # as in SQL, a NULL in the conflict target conflicts with no row
            return None
        # through a lookup the identity map keeps by these columns: a loop of
        # upserts on a unique column finds each match without walking the table's objects
        indexes = tuple(table.column_index[c] for c in target)
        found = self._identity.find_by_columns(table, indexes, wanted)
        live = [state for state in found if state.status in LIVE]
        if not live:
            return None
        return min(live, key=lambda state: (state.key is None, state.ref))  # a stored row's object first

    def _settle_upsert(self, event: Upserted, obj: Any, outcome: FlushOutcome) -> Any:
        """The object of the row an upsert left: the tracked one it matched,
        one the session tracks by the key it landed on, or ``obj`` tracked
        now; each takes the row's values."""
        table = self._tables[event.table]
        row = outcome.upserted_rows.get(event.ref)
        if row is None:
            return obj
        landed = row[table.key_index]
        state = self._identity.by_ref.get(event.ref)
        matched = state if state is not None and state.status in LIVE else None
        if matched is not None and matched.key not in (None, landed):
            raise ConcurrencyError(
                f"the upsert matched the tracked {table.model.__name__} {table.key_column}={matched.key!r} by "
                f"{', '.join(event.conflict_target)}, but landed on the row {table.key_column}={landed!r}: another "
                "transaction changed one of them since this session read it; roll back and retry",
                table=table.name,
                keys=(matched.key, landed),
            )
        by_key = self._identity.get(table, landed) if matched is None else None
        if by_key is not None and by_key.status not in LIVE:
            by_key = None
        # a tracked row the upsert did not match by its values changed since it was read, unless
        # the session waits for its values anyway (expired) or an upsert of this call put them there
        if by_key is not None and not by_key.expired and by_key.ref not in outcome.upserted_rows:
            raise ConcurrencyError(
                f"the upsert landed by {', '.join(event.conflict_target)} on the row "
                f"{table.key_column}={landed!r}, which this session tracks with other values: another "
                "transaction changed it since this session read it; roll back and retry",
                table=table.name,
                keys=(landed,),
            )
        # learnt only once not refused: a refused upsert's write goes with a rollback
        values = table.row_dict(tuple(row))
        self._journal.upserted_rows[event.seq] = dict(values)  # its own: the objects take these values
        if event.key is None:  # the key of the row it landed on, as for an insert
            self._journal.generated_keys[event.ref] = landed
        elif event.key != landed:  # a conflict on another unique column chose a row with another key
            self._journal.written_keys[event.seq] = landed
        if matched is not None:
            self._set_values_following(matched, values)
            return matched.obj
        if by_key is not None:
            expired = by_key.expired
            self._set_values_following(by_key, values)
            # this upsert's event holds none of its earlier values, so a rollback cannot restore
            # them: an expired object stays expired, for the next read to give it the row's
            by_key.expired = expired
            return by_key.obj
        new_state = InstanceState(obj, event.ref, table, tuple(row), Status.PERSISTENT)
        new_state.set_values(values)
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
                    try:  # built as the constructor builds it; the values are checked just below
                        instance = model(**row)
                    except TypeError as exc:  # a required column missing
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
            at = dt.datetime.now(dt.UTC)
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
        return await self._bulk_update_where(table, values, self._filters(table, filters))

    def _checked_update_values(self, table: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values of a bulk update, checked as any written value, or as
        :class:`~uow.arithmetic.ColumnMath`; in the order given."""
        math = {column: value for column, value in values.items() if isinstance(value, ColumnMath)}
        plain = {column: value for column, value in values.items() if column not in math}
        checked = self._detached_values(table, self._checked_values(table, plain))
        for column, value in math.items():
            checked[column] = _checked_math(table, column, value)
        if not checked:
            raise ValidationError(f"a bulk update of {table.model.__name__} needs at least one column to set")
        if table.key_column in checked:
            raise ValidationError(f"bulk_update cannot change the primary key {table.key_column!r}")
        return {column: checked[column] for column in values}

    async def _bulk_update_where(self, table: TableInfo, values: Mapping[str, Any], where: Condition | None) -> int:
        """``UPDATE table SET values WHERE where``, journaled as one BulkUpdated;
        the tracked objects ``where`` matches (evaluated in Python) change in place.
        Values computed from the row (``Product.stock - 1``) are the ones the
        database computed, which it returns: the matched objects get them; an
        object the database updated and the session did not match (another
        transaction changed its row), or the other way round, is expired, so
        that the next read brings the database's values."""
        checked = self._checked_update_values(table, values)
        computes = has_math(checked)
        with self._exclusive("bulk_update"):
            self._refuse_mixed_datetimes(table, where)
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
                at=dt.datetime.now(dt.UTC),
                table=table.name,
                where=where,  # type: ignore[arg-type]
                values=checked,
                old=old,
            )
            self._record(event, *matched)
            plain = {c: v for c, v in checked.items() if type(v) is not ColumnMath} if computes else checked
            for state in matched:
                values = dict(plain)
                if bumped is not None:
                    values[bumped] = (old[state.ref][bumped] or 0) + 1
                self._set_values_following(state, values)
            outcome = await self._flush_recorded(self._journal.mark - 1)
            if computes:
                self._take_updated_rows(table, matched, changed, outcome.updated_rows.get(event.seq, []))
            await self._done()
        return outcome.rowcounts.get(event.seq, 0)

    def _take_updated_rows(
        self, table: TableInfo, matched: list[InstanceState], changed: list[str], rows: list[tuple[Any, ...]]
    ) -> None:
        """Give the matched objects the values a computed bulk update left in
        their rows, as the database returned them; expire the objects whose
        rows the session and the database did not both match."""
        by_key = {row[table.key_index]: row for row in rows}
        for state in matched:
            row = by_key.pop(state.key, None)
            if row is None:
                state.expired = True
                continue
            self._set_values_following(state, {c: row[table.column_index[c]] for c in changed})
        for key in by_key:  # changed since this session read them: not restorable from the event
            unmatched = self._identity.get(table, key)
            if unmatched is not None:
                unmatched.expired = True

    async def bulk_delete(self, model: type[Any], **filters: Any) -> int:
        """``DELETE FROM model WHERE column = value AND ...``; returns the number
        of rows deleted. Tracked objects that match stop being tracked."""
        table = self._table(model)
        return await self._bulk_delete_where(table, self._filters(table, filters))

    async def _bulk_delete_where(self, table: TableInfo, where: Condition | None) -> int:
        """``DELETE FROM table WHERE where``, journaled as one BulkDeleted; the
        tracked objects ``where`` matches (evaluated in Python) stop being tracked."""
        with self._exclusive("bulk_delete"):
            self._refuse_mixed_datetimes(table, where)
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
            # the database deletes these children itself when the statement deletes their parents:
            # written first, a child's delete could cascade to a row the statement is to count, and
            # in a cycle of rows to rows it then finds gone
            cascaded = {e.seq for e in self._journal.pending if type(e) is Deleted}
            self._collect_changes()  # the set-null assignments, before the bulk event
            event = BulkDeleted(
                seq=self._journal.next_seq(),
                at=dt.datetime.now(dt.UTC),
                table=table.name,
                where=where,  # type: ignore[arg-type]
                old={s.ref: table.row_dict(s.snapshot) for s in matched},
            )
            self._record(event, *matched)
            outcome = await self._flush_recorded(mark, done_by_database=cascaded)
            await self._done()
        return outcome.rowcounts.get(event.seq, 0)

    async def _flush_recorded(self, mark: int, done_by_database: Collection[int] = ()) -> FlushOutcome:
        """Flush what an immediate operation recorded after ``mark`` (and what
        was pending before it); if it fails, the operation's events are dropped
        and the objects they changed restored. ``done_by_database``: see ``_flush``."""
        try:
            # the operation recorded every assignment
            return await self._flush(scan=False, done_by_database=done_by_database)
        except BaseException:
            if self._journal.flushed_mark <= mark:
                self._undo_to(mark)
            raise

    def _filters(self, table: TableInfo, filters: Mapping[str, Any]) -> Condition | None:
        if not filters:
            return None
        for name, value in filters.items():
            if name not in table.column_index:
                raise ValidationError(
                    f"{table.model.__name__} has no column {name!r} to filter on; "
                    f"columns: {', '.join(table.column_names)}"
                )
            if value is not None and table.columns[table.column_index[name]].kind == "json":
                raise ValidationError(
                    f"{table.model.__name__}.{name} is a JSON column: databases compare JSON values each "
                    "their own way, so it filters only on None (IS NULL)"
                )
        checked = {
            name: (None if v is None else self._checked_values(table, {name: v})[name]) for name, v in filters.items()
        }
        for name, value in checked.items():  # no row holds these: refused alike on every adapter
            if type(value) is int and value not in INT64:
                raise ValidationError(f"{table.model.__name__}.{name}: {value!r} is beyond 64-bit integers")
            if type(value) is str and not text_is_storable(value):
                raise ValidationError(f"{table.model.__name__}.{name}: {value!r} holds a lone surrogate")
        return equals_all(checked)

    def _matching(self, table: TableInfo, where: Condition | None) -> list[InstanceState]:
        return [
            state
            for state in self._identity.keyed_states(table)  # a stored row's object has its key
            if state.status is Status.PERSISTENT and matches(where, table.row_dict(state.snapshot))
        ]

    def _refuse_mixed_datetimes(self, table: TableInfo, where: Condition | None) -> None:
        """Refuse, before a bulk change flushes or writes anything, a condition
        comparing a datetime (or time) column of tracked objects with a value
        that is aware where theirs is naive, or the other way round: PostgreSQL
        takes naive ones as UTC, SQLite compares their text, and Python cannot
        order them, so the objects the session would change could differ from
        the rows the database changes."""
        operands = [] if where is None else datetime_operands(where)
        if not operands:
            return
        states = [state for state in self._identity.states() if state.table is table and state.status in LIVE]
        for column, aware in operands:
            index = table.column_index[column]
            for state in states:
                value = table.values_of(state.obj)[index]  # what the flush before the change writes
                if isinstance(value, (dt.datetime, dt.time)) and (value.tzinfo is not None) != aware:
                    kind = type(value).__name__
                    raise QueryError(
                        f"{table.model.__name__}.{column}: the condition compares {'an aware' if aware else 'a naive'} "
                        f"{kind} with the {'naive' if aware else 'aware'} {value!r} of a tracked "
                        f"{table.model.__name__}, which databases compare each their own way; keep the column's "
                        f"values all aware or all naive"
                    )

    async def execute_raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL in the session's transaction with values as parameters (the
        adapter's placeholder style: ``?`` for SQLite, ``$1`` for PostgreSQL).
        Pending changes are flushed first."""
        with self._exclusive("execute_raw"):
            if self.autoflush:
                await self._flush()
            connection = await self._connection_for_work()
            self._note_untracked_write()
            # it may write: a later flush that fails in this transaction must undo only itself
            self._raw_sql_in = self._transactions
            return await connection.execute_raw(sql, params)


def _checked_math(table: TableInfo, column: str, value: ColumnMath) -> ColumnMath:
    """``value``, set into ``column``, with its operand as the column's type;
    :class:`ValidationError` unless both columns hold numbers of one type."""
    model = table.model.__name__
    if column not in table.column_index:
        raise ValidationError(f"{model} has no column {column!r}; columns: {', '.join(table.column_names)}")
    target = table.columns[table.column_index[column]]
    if value.table not in (None, table.name):
        raise QueryError(f"{model}.{column} = {value!r}: {value.column} is a column of {value.table}")
    if value.op not in OPERATORS:
        raise QueryError(f"{model}.{column} = {value!r}: the operator is one of {', '.join(sorted(OPERATORS))}")
    if value.column not in table.column_index:
        raise ValidationError(f"{model} has no column {value.column!r} to compute {column} from")
    source = table.columns[table.column_index[value.column]]
    if target.python_type not in (int, float, decimal.Decimal) or target.kind == "json":
        raise ValidationError(f"{model}.{column} does not hold numbers: it cannot be set to {value!r}")
    if source.python_type is not target.python_type:
        raise ValidationError(f"{model}.{column} is set from {value.column}, a column of another type ({value!r})")
    if value.operand is None:
        raise ValidationError(f"{model}.{column} = {value!r}: the operand is a number, not None")
    return ColumnMath(value.column, value.op, converted_value(table, target, value.operand))


__all__ = ["ImmediateMixin"]
