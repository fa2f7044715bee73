"""Applying batches: plain ``sqlite3`` code that runs in the connection's
worker thread, one thread hop per batch.

Every batch runs inside a savepoint. When SQLite refuses a row the savepoint
is rolled back, so a failed batch leaves nothing behind, and the batch is
replayed row by row (then undone again) to tell which row failed; the fast
path never pays for that, nor builds what the replay needs.

Inserts that return generated integer keys insert their first row alone,
returning its key, and the other rows with the keys that follow it written
explicitly, in multi-row statements (see :func:`_insert_numbered`): key i is
paired with row i by construction. Measured for 10k users and 10k posts in one
transaction on a WAL file (SQLite 3.40, min of 9): 21 ms; the multi-row
``INSERT … SELECT … ORDER BY position RETURNING`` with the returned keys
sorted, used before, 33 ms; ``executemany`` with keys counted from
``max(id) + 1``, 40 ms; ``executemany`` of the rows with explicit keys after
the first, 42 ms. Other keys, and upserts, run one statement per row, still in
a single thread hop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from uow.arithmetic import ColumnMath
from uow.batches import (
    Batch,
    BatchResult,
    BulkDeleteBatch,
    BulkUpdateBatch,
    DeleteBatch,
    InsertBatch,
    UpdateBatch,
    UpsertBatch,
)
from uow.errors import IntegrityError
from uow.model import TableInfo
from uow.statements import Select
from uow_sqlite.diagnose import (
    Probe,
    Statement,
    children_of_matched,
    find_failure,
    missing_parents,
    referencing_children,
)
from uow_sqlite.dialect import SQLiteDialect, math_failure

T = TypeVar("T")

_SAVEPOINT = '"uow_sqlite_batch"'
MAX_ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT: big enough to amortise the round trip through the
VDBE, small enough that repeated large batches reuse one cached statement."""
_MAX_KEY = 2**63 - 1

Diagnosis = Callable[[], tuple[Sequence[Statement], Probe | None]]
"""Makes, only once a batch failed, the statements that replay it row by row
and the probe that names a failed foreign key."""


def apply_batch(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: Batch) -> BatchResult:
    """Apply one batch on ``raw`` (in its own thread) and report what it did."""
    if isinstance(batch, InsertBatch):
        return _insert(raw, dialect, batch)
    if isinstance(batch, UpdateBatch):
        return _update(raw, dialect, batch)
    if isinstance(batch, DeleteBatch):
        return _delete(raw, dialect, batch)
    if isinstance(batch, UpsertBatch):
        return _upsert(raw, dialect, batch)
    if isinstance(batch, BulkUpdateBatch):
        return _bulk_update(raw, dialect, batch)
    if isinstance(batch, BulkDeleteBatch):
        return _bulk_delete(raw, dialect, batch)
    raise TypeError(f"unknown batch {batch!r}")


def _bulk_delete(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: BulkDeleteBatch) -> BatchResult:
    """One DELETE; its count is of the rows its condition matched, as on
    PostgreSQL, also where a row it deletes cascades to another it matched
    (SQLite runs the cascade at once and counts that row as the cascade's)."""
    table = batch.table
    sql, params = dialect.bulk_delete(table, batch.where)
    probe = children_of_matched(dialect, table, batch.where)
    counted = None
    if any(fk.target_table == table.name and fk.on_delete == "cascade" for fk in table.foreign_keys):
        counted = dialect.select(Select(table, batch.where, mode="count"))

    def attempt() -> BatchResult:
        matched = None if counted is None else int(raw.execute(*counted).fetchone()[0])
        deleted = raw.execute(sql, params).rowcount
        return BatchResult(deleted if matched is None else matched)

    return _guarded(raw, table, attempt, lambda: ([(sql, params)], probe))


