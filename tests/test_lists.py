"""Putting an object in a one-to-many list points it at the list's owner, as
assigning its many-to-one relation would; the session then moves a tracked
object there. Taking one out of a list that deletes orphans deletes it.
(The moves themselves are in the conformance suite, on every adapter; these
are the rules around them.)"""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from typing import Annotated

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uow
from uow.assignments import ChildList
from uow.errors import ModelDefinitionError, RelationNotLoadedError, SessionStateError
from uow.model import ForeignKey, Model, PrimaryKey, filled_by_relation, relation, table_info

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


class Basket(Model, table="list_baskets"):
    """An aggregate: its fruit live and die with it."""

    id: Annotated[int | None, PrimaryKey()] = None
    label: str
    fruit: list[Fruit] = relation(back="basket_id", delete_orphans=True)


class Fruit(Model, table="list_fruit"):
    id: Annotated[int | None, PrimaryKey()] = None
    basket_id: Annotated[int | None, ForeignKey(Basket, on_delete="cascade")] = None
    name: str
    basket: Basket | None = relation("basket_id")
    seeds: list[Seed] = relation(back="fruit_id")


class Seed(Model, table="list_seeds"):
    id: Annotated[int | None, PrimaryKey()] = None
    fruit_id: Annotated[int | None, ForeignKey(Fruit, on_delete="cascade")] = None


class Invoice(Model, table="list_invoices"):
    """An aggregate whose lines cannot exist without it: their key is NOT NULL."""

    id: Annotated[int | None, PrimaryKey()] = None
    number: str
    lines: list[InvoiceLine] = relation(back="invoice_id", delete_orphans=True)


class InvoiceLine(Model, table="list_invoice_lines"):
    id: Annotated[int | None, PrimaryKey()] = None
    invoice_id: Annotated[int, ForeignKey(Invoice, on_delete="cascade")] = filled_by_relation()
    sku: str
    invoice: Invoice | None = relation("invoice_id")


async def _basket_of(session: uow.AsyncSession, *names: str) -> Basket:
    basket = Basket(label="basket", fruit=[Fruit(name=name) for name in names])
    session.add(basket)
    await session.commit()
    return basket


async def _stored_fruit(engine: uow.Engine) -> list[tuple[str, int | None]]:
    async with uow.AsyncSession(engine) as session:
        return [(fruit.name, fruit.basket_id) for fruit in await session.query(Fruit).order_by("id").all()]


