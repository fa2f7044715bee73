"""The differential state machine: random session operations on every adapter
in lockstep, with storage, identity map and journal replay checked after each step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from uow.testing.state_machine import differential_state_machine

_directory = Path(tempfile.mkdtemp(prefix="uow-state-machine-"))

MemoryAndSQLite = differential_state_machine("memory://", f"sqlite:///{_directory / 'machine.db'}")
MemoryAndSQLite.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemoryAndSQLite = MemoryAndSQLite.TestCase


@pytest.mark.postgres
def test_postgresql_agrees_with_memory_and_sqlite(tmp_path: Path) -> None:
    import pgserver

    url = pgserver.require_postgres()
    machine = differential_state_machine("memory://", f"sqlite:///{tmp_path / 'machine.db'}", url)
    machine.TestCase.settings = settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()
