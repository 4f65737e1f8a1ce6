"""Delivering the outbox to one target region: :class:`TargetSender`.

Every worker runs one sender per target URL; only the holder of the target's lease
(:class:`~.outbox.Leases`) delivers. The others try to take it every ``lease_ms / 3``; the
holder renews it at that pace (a long batch included) and stops delivering when it loses
it or cannot renew it before it expires (a KV outage). A crashed holder's lease expires
and another worker takes the target over, with every entry still pending. The holder
logs the target's state every :data:`~.status.STATE_LOG_EVERY_S` and when
``last_error`` changes.

The holder, with its own :class:`~.client.ReplicaClient` (the pieces of a batch are in
:mod:`.batch`):

1. polls the target's queue depth every ``replication_poll_ms``;
2. takes up to :data:`BATCH_SIZE` pending entries, oldest first; asks the target which of
   the batch's files it already holds (``sync-check``) and acknowledges those without
   sending them;
3. delivers the rest in seq order with at most ``replication_concurrency`` requests in
   flight: files (streamed from local storage) and snapshots concurrently, but an
   ``envs`` entry (a publish) only once every earlier entry of the batch was delivered;
4. acknowledges delivered entries (:meth:`~.outbox.Outbox.done`) and saves the target's
   :class:`~.outbox.TargetStatus`.

An entry the target refuses for good (:data:`~.protocol.PERMANENT_STATUSES`), or whose
snapshot or asset bytes are no longer stored here, is set aside with the reason (logged at
error). Any other failure stops the batch once the requests in flight have finished,
records ``last_error`` and retries after an exponential backoff with full jitter
(:data:`BACKOFF_BASE_S` doubling up to ``replication_retry_max_ms``, reset by a success):
entries stay pending, nothing is lost.

Anti-entropy (:mod:`.antientropy`) runs beside the delivery loop while the lease is held:
the first pass ``min(replication_anti_entropy_ms, ANTI_ENTROPY_FIRST_DELAY_S)`` after the
lease was taken (so a region that was down, or a new holder, catches up soon), then every
``replication_anti_entropy_ms`` (0: never), with its own ``replication_concurrency``
requests; each pass logs one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.replication import antientropy, batch, status
from zephyr_edge.replication.batch import Gone, Retry, is_permanent
from zephyr_edge.replication.client import DeliveryError
from zephyr_edge.replication.outbox import Entry, Leases, Outbox, TargetStatus, now_ms, target_name
from zephyr_edge.replication.protocol import SELF_SYNC_CODE
from zephyr_edge.storage.base import Storage

log = logging.getLogger(__name__)

#: Entries taken per batch.
BATCH_SIZE = 64
#: First backoff step after a failed batch (it doubles up to replication_retry_max_ms).
BACKOFF_BASE_S = 0.1
#: Bound of one lease call and of the release at shutdown.
LEASE_CALL_TIMEOUT_S = 5.0
#: Longest wait before the first anti-entropy pass after taking a lease.
ANTI_ENTROPY_FIRST_DELAY_S = 30.0

ClientFactory = Callable[[str], Any]


class Backoff:
    """Exponential backoff with full jitter: a random pause in ``[0, min(cap, base * 2^n)]``."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s, self.cap_s = base_s, cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def sent_to_self(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is the target saying it is this very region."""
    while exc is not None:
        if isinstance(exc, DeliveryError) and exc.code == SELF_SYNC_CODE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class TargetSender:
    """Delivers the outbox of one target while this worker holds its lease (see the
    module docstring). :meth:`run` until cancelled; it releases the lease on the way out."""

    def __init__(self, url: str, *, outbox: Outbox, leases: Leases, catalog: Catalog, storage: Storage,
                 worker: WorkerConfig, make_client: ClientFactory):
        self.url = url
        self.target = target_name(url)
        if self.target not in outbox.targets:
            raise ValueError(f"{self.target!r} is not a target of the outbox")
        self.display = self.target  # a target name carries no userinfo
        self.outbox, self.leases, self.catalog, self.storage, self.worker = outbox, leases, catalog, storage, worker
        self.make_client = make_client
        self.status = TargetStatus()
        self.holding = False
        self._lease_s = worker.replication_lease_ms / 1000
        self._renew_s = self._lease_s / 3
        self._backoff = Backoff(BACKOFF_BASE_S, worker.replication_retry_max_ms / 1000)
        self._state_log = status.StateLog(outbox, self.target)
        self._lease_error: str | None = None
        #: the target turned out to be this region itself (see :meth:`_drop_self`)
        self.is_self = False

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"extra": {"fields": {"zephyr.replica.target": self.display, **more}}}

    # --- the lease -----------------------------------------------------------------------

    async def run(self) -> None:
        """Take the lease whenever it is free, deliver while holding it; forever."""
        try:
            while True:
                if await self._acquire():
                    await self._hold()
                await asyncio.sleep(self._renew_s)
        finally:
            await self._release()

    async def _acquire(self) -> bool:
        try:
            async with asyncio.timeout(LEASE_CALL_TIMEOUT_S):
                return await self.leases.acquire(self.target)
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            level = logging.WARNING if message != self._lease_error else logging.DEBUG
            self._lease_error = message
            log.log(level, "Replication lease check failed: %s", message, **self._fields(error=message))
            return False

    async def _release(self) -> None:
        self.holding = False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEASE_CALL_TIMEOUT_S):
                await self.leases.release(self.target)

    async def _hold(self) -> None:
        """Deliver while the lease is renewed; return when it is lost (work stopped)."""
        expires = time.monotonic() + self._lease_s
        with contextlib.suppress(Exception):
            self.status = await self.outbox.status(self.target)
        self.holding = True
        log.info("Replication target taken over", **self._fields(**{"zephyr.replica.holder": self.leases.owner}))
        work = asyncio.create_task(self._work(), name=f"replicate-{self.display}")
        try:
            while True:
                await asyncio.wait([work], timeout=self._renew_s)
                if work.done():
                    log.error("Replication delivery stopped unexpectedly", exc_info=work.exception(), **self._fields())
                    return
                if await self._acquire():
                    expires = time.monotonic() + self._lease_s
                elif time.monotonic() >= expires - self._renew_s or await self._lost():
                    log.warning("Replication lease lost; delivery stopped", **self._fields())
                    return
        finally:
            self.holding = False
            work.cancel()
            await asyncio.wait([work])

    async def _lost(self) -> bool:
        """Whether another worker holds the lease now (False when the KV cannot tell)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEASE_CALL_TIMEOUT_S):
                held = await self.leases.holder(self.target)
                return held is not None and held[0] != self.leases.owner and held[1] > now_ms()
        return False

    # --- delivery ------------------------------------------------------------------------

    async def _work(self) -> None:
        async with self.make_client(self.url) as client:
            passes = None
            if self.worker.replication_anti_entropy_ms > 0:
                interval_s = self.worker.replication_anti_entropy_ms / 1000
                passes = asyncio.create_task(antientropy.periodic(
                    self.catalog, self.storage, client, interval_s=interval_s,
                    first_delay_s=min(interval_s, ANTI_ENTROPY_FIRST_DELAY_S),
                    concurrency=self.worker.replication_concurrency,
                    fields={"zephyr.replica.target": self.display}), name=f"anti-entropy-{self.display}")
            try:
                await self._deliver_loop(client)
            finally:
                if passes is not None:
                    passes.cancel()
                    await asyncio.wait([passes])

    async def _deliver_loop(self, client: Any) -> None:
        poll_s = self.worker.replication_poll_ms / 1000
        while True:
            try:
                await self._state_log.maybe(self.status.last_error)
                if await self.outbox.depth(self.target) == 0:
                    await asyncio.sleep(poll_s)
                    continue
                if self.is_self:
                    await self._drop_self()
                    continue
                await self.deliver_batch(client)
                self._backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if sent_to_self(exc):
                    self.is_self = True
                    continue
                await self._failed(exc)
                await asyncio.sleep(self._backoff.next())

    async def _drop_self(self) -> None:
        """The target is this region (``ZE_WORKER_REPLICAS_URLS`` lists its own URL): what
        its entries carry is already here, so they are acknowledged without sending,
        instead of piling up behind a refusal retried forever."""
        seqs = await self.outbox.pending(self.target)
        message = "this target is this region itself (ZE_WORKER_REPLICAS_URLS lists its own URL): nothing is sent to it"
        if self.status.last_error != message:
            log.error("Replication target is this region itself; its entries are dropped", **self._fields())
            self.status.last_error, self.status.last_error_ms = message, now_ms()
        await self.outbox.done(self.target, seqs)
        await self.outbox.save_status(self.target, self.status)

    async def _failed(self, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        first = self._backoff.attempt == 0 or message != self.status.last_error
        self.status.last_error, self.status.last_error_ms = message, now_ms()
        log.log(logging.WARNING if first else logging.DEBUG, "Replication delivery failed; will retry: %s", message,
                **self._fields(error=message, **{"zephyr.replica.retry": self._backoff.attempt}))
        with contextlib.suppress(Exception):
            await self.outbox.save_status(self.target, self.status)

    async def deliver_batch(self, client: Any) -> int:
        """Deliver one batch (see the module docstring); the number of entries that left
        the queue. Raises :class:`Retry` (or a KV error) when the rest must wait."""
        seqs = await self.outbox.pending(self.target, BATCH_SIZE)
        if not seqs:
            return 0
        entries = await self.outbox.entries(seqs)
        acked = [s for s, e in zip(seqs, entries) if e is None]
        if acked:
            log.error("Unreadable outbox entries dropped: %s", acked, **self._fields())
        todo = [e for e in entries if e is not None]
        failure, rejected = None, 0
        try:
            held = await batch.held_files(client, todo)
            acked += held
            skip = set(held)
            todo = [e for e in todo if e.seq not in skip]
            failure, rejected = await batch.deliver_in_order(
                todo, lambda entry: self._deliver(client, entry), self.worker.replication_concurrency, acked
            )
        finally:
            await self.outbox.done(self.target, acked)
            if acked:
                self.status.delivered += len(acked)
                self.status.last_delivered_ms = now_ms()
            self.status.rejected += rejected
            await self.outbox.save_status(self.target, self.status)
        if failure is not None:
            raise Retry(str(failure) or type(failure).__name__) from failure
        return len(acked) + rejected

    async def _deliver(self, client: Any, entry: Entry) -> bool:
        """Send one entry: True when delivered, False when set aside."""
        try:
            await batch.send_entry(
                client, entry, catalog=self.catalog, storage=self.storage, replica=self.worker.replica_name
            )
            return True
        except Gone as exc:
            reason = str(exc)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            reason = f"refused by the target: {exc}"
        log.error("Replication entry set aside: %s", reason,
                  **self._fields(**{"zephyr.replica.seq": entry.seq, "zephyr.replica.kind": entry.kind}))
        await self.outbox.set_aside(self.target, entry, reason)
        return False
