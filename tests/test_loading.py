"""Rows read back become model objects as the model's own ``__init__`` would
make them, on every adapter: distinct objects, relations not loaded, and a
``__post_init__`` run for each."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
import pytest

import uow
from uow.errors import RelationNotLoadedError
from uow.model import ForeignKey, Model, PrimaryKey, relation, table_info

pytestmark = pytest.mark.anyio


class Shelf(Model, table="load_shelves"):
    id: Annotated[int | None, PrimaryKey()] = None
    label: str
    books: list[Volume] = relation(back="shelf_id")


class Volume(Model, table="load_volumes"):
    id: Annotated[int | None, PrimaryKey()] = None
    shelf_id: Annotated[int | None, ForeignKey(Shelf)] = None
    title: str
    pages: int = 0
    shelf: Shelf | None = relation("shelf_id")


class Tag(Model, table="load_tags"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    made: ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).made += 1
        self.name = self.name.lower()


async def test_loaded_rows_are_distinct_objects_with_their_own_values(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Volume)
    async with uow.AsyncSession(engine) as session:
        shelf = Shelf(label="fiction")
        session.add_all([Volume(title=f"v{n}", pages=n, shelf=shelf) for n in range(3)])
        await session.commit()

    async with uow.AsyncSession(engine) as session:
        volumes = await session.query(Volume).order_by("id").all()
        shelves = await session.query(Shelf).all()

    assert [(v.title, v.pages, v.shelf_id) for v in volumes] == [(f"v{n}", n, shelves[0].id) for n in range(3)]
    assert len({id(v) for v in volumes}) == 3
    volumes[0].title = "changed"
    assert [v.title for v in volumes] == ["changed", "v1", "v2"]
    for volume in volumes:
        with pytest.raises(RelationNotLoadedError):
            _ = volume.shelf
    with pytest.raises(RelationNotLoadedError):
        _ = shelves[0].books


async def test_a_post_init_runs_for_every_loaded_row(engine: uow.Engine) -> None:
    await engine.create_all(Tag)
    async with uow.AsyncSession(engine) as session:
        session.add_all([Tag(name="Red"), Tag(name="GREEN")])
        await session.commit()

    made = Tag.made
    async with uow.AsyncSession(engine) as session:
        tags = await session.query(Tag).order_by("id").all()

    assert Tag.made == made + 2
    assert [tag.name for tag in tags] == ["red", "green"]


def test_rows_become_objects_equal_to_constructed_ones() -> None:
    volumes = table_info(Volume)
    tags = table_info(Tag)

    assert volumes.from_row((7, 2, "t", 30)) == Volume(id=7, shelf_id=2, title="t", pages=30)
    made = Tag.made
    assert tags.from_row((1, "Blue")) == Tag(id=1, name="blue")
    assert Tag.made == made + 2


async def test_objects_encode_with_the_relations_that_are_loaded_and_decode_back(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Volume)
    async with uow.AsyncSession(engine) as session:
        session.add(Volume(title="Dune", pages=412, shelf=Shelf(label="fiction")))
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        plain = await session.query(Volume).one()
    async with uow.AsyncSession(engine) as session:
        shelf = await session.query(Shelf).include(Shelf.books).one()

    # a relation nothing loaded is left out, not an error
    assert msgspec.json.decode(msgspec.json.encode(plain)) == {
        "id": plain.id,
        "shelf_id": shelf.id,
        "title": "Dune",
        "pages": 412,
    }
    assert msgspec.json.decode(msgspec.json.encode(shelf)) == {
        "id": shelf.id,
        "label": "fiction",
        "books": [{"id": plain.id, "shelf_id": shelf.id, "title": "Dune", "pages": 412}],
    }
    # and decoding leaves it not loaded again
    decoded = msgspec.json.decode(msgspec.json.encode(shelf), type=Shelf)
    assert decoded == shelf and decoded.books[0] == plain
    with pytest.raises(RelationNotLoadedError):
        _ = decoded.books[0].shelf


async def test_a_relation_assigned_none_encodes_as_null_before_the_flush(engine: uow.Engine) -> None:
    await engine.create_all(Shelf, Volume)
    async with uow.AsyncSession(engine) as session:
        volume = Volume(title="Dune", pages=412, shelf=Shelf(label="fiction"))
        session.add(volume)
        await session.commit()
        volume.shelf = None  # the foreign key is emptied by the next flush
        expected = {"id": volume.id, "shelf_id": volume.shelf_id, "title": "Dune", "pages": 412, "shelf": None}
        assert msgspec.json.decode(msgspec.json.encode(volume)) == expected
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(volume)) == expected
        assert msgspec.to_builtins(volume) == expected
        copied = msgspec.structs.replace(volume)
        assert copied.shelf is None
        await session.commit()
        assert volume.shelf_id is None and volume.shelf is None
