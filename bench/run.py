"""Run every benchmark case in one process and report medians and ratios.

    python -m bench                       # 10,000 rows, 5 repetitions
    python -m bench --quick               # a few rows, one repetition (a smoke run)
    python -m bench --rows 2000 --repeat 3
    python -m bench --postgres-url postgresql://me@localhost/scratch
    python bench/run.py --only insert,load

Without ``--postgres-url`` a throwaway PostgreSQL server is started (the test
suite's ``tests/pgserver.py``) and removed at the end; when none can be
started, the PostgreSQL cases are reported as skipped with the reason. A
database given with ``--postgres-url`` gets its ``users`` and ``posts`` tables
dropped and recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: python bench/run.py
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from bench import cases, memory  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@dataclass
class Target:
    """``contender``'s median must be at most ``limit`` times ``peer``'s, or at
    most ``limit`` microseconds per operation when ``peer`` is ``None``, or at
    most ``limit`` bytes per object for the memory case."""

    contender: str
    peer: str | None
    limit: float
    text: str


@dataclass
class Case:
    name: str
    title: str
    backend: str  # "postgresql", "sqlite" or "memory"
    contenders: list[tuple[str, cases.Timed]]
    baseline: str
    target: Target | None
    """The target for this case; ``None`` for a case shown for comparison only."""
    seed: bool = False
    ops_per_row: int = 1
    row_share: int = 1
    """The case runs ``rows // row_share`` rows (its rows go one round trip at a time)."""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str | None = None


def build_cases() -> list[Case]:
    c = cases
    return [
        Case(
            "insert",
            "insert N users + N posts (keys generated, posts point at new users)",
            "postgresql",
            [
                ("uow", c.insert_uow),
                ("sqlalchemy", c.insert_sqlalchemy),
                ("asyncpg executemany", c.insert_raw_executemany),
                ("asyncpg unnest", c.insert_raw_unnest),
            ],
            baseline="asyncpg executemany",
            target=Target("uow", "asyncpg unnest", 1.3, "uow <= 1.3x asyncpg unnest RETURNING"),
            ops_per_row=2,
        ),
        Case(
            "insert_sqlite",
            "insert N users + N posts on SQLite",
            "sqlite",
            [
                ("uow", c.insert_sqlite_uow),
                ("sqlalchemy", c.insert_sqlite_sqlalchemy),
                ("aiosqlite executemany", c.insert_sqlite_raw),
            ],
            baseline="aiosqlite executemany",
            target=Target("uow", "aiosqlite executemany", 1.5, "uow <= 1.5x aiosqlite executemany"),
            ops_per_row=2,
        ),
        Case(
            "update",
            "update one field on N loaded users (flush + commit)",
            "postgresql",
            [("uow", c.update_uow), ("sqlalchemy", c.update_sqlalchemy), ("asyncpg executemany", c.update_raw)],
            baseline="asyncpg executemany",
            target=Target("uow", "asyncpg executemany", 1.0, "uow <= 1.0x asyncpg executemany"),
            seed=True,
        ),
        Case(
            "delete",
            "delete N loaded users and their N posts",
            "postgresql",
            [("uow", c.delete_uow), ("sqlalchemy", c.delete_sqlalchemy), ("asyncpg executemany", c.delete_raw)],
            baseline="asyncpg executemany",
            target=Target("uow", "asyncpg executemany", 0.8, "uow <= 0.8x asyncpg executemany"),
            seed=True,
            ops_per_row=2,
        ),
        Case(
            "get_hit",
            "get by key N times, object tracked (identity-map hit)",
            "postgresql",
            [("uow", c.get_hit_uow), ("sqlalchemy", c.get_hit_sqlalchemy), ("asyncpg fetchrow", c.get_raw)],
            baseline="asyncpg fetchrow",
            target=Target("uow", None, 3.0, "uow <= 3 us per awaited get"),
            seed=True,
        ),
        Case(
            "get_miss",
            "get by key N times, object not tracked (one SELECT each)",
            "postgresql",
            [("uow", c.get_miss_uow), ("sqlalchemy", c.get_miss_sqlalchemy), ("asyncpg fetchrow", c.get_raw)],
            baseline="asyncpg fetchrow",
            target=Target("uow", "asyncpg fetchrow", 1.3, "uow <= 1.3x asyncpg fetchrow"),
            seed=True,
        ),
        Case(
            "load",
            "load N rows into models",
            "postgresql",
            [("uow", c.load_uow), ("sqlalchemy", c.load_sqlalchemy), ("asyncpg records", c.load_raw)],
            baseline="asyncpg records",
            target=Target("uow", "asyncpg records", 2.5, "uow <= 2.5x asyncpg records"),
            seed=True,
        ),
        Case(
            "flush_each",
            "insert N/5 users, one flush each, in one transaction",
            "postgresql",
            [
                ("uow", c.flush_each_uow),
                ("sqlalchemy", c.flush_each_sqlalchemy),
                ("asyncpg fetchval", c.flush_each_raw),
            ],
            baseline="asyncpg fetchval",
            target=None,
            row_share=5,
        ),
    ]


