"""PostgreSQL for uow, on asyncpg: ``create_engine("postgresql://user@host/db")``.

Registered under the ``postgresql`` and ``postgres`` URL schemes. See
:mod:`uow_postgres.adapter` for pool options and :mod:`uow_postgres.dialect`
for how each column kind is stored.
"""

from uow_postgres.adapter import PostgresAdapter
from uow_postgres.connection import PostgresConnection
from uow_postgres.dialect import PostgresDialect

__all__ = ["PostgresAdapter", "PostgresConnection", "PostgresDialect"]
