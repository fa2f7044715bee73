"""The store: committed tables, key sequences and the writer lock.

A plain ``memory://`` URL gets a private store; ``memory://name`` shares the
store registered under that name by every adapter in the process until
:func:`discard_store` forgets it (like a database file, it outlives engines).
"""

from __future__ import annotations

import uuid
from typing import Any

from uow.errors import StorageError
from uow_memory.lock import WriterLock
from uow_memory.table import TableData


class MemoryStore:
    """A database held in memory.

    ``tables`` is the committed state: a dict that is replaced, never changed,
    when a transaction commits, so a reader's snapshot is just a reference to
    it. ``version`` counts commits that wrote. Key sequences live here, outside
    transactions, so like PostgreSQL sequences they are never rolled back.
    """

    def __init__(self, name: str | None = None):
        self.name = name
        self.tables: dict[str, TableData] = {}
        self.version = 0
        self.sequences: dict[str, int] = {}
        label = f"memory store {name!r}" if name else "memory store"
        self.lock = WriterLock(label)

    def publish(self, tables: dict[str, TableData]) -> None:
        """Make ``tables`` the committed state (the caller holds the lock)."""
        self.tables = tables
        self.version += 1

    def next_key(self, table: TableData) -> Any:
        """A new key for ``table``'s generated primary key."""
        python_type = table.schema.info.primary_key.python_type
        if python_type is uuid.UUID:
            return uuid.uuid4()
        if python_type is not int:
            raise StorageError(
                f"cannot generate a key of type {getattr(python_type, '__name__', python_type)} "
                f"for {table.name}.{table.schema.info.key_column}"
            )
        value = self.sequences.get(table.name, 0) + 1
        while value in table.rows:  # only after a table was dropped and restored by a rollback
            value += 1
        self.sequences[table.name] = value
        return value

    def saw_key(self, table: TableData, key: Any) -> None:
        """Move the sequence past an explicitly given integer key, so later
        generated keys never collide with it."""
        if type(key) is int and key > self.sequences.get(table.name, 0):
            self.sequences[table.name] = key

    def reset_sequence(self, name: str) -> None:
        """Forget a dropped table's sequence."""
        self.sequences.pop(name, None)


_named: dict[str, MemoryStore] = {}


def named_store(name: str) -> MemoryStore:
    """The process-wide store called ``name``, created on first use."""
    store = _named.get(name)
    if store is None:
        store = _named[name] = MemoryStore(name)
    return store


def discard_store(name: str) -> None:
    """Forget the named store; adapters already using it keep their reference."""
    _named.pop(name, None)


__all__ = ["MemoryStore", "discard_store", "named_store"]
