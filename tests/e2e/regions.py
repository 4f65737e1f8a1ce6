"""Several REAL regions for end-to-end replication tests (docs/replication.md).

A :class:`Region` is what a deployment region is in production, on loopback:

- its own **S3 bucket** on the shared moto server (:class:`~tests.e2e.worker.S3Bucket`);
- its own **redis-server** process on a free port (:class:`~tests.services.RedisServer`);
- N **workers**, real ``zephyr-edge serve`` processes (:class:`RegionWorker`, a
  :class:`~tests.e2e.worker.WorkerProcess` that can also be SIGKILLed and started again on
  the same port), sharing that bucket and that Redis, each with
  ``ZE_WORKER_REPLICA_NAME=<region name>`` and ``ZE_WORKER_REPLICAS_URLS`` = the other
  regions' URLs;
- a **load balancer** (:class:`Balancer`), the region's URL: a small HTTP reverse proxy in
  the test process that sends each request to the next worker that accepts a connection
  (round robin) and answers 502 when none does, as an ingress would. It records every
  request it passed (method, path and query, ``X-Replica-Source``, status), so a test can
  see exactly which sync requests reached a region and from where.

Why a redis-server per region rather than a hash tag per region on the shared Redis: a
region then cannot see another region's records at all, even through a bug in how a key
is derived, which is what makes "B converged" mean "B's own KV holds it"; every region can
use the SAME prefixes, as production regions do (each keeps the default
``{ze-k8s-worker}`` tag in its own Redis); the test can watch one region's KV writes alone
(``MONITOR``, :meth:`Region.monitor`); and cleanup is stopping the server (it never
persists: ``--save ""``), so no key of a test outlives it on the shared 6379. The tag is
still random per test (:attr:`Regions.tag`) so that a worker pointed at the wrong Redis by
mistake could not touch anybody's keys. A region "down" is its workers stopped (its
balancer then answers 502, its Redis and bucket keep their data); starting it again reuses
the same worker ports and the same balancer, so every other region's URL stays valid.

:class:`Regions` creates a set of regions for one test (``async with``), wires their
URLs (full mesh by default, or as given) and stops everything it started: workers,
balancers, Redis servers, buckets.

A ``direct`` region (:class:`RegionSpec`) is known to the others by its first worker's URL
instead: sync requests then reach a worker exactly as the sender sent them (a streamed
body stays streamed), at the cost of the balancer's record.

Other helpers: :func:`wait_until` (bounded polling), :class:`Uploader` (files, snapshots and
publishes through a worker's or balancer's upload API with a minted ``can_write_jwt``),
:func:`build_files`, :func:`make_snapshot`, :func:`status_targets` (the per-target entries
of ``GET /replicationz``). Everything binds to and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import coredis
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.e2e.worker import Fetched, S3Bucket, WorkerProcess, open_catalog, worker_env
from tests.services import RedisServer, free_port
from zephyr_edge.domain import hostnames, tokens
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.replication import protocol

T = TypeVar("T")

#: The edge's public URL in every region (production regions share one public name).
PUBLIC_URL = "http://ze.e2e.test"
EDGE_HOST = "ze.e2e.test"
#: Default bound of a wait in these tests.
WAIT_S = 30.0
#: Replication timings of test regions (small, so that tests run in seconds).
FAST_REPLICATION = {
    "ZE_WORKER_REPLICATION_POLL_MS": "50",
    "ZE_WORKER_REPLICATION_LEASE_MS": "1500",
    "ZE_WORKER_REPLICATION_RETRY_MAX_MS": "500",
    "ZE_WORKER_REPLICATION_TIMEOUT_MS": "10000",
    "ZE_WORKER_REPLICATION_CONCURRENCY": "4",
    # off unless a test turns it on: convergence must come from the outbox alone
    "ZE_WORKER_REPLICATION_ANTI_ENTROPY_MS": "0",
    "ZE_WORKER_INVALIDATION_POLL_MS": "50",
    "ZE_WORKER_HOST_CACHE_TTL_MS": "200",
}
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})  # fmt: skip
BALANCER_TIMEOUT_S = 60.0
BALANCER_MAX_BODY = 256 * 1024 * 1024


# --- waiting ----------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Awaitable[T] | T], what: str, timeout: float = WAIT_S, interval: float = 0.1
) -> T:
    """Poll ``condition()`` (sync or async) every ``interval`` s until it returns a truthy
    value, and return that value; :class:`AssertionError` naming ``what`` and the last value
    (or exception) after ``timeout`` s. Exceptions of ``condition`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except (AssertionError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {str(last)[:2000]})")
        await asyncio.sleep(interval)


# --- a worker that can die ----------------------------------------------------------------------


class RegionWorker(WorkerProcess):
    """:class:`WorkerProcess` plus SIGKILL and a restart on the same port (same environment)."""

    def __init__(self, env: Mapping[str, str], cwd: str | os.PathLike[str], region: str, index: int):
        super().__init__(env, cwd)
        self.region = region
        self.index = index
        self.lifetimes = 0

    @property
    def name(self) -> str:
        return f"{self.region}{self.index}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> "RegionWorker":
        self.lifetimes += 1
        await super().start()
        return self

    async def kill(self) -> int | None:
        """SIGKILL the worker (its process group): no shutdown, no lease released. The
        exit code (-9)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        for reader in self._readers:
            await asyncio.to_thread(reader.join, 5)
        return proc.returncode

    async def stop(self) -> int | None:
        if not self.alive:
            if self._session is not None:
                await self._session.close()
                self._session = None
            return self.proc.returncode if self.proc is not None else None
        return await super().stop()

    def errors(self) -> list[dict[str, Any]]:
        """Logged lines at error level or above."""
        out = []
        for line in list(self.stdout):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if parsed.get("level") in ("error", "fatal"):
                out.append(parsed)
        return out

    def logged(self, message_part: str) -> list[dict[str, Any]]:
        """Parsed log lines whose message contains ``message_part``."""
        out = []
        for line in list(self.stdout):
            if message_part not in line:
                continue
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


# --- the region's load balancer -----------------------------------------------------------------


@dataclass
class Passed:
    """One request the balancer passed on (or answered itself with 502)."""

    method: str
    path_qs: str
    source: str | None
    status: int
    backend: str | None
    at: float

    @property
    def type(self) -> str | None:
        return (parse_qs(urlsplit(self.path_qs).query).get("type") or [None])[0]

    @property
    def is_sync(self) -> bool:
        return (self.type or "").startswith("sync-")


class Balancer:
    """The region's URL: round robin over the workers that accept a connection; 502 when
    none does. Requests are read whole, then forwarded with their method, raw path and
    query, headers (Host included) and body; answers come back as sent (no decompression).
    A new upstream connection per request, so a stopped worker never costs a request."""

    def __init__(self, name: str):
        self.name = name
        self.backends: list[str] = []
        self.passed: list[Passed] = []
        self.port = 0
        self._next = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> "Balancer":
        app = web.Application(client_max_size=BALANCER_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=BALANCER_TIMEOUT_S, connect=2.0),
            auto_decompress=False,
        )
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 10)
            self._runner = None

    def syncs(self, source: str | None = None, *, type: str | None = None, status: int | None = None) -> list[Passed]:
        """Sync requests that reached the balancer, answered or not (from ``source``, of
        sync ``type``, answered ``status``, when given)."""
        return [
            p for p in list(self.passed)
            if p.is_sync and (source is None or p.source == source) and (type is None or p.type == type)
            and (status is None or p.status == status)
        ]  # fmt: skip

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        source = request.headers.get(protocol.SOURCE_HEADER)
        backends = list(self.backends)
        n = len(backends)
        start = self._next
        self._next += 1
        for i in range(n):
            backend = backends[(start + i) % n]
            url = URL(backend + request.raw_path, encoded=True)
            try:
                async with self._session.request(
                    request.method, url, headers=headers, data=body if body else None, allow_redirects=False,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                ) as answer:
                    payload = await answer.read()
                    out = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP)
                    self.passed.append(Passed(request.method, request.raw_path, source, answer.status, backend, time.time()))
                    return web.Response(status=answer.status, body=payload, headers=out)
            except aiohttp.ClientConnectorError:
                continue  # nothing was sent: the next worker
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.passed.append(Passed(request.method, request.raw_path, source, 502, backend, time.time()))
                return web.Response(status=502, text=f"{self.name}: upstream failed: {type(exc).__name__}")
        self.passed.append(Passed(request.method, request.raw_path, source, 502, None, time.time()))
        return web.Response(status=502, text=f"{self.name}: no worker of the region answers")


# --- a region -----------------------------------------------------------------------------------


class Region:
    """One region: bucket, Redis, workers, balancer (see the module docstring)."""

    def __init__(
        self, name: str, *, bucket: S3Bucket, redis: RedisServer, balancer: Balancer, tag: str,
        ports: Sequence[int], direct: bool = False,
    ):
        self.name = name
        self.bucket = bucket
        self.redis = redis
        self.balancer = balancer
        self.tag = tag
        #: the workers' ports (kept across restarts)
        self.ports = list(ports)
        #: whether the region's URL is its first worker's (no balancer in the path)
        self.direct = direct
        self.workers: list[RegionWorker] = []

    def __repr__(self) -> str:
        return f"Region({self.name!r}, url={self.url}, workers={[w.port for w in self.workers]})"

    @property
    def url(self) -> str:
        """The region's URL as the other regions have it: its balancer's, or its first
        worker's for a ``direct`` region (sync requests then reach the worker as sent)."""
        return f"http://127.0.0.1:{self.ports[0]}" if self.direct else self.balancer.url

    @property
    def redis_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.redis.port)

    @property
    def env(self) -> dict[str, str]:
        """The environment of the region's first worker (for the CLI and direct KV reads)."""
        return self.workers[0].env

    def live_workers(self) -> list[RegionWorker]:
        return [w for w in self.workers if w.alive]

    def any_worker(self) -> RegionWorker:
        live = self.live_workers()
        if not live:
            raise AssertionError(f"region {self.name}: no worker is running")
        return live[0]

    # --- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker that is not running (same ports, same environment)."""
        await asyncio.gather(*(w.start() for w in self.workers if not w.alive))
        self.balancer.backends = [w.url for w in self.workers]

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, bounded): the region is down; its data stays."""
        await asyncio.gather(*(w.stop() for w in self.workers))

    def worker_of(self, holder: str) -> RegionWorker:
        """The worker a lease ``holder`` names (its pid, port or URL appear in the owner
        string, or a line of its log mentions the owner)."""
        found = [w for w in self.workers if _names_worker(holder, w)]
        if len(found) != 1:
            raise AssertionError(
                f"region {self.name}: lease holder {holder!r} names {len(found)} workers "
                f"(pids {[w.pid for w in self.workers]}, ports {[w.port for w in self.workers]})"
            )
        return found[0]

    # --- reading it -----------------------------------------------------------------------

    async def replicationz(self, worker: RegionWorker | None = None) -> dict[str, Any]:
        """``GET /replicationz`` of a running worker (the region's state: any worker will do)."""
        w = worker or self.any_worker()
        got = await w.request("GET", protocol.STATUS_PATH)
        assert got.status == 200, f"{self.name} {protocol.STATUS_PATH}: {got.status} {got.body[:500]!r}"
        return json.loads(got.body)

    async def target(self, other: "Region | str", worker: RegionWorker | None = None) -> dict[str, Any]:
        """The ``/replicationz`` entry of the target ``other`` (a region or a URL)."""
        url = other.url if isinstance(other, Region) else other
        targets = status_targets(await self.replicationz(worker))
        key = url.rstrip("/")
        if key not in targets:
            raise AssertionError(f"{self.name} {protocol.STATUS_PATH}: no target {key}; has {sorted(targets)}")
        return targets[key]

    async def hash_list(self, application_uid: str, worker: RegionWorker | None = None) -> set[str]:
        w = worker or self.any_worker()
        got = await w.request("GET", f"/__get_application_hash_list__?application_uid={quote(application_uid)}")
        assert got.status == 200, f"{self.name} hash list: {got.status} {got.body[:300]!r}"
        return set(json.loads(got.body)["hashes"])

    async def fetch(self, host: str, path: str, worker: RegionWorker | None = None) -> Fetched:
        """GET an app's asset by Host through a worker (gzip answers decompressed)."""
        return await (worker or self.any_worker()).get_asset(host, path)

    @contextlib.asynccontextmanager
    async def catalog(self) -> AsyncIterator[Catalog]:
        """The region's catalog, read directly from its Redis."""
        async with open_catalog(self.env) as catalog:
            yield catalog

    async def keys(self, pattern_suffix: str = "*") -> list[str]:
        """Keys of the region's Redis under its tag (``pattern_suffix`` after it)."""
        pattern = _escape_glob(self.tag) + pattern_suffix
        async with self._redis() as client:
            found = [k.decode() if isinstance(k, bytes) else k async for k in client.scan_iter(match=pattern)]
        return sorted(found)

    async def outbox_seq(self) -> int:
        """The outbox counter (0 when the region never recorded a write for replication)."""
        async with self._redis() as client:
            raw = await client.get(hostnames.tagged_key(self.env["ZE_WORKER_REDIS_PREFIX_ENVS"], "outbox", "seq"))
        return int(raw) if raw else 0

    def _redis(self) -> coredis.Redis:
        return coredis.Redis(host="127.0.0.1", port=self.redis.port, connect_timeout=2, stream_timeout=5)

    @contextlib.asynccontextmanager
    async def monitor(self) -> AsyncIterator[list[str]]:
        """Every command the region's Redis runs meanwhile (``redis-cli MONITOR`` lines,
        Lua-run commands included), filled in when the block ends."""
        out = Path(self.redis.workdir) / f"monitor-{uuid.uuid4().hex[:8]}.log"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis.port), "monitor"],
                stdout=sink, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )
        lines: list[str] = []
        try:
            await wait_until(lambda: out.stat().st_size > 0 or proc.poll() is not None, "MONITOR started", 10, 0.02)
            assert proc.poll() is None, "redis-cli monitor exited"
            yield lines
            await asyncio.sleep(0.2)  # let the last commands reach the file
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
            lines.extend(out.read_text(errors="replace").splitlines())
            out.unlink(missing_ok=True)

    def describe(self) -> str:
        parts = [f"=== region {self.name} ({self.url}) ==="]
        for w in self.workers:
            parts.append(f"--- worker {w.name} port {w.port} pid {w.pid} alive {w.alive}")
            parts.append(w.output(30))
        return "\n".join(parts)


def _names_worker(holder: str, worker: RegionWorker) -> bool:
    """Whether the lease owner ``holder`` is ``worker``: the sender's owner names are
    ``<hostname>:<pid>:<random hex>`` (the pid must be the worker's), or, whatever the
    format, the worker logged the owner name (its "senders started" line)."""
    if not holder:
        return False
    parts = holder.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return worker.pid is not None and int(parts[-2]) == worker.pid
    return any(holder in line for line in list(worker.stdout))


def _escape_glob(text: str) -> str:
    return re.sub(r"([\[\]{}*?\\])", r"\\\1", text)


def status_targets(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-target entries of a ``/replicationz`` answer, by target URL (no trailing
    ``/``). Accepts ``{"targets": {url: {...}}}`` and ``{"targets": [{"url"|"target": url,
    ...}]}``."""
    targets = status.get("targets")
    if isinstance(targets, Mapping):
        return {str(k).rstrip("/"): dict(v) for k, v in targets.items()}
    if isinstance(targets, list):
        out = {}
        for item in targets:
            url = item.get("url") or item.get("target") or item.get("name")
            out[str(url).rstrip("/")] = dict(item)
        return out
    raise AssertionError(f"unexpected {protocol.STATUS_PATH} answer: {json.dumps(status)[:1000]}")


# --- a set of regions ---------------------------------------------------------------------------


@dataclass
class RegionSpec:
    workers: int = 1
    #: names of the regions this one sends to (None: every other region)
    sends_to: Sequence[str] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    #: the region's URL is its first worker's, not its balancer's (then the balancer sees
    #: only what a test sends through it, no sync traffic)
    direct: bool = False


class Regions:
    """The regions of one test; ``async with Regions(...) as rs`` starts and stops them all.

    ``specs``: name -> :class:`RegionSpec` (or just a worker count). Every region's
    ``ZE_WORKER_REPLICAS_URLS`` lists the balancers of ``sends_to`` (default: all the others).
    ``extra``: environment for every worker (after :data:`FAST_REPLICATION`).
    """

    def __init__(
        self, tmp_path: Path, s3_endpoint: str, secret: str, specs: Mapping[str, RegionSpec | int],
        *, extra: Mapping[str, str] | None = None, start: bool = True,
    ):
        self.tmp_path = Path(tmp_path)
        self.s3_endpoint = s3_endpoint
        self.secret = secret
        self.specs = {n: (s if isinstance(s, RegionSpec) else RegionSpec(workers=s)) for n, s in specs.items()}
        self.extra = dict(extra or {})
        self.start_workers = start
        self.tag = "{ze-repl-%s}" % uuid.uuid4().hex[:12]
        self.regions: dict[str, Region] = {}
        self._redis: list[RedisServer] = []
        self._buckets: list[S3Bucket] = []
        self._balancers: list[Balancer] = []

    def __getitem__(self, name: str) -> Region:
        return self.regions[name]

    async def __aenter__(self) -> "Regions":
        try:
            await self._create()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _create(self) -> None:
        for name in self.specs:
            balancer = await Balancer(name).start()
            self._balancers.append(balancer)
            redis = RedisServer()
            self._redis.append(redis)
            await asyncio.to_thread(redis.start)
            bucket = S3Bucket(self.s3_endpoint)
            await asyncio.to_thread(bucket.create)
            self._buckets.append(bucket)
            spec = self.specs[name]
            self.regions[name] = Region(
                name, bucket=bucket, redis=redis, balancer=balancer, tag=self.tag,
                ports=[free_port() for _ in range(spec.workers)], direct=spec.direct,
            )  # fmt: skip
        for name, spec in self.specs.items():
            region = self.regions[name]
            peers = [n for n in self.specs if n != name] if spec.sends_to is None else list(spec.sends_to)
            urls = [self.regions[p].url for p in peers]
            for i in range(spec.workers):
                extra = {
                    "ZE_WORKER_REPLICA_NAME": name,
                    "ZE_WORKER_REPLICAS_URLS": json.dumps(urls),
                    "ZE_WORKER_PUBLIC_URL": PUBLIC_URL,
                    **FAST_REPLICATION, **self.extra, **spec.extra,
                }  # fmt: skip
                env = worker_env(
                    port=region.ports[i], jwt_secret=self.secret, s3_endpoint=self.s3_endpoint, bucket=region.bucket.name,
                    redis_addr=region.redis_addr, tag=self.tag, extra=extra,
                )  # fmt: skip
                cwd = self.tmp_path / f"region-{name}" / f"w{i}"
                cwd.mkdir(parents=True, exist_ok=True)
                region.workers.append(RegionWorker(env, cwd, name, i))
            region.balancer.backends = [w.url for w in region.workers]
        if self.start_workers:
            await asyncio.gather(*(r.start() for r in self.regions.values()))

    async def close(self) -> None:
        """Stop every worker, balancer and Redis server, and drop every bucket (each step
        runs even when another fails)."""
        for region in self.regions.values():
            for w in region.workers:
                with contextlib.suppress(Exception):
                    await w.stop()
        for balancer in self._balancers:
            with contextlib.suppress(Exception):
                await balancer.stop()
        for redis in self._redis:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(redis.cleanup)
        for bucket in self._buckets:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(bucket.drop)

    def describe(self) -> str:
        return "\n".join(r.describe() for r in self.regions.values())


# --- builds through the upload API --------------------------------------------------------------


def asset_hash(filename: str, body: bytes) -> str:
    """The asset hash as ``zephyr-agent`` computes it (see ``zephyr_edge.domain.assets``)."""
    p = filename.encode("utf-8")
    h = hashlib.sha256(body or p)
    h.update(p)
    return h.hexdigest()


def make_snapshot(application_uid: str, snapshot_id: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """A Snapshot JSON (as the agent uploads it, see ``zephyr_edge.domain.snapshot``) of ``files`` (path -> bytes)."""

    def ext(path: str) -> str:
        name = path.rsplit("/", 1)[-1]
        return name[name.rfind("."):] if "." in name else ""

    return {
        "application_uid": application_uid, "snapshot_id": snapshot_id, "version": "1.0.0",
        "domain": EDGE_HOST, "target": "web", "type": "csr", "entrypoint": "index.html",
        "uid": {"build": snapshot_id.split(".", 1)[0], "app_name": application_uid.split(".")[0],
                "repo": "e2e", "org": "e2e"},
        "git": {"branch": "main", "commit": "0" * 40},
        "creator": {"name": "e2e", "email": "e2e@example.invalid"},
        "createdAt": int(time.time() * 1000),
        "assets": {p: {"path": p, "extname": ext(p), "hash": asset_hash(p, b), "size": len(b)} for p, b in files.items()},
    }  # fmt: skip


def build_files(label: str, count: int, size: int = 600) -> dict[str, bytes]:
    """``count`` files of a small build (an ``index.html`` among them), all bytes unique to ``label``."""
    files = {"index.html": f"<!doctype html><title>{label}</title><script src=/assets/app.js></script>".encode()}
    for i in range(count - 1):
        seed = hashlib.sha256(f"{label}/{i}".encode()).digest()
        body = (f"/* {label} {i} */\n".encode() + seed.hex().encode() * (size // 64 + 1))[:size]
        files[f"assets/chunk-{i:04d}.js" if i else "assets/app.js"] = body
    return files


class Uploader:
    """Uploads through a worker's (or balancer's) upload API with a minted ``can_write_jwt``."""

    def __init__(self, base_url: str, secret: str, application_uid: str, concurrency: int = 6):
        self.base_url = base_url.rstrip("/")
        self.uid = application_uid
        self.token = tokens.mint(secret, application_uid, 3600)
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Uploader":
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency), timeout=aiohttp.ClientTimeout(total=60),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"can_write_jwt": self.token, "Host": EDGE_HOST, **extra}

    async def file(self, path: str, body: bytes) -> dict[str, Any]:
        assert self._session is not None
        params = {"type": "file", "hash": asset_hash(path, body), "filename": path}
        async with self._session.post(
            f"{self.base_url}/upload", params=params, data=body,
            headers=self._headers(**{"Content-Type": "application/octet-stream"}),
        ) as answer:
            text = await answer.text()
            assert answer.status == 200, f"upload {path}: {answer.status} {text[:300]}"
            return json.loads(text)

    async def files(self, files: Mapping[str, bytes]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(path: str, body: bytes) -> None:
            async with sem:
                await self.file(path, body)

        await asyncio.gather(*(one(p, b) for p, b in files.items()))

    async def snapshot(self, snapshot_id: str, files: Mapping[str, bytes]) -> str:
        """Upload the snapshot; the version host it answered."""
        assert self._session is not None
        body = json.dumps(make_snapshot(self.uid, snapshot_id, files)).encode()
        async with self._session.post(
            f"{self.base_url}/upload", params={"type": "snapshot", "skip_assets": "true"}, data=body,
            headers=self._headers(**{"Content-Type": "application/json"}),
        ) as answer:
            text = await answer.text()
            assert answer.status == 200, f"snapshot {snapshot_id}: {answer.status} {text[:300]}"
        host = urlsplit(json.loads(text)["urls"]["version"]).hostname
        assert host == hostnames.version_host(snapshot_id, EDGE_HOST, "-"), host
        return host

    async def build(self, snapshot_id: str, files: Mapping[str, bytes]) -> str:
        """Files, then the snapshot; the version host."""
        await self.files(files)
        return await self.snapshot(snapshot_id, files)

    async def publish(self, snapshot_id: str, hosts: Sequence[str]) -> tuple[int, str]:
        """``POST /upload?type=envs``: (status, body)."""
        assert self._session is not None
        body = {
            "app_version": {"application_uid": self.uid, "snapshot_id": snapshot_id},
            "urls": [f"https://{h}" for h in hosts], "url_ids": [], "jwt": self.token,
        }  # fmt: skip
        async with self._session.post(
            f"{self.base_url}/upload", params={"type": "envs"}, data=json.dumps(body).encode(),
            headers=self._headers(**{"Content-Type": "application/json"}),
        ) as answer:
            return answer.status, await answer.text()


def version_host(snapshot_id: str) -> str:
    return hostnames.version_host(snapshot_id, EDGE_HOST, "-")


__all__ = [
    "Balancer", "EDGE_HOST", "FAST_REPLICATION", "PUBLIC_URL", "Passed", "Region", "RegionSpec", "RegionWorker",
    "Regions", "Uploader", "WAIT_S", "asset_hash", "build_files", "make_snapshot", "status_targets",
    "version_host", "wait_until",
]
