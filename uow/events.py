"""Change events: what the journal records, one per mutating call.

Events are frozen msgspec Structs in a tagged union (the tag is the class name
in the ``type`` field), so a journal encodes to JSON or MessagePack and decodes
back to equal events (see :mod:`uow.journal`).

Every event names its ``table`` and the row's session-local ``ref``: a number
the session gives each object it tracks, known before the database generates a
key. ``key`` is the primary key when it was known at the time of the event.
Values are column name to value; ``parent_refs`` maps a foreign-key column to
the ref of a parent whose key was not generated yet when the event was recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import msgspec

from uow.conditions import AnyCondition


# gc=False: the cyclic garbage collector never tracks events. A session holds one
# per change until commit (20k for 10k users with a post each), and while they were
# tracked every collection set off by the allocations of a long unit of work walked
# them all again. An event refers only to column values, keys and conditions, so it
# cannot be part of a reference cycle unless a column value refers back to it.
class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """Fields common to every event."""

    seq: int
    at: dt.datetime
    table: str


class RowEvent(Event, frozen=True, kw_only=True):
    """An event about one row."""

    ref: int
    key: Any = None


class Inserted(RowEvent, frozen=True, kw_only=True, tag=True):
    """A new row with all its column ``values``."""

    values: Mapping[str, Any]
    parent_refs: Mapping[str, int] = msgspec.field(default_factory=dict)


class Updated(RowEvent, frozen=True, kw_only=True, tag=True):
    """Columns changed from ``old`` to ``new`` (only the changed columns).

    ``unchanged`` holds the values of the columns left as they were that
    share a unique constraint over several columns with a changed one (see
    ``TableInfo.unique_together``), so that the value the row gives up and
    the one it takes are known whole; ``None`` when there are none.
    """

    old: Mapping[str, Any]
    new: Mapping[str, Any]
    parent_refs: Mapping[str, int] = msgspec.field(default_factory=dict)
    unchanged: Mapping[str, Any] | None = None


class Deleted(RowEvent, frozen=True, kw_only=True, tag=True):
    """The row was deleted; ``old`` is the whole row as it was."""

    old: Mapping[str, Any]


class SoftDeleted(RowEvent, frozen=True, kw_only=True, tag=True):
    """The soft-delete column was set (``old``, ``new`` and ``unchanged`` as in :class:`Updated`)."""

    old: Mapping[str, Any]
    new: Mapping[str, Any]
    unchanged: Mapping[str, Any] | None = None


class Restored(RowEvent, frozen=True, kw_only=True, tag=True):
    """The soft-delete column was cleared (``old``, ``new`` and ``unchanged`` as in :class:`Updated`)."""

    old: Mapping[str, Any]
    new: Mapping[str, Any]
    unchanged: Mapping[str, Any] | None = None


class Upserted(RowEvent, frozen=True, kw_only=True, tag=True):
    """Insert ``values``, or on a conflict on ``conflict_target`` update
    ``update_fields`` (nothing when empty).

    ``old`` is the tracked row the upsert landed on, when the session knew it.
    """

    values: Mapping[str, Any]
    conflict_target: tuple[str, ...]
    update_fields: tuple[str, ...]
    old: Mapping[str, Any] | None = None


class BulkUpdated(Event, frozen=True, kw_only=True, tag=True):
    """Every row matching ``where`` (all rows when ``None``) got ``values``,
    and on a versioned table its version plus one (unless ``values`` sets it).

    ``old`` holds, per ref, the previous values of the tracked rows it changed.
    """

    where: AnyCondition | None
    values: Mapping[str, Any]
    old: Mapping[int, Mapping[str, Any]] = msgspec.field(default_factory=dict)


class BulkDeleted(Event, frozen=True, kw_only=True, tag=True):
    """Every row matching ``where`` (all rows when ``None``) was deleted.

    ``old`` holds, per ref, the whole previous row of the tracked rows it deleted.
    """

    where: AnyCondition | None
    old: Mapping[int, Mapping[str, Any]] = msgspec.field(default_factory=dict)


AnyEvent = Inserted | Updated | Deleted | SoftDeleted | Restored | Upserted | BulkUpdated | BulkDeleted
"""The tagged union the journal encodes and decodes."""

ROW_CHANGES = (Updated, SoftDeleted, Restored)
"""Events that change some columns of one existing row."""

__all__ = [
    "ROW_CHANGES",
    "AnyEvent",
    "BulkDeleted",
    "BulkUpdated",
    "Deleted",
    "Event",
    "Inserted",
    "Restored",
    "RowEvent",
    "SoftDeleted",
    "Updated",
    "Upserted",
]
