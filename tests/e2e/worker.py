"""The REAL worker for end-to-end tests: a ``zephyr-edge serve`` subprocess on loopback,
on S3 (moto) and Redis, with its JSON log lines collected and helpers to fetch apps
through it, run the admin CLI with its configuration, and inspect its bucket.

Nothing here fakes the worker: requests go over TCP to the process the console script
started. Every wait is bounded; :meth:`WorkerProcess.stop` ends the process (SIGTERM,
then SIGKILL) and :meth:`S3Bucket.drop` removes the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import boto3
import coredis
from botocore.config import Config as BotoConfig
from multidict import CIMultiDict
from yarl import URL

from tests.services import free_port
from zephyr_edge.settings import config
from zephyr_edge.catalog.records import Catalog
from zephyr_edge import plugins

SCRIPT = str(Path(sys.executable).with_name("zephyr-edge"))
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0
#: How long a marker request's access line may take to show up in the collected output.
LOG_WAIT_S = 10.0
S3_ACCESS_KEY = "e2e-access-key"
S3_SECRET_KEY = "e2e-secret-key-0123456789"
#: Hosts that answer 404 on any worker: the target of marker requests.
MARKER_HOST = "e2e-log-marker.invalid"
MARKER_PREFIX = "/__e2e_log_marker__/"


class S3Bucket:
    """A bucket of its own on the S3 server, for one test."""

    def __init__(self, endpoint: str, name: str | None = None):
        self.endpoint = endpoint
        self.name = name or f"ze-e2e-{uuid.uuid4().hex[:16]}"
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
            config=BotoConfig(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
        )  # fmt: skip

    def create(self) -> "S3Bucket":
        self.client.create_bucket(Bucket=self.name)
        return self

    def keys(self, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            out.update(o["Key"] for o in page.get("Contents", ()))
        return out

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            for key in self.keys():
                self.client.delete_object(Bucket=self.name, Key=key)
            self.client.delete_bucket(Bucket=self.name)


def worker_env(
    *, port: int, jwt_secret: str, s3_endpoint: str, bucket: str, redis_addr: tuple[str, int], tag: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker on S3 + Redis under the hash tag ``tag`` (``{...}``),
    listening on 127.0.0.1:``port``; no ``ZE_WORKER_*`` of the test runner leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
    env.update({
        "ZE_WORKER_JWT_SECRET": jwt_secret,
        "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
        "ZE_WORKER_PORT": str(port),
        "ZE_WORKER_LOG_LEVEL": "info",
        "ZE_WORKER_ACCESS_LOG": "true",  # the upload count reads the access log
        "ZE_WORKER_SHUTDOWN_GRACE_MS": "2000",
        "ZE_WORKER_STORAGE_BACKEND": "s3",
        "ZE_WORKER_S3_ENDPOINT": s3_endpoint,
        "ZE_WORKER_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "ZE_WORKER_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "ZE_WORKER_S3_BUCKET": bucket,
        "ZE_WORKER_KV_BACKEND": "redis",
        "ZE_WORKER_REDIS_HOST": redis_addr[0],
        "ZE_WORKER_REDIS_PORT": str(redis_addr[1]),
        "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:",
        "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
    })
    env.update(extra or {})
    return env


@dataclass
class Fetched:
    status: int
    headers: Mapping[str, str]
    body: bytes


class WorkerProcess:
    """``zephyr-edge serve`` as a subprocess; stdout (JSON log lines) and stderr collected."""

    def __init__(self, env: Mapping[str, str], cwd: str | os.PathLike[str]):
        self.env = dict(env)
        self.port = int(self.env["ZE_WORKER_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd = Path(cwd)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._session: aiohttp.ClientSession | None = None

    # --- lifetime -----------------------------------------------------------------------

    async def start(self) -> "WorkerProcess":
        self.proc = subprocess.Popen(
            [SCRIPT, "serve"], env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), auto_decompress=False,
        )
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    def _drain(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start ({self.proc and self.proc.returncode}): {self.output()}")
            try:
                got = await self.request("GET", "/readyz")
                if got.status == 200:
                    return
                last = (got.status, got.body[:500])
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker not ready within {timeout:.0f} s (last: {last!r}): {self.output()}")

    async def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; the exit code (None if it had to be killed)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc, code = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
        elif proc is not None:
            code = proc.returncode
        for reader in self._readers:
            await asyncio.to_thread(reader.join, 5)
        return code

    async def __aenter__(self) -> "WorkerProcess":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- HTTP ---------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, *, host: str | None = None, headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Fetched:
        """``method`` ``path`` (already percent-encoded) to the worker's address; ``host``
        becomes the Host header. Bodies are returned as sent (no decompression)."""
        assert self._session is not None, "worker not started"
        hdrs = dict(headers or {})
        if host is not None:
            hdrs["Host"] = host
        url = URL(self.url + path, encoded=True)
        async with self._session.request(method, url, headers=hdrs, data=data, allow_redirects=False) as resp:
            body = await resp.read()
            return Fetched(resp.status, CIMultiDict(resp.headers), body)

    async def get_asset(self, host: str, asset_path: str, accept_encoding: str = "identity") -> Fetched:
        """GET an app's asset by its snapshot path (``""`` for ``/``), percent-encoded as a
        browser would; a compressed answer is decompressed (gzip) so bytes compare."""
        got = await self.request(
            "GET", "/" + quote(asset_path, safe="/"), host=host, headers={"Accept-Encoding": accept_encoding}
        )
        if got.headers.get("Content-Encoding") == "gzip":
            return Fetched(got.status, got.headers, gzip.decompress(got.body))
        return got

    # --- logs ---------------------------------------------------------------------------

    def output(self, tail: int = 40) -> str:
        with self._lock:
            out, err = self.stdout[-tail:], self.stderr[-tail:]
        return "--- worker stdout ---\n" + "\n".join(out) + "\n--- worker stderr ---\n" + "\n".join(err)

    def log_lines(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """Parsed stdout lines ``[start:end]`` (each must be one JSON object)."""
        with self._lock:
            lines = self.stdout[start:end]
        return [json.loads(line) for line in lines if line.strip()]

    def log_position(self) -> int:
        with self._lock:
            return len(self.stdout)

    async def mark_logs(self) -> int:
        """Send a marker request and wait until its access line is collected; the stdout
        position just after it. Everything the worker logged for requests answered before
        the call is then in ``stdout[:position]``."""
        marker = MARKER_PREFIX + uuid.uuid4().hex
        await self.request("GET", marker, host=MARKER_HOST)
        deadline = time.monotonic() + LOG_WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                for i in range(len(self.stdout) - 1, -1, -1):
                    if marker in self.stdout[i]:
                        return i + 1
            await asyncio.sleep(0.05)
        raise AssertionError(f"the access line of {marker} was not logged within {LOG_WAIT_S:.0f} s: {self.output()}")

    # --- the admin CLI with this worker's configuration ----------------------------------

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [SCRIPT, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
            timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )  # fmt: skip


async def start_worker(
    tmp_path: Path, *, jwt_secret: str, s3_endpoint: str, bucket: str, redis_addr: tuple[str, int], tag: str,
    extra: Mapping[str, str] | None = None,
) -> WorkerProcess:
    """A started (ready) worker on a free loopback port."""
    env = worker_env(
        port=free_port(), jwt_secret=jwt_secret, s3_endpoint=s3_endpoint, bucket=bucket,
        redis_addr=redis_addr, tag=tag, extra=extra,
    )  # fmt: skip
    cwd = tmp_path / "worker"
    cwd.mkdir(parents=True, exist_ok=True)
    return await WorkerProcess(env, cwd).start()


# --- the worker's KV, read directly ---------------------------------------------------------


@contextlib.asynccontextmanager
async def open_catalog(env: Mapping[str, str]) -> AsyncIterator[Catalog]:
    """The catalog of the worker configured by ``env`` (its real KV backend)."""
    cfg = config.load(env)
    async with plugins.open_kv(cfg) as kv:
        yield Catalog(kv, cfg.worker)


async def drop_redis_keys(redis_addr: tuple[str, int], tag: str) -> None:
    """Delete every key under the hash tag ``tag`` (a test's own keys)."""
    pattern = tag.replace("{", "\\{").replace("}", "\\}") + "*"
    async with coredis.Redis(host=redis_addr[0], port=redis_addr[1], connect_timeout=2, stream_timeout=5) as client:
        keys = [k async for k in client.scan_iter(match=pattern)]
        if keys:
            await client.delete(keys)
