"""How long the worker's event loop stalls while it ingests a large snapshot.

Starts ``zephyr-edge serve`` (this checkout, local backends in a temporary folder) on a free
loopback port, then measures the latency of ``GET /healthz`` (no I/O: pure event-loop
responsiveness) every 10 ms:

- baseline: for ``--baseline-s`` seconds with nothing else going on;
- during: while ``POST /upload?type=snapshot`` ingests one snapshot of ``--assets`` entries.

Prints both (p50, p99, max) and the upload's duration and status. Run from the repository
root: ``python bench/snapshot_stall.py [--assets 150000] [--rounds 3]``. The asset limit
(``ZE_WORKER_MAX_SNAPSHOT_ASSETS``) is raised to the asset count so that the ingest itself
is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-stall-secret-0123456789abcdef"
APP = "web.repo.org"
PROBE_EVERY_S = 0.01
START_TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_body(assets: int, build: int) -> bytes:
    entries = {}
    for i in range(assets):
        path = f"assets/chunk-{i:06d}-{hashlib.md5(str(i).encode()).hexdigest()[:8]}.js"
        entries[path] = {"path": path, "extname": ".js", "hash": hashlib.sha256(path.encode()).hexdigest(), "size": i}
    doc = {"application_uid": APP, "snapshot_id": f"bench-{build}.{APP}", "version": str(build), "assets": entries}
    return json.dumps(doc).encode()


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    if not ordered:
        return "no samples"

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"n={len(ordered):5d}  p50={at(0.5):7.1f} ms  p99={at(0.99):7.1f} ms  max={ordered[-1] * 1000:7.1f} ms"


async def probe(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200
        out.append(time.monotonic() - started)
        await asyncio.sleep(PROBE_EVERY_S)


async def measure(base: str, body: bytes, baseline_s: float, build: int) -> None:
    token = jwt.encode({"application_uid": APP, "can_write": True, "exp": int(time.time()) + 3600}, SECRET, "HS256")
    async with aiohttp.ClientSession() as session:
        quiet: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(session, base + "/healthz", stop, quiet))
        await asyncio.sleep(baseline_s)
        stop.set()
        await task
        busy: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(session, base + "/healthz", stop, busy))
        started = time.monotonic()
        async with asyncio.timeout(UPLOAD_TIMEOUT_S):
            async with session.post(
                base + "/upload", params={"type": "snapshot", "skip_assets": "true"}, data=body,
                headers={"can_write_jwt": token, "Content-Type": "application/json"},
            ) as resp:
                status = resp.status
                await resp.read()
        took = time.monotonic() - started
        stop.set()
        await task
    print(f"  baseline /healthz: {summary(quiet)}")
    print(f"  during   /healthz: {summary(busy)}")
    print(f"  upload: status {status}, {took:.2f} s, {len(body) / 1e6:.1f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=150_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-s", type=float, default=2.0)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ, "PYTHONPATH": str(ROOT),
            "ZE_WORKER_JWT_SECRET": SECRET, "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
            "ZE_WORKER_DATA_DIR": data, "ZE_WORKER_PORT": str(port), "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
            "ZE_WORKER_LOG_LEVEL": "warn", "ZE_WORKER_MAX_SNAPSHOT_ASSETS": str(args.assets),
        }
        worker = subprocess.Popen([sys.executable, "-m", "zephyr_edge", "serve"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or worker.poll() is not None:
                        print("worker did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            print(f"snapshot of {args.assets} assets, {args.rounds} rounds")
            for build in range(1, args.rounds + 1):
                body = snapshot_body(args.assets, build)
                print(f"round {build}:")
                asyncio.run(measure(f"http://127.0.0.1:{port}", body, args.baseline_s, build))
        finally:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