def _bulk_update(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: BulkUpdateBatch) -> BatchResult:
    """One UPDATE; with values computed from the row, the rows it updated
    come back, and a value out of range is the error the arithmetic raised,
    not SQLite's report that a function did."""
    table = batch.table
    sql, params = dialect.bulk_update(table, dict(batch.values), batch.where)

    def attempt() -> BatchResult:
        if not batch.computes:
            return BatchResult(raw.execute(sql, params).rowcount)
        decode = dialect.row_decoder(table)
        rows = [decode(row) for row in raw.execute(sql, params).fetchall()]
        return BatchResult(len(rows), rows=rows)

    def diagnosis() -> tuple[Sequence[Statement], Probe | None]:
        # a foreign key set to a missing parent: the plain values name it
        plain = {c: v for c, v in batch.values.items() if type(v) is not ColumnMath}
        values = _rows(dialect, table, list(plain), [tuple(plain.values())])
        return [(sql, params)], missing_parents(dialect, table, list(plain), values)

    math_failure()  # none left from an earlier statement
    try:
        return _guarded(raw, table, attempt, diagnosis)
    except IntegrityError as error:
        error.row_index = None  # the one statement replayed: no rows of a batch to point at
        raise
    except sqlite3.OperationalError as exc:
        failure = math_failure()
        if failure is None:
            raise
        raise failure from exc


def _guarded(
    raw: sqlite3.Connection,
    table: TableInfo,
    attempt: Callable[[], T],
    diagnosis: Diagnosis | None,
) -> T:
    raw.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        result = attempt()
    except sqlite3.IntegrityError as exc:
        _undo(raw)
        raw.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            replay, probe = diagnosis() if diagnosis is not None else (None, None)
            error = find_failure(raw, exc, table, replay, probe)
        finally:
            _undo(raw)
        raise error from exc
    except BaseException:
        _undo(raw)
        raise
    raw.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return result


def _undo(raw: sqlite3.Connection) -> None:
    try:
        raw.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        raw.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    except sqlite3.Error:
        pass  # the transaction is already gone; the original error says why


