"""Constraint checks, raising :class:`uow.errors.IntegrityError` as a database would.

Constraint names follow PostgreSQL's defaults (``users_pkey``,
``users_email_key``, ``posts_author_id_fkey``).
"""

from __future__ import annotations

from typing import Any

from uow.errors import IntegrityError, StorageError
from uow.model import ForeignKeyInfo
from uow_memory.table import TableData
from uow_memory.transaction import Transaction
from uow_memory.values import index_key


def check_not_null(table: TableData, row: tuple[Any, ...], row_index: int | None) -> None:
    """Every non-nullable column has a value."""
    for index in table.schema.not_null:
        if row[index] is None:
            column = table.schema.info.column_names[index]
            raise IntegrityError(
                f'null value in column "{column}" of relation "{table.name}" violates not-null constraint',
                kind="not_null",
                table=table.name,
                columns=(column,),
                row_index=row_index,
            )


def check_new_key(table: TableData, key: Any, row_index: int | None) -> None:
    """No row holds ``key`` yet."""
    if key in table.rows:
        column = table.schema.info.key_column
        raise IntegrityError(
            f'duplicate key value violates unique constraint "{table.name}_pkey": '
            f"Key ({column})=({key!r}) already exists",
            kind="primary_key",
            table=table.name,
            columns=(column,),
            constraint=f"{table.name}_pkey",
            row_index=row_index,
        )


def check_unique(
    table: TableData,
    key: Any,
    row: tuple[Any, ...],
    row_index: int | None,
    old: tuple[Any, ...] | None = None,
) -> None:
    """No other row holds this row's values in a unique constraint's columns
    (NULLs never clash).

    With ``old`` (an update) only constraints over a changed column are looked at.
    """
    for index in table.schema.unique:
        entry = index.entry(row)
        if entry is None or (old is not None and index.values(old) == index.values(row)):
            continue
        other = table.key_of_unique(index.columns, entry)
        if other is not None and other != key:
            values = ", ".join(map(repr, index.values(row)))
            raise IntegrityError(
                f'duplicate key value violates unique constraint "{index.constraint}": '
                f"Key ({', '.join(index.columns)})=({values}) already exists",
                kind="unique",
                table=table.name,
                columns=index.columns,
                constraint=index.constraint,
                row_index=row_index,
            )


def referenced_exists(tx: Transaction, fk: ForeignKeyInfo, value: Any) -> bool:
    """Whether the row ``value`` points at through ``fk`` exists."""
    target = tx.tables.get(fk.target_table)
    if target is None:
        raise StorageError(f"no such table: {fk.target_table} (referenced by a foreign key)")
    info = target.schema.info
    if fk.target_column == info.key_column:
        return value in target.rows
    if (fk.target_column,) in target.unique:
        return target.key_of_unique((fk.target_column,), index_key(value)) is not None
    index = info.column_index[fk.target_column]
    return any(row[index] == value for row in target.rows.values())


def check_references(
    tx: Transaction,
    table: TableData,
    key: Any,
    row: tuple[Any, ...],
    row_index: int | None,
    old: tuple[Any, ...] | None = None,
) -> None:
    """Every non-null foreign key points at an existing row (a row may point at itself).

    With ``old`` (an update) only changed columns are looked at.
    """
    for fk, index in table.schema.foreign_keys:
        value = row[index]
        if value is None or (old is not None and old[index] == value):
            continue
        if fk.target_table == table.name and row[table.schema.info.column_index[fk.target_column]] == value:
            continue
        if not referenced_exists(tx, fk, value):
            raise foreign_key_missing(table.name, fk, value, row_index)


def foreign_key_missing(table: str, fk: ForeignKeyInfo, value: Any, row_index: int | None) -> IntegrityError:
    """The error for a row that points at a row that does not exist."""
    return IntegrityError(
        f'insert or update on table "{table}" violates foreign key constraint "{table}_{fk.column}_fkey": '
        f'Key ({fk.column})=({value!r}) is not present in table "{fk.target_table}"',
        kind="foreign_key",
        table=table,
        columns=(fk.column,),
        constraint=f"{table}_{fk.column}_fkey",
        row_index=row_index,
    )


def still_referenced(child: str, fk: ForeignKeyInfo, value: Any, row_index: int | None) -> IntegrityError:
    """The error for deleting (or re-keying) a row that rows of ``child`` still point at."""
    return IntegrityError(
        f'update or delete on table "{fk.target_table}" violates foreign key constraint "{child}_{fk.column}_fkey" '
        f'on table "{child}": Key ({fk.target_column})=({value!r}) is still referenced from table "{child}"',
        kind="foreign_key",
        table=child,
        columns=(fk.column,),
        constraint=f"{child}_{fk.column}_fkey",
        row_index=row_index,
    )


def children_of(tx: Transaction) -> dict[str, list[tuple[str, ForeignKeyInfo]]]:
    """For each table, the (child table, foreign key) pairs that reference it."""
    children: dict[str, list[tuple[str, ForeignKeyInfo]]] = {}
    for name, table in tx.tables.items():
        for fk, _ in table.schema.foreign_keys:
            children.setdefault(fk.target_table, []).append((name, fk))
    return children


__all__ = [
    "check_new_key",
    "check_not_null",
    "check_references",
    "check_unique",
    "children_of",
    "foreign_key_missing",
    "referenced_exists",
    "still_referenced",
]
