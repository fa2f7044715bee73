"""Model definitions the mapping refuses, and the copies the session keeps of
the values it is given.

A one-to-many relation names, with ``back``, the foreign-key column of the
child model that points at the owner; a name that is no such column is
refused with :class:`ModelDefinitionError` when the mapping is first used, as
a many-to-one relation's column that is no foreign key to its target is. Values given to ``update`` (and
``insert``, ``upsert``) are the caller's: changing them afterwards, however
deep, changes neither the objects, nor the journal, nor what is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

import uow
from uow.errors import ModelDefinitionError
from uow.events import Inserted, Updated, Upserted
from uow.model import ForeignKey, Model, PrimaryKey, relation, table_info

pytestmark = pytest.mark.anyio


# --- one-to-many relations: what `back` must name -----------------------------------------------------------------


class Order(Model, table="def_orders"):
    """Defined before its lines: ``list[Line]`` is a forward reference."""

    id: Annotated[int | None, PrimaryKey()] = None
    label: str
    lines: list[Line] = relation(back="order_id", delete_orphans=True)
    notes: list[Note] = relation(back="order_id")


class Line(Model, table="def_lines"):
    id: Annotated[int | None, PrimaryKey()] = None
    order_id: Annotated[int | None, ForeignKey(Order, on_delete="cascade")] = None
    title: str
    order: Order | None = relation("order_id")


class Note(Model, table="def_notes"):
    """References its order by table name, and has no relation back."""

    id: Annotated[int | None, PrimaryKey()] = None
    order_id: Annotated[int | None, ForeignKey("def_orders")] = None
    text: str


class NoColumnOrder(Model, table="def_no_column_orders"):
    id: Annotated[int | None, PrimaryKey()] = None
    lines: list[Line] = relation(back="nope_id")


class NotForeignKeyOrder(Model, table="def_not_fk_orders"):
    id: Annotated[int | None, PrimaryKey()] = None
    lines: list[Line] = relation(back="title")


class OtherTableOrder(Model, table="def_other_table_orders"):
    """``Line.order_id`` is a foreign key, but to ``def_orders``."""

    id: Annotated[int | None, PrimaryKey()] = None
    lines: list[Line] = relation(back="order_id")


class RelationNamedOrder(Model, table="def_relation_named_orders"):
    """``back`` names the child's relation, not its column."""

    id: Annotated[int | None, PrimaryKey()] = None
    lines: list[Line] = relation(back="order")


class OrphanDeletingBadOrder(Model, table="def_orphan_bad_orders"):
    id: Annotated[int | None, PrimaryKey()] = None
    lines: list[Item] = relation(back="missing_id", delete_orphans=True)


class Item(Model, table="def_items"):
    """Defined after the owner whose bad relation lists it."""

    id: Annotated[int | None, PrimaryKey()] = None
    order_id: Annotated[int | None, ForeignKey(OrphanDeletingBadOrder)] = None


class NotModelOrder(Model, table="def_not_model_orders"):
    id: Annotated[int | None, PrimaryKey()] = None
    numbers: list[int] = relation(back="order_id")


class MissingManyToOne(Model, table="def_missing_many_to_one"):
    id: Annotated[int | None, PrimaryKey()] = None
    order: Order | None = relation("missing_id")


class NotForeignKeyManyToOne(Model, table="def_not_fk_many_to_one"):
    id: Annotated[int | None, PrimaryKey()] = None
    label: str = ""
    order: Order | None = relation("label")


class OtherTableManyToOne(Model, table="def_other_table_many_to_one"):
    """``line_id`` references lines, but the relation holds an order."""

    id: Annotated[int | None, PrimaryKey()] = None
    line_id: Annotated[int | None, ForeignKey(Line)] = None
    order: Order | None = relation("line_id")


class Node(Model, table="def_nodes"):
    """A tree: a list of its own model."""

    id: Annotated[int | None, PrimaryKey()] = None
    parent_id: Annotated[int | None, ForeignKey("Node")] = None
    name: str
    children: list[Node] = relation(back="parent_id")


class Team(Model, table="def_teams"):
    """Teams and people hold lists of each other, through different columns."""

    id: Annotated[int | None, PrimaryKey()] = None
    leader_id: Annotated[int | None, ForeignKey("def_people")] = None
    members: list[Person] = relation(back="team_id")


class Person(Model, table="def_people"):
    id: Annotated[int | None, PrimaryKey()] = None
    team_id: Annotated[int | None, ForeignKey(Team)] = None
    led: list[Team] = relation(back="leader_id")


