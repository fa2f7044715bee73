"""The audit trail and before-commit hooks, on every adapter: entries are
written in the transaction they describe, say who changed which row from what
to what, and form a chain whose every edit, removal or insertion is found."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uow
from uow import ForeignKey, Model, PrimaryKey, SoftDelete, Unique, relation
from uow.arithmetic import ColumnMath
from uow.audit import (
    GENESIS,
    REDACTED,
    AuditEntry,
    AuditRecord,
    AuditTrail,
    ChainHead,
    JsonLinesSink,
    LoggingSink,
)
from uow.conditions import AnyCondition, matches
from uow.errors import (
    AuditChainError,
    CommitHookError,
    ConfigurationError,
    IntegrityError,
    SerializationFailure,
    SessionStateError,
    StorageError,
    ValidationError,
)
from uow.model import table_info
from uow.testing.models import Post as KitPost
from uow.testing.models import User as KitUser

pytestmark = pytest.mark.anyio


class Owner(Model, table="audit_owners"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    email: Annotated[str, Unique()]
    joined: dt.datetime | None = None


class Item(Model, SoftDelete, table="audit_items"):
    id: Annotated[int | None, PrimaryKey()] = None
    owner_id: Annotated[int | None, ForeignKey(Owner)] = None
    label: str
    price: Decimal = Decimal("0")
    owner: Owner | None = relation("owner_id")


class Setting(Model, table="audit_settings"):
    name: Annotated[str, PrimaryKey()]
    value: str


MODELS = (Owner, Item, Setting, AuditEntry)


async def _commit_owners(session: uow.AsyncSession, numbers: range) -> None:
    """Owners o<n> with email <n>@x, each added and committed on its own."""
    for n in numbers:
        session.add(Owner(name=f"o{n}", email=f"{n}@x"))
        await session.commit()


async def _trail(engine: uow.Engine, actor: str | None = "alice") -> AuditTrail:
    trail = AuditTrail(actor=lambda: actor).install(engine)
    await engine.create_all(*MODELS)
    return trail


async def test_entries_say_who_changed_which_row_from_what_to_what(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    joined = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    async with uow.AsyncSession(engine) as session:
        item = Item(label="lamp", price=Decimal("9.50"), owner=Owner(name="Ann", email="ann@x", joined=joined))
        session.add(item)
        await session.commit()
        assert item.id is not None and item.owner is not None
        owner_id = item.owner.id
        item.price = Decimal("12.00")
        await session.commit()
        await session.soft_delete(item)
        await session.restore(item)
        await session.upsert(Setting(name="theme", value="dark"))
        await session.commit()
        await session.bulk_update(Owner, {"name": "Anne"}, name="Ann")
        session.delete(item)
        await session.commit()

        records = await trail.records(session)
        assert [(r.table, r.action, r.key) for r in records] == [
            ("audit_owners", "insert", owner_id),
            ("audit_items", "insert", item.id),
            ("audit_items", "update", item.id),
            ("audit_items", "soft_delete", item.id),
            ("audit_items", "restore", item.id),
            ("audit_settings", "upsert", "theme"),
            ("audit_owners", "bulk_update", None),
            ("audit_items", "delete", item.id),
        ]
        assert {r.actor for r in records} == {"alice"}
        inserted_owner, inserted_item, update = records[0], records[1], records[2]
        # generated keys, the parent's included, are the ones the database gave; values are typed again
        assert inserted_owner.new == {"id": owner_id, "name": "Ann", "email": "ann@x", "joined": joined}
        assert inserted_item.new["owner_id"] == owner_id and inserted_item.new["price"] == Decimal("9.50")
        assert inserted_item.old == {}
        assert (update.old, update.new) == ({"price": Decimal("9.50")}, {"price": Decimal("12.00")})
        assert records[6].new == {"name": "Anne"} and records[6].where is not None
        assert records[7].old["label"] == "lamp" and records[7].new == {}
        # one transaction id per commit, shared by its entries
        assert inserted_owner.tx == inserted_item.tx != update.tx
        assert len({r.tx for r in records}) == 4
        assert all(isinstance(r.at, dt.datetime) and r.at.tzinfo is not None for r in records)


async def test_records_narrow_to_a_table_a_row_an_actor_or_a_transaction(engine: uow.Engine) -> None:
    who = ["alice"]
    trail = AuditTrail(actor=lambda: who[0]).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        first, second = Owner(name="a", email="a@x"), Owner(name="b", email="b@x")
        session.add_all([first, second])
        await session.commit()
        who[0] = "bob"
        first.name = "a2"
        await session.upsert(Setting(name="k", value="v"))
        await session.commit()

        assert [r.action for r in await trail.records(session, table=Owner, key=first.id)] == ["insert", "update"]
        assert [r.key for r in await trail.records(session, table=Owner, key=second.id)] == [second.id]
        assert [r.key for r in await trail.records(session, table="audit_settings", key="k")] == ["k"]
        bobs = await trail.records(session, actor="bob")
        assert {r.actor for r in bobs} == {"bob"} and len(bobs) == 2
        assert await trail.records(session, tx=bobs[0].tx) == bobs


async def test_entries_exist_exactly_when_their_changes_are_committed(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="gone", email="gone@x"))
        await session.flush()
        await session.rollback()  # flushed, never committed
        kept = Owner(name="kept", email="kept@x")
        session.add(kept)
        async with session.begin_nested() as savepoint:
            session.add(Owner(name="undone", email="undone@x"))
            await savepoint.rollback()
        await session.commit()
        session.add(Owner(name="twin", email="kept@x"))  # refused by the database at commit
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()

        records = await trail.records(session)
        assert [(r.action, r.new["name"]) for r in records] == [("insert", "kept")]
        assert (await trail.verify(session)).entries == 1


async def test_a_failing_before_commit_hook_leaves_nothing_and_keeps_the_work(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    failing = [True]

    async def outbox(session: uow.AsyncSession, events: list[Any]) -> None:
        await session.upsert(Setting(name="outbox", value=str(len(events))))
        if failing[0]:
            raise RuntimeError("broker unreachable")

    engine.before_commit_hooks.append(outbox)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        with pytest.raises(RuntimeError, match="broker unreachable"):
            await session.commit()
        # the transaction is still open, with the owner flushed and neither hook's writes
        assert session.in_transaction() and owner.id is not None
        assert await session.query(AuditEntry).count() == 0
        assert await session.get(Setting, "outbox") is None
        failing[0] = False
        await session.commit()

    async with uow.AsyncSession(engine) as session:
        # the outbox saw the owner's insert and the entry the trail wrote before it
        assert (await session.get_one(Setting, "outbox")).value == "2"
        # the trail ran first, so the outbox's write is not among the events it saw
        assert [r.table for r in await trail.records(session)] == ["audit_owners"]


async def test_a_before_commit_hook_cannot_end_its_transaction(engine: uow.Engine) -> None:
    await engine.create_all(Owner)
    tried: list[str] = []

    async def meddling(session: uow.AsyncSession, events: list[Any]) -> None:
        for end in (session.commit, session.rollback, session.close):
            try:
                await end()
            except SessionStateError as exc:
                tried.append(str(exc))

    engine.before_commit_hooks.append(meddling)
    async with uow.AsyncSession(engine, auto_commit=True) as session:
        await session.insert(Owner(name="a", email="a@x"))
    assert len(tried) == 3 and all("before-commit hook" in t for t in tried)
    async with uow.AsyncSession(engine) as session:
        assert await session.query(Owner).count() == 1


async def test_another_task_cannot_use_the_session_while_its_hooks_run(engine: uow.Engine) -> None:
    await engine.create_all(Owner)
    hook_waiting, other_done = anyio.Event(), anyio.Event()
    refused: list[str] = []

    async def slow(session: uow.AsyncSession, events: list[Any]) -> None:
        hook_waiting.set()
        await other_done.wait()
        assert await session.get(Owner, 1) is not None  # the hook's own task is let in

    async def other(session: uow.AsyncSession) -> None:
        await hook_waiting.wait()
        for attempt in (session.flush, session.commit, lambda: session.get(Owner, 2)):
            try:
                await attempt()
            except SessionStateError as exc:
                refused.append(str(exc))
        other_done.set()

    engine.before_commit_hooks.append(slow)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        async with anyio.create_task_group() as group:
            group.start_soon(other, session)
            await session.commit()
    assert len(refused) == 3 and all("busy with commit, in another task" in r for r in refused)


async def test_hooks_written_through_an_auto_commit_session_commit_with_the_data(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine, auto_commit=True) as session:
        await session.insert(Owner(name="a", email="a@x"))
        await session.insert(Owner(name="b", email="b@x"))
        assert [r.new["name"] for r in await trail.records(session)] == ["a", "b"]
        assert (await trail.verify(session)).entries == 2


async def test_verify_finds_an_edited_payload(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(3))
        assert (await trail.verify(session)).entries == 3
        second = (await trail.records(session))[1]
        forged = (await session.get_one(AuditEntry, second.id)).payload.replace('"o1"', '"mallory"')
        await session.bulk_update(AuditEntry, {"payload": forged}, id=second.id)
        await session.commit()
        with pytest.raises(AuditChainError, match="hash") as caught:
            await trail.verify(session)
        assert caught.value.entry_id == second.id


async def test_verify_finds_an_edited_search_column(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="o", email="o@x"))
        await session.commit()
        await session.bulk_update(AuditEntry, {"actor": "bob"})
        await session.commit()
        with pytest.raises(AuditChainError, match="columns"):
            await trail.verify(session)


async def test_verify_finds_a_removed_entry_and_a_removed_tail(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(4))
        head = await trail.verify(session)
        assert head.entries == 4 and head.hash != GENESIS
        ids = [r.id for r in await trail.records(session)]

        await session.bulk_delete(AuditEntry, id=ids[-1])  # the tail: the chain alone still holds
        await session.commit()
        assert (await trail.verify(session)).entries == 3
        with pytest.raises(AuditChainError, match="cut short"):
            await trail.verify(session, head=head.hash)
        with pytest.raises(AuditChainError, match="cut short"):
            await trail.verify(session, head=head)  # what verify returned, as it is

        await session.bulk_delete(AuditEntry, id=ids[1])
        await session.commit()
        with pytest.raises(AuditChainError, match="does not follow") as caught:
            await trail.verify(session)
        assert caught.value.entry_id == ids[2]


async def test_an_engine_has_one_trail(engine: uow.Engine) -> None:
    trail = AuditTrail().install(engine)
    assert trail.install(engine) is trail and engine.before_commit_hooks == [trail]
    with pytest.raises(ConfigurationError, match="already has an AuditTrail"):
        AuditTrail().install(engine)
    assert engine.before_commit_hooks == [trail]


async def test_excluded_tables_are_not_audited(engine: uow.Engine) -> None:
    trail = AuditTrail(exclude=[Setting]).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        await session.upsert(Setting(name="k", value="v"))
        await session.commit()  # nothing audited: no entry, no head read
        session.add(Owner(name="o", email="o@x"))
        await session.commit()
        records = await trail.records(session)
        assert [(r.table, r.actor) for r in records] == [("audit_owners", None)]


async def test_concurrent_commits_keep_one_chain(engine: uow.Engine) -> None:
    """Transactions racing to extend the chain: a loser is retried by
    run_in_transaction, and the chain ends up whole, one entry per insert."""
    trail = await _trail(engine)
    tasks, rounds = 4, 3

    async def worker(n: int) -> None:
        for r in range(rounds):

            async def work(session: uow.AsyncSession, n: int = n, r: int = r) -> None:
                session.add(Owner(name=f"w{n}", email=f"w{n}-{r}@x"))
                await session.flush()
                await anyio.lowlevel.checkpoint()  # let the others in between the flush and the commit

            await engine.run_in_transaction(work, retries=50, backoff=0.001, max_backoff=0.02)

    async with anyio.create_task_group() as group:
        for n in range(tasks):
            group.start_soon(worker, n)
    async with uow.AsyncSession(engine) as session:
        assert (await trail.verify(session)).entries == tasks * rounds
        assert len(await trail.records(session, table=Owner)) == await session.query(Owner).count()


async def test_a_second_trail_on_one_chain_sees_the_first_ones_entries(engine: uow.Engine) -> None:
    """Entries written by another engine (another process) extend the same chain."""
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
    other = AuditTrail(actor=lambda: "bob")
    engine.before_commit_hooks.remove(trail)
    other.install(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="b", email="b@x"))
        await session.commit()
        assert [r.actor for r in await trail.records(session)] == ["alice", "bob"]
        assert (await other.verify(session)).entries == 2


async def test_a_fork_is_refused_as_a_serialization_failure(engine: uow.Engine) -> None:
    """An entry that names a previous hash already followed is refused, with
    the error that run_in_transaction retries."""
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
    first = GENESIS

    async def forge(session: uow.AsyncSession, events: list[Any]) -> None:
        # a writer that missed the first entry: it starts the chain again
        await session.bulk_insert(
            AuditEntry,
            [
                {
                    "tx": "x",
                    "at": dt.datetime.now(dt.UTC),
                    "row_table": "audit_owners",
                    "action": "insert",
                    "payload": "{}",
                    "prev_hash": first,
                    "entry_hash": "f" * 64,
                }
            ],
        )
        await session.flush()

    engine.before_commit_hooks.remove(trail)
    engine.before_commit_hooks.append(forge)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="b", email="b@x"))
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
    engine.before_commit_hooks.remove(forge)
    async with uow.AsyncSession(engine) as session:
        assert (await trail.verify(session)).entries == 1


@pytest.mark.parametrize("isolation", [None, "repeatable read", "serializable"])
async def test_a_transaction_older_than_the_chain_head_it_missed_is_retried(
    engine_url: str, adapter_name: str, isolation: Any
) -> None:
    """A transaction whose snapshot predates another's commit: it either sees
    the new head or fails with the error run_in_transaction retries, never forks."""
    # on SQLite the transaction that waits for the write lock gives up after 0.1 s, not 5 s
    options = {"busy_timeout": 100} if adapter_name == "sqlite" else {}
    async with uow.create_engine(engine_url, **options) as engine:
        try:
            await _older_than_the_head(engine, isolation)
        finally:
            if adapter_name == "postgresql":
                await engine.drop_all()


async def _older_than_the_head(engine: uow.Engine, isolation: Any) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as setup:
        setup.add(Owner(name="seed", email="seed@x"))
        await setup.commit()
    attempts = 0

    async def late(session: uow.AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.query(Owner).count()  # the transaction's snapshot starts here
        if attempts == 1:
            async with uow.AsyncSession(engine) as other:
                other.add(Owner(name="other", email="other@x"))
                await other.commit()
        session.add(Owner(name="late", email=f"late{attempts}@x"))

    await engine.run_in_transaction(late, retries=3, backoff=0.001, isolation=isolation)
    async with uow.AsyncSession(engine) as session:
        names = sorted(o.name for o in await session.query(Owner).all())
        # on SQLite at serializable the late transaction holds the write lock from its start,
        # so the other one's commit is what fails, inside the work, and is not run again
        assert names in (["late", "other", "seed"], ["late", "seed"])
        assert (await trail.verify(session)).entries == len(names)
        assert sorted(r.new["name"] for r in await trail.records(session)) == names


async def test_extending_from_a_head_another_entry_follows_is_a_serialization_failure(engine: uow.Engine) -> None:
    """What a transaction that read a stale head meets: the chain already goes
    on from it. Set up here by pointing the first entry at the head's hash."""
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(2))
        first, head = (r.id for r in await trail.records(session))
        await session.bulk_update(AuditEntry, {"entry_hash": "e" * 64}, id=head)
        await session.bulk_update(AuditEntry, {"prev_hash": "e" * 64}, id=first)
        await session.commit()

        owner = Owner(name="late", email="late@x")
        session.add(owner)
        with pytest.raises(SerializationFailure, match="audit chain"):
            await session.commit()
        assert session.in_transaction() and owner.id is not None  # the work is kept, to retry or roll back
        await session.rollback()
        assert await session.query(Owner).count() == 2


