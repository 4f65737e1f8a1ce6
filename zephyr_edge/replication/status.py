"""``GET /replicationz``: the replication state of this region, read from the KV.

Every worker of a region answers the same (the state lives in the shared KV: the outbox's
pending sets, the delivering worker's counters and the leases)::

    {"replica": "eu-west-1" | null,
     "mode": "disabled" | "receive-only" | "fan-out",
     "targets": [{"url": "https://us.example.com" (no userinfo),
                  "queue_depth": 3, "oldest_undelivered_age_s": 1.52 | null,
                  "delivered": 120, "rejected": 0,
                  "last_error": "..." | null, "last_error_at": "<ISO 8601>" | null,
                  "last_delivered_at": "<ISO 8601>" | null,
                  "holder": "<host>:<pid>:<hex>" | null, "lease_expires_in_s": 9.8 | null,
                  "configured": true}]}

A target taken out of ``ZE_WORKER_REPLICAS_URLS`` is still listed, with ``"configured":
false`` and what it never received, until ``zephyr-edge replicate --forget URL``.
``last_error`` is the last delivery failure, kept after later successes: compare
``last_error_at`` with ``last_delivered_at``. ``holder`` is null when no worker holds a live
lease on the target. Answers 200 whenever the KV answers (a lagging or unreachable region
is a state to report, not a failure: replication never fails ``/readyz``), 503 when it does
not answer within :data:`STATUS_TIMEOUT_S`; always ``Cache-Control: no-store``.

:func:`log_fields` gives the same fields under ``zephyr.replica.*`` names for the periodic
log line of the delivering worker (:mod:`.sender`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

from aiohttp import web

from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.errors import BackendError
from zephyr_edge.http import answers
from zephyr_edge.http.appkeys import CONFIG_KEY, KV_KEY
from zephyr_edge.kv.base import KV
from zephyr_edge.replication.outbox import Leases, Outbox, now_ms
from zephyr_edge.settings.redaction import without_userinfo
from zephyr_edge.replication.protocol import STATUS_PATH

log = logging.getLogger(__name__)

#: Bound of the KV reads of one ``/replicationz`` answer (and of one state log line).
STATUS_TIMEOUT_S = 5.0
#: The delivering worker logs its target's state this often (and whenever last_error changes).
STATE_LOG_EVERY_S = 60.0


def mode(worker: WorkerConfig) -> str:
    """``disabled`` (no replica name), ``receive-only`` (no target URL) or ``fan-out``."""
    if not worker.replica_name:
        return "disabled"
    return "fan-out" if worker.replicas_urls else "receive-only"


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def target_state(outbox: Outbox, target: str) -> dict[str, Any]:
    """The status fields of one target (``target`` as named by the outbox)."""
    now = now_ms()
    depth = await outbox.depth(target)
    oldest_age = None
    if depth:
        first = await outbox.pending(target, limit=1)
        entry = (await outbox.entries(first))[0] if first else None
        if entry is not None:
            oldest_age = round(max(0, now - entry.at_ms) / 1000, 3)
    status = await outbox.status(target)
    lease = await Leases(outbox, "", 0).holder(target)
    live = lease is not None and lease[1] > now
    return {
        "url": without_userinfo(target),
        "queue_depth": depth,
        "oldest_undelivered_age_s": oldest_age,
        "delivered": status.delivered,
        "rejected": await outbox.rejected(target),
        "last_error": status.last_error,
        "last_error_at": _iso(status.last_error_ms),
        "last_delivered_at": _iso(status.last_delivered_ms),
        "holder": lease[0] if live else None,
        "lease_expires_in_s": round((lease[1] - now) / 1000, 3) if live else None,
    }


async def read_status(kv: KV, worker: WorkerConfig) -> dict[str, Any]:
    """The ``/replicationz`` document of the region ``kv`` and ``worker`` describe."""
    targets: list[dict[str, Any]] = []
    if worker.replica_name:
        outbox = Outbox(kv, worker, [str(u) for u in worker.replicas_urls])
        targets = [{**await target_state(outbox, t), "configured": True} for t in outbox.targets]
        for t in await outbox.known_targets():
            if t not in outbox.targets:  # dropped from the configuration, not forgotten yet
                targets.append({**await target_state(outbox, t), "configured": False})
    return {"replica": worker.replica_name or None, "mode": mode(worker), "targets": targets}


def log_fields(state: dict[str, Any]) -> dict[str, Any]:
    """A :func:`target_state` as structured log fields (``zephyr.replica.<name>``)."""
    fields = {f"zephyr.replica.{k}": v for k, v in state.items() if k != "url"}
    fields["zephyr.replica.target"] = state["url"]
    return fields


class StateLog:
    """The delivering worker's ``Replication target state`` lines for one target."""

    def __init__(self, outbox: Outbox, target: str):
        self.outbox, self.target = outbox, target
        self._at = 0.0
        self._error: str | None = None

    async def maybe(self, last_error: str | None) -> None:
        """Log the state if :data:`STATE_LOG_EVERY_S` passed or ``last_error`` changed."""
        if time.monotonic() - self._at < STATE_LOG_EVERY_S and last_error == self._error:
            return
        self._at, self._error = time.monotonic(), last_error
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                state = await target_state(self.outbox, self.target)
            log.info("Replication target state", extra={"fields": log_fields(state)})


async def replicationz(request: web.Request) -> web.Response:
    """``GET /replicationz`` (see the module docstring)."""
    app = request.app
    kv, worker = app[KV_KEY], app[CONFIG_KEY].worker
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            body = await read_status(kv, worker)
    except (BackendError, TimeoutError) as exc:
        log.warning("Replication status unavailable: %s", type(exc).__name__, extra={"fields": {"kv.backend": kv.name}})
        message = f"{kv.name} backend did not answer; replication status unknown"
        return answers.error_answer(503, "kv_unavailable", message)
    return answers.ok(body)


def setup(app: web.Application) -> None:
    """Add ``GET /replicationz`` to ``app``."""
    app.router.add_get(STATUS_PATH, replicationz)