@pytest.fixture(params=["memory", "sqlite"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[uow.Engine]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'definitions.db'}"
    async with uow.create_engine(url) as engine:
        yield engine


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param(
            NoColumnOrder,
            r"NoColumnOrder\.lines: relation\(back='nope_id'\): 'nope_id' is not a column of Line; .*"
            r"\(columns: id, order_id, title\)",
            id="no-such-column",
        ),
        pytest.param(
            NotForeignKeyOrder,
            r"NotForeignKeyOrder\.lines: relation\(back='title'\): Line\.title is not a foreign key",
            id="not-a-foreign-key",
        ),
        pytest.param(
            OtherTableOrder,
            r"OtherTableOrder\.lines: relation\(back='order_id'\): Line\.order_id is a foreign key to Order "
            r"\(table 'def_orders'\), not to OtherTableOrder",
            id="foreign-key-to-another-table",
        ),
        pytest.param(
            RelationNamedOrder,
            r"RelationNamedOrder\.lines: relation\(back='order'\): 'order' is a relation, not a column of Line",
            id="a-relation-not-a-column",
        ),
        pytest.param(
            OrphanDeletingBadOrder,
            r"OrphanDeletingBadOrder\.lines: relation\(back='missing_id'\): 'missing_id' is not a column of Item",
            id="with-delete-orphans",
        ),
        pytest.param(
            NotModelOrder,
            r"NotModelOrder\.numbers: a one-to-many relation holds a list of a model with a table",
            id="list-of-no-model",
        ),
        pytest.param(
            MissingManyToOne,
            r"MissingManyToOne\.order: relation column 'missing_id' is not a field",
            id="many-to-one-missing-column",
        ),
        pytest.param(
            NotForeignKeyManyToOne,
            r"NotForeignKeyManyToOne\.order: relation\('label'\): NotForeignKeyManyToOne\.label is not a foreign key",
            id="many-to-one-not-a-foreign-key",
        ),
        pytest.param(
            OtherTableManyToOne,
            r"OtherTableManyToOne\.order: relation\('line_id'\): OtherTableManyToOne\.line_id is a foreign key "
            r"to table 'def_lines', not to Order",
            id="many-to-one-foreign-key-to-another-table",
        ),
    ],
)
def test_a_relation_that_names_no_foreign_key_to_its_other_end_is_refused(model: type[Model], message: str) -> None:
    with pytest.raises(ModelDefinitionError, match=message):
        table_info(model)
    with pytest.raises(ModelDefinitionError, match=message):  # refused every time, never cached half-built
        table_info(model)


async def test_a_bad_back_column_is_refused_by_create_all_and_by_the_session(engine: uow.Engine) -> None:
    with pytest.raises(ModelDefinitionError, match=r"NoColumnOrder\.lines: .*'nope_id' is not a column of Line"):
        await engine.create_all(Order, Line, NoColumnOrder)
    with pytest.raises(ModelDefinitionError, match=r"NotForeignKeyOrder\.lines: .*Line\.title is not a foreign key"):
        await engine.create_all(Order, Line, NotForeignKeyOrder)
    await engine.create_all(Order, Line, Note)  # the child itself is fine
    async with uow.AsyncSession(engine) as session:
        for owner in (NoColumnOrder(lines=[Line(title="a")]), NotForeignKeyOrder(lines=[Line(title="b")])):
            with pytest.raises(ModelDefinitionError, match=rf"{type(owner).__name__}\.lines: relation\(back="):
                session.add(owner)
        with pytest.raises(ModelDefinitionError, match=r"NoColumnOrder\.lines: relation\(back='nope_id'\)"):
            await session.query(NoColumnOrder).include(NoColumnOrder.lines).all()
        with pytest.raises(ModelDefinitionError, match=r"NotForeignKeyOrder\.lines: relation\(back='title'\)"):
            await session.get(NotForeignKeyOrder, 1)
        session.add(Line(title="alone"))
        await session.commit()  # nothing of the refused owners was recorded
    async with uow.AsyncSession(engine) as session:
        assert [(line.title, line.order_id) for line in await session.query(Line).all()] == [("alone", None)]


def test_relations_through_foreign_keys_to_the_owner_are_accepted() -> None:
    assert table_info(Order).relations["lines"].remote_column == "order_id"
    assert table_info(Order).relations["notes"].target is Note  # a foreign key given by table name
    assert table_info(Node).relations["children"].target is Node
    assert table_info(Team).relations["members"].target is Person
    assert table_info(Person).relations["led"].target is Team


