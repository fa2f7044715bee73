"""In-memory storage adapter for uow (``memory://``).

It keeps tables as dicts of tuples, enforces primary keys, unique columns,
NOT NULL and foreign keys (with ``on_delete``) as a database does, isolates
transactions by snapshots and serializes writers with one lock per store. The
conformance suite uses it as the reference the SQL adapters are compared with.
"""

from uow_memory.adapter import MemoryAdapter
from uow_memory.connection import MemoryConnection
from uow_memory.store import MemoryStore, discard_store

__all__ = ["MemoryAdapter", "MemoryConnection", "MemoryStore", "discard_store"]
