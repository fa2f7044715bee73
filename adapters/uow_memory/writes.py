"""Applying one flush batch to a transaction's tables.

Each batch is atomic: every row change is logged and undone if any row of the
batch fails, so a failed batch leaves nothing behind (key sequences excepted;
like database sequences they never go back). Constraints are checked row by
row as PostgreSQL and SQLite do, except that ``no action`` / ``restrict``
foreign keys are checked when a delete batch ends, as PostgreSQL checks them at
the end of the statement: deleting a parent and its children in one batch works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from uow.arithmetic import ColumnMath, compute
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
from uow.errors import StorageError
from uow.model import ForeignKeyInfo
from uow_memory.constraints import (
    check_new_key,
    check_not_null,
    check_references,
    check_unique,
    children_of,
    still_referenced,
)
from uow_memory.reads import matching_keys
from uow_memory.table import TableData
from uow_memory.transaction import Transaction

_Pending = tuple[str, ForeignKeyInfo, Any, int | None]


class BatchWriter:
    """Applies batches to one transaction, undoing a batch that fails."""

    __slots__ = ("_children", "_pending", "_undo", "tx")

    def __init__(self, tx: Transaction):
        self.tx = tx
        self._undo: list[tuple[TableData, Any, tuple[Any, ...] | None]] = []
        self._pending: list[_Pending] = []
        self._children: dict[str, list[tuple[str, ForeignKeyInfo]]] | None = None

    def apply(self, batch: Batch) -> BatchResult:
        """Apply ``batch`` completely or not at all."""
        self._undo.clear()
        self._pending.clear()
        self._children = None
        try:
            if isinstance(batch, InsertBatch):
                return self._insert(batch)
            if isinstance(batch, UpdateBatch):
                return self._update(batch)
            if isinstance(batch, DeleteBatch):
                return self._delete(batch)
            if isinstance(batch, UpsertBatch):
                return self._upsert(batch)
            if isinstance(batch, BulkUpdateBatch):
                return self._bulk_update(batch)
            if isinstance(batch, BulkDeleteBatch):
                return self._bulk_delete(batch)
            raise StorageError(f"unknown batch {batch!r}")
        except BaseException:
            self._rollback()
            raise
        finally:
            self._undo.clear()
            self._pending.clear()

    # --- logged primitives ------------------------------------------------------

    def _rollback(self) -> None:
        for table, key, old in reversed(self._undo):
            table.remove(key)
            if old is not None:
                table.put(key, old)

    def _put(self, table: TableData, key: Any, row: tuple[Any, ...]) -> None:
        table.put(key, row)
        self._undo.append((table, key, None))

    def _remove(self, table: TableData, key: Any) -> tuple[Any, ...] | None:
        old = table.remove(key)
        if old is not None:
            self._undo.append((table, key, old))
        return old

    # --- helpers ----------------------------------------------------------------

    def _indexes(self, table: TableData, columns: Sequence[str]) -> list[int]:
        index = table.schema.info.column_index
        try:
            return [index[c] for c in columns]
        except KeyError as exc:
            raise StorageError(f"no such column: {table.name}.{exc.args[0]}") from None

    def _new_row(self, table: TableData, indexes: list[int], values: Sequence[Any], row_index: int) -> Any:
        """Insert a row given ``values`` for columns ``indexes``; return its key."""
        schema = table.schema
        stored: list[Any] = [None] * len(schema.info.columns)
        for index, value in zip(indexes, values):
            stored[index] = schema.codec.store_value(index, value)
        if schema.generated and schema.key_index not in indexes:
            stored[schema.key_index] = self.tx.store.next_key(table)
        key = stored[schema.key_index]
        row = tuple(stored)
        check_not_null(table, row, row_index)
        check_new_key(table, key, row_index)
        check_unique(table, key, row, row_index)
        check_references(self.tx, table, key, row, row_index)
        self._put(table, key, row)
        if schema.generated and key is not None:  # a given key a row now holds: generated ones go past it
            self.tx.store.saw_key(table, key)
        return key

    def _change_row(
        self,
        table: TableData,
        key: Any,
        old: tuple[Any, ...],
        changes: Mapping[int, Any],
        row_index: int | None,
    ) -> tuple[Any, ...]:
        """Update the row ``key`` (currently ``old``) with ``changes``; return the new row."""
        schema = table.schema
        values = list(old)
        for index, value in changes.items():
            values[index] = schema.codec.store_value(index, value)
        row = tuple(values)
        new_key = row[schema.key_index]
        check_not_null(table, row, row_index)
        if new_key != key:
            check_new_key(table, new_key, row_index)
            self._check_not_referenced(table, key, row_index)
        check_unique(table, new_key, row, row_index, old)
        check_references(self.tx, table, new_key, row, row_index, old)
        self._remove(table, key)
        self._put(table, new_key, row)
        return row

    def _children_of(self, name: str) -> list[tuple[str, ForeignKeyInfo]]:
        if self._children is None:
            self._children = children_of(self.tx)
        return self._children.get(name, [])

    def _check_not_referenced(self, table: TableData, key: Any, row_index: int | None) -> None:
        for child_name, fk in self._children_of(table.name):
            if fk.target_column == table.schema.info.key_column and self.tx.table(child_name).referencing(
                fk.column, key
            ):
                raise still_referenced(child_name, fk, key, row_index)

    def _delete_tree(self, name: str, key: Any, row_index: int | None) -> None:
        """Delete a row and apply its children's ``on_delete``, recursively."""
        work = [(name, key)]
        while work:
            table_name, row_key = work.pop()
            table = self.tx.writable(table_name)
            old = self._remove(table, row_key)
            if old is None:
                continue
            info = table.schema.info
            for child_name, fk in self._children_of(table_name):
                value = old[info.column_index[fk.target_column]]
                child = self.tx.table(child_name)
                referencing = child.referencing(fk.column, value)
                if not referencing:
                    continue
                if fk.on_delete == "cascade":
                    work.extend((child_name, child_key) for child_key in referencing)
                elif fk.on_delete == "set null":
                    child = self.tx.writable(child_name)
                    column = child.schema.info.column_index[fk.column]
                    for child_key in list(child.referencing(fk.column, value)):
                        row = child.rows[child_key]
                        self._remove(child, child_key)
                        self._put(child, child_key, (*row[:column], None, *row[column + 1 :]))
                else:
                    self._pending.append((child_name, fk, value, row_index))

    def _check_pending(self) -> None:
        for child_name, fk, value, row_index in self._pending:
            if self.tx.table(child_name).referencing(fk.column, value):
                raise still_referenced(child_name, fk, value, row_index)

    # --- batch kinds --------------------------------------------------------------

    def _insert(self, batch: InsertBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        indexes = self._indexes(table, batch.columns)
        keys = [self._new_row(table, indexes, row, i) for i, row in enumerate(batch.rows)]
        return BatchResult(len(keys), keys=keys if batch.returning_key else None)

    def _update(self, batch: UpdateBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        indexes = self._indexes(table, batch.columns)
        width = len(indexes)
        version_index = table.schema.version_index
        if batch.check_version and version_index is None:
            raise StorageError(f"table {table.name} has no version column to check")
        count = 0
        for i, values in enumerate(batch.rows):
            key = values[width]
            old = table.rows.get(key)
            if old is None:
                continue
            if batch.check_version:
                expected = values[width + 1]
                if expected is None or old[version_index] != expected:  # type: ignore[index]
                    continue
            self._change_row(table, key, old, dict(zip(indexes, values[:width])), i)
            count += 1
        return BatchResult(count)

    def _delete(self, batch: DeleteBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        version_index = table.schema.version_index
        expected = batch.expected_versions
        if expected is not None and version_index is None:
            raise StorageError(f"table {table.name} has no version column to check")
        matched: list[tuple[int, Any]] = []
        for i, key in enumerate(batch.keys):
            old = table.rows.get(key)
            if old is None:
                continue
            if expected is not None and (expected[i] is None or old[version_index] != expected[i]):  # type: ignore[index]
                continue
            matched.append((i, key))
        for i, key in matched:
            self._delete_tree(table.name, key, i)
        self._check_pending()
        return BatchResult(len(matched))

    def _upsert(self, batch: UpsertBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        info = table.schema.info
        indexes = self._indexes(table, batch.columns)
        by_key = batch.conflict_target == (info.key_column,)
        unique = None if by_key else table.unique_index(batch.conflict_target)
        if not by_key and unique is None:
            raise StorageError(
                f"there is no unique or exclusion constraint on {table.name} matching the ON CONFLICT "
                f"specification ({', '.join(batch.conflict_target)})"
            )
        target = (info.key_column,) if unique is None else unique.columns
        missing = [c for c in target if c not in batch.columns]
        if missing:
            raise StorageError(
                f"upsert on {table.name}: the conflict target {', '.join(missing)} is not among the columns"
            )
        position = {c: p for p, c in enumerate(batch.columns)}
        target_positions = [position[c] for c in target]
        try:
            updates = [(info.column_index[c], position[c]) for c in batch.update_columns]
        except KeyError as exc:
            raise StorageError(
                f"upsert on {table.name}: cannot update {exc.args[0]}, it is not among the columns"
            ) from None
        version = None if info.version_column is None else info.column_index[info.version_column]
        count = 0
        rows: list[tuple[Any, ...]] = []
        for i, values in enumerate(batch.rows):
            if unique is None:
                value = values[target_positions[0]]
                existing = value if value is not None and value in table.rows else None
            else:
                entry = unique.entry_of(tuple(values[p] for p in target_positions))
                existing = None if entry is None else table.key_of_unique(unique.columns, entry)
            if existing is None:
                key = self._new_row(table, indexes, values, i)
                count += 1
            elif updates:
                old = table.rows[existing]
                changes = {c: values[p] for c, p in updates}
                if version is not None:  # as the SQL adapters do: the updated row's version goes up
                    changes[version] = (old[version] or 0) + 1
                row = self._change_row(table, existing, old, changes, i)
                key = row[table.schema.key_index]
                count += 1
            else:
                key = existing
            rows.append(table.schema.codec.copy_out(table.rows[key]))
        return BatchResult(count, rows=rows)

    def _bulk_update(self, batch: BulkUpdateBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        changes = dict(zip(self._indexes(table, list(batch.values)), batch.values.values()))
        for index, value in changes.items():  # a value no database holds is refused, rows matched or not
            if type(value) is not ColumnMath and value is not None:
                table.schema.codec.store_value(index, value)
        version = batch.table.version_column
        bump = None if version is None or version in batch.values else batch.table.column_index[version]
        # values computed from the row (stock - 1): index -> (the source column's index, the arithmetic)
        index_of = batch.table.column_index
        math = {i: (index_of[v.column], v) for i, v in changes.items() if type(v) is ColumnMath}
        keys = matching_keys(table, batch.where)
        updated: list[tuple[Any, ...]] = []
        for key in keys:
            old = table.rows.get(key)
            if old is not None:
                for index, (source, value) in math.items():
                    changes[index] = compute(value.op, old[source], value.operand)
                if bump is not None:  # as the SQL adapters do: every matched row's version goes up
                    changes[bump] = (old[bump] or 0) + 1
                row = self._change_row(table, key, old, changes, None)
                if math:
                    updated.append(table.schema.codec.copy_out(row))
        return BatchResult(len(keys), rows=updated if math else None)

    def _bulk_delete(self, batch: BulkDeleteBatch) -> BatchResult:
        table = self.tx.writable(batch.table.name)
        keys = matching_keys(table, batch.where)
        for key in keys:
            self._delete_tree(table.name, key, None)
        self._check_pending()
        return BatchResult(len(keys))


__all__ = ["BatchWriter"]