async def test_a_child_taken_out_of_a_list_that_deletes_orphans_is_deleted(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear", "plum", "fig", "kiwi", "lime")
        apple, _, plum, fig, _, _ = basket.fruit
        basket.fruit.remove(apple)
        basket.fruit.pop()  # lime
        del basket.fruit[0]  # pear
        basket.fruit[0] = Fruit(name="date")  # plum replaced
        await session.commit()
        assert [fruit.name for fruit in basket.fruit] == ["date", "fig", "kiwi"]
        assert apple not in session and plum not in session and fig in session
    assert await _stored_fruit(engine) == [("fig", basket.id), ("kiwi", basket.id), ("date", basket.id)]


async def test_a_child_taken_out_and_put_back_or_moved_is_no_orphan(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear", "plum")
        other = await _basket_of(session)
        apple, pear, plum = basket.fruit
        basket.fruit.clear()
        basket.fruit.append(apple)  # put back
        other.fruit.append(pear)  # moved
        plum.basket = other  # moved through its own relation
        await session.commit()
        assert apple.basket_id == basket.id and pear.basket_id == other.id and plum.basket_id == other.id
    assert sorted(await _stored_fruit(engine)) == [
        ("apple", basket.id),
        ("pear", other.id),
        ("plum", other.id),
    ]


async def test_an_owner_with_children_taken_out_is_modified_and_kept(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple")
        basket.fruit.pop()
        assert session.is_modified(basket)
        with pytest.raises(SessionStateError, match="unflushed changes"):
            session.expunge(basket)
        await session.commit()
        assert not session.is_modified(basket)
    assert await _stored_fruit(engine) == []


async def test_a_new_child_taken_out_of_a_new_owners_list_is_never_inserted(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = Basket(label="new", fruit=[Fruit(name="apple"), Fruit(name="pear")])
        session.add(basket)
        apple = basket.fruit.pop(0)
        await session.commit()
        assert apple not in session and apple.id is None
    assert await _stored_fruit(engine) == [("pear", basket.id)]


async def test_assigning_a_list_that_deletes_orphans_deletes_what_it_no_longer_holds(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear")
        apple, _ = basket.fruit
        basket.fruit = [apple, Fruit(name="fig")]
        await session.commit()
    assert await _stored_fruit(engine) == [("apple", basket.id), ("fig", basket.id)]


async def test_an_orphans_delete_cascades_to_its_tracked_children(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple")
        apple = basket.fruit[0]
        seed = Seed()
        apple.seeds = [seed]
        await session.commit()
        basket.fruit.remove(apple)
        session.plan()  # records the orphan's delete, and its seed's with it
        assert [(type(e).__name__, e.table) for e in session.journal.pending] == [
            ("Deleted", "list_fruit"),
            ("Deleted", "list_seeds"),
        ]
        await session.commit()
        assert apple not in session and seed not in session
    assert await _stored_fruit(engine) == []


async def test_a_rollback_brings_an_orphan_back_and_unloads_the_list(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear")
        apple, pear = basket.fruit
        basket.fruit.remove(apple)
        await session.flush()
        assert apple not in session
        await session.rollback()
        assert apple in session and apple.basket_id == basket.id
        with pytest.raises(RelationNotLoadedError):
            basket.fruit  # noqa: B018
        await session.query(Basket).include(Basket.fruit).one()
        assert basket.fruit == [apple, pear]
        basket.fruit.remove(pear)  # not flushed: the rollback drops it
        await session.rollback()
        await session.commit()
    assert await _stored_fruit(engine) == [("apple", basket.id), ("pear", basket.id)]


async def test_merging_an_aggregate_deletes_the_parts_its_copy_leaves_out(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear")
        apple = basket.fruit[0]
    async with uow.AsyncSession(engine) as session:  # the list is not loaded here: merge reads it
        copy = Basket(id=basket.id, label="basket", fruit=[Fruit(id=apple.id, name="green apple"), Fruit(name="fig")])
        merged = await session.merge(copy)
        await session.commit()
        assert [fruit.name for fruit in merged.fruit] == ["green apple", "fig"]
    assert await _stored_fruit(engine) == [("green apple", basket.id), ("fig", basket.id)]


async def test_refresh_discards_children_taken_out_of_a_list_that_deletes_orphans(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear")
        basket.fruit.pop()
        await session.refresh(basket)  # discards what was not flushed, the list change included
        with pytest.raises(RelationNotLoadedError):
            basket.fruit  # noqa: B018
        assert not session.is_modified(basket)
        await session.commit()
    assert await _stored_fruit(engine) == [("apple", basket.id), ("pear", basket.id)]


async def test_a_list_that_keeps_orphans_deletes_nothing(engine: uow.Engine) -> None:
    await engine.create_all(Crate, Bottle, Note)
    async with uow.AsyncSession(engine) as session:
        crate = Crate(label="crate", notes=[Note(text="kept")])
        session.add(crate)
        await session.commit()
        note = crate.notes.pop()
        await session.commit()
        assert note in session and note.crate_id == crate.id
    assert table_info(Crate).relations["notes"].delete_orphans is False


def test_delete_orphans_belongs_to_a_list() -> None:
    class Stray(Model, table="list_strays"):
        id: Annotated[int | None, PrimaryKey()] = None
        crate_id: Annotated[int | None, ForeignKey(Crate)] = None
        crate: Crate | None = relation("crate_id", delete_orphans=True)

    with pytest.raises(ModelDefinitionError, match="delete_orphans is for a one-to-many relation"):
        table_info(Stray)


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


def test_a_copied_or_pickled_object_holds_a_plain_list_of_copied_children() -> None:
    crate = Crate(id=1, label="a")
    crate.notes = [Note(text="first")]  # each note points back at the crate
    for copied in (copy.deepcopy(crate), pickle.loads(pickle.dumps(crate))):
        assert type(copied.notes) is list and [note.text for note in copied.notes] == ["first"]
        assert copied.notes[0] is not crate.notes[0] and copied.notes[0].crate is not crate
        # the cycle is kept: the copied note points back at the copied crate
        assert copied.notes[0].crate is copied


def test_a_deep_copy_of_a_child_copies_its_parent_once_and_leaves_the_original_untouched() -> None:
    crate = Crate(id=1, label="a")
    first, second = Note(text="first"), Note(text="second")
    crate.notes = [first, second]

    copied = copy.deepcopy(second)

    assert copied.crate is not crate and copied.crate is not None
    assert [note.text for note in copied.crate.notes] == ["first", "second"]
    assert copied.crate.notes[1] is copied and copied.crate.notes[0].crate is copied.crate
    copied.crate.label = "changed"
    copied.crate.notes.append(Note(text="third"))
    assert crate.label == "a" and crate.notes == [first, second] and second.crate is crate


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


# --- orphans, as a property ---------------------------------------------------------------

_STEPS = st.lists(
    st.tuples(st.sampled_from(["add", "take", "move", "flush"]), st.integers(0, 7), st.integers(0, 1)),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(steps=_STEPS)
def test_an_object_taken_out_is_deleted_exactly_when_no_list_or_owner_holds_it(
    steps: list[tuple[str, int, int]],
) -> None:
    """Random puts, takes and moves between two baskets' lists, flushed at
    random: an object is deleted at a flush when it was taken out of a basket's
    list since the last one, is not in that list, and still belongs to that
    basket; storage holds what a model of that rule says, on every adapter."""
    for url in ("memory://", "sqlite://:memory:"):
        anyio.run(_play_orphans, url, steps)


async def _play_orphans(url: str, steps: list[tuple[str, int, int]]) -> None:
    async with uow.create_engine(url) as engine:
        await engine.create_all(Basket, Fruit, Seed)
        async with uow.AsyncSession(engine) as session:
            baskets = [Basket(label="a", fruit=[]), Basket(label="b", fruit=[])]
            session.add_all(baskets)
            await session.commit()
            fruit: list[Fruit] = []
            owner: dict[int, int] = {}  # fruit index -> basket index, for live fruit
            lists: list[list[int]] = [[], []]  # what each basket's list holds, by fruit index
            taken: list[list[int]] = [[], []]  # taken out of each list since the last flush

            def expect_flush() -> None:
                for b in (0, 1):
                    for f in taken[b]:
                        if f in owner and owner[f] == b and f not in lists[b]:
                            del owner[f]
                    taken[b].clear()

            for action, number, b in steps:
                if action == "add":
                    fruit.append(Fruit(name=f"fruit {len(fruit)}"))
                    baskets[b].fruit.append(fruit[-1])
                    owner[len(fruit) - 1] = b
                    lists[b].append(len(fruit) - 1)
                elif action == "take" and lists[b]:
                    f = lists[b].pop(number % len(lists[b]))
                    baskets[b].fruit.pop(number % len(baskets[b].fruit))
                    taken[b].append(f)
                elif action == "move" and owner:
                    f = sorted(owner)[number % len(owner)]
                    baskets[b].fruit.append(fruit[f])
                    owner[f] = b
                    lists[b].append(f)
                elif action == "flush":
                    await session.flush()
                    expect_flush()
                assert [[fruit.index(x) for x in basket.fruit] for basket in baskets] == lists
            await session.commit()
            expect_flush()
            stored = {(x.name, x.basket_id) for x in await session.query(Fruit).all()}
            assert stored == {(fruit[f].name, baskets[b].id) for f, b in owner.items()}, url


async def test_a_child_taken_out_then_moved_by_its_foreign_key_or_by_update_is_no_orphan(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket, other = Basket(label="basket"), await _basket_of(session)
        basket.fruit = [Fruit(name="apple"), Fruit(name="pear")]  # each fruit's relation holds the basket
        session.add(basket)
        await session.commit()
        apple, pear = basket.fruit
        basket.fruit.clear()
        apple.basket_id = other.id  # the key, assigned over the relation, is the newer word
        await session.update(pear, basket_id=other.id)  # recording the removal first must not delete it
        await session.commit()
        assert apple in session and pear in session and apple.basket is other
    assert sorted(await _stored_fruit(engine)) == [("apple", other.id), ("pear", other.id)]


async def test_merge_adds_new_children_through_their_owner_which_fills_a_not_null_key(engine: uow.Engine) -> None:
    await engine.create_all(Invoice, InvoiceLine)
    async with uow.AsyncSession(engine) as session:
        invoice = await session.merge(Invoice(number="1", lines=[InvoiceLine(sku="a")]))
        await session.commit()
        first = invoice.lines[0]
    async with uow.AsyncSession(engine) as session:
        copy = Invoice(id=invoice.id, number="1b", lines=[InvoiceLine(id=first.id, sku="a2"), InvoiceLine(sku="b")])
        merged = await session.merge(copy)
        await session.commit()
        assert [(line.sku, line.invoice_id) for line in merged.lines] == [("a2", invoice.id), ("b", invoice.id)]
    async with uow.AsyncSession(engine) as session:
        stored = await session.query(InvoiceLine).order_by("id").all()
        assert [(line.sku, line.invoice_id) for line in stored] == [("a2", invoice.id), ("b", invoice.id)]


async def test_a_new_owner_added_again_after_a_rollback_takes_the_tracked_children_its_list_holds(
    engine: uow.Engine,
) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple")
        apple = basket.fruit[0]
        crate = Basket(label="crate", fruit=[])
        session.add(crate)
        crate.fruit.append(apple)
        await session.rollback()  # takes back the insert and the move; the list is the new owner's own
        assert apple.basket_id == basket.id and [fruit.name for fruit in crate.fruit] == ["apple"]
        session.add(crate)  # the retry: the list it holds says where apple goes
        await session.commit()
        assert apple.basket_id == crate.id
    assert await _stored_fruit(engine) == [("apple", crate.id)]


async def test_a_rollback_unloads_a_list_read_while_a_child_was_moved_away(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        basket = await _basket_of(session, "apple", "pear")
        other = await _basket_of(session)
        apple = basket.fruit[0]
        other.fruit.append(apple)
        await session.query(Basket).filter(id=basket.id).include(Basket.fruit).one()  # flushes the move first
        assert [fruit.name for fruit in basket.fruit] == ["pear"]
        await session.rollback()  # apple belongs to the basket again: a list read without it is stale
        with pytest.raises(RelationNotLoadedError):
            basket.fruit  # noqa: B018
        await session.query(Basket).filter(id=basket.id).include(Basket.fruit).one()
        basket.fruit = [Fruit(name="fig")]  # the whole aggregate replaced: apple and pear are orphans
        await session.commit()
    assert await _stored_fruit(engine) == [("fig", basket.id)]


async def test_objects_read_with_their_lists_are_freed_once_let_go_of(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        await _basket_of(session, "apple", "pear")
    async with uow.AsyncSession(engine) as session:
        [basket] = await session.query(Basket).include(Basket.fruit).all()
        freed = weakref.ref(basket), weakref.ref(basket.fruit[0])
        assert basket.fruit.belongs_to(basket)
    del basket, session
    gc.collect()
    assert [ref() for ref in freed] == [None, None]  # the list holds its owner weakly: no cycle outlives them


def test_a_list_that_outlives_its_owner_is_a_plain_list() -> None:
    crate = Crate(id=1, label="a")
    crate.bottles = [Bottle(label="first")]  # a bottle has no relation back: nothing else holds the crate
    bottles = crate.bottles
    assert bottles[0].crate_id == 1
    del crate
    gc.collect()
    assert bottles.owner is None
    bottles.append(Bottle(label="second"))  # nothing to link it to
    assert [bottle.label for bottle in bottles] == ["first", "second"] and bottles[1].crate_id is None


async def test_objects_read_with_both_ends_of_a_relation_are_freed_once_let_go_of(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    async with uow.AsyncSession(engine) as session:
        await _basket_of(session, "apple", "pear")
    async with uow.AsyncSession(engine) as session:
        [basket] = await session.query(Basket).include(Basket.fruit, Fruit.basket).all()
        assert basket.fruit[0].basket is basket  # a cycle: basket -> its list -> fruit -> basket
        freed = weakref.ref(basket), weakref.ref(basket.fruit[0])
    del basket, session
    gc.collect()
    assert [ref() for ref in freed] == [None, None]


async def test_a_session_dropped_holding_a_connection_says_so(engine: uow.Engine) -> None:
    await engine.create_all(Basket, Fruit, Seed)
    session = uow.AsyncSession(engine)
    await session.query(Basket).all()  # a transaction, on a connection of the pool
    connection = session._connection
    with pytest.warns(ResourceWarning, match="close sessions"):
        del session
        gc.collect()
    assert connection is not None
    await engine.adapter.release(connection, discard=True)  # what closing would have done