async def test_redacted_columns_never_reach_the_entries(engine: uow.Engine) -> None:
    trail = AuditTrail(redact={Owner: ["email", "joined"]}).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="secret@x", joined=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        session.add(owner)
        await session.commit()
        owner.email, owner.name = "other-secret@x", "b"
        await session.commit()
        await session.bulk_update(Owner, {"name": "c"}, email="other-secret@x")
        await session.commit()

        inserted, updated, bulk = await trail.records(session)
        assert inserted.new == {"id": owner.id, "name": "a", "email": REDACTED, "joined": REDACTED}
        assert (updated.old, updated.new) == ({"email": REDACTED, "name": "a"}, {"email": REDACTED, "name": "b"})
        assert bulk.where == REDACTED and bulk.new == {"name": "c"}
        stored = [e.payload for e in await session.query(AuditEntry).all()]
        assert not any("secret" in payload or "2026-01-01" in payload for payload in stored)
        assert (await trail.verify(session)).entries == 3


async def test_records_narrow_to_a_time_range(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="before", email="1@x"))
        await session.commit()
        middle = dt.datetime.now(dt.UTC)
        await anyio.sleep(0.01)
        session.add(Owner(name="after", email="2@x"))
        await session.commit()
        assert [r.new["name"] for r in await trail.records(session, since=middle)] == ["after"]
        assert [r.new["name"] for r in await trail.records(session, until=middle)] == ["before"]
        with pytest.raises(ValidationError, match="aware"):
            await trail.records(session, since=middle.replace(tzinfo=None))  # the same answer on every adapter


