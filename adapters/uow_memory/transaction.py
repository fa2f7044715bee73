"""One transaction's view of the store: copy on write, and savepoints by undo log.

A transaction starts from a reference to the committed tables. Its first write
to a table copies that table. A savepoint remembers the dict of tables and the
length of the undo log, where the tables the transaction owns log every change
while a savepoint is set; rolling back to it undoes the logged changes since,
in reverse, and puts that dict back (which drops the copies made since). So a
savepoint costs O(number of tables) and its rollback O(changes undone),
whatever the tables hold.
"""

from __future__ import annotations

from uow.errors import OperationalError, SerializationFailure, StorageError
from uow.model import TableInfo
from uow_memory.store import MemoryStore
from uow_memory.table import Change, TableData

ISOLATION_LEVELS = (None, "read committed", "repeatable read", "serializable")


class Transaction:
    """The tables one transaction sees and writes.

    ``owned`` names the tables this transaction copied: only those may be
    changed in place. ``writing`` is true once it holds the store's writer
    lock.
    """

    __slots__ = ("isolation", "owned", "savepoints", "snapshot_version", "store", "tables", "undo_log", "writing")

    def __init__(self, store: MemoryStore, isolation: str | None = None):
        self.store = store
        self.isolation = isolation
        self.tables: dict[str, TableData] = dict(store.tables)
        self.snapshot_version = store.version
        self.owned: set[str] = set()
        self.savepoints: list[_Savepoint] = []
        self.undo_log: list[Change] = []
        """Changes to owned tables since the first savepoint still set."""
        self.writing = False

    # --- snapshots ------------------------------------------------------------

    def refresh(self) -> None:
        """Move a transaction that has not written yet onto the latest commit."""
        assert not self.writing
        self.tables = dict(self.store.tables)
        self.snapshot_version = self.store.version
        self.savepoints = [(name, dict(self.tables), 0, set()) for name, *_ in self.savepoints]

    def before_read(self) -> None:
        """Under read committed, each statement sees the latest commit."""
        if self.isolation == "read committed" and not self.writing and self.snapshot_version != self.store.version:
            self.refresh()

    def start_writing(self) -> None:
        """Called once the writer lock is held, before the first write.

        Whatever committed since the snapshot was taken is taken in (as
        PostgreSQL's read committed does), except under repeatable read and
        serializable, where it is a serialization failure (as SQLite reports a
        stale snapshot).
        """
        if self.snapshot_version != self.store.version:
            if self.isolation in ("repeatable read", "serializable"):
                raise SerializationFailure(
                    "could not serialize access: another transaction committed since this one began",
                    sqlstate="40001",
                )
            self.refresh()
        self.writing = True

    # --- tables ---------------------------------------------------------------

    def table(self, name: str) -> TableData:
        """The table to read."""
        table = self.tables.get(name)
        if table is None:
            raise StorageError(f"no such table: {name}")
        return table

    def writable(self, name: str) -> TableData:
        """The table to write, copied first if this transaction does not own it yet."""
        table = self.table(name)
        if name not in self.owned:
            table = self.tables[name] = table.copy()
            self.owned.add(name)
            if self.savepoints:
                table.undo_log = self.undo_log
        return table

    def create(self, info: TableInfo) -> None:
        """Create the table unless it exists."""
        if info.name not in self.tables:
            table = self.tables[info.name] = TableData.empty(info)
            self.owned.add(info.name)
            if self.savepoints:
                table.undo_log = self.undo_log

    def drop(self, name: str) -> None:
        """Drop the table if it exists."""
        if self.tables.pop(name, None) is not None:
            self.owned.discard(name)
            self.store.reset_sequence(name)

    # --- savepoints -------------------------------------------------------------

    def savepoint(self, name: str) -> None:
        """Remember the current tables under ``name``."""
        if not self.savepoints:
            for owned in self.owned:
                self.tables[owned].undo_log = self.undo_log
        self.savepoints.append((name, dict(self.tables), len(self.undo_log), set(self.owned)))

    def _find(self, name: str) -> int:
        for index in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[index][0] == name:
                return index
        raise OperationalError(f"no such savepoint: {name}")

    def release(self, name: str) -> None:
        """Forget the savepoint and every one set after it."""
        del self.savepoints[self._find(name) :]
        if not self.savepoints:
            self._stop_logging()

    def rollback_to(self, name: str) -> None:
        """Go back to the tables as they were at the savepoint, which stays set."""
        index = self._find(name)
        _, tables, logged, owned = self.savepoints[index]
        undo_log = self.undo_log
        # changes to tables copied after the savepoint are undone too, harmlessly:
        # those copies are dropped with the dict of tables put back
        for table, key, removed in reversed(undo_log[logged:]):
            table.undo(key, removed)
        del undo_log[logged:]
        self.tables = dict(tables)
        self.owned = set(owned)
        del self.savepoints[index + 1 :]

    def end(self) -> None:
        """The transaction commits or rolls back: its savepoints are gone, and
        tables it publishes log nothing."""
        self.savepoints.clear()
        self._stop_logging()

    def _stop_logging(self) -> None:
        for owned in self.owned:
            table = self.tables.get(owned)
            if table is not None:
                table.undo_log = None
        self.undo_log.clear()


_Savepoint = tuple[str, dict[str, TableData], int, set[str]]
"""(name, the tables then, the undo log's length then, the tables owned then)."""

__all__ = ["ISOLATION_LEVELS", "Transaction"]
