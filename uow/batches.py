"""Flush batches and the FlushPlan: what the planner produces and adapters apply.

Each batch is one statement shape on one table (one ``executemany`` or one
multi-row statement). Rows are tuples; a value that depends on a key the
database generates earlier in the same flush is a :class:`PendingKey` until the
session resolves it, just before the batch is sent. Adapters only ever see
resolved batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter
from typing import Any, Literal

import msgspec

from uow.arithmetic import has_math
from uow.conditions import Condition
from uow.model import TableInfo


# a Struct rather than a frozen dataclass: a plan holds one per row that waits for
# a parent's key (10k new posts of 10k new users), and a Struct is made about six
# times faster; gc=False since it holds only an int
class PendingKey(msgspec.Struct, frozen=True, gc=False):
    """Stands for the generated primary key of the row with session ref ``ref``."""

    ref: int

    def __repr__(self) -> str:
        return f"<key of ref {self.ref}>"


BatchKind = Literal["insert", "update", "delete", "upsert", "bulk_update", "bulk_delete"]


@dataclass(frozen=True, slots=True)
class InsertBatch:
    """Insert ``rows`` (values for ``columns``).

    When ``returning_key`` the primary-key column is not among ``columns`` and
    the adapter returns the generated keys, one per row, in row order.
    """

    table: TableInfo
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    returning_key: bool = False
    refs: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "insert"


@dataclass(frozen=True, slots=True)
class UpdateBatch:
    """Update rows by primary key: each row is ``(*values for columns, key)``,
    followed by the expected version when ``check_version``.

    With ``check_version`` the adapter adds ``AND <version column> = expected``.
    """

    table: TableInfo
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    check_version: bool = False
    refs: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "update"


@dataclass(frozen=True, slots=True)
class DeleteBatch:
    """Delete rows by primary key; with ``expected_versions`` only where the
    version column still holds the expected value."""

    table: TableInfo
    keys: list[Any]
    expected_versions: list[Any] | None = None
    refs: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "delete"


@dataclass(frozen=True, slots=True)
class UpsertBatch:
    """Insert ``rows``; where a row conflicts on ``conflict_target`` update
    ``update_columns`` from it instead (leave the existing row when empty).

    The adapter returns, for every input row in order, the whole resulting row
    in table column order. Conflict-target values are distinct within a batch.
    """

    table: TableInfo
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    conflict_target: tuple[str, ...]
    update_columns: tuple[str, ...]
    refs: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "upsert"


@dataclass(frozen=True, slots=True)
class BulkUpdateBatch:
    """Set ``values`` on every row matching ``where``; returns the row count.
    A value may be a :class:`~uow.arithmetic.ColumnMath`, computed from each row:
    then the result also holds the whole rows updated."""

    table: TableInfo
    where: Condition | None
    values: Mapping[str, Any]
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "bulk_update"

    @property
    def computes(self) -> bool:
        """Whether a value is computed from the row, so the updated rows are returned."""
        return has_math(self.values)


@dataclass(frozen=True, slots=True)
class BulkDeleteBatch:
    """Delete every row matching ``where``; returns the row count."""

    table: TableInfo
    where: Condition | None
    seqs: list[int] = field(default_factory=list)
    kind: BatchKind = "bulk_delete"


Batch = InsertBatch | UpdateBatch | DeleteBatch | UpsertBatch | BulkUpdateBatch | BulkDeleteBatch


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What applying one batch gave back.

    ``rowcount``: rows the database reports affected. ``keys``: generated keys
    of an insert with ``returning_key``, in row order. ``rows``: whole rows of an
    upsert, in input order; of a bulk update with values computed from the row
    (:attr:`BulkUpdateBatch.computes`), every row it updated, in any order.
    """

    rowcount: int
    keys: list[Any] | None = None
    rows: list[tuple[Any, ...]] | None = None


