"""uow: an event-sourced unit of work for async Python.

Models are msgspec Structs; a :class:`AsyncSession` records every change as an
immutable event in its journal, plans flushes from the foreign keys, and applies
them through a storage adapter (memory, SQLite, PostgreSQL) in one transaction.
"""

from uow import errors
from uow.batches import FlushPlan
from uow.conditions import Condition
from uow.criteria import Q
from uow.engine import Engine, create_engine, register_adapter
from uow.events import (
    AnyEvent,
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Event,
    Inserted,
    Restored,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.expressions import Column, asc, col, desc
from uow.journal import JournalView, decode, encode, replay
from uow.model import (
    ForeignKey,
    Index,
    Model,
    PrimaryKey,
    SoftDelete,
    Unique,
    Versioned,
    filled_by_relation,
    relation,
    table_info,
)
from uow.planner import plan_flush
from uow.query import Query, SelectStatement, select
from uow.results import Result, ScalarResult
from uow.session import (
    AsyncSession,
    SavepointTransaction,
    current_session,
    require_current_session,
    session_context,
    sessionmaker,
)

__version__ = "0.1.0"

__all__ = [
    "AnyEvent",
    "AsyncSession",
    "BulkDeleted",
    "BulkUpdated",
    "Column",
    "Condition",
    "Deleted",
    "Engine",
    "Event",
    "FlushPlan",
    "ForeignKey",
    "Index",
    "Inserted",
    "JournalView",
    "Model",
    "PrimaryKey",
    "Q",
    "Query",
    "Restored",
    "Result",
    "SavepointTransaction",
    "ScalarResult",
    "SelectStatement",
    "SoftDelete",
    "SoftDeleted",
    "Unique",
    "Updated",
    "Upserted",
    "Versioned",
    "asc",
    "col",
    "create_engine",
    "current_session",
    "decode",
    "desc",
    "encode",
    "errors",
    "plan_flush",
    "register_adapter",
    "filled_by_relation",
    "relation",
    "replay",
    "require_current_session",
    "select",
    "session_context",
    "sessionmaker",
    "table_info",
]
