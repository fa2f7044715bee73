"""Putting an object in a one-to-many list points it at the list's owner, as
assigning its many-to-one relation would; the session then moves a tracked
object there. (The moves themselves are in the conformance suite, on every
adapter; these are the rules around them.)"""

from __future__ import annotations

from typing import Annotated

import pytest

import uow
from uow.assignments import ChildList
from uow.errors import SessionStateError
from uow.model import ForeignKey, Model, PrimaryKey, relation

pytestmark = pytest.mark.anyio


class Crate(Model, table="list_crates"):
    id: Annotated[int | None, PrimaryKey()] = None
    label: str
    bottles: list[Bottle] = relation(back="crate_id")
    notes: list[Note] = relation(back="crate_id")


class Bottle(Model, table="list_bottles"):
    """A child with no relation back to its crate: only its foreign key says where it is."""

    id: Annotated[int | None, PrimaryKey()] = None
    crate_id: Annotated[int | None, ForeignKey(Crate)] = None
    label: str


class Note(Model, table="list_notes"):
    id: Annotated[int | None, PrimaryKey()] = None
    crate_id: Annotated[int | None, ForeignKey(Crate)] = None
    text: str
    crate: Crate | None = relation("crate_id")


def test_a_child_put_in_an_assigned_or_owned_list_points_at_the_owner() -> None:
    crate = Crate(label="a")
    first, second = Note(text="first"), Note(text="second")
    crate.notes = [first]
    assert type(crate.notes) is ChildList and crate.notes.belongs_to(crate)
    assert first.crate is crate
    crate.notes.append(second)
    assert second.crate is crate
    other = Crate(label="b", notes=[first])  # the constructor assigns nothing: add() moves it
    assert first.crate is crate and type(other.notes) is list


def test_a_list_taken_from_another_object_becomes_the_new_owners_own() -> None:
    first, second = Crate(label="a"), Crate(label="b")
    note = Note(text="moved")
    first.notes = [note]
    second.notes = first.notes
    assert second.notes is not first.notes and second.notes.belongs_to(second)
    assert note.crate is second


def test_an_object_of_another_model_in_a_list_is_left_alone() -> None:
    crate = Crate(id=7, label="a")
    crate.notes = []
    bottle = Bottle(label="odd")
    crate.notes.append(bottle)  # type: ignore[arg-type]
    assert bottle.crate_id is None


async def test_a_child_without_a_relation_back_moves_by_its_foreign_key(engine: uow.Engine) -> None:
    await engine.create_all(Crate, Bottle, Note)
    async with uow.AsyncSession(engine) as session:
        first, second = Crate(label="first"), Crate(label="second")
        bottle = Bottle(label="bottle")
        first.bottles = [bottle]
        session.add_all([first, second])
        await session.commit()
        assert bottle.crate_id == first.id
        await session.query(Crate).filter(id=second.id).include(Crate.bottles).one()
        second.bottles.append(bottle)
        assert bottle.crate_id == second.id  # the key is assigned at once
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        stored = await session.get_one(Bottle, bottle.id)
        assert stored.crate_id == second.id


async def test_a_tracked_child_without_a_relation_back_is_refused_by_an_owner_without_a_key(
    engine: uow.Engine,
) -> None:
    await engine.create_all(Crate, Bottle, Note)
    async with uow.AsyncSession(engine) as session:
        crate = Crate(label="first", bottles=[Bottle(label="bottle")])
        session.add(crate)
        await session.commit()
        bottle = crate.bottles[0]
        newcomer = Crate(label="new", bottles=[])
        session.add(newcomer)
        with pytest.raises(SessionStateError, match="no relation through 'crate_id'"):
            newcomer.bottles.append(bottle)
        assert newcomer.bottles == [] and bottle.crate_id == crate.id
        await session.commit()
        newcomer.bottles.append(bottle)  # it has a key now
        await session.commit()
        assert bottle.crate_id == newcomer.id


async def test_a_list_read_with_a_moved_child_still_lists_it_until_read_again(engine: uow.Engine) -> None:
    await engine.create_all(Crate, Bottle, Note)
    async with uow.AsyncSession(engine) as session:
        first, second = Crate(label="first", notes=[]), Crate(label="second", notes=[])
        note = Note(text="note")
        first.notes.append(note)
        session.add_all([first, second])
        await session.commit()
        second.notes.append(note)
        await session.commit()
        assert first.notes == [note] and second.notes == [note] and note.crate is second
        reread = await session.query(Crate).filter(id=first.id).include(Crate.notes).one()
        assert reread is first and first.notes == []