def resolve_pending(batch: Batch, key_of_ref: Callable[[int], Any]) -> Batch:
    """The batch with every :class:`PendingKey` replaced by the generated key."""
    if not isinstance(batch, (InsertBatch, UpdateBatch, UpsertBatch)) or not batch.rows:
        return batch
    rows = batch.rows
    if len(set(map(len, rows))) != 1:  # the planner's rows always have one shape
        if not any(isinstance(v, PendingKey) for row in rows for v in row):
            return batch
        resolved = [tuple(key_of_ref(v.ref) if isinstance(v, PendingKey) else v for v in row) for row in rows]
        return replace(batch, rows=resolved)
    # Column by column, each read with an itemgetter (in C): finding the columns
    # that hold a PendingKey allocates nothing per row, and only those columns are
    # rewritten. Not zip(*rows): that makes one iterator object per row, and at
    # 10k rows those allocations set off collections of the session's whole heap
    # (a full one took 25-45 ms in the middle of a flush).
    getters = [itemgetter(index) for index in range(len(rows[0]))]
    types = [set(map(type, map(get, rows))) for get in getters]
    if not any(PendingKey in kinds for kinds in types):
        return batch
    columns = [list(map(get, rows)) for get in getters]
    for index, kinds in enumerate(types):
        if kinds == {PendingKey}:  # every row waits for a key: the common case
            columns[index] = list(map(key_of_ref, map(_ref, columns[index])))
        elif PendingKey in kinds:
            columns[index] = [key_of_ref(v.ref) if type(v) is PendingKey else v for v in columns[index]]
    return replace(batch, rows=list(zip(*columns)))


_ref = attrgetter("ref")


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """The ordered batches one flush applies, in one transaction."""

    batches: tuple[Batch, ...]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        return iter(self.batches)

    @property
    def row_count(self) -> int:
        """Rows written by key (bulk batches count as one)."""
        return sum(_rows_in(b) for b in self.batches)

    def explain(self) -> str:
        """A readable account of the batches, one line each::

        1. INSERT users (name, email, age): 1 row, returning generated id
        2. INSERT posts (author_id, title): 1 row, author_id from batch 1
        """
        if not self.batches:
            return "FlushPlan: nothing to write"
        lines = [f"FlushPlan: {len(self.batches)} batch(es), {self.row_count} row(s)"]
        produced_by: dict[int, int] = {}
        for number, batch in enumerate(self.batches, start=1):
            lines.append(f"  {number}. {_describe(batch, produced_by)}")
            if isinstance(batch, InsertBatch) and batch.returning_key:
                for ref in batch.refs:
                    produced_by[ref] = number
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def _rows_in(batch: Batch) -> int:
    if isinstance(batch, DeleteBatch):
        return len(batch.keys)
    if isinstance(batch, (InsertBatch, UpdateBatch, UpsertBatch)):
        return len(batch.rows)
    return 1


def _plural(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _describe(batch: Batch, produced_by: dict[int, int]) -> str:
    table = batch.table.name
    if isinstance(batch, InsertBatch):
        text = f"INSERT {table} ({', '.join(batch.columns)}): {_plural(len(batch.rows))}"
        if batch.returning_key:
            text += f", returning generated {batch.table.key_column}"
        return text + _pending_note(batch.columns, batch.rows, produced_by)
    if isinstance(batch, UpdateBatch):
        text = f"UPDATE {table} SET {', '.join(batch.columns)} BY {batch.table.key_column}: {_plural(len(batch.rows))}"
        if batch.check_version:
            text += f", checking {batch.table.version_column}"
        return text + _pending_note(batch.columns, batch.rows, produced_by)
    if isinstance(batch, DeleteBatch):
        text = f"DELETE {table} BY {batch.table.key_column}: {_plural(len(batch.keys))}"
        if batch.expected_versions is not None:
            text += f", checking {batch.table.version_column}"
        return text
    if isinstance(batch, UpsertBatch):
        action = f"update {', '.join(batch.update_columns)}" if batch.update_columns else "do nothing"
        return (
            f"UPSERT {table} ({', '.join(batch.columns)}) ON CONFLICT ({', '.join(batch.conflict_target)})"
            f" {action}: {_plural(len(batch.rows))}"
        )
    if isinstance(batch, BulkUpdateBatch):
        return f"UPDATE {table} SET {', '.join(batch.values)} WHERE {_where(batch.where)}"
    return f"DELETE {table} WHERE {_where(batch.where)}"


def _where(where: Condition | None) -> str:
    return "(all rows)" if where is None else repr(where)


def _pending_note(columns: tuple[str, ...], rows: list[tuple[Any, ...]], produced_by: dict[int, int]) -> str:
    notes: dict[str, set[int]] = {}
    for row in rows:
        for column, value in zip(columns, row):
            if isinstance(value, PendingKey) and value.ref in produced_by:
                notes.setdefault(column, set()).add(produced_by[value.ref])
    return "".join(
        f", {column} from batch {', '.join(str(n) for n in sorted(numbers))}" for column, numbers in notes.items()
    )


__all__ = [
    "Batch",
    "BatchKind",
    "BatchResult",
    "BulkDeleteBatch",
    "BulkUpdateBatch",
    "DeleteBatch",
    "FlushPlan",
    "InsertBatch",
    "PendingKey",
    "UpdateBatch",
    "UpsertBatch",
    "resolve_pending",
]
