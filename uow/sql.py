"""SQL text for adapters that speak SQL: a dialect base class to subclass.

Nothing here knows a particular database. A SQL adapter subclasses
:class:`SqlDialect`, fills in column types, placeholders and value conversion,
and overrides any statement its database writes differently. Identifiers come
from model metadata only and are always quoted; values always become parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Any

from uow.arithmetic import ColumnMath, has_math
from uow.conditions import And as AndCondition
from uow.conditions import Between, Compare, Condition, In, IsNull, Like, Not, Or
from uow.model import ColumnInfo, ForeignKeyInfo, TableInfo, fitted_name
from uow.statements import Select

_SQL_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}

Converter = Callable[[Any], Any]


def index_name(table: str, column: str) -> str:
    """The name of the index on ``table.column``: ``ix_<table>__<column>``,
    unique to the pair (``audit_log.entry`` and ``audit.log_entry`` differ),
    cut to 63 bytes with a digest of the whole when longer (:func:`fitted_name`)."""
    return fitted_name(f"ix_{table}__{column}")


class Params:
    """Collects parameter values and hands out their placeholders."""

    __slots__ = ("values", "_placeholder")

    def __init__(self, placeholder: Callable[[int], str]):
        self.values: list[Any] = []
        self._placeholder = placeholder

    def add(self, value: Any) -> str:
        """Append ``value`` and return its placeholder."""
        self.values.append(value)
        return self._placeholder(len(self.values))


class SqlDialect(ABC):
    """Statement text and value conversion for one SQL database.

    Subclasses set :attr:`name` and implement :meth:`column_type`; they override
    :meth:`placeholder`, :meth:`encoder` and :meth:`decoder` when the driver needs
    it.
    """

    name = "sql"
    no_limit_clause = ""
    """What must precede OFFSET when a read has no LIMIT (SQLite needs ``" LIMIT -1"``)."""

    # --- basics -------------------------------------------------------------

    def quote(self, identifier: str) -> str:
        """``identifier`` as a quoted SQL identifier."""
        return '"' + identifier.replace('"', '""') + '"'

    def placeholder(self, position: int) -> str:
        """The placeholder of the ``position``-th parameter (1-based)."""
        return "?"

    def params(self) -> Params:
        """A fresh parameter collector for one statement."""
        return Params(self.placeholder)

    @abstractmethod
    def column_type(self, column: ColumnInfo) -> str:
        """The SQL type of a column."""

    def encoder(self, column: ColumnInfo) -> Converter | None:
        """Python value to driver value for a column; ``None`` when no conversion."""
        return None

    def decoder(self, column: ColumnInfo) -> Converter | None:
        """Driver value to Python value for a column; ``None`` when no conversion."""
        return None

    def encode_value(self, table: TableInfo, column: str, value: Any) -> Any:
        """One value for ``column`` of ``table``, ready for the driver."""
        if value is None:
            return None
        encode = self.encoder(table.columns[table.column_index[column]])
        return value if encode is None else encode(value)

    def row_encoder(self, table: TableInfo, columns: Sequence[str]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        """Turns a row of values for ``columns`` into driver values."""
        encoders = [self.encoder(table.columns[table.column_index[c]]) for c in columns]
        if not any(encoders):
            return lambda row: row
        pairs = list(enumerate(encoders))

        def encode(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(value if (fn is None or value is None) else fn(value) for (_, fn), value in zip(pairs, row))

        return encode

    def row_decoder(self, table: TableInfo) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """Turns a driver row in table column order into Python values."""
        decoders = [self.decoder(c) for c in table.columns]
        if not any(decoders):
            return tuple
        return lambda row: tuple(
            value if (fn is None or value is None) else fn(value) for fn, value in zip(decoders, row)
        )

    # --- schema -------------------------------------------------------------

    def column_definition(self, table: TableInfo, column: ColumnInfo) -> str:
        """One column of CREATE TABLE."""
        parts = [self.quote(column.name), self.column_type(column)]
        if column.primary_key:
            parts.append("PRIMARY KEY")
        elif not column.nullable:
            parts.append("NOT NULL")
        if column.unique and not column.primary_key:
            parts.append("UNIQUE")
        return " ".join(parts)

    def create_table(self, table: TableInfo, *, deferred_foreign_keys: Collection[str] = ()) -> list[str]:
        """CREATE TABLE and CREATE INDEX statements for a table; the foreign
        keys of the columns in ``deferred_foreign_keys`` are left for :meth:`add_foreign_key`
        (their tables are created after this one)."""
        lines = [self.column_definition(table, c) for c in table.columns]
        for constraint in table.unique_together:
            lines.append(
                f"CONSTRAINT {self.quote(constraint.name)} UNIQUE ({self.column_list(table, constraint.columns)})"
            )
        for fk in table.foreign_keys:
            if fk.column not in deferred_foreign_keys:
                lines.append(self.foreign_key_clause(fk))
        statements = [f"CREATE TABLE IF NOT EXISTS {self.quote(table.name)} (\n  " + ",\n  ".join(lines) + "\n)"]
        for column in table.columns:
            if column.indexed or (column.foreign_key is not None and not column.unique):
                index = self.quote(index_name(table.name, column.name))
                statements.append(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {self.quote(table.name)} ({self.quote(column.name)})"
                )
        for together in table.indexes_together:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.quote(together.name)} ON {self.quote(table.name)} "
                f"({self.column_list(table, together.columns)})"
            )
        return statements

    def foreign_key_clause(self, fk: ForeignKeyInfo) -> str:
        """``FOREIGN KEY (…) REFERENCES …``, with its action on delete."""
        action = "" if fk.on_delete == "no action" else f" ON DELETE {fk.on_delete.upper()}"
        return (
            f"FOREIGN KEY ({self.quote(fk.column)}) REFERENCES "
            f"{self.quote(fk.target_table)} ({self.quote(fk.target_column)}){action}"
        )

    def add_foreign_key(self, table: TableInfo, fk: ForeignKeyInfo) -> str:
        """ALTER TABLE adding a foreign key :meth:`create_table` left for later."""
        return f"ALTER TABLE {self.quote(table.name)} ADD {self.foreign_key_clause(fk)}"

    def drop_table(self, table: TableInfo) -> str:
        """DROP TABLE for a table."""
        return f"DROP TABLE IF EXISTS {self.quote(table.name)}"

    # --- reads --------------------------------------------------------------

    def column_list(self, table: TableInfo, columns: Sequence[str] | None = None) -> str:
        """Quoted, comma-separated column names (all columns by default)."""
        return ", ".join(self.quote(c) for c in (table.column_names if columns is None else columns))

    def select(self, select: Select) -> tuple[str, list[Any]]:
        """SELECT text and parameters for a :class:`Select`."""
        params = self.params()
        table = select.table
        source = self.quote(table.name)
        where = "" if select.where is None else " WHERE " + self.condition(select.where, table, params)
        if select.mode == "count":
            inner = self._limited(f"SELECT 1 FROM {source}{where}", select, params)
            if select.limit is None and select.offset is None:
                return f"SELECT count(*) FROM {source}{where}", params.values
            return f"SELECT count(*) FROM ({inner}) AS counted", params.values
        if select.mode == "exists":
            inner = self._limited(f"SELECT 1 FROM {source}{where}", select, params)
            return f"SELECT EXISTS ({inner})", params.values
        text = f"SELECT {self.column_list(table)} FROM {source}{where}"
        if select.order_by:
            text += " ORDER BY " + ", ".join(
                f"{self.sort_key(table, o.column)} {'DESC NULLS LAST' if o.descending else 'ASC NULLS FIRST'}"
                for o in select.order_by
            )
        text = self._limited(text, select, params)
        if select.for_update:
            text += " FOR UPDATE"
        return text, params.values

    def sort_key(self, table: TableInfo, column: str) -> str:
        """The ORDER BY expression for ``column`` (the quoted column by default;
        a dialect that stores a type as text may sort by a conversion instead)."""
        return self.quote(column)

    def _limited(self, text: str, select: Select, params: Params) -> str:
        if select.limit is not None:
            text += f" LIMIT {params.add(select.limit)}"
        if select.offset is not None:
            if select.limit is None:
                text += self.no_limit_clause
            text += f" OFFSET {params.add(select.offset)}"
        return text

    def condition(self, condition: Condition, table: TableInfo, params: Params) -> str:
        """WHERE-clause text for a condition; values go to ``params``."""
        if isinstance(condition, Compare):
            value = self.encode_value(table, condition.column, condition.value)
            return f"{self.quote(condition.column)} {_SQL_COMPARE[condition.cmp]} {params.add(value)}"
        if isinstance(condition, IsNull):
            return f"{self.quote(condition.column)} IS {'NOT ' if condition.negate else ''}NULL"
        if isinstance(condition, In):
            if not condition.values:
                return "1 = 1" if condition.negate else "1 = 0"
            holders = ", ".join(params.add(self.encode_value(table, condition.column, v)) for v in condition.values)
            return f"{self.quote(condition.column)} {'NOT ' if condition.negate else ''}IN ({holders})"
        if isinstance(condition, Like):
            return self.like(self.quote(condition.column), params.add(condition.pattern), condition.case_insensitive)
        if isinstance(condition, Between):
            low = params.add(self.encode_value(table, condition.column, condition.low))
            high = params.add(self.encode_value(table, condition.column, condition.high))
            return f"{self.quote(condition.column)} BETWEEN {low} AND {high}"
        if isinstance(condition, AndCondition):
            if not condition.items:
                return "1 = 1"
            return "(" + " AND ".join(self.condition(c, table, params) for c in condition.items) + ")"
        if isinstance(condition, Or):
            if not condition.items:
                return "1 = 0"
            return "(" + " OR ".join(self.condition(c, table, params) for c in condition.items) + ")"
        if isinstance(condition, Not):
            return f"NOT ({self.condition(condition.item, table, params)})"
        raise TypeError(f"unknown condition {condition!r}")

    def like(self, column_sql: str, pattern_placeholder: str, case_insensitive: bool) -> str:
        """A LIKE test with ``\\`` as the escape character."""
        operator = "ILIKE" if case_insensitive else "LIKE"
        return f"{column_sql} {operator} {pattern_placeholder} ESCAPE '\\'"

    # --- writes -------------------------------------------------------------

    def insert(self, table: TableInfo, columns: Sequence[str], returning_key: bool) -> str:
        """INSERT of one row (for executemany), returning the key when asked."""
        holders = ", ".join(self.placeholder(i) for i in range(1, len(columns) + 1))
        text = f"INSERT INTO {self.quote(table.name)} ({self.column_list(table, columns)}) VALUES ({holders})"
        if not columns:
            text = f"INSERT INTO {self.quote(table.name)} DEFAULT VALUES"
        if returning_key:
            text += f" RETURNING {self.quote(table.key_column)}"
        return text

    def update(self, table: TableInfo, columns: Sequence[str], check_version: bool) -> str:
        """UPDATE by key of one row (for executemany): parameters are the values,
        the key, then the expected version when ``check_version``."""
        assignments = ", ".join(f"{self.quote(c)} = {self.placeholder(i)}" for i, c in enumerate(columns, start=1))
        text = (
            f"UPDATE {self.quote(table.name)} SET {assignments} "
            f"WHERE {self.quote(table.key_column)} = {self.placeholder(len(columns) + 1)}"
        )
        if check_version:
            assert table.version_column is not None
            text += f" AND {self.quote(table.version_column)} = {self.placeholder(len(columns) + 2)}"
        return text

    def delete(self, table: TableInfo, check_version: bool) -> str:
        """DELETE by key of one row (for executemany): parameters are the key,
        then the expected version when ``check_version``."""
        text = f"DELETE FROM {self.quote(table.name)} WHERE {self.quote(table.key_column)} = {self.placeholder(1)}"
        if check_version:
            assert table.version_column is not None
            text += f" AND {self.quote(table.version_column)} = {self.placeholder(2)}"
        return text

    def upsert(
        self,
        table: TableInfo,
        columns: Sequence[str],
        conflict_target: Sequence[str],
        update_columns: Sequence[str],
    ) -> str:
        """INSERT … ON CONFLICT of one row, returning the whole resulting row.

        With no update columns the conflicting row is still returned, through a
        no-op assignment of the conflict target to itself.
        """
        holders = ", ".join(self.placeholder(i) for i in range(1, len(columns) + 1))
        target = ", ".join(self.quote(c) for c in conflict_target)
        assigned = update_columns or conflict_target[:1]
        assignments = ", ".join(f"{self.quote(c)} = excluded.{self.quote(c)}" for c in assigned)
        if not update_columns:
            column = self.quote(conflict_target[0])
            assignments = f"{column} = {self.quote(table.name)}.{column}"
        else:
            assignments += self.version_bump(table)
        return (
            f"INSERT INTO {self.quote(table.name)} ({self.column_list(table, columns)}) VALUES ({holders}) "
            f"ON CONFLICT ({target}) DO UPDATE SET {assignments} RETURNING {self.column_list(table)}"
        )

    def version_bump(self, table: TableInfo) -> str:
        """``, version = version + 1`` for the SET of an update of a versioned table (else empty)."""
        if table.version_column is None:
            return ""
        version = f"{self.quote(table.name)}.{self.quote(table.version_column)}"
        return f", {self.quote(table.version_column)} = COALESCE({version}, 0) + 1"

    def bulk_update(self, table: TableInfo, values: dict[str, Any], where: Condition | None) -> tuple[str, list[Any]]:
        """UPDATE … SET … WHERE text and parameters; on a versioned table the
        version of every row goes up by one too, unless ``values`` set it."""
        params = self.params()
        assignments = ", ".join(
            f"{self.quote(c)} = {self.column_math(table, c, v, params)}"
            if type(v) is ColumnMath
            else f"{self.quote(c)} = {params.add(self.encode_value(table, c, v))}"
            for c, v in values.items()
        )
        version = table.version_column
        if version is not None and version not in values:
            assignments += f", {self.quote(version)} = COALESCE({self.quote(version)}, 0) + 1"
        text = f"UPDATE {self.quote(table.name)} SET {assignments}"
        if where is not None:
            text += " WHERE " + self.condition(where, table, params)
        if has_math(values):  # the database's results, for the objects the session tracks
            text += f" RETURNING {self.column_list(table)}"
        return text, params.values

    def column_math(self, table: TableInfo, column: str, math: ColumnMath, params: Params) -> str:
        """The SQL of ``math`` set into ``column``: ``"stock" - $1``, the
        operand a parameter of the column's type."""
        operand = params.add(self.encode_value(table, column, math.operand))
        sql_type = self.column_type(table.columns[table.column_index[column]])
        return f"{self.quote(math.column)} {math.op} CAST({operand} AS {sql_type})"

    def bulk_delete(self, table: TableInfo, where: Condition | None) -> tuple[str, list[Any]]:
        """DELETE … WHERE text and parameters."""
        params = self.params()
        text = f"DELETE FROM {self.quote(table.name)}"
        if where is not None:
            text += " WHERE " + self.condition(where, table, params)
        return text, params.values


__all__ = ["Converter", "Params", "SqlDialect"]
