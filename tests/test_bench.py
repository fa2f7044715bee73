"""The benchmark runs end to end (a smoke run with a few rows; no timing is checked)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pgserver
import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETED = ("insert", "insert_sqlite", "update", "delete", "get_hit", "get_miss", "load", "memory")
CASES = (*TARGETED, "flush_each")  # flush_each is shown for comparison, without a target
SQLITE_OR_MEMORY = ("insert_sqlite", "memory")


def test_the_bench_runs_every_case_and_writes_its_results(tmp_path: Path) -> None:
    reason = pgserver.postgres_unavailable_reason()
    database = None if reason else pgserver.create_database(pgserver.postgres_url())
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "bench", "--quick", "--json", str(output)]
    command += ["--no-postgres"] if database is None else ["--postgres-url", database]
    try:
        finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        if database is not None:
            pgserver.drop_database(database)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(output.read_text())

    assert set(report["cases"]) == set(CASES)
    assert set(report["targets"]) == set(TARGETED)
    assert {"cpu", "cores", "python", "postgresql", "sqlite", "libraries"} <= set(report["machine"])
    ran = CASES if database is not None else SQLITE_OR_MEMORY
    for name in ran:
        contenders = report["cases"][name]["contenders"]
        mine = contenders["uow"]
        assert "error" not in mine, (name, mine)
        if name in TARGETED:
            assert report["targets"][name]["status"] in ("PASS", "MISS"), (name, report["targets"][name])
        if name != "memory":
            assert all("error" not in found for found in contenders.values()), (name, contenders)
    assert "PASS" in finished.stdout or "MISS" in finished.stdout
    if database is None:
        assert all(report["cases"][n]["skipped"] for n in CASES if n not in SQLITE_OR_MEMORY)
        pgserver.unavailable(str(reason))


@pytest.mark.parametrize("contender", ["uow", "aiosqlite executemany"])
def test_the_instruction_counter_runs_each_sqlite_contender_in_full(contender: str, tmp_path: Path) -> None:
    from bench import instructions

    instructions.run_child("insert_sqlite", contender, 30, None, tmp_path)

    with sqlite3.connect(tmp_path / "bench.db") as connection:
        users = connection.execute("SELECT count(*) FROM users").fetchone()[0]
        linked = connection.execute("SELECT count(*) FROM posts JOIN users ON users.id = posts.user_id").fetchone()[0]
    connection.close()
    assert (users, linked) == (30, 30)


def test_the_instruction_counter_says_when_valgrind_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import instructions

    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    assert instructions.main([]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err


@pytest.mark.parametrize("contender", ["uow", "asyncpg fetchrow", "set-up only"])
def test_the_instruction_counter_seeds_the_cold_get_for_each_contender_and_the_set_up_alone(
    contender: str, tmp_path: Path
) -> None:
    import asyncpg

    from bench import instructions

    reason = pgserver.postgres_unavailable_reason()
    if reason:
        pgserver.unavailable(reason)
    database = pgserver.create_database(pgserver.postgres_url())
    try:
        instructions.run_child("get_miss", contender, 30, database, tmp_path)

        async def counts() -> tuple[int, int]:
            connection = await asyncpg.connect(database)
            try:
                users = await connection.fetchval("SELECT count(*) FROM users")
                linked = await connection.fetchval("SELECT count(*) FROM posts JOIN users ON users.id = posts.user_id")
                return users, linked
            finally:
                await connection.close()

        assert asyncio.run(counts()) == (30, 30)
    finally:
        pgserver.drop_database(database)
