"""The store-wide writer lock.

One transaction at a time may write to a store, as in SQLite's WAL mode;
readers never wait. The lock hands ownership to waiters in arrival order and
creates its events only while someone waits, so a named store can be used
from asyncio and from trio in the same process (one event loop at a time).
"""

from __future__ import annotations

import math
from collections import deque

import anyio
import anyio.lowlevel

from uow.errors import OperationalError


class WriterLock:
    """A fair, owner-aware lock whose :meth:`acquire` gives up after a timeout."""

    __slots__ = ("_owner", "_waiters", "label")

    def __init__(self, label: str):
        self.label = label
        self._owner: object | None = None
        self._waiters: deque[tuple[object, anyio.Event]] = deque()

    @property
    def owner(self) -> object | None:
        """Who holds the lock, or ``None``."""
        return self._owner

    async def acquire(self, owner: object, wait_for: float | None) -> None:
        """Take the lock for ``owner`` (a no-op when it already holds it).

        Raises :class:`uow.errors.OperationalError` when ``wait_for`` seconds
        pass first (``None``: wait as long as it takes).
        """
        await anyio.lowlevel.checkpoint()
        if self._owner is owner:
            return
        if self._owner is None and not self._waiters:
            self._owner = owner
            return
        entry = (owner, anyio.Event())
        self._waiters.append(entry)
        try:
            with anyio.fail_after(math.inf if wait_for is None else wait_for):
                await entry[1].wait()
        except TimeoutError as exc:
            if self._owner is owner:
                return  # handed over just as the time ran out: keep it
            self._waiters.remove(entry)
            raise OperationalError(
                f"{self.label} is locked: another transaction held the write lock for longer than "
                f"lock_timeout ({wait_for} s)"
            ) from exc
        except BaseException:
            if self._owner is owner:
                self.release(owner)
            else:
                self._waiters.remove(entry)
            raise

    def release(self, owner: object) -> None:
        """Give the lock up, handing it to the longest waiter (no-op if ``owner`` does not hold it)."""
        if self._owner is not owner:
            return
        if self._waiters:
            self._owner, event = self._waiters.popleft()
            event.set()
        else:
            self._owner = None


__all__ = ["WriterLock"]
