"""Helpers of the receiver and client tests: a receiving worker (region ``eu-west-1``) on
real backends that also has replica URLs (so it has an outbox, which must stay empty),
sync tokens and bodies as the sending region (``us-east-1``) makes them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.http.appkeys import CONFIG_KEY, KV_KEY
from zephyr_edge.replication import protocol, receiver, synctoken
from zephyr_edge.replication.outbox import Outbox
from zephyr_edge.domain.stamps import Stamp
from zephyr_edge.http.ingest.upload import UPLOAD_TYPES_KEY

from tests.upload_support import APP, SECRET, Backend, Worker, load_config

#: The receiving region (the worker under test) and the sending one.
RECEIVER = "eu-west-1"
SOURCE = "us-east-1"
#: The receiver's own replication target (never contacted: only its outbox is looked at).
RECEIVER_TARGET = "http://127.0.0.1:9/us-east"
#: Keys the receiving worker's own sender writes while it runs.
SENDER_KEYS = (":outbox:lease:", ":outbox:status:")


def sync_app(backend: Backend, replica: str | None = RECEIVER, **extra: str) -> Any:
    """A worker app that receives sync requests (``replica`` None: replication disabled)."""
    env = dict(extra)
    if replica:
        env.setdefault("ZE_WORKER_REPLICA_NAME", replica)
        env.setdefault("ZE_WORKER_REPLICAS_URLS", RECEIVER_TARGET)
    app = make_app(load_config(backend, **env))
    if protocol.SYNC_FILE not in app[UPLOAD_TYPES_KEY]:
        receiver.setup(app)
    return app


def sync_token(subject: str, source: str = SOURCE, secret: str = SECRET, **kw: Any) -> str:
    return synctoken.mint(secret, source, subject, **kw)


def headers(token: str | None, source: str | None = SOURCE, **extra: str) -> dict[str, str]:
    out = dict(extra)
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    if source is not None:
        out[protocol.SOURCE_HEADER] = source
    return out


def apply_body(snapshot: Mapping[str, Any], hosts: Mapping[str, str]) -> bytes:
    return json.dumps({"snapshot": snapshot, "hosts": dict(hosts)}).encode()


def stamp(ms: int, replica: str = SOURCE) -> str:
    return str(Stamp(ms, replica))


class SyncWorker(Worker):
    """A receiving worker: the sync calls another region makes, and its outbox."""

    async def sync_file(
        self, data: bytes, filename: str, *, asset: str | None = None, token: str | None = "valid",
        source: str | None = SOURCE, app: str = APP, extra_headers: Mapping[str, str] | None = None,
    ) -> Any:
        asset = asset_hash(data, filename) if asset is None else asset
        if token == "valid":
            token = sync_token(protocol.file_subject(app, asset))
        params = {"type": protocol.SYNC_FILE, "application_uid": app, "hash": asset, "filename": filename}
        sent = headers(token, source, **{"Content-Type": "application/octet-stream", **(extra_headers or {})})
        return await self.client.post("/upload", params=params, data=data, headers=sent)

    async def sync_json(
        self, kind: str, body: bytes | Mapping[str, Any], *, token: str | None = "valid", source: str | None = SOURCE,
    ) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if token == "valid":
            token = sync_token(protocol.body_subject(raw))
        sent = headers(token, source, **{"Content-Type": "application/json"})
        return await self.client.post("/upload", params={"type": kind}, data=raw, headers=sent)

    async def fingerprint(self) -> dict[str, Any]:
        """As :meth:`Worker.fingerprint`, without the bookkeeping of this worker's own sender
        (its lease and delivery status, written in the background)."""
        found = await super().fingerprint()
        found["kv"] = [r for r in found["kv"] if not any(m in str(r[:2]) for m in SENDER_KEYS)]
        return found

    async def outbox_depth(self) -> int:
        app = self.client.server.app
        box = Outbox(app[KV_KEY], app[CONFIG_KEY].worker, [RECEIVER_TARGET])
        return await box.depth(RECEIVER_TARGET)


async def start_sync_worker(aiohttp_client: Any, backend: Backend, replica: str | None = RECEIVER, **extra: str) -> SyncWorker:
    client = await aiohttp_client(sync_app(backend, replica, **extra))
    return SyncWorker(client, backend)