async def test_lists_through_good_back_columns_load_and_move_children(engine: uow.Engine) -> None:
    await engine.create_all(Order, Line, Note, Node, Team, Person)
    async with uow.AsyncSession(engine) as session:
        order = Order(label="o", lines=[Line(title="a"), Line(title="b")], notes=[Note(text="n")])
        root = Node(name="root", children=[Node(name="leaf")])
        team = Team(members=[Person()])
        session.add_all([order, root, team])
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        (loaded,) = await session.query(Order).include(Order.lines, Order.notes).all()
        assert sorted(line.title for line in loaded.lines) == ["a", "b"]
        assert [note.text for note in loaded.notes] == ["n"]
        (top,) = await session.query(Node).filter(name="root").include(Node.children).all()
        assert [child.name for child in top.children] == ["leaf"]
        (crew,) = await session.query(Team).include(Team.members).all()
        assert len(crew.members) == 1


async def test_delete_orphans_still_deletes_a_child_taken_out_of_the_list(engine: uow.Engine) -> None:
    await engine.create_all(Order, Line, Note)
    async with uow.AsyncSession(engine) as session:
        order = Order(label="o", lines=[Line(title="keep"), Line(title="drop")])
        session.add(order)
        await session.commit()
        dropped = order.lines.pop()
        await session.commit()
        assert dropped not in session
    async with uow.AsyncSession(engine) as session:
        assert [(line.title, line.order_id) for line in await session.query(Line).all()] == [("keep", order.id)]


# --- values given to the session are copied down to their nested parts ---------------------------------------------


class Meta(msgspec.Struct):
    tags: list[str]


