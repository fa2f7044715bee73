"""The planner, without I/O: pending events and table metadata in, a FlushPlan out.

Events are built here the way a session records them (one per mutating call,
with old and new values, ``parent_refs`` for links to rows whose key is not
generated yet). Plans are checked by reading their batches and, in the
properties at the end, by applying them to :class:`FakeDatabase`, a dict that
enforces primary-key, unique, not-null and foreign-key constraints row by row.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uow.batches import (
    Batch,
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    FlushPlan,
    InsertBatch,
    PendingKey,
    UpdateBatch,
    UpsertBatch,
)
from uow.conditions import Compare, matches
from uow.errors import CycleError
from uow.events import AnyEvent, BulkDeleted, BulkUpdated, Deleted, Inserted, SoftDeleted, Updated, Upserted
from uow.journal import Rows, replay
from uow.model import ForeignKey, Model, PrimaryKey, TableInfo, Unique, Versioned, table_info
from uow.planner import _plan_rows, plan_flush
from uow.shortcut import plan_shortcut

# --- models -----------------------------------------------------------------------


class User(Model, table="planner_users"):
    id: Annotated[int | None, PrimaryKey()] = None
    email: Annotated[str, Unique()]
    name: str = ""


class Post(Model, table="planner_posts"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(User)] = None
    title: str = ""


class Category(Model, table="planner_categories"):
    id: Annotated[int | None, PrimaryKey()] = None
    parent_id: Annotated[int | None, ForeignKey("Category")] = None
    code: Annotated[str | None, Unique()] = None


class Team(Model, table="planner_teams"):
    """With :class:`Player`, a pair of tables that reference each other."""

    id: Annotated[int | None, PrimaryKey()] = None
    captain_id: Annotated[int | None, ForeignKey("Player")] = None
    name: str = ""


class Player(Model, table="planner_players"):
    id: Annotated[int | None, PrimaryKey()] = None
    team_id: Annotated[int, ForeignKey(Team)]


class Hen(Model, table="planner_hens"):
    """With :class:`Egg`, a pair whose foreign keys are both NOT NULL."""

    id: Annotated[int | None, PrimaryKey()] = None
    egg_id: Annotated[int, ForeignKey("Egg")]


class Egg(Model, table="planner_eggs"):
    id: Annotated[int | None, PrimaryKey()] = None
    hen_id: Annotated[int, ForeignKey(Hen)]


class Doc(Model, Versioned, table="planner_docs"):
    id: Annotated[int | None, PrimaryKey()] = None
    owner_id: Annotated[int | None, ForeignKey(User)] = None
    body: str = ""


class Region(Model, table="planner_regions"):
    """Two unique columns and a parent that cannot be NULL."""

    id: Annotated[int | None, PrimaryKey()] = None
    parent_id: Annotated[int, ForeignKey("Region")]
    code: Annotated[str | None, Unique()] = None
    name: Annotated[str | None, Unique()] = None


class Seat(
    Model, table="planner_seats", constraints=[Unique("owner_id", "number"), Unique("number", "label", name="seat_tag")]
):
    """Two unique constraints over several columns, sharing one, one of them
    over a foreign key."""

    id: Annotated[int | None, PrimaryKey()] = None
    owner_id: Annotated[int | None, ForeignKey(User)] = None
    number: int = 0
    label: str | None = None


MODELS: tuple[type[Model], ...] = (User, Post, Category, Team, Player, Hen, Egg, Doc, Region, Seat)
TABLES: dict[str, TableInfo] = {info.name: info for info in map(table_info, MODELS)}
AT = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


# --- recording events the way a session does ------------------------------------------


@dataclass
class Row:
    """A row as the recording session sees it."""

    table: TableInfo
    ref: int
    key: Any
    values: dict[str, Any]
    stored: bool
    links: dict[str, int] = field(default_factory=dict)
    """FK column -> ref of a new parent whose key is not generated yet."""
    alive: bool = True


class Recorder:
    """Records events with increasing ``seq`` and fresh refs, like a session."""

    def __init__(self) -> None:
        self.events: list[AnyEvent] = []
        self.base: Rows = {}
        self.rows: list[Row] = []
        self._seq = itertools.count(1)
        self._ref = itertools.count(1)

    def _full_row(self, model: type[Model], values: Mapping[str, Any]) -> dict[str, Any]:
        info = table_info(model)
        return info.row_dict(info.values_of(model(**values)))

    def stored(self, model: type[Model], **values: Any) -> Row:
        """A row that storage holds before the flush (loaded, not an event)."""
        info = table_info(model)
        row_values = self._full_row(model, values)
        key = row_values[info.key_column]
        self.base.setdefault(info.name, {})[key] = dict(row_values)
        row = Row(info, next(self._ref), key, row_values, stored=True)
        self.rows.append(row)
        return row

    def insert(self, model: type[Model], *, links: Mapping[str, Row] | None = None, **values: Any) -> Row:
        """``session.add``; ``links`` assigns parents, new ones included."""
        info = table_info(model)
        ref = next(self._ref)
        parent_refs: dict[str, int] = {}
        for column, parent in (links or {}).items():
            if parent.key is not None:
                values[column] = parent.key
            else:
                values[column] = None
                parent_refs[column] = parent.ref
        row_values = self._full_row(model, values)
        row = Row(info, ref, row_values[info.key_column], row_values, stored=False, links=dict(parent_refs))
        self.events.append(
            Inserted(
                seq=next(self._seq),
                at=AT,
                table=info.name,
                ref=ref,
                key=row.key,
                values=dict(row_values),
                parent_refs=parent_refs,
            )
        )
        self.rows.append(row)
        return row

    def update(self, row: Row, *, links: Mapping[str, Row] | None = None, **new: Any) -> None:
        """Assignments on a tracked object, recorded as one Updated event."""
        assert row.alive
        parent_refs: dict[str, int] = {}
        for column, parent in (links or {}).items():
            if parent.key is not None:
                new[column] = parent.key
            else:
                new[column] = None
                parent_refs[column] = parent.ref
        old = {column: row.values[column] for column in new}
        version = row.table.version_column
        if version is not None and row.stored and version not in new:
            old[version] = row.values[version]
            new[version] = row.values[version] + 1
        unchanged = row.table.unchanged_partners([row.values[c] for c in row.table.column_names], new)
        for column in new:
            row.links.pop(column, None)
        row.links.update(parent_refs)
        row.values.update(new)
        self.events.append(
            Updated(
                seq=next(self._seq),
                at=AT,
                table=row.table.name,
                ref=row.ref,
                key=row.key,
                old=old,
                new=dict(new),
                parent_refs=parent_refs,
                unchanged=unchanged,
            )
        )

    def delete(self, row: Row) -> None:
        assert row.alive
        row.alive = False
        self.events.append(
            Deleted(seq=next(self._seq), at=AT, table=row.table.name, ref=row.ref, key=row.key, old=dict(row.values))
        )

    def bulk_update(self, model: type[Model], where: Any, values: dict[str, Any]) -> None:
        info = table_info(model)
        old: dict[int, dict[str, Any]] = {}
        for row in self.live(info):
            if matches(where, row.values):
                old[row.ref] = {c: row.values[c] for c in values}
                row.values.update(values)
        self.events.append(
            BulkUpdated(seq=next(self._seq), at=AT, table=info.name, where=where, values=dict(values), old=old)
        )

    def bulk_delete(self, model: type[Model], where: Any) -> None:
        info = table_info(model)
        old: dict[int, dict[str, Any]] = {}
        for row in self.live(info):
            if matches(where, row.values):
                old[row.ref] = dict(row.values)
                row.alive = False
        self.events.append(BulkDeleted(seq=next(self._seq), at=AT, table=info.name, where=where, old=old))

    def live(self, table: TableInfo | None = None) -> list[Row]:
        return [r for r in self.rows if r.alive and (table is None or r.table is table)]

    def plan(self) -> FlushPlan:
        return plan_flush(self.events, TABLES)

    def __repr__(self) -> str:
        lines = [f"stored {name} {values}" for name, rows in self.base.items() for values in rows.values()]
        lines += [_show(event) for event in self.events]
        return "Recorder(\n  " + "\n  ".join(lines) + "\n)"


def _show(event: AnyEvent) -> str:
    fields = {k: v for k, v in msgspec.structs.asdict(event).items() if k not in ("at", "seq") and v not in ({}, None)}
    return f"{event.seq}. {type(event).__name__} {fields}"


# --- a dict database that checks constraints row by row --------------------------------


class ConstraintViolation(AssertionError):
    pass


class FakeDatabase:
    """Rows per table; every write is checked the way a database with
    immediate constraints checks it, one row at a time."""

    def __init__(self, tables: Mapping[str, TableInfo], base: Rows):
        self.tables = tables
        self.rows: Rows = {name: {} for name in tables}
        for name, rows in base.items():
            self.rows[name] = {key: dict(values) for key, values in rows.items()}
        self.generated: dict[int, Any] = {}
        self._next_key = itertools.count(1000)

    def apply_plan(self, plan: Iterable[Batch]) -> None:
        for number, batch in enumerate(plan, start=1):
            try:
                self.apply(batch)
            except ConstraintViolation as exc:
                raise ConstraintViolation(f"batch {number} ({batch.kind} {batch.table.name}): {exc}") from None

    def resolve(self, value: Any) -> Any:
        if isinstance(value, PendingKey):
            if value.ref not in self.generated:
                raise ConstraintViolation(f"{value!r} used before the row was inserted")
            return self.generated[value.ref]
        return value

    def apply(self, batch: Batch) -> None:
        table = batch.table
        rows = self.rows[table.name]
        if isinstance(batch, InsertBatch):
            for ref, row in zip(batch.refs, batch.rows, strict=True):
                values = {c: self.resolve(v) for c, v in zip(batch.columns, row, strict=True)}
                if batch.returning_key:
                    values[table.key_column] = next(self._next_key)
                    self.generated[ref] = values[table.key_column]
                key = values[table.key_column]
                if key in rows:
                    raise ConstraintViolation(f"primary key {key!r} already in {table.name}")
                rows[key] = values
                self.check_row(table, values)
        elif isinstance(batch, UpdateBatch):
            width = len(batch.columns)
            for row in batch.rows:
                key = self.resolve(row[width])
                current = rows.get(key)
                if current is None:
                    raise ConstraintViolation(f"UPDATE {table.name} matched no row with key {key!r}")
                if batch.check_version and current[table.version_column] != row[width + 1]:  # type: ignore[index]
                    raise ConstraintViolation(f"UPDATE {table.name} {key!r}: version is not {row[width + 1]!r}")
                current.update({c: self.resolve(v) for c, v in zip(batch.columns, row[:width], strict=True)})
                self.check_row(table, current)
        elif isinstance(batch, DeleteBatch):
            versions = batch.expected_versions or [None] * len(batch.keys)
            for raw_key, version in zip(batch.keys, versions, strict=True):
                key = self.resolve(raw_key)
                if key not in rows:
                    raise ConstraintViolation(f"DELETE {table.name} matched no row with key {key!r}")
                if batch.expected_versions is not None and rows[key][table.version_column] != version:  # type: ignore[index]
                    raise ConstraintViolation(f"DELETE {table.name} {key!r}: version is not {version!r}")
                self.check_unreferenced(table, key)
                del rows[key]
        elif isinstance(batch, UpsertBatch):
            for row in batch.rows:
                values = dict(zip(batch.columns, row, strict=True))
                existing = next(
                    (r for r in rows.values() if all(r[c] == values[c] for c in batch.conflict_target)), None
                )
                if existing is not None:
                    existing.update({c: values[c] for c in batch.update_columns})
                    self.check_row(table, existing)
                    continue
                values.setdefault(table.key_column, next(self._next_key))
                rows[values[table.key_column]] = values
                self.check_row(table, values)
        elif isinstance(batch, BulkUpdateBatch):
            for values in rows.values():
                if matches(batch.where, values):
                    values.update(batch.values)
                    self.check_row(table, values)
        elif isinstance(batch, BulkDeleteBatch):
            for key in [k for k, values in rows.items() if matches(batch.where, values)]:
                self.check_unreferenced(table, key)
                del rows[key]

    def check_row(self, table: TableInfo, values: Mapping[str, Any]) -> None:
        key = values[table.key_column]
        for column in table.columns:
            value = values[column.name]
            if value is None and not column.nullable:
                raise ConstraintViolation(f"{table.name}.{column.name} is NULL in row {key!r}")
            if column.unique and not column.primary_key and value is not None:
                holders = [k for k, r in self.rows[table.name].items() if r[column.name] == value]
                if holders != [key]:
                    raise ConstraintViolation(f"{table.name}.{column.name}={value!r} held by rows {holders}")
        for constraint in table.unique_together:
            together = tuple(values[c] for c in constraint.columns)
            if None in together:
                continue
            holders = [
                k for k, r in self.rows[table.name].items() if tuple(r[c] for c in constraint.columns) == together
            ]
            if holders != [key]:
                raise ConstraintViolation(f"{table.name} {constraint.name}={together!r} held by rows {holders}")
        for fk in table.foreign_keys:
            value = values[fk.column]
            if value is not None and value not in self.rows[fk.target_table]:
                raise ConstraintViolation(
                    f"{table.name} {key!r}: {fk.column}={value!r} references no {fk.target_table} row"
                )

    def check_unreferenced(self, table: TableInfo, key: Any) -> None:
        for other in self.tables.values():
            for fk in other.foreign_keys:
                if fk.target_table != table.name:
                    continue
                for child_key, child in self.rows[other.name].items():
                    if child[fk.column] == key and not (other is table and child_key == key):
                        raise ConstraintViolation(
                            f"{table.name} {key!r} is still referenced by {other.name} {child_key!r}"
                        )


def apply_and_replay(recorder: Recorder) -> tuple[FakeDatabase, Rows]:
    """Apply the plan to a FakeDatabase; return it with what replay gives."""
    database = FakeDatabase(TABLES, recorder.base)
    database.apply_plan(recorder.plan())
    expected = replay(recorder.events, TABLES, base=recorder.base, generated_keys=database.generated)
    return database, expected


def assert_same_rows(actual: Rows, expected: Rows) -> None:
    names = set(actual) | set(expected)
    for name in names:
        assert actual.get(name, {}) == expected.get(name, {}), name


def kinds(plan: FlushPlan) -> list[tuple[str, str]]:
    return [(batch.kind, batch.table.name) for batch in plan]


# --- coalescing ----------------------------------------------------------------------------


def test_insert_then_updates_become_one_insert_with_the_final_values() -> None:
    rec = Recorder()
    user = rec.insert(User, email="a@x", name="A")
    rec.update(user, name="B")
    rec.update(user, email="b@x", name="C")

    (batch,) = rec.plan()

    assert isinstance(batch, InsertBatch)
    assert batch.returning_key
    assert dict(zip(batch.columns, batch.rows[0])) == {"email": "b@x", "name": "C"}
    assert batch.seqs == [3]  # the last event that shaped the row


def test_insert_then_delete_writes_nothing() -> None:
    rec = Recorder()
    user = rec.insert(User, email="a@x")
    rec.update(user, name="B")
    rec.delete(user)

    plan = rec.plan()

    assert len(plan) == 0
    assert plan.explain() == "FlushPlan: nothing to write"


def test_several_updates_become_one_update_of_the_changed_columns_only() -> None:
    rec = Recorder()
    user = rec.stored(User, id=1, email="a@x", name="A")
    rec.update(user, name="B")
    rec.update(user, email="b@x")
    rec.update(user, name="A")  # back to what storage holds: name is not written

    (batch,) = rec.plan()

    assert isinstance(batch, UpdateBatch)
    assert batch.columns == ("email",)
    assert batch.rows == [("b@x", 1)]


def test_updates_that_restore_every_value_write_nothing() -> None:
    rec = Recorder()
    user = rec.stored(User, id=1, email="a@x", name="A")
    rec.update(user, name="B")
    rec.update(user, name="A")

    assert len(rec.plan()) == 0


def test_update_then_delete_of_a_stored_row_is_one_delete() -> None:
    rec = Recorder()
    user = rec.stored(User, id=1, email="a@x")
    rec.update(user, name="B")
    rec.delete(user)

    (batch,) = rec.plan()

    assert isinstance(batch, DeleteBatch)
    assert batch.keys == [1]


# --- ordering by foreign keys ------------------------------------------------------------------


def test_a_new_child_of_a_new_parent_is_inserted_after_it_with_the_generated_key() -> None:
    rec = Recorder()
    alice = rec.insert(User, email="a@x")
    rec.insert(Post, title="first", links={"author_id": alice})
    rec.events.reverse()  # order comes from the foreign key, not from the journal

    plan = rec.plan()

    assert kinds(plan) == [("insert", "planner_users"), ("insert", "planner_posts")]
    posts = plan.batches[1]
    assert isinstance(posts, InsertBatch)
    assert dict(zip(posts.columns, posts.rows[0]))["author_id"] == PendingKey(alice.ref)
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_child_pointing_at_a_new_parent_by_value_waits_for_it() -> None:
    rec = Recorder()
    rec.insert(Post, author_id=7, title="hello")
    rec.insert(User, id=7, email="a@x")

    plan = rec.plan()

    assert kinds(plan) == [("insert", "planner_users"), ("insert", "planner_posts")]


def test_children_are_deleted_before_their_parent() -> None:
    rec = Recorder()
    user = rec.stored(User, id=1, email="a@x")
    post = rec.stored(Post, id=10, author_id=1)
    doc = rec.stored(Doc, id=20, owner_id=1)
    rec.delete(user)  # recorded first, as a cascade records the children after
    rec.delete(post)
    rec.delete(doc)

    plan = rec.plan()

    assert kinds(plan)[-1] == ("delete", "planner_users")
    assert {k for k in kinds(plan)[:-1]} == {("delete", "planner_posts"), ("delete", "planner_docs")}
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_child_moved_to_another_parent_is_updated_before_the_old_parent_is_deleted() -> None:
    rec = Recorder()
    old_parent = rec.stored(User, id=1, email="a@x")
    rec.stored(User, id=2, email="b@x")
    post = rec.stored(Post, id=10, author_id=1)
    rec.delete(old_parent)
    rec.update(post, author_id=2)

    plan = rec.plan()

    assert kinds(plan) == [("update", "planner_posts"), ("delete", "planner_users")]


def test_self_referencing_rows_are_inserted_level_by_level() -> None:
    rec = Recorder()
    root = rec.insert(Category, code="root")
    child = rec.insert(Category, code="child", links={"parent_id": root})
    rec.insert(Category, code="grandchild", links={"parent_id": child})
    rec.insert(Category, code="other-root")

    plan = rec.plan()

    assert kinds(plan) == [("insert", "planner_categories")] * 3
    codes = [[dict(zip(b.columns, r))["code"] for r in b.rows] for b in plan if isinstance(b, InsertBatch)]
    assert codes == [["root", "other-root"], ["child"], ["grandchild"]]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_self_referencing_rows_are_deleted_leaves_first() -> None:
    rec = Recorder()
    root = rec.stored(Category, id=1, code="root")
    child = rec.stored(Category, id=2, parent_id=1, code="child")
    leaf = rec.stored(Category, id=3, parent_id=2, code="leaf")
    for row in (root, child, leaf):
        rec.delete(row)

    plan = rec.plan()

    assert [b.keys for b in plan if isinstance(b, DeleteBatch)] == [[3], [2], [1]]


def test_a_new_row_referencing_itself_through_a_generated_key_gets_a_follow_up_update() -> None:
    rec = Recorder()
    loop = Row(TABLES["planner_categories"], 1, None, {}, stored=False)  # the row's own ref is 1
    rec.insert(Category, code="loop", links={"parent_id": loop})

    plan = rec.plan()

    assert kinds(plan) == [("insert", "planner_categories"), ("update", "planner_categories")]
    update = plan.batches[1]
    assert isinstance(update, UpdateBatch)
    assert update.rows == [(PendingKey(1), PendingKey(1))]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_cycle_of_two_new_rows_is_broken_through_the_nullable_key_and_a_follow_up_update() -> None:
    rec = Recorder()
    team = rec.insert(Team, name="red")
    player = rec.insert(Player, links={"team_id": team})
    rec.update(team, links={"captain_id": player})

    plan = rec.plan()

    assert kinds(plan) == [
        ("insert", "planner_teams"),
        ("insert", "planner_players"),
        ("update", "planner_teams"),
    ]
    teams, _, follow_up = plan.batches
    assert isinstance(teams, InsertBatch) and isinstance(follow_up, UpdateBatch)
    assert dict(zip(teams.columns, teams.rows[0]))["captain_id"] is None
    assert follow_up.columns == ("captain_id",)
    assert follow_up.rows == [(PendingKey(player.ref), PendingKey(team.ref))]
    assert "captain_id from batch 2" in plan.explain()
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_deleting_two_rows_that_reference_each_other_clears_the_nullable_key_first() -> None:
    rec = Recorder()
    team = rec.stored(Team, id=1, captain_id=5)
    player = rec.stored(Player, id=5, team_id=1)
    rec.delete(team)
    rec.delete(player)

    plan = rec.plan()

    assert kinds(plan) == [
        ("update", "planner_teams"),
        ("delete", "planner_players"),
        ("delete", "planner_teams"),
    ]
    clearing = plan.batches[0]
    assert isinstance(clearing, UpdateBatch)
    assert clearing.rows == [(None, 1)]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_cycle_through_not_null_keys_raises_cycle_error_naming_tables_and_rows() -> None:
    rec = Recorder()
    rec.insert(Hen, id=1, egg_id=2)
    rec.insert(Egg, id=2, hen_id=1)

    with pytest.raises(CycleError) as caught:
        rec.plan()

    assert set(caught.value.tables) == {"planner_hens", "planner_eggs"}
    assert set(caught.value.rows) == {("planner_hens", 1), ("planner_eggs", 2)}
    assert "planner_hens 1" in str(caught.value) and "planner_eggs 2" in str(caught.value)


def test_a_cycle_of_rows_with_generated_keys_is_named_by_ref() -> None:
    rec = Recorder()
    hen = rec.insert(Hen, egg_id=0)
    egg = rec.insert(Egg, links={"hen_id": hen})
    rec.update(hen, links={"egg_id": egg})

    with pytest.raises(CycleError) as caught:
        rec.plan()

    assert set(caught.value.rows) == {("planner_hens", f"ref {hen.ref}"), ("planner_eggs", f"ref {egg.ref}")}


# --- unique values and primary keys given up and taken in one flush ------------------------------------


def test_a_unique_value_deleted_and_inserted_again_is_deleted_first() -> None:
    rec = Recorder()
    old = rec.stored(User, id=1, email="a@x")
    rec.delete(old)
    rec.insert(User, email="a@x")

    plan = rec.plan()

    assert kinds(plan) == [("delete", "planner_users"), ("insert", "planner_users")]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_unique_value_given_up_by_an_update_is_taken_after_it() -> None:
    rec = Recorder()
    first = rec.stored(User, id=1, email="a@x")
    second = rec.stored(User, id=2, email="b@x")
    rec.update(first, email="c@x")
    rec.update(second, email="a@x")
    rec.events.reverse()  # the update that takes a@x now comes first in the list...
    rec.events.sort(key=lambda e: e.seq)  # ...but the planner follows seq order as given

    plan = rec.plan()

    updates = [b for b in plan if isinstance(b, UpdateBatch)]
    assert [row[-1] for b in updates for row in b.rows] == [1, 2]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_primary_key_deleted_and_inserted_again_is_deleted_first() -> None:
    rec = Recorder()
    old = rec.stored(User, id=1, email="a@x", name="old")
    rec.delete(old)
    rec.insert(User, id=1, email="b@x", name="new")

    plan = rec.plan()

    assert kinds(plan) == [("delete", "planner_users"), ("insert", "planner_users")]
    insert = plan.batches[1]
    assert isinstance(insert, InsertBatch) and not insert.returning_key
    assert dict(zip(insert.columns, insert.rows[0])) == {"id": 1, "email": "b@x", "name": "new"}
    database, expected = apply_and_replay(rec)
    assert database.rows["planner_users"] == {1: {"id": 1, "email": "b@x", "name": "new"}}
    assert_same_rows(database.rows, expected)


# --- batching --------------------------------------------------------------------------------------


def test_rows_of_the_same_table_operation_and_columns_share_one_batch() -> None:
    rec = Recorder()
    for n in range(3):
        rec.insert(User, email=f"{n}@x")
    rec.insert(User, id=50, email="given@x")  # a given key is another column set
    stored = [rec.stored(User, id=n, email=f"s{n}@x") for n in (1, 2, 3)]
    rec.update(stored[0], name="x")
    rec.update(stored[1], name="y")
    rec.update(stored[2], email="t@x")  # another column set
    rec.delete(rec.stored(Post, id=1))
    rec.delete(rec.stored(Post, id=2))

    plan = rec.plan()

    shapes = [
        (b.kind, b.table.name, getattr(b, "columns", ()), len(getattr(b, "rows", getattr(b, "keys", [])))) for b in plan
    ]
    assert sorted(shapes) == sorted(
        [
            ("insert", "planner_users", ("email", "name"), 3),
            ("insert", "planner_users", ("id", "email", "name"), 1),
            ("update", "planner_users", ("name",), 2),
            ("update", "planner_users", ("email",), 1),
            ("delete", "planner_posts", (), 2),
        ]
    )
    assert plan.row_count == 9


def test_inserts_come_before_updates_and_updates_before_deletes_when_nothing_else_decides() -> None:
    rec = Recorder()
    rec.delete(rec.stored(Post, id=1))
    rec.update(rec.stored(Post, id=2), title="t")
    rec.insert(Post, title="new")

    assert [b.kind for b in rec.plan()] == ["insert", "update", "delete"]


# --- optimistic locking ----------------------------------------------------------------------------


def test_updates_of_a_versioned_row_check_the_version_storage_holds() -> None:
    rec = Recorder()
    doc = rec.stored(Doc, id=1, body="a", version=4)
    rec.update(doc, body="b")
    rec.update(doc, body="c")

    (batch,) = rec.plan()

    assert isinstance(batch, UpdateBatch) and batch.check_version
    assert dict(zip(batch.columns, batch.rows[0])) == {"version": 6, "body": "c"}
    assert batch.rows[0][len(batch.columns) :] == (1, 4)  # key, then the expected version
    assert "checking version" in rec.plan().explain()


def test_deleting_an_updated_versioned_row_checks_the_stored_version() -> None:
    rec = Recorder()
    doc = rec.stored(Doc, id=1, version=2)
    rec.update(doc, body="changed")
    rec.delete(doc)

    (batch,) = rec.plan()

    assert isinstance(batch, DeleteBatch)
    assert batch.keys == [1] and batch.expected_versions == [2]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_new_versioned_row_is_inserted_without_a_version_check() -> None:
    rec = Recorder()
    doc = rec.insert(Doc, body="a")
    rec.update(doc, body="b")

    (batch,) = rec.plan()

    assert isinstance(batch, InsertBatch)
    assert dict(zip(batch.columns, batch.rows[0]))["version"] == 1


# --- bulk events, upserts and soft deletes -------------------------------------------------------------


def test_bulk_events_keep_their_place_in_the_journal() -> None:
    rec = Recorder()
    rec.insert(User, id=1, email="a@x", name="before")
    rec.bulk_update(User, Compare("name", "eq", "before"), {"name": "bulk"})
    user = rec.rows[0]
    rec.update(user, name="after")
    rec.bulk_delete(Post, None)
    rec.insert(Post, author_id=1)

    plan = rec.plan()

    assert kinds(plan) == [
        ("insert", "planner_users"),
        ("bulk_update", "planner_users"),
        ("update", "planner_users"),
        ("bulk_delete", "planner_posts"),
        ("insert", "planner_posts"),
    ]
    assert [b.seqs for b in plan] == [[1], [2], [3], [4], [5]]
    text = plan.explain()
    assert "UPDATE planner_users SET name WHERE" in text
    assert "DELETE planner_posts WHERE (all rows)" in text
    database, expected = apply_and_replay(rec)
    assert database.rows["planner_users"][1]["name"] == "after"
    assert_same_rows(database.rows, expected)


def _upsert(seq: int, ref: int, **values: Any) -> Upserted:
    return Upserted(
        seq=seq,
        at=AT,
        table="planner_users",
        ref=ref,
        key=values.get("id"),
        values=values,
        conflict_target=("email",),
        update_fields=("name",),
    )


def test_upserts_keep_their_place_and_repeated_conflict_values_start_a_new_batch() -> None:
    rec = Recorder()
    rec.insert(User, id=1, email="a@x")
    rec.events.append(_upsert(2, 50, id=2, email="b@x", name="one"))
    rec.events.append(_upsert(3, 51, id=3, email="c@x", name="two"))
    rec.events.append(_upsert(4, 52, id=4, email="b@x", name="three"))
    rec.events.append(
        Inserted(seq=5, at=AT, table="planner_posts", ref=53, key=9, values={"id": 9, "author_id": 1, "title": ""})
    )

    plan = rec.plan()

    assert kinds(plan) == [
        ("insert", "planner_users"),
        ("upsert", "planner_users"),
        ("upsert", "planner_users"),
        ("insert", "planner_posts"),
    ]
    first, second = plan.batches[1], plan.batches[2]
    assert isinstance(first, UpsertBatch) and isinstance(second, UpsertBatch)
    assert first.seqs == [2, 3] and second.seqs == [4]
    assert "ON CONFLICT (email) update name: 2 rows" in plan.explain()


def test_upserts_of_one_batch_write_a_row_after_the_row_of_its_own_table_it_points_at() -> None:
    events = [
        _upsert_category(1, 11, id=1, parent_id=3, code="a"),
        _upsert_category(2, 12, id=2, code="b"),
        _upsert_category(3, 13, id=3, parent_id=4, code="c"),
        _upsert_category(4, 14, id=4, code="d"),
    ]

    (batch,) = plan_flush(events, TABLES)

    assert isinstance(batch, UpsertBatch)
    assert [row[0] for row in batch.rows] == [2, 4, 3, 1]  # each after its parent, else as given
    assert batch.refs == [12, 14, 13, 11] and batch.seqs == [2, 4, 3, 1]


def _upsert_category(seq: int, ref: int, **values: Any) -> Upserted:
    row = {"id": None, "parent_id": None, "code": None, **values}
    return Upserted(
        seq=seq,
        at=AT,
        table="planner_categories",
        ref=ref,
        key=values.get("id"),
        values=row,
        conflict_target=("id",),
        update_fields=("parent_id", "code"),
    )


def test_soft_delete_is_an_update_of_the_soft_delete_column() -> None:
    rec = Recorder()
    rec.events.append(
        SoftDeleted(seq=1, at=AT, table="planner_posts", ref=1, key=3, old={"title": "a"}, new={"title": "deleted"})
    )

    (batch,) = rec.plan()

    assert isinstance(batch, UpdateBatch)
    assert batch.rows == [("deleted", 3)]


# --- explain -------------------------------------------------------------------------------------------


def test_explain_lists_the_batches_and_where_pending_keys_come_from() -> None:
    rec = Recorder()
    alice = rec.insert(User, email="alice@example.com", name="Alice")
    rec.insert(Post, title="Hello", links={"author_id": alice})
    rec.insert(Post, title="Again", links={"author_id": alice})
    rec.delete(rec.stored(Doc, id=4, version=3))

    text = rec.plan().explain()

    assert text.splitlines() == [
        "FlushPlan: 3 batch(es), 4 row(s)",
        "  1. INSERT planner_users (email, name): 1 row, returning generated id",
        "  2. INSERT planner_posts (author_id, title): 2 rows, returning generated id, author_id from batch 1",
        "  3. DELETE planner_docs BY id: 1 row, checking version",
    ]
    assert str(rec.plan()) == text


# --- properties: random session histories ---------------------------------------------------------------

EMAILS = ("a@x", "b@x", "c@x", "d@x")
CODES = ("r", "s", "t")
WORDS = ("x", "y", "z")
GIVEN_KEYS = (1, 2, 3, 4, 5)

UPDATABLE: dict[type[Model], tuple[str, ...]] = {
    User: ("name", "email"),
    Post: ("title", "author_id"),
    Category: ("code", "parent_id"),
    Doc: ("body", "owner_id"),
    Seat: ("owner_id", "number", "label"),
}
PROPERTY_MODELS = tuple(UPDATABLE)
NUMBERS = (1, 2)
LABELS = (None, "x", "y")


class History:
    """Draws one session's worth of changes, valid at every step the way a
    session's objects are: keys and unique values are free when taken, and a
    foreign key only points at a row that exists (stored or added)."""

    def __init__(self, draw: st.DrawFn):
        self.draw = draw
        self.rec = Recorder()

    def live(self, model: type[Model]) -> list[Row]:
        return self.rec.live(table_info(model))

    def free(self, model: type[Model], column: str, pool: tuple[Any, ...]) -> list[Any]:
        taken = {row.values[column] for row in self.live(model)}
        return [value for value in pool if value not in taken]

    def parent(self, model: type[Model]) -> Row | None:
        return self.draw(st.sampled_from([None, *self.live(model)]))

    def seat_fits(self, seat: Row | None, owner: Any, number: int, label: str | None) -> bool:
        """Whether a seat (``seat`` itself left out) may hold these values:
        ``owner`` is a key, a ``("ref", n)`` of a new user, or ``None``."""
        for other in self.live(Seat):
            if other is seat:
                continue
            held = ("ref", other.links["owner_id"]) if "owner_id" in other.links else other.values["owner_id"]
            if owner is not None and held == owner and other.values["number"] == number:
                return False
            if label is not None and other.values["number"] == number and other.values["label"] == label:
                return False
        return True

    def seat_values(self, seat: Row | None, *, new_owner: bool = True) -> tuple[Row | None, int, str | None] | None:
        """A drawn owner (``seat``'s own unless ``new_owner``), number and
        label a seat may hold, or ``None``."""
        owner = self.parent(User) if new_owner or seat is None else None
        number = self.draw(st.sampled_from(NUMBERS))
        label = self.draw(st.sampled_from(LABELS))
        if not new_owner and seat is not None:
            linked = seat.links.get("owner_id")
            held = ("ref", linked) if linked is not None else seat.values["owner_id"]
        else:
            held = None if owner is None else (owner.key if owner.key is not None else ("ref", owner.ref))
        return (owner, number, label) if self.seat_fits(seat, held, number, label) else None

    def stored_rows(self) -> None:
        draw = self.draw
        for key in draw(st.lists(st.sampled_from(GIVEN_KEYS), unique=True, max_size=3)):
            self.rec.stored(User, id=key, email=self.free(User, "email", EMAILS)[0], name=draw(st.sampled_from(WORDS)))
        for key in draw(st.lists(st.sampled_from(GIVEN_KEYS), unique=True, max_size=3)):
            author = self.parent(User)
            self.rec.stored(Post, id=key, author_id=author and author.key, title=draw(st.sampled_from(WORDS)))
        for key in draw(st.lists(st.sampled_from(GIVEN_KEYS), unique=True, max_size=4)):
            parent = self.parent(Category)
            code = draw(st.sampled_from([None, *self.free(Category, "code", CODES)]))
            self.rec.stored(Category, id=key, parent_id=parent and parent.key, code=code)
        for key in draw(st.lists(st.sampled_from(GIVEN_KEYS), unique=True, max_size=2)):
            owner = self.parent(User)
            self.rec.stored(Doc, id=key, owner_id=owner and owner.key, version=draw(st.integers(1, 3)))
        for key in draw(st.lists(st.sampled_from(GIVEN_KEYS), unique=True, max_size=3)):
            if (drawn := self.seat_values(None)) is not None:
                owner, number, label = drawn
                self.rec.stored(Seat, id=key, owner_id=owner and owner.key, number=number, label=label)

    def step(self) -> None:
        action = self.draw(st.sampled_from(["insert", "insert", "update", "update", "delete", "bulk"]))
        getattr(self, action)()

    def insert(self) -> None:
        draw = self.draw
        model = draw(st.sampled_from(PROPERTY_MODELS))
        values: dict[str, Any] = {}
        links: dict[str, Row] = {}
        free_keys = self.free(model, "id", GIVEN_KEYS)
        values["id"] = draw(st.sampled_from([None, *free_keys]))
        if model is User:
            emails = self.free(User, "email", EMAILS)
            if not emails:
                return
            values.update(email=draw(st.sampled_from(emails)), name=draw(st.sampled_from(WORDS)))
        elif model is Post:
            values["title"] = draw(st.sampled_from(WORDS))
            if (author := self.parent(User)) is not None:
                links["author_id"] = author
        elif model is Category:
            values["code"] = draw(st.sampled_from([None, *self.free(Category, "code", CODES)]))
            if (parent := self.parent(Category)) is not None:
                links["parent_id"] = parent
        elif model is Seat:
            if (drawn := self.seat_values(None)) is None:
                return
            owner, values["number"], values["label"] = drawn
            if owner is not None:
                links["owner_id"] = owner
        else:
            values["body"] = draw(st.sampled_from(WORDS))
            if (owner := self.parent(User)) is not None:
                links["owner_id"] = owner
        row = self.rec.insert(model, links=links, **values)
        if model is Category and draw(st.integers(0, 5)) == 0:
            self.rec.update(row, links={"parent_id": row})  # a row that is its own parent

    def update(self) -> None:
        draw = self.draw
        rows = [row for model in PROPERTY_MODELS for row in self.live(model)]
        if not rows:
            return
        row = draw(st.sampled_from(rows))
        model = row.table.model
        column = draw(st.sampled_from(UPDATABLE[model]))
        fk = next((fk for fk in row.table.foreign_keys if fk.column == column), None)
        if model is Seat:
            drawn = self.seat_values(row, new_owner=column == "owner_id")
            if drawn is None:
                return
            owner, number, label = drawn
            changed: dict[str, Any] = {"number": number, "label": label}
            if column == "owner_id" and owner is not None:
                self.rec.update(row, links={"owner_id": owner}, **changed)
            else:
                self.rec.update(row, **(changed if column != "owner_id" else {**changed, "owner_id": None}))
            return
        if fk is not None:
            parent = draw(st.sampled_from([None, *self.rec.live(TABLES[fk.target_table])]))
            if parent is None:
                self.rec.update(row, **{column: None})
            else:
                self.rec.update(row, links={column: parent})
        elif column == "email":
            emails = self.free(User, "email", EMAILS)
            if emails:
                self.rec.update(row, email=draw(st.sampled_from(emails)))
        elif column == "code":
            self.rec.update(row, code=draw(st.sampled_from([None, *self.free(Category, "code", CODES)])))
        else:
            self.rec.update(row, **{column: draw(st.sampled_from(WORDS))})

    def referrers(self, parent: Row) -> list[tuple[Row, str]]:
        found = []
        for row in self.rec.live():
            for fk in row.table.foreign_keys:
                if fk.target_table != parent.table.name or row is parent:
                    continue
                if row.links.get(fk.column) == parent.ref or (
                    parent.key is not None and fk.column not in row.links and row.values[fk.column] == parent.key
                ):
                    found.append((row, fk.column))
        return found

    def delete(self) -> None:
        rows = self.rec.live()
        if rows:
            self.remove(self.draw(st.sampled_from(rows)), set())

    def remove(self, row: Row, doomed: set[int]) -> None:
        """Delete ``row``; its children are deleted too or let go of it, before
        or after it in the journal (a session records cascades at flush)."""
        doomed.add(row.ref)
        children_first = self.draw(st.booleans())
        if not children_first:
            self.rec.delete(row)
        for child, column in self.referrers(row):
            if child.ref in doomed or not child.alive:
                continue
            if self.draw(st.booleans()):
                self.remove(child, doomed)
            else:
                self.rec.update(child, **{column: None})
        if children_first:
            self.rec.delete(row)

    def bulk(self) -> None:
        draw = self.draw
        where = draw(st.sampled_from([None, *(Compare("name", "eq", w) for w in WORDS)]))
        if draw(st.booleans()):
            self.rec.bulk_update(User, where, {"name": draw(st.sampled_from(WORDS))})
        else:
            title = None if where is None else Compare("title", "eq", where.value)
            self.rec.bulk_delete(Post, title)


@st.composite
def histories(draw: st.DrawFn) -> Recorder:
    history = History(draw)
    history.stored_rows()
    for _ in range(draw(st.integers(0, 25))):
        history.step()
    return history.rec


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(histories())
def test_every_plan_keeps_every_constraint_when_applied_batch_by_batch(rec: Recorder) -> None:
    database = FakeDatabase(TABLES, rec.base)
    try:
        plan = rec.plan()
    except CycleError as exc:
        # rows that trade unique values need an intermediate value: refused, with that advice
        assert "swap unique values" in str(exc)
        assert set(exc.tables) <= {"planner_users", "planner_categories", "planner_seats"}
        return
    database.apply_plan(plan)


@PROPERTY_SETTINGS
@given(histories())
def test_applying_the_plan_gives_the_rows_replay_gives(rec: Recorder) -> None:
    try:
        database, expected = apply_and_replay(rec)
    except CycleError as exc:
        assert "swap unique values" in str(exc)
        return
    assert_same_rows(database.rows, expected)


def test_a_child_let_go_of_a_key_that_is_deleted_and_inserted_again_and_points_back_at_it() -> None:
    rec = Recorder()
    old = rec.stored(User, id=1, email="a@x")
    post = rec.stored(Post, id=10, author_id=1)
    rec.update(post, author_id=None)
    rec.delete(old)
    new = rec.insert(User, id=1, email="b@x")
    rec.update(post, links={"author_id": new})

    database, expected = apply_and_replay(rec)

    assert_same_rows(database.rows, expected)


def test_a_row_that_frees_a_unique_value_and_points_at_the_new_row_taking_it_is_updated_in_two_steps() -> None:
    # the new category needs "r" freed first, and the old one needs the new
    # one's key: the old one's update is split around the insert
    rec = Recorder()
    old = rec.stored(Category, id=1, code="r")
    rec.update(old, code=None)
    new = rec.insert(Category, code="r")
    rec.update(new, links={"parent_id": new})
    rec.update(old, links={"parent_id": new})

    plan = rec.plan()
    database, expected = apply_and_replay(rec)

    assert [(batch.kind, batch.table.name, batch.columns) for batch in plan] == [
        ("update", "planner_categories", ("code",)),
        ("insert", "planner_categories", ("parent_id", "code")),
        ("update", "planner_categories", ("parent_id",)),
    ]
    assert_same_rows(database.rows, expected)


def test_a_split_update_still_lets_go_of_its_old_parent_before_that_parent_is_deleted() -> None:
    # the new region takes the row's code and the old parent's name, and the
    # row cannot point at nothing meanwhile: no order exists, and splitting the
    # row's update must not hide that by deleting the parent it still points at
    rec = Recorder()
    old_parent = rec.stored(Region, id=1, parent_id=1, code="p", name="old")
    row = rec.stored(Region, id=2, parent_id=1, code="r", name="row")
    rec.update(row, code=None)
    new_parent = rec.insert(Region, parent_id=2, code="r", name="old")
    rec.update(row, links={"parent_id": new_parent})
    rec.delete(old_parent)

    with pytest.raises(CycleError):
        rec.plan()


def test_a_link_to_a_new_parent_cleared_after_a_bulk_event_is_written_before_the_parent_is_deleted() -> None:
    rec = Recorder()
    author = rec.insert(User, email="a@x")
    post = rec.insert(Post, title="t", links={"author_id": author})
    rec.bulk_update(User, None, {"name": "everyone"})
    rec.update(post, author_id=None)
    rec.delete(author)

    database, expected = apply_and_replay(rec)

    assert_same_rows(database.rows, expected)


def test_a_child_lets_go_of_a_parent_added_before_a_bulk_event_and_deleted_after_it_then_takes_its_value() -> None:
    # after the bulk event the parent's key is known only by its ref: the
    # child's link is cleared before the delete, its code taken after
    rec = Recorder()
    parent = rec.insert(Category, code="r")
    child = rec.insert(Category, links={"parent_id": parent})
    rec.bulk_delete(Post, None)
    rec.delete(parent)
    rec.update(child, parent_id=None)
    rec.update(child, code="r")

    database, expected = apply_and_replay(rec)

    assert_same_rows(database.rows, expected)


def test_a_child_that_lets_go_of_a_deleted_parent_and_takes_its_unique_value_is_updated_in_two_steps() -> None:
    rec = Recorder()
    parent = rec.stored(Category, id=1, code="s")
    child = rec.stored(Category, id=2, parent_id=1)
    rec.delete(parent)
    rec.update(child, parent_id=None)
    rec.update(child, code="s")

    plan = rec.plan()

    assert kinds(plan) == [
        ("update", "planner_categories"),
        ("delete", "planner_categories"),
        ("update", "planner_categories"),
    ]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_users_that_trade_unique_values_are_refused_with_advice() -> None:
    rec = Recorder()
    first = rec.stored(User, id=1, email="a@x")
    second = rec.stored(User, id=2, email="b@x")
    rec.update(first, email="c@x")
    rec.update(second, email="a@x")
    rec.update(first, email="b@x")

    with pytest.raises(CycleError, match="swap unique values") as caught:
        rec.plan()

    assert set(caught.value.rows) == {("planner_users", 1), ("planner_users", 2)}


def test_values_of_a_constraint_over_several_columns_given_up_by_a_delete_are_taken_after_it() -> None:
    rec = Recorder()
    owner = rec.stored(User, id=1, email="a@x")
    rec.delete(rec.stored(Seat, id=1, owner_id=1, number=1))
    rec.insert(Seat, links={"owner_id": owner}, number=1)

    assert kinds(rec.plan()) == [("delete", "planner_seats"), ("insert", "planner_seats")]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_a_row_changing_one_column_of_a_constraint_takes_values_another_row_gives_up_after_it() -> None:
    rec = Recorder()
    rec.stored(User, id=1, email="a@x")
    rec.stored(User, id=2, email="b@x")
    first = rec.stored(Seat, id=1, owner_id=1, number=1)
    second = rec.stored(Seat, id=2, owner_id=2, number=2)
    rec.update(first, number=3)  # (1, 1) -> (1, 3): gives up (1, 1)
    rec.update(second, owner_id=1, number=1)  # (2, 2) -> (1, 1)

    plan = rec.plan()

    assert [batch.rows for batch in plan] == [[(3, 1)], [(1, 1, 2)]]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_rows_trading_one_column_of_a_constraint_with_different_partners_are_no_cycle() -> None:
    rec = Recorder()
    rec.stored(User, id=1, email="a@x")
    rec.stored(User, id=2, email="b@x")
    first = rec.stored(Seat, id=1, owner_id=1, number=1)
    second = rec.stored(Seat, id=2, owner_id=2, number=2)
    rec.update(first, number=2)  # (1, 1) -> (1, 2)
    rec.update(second, number=1)  # (2, 2) -> (2, 1): no row ever holds another's values

    database, expected = apply_and_replay(rec)

    assert_same_rows(database.rows, expected)
    assert {key: row["number"] for key, row in database.rows["planner_seats"].items()} == {1: 2, 2: 1}


def test_rows_that_trade_values_of_a_constraint_over_several_columns_are_refused() -> None:
    rec = Recorder()
    rec.stored(User, id=1, email="a@x")
    first = rec.stored(Seat, id=1, owner_id=1, number=1)
    second = rec.stored(Seat, id=2, owner_id=1, number=2)
    rec.update(first, number=2)
    rec.update(second, number=1)

    with pytest.raises(CycleError, match="swap unique values") as caught:
        rec.plan()

    assert set(caught.value.rows) == {("planner_seats", 1), ("planner_seats", 2)}


def test_a_journal_recorded_without_the_unchanged_values_is_planned_without_their_order() -> None:
    rec = Recorder()
    rec.stored(User, id=1, email="a@x")
    seat = rec.stored(Seat, id=1, owner_id=1, number=1)
    rec.update(seat, number=2)
    events = [msgspec.structs.replace(e, unchanged=None) if isinstance(e, Updated) else e for e in rec.events]

    assert [batch.rows for batch in plan_flush(events, TABLES)] == [[(2, 1)]]


# --- the shortcut for flushes of independent rows ---------------------------------------------


def _one_event_per_row(events: Iterable[AnyEvent], keep_last: bool) -> list[AnyEvent]:
    """Row events only, the first (or last) of each row: the flushes the shortcut is for."""
    chosen: dict[int, AnyEvent] = {}
    for event in events:
        if isinstance(event, (Upserted, BulkUpdated, BulkDeleted)):
            continue
        if keep_last or event.ref not in chosen:
            chosen[event.ref] = event
    return sorted(chosen.values(), key=lambda event: event.seq)


def _general_plan(events: list[AnyEvent]) -> list[Batch]:
    return _plan_rows(events, TABLES, {})


@PROPERTY_SETTINGS
@given(histories(), st.booleans())
def test_wherever_the_shortcut_applies_it_plans_what_the_general_planner_plans(rec: Recorder, keep_last: bool) -> None:
    events = _one_event_per_row(rec.events, keep_last)
    shortcut = plan_shortcut(events, TABLES)
    try:
        general = _general_plan(events)
    except CycleError:
        assert shortcut is None
        return
    if shortcut is not None:
        assert shortcut == general
        assert list(plan_flush(events, TABLES)) == general


def test_the_shortcut_plans_new_parents_with_new_children_updates_and_deletes_of_stored_rows() -> None:
    rec = Recorder()
    users = [rec.insert(User, email=f"{n}@x") for n in range(3)]
    for n, user in enumerate(users):
        rec.insert(Post, title=f"post {n}", links={"author_id": user})
    stored = [rec.stored(User, id=n, email=f"s{n}@x") for n in (1, 2)]
    rec.update(stored[0], name="renamed")
    old_posts = [rec.stored(Post, id=n, author_id=2) for n in (7, 8)]
    for post in old_posts:
        rec.delete(post)
    rec.delete(stored[1])
    docs = [rec.stored(Doc, id=n, version=1) for n in (1, 2)]
    rec.update(docs[0], body="checked")
    rec.delete(docs[1])

    shortcut = plan_shortcut(rec.events, TABLES)

    assert shortcut is not None
    assert shortcut == _general_plan(rec.events)
    assert [(batch.kind, batch.table.name) for batch in shortcut] == [
        ("insert", "planner_users"),
        ("insert", "planner_posts"),
        ("update", "planner_users"),
        ("update", "planner_docs"),
        ("delete", "planner_posts"),
        ("delete", "planner_docs"),
        ("delete", "planner_users"),
    ]
    posts = shortcut[1]
    assert isinstance(posts, InsertBatch)
    assert [row[0] for row in posts.rows] == [PendingKey(user.ref) for user in users]
    database, expected = apply_and_replay(rec)
    assert_same_rows(database.rows, expected)


def test_updates_changing_the_same_columns_are_one_batch_with_their_rows_in_journal_order() -> None:
    rec = Recorder()
    stored = [rec.stored(User, id=n, email=f"{n}@x", name=f"user {n}") for n in (3, 1, 2)]
    for n, user in enumerate(stored):
        rec.update(user, name=f"renamed {n}")

    shortcut = plan_shortcut(rec.events, TABLES)

    assert shortcut is not None
    assert shortcut == _general_plan(rec.events)
    [batch] = shortcut
    assert isinstance(batch, UpdateBatch)
    assert batch.columns == ("name",)
    assert batch.rows == [("renamed 0", 3), ("renamed 1", 1), ("renamed 2", 2)]


def test_updates_of_different_columns_or_to_an_unchanged_value_are_grouped_as_the_general_planner_does() -> None:
    rec = Recorder()
    first, second, third = (rec.stored(User, id=n, email=f"{n}@x", name=f"user {n}") for n in (1, 2, 3))
    rec.update(first, name="renamed")
    rec.update(second, email="moved@x")
    rec.update(third, name="renamed too")

    shortcut = plan_shortcut(rec.events, TABLES)

    assert shortcut is not None
    assert shortcut == _general_plan(rec.events)
    assert [(batch.columns, len(batch.rows)) for batch in shortcut] == [(("name",), 2), (("email",), 1)]

    unchanged = Recorder()
    rows = [unchanged.stored(User, id=n, email=f"{n}@x", name="same") for n in (1, 2)]
    unchanged.update(rows[0], name="other")
    unchanged.update(rows[1], name="same")  # ends where it started: the general planner drops it

    assert plan_shortcut(unchanged.events, TABLES) is None
    assert [len(batch.rows) for batch in _general_plan(unchanged.events)] == [1]


def test_the_shortcut_writes_a_pending_key_only_into_rows_that_wait_for_one() -> None:
    rec = Recorder()
    new_user = rec.insert(User, email="new@x")
    stored_user = rec.stored(User, id=5, email="old@x")
    rec.insert(Post, title="waits", links={"author_id": new_user})
    rec.insert(Post, title="known", links={"author_id": stored_user})
    rec.insert(Post, title="waits too", links={"author_id": new_user})

    shortcut = plan_shortcut(rec.events, TABLES)

    assert shortcut is not None
    assert shortcut == _general_plan(rec.events)
    posts = shortcut[1]
    assert isinstance(posts, InsertBatch)
    author = posts.columns.index("author_id")
    assert [row[author] for row in posts.rows] == [PendingKey(new_user.ref), 5, PendingKey(new_user.ref)]


def test_the_shortcut_leaves_dependent_rows_of_one_table_to_the_general_planner() -> None:
    rec = Recorder()
    root = rec.insert(Category, code="root")
    rec.insert(Category, code="leaf", links={"parent_id": root})
    assert plan_shortcut(rec.events, TABLES) is None

    rec = Recorder()
    rec.delete(rec.stored(User, id=1, email="a@x"))
    rec.insert(User, email="a@x")  # takes the unique value the delete gives up
    assert plan_shortcut(rec.events, TABLES) is None

    rec = Recorder()
    row = rec.insert(User, email="a@x")
    rec.update(row, name="twice")  # two events of one row: coalesced by the general planner
    assert plan_shortcut(rec.events, TABLES) is None
