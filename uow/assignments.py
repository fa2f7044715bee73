"""Assignments on tracked objects, noted as they are made.

A flush records what changed on each tracked object since its snapshot. To
find that without comparing every tracked object at every flush, every model's
``__setattr__`` (:func:`note_assignment`, installed on :class:`uow.model.Model`)
notes the object in the *sink* of the identity map that tracks it: a dict used
as an ordered set of object ids. A flush then compares only the objects noted
there, plus the few whose changes no assignment shows (see
:class:`uow.identity.IdentityMap`). An object is watched by one identity map:
a session refuses to add an object another session tracks.

msgspec's own ``__init__``, decoding, ``convert`` and ``structs.replace`` do not
call ``__setattr__``, so building and loading objects costs nothing here. The
session's own writes into objects (generated keys, foreign keys it fills in,
values it restores) go through :data:`set_attribute`, which notes nothing:
they are recorded or already match the snapshot.

An assignment to a many-to-one relation is noted with the foreign-key column
it sets (:func:`note_relation_assigned`, from the relation's descriptor), so
that a flush can tell a relation assigned since from one still holding what
was loaded, when the column was assigned too. The session sets relations
through the descriptor's ``set_loaded``, which notes nothing.

A child appended to an object's list of children is no assignment on the
object. So the lists a session sees in one-to-many relations (given at
``add``, assigned, or loaded by ``include()``) become :class:`ChildList` objects,
which note each change to themselves on their owner. A child put in such a
list is pointed at the owner, as an assignment to the child's many-to-one
relation (``child.author = owner``), so that a flush moves a tracked child
there as it would for that assignment.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self, SupportsIndex

import msgspec

Sink = dict[int, "set[str] | None"]
"""Ids of tracked objects assigned to since their session last compared them,
each with the foreign-key columns of the many-to-one relations assigned on
it (``None`` when none were): where both a relation and its column were
assigned, the relation wins."""

WATCHED: dict[int, Sink] = {}
"""id(object) -> the sink of the one identity map watching it. An object's id
is only here while that map tracks it (and so keeps it alive), so an id can
never name another object."""

set_attribute: Callable[[Any, str, Any], None] = msgspec.Struct.__setattr__
"""Assign an attribute without noting it as an assignment."""


def note_assignment(
    obj: Any,
    name: str,
    value: Any,
    _set: Callable[[Any, str, Any], None] = set_attribute,
    _sink_of: Callable[[int], Sink | None] = WATCHED.get,
    _id: Callable[[Any], int] = id,
) -> None:
    """Assign ``obj.name = value`` and note ``obj`` in the sink watching it, if any."""
    _set(obj, name, value)
    obj_id = _id(obj)
    sink = _sink_of(obj_id)
    if sink is not None:
        sink.setdefault(obj_id, None)  # keeps the relations noted by note_relation_assigned


def note_relation_assigned(obj: Any, column: str) -> None:
    """Note that the many-to-one relation through the foreign key ``column``
    of ``obj`` was assigned (called by the relation's descriptor, which only
    an assignment reaches: the session sets relations through ``set_loaded``)."""
    obj_id = id(obj)
    sink = WATCHED.get(obj_id)
    if sink is not None:
        columns = sink.get(obj_id)
        if columns is None:
            sink[obj_id] = {column}
        else:
            columns.add(column)


def relation_assigned(sink: Sink, obj: Any, column: str) -> bool:
    """Whether the relation through ``column`` of ``obj`` was assigned since
    ``sink`` was last cleared."""
    columns = sink.get(id(obj))
    return columns is not None and column in columns


def _note(obj_id: int) -> None:
    sink = WATCHED.get(obj_id)
    if sink is not None:
        sink.setdefault(obj_id, None)


class ChildList(list[Any]):
    """The list of children an object holds in a one-to-many relation, once a
    session has seen it or it was assigned: a ``list`` whose every change
    (``append``, ``remove``, ``l[i] = x``, ...) is noted as an assignment on
    its owner, so that the next flush looks at the owner and inserts or links
    the new children. A child put in the list (``append``, ``extend``,
    ``insert``, ``+=``, ``l[i] = x``) is pointed at the owner through
    ``relation.link_child``, as ``child.author = owner`` would.

    The list holds its owner weakly: the owner holds the list, and a model
    object that a session loaded is not tracked by the cyclic garbage
    collector (msgspec leaves a struct of plain values untracked, and a
    relation set by the session does not change that), so a strong reference
    back would keep both alive for good. A list that outlives its owner
    notes and links nothing."""

    __slots__ = ("_owner", "relation", "changed", "removed")

    def __init__(self, children: Iterable[Any], owner: object, relation: ChildLinker, *, changed: bool = False) -> None:
        super().__init__(children)
        self._owner = weakref.ref(owner)
        self.relation = relation
        """The one-to-many relation the list is the value of."""
        self.changed = changed
        """Changed (or assigned) since the owner's session last looked at it:
        an undo past that change unloads the list rather than keep it."""
        self.removed: list[Any] | None = None
        """The children taken out since the owner's session last looked at it,
        kept only for a relation that deletes orphans."""

    @property
    def owner(self) -> Any:
        """The object holding the list (``None`` once it is gone)."""
        return self._owner()

    def belongs_to(self, obj: object) -> bool:
        """Whether this is ``obj``'s own list (not one taken from another object)."""
        return self._owner() is obj

    def _link_one(self, child: Any) -> None:
        owner = self._owner()
        if owner is not None:
            self.relation.link_child(owner, child)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # a copy or a pickle is a plain list of (copies of) the children: the
        # owner this one notes changes on is not the copy's. The empty list
        # comes first and the children after, so a child pointing back at
        # the owner that holds the list copies too
        return (list, (), None, iter(self))

    def take_out(self, children: Iterable[Any]) -> None:
        """Note ``children`` as taken out of the list, for a relation that
        deletes orphans (the flush deletes those not put back, nor elsewhere)."""
        if self.relation.deletes_orphans:
            if self.removed is None:
                self.removed = []
            self.removed.extend(children)

    def _link(self, children: Iterable[Any]) -> None:
        owner = self._owner()
        if owner is None:
            return
        link = self.relation.link_child
        for child in children:
            link(owner, child)

    # a child is linked before it is put in: when linking refuses it, the list is as it was

    def append(self, child: Any, /) -> None:
        self._link_one(child)
        list.append(self, child)
        self.changed = True
        _note(id(self._owner()))

    def insert(self, index: SupportsIndex, child: Any, /) -> None:
        self._link_one(child)
        list.insert(self, index, child)
        self.changed = True
        _note(id(self._owner()))

    def extend(self, children: Iterable[Any], /) -> None:
        children = list(children)  # an iterator is read once, here
        self._link(children)
        list.extend(self, children)
        self.changed = True
        _note(id(self._owner()))

    def __iadd__(self, children: Iterable[Any], /) -> Self:  # type: ignore[misc]
        self.extend(children)
        return self

    def __setitem__(self, index: Any, value: Any, /) -> None:
        if isinstance(index, slice):
            value = list(value)
            self._link(value)
            replaced = self[index]
        else:
            self._link_one(value)
            replaced = [self[index]]
        list.__setitem__(self, index, value)
        self.take_out(replaced)
        self.changed = True
        _note(id(self._owner()))

    # the methods that take children out, noted for a relation that deletes orphans

    def remove(self, child: Any, /) -> None:
        taken = self[self.index(child)]
        list.remove(self, child)
        self.take_out((taken,))
        self.changed = True
        _note(id(self._owner()))

    def pop(self, index: SupportsIndex = -1, /) -> Any:
        taken = list.pop(self, index)
        self.take_out((taken,))
        self.changed = True
        _note(id(self._owner()))
        return taken

    def clear(self) -> None:
        taken = list(self)
        list.clear(self)
        self.take_out(taken)
        self.changed = True
        _note(id(self._owner()))

    def __delitem__(self, index: Any, /) -> None:
        taken = self[index] if isinstance(index, slice) else [self[index]]
        list.__delitem__(self, index)
        self.take_out(taken)
        self.changed = True
        _note(id(self._owner()))

    def __imul__(self, times: SupportsIndex, /) -> Self:
        taken = list(self) if operator.index(times) <= 0 else []
        list.__imul__(self, times)
        self.take_out(taken)
        self.changed = True
        _note(id(self._owner()))
        return self


