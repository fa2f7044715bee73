"""The memory adapter, driven directly through the Connection API on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uow_memory import MemoryAdapter, MemoryConnection, discard_store

from uow.adapter import Connection
from uow.batches import (
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    InsertBatch,
    UpdateBatch,
    UpsertBatch,
)
from uow.conditions import Compare, In, IsNull
from uow.errors import (
    ConfigurationError,
    IntegrityError,
    OperationalError,
    SerializationFailure,
    StorageError,
    UnsupportedOperationError,
)
from uow.model import ForeignKey, Model, PrimaryKey, Unique, Versioned, table_info
from uow.statements import OrderBy, Select

pytestmark = pytest.mark.anyio


class Author(Model, table="mem_authors"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    email: Annotated[str | None, Unique()] = None
    age: int | None = None


class Post(Model, Versioned, table="mem_posts"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(Author, on_delete="cascade")] = None
    title: str


class Comment(Model, table="mem_comments"):
    id: Annotated[int | None, PrimaryKey()] = None
    post_id: Annotated[int, ForeignKey(Post)]
    body: str


class Review(Model, table="mem_reviews"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(Author, on_delete="set null")] = None
    stars: int = 0


class Guard(Model, table="mem_guards"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int, ForeignKey(Author, on_delete="restrict")]


class Node(Model, table="mem_nodes"):
    id: Annotated[int | None, PrimaryKey()] = None
    parent_id: Annotated[int | None, ForeignKey("Node", on_delete="cascade")] = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


AUTHORS = table_info(Author)
POSTS = table_info(Post)
COMMENTS = table_info(Comment)
REVIEWS = table_info(Review)
GUARDS = table_info(Guard)
NODES = table_info(Node)
TABLES = [AUTHORS, POSTS, COMMENTS, REVIEWS, GUARDS, NODES]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def adapter(anyio_backend: str) -> AsyncIterator[MemoryAdapter]:
    memory = MemoryAdapter.from_url("memory://", lock_timeout=5)
    conn = await memory.acquire()
    await conn.create_tables(TABLES)
    await memory.release(conn)
    yield memory
    await memory.close()


@pytest.fixture
async def conn(adapter: MemoryAdapter) -> AsyncIterator[MemoryConnection]:
    connection = await adapter.acquire()
    assert isinstance(connection, MemoryConnection)
    await connection.begin()
    yield connection
    await adapter.release(connection)


async def add_authors(conn: Connection, *names: str) -> list[int]:
    result = await conn.apply(InsertBatch(AUTHORS, ("name",), [(n,) for n in names], returning_key=True))
    assert result.keys is not None
    return result.keys


async def all_rows(conn: Connection, table: Any, **options: Any) -> list[tuple[Any, ...]]:
    return await conn.fetch(Select(table, **options))


# --- keys and inserts -------------------------------------------------------------


async def test_generated_keys_come_back_in_row_order(conn: MemoryConnection) -> None:
    assert await add_authors(conn, "ann", "bob", "cy") == [1, 2, 3]
    assert await all_rows(conn, AUTHORS) == [(1, "ann", None, None), (2, "bob", None, None), (3, "cy", None, None)]


async def test_generated_keys_are_not_reused_after_rollback(adapter: MemoryAdapter) -> None:
    conn = await adapter.acquire()
    await conn.begin()
    assert await add_authors(conn, "ann", "bob") == [1, 2]
    await conn.rollback()
    await conn.begin()
    assert await add_authors(conn, "cy") == [3]
    await conn.commit()
    await adapter.release(conn)


async def test_generated_keys_skip_past_explicit_keys(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("id", "name"), [(10, "ten")]))
    assert await add_authors(conn, "next") == [11]


async def test_failed_insert_batch_leaves_nothing_and_names_the_row(conn: MemoryConnection) -> None:
    await add_authors(conn, "ann")
    with pytest.raises(IntegrityError) as info:
        await conn.apply(InsertBatch(AUTHORS, ("name",), [("bob",), (None,), ("cy",)], returning_key=True))
    assert info.value.kind == "not_null"
    assert info.value.row_index == 1
    assert info.value.table == "mem_authors"
    assert info.value.columns == ("name",)
    assert [row[1] for row in await all_rows(conn, AUTHORS)] == ["ann"]


async def test_duplicate_primary_key(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("id", "name"), [(1, "ann")]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(InsertBatch(AUTHORS, ("id", "name"), [(2, "bob"), (1, "again")]))
    assert (info.value.kind, info.value.row_index, info.value.columns) == ("primary_key", 1, ("id",))
    assert await all_rows(conn, AUTHORS, mode="count") == [(1,)]


async def test_unique_allows_many_nulls_but_not_equal_values(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("a", None), ("b", None), ("c", "c@x")]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("d", "d@x"), ("e", "d@x")]))
    assert (info.value.kind, info.value.row_index, info.value.columns) == ("unique", 1, ("email",))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(UpdateBatch(AUTHORS, ("email",), [("c@x", 1)]))
    assert info.value.kind == "unique"
    assert info.value.row_index == 0
    assert await all_rows(conn, AUTHORS, mode="count") == [(3,)]


async def test_foreign_key_must_exist_unless_null(conn: MemoryConnection) -> None:
    (ann,) = await add_authors(conn, "ann")
    await conn.apply(InsertBatch(POSTS, ("author_id", "title", "version"), [(ann, "a", 1), (None, "orphan", 1)]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(InsertBatch(POSTS, ("author_id", "title", "version"), [(ann, "b", 1), (99, "c", 1)]))
    assert (info.value.kind, info.value.row_index, info.value.columns) == ("foreign_key", 1, ("author_id",))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(UpdateBatch(POSTS, ("author_id",), [(42, 1)]))
    assert info.value.kind == "foreign_key"
    assert await all_rows(conn, POSTS, mode="count") == [(2,)]


async def test_row_may_reference_itself_and_earlier_rows(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(NODES, ("id", "parent_id", "data"), [(1, 1, {}), (2, 1, {}), (3, 2, {})]))
    assert [row[:2] for row in await all_rows(conn, NODES)] == [(1, 1), (2, 1), (3, 2)]


# --- deletes and on_delete ------------------------------------------------------------


async def test_cascade_deletes_children_recursively(conn: MemoryConnection) -> None:
    await conn.apply(
        InsertBatch(
            NODES, ("id", "parent_id", "data"), [(i, p, {}) for i, p in [(1, None), (2, 1), (3, 2), (4, 3), (5, None)]]
        )
    )
    result = await conn.apply(DeleteBatch(NODES, [1]))
    assert result.rowcount == 1
    assert await all_rows(conn, NODES) == [(5, None, {})]


async def test_cascade_across_tables(conn: MemoryConnection) -> None:
    ann, bob = await add_authors(conn, "ann", "bob")
    await conn.apply(
        InsertBatch(POSTS, ("author_id", "title", "version"), [(ann, "a1", 1), (bob, "b1", 1), (ann, "a2", 1)])
    )
    await conn.apply(DeleteBatch(AUTHORS, [ann]))
    assert [row[2] for row in await all_rows(conn, POSTS)] == ["b1"]


async def test_set_null_keeps_children(conn: MemoryConnection) -> None:
    ann, bob = await add_authors(conn, "ann", "bob")
    await conn.apply(InsertBatch(REVIEWS, ("author_id", "stars"), [(ann, 5), (bob, 4), (ann, 3)]))
    await conn.apply(DeleteBatch(AUTHORS, [ann]))
    assert await all_rows(conn, REVIEWS) == [(1, None, 5), (2, bob, 4), (3, None, 3)]


async def test_restrict_refuses_delete_and_changes_nothing(conn: MemoryConnection) -> None:
    ann, bob = await add_authors(conn, "ann", "bob")
    await conn.apply(InsertBatch(GUARDS, ("author_id",), [(bob,)]))
    await conn.apply(InsertBatch(POSTS, ("author_id", "title", "version"), [(bob, "kept", 1)]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(DeleteBatch(AUTHORS, [ann, bob]))
    assert (info.value.kind, info.value.row_index, info.value.table) == ("foreign_key", 1, "mem_guards")
    assert len(await all_rows(conn, AUTHORS)) == 2
    assert len(await all_rows(conn, POSTS)) == 1


async def test_no_action_through_a_cascade(conn: MemoryConnection) -> None:
    (ann,) = await add_authors(conn, "ann")
    await conn.apply(InsertBatch(POSTS, ("author_id", "title", "version"), [(ann, "p", 1)]))
    await conn.apply(InsertBatch(COMMENTS, ("post_id", "body"), [(1, "hi")]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(DeleteBatch(AUTHORS, [ann]))
    assert (info.value.kind, info.value.table, info.value.row_index) == ("foreign_key", "mem_comments", 0)
    assert len(await all_rows(conn, POSTS)) == 1
    # deleting the child and its parent in one batch is fine: checked when the batch ends
    await conn.apply(BulkDeleteBatch(COMMENTS, None))
    await conn.apply(DeleteBatch(AUTHORS, [ann]))
    assert await all_rows(conn, POSTS) == []


async def test_delete_of_missing_key_counts_nothing(conn: MemoryConnection) -> None:
    await add_authors(conn, "ann")
    assert (await conn.apply(DeleteBatch(AUTHORS, [1, 7]))).rowcount == 1


# --- updates and version checks ----------------------------------------------------


async def test_update_by_key_counts_matched_rows(conn: MemoryConnection) -> None:
    await add_authors(conn, "ann", "bob")
    result = await conn.apply(UpdateBatch(AUTHORS, ("name", "age"), [("ANN", 30, 1), ("nobody", 1, 99)]))
    assert result.rowcount == 1
    assert await all_rows(conn, AUTHORS) == [(1, "ANN", None, 30), (2, "bob", None, None)]


async def test_update_checks_the_version(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(POSTS, ("title", "version"), [("a", 1), ("b", 1)]))
    batch = UpdateBatch(POSTS, ("title", "version"), [("A", 2, 1, 1), ("B", 2, 2, 5)], check_version=True)
    assert (await conn.apply(batch)).rowcount == 1
    assert [(row[2], row[3]) for row in await all_rows(conn, POSTS)] == [("A", 2), ("b", 1)]


async def test_delete_checks_the_version(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(POSTS, ("title", "version"), [("a", 3), ("b", 1)]))
    result = await conn.apply(DeleteBatch(POSTS, [1, 2], expected_versions=[2, 1]))
    assert result.rowcount == 1
    assert [row[0] for row in await all_rows(conn, POSTS)] == [1]


# --- upsert ------------------------------------------------------------------------------


async def test_upsert_inserts_or_updates_and_returns_whole_rows(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "email", "age"), [("ann", "a@x", 20)]))
    batch = UpsertBatch(
        AUTHORS,
        ("name", "email", "age"),
        [("ANN", "a@x", 21), ("bob", "b@x", 30)],
        conflict_target=("email",),
        update_columns=("name",),
    )
    result = await conn.apply(batch)
    assert result.rows == [(1, "ANN", "a@x", 20), (2, "bob", "b@x", 30)]
    assert result.rowcount == 2
    assert await all_rows(conn, AUTHORS) == result.rows


async def test_upsert_with_nothing_to_update_leaves_the_row(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("id", "name"), [(5, "ann")]))
    batch = UpsertBatch(AUTHORS, ("id", "name"), [(5, "other"), (6, "bob")], conflict_target=("id",), update_columns=())
    result = await conn.apply(batch)
    assert result.rows == [(5, "ann", None, None), (6, "bob", None, None)]
    assert result.rowcount == 1
    # a conflict on the generated key column; explicit key 6 moved the sequence on
    assert await add_authors(conn, "cy") == [7]


async def test_upsert_still_enforces_other_constraints(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("id", "name", "email"), [(1, "ann", "a@x"), (2, "bob", "b@x")]))
    batch = UpsertBatch(AUTHORS, ("id", "name", "email"), [(3, "cy", "c@x"), (2, "bob", "a@x")], ("id",), ("email",))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(batch)
    assert (info.value.kind, info.value.row_index) == ("unique", 1)
    assert await all_rows(conn, AUTHORS, mode="count") == [(2,)]


# --- bulk batches --------------------------------------------------------------------------


async def test_bulk_update_and_delete_by_condition(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "age"), [("a", 10), ("b", 20), ("c", None), ("d", 40)]))
    result = await conn.apply(BulkUpdateBatch(AUTHORS, Compare("age", "ge", 20), {"age": 0}))
    assert result.rowcount == 2
    assert [row[3] for row in await all_rows(conn, AUTHORS)] == [10, 0, None, 0]
    assert (await conn.apply(BulkDeleteBatch(AUTHORS, IsNull("age")))).rowcount == 1
    assert (await conn.apply(BulkDeleteBatch(AUTHORS, None))).rowcount == 3
    assert await all_rows(conn, AUTHORS) == []


async def test_bulk_update_is_atomic_on_a_violation(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("a", "a@x"), ("b", "b@x")]))
    with pytest.raises(IntegrityError) as info:
        await conn.apply(BulkUpdateBatch(AUTHORS, None, {"email": "same@x"}))
    assert info.value.kind == "unique"
    assert [row[2] for row in await all_rows(conn, AUTHORS)] == ["a@x", "b@x"]


async def test_bulk_delete_applies_on_delete(conn: MemoryConnection) -> None:
    ann, bob = await add_authors(conn, "ann", "bob")
    await conn.apply(InsertBatch(POSTS, ("author_id", "title", "version"), [(ann, "p", 1), (bob, "q", 1)]))
    await conn.apply(InsertBatch(REVIEWS, ("author_id", "stars"), [(ann, 0)]))
    assert (await conn.apply(BulkDeleteBatch(AUTHORS, Compare("name", "eq", "ann")))).rowcount == 1
    assert [row[2] for row in await all_rows(conn, POSTS)] == ["q"]
    assert await all_rows(conn, REVIEWS) == [(1, None, 0)]


# --- reads ----------------------------------------------------------------------------------


async def test_order_by_puts_nulls_first_ascending_and_last_descending(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "age"), [("a", 30), ("b", None), ("c", 10), ("d", 30), ("e", None)]))

    async def names(*order: OrderBy, **options: Any) -> list[str]:
        return [row[1] for row in await all_rows(conn, AUTHORS, order_by=order, **options)]

    assert await names(OrderBy("age")) == ["b", "e", "c", "a", "d"]
    assert await names(OrderBy("age", descending=True)) == ["a", "d", "c", "b", "e"]
    assert await names(OrderBy("age", descending=True), OrderBy("name", descending=True)) == ["d", "a", "c", "e", "b"]
    assert await names(OrderBy("age"), limit=2, offset=1) == ["e", "c"]


async def test_count_and_exists(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "age"), [("a", 1), ("b", 2), ("c", None)]))
    assert await all_rows(conn, AUTHORS, mode="count") == [(3,)]
    assert await all_rows(conn, AUTHORS, where=In("age", (1, 2)), mode="count") == [(2,)]
    assert await all_rows(conn, AUTHORS, where=Compare("age", "ne", 1), mode="count") == [(1,)]
    assert await all_rows(conn, AUTHORS, where=Compare("age", "gt", 5), mode="exists") == [(False,)]
    assert await all_rows(conn, AUTHORS, where=IsNull("age"), mode="exists") == [(True,)]


async def test_stream_yields_chunks(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name",), [(f"n{i}",) for i in range(7)]))
    chunks = [chunk async for chunk in conn.stream(Select(AUTHORS, order_by=(OrderBy("id"),)), chunk_size=3)]
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert [row[0] for chunk in chunks for row in chunk] == list(range(1, 8))


async def test_json_values_are_copied_in_and_out(conn: MemoryConnection) -> None:
    data: dict[str, Any] = {"tags": ["a"], "pair": (1, 2)}
    await conn.apply(InsertBatch(NODES, ("id", "data"), [(1, data)]))
    data["tags"].append("mutated")
    (row,) = await all_rows(conn, NODES)
    assert row[2] == {"tags": ["a"], "pair": [1, 2]}
    row[2]["tags"].append("mutated")
    assert (await all_rows(conn, NODES))[0][2] == {"tags": ["a"], "pair": [1, 2]}


# --- transactions and savepoints -------------------------------------------------------------


async def test_savepoints_nest_and_roll_back(conn: MemoryConnection) -> None:
    await add_authors(conn, "ann")
    await conn.savepoint("one")
    await add_authors(conn, "bob")
    await conn.savepoint("two")
    await add_authors(conn, "cy")
    await conn.apply(DeleteBatch(AUTHORS, [1]))
    await conn.rollback_to_savepoint("two")
    assert [row[1] for row in await all_rows(conn, AUTHORS)] == ["ann", "bob"]
    await add_authors(conn, "dee")
    await conn.rollback_to_savepoint("two")  # still set after rolling back to it
    assert [row[1] for row in await all_rows(conn, AUTHORS)] == ["ann", "bob"]
    await conn.release_savepoint("two")
    with pytest.raises(OperationalError, match="two"):
        await conn.rollback_to_savepoint("two")
    await conn.rollback_to_savepoint("one")
    assert [row[1] for row in await all_rows(conn, AUTHORS)] == ["ann"]
    await conn.commit()
    await conn.begin()
    assert [row[1] for row in await all_rows(conn, AUTHORS)] == ["ann"]


async def test_savepoint_restores_indexes(conn: MemoryConnection) -> None:
    await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("ann", "a@x")]))
    await conn.savepoint("s")
    await conn.apply(UpdateBatch(AUTHORS, ("email",), [("new@x", 1)]))
    await conn.rollback_to_savepoint("s")
    with pytest.raises(IntegrityError):
        await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("bob", "a@x")]))
    await conn.apply(InsertBatch(AUTHORS, ("name", "email"), [("bob", "new@x")]))


async def test_uncommitted_writes_are_invisible_to_others(adapter: MemoryAdapter) -> None:
    writer = await adapter.acquire()
    reader = await adapter.acquire()
    await writer.begin()
    await add_authors(writer, "ann")
    await reader.begin()
    assert await reader.fetch(Select(AUTHORS)) == []
    await writer.commit()
    assert await reader.fetch(Select(AUTHORS)) == []  # its snapshot predates the commit
    await reader.commit()
    await reader.begin()
    assert len(await reader.fetch(Select(AUTHORS))) == 1
    await reader.rollback()
    await adapter.release(writer)
    await adapter.release(reader)


async def test_second_writer_waits_for_the_first(adapter: MemoryAdapter) -> None:
    first = await adapter.acquire()
    second = await adapter.acquire()
    await first.begin()
    await second.begin()
    await add_authors(first, "first")
    done = anyio.Event()

    async def write_second() -> None:
        await add_authors(second, "second")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_second)
        await anyio.sleep(0.05)
        assert not done.is_set()
        await first.commit()
        with anyio.fail_after(2):
            await done.wait()
    # the second writer started from the first one's commit
    assert [row[1] for row in await second.fetch(Select(AUTHORS))] == ["first", "second"]
    await second.commit()
    await adapter.release(first)
    await adapter.release(second)


async def test_lock_timeout_raises_operational_error(anyio_backend: str) -> None:
    memory = MemoryAdapter.from_url("memory://", lock_timeout=0.05)
    first = await memory.acquire()
    await first.create_tables([AUTHORS])
    second = await memory.acquire()
    await first.begin()
    await second.begin()
    await add_authors(first, "ann")
    with pytest.raises(OperationalError, match="lock_timeout"):
        await add_authors(second, "bob")
    await first.commit()
    await add_authors(second, "bob")
    await second.commit()
    await memory.close()


async def test_cancelled_waiter_does_not_keep_the_lock(adapter: MemoryAdapter) -> None:
    first = await adapter.acquire()
    second = await adapter.acquire()
    await first.begin()
    await second.begin()
    await add_authors(first, "ann")
    with anyio.move_on_after(0.05):
        await add_authors(second, "bob")
    await second.rollback()
    await first.commit()
    await first.begin()
    with anyio.fail_after(1):
        await add_authors(first, "cy")
    await first.commit()
    await adapter.release(first)
    await adapter.release(second)


async def test_repeatable_read_refuses_a_write_on_a_stale_snapshot(adapter: MemoryAdapter) -> None:
    stale = await adapter.acquire()
    other = await adapter.acquire()
    await stale.begin("repeatable read")
    assert await stale.fetch(Select(AUTHORS)) == []
    await other.begin()
    await add_authors(other, "ann")
    await other.commit()
    with pytest.raises(SerializationFailure):
        await add_authors(stale, "bob")
    await stale.rollback()
    await stale.begin("read committed")
    await other.begin()
    await add_authors(other, "bob")
    await other.commit()
    assert len(await stale.fetch(Select(AUTHORS))) == 2  # read committed: sees the latest commit
    await stale.rollback()
    await adapter.release(stale)
    await adapter.release(other)


async def test_release_rolls_back_an_open_transaction(adapter: MemoryAdapter) -> None:
    conn = await adapter.acquire()
    await conn.begin()
    await add_authors(conn, "ann")
    await adapter.release(conn)
    other = await adapter.acquire()
    with anyio.fail_after(1):
        await other.begin()
        assert await add_authors(other, "bob") == [2]
        await other.commit()
    assert [row[1] for row in await other.fetch(Select(AUTHORS))] == ["bob"]
    await adapter.release(other)


# --- schema, adapter and misc ------------------------------------------------------------------


async def test_tables_are_created_and_dropped_idempotently(adapter: MemoryAdapter) -> None:
    conn = await adapter.acquire()
    await conn.create_tables([AUTHORS])
    await conn.drop_tables([REVIEWS, GUARDS])
    await conn.drop_tables([REVIEWS])
    with pytest.raises(StorageError, match="mem_reviews"):
        await conn.apply(InsertBatch(REVIEWS, ("stars",), [(1,)]))
    with pytest.raises(StorageError, match="mem_guards"):
        await conn.fetch(Select(GUARDS))
    await adapter.release(conn)


async def test_raw_sql_is_unsupported(conn: MemoryConnection) -> None:
    assert MemoryAdapter.supports_raw_sql is False
    with pytest.raises(UnsupportedOperationError, match="memory"):
        await conn.execute_raw("select 1")


async def test_closed_adapter_refuses_connections(anyio_backend: str) -> None:
    memory = MemoryAdapter.from_url("memory://")
    conn = await memory.acquire()
    assert memory.connections == 1
    await memory.close()
    with pytest.raises(OperationalError):
        await memory.acquire()
    with pytest.raises(OperationalError):
        await conn.begin()


async def test_named_stores_are_shared_and_plain_ones_private(anyio_backend: str) -> None:
    name = f"test-shared-{anyio_backend}"
    one = MemoryAdapter.from_url(f"memory://{name}")
    two = MemoryAdapter.from_url(f"memory://{name}")
    private = MemoryAdapter.from_url("memory://")
    try:
        conn = await one.acquire()
        await conn.create_tables([AUTHORS])
        await add_authors(conn, "ann")
        other = await two.acquire()
        assert len(await other.fetch(Select(AUTHORS))) == 1
        mine = await private.acquire()
        with pytest.raises(StorageError):
            await mine.fetch(Select(AUTHORS))
    finally:
        for memory in (one, two, private):
            await memory.close()
        discard_store(name)


# --- savepoints and indexes against a plain dict model ----------------------------------------

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(1, 4), st.integers(0, 3)),
        st.tuples(st.just("update"), st.integers(1, 4), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(1, 4), st.just(0)),
        st.tuples(st.sampled_from(["savepoint", "rollback_to", "release"]), st.sampled_from([1, 2]), st.just(0)),
        st.tuples(st.sampled_from(["commit", "rollback"]), st.just(0), st.just(0)),
    ),
    max_size=30,
)


def _email(value: int) -> str | None:
    return None if value == 0 else f"{value}@x"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations)
def test_transactions_match_a_dict_model(anyio_backend: str, operations: list[tuple[str, int, int]]) -> None:
    async def run() -> None:
        memory = MemoryAdapter.from_url("memory://")
        conn = await memory.acquire()
        await conn.create_tables([AUTHORS])
        await conn.begin()
        committed: dict[int, str | None] = {}
        current: dict[int, str | None] = {}
        savepoints: list[tuple[int, dict[int, str | None]]] = []
        for op, key, value in operations:
            email = _email(value)
            clash = email is not None and any(e == email and k != key for k, e in current.items())
            if op == "insert":
                if key in current or clash:
                    with pytest.raises(IntegrityError) as info:
                        await conn.apply(InsertBatch(AUTHORS, ("id", "name", "email"), [(key, "n", email)]))
                    assert info.value.kind == ("primary_key" if key in current else "unique")
                else:
                    await conn.apply(InsertBatch(AUTHORS, ("id", "name", "email"), [(key, "n", email)]))
                    current[key] = email
            elif op == "update":
                if key in current and clash:
                    with pytest.raises(IntegrityError):
                        await conn.apply(UpdateBatch(AUTHORS, ("email",), [(email, key)]))
                else:
                    result = await conn.apply(UpdateBatch(AUTHORS, ("email",), [(email, key)]))
                    assert result.rowcount == (key in current)
                    if key in current:
                        current[key] = email
            elif op == "delete":
                assert (await conn.apply(DeleteBatch(AUTHORS, [key]))).rowcount == (key in current)
                current.pop(key, None)
            elif op == "savepoint":
                await conn.savepoint(f"s{key}")
                savepoints.append((key, dict(current)))
            elif op in ("rollback_to", "release"):
                names = [name for name, _ in savepoints]
                if key not in names:
                    with pytest.raises(OperationalError):
                        await conn.rollback_to_savepoint(f"s{key}")
                    continue
                index = len(names) - 1 - names[::-1].index(key)
                if op == "release":
                    await conn.release_savepoint(f"s{key}")
                    del savepoints[index:]
                else:
                    await conn.rollback_to_savepoint(f"s{key}")
                    current = dict(savepoints[index][1])
                    del savepoints[index + 1 :]
            else:
                await (conn.commit() if op == "commit" else conn.rollback())
                if op == "commit":
                    committed = dict(current)
                current = dict(committed)
                savepoints.clear()
                await conn.begin()
            rows = await conn.fetch(Select(AUTHORS))
            assert {row[0]: row[2] for row in rows} == current
            # the unique index says the same (a savepoint's rollback undoes its entries too)
            table = conn._require_tx("read").table(AUTHORS.name)
            assert table.unique[("email",)] == {email: key for key, email in current.items() if email is not None}
        await memory.close()

    anyio.run(run, backend=anyio_backend)


def test_url_options_are_checked() -> None:
    assert MemoryAdapter.from_url("memory://?lock_timeout=2.5").lock_timeout == 2.5
    assert MemoryAdapter.from_url("memory://", lock_timeout=1).lock_timeout == 1.0
    with pytest.raises(ConfigurationError, match="lock_timout"):
        MemoryAdapter.from_url("memory://", lock_timout=1)
    with pytest.raises(ConfigurationError, match="memory://"):
        MemoryAdapter.from_url("sqlite://")
