"""A differential hypothesis state machine over any set of adapters.

The machine runs one random sequence of session operations (add, assignment,
a change in place to a JSON list, a child appended to a parent's loaded list,
moving a child to another parent through its relation or unlinking it
(flushed at once or left pending), moving it by its foreign key over a loaded
relation or by a bulk update, a refused add, delete, soft delete, flush, commit, rollback,
savepoints, a refused flush, a refused move to a deleted parent, immediate
updates and removes, a refused immediate insert and update, merging a detached
copy, upserts on a unique column, bulk updates and bulk deletes, and parts
of an owner's aggregate put in, moved between and taken out of owners'
lists, which deletes them) on a session
per database URL, in lockstep, and after every step checks that:

- each tracked object holds the values the machine expects (the identity map
  is right, also after rollbacks restored it in place), and is found by its
  key;
- what each database holds equals :func:`uow.journal.replay` of that session's
  flushed journal (the journal is an oracle for storage);
- every database holds the same rows, compared without generated keys.

Use it in a test module::

    from uow.testing.state_machine import differential_state_machine

    Machine = differential_state_machine("memory://", "sqlite:///tmp/sm.db")
    TestDifferential = Machine.TestCase

Tables ``sm_owners``, ``sm_items`` and ``sm_parts`` are dropped and created again at the start
of every example, so the URLs may point at long-lived databases.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio
import anyio.from_thread
import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import uow
from uow import col
from uow.errors import IntegrityError, SessionStateError, ValidationError
from uow.events import Inserted
from uow.identity import Status
from uow.journal import Rows, replay
from uow.model import NOT_LOADED, ForeignKey, Model, PrimaryKey, SoftDelete, Unique, Versioned, relation, table_info
from uow.testing.oracle import stored_rows


class Owner(Model, Versioned, table="sm_owners"):
    """A parent row with a unique name, under optimistic locking: every
    update, bulk update and upsert of it bumps its version, which the journal's
    replay must agree with."""

    id: Annotated[int | None, PrimaryKey()] = None
    name: Annotated[str, Unique()]
    score: int = 0
    items: list[Item] = relation(back="owner_id")
    parts: list[Part] = relation(back="owner_id", delete_orphans=True)


class Item(Model, SoftDelete, table="sm_items"):
    """A child row that cascades with its owner and can be soft-deleted; its
    tags are a JSON list, changed in place."""

    id: Annotated[int | None, PrimaryKey()] = None
    owner_id: Annotated[int | None, ForeignKey(Owner, on_delete="cascade")] = None
    label: str
    tags: list[str] = msgspec.field(default_factory=list)
    owner: Owner | None = relation("owner_id")


class Part(Model, table="sm_parts"):
    """A part of its owner's aggregate: taken out of the owner's list and put
    in no other owner's, it is deleted at the next flush."""

    id: Annotated[int | None, PrimaryKey()] = None
    owner_id: Annotated[int | None, ForeignKey(Owner, on_delete="cascade")] = None
    name: str
    owner: Owner | None = relation("owner_id")


MODELS = (Owner, Item, Part)
NAMES = st.sampled_from(["ada", "bob", "cy", "dee", "eve", "fay"])
LABELS = st.sampled_from(["x", "y", "z", "it's", 'quo"te', "ünï"])
SCORES = st.integers(min_value=-3, max_value=3)


class _Expected:
    """What the machine believes about one object, in every session."""

    def __init__(self, kind: str, values: dict[str, Any], owner: int | None = None):
        self.kind = kind
        self.values = values
        self.owner = owner
        self.live = True
        self.deleted = False
        """Deleted in the session (not an insert a rollback undid)."""
        self.cascaded = False
        """Deleted with its owner; the session cascades at the next flush."""
        self.flushed_values = dict(values)
        """The values at the last flush (what storage holds in this transaction)."""
        self.moved = False
        """Moved to another owner since the last flush: its foreign key (moved
        through the relation) or its relation (moved by the foreign key)
        follows at the next flush."""
        self.moved_by_key = False
        self.appended = False
        """A new item appended to its owner's list and not flushed yet: nothing
        tracks it until the next flush adds it."""


