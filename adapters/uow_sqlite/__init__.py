"""SQLite storage for uow, on aiosqlite.

Register through the ``uow.adapters`` entry point as ``sqlite``; build directly
with ``SQLiteAdapter.from_url("sqlite:///app.db")``.
"""

from uow_sqlite.adapter import SQLiteAdapter
from uow_sqlite.config import SQLiteConfig
from uow_sqlite.connection import SQLiteConnection
from uow_sqlite.dialect import SQLiteDialect

__all__ = ["SQLiteAdapter", "SQLiteConfig", "SQLiteConnection", "SQLiteDialect"]
