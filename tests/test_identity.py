"""The identity map: its memory of objects it let go of (``detach``), and the
assignments it is told of, which decide what a flush compares."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uow
from uow.assignments import WATCHED, ChildList
from uow.identity import IdentityMap, InstanceState, Status
from uow.model import Model, PrimaryKey, table_info


class Thing(Model, table="identity_things"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str = ""


def _tracked(identity: IdentityMap, key: int) -> InstanceState:
    table = table_info(Thing)
    thing = Thing(id=key, name=f"thing {key}")
    state = InstanceState(thing, key, table, table.values_of(thing), Status.PERSISTENT)
    identity.track(state)
    return state


def test_a_detached_object_is_known_as_such_and_an_untracked_one_is_not() -> None:
    identity = IdentityMap()
    state = _tracked(identity, 1)

    identity.detach(state)

    assert state.status is Status.DETACHED
    assert state.obj not in identity and identity.get(state.table, 1) is None
    assert identity.was_detached(state.obj)
    assert not identity.was_detached(Thing(id=1, name="thing 1"))


def test_detached_objects_that_are_gone_are_swept_and_live_ones_are_still_known() -> None:
    identity = IdentityMap()
    kept = _tracked(identity, 0)
    identity.detach(kept)
    for key in range(1, 5000):
        identity.detach(_tracked(identity, key))  # each object is gone once its state is
    gc.collect()

    assert len(identity._detached) < 2500  # swept as it grew, not one entry per detach
    assert identity.was_detached(kept.obj)
    assert not any(identity.was_detached(Thing(id=key)) for key in range(1, 100))


def test_an_object_let_go_after_its_delete_is_known_as_deleted_not_as_detached() -> None:
    identity = IdentityMap()
    deleted = _tracked(identity, 1)
    deleted.status = Status.GONE  # its delete was flushed
    expunged = _tracked(identity, 2)

    identity.detach(deleted)
    identity.detach(expunged)

    assert identity.was_deleted(deleted.obj) and not identity.was_detached(deleted.obj)
    assert identity.was_detached(expunged.obj) and not identity.was_deleted(expunged.obj)
    assert identity.was_let_go(deleted.obj) and identity.was_let_go(expunged.obj)
    assert not identity.was_let_go(Thing(id=1))


def test_only_assigned_objects_are_named_for_comparison_in_the_order_they_were_tracked() -> None:
    identity = IdentityMap()
    states = [_tracked(identity, key) for key in range(5)]
    assert identity.states_to_compare() == []

    states[3].obj.name = "changed"
    states[1].obj.name = "changed too"
    states[3].obj.name = "twice"

    assert identity.states_to_compare() == [states[1], states[3]]
    identity.compared_all()
    assert identity.states_to_compare() == []


class Document(Model, table="identity_documents"):
    id: Annotated[int | None, PrimaryKey()] = None
    body: dict[str, Any] = msgspec.field(default_factory=dict)


def test_a_state_compared_always_is_named_until_it_is_untracked() -> None:
    identity = IdentityMap()
    first = _tracked(identity, 1)
    table = table_info(Document)
    document = Document(id=2, body={"text": "x"})
    second = InstanceState(document, 2, table, table.values_of(document), Status.PERSISTENT)
    identity.track(second)  # a JSON value can change in place, without an assignment
    first.obj.name = "changed"
    identity.compared_all()

    assert identity.states_to_compare() == [second]
    identity.untrack(second)
    second.obj.body = {"text": "not tracked"}
    assert identity.states_to_compare() == []


def test_assignments_to_untracked_objects_are_noted_nowhere() -> None:
    identity = IdentityMap()
    state = _tracked(identity, 1)
    identity.detach(state)

    state.obj.name = "after"

    assert id(state.obj) not in WATCHED
    assert identity.states_to_compare() == []


def test_a_map_cleared_or_let_go_of_stops_watching_its_objects() -> None:
    cleared = IdentityMap()
    kept = _tracked(cleared, 1).obj
    cleared.clear()
    dropped = IdentityMap()
    held = [_tracked(dropped, key).obj for key in range(2, 5)]
    assert all(id(obj) in WATCHED for obj in held)

    del dropped
    gc.collect()

    assert id(kept) not in WATCHED
    assert not any(id(obj) in WATCHED for obj in held)


def test_an_object_another_map_watches_is_compared_at_every_flush() -> None:
    first, second = IdentityMap(), IdentityMap()
    shared = _tracked(first, 1)
    again = InstanceState(shared.obj, 7, shared.table, shared.snapshot, Status.PERSISTENT)
    second.track(again)

    assert second.states_to_compare() == [again]  # no assignment would tell it
    shared.obj.name = "changed"
    assert first.states_to_compare() == [shared]


class Trimmed(Model, table="identity_trimmed"):
    """A model with a ``__setattr__`` of its own, which calls the model's."""

    id: Annotated[int | None, PrimaryKey()] = None
    name: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value.strip() if isinstance(value, str) else value)


