"""Helpers of the serving tests: workers on real backends (local files + SQLite in a tmp
dir, or S3 on moto + Redis with a unique hash tag), deployments seeded through the
Catalog and storage (not through the upload routes), and a test client of the serving
app (``zephyr-edge serve`` processes: :class:`tests.e2e.worker.WorkerProcess`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from zephyr_edge import plugins
from zephyr_edge.domain import hostnames
from zephyr_edge.settings import config
from zephyr_edge.domain.assets import asset_hash, extension, storage_key
from zephyr_edge.http.appkeys import CATALOG_KEY, STORAGE_KEY
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.http.serving.handler import SERVING_KEY, Serving
from zephyr_edge.domain.snapshot import Snapshot, parse_snapshot
from zephyr_edge.storage.base import Storage

from tests import backends_support
from tests.e2e.worker import WorkerProcess
from tests.services import free_port
from tests.backends_support import Backend, create_bucket, local_backend  # noqa: F401 (the serving tests' helpers)

SECRET = "serve-test-jwt-secret-0123456789abcdef"
APP = "web.repo.org"
EDGE = "ze.example.com"


def s3_redis_backend(tmp_path: Path, s3_endpoint: str, redis_addr: tuple[str, int]) -> Backend:
    return backends_support.s3_redis_backend(
        tmp_path, s3_endpoint, redis_addr, "ze-serve", ZE_WORKER_REDIS_CONNECT_TIMEOUT_MS="500"
    )


async def remove_everything(backend: Backend) -> None:
    """Delete the test's bucket and Redis keys (best effort: a test may have stopped Redis)."""
    await backends_support.remove_everything(backend, best_effort=True)


def load_config(backend: Backend, **extra: str) -> config.Config:
    return config.load({"ZE_WORKER_JWT_SECRET": SECRET, "ZE_WORKER_LISTEN_HOST": "127.0.0.1", **backend.env, **extra})


def backend_of(kind: str, tmp_path: Path, request: Any) -> Backend:
    """The ``local`` or ``s3-redis`` backend of a test parametrized by ``kind``."""
    if kind == "local":
        return local_backend(tmp_path)
    return s3_redis_backend(tmp_path, request.getfixturevalue("s3_endpoint"), request.getfixturevalue("redis_addr"))


def process_env(backend: Backend) -> dict[str, str]:
    """The environment of a ``zephyr-edge serve`` process on ``backend`` (port not set):
    this process's environment without its ``ZE_WORKER_*`` keys, then the backend's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
    return {**base, **backend.env, "ZE_WORKER_JWT_SECRET": SECRET, "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
            "ZE_WORKER_LOG_LEVEL": "warn"}


@contextlib.asynccontextmanager
async def worker_processes(
    kind: str, tmp_path: Path, request: Any, count: int = 2,
) -> AsyncIterator[tuple[list[WorkerProcess], Catalog, Storage]]:
    """``count`` real ``zephyr-edge serve`` processes sharing one backend of ``kind``, with
    the catalog and storage a test deploys through; everything stopped and removed after."""
    backend = backend_of(kind, tmp_path, request)
    await create_bucket(backend)
    cfg = load_config(backend)
    env = process_env(backend)
    workers = [WorkerProcess({**env, "ZE_WORKER_PORT": str(free_port())}, tmp_path) for _ in range(count)]
    try:
        await asyncio.gather(*(w.start() for w in workers))
        async with plugins.open_storage(cfg) as storage, plugins.open_kv(cfg) as kv:
            yield workers, Catalog(kv, cfg.worker), storage
    finally:
        for worker in workers:
            await worker.stop()
        await remove_everything(backend)


# --- deployments -----------------------------------------------------------------------------


def snapshot_of(build: str, files: Mapping[str, bytes], app: str = APP) -> Snapshot:
    """A validated snapshot like the agent's, assets from ``files`` (path → bytes)."""
    body = {
        "application_uid": app,
        "snapshot_id": f"tester-{build}.{app}",
        "version": f"1.0.0-tester.{build}",
        "createdAt": 1_700_000_000_000 + int(build),
        "assets": {
            path: {"path": path, "extname": extension(path), "hash": asset_hash(data, path), "size": len(data)}
            for path, data in files.items()
        },
    }
    return parse_snapshot(json.dumps(body).encode(), None)


def version_host_of(snapshot: Snapshot) -> str:
    return hostnames.version_host(snapshot.snapshot_id, EDGE, "-")


async def store_files(storage: Storage, files: Mapping[str, bytes]) -> None:
    for path, data in files.items():
        await storage.put_bytes(storage_key(asset_hash(data, path)), data)


async def deploy(
    catalog: Catalog, storage: Storage | None, build: str, files: Mapping[str, bytes], hosts: tuple[str, ...] = (),
) -> Snapshot:
    """Store ``files`` (unless ``storage`` is None), save the snapshot with its version host,
    and publish it on ``hosts``."""
    if storage is not None:
        await store_files(storage, files)
    snapshot = snapshot_of(build, files)
    await catalog.save_snapshot(snapshot, version_host_of(snapshot))
    if hosts:
        await catalog.publish(snapshot.snapshot_id, hosts)
    return snapshot


@attrs.define
class Site:
    """A test client on a worker app."""

    client: Any

    @property
    def app(self) -> Any:
        return self.client.server.app

    @property
    def storage(self) -> Storage:
        return self.app[STORAGE_KEY]

    @property
    def catalog(self) -> Catalog:
        return self.app[CATALOG_KEY]

    @property
    def serving(self) -> Serving:
        return self.app[SERVING_KEY]

    async def deploy(self, build: str, files: Mapping[str, bytes], hosts: tuple[str, ...] = (), store: bool = True) -> Snapshot:
        return await deploy(self.catalog, self.storage if store else None, build, files, hosts)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the worker's invalidation poller has seen the latest publish (so that
        it will not clear the hostname cache right after the test warms it)."""
        deadline = time.monotonic() + timeout
        while self.serving.hosts.generation != await self.catalog.generation():
            assert time.monotonic() < deadline, "the invalidation poller did not catch up"
            await asyncio.sleep(0.01)

    async def fetch(self, path: str, host: str, method: str = "GET", **headers: str) -> tuple[Any, bytes]:
        """One request with exactly ``headers`` (no automatic Accept-Encoding); the raw body."""
        resp = await self.client.request(
            method, path, headers={"Host": host, **headers}, skip_auto_headers=("Accept-Encoding",),
        )
        body = await resp.read()
        return resp, body


class CountingCalls:
    """Wraps one method of a live object, counting calls (the real method still runs)."""

    def __init__(self, obj: Any, name: str, before: Any = None):
        self.calls: list[tuple] = []
        self._obj, self._name = obj, name
        self._real = getattr(obj, name)
        self._before = before

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(args)
            if self._before is not None:
                await self._before(*args)
            return await self._real(*args, **kwargs)

        setattr(obj, name, wrapper)

    def __len__(self) -> int:
        return len(self.calls)

    def restore(self) -> None:
        setattr(self._obj, self._name, self._real)
