"""The cases: one coroutine per (case, contender), each returning the seconds
spent in the timed part only.

Every contender starts from freshly created, empty tables (set up and seeded
outside the timed part), gets the same rows, and opens its own engine or
connection outside the timed part. Engines are new per repetition so no
prepared statement outlives the tables it was prepared for.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import uow
from bench.schema import POSTGRES_DDL, SQLITE_DDL, Post, Row, SAPost, SAUser, User, rows
from uow.model import table_info
from uow.statements import Select

Timed = Callable[["Env", int], Awaitable[float]]

SQLITE_PRAGMAS = ("PRAGMA foreign_keys = ON", "PRAGMA synchronous = NORMAL")
"""What uow's SQLite adapter runs on every connection (with WAL), for the other contenders too."""


@dataclass
class Env:
    """Where the databases are."""

    postgres_url: str | None
    sqlite_dir: Path
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def pg(self) -> str:
        assert self.postgres_url is not None
        return self.postgres_url

    def sqlite_path(self) -> Path:
        return self.sqlite_dir / "bench.db"


class Stopwatch:
    """Times one block; collects garbage first so earlier cases do not bill this one."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --- setup helpers ------------------------------------------------------------------


async def fresh_postgres(env: Env, seed: int = 0) -> None:
    """Drop and create the tables; with ``seed`` insert that many users with a post each."""
    connection = await asyncpg.connect(env.pg)
    try:
        await connection.execute(POSTGRES_DDL)
        if seed:
            await _raw_unnest_insert(connection, rows(seed))
        await connection.execute("ANALYZE users; ANALYZE posts")
    finally:
        await connection.close()


def fresh_sqlite(env: Env) -> None:
    path = env.sqlite_path()
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")  # kept in the file: uow's adapter sets it too
        connection.executescript(SQLITE_DDL)
    connection.close()


@asynccontextmanager
async def uow_engine(url: str) -> AsyncIterator[uow.Engine]:
    engine = uow.create_engine(url)
    async with engine:
        engine.register(User, Post)
        yield engine


@asynccontextmanager
async def sa_sessions(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine: AsyncEngine = create_async_engine(url)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


def sa_url(env: Env, backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{env.sqlite_path()}"
    # SQLAlchemy's asyncpg dialect passes query options to asyncpg.connect, which
    # spells the TLS mode ssl= rather than libpq's sslmode=
    return "postgresql+asyncpg://" + env.pg.split("://", 1)[1].replace("sslmode=", "ssl=")


def uow_url(env: Env, backend: str) -> str:
    return f"sqlite:///{env.sqlite_path()}" if backend == "sqlite" else env.pg


async def uow_load_all(session: uow.AsyncSession, model: type[Any]) -> list[Any]:
    """Every row of ``model`` as tracked objects: ``session.query(model).all()``
    where the query builder exists, else the same read through the session's
    connection and identity map."""
    query = getattr(session, "query", None)
    if query is not None:
        return list(await query(model).all())
    table = table_info(model)
    connection = await session._connection_for_work()
    fetched = await connection.fetch(Select(table))
    load = session._load_row
    return [load(table, row).obj for row in fetched]


# --- raw drivers ------------------------------------------------------------------

INSERT_USERS_UNNEST = (
    "INSERT INTO users (name, email, age) "
    "SELECT n, e, a FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(n, e, a, ord) "
    "ORDER BY ord RETURNING id"
)
INSERT_POSTS_UNNEST = "INSERT INTO posts (user_id, title) SELECT * FROM unnest($1::bigint[], $2::text[])"
SELECT_USER = "SELECT id, name, email, age FROM users WHERE id = $1"
SELECT_USERS = "SELECT id, name, email, age FROM users"


async def _raw_unnest_insert(connection: asyncpg.Connection[Any], data: Sequence[Row]) -> list[int]:
    names, emails, ages, titles = (list(c) for c in zip(*data))
    keys = [record[0] for record in await connection.fetch(INSERT_USERS_UNNEST, names, emails, ages)]
    await connection.execute(INSERT_POSTS_UNNEST, keys, titles)
    return keys


async def user_keys(env: Env) -> list[int]:
    """Every user's key, in key order (read by the get cases before their timed part)."""
    connection = await asyncpg.connect(env.pg)
    try:
        return [r[0] for r in await connection.fetch("SELECT id FROM users ORDER BY id")]
    finally:
        await connection.close()


# --- insert 10k users, each with one post (PostgreSQL and SQLite) -----------------


async def insert_uow(env: Env, n: int, backend: str = "postgresql") -> float:
    data = rows(n)
    async with uow_engine(uow_url(env, backend)) as engine, uow.AsyncSession(engine) as session:
        with Stopwatch() as watch:
            add = session.add
            for name, email, age, title in data:
                add(Post(title=title, author=User(name=name, email=email, age=age)))
            await session.commit()
    return watch.seconds


