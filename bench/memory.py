"""Memory per tracked object, measured with tracemalloc.

Each contender loads ``count`` users into one session (or, for the raw
driver, a list of records) and keeps them. The figure is the memory traced
while they are held, minus the bytes of the column values themselves (strings
and integers that any representation must hold), divided by ``count``: the
model instance, its snapshot, the identity-map entries and the list holding
it. Values allocated before tracing started (the memory adapter's own rows)
are not traced, so they are never subtracted twice.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
from sqlalchemy import select

import uow
from bench.cases import SELECT_USERS, Env, fresh_postgres, sa_sessions, sa_url, uow_engine, uow_load_all
from bench.schema import SAUser, User, rows

COLUMNS = ("id", "name", "email", "age")


def _value_bytes(values: Iterable[Any]) -> int:
    """Bytes of the distinct value objects allocated while tracing."""
    seen: set[int] = set()
    total = 0
    for value in values:
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if tracemalloc.get_object_traceback(value) is not None:
            total += sys.getsizeof(value)
    return total


async def _measure(
    load: Callable[[], Awaitable[list[Any]]], values: Callable[[Any], Iterable[Any]]
) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = await load()
        # let the event loop turn once: until it runs its next callback, the handle that
        # resumed this task keeps the driver's finished future, and with it the list of
        # every fetched record, alive (garbage that no contender holds on to)
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        value_bytes = _value_bytes(v for item in held for v in values(item))
    finally:
        tracemalloc.stop()
    count = len(held)
    total = after - before
    return {
        "objects": count,
        "bytes_per_object": (total - value_bytes) / count,
        "bytes_per_object_with_values": total / count,
    }


def _attributes(item: Any) -> list[Any]:
    return [getattr(item, c) for c in COLUMNS]


async def memory_uow(env: Env, count: int) -> dict[str, float]:
    if env.postgres_url is None:
        async with uow_engine("memory://") as engine:
            await engine.create_all(User)
            async with uow.AsyncSession(engine) as session:
                await session.bulk_insert(User, [{"name": n, "email": e, "age": a} for n, e, a, _ in rows(count)])
                await session.commit()
            async with uow.AsyncSession(engine) as session:
                await session.get(User, -1)
                return await _measure(lambda: uow_load_all(session, User), _attributes)
    await fresh_postgres(env, seed=count)
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        await session.get(User, -1)
        return await _measure(lambda: uow_load_all(session, User), _attributes)


async def memory_sqlalchemy(env: Env, count: int) -> dict[str, float]:
    await fresh_postgres(env, seed=count)
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        await session.get(SAUser, -1)

        async def load() -> list[Any]:
            return list((await session.scalars(select(SAUser))).all())

        return await _measure(load, _attributes)


async def memory_raw(env: Env, count: int) -> dict[str, float]:
    await fresh_postgres(env, seed=count)
    connection = await asyncpg.connect(env.pg)
    try:
        await connection.fetch(SELECT_USERS + " LIMIT 0")

        async def load() -> list[Any]:
            return list(await connection.fetch(SELECT_USERS))

        return await _measure(load, lambda record: tuple(record))
    finally:
        await connection.close()


__all__ = ["memory_raw", "memory_sqlalchemy", "memory_uow"]