MEMORY_CONTENDERS: list[tuple[str, Callable[..., Any]]] = [
    ("uow", memory.memory_uow),
    ("sqlalchemy", memory.memory_sqlalchemy),
    ("asyncpg records", memory.memory_raw),
]


# --- running ---------------------------------------------------------------------


async def run_case(case: Case, env: cases.Env, rows: int, repeat: int, log: Callable[[str], None]) -> None:
    if case.backend == "postgresql" and env.postgres_url is None:
        case.skipped = env.notes.get("postgresql", "no PostgreSQL")
        log(f"  {case.name}: skipped ({case.skipped})")
        return
    rows = max(1, rows // case.row_share)
    runs: dict[str, list[float]] = {label: [] for label, _ in case.contenders}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        for label, timed in case.contenders:  # interleaved, so drift hits every contender alike
            if label in errors:
                continue
            try:
                if case.backend == "sqlite":
                    cases.fresh_sqlite(env)
                else:
                    await cases.fresh_postgres(env, seed=rows if case.seed else 0)
                # the garbage an earlier run left is collected now, not inside this run's timing
                gc.collect()
                runs[label].append(await timed(env, rows))
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}"
                log(f"  {case.name} / {label}: {errors[label]}")
    operations = rows * case.ops_per_row
    base_runs = runs.get(case.baseline) or []
    base = statistics.median(base_runs) if base_runs else None
    for label, _ in case.contenders:
        if label in errors:
            case.results[label] = {"error": errors[label]}
            continue
        median = statistics.median(runs[label])
        case.results[label] = {
            "median_s": median,
            "runs_s": runs[label],
            "per_op_us": median / operations * 1e6,
            "ratio": median / base if base else None,
        }
    log(f"  {case.name}: done")


async def run_memory(env: cases.Env, count: int, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for label, measure in MEMORY_CONTENDERS:
        if label != "uow" and env.postgres_url is None:
            results[label] = {"error": "skipped: " + env.notes.get("postgresql", "no PostgreSQL")}
            continue
        try:
            results[label] = await measure(env, count)
        except Exception as exc:
            results[label] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  memory / {label}: {results[label]['error']}")
    base = results.get("asyncpg records", {}).get("bytes_per_object")
    for found in results.values():
        if "bytes_per_object" in found:
            found["ratio"] = found["bytes_per_object"] / base if base else None
    log("  memory: done")
    return results


def verdict(case: Case) -> dict[str, Any]:
    target = case.target
    assert target is not None
    mine = case.results.get(target.contender, {})
    if case.skipped or "median_s" not in mine:
        return {"target": target.text, "status": "SKIPPED" if case.skipped else "ERROR", "value": None}
    if target.peer is None:
        value = mine["per_op_us"]
    else:
        peer = case.results.get(target.peer, {})
        if "median_s" not in peer:
            return {"target": target.text, "status": "ERROR", "value": None}
        value = mine["median_s"] / peer["median_s"]
    return {"target": target.text, "status": "PASS" if value <= target.limit else "MISS", "value": value}


# --- machine --------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def postgres_version(url: str | None) -> str | None:
    if url is None:
        return None
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def machine_info(pg_version: str | None) -> dict[str, Any]:
    libraries = {}
    for name in ("uow", "asyncpg", "aiosqlite", "SQLAlchemy", "msgspec", "anyio"):
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "sqlite": sqlite3.sqlite_version,
        "libraries": libraries,
    }


# --- reporting ----------------------------------------------------------------------


