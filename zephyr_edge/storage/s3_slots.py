"""Bounded access to the S3 connection pool, with the socket-acquisition warning.

Zephyr's worker warns when a request queued longer than
``ZE_WORKER_S3_SOCKET_ACQUISITION_WARNING_TIMEOUT_MS`` for a pooled connection. aiohttp's
connector queues silently, so the S3 backend gates every request with
:class:`ConnectionSlots`, a semaphore of ``ZE_WORKER_S3_MAX_SOCKETS`` slots shared by its
clients: a request holds one slot while it uses a connection (a streaming read holds it
until its body is exhausted or closed). A waiter still queued after the warning threshold
logs one WARNING; one still queued after the threshold plus the request timeout gives up
with :class:`~zephyr_edge.errors.BackendUnavailable`, so no wait is unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import time

from zephyr_edge.errors import BackendUnavailable

log = logging.getLogger(__name__)


class Slot:
    """One taken connection slot; :meth:`release` is idempotent."""

    __slots__ = ("_sem", "_released")

    def __init__(self, sem: asyncio.Semaphore):
        self._sem = sem
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._sem.release()


class ConnectionSlots:
    """``size`` slots; :meth:`take` waits (bounded) for one and warns when it waits long."""

    def __init__(self, backend: str, size: int, warn_after_s: float, give_up_after_s: float, size_key: str = ""):
        if size < 1:
            raise ValueError(f"a connection pool needs at least one slot, got {size}")
        self.backend = backend
        #: the configuration key of ``size``, named in messages
        self.size_key = size_key or "the pool size"
        self.size = size
        self.warn_after_s = warn_after_s
        self.give_up_after_s = max(give_up_after_s, warn_after_s)
        self._sem = asyncio.Semaphore(size)

    async def take(self, action: str) -> Slot:
        """Wait for a free slot for ``action``; the caller must release it."""
        if not self._sem.locked():
            await self._sem.acquire()  # free slot: returns without yielding to the loop
            return Slot(self._sem)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        warning = loop.call_later(self.warn_after_s, self._warn, action, started)
        try:
            async with asyncio.timeout(self.give_up_after_s):
                await self._sem.acquire()
        except TimeoutError as exc:
            raise BackendUnavailable(
                self.backend,
                f"{action}: no free connection in the pool of {self.size} after "
                f"{time.monotonic() - started:.1f} s (raise {self.size_key} "
                f"or look for slow readers)",
            ) from exc
        finally:
            warning.cancel()
        return Slot(self._sem)

    def _warn(self, action: str, started: float) -> None:
        log.warning(
            "%s %s has waited %.1f s for a free pooled connection (pool of %d, all busy); "
            "requests are queueing: raise %s or look for slow readers",
            self.backend, action, time.monotonic() - started, self.size, self.size_key,
        )