async def insert_sqlalchemy(env: Env, n: int, backend: str = "postgresql") -> float:
    data = rows(n)
    async with sa_sessions(sa_url(env, backend)) as sessions, sessions() as session:
        await session.connection()  # connect outside the timed part, as the others do
        with Stopwatch() as watch:
            add = session.add
            for name, email, age, title in data:
                add(SAPost(title=title, author=SAUser(name=name, email=email, age=age)))
            await session.commit()
    return watch.seconds


async def insert_raw_executemany(env: Env, n: int) -> float:
    """asyncpg ``fetchmany`` (executemany that returns rows) for the users' keys,
    then ``executemany`` for the posts."""
    data = rows(n)
    connection = await asyncpg.connect(env.pg)
    try:
        with Stopwatch() as watch:
            async with connection.transaction():
                returned = await connection.fetchmany(
                    "INSERT INTO users (name, email, age) VALUES ($1, $2, $3) RETURNING id",
                    [(name, email, age) for name, email, age, _ in data],
                )
                await connection.executemany(
                    "INSERT INTO posts (user_id, title) VALUES ($1, $2)",
                    [(record[0], row[3]) for record, row in zip(returned, data)],
                )
    finally:
        await connection.close()
    return watch.seconds


async def insert_raw_unnest(env: Env, n: int) -> float:
    """``INSERT … SELECT … FROM unnest(…) WITH ORDINALITY … ORDER BY ord RETURNING id``,
    then the posts with those keys in one more unnest."""
    data = rows(n)
    connection = await asyncpg.connect(env.pg)
    try:
        with Stopwatch() as watch:
            async with connection.transaction():
                await _raw_unnest_insert(connection, data)
    finally:
        await connection.close()
    return watch.seconds


async def insert_sqlite_uow(env: Env, n: int) -> float:
    return await insert_uow(env, n, "sqlite")


async def insert_sqlite_sqlalchemy(env: Env, n: int) -> float:
    return await insert_sqlalchemy(env, n, "sqlite")


async def insert_sqlite_raw(env: Env, n: int) -> float:
    """aiosqlite ``executemany`` for both tables, the users' keys taken from
    ``max(id) + 1`` onwards inside the transaction (SQLite's executemany
    returns no rows)."""
    data = rows(n)
    async with aiosqlite.connect(env.sqlite_path()) as connection:
        for pragma in SQLITE_PRAGMAS:
            await connection.execute(pragma)
        with Stopwatch() as watch:
            await connection.execute("BEGIN IMMEDIATE")
            async with connection.execute("SELECT coalesce(max(id), 0) FROM users") as cursor:
                found = await cursor.fetchone()
            first = int(found[0]) + 1 if found else 1
            keys = range(first, first + n)
            await connection.executemany(
                "INSERT INTO users (id, name, email, age) VALUES (?, ?, ?, ?)",
                [(key, name, email, age) for key, (name, email, age, _) in zip(keys, data)],
            )
            await connection.executemany(
                "INSERT INTO posts (user_id, title) VALUES (?, ?)",
                [(key, row[3]) for key, row in zip(keys, data)],
            )
            await connection.commit()
    return watch.seconds


# --- insert users one flush each, in one transaction (PostgreSQL) -----------------
#
# The shape of a request handler that needs each new row's key before it goes
# on: add, flush, read the key, in one transaction. Every flush is a round trip
# or more, so this case runs a fifth of the rows of the others.


async def flush_each_uow(env: Env, n: int) -> float:
    data = rows(n)
    async with uow_engine(uow_url(env, "postgresql")) as engine, uow.AsyncSession(engine) as session:
        await session.execute_raw("SELECT 1")  # connect outside the timed part, as the others do
        await session.commit()
        with Stopwatch() as watch:
            for name, email, age, _ in data:
                user = User(name=name, email=email, age=age)
                session.add(user)
                await session.flush()
                assert user.id is not None
            await session.commit()
    return watch.seconds


async def flush_each_sqlalchemy(env: Env, n: int) -> float:
    data = rows(n)
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        await session.connection()
        await session.commit()
        with Stopwatch() as watch:
            for name, email, age, _ in data:
                user = SAUser(name=name, email=email, age=age)
                session.add(user)
                await session.flush()
                assert user.id is not None
            await session.commit()
    return watch.seconds


async def flush_each_raw(env: Env, n: int) -> float:
    """``fetchval(INSERT … RETURNING id)`` per row in one transaction."""
    data = rows(n)
    connection = await asyncpg.connect(env.pg)
    try:
        with Stopwatch() as watch:
            async with connection.transaction():
                for name, email, age, _ in data:
                    key = await connection.fetchval(
                        "INSERT INTO users (name, email, age) VALUES ($1, $2, $3) RETURNING id", name, email, age
                    )
                    assert key is not None
    finally:
        await connection.close()
    return watch.seconds


# --- update one field on 10k loaded objects ---------------------------------------


async def update_uow(env: Env, n: int) -> float:
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        users = await uow_load_all(session, User)
        with Stopwatch() as watch:
            for user in users:
                user.age += 1
            await session.commit()
    return watch.seconds


