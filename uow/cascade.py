"""Foreign-key delete actions on tracked objects: when a row is deleted in
the session, the tracked children its foreign keys name with ``on_delete=
"cascade"`` are deleted with it and those with ``"set null"`` lose the
reference, as the database will do, so that the objects say what the rows
will. :class:`~uow.session.AsyncSession` inherits this from
:class:`CascadeMixin`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from uow.assignments import set_attribute
from uow.events import Deleted, Inserted, Updated
from uow.identity import LIVE, IdentityMap, InstanceState
from uow.journal import Journal
from uow.model import ForeignKeyInfo, TableInfo


class CascadeMixin:
    """Cascades of deletes for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        _identity: IdentityMap
        _journal: Journal
        _tables: dict[str, TableInfo]
        _cascaded_upto: int

        def _delete(self, state: InstanceState) -> None: ...
        def _record_found(self, state: InstanceState, at: dt.datetime) -> None: ...
        def _record_update(self, state: InstanceState, old: dict[str, Any], new: dict[str, Any]) -> None: ...
        def _relation_links_elsewhere(
            self, state: InstanceState, column: str, deleted_keys: Collection[Any] = ()
        ) -> bool: ...
        def _unlink_deleted_parents(self, state: InstanceState, column: str) -> None: ...

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
                if state.status not in LIVE:
                    continue
                for fk in acting[state.table]:
                    keys = deleted_keys.get(fk.target_table)
                    if state.table.parent_relations and self._relation_links_elsewhere(state, fk.column, keys or ()):
                        continue  # moved or unlinked through its relation: the flush writes that first
                    value = getattr(state.obj, fk.column)
                    waiting_ref = (state.parent_refs or {}).get(fk.column)
                    hit = (keys is not None and value in keys) or (waiting_ref is not None and waiting_ref in refs)
                    if not hit or state.status not in LIVE:
                        continue
                    if fk.on_delete == "cascade":
                        self._delete(state)
                        if state.key is not None:
                            next_keys.setdefault(state.table.name, set()).add(state.key)
                        next_refs.setdefault(state.table.name, set()).add(state.ref)
                    else:
                        set_attribute(state.obj, fk.column, None)
                        if waiting_ref is not None:
                            # a pending event waits for the deleted new parent's key: say the column stays empty
                            self._record_update(state, {fk.column: None}, {fk.column: None})
                        self._unlink_deleted_parents(state, fk.column)
                        self._record_found(state, dt.datetime.now(dt.UTC))
            deleted_keys, deleted_refs = next_keys, next_refs
        if self._journal.pending:
            self._cascaded_upto = self._journal.pending[-1].seq

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
            state.table.name in child_tables and state.status in LIVE for state in self._identity.states()
        )


__all__ = ["CascadeMixin"]
