"""Cache building blocks of the serve path: single-flight loads and a byte-bounded LRU.

No I/O and no module-level state: the serve path creates one instance of each per
application (see :mod:`zephyr_edge.http.serving.hostcache` and :mod:`zephyr_edge.http.serving.assetcache`).

- :class:`SingleFlight` collapses concurrent loads of one key into one: the first caller
  starts the load as a task of its own, later callers wait for that task. A failure
  reaches every waiter and is not remembered; a caller that goes away (cancelled) does not
  cancel the load for the others.
- :class:`ByteLRU` keeps values while their total size stays within a byte budget,
  evicting the least recently used first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Bookkeeping bytes counted per LRU entry on top of its value (key, node, dict slot).
ENTRY_OVERHEAD_BYTES = 256
#: Longest wait for abandoned loads when a :class:`SingleFlight` is closed.
CLOSE_TIMEOUT_S = 5.0


def _consume(task: asyncio.Task) -> None:
    """Retrieve a finished task's outcome, so that a failure nobody awaited is not reported
    as "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[K, V]):
    """At most one running load per key; concurrent callers share its outcome."""

    __slots__ = ("_flights", "_all")

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}
        self._all: set[asyncio.Task[V]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The result of ``load()`` for ``key``, started now unless a load of ``key`` runs.

        ``load`` must bound its own duration. Its exception is raised in every waiter.
        """
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._flights[key] = task
            self._all.add(task)
            task.add_done_callback(lambda t, key=key: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        self._all.discard(task)
        if self._flights.get(key) is task:
            del self._flights[key]
        _consume(task)

    def forget(self) -> None:
        """Let the next caller of every key start a new load (running loads finish for the
        callers already waiting; used when what they load may be stale)."""
        self._flights.clear()

    async def close(self) -> None:
        """Cancel every running load and wait for them (bounded)."""
        tasks = list(self._all)
        self._flights.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.gather(*tasks, return_exceptions=True)


class ByteLRU(Generic[K]):
    """``key -> bytes`` holding at most ``budget`` bytes (values plus a fixed overhead per
    entry), least recently used evicted first. A value larger than the budget is not kept;
    a budget of 0 keeps nothing."""

    __slots__ = ("budget", "_items", "_used")

    def __init__(self, budget: int):
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = budget
        self._items: OrderedDict[K, bytes] = OrderedDict()
        self._used = 0

    @staticmethod
    def cost(value: bytes) -> int:
        """Bytes an entry holding ``value`` counts against the budget."""
        return len(value) + ENTRY_OVERHEAD_BYTES

    @property
    def used(self) -> int:
        """Bytes counted against the budget now."""
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> bytes | None:
        """The value of ``key`` (marking it most recently used), or None."""
        value = self._items.get(key)
        if value is None:
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: bytes) -> bool:
        """Keep ``value`` under ``key``, evicting as needed; False when it cannot fit."""
        cost = self.cost(value)
        if cost > self.budget:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self._used -= self.cost(old)
        while self._used + cost > self.budget and self._items:
            _, evicted = self._items.popitem(last=False)
            self._used -= self.cost(evicted)
        self._items[key] = value
        self._used += cost
        return True

    def clear(self) -> None:
        self._items.clear()
        self._used = 0