# --- the trail as an oracle ------------------------------------------------------------

_NAMES = st.sampled_from(["ann", "bob", "cy"])
_STEP = st.one_of(
    st.tuples(st.just("add"), _NAMES),
    st.tuples(st.just("rename"), st.integers(0, 5), _NAMES),
    st.tuples(st.just("delete"), st.integers(0, 5)),
    st.tuples(st.just("bulk_rename"), _NAMES, _NAMES),
    st.tuples(st.just("upsert"), _NAMES, _NAMES),
    st.tuples(st.sampled_from(["flush", "commit", "rollback", "savepoint_kept", "savepoint_undone"])),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_STEP, max_size=12))
async def test_the_trail_replayed_is_what_the_database_holds(engine: uow.Engine, steps: list[tuple[Any, ...]]) -> None:
    """After any sequence of changes, commits and rollbacks, the entries
    applied in order rebuild exactly the committed rows, each entry's old
    values are what the rows held before it, and the chain verifies. The
    tables and the chain carry over from one example to the next."""
    trail = next((h for h in engine.before_commit_hooks if isinstance(h, AuditTrail)), None)
    if trail is None:
        trail = AuditTrail().install(engine)
        await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        owners = await session.query(Owner).all()
        for step in steps:
            kind = step[0]
            live = [o for o in owners if o in session]
            if kind == "add":
                owner = Owner(name=step[1], email=f"{uuid.uuid4().hex}@x")
                session.add(owner)
                owners.append(owner)
            elif kind == "rename" and live:
                live[step[1] % len(live)].name = step[2]
            elif kind == "delete" and live:
                session.delete(live[step[1] % len(live)])
            elif kind == "bulk_rename":
                await session.bulk_update(Owner, {"name": step[2]}, name=step[1])
            elif kind == "upsert":
                await session.upsert(Setting(name=step[1], value=step[2]))
            elif kind == "flush":
                await session.flush()
            elif kind == "commit":
                await session.commit()
            elif kind == "rollback":
                await session.rollback()
            elif kind.startswith("savepoint"):
                savepoint = await session.begin_nested()
                session.add(Owner(name="inner", email=f"{uuid.uuid4().hex}@x"))
                if live:
                    live[0].name = "inner"
                await (savepoint.rollback() if kind == "savepoint_undone" else savepoint.commit())
        await session.commit()

    async with uow.AsyncSession(engine) as session:
        rebuilt: dict[str, dict[Any, dict[str, Any]]] = {"audit_owners": {}, "audit_settings": {}}
        for record in await trail.records(session):
            rows = rebuilt[record.table]
            if record.action in ("insert", "upsert"):
                assert record.action == "upsert" or record.key not in rows
                rows[record.key] = dict(record.new)
            elif record.action == "update":
                assert {c: rows[record.key][c] for c in record.old} == record.old
                rows[record.key].update(record.new)
            elif record.action == "delete":
                assert rows.pop(record.key) == record.old
            else:
                assert record.action == "bulk_update"
                where = msgspec.convert(record.where, AnyCondition)
                for row in rows.values():
                    if matches(where, row):
                        row.update(record.new)
        stored_owners = {
            o.id: table_info(Owner).row_dict(table_info(Owner).values_of(o)) for o in await session.query(Owner).all()
        }
        stored_settings = {s.name: {"name": s.name, "value": s.value} for s in await session.query(Setting).all()}
        assert rebuilt == {"audit_owners": stored_owners, "audit_settings": stored_settings}
        assert (await trail.verify(session)).entries == await session.query(AuditEntry).count()


