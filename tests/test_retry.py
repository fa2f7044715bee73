"""engine.run_in_transaction: a whole unit of work re-run on serialization failures."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated

import anyio
import pytest

import uow
from uow import AsyncSession, Model, PrimaryKey, Versioned
from uow.errors import ConcurrencyError, SerializationFailure


class Counter(Model, table="retry_counters"):
    id: Annotated[int, PrimaryKey()]
    value: int = 0


def _increment(
    name: str, attempts: dict[str, int], read: dict[str, anyio.Event]
) -> Callable[[AsyncSession], Awaitable[None]]:
    other = "b" if name == "a" else "a"

    async def body(session: AsyncSession) -> None:
        attempts[name] += 1
        counter = await session.get_one(Counter, 1)
        if attempts[name] == 1:
            # both transactions read the row before either writes it
            read[name].set()
            with anyio.fail_after(10):
                await read[other].wait()
        counter.value += 1
        await session.flush()

    return body


@pytest.mark.anyio
async def test_a_real_serialization_failure_is_retried_until_both_increments_land(engine: uow.Engine) -> None:
    # on SQLite the second writer's deferred transaction cannot take the write
    # lock the first one holds (or, once that one committed, write over the
    # snapshot it read): either way it fails and runs again
    await engine.create_all(Counter)
    async with AsyncSession(engine) as session:
        await session.insert(Counter(id=1))
        await session.commit()

    attempts = {"a": 0, "b": 0}
    read = {"a": anyio.Event(), "b": anyio.Event()}
    async with anyio.create_task_group() as group:
        for name in ("a", "b"):
            run = functools.partial(
                engine.run_in_transaction, _increment(name, attempts, read), isolation="repeatable read", retries=3
            )
            group.start_soon(run)

    async with AsyncSession(engine) as session:
        counter = await session.get_one(Counter, 1)
        assert counter.value == 2
    assert sorted(attempts.values()) == [1, 2]


@pytest.mark.anyio
async def test_retries_are_bounded_and_the_last_failure_is_raised() -> None:
    engine = uow.create_engine("memory://")
    calls = 0

    async def always_conflicts(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        raise SerializationFailure("could not serialize access", sqlstate="40001")

    async with engine:
        with pytest.raises(SerializationFailure):
            await engine.run_in_transaction(always_conflicts, retries=2, backoff=0.001)
    assert calls == 3


@pytest.mark.anyio
async def test_the_result_of_the_committed_attempt_is_returned() -> None:
    async with uow.create_engine("memory://") as engine:
        await engine.create_all(Counter)

        async def create(session: AsyncSession) -> int:
            counter = Counter(id=7, value=3)
            session.add(counter)
            return counter.value

        assert await engine.run_in_transaction(create) == 3
        async with AsyncSession(engine) as session:
            assert (await session.get_one(Counter, 7)).value == 3


class VersionedCounter(Model, Versioned, table="retry_versioned_counters"):
    id: Annotated[int, PrimaryKey()]
    value: int = 0


@pytest.mark.anyio
async def test_a_version_conflict_is_retried_when_asked(engine: uow.Engine) -> None:
    await engine.create_all(VersionedCounter)
    async with AsyncSession(engine) as session:
        await session.insert(VersionedCounter(id=1))
        await session.commit()

    attempts = {"a": 0, "b": 0}
    read = {"a": anyio.Event(), "b": anyio.Event()}

    def increment(name: str) -> Callable[[AsyncSession], Awaitable[None]]:
        other = "b" if name == "a" else "a"

        async def body(session: AsyncSession) -> None:
            attempts[name] += 1
            counter = await session.get_one(VersionedCounter, 1)
            await session.commit()  # the read's transaction ends: only the version check can find the conflict
            if attempts[name] == 1:
                read[name].set()
                with anyio.fail_after(10):
                    await read[other].wait()
                if name == "b":
                    await anyio.sleep(0.05)  # a commits first
            counter.value += 1

        return body

    async with anyio.create_task_group() as group:
        for name in ("a", "b"):
            group.start_soon(
                functools.partial(engine.run_in_transaction, increment(name), retries=3, retry_on=ConcurrencyError)
            )

    async with AsyncSession(engine) as session:
        counter = await session.get_one(VersionedCounter, 1)
        assert (counter.value, counter.version) == (2, 3)
    assert sorted(attempts.values()) == [1, 2]

    async def stale(session: AsyncSession) -> None:  # not asked: a version conflict is raised at once
        counter = await session.get_one(VersionedCounter, 1)
        async with AsyncSession(engine) as other:
            (await other.get_one(VersionedCounter, 1)).value += 10
            await other.commit()
        counter.value += 1

    with pytest.raises(ConcurrencyError):
        await engine.run_in_transaction(
            stale, isolation="read committed" if engine.adapter.scheme != "sqlite" else None
        )
