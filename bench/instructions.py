"""Instructions per row of the insert cases, counted by valgrind: CPU work that
a shared machine's noise does not move.

    python -m bench.instructions                        # insert on SQLite
    python -m bench.instructions --postgres-url URL     # and insert and cold get on PostgreSQL

Wall times on a virtual machine shared with others can differ by 2x from one
run to the next, which hides a change of a few percent. The number of machine
instructions a process executes barely moves (about 1% here), so it shows
such a change at once. Each contender's case runs alone in a child process
under ``valgrind --tool=cachegrind``, once with ``--rows`` rows and once with
twice as many; the difference, divided by the rows, is the work per row with
the start-up of Python and of the engine taken out.

Only this process is counted: on PostgreSQL the server's work is not, so the
numbers there are the client's share alone, which is the part uow adds. The
insert cases' set-up outside the timed part (making the rows' data) is the
same small work for every contender. The cold get seeds the rows and reads
their keys first; that set-up is counted on its own at both sizes and taken
off each contender's count. SQLAlchemy is left out: under valgrind it takes
minutes per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import cases

ROOT = Path(__file__).resolve().parent.parent

CONTENDERS: dict[str, list[tuple[str, cases.Timed]]] = {
    "insert_sqlite": [("uow", cases.insert_sqlite_uow), ("aiosqlite executemany", cases.insert_sqlite_raw)],
    "insert": [("uow", cases.insert_uow), ("asyncpg unnest RETURNING", cases.insert_raw_unnest)],
    "get_miss": [("uow", cases.get_miss_uow), ("asyncpg fetchrow", cases.get_raw)],
}
"""Per case, the contenders counted; the last one is the one ratios are taken to."""

SET_UP_ONLY = "set-up only"
"""The pseudo-contender of a seeded case: the seeding and key read alone."""

SEEDED = {"get_miss"}
"""Cases that start from ``rows`` seeded users (with a post each) and read their keys."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=5_000, help="rows of the smaller run (default 5000; fewer let start-up noise in)"
    )
    parser.add_argument("--postgres-url", default=None, help="also count the PostgreSQL insert, in this database")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "CONTENDER", "ROWS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(case: str, contender: str, rows: int, postgres_url: str | None, sqlite_dir: Path) -> None:
    """Run one contender's case once, as the bench does (fresh tables first)."""
    env = cases.Env(postgres_url=postgres_url, sqlite_dir=sqlite_dir)

    async def once() -> None:
        if case == "insert_sqlite":
            cases.fresh_sqlite(env)
        else:
            await cases.fresh_postgres(env, seed=rows if case in SEEDED else 0)
        if contender == SET_UP_ONLY:
            await cases.user_keys(env)  # what each contender of a seeded case reads before its timed part
            return
        await dict(CONTENDERS[case])[contender](env, rows)

    asyncio.run(once())


def count(case: str, contender: str, rows: int, postgres_url: str | None) -> int:
    """Instructions a child process running the case with ``rows`` rows executes."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.instructions", "--child", case, contender, str(rows)]
    if postgres_url:
        command += ["--postgres-url", postgres_url]
    # one hash seed for every child: with random ones, dictionaries and sets
    # differ between runs, and so do their instruction counts
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", finished.stderr)
    if finished.returncode != 0 or found is None:
        raise RuntimeError(f"{case} / {contender} failed under valgrind:\n{finished.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        case, contender, rows = args.child
        with tempfile.TemporaryDirectory(prefix="uow-instructions-") as directory:
            run_child(case, contender, int(rows), args.postgres_url, Path(directory))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    measured = ["insert_sqlite"] + (["insert", "get_miss"] if args.postgres_url else [])
    print(f"instructions per row (user + post; one read for get_miss), from runs of {args.rows} and {2 * args.rows}")
    print(f"{'case':<14} {'contender':<26} {'per row':>10} {'ratio':>7}")

    def per_row_of(case: str, label: str) -> float:
        smaller = count(case, label, args.rows, args.postgres_url)
        larger = count(case, label, 2 * args.rows, args.postgres_url)
        return (larger - smaller) / args.rows

    for case in measured:
        set_up = per_row_of(case, SET_UP_ONLY) if case in SEEDED else 0.0
        per_row = {label: per_row_of(case, label) - set_up for label, _ in CONTENDERS[case]}
        base = per_row[CONTENDERS[case][-1][0]]
        for label, value in per_row.items():
            print(f"{case:<14} {label:<26} {value:>10,.0f} {value / base:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
