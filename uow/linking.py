"""How a session keeps many-to-one relations, one-to-many lists and foreign
keys in step. :class:`~uow.session.AsyncSession` inherits these from
:class:`LinkingMixin`.

The rules (see ``docs/models.md``, "Relations"):

- A parent assigned through a relation fills the foreign key at flush, even a
  new parent whose key the same flush generates (the child waits for its
  ref); adding a child adds a new parent, and new children in a parent's
  list are added pointing at it.
- A relation assigned since the last flush wins over its foreign key. A
  foreign key assigned while the relation still holds the parent the
  snapshot names is the newer word, and the relation follows it, as it
  does for values the session writes from elsewhere (a bulk update, a
  refresh, an upsert).
- A relation never points a live object at an object deleted in the
  session: such an assignment is refused before anything is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from uow.assignments import ChildList, changed_since_flush, relation_assigned, set_attribute, unwatched_list
from uow.errors import SessionStateError
from uow.identity import LIVE, IdentityMap, InstanceState
from uow.journal import Journal
from uow.model import NOT_LOADED, UNLINKED, TableInfo, is_model, table_info
from uow.stale import RelationChecks, names_another_parent


def _refers_to(obj: Any, column: str, key: Any) -> bool:
    """Whether ``obj``'s foreign key ``column`` holds ``key`` (a stored row's)."""
    return key is not None and getattr(obj, column) == key


def _belongs_to(child: Any, column: str, owner: InstanceState, state: InstanceState | None = None) -> bool:
    """Whether ``child`` (tracked under ``state``, if it is) belongs to
    ``owner`` through the foreign key ``column``: its many-to-one relation
    through it holds ``owner`` where it holds an object (or an unlink), else
    the column names ``owner``'s key or waits for its generated one."""
    table = table_info(type(child))
    for name, relation in table.relations.items():
        if not relation.many and relation.local_column == column:
            held = getattr(table.model, name).raw(child)
            if held is UNLINKED or (held is not None and held is not NOT_LOADED):
                return held is owner.obj
    key = owner.key
    if key is not None and getattr(child, column, None) == key:
        return True
    return state is not None and owner.ref == (state.parent_refs or {}).get(column)


def _relation_holds(child: Any, table: TableInfo, column: str, parent: Any) -> bool:
    """Whether ``child``'s many-to-one relation through ``column`` holds ``parent``."""
    return any(c == column and read(child) is parent for c, read in table.parent_relations)


