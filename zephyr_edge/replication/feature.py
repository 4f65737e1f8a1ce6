"""Replication as a feature of the app (listed in :data:`zephyr_edge.http.app.FEATURES`).

:func:`setup` adds the receiving side (``POST /upload?type=sync-*``, :mod:`.receiver`), the
status route (``GET /replicationz``, :mod:`.status`) and a cleanup context running one
:class:`~.sender.TargetSender` per configured target for the app's lifetime, when this
region sends (``ZE_WORKER_REPLICA_NAME`` and ``ZE_WORKER_REPLICAS_URLS`` both set). The
context is appended after the backends' one, so the senders start once the backends are
open and stop (releasing their leases) before the backends close. They deliver the outbox
the catalog records writes in (:attr:`~zephyr_edge.catalog.records.Catalog.journal`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY, STORAGE_KEY
from zephyr_edge.replication import receiver, status
from zephyr_edge.replication.client import ReplicaClient
from zephyr_edge.replication.outbox import Leases, Outbox
from zephyr_edge.replication.sender import ClientFactory, TargetSender

log = logging.getLogger(__name__)

#: Bound of the senders' shutdown (each releases its lease on the way out).
STOP_TIMEOUT_S = 10.0

#: The running senders (set by the cleanup context; empty when this region sends nothing).
SENDERS_KEY = web.AppKey("replication_senders", list)
#: Optional ``url -> client`` factory the senders use instead of the real client (tests).
CLIENT_FACTORY_KEY: web.AppKey[ClientFactory] = web.AppKey("replication_client_factory")


def worker_id() -> str:
    """A lease owner name unique to this process: ``<hostname>:<pid>:<random hex>``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def client_factory(worker: WorkerConfig, source: str | None = None) -> ClientFactory:
    """``url`` → a :class:`~.client.ReplicaClient` for it, configured from ``worker``."""

    def make(url: str) -> Any:
        return ReplicaClient(url, secret=worker.jwt_secret, source=source or worker.replica_name,
                             timeout_s=worker.replication_timeout_ms / 1000)

    return make


def setup(app: web.Application) -> None:
    """Add the sync upload types, ``GET /replicationz`` and the senders to ``app``."""
    receiver.setup(app)
    status.setup(app)
    app.cleanup_ctx.append(senders_ctx)


async def senders_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run a sender per target while the app runs (nothing when this region sends nothing)."""
    worker = app[CONFIG_KEY].worker
    journal = app[CATALOG_KEY].journal
    app[SENDERS_KEY] = []
    if not isinstance(journal, Outbox) or not worker.replica_name:
        yield
        return
    leases = Leases(journal, worker_id(), worker.replication_lease_ms)
    senders = [
        TargetSender(str(url), outbox=journal, leases=leases, catalog=app[CATALOG_KEY], storage=app[STORAGE_KEY],
                     worker=worker, make_client=app.get(CLIENT_FACTORY_KEY) or client_factory(worker))
        for url in journal.targets  # normalised and deduplicated: one sender per target
    ]
    app[SENDERS_KEY] = senders
    tasks = [asyncio.create_task(s.run(), name=f"sender-{s.display}") for s in senders]
    log.info("Replication senders started",
             extra={"fields": {"zephyr.replica.count": len(senders), "zephyr.replica.worker": leases.owner}})
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        if pending:
            log.warning("Replication senders did not stop in time", extra={"fields": {"stop.timeout_s": STOP_TIMEOUT_S}})
