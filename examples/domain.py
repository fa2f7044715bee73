"""A small bank in the style of *Architecture Patterns with Python* (cosmicpython).

- the domain model (``Account``, ``Transfer``, ``transfer``) holds the business
  rules and knows nothing about storage;
- repositories give the service layer accounts and transfers, over a session;
- a unit of work wraps one session: commit makes everything durable at once,
  leaving the block without commit throws everything away;
- optimistic locking (``Versioned``) turns a lost update between two concurrent
  units of work into ``ConcurrencyError``; the service runs the work again;
- an audit trail (``uow.audit``) writes who changed which account, from what
  to what, in the transaction that commits the change.

Runs on a SQLite file in a temporary directory by default, or on any URL::

    python examples/domain.py
    python examples/domain.py memory://
    python examples/domain.py postgresql://localhost/scratch

(Not ``sqlite://:memory:``: an in-memory SQLite database is one connection,
so the two concurrent units of work at the end would wait for each other.)
"""

from __future__ import annotations

import contextvars
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Annotated

import anyio

import uow
from uow import ForeignKey, Model, PrimaryKey, Unique, Versioned
from uow.audit import AuditEntry, AuditTrail
from uow.errors import ConcurrencyError

clerk: contextvars.ContextVar[str | None] = contextvars.ContextVar("clerk", default=None)
"""Who is at the counter: what a web app would set per request."""

# --- domain model: rules only, no storage calls ------------------------------------


class InsufficientFunds(Exception):
    pass


class Account(Model, Versioned, table="accounts"):
    """A bank account; amounts are in cents. ``version`` comes from ``Versioned``."""

    id: Annotated[int | None, PrimaryKey()] = None
    number: Annotated[str, Unique()]
    owner: str
    balance: int = 0

    def deposit(self, amount: int) -> None:
        self.balance += amount

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(f"account {self.number} holds {self.balance}, cannot withdraw {amount}")
        self.balance -= amount


class Transfer(Model, table="transfers"):
    """A record of money moved from one account to another."""

    id: Annotated[int | None, PrimaryKey()] = None
    source_id: Annotated[int, ForeignKey(Account)]
    target_id: Annotated[int, ForeignKey(Account)]
    amount: int


def transfer(source: Account, target: Account, amount: int) -> Transfer:
    """Domain service: move ``amount`` between two accounts."""
    assert source.id is not None and target.id is not None
    source.withdraw(amount)
    target.deposit(amount)
    return Transfer(source_id=source.id, target_id=target.id, amount=amount)


# --- adapters: repositories and the unit of work ----------------------------------


class AccountRepository:
    def __init__(self, session: uow.AsyncSession):
        self.session = session

    def add(self, account: Account) -> None:
        self.session.add(account)

    async def get(self, account_id: int) -> Account:
        return await self.session.get_one(Account, account_id)


class TransferRepository:
    def __init__(self, session: uow.AsyncSession):
        self.session = session

    def add(self, record: Transfer) -> None:
        self.session.add(record)


class UnitOfWork:
    """One business transaction: ``async with UnitOfWork(engine) as work: ...``.

    Nothing is written unless ``commit()`` is called; on leaving the block the
    rest is rolled back and the objects get their committed values back.
    """

    def __init__(self, engine: uow.Engine):
        self.engine = engine

    async def __aenter__(self) -> UnitOfWork:
        self.session = uow.AsyncSession(self.engine)
        await self.session.__aenter__()
        self.accounts = AccountRepository(self.session)
        self.transfers = TransferRepository(self.session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.session.__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()


# --- service layer -------------------------------------------------------------------


async def open_account(engine: uow.Engine, number: str, owner: str, deposit: int) -> int:
    async with UnitOfWork(engine) as work:
        account = Account(number=number, owner=owner, balance=deposit)
        work.accounts.add(account)
        await work.commit()
        assert account.id is not None
        return account.id


async def transfer_money(engine: uow.Engine, source_id: int, target_id: int, amount: int, attempts: int = 3) -> int:
    """Move money; a conflicting concurrent change makes the whole unit of work run again."""
    for attempt in range(1, attempts + 1):
        async with UnitOfWork(engine) as work:
            source = await work.accounts.get(source_id)
            target = await work.accounts.get(target_id)
            record = transfer(source, target, amount)
            work.transfers.add(record)
            try:
                await work.commit()
            except ConcurrencyError:
                if attempt == attempts:
                    raise
                continue
            assert record.id is not None
            return record.id
    raise AssertionError("unreachable")


async def balances(engine: uow.Engine, *account_ids: int) -> str:
    async with UnitOfWork(engine) as work:
        accounts = [await work.accounts.get(account_id) for account_id in account_ids]
        return ", ".join(f"{a.owner} {a.balance / 100:.2f} (version {a.version})" for a in accounts)


# --- the story --------------------------------------------------------------------------


async def main(url: str) -> None:
    async with uow.create_engine(url) as engine:
        trail = AuditTrail(actor=clerk.get).install(engine)
        await engine.drop_all(Transfer, Account, AuditEntry)
        await engine.create_all(Account, Transfer, AuditEntry)
        clerk.set("Carol")

        alice = await open_account(engine, "A-1", "Alice", 100_00)
        bob = await open_account(engine, "B-1", "Bob", 20_00)
        print("opened:", await balances(engine, alice, bob))

        transfer_id = await transfer_money(engine, alice, bob, 30_00)
        print(f"transfer #{transfer_id}:", await balances(engine, alice, bob))

        try:
            await transfer_money(engine, bob, alice, 1_000_00)
        except InsufficientFunds as error:
            print("refused:", error)
        print("unchanged:", await balances(engine, alice, bob))

        # Two clerks load Alice's account at version 2; the first one commits.
        clerk.set("Dave")
        async with UnitOfWork(engine) as first, UnitOfWork(engine) as second:
            mine = await first.accounts.get(alice)
            theirs = await second.accounts.get(alice)
            mine.deposit(5_00)
            await first.commit()
            theirs.withdraw(50_00)
            try:
                await second.commit()  # its update checks version 2, which is gone
            except ConcurrencyError:  # SerializationFailure, its subclass, on SQLite
                print("lost update prevented: the second clerk must start again")
                await second.rollback()
        print("after the race:", await balances(engine, alice, bob))

        # The trail holds every committed change to Alice's account, and nothing else.
        async with UnitOfWork(engine) as work:
            for record in await trail.records(work.session, table=Account, key=alice):
                shown = {c: v for c, v in record.new.items() if c not in ("id", "version")}
                if record.action == "insert":
                    changes = ", ".join(f"{c}={v}" for c, v in shown.items())
                else:
                    changes = ", ".join(f"{c} {record.old[c]} -> {v}" for c, v in shown.items())
                print(f"audit: {record.actor} {record.action} account {record.key}: {changes}")
            head = await trail.verify(work.session)
            print(f"audit chain verified: {head.entries} entries")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            anyio.run(main, f"sqlite:///{Path(directory) / 'bank.db'}")
