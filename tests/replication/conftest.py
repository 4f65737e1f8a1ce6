"""Shared fixtures of the sender, anti-entropy, status and resync tests.

- ``backends(name, kv="local")``: one region's backends: its own local data dir, or (``kv="redis"``)
  the real Redis under its own ``{ze-test-<uuid>}`` hash tag (+ local storage); cleaned up
  after the test. Two workers of one region share one backend.
- ``start_worker(backend, replica=..., targets=[...])``: a worker of that region on a loopback
  port (fast replication settings: short lease, poll and backoff; anti-entropy off unless
  asked), as a :class:`RegionWorker`.
- :class:`FakeRegion`: a target region in memory with the client interface, recording every
  call (for failure injection and ordering checks); :func:`eventually` waits, bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import pytest
import pytest_asyncio

from tests.backends_support import delete_tagged_keys, local_env
from tests.upload_support import Backend, Worker, load_config
from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY, KV_KEY
from zephyr_edge.replication.client import CheckResult, DeliveryError
from zephyr_edge.replication.feature import CLIENT_FACTORY_KEY, SENDERS_KEY
from zephyr_edge.replication.outbox import Leases, Outbox
from zephyr_edge.domain.stamps import Stamp, newer

#: Replication settings that keep the tests fast.
FAST = {
    "ZE_WORKER_REPLICATION_LEASE_MS": "600",
    "ZE_WORKER_REPLICATION_POLL_MS": "20",
    "ZE_WORKER_REPLICATION_RETRY_MAX_MS": "100",
    "ZE_WORKER_REPLICATION_ANTI_ENTROPY_MS": "0",
    "ZE_WORKER_REPLICATION_TIMEOUT_MS": "10000",
}
WAIT_S = 15.0


async def eventually(check: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    """Await ``check()`` (sync or async) until it is truthy; its value. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class RegionWorker(Worker):
    """A worker of a region, served on loopback, with its replication state at hand."""

    @property
    def app(self) -> Any:
        return self.client.server.app

    @property
    def url(self) -> str:
        return str(self.client.server.make_url("")).rstrip("/")

    @property
    def outbox(self) -> Outbox:
        worker = self.app[CONFIG_KEY].worker
        return Outbox(self.app[KV_KEY], worker, [str(u) for u in worker.replicas_urls])

    @property
    def senders(self) -> list[Any]:
        return self.app[SENDERS_KEY]

    async def depth(self, target: str | None = None) -> int:
        box = self.outbox
        return await box.depth(target or box.targets[0])

    async def drained(self, target: str | None = None) -> bool:
        return await self.depth(target) == 0

    async def holder(self, target: str | None = None) -> str | None:
        box = self.outbox
        held = await Leases(box, "", 0).holder(target or box.targets[0])
        return None if held is None or held[1] < time.time() * 1000 else held[0]

    async def stop(self) -> None:
        await self.client.close()


@pytest_asyncio.fixture
async def backends(tmp_path, request) -> AsyncIterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str, kv: str = "local") -> Backend:
        data = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}"
        env = local_env(data)
        if kv == "redis":
            addr = request.getfixturevalue("redis_addr")
            tag = f"{{ze-test-{uuid.uuid4().hex[:12]}}}"
            env |= {
                "ZE_WORKER_KV_BACKEND": "redis", "ZE_WORKER_REDIS_HOST": addr[0], "ZE_WORKER_REDIS_PORT": str(addr[1]),
                "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:", "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
            }
            backend = Backend(name, env, data, redis=addr, tag=tag)
        else:
            backend = Backend(name, env, data)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        if backend.redis:
            await delete_tagged_keys(backend.redis, backend.tag)


def region_env(replica: str | None, targets: Iterable[str] = (), **extra: str) -> dict[str, str]:
    env = {**FAST, **extra}
    if replica:
        env["ZE_WORKER_REPLICA_NAME"] = replica
    urls = list(targets)
    if urls:
        env["ZE_WORKER_REPLICAS_URLS"] = json.dumps(urls)
    return env


@pytest.fixture
def start_worker(aiohttp_client, aiohttp_server):
    async def start(backend: Backend, replica: str | None = None, targets: Iterable[str] = (), *,
                    port: int | None = None, make_client: Callable[[str], Any] | None = None,
                    **extra: str) -> RegionWorker:
        app = make_app(load_config(backend, **region_env(replica, targets, **extra)))
        if make_client is not None:
            app[CLIENT_FACTORY_KEY] = make_client
        server = await aiohttp_server(app, port=port)
        return RegionWorker(await aiohttp_client(server), backend)

    return start