@pytest.mark.anyio
async def test_a_model_with_its_own_setattr_has_its_assignments_written() -> None:
    async with uow.create_engine("memory://") as engine:
        await engine.create_all(Trimmed)
        async with uow.AsyncSession(engine) as session:
            trimmed = await session.insert(Trimmed(name="first"))
            trimmed.name = "  second  "
            assert session.is_modified(trimmed)
            await session.commit()
        async with uow.AsyncSession(engine) as session:
            assert (await session.get_one(Trimmed, trimmed.id)).name == "second"


# --- lookups by columns other than the key (upserts on a unique column) ----------------

_NAMES = st.sampled_from(["a", "b", "c", None])  # None: a column left empty is filed too
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("track"), _NAMES),
        st.tuples(st.just("rename"), st.integers(0, 30), _NAMES),  # the snapshot changes
        st.tuples(st.just("untrack"), st.integers(0, 30)),
        st.tuples(st.just("find"), _NAMES),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(steps=_STEPS)
def test_a_lookup_by_a_column_finds_what_a_walk_of_every_tracked_object_finds(
    steps: list[tuple[Any, ...]],
) -> None:
    table = table_info(Thing)
    name = (table.column_index["name"],)
    identity = IdentityMap()
    states: list[InstanceState] = []
    for step in steps:
        if step[0] == "track":
            thing = Thing(id=len(states) + 1, name=step[1])
            state = InstanceState(thing, len(states) + 1, table, table.values_of(thing), Status.PERSISTENT)
            identity.track(state)
            states.append(state)
        elif step[0] == "rename" and states:
            state = states[step[1] % len(states)]
            identity.set_values(state, {"name": step[2]})
        elif step[0] == "untrack" and states:
            identity.untrack(states[step[1] % len(states)])
        elif step[0] == "find":
            walked = [s for s in identity.states() if s.snapshot[name[0]] == step[1]]
            found = identity.find_by_columns(table, name, (step[1],))
            assert sorted(s.ref for s in found) == sorted(s.ref for s in walked)
    lookup = identity.lookups.get(table, {}).get(name)
    if lookup is not None:  # each tracked object filed once, nothing else
        assert sorted(s.ref for found in lookup.states.values() for s in found) == sorted(
            s.ref for s in identity.states()
        )


def test_a_lookup_files_each_object_once_and_lets_go_of_untracked_ones() -> None:
    table = table_info(Thing)
    name = (table.column_index["name"],)
    identity = IdentityMap()
    state, other = _tracked(identity, 1), _tracked(identity, 2)
    assert identity.find_by_columns(table, name, ("thing 1",)) == [state]
    for n in range(1000):
        identity.set_values(state, {"name": f"name {n}"})
    lookup = identity.lookups[table][name]
    assert len(lookup.states) == 2  # under its last name only, and the other object's
    assert identity.find_by_columns(table, name, ("name 999",)) == [state]
    assert identity.find_by_columns(table, name, ("name 5",)) == []

    identity.untrack(other)
    assert len(lookup.states) == 1 and identity.find_by_columns(table, name, ("thing 2",)) == []


# --- lists of children -------------------------------------------------------------------


class _Linker:
    """Stands in for a relation's descriptor: records the children it is asked
    to link, for a relation that deletes orphans."""

    deletes_orphans = True

    def __init__(self) -> None:
        self.linked: list[tuple[Any, Any]] = []

    def link_child(self, owner: Any, child: Any) -> None:
        self.linked.append((owner, child))