def _rows(
    dialect: SQLiteDialect, table: TableInfo, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> Sequence[tuple[Any, ...]]:
    """The rows as SQLite stores them: ``rows`` itself when no column needs converting."""
    if not any(dialect.encoder(table.columns[table.column_index[c]]) for c in columns):
        return rows
    encode = dialect.row_encoder(table, columns)
    return [encode(row) for row in rows]


def _insert(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: InsertBatch) -> BatchResult:
    table, columns = batch.table, batch.columns
    if not batch.rows:
        return BatchResult(0, keys=[] if batch.returning_key else None)
    rows = _rows(dialect, table, columns, batch.rows)
    single = dialect.insert(table, columns, batch.returning_key)

    def diagnosis() -> tuple[Sequence[Statement], Probe | None]:
        return [(single, row) for row in rows], missing_parents(dialect, table, columns, rows)

    if not batch.returning_key:
        return _guarded(raw, table, lambda: BatchResult(raw.executemany(single, rows).rowcount), diagnosis)
    decode = dialect.decoder(table.primary_key)
    numbered = columns and len(rows) > 1 and dialect.column_type(table.primary_key) == "INTEGER"

    def attempt() -> BatchResult:
        cursor = raw.cursor()
        if not numbered:
            keys = [cursor.execute(single, row).fetchone()[0] for row in rows]
            return BatchResult(len(rows), keys=keys)
        first = cursor.execute(single, rows[0]).fetchone()[0]
        (top,) = cursor.execute(dialect.max_key(table)).fetchone()
        if top != first or first + len(rows) - 1 > _MAX_KEY:
            # keys above the first one are taken (a table without AUTOINCREMENT
            # whose largest key was reached): let SQLite pick each one
            rest = [cursor.execute(single, row).fetchone()[0] for row in rows[1:]]
            return BatchResult(len(rows), keys=[first, *rest])
        _insert_numbered(raw, dialect, table, columns, rows, first)
        return BatchResult(len(rows), keys=list(range(first, first + len(rows))))

    result = _guarded(raw, table, attempt, diagnosis)
    if decode is not None and result.keys is not None:
        result = BatchResult(result.rowcount, keys=[None if k is None else decode(k) for k in result.keys])
    return result


def _insert_numbered(
    raw: sqlite3.Connection,
    dialect: SQLiteDialect,
    table: TableInfo,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    first: int,
) -> None:
    """Insert ``rows[1:]`` (``rows[0]`` is in, with key ``first``) with the keys
    ``first + 1`` onwards written into them, row i with key ``first + i``.

    The caller has checked that ``first`` is the table's largest key, so every
    key above it is free; no other connection can write until this transaction
    ends. An AUTOINCREMENT table's counter follows the explicit keys.
    """
    width = len(columns) + 1
    # one flat parameter list, (key, values…) per row, laid out by slice
    # assignment in C: no tuple per row
    params: list[Any] = [None] * (len(rows) * width)
    params[0::width] = range(first, first + len(rows))
    for index in range(len(columns)):
        params[index + 1 :: width] = map(itemgetter(index), rows)
    limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    chunk = max(1, min(MAX_ROWS_PER_INSERT, limit))
    for start in range(1, len(rows), chunk):
        end = min(len(rows), start + chunk)
        raw.execute(dialect.insert_with_keys(table, columns, end - start), params[start * width : end * width])


def _update(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: UpdateBatch) -> BatchResult:
    table = batch.table
    if not batch.rows:
        return BatchResult(0)
    bound = (*batch.columns, table.key_column)
    if batch.check_version:
        assert table.version_column is not None
        bound = (*bound, table.version_column)
    rows = _rows(dialect, table, bound, batch.rows)
    sql = dialect.update(table, batch.columns, batch.check_version)

    def diagnosis() -> tuple[Sequence[Statement], Probe | None]:
        probe = missing_parents(dialect, table, batch.columns, rows, key_position=len(batch.columns))
        return [(sql, row) for row in rows], probe

    return _guarded(raw, table, lambda: BatchResult(raw.executemany(sql, rows).rowcount), diagnosis)


def _delete(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: DeleteBatch) -> BatchResult:
    table = batch.table
    if not batch.keys:
        return BatchResult(0)
    check = batch.expected_versions is not None
    bound = [table.key_column]
    columns = [batch.keys]
    if batch.expected_versions is not None:
        assert table.version_column is not None
        bound.append(table.version_column)
        columns.append(batch.expected_versions)
    for index, name in enumerate(bound):
        encode = dialect.encoder(table.columns[table.column_index[name]])
        if encode is not None:
            columns[index] = [None if v is None else encode(v) for v in columns[index]]
    sql = dialect.delete(table, check)

    def diagnosis() -> tuple[Sequence[Statement], Probe | None]:
        rows = list(zip(*columns))
        return [(sql, row) for row in rows], referencing_children(dialect, table, lambda index: rows[index][0])

    # the parameters of each row are made one at a time, as executemany takes them
    return _guarded(raw, table, lambda: BatchResult(raw.executemany(sql, zip(*columns)).rowcount), diagnosis)


def _upsert(raw: sqlite3.Connection, dialect: SQLiteDialect, batch: UpsertBatch) -> BatchResult:
    table, columns = batch.table, batch.columns
    if not batch.rows:
        return BatchResult(0, rows=[])
    rows = _rows(dialect, table, columns, batch.rows)
    sql = dialect.upsert(table, columns, batch.conflict_target, batch.update_columns)
    decode = dialect.row_decoder(table)

    def attempt() -> BatchResult:
        cursor = raw.cursor()
        out = [decode(cursor.execute(sql, row).fetchone()) for row in rows]
        return BatchResult(len(out), rows=out)

    def diagnosis() -> tuple[Sequence[Statement], Probe | None]:
        return [(sql, row) for row in rows], missing_parents(dialect, table, columns, rows)

    return _guarded(raw, table, attempt, diagnosis)


__all__ = ["MAX_ROWS_PER_INSERT", "apply_batch"]
