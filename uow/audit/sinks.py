"""Where an audit trail sends its records after each commit, besides its table.

A sink is any callable taking the records of one commit, plain or ``async``.
It runs as an engine commit hook, after the commit: the records it gets are
committed, and one it fails to take stays in the table, where
:meth:`AuditTrail.records(after=…) <uow.audit.AuditTrail.records>` finds it
again.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence

import anyio.to_thread
import msgspec

from uow.audit.entries import AuditRecord, record_of
from uow.events import AnyEvent, Inserted
from uow.session import require_current_session

AuditSink = Callable[[Sequence[AuditRecord]], Awaitable[None] | None]
"""A callable (plain or ``async``) that takes the records of one commit, in
the order they were written."""

_encoder = msgspec.json.Encoder()


class JsonLinesSink:
    """Appends each record to a file as one line of JSON (``AuditRecord``'s
    fields; datetimes in ISO 8601, decimals as strings).

    The file is opened for each commit's records and written in one call
    from a worker thread, so the event loop does not wait on the disk, and a
    rotated file is picked up at the next commit. Records of concurrent
    commits are never interleaved, but may land in either order: sort by
    ``id`` where the order matters.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    async def __call__(self, records: Sequence[AuditRecord]) -> None:
        lines = b"".join(_encoder.encode(record) + b"\n" for record in records)
        await anyio.to_thread.run_sync(self._append, lines)

    def _append(self, lines: bytes) -> None:
        with self._lock, open(self.path, "ab") as file:
            file.write(lines)

    def __repr__(self) -> str:
        return f"JsonLinesSink({self.path!r})"


class LoggingSink:
    """Logs each record through ``logging``: the message is the record as
    JSON, and the log record carries the :class:`AuditRecord` itself as
    ``audit_record`` for handlers that format their own."""

    def __init__(self, logger: logging.Logger | str = "uow.audit", level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def __call__(self, records: Sequence[AuditRecord]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        for record in records:
            text = _encoder.encode(record).decode()
            self.logger.log(self.level, "%s", text, extra={"audit_record": record})

    def __repr__(self) -> str:
        return f"LoggingSink({self.logger.name!r}, level={logging.getLevelName(self.level)!r})"


class SinkDelivery:
    """The engine commit hook that hands one sink the records a commit wrote."""

    def __init__(self, sink: AuditSink, table: str) -> None:
        self.sink = sink
        self._table = table

    async def __call__(self, events: list[AnyEvent]) -> None:
        records = _committed_records(events, self._table)
        if records:
            result = self.sink(records)
            if inspect.isawaitable(result):
                await result

    def __repr__(self) -> str:
        return f"SinkDelivery({self.sink!r})"


def _committed_records(events: list[AnyEvent], table: str) -> tuple[AuditRecord, ...]:
    """The records among a commit's events: the trail's inserts into ``table``."""
    session = require_current_session()  # a commit hook runs with the committing session current
    key_of = session.journal.key_of
    return tuple(
        record_of(key_of(event), event.values["payload"], session._tables)
        for event in events
        if event.table == table and type(event) is Inserted
    )


__all__ = ["AuditSink", "JsonLinesSink", "LoggingSink"]
