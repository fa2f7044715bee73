"""Session behaviour that needs a real PostgreSQL server: a connection lost in
the middle of a flush, cancellation leaving the pool clean, and the statements
a flush's savepoint costs."""

from __future__ import annotations

import gc
import weakref
from typing import Annotated, Any

import anyio
import asyncpg
import pytest

import uow
from uow import AsyncSession, ForeignKey, Model, PrimaryKey, Unique, relation
from uow.errors import OperationalError

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Team(Model, table="pg_session_teams"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: Annotated[str, Unique()]


class Player(Model, table="pg_session_players"):
    id: Annotated[int | None, PrimaryKey()] = None
    team_id: Annotated[int | None, ForeignKey(Team, on_delete="cascade")] = None
    name: str
    team: Team | None = relation("team_id")


@pytest.fixture
def adapter_name() -> str:
    return "postgresql"


async def _admin(url: str, sql: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def _count(engine: uow.Engine, table: str) -> int:
    rows = await _admin(engine.url, f"SELECT count(*) FROM {table}")
    return int(rows[0][0])


async def test_a_connection_lost_mid_flush_applies_nothing_and_keeps_the_events_pending(engine: uow.Engine) -> None:
    await engine.create_all(Team, Player)
    async with AsyncSession(engine) as session:
        # the backend of the session's own connection, in its transaction
        pid = (await session.execute_raw("SELECT pg_backend_pid()"))[0][0]
        team = Team(name="Reds")
        session.add_all([Player(name="Ann", team=team), Player(name="Bo", team=team)])
        pending = len(session.journal.pending)

        connection = session._connection
        assert connection is not None
        apply = connection.apply
        calls = 0

        async def apply_then_lose_the_connection(batch: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # the teams are written; the server drops us before the players
                await _admin(engine.url, "SELECT pg_terminate_backend($1)", pid)
                await anyio.sleep(0.2)
            return await apply(batch)

        connection.apply = apply_then_lose_the_connection  # type: ignore[method-assign]
        with pytest.raises(OperationalError):
            await session.flush()

        assert len(session.journal.pending) == pending
        assert team.id is None and not session.in_transaction()
        assert await _count(engine, "pg_session_teams") == 0

        await session.commit()  # a fresh connection from the pool; the same events
        assert team.id is not None
    assert await _count(engine, "pg_session_players") == 2


async def test_a_connection_lost_between_flushes_restores_the_objects_and_lets_the_session_go_on(
    engine: uow.Engine,
) -> None:
    await engine.create_all(Team, Player)
    async with AsyncSession(engine) as session:
        first = Team(name="Reds")
        session.add(first)
        await session.flush()  # the transaction has written: the next flush sets a savepoint first
        pid = (await session.execute_raw("SELECT pg_backend_pid()"))[0][0]
        await _admin(engine.url, "SELECT pg_terminate_backend($1)", pid)
        await anyio.sleep(0.2)
        second = Team(name="Blues")
        session.add(second)
        with pytest.raises(OperationalError, match="lost") as lost:
            await session.flush()  # fails at its savepoint, before any batch
        assert lost.value.sqlstate in ("08003", "08006")
        # the transaction is gone with what it wrote: the objects say so, as after a rollback
        assert first.id is None and first not in session and second not in session
        assert not session.in_transaction()
        session.add_all([first, second])
        await session.commit()  # a fresh connection from the pool
        assert first.id is not None and second.id is not None
    assert await _count(engine, "pg_session_teams") == 2


async def test_cancelled_flushes_never_return_a_connection_in_a_transaction(engine: uow.Engine) -> None:
    await engine.create_all(Team, Player)
    for attempt in range(12):
        async with AsyncSession(engine) as session:
            session.add_all([Team(name=f"t{attempt}-{n}") for n in range(200)])
            with anyio.move_on_after(0.001 * attempt):
                await session.commit()
    await anyio.sleep(0.1)
    database = engine.url.rsplit("/", 1)[-1].split("?", 1)[0]
    stuck = await _admin(
        engine.url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        database,
    )
    assert stuck[0][0] == 0
    async with AsyncSession(engine) as session:
        await session.insert(Team(name="after"))
        await session.commit()


async def test_each_flush_after_the_first_costs_one_savepoint_statement(engine: uow.Engine) -> None:
    """A flush after the first in a transaction sets a savepoint, so that its
    failure undoes only itself. The next savepoint releases it in the same
    statement, and the commit releases the last one."""
    await engine.create_all(Team, Player)
    async with AsyncSession(engine) as session:
        session.add(Team(name="first"))
        await session.flush()
        sent: list[str] = []
        connection = session._connection
        assert connection is not None
        connection.raw.add_query_logger(lambda record: sent.append(record.query))  # type: ignore[attr-defined]
        for n in range(3):
            session.add(Team(name=f"team {n}"))
            await session.flush()
        await session.commit()
    assert [query for query in sent if "SAVEPOINT" in query] == [
        'SAVEPOINT "uow_flush_1"',
        'RELEASE SAVEPOINT "uow_flush_1"; SAVEPOINT "uow_flush_2"',
        'RELEASE SAVEPOINT "uow_flush_2"; SAVEPOINT "uow_flush_3"',
    ]
    assert await _count(engine, "pg_session_teams") == 4


async def test_a_read_cancelled_half_way_says_so_until_a_rollback(engine: uow.Engine) -> None:
    await engine.create_all(Team, Player)
    async with AsyncSession(engine) as session:
        team = await session.insert(Team(name="Reds"))
        with anyio.move_on_after(0.05):
            await session.execute_raw("SELECT pg_sleep(2)")  # the server cancels it, aborting the transaction
        for call in (lambda: session.get(Team, 999), session.commit):
            with pytest.raises(OperationalError, match="cancelled half-way"):
                await call()
        await session.rollback()
        assert team not in session and team.id is None
        session.add(Team(name="Blues"))
        await session.commit()  # the same connection, clean again after its rollback
    assert await _count(engine, "pg_session_teams") == 1


async def test_a_closed_session_is_freed_though_the_pool_keeps_an_idle_timer(engine: uow.Engine) -> None:
    await engine.create_all(Team, Player)
    async with AsyncSession(engine) as session:
        session.add(Team(name="Reds"))
        await session.commit()  # gives the connection back: asyncpg schedules an idle timer
    freed = weakref.ref(session)
    del session
    gc.collect()
    assert freed() is None  # the timer's context does not hold the session
