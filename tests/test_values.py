"""The check every added or changed row passes before it is written."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
from typing import Annotated, Any, Literal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import uow
from uow.errors import ModelDefinitionError, StorageError, ValidationError
from uow.model import Model, PrimaryKey, detached_value, table_info

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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3) | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside ``value``, ``value`` included."""
    found: list[Any] = []
    if isinstance(value, (dict, list)):
        found.append(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        found.extend(_containers(child))
    return found


@given(_JSON)
def test_a_detached_json_value_is_equal_and_shares_no_container(value: Any) -> None:
    copied = detached_value(value)

    assert copied == value and type(copied) is type(value)
    originals = {id(c) for c in _containers(value)}
    assert not originals & {id(c) for c in _containers(copied)}


def test_a_detached_struct_is_a_copy_and_immutable_values_are_kept() -> None:
    class Point(msgspec.Struct):
        x: int
        tags: list[str]

    point = Point(1, ["a"])
    copied = detached_value(point)
    assert copied == point and copied is not point and copied.tags is not point.tags
    for value in ("text", 3, 2.5, None, b"raw"):
        assert detached_value(value) is value


class Shade(enum.Enum):
    """A plain enum of integers: stored as an integer, as an IntEnum is."""

    LIGHT = 1
    DARK = 2


class Swatch(Model, table="values_swatches"):
    id: Annotated[int | None, PrimaryKey()] = None
    shade: Shade = Shade.LIGHT
    ratio: float | None = None
    price: decimal.Decimal | None = None
    until: dt.datetime | None = None


class Mixed(Model, table="values_mixed"):
    id: Annotated[int | None, PrimaryKey()] = None
    code: Literal["a", 1] = "a"


def test_a_column_of_values_of_several_types_is_refused() -> None:
    with pytest.raises(ModelDefinitionError, match=r"Mixed.code: the Literal mixes values of several types"):
        table_info(Mixed)


async def test_values_databases_would_answer_differently_are_refused_or_stored_alike(engine: uow.Engine) -> None:
    await engine.create_all(Swatch)
    forever = dt.datetime.max.replace(tzinfo=dt.UTC)  # PostgreSQL stores it as infinity
    async with uow.AsyncSession(engine) as session:
        session.add(Swatch(shade=Shade.DARK, until=forever))
        for nan in ({"ratio": math.nan}, {"price": decimal.Decimal("NaN")}):
            with pytest.raises(ValidationError, match="NaN"):
                session.add(Swatch(**nan))
        far = dt.datetime(1, 1, 1, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45)))
        session.add(Swatch(until=far))  # no instant in UTC: no database stores it
        with pytest.raises(StorageError):
            await session.flush()
        await session.rollback()
        session.add(Swatch(shade=Shade.DARK, until=forever))
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        [swatch] = await session.query(Swatch).all()
        assert swatch.shade is Shade.DARK and swatch.until == forever and swatch.until.tzinfo is not None
        assert await session.query(Swatch).filter(shade=Shade.DARK).count() == 1


async def test_a_plain_enum_of_integers_is_written_by_every_call(engine: uow.Engine) -> None:
    await engine.create_all(Swatch)
    async with uow.AsyncSession(engine) as session:
        swatch = await session.insert(Swatch())
        await session.update(swatch, shade=Shade.DARK)
        assert await session.bulk_update(Swatch, {"shade": Shade.LIGHT}, shade=Shade.DARK) == 1
        await session.bulk_insert(Swatch, [{"shade": Shade.DARK}])
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        shades = [s.shade for s in await session.query(Swatch).order_by("id").all()]
    assert shades == [Shade.LIGHT, Shade.DARK]