async def update_sqlalchemy(env: Env, n: int) -> float:
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        users = (await session.scalars(select(SAUser))).all()
        with Stopwatch() as watch:
            for user in users:
                user.age += 1
            await session.commit()
    return watch.seconds


async def update_raw(env: Env, n: int) -> float:
    connection = await asyncpg.connect(env.pg)
    try:
        loaded = await connection.fetch("SELECT id, age FROM users")
        with Stopwatch() as watch:
            async with connection.transaction():
                await connection.executemany(
                    "UPDATE users SET age = $1 WHERE id = $2", [(r["age"] + 1, r["id"]) for r in loaded]
                )
    finally:
        await connection.close()
    return watch.seconds


# --- delete 10k users with their posts ------------------------------------------


async def delete_uow(env: Env, n: int) -> float:
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        posts = await uow_load_all(session, Post)
        users = await uow_load_all(session, User)
        with Stopwatch() as watch:
            delete = session.delete
            for post in posts:
                delete(post)
            for user in users:
                delete(user)
            await session.commit()
    return watch.seconds


async def delete_sqlalchemy(env: Env, n: int) -> float:
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        posts = (await session.scalars(select(SAPost))).all()
        users = (await session.scalars(select(SAUser))).all()
        with Stopwatch() as watch:
            for post in posts:
                await session.delete(post)
            for user in users:
                await session.delete(user)
            await session.commit()
    return watch.seconds


async def delete_raw(env: Env, n: int) -> float:
    connection = await asyncpg.connect(env.pg)
    try:
        posts = await connection.fetch("SELECT id FROM posts")
        users = await connection.fetch("SELECT id FROM users")
        with Stopwatch() as watch:
            async with connection.transaction():
                await connection.executemany("DELETE FROM posts WHERE id = $1", [(r["id"],) for r in posts])
                await connection.executemany("DELETE FROM users WHERE id = $1", [(r["id"],) for r in users])
    finally:
        await connection.close()
    return watch.seconds


# --- get by key: identity-map hit --------------------------------------------------


async def get_hit_uow(env: Env, n: int) -> float:
    keys = await user_keys(env)
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        await uow_load_all(session, User)
        with Stopwatch() as watch:
            get = session.get
            for key in keys:
                await get(User, key)
    return watch.seconds


async def get_hit_sqlalchemy(env: Env, n: int) -> float:
    keys = await user_keys(env)
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        users = (await session.scalars(select(SAUser))).all()  # held: SQLAlchemy's identity map is weak
        with Stopwatch() as watch:
            get = session.get
            for key in keys:
                await get(SAUser, key)
    assert len(users) == n
    return watch.seconds


async def get_raw(env: Env, n: int) -> float:
    """``fetchrow`` by key inside a transaction (the peer of both hit and miss)."""
    keys = await user_keys(env)
    connection = await asyncpg.connect(env.pg)
    try:
        await connection.fetchrow(SELECT_USER, 0)  # prepare outside the timed part, as the sessions do
        with Stopwatch() as watch:
            async with connection.transaction():
                fetchrow = connection.fetchrow
                for key in keys:
                    await fetchrow(SELECT_USER, key)
    finally:
        await connection.close()
    return watch.seconds


# --- get by key: cold (not tracked) ------------------------------------------------


async def get_miss_uow(env: Env, n: int) -> float:
    keys = await user_keys(env)
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        await session.get(User, -1)  # open the transaction and prepare the read outside the timed part
        with Stopwatch() as watch:
            get, expunge = session.get, session.expunge
            for key in keys:
                expunge(await get(User, key))
    return watch.seconds


async def get_miss_sqlalchemy(env: Env, n: int) -> float:
    keys = await user_keys(env)
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        await session.get(SAUser, -1)
        with Stopwatch() as watch:
            get, expunge = session.get, session.expunge
            for key in keys:
                expunge(await get(SAUser, key))
    return watch.seconds


# --- load 10k rows into models -------------------------------------------------------


async def load_uow(env: Env, n: int) -> float:
    async with uow_engine(env.pg) as engine, uow.AsyncSession(engine) as session:
        await session.get(User, -1)  # open the transaction outside the timed part
        with Stopwatch() as watch:
            loaded = await uow_load_all(session, User)
    assert len(loaded) == n
    return watch.seconds


async def load_sqlalchemy(env: Env, n: int) -> float:
    async with sa_sessions(sa_url(env, "postgresql")) as sessions, sessions() as session:
        await session.get(SAUser, -1)
        with Stopwatch() as watch:
            loaded = (await session.scalars(select(SAUser))).all()
    assert len(loaded) == n
    return watch.seconds


async def load_raw(env: Env, n: int) -> float:
    connection = await asyncpg.connect(env.pg)
    try:
        await connection.fetch(SELECT_USERS + " LIMIT 0")
        with Stopwatch() as watch:
            async with connection.transaction():
                loaded = await connection.fetch(SELECT_USERS)
    finally:
        await connection.close()
    assert len(loaded) == n
    return watch.seconds


__all__ = ["Env", "Stopwatch", "Timed", "fresh_postgres", "fresh_sqlite", "uow_load_all", "user_keys"]
