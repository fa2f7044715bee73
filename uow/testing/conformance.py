"""The session conformance suite: every storage adapter is held to it.

:class:`SessionConformance` is the whole behavioural contract of
:class:`uow.AsyncSession` over a storage adapter, written once. It is not
collected by itself (its name does not start with ``Test``); a backend's tests
subclass it and provide an ``engine`` fixture: an open :class:`uow.Engine` on
an empty database. The suite creates its tables (:mod:`uow.testing.models`)
in that database.

An adapter author runs it like this, in the adapter's own tests::

    # tests/test_conformance.py
    import pytest
    import uow
    from uow.testing.conformance import SessionConformance

    @pytest.fixture
    def anyio_backend():
        return "asyncio"

    @pytest.fixture
    async def engine(tmp_path):
        async with uow.create_engine(f"mydb:///{tmp_path / 'test.db'}") as engine:
            yield engine            # a fresh, empty database per test

    class TestMyDbConformance(SessionConformance):
        pass

and ``pytest tests/test_conformance.py``. The ``engine`` fixture may be
parametrized to run the suite over several databases. The tests are async
(marked ``anyio``) and need the ``anyio`` pytest plugin, which anyio installs.
Tests that run SQL through ``execute_raw`` follow the adapter's
``supports_raw_sql`` and ``paramstyle``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import gc
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

import uow
from uow import AsyncSession, col
from uow.arithmetic import ColumnMath
from uow.audit import AuditEntry, AuditTrail
from uow.errors import (
    CommitHookError,
    ConcurrencyError,
    ConfigurationError,
    CycleError,
    DetachedInstanceError,
    IntegrityError,
    ModelDefinitionError,
    NoResultFound,
    QueryError,
    RelationNotLoadedError,
    SessionStateError,
    StorageError,
    UnsupportedOperationError,
    ValidationError,
)
from uow.events import (
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Inserted,
    Restored,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.journal import replay
from uow.model import Model, table_info
from uow.testing.models import (
    MODELS,
    Account,
    Category,
    Color,
    Comment,
    Department,
    Employee,
    Note,
    Post,
    Review,
    Sample,
    Seat,
    Size,
    User,
)

__all__ = ["ReadCounter", "SessionConformance"]


class ReadCounter:
    """Counts the reads (``fetch`` and ``stream``) made on the engine's connections."""

    def __init__(self) -> None:
        self.count = 0


async def stored(engine: uow.Engine, model: type[Model], key: Any) -> Any:
    """The row with ``key`` as a separate session sees it (soft-deleted included), or ``None``."""
    async with AsyncSession(engine) as session:
        return await session.get(model, key, with_deleted=True)


async def count_rows(engine: uow.Engine, model: type[Model], **filters: Any) -> int:
    """How many committed rows match ``filters``, counted by a delete that is rolled back."""
    async with AsyncSession(engine) as session:
        count = await session.bulk_delete(model, **filters)
        await session.rollback()
        return count


async def _committed_author_with_two_posts(session: AsyncSession) -> tuple[User, Post, Post]:
    """An author whose ``posts`` list holds both posts, each pointing back
    through ``author``, added and committed in ``session``."""
    author = User(name="Author", email="author@example.com")
    first = Post(title="First", slug="first", author=author)
    second = Post(title="Second", slug="second", author=author)
    author.posts = [first, second]
    session.add(author)
    await session.commit()
    return author, first, second


async def _committed_author_two_posts_and_other(session: AsyncSession) -> tuple[User, Post, Post, User]:
    """:func:`_committed_author_with_two_posts`, and another user committed
    with them, for the posts to move to."""
    author, first, second = await _committed_author_with_two_posts(session)
    other = User(name="Other", email="other@example.com")
    session.add(other)
    await session.commit()
    return author, first, second, other


async def _loaded_and_inserted(session: AsyncSession, alice: User) -> tuple[User, User]:
    """Alice read in ``session``, then Bob inserted there: two tracked users,
    Alice tracked first."""
    first = await session.get_one(User, alice.id)
    second = await session.insert(User(name="Bob", email="bob@example.com"))
    return first, second


async def _stale_write_refused_after(
    engine: uow.Engine, change: Callable[[AsyncSession, Account], Awaitable[Account]]
) -> Account:
    """Commit an account and read it in a session that goes stale once
    ``change`` sets its balance to 0 in another session (returning the tracked
    row there). The change must bump the version, in that row and in the
    journal's replay, so that the stale session's next write is refused."""
    accounts = table_info(Account)
    async with AsyncSession(engine) as session:
        account = Account(owner="Ann", balance=10)
        session.add(account)
        await session.commit()
    async with AsyncSession(engine) as stale, AsyncSession(engine) as other:
        mine = await stale.get_one(Account, account.id)
        await stale.commit()
        changed = await change(other, account)
        assert (changed.balance, changed.version) == (0, mine.version + 1)
        before = {accounts.name: {account.id: accounts.row_dict(accounts.values_of(mine))}}
        replayed = replay(other.journal.flushed, {accounts.name: accounts}, base=before)
        assert replayed[accounts.name][account.id]["version"] == mine.version + 1
        await other.commit()
        mine.balance += 5  # computed from the balance the change replaced
        with pytest.raises(ConcurrencyError):
            await stale.commit()
    assert (await stored(engine, Account, account.id)).balance == 0
    return account


def _raw_placeholder(engine: uow.Engine, position: int) -> str:
    return f"${position}" if engine.adapter.paramstyle == "numeric" else "?"


def _sample(**overrides: Any) -> Sample:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "created_at": dt.datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=dt.UTC),
        "day": dt.date(2024, 2, 29),
        "amount": decimal.Decimal("12345.6789"),
        "flag": True,
        "ratio": 0.25,
        "blob": b"\x00\x01binary\xff",
        "data": {"tags": ["a", "b"], "nested": {"n": 1, "ok": True}, "none": None},
        "color": Color.GREEN,
        "label": "sample",
        "count": 42,
        "shape": (3, 4),
        "size": Size(width=3, height=4),
    }
    values.update(overrides)
    return Sample(**values)


