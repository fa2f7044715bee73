"""Reads on every adapter (memory, SQLite, PostgreSQL through the ``engine``
fixture): lookups, Q objects, column expressions, statements and results,
the identity map and autoflush, includes, soft delete, streaming, raw SQL,
parallel reads, and bulk writes from a query."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uow
from uow import Q, select
from uow.conditions import matches
from uow.criteria import compile_lookups
from uow.errors import (
    MultipleResultsFound,
    NoResultFound,
    QueryError,
    RelationNotLoadedError,
    SessionStateError,
    UnknownFieldError,
    UnsupportedOperationError,
)
from uow.events import BulkDeleted, BulkUpdated
from uow.model import ForeignKey, Model, PrimaryKey, SoftDelete, relation, table_info

pytestmark = pytest.mark.anyio


class Author(Model, table="q_authors"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    age: int | None = None
    books: list[Book] = relation(back="author_id")


class Book(Model, SoftDelete, table="q_books"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(Author, on_delete="cascade")] = None
    title: str
    pages: int = 0
    author: Author | None = relation("author_id")
    chapters: list[Chapter] = relation(back="book_id")


class Chapter(Model, table="q_chapters"):
    id: Annotated[int | None, PrimaryKey()] = None
    book_id: Annotated[int | None, ForeignKey(Book, on_delete="cascade")] = None
    title: str
    book: Book | None = relation("book_id")


class Reading(Model, table="q_readings"):
    id: Annotated[int | None, PrimaryKey()] = None
    sensor: str
    value: int


MODELS = (Author, Book, Chapter, Reading)

PEOPLE = [("Ann", 34), ("Abe", 17), ("Bob", 70), ("Cy", None), ("al_%", 12), ("Dee", 34)]


@pytest.fixture
async def session(engine: uow.Engine) -> AsyncIterator[uow.AsyncSession]:
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        yield session


@pytest.fixture
async def people(session: uow.AsyncSession) -> dict[str, Author]:
    """Six authors, each with two books (the second soft-deleted) and a chapter per book."""
    authors = {name: Author(name=name, age=age) for name, age in PEOPLE}
    session.add_all(authors.values())
    for author in authors.values():
        for number in (1, 2):
            book = Book(title=f"{author.name} {number}", pages=number * 100, author=author)
            session.add(book)
            session.add(Chapter(title=f"{book.title} / i", book=book))
    await session.commit()
    for book in await session.query(Book).filter(title__endswith=" 2").all():
        await session.soft_delete(book)
    await session.commit()
    return authors


def names(objects: list[Author]) -> list[str]:
    return [author.name for author in objects]


def count_fetches(session: uow.AsyncSession, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every read the session's connection runs from now on."""
    connection = session._connection
    assert connection is not None
    seen: list[Any] = []
    fetch = connection.fetch

    async def counting(statement: Any) -> Any:
        seen.append(statement)
        return await fetch(statement)

    monkeypatch.setattr(connection, "fetch", counting)
    return seen


# --- lookups -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lookups", "expected"),
    [
        ({"name": "Ann"}, ["Ann"]),
        ({"name__eq": "Ann"}, ["Ann"]),
        ({"age__ne": 34}, ["Abe", "Bob", "al_%"]),
        ({"age__lt": 17}, ["al_%"]),
        ({"age__lte": 17}, ["Abe", "al_%"]),
        ({"age__gt": 34}, ["Bob"]),
        ({"age__gte": 34}, ["Ann", "Bob", "Dee"]),
        ({"name__in": ["Bob", "Cy", "Zed"]}, ["Bob", "Cy"]),
        ({"name__not_in": ["Bob", "Cy"]}, ["Abe", "Ann", "Dee", "al_%"]),
        ({"age__is_null": True}, ["Cy"]),
        ({"age__is_null": False}, ["Abe", "Ann", "Bob", "Dee", "al_%"]),
        ({"age": None}, ["Cy"]),
        ({"name__contains": "B"}, ["Bob"]),
        ({"name__icontains": "B"}, ["Abe", "Bob"]),
        ({"name__startswith": "A"}, ["Abe", "Ann"]),
        ({"name__istartswith": "a"}, ["Abe", "Ann", "al_%"]),
        ({"name__endswith": "e"}, ["Abe", "Dee"]),
        ({"name__iendswith": "E"}, ["Abe", "Dee"]),
        ({"name__contains": "_%"}, ["al_%"]),
        ({"name__contains": "%"}, ["al_%"]),
        ({"name__startswith": "_"}, []),
        ({"age__between": (17, 34)}, ["Abe", "Ann", "Dee"]),
        ({"age__gte": 18, "name__startswith": "A"}, ["Ann"]),
    ],
)
async def test_filter_lookups_select_the_matching_rows(
    session: uow.AsyncSession, people: dict[str, Author], lookups: dict[str, Any], expected: list[str]
) -> None:
    found = await session.query(Author).filter(**lookups).order_by("name").all()
    assert names(found) == sorted(expected)


