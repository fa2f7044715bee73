"""Edges of reads, on memory and SQLite: ``first()`` under ``limit(0)``,
``get(key)`` on a windowed query, ``parallel_exec`` and rows the session
deleted in its open transaction, and a stream outliving its transaction when
the pool hands the same connection back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Annotated

import pytest

import uow
from uow import select
from uow.errors import SessionStateError
from uow.model import ForeignKey, Model, PrimaryKey, relation

pytestmark = pytest.mark.anyio


class EdgeUser(Model, table="edge_users"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    age: int = 0
    posts: list[EdgePost] = relation(back="user_id")


class EdgePost(Model, table="edge_posts"):
    id: Annotated[int | None, PrimaryKey()] = None
    user_id: Annotated[int | None, ForeignKey(EdgeUser, on_delete="cascade")] = None
    title: str
    user: EdgeUser | None = relation("user_id")


@pytest.fixture(params=["memory", "sqlite"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[uow.Engine]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'edges.db'}"
    async with uow.create_engine(url) as engine:
        await engine.create_all(EdgeUser, EdgePost)
        yield engine


@pytest.fixture
async def stored(engine: uow.Engine) -> dict[str, int]:
    """Ann (30), Bob (20) and Cy (40), committed; Ann and Bob have a post each."""
    async with uow.AsyncSession(engine) as session:
        ann, bob, cy = EdgeUser(name="Ann", age=30), EdgeUser(name="Bob", age=20), EdgeUser(name="Cy", age=40)
        session.add_all([ann, bob, cy])
        await session.flush()
        assert ann.id is not None and bob.id is not None and cy.id is not None
        session.add_all([EdgePost(user_id=ann.id, title="by Ann"), EdgePost(user_id=bob.id, title="by Bob")])
        await session.commit()
        return {"Ann": ann.id, "Bob": bob.id, "Cy": cy.id}


async def _names(engine: uow.Engine) -> list[str]:
    async with uow.AsyncSession(engine) as session:
        return [u.name for u in await session.query(EdgeUser).order_by("name").all()]


# --- first() and limit -------------------------------------------------------------


async def test_first_respects_a_limit_of_zero(engine: uow.Engine, stored: dict[str, int]) -> None:
    async with uow.AsyncSession(engine) as session:
        query = session.query(EdgeUser).order_by("name")
        assert await query.limit(0).all() == []
        assert await query.limit(0).first() is None
        assert await session.scalar(select(EdgeUser).limit(0)) is None
        first = await query.limit(2).first()
        assert first is not None and first.name == "Ann"
        second = await query.offset(1).limit(5).first()
        assert second is not None and second.name == "Bob"


# --- get(key) ignores the window ------------------------------------------------------


async def test_get_by_key_ignores_offset_limit_and_order_with_and_without_filters(
    engine: uow.Engine, stored: dict[str, int]
) -> None:
    for expunge in (False, True):  # a tracked object (no query without filters) and a queried one
        async with uow.AsyncSession(engine) as session:
            if not expunge:
                await session.query(EdgeUser).all()
            windowed = session.query(EdgeUser).order_by("-age").offset(1).limit(1)
            plain = await windowed.get(stored["Cy"])
            filtered = await windowed.filter(age__gt=10).get(stored["Cy"])
            assert plain is not None and plain.name == "Cy"
            assert filtered is plain
            assert await session.query(EdgeUser).limit(0).filter(age__gt=10).get(stored["Ann"]) is not None
            # the filters still apply
            assert await windowed.filter(age__lt=35).get(stored["Cy"]) is None
            assert await windowed.filter(age__gt=10).get(10_000) is None


# --- parallel_exec and deletes of the open transaction ---------------------------------


async def test_parallel_exec_leaves_out_a_row_deleted_and_flushed_in_the_transaction(
    engine: uow.Engine, stored: dict[str, int]
) -> None:
    async with uow.AsyncSession(engine) as session:
        ann = await session.get(EdgeUser, stored["Ann"])
        assert ann is not None
        await session.remove(ann)  # flushed, not committed
        (users,) = await session.parallel_exec([select(EdgeUser).order_by("name")])
        assert [u.name for u in users] == ["Bob", "Cy"]
        assert all(u is not ann for u in users)
        # a windowed read counts its window without the deleted row, as a read in the transaction does
        (first,) = await session.parallel_exec([select(EdgeUser).order_by("name").limit(1)])
        assert [u.name for u in first] == ["Bob"]
        in_tx = await session.query(EdgeUser).order_by("name").limit(1).all()
        assert [u.name for u in in_tx] == [u.name for u in first]
        for user in users:
            user.age += 1
        await session.commit()  # no ConcurrencyError
    assert await _names(engine) == ["Bob", "Cy"]


async def test_parallel_exec_includes_leave_out_rows_deleted_in_the_transaction(
    engine: uow.Engine, stored: dict[str, int]
) -> None:
    async with uow.AsyncSession(engine) as session:
        ann = await session.get(EdgeUser, stored["Ann"])
        assert ann is not None
        await session.remove(ann)
        (posts,) = await session.parallel_exec([select(EdgePost).order_by("title").include(EdgePost.user)])
        assert [(p.title, p.user.name if p.user else None) for p in posts] == [("by Ann", None), ("by Bob", "Bob")]
        bob_post = await session.get(EdgePost, posts[1].id)
        assert bob_post is not None
        await session.remove(bob_post)
        (users,) = await session.parallel_exec([select(EdgeUser).order_by("name").include(EdgeUser.posts)])
        assert [(u.name, [p.title for p in u.posts]) for u in users] == [("Bob", []), ("Cy", [])]
        await session.commit()
    assert await _names(engine) == ["Bob", "Cy"]


async def test_parallel_exec_leaves_out_a_pending_delete(engine: uow.Engine, stored: dict[str, int]) -> None:
    async with uow.AsyncSession(engine) as session:
        bob = await session.get(EdgeUser, stored["Bob"])
        assert bob is not None
        session.delete(bob)  # not flushed
        (users,) = await session.parallel_exec([select(EdgeUser).order_by("name")])
        assert [u.name for u in users] == ["Ann", "Cy"]
        await session.commit()
    assert await _names(engine) == ["Ann", "Cy"]


async def test_parallel_exec_after_a_committed_or_rolled_back_delete(
    engine: uow.Engine, stored: dict[str, int]
) -> None:
    async with uow.AsyncSession(engine) as session:
        ann = await session.get(EdgeUser, stored["Ann"])
        bob = await session.get(EdgeUser, stored["Bob"])
        assert ann is not None and bob is not None
        await session.remove(ann)
        await session.commit()  # Ann is gone for good
        await session.remove(bob)
        await session.rollback()  # Bob is back, the same object
        (users,) = await session.parallel_exec([select(EdgeUser).order_by("name")])
        assert [u.name for u in users] == ["Bob", "Cy"]
        assert users[0] is bob
        bob.age = 21
        await session.commit()

        # a row with Ann's key inserted by someone else since is a new row: it comes back
        async with uow.AsyncSession(engine) as other:
            other.add(EdgeUser(id=stored["Ann"], name="Ann again", age=1))
            await other.commit()
        (users,) = await session.parallel_exec([select(EdgeUser).order_by("name")])
        assert [u.name for u in users] == ["Ann again", "Bob", "Cy"]
        assert users[0] is not ann
        users[0].age = 2
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        assert [(u.name, u.age) for u in await session.query(EdgeUser).order_by("name").all()] == [
            ("Ann again", 2),
            ("Bob", 21),
            ("Cy", 40),
        ]


async def test_parallel_exec_after_a_savepoint_rolled_back_a_delete(engine: uow.Engine, stored: dict[str, int]) -> None:
    async with uow.AsyncSession(engine) as session:
        cy = await session.get(EdgeUser, stored["Cy"])
        assert cy is not None
        cy.age = 41
        await session.flush()
        savepoint = await session.begin_nested()
        await session.remove(cy)
        await savepoint.rollback()
        (users,) = await session.parallel_exec([select(EdgeUser).filter(name="Cy")])
        assert users == [cy]
        cy.age = 42
        await session.commit()
    async with uow.AsyncSession(engine) as session:
        stored_cy = await session.get(EdgeUser, stored["Cy"])
        assert stored_cy is not None and stored_cy.age == 42


# --- a stream and the end of its transaction ------------------------------------------


async def test_a_stream_refuses_to_go_on_after_its_transaction_ended_and_another_began(
    engine: uow.Engine, stored: dict[str, int]
) -> None:
    for end in ("commit", "rollback"):
        session = uow.AsyncSession(engine)
        async with session, aclosing(session.stream(select(EdgeUser).order_by("name"), chunk_size=1)) as stream:
            first = await stream.__anext__()
            assert first.name == "Ann"
            await (session.commit() if end == "commit" else session.rollback())
            assert await session.get(EdgeUser, stored["Bob"]) is not None  # a read in a new transaction
            with pytest.raises(SessionStateError, match="stream"):
                await stream.__anext__()


async def test_a_stream_goes_on_while_its_transaction_lasts(engine: uow.Engine, stored: dict[str, int]) -> None:
    async with uow.AsyncSession(engine) as session:
        seen = []
        async for user in session.stream(select(EdgeUser).order_by("name"), chunk_size=1):
            seen.append(user.name)
            await session.get(EdgeUser, stored["Cy"])  # reads in the same transaction are fine
        assert seen == ["Ann", "Bob", "Cy"]
        await session.commit()
