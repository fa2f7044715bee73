"""The journal: encoding round trips, marks and truncation, the read-only view,
and replay as the oracle of what storage must hold. No I/O."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uow
from uow.arithmetic import ColumnMath
from uow.conditions import And, Between, Compare, Condition, In, IsNull, Like, Not, Or
from uow.errors import ReplayError, ValidationError
from uow.events import (
    AnyEvent,
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Inserted,
    Restored,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.journal import Journal, JournalView, decode, encode, replay
from uow.model import ForeignKey, Model, PrimaryKey, SoftDelete, TableInfo, Unique, table_info


class Kinds(Model, SoftDelete, table="journal_kinds"):
    id: Annotated[int | None, PrimaryKey()] = None
    n: int | None = None
    s: str | None = None
    f: float | None = None
    b: bool | None = None
    ts: dt.datetime | None = None
    d: dt.date | None = None
    money: decimal.Decimal | None = None
    uid: uuid.UUID | None = None
    blob: bytes | None = None


class Token(Model, table="journal_tokens"):
    id: Annotated[uuid.UUID, PrimaryKey()]
    issued: dt.datetime
    kind_id: Annotated[int | None, ForeignKey(Kinds)] = None


class Person(Model, table="journal_people"):
    id: Annotated[int | None, PrimaryKey()] = None
    email: Annotated[str, Unique()]
    name: str | None = None
    age: int | None = None
    boss_id: Annotated[int | None, ForeignKey("Person")] = None


TABLES: dict[str, TableInfo] = {info.name: info for info in map(table_info, (Kinds, Token, Person))}
AT = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

# --- strategies ------------------------------------------------------------------------------------

ZONES = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))])
AWARE = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=ZONES)

KIND_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(1, 2**63 - 1),
    "n": st.integers(-(2**63), 2**63 - 1),
    "s": st.text(max_size=12),
    "f": st.floats(allow_nan=False),  # infinities included: JSON spells them as strings
    "b": st.booleans(),
    "ts": AWARE,
    "d": st.dates(),
    "money": st.decimals(allow_nan=False, allow_infinity=False, places=4),
    "uid": st.uuids(),
    "blob": st.binary(max_size=12),
    "deleted_at": AWARE,
}
COLUMNS = tuple(KIND_VALUES)


def column_value(column: str) -> st.SearchStrategy[Any]:
    strategy = KIND_VALUES[column]
    return strategy if column == "id" else st.none() | strategy


row_values = st.fixed_dictionaries({c: column_value(c) for c in COLUMNS})
some_values = st.sets(st.sampled_from(COLUMNS[1:]), min_size=1, max_size=4).flatmap(
    lambda columns: st.fixed_dictionaries({c: column_value(c) for c in sorted(columns)})
)


def leaf_conditions() -> st.SearchStrategy[Condition]:
    column = st.sampled_from(COLUMNS[1:])
    return st.one_of(
        column.flatmap(
            lambda c: st.builds(Compare, st.just(c), st.sampled_from(["eq", "ne", "lt", "ge"]), KIND_VALUES[c])
        ),
        column.flatmap(lambda c: st.builds(In, st.just(c), st.lists(KIND_VALUES[c], max_size=3).map(tuple))),
        column.flatmap(lambda c: st.builds(Between, st.just(c), KIND_VALUES[c], KIND_VALUES[c])),
        st.builds(IsNull, column, st.booleans()),
        st.builds(Like, st.just("s"), st.text(max_size=5), st.booleans()),
    )


conditions: st.SearchStrategy[Condition] = st.recursive(
    leaf_conditions(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(inner, max_size=3).map(lambda items: Or(tuple(items))),
        st.builds(Not, inner),
    ),
    max_leaves=6,
)


def event(cls: type[AnyEvent], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[AnyEvent]:
    return st.fixed_dictionaries(fields).map(lambda values: cls(**values))


common = {
    "seq": st.integers(1, 10_000),
    "at": AWARE,
    "table": st.just("journal_kinds"),
}
row_common = {**common, "ref": st.integers(1, 10_000), "key": st.none() | KIND_VALUES["id"]}
refs_to_rows = st.dictionaries(st.integers(1, 50), some_values, max_size=3)

events: st.SearchStrategy[AnyEvent] = st.one_of(
    event(
        Inserted,
        **row_common,
        values=row_values,
        parent_refs=st.dictionaries(st.just("n"), st.integers(1, 50), max_size=1),
    ),
    event(
        Updated,
        **row_common,
        old=some_values,
        new=some_values,
        parent_refs=st.dictionaries(st.just("n"), st.integers(1, 50), max_size=1),
        unchanged=st.none() | some_values,
    ),
    event(Deleted, **row_common, old=row_values),
    event(SoftDeleted, **row_common, old=some_values, new=some_values, unchanged=st.none() | some_values),
    event(Restored, **row_common, old=some_values, new=some_values, unchanged=st.none() | some_values),
    event(
        Upserted,
        **row_common,
        values=row_values,
        conflict_target=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=2, unique=True).map(tuple),
        update_fields=st.lists(st.sampled_from(COLUMNS[1:]), max_size=3, unique=True).map(tuple),
        old=st.none() | row_values,
    ),
    event(
        BulkUpdated,
        **common,
        where=st.none() | conditions,
        values=some_values,
        old=refs_to_rows,
    ),
    event(BulkDeleted, **common, where=st.none() | conditions, old=refs_to_rows),
)

token_events = st.builds(
    Inserted,
    seq=st.integers(1, 100),
    at=AWARE,
    table=st.just("journal_tokens"),
    ref=st.integers(1, 100),
    key=st.uuids(),
    values=st.fixed_dictionaries({"issued": AWARE, "kind_id": st.none() | st.integers(1, 100)}),
)


# --- encoding -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(events | token_events, max_size=6), st.sampled_from(["json", "msgpack"]))
def test_events_of_every_type_and_column_kind_decode_to_equal_events(journal: list[AnyEvent], format: Any) -> None:
    data = encode(journal, format)

    decoded = decode(data, TABLES, format)

    assert decoded == journal
    assert [type(e) for e in decoded] == [type(e) for e in journal]


@pytest.mark.parametrize("format", ["json", "msgpack"])
def test_decoded_values_have_their_column_types_again(format: Any) -> None:
    event = Inserted(
        seq=1,
        at=AT,
        table="journal_kinds",
        ref=1,
        key=3,
        values={
            "id": 3,
            "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "d": dt.date(2024, 2, 29),
            "money": decimal.Decimal("12.3400"),
            "uid": uuid.UUID(int=7),
            "blob": b"\x00\xff",
        },
    )

    (decoded,) = decode(encode([event], format), TABLES.values(), format)

    assert isinstance(decoded, Inserted)
    for column, value in event.values.items():
        assert type(decoded.values[column]) is type(value), column
        assert decoded.values[column] == value, column
    assert str(decoded.values["money"]) == "12.3400"


@pytest.mark.parametrize("format", ["json", "msgpack"])
def test_a_bulk_event_with_nested_conditions_decodes_to_an_equal_event(format: Any) -> None:
    where = And((Not(IsNull("name")), Or((Compare("age", "ge", 18), In("age", (1, 2))))))
    event = BulkDeleted(seq=1, at=AT, table="journal_people", where=where)

    assert decode(encode([event], format), TABLES, format) == [event]


def test_json_is_a_plain_array_tagged_by_event_type() -> None:
    event = Deleted(seq=1, at=AT, table="journal_people", ref=2, key=5, old={"id": 5, "email": "a@x"})

    assert encode([event]).startswith(b'[{"type":"Deleted"')


# --- journal, marks and the read-only view -----------------------------------------------------------------


def _inserted(journal: Journal, ref: int, key: Any = None) -> Inserted:
    event = Inserted(
        seq=journal.next_seq(), at=AT, table="journal_people", ref=ref, key=key, values={"id": key, "email": f"{ref}@x"}
    )
    journal.append(event)
    return event


def test_sequence_numbers_increase_and_are_never_reused() -> None:
    journal = Journal()
    _inserted(journal, 1)
    mark = journal.mark
    _inserted(journal, 2)
    journal.truncate(mark)

    assert journal.next_seq() == 3


def test_pending_is_what_follows_the_flushed_mark() -> None:
    journal = Journal()
    first = _inserted(journal, 1)
    journal.mark_flushed()
    second = _inserted(journal, 2)

    assert list(journal.pending) == [second]
    assert journal.has_pending()
    assert journal.flushed_mark == 1
    assert journal.events() == [first, second]
    journal.mark_flushed()
    assert not journal.has_pending() and list(journal.pending) == []


def test_truncating_to_a_mark_returns_the_later_events_and_forgets_their_generated_keys() -> None:
    journal = Journal()
    kept = _inserted(journal, 1)
    journal.generated_keys[1] = 100
    mark = journal.mark
    removed = [_inserted(journal, 2), _inserted(journal, 3)]
    journal.generated_keys[2] = 101
    journal.mark_flushed()

    assert journal.truncate(mark) == removed
    assert journal.events() == [kept]
    assert journal.generated_keys == {1: 100}
    assert journal.flushed_mark == mark  # a rolled-back flush is not flushed any more


def test_truncating_an_upsert_onto_a_tracked_row_keeps_that_rows_key() -> None:
    """An upsert that matched a tracked row shares the ref of the row's insert:
    undoing the upsert must not forget the key the insert was given."""
    journal = Journal()
    inserted = _inserted(journal, 1)
    journal.generated_keys[1] = 100
    mark = journal.mark
    upserted = Upserted(
        seq=journal.next_seq(),
        at=dt.datetime.now(dt.UTC),
        table="t",
        ref=1,
        key=7,
        values={"id": 7},
        conflict_target=("email",),
        update_fields=(),
    )
    journal.append(upserted)
    journal.written_keys[upserted.seq] = 100
    view = journal.view()
    assert view.key_of(upserted) == 100 and view.key_of(inserted) == 100

    journal.truncate(mark)
    assert journal.generated_keys == {1: 100} and journal.written_keys == {}
    assert view.key_of(inserted) == 100


def test_truncating_behind_unflushed_events_keeps_the_flushed_mark() -> None:
    journal = Journal()
    _inserted(journal, 1)
    journal.mark_flushed()
    mark = journal.mark
    _inserted(journal, 2)

    journal.truncate(mark)

    assert journal.flushed_mark == 1 and not journal.has_pending()


def test_pending_refs_follow_appends_flushes_and_truncations() -> None:
    journal = Journal()
    _inserted(journal, 1)
    assert journal.pending_refs() == {1}
    mark = journal.mark
    _inserted(journal, 2)
    assert journal.pending_refs() == {1, 2}
    journal.mark_flushed()
    assert journal.pending_refs() == set()
    journal.truncate(mark)  # the flush of ref 2 is undone with its event; ref 1 stays flushed
    assert journal.pending_refs() == set()
    _inserted(journal, 3)
    assert journal.pending_refs() == {3}
    journal.truncate(mark)
    _inserted(journal, 4)  # the same length and flushed mark as a moment ago, another row
    assert journal.pending_refs() == {4}


def test_the_view_follows_the_journal_and_cannot_change_it() -> None:
    journal = Journal()
    view = journal.view()
    first = _inserted(journal, 1, key=10)
    journal.mark_flushed()
    second = _inserted(journal, 2)
    journal.generated_keys[2] = 11

    assert isinstance(view, Sequence) and isinstance(view, JournalView)
    assert len(view) == 2 and list(view) == [first, second] and view[-1] is second and view[:1] == [first]
    assert view.pending == (second,) and view.flushed == (first,)
    assert view.key_of(first) == 10 and view.key_of(second) == 11
    assert decode(view.encode("msgpack"), TABLES, "msgpack") == [first, second]
    assert "2 events, 1 pending" in repr(view)

    assert not hasattr(view, "append") and not hasattr(view, "extend") and not hasattr(view, "clear")
    with pytest.raises(TypeError):
        view[0] = second  # type: ignore[index]
    with pytest.raises(TypeError):
        del view[0]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view.pending.append(first)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        view.generated_keys[2] = 99  # type: ignore[index]
    keys = view.generated_keys
    journal.generated_keys[3] = 12
    assert keys == {2: 11, 3: 12}  # read-only, and it follows the journal


# --- replay -------------------------------------------------------------------------------------------


def _person(key: int, name: str | None, age: int | None, email: str | None = None) -> dict[str, Any]:
    return {"id": key, "email": email or f"{key}@x", "name": name, "age": age, "boss_id": None}


BASE = {
    "journal_people": {
        1: _person(1, "ann", 30),
        2: _person(2, None, 40),
        3: _person(3, "bob", None),
        4: _person(4, None, None),
    }
}


def _people(rows: dict[str, dict[Any, dict[str, Any]]]) -> dict[Any, dict[str, Any]]:
    return rows["journal_people"]


def _bulk_update(where: Condition | None, **values: Any) -> BulkUpdated:
    return BulkUpdated(seq=1, at=AT, table="journal_people", where=where, values=values)


@pytest.mark.parametrize(
    ("where", "changed"),
    [
        (None, {1, 2, 3, 4}),
        (Compare("name", "eq", "ann"), {1}),
        (Compare("name", "ne", "ann"), {3}),  # NULL <> 'ann' is unknown, not true
        (Not(Compare("name", "eq", "ann")), {3}),  # NOT unknown is unknown
        (In("age", (30, None)), {1}),  # 40 IN (30, NULL) is unknown
        (In("age", (30,), negate=True), {2}),
        (Or((Compare("age", "gt", 35), IsNull("name"))), {2, 4}),
        (And((IsNull("name", negate=True), Compare("age", "lt", 100))), {1}),
        (Between("age", 30, 40), {1, 2}),
        (Like("name", "%n%"), {1}),
        (Compare("age", "eq", None), set()),  # = NULL never matches
    ],
)
def test_replay_of_a_bulk_update_changes_the_rows_sql_would_match(where: Condition | None, changed: set[int]) -> None:
    rows = replay([_bulk_update(where, age=7)], TABLES, base=BASE)

    assert {key for key, row in _people(rows).items() if row["age"] == 7} == changed
    assert _people(BASE)[1]["age"] == 30  # the base is not modified


@pytest.mark.parametrize(
    ("where", "kept"),
    [
        (IsNull("age"), {1, 2}),
        (Compare("age", "ge", 35), {1, 3, 4}),
        (Not(Compare("age", "ge", 35)), {2, 3, 4}),
        (Or(()), {1, 2, 3, 4}),
        (And(()), set()),
    ],
)
def test_replay_of_a_bulk_delete_removes_only_rows_the_condition_holds_for(where: Condition, kept: set[int]) -> None:
    event = BulkDeleted(seq=1, at=AT, table="journal_people", where=where)

    assert set(_people(replay([event], TABLES, base=BASE))) == kept


def test_replay_applies_row_events_in_order_and_fills_generated_keys() -> None:
    events: list[AnyEvent] = [
        Inserted(seq=1, at=AT, table="journal_people", ref=10, values=_person(None, "boss", 50)),  # type: ignore[arg-type]
        Inserted(
            seq=2,
            at=AT,
            table="journal_people",
            ref=11,
            values=_person(None, "worker", 20, email="w@x"),  # type: ignore[arg-type]
            parent_refs={"boss_id": 10},
        ),
        Updated(seq=3, at=AT, table="journal_people", ref=11, old={"age": 20}, new={"age": 21}),
        Updated(
            seq=4,
            at=AT,
            table="journal_people",
            ref=1,
            key=1,
            old={"boss_id": None},
            new={"boss_id": None},
            parent_refs={"boss_id": 10},
        ),
        Deleted(seq=5, at=AT, table="journal_people", ref=3, key=3, old=_person(3, "bob", None)),
    ]

    rows = _people(replay(events, TABLES, base=BASE, generated_keys={10: 500, 11: 501}))

    assert rows[500]["name"] == "boss" and rows[500]["id"] == 500
    assert rows[501] == {**_person(501, "worker", 21, email="w@x"), "boss_id": 500}
    assert rows[1]["boss_id"] == 500
    assert 3 not in rows


def test_replay_of_upserts_updates_only_the_given_fields_on_a_conflict_and_inserts_otherwise() -> None:
    def upsert(seq: int, ref: int, key: int, email: str, name: str) -> Upserted:
        return Upserted(
            seq=seq,
            at=AT,
            table="journal_people",
            ref=ref,
            key=key,
            values=_person(key, name, 99, email=email),
            conflict_target=("email",),
            update_fields=("name",),
        )

    rows = _people(replay([upsert(1, 20, 8, "1@x", "ann2"), upsert(2, 21, 9, "new@x", "cat")], TABLES, base=BASE))

    assert rows[1] == _person(1, "ann2", 30)  # age is not among the update fields
    assert rows[9] == _person(9, "cat", 99, email="new@x")


def test_replay_of_soft_delete_and_restore_sets_and_clears_the_column() -> None:
    base = {"journal_kinds": {1: {"id": 1, "deleted_at": None}}}
    events: list[AnyEvent] = [
        SoftDeleted(
            seq=1, at=AT, table="journal_kinds", ref=1, key=1, old={"deleted_at": None}, new={"deleted_at": AT}
        ),
    ]
    assert replay(events, TABLES, base=base)["journal_kinds"][1]["deleted_at"] == AT
    events.append(
        Restored(seq=2, at=AT, table="journal_kinds", ref=1, key=1, old={"deleted_at": AT}, new={"deleted_at": None})
    )
    assert replay(events, TABLES, base=base)["journal_kinds"][1]["deleted_at"] is None


def test_a_replay_of_a_change_to_a_row_it_does_not_hold_says_what_to_pass() -> None:
    table = uow.table_info(_ReplayUser)
    changed = uow.Updated(
        seq=4, at=dt.datetime.now(dt.UTC), table=table.name, ref=1, key=7, old={"name": "a"}, new={"name": "b"}
    )
    with pytest.raises(ReplayError, match=r"event #4 Updated changes replay_users row 7.*base="):
        uow.replay([changed], [table])
    assert uow.replay([changed], [table], base={table.name: {7: {"id": 7, "name": "a"}}})[table.name][7]["name"] == "b"


class _ReplayUser(uow.Model, table="replay_users"):
    id: Annotated[int | None, uow.PrimaryKey()] = None
    name: str = ""


def test_bad_input_to_encode_decode_and_replay_is_a_uow_error() -> None:
    inserted = Inserted(
        seq=1, at=AT, table="journal_people", ref=1, key=1, values={"id": 1, "email": "a@x", "name": "Ann"}
    )
    for call in (lambda: encode([inserted], "JSON"), lambda: decode(b"[]", TABLES, "yaml")):  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="'json' or 'msgpack'"):
            call()
    with pytest.raises(ValidationError, match="not a journal encoded as json"):
        decode(b"garbage", TABLES)
    with pytest.raises(ValidationError, match="not a journal encoded as msgpack"):
        decode(encode([inserted]), TABLES, "msgpack")
    with pytest.raises(ValidationError, match=r"tables lacks \['journal_people'\]"):
        decode(encode([inserted]), [table_info(Kinds)])
    with pytest.raises(ReplayError, match="'journal_people', which tables lacks"):
        replay([inserted], [table_info(Kinds)])


class _Settings(Model, table="journal_settings"):
    id: Annotated[int | None, PrimaryKey()] = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    level: int = 0


def test_a_json_value_shaped_like_arithmetic_decodes_as_the_value_it_is() -> None:
    table = uow.table_info(_Settings)
    shaped = {"expr": "column_math", "column": "level", "op": "+", "operand": 1}
    events = [
        BulkUpdated(seq=1, at=AT, table=table.name, where=None, values={"data": shaped}),
        BulkUpdated(seq=2, at=AT, table=table.name, where=None, values={"level": ColumnMath("level", "+", 1)}),
    ]
    for format in ("json", "msgpack"):
        decoded = decode(encode(events, format), [table], format)  # type: ignore[arg-type]
        assert decoded == events
        assert type(decoded[0].values["data"]) is dict and type(decoded[1].values["level"]) is ColumnMath  # type: ignore[union-attr]


def test_a_pending_integer_past_64_bits_encodes_to_json_and_is_refused_by_msgpack() -> None:
    event = Inserted(seq=1, at=AT, table="journal_kinds", ref=1, key=None, values={"n": 2**70})

    assert b"1180591620717411303424" in encode([event], "json")
    with pytest.raises(ValidationError, match="64 bits"):
        encode([event], "msgpack")