async def test_q_objects_combine_with_and_or_not(session: uow.AsyncSession, people: dict[str, Author]) -> None:
    query = session.query(Author).order_by("name")
    assert names(await query.filter(Q(age__lt=13) | Q(age__gt=65)).all()) == ["Bob", "al_%"]
    assert await session.query(Author).filter(Q(age__lt=13) | Q(age__gt=65)).count() == 2
    assert names(await query.filter(Q(age__gte=18) & Q(name__startswith="A")).all()) == ["Ann"]
    assert names(await query.filter(~Q(name__startswith="A"), age__is_null=False).all()) == ["Bob", "Dee", "al_%"]
    assert names(await query.filter(Q(Author.age > 60) | Q(name="Cy")).all()) == ["Bob", "Cy"]


async def test_exclude_leaves_out_matches_and_nulls_follow_sql(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    query = session.query(Author).order_by("name")
    assert names(await query.exclude(age__gte=34).all()) == ["Abe", "al_%"]  # Cy's NULL age is unknown, so out
    assert names(await query.exclude(name__in=["Ann", "Bob"], age=34).all()) == ["Abe", "Bob", "Cy", "Dee", "al_%"]


async def test_order_by_ascending_descending_and_several_keys(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    query = session.query(Author)
    assert names(await query.order_by("age", "name").all()) == ["Cy", "al_%", "Abe", "Ann", "Dee", "Bob"]
    assert names(await query.order_by("-age", "-name").all()) == ["Bob", "Dee", "Ann", "Abe", "al_%", "Cy"]
    assert names(await query.order_by(Author.age.desc(), Author.name).all()) == [
        "Bob",
        "Ann",
        "Dee",
        "Abe",
        "al_%",
        "Cy",
    ]


async def test_limit_and_offset_window_the_ordered_rows(session: uow.AsyncSession, people: dict[str, Author]) -> None:
    query = session.query(Author).order_by("name")
    assert names(await query.limit(2).all()) == ["Abe", "Ann"]
    assert names(await query.offset(4).all()) == ["Dee", "al_%"]
    assert names(await query.limit(2).offset(1).all()) == ["Ann", "Bob"]
    assert await query.limit(2).offset(5).count() == 1
    with pytest.raises(QueryError, match="limit"):
        query.limit(-1)


async def test_terminals(session: uow.AsyncSession, people: dict[str, Author]) -> None:
    query = session.query(Author)
    assert len(await query.all()) == 6
    first = await query.order_by("-age").first()
    assert first is people["Bob"]
    assert await query.filter(name="Zed").first() is None
    assert await query.filter(name="Ann").one() is people["Ann"]
    with pytest.raises(NoResultFound):
        await query.filter(name="Zed").one()
    with pytest.raises(MultipleResultsFound):
        await query.filter(age=34).one()
    with pytest.raises(MultipleResultsFound):
        await query.filter(age=34).one_or_none()
    assert await query.filter(name="Zed").one_or_none() is None
    assert await query.count() == 6
    assert await query.filter(age__gt=100).count() == 0
    assert await query.filter(name="Cy").exists()
    assert not await query.filter(name="Zed").exists()
    ann = people["Ann"]
    assert await query.get(ann.id) is ann
    assert await query.filter(age__gt=50).get(ann.id) is None
    assert await query.get(10_000) is None


# --- column expressions and statements -----------------------------------------------


async def test_column_expressions_compile_to_the_same_conditions(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    async def run(*criteria: Any) -> list[str]:
        return names((await session.execute(select(Author).where(*criteria).order_by(Author.name))).scalars().all())

    assert await run(Author.name == "Ann") == ["Ann"]
    assert await run(Author.age != 34) == ["Abe", "Bob", "al_%"]
    assert await run(Author.age < 17) == ["al_%"]
    assert await run(Author.age <= 17) == ["Abe", "al_%"]
    assert await run(Author.age > 34) == ["Bob"]
    assert await run(Author.age >= 34) == ["Ann", "Bob", "Dee"]
    assert await run(Author.name.in_(["Bob", "Cy"])) == ["Bob", "Cy"]
    assert await run(Author.name.not_in(["Bob", "Cy"])) == ["Abe", "Ann", "Dee", "al_%"]
    assert await run(Author.age.is_null()) == ["Cy"]
    assert await run(Author.age == None) == ["Cy"]  # noqa: E711 - IS NULL
    assert await run(Author.age.is_not_null(), Author.age.between(17, 34)) == ["Abe", "Ann", "Dee"]
    assert await run(Author.name.like("A%")) == ["Abe", "Ann"]
    assert await run(Author.name.like("a%")) == ["al_%"]
    assert await run(Author.name.ilike("a%")) == ["Abe", "Ann", "al_%"]
    assert await run(Author.name.startswith("al_")) == ["al_%"]
    assert await run((Author.age >= 18) & Author.name.startswith("A")) == ["Ann"]
    assert await run((Author.age < 13) | (Author.age > 65)) == ["Bob", "al_%"]
    assert await run(~(Author.name == "Ann"), Author.age == 34) == ["Dee"]
    assert await run(uow.col(Author.name).in_(["Cy", "Dee"])) == ["Cy", "Dee"]
    ordered = select(Author).where(Author.age.is_not_null()).order_by(uow.desc(Author.age), uow.asc(Author.name))
    assert names((await session.execute(ordered)).all()) == ["Bob", "Ann", "Dee", "Abe", "al_%"]


async def test_execute_returns_a_result_with_scalars_and_helpers(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    stmt = select(Author).where(Author.age >= 18).order_by(Author.name)
    result = await session.execute(stmt)
    assert names(result.scalars().all()) == ["Ann", "Bob", "Dee"]
    assert names(result.all()) == ["Ann", "Bob", "Dee"]
    assert result.first() is people["Ann"]
    with pytest.raises(MultipleResultsFound):
        result.one()
    one = await session.execute(select(Author).where(Author.name == "Bob"))
    assert one.one() is people["Bob"] and one.one_or_none() is people["Bob"]
    none = await session.execute(select(Author).where(Author.name == "Zed"))
    assert none.one_or_none() is None and none.first() is None
    with pytest.raises(NoResultFound):
        none.scalars().one()
    assert names((await session.scalars(stmt)).all()) == ["Ann", "Bob", "Dee"]
    assert await session.scalar(stmt) is people["Ann"]
    assert await session.scalar(select(Author).where(Author.name == "Zed")) is None


async def test_statements_are_immutable_and_reusable(session: uow.AsyncSession, people: dict[str, Author]) -> None:
    adults = select(Author).where(Author.age >= 18)
    by_name = adults.order_by("name")
    assert names((await session.execute(by_name.limit(1))).all()) == ["Ann"]
    assert len((await session.execute(adults)).all()) == 3


async def test_unknown_fields_and_lookups_are_refused_with_the_choices(session: uow.AsyncSession) -> None:
    query = session.query(Author)
    with pytest.raises(UnknownFieldError, match=r"no column 'agee'.*columns: id, name, age"):
        query.filter(agee=3)
    with pytest.raises(UnknownFieldError, match=r"'agee'.*columns: id, name, age"):
        query.order_by("-agee")
    with pytest.raises(QueryError, match=r"unknown lookup 'older'.*lookups: eq, ne"):
        query.filter(age__older=3)
    with pytest.raises(UnknownFieldError, match=r"Author has no field 'agee'; fields: id, name, age, books"):
        _ = Author.agee  # type: ignore[attr-defined]
    assert isinstance(UnknownFieldError("x"), QueryError)
    with pytest.raises(QueryError, match="relation"):
        query.filter(books=None)
    with pytest.raises(QueryError, match="does not fit"):
        query.filter(age="thirty")
    with pytest.raises(QueryError, match="not a text column"):
        query.filter(age__contains="3")
    with pytest.raises(QueryError, match="reads Book columns"):
        query.where(Book.title == "x")
    with pytest.raises(TypeError, match="truth value"):
        bool(Author.age == 3)


def test_class_level_access_keeps_metadata_and_relations() -> None:
    assert Author.__struct_fields__ == ("id", "name", "age", "books")
    assert repr(Book.author) == "<relation Book.author>"
    assert table_info(Author).name == "q_authors"
    assert repr(Author.age) == "Author.age"
    author = Author(name="x", age=3)
    assert author.age == 3  # instances read plain values


# --- identity map and autoflush ----------------------------------------------------


async def test_a_tracked_row_comes_back_as_the_same_object_with_its_unflushed_changes(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    ann = people["Ann"]
    ann.age = 99  # not flushed
    found = await session.query(Author).no_autoflush().filter(name="Ann").one()
    assert found is ann
    assert ann.age == 99, "a read never overwrites unflushed changes"
    assert session.is_modified(ann)
    session.expire(ann)  # opt in: the next read overwrites
    await session.query(Author).no_autoflush().filter(name="Ann").one()
    assert ann.age == 34


async def test_queries_flush_pending_changes_first_unless_told_not_to(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.add(Author(name="Eve", age=40))
    assert not await session.query(Author).no_autoflush().filter(name="Eve").exists()
    assert await session.query(Author).filter(name="Eve").exists()
    people["Bob"].age = 1
    assert names(await session.query(Author).filter(age__lt=13).order_by("name").all()) == ["Bob", "al_%"]


async def test_a_session_without_autoflush_reads_only_what_was_flushed(
    engine: uow.Engine, people: dict[str, Author]
) -> None:
    async with uow.AsyncSession(engine, autoflush=False) as session:
        session.add(Author(name="Eve"))
        assert await session.query(Author).filter(name="Eve").count() == 0
        await session.flush()
        assert await session.query(Author).filter(name="Eve").count() == 1


async def test_rows_deleted_in_the_session_are_left_out_before_the_flush(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.delete(people["Cy"])
    assert "Cy" not in names(await session.query(Author).no_autoflush().all())


# --- relations ---------------------------------------------------------------------


async def test_include_many_to_one_takes_one_extra_query(
    session: uow.AsyncSession, people: dict[str, Author], monkeypatch: pytest.MonkeyPatch
) -> None:
    session.expunge_all()
    await session.query(Author).count()  # open the transaction, so the connection exists
    fetches = count_fetches(session, monkeypatch)
    books = await session.query(Book).include(Book.author).order_by("title").all()
    assert len(fetches) == 2
    assert [(b.title, b.author.name) for b in books][:2] == [("Abe 1", "Abe"), ("Ann 1", "Ann")]  # type: ignore[union-attr]
    assert books[0].author is await session.get(Author, books[0].author_id)


async def test_include_one_to_many_and_nested(
    session: uow.AsyncSession, people: dict[str, Author], monkeypatch: pytest.MonkeyPatch
) -> None:
    session.expunge_all()
    await session.query(Author).count()
    fetches = count_fetches(session, monkeypatch)
    authors = await session.query(Author).include(Author.books, Book.chapters).order_by("name").all()
    assert len(fetches) == 3, "one query for the authors, one per relation"
    ann = authors[1]
    assert [b.title for b in ann.books] == ["Ann 1"], "soft-deleted books are left out"
    assert [c.title for c in ann.books[0].chapters] == ["Ann 1 / i"]
    nested = await session.query(Chapter).include(Chapter.book, Book.author).filter(title="Bob 1 / i").one()
    assert nested.book.author.name == "Bob"  # type: ignore[union-attr]


async def test_a_repeated_self_relation_loads_one_level_further_each_time(engine: uow.Engine) -> None:
    from uow.testing.models import Category

    await engine.create_all(Category)
    async with uow.AsyncSession(engine) as session:
        root = Category(name="root")
        middle = Category(name="middle", parent=root)
        session.add_all([root, middle, Category(name="leaf", parent=middle)])
        await session.commit()
        session.expunge_all()
        leaf = await session.query(Category).filter(name="leaf").include(Category.parent, Category.parent).one()
        assert leaf.parent.name == "middle" and leaf.parent.parent.name == "root"  # type: ignore[union-attr]
        with pytest.raises(RelationNotLoadedError):
            _ = leaf.parent.parent.parent  # type: ignore[union-attr]


async def test_reading_a_relation_that_was_not_included_names_the_include(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.expunge_all()
    book = await session.query(Book).filter(title="Ann 1").one()
    with pytest.raises(RelationNotLoadedError, match=r"include\(Book\.author\)"):
        _ = book.author
    author = await session.query(Author).include(Author.books).filter(name="Ann").one()
    with pytest.raises(RelationNotLoadedError, match=r"include\(Book\.chapters\)"):
        _ = author.books[0].chapters


async def test_include_of_a_relation_no_loaded_model_has_is_refused(session: uow.AsyncSession) -> None:
    with pytest.raises(QueryError, match="no Book objects"):
        session.query(Author).include(Book.chapters)
    with pytest.raises(QueryError, match="relations"):
        session.query(Author).include("books")  # type: ignore[arg-type]


async def test_include_gives_none_and_empty_lists_where_nothing_is_related(session: uow.AsyncSession) -> None:
    session.add(Book(title="orphan"))
    session.add(Author(name="idle"))
    await session.commit()
    orphan = await session.query(Book).include(Book.author).one()
    assert orphan.author is None
    idle = await session.query(Author).include(Author.books).one()
    assert idle.books == []


# --- soft delete ---------------------------------------------------------------------


async def test_soft_deleted_rows_are_left_out_unless_asked_for(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    books = session.query(Book).filter(author_id=people["Ann"].id).order_by("title")
    assert [b.title for b in await books.all()] == ["Ann 1"]
    assert [b.title for b in await books.with_deleted().all()] == ["Ann 1", "Ann 2"]
    assert [b.title for b in await books.only_deleted().all()] == ["Ann 2"]
    assert await books.count() == 1 and await books.with_deleted().count() == 2
    deleted = (await books.only_deleted().one()).id
    session.expunge_all()
    assert await session.query(Book).get(deleted) is None
    assert (await session.query(Book).with_deleted().get(deleted)) is not None
    author = await session.query(Author).include(Author.books).with_deleted().filter(name="Ann").one()
    assert sorted(b.title for b in author.books) == ["Ann 1", "Ann 2"]
    with pytest.raises(QueryError, match="soft-delete"):
        session.query(Author).only_deleted()


# --- bulk writes from a query --------------------------------------------------------


async def test_query_update_and_delete_are_journaled_bulk_events(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.expunge_all()  # start from objects without relations set (see test_include_* for those)
    bob = await session.query(Author).filter(name="Bob").one()
    al = await session.query(Author).filter(name="al_%").one()
    changed = await session.query(Author).filter(Q(age__gt=65) | Q(name__contains="%")).update(age=50)
    assert changed == 2
    event = session.journal[-1]
    assert isinstance(event, BulkUpdated) and event.values == {"age": 50}
    assert bob.age == 50 and al.age == 50, "tracked objects that match change in place"
    assert (await session.query(Author).filter(name="Ann").one()).age == 34
    gone = await session.query(Book).filter(title__startswith="Bob").delete()
    assert gone == 1, "the soft-deleted Bob 2 is not part of the query"
    assert isinstance(session.journal[-1], BulkDeleted)
    await session.rollback()
    assert bob.age == 70 and al.age == 12, "rollback restores them from the journal"
    assert await session.query(Book).filter(title__startswith="Bob").count() == 1
    with pytest.raises(QueryError, match="limit"):
        await session.query(Author).limit(1).delete()


async def test_bulk_update_with_keyword_filters_still_works(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    assert await session.bulk_update(Author, {"age": 1}, name="Cy") == 1
    assert people["Cy"].age == 1


# --- streaming ---------------------------------------------------------------------


async def test_stream_yields_every_row_in_order_in_chunks(session: uow.AsyncSession, people: dict[str, Author]) -> None:
    streamed = [a async for a in session.stream(select(Author).order_by("name"), chunk_size=4)]
    assert names(streamed) == ["Abe", "Ann", "Bob", "Cy", "Dee", "al_%"]
    assert streamed[0] is people["Abe"], "tracked rows come back as the tracked object"
    chapters = [c async for c in session.query(Chapter).include(Chapter.book).order_by("title").stream(chunk_size=5)]
    assert [c.book.title if c.book else None for c in chapters][:2] == ["Abe 1", None]


async def test_streamed_rows_that_were_not_tracked_stay_untracked(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.expunge_all()
    streamed = [a async for a in session.stream(select(Author), chunk_size=2)]
    assert len(streamed) == 6 and not any(a in session for a in streamed)
    tracked = [a async for a in session.stream(select(Author), chunk_size=2, track=True)]
    assert all(a in session for a in tracked)


async def test_a_stream_refuses_to_outlive_its_transaction(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    with pytest.raises(SessionStateError, match="stream"):
        async with aclosing(session.stream(select(Author), chunk_size=1)) as stream:
            async for _ in stream:
                await session.commit()


async def test_streaming_100k_rows_keeps_memory_flat(tmp_path: Path) -> None:
    engine = uow.create_engine(f"sqlite:///{tmp_path / 'stream.db'}")
    async with engine:
        await engine.create_all(Reading)
        async with uow.AsyncSession(engine) as session:
            await session.bulk_insert(Reading, ({"sensor": f"s{i % 7}", "value": i} for i in range(100_000)))
            await session.commit()

        async with uow.AsyncSession(engine) as session:
            tracemalloc.start()
            total = 0
            async for reading in session.stream(select(Reading), chunk_size=1000):
                total += reading.value
            streamed_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert total == sum(range(100_000))

        async with uow.AsyncSession(engine) as session:
            tracemalloc.start()
            everything = await session.query(Reading).all()
            all_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert len(everything) == 100_000
    assert streamed_peak * 10 < all_peak, f"stream peak {streamed_peak} vs all() peak {all_peak}"


# --- raw SQL and parallel reads -------------------------------------------------------


async def test_execute_raw_takes_the_adapters_parameter_style(
    session: uow.AsyncSession, people: dict[str, Author], engine: uow.Engine
) -> None:
    if not engine.adapter.supports_raw_sql:
        with pytest.raises(UnsupportedOperationError):
            await session.execute_raw("SELECT 1")
        return
    holder = "?" if engine.adapter.paramstyle == "qmark" else "$1"
    rows = await session.execute_raw(f"SELECT count(*) FROM q_authors WHERE age > {holder}", [18])
    assert rows == [(3,)]
    hostile = "x'; DELETE FROM q_authors; --"
    assert await session.execute_raw(f"SELECT name FROM q_authors WHERE name = {holder}", [hostile]) == []
    assert await session.query(Author).count() == 6


async def test_parallel_exec_runs_reads_on_their_own_connections_in_order(
    session: uow.AsyncSession, people: dict[str, Author]
) -> None:
    session.add(Author(name="Uncommitted"))
    await session.flush()
    adults, books, bob = await session.parallel_exec(
        [
            select(Author).where(Author.age >= 18).order_by("name"),
            session.query(Book).include(Book.author).order_by("title"),
            session.query(Author).filter(name__in=["Bob", "Uncommitted"]),
        ]
    )
    assert names(adults) == ["Ann", "Bob", "Dee"]
    assert adults[0] is people["Ann"], "rows still go through the identity map"
    assert [b.author.name for b in books][:1] == ["Abe"]
    assert names(bob) == ["Bob"], "outside the session's transaction: its uncommitted rows are not seen"
    assert await session.query(Author).filter(name="Uncommitted").exists()


# --- property tests -----------------------------------------------------------------

HOSTILE = st.one_of(
    st.sampled_from(
        [
            "'; DROP TABLE q_authors; --",
            "' OR '1'='1",
            "%",
            "_",
            "\\",
            "\\%",
            "a\\_b",
            '"quoted"',
            "100% _done_ \\o/",
            "ünïcødé ✓ 漢字 🚀",
            "$1 ? :name %s",
        ]
    ),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20),
)

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(text=HOSTILE)
async def test_injection_shaped_text_is_stored_and_found_verbatim(session: uow.AsyncSession, text: str) -> None:
    try:
        author = Author(name=text)
        await session.insert(author)
        query = session.query(Author)
        assert (await query.filter(name=text).one()) is author
        assert author in await query.filter(name__contains=text).all()
        assert author in await query.filter(name__startswith=text).all()
        assert author in await query.filter(name__endswith=text).all()
        assert author in await query.filter(name__icontains=text).all()
        assert author in await query.where(Author.name.in_([text, "other"])).all()
        session.expunge(author)
        reloaded = await query.filter(name=text).one()
        assert reloaded.name == text and reloaded is not author
    finally:
        await session.rollback()


ROW = st.tuples(
    st.text(st.sampled_from("aAbB_%\\é"), max_size=4),
    st.none() | st.integers(min_value=-3, max_value=3),
)
LOOKUP = st.one_of(
    st.tuples(st.sampled_from(["age", "age__ne", "age__lt", "age__lte", "age__gt", "age__gte"]), st.integers(-3, 3)),
    st.tuples(st.just("age__in"), st.lists(st.none() | st.integers(-3, 3), max_size=3)),
    st.tuples(st.just("age__not_in"), st.lists(st.integers(-3, 3), max_size=3)),
    st.tuples(st.just("age__is_null"), st.booleans()),
    st.tuples(st.just("age__between"), st.tuples(st.integers(-3, 3), st.integers(-3, 3))),
    st.tuples(
        st.sampled_from(
            ["name", "name__contains", "name__icontains", "name__startswith", "name__istartswith", "name__endswith"]
        ),
        st.text(st.sampled_from("aAbB_%\\é"), max_size=2),
    ),
    st.tuples(st.sampled_from(["name__lt", "name__gte"]), st.text(st.sampled_from("aAbB_%\\é"), max_size=2)),
)


@PROPERTY_SETTINGS
@given(rows=st.lists(ROW, max_size=8), lookups=st.lists(LOOKUP, min_size=1, max_size=2), negate=st.booleans())
async def test_lookups_agree_with_python_on_every_adapter(
    session: uow.AsyncSession, rows: list[tuple[str, int | None]], lookups: list[tuple[str, Any]], negate: bool
) -> None:
    table = table_info(Author)
    given_lookups = dict(lookups)
    condition = compile_lookups(table, given_lookups)
    try:
        await session.insert_all([Author(name=name, age=age) for name, age in rows])
        query = session.query(Author)
        query = query.exclude(**given_lookups) if negate else query.filter(**given_lookups)
        found = await query.order_by("name", "id").all()
        expected = [
            author
            for author in sorted(session, key=lambda a: (a.name, a.id))
            if isinstance(author, Author)
            and (matches(~condition if negate else condition, table.row_dict(table.values_of(author))))
        ]
        assert [(a.name, a.age) for a in found] == [(a.name, a.age) for a in expected]
        assert await query.count() == len(expected)
    finally:
        await session.rollback()


async def test_a_key_assigned_to_a_child_whose_parent_was_left_out_as_soft_deleted_is_followed(
    session: uow.AsyncSession,
) -> None:
    kept = Book(title="Kept")
    hidden = Book(title="Hidden")
    chapter = Chapter(title="One", book=hidden)
    session.add_all([kept, chapter])
    await session.commit()
    await session.soft_delete(hidden)
    await session.commit()
    loaded = await session.query(Chapter).include(Chapter.book).one()
    assert loaded is chapter and chapter.book is None and chapter.book_id == hidden.id  # left out
    chapter.book_id = kept.id
    await session.commit()
    assert chapter.book is kept
    chapter.title = "Changed"  # a later flush keeps the move
    await session.commit()
    assert (await session.get_one(Chapter, chapter.id, with_deleted=True)).book_id == kept.id