# each change of [1, 2], with the children it puts in the list and takes out of it
_CHANGES: dict[str, tuple[Callable[[ChildList], object], list[int], list[int]]] = {
    "append": (lambda children: children.append(9), [9], []),
    "extend": (lambda children: children.extend(iter([9, 10])), [9, 10], []),
    "insert": (lambda children: children.insert(0, 9), [9], []),
    "remove": (lambda children: children.remove(1), [], [1]),
    "pop": (lambda children: children.pop(), [], [2]),
    "clear": (lambda children: children.clear(), [], [1, 2]),
    "sort": (lambda children: children.sort(reverse=True), [], []),
    "reverse": (lambda children: children.reverse(), [], []),
    "setitem": (lambda children: children.__setitem__(0, 9), [9], [1]),
    "setslice": (lambda children: children.__setitem__(slice(0, 1), iter([9, 10])), [9, 10], [1]),
    "delitem": (lambda children: children.__delitem__(0), [], [1]),
    "delslice": (lambda children: children.__delitem__(slice(0, 2)), [], [1, 2]),
    "iadd": (lambda children: children.__iadd__(iter([9])), [9], []),
    "imul": (lambda children: children.__imul__(2), [], []),
    "imul0": (lambda children: children.__imul__(0), [], [1, 2]),
}


@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_every_change_to_a_list_of_children_is_noted_on_its_owner_with_what_it_puts_in_and_takes_out(
    change: str,
) -> None:
    identity = IdentityMap()
    owner = _tracked(identity, 1)
    linker = _Linker()
    children = ChildList([1, 2], owner.obj, linker)
    identity.compared_all()

    apply, put_in, taken_out = _CHANGES[change]
    apply(children)

    assert identity.states_to_compare() == [owner]
    assert children.changed
    assert linker.linked == [(owner.obj, child) for child in put_in]
    assert all(child in children for child in put_in)
    assert (children.removed or []) == taken_out


def test_reading_or_copying_a_list_of_children_notes_nothing() -> None:
    identity = IdentityMap()
    owner = _tracked(identity, 1)
    children = ChildList([1, 2], owner.obj, _Linker())
    copied = children.copy()
    copied.append(3)
    assert children == [1, 2] and len(children) == 2 and children[0] == 1 and type(copied) is list
    assert identity.states_to_compare() == []


@settings(max_examples=60)
@given(
    tracked_keys=st.sets(st.integers(1, 12), max_size=6),
    read_keys=st.lists(st.integers(1, 12), max_size=12),
)
def test_a_read_gives_the_tracked_object_for_a_tracked_key_and_tracks_a_new_one_for_each_other_row(
    tracked_keys: set[int], read_keys: list[int]
) -> None:
    table = table_info(Thing)
    identity = IdentityMap()
    before = {key: _tracked(identity, key) for key in sorted(tracked_keys)}
    refs = iter(range(100, 200))
    rows = [(key, f"read {key}") for key in read_keys]

    objects = identity.load(table, rows, refs, lambda row: identity.get(table, row[0]).obj)  # type: ignore[union-attr]

    assert [thing.id for thing in objects] == read_keys
    made: dict[int, Thing] = {}
    for thing, row in zip(objects, rows):
        state = identity.state_of(thing)
        assert state is not None and identity.get(table, thing.id) is state
        if thing.id in before:
            assert state is before[thing.id] and thing.name == f"thing {thing.id}"  # values kept
        else:
            # one object per key, even when the read names the key twice
            assert made.setdefault(thing.id, thing) is thing
            assert (thing.name, state.snapshot, state.status) == (row[1], row, Status.PERSISTENT)
            assert WATCHED[id(thing)] is identity.assigned
    new_refs = sorted(identity.state_of(thing).ref for thing in made.values())  # type: ignore[union-attr]
    assert new_refs == list(range(100, 100 + len(made)))
    thing = next(iter(made.values()), None)
    if thing is not None:  # a new object's assignments are noted
        thing.name = "changed"
        assert identity.state_of(thing) in identity.states_to_compare()
    identity.clear()
