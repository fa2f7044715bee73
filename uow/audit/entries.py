"""What an audit entry holds: the stored row, its hashed payload, and the
typed record read back from it."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from uow.errors import AuditChainError
from uow.journal import typed_column_value
from uow.model import Index, Model, PrimaryKey, TableInfo, Unique

Action = Literal["insert", "update", "delete", "soft_delete", "restore", "upsert", "bulk_update", "bulk_delete"]

GENESIS = "0" * 64
"""The previous hash of the first entry of a chain."""

REDACTED = "<redacted>"
"""What an entry holds in place of a redacted column's value."""

ENCODER = msgspec.json.Encoder(order="sorted")
"""Canonical JSON: the payload's text, hashed as it is stored."""


class AuditEntry(Model, table="uow_audit"):
    """One stored entry: the payload is the record as canonical JSON; the
    columns beside it repeat parts of it so that entries can be searched."""

    id: Annotated[int | None, PrimaryKey()] = None
    tx: Annotated[str, Index()]
    at: dt.datetime
    actor: Annotated[str | None, Index()] = None
    row_table: str
    row_key: Annotated[str | None, Index()] = None
    action: str
    payload: str
    prev_hash: Annotated[str, Unique()]
    entry_hash: str


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One audited change, as :meth:`AuditTrail.records` reads it back.

    ``old`` and ``new`` hold the changed columns before and after (``old`` is
    empty for an insert, ``new`` for a delete); a bulk update or delete holds
    its filter in ``where`` (the encoded condition) and no per-row values, a
    value computed from the row as a :class:`~uow.arithmetic.ColumnMath`. An
    upsert's ``new`` is the row as it left it. Column values are typed again
    when the session knows the table's model and the value still fits its
    column.
    """

    id: int
    tx: str
    """Shared by the entries one commit wrote."""
    at: dt.datetime
    actor: str | None
    table: str
    key: Any
    action: Action
    old: dict[str, Any]
    new: dict[str, Any]
    where: dict[str, Any] | str | None = None
    """A bulk event's filter as the journal encodes conditions, ``REDACTED``
    on a table with redacted columns, ``None`` for other actions."""
    update_fields: tuple[str, ...] | None = None
    """An upsert's columns updated on a conflict (``None`` for other actions)."""


class Payload(msgspec.Struct):
    """An entry's payload: encoded with sorted fields, it is what is hashed."""

    tx: str
    at: dt.datetime
    actor: str | None
    table: str
    key: Any
    action: Action
    old: Mapping[str, Any]
    new: Mapping[str, Any]
    where: dict[str, Any] | str | None = None
    update_fields: tuple[str, ...] | None = None


_payload_decoder = msgspec.json.Decoder(Payload)


class ChainHead(msgspec.Struct, frozen=True):
    """What :meth:`AuditTrail.verify` checked: the number of entries and the
    hash of the last one (keep it elsewhere to detect a cut-off tail later)."""

    entries: int
    hash: str


def canonical_key(key: Any) -> Any:
    """``key`` spelled one way for every spelling of the same value, so that
    every entry of a row names it alike: an aware datetime in UTC, a decimal
    without trailing zeros."""
    if isinstance(key, dt.datetime) and key.utcoffset() is not None:
        return key.astimezone(dt.UTC)
    if isinstance(key, decimal.Decimal):
        normalized = key.normalize()
        return normalized.copy_abs() if normalized.is_zero() else normalized  # -0 is 0
    return key


def key_text(key: Any) -> str | None:
    """How an entry's ``row_key`` column spells ``key``: its JSON text."""
    return None if key is None else ENCODER.encode(key).decode()


def chain_hash(previous: str, payload: str, secret: bytes | None) -> str:
    """An entry's hash: SHA-256 of the previous hash and its payload, or
    HMAC-SHA256 under ``secret``."""
    message = f"{previous}\n{payload}".encode()
    if secret is not None:
        return hmac.new(secret, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def decoded_payload(entry_id: int | None, payload: str) -> Payload:
    """The payload of entry ``entry_id``; :class:`~uow.errors.AuditChainError`
    when it is not one."""
    try:
        return _payload_decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise AuditChainError(entry_id, f"holds a payload that is not an audit record ({exc})") from None


def typed_values(table: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` of ``table``'s columns, each as its column's type where it fits."""
    return {c: typed_value(table, c, v) for c, v in values.items()}


def typed_value(table: TableInfo, column: str, value: Any) -> Any:
    """``value`` as its column's type, or as stored when it no longer fits
    (redacted, or written before the model changed)."""
    if value == REDACTED:
        return value
    try:
        return typed_column_value(table, column, value)
    except msgspec.ValidationError:
        return value


def record_of(entry_id: int, payload_text: str, tables: Mapping[str, TableInfo]) -> AuditRecord:
    """The record of entry ``entry_id``, its values typed by ``tables``
    (table name to what the session knows of it) where the table is known."""
    payload = decoded_payload(entry_id, payload_text)
    old, new, key = dict(payload.old), dict(payload.new), payload.key
    table = tables.get(payload.table)
    if table is not None:
        old, new = typed_values(table, old), typed_values(table, new)
        key = typed_value(table, table.key_column, key)
    return AuditRecord(
        id=entry_id,
        tx=payload.tx,
        at=payload.at,
        actor=payload.actor,
        table=payload.table,
        key=key,
        action=payload.action,
        old=old,
        new=new,
        where=payload.where,
        update_fields=payload.update_fields,
    )
