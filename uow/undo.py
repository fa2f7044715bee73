"""Undo: the session's journal replayed backwards onto its tracked objects.
:class:`~uow.session.AsyncSession` inherits this from :class:`UndoMixin`.

A rollback, a savepoint's rollback and a refused call all end here: the
journal is truncated at a mark and each removed event is undone in place,
newest first, without a query. An undone insert lets its object go (a retry
adds it again), an undone update or bulk update puts the old values back, an
undone delete tracks the object again. Relations the undo leaves naming a link
it took back are unloaded (:mod:`uow.stale`), and so are the lists of
children changed in the undone part: a list is not rebuilt, and reading it
asks for ``include()`` again. Objects read after a write that
tracked objects do not follow (``execute_raw``, ``bulk_*``) are expired when
the undo takes that write back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from uow.assignments import ChildList
from uow.events import AnyEvent, BulkDeleted, BulkUpdated, Deleted, Inserted, Restored, SoftDeleted, Updated, Upserted
from uow.identity import LIVE, IdentityMap, InstanceState, Status
from uow.journal import Journal
from uow.model import NOT_LOADED, TableInfo
from uow.stale import RelationChecks, undo_suspects, unload_stale_relations


class UndoMixin:
    """Undo for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        _identity: IdentityMap
        _journal: Journal
        _tables: dict[str, TableInfo]
        _relation_checks: RelationChecks
        _cascaded_upto: int
        _untracked_writes: list[tuple[int, int]]
        _new_ref: Callable[[], int]
        _changed_lists: list[tuple[int, InstanceState, str]]
        _unlinked_parents: list[tuple[int, InstanceState, str, Any]]

    def _undo_to(self, mark: int, lists_seen: int | None = None) -> None:
        """Undo assignments not recorded yet, then truncate the journal to
        ``mark`` and undo the removed events in place. ``lists_seen``: how
        many changed lists flushes had seen at ``mark`` (a savepoint's or the
        transaction's start): the lists seen since are unloaded."""
        changed_lists = self._lists_seen_after(lists_seen) if lists_seen is not None else []
        identity = self._identity
        assigned = identity.assigned
        touched: list[InstanceState] = []  # a relation of these may name an undone link
        for state in identity.states_to_compare():
            if state.status in (*LIVE, Status.DELETED):
                current = state.current()
                # an equal value of another type (True for an int 1) is taken back too
                restored = current != state.snapshot or not state.table.typed_as_stored(current)
            else:
                restored = False
            if restored:
                state.restore_snapshot()
            if state.table.child_relations:
                changed_lists.extend(_lists_changed_unseen(state))
            if restored or id(state.obj) in assigned or state.table.child_relations:
                touched.append(state)
        identity.compared_all()
        self._undo_recorded(mark, touched, changed_lists)

    def _undo_recorded(
        self,
        mark: int,
        touched: Iterable[InstanceState] = (),
        changed_lists: list[tuple[InstanceState, str]] | None = None,
    ) -> None:
        """Truncate the journal to ``mark`` and undo the removed events in
        place; assignments not recorded yet stay as they are. ``touched``:
        states whose relations may name an undone link besides the ones the
        removed events lead to (see :mod:`uow.stale`). ``changed_lists``:
        (state, relation name) of lists whose changes the undo takes back,
        besides the ones flushes saw after ``mark``."""
        changed_lists = [*(changed_lists or ()), *self._lists_seen_after_mark(mark)]
        inserted_keys = self._journal.inserted_keys_since(mark)
        flushed = self._journal.flushed_mark
        removed = self._journal.truncate(mark)
        if removed or touched:
            moved: set[tuple[int, str]] = set()
            suspects = undo_suspects(removed, inserted_keys, self._identity, self._tables, self._relation_checks, moved)
            detached: dict[int, Any] = {}
            # an object whose delete is undone is new again while its insert is still pending
            unwritten = {e.ref for e in self._journal.pending if type(e) is Inserted}
            self._relink_unlinked_parents(mark)
            for position in range(mark + len(removed) - 1, mark - 1, -1):
                event = removed[position - mark]
                self._undo(event, detached, unwritten)
                # only a row storage holds can vanish: an insert never flushed (a refused
                # call's) names a key another tracked object may rightly hold
                if position < flushed and event.seq in inserted_keys:
                    self._let_go_of_vanished_row(self._tables[event.table], inserted_keys[event.seq], detached)
                elif position < flushed and isinstance(event, (Updated, SoftDeleted, Restored, Upserted)):
                    self._let_go_of_rereader(self._tables[event.table], event, detached)
            unload_stale_relations(
                itertools.chain(touched, suspects), detached, self._identity, self._relation_checks, moved
            )
            if removed:
                self._cascaded_upto = min(self._cascaded_upto, removed[0].seq - 1)
                self._restore_waiting_keys({e.ref for e in removed if isinstance(e, (Updated, SoftDeleted, Restored))})
        # a list is not rebuilt: the ones changed in the undone part are unloaded,
        # on objects still tracked (one whose insert was undone keeps its own, for a retry)
        by_obj = self._identity.by_obj
        for state, name in changed_lists:
            if by_obj.get(id(state.obj)) is state:
                getattr(state.table.model, name).set_loaded(state.obj, NOT_LOADED)
        self._expire_read_after_undone_writes(mark)

    def _relink_unlinked_parents(self, mark: int) -> None:
        """Give back their parents the many-to-one relations a ``set null``
        emptied after ``mark`` (the parent's delete is undone with it), where
        nothing was assigned to them since."""
        unlinked = self._unlinked_parents
        while unlinked and unlinked[-1][0] >= mark:
            _, state, name, parent = unlinked.pop()
            descriptor = getattr(state.table.model, name)
            if descriptor.raw(state.obj) is None:
                descriptor.set_loaded(state.obj, parent)

    def _restore_waiting_keys(self, refs: set[int]) -> None:
        """Give the objects with undone changes back the foreign keys that still
        wait for a new parent's key, as the pending events that remain say:
        an undone change may have stopped one waiting, which the insert still
        pending fills at its flush."""
        if not refs:
            return
        waiting: dict[int, dict[str, int]] = {}
        for event in self._journal.pending:
            if type(event) is Inserted and event.ref in refs:
                waiting[event.ref] = dict(event.parent_refs)
            elif type(event) is Updated and event.ref in refs:
                links = waiting.setdefault(event.ref, {})
                for column in event.new:
                    if column in event.parent_refs:
                        links[column] = event.parent_refs[column]
                    else:
                        links.pop(column, None)
        by_ref = self._identity.by_ref
        for ref in refs:
            state = by_ref.get(ref)
            if state is not None and state.status in LIVE:
                state.parent_refs = waiting.get(ref) or None

    def _lists_seen_after_mark(self, mark: int) -> list[tuple[InstanceState, str]]:
        """Take from the lists flushes saw changed the ones seen after an
        event past ``mark`` was recorded."""
        changed = self._changed_lists
        taken: list[tuple[InstanceState, str]] = []
        while changed and changed[-1][0] > mark:
            _, state, name = changed.pop()
            taken.append((state, name))
        return taken

    def _lists_seen_after(self, count: int) -> list[tuple[InstanceState, str]]:
        """Take from the lists flushes saw changed the ones after the first ``count``."""
        taken = [(state, name) for _, state, name in self._changed_lists[count:]]
        del self._changed_lists[count:]
        return taken

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
            if state.ref > first and state.status in LIVE:
                state.expired = True

    def _let_go_of_vanished_row(self, table: TableInfo, key: Any, detached: dict[int, Any]) -> None:
        """The row an undone insert wrote is gone: an object read from it since
        (say a row of ``bulk_insert``, or one expunged and read again) stops
        being tracked too, so no read answers with it."""
        state = self._identity.get(table, key)
        if state is None or state.status not in LIVE:
            return
        self._identity.untrack(state)
        state.status = Status.DETACHED
        detached[id(state.obj)] = state.obj

    def _let_go_of_rereader(
        self, table: TableInfo, event: Updated | SoftDeleted | Restored | Upserted, detached: dict[int, Any]
    ) -> None:
        """A row whose flushed change is undone holds its old values again: an
        object other than the event's read from it since (the event's was
        expunged, and the row read again) holds the undone values and was not
        tracked when the transaction began, so it stops being tracked, as for
        a vanished row, and the next read gives a new object the row's values."""
        # an upsert that inserted its row is an undone insert (see _let_go_of_vanished_row)
        key = event.old.get(table.key_column) if isinstance(event, Upserted) and event.old else event.key
        if key is None or (isinstance(event, Upserted) and event.old is None):
            return
        state = self._identity.get(table, key)
        if state is None or state.ref == event.ref or state.status not in LIVE:
            return
        self._identity.untrack(state)
        state.status = Status.DETACHED
        detached[id(state.obj)] = state.obj

    def _undo(self, event: AnyEvent, detached: dict[int, Any], unwritten: set[int]) -> None:
        """Undo one event in place; objects it lets go of go into ``detached``."""
        by_ref = self._identity.by_ref
        if isinstance(event, Inserted):
            state = by_ref.get(event.ref)
            if state is not None:
                self._let_go_of_undone_insert(state, event, detached)
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
                self._revive(state, event.old, unwritten)
        elif isinstance(event, Upserted):
            state = by_ref.get(event.ref)
            if state is None:
                return
            if event.old is None:  # it inserted the row
                self._let_go_of_undone_insert(state, event, detached)
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
                    self._revive(state, old, unwritten)

    def _let_go_of_undone_insert(
        self, state: InstanceState, event: Inserted | Upserted, detached: dict[int, Any]
    ) -> None:
        """Stop tracking the object whose insert ``event`` recorded, with the
        values it was added with (a generated key back to ``None``): untracked,
        not detached for good, so adding it again (a retry) inserts it."""
        self._identity.untrack(state)
        self._identity.forget_let_go(state.obj)
        state.status = Status.DETACHED
        detached[id(state.obj)] = state.obj
        values = dict(event.values)
        if state.table.primary_key.generated and event.key is None:
            values[state.table.key_column] = None
        state.set_values(values)
        state.parent_refs = None
        self._identity.by_ref.pop(event.ref, None)

    def _revive(self, state: InstanceState, old: Mapping[str, Any], unwritten: set[int]) -> None:
        """Track a deleted object again, as stored, or as new while its insert
        (``unwritten`` holds the refs of pending inserts) is still to be written."""
        self._identity.set_values(state, dict(old))
        state.status = Status.PENDING if state.ref in unwritten else Status.PERSISTENT
        self._identity.track(state)


def _lists_changed_unseen(state: InstanceState) -> list[tuple[InstanceState, str]]:
    """(state, relation name) of the lists of ``state.obj`` changed since a
    flush last saw them."""
    obj = state.obj
    return [
        (state, name)
        for (_, read_children), name in zip(state.table.child_relations, state.table.child_relation_names)
        if type(children := read_children(obj)) is ChildList and children.changed and children.belongs_to(obj)
    ]


__all__ = ["UndoMixin"]
