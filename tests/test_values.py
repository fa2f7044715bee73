"""The check every added or changed row passes before it is written."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest

import uow
from uow.errors import ValidationError
from uow.model import Model, PrimaryKey, table_info

pytestmark = pytest.mark.anyio


class Setting(Model, table="values_settings"):
    id: Annotated[int | None, PrimaryKey()] = None
    level: Literal["low", "high"] = "low"
    weight: float = 1.0
    extra: Any = ""
    limit: int | None = None


def test_rows_whose_values_have_their_columns_types_pass_as_they_are() -> None:
    typed = table_info(Setting).typed_as_stored

    assert typed((None, "low", 1.0, {"any": ["thing"]}, None))
    assert typed((3, "high", 2.5, 7, 10))
    assert not typed((None, "medium", 1.0, None, None))  # not a member of the Literal
    assert not typed((None, "low", 1, None, None))  # an int where a float is stored
    assert not typed((None, "low", 1.0, None, True))  # a bool is no int


async def test_the_session_converts_what_fits_and_refuses_the_rest() -> None:
    async with uow.create_engine("memory://") as engine:
        await engine.create_all(Setting)
        async with uow.AsyncSession(engine) as session:
            setting = Setting(weight=2)  # type: ignore[arg-type]
            session.add(setting)
            assert type(setting.weight) is float
            with pytest.raises(ValidationError, match=r"Setting\.level"):
                session.add(Setting(level="medium"))  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match=r"Setting\.limit"):
                session.add(Setting(limit=True))
            await session.commit()
            assert len(session) == 1
