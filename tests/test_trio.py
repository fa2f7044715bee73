"""Sessions on the memory adapter run under trio as well as asyncio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest

import uow
from uow import AsyncSession, ForeignKey, Model, PrimaryKey, Unique, relation


class Author(Model, table="trio_authors"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: Annotated[str, Unique()]


class Book(Model, table="trio_books"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(Author, on_delete="cascade")] = None
    title: str
    author: Author | None = relation("author_id")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_a_unit_of_work_commits_and_rolls_back_on_either_event_loop() -> None:
    async with uow.create_engine("memory://") as engine:
        await engine.create_all(Author, Book)
        async with AsyncSession(engine) as session:
            author = Author(name="Le Guin")
            book = Book(title="The Dispossessed", author=author)
            session.add(book)
            await session.commit()
            assert book.author_id == author.id is not None

            book.title = "Changed"
            session.delete(author)
            await session.flush()
            assert book not in session
            await session.rollback()
            assert book in session and book.title == "The Dispossessed"

            sp = await session.begin_nested()
            await session.update(author, name="Ursula")
            await sp.rollback()
            assert author.name == "Le Guin"


@pytest.mark.anyio
async def test_an_adapter_that_needs_asyncio_says_so_on_trio(anyio_backend: str, tmp_path: Path) -> None:
    if anyio_backend != "trio":
        return
    from uow.errors import ConfigurationError

    async with uow.create_engine(f"sqlite:///{tmp_path / 'trio.db'}") as engine:
        with pytest.raises(ConfigurationError, match="the SQLite adapter needs asyncio"):
            await engine.create_all(Author)
