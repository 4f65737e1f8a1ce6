"""Read-your-writes: a hostname write is served by the worker that accepted it as soon as
the write is answered (an ``envs`` publish, a snapshot's version host), in process and with
real worker processes sharing one KV (the other workers within 1 s, through the publish
counter)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from zephyr_edge.domain import hostnames

from tests.serve_support import APP, SECRET, deploy, worker_processes
from tests.e2e.worker import WorkerProcess
from tests.upload_support import ingest_backend, snapshot_body, start_worker

TAG_HOST = "app.example.com"
#: Publishes per test: each one would be served stale by a cache that waits for the poll.
ROUNDS = 12
#: Protocol promise for the other workers of the region.
SWITCH_S = 1.0
#: Hostname cache settings that leave only the local invalidation to switch a host fast.
SLOW_CACHE = {"ZE_WORKER_HOST_CACHE_TTL_MS": "60000", "ZE_WORKER_INVALIDATION_POLL_MS": "60000"}


def publish_body(snapshot_id: str, urls: list[str], app: str = APP) -> dict:
    return {"app_version": {"application_uid": app, "snapshot_id": snapshot_id}, "urls": urls, "url_ids": [], "jwt": "x"}


@pytest.fixture(params=["local", "s3-redis"])
async def backend(request, tmp_path):
    async with ingest_backend(request, tmp_path) as chosen:
        yield chosen


async def _index(worker, host: str) -> tuple[int, bytes]:
    resp = await worker.client.get("/", headers={"Host": host})
    return resp.status, await resp.read()


async def test_publish_is_served_by_the_accepting_worker_at_once(backend, aiohttp_client):
    worker = await start_worker(aiohttp_client, backend, **SLOW_CACHE)
    ids = []
    for build in ("1", "2"):
        page = f"<p>build {build}</p>".encode()
        assert (await worker.upload_file(page, "index.html")).status == 200
        snap = snapshot_body(build=build, files={"index.html": page})
        assert (await worker.upload_json("snapshot", snap)).status == 200
        ids.append((snap["snapshot_id"], page))
    for round_ in range(ROUNDS):
        snapshot_id, page = ids[round_ % 2]
        resp = await worker.upload_json("envs", publish_body(snapshot_id, [f"https://{TAG_HOST}"]))
        assert resp.status == 200, await resp.text()
        assert await _index(worker, TAG_HOST) == (200, page), f"round {round_}: the previous snapshot was served"


async def test_a_snapshot_upload_serves_its_version_host_at_once(backend, aiohttp_client):
    worker = await start_worker(aiohttp_client, backend, **SLOW_CACHE)
    for build in ("1", "2", "3"):
        page = f"<p>build {build}</p>".encode()
        assert (await worker.upload_file(page, "index.html")).status == 200
        snap = snapshot_body(build=build, files={"index.html": page})
        host = f"{hostnames.version_label(snap['snapshot_id']).lower()}.localhost"
        assert (await _index(worker, host))[0] == 404  # remembered as unknown
        resp = await worker.upload_json("snapshot", snap)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["urls"]["version"].startswith(f"http://{host}:")
        assert await _index(worker, host) == (200, page)


# --- two worker processes sharing one KV --------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["local", "s3-redis"])
async def test_accepting_worker_at_once_and_the_other_within_a_second(kind, tmp_path, request):
    pages = {b: f"<!doctype html><title>v{b}</title>".encode() for b in ("1", "2")}
    token = jwt.encode({"application_uid": APP, "can_write": True, "exp": int(time.time()) + 600}, SECRET, "HS256")
    async with worker_processes(kind, tmp_path, request) as (workers, catalog, storage):
        accepting, other = workers
        for build, page in pages.items():
            await deploy(catalog, storage, build, {"index.html": page}, hosts=(TAG_HOST,) if build == "1" else ())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def index(worker: WorkerProcess) -> bytes:
                async with session.get(worker.url + "/", headers={"Host": TAG_HOST}) as resp:
                    return await resp.read()

            for worker in workers:  # both cache the host (TTL 5 s)
                assert await index(worker) == pages["1"]
            for round_ in range(6):
                build = "2" if round_ % 2 == 0 else "1"
                body = publish_body(f"tester-{build}.{APP}", [TAG_HOST])
                async with session.post(accepting.url + "/upload", params={"type": "envs"}, json=body,
                                        headers={"can_write_jwt": token}) as resp:
                    assert resp.status == 200, await resp.text()
                published = time.monotonic()
                assert await index(accepting) == pages[build], f"round {round_}: accepting worker served stale"
                while await index(other) != pages[build]:
                    assert time.monotonic() - published < SWITCH_S, f"round {round_}: other worker too slow"
                    await asyncio.sleep(0.01)
