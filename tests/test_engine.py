"""The engine's lifecycle on every adapter: a disposed engine's pool is
closed for good, and says so."""

from __future__ import annotations

from typing import Annotated

import pytest

import uow
from uow import Model, PrimaryKey
from uow.errors import OperationalError

pytestmark = pytest.mark.anyio


class Gauge(Model, table="engine_gauges"):
    id: Annotated[int | None, PrimaryKey()] = None
    reading: int = 0


async def test_a_disposed_engine_refuses_new_work(engine_url: str) -> None:
    engine = uow.create_engine(engine_url)
    async with engine:
        await engine.create_all(Gauge)
        async with uow.AsyncSession(engine) as session:
            session.add(Gauge(reading=1))
            await session.commit()
        await engine.drop_all(Gauge)
    for _ in range(2):  # disposing again is harmless
        await engine.dispose()
    with pytest.raises(OperationalError, match="disposed"):
        async with uow.AsyncSession(engine) as session:
            await session.query(Gauge).all()
    with pytest.raises(OperationalError, match="disposed"):
        async with engine:
            pass