class Doc(Model, table="def_docs"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    meta: Meta | None = None
    extra: Any = ""


def _nested() -> dict[str, Any]:
    return {"tags": ["a"], "inner": {"n": 1, "list": [{"deep": True}]}}


def _mutate(values: dict[str, Any]) -> None:
    values["tags"].append("LEAK")
    values["inner"]["n"] = 2
    values["inner"]["list"][0]["deep"] = "LEAK"
    values["inner"]["list"].append("LEAK")


async def _stored(engine: uow.Engine, key: Any) -> Doc:
    async with uow.AsyncSession(engine) as session:
        doc = await session.get(Doc, key)
        assert doc is not None
        return doc


async def test_update_copies_nested_json_values(engine: uow.Engine) -> None:
    await engine.create_all(Doc)
    async with uow.AsyncSession(engine) as session:
        doc = await session.insert(Doc(name="d"))
        data, meta, extra = _nested(), Meta(tags=["m"]), _nested()
        await session.update(doc, data=data, meta=meta, extra=extra)
        _mutate(data)
        _mutate(extra)
        meta.tags.append("LEAK")
        assert doc.data == _nested() and doc.extra == _nested() and doc.meta == Meta(tags=["m"])
        event = session.journal[-1]
        assert isinstance(event, Updated)
        assert event.new == {"data": _nested(), "meta": Meta(tags=["m"]), "extra": _nested()}
        assert not session.is_modified(doc)
        await session.commit()
        assert session.journal[-1] is event  # the commit had nothing more to write
    stored = await _stored(engine, doc.id)
    assert (stored.data, stored.meta, stored.extra) == (_nested(), Meta(tags=["m"]), _nested())


async def test_a_change_in_place_after_update_is_written_and_leaves_the_journal_alone(engine: uow.Engine) -> None:
    await engine.create_all(Doc)
    async with uow.AsyncSession(engine) as session:
        doc = await session.insert(Doc(name="d"))
        await session.update(doc, data=_nested())
        updated = session.journal[-1]
        doc.data["tags"].append("b")
        await session.commit()
        assert isinstance(updated, Updated) and updated.new == {"data": _nested()}
    assert (await _stored(engine, doc.id)).data["tags"] == ["a", "b"]


async def test_update_of_a_table_without_json_columns_is_unchanged(engine: uow.Engine) -> None:
    await engine.create_all(Order, Line, Note)
    async with uow.AsyncSession(engine) as session:
        order = await session.insert(Order(label="o"))
        await session.update(order, label="p")
        event = session.journal[-1]
        assert isinstance(event, Updated) and event.new == {"label": "p"}
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        assert [o.label for o in await session.query(Order).all()] == ["p"]


async def test_insert_records_its_own_copy_of_nested_json_values(engine: uow.Engine) -> None:
    await engine.create_all(Doc)
    async with uow.AsyncSession(engine) as session:
        data = _nested()
        doc = await session.insert(Doc(name="d", data=data))
        inserted = session.journal[-1]
        _mutate(data)  # the object's own value: changed in place, as doc.data[...] would be
        assert isinstance(inserted, Inserted) and inserted.values["data"] == _nested()
        await session.commit()
        assert isinstance(inserted, Inserted) and inserted.values["data"] == _nested()
    assert (await _stored(engine, doc.id)).data == doc.data  # the change was seen and written


async def test_upsert_copies_nested_json_values(engine: uow.Engine) -> None:
    await engine.create_all(Doc)
    async with uow.AsyncSession(engine) as session:
        existing = await session.insert(Doc(name="old"))
        await session.commit()
    for key in (existing.id, 1000):  # a row that exists, one that does not
        async with uow.AsyncSession(engine) as session:
            data = _nested()
            doc = await session.upsert(Doc(id=key, name="new", data=data))
            event = session.journal[-1]
            _mutate(data)
            assert doc.data == _nested()
            assert isinstance(event, Upserted) and event.values["data"] == _nested()
            await session.commit()
        assert (await _stored(engine, key)).data == _nested()


class TooLong(Model, table="t" * 64):
    id: Annotated[int | None, PrimaryKey()] = None


def test_a_name_longer_than_a_database_keeps_is_refused() -> None:
    with pytest.raises(ModelDefinitionError, match="longer than 63 bytes"):
        table_info(TooLong)


def test_index_names_are_unique_to_their_table_and_column_and_fit() -> None:
    from uow.sql import index_name

    assert index_name("audit_log", "entry") != index_name("audit", "log_entry")
    long_ones = {
        index_name("customer_subscription_invoice_lines", f"billing_address_country_{s}") for s in ("id", "code")
    }
    assert len(long_ones) == 2 and all(len(name.encode()) <= 63 for name in long_ones)


# --- unique constraints over several columns ----------------------------------------------


def _model_with(constraints: list[Any], name: str = "def_slots") -> type[Model]:
    class Slot(Model, table=name, constraints=constraints):
        id: Annotated[int | None, PrimaryKey()] = None
        day: int = 0
        hour: int = 0
        payload: dict[str, Any] | None = None

    return Slot


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        pytest.param([uow.Unique("day")], r"Unique\('day'\) names 1 column\(s\)", id="one-column"),
        pytest.param([uow.Unique("day", "minute")], r"names 'minute', which is not a column", id="no-such-column"),
        pytest.param([uow.Unique("day", "payload")], r"names the JSON column 'payload'", id="json-column"),
        pytest.param([uow.Unique("day", "day")], r"names a column twice", id="column-twice"),
        pytest.param(
            [uow.Unique("day", "hour"), uow.Unique("hour", "day")],
            r"repeats the columns of another one",
            id="same-columns",
        ),
        pytest.param(
            [uow.Unique("day", "hour", name="x"), uow.Unique("day", "id", name="x")],
            r"would be named 'x', which another constraint or index of the table takes",
            id="same-name",
        ),
        pytest.param([uow.Unique("day", "hour", name="n" * 64)], r"longer than 63 bytes", id="long-name"),
        pytest.param([("day", "hour")], r"constraints takes Unique\(column, column, \.\.\.\)", id="not-unique"),
    ],
)
def test_a_bad_unique_constraint_over_several_columns_is_refused(constraints: list[Any], message: str) -> None:
    model = _model_with(constraints)
    with pytest.raises(ModelDefinitionError, match=message):
        table_info(model)


def test_unique_with_columns_in_a_columns_annotation_is_refused() -> None:
    class Misplaced(Model, table="def_misplaced"):
        id: Annotated[int | None, PrimaryKey()] = None
        day: Annotated[int, uow.Unique("day", "hour")] = 0

    with pytest.raises(
        ModelDefinitionError, match=r"Misplaced\.day: Unique\(\) or Index\(\) on a column takes no columns"
    ):
        table_info(Misplaced)


def test_a_unique_constraint_is_named_as_postgresql_names_it_unless_named() -> None:
    info = table_info(_model_with([uow.Unique("day", "hour"), uow.Unique("hour", "id", name="slot_hour")]))

    assert [(u.name, u.columns) for u in info.unique_together] == [
        ("def_slots_day_hour_key", ("day", "hour")),
        ("slot_hour", ("hour", "id")),
    ]
    long = table_info(_model_with([uow.Unique("day", "hour")], name="s" * 60))
    assert len(long.unique_together[0].name.encode()) == 63