class ChildLinker(Protocol):
    """What a :class:`ChildList` points a child put in it at its owner with
    (the relation's descriptor, :class:`uow.model.RelationDescriptor`)."""

    @property
    def deletes_orphans(self) -> bool: ...

    def link_child(self, owner: Any, child: Any) -> None: ...


def _noting(change: Callable[..., Any]) -> Callable[..., Any]:
    def noted(self: ChildList, *args: Any, **kwargs: Any) -> Any:
        result = change(self, *args, **kwargs)
        self.changed = True
        _note(id(self._owner()))
        return result

    noted.__name__ = change.__name__
    noted.__doc__ = change.__doc__
    return noted


# the methods of list that only reorder it, wrapped the same way
for _name in ("sort", "reverse"):
    setattr(ChildList, _name, _noting(getattr(list, _name)))


def unwatched_list(children: Any, owner: object) -> bool:
    """Whether ``children`` is a list that is not ``owner``'s own
    :class:`ChildList` (a change to it would go unnoted)."""
    return isinstance(children, list) and not (type(children) is ChildList and children.belongs_to(owner))


def changed_since_flush(children: Any, owner: object) -> bool:
    """Whether ``children``, what ``owner`` holds in a one-to-many relation,
    is a list with changes no flush has seen: assigned and not made the
    owner's own yet, or its own list changed since."""
    return unwatched_list(children, owner) or (type(children) is ChildList and children.changed)


def holds_unwatched_children(obj: Any, child_relations: Iterable[tuple[str, Callable[[Any], Any]]]) -> bool:
    """Whether ``obj`` holds an :func:`unwatched_list` in a one-to-many relation."""
    return any(unwatched_list(read(obj), obj) for _, read in child_relations)


__all__ = [
    "WATCHED",
    "ChildLinker",
    "ChildList",
    "Sink",
    "changed_since_flush",
    "holds_unwatched_children",
    "note_assignment",
    "note_relation_assigned",
    "relation_assigned",
    "set_attribute",
    "unwatched_list",
]