# --- keys, upserts, values ---------------------------------------------------------------


async def test_an_upsert_entry_names_the_row_it_landed_on(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        await session.commit()
        # a key of its own, but a conflict on the unique email lands it on the stored row
        landed = await session.upsert(
            Owner(id=999, name="b", email="a@x"), conflict_target="email", update_fields="name"
        )
        await session.commit()
        assert landed is owner and owner.name == "b"
        upsert = (await trail.records(session, table=Owner, key=owner.id))[-1]
        assert upsert.action == "upsert" and upsert.key == owner.id and upsert.update_fields == ("name",)
        assert upsert.new["id"] == owner.id and upsert.new["name"] == "b"
        assert session.journal.key_of(session.journal[-2]) == owner.id  # the journal says the same
        assert await trail.records(session, table=Owner, key=999) == []


async def test_a_key_assigned_after_add_names_the_row_and_its_children(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        item = Item(label="lamp", owner=owner)
        session.add(item)
        owner.id = 500
        await session.commit()
        assert item.owner_id == 500 and not session.is_modified(item)
        inserted = await trail.records(session, table=Owner, key=500)
        assert inserted[0].action == "insert" and inserted[0].new["id"] == 500
        (item_insert,) = await trail.records(session, table=Item)
        assert item_insert.new["owner_id"] == 500


async def test_infinite_floats_keep_their_value(engine: uow.Engine) -> None:
    class Reading(Model, table="audit_readings"):
        id: Annotated[int | None, PrimaryKey()] = None
        value: float

    trail = await _trail(engine)
    await engine.create_all(Reading)
    async with uow.AsyncSession(engine) as session:
        reading = Reading(value=float("inf"))
        session.add(reading)
        await session.commit()
        reading.value = float("-inf")
        await session.commit()
        inserted, updated = await trail.records(session, table=Reading)
        assert inserted.new["value"] == float("inf")
        assert (updated.old, updated.new) == ({"value": float("inf")}, {"value": float("-inf")})


async def test_redaction_names_models_and_never_their_keys() -> None:
    with pytest.raises(ConfigurationError, match="primary key"):
        AuditTrail(redact={Setting: ["name"]})
    with pytest.raises(ConfigurationError, match="not a model"):
        AuditTrail(redact={"audit_setting": ["value"]})  # type: ignore[dict-item]  # a misspelt name would leak


# --- reading the chain back ---------------------------------------------------------------


def _forged(previous: str, payload: str, **columns: Any) -> AuditEntry:
    """An entry hashed as the docs say: SHA-256 of the previous hash, a newline and the payload."""
    entry_hash = hashlib.sha256(f"{previous}\n{payload}".encode()).hexdigest()
    fields: dict[str, Any] = {"tx": "t", "at": dt.datetime.now(dt.UTC), "row_table": "audit_owners", "action": "insert"}
    return AuditEntry(**{**fields, **columns}, payload=payload, prev_hash=previous, entry_hash=entry_hash)


async def test_verify_from_an_empty_chains_head_and_of_an_entry_that_is_not_a_record(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        empty = await trail.verify(session)
        assert empty == ChainHead(0, GENESIS)
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
        head = await trail.verify(session, head=empty.hash)  # the start of the chain is always in it
        assert head.entries == 1
        await session.bulk_insert(AuditEntry, [_forged(head.hash, '{"tx": "t"}')])  # hashed right, but no record
        await session.commit()
        with pytest.raises(AuditChainError, match="not an audit record") as caught:
            await trail.verify(session)
        assert caught.value.entry_id == head.entries + 1
        with pytest.raises(AuditChainError, match="not an audit record"):
            await trail.records(session)


async def test_records_keep_a_value_that_no_longer_fits_its_column(engine: uow.Engine) -> None:
    """An entry written before the model changed (here: text where the
    model now has a date) reads back as stored, not as an error."""
    trail = await _trail(engine)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    payload = msgspec.json.encode(
        {"tx": "t", "at": at, "actor": None, "table": "audit_owners", "key": 7, "action": "update",
         "old": {"joined": "last spring"}, "new": {"joined": None}, "where": None, "update_fields": None},
        order="sorted",
    ).decode()  # fmt: skip
    async with uow.AsyncSession(engine) as session:
        await session.bulk_insert(AuditEntry, [_forged(GENESIS, payload, at=at, row_key="7", action="update")])
        await session.commit()
        (record,) = await trail.records(session)
        assert record.old == {"joined": "last spring"} and record.key == 7
        assert (await trail.verify(session)).entries == 1


async def test_with_a_secret_only_its_holders_write_entries_that_verify(engine: uow.Engine) -> None:
    trail = AuditTrail(secret=b"kept in a vault").install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
        head = await trail.verify(session)
        assert head.entries == 1
        with pytest.raises(AuditChainError, match="hash"):
            await AuditTrail(secret=b"guessed").verify(session)
        with pytest.raises(AuditChainError, match="hash"):
            await AuditTrail().verify(session)
        forged = (await session.get_one(AuditEntry, (await trail.records(session))[0].id)).payload
        await session.bulk_insert(AuditEntry, [_forged(head.hash, forged.replace('"a"', '"z"'))])
        await session.commit()
        with pytest.raises(AuditChainError, match="hash") as caught:
            await trail.verify(session)  # appended without the secret: found
        assert caught.value.entry_id == 2


# --- transactions that end badly ----------------------------------------------------------


async def test_an_auto_commit_operation_whose_commit_is_refused_is_undone(engine: uow.Engine) -> None:
    await engine.create_all(Owner)
    refusing = [True]

    def hook(session: uow.AsyncSession, events: list[Any]) -> None:
        if refusing[0]:
            raise RuntimeError("refused")

    engine.before_commit_hooks.append(hook)
    async with uow.AsyncSession(engine, auto_commit=True) as session:
        owner = Owner(name="a", email="a@x")
        with pytest.raises(RuntimeError, match="refused"):
            await session.insert(owner)
        assert not session.in_transaction() and owner not in session and owner.id is None
        refusing[0] = False
        await session.insert(Owner(name="b", email="b@x"))  # commits itself only
    async with uow.AsyncSession(engine) as session:
        assert [o.name for o in await session.query(Owner).all()] == ["b"]


async def test_a_begin_block_whose_commit_is_refused_rolls_back(engine: uow.Engine) -> None:
    await engine.create_all(Owner)

    def hook(session: uow.AsyncSession, events: list[Any]) -> None:
        raise RuntimeError("refused")

    engine.before_commit_hooks.append(hook)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        with pytest.raises(RuntimeError, match="refused"):
            async with session.begin():
                session.add(owner)
        assert not session.in_transaction() and owner not in session
        engine.before_commit_hooks.clear()
        async with session.begin():  # no work is left over to refuse a new block
            session.add(Owner(name="b", email="b@x"))
    async with uow.AsyncSession(engine) as session:
        assert [o.name for o in await session.query(Owner).all()] == ["b"]


async def test_what_a_hook_ahead_of_the_trail_changes_is_audited(engine: uow.Engine) -> None:
    """Assignments a hook makes, and the deletes the session cascades from
    one, are recorded before the next hook sees the events."""
    await engine.create_all(KitUser, KitPost)
    async with uow.AsyncSession(engine) as session:
        doomed = KitUser(name="doomed", email="d@x")
        kept = KitUser(name="kept", email="k@x")
        post = KitPost(title="goes with its author", author=doomed)
        session.add_all([post, kept])
        await session.commit()
        post_id = post.id

        async def ahead(hook_session: uow.AsyncSession, events: list[Any]) -> None:
            kept.name = "renamed by the hook"
            hook_session.delete(doomed)  # its post is loaded: the session cascades the delete to it

        engine.before_commit_hooks.append(ahead)
        trail = AuditTrail().install(engine)  # runs after the hook
        await engine.create_all(AuditEntry)
        kept.email = "k2@x"
        await session.commit()
        records = await trail.records(session)
        assert sorted((r.table, r.action, r.key) for r in records) == [
            ("conformance_posts", "delete", post_id),  # the session's cascade
            ("conformance_users", "delete", doomed.id),
            ("conformance_users", "update", kept.id),  # the commit's own change
            ("conformance_users", "update", kept.id),  # the hook's assignment
        ]
        assert [r.new for r in records if r.action == "update"] == [{"email": "k2@x"}, {"name": "renamed by the hook"}]


async def test_a_secret_may_be_text_and_must_be_bytes_or_text(engine: uow.Engine) -> None:
    text = AuditTrail(secret="from the environment").install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
        assert (await AuditTrail(secret=b"from the environment").verify(session)).entries == 1
        assert (await text.verify(session)).entries == 1
    with pytest.raises(ConfigurationError, match="bytes or str"):
        AuditTrail(secret=1234)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="empty"):
        AuditTrail(secret="")


def test_redacting_a_column_the_table_lacks_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="emial"):
        AuditTrail(redact={Owner: ["emial"]})


async def test_records_take_a_key_as_its_column_type_when_the_table_is_given(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        await session.commit()
        assert [r.key for r in await trail.records(session, table=Owner, key=str(owner.id))] == [owner.id]


async def test_a_begin_block_in_an_auto_commit_session_commits_once_at_its_end(engine: uow.Engine) -> None:
    await engine.create_all(Owner)
    async with uow.AsyncSession(engine, auto_commit=True) as session:
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with session.begin():
                await session.insert(Owner(name="a", email="a@x"))
                raise RuntimeError("changed my mind")
        async with session.begin():
            await session.insert(Owner(name="b", email="b@x"))
            await session.insert(Owner(name="c", email="c@x"))
            assert session.in_transaction()
        assert not session.in_transaction()
    async with uow.AsyncSession(engine) as session:
        assert sorted(o.name for o in await session.query(Owner).all()) == ["b", "c"]


async def test_a_long_lived_session_keeps_no_entry_it_read(engine: uow.Engine) -> None:
    await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        for n in range(5):
            owner.name = f"a{n}"
            await session.commit()
        assert list(session) == [owner]  # the chain's head is read without tracking it


async def test_a_key_set_after_add_is_the_inserts_key_not_a_change(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        owner.id = 600
        session.plan()  # records the key set so far as a change of the new object
        owner.id, owner.name = 601, "b"
        await session.commit()
        records = await trail.records(session)
        assert [(r.action, r.key) for r in records] == [("insert", 601), ("update", 601)]
        assert (records[1].old, records[1].new) == ({"name": "a"}, {"name": "b"})
        assert await trail.records(session, table=Owner, key=600) == []


async def test_reading_on_after_the_last_entry_read(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
        (first,) = await trail.records(session)
        session.add(Owner(name="b", email="b@x"))
        await session.commit()
        assert [r.new["name"] for r in await trail.records(session, after=first.id)] == ["b"]


async def test_an_infinite_float_in_a_json_column_is_recorded_as_the_row_holds_it(engine: uow.Engine) -> None:
    class Blob(Model, table="audit_blobs"):
        id: Annotated[int | None, PrimaryKey()] = None
        data: Any = None

    trail = await _trail(engine)
    await engine.create_all(Blob)
    async with uow.AsyncSession(engine) as session:
        session.add(Blob(data=float("inf")))
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        stored = await session.query(Blob).one()
        (record,) = await trail.records(session, table=Blob)
        assert record.new["data"] == stored.data  # JSON has no infinity: both hold what the database kept


async def test_a_redacted_column_may_be_named_alone_and_records_come_in_pages(engine: uow.Engine) -> None:
    trail = AuditTrail(redact={Owner: "email"}).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(5))
        first = await trail.records(session, limit=2)
        assert [r.new["name"] for r in first] == ["o0", "o1"] and first[0].new["email"] == REDACTED
        rest = await trail.records(session, after=first[-1].id, limit=10)
        assert [r.new["name"] for r in rest] == ["o2", "o3", "o4"]


async def test_a_missing_audit_table_is_named_with_the_call_that_creates_it(engine: uow.Engine) -> None:
    AuditTrail().install(engine)
    await engine.create_all(Owner)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(name="a", email="a@x")
        session.add(owner)
        with pytest.raises(StorageError, match=r"create_all\(\.\.\., AuditEntry\)"):
            await session.commit()
        assert session.in_transaction() and owner.id is not None  # the work is kept
        await session.rollback()


async def test_verify_from_a_kept_head_checks_only_what_came_after(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(3))
        kept = await trail.verify(session)
        assert await trail.verify(session, start=kept) == kept  # nothing new
        await _commit_owners(session, range(3, 5))
        later = await trail.verify(session, start=kept)
        assert later == await trail.verify(session) and later.entries == 5

        ids = [r.id for r in await trail.records(session)]
        forged = (await session.get_one(AuditEntry, ids[3])).payload.replace('"o3"', '"z3"')
        await session.bulk_update(AuditEntry, {"payload": forged}, id=ids[3])
        await session.commit()
        with pytest.raises(AuditChainError, match="hash") as caught:
            await trail.verify(session, start=kept)
        assert caught.value.entry_id == ids[3]

        kept_payload = (await session.get_one(AuditEntry, ids[2])).payload
        await session.bulk_update(AuditEntry, {"payload": kept_payload.replace('"o2"', '"z2"')}, id=ids[2])
        await session.commit()
        with pytest.raises(AuditChainError, match="start"):
            await trail.verify(session, start=kept)  # the kept head's own entry was edited


async def test_a_hook_cannot_end_a_savepoint_set_before_the_commit(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    outer: list[Any] = []

    async def meddling(session: uow.AsyncSession, events: list[Any]) -> None:
        await outer[0].rollback()

    async with uow.AsyncSession(engine) as session:
        outer.append(await session.begin_nested())  # left open at the commit
        session.add(Owner(name="a", email="a@x"))
        engine.before_commit_hooks.insert(0, meddling)
        with pytest.raises(SessionStateError, match="savepoint set before the commit"):
            await session.commit()
        engine.before_commit_hooks.remove(meddling)
        await session.commit()  # the savepoint was kept, and goes with the commit
        assert [r.new["name"] for r in await trail.records(session)] == ["a"]


async def test_verify_from_a_start_checks_its_entry_and_takes_a_head_kept_before_it(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        await _commit_owners(session, range(2))
        logged = await trail.verify(session)  # kept elsewhere long ago
        await _commit_owners(session, range(2, 4))
        nightly = await trail.verify(session)
        await _commit_owners(session, range(4, 6))
        # a head from before the start is still in the chain: the start's hash vouches for it
        assert await trail.verify(session, start=nightly, head=logged) == await trail.verify(session)
        with pytest.raises(AuditChainError, match="kept head"):
            await trail.verify(session, start=nightly, head="f" * 64)

        # the start entry's searchable columns, which its hash does not cover, are checked too
        start_id = (await session.query(AuditEntry).filter(entry_hash=nightly.hash).one()).id
        await session.bulk_update(AuditEntry, {"actor": "mallory"}, id=start_id)
        await session.commit()
        with pytest.raises(AuditChainError, match="differ from its payload") as caught:
            await trail.verify(session, start=nightly)
        assert caught.value.entry_id == start_id


class Reading(Model, table="audit_readings"):
    taken: Annotated[dt.datetime, PrimaryKey()]
    value: float = 0.0


class Price(Model, table="audit_prices"):
    amount: Annotated[Decimal, PrimaryKey()]
    label: str = ""


async def test_every_entry_of_a_row_names_it_alike_however_its_key_was_spelled(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    await engine.create_all(Reading, Price)
    noon_in_paris = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    async with uow.AsyncSession(engine) as session:
        session.add(Reading(taken=noon_in_paris))
        session.add(Price(amount=Decimal("1.50")))
        await session.commit()
    async with uow.AsyncSession(engine) as session:  # read back: the database's spelling
        (await session.get_one(Reading, noon_in_paris)).value = 2.5
        (await session.get_one(Price, Decimal("1.5"))).label = "sale"
        await session.commit()
        for key in (noon_in_paris, noon_in_paris.astimezone(dt.UTC)):
            assert [r.action for r in await trail.records(session, table=Reading, key=key)] == ["insert", "update"]
        for amount in (Decimal("1.5"), Decimal("1.50")):
            assert [r.action for r in await trail.records(session, table=Price, key=amount)] == ["insert", "update"]
        assert (await trail.verify(session)).entries == 4


async def test_a_bulk_filter_on_an_infinite_float_is_recorded_as_inf(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    await engine.create_all(Reading)
    taken = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    async with uow.AsyncSession(engine) as session:
        session.add(Reading(taken=taken, value=float("inf")))
        await session.commit()
        assert await session.bulk_delete(Reading, value=float("inf")) == 1
        await session.commit()
        (bulk,) = await trail.records(session, tx=(await trail.records(session))[-1].tx)
        assert bulk.where == {"op": "compare", "column": "value", "cmp": "eq", "value": "inf"}
        assert (await trail.verify(session)).entries == 2


async def test_a_row_added_and_deleted_before_it_was_written_leaves_no_entries(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        draft = Owner(name="draft", email="d@x")
        session.add(draft)
        draft.name = "still a draft"
        session.delete(draft)
        kept = Owner(name="kept", email="k@x")
        session.add(kept)
        await session.commit()
        flushed = Owner(name="flushed", email="f@x")
        session.add(flushed)
        await session.flush()  # written, then deleted: both are changes the database saw
        session.delete(flushed)
        await session.commit()
        assert [(r.action, r.new.get("name") or r.old.get("name")) for r in await trail.records(session)] == [
            ("insert", "kept"),
            ("insert", "flushed"),
            ("delete", "flushed"),
        ]
        assert all(r.key is not None for r in await trail.records(session))


async def test_a_time_range_takes_only_aware_datetimes(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        for bound in (dt.date(2024, 1, 1), dt.datetime(2024, 1, 1), "2024-01-01"):
            with pytest.raises(ValidationError, match="aware datetime"):
                await trail.records(session, since=bound)  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="aware datetime"):
                await trail.records(session, until=bound)  # type: ignore[arg-type]


async def test_sinks_get_each_commits_records_once_it_is_committed(engine: uow.Engine, tmp_path: Any) -> None:
    delivered: list[tuple[AuditRecord, ...]] = []

    async def to_the_bus(records: Sequence[AuditRecord]) -> None:
        delivered.append(tuple(records))

    lines = tmp_path / "audit.jsonl"
    trail = AuditTrail(actor=lambda: "alice", sinks=[to_the_bus, JsonLinesSink(lines)]).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        session.add(Item(label="lamp", owner=Owner(name="Ann", email="ann@x")))
        await session.commit()
        session.add(Owner(name="gone", email="g@x"))
        await session.rollback()  # nothing committed: nothing delivered
        (await session.query(Item).one()).label = "desk lamp"
        await session.commit()

        stored = await trail.records(session)
        assert [len(batch) for batch in delivered] == [2, 1]  # one call per commit, in the order written
        assert [r for batch in delivered for r in batch] == stored
        written = [msgspec.json.decode(line) for line in lines.read_bytes().splitlines()]
        assert written == [msgspec.to_builtins(r) for r in stored]
        assert written[2]["old"] == {"label": "lamp"} and written[2]["actor"] == "alice"


async def test_a_failing_sink_leaves_the_commit_and_the_other_sinks_alone(engine: uow.Engine) -> None:
    delivered: list[AuditRecord] = []

    def broken(records: Sequence[AuditRecord]) -> None:
        raise OSError("the log host is down")

    trail = AuditTrail(sinks=[broken, delivered.extend]).install(engine)
    await engine.create_all(*MODELS)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        with pytest.raises(CommitHookError, match="the log host is down") as caught:
            await session.commit()
        assert [type(e) for e in caught.value.errors] == [OSError]
        # committed all the same; what the broken sink missed is read on from the table
        assert [r.new["name"] for r in delivered] == ["a"]
        assert await trail.records(session, after=delivered[-1].id - 1) == delivered


async def test_the_logging_sink_logs_each_record_as_json(engine: uow.Engine, caplog: Any) -> None:
    trail = AuditTrail(actor=lambda: "alice", sinks=[LoggingSink("app.audit")]).install(engine)
    await engine.create_all(*MODELS)
    caplog.set_level(logging.INFO, logger="app.audit")
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        await session.commit()
        (record,) = await trail.records(session)
    (logged,) = [r for r in caplog.records if r.name == "app.audit"]
    assert msgspec.json.decode(logged.getMessage()) == msgspec.to_builtins(record)
    assert logged.audit_record == record


def test_a_sink_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="audit sink"):
        AuditTrail(sinks=["audit.jsonl"])  # type: ignore[list-item]


async def test_a_new_parents_key_changed_before_the_flush_is_in_its_childrens_inserts(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        owner = Owner(id=5, name="Ann", email="ann@x")
        lamp = Item(label="lamp", owner=owner)
        session.add(lamp)
        owner.id = 6
        session.plan()  # the change and the child's following it are recorded
        owner.id = 7
        await session.commit()
        records = await trail.records(session)
        assert [(r.table, r.action, r.key) for r in records] == [
            ("audit_owners", "insert", 7),
            ("audit_items", "insert", lamp.id),
        ]
        assert records[1].new["owner_id"] == 7 == lamp.owner_id


async def test_a_hook_handing_the_session_to_a_worker_thread_is_refused_clearly(engine: uow.Engine) -> None:
    await engine.create_all(*MODELS)

    async def threaded(session: uow.AsyncSession, events: list[Any]) -> None:
        await anyio.to_thread.run_sync(lambda: session.add(Owner(name="thread", email="t@x")))

    engine.before_commit_hooks.append(threaded)
    async with uow.AsyncSession(engine) as session:
        session.add(Owner(name="a", email="a@x"))
        with pytest.raises(SessionStateError, match="busy with commit"):
            await session.commit()
        engine.before_commit_hooks.clear()
        await session.commit()
        assert [o.name for o in await session.query(Owner).all()] == ["a"]


async def test_an_upsert_entry_holds_the_row_as_the_upsert_left_it(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    joined = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with uow.AsyncSession(engine) as session:
        await session.insert(Owner(name="Ann", email="ann@x", joined=joined))
        await session.commit()
    async with uow.AsyncSession(engine) as session:  # not tracked here: the entry cannot take old values
        other_day = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        landed = await session.upsert(Owner(name="Anne", email="ann@x", joined=other_day), "email", "name")
        await session.commit()
        upsert = (await trail.records(session))[-1]
        assert (upsert.action, upsert.key, upsert.update_fields) == ("upsert", landed.id, ("name",))
        # what the row holds: the name updated on the conflict, the rest as it was (not what was offered)
        assert upsert.new == {"id": landed.id, "name": "Anne", "email": "ann@x", "joined": joined}


async def test_a_computed_bulk_update_is_recorded_as_its_arithmetic(engine: uow.Engine) -> None:
    trail = await _trail(engine)
    async with uow.AsyncSession(engine) as session:
        session.add(Item(label="lamp", price=Decimal("10.00")))
        await session.commit()
        await session.query(Item).update(price=Item.price * Decimal("1.5"))
        await session.commit()
        bulk = (await trail.records(session))[-1]
        assert bulk.action == "bulk_update"
        assert bulk.new == {"price": ColumnMath("price", "*", Decimal("1.5"))}  # typed again, as values are
        assert (await trail.verify(session)).entries == 2