async def test_a_change_of_one_column_records_the_others_of_its_constraint(engine: uow.Engine) -> None:
    from uow.journal import decode, encode

    slot_model = _model_with([uow.Unique("day", "hour")], name="def_slots_recorded")
    tables = [table_info(slot_model)]
    await engine.create_all(slot_model)
    async with uow.AsyncSession(engine) as session:
        slot = slot_model(day=1, hour=9)
        session.add(slot)
        await session.flush()
        slot.hour = 10
        slot.payload = {"note": "moved"}
        await session.flush()
        event = session.journal[-1]
        assert isinstance(event, Updated)
        assert (event.new, event.unchanged) == ({"hour": 10, "payload": {"note": "moved"}}, {"day": 1})
        for fmt in ("json", "msgpack"):
            assert decode(encode(session.journal, fmt), tables, fmt)[-1] == event
        slot.payload = None  # no column of the constraint: nothing to add
        await session.flush()
        assert session.journal[-1].unchanged is None  # type: ignore[attr-defined]


def test_a_constraint_whose_name_another_of_the_table_takes_is_refused() -> None:
    class Clashing(Model, table="def_clash", constraints=[uow.Unique("a", "b")]):
        id: Annotated[int | None, PrimaryKey()] = None
        a: int = 0
        b: int = 0
        a_b: Annotated[int, uow.Unique()] = 0  # its constraint is def_clash_a_b_key too

    class NamedAsKey(Model, table="def_named", constraints=[uow.Unique("a", "b", name="def_named_pkey")]):
        id: Annotated[int | None, PrimaryKey()] = None
        a: int = 0
        b: int = 0

    for model in (Clashing, NamedAsKey):
        with pytest.raises(ModelDefinitionError, match="another constraint or index of the table takes"):
            table_info(model)


def test_a_named_unique_on_a_column_is_refused() -> None:
    class Named(Model, table="def_named_column"):
        id: Annotated[int | None, PrimaryKey()] = None
        email: Annotated[str, uow.Unique(name="email_unique")] = ""

    with pytest.raises(
        ModelDefinitionError, match=r"Named\.email: Unique\(\) or Index\(\) on a column takes no columns and no"
    ):
        table_info(Named)


def test_a_base_without_a_table_passes_its_constraints_on() -> None:
    class Scheduled(Model, constraints=[uow.Unique("room", "day")]):
        room: int = 0
        day: int = 0

    class Meeting(Scheduled, table="def_meetings", constraints=[uow.Unique("day", "title")]):
        id: Annotated[int | None, PrimaryKey()] = None
        title: str = ""

    assert [u.columns for u in table_info(Meeting).unique_together] == [("room", "day"), ("day", "title")]


async def test_an_index_over_several_columns_is_created_and_named_apart(engine: uow.Engine, tmp_path: Path) -> None:
    class Visit(
        Model, table="def_visits", indexes=[uow.Index("room", "day"), uow.Index("day", "guest", name="by_guest")]
    ):
        id: Annotated[int | None, PrimaryKey()] = None
        room: int = 0
        day: int = 0
        guest: str = ""

    info = table_info(Visit)
    assert [(i.name, i.columns) for i in info.indexes_together] == [
        ("ix_def_visits__room_day", ("room", "day")),
        ("by_guest", ("day", "guest")),
    ]
    await engine.create_all(Visit)
    await engine.create_all(Visit)  # again: nothing to do
    async with uow.AsyncSession(engine) as session:
        session.add_all([Visit(room=1, day=2, guest="a"), Visit(room=1, day=2, guest="a")])  # not unique
        await session.commit()
        assert await session.query(Visit).filter(room=1, day=2).count() == 2


def test_a_bad_index_over_several_columns_is_refused() -> None:
    for indexes, message in (
        ([uow.Index("day")], r"names 1 column\(s\); one in indexes spans two or more"),
        ([uow.Unique("day", "hour")], r"indexes takes Index\(column, column, \.\.\.\), not Unique"),
        ([uow.Index("day", "hour", name="def_slots_pkey")], "another constraint or index of the table takes"),
    ):
        with pytest.raises(ModelDefinitionError, match=message):
            table_info(_indexed(indexes))


def _indexed(indexes: list[Any]) -> type[Model]:
    class Slot(Model, table="def_slots", indexes=indexes):
        id: Annotated[int | None, PrimaryKey()] = None
        day: int = 0
        hour: int = 0

    return Slot
