"""Eager loading of relations for ``include(...)``: one query per relation.

For each included relation the keys of the owning objects are collected and
the related rows read with one ``IN`` (split only past :data:`IN_CHUNK` keys),
then assigned: a many-to-one relation gets the parent object or ``None``, a
one-to-many relation a new list of children in primary-key order. Nothing here
does I/O except through the ``fetch`` it is given, and nothing is loaded later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from uow.assignments import ChildList, changed_since_flush
from uow.conditions import And, Condition, In, IsNull
from uow.model import RelationDescriptor, RelationInfo, TableInfo, table_info
from uow.statements import OrderBy, Select

IN_CHUNK = 5000
"""Keys per ``IN`` list: below every adapter's parameter limit."""

Fetch = Callable[[Select], Awaitable[list[tuple[Any, ...]]]]
Materialize = Callable[[TableInfo, tuple[Any, ...], bool], Any]
"""(table, row, track) -> the object for the row, or ``None`` to leave it out."""


class RelationLoader:
    """Loads the relations of one read's objects.

    ``materialize`` turns rows into objects (through the session's identity
    map); ``track_all`` false (streaming) tracks a related object only when an
    object it hangs off is tracked, as ``is_tracked`` tells.
    ``assigned_since_flush`` names owner objects whose many-to-one relation
    through a column holds what the next flush writes (assigned since the
    last flush, or waiting for a parent's generated key): a read never
    overwrites it. An owner is given its
    children as a :class:`~uow.assignments.ChildList` of its own, which notes
    a child appended to it, unless its list holds changes no flush has seen
    (as a read never overwrites an unflushed assignment).
    """

    def __init__(
        self,
        fetch: Fetch,
        materialize: Materialize,
        *,
        keep_deleted: bool,
        track_all: bool,
        is_tracked: Callable[[Any], bool],
        assigned_since_flush: Callable[[Any, str], bool],
    ):
        self.fetch = fetch
        self.materialize = materialize
        self.keep_deleted = keep_deleted
        self.track_all = track_all
        self.is_tracked = is_tracked
        self.assigned_since_flush = assigned_since_flush

    async def load(self, model: type[Any], objects: Sequence[Any], includes: Sequence[RelationDescriptor]) -> None:
        """Load ``includes`` in order; each applies to the objects of its model
        loaded most recently (``objects`` for ``model``)."""
        latest: dict[type[Any], Sequence[Any]] = {model: objects}
        for descriptor in includes:
            owners = latest.get(descriptor.model, ())
            relation = table_info(descriptor.model).relations[descriptor.name]
            if relation.many:
                latest[relation.target] = await self._one_to_many(descriptor, relation, owners)
            else:
                latest[relation.target] = await self._many_to_one(descriptor, relation, owners)

    async def _rows(self, table: TableInfo, column: str, keys: list[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), IN_CHUNK):
            where: Condition = In(column, tuple(keys[start : start + IN_CHUNK]))
            if table.soft_delete_column is not None and not self.keep_deleted:
                where = And((where, IsNull(table.soft_delete_column)))
            rows.extend(await self.fetch(Select(table, where, (OrderBy(table.key_column),))))
        return rows

    async def _many_to_one(
        self, descriptor: RelationDescriptor, relation: RelationInfo, owners: Sequence[Any]
    ) -> list[Any]:
        column = relation.local_column
        assert column is not None
        target = table_info(relation.target)
        keys = list(dict.fromkeys(k for k in (getattr(o, column) for o in owners) if k is not None))
        if not keys:
            rows: list[tuple[Any, ...]] = []
        else:
            rows = await self._rows(target, target.key_column, keys)
        tracked_keys = {getattr(o, column) for o in owners if self.track_all or self.is_tracked(o)}
        parents: dict[Any, Any] = {}
        for row in rows:
            key = row[target.key_index]
            parent = self.materialize(target, row, self.track_all or key in tracked_keys)
            if parent is not None:
                parents[key] = parent
        for owner in owners:
            if self.assigned_since_flush(owner, column):
                continue
            descriptor.set_loaded(owner, parents.get(getattr(owner, column)))
        return list(parents.values())

    async def _one_to_many(
        self, descriptor: RelationDescriptor, relation: RelationInfo, owners: Sequence[Any]
    ) -> list[Any]:
        column = relation.remote_column
        assert column is not None
        source = table_info(descriptor.model)
        target = table_info(relation.target)
        keys = list(dict.fromkeys(k for k in (source.key_of(o) for o in owners) if k is not None))
        rows = await self._rows(target, column, keys) if keys else []
        tracked_keys = {source.key_of(o) for o in owners if self.track_all or self.is_tracked(o)}
        children: dict[Any, list[Any]] = {key: [] for key in keys}
        loaded: list[Any] = []
        for row in rows:
            parent_key = row[target.column_index[column]]
            child = self.materialize(target, row, self.track_all or parent_key in tracked_keys)
            if child is None:
                continue
            loaded.append(child)
            # a tracked child's own (perhaps unflushed) foreign key decides its parent
            owner_key = getattr(child, column)
            if owner_key in children:
                children[owner_key].append(child)
        for owner in owners:
            key = source.key_of(owner)
            if key is None:  # an unflushed owner keeps the children assigned to it
                continue
            if changed_since_flush(descriptor.raw(owner), owner):
                continue  # a read never overwrites changes no flush has written
            descriptor.set_loaded(owner, ChildList(children[key], owner, descriptor))
        return loaded


__all__ = ["IN_CHUNK", "RelationLoader"]
