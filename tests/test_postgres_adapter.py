"""The PostgreSQL adapter, driven through the Connection API against a real server.

The server is ``UOW_TEST_POSTGRES_URL`` or a throwaway one started by
:mod:`tests.pgserver`; every run works in a database of its own.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import pytest

from uow.adapter import Connection
from uow.batches import BulkDeleteBatch, BulkUpdateBatch, DeleteBatch, InsertBatch, UpdateBatch, UpsertBatch
from uow.conditions import Compare, In
from uow.errors import (
    ConfigurationError,
    IntegrityError,
    OperationalError,
    PoolTimeoutError,
    SerializationFailure,
    StorageError,
)
from uow.model import ForeignKey, Model, PrimaryKey, Unique, Versioned, table_info
from uow.statements import OrderBy, Select

sys.path.insert(0, str(Path(__file__).parent))
import pgserver

asyncpg = pytest.importorskip("asyncpg")
from uow_postgres import PostgresAdapter, PostgresConnection  # noqa: E402
from uow_postgres.adapter import parse_url  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


class Mood(enum.Enum):
    HAPPY = "happy"
    GRUMPY = "grumpy"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(msgspec.Struct):
    city: str
    zip: str


class PgUser(Model, table="pg_users"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    email: Annotated[str, Unique()]
    age: int = 0


class PgPost(Model, Versioned, table="pg_posts"):
    id: Annotated[int | None, PrimaryKey()] = None
    user_id: Annotated[int | None, ForeignKey(PgUser, on_delete="cascade")] = None
    title: str


class PgEverything(Model, table="pg_everything"):
    id: Annotated[int | None, PrimaryKey()] = None
    small: int | None = None
    ratio: float | None = None
    flag: bool | None = None
    label: str | None = None
    blob: bytes | None = None
    moment: dt.datetime | None = None
    day: dt.date | None = None
    clock: dt.time | None = None
    amount: decimal.Decimal | None = None
    token: uuid.UUID | None = None
    payload: dict[str, Any] | None = None
    tags: list[str] | None = None
    address: Address | None = None
    mood: Mood | None = None
    level: Level | None = None


USERS = table_info(PgUser)
POSTS = table_info(PgPost)
EVERYTHING = table_info(PgEverything)
TABLES = [USERS, POSTS, EVERYTHING]
USER_COLUMNS = ("name", "email", "age")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        with pgserver.postgres_database() as url:
            yield url
    except pgserver.PostgresUnavailable as exc:
        pgserver.unavailable(str(exc))


@pytest.fixture
async def adapter(postgres_url: str) -> AsyncIterator[PostgresAdapter]:
    engine_adapter = PostgresAdapter.from_url(postgres_url, min_size=1, max_size=4, acquire_timeout=5)
    await engine_adapter.open()
    connection = await engine_adapter.acquire()
    await connection.drop_tables(list(reversed(TABLES)))
    await connection.create_tables(TABLES)
    await engine_adapter.release(connection)
    yield engine_adapter
    await engine_adapter.close()


@pytest.fixture
async def conn(adapter: PostgresAdapter) -> AsyncIterator[PostgresConnection]:
    connection = await adapter.acquire()
    assert isinstance(connection, PostgresConnection)
    await connection.begin()
    yield connection
    await adapter.release(connection)


def users(count: int, start: int = 0) -> list[tuple[Any, ...]]:
    return [(f"user {i}", f"user{i}@example.com", i % 97) for i in range(start, start + count)]


async def insert_users(conn: Connection, rows: list[tuple[Any, ...]]) -> list[Any]:
    result = await conn.apply(InsertBatch(USERS, USER_COLUMNS, rows, returning_key=True))
    assert result.keys is not None
    return result.keys


# --- configuration -----------------------------------------------------------------


def test_pool_settings_come_from_the_url_and_keywords_win() -> None:
    dsn, settings = parse_url(
        "postgresql://app@db:5433/shop?max_size=20&command_timeout=2.5&sslmode=disable&statement_cache_size=0",
        {"max_size": 30, "acquire_timeout": 1},
    )
    assert dsn == "postgresql://app@db:5433/shop?sslmode=disable"
    assert settings["max_size"] == 30
    assert settings["command_timeout"] == 2.5
    assert settings["statement_cache_size"] == 0
    assert settings["acquire_timeout"] == 1.0


def test_unknown_options_and_bad_values_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown PostgreSQL option 'pool_sise'"):
        PostgresAdapter.from_url("postgresql://db/app", pool_sise=3)
    with pytest.raises(ConfigurationError, match="must be a number"):
        PostgresAdapter.from_url("postgres://db/app?max_size=many")
    with pytest.raises(ConfigurationError, match="exceeds max_size"):
        PostgresAdapter.from_url("postgresql://db/app", min_size=5, max_size=2)


# --- inserts -------------------------------------------------------------------------


async def test_generated_keys_of_5000_rows_match_their_rows(conn: PostgresConnection) -> None:
    rows = users(5000)
    keys = await insert_users(conn, rows)
    assert len(keys) == len(set(keys)) == 5000
    stored = dict((key, (name, email, age)) for key, name, email, age in await conn.fetch(Select(USERS)))
    assert [stored[key] for key in keys] == rows


async def test_keys_keep_coming_from_the_same_sequence_as_default_inserts(conn: PostgresConnection) -> None:
    first = await insert_users(conn, users(3))
    (default_key,) = await conn.execute_raw(
        "INSERT INTO pg_users (name, email, age) VALUES ($1, $2, 0) RETURNING id", ["x", "x@example.com"]
    )
    second = await insert_users(conn, users(2, start=3))
    assert len({*first, default_key[0], *second}) == 6


async def test_inserts_with_known_keys_small_and_large(conn: PostgresConnection) -> None:
    small = [(i, *row) for i, row in enumerate(users(5), start=1)]
    large = [(i, *row) for i, row in enumerate(users(500, start=5), start=6)]  # over the COPY threshold
    columns = ("id", *USER_COLUMNS)
    assert (await conn.apply(InsertBatch(USERS, columns, small))).rowcount == 5
    assert (await conn.apply(InsertBatch(USERS, columns, large))).rowcount == 500
    assert await conn.fetch(Select(USERS, order_by=(OrderBy("id"),))) == small + large


async def test_a_table_with_only_a_generated_key_gets_keys(adapter: PostgresAdapter) -> None:
    class PgTicket(Model, table="pg_tickets"):
        id: Annotated[int | None, PrimaryKey()] = None

    tickets = table_info(PgTicket)
    connection = await adapter.acquire()
    try:
        await connection.create_tables([tickets])
        await connection.begin()
        result = await connection.apply(InsertBatch(tickets, (), [(), (), ()], returning_key=True))
        assert result.keys is not None and len(set(result.keys)) == 3
        await connection.rollback()
        await connection.drop_tables([tickets])
    finally:
        await adapter.release(connection)


# --- types ---------------------------------------------------------------------------


async def test_every_column_kind_round_trips(conn: PostgresConnection) -> None:
    everything = (
        7,
        0.25,
        True,
        "naïve ✓ 'quoted'",
        b"\x00\xffbytes",
        dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.date(1999, 12, 31),
        dt.time(13, 14, 15, 161718),
        decimal.Decimal("12345.6700"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        {"nested": {"list": [1, 2.5, None, "x"]}, "flag": False},
        ["a", "b"],
        Address(city="Lyon", zip="69001"),
        Mood.GRUMPY,
        Level.HIGH,
    )
    empty = (None,) * len(everything)
    columns = EVERYTHING.column_names[1:]
    for size in (2, 150):  # through unnest and through COPY
        await conn.apply(InsertBatch(EVERYTHING, columns, [everything, empty] * (size // 2)))
        await conn.apply(InsertBatch(EVERYTHING, columns, [everything, empty], returning_key=True))
    rows = await conn.fetch(Select(EVERYTHING))
    assert len(rows) == 2 * (2 + 150 // 2 + 1)
    assert all(row[1:] == everything for row in rows if row[1] is not None)
    assert all(row[1:] == empty for row in rows if row[1] is None)
    stored = next(row for row in rows if row[1] is not None)
    assert isinstance(stored[13], Address) and stored[14] is Mood.GRUMPY and stored[15] is Level.HIGH
    assert stored[6].utcoffset() == dt.timedelta(0)


async def test_naive_datetimes_are_stored_as_utc(conn: PostgresConnection) -> None:
    naive = dt.datetime(2024, 5, 1, 12, 0)
    await conn.apply(InsertBatch(EVERYTHING, ("moment",), [(naive,)]))
    (row,) = await conn.fetch(Select(EVERYTHING))
    assert row[6] == naive.replace(tzinfo=dt.UTC)


async def test_conditions_on_converted_columns(conn: PostgresConnection) -> None:
    columns = ("mood", "level", "label")
    await conn.apply(
        InsertBatch(
            EVERYTHING, columns, [(Mood.HAPPY, Level.LOW, "a"), (Mood.GRUMPY, Level.HIGH, "b"), (None, None, "c")]
        )
    )
    happy = await conn.fetch(Select(EVERYTHING, where=Compare("mood", "eq", Mood.HAPPY)))
    assert [row[4] for row in happy] == ["a"]
    listed = await conn.fetch(
        Select(EVERYTHING, where=In("level", (Level.LOW, Level.HIGH)), order_by=(OrderBy("label"),))
    )
    assert [row[4] for row in listed] == ["a", "b"]
    others = await conn.fetch(Select(EVERYTHING, where=In("label", ("a",), negate=True), order_by=(OrderBy("label"),)))
    assert [row[4] for row in others] == ["b", "c"]


# --- constraint errors ---------------------------------------------------------------


async def test_unique_violation_names_constraint_columns_and_row(conn: PostgresConnection) -> None:
    await insert_users(conn, users(3))
    await conn.savepoint("before")
    with pytest.raises(IntegrityError) as caught:
        await insert_users(conn, [("new", "new@example.com", 1), ("dup", "user2@example.com", 2)])
    error = caught.value
    assert (error.kind, error.constraint, error.sqlstate) == ("unique", "pg_users_email_key", "23505")
    assert (error.table, error.columns, error.row_index) == ("pg_users", ("email",), 1)
    assert isinstance(error.__cause__, asyncpg.UniqueViolationError)


async def test_primary_key_violation_is_told_apart_from_unique(conn: PostgresConnection) -> None:
    columns = ("id", *USER_COLUMNS)
    await conn.apply(InsertBatch(USERS, columns, [(1, "a", "a@example.com", 1)]))
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(InsertBatch(USERS, columns, [(2, "b", "b@example.com", 1), (1, "c", "c@example.com", 1)]))
    error = caught.value
    assert (error.kind, error.constraint, error.columns, error.row_index) == (
        "primary_key",
        "pg_users_pkey",
        ("id",),
        1,
    )


async def test_foreign_key_violation(conn: PostgresConnection) -> None:
    (author,) = await insert_users(conn, users(1))
    with pytest.raises(IntegrityError) as caught:
        await conn.apply(
            InsertBatch(POSTS, ("user_id", "title", "version"), [(author, "ok", 1), (author + 1000, "bad", 1)])
        )
    error = caught.value
    assert (error.kind, error.constraint, error.sqlstate) == ("foreign_key", "pg_posts_user_id_fkey", "23503")
    assert (error.table, error.columns, error.row_index) == ("pg_posts", ("user_id",), 1)


async def test_not_null_violation(conn: PostgresConnection) -> None:
    with pytest.raises(IntegrityError) as caught:
        await insert_users(conn, [("a", "a@example.com", 1), ("b", None, 2)])
    error = caught.value
    assert (error.kind, error.sqlstate, error.columns, error.row_index) == ("not_null", "23502", ("email",), 1)


async def test_check_violation(conn: PostgresConnection) -> None:
    await conn.execute_raw("ALTER TABLE pg_users ADD CONSTRAINT adult CHECK (age >= 18)")
    with pytest.raises(IntegrityError) as caught:
        await insert_users(conn, [("kid", "kid@example.com", 3)])
    assert (caught.value.kind, caught.value.constraint, caught.value.sqlstate) == ("check", "adult", "23514")


async def test_other_database_errors_are_storage_errors_with_sqlstate(conn: PostgresConnection) -> None:
    with pytest.raises(StorageError) as caught:
        await conn.execute_raw("SELECT * FROM no_such_table")
    assert caught.value.sqlstate == "42P01"
    assert not isinstance(caught.value, IntegrityError)


# --- updates and deletes -------------------------------------------------------------


async def test_updates_by_key_report_matched_rows(conn: PostgresConnection) -> None:
    keys = await insert_users(conn, users(1000))
    result = await conn.apply(UpdateBatch(USERS, ("age",), [(200 + i, key) for i, key in enumerate(keys)] + [(1, -5)]))
    assert result.rowcount == 1000
    ages = {row[0]: row[3] for row in await conn.fetch(Select(USERS))}
    assert all(ages[key] == 200 + i for i, key in enumerate(keys))


async def test_version_checked_updates_and_deletes_count_only_matching_versions(conn: PostgresConnection) -> None:
    (author,) = await insert_users(conn, users(1))
    inserted = await conn.apply(
        InsertBatch(
            POSTS, ("user_id", "title", "version"), [(author, f"post {i}", 1) for i in range(4)], returning_key=True
        )
    )
    assert inserted.keys is not None
    first, second, third, fourth = inserted.keys
    updated = await conn.apply(
        UpdateBatch(POSTS, ("title", "version"), [("new", 2, first, 1), ("stale", 2, second, 7)], check_version=True)
    )
    assert updated.rowcount == 1
    deleted = await conn.apply(DeleteBatch(POSTS, [first, third, fourth], expected_versions=[2, 1, 9]))
    assert deleted.rowcount == 2
    remaining = await conn.fetch(Select(POSTS, order_by=(OrderBy("id"),)))
    assert [(row[0], row[2], row[3]) for row in remaining] == [(second, "post 1", 1), (fourth, "post 3", 1)]


async def test_deletes_by_key(conn: PostgresConnection) -> None:
    keys = await insert_users(conn, users(10))
    assert (await conn.apply(DeleteBatch(USERS, [*keys[:6], -1]))).rowcount == 6
    assert sorted(row[0] for row in await conn.fetch(Select(USERS))) == sorted(keys[6:])


async def test_bulk_update_and_delete_by_condition(conn: PostgresConnection) -> None:
    await insert_users(conn, users(10))
    updated = await conn.apply(BulkUpdateBatch(USERS, Compare("age", "lt", 5), {"name": "young"}))
    assert updated.rowcount == 5
    deleted = await conn.apply(BulkDeleteBatch(USERS, Compare("name", "eq", "young")))
    assert deleted.rowcount == 5
    assert await conn.fetch(Select(USERS, mode="count")) == [(5,)]


# --- upserts -------------------------------------------------------------------------


async def test_upsert_updates_or_inserts_and_returns_rows_in_input_order(conn: PostgresConnection) -> None:
    keys = await insert_users(conn, users(3))
    rows = [
        ("fresh", "fresh@example.com", 40),
        ("renamed 2", "user2@example.com", 99),
        ("renamed 0", "user0@example.com", 98),
    ]
    result = await conn.apply(UpsertBatch(USERS, USER_COLUMNS, rows, ("email",), ("name",)))
    assert result.rows is not None
    fresh, second, zeroth = result.rows
    assert fresh[1:] == ("fresh", "fresh@example.com", 40) and fresh[0] not in keys
    assert second == (keys[2], "renamed 2", "user2@example.com", 2)
    assert zeroth == (keys[0], "renamed 0", "user0@example.com", 0)


async def test_upsert_doing_nothing_still_returns_the_existing_rows(conn: PostgresConnection) -> None:
    keys = await insert_users(conn, users(2))
    rows = [("ignored", "user1@example.com", 5), ("new", "new@example.com", 6), ("ignored", "user0@example.com", 7)]
    result = await conn.apply(UpsertBatch(USERS, USER_COLUMNS, rows, ("email",), ()))
    assert result.rows is not None
    assert result.rows[0] == (keys[1], "user 1", "user1@example.com", 1)
    assert result.rows[1][1:] == ("new", "new@example.com", 6)
    assert result.rows[2] == (keys[0], "user 0", "user0@example.com", 0)


async def test_upsert_by_primary_key_in_bulk(conn: PostgresConnection) -> None:
    columns = ("id", *USER_COLUMNS)
    await conn.apply(InsertBatch(USERS, columns, [(i, f"u{i}", f"u{i}@example.com", 1) for i in range(1, 501)]))
    rows = [(i, f"v{i}", f"u{i}@example.com", 2) for i in range(1000, 0, -2)]
    result = await conn.apply(UpsertBatch(USERS, columns, rows, ("id",), ("name", "age")))
    assert result.rows == [(i, f"v{i}", f"u{i}@example.com", 2) for i in range(1000, 0, -2)]


# --- transactions --------------------------------------------------------------------


async def test_savepoints_undo_only_what_followed_them(conn: PostgresConnection) -> None:
    await insert_users(conn, users(1))
    await conn.savepoint('odd "name"')
    await insert_users(conn, users(1, start=1))
    await conn.rollback_to_savepoint('odd "name"')
    await insert_users(conn, users(1, start=2))
    await conn.release_savepoint('odd "name"')
    await conn.commit()
    emails = sorted(row[2] for row in await conn.fetch(Select(USERS)))
    assert emails == ["user0@example.com", "user2@example.com"]


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "serializable"])
async def test_isolation_levels(adapter: PostgresAdapter, level: str) -> None:
    connection = await adapter.acquire()
    try:
        await connection.begin(level)
        assert await connection.execute_raw("SHOW transaction_isolation") == [(level,)]
        await connection.rollback()
        with pytest.raises(ConfigurationError):
            await connection.begin("chaotic")
    finally:
        await adapter.release(connection)


async def test_serialization_failure_between_two_connections(adapter: PostgresAdapter) -> None:
    setup = await adapter.acquire()
    await setup.begin()
    await setup.apply(InsertBatch(USERS, ("id", *USER_COLUMNS), [(1, "a", "a@example.com", 0)]))
    await setup.commit()
    await adapter.release(setup)

    first, second = await adapter.acquire(), await adapter.acquire()
    try:
        for connection in (first, second):
            await connection.begin("serializable")
            assert await connection.fetch(Select(USERS, mode="count")) == [(1,)]
        await first.apply(UpdateBatch(USERS, ("age",), [(10, 1)]))
        await first.commit()
        with pytest.raises(SerializationFailure) as caught:
            await second.apply(UpdateBatch(USERS, ("age",), [(20, 1)]))
            await second.commit()
        assert caught.value.sqlstate == "40001"
        await second.rollback()
    finally:
        await adapter.release(first)
        await adapter.release(second)


# --- reads ---------------------------------------------------------------------------


async def test_stream_yields_chunks_of_the_asked_size(conn: PostgresConnection) -> None:
    await insert_users(conn, users(2500))
    chunks = [chunk async for chunk in conn.stream(Select(USERS, order_by=(OrderBy("email"),)), chunk_size=1000)]
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 500]
    emails = [row[2] for chunk in chunks for row in chunk]
    assert emails == sorted(emails) and len(set(emails)) == 2500


async def test_stream_outside_a_transaction(adapter: PostgresAdapter) -> None:
    connection = await adapter.acquire()
    assert isinstance(connection, PostgresConnection)
    try:
        await connection.begin()
        await insert_users(connection, users(5))
        await connection.commit()
        chunks = [chunk async for chunk in connection.stream(Select(USERS), chunk_size=2)]
        assert [len(chunk) for chunk in chunks] == [2, 2, 1]
        assert not connection.in_transaction()
    finally:
        await adapter.release(connection)


async def test_count_exists_limit_offset(conn: PostgresConnection) -> None:
    await insert_users(conn, users(10))
    assert await conn.fetch(Select(USERS, mode="count", where=Compare("age", "ge", 5))) == [(5,)]
    assert await conn.fetch(Select(USERS, mode="exists", where=Compare("age", "gt", 50))) == [(False,)]
    page = await conn.fetch(Select(USERS, order_by=(OrderBy("age", descending=True),), limit=3, offset=2))
    assert [row[3] for row in page] == [7, 6, 5]


async def test_execute_raw_uses_numbered_parameters(adapter: PostgresAdapter, conn: PostgresConnection) -> None:
    assert adapter.paramstyle == "numeric"
    assert await conn.execute_raw("SELECT $1::int + $2::int, $3::text", [1, 2, "x"]) == [(3, "x")]
    assert await conn.execute_raw("CREATE TEMP TABLE scratch (n int); INSERT INTO scratch VALUES (1)") == []
    assert await conn.execute_raw("SELECT n FROM scratch") == [(1,)]


# --- the pool ------------------------------------------------------------------------


async def pool_is_clean(adapter: PostgresAdapter) -> bool:
    """Whether every connection of the pool is outside any transaction, as the
    client and the server see it."""
    held = [await adapter.acquire() for _ in range(adapter.settings["max_size"])]
    try:
        assert all(isinstance(c, PostgresConnection) and not c.in_transaction() for c in held)
        stuck = await held[0].execute_raw(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        )
        return stuck == [(0,)]
    finally:
        for connection in held:
            await adapter.release(connection)


async def test_releasing_a_connection_mid_transaction_rolls_it_back(adapter: PostgresAdapter) -> None:
    connection = await adapter.acquire()
    await connection.begin()
    await insert_users(connection, users(3))
    await adapter.release(connection)
    assert await pool_is_clean(adapter)
    check = await adapter.acquire()
    try:
        assert await check.fetch(Select(USERS, mode="count")) == [(0,)]
    finally:
        await adapter.release(check)


async def test_a_flush_cancelled_half_way_leaves_only_clean_connections(adapter: PostgresAdapter) -> None:
    connection = await adapter.acquire()
    assert isinstance(connection, PostgresConnection)
    await connection.begin()
    with anyio.move_on_after(0.05):
        await connection.execute_raw("SELECT pg_sleep(5)")
    assert connection.broken
    await adapter.release(connection)
    assert await pool_is_clean(adapter)


async def test_discarded_connections_are_closed(adapter: PostgresAdapter) -> None:
    connection = await adapter.acquire()
    assert isinstance(connection, PostgresConnection)
    (pid,) = await connection.execute_raw("SELECT pg_backend_pid()")
    await adapter.release(connection, discard=True)
    other = await adapter.acquire()
    try:
        assert await other.execute_raw("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", list(pid)) == [(0,)]
    finally:
        await adapter.release(other)


async def test_pool_timeout(postgres_url: str) -> None:
    small = PostgresAdapter.from_url(postgres_url, min_size=1, max_size=1, acquire_timeout=0.2)
    held = await small.acquire()
    try:
        with pytest.raises(PoolTimeoutError):
            await small.acquire()
    finally:
        await small.release(held)
        await small.close()


async def test_unreachable_server_is_an_operational_error() -> None:
    unreachable = PostgresAdapter.from_url("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(OperationalError):
        await unreachable.open()


async def test_lost_connection_is_an_operational_error_and_is_not_reused(adapter: PostgresAdapter) -> None:
    victim = await adapter.acquire()
    assert isinstance(victim, PostgresConnection)
    (pid,) = await victim.execute_raw("SELECT pg_backend_pid()")
    killer = await adapter.acquire()
    await killer.execute_raw("SELECT pg_terminate_backend($1)", list(pid))
    await adapter.release(killer)
    with pytest.raises(OperationalError):
        await victim.fetch(Select(USERS))
    assert victim.broken
    await adapter.release(victim)
    assert await pool_is_clean(adapter)


def test_tables_are_created_with_postgres_types() -> None:
    dialect = PostgresAdapter.from_url("postgresql://db/app").dialect
    statements = dialect.create_table(table_info(PgEverything))
    assert '"id" BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY' in statements[0]
    for fragment in ('"moment" TIMESTAMPTZ', '"payload" JSONB', '"blob" BYTEA', '"amount" NUMERIC', '"token" UUID'):
        assert fragment in statements[0]
