"""An audit trail written with the data it describes.

An :class:`AuditTrail` is a before-commit hook: inside every transaction about
to commit, it turns the transaction's events into entries of its own table
(who changed which row, when, from what to what) and writes them in that same
transaction, so a transaction's entries exist exactly when it is committed.
After the commit it can hand the committed entries, as :class:`AuditRecord`\\ s,
to sinks: a JSON-lines file, a logger, or any callable.

Entries are chained: each stores the SHA-256 (or HMAC-SHA256 under a secret)
of the previous entry's hash and its own canonical JSON payload, and the
previous hash is unique in the table. :meth:`AuditTrail.verify` walks the
chain and names the first entry that does not hold; what that proves depends
on a kept head or a secret (see ``docs/audit.md``). Two transactions cannot
both extend the chain from the same entry: the second fails with
:class:`~uow.errors.SerializationFailure`, which
:meth:`Engine.run_in_transaction <uow.engine.Engine.run_in_transaction>` retries.
"""

from uow.audit.entries import GENESIS, REDACTED, Action, AuditEntry, AuditRecord, ChainHead
from uow.audit.sinks import AuditSink, JsonLinesSink, LoggingSink
from uow.audit.trail import AuditTrail

__all__ = [
    "GENESIS",
    "REDACTED",
    "Action",
    "AuditEntry",
    "AuditRecord",
    "AuditSink",
    "AuditTrail",
    "ChainHead",
    "JsonLinesSink",
    "LoggingSink",
]