def table(case_list: Sequence[Case], memory_results: dict[str, Any] | None, memory_rows: int) -> str:
    lines = [
        f"{'case':<14} {'contender':<22} {'median':>11} {'per op':>10} {'ratio':>7}",
        "-" * 68,
    ]
    for case in case_list:
        if case.skipped:
            lines.append(f"{case.name:<14} skipped: {case.skipped}")
            continue
        for label, found in case.results.items():
            if "error" in found:
                lines.append(f"{case.name:<14} {label:<22} {found['error']}")
                continue
            ratio = f"{found['ratio']:.2f}x" if found["ratio"] is not None else "-"
            median, per_op = found["median_s"] * 1e3, found["per_op_us"]
            lines.append(f"{case.name:<14} {label:<22} {median:>8.1f} ms {per_op:>7.2f} us {ratio:>7}")
    if memory_results is not None:
        for label, found in memory_results.items():
            if "error" in found:
                lines.append(f"{'memory':<14} {label:<22} {found['error']}")
                continue
            ratio = f"{found['ratio']:.2f}x" if found.get("ratio") else "-"
            lines.append(
                f"{'memory':<14} {label:<22} {found['bytes_per_object']:>8.0f} B  "
                f"({found['bytes_per_object_with_values']:.0f} B with values, {memory_rows} objects) {ratio}"
            )
    return "\n".join(lines)


def memory_verdict(memory_results: dict[str, Any]) -> dict[str, Any]:
    mine = memory_results.get("uow", {})
    text = "uow <= 500 bytes per tracked object"
    if "bytes_per_object" not in mine:
        return {"target": text, "status": "ERROR", "value": None}
    value = mine["bytes_per_object"]
    return {"target": text, "status": "PASS" if value <= 500 else "MISS", "value": value}


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per case (default 10000)")
    parser.add_argument("--memory-rows", type=int, default=None, help="objects in the memory case (default 10x rows)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; the median is reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: 50 rows, 1 repetition")
    parser.add_argument("--postgres-url", default=None, help="use this database instead of a throwaway server")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL cases")
    parser.add_argument("--only", default=None, help="comma-separated case names (insert, insert_sqlite, ...)")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeat = 50, 1
        args.memory_rows = args.memory_rows or 500
    if args.memory_rows is None:
        args.memory_rows = args.rows * 10
    return args


@contextlib.contextmanager
def postgres(args: argparse.Namespace, notes: dict[str, str]) -> Iterator[str | None]:
    if args.no_postgres:
        notes["postgresql"] = "--no-postgres given"
        yield None
        return
    if args.postgres_url:
        yield args.postgres_url
        return
    import pgserver

    try:
        database = pgserver.postgres_database()
        url = database.__enter__()
    except Exception as exc:
        notes["postgresql"] = f"no PostgreSQL server could be started: {exc}"
        yield None
        return
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


async def run_all(args: argparse.Namespace, env: cases.Env) -> dict[str, Any]:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    chosen = set(args.only.split(",")) if args.only else None
    case_list = [c for c in build_cases() if chosen is None or c.name in chosen]
    log(f"bench: {args.rows} rows, {args.repeat} repetition(s)")
    for case in case_list:
        await run_case(case, env, args.rows, args.repeat, log)
    memory_results = None
    if chosen is None or "memory" in chosen:
        memory_results = await run_memory(env, args.memory_rows, log)
    verdicts = {case.name: verdict(case) for case in case_list if case.target is not None}
    if memory_results is not None:
        verdicts["memory"] = memory_verdict(memory_results)
    report = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(await postgres_version(env.postgres_url)),
        "settings": {"rows": args.rows, "memory_rows": args.memory_rows, "repeat": args.repeat},
        "notes": env.notes,
        "cases": {
            case.name: {
                "title": case.title,
                "backend": case.backend,
                "baseline": case.baseline,
                "skipped": case.skipped,
                "contenders": case.results,
            }
            for case in case_list
        },
        "targets": verdicts,
    }
    if memory_results is not None:
        report["cases"]["memory"] = {
            "title": f"bytes per tracked object at {args.memory_rows} objects",
            "backend": "postgresql" if env.postgres_url else "memory",
            "baseline": "asyncpg records",
            "skipped": None,
            "contenders": memory_results,
        }
    print(table(case_list, memory_results, args.memory_rows))
    print()
    for name, found in verdicts.items():
        value = "-" if found["value"] is None else f"{found['value']:.2f}"
        print(f"{found['status']:<8} {name:<14} {found['target']:<40} measured {value}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="uow-bench-") as directory, postgres(args, notes) as url:
        env = cases.Env(postgres_url=url, sqlite_dir=Path(directory), notes=notes)
        report = asyncio.run(run_all(args, env))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
