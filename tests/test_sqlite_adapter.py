"""The SQLite adapter, driven directly through the Connection API."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uow_sqlite import SQLiteAdapter, SQLiteConnection
from uow_sqlite.config import parse_url

import uow
from uow.batches import (
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    InsertBatch,
    UpdateBatch,
    UpsertBatch,
)
from uow.conditions import Between, Compare, In, IsNull, Like, evaluate
from uow.errors import ConfigurationError, IntegrityError, PoolTimeoutError, SerializationFailure
from uow.model import ForeignKey, Model, PrimaryKey, SoftDelete, TableInfo, Unique, Versioned, table_info
from uow.statements import OrderBy, Select


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class SqAuthor(Model, table="sq_authors"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    email: Annotated[str, Unique()]
    age: int | None = None


class SqPost(Model, table="sq_posts"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int, ForeignKey(SqAuthor, on_delete="cascade")]
    title: str = ""


class SqNote(Model, table="sq_notes"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(SqAuthor, on_delete="set null")] = None


class SqPin(Model, table="sq_pins"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int, ForeignKey(SqAuthor, on_delete="restrict")]


class SqDoc(Model, Versioned, SoftDelete, table="sq_docs"):
    code: Annotated[str, PrimaryKey()]
    body: str = ""


class SqTyped(Model, table="sq_typed"):
    id: Annotated[int | None, PrimaryKey()] = None
    i: int | None = None
    f: float | None = None
    b: bool | None = None
    t: str | None = None
    by: bytes | None = None
    ts: dt.datetime | None = None
    d: dt.date | None = None
    tm: dt.time | None = None
    dec: decimal.Decimal | None = None
    u: uuid.UUID | None = None
    js: dict[str, Any] | None = None
    items: list[int] | None = None
    color: Color | None = None
    level: Level | None = None


AUTHORS = table_info(SqAuthor)
POSTS = table_info(SqPost)
NOTES = table_info(SqNote)
PINS = table_info(SqPin)
DOCS = table_info(SqDoc)
TYPED = table_info(SqTyped)
ALL_TABLES = [PINS, NOTES, POSTS, AUTHORS, DOCS, TYPED]  # children first on purpose


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[SQLiteAdapter]:
    engine = SQLiteAdapter.from_url(f"sqlite:///{tmp_path / 'test.db'}")
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def conn(adapter: SQLiteAdapter) -> AsyncIterator[SQLiteConnection]:
    connection = await adapter.acquire()
    await connection.create_tables(ALL_TABLES)
    try:
        yield connection
    finally:
        await adapter.release(connection)


async def add_authors(conn: SQLiteConnection, *names: str, ages: list[int | None] | None = None) -> list[int]:
    ages = ages if ages is not None else [None] * len(names)
    rows = [(name, f"{name}@example.com", age) for name, age in zip(names, ages)]
    result = await conn.apply(InsertBatch(AUTHORS, ("name", "email", "age"), rows, returning_key=True))
    assert result.keys is not None
    return result.keys


def column(rows: list[tuple[Any, ...]], table: TableInfo, name: str) -> list[Any]:
    return [row[table.column_index[name]] for row in rows]


# --- URLs ------------------------------------------------------------------------


def test_urls_and_options() -> None:
    assert parse_url("sqlite:///relative/path.db").path == "relative/path.db"
    assert parse_url("sqlite:////absolute/path.db").path == "/absolute/path.db"
    for url in ("sqlite://:memory:", "sqlite:///:memory:"):
        config = parse_url(url, pool_size=9)
        assert config.in_memory and config.pool_size == 1
    config = parse_url("sqlite:///x.db?pool_size=3&timeout=2.5&busy_timeout=100", pool_size=4)
    assert (config.pool_size, config.timeout, config.busy_timeout) == (4, 2.5, 100)
    assert parse_url("sqlite:///x.db").pool_size == 5
    with pytest.raises(ConfigurationError, match="colour; known options: busy_timeout, pool_size, timeout"):
        parse_url("sqlite:///x.db?colour=blue")
    with pytest.raises(ConfigurationError):
        parse_url("sqlite://host/x.db")


@pytest.mark.anyio
async def test_a_driver_suffix_in_the_scheme_is_ignored(tmp_path: Path) -> None:
    async with uow.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'suffix.db'}?pool_size=2") as engine:
        assert isinstance(engine.adapter, SQLiteAdapter) and engine.adapter.config.pool_size == 2
        await engine.create_all(SqAuthor)
        async with uow.AsyncSession(engine) as session:
            await session.insert(SqAuthor(name="a", email="a@example.com"))
            await session.commit()
    assert (tmp_path / "suffix.db").exists()


# --- inserts and keys ------------------------------------------------------------


@pytest.mark.anyio
async def test_thousand_row_insert_returns_keys_in_row_order(conn: SQLiteConnection) -> None:
    names = [f"user{i:04d}" for i in range(1000)]
    keys = await add_authors(conn, *names)
    assert len(keys) == len(set(keys)) == 1000
    rows = await conn.fetch(Select(AUTHORS))
    name_by_key = {row[AUTHORS.key_index]: row[AUTHORS.column_index["name"]] for row in rows}
    assert [name_by_key[key] for key in keys] == names


@pytest.mark.anyio
async def test_keys_are_not_reused_after_delete(conn: SQLiteConnection) -> None:
    keys = await add_authors(conn, "a", "b")
    await conn.apply(DeleteBatch(AUTHORS, [keys[1]]))
    (new_key,) = await add_authors(conn, "c")
    assert new_key > keys[1]


@pytest.mark.anyio
async def test_insert_with_given_keys_and_empty_batch(conn: SQLiteConnection) -> None:
    result = await conn.apply(InsertBatch(DOCS, ("code", "body", "version"), [("a", "x", 1), ("b", "y", 1)]))
    assert result.rowcount == 2 and result.keys is None
    empty = await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [], returning_key=True))
    assert empty.rowcount == 0 and empty.keys == []


# --- types ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_type_round_trips(conn: SQLiteConnection) -> None:
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    values = (
        -(2**62),
        1.5,
        True,
        'it\'s "quoted" ✓ 日本',
        b"\x00\x01bytes",
        aware,
        dt.date(2024, 2, 29),
        dt.time(23, 59, 58, 1),
        decimal.Decimal("12345678901234567890.000000001"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        {"a": [1, 2, {"b": None}], "c": "d"},
        [3, 2, 1],
        Color.BLUE,
        Level.HIGH,
    )
    naive = (0, 0.0, False, "", b"", dt.datetime(2020, 1, 1), None, dt.time(0, 0), decimal.Decimal("0.10"))
    columns = TYPED.column_names[1:]
    nulls = (None,) * len(columns)
    padded = naive + (None,) * (len(columns) - len(naive))
    result = await conn.apply(InsertBatch(TYPED, columns, [values, padded, nulls], returning_key=True))
    rows = await conn.fetch(Select(TYPED, order_by=(OrderBy("id"),)))
    assert [row[1:] for row in rows] == [values, padded, nulls]
    assert [row[0] for row in rows] == result.keys
    first = rows[0]
    assert type(first[3]) is bool and first[6].utcoffset() == dt.timedelta(0)
    assert first[13] is Color.BLUE and first[14] is Level.HIGH
    assert rows[1][6].tzinfo is None and rows[1][3] is False
    assert str(rows[1][9]) == "0.10"


@pytest.mark.anyio
async def test_filters_compare_in_python_terms(conn: SQLiteConnection) -> None:
    decimals = [decimal.Decimal(v) for v in ("9", "10", "1.5", "100.25")]
    rows = [(d, dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC) + dt.timedelta(seconds=i)) for i, d in enumerate(decimals)]
    await conn.apply(InsertBatch(TYPED, ("dec", "ts"), rows, returning_key=True))
    big = await conn.fetch(Select(TYPED, where=Compare("dec", "gt", decimal.Decimal("9.5"))))
    assert sorted(column(big, TYPED, "dec")) == [decimal.Decimal("10"), decimal.Decimal("100.25")]
    ordered = await conn.fetch(Select(TYPED, order_by=(OrderBy("dec"),)))
    assert column(ordered, TYPED, "dec") == sorted(decimals)
    east = dt.timezone(dt.timedelta(hours=2))
    later = await conn.fetch(
        Select(TYPED, where=Compare("ts", "ge", dt.datetime(2024, 1, 1, 14, 0, 2, tzinfo=east)), mode="count")
    )
    assert later == [(2,)]
    between = await conn.fetch(Select(TYPED, where=Between("dec", decimal.Decimal("1"), decimal.Decimal("10"))))
    assert len(between) == 3
    found = await conn.fetch(Select(TYPED, where=In("dec", (decimal.Decimal("10.0"), decimal.Decimal("1.50")))))
    assert len(found) == 2


@pytest.mark.anyio
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
        ),
        max_size=30,
    )
)
async def test_text_and_integers_round_trip(conn: SQLiteConnection, rows: list[tuple[str, int]]) -> None:
    await conn.apply(BulkDeleteBatch(TYPED, None))
    result = await conn.apply(InsertBatch(TYPED, ("t", "i"), rows, returning_key=True))
    fetched = await conn.fetch(Select(TYPED, order_by=(OrderBy("id"),)))
    assert [(row[4], row[1]) for row in fetched] == rows
    assert [row[0] for row in fetched] == result.keys


# --- updates, deletes, upserts, bulk ----------------------------------------------


@pytest.mark.anyio
async def test_update_and_delete_report_matched_rows_with_version_checks(conn: SQLiteConnection) -> None:
    rows = [(code, "body", 1) for code in ("a", "b", "c")]
    await conn.apply(InsertBatch(DOCS, ("code", "body", "version"), rows))
    updated = await conn.apply(
        UpdateBatch(DOCS, ("body", "version"), [("new", 2, "a", 1), ("new", 2, "b", 7)], check_version=True)
    )
    assert updated.rowcount == 1
    plain = await conn.apply(UpdateBatch(DOCS, ("body",), [("x", "a"), ("x", "c"), ("x", "missing")]))
    assert plain.rowcount == 2
    deleted = await conn.apply(DeleteBatch(DOCS, ["a", "b"], expected_versions=[2, 5]))
    assert deleted.rowcount == 1
    remaining = await conn.fetch(Select(DOCS, order_by=(OrderBy("code"),)))
    assert [(r[DOCS.key_index], r[DOCS.column_index["body"]]) for r in remaining] == [("b", "body"), ("c", "x")]


@pytest.mark.anyio
async def test_upsert_returns_resulting_rows_in_input_order(conn: SQLiteConnection) -> None:
    (alice,) = await add_authors(conn, "alice", ages=[30])
    columns = ("name", "email", "age")
    rows = [("bob", "bob@example.com", 20), ("ALICE", "alice@example.com", 31)]
    result = await conn.apply(UpsertBatch(AUTHORS, columns, rows, ("email",), ("name", "age")))
    assert result.rows is not None
    assert [r[1:] for r in result.rows] == [("bob", "bob@example.com", 20), ("ALICE", "alice@example.com", 31)]
    assert result.rows[1][0] == alice
    untouched = await conn.apply(UpsertBatch(AUTHORS, columns, [("zed", "alice@example.com", 99)], ("email",), ()))
    assert untouched.rows == [(alice, "ALICE", "alice@example.com", 31)]


@pytest.mark.anyio
async def test_bulk_update_and_delete_count_rows(conn: SQLiteConnection) -> None:
    await add_authors(conn, "a", "b", "c", ages=[10, 20, None])
    changed = await conn.apply(BulkUpdateBatch(AUTHORS, Compare("age", "ge", 10), {"age": 0}))
    assert changed.rowcount == 2
    removed = await conn.apply(BulkDeleteBatch(AUTHORS, IsNull("age")))
    assert removed.rowcount == 1
    assert await conn.fetch(Select(AUTHORS, mode="count")) == [(2,)]


# --- constraints ------------------------------------------------------------------


@pytest.mark.anyio
async def test_unique_violation_names_table_columns_and_row(conn: SQLiteConnection) -> None:
    await add_authors(conn, "alice")
    rows = [("x", "x@example.com", None), ("y", "y@example.com", None), ("dup", "alice@example.com", None)]
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(InsertBatch(AUTHORS, ("name", "email", "age"), rows, returning_key=True))
    error = caught.value
    assert (error.kind, error.table, error.columns, error.row_index) == ("unique", "sq_authors", ("email",), 2)
    assert error.__cause__ is not None
    assert await conn.fetch(Select(AUTHORS, mode="count")) == [(1,)]  # the failed batch left nothing


@pytest.mark.anyio
async def test_primary_key_and_not_null_violations(conn: SQLiteConnection) -> None:
    await conn.apply(InsertBatch(DOCS, ("code", "body", "version"), [("a", "", 1)]))
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(InsertBatch(DOCS, ("code", "body", "version"), [("b", "", 1), ("a", "", 1)]))
    assert (caught.value.kind, caught.value.table, caught.value.columns) == ("primary_key", "sq_docs", ("code",))
    assert caught.value.row_index == 1
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [(None, "n@example.com")], returning_key=True))
    assert (caught.value.kind, caught.value.table, caught.value.columns) == ("not_null", "sq_authors", ("name",))


@pytest.mark.anyio
async def test_foreign_key_violation_names_the_column(conn: SQLiteConnection) -> None:
    (author,) = await add_authors(conn, "alice")
    rows = [(author, "ok"), (author + 100, "orphan")]
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(InsertBatch(POSTS, ("author_id", "title"), rows, returning_key=True))
    error = caught.value
    assert (error.kind, error.table, error.columns, error.row_index) == ("foreign_key", "sq_posts", ("author_id",), 1)


@pytest.mark.anyio
async def test_check_constraint_from_raw_sql(conn: SQLiteConnection) -> None:
    await conn.execute_raw("CREATE TABLE sq_checked (n INTEGER CONSTRAINT positive CHECK (n > 0))")
    with pytest.raises(IntegrityError) as caught:
        await conn.execute_raw("INSERT INTO sq_checked (n) VALUES (?)", [-1])
    assert caught.value.kind == "check" and caught.value.constraint == "positive"


@pytest.mark.anyio
async def test_on_delete_cascade_set_null_and_restrict(conn: SQLiteConnection) -> None:
    keep, gone, pinned = await add_authors(conn, "keep", "gone", "pinned")
    await conn.apply(InsertBatch(POSTS, ("author_id", "title"), [(keep, "k"), (gone, "g")], returning_key=True))
    await conn.apply(InsertBatch(NOTES, ("author_id",), [(gone,), (keep,)], returning_key=True))
    await conn.apply(InsertBatch(PINS, ("author_id",), [(pinned,)], returning_key=True))

    await conn.apply(DeleteBatch(AUTHORS, [gone]))
    assert column(await conn.fetch(Select(POSTS)), POSTS, "author_id") == [keep]
    notes = await conn.fetch(Select(NOTES, order_by=(OrderBy("id"),)))
    assert column(notes, NOTES, "author_id") == [None, keep]

    with pytest.raises(IntegrityError) as caught:
        await conn.apply(DeleteBatch(AUTHORS, [keep, pinned]))
    error = caught.value
    assert (error.kind, error.table, error.columns, error.row_index) == ("foreign_key", "sq_pins", ("author_id",), 1)
    assert await conn.fetch(Select(AUTHORS, mode="count")) == [(2,)]


# --- transactions -----------------------------------------------------------------


@pytest.mark.anyio
async def test_savepoints(conn: SQLiteConnection) -> None:
    await conn.begin()
    await add_authors(conn, "first")
    await conn.savepoint("sp 1")
    await add_authors(conn, "second")
    await conn.rollback_to_savepoint("sp 1")
    await add_authors(conn, "third")
    await conn.release_savepoint("sp 1")
    await conn.commit()
    rows = await conn.fetch(Select(AUTHORS, order_by=(OrderBy("name"),)))
    assert column(rows, AUTHORS, "name") == ["first", "third"]
    await conn.begin("serializable")
    await add_authors(conn, "fourth")
    await conn.rollback()
    assert await conn.fetch(Select(AUTHORS, mode="count")) == [(2,)]


@pytest.mark.anyio
async def test_second_connection_does_not_see_uncommitted_writes(adapter: SQLiteAdapter) -> None:
    writer = await adapter.acquire()
    reader = await adapter.acquire()
    try:
        await writer.create_tables([AUTHORS])
        await writer.begin()
        await add_authors(writer, "hidden")
        assert await reader.fetch(Select(AUTHORS, mode="count")) == [(0,)]
        await writer.commit()
        assert await reader.fetch(Select(AUTHORS, mode="count")) == [(1,)]
    finally:
        await adapter.release(writer)
        await adapter.release(reader)


@pytest.mark.anyio
async def test_a_deferred_transaction_needing_the_write_lock_another_holds_fails_to_be_run_again(
    adapter: SQLiteAdapter,
) -> None:
    first, second = await adapter.acquire(), await adapter.acquire()
    try:
        await first.create_tables([AUTHORS])
        await add_authors(first, "kept")
        for connection in (first, second):
            await connection.begin()  # deferred: a snapshot at the first read
            assert await connection.fetch(Select(AUTHORS, mode="count")) == [(1,)]
        await add_authors(first, "first")  # first takes the write lock
        with anyio.fail_after(2):  # at once, not after busy_timeout: waiting could deadlock
            with pytest.raises(SerializationFailure, match="write lock"):
                await add_authors(second, "second")
        await second.rollback()
        await first.commit()
        await second.begin(isolation="serializable")  # BEGIN IMMEDIATE: the lock first, then the work
        await add_authors(second, "second")
        await second.commit()
        assert await second.fetch(Select(AUTHORS, mode="count")) == [(3,)]
    finally:
        await adapter.release(first)
        await adapter.release(second)


@pytest.mark.anyio
async def test_release_rolls_back_an_open_transaction(adapter: SQLiteAdapter) -> None:
    connection = await adapter.acquire()
    await connection.create_tables([AUTHORS])
    await connection.begin()
    await add_authors(connection, "lost")
    await adapter.release(connection)
    again = await adapter.acquire()
    try:
        assert not await again.in_transaction()
        assert await again.fetch(Select(AUTHORS, mode="count")) == [(0,)]
    finally:
        await adapter.release(again, discard=True)
    assert adapter._pool.size == 0


@pytest.mark.anyio
async def test_memory_database_is_one_shared_connection() -> None:
    engine = SQLiteAdapter.from_url("sqlite://:memory:", timeout=0.2)
    try:
        first = await engine.acquire()
        await first.create_tables([AUTHORS])
        await add_authors(first, "kept")
        with pytest.raises(PoolTimeoutError):
            await engine.acquire()
        await engine.release(first, discard=True)
        with anyio.fail_after(5):
            second = await engine.acquire()
        assert await second.fetch(Select(AUTHORS, mode="count")) == [(1,)]
        await engine.release(second)
    finally:
        await engine.close()


@pytest.mark.anyio
async def test_waiting_session_gets_the_memory_connection_when_released() -> None:
    engine = SQLiteAdapter.from_url("sqlite:///:memory:")
    got: list[SQLiteConnection] = []
    try:
        first = await engine.acquire()

        async def wait_for_it() -> None:
            got.append(await engine.acquire())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait_for_it)
            await anyio.sleep(0.05)
            assert got == []
            await engine.release(first)
        assert got == [first]
        await engine.release(got[0])
    finally:
        await engine.close()


# --- reads ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_like_is_case_sensitive_and_ilike_is_not(conn: SQLiteConnection) -> None:
    names = ["Alice", "alice", "ALICE_X", "École", "école", "a%b", "a_b", "ab", "x*y", "[z]", "line\nbreak", "back\\"]
    await add_authors(conn, *names)
    rows = await conn.fetch(Select(AUTHORS))
    patterns = ["a%", "A%", "%lic%", "é%", "É%", "a\\%b", "a\\_b", "a_b", "x*y", "[z]", "%\n%", "back\\\\", "_____"]
    for pattern in patterns:
        for insensitive in (False, True):
            condition = Like("name", pattern, case_insensitive=insensitive)
            got = sorted(column(await conn.fetch(Select(AUTHORS, where=condition)), AUTHORS, "name"))
            expected = sorted(r[1] for r in rows if evaluate(condition, AUTHORS.row_dict(r)))
            assert got == expected, (pattern, insensitive)
    sensitive = await conn.fetch(Select(AUTHORS, where=Like("name", "a%")))
    assert sorted(column(sensitive, AUTHORS, "name")) == ["a%b", "a_b", "ab", "alice"]
    folded = await conn.fetch(Select(AUTHORS, where=Like("name", "é%", case_insensitive=True)))
    assert sorted(column(folded, AUTHORS, "name")) == ["École", "école"]


@pytest.mark.anyio
async def test_nulls_sort_first_ascending_and_last_descending(conn: SQLiteConnection) -> None:
    await add_authors(conn, "a", "b", "c", ages=[3, None, 1])
    ascending = await conn.fetch(Select(AUTHORS, order_by=(OrderBy("age"),)))
    assert column(ascending, AUTHORS, "age") == [None, 1, 3]
    descending = await conn.fetch(Select(AUTHORS, order_by=(OrderBy("age", descending=True),)))
    assert column(descending, AUTHORS, "age") == [3, 1, None]


@pytest.mark.anyio
async def test_count_exists_limit_offset(conn: SQLiteConnection) -> None:
    await add_authors(conn, *[f"n{i}" for i in range(10)], ages=list(range(10)))
    by_age = (OrderBy("age"),)
    assert await conn.fetch(Select(AUTHORS, mode="count")) == [(10,)]
    assert await conn.fetch(Select(AUTHORS, where=Compare("age", "ge", 7), mode="count")) == [(3,)]
    assert await conn.fetch(Select(AUTHORS, limit=4, offset=8, mode="count")) == [(2,)]
    assert await conn.fetch(Select(AUTHORS, where=Compare("age", "gt", 8), mode="exists")) == [(True,)]
    assert await conn.fetch(Select(AUTHORS, where=Compare("age", "gt", 9), mode="exists")) == [(False,)]
    page = await conn.fetch(Select(AUTHORS, order_by=by_age, limit=3, offset=2))
    assert column(page, AUTHORS, "age") == [2, 3, 4]
    tail = await conn.fetch(Select(AUTHORS, order_by=by_age, offset=8))
    assert column(tail, AUTHORS, "age") == [8, 9]
    locked = await conn.fetch(Select(AUTHORS, where=In("age", (1, 2)), for_update=True))
    assert len(locked) == 2


@pytest.mark.anyio
async def test_stream_yields_bounded_chunks(conn: SQLiteConnection) -> None:
    await add_authors(conn, *[f"n{i:02d}" for i in range(25)])
    chunks = [chunk async for chunk in conn.stream(Select(AUTHORS, order_by=(OrderBy("name"),)), chunk_size=10)]
    assert [len(chunk) for chunk in chunks] == [10, 10, 5]
    assert [row[1] for chunk in chunks for row in chunk] == [f"n{i:02d}" for i in range(25)]


@pytest.mark.anyio
async def test_execute_raw(conn: SQLiteConnection) -> None:
    assert await conn.execute_raw("CREATE TABLE sq_raw (a INTEGER, b TEXT)") == []
    assert await conn.execute_raw("INSERT INTO sq_raw VALUES (?, ?), (?, ?)", [1, "x", 2, "y"]) == []
    assert await conn.execute_raw("SELECT a, b FROM sq_raw WHERE a > ? ORDER BY a", (0,)) == [(1, "x"), (2, "y")]


@pytest.mark.anyio
async def test_drop_tables_in_any_order(conn: SQLiteConnection) -> None:
    await add_authors(conn, "a")
    await conn.drop_tables([AUTHORS, DOCS, POSTS, NOTES, PINS, TYPED])
    assert await table_names(conn) == []
    await conn.create_tables([POSTS, AUTHORS])
    assert await table_names(conn) == ["sq_authors", "sq_posts"]


async def table_names(conn: SQLiteConnection) -> list[str]:
    rows = await conn.execute_raw("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    return [name for (name,) in rows if name.startswith("sq_")]


def test_the_decimal_collation_orders_text_written_outside_uow_without_failing() -> None:
    from uow_sqlite.dialect import decimal_collation

    values = ["NaN", "10", "9.5", "abc", "9.50", "-1E+3"]
    ordered = sorted(values, key=functools.cmp_to_key(decimal_collation))
    assert ordered == ["-1E+3", "9.5", "9.50", "10", "NaN", "abc"]
    assert decimal_collation("9.5", "9.50") == 0 and decimal_collation("NaN", "NaN") == 0


@pytest.mark.anyio
async def test_a_stream_left_unfinished_ends_with_its_transaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'streams.db'}"
    async with uow.create_engine(url, pool_size=1) as engine:
        await engine.create_all(SqAuthor)
        async with uow.AsyncSession(engine) as session:
            session.add_all([SqAuthor(name=f"a{n}", email=f"{n}@x") for n in range(10)])
            await session.commit()
        async with uow.AsyncSession(engine) as session:
            authors = session.stream(uow.select(SqAuthor), chunk_size=3)
            async for _ in authors:
                break  # left early, and still referenced
            await session.commit()
        async with uow.create_engine(url) as other, uow.AsyncSession(other) as writer:
            (await writer.get_one(SqAuthor, 1)).name = "changed elsewhere"
            await writer.commit()
        # the pool's one connection kept no old snapshot: it reads the change, and can write
        async with uow.AsyncSession(engine) as session:
            author = await session.get_one(SqAuthor, 1)
            assert author.name == "changed elsewhere"
            author.name = "changed here"
            await session.commit()
        with pytest.raises(uow.errors.SessionStateError):  # the stream ended with its transaction
            async for _ in authors:
                pass
