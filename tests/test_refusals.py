"""Values the adapters would each answer their own way, refused alike on every
adapter before anything is read or written: a text key with a NUL character,
and a bulk change comparing naive times with aware ones."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import pytest

import uow
from uow.errors import QueryError, ValidationError
from uow.model import Model, PrimaryKey

pytestmark = pytest.mark.anyio


class Code(Model, table="refusal_codes"):
    code: Annotated[str, PrimaryKey()]
    label: str = ""


class Shift(Model, table="refusal_shifts"):
    id: Annotated[int, PrimaryKey(generated=False)]
    starts: dt.time | None = None
    label: str = ""


async def test_a_text_key_with_a_nul_character_is_refused_by_every_read_by_key(engine: uow.Engine) -> None:
    await engine.create_all(Code)
    async with uow.AsyncSession(engine) as session:
        await session.insert(Code(code="a", label="kept"))
        await session.commit()
        for read in (
            lambda: session.get(Code, "a\x00"),
            lambda: session.get(Code, "a\x00", for_update=True),
            lambda: session.query(Code).filter(label="kept").get("a\x00"),
        ):
            with pytest.raises((ValidationError, QueryError), match="NUL"):
                await read()
        assert (await session.get_one(Code, "a")).label == "kept"


async def test_a_bulk_change_comparing_tracked_naive_times_with_an_aware_one_is_refused(engine: uow.Engine) -> None:
    await engine.create_all(Shift)
    aware = dt.time(12, 0, tzinfo=dt.UTC)
    async with uow.AsyncSession(engine) as session:
        shift = await session.insert(Shift(id=1, starts=dt.time(12, 0), label="naive"))
        await session.commit()
        with pytest.raises(QueryError, match="naive"):
            await session.query(Shift).filter(starts__lt=aware).update(label="x")
        with pytest.raises(QueryError, match="naive"):
            await session.bulk_update(Shift, {"label": "x"}, starts=aware)
        with pytest.raises(QueryError, match="naive"):
            await session.query(Shift).filter(starts__between=(aware, aware)).delete()
        assert shift.label == "naive" and not session.journal.pending
        assert await session.bulk_update(Shift, {"label": "same"}, starts=dt.time(12, 0)) == 1
        assert shift.label == "same"
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        assert (await session.get_one(Shift, 1)).label == "same"