# --- a target region in memory ------------------------------------------------------------


class FakeRegion:
    """What a target region holds (hash lists, snapshots, hosts with stamps) and every call
    made to it. ``down``: every call fails (retryable); ``refuse``: hashes or snapshot ids
    answered 422 (permanent); ``delay``: seconds each send takes."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.snapshots: dict[str, bytes] = {}
        self.hosts: dict[str, tuple[Stamp, str]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.events: list[tuple[str, str, str, float]] = []
        self.down = False
        self.refuse: set[str] = set()
        self.delay = 0.0
        self.in_flight: dict[str, int] = {}
        self.overlaps = 0
        self.max_in_flight = 0

    def client(self, url: str, who: str = "sender") -> FakeClient:
        return FakeClient(self, who)

    def sent(self, kind: str) -> list[Any]:
        return [arg for k, arg in self.calls if k == kind]


class FakeClient:
    def __init__(self, region: FakeRegion, who: str):
        self.region, self.who = region, who

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def _enter(self, kind: str, key: str) -> None:
        r = self.region
        if r.down:
            raise DeliveryError(f"{kind}: connection refused")
        r.in_flight[self.who] = r.in_flight.get(self.who, 0) + 1
        if any(n for w, n in r.in_flight.items() if w != self.who):
            r.overlaps += 1
        r.max_in_flight = max(r.max_in_flight, sum(r.in_flight.values()))
        r.events.append(("start", kind, key, time.monotonic()))
        if r.delay:
            await asyncio.sleep(r.delay)

    def _leave(self, kind: str, key: str) -> None:
        self.region.in_flight[self.who] -= 1
        self.region.events.append(("end", kind, key, time.monotonic()))

    async def send_file(self, application_uid: str, asset_hash_: str, filename: str, size: int | None,
                        chunks: Callable[[], AsyncIterator[bytes]], *, jti: str | None = None) -> dict:
        await self._enter("file", asset_hash_)
        try:
            data = b"".join([c async for c in chunks()])
            self.region.calls.append(("file", (application_uid, asset_hash_, filename, jti)))
            if asset_hash_ in self.region.refuse or asset_hash(data, filename) != asset_hash_:
                raise DeliveryError("file: HTTP 422: refused", status=422, permanent=True)
            self.region.files[(application_uid, asset_hash_)] = data
            return {"status": "ok"}
        finally:
            self._leave("file", asset_hash_)

    async def _apply(self, kind: str, snapshot_json: bytes, hosts: Mapping[str, str], jti: str | None) -> dict:
        snapshot_id = json.loads(snapshot_json)["snapshot_id"]
        await self._enter(kind, snapshot_id)
        try:
            self.region.calls.append((kind, (snapshot_id, dict(hosts), jti)))
            if snapshot_id in self.region.refuse:
                raise DeliveryError(f"{kind}: HTTP 400: refused", status=400, permanent=True)
            self.region.snapshots[snapshot_id] = snapshot_json
            applied = []
            for host, text in hosts.items():
                stamp = Stamp.parse(text)
                if newer(stamp, self.region.hosts.get(host, (None,))[0]):
                    self.region.hosts[host] = (stamp, snapshot_id)
                    applied.append(host)
            return {"status": "ok", "applied": applied}
        finally:
            self._leave(kind, snapshot_id)

    async def send_snapshot(self, snapshot_json: bytes, hosts: Mapping[str, str], *, jti: str | None = None) -> dict:
        return await self._apply("snapshot", snapshot_json, hosts, jti)

    async def send_envs(self, snapshot_json: bytes, hosts: Mapping[str, str], *, jti: str | None = None) -> dict:
        return await self._apply("envs", snapshot_json, hosts, jti)

    async def check(self, application_uid: str, hashes: Iterable[str] = (), snapshots: Iterable[str] = (),
                    hosts: Mapping[str, str] | None = None) -> CheckResult:
        r = self.region
        if r.down:
            raise DeliveryError("sync-check: connection refused")
        r.calls.append(("check", (application_uid, list(hashes), list(snapshots), dict(hosts or {}))))
        _, hash_list, ids, stamps = r.calls[-1][1]
        return CheckResult(
            frozenset(h for h in hash_list if (application_uid, h) not in r.files),
            frozenset(s for s in ids if s not in r.snapshots),
            frozenset(h for h, s in stamps.items() if newer(Stamp.parse(s), r.hosts.get(h, (None,))[0])),
        )


@pytest.fixture
def fake_region() -> FakeRegion:
    return FakeRegion()


def catalog_of(worker: RegionWorker) -> Any:
    return worker.app[CATALOG_KEY]
