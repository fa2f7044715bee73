"""Reading with uow: lookups, column expressions, includes, streaming.

A small library catalogue on SQLite (``querying.db`` in the current directory,
deleted and made again at every run; a ``memory://`` URL starts empty too)::

    python examples/querying.py
    python examples/querying.py memory://
"""

from __future__ import annotations

import sys
from contextlib import aclosing
from pathlib import Path
from typing import Annotated

import anyio

import uow
from uow import ForeignKey, Model, PrimaryKey, Q, SoftDelete, relation, select


class Author(Model, table="authors"):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    born: int | None = None
    books: list[Book] = relation(back="author_id")


class Book(Model, SoftDelete, table="books"):
    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(Author, on_delete="cascade")] = None
    title: str
    year: int
    author: Author | None = relation("author_id")


CATALOGUE = {
    ("Ursula K. Le Guin", 1929): [("A Wizard of Earthsea", 1968), ("The Dispossessed", 1974)],
    ("Octavia E. Butler", 1947): [("Kindred", 1979), ("Parable of the Sower", 1993)],
    ("Stanisław Lem", 1921): [("Solaris", 1961), ("The Cyberiad", 1965)],
    ("Anonymous", None): [("100% _Unofficial_ Guide", 2001)],
}


async def main(url: str) -> None:
    async with uow.create_engine(url) as engine:
        await engine.create_all(Author, Book)

        async with uow.AsyncSession(engine) as session:
            for (name, born), books in CATALOGUE.items():
                author = Author(name=name, born=born)
                session.add(author)
                session.add_all(Book(title=title, year=year, author=author) for title, year in books)
            await session.commit()

        async with uow.AsyncSession(engine) as session:
            # keyword lookups: <field>__<lookup>=value
            seventies = await session.query(Book).filter(year__between=(1970, 1979)).order_by("year").all()
            print("1970s:", ", ".join(book.title for book in seventies))

            # Q objects combine with | & ~
            older = session.query(Author).filter(Q(born__lt=1930) | Q(born__is_null=True)).order_by("name")
            print("born before 1930 or unknown:", [author.name for author in await older.all()])
            print("how many:", await older.count())

            # % and _ in a value are plain characters, never wildcards
            guide = await session.query(Book).filter(title__contains="100% _").one()
            print("found verbatim:", guide.title)

            # column expressions and statements
            stmt = select(Book).where((Book.year >= 1965) & ~Book.title.startswith("The")).order_by(Book.year)
            print("select:", [book.title for book in (await session.execute(stmt)).scalars()])

            # nothing loads lazily: a relation that was not included says which include loads it
            plain = await session.query(Book).filter(title="Solaris").one()
            try:
                print(plain.author)
            except uow.errors.RelationNotLoadedError as error:
                print("not loaded:", error)

            # include: one extra query per relation, nested by listing the path
            authors = await session.query(Author).include(Author.books, Book.author).order_by("born").all()
            for author in authors:
                print(f"{author.name}: {', '.join(book.title for book in author.books)}")

            # soft-deleted rows are left out unless asked for
            await session.soft_delete(plain)
            visible = await session.query(Book).count()
            every = await session.query(Book).with_deleted().count()
            print(f"books now: {visible}, with the soft-deleted: {every}")

            # bulk update from a query, journaled as one event
            changed = await session.query(Book).filter(year__lt=1970).update(year=1970)
            print(f"bulk update changed {changed} rows: {type(session.journal[-1]).__name__}")
            await session.commit()

        async with uow.AsyncSession(engine) as session:
            # streaming: bounded memory, untracked objects unless already tracked
            decades: dict[int, int] = {}
            async with aclosing(session.stream(select(Book).order_by(Book.title), chunk_size=2)) as stream:
                async for book in stream:
                    decades[book.year // 10 * 10] = decades.get(book.year // 10 * 10, 0) + 1
            print(f"streamed by decade: {dict(sorted(decades.items()))}, tracked afterwards: {len(session)}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///querying.db"
    if target.startswith("sqlite:///"):
        Path(target.removeprefix("sqlite:///")).unlink(missing_ok=True)  # start from an empty database
    anyio.run(main, target)