class SessionConformance:
    """The session's behaviour over one storage adapter (see the module docstring)."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture(autouse=True)
    async def _tables(self, engine: uow.Engine) -> None:
        await engine.create_all(*MODELS)

    @pytest.fixture
    async def reads(self, engine: uow.Engine, monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
        """Counts reads from now on, on every connection of the engine's adapter."""
        counter = ReadCounter()
        connection = await engine.acquire()
        connection_class = type(connection)
        await engine.adapter.release(connection)
        original_fetch = connection_class.fetch
        original_stream = connection_class.stream

        async def fetch(self: Any, select: Any) -> Any:
            counter.count += 1
            return await original_fetch(self, select)

        def stream(self: Any, select: Any, chunk_size: int = 1000) -> Any:
            counter.count += 1
            return original_stream(self, select, chunk_size)

        monkeypatch.setattr(connection_class, "fetch", fetch)
        monkeypatch.setattr(connection_class, "stream", stream)
        return counter

    @pytest.fixture
    async def alice(self, engine: uow.Engine) -> User:
        """A committed user (detached: load it in the test's own session)."""
        async with AsyncSession(engine) as session:
            user = await session.insert(User(name="Alice", email="alice@example.com", age=30))
            await session.commit()
        return user

    # --- add / add_all / flush / commit --------------------------------------------

    async def test_commit_generates_keys_and_fills_a_new_childs_foreign_key(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            post = Post(title="Hello", author=alice)
            session.add(post)
            assert alice in session and post in session
            await session.commit()
            assert isinstance(alice.id, int) and isinstance(post.id, int)
            assert post.author_id == alice.id
        saved = await stored(engine, Post, post.id)
        assert saved.author_id == alice.id and saved.title == "Hello"

    async def test_a_not_null_foreign_key_is_filled_from_a_new_parent(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            post = Post(title="Hello", author=User(name="Bob", email="bob@example.com"))
            comment = Comment(body="first", post=post)
            session.add(comment)  # the key comes at flush, from the post's insert
            assert comment.post_id is None
            await session.commit()
            assert comment.post_id == post.id and isinstance(post.id, int)
            moved = Comment(body="moved", post=post)
            session.add(moved)
            await session.flush()
            moved.post = Post(title="Another")  # a stored comment moves to a new post
            await session.commit()
            assert moved.post_id == moved.post.id != post.id
        assert (await stored(engine, Comment, comment.id)).post_id == post.id
        assert (await stored(engine, Comment, moved.id)).post_id == moved.post.id

    async def test_a_not_null_foreign_key_without_a_parent_is_refused_at_add(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(Post(title="kept"))
            with pytest.raises(ValidationError, match="post_id"):
                session.add(Comment(body="orphan"))
            assert [type(event).__name__ for event in session.journal.pending] == ["Inserted"]
            await session.commit()
        assert await count_rows(engine, Comment) == 0

    async def test_add_all_and_one_to_many_children_are_inserted_with_their_parent(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first, second = Post(title="one"), Post(title="two")
            bob = User(name="Bob", email="bob@example.com", posts=[first, second])
            carol = User(name="Carol", email="carol@example.com")
            session.add_all([bob, carol])
            await session.commit()
            assert first.author_id == bob.id and second.author_id == bob.id
            assert carol.id is not None and carol.id != bob.id
        assert (await stored(engine, Post, second.id)).author_id == bob.id
        assert (await stored(engine, User, carol.id)).email == "carol@example.com"

    async def test_self_referencing_rows_are_inserted_level_by_level(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            root = Category(name="root")
            child = Category(name="child", parent=root)
            leaf = Category(name="leaf", parent=child)
            session.add(leaf)
            await session.commit()
            assert root.parent_id is None
            assert child.parent_id == root.id and leaf.parent_id == child.id
        assert (await stored(engine, Category, leaf.id)).parent_id == child.id
        assert (await stored(engine, Category, child.id)).parent_id == root.id

    async def test_identity_map_gives_one_object_per_key_and_values_survive_commit(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com", age=30)
            session.add(alice)
            await session.commit()
            assert (alice.name, alice.email, alice.age) == ("Alice", "alice@example.com", 30)
            assert await session.get(User, alice.id) is alice
            with pytest.raises(SessionStateError):
                session.add(User(id=alice.id, name="Other", email="other@example.com"))
        other = await stored(engine, User, alice.id)
        assert other is not alice
        assert (other.name, other.email, other.age) == ("Alice", "alice@example.com", 30)

    async def test_adding_a_tracked_object_again_records_nothing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            session.add(alice)
            session.add(alice)
            session.add_all([alice])
            assert len(session.journal) == 1
            assert len(session) == 1

    async def test_add_refuses_none_in_a_not_null_column(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError):
                session.add(User(name=None, email="x@example.com"))  # type: ignore[arg-type]
            assert len(session.journal) == 0

    async def test_flush_writes_inside_the_transaction_and_commit_publishes(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            session.add(alice)
            await session.flush()
            assert alice.id is not None
            assert session.in_transaction()
            assert not session.journal.pending
            assert await stored(engine, User, alice.id) is None
            await session.commit()
            assert not session.in_transaction()
        assert await stored(engine, User, alice.id) is not None

    async def test_assignments_are_flushed_as_updates(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            user.name = "Alicia"
            user.age = 31
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alicia", 31)

    # --- insert / get ---------------------------------------------------------------

    async def test_insert_and_insert_all_write_now(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = await session.insert(User(name="Alice", email="alice@example.com"))
            assert alice.id is not None
            users = await session.insert_all(
                [User(name="Bob", email="bob@example.com"), User(name="Carol", email="carol@example.com")]
            )
            assert [u.name for u in users] == ["Bob", "Carol"]
            assert all(u.id is not None for u in users)
            assert len({alice.id, users[0].id, users[1].id}) == 3
            assert not session.journal.pending
            assert session.in_transaction()
            await session.commit()
        for user in [alice, *users]:
            assert (await stored(engine, User, user.id)).email == user.email

    async def test_get_returns_the_tracked_object_without_a_query(
        self, engine: uow.Engine, alice: User, reads: ReadCounter
    ) -> None:
        async with AsyncSession(engine) as session:
            loaded = await session.get(User, alice.id)
            assert loaded is not None and loaded is not alice
            assert reads.count == 1
            assert await session.get(User, alice.id) is loaded
            assert await session.get_or_raise(User, alice.id) is loaded
            assert await session.get_one(User, alice.id) is loaded
            assert reads.count == 1

    async def test_get_of_a_missing_row(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            assert await session.get(User, 12345) is None
            with pytest.raises(NoResultFound):
                await session.get_or_raise(User, 12345)
            with pytest.raises(NoResultFound):
                await session.get_one(User, 12345)
            with pytest.raises(ValidationError):
                await session.get(User, "not a key")
            with pytest.raises(ModelDefinitionError):
                await session.get(User(name="an instance", email="x@example.com"), 1)  # type: ignore[arg-type]
            with pytest.raises(ModelDefinitionError):
                await session.get(dict, 1)  # type: ignore[type-var]

    async def test_get_does_not_overwrite_unflushed_assignments(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine, autoflush=False) as session:
            user = await session.get_one(User, alice.id)
            user.name = "changed"
            assert await session.get(User, alice.id) is user
            assert user.name == "changed"

    async def test_a_key_given_to_a_table_that_generates_keys_is_never_generated_again(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(User(id=50, name="Given", email="given@example.com"))
            first = await session.insert(User(name="First", email="first@example.com"))
            assert first.id is not None and first.id > 50
            await session.save(User(id=first.id + 10, name="Saved", email="saved@example.com"))
            session.add(User(id=first.id + 5, name="Lower", email="lower@example.com"))  # below the greatest
            second = User(name="Second", email="second@example.com")
            session.add(second)
            await session.commit()
            assert second.id is not None and second.id > first.id + 10
            with pytest.raises(IntegrityError):  # refused: its key is held by no row, and moves nothing
                await session.insert(User(id=second.id + 100, name="Clash", email="first@example.com"))
            third = await session.insert(User(name="Third", email="third@example.com"))
            assert third.id is not None and second.id < third.id < second.id + 100
            await session.commit()
        assert await count_rows(engine, User) == 6

    # --- update -------------------------------------------------------------------------

    async def test_update_sets_values_and_writes_now(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            returned = await session.update(user, name="Alicia", age=40)
            assert returned is user and (user.name, user.age) == ("Alicia", 40)
            assert not session.journal.pending
            assert isinstance(session.journal[-1], Updated)
            assert session.journal[-1].new == {"name": "Alicia", "age": 40}
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alicia", 40)

    async def test_update_with_an_unknown_field_or_a_wrong_type_writes_nothing(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            events = len(session.journal)
            with pytest.raises(ValidationError, match="nickname"):
                await session.update(user, name="Alicia", nickname="Al")
            with pytest.raises(ValidationError):
                await session.update(user, age="old")
            assert (user.name, user.age) == ("Alice", 30)
            assert len(session.journal) == events
            assert not session.is_modified(user)
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alice", 30)

    async def test_update_of_the_primary_key_is_refused_and_changes_nothing(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            with pytest.raises(ValidationError):
                await session.update(user, id=12345, name="Other")
            assert (user.id, user.name) == (alice.id, "Alice")
            assert not session.is_modified(user)
            await session.update(user, age=1)
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 1

    # --- remove / delete ----------------------------------------------------------------

    async def test_remove_deletes_now(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.remove(user)
            assert user not in session
            assert await session.get(User, alice.id) is None
            await session.commit()
        assert await stored(engine, User, alice.id) is None

    async def test_delete_cascades_to_tracked_children_and_sets_null(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            tracked_post = Post(title="tracked", author=alice)
            review = Review(reviewer_id=None, stars=5)
            session.add_all([tracked_post, review])
            await session.flush()
            review.reviewer_id = alice.id
            untracked_post = Post(title="untracked", author_id=alice.id)
            await session.insert(untracked_post)
            await session.commit()
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            post = await session.get_one(Post, tracked_post.id)
            loaded_review = await session.get_one(Review, review.id)
            session.delete(user)
            assert user not in session
            await session.flush()
            assert post not in session
            assert loaded_review in session and loaded_review.reviewer_id is None
            assert not session.is_modified(loaded_review)
            await session.commit()
        assert await stored(engine, User, alice.id) is None
        assert await stored(engine, Post, tracked_post.id) is None
        assert await stored(engine, Post, untracked_post.id) is None
        saved_review = await stored(engine, Review, review.id)
        assert saved_review is not None and saved_review.reviewer_id is None

    async def test_deleting_a_parent_takes_its_new_children_with_it(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            draft = Post(title="draft", author=user)
            session.add(draft)
            session.delete(user)
            await session.commit()
            assert draft not in session and draft.id is None
        assert await stored(engine, User, alice.id) is None
        assert await count_rows(engine, Post) == 0

    async def test_deleting_a_new_parent_takes_the_new_children_waiting_for_its_key(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            parent = User(name="New", email="new@example.com")
            child = Post(title="child", author=parent)
            session.add(child)
            session.delete(parent)
            await session.commit()
            assert child not in session and parent not in session and child.id is None
        assert await count_rows(engine, Post) == 0
        assert await count_rows(engine, User) == 0

    async def test_deleting_a_parent_follows_foreign_keys_assigned_since_the_last_flush(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            bob = await session.insert(User(name="Bob", email="bob@example.com"))
            moved = await session.insert(Post(title="moved", author_id=bob.id))
            stays = await session.insert(Post(title="stays", author_id=alice.id))
            await session.commit()
            moved.author_id = alice.id  # neither assignment is recorded before the delete
            stays.author_id = bob.id
            session.delete(user)
            await session.commit()
            assert moved not in session and stays in session and stays.author_id == bob.id
        assert await stored(engine, Post, moved.id) is None
        assert (await stored(engine, Post, stays.id)).author_id == bob.id

    async def test_assigning_a_relation_moves_the_foreign_key(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            post = await session.insert(Post(title="p", author_id=alice.id))
            bob = await session.insert(User(name="Bob", email="bob@example.com"))
            await session.commit()
            post.author = bob
            await session.flush()
            assert post.author_id == bob.id
            post.author = User(name="Carol", email="carol@example.com")
            await session.commit()
            assert post.author_id is not None and post.author_id not in (alice.id, bob.id)
            carol_id = post.author_id
        assert (await stored(engine, Post, post.id)).author_id == carol_id
        assert (await stored(engine, User, carol_id)).name == "Carol"

    async def test_assigning_none_to_a_relation_empties_the_foreign_key(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            first.author = None
            assert first.author is None and first.author_id == author.id  # until the flush
            await session.flush()
            assert first.author_id is None and first.author is None
            await session.rollback()  # the unlink is undone
            assert first.author_id == author.id
            with pytest.raises(RelationNotLoadedError):
                first.author  # noqa: B018
            second.author = None
            draft = Post(title="Draft", slug="draft", author=User(name="New", email="new@example.com"))
            session.add(draft)
            draft.author = None  # the new author is still added, the draft no longer waits for it
            await session.commit()
            assert second.author_id is None and draft.author_id is None
        assert (await stored(engine, Post, first.id)).author_id == author.id
        assert (await stored(engine, Post, second.id)).author_id is None
        assert (await stored(engine, Post, draft.id)).author_id is None
        assert await count_rows(engine, User) == 2

    async def test_delete_of_an_unsaved_object_writes_nothing(self, engine: uow.Engine, reads: ReadCounter) -> None:
        async with AsyncSession(engine) as session:
            ghost = User(name="Ghost", email="ghost@example.com")
            session.add(ghost)
            session.delete(ghost)
            assert session.plan().batches == ()
            await session.commit()
            assert ghost.id is None
        assert await count_rows(engine, User, email="ghost@example.com") == 0

    async def test_delete_and_add_the_same_unique_value_in_one_flush(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            old = await session.get_one(User, alice.id)
            session.delete(old)
            new = User(name="New Alice", email="alice@example.com")
            session.add(new)
            await session.commit()
            assert new.id is not None and new.id != alice.id
        assert await stored(engine, User, alice.id) is None
        assert (await stored(engine, User, new.id)).name == "New Alice"

    async def test_a_unique_constraint_over_two_columns_refuses_only_the_same_pair(
        self, engine: uow.Engine, alice: User
    ) -> None:
        await engine.create_all(Seat)
        async with AsyncSession(engine) as session:
            bob = await session.insert(User(name="Bob", email="bob@example.com"))
            # the same number for another holder, and seats without a holder, clash with nothing
            session.add_all(
                [
                    Seat(holder_id=alice.id, number=1),
                    Seat(holder_id=alice.id, number=2),
                    Seat(holder_id=bob.id, number=1),
                    Seat(number=1),
                    Seat(number=1),
                ]
            )
            await session.commit()
            session.add(Seat(holder_id=alice.id, number=3))
            session.add(Seat(holder_id=bob.id, number=1, label="again"))
            with pytest.raises(IntegrityError) as refused:
                await session.commit()
            error = refused.value
            assert (error.kind, error.table, error.columns, error.row_index) == (
                "unique",
                "conformance_seats",
                ("holder_id", "number"),
                1,
            )
            assert error.constraint == "conformance_seats_holder_id_number_key"
            assert len(session.journal.pending) == 2  # kept, to fix and flush again
        assert await count_rows(engine, Seat) == 5

    async def test_rows_hand_over_the_values_of_a_unique_constraint_over_two_columns_in_one_flush(
        self, engine: uow.Engine, alice: User
    ) -> None:
        await engine.create_all(Seat)
        async with AsyncSession(engine) as session:
            bob = await session.insert(User(name="Bob", email="bob@example.com"))
            first, second, third, fourth = (
                Seat(holder_id=alice.id, number=1, label="first"),
                Seat(holder_id=alice.id, number=2, label="second"),
                Seat(holder_id=bob.id, number=1, label="third"),
                Seat(holder_id=bob.id, number=2, label="fourth"),
            )
            session.add_all([first, second, third, fourth])
            await session.commit()
            # in the order that would clash: each row takes the pair another gives up after it
            third.holder_id = alice.id  # (bob, 1) -> (alice, 1), by its other column
            first.number = 3  # (alice, 1) -> (alice, 3)
            session.add(Seat(holder_id=bob.id, number=2, label="new"))
            session.delete(fourth)  # gives up (bob, 2)
            await session.commit()
            new = await session.query(Seat).filter(label="new").one()
            # first and new trade numbers, with other holders: neither takes the other's pair
            first.number = 2  # (alice, 3) -> (alice, 2), which second gives up
            new.number = 3  # (bob, 2) -> (bob, 3)
            second.number = 9  # (alice, 2) -> (alice, 9)
            await session.commit()
        async with AsyncSession(engine) as session:
            seats = await session.query(Seat).all()
            pairs = {seat.label: (seat.holder_id, seat.number) for seat in seats}
        assert pairs == {
            "first": (alice.id, 2),
            "second": (alice.id, 9),
            "third": (alice.id, 1),
            "new": (bob.id, 3),
        }

    async def test_rows_trading_the_values_of_a_unique_constraint_over_two_columns_are_refused_before_writing(
        self, engine: uow.Engine, alice: User
    ) -> None:
        await engine.create_all(Seat)
        async with AsyncSession(engine) as session:
            first, second = Seat(holder_id=alice.id, number=1), Seat(holder_id=alice.id, number=2)
            session.add_all([first, second])
            await session.commit()
            first.number, second.number = 2, 1
            with pytest.raises(CycleError, match="swap unique values"):
                await session.flush()
            first.number = 3  # an intermediate value, flushed first, as the error advises
            await session.flush()
            first.number = 2
            await session.commit()
        async with AsyncSession(engine) as session:
            assert {(s.id, s.number) for s in await session.query(Seat).all()} == {(first.id, 2), (second.id, 1)}

    # --- upsert / save ---------------------------------------------------------------------

    async def test_upsert_inserts_when_nothing_conflicts(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = await session.upsert(User(name="Dan", email="dan@example.com", age=20), conflict_target=["email"])
            assert user.id is not None and user in session
            assert isinstance(session.journal[-1], Upserted)
            await session.commit()
        saved = await stored(engine, User, user.id)
        assert (saved.name, saved.age) == ("Dan", 20)

    async def test_upsert_updates_the_row_with_the_same_unique_value(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.upsert(
                User(name="Alicia", email="alice@example.com", age=31), conflict_target=["email"]
            )
            assert user.id == alice.id
            assert (user.name, user.age) == ("Alicia", 31)
            assert await session.get(User, alice.id) is user
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alicia", 31)
        assert await count_rows(engine, User) == 1

    async def test_upsert_on_a_unique_constraint_over_two_columns(self, engine: uow.Engine, alice: User) -> None:
        await engine.create_all(Seat)
        async with AsyncSession(engine) as session:
            taken = await session.insert(Seat(holder_id=alice.id, number=1, label="old"))
            await session.commit()
            # the target in any order of the constraint's columns
            landed = await session.upsert(
                Seat(holder_id=alice.id, number=1, label="new"), conflict_target=("number", "holder_id")
            )
            assert landed is taken and (landed.id, landed.label) == (taken.id, "new")
            other = await session.upsert(
                Seat(holder_id=alice.id, number=2, label="other"), conflict_target=("holder_id", "number")
            )
            assert other.id is not None and other.id != taken.id
            # as in SQL, a NULL in the target conflicts with no row: each is a new one
            loose = await session.upsert_all(
                [Seat(number=1, label="loose"), Seat(number=1, label="loose")], conflict_target=("holder_id", "number")
            )
            assert len({seat.id for seat in loose}) == 2
            await session.commit()
        async with AsyncSession(engine) as session:
            seats = await session.query(Seat).all()
            assert sorted((s.holder_id or 0, s.number, s.label) for s in seats) == [
                (0, 1, "loose"),
                (0, 1, "loose"),
                (alice.id, 1, "new"),
                (alice.id, 2, "other"),
            ]

    async def test_upsert_all_writes_a_parent_before_the_rows_of_the_call_pointing_at_it(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            rows = [
                Category(id=101, name="child", parent_id=100),
                Category(id=102, name="grandchild", parent_id=101),
                Category(id=100, name="root"),
            ]
            upserted = await session.upsert_all(rows)
            assert [c.name for c in upserted] == ["child", "grandchild", "root"]  # in the order given
            await session.commit()
        async with AsyncSession(engine) as session:
            assert {c.id: c.parent_id for c in await session.query(Category).all()} == {100: None, 101: 100, 102: 101}
            # rows pointing at each other in a cycle: only PostgreSQL would take them in one statement
            cycle = [Category(id=201, name="a", parent_id=202), Category(id=202, name="b", parent_id=201)]
            with pytest.raises(CycleError, match="point at each other in a cycle"):
                await session.upsert_all(cycle)
            assert await session.query(Category).count() == 3 and not session.journal.pending

    async def test_new_objects_with_given_keys_pointing_at_each_other_hold_each_others_key(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            first, second = Category(id=301, name="first"), Category(id=302, name="second")
            first.parent, second.parent = second, first  # a cycle the flush breaks with a follow-up update
            session.add_all([first, second])
            assert (first.parent_id, second.parent_id) == (302, 301)  # known at once: given keys
            await session.commit()
            assert (first.parent_id, second.parent_id) == (302, 301)
            assert replay(session.journal.flushed, [table_info(Category)])["conformance_categories"] == {
                301: {"id": 301, "name": "first", "parent_id": 302},
                302: {"id": 302, "name": "second", "parent_id": 301},
            }
            await session.remove(first)  # the database cascades to second, and so does the session
            assert second not in session
            await session.commit()
        assert await count_rows(engine, Category) == 0

    async def test_upsert_on_a_null_unique_value_inserts_beside_a_tracked_row_holding_null(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            untitled = await session.insert(Post(title="untitled", slug=None))
            await session.commit()
            again = await session.upsert(Post(title="again", slug=None), conflict_target="slug")
            assert again is not untitled and again.id != untitled.id
            assert untitled.title == "untitled"
            await session.commit()
        assert await count_rows(engine, Post) == 2

    async def test_upsert_writes_the_key_of_the_parent_its_relation_holds(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            author = await session.get_one(User, alice.id)
            post = await session.upsert(Post(title="Linked", slug="linked", author=author), conflict_target=["slug"])
            assert post.author_id == alice.id
            pending = await session.query(Post).count()
            with pytest.raises(SessionStateError, match="add or insert the parent first"):
                await session.upsert(
                    Post(title="Orphan", slug="orphan", author=User(name="New", email="new@example.com")),
                    conflict_target=["slug"],
                )
            assert await session.query(Post).count() == pending  # refused before anything was written
            await session.commit()
            saved = await session.save(Post(title="Saved", slug="saved", author=User(name="N", email="n@example.com")))
            await session.commit()  # a save of a new row inserts, bringing its new parent along
            assert saved.author_id is not None
        assert (await stored(engine, Post, post.id)).author_id == alice.id
        assert await count_rows(engine, User) == 2

    async def test_upsert_updates_only_update_fields(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.upsert(
                User(name="Ignored", email="alice@example.com", age=50),
                conflict_target=["email"],
                update_fields=["age"],
            )
            assert user.id == alice.id and (user.name, user.age) == ("Alice", 50)
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alice", 50)

    async def test_upsert_with_no_update_fields_leaves_the_row_alone(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.upsert(
                User(name="Ignored", email="alice@example.com", age=50), conflict_target=["email"], update_fields=()
            )
            assert (user.name, user.age) == ("Alice", 30)
            await session.commit()
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.age) == ("Alice", 30)

    async def test_upsert_lands_on_the_tracked_object(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            tracked = await session.get_one(User, alice.id)
            result = await session.upsert(
                User(name="Alicia", email="alice@example.com", age=30), conflict_target=["email"]
            )
            assert result is tracked and tracked.name == "Alicia"
            assert not session.is_modified(tracked)
            await session.commit()

    async def test_upsert_lands_on_the_tracked_object_that_took_the_value_since(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            tracked = await session.get_one(User, alice.id)
            await session.upsert(User(name="Bob", email="bob@example.com"), conflict_target=["email"])
            tracked.email = "alicia@example.com"  # flushed by the next upsert
            result = await session.upsert(
                User(name="Alicia", email="alicia@example.com", age=31), conflict_target=["email"]
            )
            assert result is tracked and (tracked.name, tracked.age) == ("Alicia", 31)
            upserted = session.journal[-1]
            assert isinstance(upserted, Upserted) and upserted.old is not None
            assert (upserted.old["name"], upserted.old["email"]) == ("Alice", "alicia@example.com")
            other = await session.upsert(User(name="Other", email="alice@example.com"), conflict_target=["email"])
            assert other is not tracked and other.id != alice.id  # the old value names it no more

            savepoint = await session.begin_nested()
            tracked.email = "changed@example.com"
            await session.flush()
            await savepoint.rollback()
            assert tracked.email == "alicia@example.com"
            again = await session.upsert(User(name="Again", email="alicia@example.com"), conflict_target=["email"])
            assert again is tracked and tracked.name == "Again"
            await session.rollback()  # every upsert undone on the object it landed on
            assert (tracked.name, tracked.email, tracked.age) == ("Alice", "alice@example.com", 30)
        saved = await stored(engine, User, alice.id)
        assert (saved.name, saved.email) == ("Alice", "alice@example.com")
        assert await count_rows(engine, User) == 1

    async def test_upsert_lands_on_an_object_added_in_the_session(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.upsert(User(name="Bob", email="bob@example.com"), conflict_target=["email"])
            added = User(name="Carol", email="carol@example.com")
            session.add(added)
            result = await session.upsert(User(name="Caroline", email="carol@example.com"), conflict_target=["email"])
            assert result is added and added.name == "Caroline" and added.id is not None
            upserted = session.journal[-1]
            assert isinstance(upserted, Upserted) and upserted.old is not None and upserted.old["name"] == "Carol"
            await session.rollback()
            assert added not in session and added.name == "Carol"
        assert await count_rows(engine, User) == 0

    async def test_upsert_all_takes_both_paths_in_one_call(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            users = await session.upsert_all(
                [
                    User(name="Alicia", email="alice@example.com", age=1),
                    User(name="Eve", email="eve@example.com", age=2),
                ],
                conflict_target=("email",),
            )
            assert users[0].id == alice.id and users[0].name == "Alicia"
            assert users[1].id is not None and users[1].id != alice.id
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Alicia"
        assert (await stored(engine, User, users[1].id)).name == "Eve"

    async def test_the_journal_knows_the_key_of_the_row_each_upsert_landed_on(
        self, engine: uow.Engine, alice: User
    ) -> None:
        users = table_info(User)
        async with AsyncSession(engine) as session:
            _, eve = await session.upsert_all(
                [User(name="Alicia", email="alice@example.com"), User(name="Eve", email="eve@example.com")],
                conflict_target=("email",),
            )
            updating, inserting = session.journal[-2:]
            assert session.journal.key_of(updating) == alice.id  # type: ignore[arg-type]
            assert session.journal.key_of(inserting) == eve.id  # type: ignore[arg-type]
            await session.commit()
            before = {users.name: {alice.id: {"id": alice.id, "name": "Alice", "email": alice.email, "age": 30}}}
            replayed = replay(
                session.journal, {users.name: users}, base=before, generated_keys=session.journal.generated_keys
            )
        assert replayed[users.name] == {
            alice.id: {"id": alice.id, "name": "Alicia", "email": alice.email, "age": 0},
            eve.id: {"id": eve.id, "name": "Eve", "email": "eve@example.com", "age": 0},
        }

    async def test_a_refused_upsert_or_bulk_insert_leaves_every_other_object_tracked(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            with pytest.raises(IntegrityError):  # its key is taken: the insert never happens
                await session.bulk_insert(User, [{"id": alice.id, "name": "Other", "email": "other@example.com"}])
            with pytest.raises(IntegrityError):
                await session.upsert(User(id=alice.id, name="Other", email="other@example.com"), ["email"])
            assert user in session and await session.get(User, alice.id) is user
            user.name = "kept"
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "kept"

    async def test_a_refused_upsert_writes_nothing_of_what_was_pending(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            pending = User(name="Pending", email="pending@example.com")
            session.add(pending)
            with pytest.raises(ValidationError):
                await session.upsert(User(name="Bad", email="bad@example.com", age="old"))  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="primary key"):
                await session.upsert(User(id=100, name="A", email="a@example.com"), ["email"], update_fields=["id"])
            with pytest.raises(ValidationError, match="neither the primary key nor Unique"):
                await session.upsert(User(name="A", email="a@example.com"), "name")  # no unique index to conflict on
            assert len(session.journal.pending) == 1 and not session.journal.flushed
            assert await count_rows(engine, User) == 0
            await session.upsert(Post(title="First", author=pending))  # a parent added before: flushed first
            await session.commit()
            assert pending.id is not None
        assert await count_rows(engine, User) == 1 and await count_rows(engine, Post) == 1

    async def test_upsert_refuses_an_unknown_column(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError):
                await session.upsert(User(name="A", email="a@example.com"), conflict_target=["nickname"])
            with pytest.raises(ValidationError):
                await session.upsert(
                    User(name="A", email="a@example.com"), conflict_target=["email"], update_fields=["nickname"]
                )

    async def test_save_inserts_or_updates_by_primary_key(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            fresh = await session.save(User(name="Frank", email="frank@example.com"))
            assert fresh.id is not None
            updated = await session.save(User(id=alice.id, name="Alicia", email="alice@example.com", age=99))
            assert updated.id == alice.id and updated.age == 99
            both = await session.save_all(
                [
                    User(id=alice.id, name="Alice again", email="alice@example.com", age=1),
                    User(name="Grace", email="grace@example.com"),
                ]
            )
            assert both[0].id == alice.id and both[1].id is not None
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Alice again"
        assert (await stored(engine, User, fresh.id)).name == "Frank"
        assert (await stored(engine, User, both[1].id)).name == "Grace"

    # --- bulk operations ---------------------------------------------------------------------

    async def test_bulk_insert_writes_rows_without_tracking_them(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            count = await session.bulk_insert(
                User,
                [
                    {"name": "A", "email": "a@example.com", "age": 1},
                    {"name": "B", "email": "b@example.com"},
                    User(name="C", email="c@example.com", age=1),
                ],
            )
            assert count == 3
            assert len(session) == 0
            assert sum(isinstance(e, Inserted) for e in session.journal) == 3
            with pytest.raises(ValidationError, match="nickname"):
                await session.bulk_insert(User, [{"name": "D", "email": "d@example.com", "nickname": "d"}])
            await session.commit()
        assert await count_rows(engine, User) == 3
        assert await count_rows(engine, User, age=1) == 2

    async def test_bulk_update_counts_rows_and_updates_tracked_objects(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            one, two, three = await session.insert_all(
                [
                    User(name="one", email="1@example.com", age=1),
                    User(name="two", email="2@example.com", age=1),
                    User(name="three", email="3@example.com", age=2),
                ]
            )
            await session.commit()
        async with AsyncSession(engine) as session:
            loaded_one = await session.get_one(User, one.id)
            loaded_three = await session.get_one(User, three.id)
            changed = await session.bulk_update(User, {"name": "adult"}, age=1)
            assert changed == 2
            assert loaded_one.name == "adult" and loaded_three.name == "three"
            assert not session.is_modified(loaded_one)
            assert isinstance(session.journal[-1], BulkUpdated)
            assert await session.bulk_update(User, {"age": 5}, age=99) == 0
            await session.commit()
        assert (await stored(engine, User, two.id)).name == "adult"
        assert (await stored(engine, User, three.id)).name == "three"

    async def test_tables_referencing_each_other_are_created_filled_and_dropped(self, engine: uow.Engine) -> None:
        for _ in range(2):  # create_all again is a no-op, and after drop_all creates them anew
            await engine.create_all(Employee, Department)
            await engine.create_all(Department, Employee)
            async with AsyncSession(engine) as session:
                sales = Department(name="Sales")
                head = Employee(name="Ann", department=sales)
                sales.head = head
                session.add(sales)
                await session.commit()  # the planner breaks the cycle through the nullable head_id
                assert sales.head_id == head.id and head.department_id == sales.id
            with pytest.raises(IntegrityError):  # the foreign keys are there
                async with AsyncSession(engine) as session:
                    await session.insert(Employee(name="Nobody", department_id=sales.id + 1000))
            await engine.drop_all(Employee, Department)  # rows pointing both ways do not stop it
            async with AsyncSession(engine) as session:
                with pytest.raises(StorageError):
                    await session.query(Department).count()

    async def test_a_refused_delete_of_a_referenced_row_names_the_referencing_key(self, engine: uow.Engine) -> None:
        await engine.create_all(Employee, Department)
        async with AsyncSession(engine) as session:
            sales = Department(name="Sales")
            session.add(Employee(name="Ann", department=sales))
            await session.commit()
        for delete in ("remove", "bulk_delete"):
            async with AsyncSession(engine) as session:
                with pytest.raises(IntegrityError) as refused:
                    if delete == "remove":
                        await session.remove(await session.get_one(Department, sales.id))
                    else:
                        await session.bulk_delete(Department, name="Sales")
                error = refused.value
                assert (error.kind, error.table, error.columns) == (
                    "foreign_key",
                    "conformance_employees",
                    ("department_id",),
                )
        assert (await stored(engine, Department, sales.id)).name == "Sales"

    async def test_a_table_another_references_is_not_dropped_without_it(self, engine: uow.Engine) -> None:
        await engine.create_all(Employee, Department)
        async with AsyncSession(engine) as session:
            session.add(Employee(name="Ann", department=Department(name="Sales")))
            await session.commit()
        with pytest.raises(StorageError) as refused:
            await engine.drop_all(Employee)  # the departments' head_id references it
        assert refused.value.sqlstate == "2BP01"
        async with AsyncSession(engine) as session:
            assert await session.query(Employee).count() == 1 == await session.query(Department).count()

    async def test_a_bulk_update_to_a_missing_parent_names_the_foreign_key(self, engine: uow.Engine) -> None:
        await engine.create_all(Employee, Department)
        async with AsyncSession(engine) as session:
            session.add(Employee(name="Ann", department=Department(name="Sales")))
            await session.commit()
            updates: list[Callable[[], Awaitable[int]]] = [
                lambda: session.bulk_update(Employee, {"department_id": 999}, name="Ann"),
                lambda: session.query(Employee).filter(name="Ann").update(department_id=999),
            ]
            for update in updates:
                with pytest.raises(IntegrityError) as refused:
                    await update()
                error = refused.value
                assert (error.kind, error.table, error.columns, error.row_index) == (
                    "foreign_key",
                    "conformance_employees",
                    ("department_id",),
                    None,  # a bulk update sends no rows of a batch to point at
                )
                assert isinstance(error.event, BulkUpdated)

    async def test_a_bulk_delete_counts_the_rows_it_matched_also_where_one_cascades_to_another(
        self, engine: uow.Engine
    ) -> None:
        for delete in ("bulk_delete", "query"):
            async with AsyncSession(engine) as session:
                root = Category(name="gone")
                child = Category(name="gone", parent=root)
                session.add(Category(name="kept", parent=child))  # deleted by the cascade, not matched
                await session.commit()
                if delete == "bulk_delete":
                    count = await session.bulk_delete(Category, name="gone")
                else:
                    count = await session.query(Category).filter(name="gone").delete()
                assert count == 2
                await session.commit()
            assert await count_rows(engine, Category) == 0

    async def test_a_bulk_delete_leaves_the_cascade_to_tracked_children_to_the_database(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            a, b = Category(name="a"), Category(name="b")
            c = Category(name="c", parent=b)
            session.add_all([a, b, c])
            await session.flush()
            a.parent, b.parent = b, a  # a <-> b, c -> b: deleting a first would take b with it
            await session.commit()
            assert await session.bulk_delete(Category, name="b") == 1  # the row it matched
            assert a not in session and c not in session  # cascaded, in the session too
            await session.commit()
        assert await count_rows(engine, Category) == 0

    async def test_a_bulk_update_computes_each_rows_value_from_its_own(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            rich, poor = Account(owner="rich", balance=100), Account(owner="poor", balance=5)
            session.add_all([rich, poor])
            await session.commit()
            changed = await session.query(Account).update(balance=Account.balance - 10)
            assert changed == 2
            # tracked objects take what the database computed, their versions bumped
            assert (rich.balance, poor.balance, rich.version) == (90, -5, 2)
            assert session.is_modified(rich) is False
            await session.rollback()
            assert (rich.balance, poor.balance, rich.version) == (100, 5, 1)
            await session.bulk_update(Account, {"balance": Account.balance * 3}, owner="poor")
            await session.commit()
            journal = session.journal
            replayed = replay(journal.flushed, [table_info(Account)], generated_keys=journal.generated_keys)
        assert (await stored(engine, Account, poor.id)).balance == 15
        assert (await stored(engine, Account, rich.id)).balance == 100
        assert replayed["conformance_accounts"][poor.id]["balance"] == 15

    async def test_concurrent_decrements_computed_by_the_database_both_count(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as first, AsyncSession(engine) as second:
            account = Account(owner="shared", balance=10)
            first.add(account)
            await first.commit()
            held = await second.get_one(Account, account.id)
            await second.commit()  # the second session holds the row as it was: 10
            await first.query(Account).filter(id=account.id).update(balance=Account.balance - 1)
            await first.commit()
            await second.query(Account).filter(id=account.id).update(balance=Account.balance - 1)
            # the object the second session held at 10 takes what the database computed, not 10 - 1
            assert (held.balance, held.version) == (8, 3) and not second.is_modified(held)
            await second.commit()
        assert (await stored(engine, Account, account.id)).balance == 8

    async def test_an_object_the_database_updated_and_the_session_did_not_match_is_expired(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            account = Account(owner="moved", balance=5)
            session.add(account)
            await session.commit()
            async with AsyncSession(engine) as other:
                (await other.get_one(Account, account.id)).balance = 50
                await other.commit()
            # the session holds 5, which the filter does not match; the database holds 50, which it does
            assert await session.query(Account).filter(balance__gt=10).update(balance=Account.balance - 1) == 1
            assert account.balance == 5
            assert (await session.get_one(Account, account.id)).balance == 49  # expired: read again

    async def test_computed_values_keep_exact_decimals_floats_and_nulls(self, engine: uow.Engine) -> None:
        sample = _sample(amount=decimal.Decimal("0.10"), ratio=0.5, count=None)
        async with AsyncSession(engine) as session:
            session.add(sample)
            await session.commit()
            await session.query(Sample).update(
                amount=Sample.amount * decimal.Decimal("3"), ratio=Sample.ratio + 0.25, count=col(Sample.count) + 1
            )
            await session.commit()
            assert (sample.amount, sample.ratio, sample.count) == (decimal.Decimal("0.30"), 0.75, None)
        saved = await stored(engine, Sample, sample.id)
        assert (saved.amount, saved.ratio, saved.count) == (decimal.Decimal("0.30"), 0.75, None)

    async def test_a_computed_float_that_is_no_number_or_too_small_writes_nothing(self, engine: uow.Engine) -> None:
        infinite, tiny = _sample(ratio=float("inf")), _sample(ratio=1e-200)
        async with AsyncSession(engine) as session:
            session.add_all([infinite, tiny])
            await session.commit()
            for values, key in (
                ({"ratio": col(Sample.ratio) * 0.0}, infinite.id),  # inf * 0 is NaN
                ({"ratio": col(Sample.ratio) - float("inf")}, infinite.id),
                ({"ratio": col(Sample.ratio) * 1e-200}, tiny.id),  # below a float's range
            ):
                with pytest.raises(StorageError) as refused:
                    await session.bulk_update(Sample, values, id=key)
                assert refused.value.sqlstate == "22003"
                await session.rollback()
        assert (await stored(engine, Sample, infinite.id)).ratio == float("inf")
        assert (await stored(engine, Sample, tiny.id)).ratio == 1e-200

    async def test_a_computed_value_out_of_range_writes_nothing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            almost = Account(owner="almost", balance=2**63 - 2)
            full = Account(owner="full", balance=2**63 - 1)
            session.add_all([almost, full])
            await session.commit()
            with pytest.raises(StorageError) as refused:
                await session.query(Account).update(balance=Account.balance + 1)
            assert refused.value.sqlstate == "22003"
            await session.rollback()
            assert (almost.balance, full.balance) == (2**63 - 2, 2**63 - 1)
        assert (await stored(engine, Account, almost.id)).balance == 2**63 - 2

    async def test_column_arithmetic_that_cannot_hold_is_refused_before_anything_is_written(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            session.add(_sample())
            await session.commit()
            refused: list[dict[str, Any]] = [
                {"label": col(Sample.label) + "x"},  # not a number
                {"count": Sample.ratio + 1},  # a float into an int
                {"amount": Sample.amount - 0.1},  # type: ignore[operator]  # a float for a decimal
                {"count": col(Sample.count) + None},
                {"count": col(Sample.count) + "1"},  # type: ignore[operator]
            ]
            for values in refused:
                with pytest.raises(ValidationError):
                    await session.bulk_update(Sample, values)
            shapes: list[Callable[[], object]] = [
                lambda: col(Sample.count) + col(Sample.count),  # type: ignore[operator]
                lambda: (col(Sample.count) + 1) * 2,
                lambda: col(Sample.ratio) / 2,
                lambda: -col(Sample.ratio),
            ]
            for shape in shapes:
                with pytest.raises(QueryError):
                    shape()
            with pytest.raises(QueryError, match="operator"):  # built by hand, the operator is checked
                await session.bulk_update(Sample, {"count": ColumnMath("count", "/", 2)})  # type: ignore[arg-type]
            with pytest.raises(QueryError, match="a column of conformance_users"):
                await session.bulk_update(Sample, {"count": col(User.age) + 1})
            with pytest.raises(ValidationError, match="no column 'nope'"):
                await session.bulk_update(Sample, {"nope": col(Sample.count) + 1})
            with pytest.raises(QueryError):
                await session.bulk_update(Sample, {"count": 1 - col(Sample.count)})
            assert not session.journal.pending and len(session.journal) == 1

    async def test_a_bulk_update_setting_nothing_is_refused_before_anything_is_written(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.insert(User(name="kept", email="kept@example.com"))
            await session.commit()
            user.age = 40
            for update in (session.bulk_update(User, {}, name="kept"), session.query(User).update()):
                with pytest.raises(ValidationError, match="at least one column"):
                    await update
            assert session.is_modified(user) and session.journal.pending == ()
            await session.commit()
        assert (await stored(engine, User, user.id)).age == 40

    async def test_bulk_delete_counts_rows_and_untracks_objects(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            one, two, three = await session.insert_all(
                [
                    User(name="one", email="1@example.com", age=1),
                    User(name="two", email="2@example.com", age=1),
                    User(name="three", email="3@example.com", age=2),
                ]
            )
            await session.commit()
        async with AsyncSession(engine) as session:
            loaded_one = await session.get_one(User, one.id)
            loaded_three = await session.get_one(User, three.id)
            assert await session.bulk_delete(User, age=1) == 2
            assert loaded_one not in session and loaded_three in session
            assert await session.get(User, one.id) is None
            assert isinstance(session.journal[-1], BulkDeleted)
            await session.commit()
        assert await stored(engine, User, two.id) is None
        assert await stored(engine, User, three.id) is not None

    async def test_a_deleted_object_still_referenced_by_a_relation_is_not_inserted_again(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            _, first, second = await _committed_author_with_two_posts(session)
            session.delete(first)  # still in author.posts
            await session.commit()
            second.title = "Second, edited"
            await session.commit()
            assert first not in session
            assert [type(e).__name__ for e in session.journal[-2:]] == ["Deleted", "Updated"]
        assert await stored(engine, Post, first.id) is None

    async def test_an_expunged_object_still_referenced_by_a_relation_is_not_inserted_again(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            session.expunge(author)  # still first.author and second.author
            session.expunge(second)  # still in author.posts
            first.title = "First, edited"
            await session.commit()
            assert author not in session and second not in session
            assert first.author is author and first.author_id == author.id
            assert [type(e).__name__ for e in session.journal[-1:]] == ["Updated"]
            again = await session.get(User, author.id)
            assert again is not None and again is not author
        assert await count_rows(engine, User) == 1
        assert await count_rows(engine, Post) == 2

    async def test_a_rollback_unloads_relations_that_held_objects_it_let_go_of(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com")
            post = Post(title="Post", slug="post", author=author)
            author.posts = [post]
            session.add(author)
            await session.commit()
            post.author = User(name="Newcomer", email="new@example.com")
            author.posts = [Post(title="Added", slug="added")]
            await session.flush()
            await session.rollback()
            assert post.author_id == author.id
            with pytest.raises(RelationNotLoadedError):
                post.author  # noqa: B018
            with pytest.raises(RelationNotLoadedError):
                author.posts  # noqa: B018
            post.title = "Kept"
            await session.commit()  # writes the title, and nothing the rollback undid
            assert [type(e).__name__ for e in session.journal[-1:]] == ["Updated"]
        assert await count_rows(engine, User) == 1
        assert await count_rows(engine, Post) == 1
        assert (await stored(engine, Post, post.id)).title == "Kept"

    async def test_a_child_and_its_new_parent_added_again_after_a_rollback_are_both_inserted(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email=alice.email)  # taken: the flush fails
            post = Post(title="Retried", slug="retried", author=author)
            session.add(post)
            with pytest.raises(IntegrityError):
                await session.flush()
            await session.rollback()
            author.email = "author@example.com"
            session.add(post)  # the retry brings its author along again
            await session.commit()
            assert author.id is not None and post.author_id == author.id
        assert (await stored(engine, Post, post.id)).author_id == author.id

    async def test_a_new_parent_added_again_after_a_rollback_brings_its_listed_children(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email=alice.email, posts=[Post(title="Given", slug="given")])
            session.add(author)
            author.posts.append(Post(title="Appended", slug="appended"))
            with pytest.raises(IntegrityError):
                await session.flush()  # the email is taken
            await session.rollback()
            assert [post.title for post in author.posts] == ["Given", "Appended"]
            author.email = "author@example.com"
            session.add(author)  # the retry brings its children along again
            await session.commit()
        assert await count_rows(engine, Post, author_id=author.id) == 2

    async def test_assigning_an_expunged_object_links_its_row_without_inserting_it(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            other = await session.get_one(User, alice.id)
            session.expunge(other)
            post = Post(title="Linked", slug="linked")
            session.add(post)
            await session.commit()
            post.author = other  # forgotten by the session, but its row is there
            await session.commit()
            assert post.author_id == alice.id and other not in session
        assert await count_rows(engine, User) == 1
        assert (await stored(engine, Post, post.id)).author_id == alice.id

    async def test_a_rolled_back_move_to_another_parent_is_not_written_again(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first = User(name="First", email="first@example.com")
            second = User(name="Second", email="second@example.com")
            post = Post(title="Moves", slug="moves", author=first)
            session.add_all([post, second])
            await session.commit()
            post.author = second
            await session.flush()
            await session.rollback()  # the move was flushed, then undone
            assert post.author_id == first.id
            async with session.begin_nested() as savepoint:
                post.author = second  # assigned, not flushed
                await savepoint.rollback()
            assert post.author_id == first.id
            with pytest.raises(RelationNotLoadedError):
                post.author  # noqa: B018
            await session.commit()
            post.author = second  # assigning it again moves it
            await session.commit()
        assert (await stored(engine, Post, post.id)).author_id == second.id

    async def test_children_moved_or_unlinked_through_their_relation_outlive_their_deleted_parent(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            other = User(name="Other", email="other@example.com")
            first.author = other  # a move, not flushed: the new author comes along
            second.author = None  # an unlink, not flushed
            session.delete(author)  # its posts cascade, but these two left it first
            await session.commit()
            assert first in session and second in session and author not in session
            assert first.author_id == other.id and second.author_id is None
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id is None
        assert await count_rows(engine, User) == 1

    async def test_a_foreign_key_assigned_over_a_loaded_relation_moves_the_child(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second, other = await _committed_author_two_posts_and_other(session)
            first.author_id = other.id  # the relation still holds author: the assignment is newer
            await session.update(second, author_id=other.id)
            assert second.author is other
            await session.commit()
            assert first.author_id == other.id and first.author is other
            first.title = "Changed"  # a later flush does not write the old parent back
            await session.commit()
            merged = await session.merge(Post(id=first.id, author_id=author.id, title="Merged", slug="first"))
            assert merged is first
            await session.commit()
            assert first.author_id == author.id and first.author is author
        assert (await stored(engine, Post, first.id)).author_id == author.id
        assert (await stored(engine, Post, second.id)).author_id == other.id

    async def test_a_key_given_to_a_child_read_without_a_parent_loads_that_parent(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com")
            orphan = Post(title="Orphan", slug="orphan")
            session.add_all([author, orphan])
            await session.commit()
            await session.query(Post).filter(id=orphan.id).include(Post.author).one()
            assert orphan.author is None
            orphan.author_id = author.id
            await session.commit()
            assert orphan.author is author
            moved = Post(title="Moved", slug="moved", author=author)
            session.add(moved)
            await session.commit()
            other = User(name="Other", email="other@example.com")
            moved.author_id = None  # assigned together with the relation: the relation wins
            moved.author = other
            await session.commit()
            assert moved.author is other and moved.author_id == other.id
        assert (await stored(engine, Post, orphan.id)).author_id == author.id
        assert (await stored(engine, Post, moved.id)).author_id == other.id

    async def test_a_relation_assigned_after_its_key_wins_even_naming_the_same_parent(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            first.author_id = other.id
            first.author = author  # assigned after the key: the relation wins
            await session.commit()
            assert first.author_id == author.id and first.author is author
        assert (await stored(engine, Post, first.id)).author_id == author.id

    async def test_a_key_given_to_a_new_child_waiting_for_a_new_parent_wins(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            author = await session.get_one(User, alice.id)
            waited = User(name="Waited", email="waited@example.com")
            post = Post(title="Post", slug="post", author=waited)
            session.add(post)  # waits for the new author's key
            await session.update(post, author_id=alice.id)
            assert post.author_id == alice.id and post.author is author
            again = Post(title="Again", slug="again", author=User(name="Other", email="other@example.com"))
            session.add(again)
            again.author_id = alice.id  # assigned after the add: the newer word
            await session.commit()
            assert again.author_id == alice.id
        assert (await stored(engine, Post, post.id)).author_id == alice.id
        assert (await stored(engine, Post, again.id)).author_id == alice.id

    async def test_assigning_a_child_the_deleted_parent_it_already_had_is_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            session.delete(author)
            first.author = author  # an assignment of a deleted object, though the key already names it
            with pytest.raises(SessionStateError, match="deleted in this session"):
                await session.flush()
            first.author = None
            await session.commit()  # the other post cascades; the unlinked one stays
            assert first in session and second not in session and first.author_id is None
        assert (await stored(engine, Post, first.id)).author_id is None
        assert await count_rows(engine, Post) == 1

    async def test_a_child_moved_off_by_its_key_outlives_its_deleted_parent(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            first.author_id = other.id  # first.author still holds author
            session.delete(author)  # the other post cascades; first left it by its key
            await session.commit()
            assert first in session and first.author is other
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert await count_rows(engine, Post) == 1

    async def test_a_rollback_takes_back_children_appended_to_a_list_and_not_flushed(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
            author.posts.append(Post(title="Third", slug="third"))  # not flushed
            await session.rollback()
            with pytest.raises(RelationNotLoadedError):
                author.posts  # noqa: B018
            author.age = 41  # the next flush looks at the author again
            await session.commit()
            async with session.begin_nested() as savepoint:
                await session.query(User).filter(id=author.id).include(User.posts).one()
                author.posts.append(Post(title="Fourth", slug="fourth"))
                await savepoint.rollback()
            with pytest.raises(RelationNotLoadedError):
                author.posts  # noqa: B018
            await session.commit()
        assert await count_rows(engine, Post) == 2

    async def test_merge_assigns_the_parents_the_copy_holds(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            _, first, second, other = await _committed_author_two_posts_and_other(session)
            moved = await session.merge(Post(id=first.id, title="First", slug="first", author=other))
            newcomer = User(name="New", email="new@example.com")
            linked = await session.merge(Post(id=second.id, title="Second", slug="second", author=newcomer))
            await session.commit()
            assert moved is first and first.author is other and first.author_id == other.id
            assert linked is second and newcomer.id is not None and second.author_id == newcomer.id
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id == newcomer.id

    async def test_merge_merges_a_copy_of_a_parent_rather_than_inserting_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine) as session:
            parent_copy = User(id=author.id, name="Renamed", email=author.email)
            post = await session.merge(Post(id=first.id, title="First", slug="first", author=parent_copy))
            await session.commit()
            tracked = await session.get_one(User, author.id)
            assert post.author is tracked and tracked is not parent_copy and tracked.name == "Renamed"
        assert await count_rows(engine, User) == 1
        assert (await stored(engine, User, author.id)).name == "Renamed"

    async def test_merge_brings_in_the_list_of_children_a_copy_holds(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second, other = await _committed_author_two_posts_and_other(session)
        async with AsyncSession(engine) as session:
            copy = User(id=other.id, name="Other", email=other.email)
            post_copy = Post(id=first.id, title="Moved", slug="first", author=copy)  # points back at the copy
            copy.posts = [post_copy, Post(title="Third", slug="third")]
            merged = await session.merge(copy)
            await session.commit()
            assert [post.title for post in merged.posts] == ["Moved", "Third"]
            assert all(post.author is merged for post in merged.posts)
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id == author.id  # left out: not an orphan here
        assert await count_rows(engine, Post, author_id=other.id) == 2

    async def test_rows_moved_by_a_bulk_update_or_elsewhere_stay_moved(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            _, first, second, other = await _committed_author_two_posts_and_other(session)
            assert await session.bulk_update(Post, {"author_id": other.id}, slug="first") == 1
            assert first.author_id == other.id and first.author is other
            first.title = "Changed"
            await session.commit()
            async with AsyncSession(engine) as elsewhere:
                await elsewhere.update(await elsewhere.get_one(Post, second.id), author_id=other.id)
                await elsewhere.commit()
            await session.refresh(second)
            assert second.author_id == other.id and second.author is other
            second.title = "Changed too"
            await session.commit()
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id == other.id

    async def test_a_refused_add_keeps_a_move_assigned_through_another_relation(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            _, first, _ = await _committed_author_with_two_posts(session)
            newcomer = User(name="Newcomer", email="new@example.com")
            first.author = newcomer  # not flushed
            with pytest.raises(ValidationError):
                session.add(User(name=None, email="refused@example.com"))  # type: ignore[arg-type]
            assert first.author is newcomer  # the refused add took back only what it recorded
            await session.commit()
            assert newcomer.id is not None and first.author_id == newcomer.id
        assert (await stored(engine, Post, first.id)).author_id == newcomer.id

    async def test_a_refused_insert_keeps_a_move_recorded_before_it(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            _, first, _ = await _committed_author_with_two_posts(session)
            newcomer = User(name="Newcomer", email="new@example.com")
            first.author = newcomer  # recorded by the insert below, which then fails
            with pytest.raises(IntegrityError):
                await session.insert(User(name="Taken", email=alice.email))
            assert first.author is newcomer and newcomer in session
            await session.commit()
            assert first.author is newcomer and first.author_id == newcomer.id
        assert (await stored(engine, Post, first.id)).author_id == newcomer.id

    async def test_a_rollback_unloads_a_list_holding_an_object_read_from_a_row_it_removes(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            other = await session.insert(User(name="Other", email="other@example.com"))
            await session.commit()
            await session.bulk_insert(Post, [{"title": "Bulk", "slug": "bulk", "author_id": author.id}])
            await session.bulk_update(Post, {"author_id": other.id}, slug="bulk")  # a row no object tracks
            await session.query(User).filter(id=other.id).include(User.posts).one()
            [bulk] = other.posts
            await session.rollback()
            assert bulk not in session
            with pytest.raises(RelationNotLoadedError):
                other.posts  # noqa: B018
            assert first.author is author and second.author is author  # links the rollback did not touch
            loaded = await session.query(User).filter(id=other.id).include(User.posts).one()
            assert loaded is other and other.posts == []

    async def test_a_relation_pointing_a_live_object_at_a_deleted_one_is_refused_before_anything_is_written(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            first.author = other
            session.delete(other)  # after the move was assigned, before it was flushed
            with pytest.raises(SessionStateError, match=r"Post.author holds User id=.*deleted in this session"):
                await session.flush()
            first.author = author  # the move is given up: the delete goes ahead
            await session.flush()
            assert other not in session
            first.author = other  # deleted and flushed
            with pytest.raises(SessionStateError, match="deleted in this session"):
                await session.flush()
            first.author = author
            with pytest.raises(SessionStateError, match="deleted in this session"):
                session.add(Post(title="Orphan", slug="orphan", author=other))
            await session.commit()
            first.author = other  # its delete is committed: no longer tracked, still refused
            with pytest.raises(SessionStateError, match="deleted in this session"):
                await session.commit()
            first.author = author
            await session.commit()
            loose = Post(title="Loose", slug="loose")  # no author: its foreign key is None
            ghost = User(name="Ghost", email="ghost@example.com")
            session.add_all([loose, ghost])
            session.delete(ghost)  # never stored, so it has no key either
            loose.author = ghost
            with pytest.raises(SessionStateError, match="deleted in this session"):
                await session.commit()
            loose.author = None
            await session.commit()
        assert await stored(engine, User, other.id) is None
        assert (await stored(engine, Post, first.id)).author_id == author.id
        assert await count_rows(engine, Post) == 3
        assert await count_rows(engine, User) == 1

    async def test_a_session_lets_go_of_the_objects_whose_delete_it_committed(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            session.delete(first)
            await session.flush()
            await session.rollback()  # a rolled-back delete keeps the object tracked
            assert first in session
            session.delete(first)
            await session.commit()
            assert first not in session and len(session) == 2
            second.title = "Second, edited"
            await session.commit()  # a long session: its next flush lets the deleted post go
            with pytest.raises(SessionStateError, match="deleted in this session"):
                session.delete(first)
            author.posts.remove(first)
            released = weakref.ref(first)
            del first
            gc.collect()
            assert released() is None  # the session holds no reference to it
        assert await count_rows(engine, Post) == 1

    async def test_an_object_deleted_and_added_again_is_retried_like_any_new_one(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="Back", email="back@example.com")
            other = User(name="Other", email="other@example.com")
            session.add_all([user, other])
            await session.commit()
            session.delete(user)
            await session.commit()
            other.age = 1
            await session.commit()  # its next flush lets the deleted user go
            session.add(user)  # its row again, under the same key
            session.add(User(name="Clash", email=other.email))
            with pytest.raises(IntegrityError):
                await session.flush()
            await session.rollback()
            post = Post(title="Retry", slug="retry", author=user)
            session.add(post)  # the retry brings the user along again
            await session.commit()
            assert post.author_id == user.id
        assert (await stored(engine, User, user.id)).name == "Back"
        assert (await stored(engine, Post, post.id)).author_id == user.id

    async def test_a_new_child_in_the_list_of_a_deleted_object_is_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            session.delete(author)  # its posts go with it
            author.posts.append(Post(title="Late", slug="late"))
            with pytest.raises(SessionStateError, match=r"new Post is in User.posts of User id=.*deleted"):
                await session.commit()
            author.posts.pop()
            await session.commit()
            assert first not in session and second not in session
        assert await stored(engine, User, author.id) is None
        assert await count_rows(engine, Post) == 0

    async def test_set_null_on_delete_also_empties_the_relation(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            reviewer = await session.get_one(User, alice.id)
            review = Review(stars=3, reviewer=reviewer)
            session.add(review)
            await session.flush()
            assert review.reviewer_id == alice.id
            session.delete(reviewer)
            await session.commit()
            assert review.reviewer is None and review.reviewer_id is None
        saved = await stored(engine, Review, review.id)
        assert saved is not None and saved.reviewer_id is None

    async def test_remove_applies_the_delete_actions_to_tracked_children_now(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            reviewer = await session.get_one(User, alice.id)
            review = await session.insert(Review(stars=3, reviewer=reviewer))
            post = await session.insert(Post(title="by alice", author=reviewer))
            await session.commit()
            review.stars = 5  # assignments made before the remove are written with it
            post.title = "gone anyway"
            await session.remove(reviewer)
            assert review.reviewer is None and review.reviewer_id is None
            assert post not in session
            assert not session.journal.pending and not session.is_modified(review)
            await session.commit()
        saved = await stored(engine, Review, review.id)
        assert (saved.reviewer_id, saved.stars) == (None, 5)
        assert await stored(engine, Post, post.id) is None

    async def test_bulk_delete_updates_tracked_children_of_rows_it_never_loaded(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com", age=9)
            post = Post(title="Cascades", slug="cascades", author=author)
            session.add(post)
            await session.flush()
            review = await session.insert(Review(reviewer_id=author.id, stars=4))
            await session.commit()
        async with AsyncSession(engine) as session:
            loaded_post = await session.get_one(Post, post.id)
            loaded_review = await session.get_one(Review, review.id)
            assert await session.bulk_delete(User, age=9) == 1  # the author itself was never loaded
            assert loaded_post not in session
            assert await session.get(Post, post.id) is None
            assert loaded_review.reviewer_id is None
            await session.rollback()
            assert loaded_post in session and loaded_post.author_id == author.id
            assert loaded_review.reviewer_id == author.id
            assert await session.bulk_delete(User, age=9) == 1
            await session.commit()
        assert await stored(engine, Post, post.id) is None
        kept = await stored(engine, Review, review.id)
        assert kept is not None and kept.reviewer_id is None

    async def test_bulk_operations_refuse_unknown_names_before_writing(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            pending = User(name="Pending", email="pending@example.com")
            session.add(pending)
            events = len(session.journal)
            with pytest.raises(ValidationError, match="nickname"):
                await session.bulk_update(User, {"age": 1}, nickname="x")
            with pytest.raises(ValidationError, match="nickname"):
                await session.bulk_update(User, {"nickname": "x"}, age=30)
            with pytest.raises(ValidationError, match="nickname"):
                await session.bulk_delete(User, nickname="x")
            assert len(session.journal) == events
            assert pending.id is None
            assert not session.in_transaction()
        assert (await stored(engine, User, alice.id)).age == 30

    # --- soft delete ------------------------------------------------------------------------------

    async def test_soft_delete_hides_restore_shows_force_delete_removes(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            note = await session.insert(Note(text="hello"))
            await session.soft_delete(note)
            assert isinstance(note.deleted_at, dt.datetime)
            assert isinstance(session.journal[-1], SoftDeleted)
            assert await session.get(Note, note.id) is None
            assert await session.get(Note, note.id, with_deleted=True) is note
            await session.commit()
        async with AsyncSession(engine) as session:
            assert await session.get(Note, note.id) is None
            hidden = await session.get_one(Note, note.id, with_deleted=True)
            assert hidden.deleted_at is not None
            with pytest.raises(NoResultFound):
                await session.get_one(Note, note.id)
            await session.restore(hidden)
            assert hidden.deleted_at is None
            assert isinstance(session.journal[-1], Restored)
            await session.commit()
        async with AsyncSession(engine) as session:
            visible = await session.get_one(Note, note.id)
            await session.force_delete(visible)
            await session.commit()
        assert await stored(engine, Note, note.id) is None

    async def test_soft_delete_needs_the_mixin(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            with pytest.raises(ModelDefinitionError, match="SoftDelete"):
                await session.soft_delete(user)

    # --- merge / refresh / expire / expunge / is_modified / in_transaction -----------------------

    async def test_merge_copies_onto_the_tracked_object(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            detached = User(id=alice.id, name="Merged", email="alice@example.com", age=7)
            merged = await session.merge(detached)
            assert merged is not detached and detached not in session
            assert merged.name == "Merged" and session.is_modified(merged)
            assert await session.merge(User(id=alice.id, name="Again", email="alice@example.com")) is merged
            assert merged.name == "Again"
            new = User(name="New", email="new@example.com")
            assert await session.merge(new) is new and new in session
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Again"
        assert (await stored(engine, User, new.id)).name == "New"

    async def test_merge_of_an_unknown_key_adds_the_object(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            obj = Sample(**{**_sample_values(), "label": "merged"})
            assert await session.merge(obj) is obj and obj in session
            await session.commit()
        assert (await stored(engine, Sample, obj.id)).label == "merged"

    async def test_refresh_reloads_and_discards_assignments(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.commit()
            async with AsyncSession(engine) as other:
                await other.update(await other.get_one(User, alice.id), name="Changed elsewhere")
                await other.commit()
            user.age = 99
            await session.refresh(user)
            assert (user.name, user.age) == ("Changed elsewhere", 30)
            assert not session.is_modified(user)
            await session.commit()
            async with AsyncSession(engine) as other:
                await other.remove(await other.get_one(User, alice.id))
                await other.commit()
            with pytest.raises(NoResultFound):
                await session.refresh(user)
            assert user not in session

    async def test_refresh_discards_assignments_whatever_else_is_pending(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            first.title = "Changed"
            first.author = other  # a move, not flushed
            author.age = 99  # another object's assignment: the refresh's autoflush writes it
            session.add(User(name="Pending", email="pending@example.com"))
            await session.refresh(first)
            assert (first.title, first.author_id) == ("First", author.id)
            with pytest.raises(RelationNotLoadedError):
                first.author  # noqa: B018
            await session.commit()
        saved = await stored(engine, Post, first.id)
        assert (saved.title, saved.author_id) == ("First", author.id)
        assert (await stored(engine, User, author.id)).age == 99
        assert await count_rows(engine, User) == 3

    async def test_refresh_of_an_unsaved_object_is_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine, autoflush=False) as session:
            user = User(name="A", email="a@example.com")
            session.add(user)
            with pytest.raises(SessionStateError):
                await session.refresh(user)

    async def test_refresh_with_autoflush_off_refuses_an_object_with_changes_recorded(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine, autoflush=False) as session:
            user = await session.get_one(User, alice.id)
            user.age = 5
            session.plan()  # records the assignment as a pending event
            with pytest.raises(SessionStateError, match="recorded but not flushed"):
                await session.refresh(user)
            assert user.age == 5
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 5

    async def test_a_delete_acts_on_children_whose_relation_holds_an_expunged_copy_of_the_parent(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Ann", email="ann@example.com")
            post, review = Post(title="P", author=author), Review(stars=2, reviewer=author)
            session.add_all([post, review])
            await session.flush()
            session.expunge(author)  # the children's relations still hold this copy
            await session.remove(await session.get_one(User, author.id))  # read again, and deleted
            assert post not in session  # cascaded, as the database did
            assert review.reviewer_id is None and review.reviewer is None  # set null
            await session.commit()
        assert await count_rows(engine, Post) == 0
        assert (await stored(engine, Review, review.id)).reviewer_id is None

    async def test_an_undone_set_null_gives_the_relation_its_parent_back(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            reviewer = User(name="Rita", email="rita@example.com")
            review = Review(stars=5, reviewer=reviewer)
            session.add(review)
            await session.commit()
            savepoint = await session.begin_nested()
            await session.remove(reviewer)  # the review's reviewer_id is set to null, and its relation
            assert (review.reviewer_id, review.reviewer) == (None, None)
            await savepoint.rollback()
            assert review.reviewer is reviewer and review.reviewer_id == reviewer.id
            # new rows, rolled back whole: the relation holds the parent, so adding both again links them
            author = User(name="Newt", email="newt@example.com")
            fresh = Review(stars=1, reviewer=author)
            session.add(fresh)
            await session.flush()
            await session.remove(author)
            await session.rollback()
            assert fresh.reviewer is author and author.id is None
            session.add(fresh)
            await session.commit()
            assert fresh.reviewer_id == author.id is not None
        assert (await stored(engine, Review, fresh.id)).reviewer_id == author.id

    async def test_an_object_read_again_after_expunge_lets_go_when_the_change_it_saw_is_undone(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            account = await session.insert(Account(owner="ann", balance=10))
            await session.commit()
            for undo in ("rollback", "savepoint"):
                savepoint = await session.begin_nested() if undo == "savepoint" else None
                account.balance = 99
                await session.flush()
                session.expunge(account)
                again = await session.get_one(Account, account.id)  # a new object, holding 99
                await (savepoint.rollback() if savepoint is not None else session.rollback())
                assert again not in session  # its values were undone under it
                fresh = await session.get_one(Account, account.id)
                assert fresh is not again and (fresh.balance, fresh.version) == (10, 1)
                account = fresh
            account.owner = "still ann"
            await session.commit()
        saved = await stored(engine, Account, account.id)
        assert (saved.owner, saved.balance, saved.version) == ("still ann", 10, 2)

    async def test_a_get_that_finds_an_expired_objects_row_gone_lets_go_of_it(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.commit()
            async with AsyncSession(engine) as other:
                await other.remove(await other.get_one(User, alice.id))
                await other.commit()
            session.expire(user)
            assert await session.get(User, alice.id) is None
            assert user not in session
            again = User(id=alice.id, name="Again", email="again@example.com")
            session.add(again)  # the key is free in the session too
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Again"

    async def test_expire_lets_the_next_read_overwrite(
        self, engine: uow.Engine, alice: User, reads: ReadCounter
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.commit()
            async with AsyncSession(engine) as other:
                await other.update(await other.get_one(User, alice.id), age=77)
                await other.commit()
            before = reads.count
            assert await session.get(User, alice.id) is user and user.age == 30
            assert reads.count == before
            session.expire(user)
            assert user.age == 30
            assert await session.get(User, alice.id) is user and user.age == 77
            assert reads.count == before + 1

    async def test_expunge_and_expunge_all(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            session.expunge(user)
            assert user not in session
            again = await session.get_one(User, alice.id)
            assert again is not user and again.email == user.email
            again.name = "changed"
            with pytest.raises(SessionStateError):
                session.expunge(again)  # an assignment not flushed yet is an unflushed change
            with pytest.raises(SessionStateError):
                session.expunge_all()
            assert again in session and session.is_modified(again)
            await session.flush()
            session.expunge_all()
            assert len(session) == 0 and again not in session
            pending = User(name="Pending", email="pending@example.com")
            session.add(pending)
            with pytest.raises(SessionStateError):
                session.expunge(pending)
            with pytest.raises(SessionStateError):
                session.expunge_all()
            with pytest.raises(DetachedInstanceError):
                session.expunge(user)

    async def test_is_modified(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            assert not session.is_modified(user)
            user.age = 31
            assert session.is_modified(user)
            await session.flush()
            assert not session.is_modified(user)
            user.age = 30
            user.age = 31
            assert not session.is_modified(user)
            new = User(name="New", email="new@example.com")
            session.add(new)
            assert session.is_modified(new)
            with pytest.raises(DetachedInstanceError):
                session.is_modified(User(name="Stranger", email="s@example.com"))

    async def test_relation_changes_not_flushed_are_unflushed_changes(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second, other = await _committed_author_two_posts_and_other(session)
            first.author = other  # a move
            second.author = None  # an unlink
            author.posts.append(Post(title="Third", slug="third"))  # a new child
            for changed in (first, second, author):
                assert session.is_modified(changed)
                with pytest.raises(SessionStateError):
                    session.expunge(changed)  # expunging would drop the change
            with pytest.raises(SessionStateError):
                session.expunge_all()
            assert not session.is_modified(other)
            await session.commit()
            assert not any(session.is_modified(o) for o in (first, second, author, other))
            session.expunge(first)
            session.expunge_all()
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id is None
        assert await count_rows(engine, Post) == 3

    async def test_in_transaction(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            assert not session.in_transaction()
            session.add(User(name="B", email="b@example.com"))
            assert not session.in_transaction()
            await session.flush()
            assert session.in_transaction()
            await session.commit()
            assert not session.in_transaction()
            await session.get(User, alice.id)
            assert session.in_transaction()
            await session.rollback()
            assert not session.in_transaction()

    # --- what a flush finds ----------------------------------------------------------------------

    async def test_a_child_appended_to_a_loaded_list_is_inserted_at_every_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine) as session:
            loaded = await session.query(User).include(User.posts).one()
            loaded.posts.append(Post(title="Third", slug="third"))  # no assignment on the author
            await session.commit()
            loaded.posts.append(Post(title="Fourth", slug="fourth"))
            await session.commit()
            assert [post.author_id for post in loaded.posts] == [author.id] * 4
        assert await count_rows(engine, Post, author_id=author.id) == 4

    async def test_a_child_appended_to_a_loaded_list_after_its_owners_delete_is_undone_is_inserted(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine) as session:
            loaded = await session.query(User).include(User.posts).one()
            async with session.begin_nested() as savepoint:
                session.delete(loaded)
                await session.flush()
                await savepoint.rollback()
            loaded.posts.append(Post(title="Third", slug="third"))
            await session.commit()
        assert await count_rows(engine, Post, author_id=author.id) == 3

    async def test_a_child_put_in_a_loaded_list_by_any_list_method_is_inserted(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine) as session:
            loaded = await session.query(User).include(User.posts).one()
            posts = loaded.posts
            posts.extend([Post(title="Extended", slug="extended")])
            await session.commit()
            posts.insert(0, Post(title="Inserted", slug="inserted"))
            await session.commit()
            posts += [Post(title="Added", slug="added")]
            await session.commit()
            posts[len(posts) :] = [Post(title="Sliced", slug="sliced")]
            await session.commit()
            posts[0] = Post(title="Replacing", slug="replacing")  # the replaced post stays stored
            await session.commit()
        assert await count_rows(engine, Post, author_id=author.id) == 7

    async def test_a_child_appended_to_an_assigned_list_after_its_flush_is_inserted(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine) as session:
            loaded = await session.get_one(User, author.id)
            given = [Post(title="Given", slug="given")]
            loaded.posts = given
            await session.commit()
            # the flush made the list the author's own; it holds the same posts
            assert loaded.posts == given
            loaded.posts.append(Post(title="Later", slug="later"))
            await session.commit()
            assert [post.author_id for post in loaded.posts] == [author.id] * 2
        assert await count_rows(engine, Post, author_id=author.id) == 4

    async def test_a_child_appended_to_the_list_of_an_added_object_is_inserted(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com", posts=[])
            session.add(author)
            author.posts.append(Post(title="First", slug="first"))
            await session.commit()
            author.posts.append(Post(title="Second", slug="second"))
            await session.commit()
        assert await count_rows(engine, Post, author_id=author.id) == 2

    async def test_a_tracked_child_appended_to_another_list_moves_there(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            other.posts.append(first)
            assert first.author is other  # as if first.author = other
            await session.commit()
            assert first.author_id == other.id and second.author_id == author.id
            assert author.posts == [first, second]  # lists are not kept in step with each other
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id == author.id

    async def test_a_tracked_child_put_in_a_list_by_any_list_method_moves_there(self, engine: uow.Engine) -> None:
        puts: list[Callable[[User, Post], object]] = [
            lambda owner, post: owner.posts.extend([post]),
            lambda owner, post: owner.posts.insert(0, post),
            lambda owner, post: owner.posts.__iadd__([post]),
            lambda owner, post: owner.posts.__setitem__(slice(0, 0), [post]),
            lambda owner, post: setattr(owner, "posts", [post]),
        ]
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            for put, owner in zip(puts, [other, author, other, author, other]):
                put(owner, first)
                await session.commit()
                assert first.author is owner and first.author_id == owner.id
                assert (await stored(engine, Post, first.id)).author_id == owner.id
            other.posts[0] = author.posts[1]  # replacing an item moves the new one
            await session.commit()
            assert author.posts[1].author_id == other.id

    async def test_a_tracked_child_in_the_list_given_to_a_new_object_moves_to_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            newcomer = User(name="New", email="new@example.com", posts=[first, Post(title="Third", slug="third")])
            session.add(newcomer)
            await session.commit()
            assert first.author is newcomer and first.author_id == newcomer.id is not None
            assert second.author_id == author.id
        assert await count_rows(engine, Post, author_id=newcomer.id) == 2
        assert await count_rows(engine, Post, author_id=author.id) == 1

    async def test_a_tracked_child_in_the_list_of_a_parent_a_flush_adds_moves_to_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            _, first, second = await _committed_author_with_two_posts(session)
            # the flush adds the new user when it comes to second, after first
            newcomer = User(name="New", email="new@example.com", posts=[first])
            second.author = newcomer
            await session.commit()
            assert first.author is newcomer and first.author_id == second.author_id == newcomer.id
        assert await count_rows(engine, Post, author_id=newcomer.id) == 2

    async def test_a_refused_add_takes_back_the_move_of_a_tracked_child_in_its_list(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _ = await _committed_author_with_two_posts(session)
            first.title = "Pending"  # an assignment the refused add must leave alone
            refused = User(name="New", email="new@example.com", posts=[first, Post(title=None, slug="bad")])  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="title"):
                session.add(refused)
            assert refused not in session and first.author_id == author.id and first.title == "Pending"
            await session.commit()
        stored_first = await stored(engine, Post, first.id)
        assert (stored_first.author_id, stored_first.title) == (author.id, "Pending")
        assert await count_rows(engine, User) == 1

    async def test_the_later_of_a_list_append_and_a_relation_assignment_wins(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            other.posts.append(first)
            first.author = author  # after the append: first stays
            second.author = author
            other.posts.append(second)  # after the assignment: second moves
            await session.commit()
        assert (await stored(engine, Post, first.id)).author_id == author.id
        assert (await stored(engine, Post, second.id)).author_id == other.id

    async def test_removing_a_child_from_a_list_writes_nothing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _ = await _committed_author_with_two_posts(session)
            author.posts.remove(first)
            del author.posts[0]
            await session.commit()
            assert author.posts == [] and first.author is author
        assert await count_rows(engine, Post, author_id=author.id) == 2

    async def test_a_rollback_takes_back_a_move_made_through_a_list(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            other.posts.append(first)  # not flushed
            await session.rollback()
            assert first.author_id == author.id
            with pytest.raises(RelationNotLoadedError):
                other.posts  # noqa: B018
            with pytest.raises(RelationNotLoadedError):
                first.author  # noqa: B018
            await session.query(User).filter(id=other.id).include(User.posts).one()
            async with session.begin_nested() as savepoint:
                other.posts.append(first)
                await session.flush()  # flushed, then undone
                await savepoint.rollback()
            assert first.author_id == author.id
            with pytest.raises(RelationNotLoadedError):
                other.posts  # noqa: B018
            await session.commit()
        assert (await stored(engine, Post, first.id)).author_id == author.id

    async def test_a_read_with_include_keeps_a_list_changed_since_the_last_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, _, _ = await _committed_author_with_two_posts(session)
        async with AsyncSession(engine, autoflush=False) as session:
            loaded = await session.query(User).include(User.posts).one()
            third = Post(title="Third", slug="third")
            loaded.posts.append(third)
            loaded.posts.pop(0)
            await session.query(User).include(User.posts).all()  # no flush first: the list stays
            assert [post.title for post in loaded.posts] == ["Second", "Third"]
            await session.commit()
            await session.query(User).include(User.posts).all()  # flushed: read again
            assert [post.title for post in loaded.posts] == ["First", "Second", "Third"]
        assert await count_rows(engine, Post, author_id=author.id) == 3

    async def test_a_read_with_include_keeps_a_relation_assigned_since_the_last_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            _, first, second, other = await _committed_author_two_posts_and_other(session)
        async with AsyncSession(engine, autoflush=False) as session:
            moved, unlinked = await session.query(Post).order_by("id").include(Post.author).all()
            target = await session.get_one(User, other.id)
            moved.author = target
            unlinked.author = None
            await session.query(Post).include(Post.author).all()  # no flush first: the assignments stay
            assert moved.author is target and unlinked.author is None
            await session.commit()
        assert (await stored(engine, Post, first.id)).author_id == other.id
        assert (await stored(engine, Post, second.id)).author_id is None

    async def test_a_rollback_unloads_a_list_it_takes_a_change_back_from(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, second = await _committed_author_with_two_posts(session)
            author.posts.remove(first)  # writes nothing, but the list changed
            await session.rollback()
            with pytest.raises(RelationNotLoadedError):
                author.posts  # noqa: B018
            await session.query(User).filter(id=author.id).include(User.posts).one()
            assert author.posts == [first, second]
            author.posts.reverse()
            await session.flush()  # seen by a flush, then rolled back
            await session.rollback()
            with pytest.raises(RelationNotLoadedError):
                author.posts  # noqa: B018

    async def test_a_savepoint_rollback_unloads_only_lists_changed_inside_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            author.posts.remove(first)  # before the savepoint: kept
            async with session.begin_nested() as savepoint:
                author.age = 50
                await session.flush()
                other.posts.clear()
                await session.flush()
                await savepoint.rollback()
            assert [post.title for post in author.posts] == ["Second"]
            with pytest.raises(RelationNotLoadedError):
                other.posts  # noqa: B018
            await session.commit()
        assert await count_rows(engine, Post, author_id=author.id) == 2

    async def test_a_rollback_unloads_a_list_loaded_after_a_move_it_takes_back(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            first.author = other
            await session.flush()
            await session.query(User).filter(id=other.id).include(User.posts).one()
            assert other.posts == [first]
            await session.rollback()
            assert first.author_id == author.id
            with pytest.raises(RelationNotLoadedError):
                other.posts  # noqa: B018

    async def test_a_tracked_child_appended_to_the_list_of_a_deleted_object_is_refused(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            author, first, _, other = await _committed_author_two_posts_and_other(session)
            await session.query(User).filter(id=other.id).include(User.posts).one()
            session.delete(other)
            other.posts.append(first)
            with pytest.raises(SessionStateError, match="deleted in this session"):
                await session.flush()
            first.author = author  # put back: the delete goes through
            await session.commit()
        assert (await stored(engine, Post, first.id)).author_id == author.id
        assert await count_rows(engine, User) == 1

    async def test_assignments_a_refused_flush_did_not_record_are_found_by_the_next(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            first, second = await _loaded_and_inserted(session, alice)
            first.name = 5  # type: ignore[assignment]
            second.age = 41  # found after first, which the flush refuses
            with pytest.raises(ValidationError, match="name"):
                await session.flush()
            first.name = "Alicia"
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Alicia"
        assert (await stored(engine, User, second.id)).age == 41

    async def test_assignments_are_recorded_in_the_order_the_objects_were_tracked(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            first, second = await _loaded_and_inserted(session, alice)
            mark = len(session.journal)
            second.age = 2
            first.age = 1
            await session.flush()
            updated = [event.key for event in list(session.journal)[mark:] if isinstance(event, Updated)]
            assert updated == [first.id, second.id]

    async def test_a_new_object_given_its_key_after_add_is_found_by_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="Late", email="late@example.com")
            session.add(user)
            user.id = 500
            await session.flush()
            assert await session.get(User, 500) is user  # one object per row
            await session.rollback()
            assert user.id is None and user not in session
            assert await session.get(User, 500) is None

            session.add(user)
            await session.flush()
            other = User(name="Other", email="other@example.com")
            session.add(other)
            other.id = user.id
            with pytest.raises(SessionStateError, match=r"another User with id=.* is already tracked"):
                await session.flush()
            other.id = None
            await session.commit()
            assert other.id is not None and other.id != user.id
            assert await session.get(User, other.id) is other

    async def test_an_object_tracked_by_another_session_cannot_be_added(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="One", email="one@example.com")
            session.add(user)
            async with AsyncSession(engine) as other:
                with pytest.raises(SessionStateError, match="tracked by another session"):
                    other.add(Post(title="Theirs", author=user))
                with pytest.raises(SessionStateError, match="tracked by another session"):
                    await other.upsert(user)
                assert len(other) == 0 and not other.journal
            await session.rollback()  # the insert is undone: the object is free
            async with AsyncSession(engine) as other:
                other.add(user)
                user.age = 5
                await other.commit()
        assert (await stored(engine, User, user.id)).age == 5

    # --- transactions and savepoints ---------------------------------------------------------------

    async def test_begin_commits_on_exit_and_rolls_back_on_error(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            async with session.begin():
                kept = User(name="Kept", email="kept@example.com")
                session.add(kept)
            assert kept.id is not None and not session.in_transaction()
            lost = User(name="Lost", email="lost@example.com")
            with pytest.raises(RuntimeError, match="boom"):
                async with session.transaction():
                    session.add(lost)
                    await session.flush()
                    assert lost.id is not None
                    raise RuntimeError("boom")
            assert lost.id is None and lost not in session
            session.add(User(name="Busy", email="busy@example.com"))
            with pytest.raises(SessionStateError):
                async with session.begin():
                    pass
        assert (await stored(engine, User, kept.id)).name == "Kept"
        assert await count_rows(engine, User) == 1

    async def test_begin_refuses_assignments_not_saved_yet_and_a_begin_inside_another(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            user.name = "edited"  # not recorded yet, but work all the same
            with pytest.raises(SessionStateError, match="work in progress"):
                async with session.begin():
                    pass
            assert user.name == "edited"
            await session.commit()
            with pytest.raises(RuntimeError, match="boom"):
                async with session.begin():
                    with pytest.raises(SessionStateError, match="begin_nested"):
                        async with session.begin():
                            pass
                    session.add(User(name="Inner", email="inner@example.com"))
                    raise RuntimeError("boom")
        assert (await stored(engine, User, alice.id)).name == "edited"
        assert await count_rows(engine, User) == 1

    async def test_an_isolation_level_is_checked_when_the_session_is_made(self, engine: uow.Engine) -> None:
        with pytest.raises(ConfigurationError, match="unknown isolation level 'nonsense'"):
            AsyncSession(engine, isolation="nonsense")
        async with AsyncSession(engine, isolation="REPEATABLE READ") as session:
            assert session.isolation == "repeatable read"
            await session.insert(User(name="Iso", email="iso@example.com"))
            await session.commit()
        assert await count_rows(engine, User) == 1

    async def test_a_savepoint_handle_sets_one_savepoint(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            never_set = session.begin_nested()
            for call in (never_set.commit, never_set.rollback):
                with pytest.raises(SessionStateError, match="never set"):
                    await call()
            savepoint = session.begin_nested()
            async with savepoint:
                user.age = 1
            with pytest.raises(SessionStateError, match="already released"):
                async with savepoint:
                    user.age = 99
            assert user.age == 1
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 1

    async def test_savepoint_context_rolls_back_on_error_and_keeps_on_success(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            outer = await session.insert(User(name="Outer", email="outer@example.com"))
            with pytest.raises(RuntimeError):
                async with session.begin_nested():
                    outer.name = "changed in savepoint"
                    inner = await session.insert(User(name="Inner", email="inner@example.com"))
                    raise RuntimeError("undo the savepoint")
            assert outer.name == "Outer" and outer in session
            assert inner.id is None and inner not in session
            async with session.begin_nested():
                kept = await session.insert(User(name="Kept", email="kept@example.com"))
            assert kept in session
            await session.commit()
        assert (await stored(engine, User, outer.id)).name == "Outer"
        assert await stored(engine, User, kept.id) is not None
        assert await count_rows(engine, User) == 2

    async def test_savepoint_awaited_with_commit_and_rollback(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            savepoint = await session.begin_nested()
            first = await session.insert(User(name="First", email="first@example.com"))
            await savepoint.commit()
            savepoint = await session.begin_nested()
            second = User(name="Second", email="second@example.com")
            session.add(second)
            first.age = 5
            await savepoint.rollback()
            assert second not in session and second.id is None
            assert first.age == 0 and first in session
            with pytest.raises(SessionStateError):
                await savepoint.rollback()
            await session.commit()
        assert (await stored(engine, User, first.id)).age == 0
        assert await count_rows(engine, User) == 1

    async def test_a_failed_flush_inside_a_savepoint_rolls_back_only_the_savepoint(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            kept = await session.insert(User(name="Kept", email="kept@example.com"))
            duplicate = User(name="Dup", email="alice@example.com")
            with pytest.raises(IntegrityError):
                async with session.begin_nested():
                    kept.age = 3
                    session.add(duplicate)
                    await session.flush()
            assert duplicate not in session and duplicate.id is None
            assert kept in session and kept.age == 0
            assert not session.journal.pending
            await session.commit()
        assert (await stored(engine, User, kept.id)).name == "Kept"
        assert await count_rows(engine, User) == 2

    async def test_releasing_a_savepoint_releases_the_ones_inside_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            outer = await session.begin_nested()
            inner = await session.begin_nested()
            user = await session.insert(User(name="A", email="a@example.com"))
            await outer.commit()
            with pytest.raises(SessionStateError):
                await inner.rollback()
            assert user in session
            await session.commit()
        assert await stored(engine, User, user.id) is not None

    async def test_nested_savepoints(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            base = await session.insert(User(name="Base", email="base@example.com"))
            outer = await session.begin_nested()
            base.age = 1
            middle = await session.insert(User(name="Middle", email="middle@example.com"))
            inner = await session.begin_nested()
            base.age = 2
            deepest = await session.insert(User(name="Deep", email="deep@example.com"))
            await inner.rollback()
            assert base.age == 1 and middle in session and deepest not in session
            inner = await session.begin_nested()
            base.age = 3
            await inner.commit()
            await outer.rollback()
            assert base.age == 0 and middle not in session and middle.id is None
            await session.commit()
        assert (await stored(engine, User, base.id)).age == 0
        assert await count_rows(engine, User) == 1

    async def test_rollback_restores_objects_in_place_without_a_query(
        self, engine: uow.Engine, alice: User, reads: ReadCounter
    ) -> None:
        async with AsyncSession(engine) as session:
            bob = await session.insert(User(name="Bob", email="bob@example.com"))
            await session.commit()
            user = await session.get_one(User, alice.id)
            user.name = "Changed"
            await session.update(user, age=99)
            session.delete(bob)
            new = User(name="New", email="new@example.com")
            post = Post(title="new post", author=user)
            session.add_all([new, post])
            await session.flush()
            assert new.id is not None and post.id is not None and bob not in session
            reads_before = reads.count
            await session.rollback()
            assert reads.count == reads_before
            assert (user.name, user.age) == ("Alice", 30) and user in session
            assert bob in session and bob.name == "Bob"
            assert new.id is None and new not in session
            assert post.id is None and post not in session
            assert await session.get(User, bob.id) is bob
            assert await session.get(User, alice.id) is user
            assert reads.count == reads_before
            assert not session.journal.pending
        assert (await stored(engine, User, alice.id)).name == "Alice"
        assert await stored(engine, User, bob.id) is not None
        assert await count_rows(engine, User) == 2

    async def test_rollback_undoes_every_kind_of_event_in_place(
        self, engine: uow.Engine, alice: User, reads: ReadCounter
    ) -> None:
        async with AsyncSession(engine) as session:
            bob, carol = await session.insert_all(
                [User(name="Bob", email="bob@example.com", age=1), User(name="Carol", email="carol@example.com", age=1)]
            )
            post = await session.insert(Post(title="Bob's", author=bob))
            note = await session.insert(Note(text="note"))
            await session.commit()
            user = await session.get_one(User, alice.id)
            reads_before = reads.count
            upserted_new = await session.upsert(User(name="Dan", email="dan@example.com"), conflict_target=["email"])
            assert await session.upsert(User(name="Al", email="alice@example.com", age=2), ["email"]) is user
            assert await session.bulk_update(User, {"age": 9}, age=1) == 2
            await session.soft_delete(note)
            session.delete(bob)
            await session.flush()
            assert post not in session and bob not in session
            assert await session.bulk_delete(User, email="carol@example.com") == 1
            assert carol not in session
            await session.rollback()
            assert reads.count == reads_before
            assert upserted_new not in session and upserted_new.id is None
            assert (user.name, user.age) == ("Alice", 30)
            assert bob in session and post in session and carol in session
            assert (bob.age, carol.age, post.author_id) == (1, 1, bob.id)
            assert note.deleted_at is None and await session.get(Note, note.id) is note
            assert not any(session.is_modified(o) for o in (user, bob, carol, post, note))
            await session.commit()
        assert await count_rows(engine, User) == 3
        assert (await stored(engine, Post, post.id)).author_id == bob.id

    async def test_a_rollback_lets_go_of_objects_read_from_rows_it_removes(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.bulk_insert(User, [{"name": "Bulk", "email": "bulk@example.com"}])
            bulk = await session.query(User).filter(email="bulk@example.com").one()
            mine = await session.insert(User(name="Mine", email="mine@example.com"))
            session.expunge(mine)
            again = await session.get_one(User, mine.id)
            assert again is not mine and bulk in session and again in session
            keys = (bulk.id, again.id)
            await session.rollback()
            # their rows are gone: no read may answer with them
            assert bulk not in session and again not in session
            assert [await session.get(User, key) for key in keys] == [None, None]
            assert await session.query(User).count() == 0

    async def test_a_rollback_expires_objects_read_after_a_write_no_object_followed(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = await session.insert(User(name="A", email="a@example.com", age=1))
            await session.commit()
            session.expunge(user)
            savepoint = await session.begin_nested()
            assert await session.bulk_update(User, {"age": 5}, name="A") == 1  # a row no object tracks
            seen = await session.get_one(User, user.id)
            assert seen.age == 5
            await savepoint.rollback()
            # the next read gives it what the database holds again, not the undone write
            assert await session.get_one(User, user.id) is seen and seen.age == 1
            if engine.adapter.supports_raw_sql:
                placeholder = _raw_placeholder(engine, 1)
                await session.execute_raw(f"UPDATE conformance_users SET age = 7 WHERE id = {placeholder}", [user.id])
                other = await session.query(User).filter(email="a@example.com").one()
                assert other is seen and seen.age == 1  # a read never overwrites a tracked object
                session.expunge(seen)
                seen = await session.get_one(User, user.id)
                assert seen.age == 7
                await session.rollback()
                assert (await session.get_one(User, user.id)).age == 1

    async def test_a_rollback_keeps_the_object_whose_key_a_rolled_back_row_reused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            kept = await session.insert(User(name="Kept", email="kept@example.com"))
            await session.commit()
            await session.remove(kept)
            await session.bulk_insert(User, [{"id": kept.id, "name": "Reused", "email": "reused@example.com"}])
            reused = await session.get_one(User, kept.id)
            assert reused is not kept and reused.name == "Reused"
            await session.rollback()
            assert kept in session and reused not in session
            assert await session.get(User, kept.id) is kept and kept.name == "Kept"

    async def test_savepoint_rollback_revives_deleted_objects(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            post = await session.insert(Post(title="p", author=user))
            with pytest.raises(RuntimeError):
                async with session.begin_nested():
                    await session.remove(user)
                    assert user not in session and post not in session
                    raise RuntimeError("undo")
            assert user in session and post in session
            assert await session.get(Post, post.id) is post
            await session.commit()
        assert (await stored(engine, Post, post.id)).author_id == alice.id

    async def test_rolled_back_inserts_lose_generated_keys_and_can_be_added_again(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com")
            post = Post(title="p", author=author)
            root = Category(name="root")
            leaf = Category(name="leaf", parent=root)
            session.add_all([post, leaf])
            await session.flush()
            assert None not in (author.id, post.author_id, root.id, leaf.parent_id)
            await session.rollback()
            assert (author.id, post.id, post.author_id) == (None, None, None)
            assert (root.id, leaf.id, leaf.parent_id) == (None, None, None)
            assert len(session) == 0
            session.add_all([post, leaf])
            await session.commit()
            assert post.author_id == author.id and leaf.parent_id == root.id
        assert (await stored(engine, Post, post.id)).author_id == author.id
        assert (await stored(engine, Category, leaf.id)).parent_id == root.id

    async def test_rollback_discards_unflushed_work(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            user.age = 1
            new = User(name="New", email="new@example.com")
            session.add(new)
            await session.rollback()
            assert user.age == 30 and new not in session
            await session.commit()
        assert await count_rows(engine, User) == 1

    async def test_close_discards_work_and_the_session_can_be_used_again(self, engine: uow.Engine, alice: User) -> None:
        session = AsyncSession(engine)
        user = await session.get_one(User, alice.id)
        user.age = 1
        await session.flush()
        await session.close()
        assert not session.in_transaction() and len(session) == 0
        assert user.age == 30
        again = await session.get_one(User, alice.id)
        assert again is not user and again.age == 30
        await session.update(again, age=2)
        await session.commit()
        await session.close()
        assert (await stored(engine, User, alice.id)).age == 2

    # --- session_context / sessionmaker / current_session / async with options ---------------------

    async def test_session_context_commits_on_success_and_rolls_back_on_error(self, engine: uow.Engine) -> None:
        async with uow.session_context(engine) as session:
            kept = User(name="Kept", email="kept@example.com")
            session.add(kept)
        assert kept.id is not None
        with pytest.raises(RuntimeError):
            async with uow.session_context(engine) as session:
                lost = await session.insert(User(name="Lost", email="lost@example.com"))
                raise RuntimeError("fail")
        assert lost.id is None
        assert await stored(engine, User, kept.id) is not None
        assert await count_rows(engine, User) == 1

    async def test_sessionmaker_shares_options(self, engine: uow.Engine) -> None:
        make_session = uow.sessionmaker(engine, auto_commit=True, autoflush=False)
        session = make_session()
        assert isinstance(session, AsyncSession) and session.engine is engine
        assert session.auto_commit and not session.autoflush
        assert make_session(autoflush=True).autoflush
        async with make_session() as session:
            user = await session.insert(User(name="A", email="a@example.com"))
            assert await stored(engine, User, user.id) is not None

    async def test_current_session_follows_async_with(self, engine: uow.Engine) -> None:
        def helper() -> AsyncSession:
            return uow.require_current_session()

        assert uow.current_session() is None
        with pytest.raises(SessionStateError):
            uow.require_current_session()
        async with AsyncSession(engine) as outer:
            assert uow.current_session() is outer and helper() is outer
            async with AsyncSession(engine) as inner:
                assert helper() is inner
            assert helper() is outer
        assert uow.current_session() is None

    async def test_async_with_does_not_commit_by_default(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            user.age = 1
            new = await session.insert(User(name="New", email="new@example.com"))
        assert user.age == 30
        assert new.id is None
        assert (await stored(engine, User, alice.id)).age == 30
        assert await count_rows(engine, User) == 1

    async def test_async_with_atomic_commits_on_success_only(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine, atomic=True) as session:
            kept = User(name="Kept", email="kept@example.com")
            session.add(kept)
        assert kept.id is not None
        with pytest.raises(RuntimeError):
            async with AsyncSession(engine, atomic=True) as session:
                session.add(User(name="Lost", email="lost@example.com"))
                await session.flush()
                raise RuntimeError("fail")
        assert await count_rows(engine, User) == 1

    async def test_async_with_auto_rollback_off_keeps_object_values(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine, auto_rollback=False) as session:
            user = await session.get_one(User, alice.id)
            user.age = 1
            await session.flush()
        assert user.age == 1
        assert (await stored(engine, User, alice.id)).age == 30

    async def test_auto_commit_commits_every_immediate_operation(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine, auto_commit=True) as session:
            user = await session.insert(User(name="A", email="a@example.com"))
            assert not session.in_transaction()
            assert await stored(engine, User, user.id) is not None
            await session.update(user, age=5)
            assert (await stored(engine, User, user.id)).age == 5
            added = User(name="B", email="b@example.com")
            session.add(added)
        assert added.id is not None
        assert await stored(engine, User, added.id) is not None

    async def test_autoflush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(User(name="A", email="a@example.com"))
            await session.get(User, 12345)
            assert not session.journal.pending
        async with AsyncSession(engine, autoflush=False) as session:
            session.add(User(name="A", email="a@example.com"))
            await session.get(User, 12345)
            assert len(session.journal.pending) == 1

    # --- reads: windows, tests of existence, text, streams and parallel reads ----------------------

    async def test_limit_offset_count_exists_and_text_lookups(self, engine: uow.Engine) -> None:
        names = ["Ann", "bob", "Cy", "dee", "Eve"]
        async with AsyncSession(engine) as session:
            session.add_all([User(name=n, email=f"{n.lower()}@example.com", age=i) for i, n in enumerate(names)])
            await session.commit()
            query = session.query(User).order_by("age")
            assert [u.name for u in await query.limit(2).all()] == ["Ann", "bob"]
            assert [u.name for u in await query.offset(3).all()] == ["dee", "Eve"]
            assert [u.name for u in await query.offset(1).limit(2).all()] == ["bob", "Cy"]
            assert await query.limit(2).count() == 2 and await query.count() == 5
            assert await query.filter(age__gt=3).exists() and not await query.filter(age__gt=9).exists()
            assert [u.name for u in await query.filter(name__startswith="C").all()] == ["Cy"]
            assert [u.name for u in await query.filter(name__icontains="E").all()] == ["dee", "Eve"]
            assert [u.name for u in await query.filter(name__contains="e").all()] == ["dee", "Eve"]

    async def test_a_stream_yields_every_row_in_chunks_and_goes_on_past_a_refused_flush(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            session.add_all([User(name=f"u{i}", email=f"u{i}@example.com", age=i) for i in range(7)])
            await session.commit()
        async with AsyncSession(engine) as session:
            seen: list[int] = []
            async with contextlib.aclosing(session.query(User).order_by("age").stream(chunk_size=2)) as users:
                async for user in users:
                    seen.append(user.age)
                    if user.age == 2:  # a flush the database refuses ends neither the transaction nor the stream
                        bad = Post(title="bad", author_id=999_999)
                        session.add(bad)
                        with pytest.raises(IntegrityError):
                            await session.flush()
                        session.delete(bad)
            assert seen == list(range(7)) and session.in_transaction()

    async def test_a_failing_parallel_read_raises_its_own_error(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(StorageError):  # the employees' table was not created
                await session.parallel_exec([session.query(User), session.query(Employee)])

    async def test_parallel_reads_return_their_objects_in_order_through_the_identity_map(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(Post(title="Hello", author_id=alice.id))
            await session.commit()
            tracked = await session.get_one(User, alice.id)
            users, posts = await session.parallel_exec([session.query(User), session.query(Post).include(Post.author)])
            assert users == [tracked] and [post.title for post in posts] == ["Hello"]
            assert posts[0].author is tracked
            typed = await session.parallel_exec((session.query(User), session.query(Post)))  # a tuple gives a tuple
            assert type(typed) is tuple and typed[0] == [tracked] and typed[1][0].title == "Hello"

    async def test_commit_hooks_get_the_committed_events_and_a_failing_one_fails_nothing_else(
        self, engine: uow.Engine
    ) -> None:
        seen: list[list[str]] = []

        def failing(events: list[Any]) -> None:
            raise RuntimeError("audit sink down")

        keys: list[Any] = []

        def with_keys(events: list[Any]) -> None:  # the committing session resolves generated keys
            session = uow.require_current_session()
            keys.extend(session.journal.key_of(event) for event in events)
            seen.append([type(e).__name__ for e in events])

        engine.commit_hooks[:] = [with_keys, failing]

        async def later(events: list[Any]) -> None:  # a hook may be async
            await anyio.lowlevel.checkpoint()
            seen.append(["after the failing one"])

        engine.commit_hooks.append(later)
        try:
            async with AsyncSession(engine) as session:
                user = User(name="Hook", email="hook@example.com")
                session.add(user)
                with pytest.raises(CommitHookError, match=r"is committed.*audit sink down") as caught:
                    await session.commit()
                assert isinstance(caught.value.errors[0], RuntimeError)
                assert not session.in_transaction() and user.id is not None
        finally:
            engine.commit_hooks.clear()
        assert seen == [["Inserted"], ["after the failing one"]] and keys == [user.id]
        assert (await stored(engine, User, user.id)).name == "Hook"

    async def test_before_commit_hooks_write_in_the_transaction_they_commit(self, engine: uow.Engine) -> None:
        """An audit trail's entries commit with the data, in a chain, and a
        failing before-commit hook leaves nothing of its own behind."""
        trail = AuditTrail(actor=lambda: "conformance").install(engine)
        await engine.create_all(AuditEntry)
        failing = [True]

        def outbox(session: AsyncSession, events: list[Any]) -> None:
            if failing[0]:
                raise RuntimeError("outbox full")

        engine.before_commit_hooks.append(outbox)
        try:
            async with AsyncSession(engine) as session:
                post = Post(title="Audited", author=User(name="Au", email="au@example.com"))
                session.add(post)
                with pytest.raises(RuntimeError, match="outbox full"):
                    await session.commit()
                assert session.in_transaction() and await session.query(AuditEntry).count() == 0
                failing[0] = False
                await session.commit()
                post.title = "Edited"
                session.add(User(name="Twin", email="au@example.com"))
                with pytest.raises(IntegrityError):
                    await session.commit()  # refused at its flush: no hook runs
                await session.rollback()
                records = await trail.records(session)
                assert [(r.table, r.action, r.actor) for r in records] == [
                    ("conformance_users", "insert", "conformance"),
                    ("conformance_posts", "insert", "conformance"),
                ]
                assert records[1].new["author_id"] == post.author_id and records[1].key == post.id
                assert (await trail.verify(session)).entries == 2
        finally:
            engine.before_commit_hooks.clear()

    async def test_a_key_assigned_after_add_reaches_the_children_and_the_journal(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="Late", email="late@example.com")
            session.add(user)
            post = Post(title="Waits", author=user)
            session.add(post)
            user.id = 500
            await session.commit()
            assert post.author_id == 500 and not session.is_modified(post)
            inserted = next(e for e in session.journal if isinstance(e, Inserted) and e.table == "conformance_users")
            assert inserted.key is None and session.journal.key_of(inserted) == 500
        assert (await stored(engine, Post, post.id)).author_id == 500

    async def test_a_new_objects_key_changed_twice_before_its_flush_replays_to_the_stored_row(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="Twice", email="twice@example.com")
            session.add(user)
            post = Post(title="Follows", author=user)
            session.add(post)
            user.id = 600
            session.plan()  # records the first change
            user.id = 601
            await session.commit()
            assert post.author_id == 601
            journal = session.journal
            replayed = replay(
                journal.flushed, [table_info(User), table_info(Post)], generated_keys=journal.generated_keys
            )
        assert set(replayed["conformance_users"]) == {601}
        assert replayed["conformance_posts"][post.id]["author_id"] == 601
        assert (await stored(engine, User, 601)).name == "Twice"

    async def test_children_follow_a_new_parents_key_changed_before_its_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(User(id=700, name="Taken", email="taken@example.com"))
            await session.commit()
        async with AsyncSession(engine) as session:
            user = User(id=700 + 1, name="Renamed", email="renamed@example.com", posts=[Post(title="listed")])
            session.add(user)
            linked = Post(title="linked", author=user)
            session.add(linked)
            user.id = 710  # both children named 701, which would now be nobody's row
            await session.flush()
            assert [p.author_id for p in (*user.posts, linked)] == [710, 710]
            other = User(id=720, name="Moved", email="moved@example.com")
            session.add(other)
            moved = Post(title="moved", author=other)
            session.add(moved)
            await session.update(other, id=700 + 21)  # through update(), over a key no row has
            await session.commit()
            assert moved.author_id == 721 and not session.is_modified(moved)
            replayed = replay(
                session.journal, [table_info(User), table_info(Post)], generated_keys=session.journal.generated_keys
            )
        for post in (*user.posts, linked, moved):
            assert (await stored(engine, Post, post.id)).author_id == post.author_id
            assert replayed["conformance_posts"][post.id]["author_id"] == post.author_id
        assert (await stored(engine, User, 700)).name == "Taken"  # no child landed on the row of the old key's value

    async def test_a_new_parent_deleted_before_its_flush_leaves_its_set_null_children_unlinked(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            reviewer = User(name="Gone", email="gone@example.com")
            review = Review(stars=5, reviewer=reviewer)
            session.add(review)
            session.delete(reviewer)  # never written: the review waits for a key that will not come
            await session.commit()
            assert review.reviewer_id is None and reviewer not in session
        assert (await stored(engine, Review, review.id)).reviewer_id is None
        assert await count_rows(engine, User) == 0

    async def test_a_refused_remove_of_a_new_object_leaves_it_new(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(User(name="Taken", email="taken@example.com"))
            await session.commit()
            blocker = User(name="Blocker", email="taken@example.com")
            session.add(blocker)  # every flush is refused while it is pending
            reviewer = User(name="New", email="new@example.com")
            review = Review(stars=3, reviewer=reviewer)
            session.add(review)
            reviewer.id = 920  # given after add()
            with pytest.raises(IntegrityError):
                await session.remove(reviewer)
            assert reviewer in session and review.reviewer_id is None  # as before the call: new, waiting
            blocker.email = "free@example.com"
            await session.commit()
            assert review.reviewer_id == 920 and not session.is_modified(review)
            journal = session.journal
            replayed = replay(journal, [table_info(User), table_info(Review)], generated_keys=journal.generated_keys)
        assert replayed["conformance_reviews"][review.id]["reviewer_id"] == 920
        assert (await stored(engine, Review, review.id)).reviewer_id == 920

    async def test_a_refused_change_of_a_child_keeps_it_waiting_for_its_new_parents_key(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            session.add(Post(title="taken", slug="taken"))
            await session.commit()
            author = User(name="New", email="new@example.com")
            post = Post(title="waits", author=author)
            session.add(post)
            with pytest.raises(IntegrityError):
                await session.update(post, slug="taken")  # undone: the post still waits for its author's key
            await session.commit()
            assert post.author_id == author.id is not None and not session.is_modified(post)
        assert (await stored(engine, Post, post.id)).author_id == author.id

    async def test_adding_a_child_its_new_parent_lists_adds_both_once(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            post = Post(title="listed")
            user = User(name="Lists", email="lists@example.com")
            user.posts = [post]  # assigned: the post's relation points back at the user
            session.add(post)  # the parent comes along, and its list holds the post being added
            await session.commit()
            assert post.author_id == user.id is not None
            assert [p.title for p in await session.query(Post).filter(author_id=user.id).all()] == ["listed"]
            assert [type(e).__name__ for e in session.journal] == ["Inserted", "Inserted"]

    async def test_a_new_rows_changed_key_orders_the_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            child = Category(id=2, name="child")
            session.add(child)
            root = Category(id=1, name="root")
            session.add(root)
            child.parent = root
            root.id = 10  # the root is inserted first, under the key it now has
            await session.commit()
            assert child.parent_id == 10
            loop_a, loop_b = Category(id=3, name="a"), Category(id=4, name="b")
            loop_b.parent, loop_a.parent = loop_a, loop_b
            session.add_all([loop_a, loop_b])
            loop_a.id, loop_b.id = 30, 40  # a cycle: broken through a follow-up update, keys and all
            await session.commit()
            assert (loop_a.parent_id, loop_b.parent_id) == (40, 30)
            await session.remove(child)
            taker = Category(id=5, name="taker")
            session.add(taker)
            session.delete(await session.get_one(Category, 30))
            taker.id = 30  # takes the key of the row deleted in the same flush: the delete goes first
            await session.commit()
        assert (await stored(engine, Category, 30)).name == "taker"
        assert await stored(engine, Category, 40) is None  # its parent's delete cascaded to it

    async def test_a_key_taken_by_a_new_object_after_another_gave_it_up_replays(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first = User(name="First", email="first@example.com")
            second = User(name="Second", email="second@example.com")
            session.add_all([first, second])
            first.id = 910
            session.delete(first)  # never written
            second.id = 910
            await session.commit()
            journal = session.journal
            replayed = replay(journal, [table_info(User)], generated_keys=journal.generated_keys)
        assert replayed["conformance_users"] == {910: table_info(User).row_dict(table_info(User).values_of(second))}
        assert (await stored(engine, User, 910)).name == "Second"

    async def test_a_child_given_its_foreign_key_alone_keeps_it_when_the_parents_key_changes(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            session.add(User(id=730, name="Old", email="old@example.com"))
            await session.commit()
        async with AsyncSession(engine) as session:
            user = User(id=731, name="New", email="new@example.com")
            session.add(user)
            post = Post(title="by column", author_id=730)
            session.add(post)
            user.id = 732
            await session.commit()
            assert post.author_id == 730  # what the application wrote, not a relation
        assert (await stored(engine, Post, post.id)).author_id == 730

    async def test_an_upsert_landing_on_another_rows_key_is_known_by_that_key(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="A", email="a@example.com")
            session.add(user)
            await session.commit()
            landed = await session.upsert(User(id=999, name="B", email="a@example.com"), "email", "name")
            await session.commit()
            upserted = session.journal[-1]
            assert isinstance(upserted, Upserted) and upserted.key == 999  # what the call named
            assert landed is user and session.journal.key_of(upserted) == user.id  # where it landed

    async def test_an_upsert_matching_a_tracked_object_whose_row_moved_on_is_a_concurrency_error(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            tracked = User(name="Two", email="t@example.com")
            session.add(tracked)
            await session.commit()
            async with AsyncSession(engine) as other:  # the row moves away, another takes its email
                moved = await other.get_one(User, tracked.id)
                moved.email = "z@example.com"
                other.add(User(name="Three", email="t@example.com"))
                await other.commit()
            with pytest.raises(ConcurrencyError, match="roll back and retry"):
                await session.upsert(User(name="Five", email="t@example.com"), "email", "name")
            assert tracked.name == "Two"  # not given another row's values
            await session.rollback()
            await session.refresh(tracked)
            assert (tracked.name, tracked.email) == ("Two", "z@example.com")
            inserted = session.journal[0]
            assert isinstance(inserted, Inserted) and session.journal.key_of(inserted) == tracked.id

    async def test_an_upsert_landing_on_a_tracked_row_it_did_not_match_is_a_concurrency_error(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            tracked = User(name="Kept", email="kept@example.com", age=1)
            session.add(tracked)
            await session.commit()
            async with AsyncSession(engine) as other:  # the row takes the email the upsert names
                (await other.get_one(User, tracked.id)).email = "taken@example.com"
                await other.commit()
            with pytest.raises(ConcurrencyError, match="tracks with other values"):
                await session.upsert(User(name="New", email="taken@example.com", age=9), "email", "age")
            assert (tracked.email, tracked.age) == ("kept@example.com", 1)  # not given the row's values
            await session.rollback()
            assert (tracked.email, tracked.age) == ("kept@example.com", 1)
            await session.refresh(tracked)
            assert (tracked.email, tracked.age) == ("taken@example.com", 1)  # the upsert was rolled back

    async def test_an_upsert_landing_on_an_expired_object_gives_it_the_rows_values(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            tracked = User(name="Kept", email="kept@example.com", age=1)
            session.add(tracked)
            await session.commit()
            async with AsyncSession(engine) as other:
                (await other.get_one(User, tracked.id)).email = "taken@example.com"
                await other.commit()
            session.expire(tracked)  # told to take what the database holds
            landed = await session.upsert(User(name="New", email="taken@example.com", age=9), "email", "age")
            assert landed is tracked and (tracked.email, tracked.age) == ("taken@example.com", 9)
            await session.rollback()
            assert (await session.get_one(User, tracked.id)).age == 1  # still expired: read again
            assert tracked.email == "taken@example.com"

    async def test_upsert_all_of_repeated_values_lands_them_in_turn_on_one_row(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first, second = await session.upsert_all(
                [User(name="First", email="same@example.com"), User(name="Second", email="same@example.com")],
                "email",
            )
            assert first is second and (first.name, first.id) == ("Second", first.id)
            await session.commit()
            assert [u.name for u in await session.query(User).all()] == ["Second"]
            third = [User(name="Third", email="same@example.com"), User(name="Third", email="same@example.com")]
            again = await session.upsert_all(third, "email")
            assert again == [first, first] and first.name == "Third"
            await session.rollback()
            assert first.name == "Second"
        assert (await stored(engine, User, first.id)).name == "Second"

    async def test_undoing_an_upsert_that_landed_on_another_row_keeps_the_row_it_named(
        self, engine: uow.Engine
    ) -> None:
        async with AsyncSession(engine) as session:
            session.add_all(
                [User(id=1, name="One", email="a@example.com"), User(id=999, name="Nine", email="z@example.com")]
            )
            await session.commit()
        async with AsyncSession(engine) as session:
            nine = await session.get_one(User, 999)
            landed = await session.upsert(User(id=999, name="B", email="a@example.com"), "email", "name")
            assert landed.id == 1
            await session.rollback()
            assert nine in session and nine.name == "Nine"  # the row it named was never touched

    async def test_an_auto_commit_upsert_refused_after_its_write_commits_nothing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine, auto_commit=True) as session:
            tracked = await session.insert(User(name="Two", email="t@example.com"))
            async with AsyncSession(engine) as other:  # the row moves away, another takes its email
                (await other.get_one(User, tracked.id)).email = "z@example.com"
                other.add(User(name="Three", email="t@example.com"))
                await other.commit()
            with pytest.raises(ConcurrencyError):
                await session.upsert(User(name="Five", email="t@example.com"), "email", "name")
            assert not session.in_transaction()
            await session.insert(User(name="Later", email="later@example.com"))
        async with AsyncSession(engine) as session:
            names = sorted(u.name for u in await session.query(User).all())
        assert names == ["Later", "Three", "Two"]  # the refused upsert's write did not ride along

    async def test_auto_commit_operations_in_a_savepoint_wait_for_it(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine, auto_commit=True) as session:
            with pytest.raises(RuntimeError, match="undo"):
                async with session.begin_nested():
                    await session.insert(User(name="Undone", email="undone@example.com"))
                    raise RuntimeError("undo")
            async with session.begin_nested():
                await session.insert(User(name="Kept", email="kept@example.com"))
            assert session.in_transaction()  # the savepoint's work commits with the transaction
            await session.insert(User(name="Next", email="next@example.com"))
            assert not session.in_transaction()
        async with AsyncSession(engine) as session:
            assert sorted(u.name for u in await session.query(User).all()) == ["Kept", "Next"]

    async def test_a_begin_block_whose_commit_fails_rolls_back(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(User(name="A", email="a@example.com"))
            await session.commit()
            twin = User(name="Twin", email="a@example.com")
            with pytest.raises(IntegrityError):
                async with session.begin():
                    session.add(twin)
            assert not session.in_transaction() and twin not in session and twin.id is None
            async with session.begin():  # nothing is left over to refuse a new block
                session.add(User(name="B", email="b@example.com"))
            assert await session.query(User).count() == 2

    async def test_small_spellings_a_user_reaches_for(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ModelDefinitionError, match="add_all"):
                session.add([User(name="A", email="a@example.com")])  # type: ignore[arg-type]
            await session.insert(User(name="A", email="a@example.com"))
            # one column may be named alone
            upserted = await session.upsert(User(name="B", email="a@example.com"), "email", "name")
            assert upserted.name == "B"
            streamed = [u async for u in session.query(User).stream(track=True)]
            assert streamed == [upserted] and streamed[0] in session
            await session.commit()
            flushed = session.journal.flushed
        replayed = uow.replay(flushed, [table_info(User)])  # the tables as a list, as decode takes them
        assert [row["name"] for row in replayed["conformance_users"].values()] == ["B"]

    # --- raw SQL ----------------------------------------------------------------------------------

    async def test_execute_raw(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="Raw", email="raw@example.com")
            session.add(user)
            if not engine.adapter.supports_raw_sql:
                with pytest.raises(UnsupportedOperationError):
                    await session.execute_raw("SELECT 1")
                return
            placeholder = _raw_placeholder(engine, 1)
            rows = await session.execute_raw(
                f"SELECT id, name FROM conformance_users WHERE email = {placeholder}", ["raw@example.com"]
            )
            assert user.id is not None
            assert [tuple(row) for row in rows] == [(user.id, "Raw")]
            assert await session.execute_raw(f"SELECT id FROM conformance_users WHERE id = {placeholder}", [-1]) == []

    async def test_a_refused_flush_after_raw_sql_keeps_what_the_sql_wrote(
        self, engine: uow.Engine, alice: User
    ) -> None:
        if not engine.adapter.supports_raw_sql:
            return
        async with AsyncSession(engine) as session:
            placeholder = _raw_placeholder(engine, 1)
            await session.execute_raw(f"UPDATE conformance_users SET age = 99 WHERE id = {placeholder}", [alice.id])
            duplicate = User(name="Dup", email=alice.email)
            session.add(duplicate)
            with pytest.raises(IntegrityError):
                await session.flush()  # undoes itself only: the raw update stays in the transaction
            assert session.in_transaction()
            duplicate.email = "other@example.com"
            with pytest.raises(SessionStateError, match="work in progress"):
                async with session.begin():  # its end would roll back what the raw SQL wrote
                    pass
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 99
        assert await count_rows(engine, User) == 2

    async def test_a_savepoint_release_cancelled_half_way_leaves_the_savepoints_as_the_database_has_them(
        self, engine: uow.Engine
    ) -> None:
        for steps in _CANCEL_POINTS[:40]:
            async with AsyncSession(engine) as session:
                before = User(name="Before", email=f"before{steps}@example.com")
                session.add(before)
                await session.flush()
                savepoint = await session.begin_nested()
                session.add(User(name="Inside", email=f"inside{steps}@example.com"))
                await session.flush()
                cancelled = await _cancel_after(steps, savepoint.commit)
                with contextlib.suppress(SessionStateError):  # released in full before the cancel landed
                    await savepoint.rollback()
                assert before.id is not None and session.in_transaction()  # nothing before the savepoint lost
                await session.rollback()
                if not cancelled:
                    break

    # --- the journal and the plan -------------------------------------------------------------------

    async def test_one_event_per_mutating_call(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="A", email="a@example.com")
            session.add(user)
            assert [type(e) for e in session.journal] == [Inserted]
            await session.flush()
            user.name = "B"
            assert len(session.journal) == 1
            await session.flush()
            assert [type(e) for e in session.journal] == [Inserted, Updated]
            assigned = session.journal[-1]
            assert isinstance(assigned, Updated)
            assert (assigned.old, assigned.new) == ({"name": "A"}, {"name": "B"})
            await session.update(user, age=3)
            note = await session.insert(Note(text="n"))
            await session.soft_delete(note)
            await session.restore(note)
            await session.upsert(User(name="C", email="a@example.com"), conflict_target=["email"])
            await session.bulk_update(User, {"age": 4}, email="a@example.com")
            await session.bulk_insert(User, [{"name": "D", "email": "d@example.com"}])
            await session.bulk_delete(User, email="d@example.com")
            await session.remove(user)
            assert [type(e) for e in session.journal] == [
                Inserted,
                Updated,
                Updated,
                Inserted,
                SoftDeleted,
                Restored,
                Upserted,
                BulkUpdated,
                Inserted,
                BulkDeleted,
                Deleted,
            ]
            seqs = [e.seq for e in session.journal]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            with pytest.raises(TypeError):
                session.journal[0] = session.journal[1]  # type: ignore[index]

    async def test_journal_encodes_and_decodes_to_equal_events(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            user = User(name="A", email="a@example.com")
            sample = _sample()
            session.add_all([Post(title="p", author=user), sample])
            await session.flush()
            user.age = 5
            sample.amount = decimal.Decimal("1.5")
            await session.flush()
            await session.bulk_update(Sample, {"flag": False}, color=Color.GREEN)
            await session.remove(user)
            events = list(session.journal)
            tables = [table_info(m) for m in MODELS]
            for format in ("json", "msgpack"):
                encoded = session.journal.encode(format)
                assert uow.decode(encoded, tables, format) == events

    async def test_plan_explains_what_the_next_flush_writes_without_writing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            session.add(Post(title="Hello", author=alice))
            plan = session.plan()
            assert len(plan.batches) == 2
            explained = plan.explain()
            assert "conformance_users" in explained and "conformance_posts" in explained
            assert explained.index("conformance_users") < explained.index("conformance_posts")
            assert len(session.journal) == 2 and len(session.journal.pending) == 2
            assert alice.id is None and not session.in_transaction()
            await session.commit()
            alice.name = "Alicia"
            assert "conformance_users" in session.plan().explain()
            # like a flush, plan() records the assignment; nothing is written yet
            assert len(session.journal) == 3 and len(session.journal.pending) == 1
            async with AsyncSession(engine) as other:
                assert (await other.get_one(User, alice.id)).name == "Alice"
            await session.commit()
            assert session.plan().batches == ()

    async def test_plan_shows_relation_changes_and_cascades_before_the_flush(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            alice = User(name="Alice", email="alice@example.com")
            post = Post(title="Hello", author=alice)
            session.add(post)
            await session.commit()
            bob = User(name="Bob", email="bob@example.com")
            post.author = bob
            explained = session.plan().explain()
            assert "INSERT conformance_users" in explained and "UPDATE conformance_posts" in explained
            await session.flush()
            assert post.author_id == bob.id
            session.delete(bob)
            explained = session.plan().explain()
            assert "DELETE conformance_posts" in explained and "DELETE conformance_users" in explained
            assert explained.index("DELETE conformance_posts") < explained.index("DELETE conformance_users")
            await session.commit()
            assert post not in session

    # --- optimistic locking and failures -------------------------------------------------------------

    async def test_a_bulk_update_of_a_versioned_table_bumps_versions_so_stale_writes_are_refused(
        self, engine: uow.Engine
    ) -> None:
        async def bulk_update(session: AsyncSession, account: Account) -> Account:
            tracked = await session.get_one(Account, account.id)
            assert await session.bulk_update(Account, {"balance": 0}, owner="Ann") == 1
            return tracked

        await _stale_write_refused_after(engine, bulk_update)

    async def test_an_upsert_that_updates_a_versioned_row_bumps_its_version(self, engine: uow.Engine) -> None:
        async def upsert(session: AsyncSession, account: Account) -> Account:
            return await session.upsert(Account(id=account.id, owner="Ann", balance=0))

        account = await _stale_write_refused_after(engine, upsert)
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError, match="version"):
                await session.upsert(Account(id=account.id, owner="Ann"), update_fields=["version"])

    async def test_a_merged_copy_made_from_an_old_version_is_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            account = Account(owner="Ann", balance=10)
            session.add(account)
            await session.commit()
            form = Account(id=account.id, owner="Ann", balance=10)  # a copy kept aside
            form.version = account.version
            account.balance = 20
            await session.commit()  # the row moves on to the next version
        async with AsyncSession(engine) as session:
            form.balance = 99
            merged = await session.merge(form)
            with pytest.raises(ConcurrencyError, match="another transaction changed it"):
                await session.commit()
            await session.rollback()
            assert (merged.balance, merged.version) == (20, form.version + 1)
            current = Account(id=account.id, owner="Ann", balance=30)
            current.version = merged.version
            await session.merge(current)  # a copy of the current version goes through
            await session.commit()
            assert merged.version == current.version + 1
        assert (await stored(engine, Account, account.id)).balance == 30

    async def test_upsert_all_checks_every_object_before_recording_any(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            good = User(name="Good", email="good@example.com")
            bad = User(name="Bad", email="bad@example.com", age="old")  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match=r"User\.age"):
                await session.upsert_all([good, bad], conflict_target=["email"])
            assert not session.journal.pending and good not in session
            await session.commit()
        assert await count_rows(engine, User) == 0

    async def test_optimistic_locking_refuses_a_stale_update_and_loses_nothing(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            account = await session.insert(Account(owner="Ann", balance=10))
            await session.commit()
            assert account.version == 1
        async with AsyncSession(engine) as first, AsyncSession(engine) as second:
            mine = await first.get_one(Account, account.id)
            await first.commit()
            theirs = await second.get_one(Account, account.id)
            theirs.balance = 20
            await second.commit()
            assert theirs.version == 2
            mine.balance = 15
            with pytest.raises(ConcurrencyError):
                await first.commit()
            assert mine.balance == 15
            pending = [e for e in first.journal.pending if isinstance(e, Updated)]
            assert len(pending) == 1 and pending[0].new["balance"] == 15
            assert first.is_modified(mine)
            await first.rollback()
            assert mine.balance == 10
            await first.refresh(mine)
            assert (mine.balance, mine.version) == (20, 2)
            await first.update(mine, balance=mine.balance + 5)
            await first.commit()
        saved = await stored(engine, Account, account.id)
        assert (saved.balance, saved.version) == (25, 3)

    async def test_stale_delete_is_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            account = await session.insert(Account(owner="Ann"))
            await session.commit()
        async with AsyncSession(engine) as first, AsyncSession(engine) as second:
            mine = await first.get_one(Account, account.id)
            await first.commit()
            await second.update(await second.get_one(Account, account.id), balance=1)
            await second.commit()
            with pytest.raises(ConcurrencyError):
                await first.remove(mine)
            # the refused delete is dropped: the object is still tracked as it was
            assert mine in first and not first.journal.pending
            await first.refresh(mine)
            await first.remove(mine)
            await first.commit()
        assert await stored(engine, Account, account.id) is None

    async def test_failed_flush_is_atomic_and_names_the_culprit(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(Post(title="taken", slug="taken"))
            await session.commit()
        async with AsyncSession(engine) as session:
            author = User(name="Author", email="author@example.com")
            good = Post(title="good", slug="good", author=author)
            bad = Post(title="bad", slug="taken", author=author)
            session.add_all([good, bad])
            assert len(session.plan().batches) == 2
            pending_before = list(session.journal.pending)
            with pytest.raises(IntegrityError) as caught:
                await session.flush()
            error = caught.value
            assert error.kind == "unique"
            assert error.table == "conformance_posts" and error.columns == ("slug",)
            assert error.model is Post
            assert isinstance(error.event, Inserted) and error.event.values["slug"] == "taken"
            assert error.event in pending_before
            assert error.key is not None
            assert list(session.journal.pending) == pending_before
            assert author.id is None and good.id is None and bad.id is None
            assert not session.in_transaction()
            assert await count_rows(engine, User) == 0
            bad.slug = "fixed"
            await session.commit()
            assert author.id is not None and bad.author_id == author.id
        assert (await stored(engine, Post, bad.id)).slug == "fixed"
        assert (await stored(engine, User, author.id)).name == "Author"

    async def test_failed_update_names_the_key_of_the_row(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(Post(title="taken", slug="taken"))
            other = await session.insert(Post(title="other", slug="other"))
            await session.commit()
        async with AsyncSession(engine) as session:
            post = await session.get_one(Post, other.id)
            post.author = User(name="New", email="new@example.com")
            post.slug = "taken"
            with pytest.raises(IntegrityError) as caught:
                await session.commit()
            assert caught.value.kind == "unique"
            assert caught.value.model is Post and caught.value.key == other.id
            assert isinstance(caught.value.event, Updated)
            assert post.slug == "taken" and session.is_modified(post)
            post.slug = "other2"
            await session.commit()
        saved = await stored(engine, Post, other.id)
        assert saved.slug == "other2" and saved.author_id is not None

    async def test_failed_flush_after_an_earlier_flush_keeps_the_earlier_one(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first = await session.insert(User(name="First", email="first@example.com"))
            session.add(User(name="Dup", email="first@example.com"))
            with pytest.raises(IntegrityError):
                await session.flush()
            assert first in session and first.id is not None
            assert len(session.journal.pending) == 1
            await session.rollback()
            assert first.id is None
        assert await count_rows(engine, User) == 0

    async def test_a_failed_flush_after_several_keeps_every_earlier_one(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first = await session.insert(User(name="First", email="first@example.com"))
            second = await session.insert(User(name="Second", email="second@example.com"))
            third = await session.insert(User(name="Third", email="third@example.com"))
            dup = User(name="Dup", email="second@example.com")
            session.add(dup)
            with pytest.raises(IntegrityError):
                await session.flush()
            assert all(user.id is not None for user in (first, second, third)) and dup.id is None
            dup.email = "fourth@example.com"
            await session.flush()
            await session.commit()
        assert await count_rows(engine, User) == 4
        assert (await stored(engine, User, dup.id)).email == "fourth@example.com"

    async def test_foreign_key_violation_is_an_integrity_error(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(Post(title="orphan", author_id=987654))
            with pytest.raises(IntegrityError) as caught:
                await session.commit()
            assert caught.value.kind == "foreign_key"
            assert caught.value.model is Post

    async def test_failed_bulk_update_restores_tracked_objects(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            one, two = await session.insert_all(
                [User(name="one", email="1@example.com", age=1), User(name="two", email="2@example.com", age=1)]
            )
            await session.commit()
            events = len(session.journal)
            with pytest.raises(IntegrityError) as caught:
                await session.bulk_update(User, {"email": "same@example.com"}, age=1)
            assert caught.value.kind == "unique"
            assert (one.email, two.email) == ("1@example.com", "2@example.com")
            assert len(session.journal) == events and not session.journal.pending
            assert await session.bulk_update(User, {"age": 2}, age=1) == 2
            assert (one.age, two.age) == (2, 2)
            await session.commit()
        assert (await stored(engine, User, two.id)).email == "2@example.com"

    async def test_a_refused_immediate_operation_leaves_an_auto_commit_session_usable(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(User(name="Taken", email="taken@example.com"))
            await session.commit()
        async with AsyncSession(engine, auto_commit=True) as session:
            duplicate = User(name="Dup", email="taken@example.com")
            with pytest.raises(IntegrityError):
                await session.insert(duplicate)
            assert duplicate not in session and duplicate.id is None
            assert not session.journal.pending
            kept = await session.insert(User(name="Kept", email="kept@example.com"))
            assert kept.id is not None
        # the clean exit raises nothing and writes nothing more
        assert await count_rows(engine, User) == 2
        assert (await stored(engine, User, kept.id)).name == "Kept"

    async def test_a_failed_immediate_operation_drops_only_its_own_events(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            taken = await session.insert(User(name="Taken", email="taken@example.com"))
            other = await session.insert(User(name="Other", email="other@example.com"))
            await session.commit()
            taken.name = "Renamed"  # an assignment not recorded yet
            waiting = User(name="Waiting", email="waiting@example.com")
            session.add(waiting)
            newcomer = User(name="Dup", email="taken@example.com")
            with pytest.raises(IntegrityError):
                await session.insert(Post(title="p", author=newcomer))
            assert newcomer not in session and newcomer.id is None
            with pytest.raises(IntegrityError):
                await session.update(other, email="taken@example.com")
            assert other.email == "other@example.com" and not session.is_modified(other)
            assert taken.name == "Renamed" and waiting in session and waiting.id is None
            pending = session.journal.pending
            assert sorted(type(e).__name__ for e in pending) == ["Inserted", "Updated"]
            assert [e.key for e in pending if isinstance(e, Updated)] == [taken.id]
            await session.commit()
        assert (await stored(engine, User, taken.id)).name == "Renamed"
        assert (await stored(engine, User, other.id)).email == "other@example.com"
        assert await count_rows(engine, User) == 3
        assert await count_rows(engine, Post) == 0

    async def test_a_refused_add_adds_nothing_it_brought_along(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            author = User(name="A", email="a@example.com")
            with pytest.raises(ValidationError):
                session.add(Post(title=5, author=author))  # type: ignore[arg-type]
            assert author not in session and len(session) == 0 and not session.journal.pending
            good = User(name="G", email="g@example.com")
            with pytest.raises(ValidationError):
                session.add_all([good, User(name=None, email="n@example.com")])  # type: ignore[arg-type]
            assert good not in session and not session.journal.pending
            with pytest.raises(ValidationError):
                await session.insert_all([good, User(name="B", email="b@example.com", age="old")])  # type: ignore[arg-type]
            assert good not in session and good.id is None and not session.journal.pending
            session.add(Post(title="fixed", author=author))
            await session.commit()
        assert await count_rows(engine, User) == 1
        assert await count_rows(engine, Post) == 1

    async def test_a_duplicate_given_primary_key_is_an_integrity_error(self, engine: uow.Engine) -> None:
        sample = _sample()
        async with AsyncSession(engine) as session:
            await session.insert(sample)
            await session.commit()
        async with AsyncSession(engine) as session:
            session.add(_sample(id=sample.id, label="duplicate"))
            with pytest.raises(IntegrityError) as caught:
                await session.commit()
            assert caught.value.kind == "primary_key"
            assert caught.value.model is Sample and caught.value.key == sample.id
        assert (await stored(engine, Sample, sample.id)).label == "sample"

    async def test_a_duplicate_within_one_batch_names_the_row_refused(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            first = User(name="First", email="one@example.com")
            twin = User(name="Twin", email="twin@example.com")
            second_twin = User(name="Second twin", email="twin@example.com")
            session.add_all([first, twin, second_twin])
            with pytest.raises(IntegrityError) as caught:
                await session.flush()
            error = caught.value
            assert (error.kind, error.columns, error.row_index) == ("unique", ("email",), 2)
            assert isinstance(error.event, Inserted) and error.event.values["name"] == "Second twin"

    # --- concurrency and cancellation -----------------------------------------------------------------

    async def test_a_locking_read_makes_another_wait_until_the_first_commits(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            await session.insert(Account(owner="shared", balance=100))
            await session.commit()
        steps: list[tuple[str, int]] = []
        first_locked = anyio.Event()

        async def withdraw(name: str, amount: int, hold: anyio.Event | None) -> None:
            async with AsyncSession(engine) as session:
                account = await session.query(Account).filter(owner="shared").for_update().one()
                steps.append((f"{name} read", account.balance))
                if hold is not None:
                    first_locked.set()
                    await hold.wait()
                account.balance -= amount
                await session.commit()
                steps.append((f"{name} committed", account.balance))

        release = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(withdraw, "first", 10, release)
            await first_locked.wait()
            tasks.start_soon(withdraw, "second", 30, None)
            await anyio.sleep(0.3)  # the second waits for the lock all along
            assert steps == [("first read", 100)]
            release.set()
        # the second read what the first committed: no update lost
        assert sorted(steps) == [
            ("first committed", 90),
            ("first read", 100),
            ("second committed", 60),
            ("second read", 90),
        ]
        async with AsyncSession(engine) as session:
            assert (await session.query(Account).filter(owner="shared").one()).balance == 60

    async def _holds_lock(self, engine: uow.Engine, account: Account, session: AsyncSession) -> bool:
        """Whether another session's locking read of ``account`` waits while
        ``session`` stays open (it is let go of by ``session``'s commit)."""
        read = anyio.Event()

        async def other() -> None:
            async with AsyncSession(engine) as second:
                await second.get_one(Account, account.id, for_update=True)
                read.set()
                await second.commit()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(other)
            with anyio.move_on_after(0.3):
                await read.wait()
            waited = not read.is_set()
            await session.commit()
        return waited

    async def test_a_lock_outlives_a_refused_flush_and_a_savepoint_rolled_back(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            account = await session.insert(Account(owner="held", balance=100))
            await session.commit()
        async with AsyncSession(engine) as session:
            await session.get_one(Account, account.id, for_update=True)
            clash = User(name="Clash", email="clash@example.com")
            session.add_all([User(name="First", email="clash@example.com"), clash])
            with pytest.raises(IntegrityError):
                await session.flush()  # undoes only itself: the transaction and its lock go on
            assert session.in_transaction()
            clash.email = "other@example.com"
            assert await self._holds_lock(engine, account, session)
        async with AsyncSession(engine) as session:
            savepoint = await session.begin_nested()
            locked = await session.get_one(Account, account.id, for_update=True)
            await savepoint.rollback()  # PostgreSQL lets go of a lock taken inside: it is taken again
            assert locked.balance == 100 and session.in_transaction()
            assert await self._holds_lock(engine, account, session)

    async def test_a_locking_read_of_a_row_deleted_elsewhere_stops_tracking_its_object(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.commit()
            async with AsyncSession(engine) as other:
                await other.remove(await other.get_one(User, alice.id))
                await other.commit()
            assert await session.get(User, alice.id, for_update=True) is None
            assert user not in session and await session.get(User, alice.id) is None

    async def test_a_locking_read_gives_tracked_objects_the_rows_values(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.commit()  # the object stays, with the values read
            async with AsyncSession(engine) as other:
                (await other.get_one(User, alice.id)).age = 45
                await other.commit()
            assert await session.get(User, alice.id) is user and user.age == 30  # a plain read keeps them
            await session.rollback()
            locked = await session.get(User, alice.id, for_update=True)
            assert locked is user and user.age == 45 and not session.is_modified(user)
            user.age += 1
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 46

    async def test_a_locking_read_flushes_first_even_without_autoflush(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine, autoflush=False) as session:
            user = await session.get_one(User, alice.id)
            user.name = "Alicia"
            found = await session.query(User).filter(name="Alicia").for_update().all()
            assert found == [user] and user.name == "Alicia" and not session.journal.pending
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Alicia"

    async def test_reads_that_cannot_hold_a_lock_refuse_for_update(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            locking = session.query(User).for_update()
            with pytest.raises(QueryError, match="locks no rows"):
                await locking.count()
            with pytest.raises(QueryError, match="locks no rows"):
                await locking.exists()
            with pytest.raises(QueryError, match="locks no rows"):
                await anext(session.stream(locking))
            with pytest.raises(QueryError, match="outside the session's transaction"):
                await session.parallel_exec([uow.select(User).for_update()])
            assert [u.id for u in await session.scalars(uow.select(User).for_update())] == [alice.id]

    async def test_a_session_entered_in_two_tasks_is_refused_in_the_second(self, engine: uow.Engine) -> None:
        session = AsyncSession(engine)
        entered = anyio.Event()
        outcome: list[BaseException | None] = []

        async def first() -> None:
            async with session:
                session.add(User(name="First", email="first@example.com"))
                entered.set()
                await anyio.sleep(0.05)
                await session.commit()

        async def second() -> None:
            await entered.wait()
            try:
                async with session:
                    outcome.append(None)
            except SessionStateError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            tasks.start_soon(second)
        assert len(outcome) == 1 and isinstance(outcome[0], SessionStateError)
        assert await count_rows(engine, User, email="first@example.com") == 1  # the first task's work went on

    async def test_one_session_used_from_two_tasks_is_refused(self, engine: uow.Engine, alice: User) -> None:
        outcomes: list[BaseException | None] = []

        async def run(work: Callable[[], Any]) -> None:
            try:
                await work()
            except SessionStateError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

        async with AsyncSession(engine) as session:
            session.add_all([User(name=f"u{i}", email=f"u{i}@example.com") for i in range(50)])
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run, session.commit)
                tasks.start_soon(run, lambda: session.get(User, alice.id))
            refused = [o for o in outcomes if o is not None]
            assert len(refused) == 1 and "task" in str(refused[0])
            await session.commit()
            assert await session.get_one(User, alice.id) is not None
        assert await count_rows(engine, User) == 51

    async def test_reads_of_tracked_objects_are_refused_while_another_task_flushes(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            session.add_all([User(name=f"u{i}", email=f"u{i}@example.com") for i in range(50)])
            refused: list[SessionStateError] = []

            async def read_while_busy() -> None:
                for _ in range(1000):
                    await anyio.lowlevel.checkpoint()
                    if not session.journal.pending:
                        return
                    try:
                        await session.get(User, alice.id)
                    except SessionStateError as exc:
                        refused.append(exc)
                        return

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(session.commit)
                tasks.start_soon(read_while_busy)
            assert refused, "a read from a second task during commit was not refused"
            assert await session.get(User, alice.id) is user

    async def test_cancelled_commit_leaves_a_defined_state(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            for steps in _CANCEL_POINTS:
                users = [User(name=f"u{steps}-{i}", email=f"u{steps}-{i}@example.com") for i in range(3)]
                session.add_all(users)
                cancelled = await _cancel_after(steps, session.commit)
                if cancelled and session.journal.pending:
                    # nothing of it was committed and its events wait for the next commit
                    assert all(u.id is None for u in users)
                    assert not session.in_transaction()
                    assert await count_rows(engine, User, name=users[0].name) == 0
                await session.commit()
                assert not session.journal.pending and not session.in_transaction()
                for user in users:
                    assert (await stored(engine, User, user.id)).email == user.email
                assert await count_rows(engine, User) == len(session)
                if not cancelled:
                    break
            assert not cancelled

    async def test_cancelled_commit_keeps_earlier_flushes_of_the_transaction(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            for steps in _CANCEL_POINTS:
                early = await session.insert(User(name=f"early{steps}", email=f"early{steps}@example.com"))
                late = [User(name=f"late{steps}-{i}", email=f"late{steps}-{i}@example.com") for i in range(3)]
                session.add_all(late)
                early.age = 5
                cancelled = await _cancel_after(steps, session.commit)
                if cancelled and session.journal.pending:
                    assert all(u.id is None for u in late)
                    assert early.id is not None and early in session and early.age == 5
                    assert session.in_transaction()
                    assert await stored(engine, User, early.id) is None
                await session.commit()
                assert not session.journal.pending and not session.in_transaction()
                for user in [early, *late]:
                    saved = await stored(engine, User, user.id)
                    assert (saved.email, saved.age) == (user.email, user.age)
                assert await count_rows(engine, User) == len(session)
                if not cancelled:
                    break
            assert not cancelled

    async def test_cancelled_flush_then_rollback(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            await session.update(user, age=31)
            session.add(User(name="New", email="new@example.com"))
            with anyio.CancelScope() as scope:
                scope.cancel()
                await session.flush()
            assert scope.cancelled_caught
            with anyio.CancelScope() as scope:
                scope.cancel()
                await session.rollback()
            assert user.age == 30 and not session.journal.pending and not session.in_transaction()
            await session.update(user, age=32)
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 32

    # --- values ------------------------------------------------------------------------------------------

    async def test_every_column_kind_round_trips(self, engine: uow.Engine) -> None:
        full = _sample()
        empty = _sample(label=None, count=None, data={}, shape=(), size=None)
        empty.flag, empty.ratio, empty.amount = False, -1.5, decimal.Decimal("-0.01")
        async with AsyncSession(engine) as session:
            session.add_all([full, empty])
            await session.commit()
        for original in (full, empty):
            saved = await stored(engine, Sample, original.id)
            assert saved is not original
            for column in table_info(Sample).column_names:
                value, expected = getattr(saved, column), getattr(original, column)
                assert value == expected, column
                assert isinstance(value, type(expected)), column
        assert saved.created_at.utcoffset() == dt.timedelta(0)
        async with AsyncSession(engine) as session:
            sample = await session.get_one(Sample, str(full.id))
            await session.update(sample, amount=decimal.Decimal("0.5"), color=Color.BLUE, data={"x": [1, 2]})
            await session.commit()
        saved = await stored(engine, Sample, full.id)
        assert (saved.amount, saved.color, saved.data) == (decimal.Decimal("0.5"), Color.BLUE, {"x": [1, 2]})

    async def test_a_float_for_a_decimal_column_is_refused_an_int_converted(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError, match="not an exact decimal"):
                session.add(_sample(amount=0.1 + 0.2))
            sample = _sample(amount=3)
            session.add(sample)
            assert sample.amount == decimal.Decimal(3) and type(sample.amount) is decimal.Decimal
            await session.commit()
            with pytest.raises(ValidationError, match="not an exact decimal"):
                await session.update(sample, amount=1.1)
            sample.amount = 2.5  # type: ignore[assignment]
            with pytest.raises(ValidationError, match="not an exact decimal"):
                await session.flush()
        assert (await stored(engine, Sample, sample.id)).amount == decimal.Decimal(3)

    async def test_decimal_comparisons_and_order_are_exact_past_fifteen_digits(self, engine: uow.Engine) -> None:
        big, bigger = decimal.Decimal("12345678901234567"), decimal.Decimal("12345678901234567.1")
        tiny = decimal.Decimal("0.1000000000000000001")
        samples = [_sample(amount=bigger), _sample(amount=big), _sample(amount=tiny)]
        async with AsyncSession(engine) as session:
            session.add_all(samples)
            await session.commit()
        async with AsyncSession(engine) as session:
            query = session.query(Sample)

            async def amounts(read: Any) -> list[decimal.Decimal]:
                return [sample.amount for sample in await read.all()]

            assert await amounts(query.filter(amount__gt=big)) == [bigger]
            assert await amounts(query.filter(amount__in=[big])) == [big]
            assert await amounts(query.filter(amount=decimal.Decimal("0.1"))) == []
            assert await amounts(query.filter(amount=decimal.Decimal("12345678901234567.10"))) == [bigger]
            assert await amounts(query.order_by("amount")) == [tiny, big, bigger]
            assert await query.filter(amount__between=(big, bigger)).count() == 2

    async def test_not_between_an_open_bound_follows_sqls_three_valued_logic(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)  # age 30
            query = session.query(User)
            assert await query.exclude(age__between=(40, None)).all() == [user]  # 30 >= 40 is false: NOT is true
            assert await query.exclude(age__between=(None, 40)).all() == []  # unknown either way
            assert await query.exclude(age__between=(40, None)).update(name="outside") == 1
            assert user.name == "outside"  # the tracked object agrees with the database
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "outside"

    async def test_an_enum_column_compares_and_orders_by_the_value_it_stores(self, engine: uow.Engine) -> None:
        samples = [_sample(color=Color.RED), _sample(color=Color.GREEN), _sample(color=Color.BLUE)]
        async with AsyncSession(engine) as session:
            session.add_all(samples)
            await session.commit()
            query = session.query(Sample)
            assert [s.color for s in await query.order_by("color").all()] == [Color.BLUE, Color.GREEN, Color.RED]
            assert {s.color for s in await query.filter(color__lt=Color.RED).all()} == {Color.BLUE, Color.GREEN}

    async def test_what_databases_answer_differently_is_refused_before_a_read(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            session.add(_sample(data={"a": 1}))
            await session.commit()
            query = session.query(Sample)
            with pytest.raises(QueryError, match="JSON column"):
                await query.filter(data={"a": 1}).all()  # key order, true against 1: each its own way
            with pytest.raises(QueryError, match="JSON column"):
                await query.order_by("data").all()
            with pytest.raises(ValidationError, match="JSON column"):
                await session.bulk_update(Sample, {"label": "x"}, data={"a": 1})
            with pytest.raises(ValidationError, match="JSON column"):
                await session.upsert(_sample(data={"a": 1}), conflict_target="data")
            assert await query.filter(data__is_null=False).count() == 1
            with pytest.raises(QueryError, match="escape character"):
                await query.where(uow.col(Sample.label).like("a\\")).all()
            with pytest.raises(QueryError, match="64-bit"):
                await query.filter(count__lt=2**64).all()
            assert (await query.one()).label == "sample"  # nothing changed

    async def test_a_json_value_changed_in_place_is_written_and_never_changes_the_journal(
        self, engine: uow.Engine
    ) -> None:
        sample = _sample(data={"tags": ["a"]})
        async with AsyncSession(engine) as session:
            session.add(sample)
            sample.data["tags"].append("b")  # after add, before the flush
            await session.commit()
            inserted = next(e for e in session.journal if isinstance(e, Inserted))
            sample.data["tags"].append("c")  # after the flush: the recorded insert keeps what it wrote
            assert inserted.values["data"] == {"tags": ["a"]}
            assert session.is_modified(sample)
            await session.commit()
            assert not session.is_modified(sample)
        assert (await stored(engine, Sample, sample.id)).data == {"tags": ["a", "b", "c"]}

        async with AsyncSession(engine) as session:
            loaded = await session.get_one(Sample, sample.id)
            loaded.data["tags"].clear()
            loaded.data["seen"] = True
            assert session.is_modified(loaded)
            await session.flush()
            await session.rollback()  # restores the value as it was, in a copy of its own
            assert loaded.data == {"tags": ["a", "b", "c"]}
            loaded.data["tags"].pop()
            await session.commit()
        assert (await stored(engine, Sample, sample.id)).data == {"tags": ["a", "b"]}

    async def test_json_values_given_to_bulk_operations_are_not_shared_with_the_caller(
        self, engine: uow.Engine
    ) -> None:
        first, second = _sample(), _sample(label="second")
        row = {**_sample_values(), "data": {"n": 1}}
        async with AsyncSession(engine) as session:
            session.add_all([first, second])
            await session.bulk_insert(Sample, [row])
            given = {"n": 2}
            await session.bulk_update(Sample, {"data": given}, flag=first.flag)
            row["data"]["n"] = 10  # the caller's dicts change afterwards
            given["n"] = 20
            assert first.data == second.data == {"n": 2} and first.data is not second.data
            first.data["n"] = 3  # and one object's change is its own
            assert second.data == {"n": 2} and not session.is_modified(second)
            assert [e.values["data"] for e in session.journal if isinstance(e, Inserted)][-1] == {"n": 1}
            assert [e.values["data"] for e in session.journal if isinstance(e, BulkUpdated)] == [{"n": 2}]
            await session.commit()
        assert (await stored(engine, Sample, first.id)).data == {"n": 3}
        assert (await stored(engine, Sample, second.id)).data == {"n": 2}

    async def test_a_value_its_column_cannot_hold_is_refused_before_anything_is_written(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError, match=r"User.name: Expected `str`, got `int`"):
                session.add(User(name=5, email="five@example.com"))  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match=r"User.age: Expected `int`, got `bool`"):
                session.add(User(name="Bool", email="bool@example.com", age=True))
            with pytest.raises(ValidationError, match=r"Sample.day: Expected `date`, got `datetime`"):
                session.add(_sample(day=dt.datetime(2024, 2, 29, 12, 0)))
            assert len(session) == 0 and len(session.journal) == 0
            user = await session.get_one(User, alice.id)
            user.age = "31"  # type: ignore[assignment]
            with pytest.raises(ValidationError, match=r"User.age: Expected `int`, got `str`"):
                await session.commit()
            assert (await stored(engine, User, alice.id)).age == 30
            user.age = 31
            rows: list[dict[str, Any]] = [
                {"name": "Ok", "email": "ok@example.com"},
                {"name": "Bad", "email": "bad@example.com", "age": 2.5},
            ]
            with pytest.raises(ValidationError, match=r"Expected `int`, got `float`"):
                await session.bulk_insert(User, rows)
            assert not session.journal.pending  # not even the good row was recorded
            await session.commit()
        assert (await stored(engine, User, alice.id)).age == 31
        assert await count_rows(engine, User) == 1

    async def test_a_value_no_database_can_store_fails_the_flush_on_every_adapter(self, engine: uow.Engine) -> None:
        async with AsyncSession(engine) as session:
            kept = User(name="Kept", email="kept@example.com")
            huge = User(name="Huge", email="huge@example.com", age=2**64)  # beyond 64 bits
            session.add_all([kept, huge])
            with pytest.raises(StorageError):
                await session.flush()
            assert len(session.journal.pending) == 2 and kept.id is None  # nothing applied, nothing lost
            huge.age = 2**63 - 1
            huge.name = "Broken \ud800"  # a lone surrogate is no UTF-8 text
            with pytest.raises(StorageError):
                await session.flush()
            huge.name = "Huge"
            await session.commit()
            sample = _sample(data={"text": "Broken \ud800"})  # nor inside a JSON value
            session.add(sample)
            with pytest.raises(StorageError):
                await session.flush()
            sample.data = {"text": "a NUL \x00"}  # which PostgreSQL's JSONB refuses
            with pytest.raises(StorageError, match="NUL"):
                await session.flush()
            sample.data = {"key \x00": 1}
            with pytest.raises(StorageError, match="NUL"):
                await session.flush()
            sample.data = {"text": "\\u0000 is six characters"}  # spelled out, no NUL in it
            await session.flush()
            sample.data = {"text": "Fine"}
            await session.commit()
        assert (await stored(engine, User, huge.id)).age == 2**63 - 1
        assert await count_rows(engine, User) == 2
        assert (await stored(engine, Sample, sample.id)).data == {"text": "Fine"}

    async def test_text_with_a_nul_character_is_refused_before_anything_is_written(
        self, engine: uow.Engine, alice: User
    ) -> None:
        async with AsyncSession(engine) as session:
            user = await session.get_one(User, alice.id)
            with pytest.raises(ValidationError, match="NUL character"):
                session.add(User(name="a\x00b", email="nul@example.com"))
            with pytest.raises(ValidationError, match="NUL character"):
                await session.insert(User(name="a\x00b", email="nul@example.com"))
            with pytest.raises(ValidationError, match="NUL character"):
                await session.bulk_update(User, {"name": "x\x00"})
            with pytest.raises(ValidationError, match="NUL character"):
                await session.bulk_update(User, {"age": 1}, name="x\x00")
            with pytest.raises(QueryError, match="NUL character"):
                await session.query(User).filter(name__contains="\x00").all()
            with pytest.raises(QueryError, match="lone surrogate"):  # no UTF-8 text holds one either
                await session.query(User).filter(name="\ud800").all()
            with pytest.raises(ValidationError, match="lone surrogate"):
                await session.bulk_update(User, {"age": 1}, name="\ud800")
            user.name = "Al\x00ice"
            with pytest.raises(ValidationError, match="NUL character"):
                await session.flush()
            user.name = "Alice"
            assert not session.journal.pending
            await session.commit()
        assert (await stored(engine, User, alice.id)).name == "Alice"
        assert await count_rows(engine, User) == 1

    async def test_a_key_or_filter_beyond_64_bits_is_refused_alike(self, engine: uow.Engine, alice: User) -> None:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValidationError, match="64-bit"):
                await session.get(User, 2**64)
            with pytest.raises(ValidationError, match="64-bit"):
                await session.query(User).filter(age__gte=0).get(2**64)
            with pytest.raises(ValidationError, match="64-bit"):
                await session.bulk_update(User, {"name": "x"}, age=2**64)
            with pytest.raises(ValidationError, match="64-bit"):
                await session.bulk_delete(User, age=-(2**64))
            with pytest.raises(StorageError):  # a value no row can hold, also where no row matches
                await session.bulk_update(User, {"age": 2**64}, name="nobody")
            assert await session.get(User, 2**63 - 1) is None  # the largest key a row can have
        assert (await stored(engine, User, alice.id)).name == "Alice"

    async def test_a_bulk_change_comparing_tracked_naive_datetimes_with_an_aware_one_is_refused(
        self, engine: uow.Engine
    ) -> None:
        aware = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.UTC)
        naive = _sample(created_at=aware.replace(tzinfo=None), label="naive")
        async with AsyncSession(engine) as session:
            session.add(naive)
            await session.commit()
            # Python cannot order them, and each database compares them its own way (PostgreSQL
            # takes a naive one as UTC, SQLite compares their text): the session could not tell
            # which of its objects the database changed
            changes: list[Callable[[], Awaitable[int]]] = [
                lambda: session.query(Sample).filter(created_at__lt=aware).update(label="x"),
                lambda: session.query(Sample).filter(created_at__lt=aware).delete(),
                lambda: session.bulk_update(Sample, {"label": "x"}, created_at=aware),
                lambda: session.bulk_delete(Sample, created_at=aware),
            ]
            for change in changes:
                with pytest.raises(QueryError, match="naive"):
                    await change()
            assert naive in session and naive.label == "naive" and not session.journal.pending
            session.autoflush = False
            naive.label = "pending"
            with pytest.raises(QueryError, match="naive"):  # refused before the flush it would make
                await session.bulk_update(Sample, {"label": "x"}, created_at=aware)
            assert session.is_modified(naive)
            naive.label = "naive"
            session.autoflush = True
            # compared with a naive one, as the object holds it, every database agrees
            assert await session.bulk_update(Sample, {"label": "same"}, created_at=aware.replace(tzinfo=None)) == 1
            assert naive.label == "same"
            await session.commit()
        assert (await stored(engine, Sample, naive.id)).label == "same"

    async def test_an_assignment_equal_to_the_stored_value_is_still_checked(self, engine: uow.Engine) -> None:
        sample = _sample(count=1, ratio=2.0)
        async with AsyncSession(engine) as session:
            session.add(sample)
            await session.commit()
            for wrong in (True, 1.0):  # equal to 1 in Python, but no int
                sample.count = wrong  # type: ignore[assignment]
                assert session.is_modified(sample)
                with pytest.raises(ValidationError, match="count"):
                    await session.flush()
                sample.count = 1
            sample.count = True
            await session.rollback()  # takes it back, as any assignment
            assert type(sample.count) is int and not session.is_modified(sample)
            sample.ratio = 2  # an int for a float column, equal to it: converted, nothing to write
            await session.flush()
            assert type(sample.ratio) is float and not session.is_modified(sample)
            assert not session.journal.pending
            await session.commit()
        assert (await stored(engine, Sample, sample.id)).count == 1

    async def test_a_value_that_fits_its_column_after_conversion_is_converted(self, engine: uow.Engine) -> None:
        sample = _sample(ratio=2, color="blue")  # an int for a float, the value of an enum member
        async with AsyncSession(engine) as session:
            session.add(sample)
            assert type(sample.ratio) is float and sample.color is Color.BLUE
            await session.commit()
            sample.amount = 3  # type: ignore[assignment]
            await session.commit()
            assert sample.amount == decimal.Decimal(3) and type(sample.amount) is decimal.Decimal
        saved = await stored(engine, Sample, sample.id)
        assert (saved.ratio, saved.color, saved.amount) == (2.0, Color.BLUE, decimal.Decimal(3))


_CANCEL_POINTS = [*range(30), *(int(30 * 1.25**k) for k in range(1, 40))]
"""How many scheduling points to wait before cancelling: every early one, then
growing, so that work waiting on a real network is reached too."""


async def _cancel_after(checkpoints: int, work: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``work``, cancelling it after ``checkpoints`` scheduling points of a
    helper task unless it finished first; whether it was cancelled."""
    finished = anyio.Event()
    with anyio.CancelScope() as scope:

        async def cancel_later() -> None:
            for _ in range(checkpoints):
                await anyio.lowlevel.checkpoint()
            if not finished.is_set():
                scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(cancel_later)
            await work()
            finished.set()
    return scope.cancelled_caught


def _sample_values() -> dict[str, Any]:
    sample = _sample()
    return {name: getattr(sample, name) for name in table_info(Sample).column_names}
