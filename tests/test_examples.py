"""Every script in ``examples/`` runs on a fresh database and says what it shows.

Examples are found by glob, so a new one is covered without editing this file;
``EXPECTED_LINES`` adds text an example must print (each on one line), where
it has some worth pinning down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED_LINES: dict[str, list[str]] = {
    "quickstart.py": [
        "1. INSERT users (name, email, age): 1 row, returning generated id",
        "2. INSERT posts (author_id, title): 1 row, returning generated id, author_id from batch 1",
        "committed: alice.id=1, hello.id=1, hello.author_id=1",
        "1. UPDATE users SET age BY id: 1 row",
        "2. DELETE posts BY id: 1 row",
        "== in the savepoint: name='Mallory', hello tracked: False",
        "== rolled back:      name='Alice', hello tracked: True",
        "#2 Inserted posts {'id': 1, 'author_id': 1, 'title': 'Hello, world'}",
        "#5 Updated users id=1 age: 0 -> 36",
        "decodes to equal events: True",
    ],
    "domain.py": [
        "transfer #1: Alice 70.00 (version 2), Bob 50.00 (version 2)",
        "refused: account B-1 holds 5000, cannot withdraw 100000",
        "unchanged: Alice 70.00 (version 2), Bob 50.00 (version 2)",
        "lost update prevented: the second clerk must start again",
        "after the race: Alice 75.00 (version 3), Bob 50.00 (version 2)",
        "audit: Carol insert account 1: balance=10000, number=A-1, owner=Alice",
        "audit: Carol update account 1: balance 10000 -> 7000",
        "audit: Dave update account 1: balance 7000 -> 7500",
        "audit chain verified: 6 entries",
    ],
}


def example_scripts() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("script", example_scripts(), ids=lambda path: path.name)
def test_example_runs_and_prints_what_it_shows(script: Path, tmp_path: Path) -> None:
    # run twice in the same directory: an example must start from a clean database every time
    for _ in range(2):
        completed = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, f"{script.name} failed:\n{completed.stdout}\n{completed.stderr}"
    lines = [line.strip() for line in completed.stdout.splitlines()]
    assert lines, f"{script.name} printed nothing"
    for expected in EXPECTED_LINES.get(script.name, []):
        assert any(expected in line for line in lines), (
            f"{script.name} did not print {expected!r}; it printed:\n{completed.stdout}"
        )


def test_every_expected_output_belongs_to_an_example() -> None:
    names = {path.name for path in example_scripts()}
    assert set(EXPECTED_LINES) <= names
