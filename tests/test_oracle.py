"""The testing kit's oracle for users' own models, on every adapter: what the
database holds in replay's shape, and the check that it is the replay of a
session's flushed journal, which names what differs."""

from __future__ import annotations

from typing import Annotated

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uow
from uow import ForeignKey, Model, PrimaryKey, Unique, relation
from uow.testing import assert_storage_replays_journal, stored_rows

pytestmark = pytest.mark.anyio


class Shelf(Model, table="oracle_shelves"):
    id: Annotated[int | None, PrimaryKey()] = None
    label: Annotated[str, Unique()]


class Book(Model, table="oracle_books"):
    id: Annotated[int | None, PrimaryKey()] = None
    title: str
    shelf_id: Annotated[int | None, ForeignKey(Shelf, on_delete="cascade")] = None
    shelf: Shelf | None = relation("shelf_id")


async def test_stored_rows_are_what_the_session_flushed_in_replays_shape(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Book)
    async with uow.AsyncSession(engine) as session:
        book = Book(title="Dune", shelf=Shelf(label="sf"))
        session.add(book)
        await session.flush()
        session.add(Book(title="pending"))  # not flushed: not in the database
        assert book.shelf is not None
        shelf_id = book.shelf.id
        in_session = await stored_rows(session, Shelf, Book)
        assert in_session == {
            "oracle_shelves": {shelf_id: {"id": shelf_id, "label": "sf"}},
            "oracle_books": {book.id: {"id": book.id, "title": "Dune", "shelf_id": shelf_id}},
        }
        assert len(session.journal.pending) == 1  # nothing was flushed to read them
        assert await stored_rows(engine, Shelf, Book) == {"oracle_shelves": {}, "oracle_books": {}}  # uncommitted
        await assert_storage_replays_journal(session, Shelf, Book)
        await session.commit()
    assert (await stored_rows(engine, Book))["oracle_books"].keys() == {book.id, book.id + 1}


async def test_a_database_that_differs_from_the_journal_is_named(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Book)
    async with uow.AsyncSession(engine) as session:
        session.add_all([Book(title="Dune"), Book(title="Emma")])
        await session.commit()
        async with uow.AsyncSession(engine) as other:  # a change this session's journal does not know
            (await other.query(Book).filter(title="Emma").one()).title = "Persuasion"
            other.add(Shelf(label="new"))
            await other.commit()
        with pytest.raises(AssertionError, match=r"oracle_books row \d+ differs .* title: journal 'Emma', database"):
            await assert_storage_replays_journal(session, Book)
        with pytest.raises(AssertionError, match=r"oracle_shelves: .* holds rows \[\d+\] it does not"):
            await assert_storage_replays_journal(session, Shelf)


async def test_rows_stored_before_the_session_are_its_base(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Book)
    async with uow.AsyncSession(engine) as session:
        session.add(Book(title="old", shelf=Shelf(label="old")))
        await session.commit()
    base = await stored_rows(engine, Shelf, Book)
    async with uow.AsyncSession(engine) as session:
        shelf = await session.query(Shelf).one()
        await session.query(Book).all()  # tracked, so the session records the cascade to it as an event
        shelf.label = "renamed"
        await session.remove(shelf)
        session.add(Shelf(label="fresh"))
        await session.flush()
        await assert_storage_replays_journal(session, Shelf, Book, base=base)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["a", "b", "c"]), st.booleans()),
        st.tuples(st.just("retitle"), st.integers(0, 5), st.text("xyz", max_size=3)),
        st.tuples(st.just("delete"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("flush"), st.none(), st.none()),
        st.tuples(st.just("rollback"), st.none(), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(operations=OPERATIONS)
def test_any_sequence_of_own_operations_replays_to_the_database(operations: list[tuple[str, object, object]]) -> None:
    """What a user's own property test looks like: random operations on their
    models, and the oracle after each flush (on memory here, to keep it quick)."""

    async def run() -> None:
        async with uow.create_engine("memory://") as engine:
            await engine.create_all(Shelf, Book)
            async with uow.AsyncSession(engine) as session:
                books: list[Book] = []
                for name, first, second in operations:
                    live = [b for b in books if b in session]
                    if name == "add":
                        shelf = await session.query(Shelf).filter(label=first).one_or_none()
                        book = Book(title=str(first), shelf=shelf or Shelf(label=str(first)) if second else None)
                        session.add(book)
                        books.append(book)
                    elif name == "retitle" and live:
                        live[int(first) % len(live)].title = str(second)  # type: ignore[call-overload]
                    elif name == "delete" and live:
                        session.delete(live[int(first) % len(live)])  # type: ignore[call-overload]
                    elif name == "flush":
                        await session.flush()
                    elif name == "rollback":
                        await session.rollback()
                    if not session.journal.pending:
                        await assert_storage_replays_journal(session, Shelf, Book)
                await session.flush()
                await assert_storage_replays_journal(session, Shelf, Book)

    anyio.run(run)


async def test_stored_rows_reads_through_a_session_or_an_engine_only() -> None:
    with pytest.raises(uow.errors.ValidationError, match="a session or an engine"):
        await stored_rows("memory://", Shelf)  # type: ignore[arg-type]
