"""A frozen S3 server (its process stopped with SIGSTOP: connections are accepted by the
kernel, nothing ever answers) costs each request at most its configured timeout: uploads,
cold asset reads, HEAD and /readyz answer 503 with ``Retry-After`` within the bound, and
requests that need no storage are not slowed down. The test runs its own moto server so
that no other test sees it frozen."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from zephyr_edge.domain import hostnames
from tests.backends_support import ACCESS_KEY, SECRET_KEY, empty_bucket, s3_client
from tests.services import MotoServer
from tests.upload_support import Backend, snapshot_body, start_worker

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_MS = 1000
UPLOAD_REQUEST_TIMEOUT_MS = 1500
READINESS_TIMEOUT_MS = 1000
#: Scheduling slack over a bound (2 shared cores); retries per attempt would exceed it.
SLACK_S = 1.0
#: Longest answer of a request that needs no storage while S3 is frozen.
UNAFFECTED_S = 0.5


@pytest.fixture
def moto():
    server = MotoServer().start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def timed(call) -> tuple[float, int, dict, bytes]:
    started = time.monotonic()
    resp = await call()
    body = await resp.read()
    return time.monotonic() - started, resp.status, dict(resp.headers), body


async def test_every_storage_request_is_bounded_when_s3_freezes(moto, tmp_path, aiohttp_client):
    bucket = "ze-frozen"
    env = {
        "ZE_WORKER_STORAGE_BACKEND": "s3", "ZE_WORKER_KV_BACKEND": "local", "ZE_WORKER_DATA_DIR": str(tmp_path / "data"),
        "ZE_WORKER_S3_ENDPOINT": moto.endpoint, "ZE_WORKER_S3_BUCKET": bucket,
        "ZE_WORKER_S3_ACCESS_KEY_ID": ACCESS_KEY, "ZE_WORKER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "ZE_WORKER_S3_CONNECTION_TIMEOUT_MS": "500",
        "ZE_WORKER_S3_REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
        "ZE_WORKER_S3_UPLOAD_REQUEST_TIMEOUT_MS": str(UPLOAD_REQUEST_TIMEOUT_MS),
        "ZE_WORKER_READINESS_TIMEOUT_MS": str(READINESS_TIMEOUT_MS),
    }
    async with s3_client(moto.endpoint) as s3:
        await s3.create_bucket(Bucket=bucket)
        worker = await start_worker(aiohttp_client, Backend("s3-local", env, tmp_path / "data"))
        page, script = b"<p>frozen</p>", b"console.log('never read before the freeze')"
        for data, name in ((page, "index.html"), (script, "assets/main.js")):
            assert (await worker.upload_file(data, name)).status == 200
        snap = snapshot_body(files={"index.html": page, "assets/main.js": script})
        assert (await worker.upload_json("snapshot", snap)).status == 200
        host = f"{hostnames.version_label(snap['snapshot_id']).lower()}.localhost"
        assert (await worker.client.get("/readyz")).status == 200

        os.kill(moto.proc.pid, signal.SIGSTOP)
        try:
            client = worker.client
            bounded = {
                "upload": (UPLOAD_REQUEST_TIMEOUT_MS, lambda: worker.upload_file(os.urandom(5000), "late.bin")),
                "get": (REQUEST_TIMEOUT_MS, lambda: client.get("/assets/main.js", headers={"Host": host})),
                "head": (REQUEST_TIMEOUT_MS, lambda: client.head("/index.html", headers={"Host": host})),
                "readyz": (READINESS_TIMEOUT_MS, lambda: client.get("/readyz")),
            }
            tasks = {name: asyncio.ensure_future(timed(call)) for name, (_, call) in bounded.items()}
            await asyncio.sleep(0.05)  # every storage request is now waiting on the frozen server
            for _ in range(5):
                elapsed, status, _, _ = await timed(lambda: client.get("/healthz"))
                assert status == 200 and elapsed < UNAFFECTED_S, elapsed
            for name, (timeout_ms, _) in bounded.items():
                elapsed, status, headers, body = await asyncio.wait_for(tasks[name], 60)
                assert status == 503, (name, status, body)
                assert elapsed < timeout_ms / 1000 + SLACK_S, f"{name} answered after {elapsed:.2f} s"
                if name != "readyz":
                    assert headers.get("Retry-After"), (name, headers)
        finally:
            os.kill(moto.proc.pid, signal.SIGCONT)
        await empty_bucket(s3, bucket)