class DifferentialMachine(RuleBasedStateMachine):
    """Runs the same operations on one session per URL; see the module docstring."""

    urls: Sequence[str] = ("memory://",)

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.engines: list[uow.Engine] = []
        self.sessions: list[uow.AsyncSession] = []
        self.objects: list[list[Any]] = []  # per session, objects by index
        self.expected: list[_Expected] = []
        self.committed: list[_Expected] = []
        self.savepoints: list[tuple[list[Any], list[_Expected]]] = []
        try:
            self.portal.call(self._open)
        except BaseException:
            self.teardown()  # hypothesis calls teardown only for a machine it made
            raise

    async def _open(self) -> None:
        for url in self.urls:
            engine = uow.create_engine(url)
            await engine.__aenter__()
            await engine.drop_all(Part, Item, Owner)
            await engine.create_all(Owner, Item, Part)
            self.engines.append(engine)
            self.sessions.append(uow.AsyncSession(engine))
            self.objects.append([])

    def teardown(self) -> None:
        async def close() -> None:
            for session in self.sessions:
                await session.close()
            for engine in self.engines:
                await engine.dispose()

        try:
            self.portal.call(close)
        finally:
            self._portal_cm.__exit__(None, None, None)

    # --- helpers ------------------------------------------------------------------

    def _each(self, operation: Any) -> list[Any]:
        async def run_all() -> list[Any]:
            return [await operation(i, session) for i, session in enumerate(self.sessions)]

        return self.portal.call(run_all)

    def _live(self, kind: str) -> list[int]:
        return [i for i, e in enumerate(self.expected) if e.live and e.kind == kind and not e.appended]

    def _name_taken(self, name: str) -> bool:
        return any(e.live and e.kind == "owner" and e.values["name"] == name for e in self.expected)

    def _name_flushed_by_another(self, index: int, name: str) -> bool:
        """Whether another live owner held ``name`` at the last flush: renames
        that pass names around among stored rows can form a swap, which the
        session refuses by design (``CycleError``), so the machine makes none."""
        return any(
            i != index and e.live and e.kind == "owner" and e.flushed_values.get("name") == name
            for i, e in enumerate(self.expected)
        )

    def _expect_owner_deleted(self, index: int) -> None:
        """The owner at ``index`` is deleted in the session, and its live items
        and parts with it (cascaded: gone at the next flush)."""
        self.expected[index].live = False
        self.expected[index].deleted = True
        for entry in self.expected:
            if entry.kind != "owner" and entry.owner == index and entry.live:
                entry.live = False
                entry.cascaded = True

    def _snapshot(self) -> tuple[list[Any], list[_Expected]]:
        return ([list(objects) for objects in self.objects], copy.deepcopy(self.expected))

    def _restore(self, saved: list[_Expected]) -> None:
        restored = copy.deepcopy(saved)
        restored.extend(_Expected(e.kind, e.values, e.owner) for e in self.expected[len(saved) :])
        for entry in restored[len(saved) :]:
            entry.live = False
        self.expected = restored

    # --- rules ------------------------------------------------------------------------

    @rule(name=NAMES, score=SCORES)
    def add_owner(self, name: str, score: int) -> None:
        if self._name_taken(name):
            return
        self.expected.append(_Expected("owner", {"name": name, "score": score}))

        async def add(i: int, session: uow.AsyncSession) -> None:
            owner = Owner(name=name, score=score)
            session.add(owner)
            self.objects[i].append(owner)

        self._each(add)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), label=LABELS)
    def add_item(self, data: st.DataObject, label: str) -> None:
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self.expected.append(_Expected("item", {"label": label, "deleted": False, "tags": []}, owner=owner_index))

        async def add(i: int, session: uow.AsyncSession) -> None:
            item = Item(label=label, owner=self.objects[i][owner_index])
            session.add(item)
            self.objects[i].append(item)

        self._each(add)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), score=SCORES)
    def assign_score(self, data: st.DataObject, score: int) -> None:
        index = data.draw(st.sampled_from(self._live("owner")))
        self.expected[index].values["score"] = score

        async def assign(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].score = score

        self._each(assign)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), name=NAMES)
    def rename_owner(self, data: st.DataObject, name: str) -> None:
        index = data.draw(st.sampled_from(self._live("owner")))
        if self._name_taken(name) or self._name_flushed_by_another(index, name):
            return
        self.expected[index].values["name"] = name

        async def assign(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].name = name

        self._each(assign)

    @precondition(lambda self: bool(self._live("item")) and bool(self._live("owner")))
    @rule(data=st.data())
    def move_item(self, data: st.DataObject) -> None:
        """An item moved to another owner through its relation, then flushed;
        a later rollback must neither write the undone move again nor lose a
        committed one."""
        index = data.draw(st.sampled_from(self._live("item")))
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self.expected[index].owner = owner_index
        self._flushed()

        async def move(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].owner = self.objects[i][owner_index]
            await session.flush()

        self._each(move)

    @precondition(lambda self: bool(self._live("item")) and bool(self._live("owner")))
    @rule(data=st.data())
    def move_item_later(self, data: st.DataObject) -> None:
        """An item moved to another owner through its relation, not flushed:
        the move is pending work, which refused calls must not take back and a
        rollback must, unloading the relation rather than leaving it to name
        the undone owner."""
        index = data.draw(st.sampled_from(self._live("item")))
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self.expected[index].owner = owner_index
        self.expected[index].moved = True
        self.expected[index].moved_by_key = False  # the relation wins over a key assigned before

        async def move(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].owner = self.objects[i][owner_index]

        self._each(move)

    @precondition(lambda self: bool(self._live("item")) and bool(self._live("owner")))
    @rule(data=st.data(), now=st.booleans())
    def move_item_by_key(self, data: st.DataObject, now: bool) -> None:
        """An item moved by assigning its foreign key (or by ``update`` now)
        while its relation holds what was loaded or flushed: the assignment is
        the newer word, and the relation follows it rather than writing the old
        owner back. When the relation was assigned since too, it wins."""
        stored = [i for i in self._live("owner") if self.objects[0][i].id is not None]
        if not stored:
            return
        index = data.draw(st.sampled_from(self._live("item")))
        owner_index = data.draw(st.sampled_from(stored))
        entry = self.expected[index]
        if now:
            entry.owner = owner_index  # the update records what was pending first, then itself
            self._flushed()
        elif not (entry.moved and not entry.moved_by_key):  # else a move through the relation is pending: it wins
            entry.owner = owner_index
            entry.moved = True
            entry.moved_by_key = True

        async def move(i: int, session: uow.AsyncSession) -> None:
            item, owner = self.objects[i][index], self.objects[i][owner_index]
            if now:
                await session.update(item, owner_id=owner.id)
            else:
                item.owner_id = owner.id

        self._each(move)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data())
    def unlink_item_later(self, data: st.DataObject) -> None:
        """An item's owner set to ``None`` through its relation, not flushed:
        deleting its old owner before the flush leaves it alone."""
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].owner = None
        self.expected[index].moved = True
        self.expected[index].moved_by_key = False

        async def unlink(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].owner = None

        self._each(unlink)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data(), tag=LABELS)
    def tag_item(self, data: st.DataObject, tag: str) -> None:
        """A tag appended to an item's JSON list in place: the next flush
        writes it, and the journal keeps what each event recorded."""
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].values["tags"] = [*self.expected[index].values["tags"], tag]

        async def tag_it(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].tags.append(tag)

        self._each(tag_it)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), label=LABELS, later=st.booleans())
    def append_item_to_owner_list(self, data: st.DataObject, label: str, later: bool) -> None:
        """A new item appended to an owner's list of items, loaded with
        ``include()`` in this step or an earlier one, then flushed (or left
        for a later flush, which a rollback takes back): no assignment tells
        the session of it, and the flush must insert it."""
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self._flushed()  # the include below flushes what was pending
        entry = _Expected("item", {"label": label, "deleted": False, "tags": []}, owner=owner_index)
        entry.appended = later
        self.expected.append(entry)

        async def append(i: int, session: uow.AsyncSession) -> None:
            owner = self.objects[i][owner_index]
            await session.flush()
            if Owner.__dict__["items"].raw(owner) is NOT_LOADED:  # never loaded, or unloaded by a rollback
                await session.query(Owner).filter(id=owner.id).include(Owner.items).one()
            item = Item(label=label)
            owner.items.append(item)
            self.objects[i].append(item)
            if not later:
                await session.flush()
                assert item.owner_id == owner.id, f"{self.urls[i]}: the appended item was not inserted"

        self._each(append)

    @precondition(lambda self: bool(self._live("item")) and bool(self._live("owner")))
    @rule(data=st.data(), later=st.booleans())
    def move_item_through_list(self, data: st.DataObject, later: bool) -> None:
        """An item moved by appending it to another owner's list (loaded with
        ``include()``, which flushes what was pending first): as if its
        relation were assigned. Then flushed, or left for a later flush, which
        a rollback takes back, unloading the list and the relation."""
        index = data.draw(st.sampled_from(self._live("item")))
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self._flushed()  # the include below flushes what was pending
        entry = self.expected[index]
        entry.owner = owner_index
        entry.moved = later

        async def move(i: int, session: uow.AsyncSession) -> None:
            item, owner = self.objects[i][index], self.objects[i][owner_index]
            await session.flush()
            if Owner.__dict__["items"].raw(owner) is NOT_LOADED:
                await session.query(Owner).filter(id=owner.id).include(Owner.items).one()
            owner.items.append(item)
            assert item.owner is owner, f"{self.urls[i]}: the appended item does not point at its new owner"
            if not later:
                await session.flush()
                assert item.owner_id == owner.id, f"{self.urls[i]}: the appended item did not move"

        self._each(move)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data())
    def remove_item_from_owner_list(self, data: st.DataObject) -> None:
        """An item taken out of its owner's loaded list: nothing is written
        (the item keeps its owner), and a rollback past it unloads the list."""
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self._flushed()  # the include below flushes what was pending

        async def remove(i: int, session: uow.AsyncSession) -> None:
            owner = self.objects[i][owner_index]
            await session.flush()
            if Owner.__dict__["items"].raw(owner) is NOT_LOADED:
                await session.query(Owner).filter(id=owner.id).include(Owner.items).one()
            if owner.items:
                owner.items.pop()

        self._each(remove)

    async def _owner_parts(self, session: uow.AsyncSession, owner: Owner) -> list[Part]:
        """``owner.parts``, read with ``include()`` where nothing loaded it."""
        if Owner.__dict__["parts"].raw(owner) is NOT_LOADED:
            await session.query(Owner).filter(id=owner.id).include(Owner.parts).one()
        return owner.parts

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), name=LABELS)
    def add_part(self, data: st.DataObject, name: str) -> None:
        """A new part appended to an owner's list of parts, then flushed."""
        owner_index = data.draw(st.sampled_from(self._live("owner")))
        self._flushed()
        self.expected.append(_Expected("part", {"name": name}, owner=owner_index))

        async def add(i: int, session: uow.AsyncSession) -> None:
            await session.flush()
            part = Part(name=name)
            (await self._owner_parts(session, self.objects[i][owner_index])).append(part)
            self.objects[i].append(part)
            await session.flush()
            assert part.owner_id == self.objects[i][owner_index].id, f"{self.urls[i]}: the part was not inserted"

        self._each(add)

    @precondition(lambda self: bool(self._live("part")) and bool(self._live("owner")))
    @rule(data=st.data(), take_out=st.booleans())
    def move_or_take_out_part(self, data: st.DataObject, take_out: bool) -> None:
        """A part appended to an owner's list (moved there; taken out first
        where the list holds it, which then keeps it), or taken out of one,
        then flushed. Taken out of the list of the owner it belongs to, it is
        deleted; taken out of the list of an owner it has left (which still
        holds it: lists are not kept in step with each other), it stays."""
        index = data.draw(st.sampled_from(self._live("part")))
        entry = self.expected[index]
        owners = self._live("owner")
        if take_out and entry.owner in owners and data.draw(st.integers(0, 3)):
            owner_index = entry.owner  # mostly out of the list of the owner it belongs to
        else:
            owner_index = data.draw(st.sampled_from(owners))
        self._flushed()
        belongs = entry.owner == owner_index
        if take_out and belongs:
            entry.live = False
        elif not take_out:
            entry.owner = owner_index

        async def change(i: int, session: uow.AsyncSession) -> None:
            await session.flush()
            part = self.objects[i][index]
            parts = await self._owner_parts(session, self.objects[i][owner_index])
            held = any(one is part for one in parts)
            if belongs:
                assert held, f"{self.urls[i]}: its owner's list does not hold part {index}"
            if not take_out:
                if held:  # taken out and put back at the end: it stays, and is the owner's
                    parts.remove(part)
                parts.append(part)  # never twice in one list: that case is in tests/test_lists.py
            elif held:
                parts.remove(part)
            await session.flush()

        self._each(change)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data())
    def unlink_item(self, data: st.DataObject) -> None:
        """An item's owner set to ``None`` through its relation, then flushed:
        its foreign key is emptied, and a later rollback neither writes the
        undone unlink again nor loses a committed one."""
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].owner = None
        self._flushed()

        async def unlink(i: int, session: uow.AsyncSession) -> None:
            self.objects[i][index].owner = None
            await session.flush()

        self._each(unlink)

    @precondition(lambda self: bool(self._live("item")) and any(e.deleted for e in self.expected))
    @rule(data=st.data())
    def refused_move_to_deleted_owner(self, data: st.DataObject) -> None:
        """Pointing an item at an owner deleted in the session (pending,
        flushed or committed) is refused at flush; putting its owner back lets
        the next flush through."""
        index = data.draw(st.sampled_from(self._live("item")))
        deleted = [i for i, e in enumerate(self.expected) if e.deleted]
        owner_index = data.draw(st.sampled_from(deleted))
        kept_owner = self.expected[index].owner
        self._flushed()

        async def refuse(i: int, session: uow.AsyncSession) -> None:
            item = self.objects[i][index]
            item.owner = self.objects[i][owner_index]
            try:
                await session.flush()
            except SessionStateError as exc:
                assert "deleted in this session" in str(exc), exc
            else:
                raise AssertionError(f"{self.urls[i]}: an item was pointed at a deleted owner")
            item.owner = None if kept_owner is None else self.objects[i][kept_owner]
            await session.flush()

        self._each(refuse)

    def _deletable_owners(self) -> list[int]:
        """Live owners no pending move points an item at, and in whose list no
        new item waits: a flush refuses a relation naming an object deleted in
        the session, and a new child in a deleted object's list, by design."""
        targets = {e.owner for e in self.expected if e.live and e.kind == "item" and (e.moved or e.appended)}
        return [index for index in self._live("owner") if index not in targets]

    @precondition(lambda self: bool(self._deletable_owners()))
    @rule(data=st.data())
    def delete_owner(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._deletable_owners()))
        self._expect_owner_deleted(index)

        async def delete(i: int, session: uow.AsyncSession) -> None:
            session.delete(self.objects[i][index])

        self._each(delete)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data())
    def delete_item(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].live = False

        async def delete(i: int, session: uow.AsyncSession) -> None:
            session.delete(self.objects[i][index])

        self._each(delete)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data())
    def soft_delete_item(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].values["deleted"] = True
        self._flushed()

        async def soft_delete(i: int, session: uow.AsyncSession) -> None:
            await session.soft_delete(self.objects[i][index])

        self._each(soft_delete)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data())
    def refused_flush(self, data: st.DataObject) -> None:
        """A duplicate name is refused at flush; nothing is lost, and removing
        the culprit lets the next flush through."""
        index = data.draw(st.sampled_from(self._live("owner")))
        name = self.expected[index].values["name"]

        async def refuse(i: int, session: uow.AsyncSession) -> None:
            pending_before = len(session.journal.pending)
            duplicate = Owner(name=name)
            session.add(duplicate)
            try:
                await session.flush()
            except IntegrityError as exc:
                assert exc.kind in ("unique", "primary_key"), exc
                assert exc.event is not None and exc.event.table == "sm_owners", exc
            else:
                raise AssertionError(f"{self.urls[i]}: a duplicate name was accepted")
            assert len(session.journal.pending) >= pending_before + 1
            session.delete(duplicate)

        self._flushed()
        self._each(refuse)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), score=SCORES)
    def update_score_now(self, data: st.DataObject, score: int) -> None:
        """``update`` writes an owner's score now, with whatever was pending."""
        index = data.draw(st.sampled_from(self._live("owner")))
        self.expected[index].values["score"] = score
        self._flushed()
        self._each(lambda i, session: session.update(self.objects[i][index], score=score))

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), score=SCORES)
    def merge_copy(self, data: st.DataObject, score: int) -> None:
        """``merge`` of a detached copy of a stored owner, made from its current
        version with another score: the tracked owner takes the score and is
        the object returned; the next flush bumps the version as for any update."""
        stored = [i for i in self._live("owner") if self.objects[0][i].id is not None]
        if not stored:
            return
        index = data.draw(st.sampled_from(stored))
        self.expected[index].values["score"] = score

        async def merge(i: int, session: uow.AsyncSession) -> None:
            owner = self.objects[i][index]
            assert owner.id is not None, f"{self.urls[i]}: owner {index} has no key where another session has one"
            detached = Owner(id=owner.id, name=owner.name, score=score)
            detached.version = owner.version  # made from the version the session holds
            merged = await session.merge(detached)
            assert merged is owner, f"{self.urls[i]}: merge returned another object"

        self._each(merge)

    @precondition(lambda self: bool(self._live("item")) and bool(self._live("owner")))
    @rule(data=st.data())
    def merge_item_copy_with_owner_copy(self, data: st.DataObject) -> None:
        """``merge`` of a detached copy of a stored item whose ``owner`` holds
        a detached copy of a stored owner, both made from what the session
        holds: the copies become the tracked objects (no row is inserted for
        the owner copy), and the item moves to that owner at the next flush."""
        items = [i for i in self._live("item") if self.objects[0][i].id is not None]
        owners = [i for i in self._live("owner") if self.objects[0][i].id is not None]
        if not items or not owners:
            return
        index = data.draw(st.sampled_from(items))
        owner_index = data.draw(st.sampled_from(owners))
        entry = self.expected[index]
        entry.owner = owner_index
        entry.moved = True
        entry.moved_by_key = False

        async def merge(i: int, session: uow.AsyncSession) -> None:
            item, owner = self.objects[i][index], self.objects[i][owner_index]
            owner_copy = Owner(id=owner.id, name=owner.name, score=owner.score)
            owner_copy.version = owner.version
            item_copy = Item(
                id=item.id,
                owner_id=item.owner_id,
                label=item.label,
                tags=list(item.tags),
                owner=owner_copy,
            )
            item_copy.deleted_at = item.deleted_at
            merged = await session.merge(item_copy)
            assert merged is item and item.owner is owner, f"{self.urls[i]}: merge did not bring in the tracked owner"

        self._each(merge)

    @precondition(lambda self: bool(self._live("item")))
    @rule(data=st.data())
    def remove_item_now(self, data: st.DataObject) -> None:
        """``remove`` deletes an item now, with whatever was pending."""
        index = data.draw(st.sampled_from(self._live("item")))
        self.expected[index].live = False
        self._flushed()
        self._each(lambda i, session: session.remove(self.objects[i][index]))

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data())
    def remove_owner_now(self, data: st.DataObject) -> None:
        """``remove`` deletes an owner now, its items with it (the session
        applies the cascade to the tracked items in the same flush)."""
        index = data.draw(st.sampled_from(self._live("owner")))
        self._expect_owner_deleted(index)
        self._flushed()
        self._each(lambda i, session: session.remove(self.objects[i][index]))

    @precondition(lambda self: len(self._live("owner")) >= 2)
    @rule(data=st.data())
    def refused_rename_now(self, data: st.DataObject) -> None:
        """``update`` to the name another owner holds fails, and drops only
        its own event: the owner keeps its name, and the work pending before
        stays pending (nothing of it is written)."""
        index, other = data.draw(st.lists(st.sampled_from(self._live("owner")), min_size=2, max_size=2, unique=True))
        name = self.expected[other].values["name"]

        async def refuse(i: int, session: uow.AsyncSession) -> None:
            owner = self.objects[i][index]
            kept = owner.name
            try:
                await session.update(owner, name=name)
            except IntegrityError as exc:
                assert exc.kind == "unique", exc
            else:
                raise AssertionError(f"{self.urls[i]}: a duplicate name was accepted")
            assert owner.name == kept, f"{self.urls[i]}: the refused update left {owner.name!r}"

        self._each(refuse)

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data())
    def refused_insert(self, data: st.DataObject) -> None:
        """``insert`` of a duplicate name fails, and drops only its own event:
        the work pending before it stays pending, and nothing is written."""
        index = data.draw(st.sampled_from(self._live("owner")))
        name = self.expected[index].values["name"]

        async def refuse(i: int, session: uow.AsyncSession) -> None:
            inserts_before = sum(isinstance(e, Inserted) for e in session.journal.pending)
            duplicate = Owner(name=name)
            try:
                await session.insert(duplicate)
            except IntegrityError as exc:
                assert exc.kind in ("unique", "primary_key"), exc
            else:
                raise AssertionError(f"{self.urls[i]}: a duplicate name was accepted")
            assert duplicate not in session and duplicate.id is None, f"{self.urls[i]}: the refused insert stayed"
            # the insert recorded what was pending before it first (a new item in a list, say), and keeps it
            inserts_after = sum(isinstance(e, Inserted) for e in session.journal.pending)
            assert inserts_after >= inserts_before, f"{self.urls[i]}: pending inserts went from {inserts_before}"

        self._each(refuse)

    @rule()
    def refused_add(self) -> None:
        """``add`` of an owner without a name is refused at once and takes back
        only what it recorded: the work pending before it stays pending."""

        async def refuse(i: int, session: uow.AsyncSession) -> None:
            pending_before = list(session.journal.pending)
            nameless = Owner(name=None)  # type: ignore[arg-type]
            try:
                session.add(nameless)
            except ValidationError:
                pass
            else:
                raise AssertionError(f"{self.urls[i]}: an owner without a name was added")
            assert nameless not in session, f"{self.urls[i]}: the refused owner is tracked"
            assert list(session.journal.pending) == pending_before, f"{self.urls[i]}: the pending events changed"

        self._each(refuse)

    @rule(name=NAMES, score=SCORES)
    def upsert_owner(self, name: str, score: int) -> None:
        """``upsert`` on the unique name: the owner holding it takes the score
        and is the object returned, else a new owner is inserted."""
        holders = [i for i, e in enumerate(self.expected) if e.live and e.kind == "owner" and e.values["name"] == name]
        if holders:
            index = holders[0]
            self.expected[index].values["score"] = score
        else:
            index = len(self.expected)
            self.expected.append(_Expected("owner", {"name": name, "score": score}))
        self._flushed()

        async def upsert(i: int, session: uow.AsyncSession) -> None:
            returned = await session.upsert(Owner(name=name, score=score), conflict_target=["name"])
            if holders:
                assert returned is self.objects[i][index], f"{self.urls[i]}: upsert returned an untracked copy"
            else:
                self.objects[i].append(returned)

        self._each(upsert)

    @rule(score=SCORES, new_score=SCORES)
    def bulk_rescore(self, score: int, new_score: int) -> None:
        """``bulk_update`` of the owners with a score: storage and the tracked
        objects change alike, and every adapter counts the same rows."""
        matched = [e for e in self.expected if e.live and e.kind == "owner" and e.values["score"] == score]
        for entry in matched:
            entry.values["score"] = new_score
        self._flushed()
        counts = self._each(lambda i, session: session.bulk_update(Owner, {"score": new_score}, score=score))
        assert counts == [len(matched)] * len(counts), f"{len(matched)} rows matched, counted {counts}"

    @rule(score=SCORES, delta=st.integers(min_value=-2, max_value=2), op=st.sampled_from(["+", "*"]))
    def bulk_shift_scores(self, score: int, delta: int, op: str) -> None:
        """``bulk_update`` with the score computed from each row's own:
        ``score + delta`` or ``score * delta``, by every database alike, and
        by the session on the tracked objects."""
        matched = [e for e in self.expected if e.live and e.kind == "owner" and e.values["score"] == score]
        for entry in matched:
            entry.values["score"] = score + delta if op == "+" else score * delta
        self._flushed()
        column = col(Owner.score)
        computed = column + delta if op == "+" else column * delta
        counts = self._each(lambda i, session: session.bulk_update(Owner, {"score": computed}, score=score))
        assert counts == [len(matched)] * len(counts), f"{len(matched)} rows matched, counted {counts}"

    @precondition(lambda self: bool(self._live("owner")))
    @rule(data=st.data(), label=LABELS)
    def bulk_move_items(self, data: st.DataObject, label: str) -> None:
        """``bulk_update`` of the owner of the items with a label (soft-deleted
        ones included): the tracked items take the new key in place, and their
        loaded relations follow it rather than a later flush writing the old
        owner back."""
        stored = [i for i in self._live("owner") if self.objects[0][i].id is not None]
        if not stored:
            return
        owner_index = data.draw(st.sampled_from(stored))
        matched = [e for e in self.expected if e.live and e.kind == "item" and e.values["label"] == label]
        for entry in matched:
            entry.owner = owner_index
        self._flushed()

        async def move(i: int, session: uow.AsyncSession) -> int:
            return await session.bulk_update(Item, {"owner_id": self.objects[i][owner_index].id}, label=label)

        counts = self._each(move)
        assert counts == [len(matched)] * len(counts), f"{len(matched)} rows matched, counted {counts}"

    @rule(score=SCORES)
    def bulk_delete_owners(self, score: int) -> None:
        """``bulk_delete`` of the owners with a score: their items go with them
        (the foreign key cascades), in storage and in the session."""
        matched = [
            i for i, e in enumerate(self.expected) if e.live and e.kind == "owner" and e.values["score"] == score
        ]
        for index in matched:
            self.expected[index].live = False
            self.expected[index].deleted = True
        for entry in self.expected:
            if entry.kind != "owner" and entry.live and entry.owner in matched:
                entry.live = False
        self._flushed()
        counts = self._each(lambda i, session: session.bulk_delete(Owner, score=score))
        assert counts == [len(matched)] * len(counts), f"{len(matched)} rows matched, counted {counts}"

    @rule(label=LABELS)
    def bulk_delete_items(self, label: str) -> None:
        """``bulk_delete`` of the items with a label, soft-deleted ones included."""
        matched = [e for e in self.expected if e.live and e.kind == "item" and e.values["label"] == label]
        for entry in matched:
            entry.live = False
        self._flushed()
        counts = self._each(lambda i, session: session.bulk_delete(Item, label=label))
        assert counts == [len(matched)] * len(counts), f"{len(matched)} rows matched, counted {counts}"

    @rule()
    def flush(self) -> None:
        self._flushed()
        self._each(lambda i, session: session.flush())

    @rule()
    def commit(self) -> None:
        self._flushed()
        self._each(lambda i, session: session.commit())
        self.committed = copy.deepcopy(self.expected)
        self.savepoints.clear()

    @rule()
    def rollback(self) -> None:
        self._each(lambda i, session: session.rollback())
        self._restore(self.committed)
        self.savepoints.clear()

    @rule()
    def begin_savepoint(self) -> None:
        self._flushed()

        async def begin(i: int, session: uow.AsyncSession) -> Any:
            return await session.begin_nested()

        handles = self._each(begin)
        self.savepoints.append((handles, copy.deepcopy(self.expected)))

    @precondition(lambda self: bool(self.savepoints))
    @rule()
    def rollback_savepoint(self) -> None:
        handles, saved = self.savepoints.pop()
        self._each(lambda i, session: handles[i].rollback())
        self._restore(saved)

    @precondition(lambda self: bool(self.savepoints))
    @rule()
    def release_savepoint(self) -> None:
        handles, _ = self.savepoints.pop()
        self._flushed()
        self._each(lambda i, session: handles[i].commit())

    def _flushed(self) -> None:
        for entry in self.expected:
            entry.cascaded = False
            entry.moved = False
            entry.moved_by_key = False
            entry.appended = False
            entry.flushed_values = dict(entry.values)

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def objects_hold_expected_values(self) -> None:
        for i, session in enumerate(self.sessions):
            for index, entry in enumerate(self.expected):
                obj = self.objects[i][index]
                if not entry.live:
                    if entry.cascaded:
                        continue
                    assert obj not in session, f"{self.urls[i]}: object {index} should not be tracked"
                    continue
                if entry.appended:
                    continue  # in its owner's list, added by the next flush
                assert obj in session, f"{self.urls[i]}: object {index} should be tracked"
                if entry.kind == "owner":
                    assert (obj.name, obj.score) == (entry.values["name"], entry.values["score"])
                elif entry.kind == "part":  # every change of a part is flushed in its step
                    assert entry.owner is not None
                    owner = self.objects[i][entry.owner]
                    assert (obj.name, obj.owner_id) == (entry.values["name"], owner.id), (
                        f"{self.urls[i]}: part {index} holds {obj.name!r} of owner {obj.owner_id}, "
                        f"expected owner {owner.id}"
                    )
                else:
                    assert obj.label == entry.values["label"]
                    assert obj.tags == entry.values["tags"], f"{self.urls[i]}: item {index} has tags {obj.tags}"
                    assert (obj.deleted_at is not None) == entry.values["deleted"]
                    if entry.owner is None:
                        if not entry.moved:
                            assert obj.owner_id is None, f"{self.urls[i]}: item {index} should have no owner"
                        continue
                    owner = self.objects[i][entry.owner]
                    if owner.id is not None and not entry.moved:
                        assert obj.owner_id == owner.id

    @invariant()
    def loaded_relations_name_the_expected_owner(self) -> None:
        """An item's loaded ``owner`` relation names the owner the machine
        expects: a rollback unloads one that named an undone move, and a
        refused call keeps a move pending."""
        for i in range(len(self.sessions)):
            for index, entry in enumerate(self.expected):
                if entry.kind == "owner" or not entry.live or entry.moved_by_key or entry.appended:
                    continue
                child = self.objects[i][index]
                if type(child).__dict__["owner"].raw(child) is NOT_LOADED:
                    continue
                held = child.owner
                wanted = None if entry.owner is None else self.objects[i][entry.owner]
                assert held is wanted, (
                    f"{self.urls[i]}: {entry.kind} {index}'s owner relation holds {held!r}, expected {wanted!r}"
                )

    @invariant()
    def tracked_objects_are_found_by_their_keys(self) -> None:
        """The identity map finds every live tracked object with a key by that
        key (``get`` answers with it, and cascades find it as a child), and by
        the values of the columns upserts look objects up by."""
        for i, session in enumerate(self.sessions):
            identity = session._identity
            for state in identity.states():
                if state.status in (Status.PENDING, Status.PERSISTENT) and state.key is not None:
                    found = identity.get(state.table, state.key)
                    assert found is state, f"{self.urls[i]}: {state} is not found by its key {state.key!r}"
                # and by the columns an upsert looked it up by (the lookups kept since)
                if state.status in (Status.PENDING, Status.PERSISTENT):
                    for indexes in list(identity.lookups.get(state.table, {})):
                        values = tuple(state.snapshot[index] for index in indexes)
                        found_all = identity.find_by_columns(state.table, indexes, values)
                        assert state in found_all, f"{self.urls[i]}: {state} is not found by its {values!r}"

    @invariant()
    def storage_equals_replay_and_agrees(self) -> None:
        tables = {table_info(m).name: table_info(m) for m in MODELS}

        async def storage(i: int, session: uow.AsyncSession) -> Rows:
            return await stored_rows(session, *MODELS)

        stored = self._each(storage)
        normalized = []
        for i, session in enumerate(self.sessions):
            journal = session.journal
            expected = replay(journal.flushed, tables, generated_keys=journal.generated_keys)
            actual = stored[i]
            for name in tables:
                assert actual[name] == expected.get(name, {}), f"{self.urls[i]}: {name} differs from the journal"
            normalized.append(_normalize(actual))
        for i in range(1, len(normalized)):
            assert normalized[i] == normalized[0], f"{self.urls[i]} and {self.urls[0]} hold different rows"

    # --- query rules ------------------------------------------------------------------

    @rule(
        lookup=st.sampled_from(["score", "score__ne", "score__lt", "score__gte", "score__in"]),
        score=SCORES,
        prefix=st.sampled_from(["", "a", "b", "d", "e"]),
        descending=st.booleans(),
        limit=st.none() | st.integers(min_value=0, max_value=4),
        offset=st.none() | st.integers(min_value=0, max_value=2),
    )
    def query_owners(
        self, lookup: str, score: int, prefix: str, descending: bool, limit: int | None, offset: int | None
    ) -> None:
        """A filtered, ordered, windowed query (it autoflushes) answers the same
        on every adapter, and what the expected objects say."""
        value: Any = [score, score + 1] if lookup == "score__in" else score
        self._flushed()
        tests: dict[str, Callable[[int], bool]] = {
            "score": lambda s: s == score,
            "score__ne": lambda s: s != score,
            "score__lt": lambda s: s < score,
            "score__gte": lambda s: s >= score,
            "score__in": lambda s: s in (score, score + 1),
        }
        compare = tests[lookup]
        owners = [e.values for e in self.expected if e.live and e.kind == "owner"]
        matching = sorted(
            ((o["name"], o["score"]) for o in owners if compare(o["score"]) and o["name"].startswith(prefix)),
            key=lambda pair: (-pair[1] if descending else pair[1], pair[0]),
        )
        start = offset or 0
        expected = matching[start : None if limit is None else start + limit]

        async def run(i: int, session: uow.AsyncSession) -> list[tuple[str, int]]:
            query = (
                session.query(Owner)
                .filter(**{lookup: value}, name__startswith=prefix)
                .order_by("-score" if descending else "score", "name")
                .limit(limit)
                .offset(offset)
            )
            found = [(owner.name, owner.score) for owner in await query.all()]
            assert await query.count() == len(found), f"{self.urls[i]}: count() disagrees with all()"
            return found

        for i, found in enumerate(self._each(run)):
            assert found == expected, f"{self.urls[i]}: {found} != {expected}"

    @rule(labels=st.lists(LABELS, min_size=1, max_size=3), with_deleted=st.booleans())
    def query_items_with_owners(self, labels: list[str], with_deleted: bool) -> None:
        """Items by label with their owners included (soft-deleted ones only
        when asked), normalized without generated keys, agree everywhere."""
        self._flushed()
        expected = sorted(
            (e.values["label"], self.expected[e.owner].values["name"] if e.owner is not None else "")
            for e in self.expected
            if e.live and e.kind == "item" and e.values["label"] in labels and (with_deleted or not e.values["deleted"])
        )

        async def run(i: int, session: uow.AsyncSession) -> list[tuple[str, str]]:
            query = session.query(Item).filter(label__in=labels).include(Item.owner)
            if with_deleted:
                query = query.with_deleted()
            items = await query.all()
            for item in items:
                assert item in session, f"{self.urls[i]}: a queried item is not the tracked object"
            return sorted((item.label, item.owner.name if item.owner is not None else "") for item in items)

        for i, found in enumerate(self._each(run)):
            assert found == expected, f"{self.urls[i]}: {found} != {expected}"


