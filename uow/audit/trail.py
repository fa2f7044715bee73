"""The audit trail: a before-commit hook that writes an entry per event of
every transaction into its table, in that transaction, chained by hashes;
reads the entries back and verifies the chain."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from uow.arithmetic import ColumnMath
from uow.audit.entries import (
    ENCODER,
    GENESIS,
    REDACTED,
    Action,
    AuditEntry,
    AuditRecord,
    ChainHead,
    Payload,
    canonical_key,
    chain_hash,
    decoded_payload,
    key_text,
    record_of,
    typed_value,
)
from uow.audit.sinks import AuditSink, SinkDelivery
from uow.errors import (
    AuditChainError,
    ConfigurationError,
    IntegrityError,
    SerializationFailure,
    StorageError,
    ValidationError,
)
from uow.events import (
    AnyEvent,
    BulkDeleted,
    BulkUpdated,
    Deleted,
    Event,
    Inserted,
    Restored,
    RowEvent,
    SoftDeleted,
    Updated,
    Upserted,
)
from uow.journal import JournalView, json_safe
from uow.model import Model, TableInfo, table_info

if TYPE_CHECKING:
    from uow.engine import Engine
    from uow.query import Query
    from uow.session import AsyncSession

_ACTIONS: dict[type[Event], Action] = {
    Inserted: "insert",
    Updated: "update",
    Deleted: "delete",
    SoftDeleted: "soft_delete",
    Restored: "restore",
    Upserted: "upsert",
    BulkUpdated: "bulk_update",
    BulkDeleted: "bulk_delete",
}


class AuditTrail:
    """Writes an entry per event of every committed transaction, in that
    transaction.

    ``trail.install(engine)`` adds it to the engine's before-commit hooks and
    registers its model; create its table with
    ``await engine.create_all(..., AuditEntry)``. ``actor`` is called at
    each commit, in the committing task (a context variable holding the
    request's user works), and names who made the changes. Tables in
    ``exclude`` (models or table names) are not audited; the trail's own
    table never is. ``redact`` maps models to columns held as
    :data:`REDACTED`. With a ``secret``, entries are
    chained by HMAC-SHA256 under it, so only its holders can write entries
    that verify. ``sinks`` get each commit's records after the commit, as
    engine commit hooks (see :class:`JsonLinesSink` and :class:`LoggingSink`).
    """

    def __init__(
        self,
        *,
        actor: Callable[[], str | None] | None = None,
        exclude: Iterable[type[Model] | str] = (),
        redact: Mapping[Any, Iterable[str]] | None = None,
        secret: bytes | bytearray | str | None = None,
        sinks: Iterable[AuditSink] = (),
    ):
        self.actor = actor
        self._table = table_info(AuditEntry)
        self.exclude = frozenset(map(_table_name, exclude)) | {self._table.name}
        self.redact = {
            _checked_redaction(m, names): names
            for m, columns in (redact or {}).items()
            # one column may be named alone: "token" is ("token",), not its letters
            for names in [frozenset((columns,) if isinstance(columns, str) else columns)]
        }
        """Per table name, the columns whose values entries hold as ``REDACTED``."""
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and not isinstance(secret, (bytes, bytearray)):
            raise ConfigurationError(f"the audit trail's secret is bytes or str, not {type(secret).__name__}")
        if secret is not None and not secret:
            raise ConfigurationError("the audit trail's secret is empty; give one, or None for plain SHA-256")
        self._secret = bytes(secret) if secret is not None else None
        self.sinks = tuple(sinks)
        """Callables handed each commit's records after the commit (see :mod:`uow.audit.sinks`)."""
        for sink in self.sinks:
            if not callable(sink):
                raise ConfigurationError(f"an audit sink is a callable taking a commit's records, not {sink!r}")

    def install(self, engine: Engine) -> AuditTrail:
        """Run this trail at every commit of ``engine``'s sessions. An engine
        has one trail: a second would write every entry twice."""
        installed = [hook for hook in engine.before_commit_hooks if isinstance(hook, AuditTrail)]
        if installed == [self]:
            return self
        if installed:
            raise ConfigurationError(
                "the engine already has an AuditTrail; remove it from engine.before_commit_hooks first"
            )
        engine.register(AuditEntry)
        engine.before_commit_hooks.append(self)
        engine.commit_hooks.extend(SinkDelivery(sink, self._table.name) for sink in self.sinks)
        return self

    async def __call__(self, session: AsyncSession, events: list[AnyEvent]) -> None:
        """Write the entries of ``events`` (the before-commit hook)."""
        journal = session.journal
        keys = journal.generated_keys
        # a row added and deleted before a flush wrote it has no key: it never existed
        unstored = {e.ref for e in events if type(e) is Inserted and e.key is None and e.ref not in keys}
        audited = [
            event
            for event in events
            if event.table not in self.exclude and not (unstored and getattr(event, "ref", None) in unstored)
        ]
        if not audited:
            return
        actor = self.actor() if self.actor is not None else None
        tx = uuid.uuid4().hex
        # rows inserted here: a key set or changed after add() is the insert's key, not a change of it,
        # and so is the foreign key of a new child that followed it (the insert's entry holds the last)
        new_rows = {e.ref for e in audited if type(e) is Inserted}
        followed, folded = _followed_keys(audited, new_rows, session._tables)
        try:
            head = await _first(session.query(AuditEntry).order_by("-id"))
        except StorageError as exc:
            if self._table.name not in str(exc):
                raise
            raise StorageError(
                f"{exc} (the audit trail writes to {self._table.name}: create it with "
                "await engine.create_all(..., AuditEntry))",
                sqlstate=exc.sqlstate,
            ) from exc
        previous = head.entry_hash if head is not None else GENESIS
        entries = []
        for event in audited:
            table = session._tables[event.table]  # the session knows every table it recorded events of
            key = journal.key_of(event) if isinstance(event, RowEvent) else None
            if event.seq in folded:
                continue
            if followed and type(event) is Inserted and event.ref in followed:
                event = msgspec.structs.replace(event, values={**event.values, **followed[event.ref]})
            if type(event) is Updated and event.ref in new_rows:
                trimmed = _without_key_change(event, table)
                if trimmed is None:
                    continue
                key = keys.get(event.ref, key)
                event = trimmed
            redacted = self.redact.get(table.name, frozenset())
            entry = _entry(
                event,
                table,
                key,
                journal,
                tx=tx,
                actor=actor,
                previous=previous,
                redacted=redacted,
                secret=self._secret,
            )
            entries.append(entry)
            previous = entry.entry_hash
        try:
            await session.bulk_insert(AuditEntry, entries)  # flushed at once
        except IntegrityError as exc:
            if exc.kind == "unique" and exc.table == self._table.name and "prev_hash" in exc.columns:
                raise SerializationFailure(
                    "another transaction extended the audit chain first; run the unit of work again "
                    "(engine.run_in_transaction does)",
                    table=self._table.name,
                ) from exc
            raise

    async def records(
        self,
        session: AsyncSession,
        *,
        table: type[Model] | str | None = None,
        key: Any = None,
        actor: str | None = None,
        tx: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """The entries written so far, in the order they were written, narrowed
        to one table, one row of it (``key``), one actor, one transaction,
        changes made at ``since`` or later and before ``until``, or entries
        written after the one with id ``after`` (to read on from the last one
        read: change times need not follow the order of commits); at most
        ``limit`` of them."""
        for bound in (since, until):
            if bound is not None and (not isinstance(bound, dt.datetime) or bound.utcoffset() is None):
                raise ValidationError(f"since and until are instants: give an aware datetime, not {bound!r}")
        filters: dict[str, Any] = {}
        if after is not None:
            filters["id__gt"] = after
        if since is not None:
            filters["at__gte"] = since
        if until is not None:
            filters["at__lt"] = until
        tables = session._tables  # the tables the session knows, to type values again
        if table is not None:
            filters["row_table"] = _table_name(table)
        if key is not None:
            known = tables.get(filters["row_table"]) if table is not None else None
            if known is not None:  # as the key column's type, so "7" finds 7 and any spelling of a UUID its row
                key = typed_value(known, known.key_column, key)
            key = canonical_key(key)
            filters["row_key"] = ENCODER.encode(key).decode()
        if actor is not None:
            filters["actor"] = actor
        if tx is not None:
            filters["tx"] = tx
        query = session.query(AuditEntry).filter(**filters).order_by("id")
        if limit is not None:
            query = query.limit(limit)
        found = []
        async for entry in query.stream(track=False):
            assert entry.id is not None  # read back from the table
            found.append(record_of(entry.id, entry.payload, tables))
        return found

    async def verify(
        self, session: AsyncSession, *, head: ChainHead | str | None = None, start: ChainHead | None = None
    ) -> ChainHead:
        """Check every entry against its hash and its place in the chain.

        Raises :class:`~uow.errors.AuditChainError` naming the first entry that
        does not hold, or when ``head`` (what an earlier ``verify`` returned,
        or its hash) is no longer in the chain, which is how a cut-off or
        rewritten tail shows. With ``start`` (what an earlier ``verify``
        returned), only that entry and the ones after it are checked: the
        entries before it were vouched for then, and any rewrite of them
        that kept the chain whole would have changed its hash.
        """
        if isinstance(head, ChainHead):
            head = head.hash
        previous, count = GENESIS, 0
        entries = session.query(AuditEntry).order_by("id")
        seen_head = head is None or head == GENESIS
        if start is not None and start.entries:
            first = await _first(session.query(AuditEntry).filter(entry_hash=start.hash))
            if first is None or chain_hash(first.prev_hash, first.payload, self._secret) != start.hash:
                raise AuditChainError(
                    None, f"no entry has the start's hash {start.hash!r}: the chain was cut short or rewritten"
                )
            self._check(first, first.prev_hash)  # its searchable columns, which its hash does not cover
            assert first.id is not None
            previous, count = start.hash, start.entries
            entries = entries.filter(id__gt=first.id)
            if not seen_head:  # a head kept before the start is vouched for by the start's hash
                kept = session.query(AuditEntry).filter(id__lte=first.id, entry_hash=head)
                seen_head = await _first(kept) is not None
        async for entry in entries.stream(track=False):
            self._check(entry, previous)
            previous = entry.entry_hash
            seen_head = seen_head or previous == head
            count += 1
        if not seen_head:
            raise AuditChainError(
                None, f"no entry has the kept head's hash {head!r}: the chain was cut short or rewritten"
            )
        return ChainHead(count, previous)

    def _check(self, entry: AuditEntry, previous: str) -> None:
        """Raise :class:`~uow.errors.AuditChainError` unless ``entry`` follows
        the hash ``previous`` and matches its own hash and payload."""
        if entry.prev_hash != previous:
            raise AuditChainError(entry.id, "does not follow the entry before it (one was removed or slipped in)")
        if chain_hash(previous, entry.payload, self._secret) != entry.entry_hash:
            raise AuditChainError(entry.id, "does not match its hash (its payload was edited, or another secret)")
        payload = decoded_payload(entry.id, entry.payload)
        shown = (entry.tx, entry.at, entry.actor, entry.row_table, entry.row_key, entry.action)
        stored = (payload.tx, payload.at, payload.actor, payload.table, key_text(payload.key), payload.action)
        if shown != stored:
            raise AuditChainError(entry.id, "has columns that differ from its payload (they were edited)")


async def _first(query: Query[AuditEntry]) -> AuditEntry | None:
    """The first entry ``query`` finds, not tracked: a session committing for
    hours would otherwise keep every chain head it read."""
    async with contextlib.aclosing(query.limit(1).stream(track=False)) as found:
        async for entry in found:
            return entry
    return None


def _entry(
    event: AnyEvent,
    table: TableInfo,
    key: Any,
    journal: JournalView,
    *,
    tx: str,
    actor: str | None,
    previous: str,
    redacted: frozenset[str],
    secret: bytes | None,
) -> AuditEntry:
    key = canonical_key(key)
    keys = journal.generated_keys
    old: Mapping[str, Any] = {}
    new: Mapping[str, Any] = {}
    where: dict[str, Any] | str | None = None
    update_fields: tuple[str, ...] | None = None
    if isinstance(event, (BulkUpdated, BulkDeleted)):
        where = json_safe(msgspec.to_builtins(event.where)) if event.where is not None else None
        if isinstance(event, BulkUpdated):  # arithmetic (stock - 1) as JSON, an infinite operand as "inf"
            new = {
                c: json_safe(msgspec.to_builtins(v)) if type(v) is ColumnMath else v for c, v in event.values.items()
            }
    elif isinstance(event, Upserted):
        new = journal.upserted_row(event) or {**event.values, table.key_column: key}  # the row it left
        update_fields = event.update_fields
        old = event.old or {}
    elif isinstance(event, Inserted):
        new = {**event.values, table.key_column: key}
    elif isinstance(event, Deleted):
        old = event.old
    else:
        old, new = event.old, event.new
    if isinstance(event, (Inserted, Updated)) and event.parent_refs:  # foreign keys filled at the flush
        new = {**new, **{column: keys.get(ref) for column, ref in event.parent_refs.items()}}
    if redacted:
        old, new = _redacted(old, redacted), _redacted(new, redacted)
        where = REDACTED if where is not None else None  # a filter may name a secret value
    action = _ACTIONS[type(event)]
    old, new = _finite(table, old), _finite(table, new)
    fields = Payload(tx, event.at, actor, event.table, key, action, old, new, where, update_fields)
    payload = ENCODER.encode(fields).decode()
    return AuditEntry(
        tx=tx,
        at=event.at,
        actor=actor,
        row_table=event.table,
        row_key=key_text(key),
        action=action,
        payload=payload,
        prev_hash=previous,
        entry_hash=chain_hash(previous, payload, secret),
    )


def _redacted(values: Mapping[str, Any], columns: frozenset[str]) -> Mapping[str, Any]:
    if columns.isdisjoint(values):
        return values
    return {c: REDACTED if c in columns else v for c, v in values.items()}


def _followed_keys(
    events: list[AnyEvent], new_rows: set[int], tables: Mapping[str, TableInfo]
) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Foreign keys of new children that followed a new parent's key changed
    before the flush: their final values by child ref, and the seqs of the
    events that made them follow."""
    followed: dict[int, dict[str, Any]] = {}
    folded: set[int] = set()
    renamed = {
        (e.table, e.old[key]): e.new[key]
        for e in events
        if type(e) is Updated and e.ref in new_rows and (key := tables[e.table].key_column) in e.new
    }
    if not renamed:
        return followed, folded
    for event in events:
        if type(event) is not Updated or event.ref not in new_rows:
            continue
        targets = {fk.column: fk.target_table for fk in tables[event.table].foreign_keys}
        if event.new and all(
            column in targets and renamed.get((targets[column], event.old.get(column))) == value
            for column, value in event.new.items()
        ):
            followed.setdefault(event.ref, {}).update(event.new)
            folded.add(event.seq)
    return followed, folded


def _without_key_change(event: Updated, table: TableInfo) -> Updated | None:
    """``event`` without the key column, which a key set on a new object
    after ``add()`` put there (its insert's entry holds the key); ``None``
    when nothing else changed."""
    if table.key_column not in event.new:
        return event
    old = {c: v for c, v in event.old.items() if c != table.key_column}
    new = {c: v for c, v in event.new.items() if c != table.key_column}
    return msgspec.structs.replace(event, old=old, new=new) if new else None


def _checked_redaction(model: type[Model], columns: frozenset[str]) -> str:
    """The table name of ``model``, once ``columns`` are known to be columns
    of it other than its key (which names the row in every entry)."""
    if not isinstance(model, type) or not issubclass(model, Model):
        raise ConfigurationError(f"redact maps models to column names; {model!r} is not a model")
    table = table_info(model)
    unknown = sorted(columns - set(table.column_index))
    if unknown:
        raise ConfigurationError(f"the audit trail cannot redact {table.name}: it has no column(s) {unknown}")
    if table.key_column in columns:
        raise ConfigurationError(
            f"the audit trail cannot redact {table.name}.{table.key_column}: entries name their row by its primary key"
        )
    return table.name


def _table_name(model: type[Model] | str) -> str:
    return model if isinstance(model, str) else table_info(model).name


def _finite(table: TableInfo, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``values`` with infinite floats as the strings ``"inf"`` and ``"-inf"``,
    which JSON lacks (msgspec would write ``null``). Not in a JSON column:
    that stores ``null`` too, and the entry says what the row holds."""
    if not any(type(v) is float and not math.isfinite(v) for v in values.values()):
        return values
    return {c: repr(v) if _is_infinite_number(table, c, v) else v for c, v in values.items()}


def _is_infinite_number(table: TableInfo, column: str, value: Any) -> bool:
    if type(value) is not float or math.isfinite(value) or column not in table.column_index:
        return False
    return table.columns[table.column_index[column]].kind != "json"


__all__ = ["AuditTrail"]
