"""The journal as an oracle for your own models: what the database holds,
in :func:`uow.replay`'s shape, and a check that it equals the replay of a
session's flushed journal.

Use them in your own tests and hypothesis state machines::

    async with uow.AsyncSession(engine) as session:
        ...  # any sequence of operations
        await session.flush()
        await assert_storage_replays_journal(session, Customer, Order, Line)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uow.engine import Engine
from uow.errors import ValidationError
from uow.journal import Rows, replay
from uow.model import Model, TableInfo, table_info
from uow.session import AsyncSession
from uow.statements import Select


async def stored_rows(source: AsyncSession | Engine, *models: type[Model]) -> Rows:
    """The rows of ``models``' tables as the database holds them, by table
    name and key: ``{"users": {7: {"id": 7, "name": "Ann", ...}}}``.

    Given a session, they are read in its transaction, so its flushed and
    uncommitted writes are seen; nothing is flushed and no object is
    tracked. Given an engine, in a transaction of their own."""
    if isinstance(source, Engine):
        async with AsyncSession(source) as session:
            return await stored_rows(session, *models)
    if not isinstance(source, AsyncSession):
        raise ValidationError(f"stored_rows reads through a session or an engine, not {source!r}")
    tables = [table_info(model) for model in models]
    with source._exclusive("stored_rows"):
        connection = await source._connection_for_work()
        return {table.name: _by_key(table, await connection.fetch(Select(table))) for table in tables}


async def assert_storage_replays_journal(session: AsyncSession, *models: type[Model], base: Rows | None = None) -> None:
    """Raise ``AssertionError`` unless the tables of ``models`` hold exactly
    the replay of ``session``'s flushed journal (pending events are not in
    the database yet). ``base`` holds the rows stored before the session's
    first event, as for :func:`uow.replay`: without it the tables must have
    been empty."""
    tables = [table_info(model) for model in models]
    journal = session.journal
    # replayed whole (an event of another table may cascade into these), compared for these tables
    known = {**session._tables, **{table.name: table for table in tables}}
    expected = replay(journal.flushed, known, base=base, generated_keys=journal.generated_keys)
    actual = await stored_rows(session, *models)
    for table in tables:
        _compare(table.name, expected.get(table.name, {}), actual[table.name])


def _by_key(table: TableInfo, rows: list[tuple[Any, ...]]) -> dict[Any, dict[str, Any]]:
    return {row[table.key_index]: table.row_dict(tuple(row)) for row in rows}


def _compare(name: str, expected: Mapping[Any, Mapping[str, Any]], actual: Mapping[Any, Mapping[str, Any]]) -> None:
    missing = sorted(expected.keys() - actual.keys(), key=repr)
    extra = sorted(actual.keys() - expected.keys(), key=repr)
    if missing or extra:
        raise AssertionError(
            f"{name}: the database lacks rows {missing} the journal replays to, and holds rows {extra} it does not"
        )
    for key, row in expected.items():
        if actual[key] != row:
            differing = sorted(c for c in row.keys() | actual[key].keys() if row.get(c) != actual[key].get(c))
            shown = ", ".join(f"{c}: journal {row.get(c)!r}, database {actual[key].get(c)!r}" for c in differing)
            raise AssertionError(f"{name} row {key!r} differs from the journal's replay: {shown}")


__all__ = ["assert_storage_replays_journal", "stored_rows"]
