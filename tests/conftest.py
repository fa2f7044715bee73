"""Shared fixtures: one engine per adapter, so every behaviour is checked on all.

``engine_url`` is parametrized over memory, SQLite (a file per test) and
PostgreSQL (a throwaway server started by :mod:`pgserver`, or
``UOW_TEST_POSTGRES_URL``). PostgreSQL tests skip with the reason when no
server can be had, and fail instead when ``CI=true``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pgserver

import uow

ADAPTER_PARAMS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def url_for(adapter: str, directory: Path) -> str:
    """A database URL of a fresh, empty database for ``adapter``."""
    if adapter == "memory":
        return "memory://"
    if adapter == "sqlite":
        return f"sqlite:///{directory / 'test.db'}"
    return pgserver.require_postgres()


@pytest.fixture(params=ADAPTER_PARAMS)
def adapter_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine_url(adapter_name: str, tmp_path: Path) -> str:
    return url_for(adapter_name, tmp_path)


@pytest.fixture
async def engine(engine_url: str) -> AsyncIterator[uow.Engine]:
    """An open engine on an empty database; tables it created are dropped after."""
    engine = uow.create_engine(engine_url)
    async with engine:
        try:
            yield engine
        finally:
            if engine_url.startswith("postgres"):
                await engine.drop_all()


@pytest.fixture(scope="session", autouse=True)
def _stop_postgres() -> Iterator[None]:
    yield
    pgserver.stop()


def pytest_report_header(config: pytest.Config) -> str:
    configured = os.environ.get(pgserver.URL_VARIABLE)
    source = "UOW_TEST_POSTGRES_URL" if configured else "a throwaway server started by the suite"
    return f"uow: PostgreSQL tests use {source}; CI={os.environ.get('CI', '')!r}"