class LinkingMixin:
    """Relations and foreign keys for :class:`~uow.session.AsyncSession`."""

    if TYPE_CHECKING:
        _identity: IdentityMap
        _tables_by_type: dict[type, TableInfo]
        _relation_checks: RelationChecks
        _adding: dict[int, int]
        _orphans_deleted: bool
        _updating: dict[int, Mapping[str, Any]]
        _journal: Journal
        _changed_lists: list[tuple[int, InstanceState, str]]
        _unlinked_parents: list[tuple[int, InstanceState, str, Any]]

        def _table_of(self, obj: Any) -> TableInfo: ...
        def _delete(self, state: InstanceState) -> None: ...
        def _add(
            self, obj: Any, links: dict[str, int] | None = None, at: dt.datetime | None = None
        ) -> InstanceState: ...
        def _record_update(
            self,
            state: InstanceState,
            old: dict[str, Any],
            new: dict[str, Any],
            event_type: type[Any] = ...,
            parent_refs: dict[str, int] | None = None,
            at: dt.datetime | None = None,
        ) -> None: ...

    def _relations_changed(self, state: InstanceState) -> bool:
        """Whether a relation of ``state.obj`` holds a change the next flush
        writes: a many-to-one relation naming another parent than its foreign
        key does, or unlinking a set one, or a list holding a new object, or
        one that deletes orphans with children taken out."""
        table = state.table
        obj = state.obj
        if not table.relations or not table.holds_relations(obj):
            return False
        identity = self._identity
        for read, _, column, target_key, _ in self._relation_checks.relations(table):
            value = read(obj)
            if value is None or value is NOT_LOADED:
                continue
            if column is not None:
                if value is UNLINKED:
                    if getattr(obj, column) is not None:
                        return True
                elif names_another_parent(obj, column, value, target_key):
                    return True
            elif isinstance(value, list) and (
                any(map(identity.is_new, value)) or (type(value) is ChildList and value.removed)
            ):
                return True  # a new child to insert, or children taken out that may be orphans
        return False

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
                given = self._table_of(parent).key_of(parent)
                if given is not None:  # its key is known already: the column holds it now
                    set_attribute(obj, column, given)
                    continue
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
            elif parent_state.status not in LIVE:
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

    def _add_children(
        self, obj: Any, table: TableInfo, state: InstanceState, at: dt.datetime | None = None, *, adding: bool = False
    ) -> None:
        """Add new children listed in one-to-many relations, linked to ``obj``.
        A list no change to which was noted (given to the model's constructor)
        becomes ``obj``'s own :class:`ChildList`, so that a child appended
        later is noted, and a tracked object in it is moved to ``obj``, as if
        appended. So is one in the list of an object being added (``adding``)
        whose list outlived an undo of its insert: the undo took back the
        move its append made."""
        identity = self._identity
        for (column, read_children), name in zip(table.child_relations, table.child_relation_names):
            children = read_children(obj)
            if not isinstance(children, (list, tuple)):
                continue
            given = unwatched_list(children, obj)
            if given:
                descriptor = getattr(table.model, name)
                children = ChildList(children, obj, descriptor, changed=True)
                descriptor.set_loaded(obj, children)
            if type(children) is ChildList and children.changed:
                # from here on an undo past this point takes the change back
                children.changed = False
                self._changed_lists.append((self._journal.mark, state, name))
                if children.removed:
                    removed, children.removed = children.removed, None
                    self._delete_orphans(state, column, children, removed)
            for child in children:
                child_state = identity.state_of(child)
                if child_state is not None:
                    if (
                        (given or adding)
                        and child_state.status in LIVE
                        and not _belongs_to(child, column, state, child_state)
                    ):
                        back = getattr(table.model, name).back_relation(type(child))
                        self._move_to(child_state, column, state, back)
                    continue
                if identity.was_let_go(child) or id(child) in self._adding:
                    continue  # let go of; or being added already, and linking its parents (obj among them)
                if state.key is not None:
                    set_attribute(child, column, state.key)
                    self._add(child, None, at)
                else:
                    set_attribute(child, column, None)
                    self._add(child, {column: state.ref}, at)

    def _move_to(self, child: InstanceState, column: str, owner: InstanceState, relation: str | None) -> None:
        """Move the tracked ``child``, found in a list ``owner`` was given, to
        ``owner`` through the foreign key ``column`` (and its many-to-one
        ``relation``, if it has one), recorded at once: an add refused after
        this takes the move back with its event."""
        if relation is not None:
            getattr(child.table.model, relation).set_loaded(child.obj, owner.obj)
        old = child.snapshot[child.table.column_index[column]]
        if owner.key is not None:
            set_attribute(child.obj, column, owner.key)
            self._record_update(child, {column: old}, {column: owner.key})
        else:
            set_attribute(child.obj, column, None)
            self._record_update(child, {column: old}, {column: None}, parent_refs={column: owner.ref})

    def _delete_orphans(
        self, owner: InstanceState, column: str, children: Sequence[Any], removed: Iterable[Any]
    ) -> None:
        """Delete the objects taken out of ``owner``'s list of children (a
        relation that deletes orphans, through the foreign key ``column``)
        that are not in it again and still belong to ``owner``: moved to
        another owner, or unlinked, they are no orphans."""
        listed = {id(child) for child in children}
        identity = self._identity
        for child in removed:
            if id(child) in listed:
                continue
            child_state = identity.state_of(child)
            if child_state is None:
                # new, and not added yet (another list holds it too): added to be
                # deleted, so no flush inserts it
                if not is_model(child) or identity.was_let_go(child) or not _belongs_to(child, column, owner):
                    continue
                child_state = self._add(child)
            if child_state.status in LIVE and _belongs_to(child, column, owner, child_state):
                if owner.key is not None and self._moved_by_key(child_state, column, owner.key):
                    continue
                self._delete(child_state)
                self._orphans_deleted = True

    def _moved_by_key(self, child: InstanceState, column: str, owner_key: Any) -> bool:
        """Whether the tracked ``child``, whose relation still holds the owner
        with ``owner_key``, leaves it by its foreign key: assigned since over
        that relation (the newer word), or being set by the ``update()`` in
        progress."""
        if self._column_assigned_over(child, column, owner_key):
            return True
        updating = self._updating.get(id(child.obj))
        return updating is not None and column in updating and updating[column] != owner_key

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
                    if key is not None:
                        self._fill_key(state, column, key)
                    continue
                if self._identity.was_deleted(parent):  # its delete is committed
                    self._hold_deleted_parent(state, column, parent, self._table_of(parent).key_of(parent), deleting)
                    continue
                parent_state = self._add(parent)
            elif parent_state.status not in LIVE:  # deleted here
                self._hold_deleted_parent(state, column, parent, parent_state.key, deleting)
                continue
            parent_key = parent_state.snapshot[parent_state.table.key_index]
            if parent_key is not None:
                self._fill_key(state, column, parent_key)
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

    def _children_follow_key(self, parent: InstanceState, old_key: Any) -> None:
        """A new object's key changed from ``old_key`` before its row was
        written: the tracked children linked to it (through their relation or
        its list) whose foreign key still names ``old_key`` name the new key,
        which the flush would otherwise not write. A child whose foreign key
        was given without a relation keeps the value it was given."""
        name = parent.table.name
        new_key = parent.snapshot[parent.table.key_index]
        listed = {
            id(child)
            for _, read_children in parent.table.child_relations
            if isinstance(children := read_children(parent.obj), list)
            for child in children
        }
        for child in self._identity.states():
            if child.status not in LIVE:
                continue
            table = child.table
            for fk in table.foreign_keys:
                column = fk.column
                if fk.target_table != name or child.snapshot[table.column_index[column]] != old_key:
                    continue
                if getattr(child.obj, column) != old_key:
                    continue  # assigned since: the flush writes what was assigned
                if id(child.obj) in listed or _relation_holds(child.obj, table, column, parent.obj):
                    set_attribute(child.obj, column, new_key)
                    self._record_update(child, {column: old_key}, {column: new_key})

    def _fill_key(self, state: InstanceState, column: str, key: Any) -> None:
        """Fill the foreign key ``column`` with ``key``, the key of the parent
        its relation holds, unless the column was assigned over that parent
        since (then the relation follows the column instead)."""
        obj = state.obj
        if getattr(obj, column) != key:
            if self._column_assigned_over(state, column, key):
                self._follow_column(state, column)
                return
            set_attribute(obj, column, key)
        if state.parent_refs:
            state.parent_refs.pop(column, None)

    def _hold_deleted_parent(
        self, state: InstanceState, column: str, parent: Any, parent_key: Any, deleting: bool
    ) -> None:
        """The many-to-one relation through ``column`` holds ``parent``, deleted
        in this session (``parent_key``: its key). A key assigned since moves
        the child off it; a child it already had is left to the foreign key's
        ``on_delete``; pointing a live object at it is refused."""
        obj = state.obj
        if self._column_assigned_over(state, column, parent_key):
            self._follow_column(state, column)
        elif not deleting and (
            relation_assigned(self._identity.assigned, obj, column) or not _refers_to(obj, column, parent_key)
        ):
            self._refuse_deleted_parent(state.table, column, parent)

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

    def _relation_links_elsewhere(self, state: InstanceState, column: str, deleted_keys: Collection[Any] = ()) -> bool:
        """Whether the many-to-one relation through ``column`` holds what the
        next flush writes into that column instead of what it holds now: an
        unlink, anything assigned since (a deleted parent is refused then), or
        a parent that is not deleted (a relation wins over its column). A
        relation still holding the deleted parent it was loaded with, or an
        untracked copy of a row in ``deleted_keys`` (one expunged, then read
        again and deleted), says nothing here: the column decides."""
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
                key = self._table_of(parent).key_of(parent)  # new, or expunged: its row stays...
                if key is not None and key in deleted_keys:
                    return False  # ...unless it is the row deleted
            live = parent_state is None or parent_state.status in LIVE
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
            live = parent_state is not None and parent_state.status in LIVE
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
            if parent_state is not None and parent_state.status not in LIVE:
                self._unlinked_parents.append((self._journal.mark, state, name, parent))
                getattr(table.model, name).set_loaded(state.obj, None)

    def _unload_unflushed_relations(self, state: InstanceState) -> None:
        """Unload the relations of ``state.obj`` that say something its row
        does not: a many-to-one object without the key the foreign key holds
        (or an unlink), a list changed since the last flush or holding an
        object not tracked yet."""
        table = state.table
        obj = state.obj
        identity = self._identity
        for name, relation in table.relations.items():
            descriptor = getattr(table.model, name)
            value = descriptor.raw(obj)
            if value is None or value is NOT_LOADED:
                continue
            if relation.many:
                stale = changed_since_flush(value, obj) or (
                    isinstance(value, list) and any(identity.state_of(v) is None for v in value)
                )
            else:
                key_column = table_info(relation.target).key_column
                stale = names_another_parent(obj, relation.local_column, value, key_column)  # type: ignore[arg-type]
            if stale:
                descriptor.set_loaded(obj, NOT_LOADED)


__all__ = ["LinkingMixin"]
