"""Relations an undo leaves naming links it took back.

An undo (a rollback, a savepoint's rollback, a refused call taking back what it
recorded) restores column values, lets go of objects whose insert it undid and
revives deleted ones. It does not know what relations held: a post's ``author``
may still be the user a moved foreign key named, and a user's ``posts`` may
still list a post whose insert or move was undone. A flush would write such a link
again, so the relation is unloaded instead, and reading it asks for
``include()`` as before it was loaded.

Only objects the undone part touched can hold such a link, and they are found
from the undone events without looking at every tracked object:

- the objects the undone events changed, whose foreign keys went back, and
  the parents a changed foreign key named before and after (their lists may
  hold the row's object);
- the objects a caller restored or saw assigned since their snapshot (see
  :meth:`uow.session.AsyncSession._undo_to`);
- the neighbours of each row whose insert was undone: the objects whose
  foreign key holds its key (they may hold it in a many-to-one relation) and
  the objects its own foreign keys name (they may list it).

Relations assigned since the last flush and not taken back by the undo (a
many-to-one relation still noted as assigned, the lists of an object noted as
changed) are the user's pending work, never unloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

from uow.assignments import relation_assigned
from uow.events import AnyEvent, BulkDeleted, BulkUpdated, Inserted, RowEvent, Updated, Upserted
from uow.identity import IdentityMap, InstanceState, Status
from uow.model import NOT_LOADED, UNLINKED, TableInfo, table_info

_LIVE = (Status.PENDING, Status.PERSISTENT)


def names_another_parent(obj: Any, column: str, parent: Any, key_column: str) -> bool:
    """Whether a many-to-one relation's value (not ``None``) says something
    else than ``obj``'s foreign key ``column``: an unlink not flushed yet, or
    an object without the key the column holds."""
    if parent is UNLINKED:
        return True
    key = getattr(parent, key_column, None)
    return key is None or key != getattr(obj, column)


def _names_another_owner(identity: IdentityMap, child: Any, column: str, owner_key: Any) -> bool:
    """Whether ``child``, listed by the object with key ``owner_key``, is a
    tracked live object whose foreign key ``column`` names another one."""
    child_state = identity.by_obj.get(id(child))
    return (
        owner_key is not None
        and child_state is not None
        and child_state.status in _LIVE
        and getattr(child, column, owner_key) != owner_key
    )


class RelationChecks:
    """Per table, what :func:`unload_stale_relations` and :func:`undo_suspects`
    read, worked out once per session from its tables."""

    def __init__(self, tables: Mapping[str, TableInfo]):
        self._tables = tables
        self._checks: dict[TableInfo, list[tuple[Callable[[Any], Any], str, str | None, str, str | None]]] = {}
        self._referrers: dict[TableInfo, list[tuple[TableInfo, tuple[int, ...]]]] = {}

    def relations(self, table: TableInfo) -> list[tuple[Callable[[Any], Any], str, str | None, str, str | None]]:
        """(reader of the raw value, relation name, foreign-key column of a
        many-to-one relation or ``None`` for a list, the target's key column,
        the children's foreign-key column of a list or ``None``)."""
        checks = self._checks.get(table)
        if checks is None:
            checks = self._checks[table] = [
                (
                    getattr(table.model, name).reader,
                    name,
                    None if relation.many else relation.local_column,
                    table_info(relation.target).key_column,
                    relation.remote_column if relation.many else None,
                )
                for name, relation in table.relations.items()
            ]
        return checks

    def referrers(self, table: TableInfo) -> list[tuple[TableInfo, tuple[int, ...]]]:
        """The tables with a many-to-one relation to ``table``, each with the
        index of that relation's foreign-key column."""
        found = self._referrers.get(table)
        if found is None:
            found = self._referrers[table] = [
                (child, (child.column_index[relation.local_column],))
                for child in self._tables.values()
                for relation in child.relations.values()
                if not relation.many and relation.local_column is not None and table_info(relation.target) is table
            ]
        return found


def _parents_named(
    values: Mapping[str, Any],
    table: TableInfo,
    tables: Mapping[str, TableInfo],
    identity: IdentityMap,
    moved: set[tuple[int, str]] | None = None,
) -> list[InstanceState]:
    """The tracked parents the foreign keys among ``values`` (of a row of
    ``table``) name; each is noted in ``moved`` with the column."""
    found: list[InstanceState] = []
    for foreign_key in table.foreign_keys:
        key = values.get(foreign_key.column)
        parent_table = tables.get(foreign_key.target_table)
        if key is not None and parent_table is not None:
            parent = identity.get(parent_table, key)
            if parent is not None:
                found.append(parent)
                if moved is not None:
                    moved.add((id(parent.obj), foreign_key.column))
    return found


def undo_suspects(
    removed: Sequence[AnyEvent],
    inserted_keys: Mapping[int, Any],
    identity: IdentityMap,
    tables: Mapping[str, TableInfo],
    checks: RelationChecks,
    moved: set[tuple[int, str]] | None = None,
) -> list[InstanceState]:
    """The tracked states whose relations undoing ``removed`` may leave stale,
    found before the undo, while keys and links are still as the events left
    them (``inserted_keys``: seq -> key of the rows the events inserted).

    ``moved`` gets (id of a parent object, foreign-key column) for each
    parent an undone update of that column named, before or after: the row
    moves back, so the parent's list through that column may lack it or hold
    it wrongly, whichever list was read in between."""
    by_ref = identity.by_ref
    suspects: list[InstanceState] = []
    for event in removed:
        if isinstance(event, (BulkUpdated, BulkDeleted)):
            suspects.extend(state for ref in event.old if (state := by_ref.get(ref)) is not None)
            continue
        if not isinstance(event, RowEvent):
            continue
        state = by_ref.get(event.ref)
        inserts_row = isinstance(event, Inserted) or (isinstance(event, Upserted) and event.old is None)
        table = tables[event.table]
        if not inserts_row:
            if state is not None:
                suspects.append(state)
            if isinstance(event, Updated) and table.key_column in event.new:  # objects may hold it by either key
                for key in (event.new[table.key_column], event.old.get(table.key_column)):
                    for child, indexes in checks.referrers(table):
                        suspects.extend(identity.find_by_columns(child, indexes, (key,)))
            if isinstance(event, Updated):  # a moved row: the parents on both sides may list it
                suspects.extend(_parents_named(event.old, table, tables, identity, moved))
                suspects.extend(_parents_named(event.new, table, tables, identity, moved))
            continue
        row_states = [state] if state is not None else []
        for key in {event.key, inserted_keys.get(event.seq), None if state is None else state.key}:
            if key is None:
                continue
            for child, indexes in checks.referrers(table):  # may hold the row's object as their parent
                suspects.extend(identity.find_by_columns(child, indexes, (key,)))
            read_since = identity.get(table, key)  # an object read from the row after it was written
            if read_since is not None and read_since is not state:
                row_states.append(read_since)
        values = event.values  # type: ignore[union-attr]
        parent_refs: Mapping[str, int] = getattr(event, "parent_refs", None) or {}
        suspects.extend(state for ref in parent_refs.values() if (state := by_ref.get(ref)) is not None)
        for foreign_key in table.foreign_keys:  # their objects may list the row's object
            parent_table = tables.get(foreign_key.target_table)
            if parent_table is None:
                continue
            index = table.column_index[foreign_key.column]
            parent_keys = {values.get(foreign_key.column)}
            for row_state in row_states:
                parent_keys.add(row_state.snapshot[index])
                parent_keys.add(getattr(row_state.obj, foreign_key.column))
            suspects.extend(
                parent for key in parent_keys if key is not None and (parent := identity.get(parent_table, key))
            )
        for row_state in row_states:
            for read, _, column, _, _ in checks.relations(table):
                if column is not None:
                    parent = read(row_state.obj)
                    if parent is not None and parent is not NOT_LOADED and parent is not UNLINKED:
                        found = identity.by_obj.get(id(parent))
                        if found is not None:
                            suspects.append(found)
    return suspects


def unload_stale_relations(
    states: Iterable[InstanceState],
    detached: Mapping[int, Any],
    identity: IdentityMap,
    checks: RelationChecks,
    moved: Container[tuple[int, str]] = (),
) -> None:
    """Unload each relation of a tracked one of ``states`` that no longer
    matches what the undo restored: a many-to-one relation whose object does
    not have the key its foreign key holds, or is an object the undo let go of
    (``detached``: id -> object), a list holding such an object or a new
    one appended since, and a list through a foreign key an undone update
    moved a row by (``moved``, from :func:`undo_suspects`). A many-to-one relation noted as assigned, and the
    lists of an object noted as changed, stay: those are assignments the undo
    did not take back."""
    by_obj = identity.by_obj
    assigned = identity.assigned
    seen: set[int] = set()
    for state in states:
        obj = state.obj
        obj_id = id(obj)
        if obj_id in seen or by_obj.get(obj_id) is not state:
            continue
        seen.add(obj_id)
        noted = obj_id in assigned
        for read, name, column, target_key, back in checks.relations(state.table):
            value = read(obj)
            if value is NOT_LOADED or (noted and (column is None or relation_assigned(assigned, obj, column))):
                continue
            if column is None:
                # an object the undo let go of, a new one appended since (taken back
                # too), or one whose foreign key names another owner (moved back)
                stale = isinstance(value, list) and (
                    (back is not None and (obj_id, back) in moved)
                    or any(
                        detached.get(id(child)) is child
                        or identity.is_new(child)
                        or (back is not None and _names_another_owner(identity, child, back, state.key))
                        for child in value
                    )
                )
            elif value is None:
                stale = getattr(obj, column) is not None  # no parent, where the restored key names one
            else:
                stale = names_another_parent(obj, column, value, target_key) or detached.get(id(value)) is value
            if stale:
                getattr(state.table.model, name).set_loaded(obj, NOT_LOADED)