def _normalize(rows: dict[str, dict[Any, dict[str, Any]]]) -> tuple[list[Any], list[Any], list[Any]]:
    owners = rows["sm_owners"]
    owner_rows = sorted((r["name"], r["score"]) for r in owners.values())
    item_rows = sorted(
        (
            owners[r["owner_id"]]["name"] if r["owner_id"] in owners else "",
            r["label"],
            r["deleted_at"] is not None,
            tuple(r["tags"]),
        )
        for r in rows["sm_items"].values()
    )
    part_rows = sorted(
        (owners[r["owner_id"]]["name"] if r["owner_id"] in owners else "", r["name"]) for r in rows["sm_parts"].values()
    )
    return owner_rows, item_rows, part_rows


def differential_state_machine(*urls: str) -> type[DifferentialMachine]:
    """A :class:`DifferentialMachine` subclass running on ``urls`` in lockstep;
    its ``TestCase`` attribute is a test class pytest and unittest collect."""
    if not urls:
        raise ValueError("give at least one database URL")
    return type("DifferentialMachine", (DifferentialMachine,), {"urls": tuple(urls)})


_ = dt  # datetime values appear through SoftDelete's deleted_at

__all__ = ["DifferentialMachine", "Item", "Owner", "Part", "differential_state_machine"]
