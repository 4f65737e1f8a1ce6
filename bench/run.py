"""zephyr_edge benchmark: the real worker against bare baselines, on loopback.

    python bench/run.py [--quick] [--profile] [--json-out FILE]

Run from the repository root with the project's virtualenv. Starts, on 127.0.0.1 only:
moto's S3 server, a dedicated ``redis-server`` on a free port, the worker
(``python -m zephyr_edge serve``, one process) and a bare aiohttp server
(``bench/bare_server.py``); stops every one of them at the end, whatever happens (and
they get SIGTERM should this script die: ``PR_SET_PDEATHSIG``).

Figures (every one a ratio against a baseline measured in the same invocation, because
the machine is noisy):

(a) serve: requests/s of warm GETs of a 5 KB asset (and of ``/`` = a 5 KB index.html in
    the full run) from the worker, Host = the snapshot's version host, against the bare
    server answering the same bytes. Same load generator (``wrk`` when installed, else
    ``bench/pyload.py``), connections, duration; warm-up excluded; rounds interleaved
    ABBA; the ratio of the medians. Servers pinned to one CPU, the generator to the other.
    Also each server's requests per CPU-second (from /proc/PID/stat), a ratio that other
    load on the machine hardly moves.
(b) upload: a 1,000-file / 20 MB build (random bytes, log-normal sizes) through
    ``POST /upload?type=file`` at concurrency 6 with a valid ``can_write_jwt``, against
    direct S3 PutObject calls of the same bytes to the same moto server at concurrency 6
    (aiobotocore, the worker's own client settings). MB/s (10^6 bytes) and files/s.
    Diagnostic: direct HeadObject + PutObject per file (the S3 traffic of the worker's route).
(c) RSS: the worker's peak resident set during (a) and during (b) (``VmHWM``, reset at
    each phase start through ``/proc/PID/clear_refs``, plus a 20 ms ``VmRSS`` poll),
    against ``ZE_WORKER_CACHE_SIZE_MB`` + 120 MiB.

The last line printed is the JSON of all figures. Exit status: 0 when every phase ran
(targets missed or not; ``--strict`` makes a missed target exit 3), 1 when a phase failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiobotocore.session import get_session  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from botocore.handlers import add_expect_header  # noqa: E402

from zephyr_edge import __version__ as ZE_VERSION  # noqa: E402
from zephyr_edge.domain import hostnames, tokens  # noqa: E402
from zephyr_edge.domain.assets import asset_hash, storage_key  # noqa: E402
from zephyr_edge.settings.units import MiB  # noqa: E402

APP_UID = "bench-app.zephyr-edge.bench"
EDGE_HOST = "ze.bench.test"
BUCKET = "zebench"
S3_ACCESS_KEY = "bench-access"
S3_SECRET_KEY = "bench-secret-key"
S3_REGION = "us-east-1"
MB = 1_000_000
ASSET_SIZE = 5 * 1024
UPLOAD_CONCURRENCY = 6
TARGET_SERVE_RATIO = 0.70
TARGET_UPLOAD_RATIO = 0.75
RSS_ALLOWANCE_MIB = 120
START_TIMEOUT_S = 60.0
PHASE_TIMEOUT_S = 600.0

# --- processes ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _preexec(cpus: set[int] | None) -> Callable[[], None]:
    """In the child before exec: die with us, and run on ``cpus``."""

    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of ``pid`` to ``cpus`` (sched_setaffinity is per thread)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A long-running child: output to a log file, stopped by pid (TERM, then KILL)."""

    started: list[Proc] = []

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cpus: set[int] | None = None):
        self.name = name
        self.args = args
        self.env = env
        self.cpus = cpus
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=ROOT, preexec_fn=_preexec(self.cpus),
            )
        finally:
            log.close()
        Proc.started.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(cls.started):
            try:
                p.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {p.name}: {exc}", file=sys.stderr)
        cls.started.clear()


def wait_for(predicate: Callable[[], bool], what: str, proc: Proc | None = None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited at start:\n{proc.tail()}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s" + (f":\n{proc.tail()}" if proc else ""))


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# --- RSS and CPU ----------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssMonitor(threading.Thread):
    """Peak RSS of one process per phase: VmHWM (reset at each phase start) and a VmRSS poll."""

    def __init__(self, pid: int, interval_s: float = 0.02):
        super().__init__(daemon=True, name="rss-monitor")
        self.pid = pid
        self.interval_s = interval_s
        self.phase = "startup"
        self.poll_peak_kb: dict[str, int] = collections.defaultdict(int)
        self.hwm_kb: dict[str, int] = {}
        self.end_rss_kb: dict[str, int] = {}
        self.hwm_reset_works = True
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = _status_kb(self.pid, "VmRSS")
            if rss is not None:
                phase = self.phase
                self.poll_peak_kb[phase] = max(self.poll_peak_kb[phase], rss)
            self._halt.wait(self.interval_s)

    def begin(self, phase: str) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
        except OSError:
            self.hwm_reset_works = False
        self.phase = phase

    def end(self, phase: str) -> None:
        hwm = _status_kb(self.pid, "VmHWM")
        rss = _status_kb(self.pid, "VmRSS")
        if hwm is not None and self.hwm_reset_works:
            self.hwm_kb[phase] = hwm
        if rss is not None:
            self.end_rss_kb[phase] = rss
            self.poll_peak_kb[phase] = max(self.poll_peak_kb[phase], rss)
        self.phase = f"after-{phase}"

    def peak_mib(self, phase: str) -> float | None:
        values = [v for v in (self.poll_peak_kb.get(phase), self.hwm_kb.get(phase)) if v]
        return round(max(values) / 1024, 1) if values else None

    def stop(self) -> None:
        self._halt.set()


# --- load generation (a) --------------------------------------------------------------------


def _wrk_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"non_2xx": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[key] = round(_wrk_ms(m.group(1), m.group(2)), 3) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    return out


class LoadGen:
    """``wrk`` when installed, else ``bench/pyload.py``; pinned to ``cpus`` with taskset."""

    def __init__(self, connections: int, cpus: set[int] | None, force_python: bool = False):
        self.connections = connections
        self.cpus = cpus
        self.wrk = None if force_python else shutil.which("wrk")
        self.taskset = shutil.which("taskset")

    @property
    def name(self) -> str:
        if self.wrk:
            version = subprocess.run([self.wrk, "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
            return f"{version} (-t1 -c{self.connections})"
        return f"bench/pyload.py (python asyncio, {self.connections} connections)"

    def _prefix(self) -> list[str]:
        if self.cpus and self.taskset:
            return [self.taskset, "-c", ",".join(str(c) for c in sorted(self.cpus))]
        return []

    def run(self, url: str, host: str, duration: float, warmup: float, server_pid: int | None = None) -> dict[str, Any]:
        """One measured run after ``warmup`` seconds of unmeasured load; with
        ``server_pid``, also the server's CPU seconds during the measured run (``cpu_s``)."""
        cpu0 = cpu1 = 0.0
        if self.wrk:
            base = [*self._prefix(), self.wrk, "-t1", f"-c{self.connections}", "--latency", "-H", f"Host: {host}"]
            if warmup > 0:
                subprocess.run([*base, f"-d{max(1, round(warmup))}s", url], capture_output=True, timeout=warmup + 60, check=True)
            cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
            done = subprocess.run([*base, f"-d{max(1, round(duration))}s", url], capture_output=True, text=True,
                                  timeout=duration + 60, check=True)
            cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
            result = parse_wrk(done.stdout)
        else:
            args = [*self._prefix(), sys.executable, str(BENCH_DIR / "pyload.py"), "--url", url,
                    "--host-header", host, "--connections", str(self.connections),
                    "--duration", str(duration), "--warmup", str(warmup)]
            cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
            done = subprocess.run(args, capture_output=True, text=True, timeout=warmup + duration + 60, check=True)
            # warm-up and run in one process: count the run's share of the CPU time
            cpu1 = cpu0 + ((cpu_seconds(server_pid) - cpu0) * duration / (duration + warmup) if server_pid else 0.0)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        if server_pid:
            result["cpu_s"] = round(cpu1 - cpu0, 3)
        if result["non_2xx"] or result["errors"]:
            raise RuntimeError(f"load run on {url} had {result['non_2xx']} non-2xx answers and {result['errors']} socket errors")
        return result


# --- data -----------------------------------------------------------------------------------


def text_bytes(rng: random.Random, size: int, head: str, line: Callable[[int], str], tail: str) -> bytes:
    """Text of exactly ``size`` bytes that looks like its file type."""
    parts = [head]
    length = len(head) + len(tail)
    i = 0
    while length < size:
        piece = line(i)
        parts.append(piece)
        length += len(piece)
        i += 1
    body = "".join(parts)[: max(0, size - len(tail))] + tail
    data = body.encode()
    assert len(data) == size, (len(data), size)
    return data


def site_files(rng: random.Random) -> dict[str, tuple[bytes, str]]:
    """The small published site: a 5 KB index.html, a 5 KB asset, zephyr-manifest.json."""
    html = text_bytes(
        rng, ASSET_SIZE, "<!doctype html><html><head><meta charset=\"utf-8\"><title>bench</title>"
        "<script type=\"module\" src=\"/assets/app.js\"></script></head><body>",
        lambda i: f"<div class=\"row r{i}\">{rng.getrandbits(64):016x}</div>\n", "</body></html>\n",
    )
    js = text_bytes(
        rng, ASSET_SIZE, "\"use strict\";\n",
        lambda i: f"export const v{i} = \"{rng.getrandbits(96):024x}\";\n", "export default 0;\n",
    )
    manifest = json.dumps({"version": "1.0.0", "remotes": {}, "dependencies": {}}).encode()
    return {"index.html": (html, "text/html; charset=utf-8"),
            "assets/app.js": (js, "text/javascript; charset=utf-8"),
            "zephyr-manifest.json": (manifest, "application/json; charset=utf-8")}


_UPLOAD_KINDS = (("assets", "js"), ("assets", "css"), ("assets", "js.map"), ("images", "png"),
                 ("fonts", "woff2"), ("images", "svg"), ("assets", "json"))


def build_files(seed: int, count: int, total: int, max_size: int = 4 * MiB) -> list[tuple[str, bytes]]:
    """``count`` files of random bytes whose sizes (log-normal, like a real build: many
    small chunks, a few big ones, each at most ``max_size``) add up to exactly ``total``."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0.0, 1.4) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [max(1, min(max_size, int(w * scale))) for w in weights]
    diff = total - sum(sizes)
    order = sorted(range(count), key=lambda i: sizes[i])
    i = 0
    while diff != 0:  # spread the rounding remainder, largest files first, within bounds
        j = order[-1 - (i % count)]
        step = max(-(sizes[j] - 1), min(max_size - sizes[j], diff))
        sizes[j] += step
        diff -= step
        i += 1
    files = []
    for n, size in enumerate(sizes):
        folder, ext = _UPLOAD_KINDS[n % len(_UPLOAD_KINDS)]
        files.append((f"{folder}/chunk-{n:04d}-{rng.getrandbits(32):08x}.{ext}", rng.randbytes(size)))
    assert sum(len(b) for _, b in files) == total
    return files


class UploadFile:
    __slots__ = ("filename", "body", "hash")

    def __init__(self, filename: str, body: bytes):
        self.filename = filename
        self.body = body
        self.hash = asset_hash(body, filename)


def round_files(base: list[tuple[str, bytes]], tag: str) -> list[UploadFile]:
    """The build under a per-round folder: same bytes, new names, so new hashes (neither
    side may skip an object it already has)."""
    return [UploadFile(f"{tag}/{name}", body) for name, body in base]


# --- worker I/O -----------------------------------------------------------------------------


class Worker:
    def __init__(self, port: int, token: str):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Host": EDGE_HOST, "can_write_jwt": self.token, **extra}

    async def upload_file(self, session: aiohttp.ClientSession, f: UploadFile) -> tuple[int, str]:
        async with session.post(
            f"{self.base}/upload", params={"type": "file", "hash": f.hash, "filename": f.filename}, data=f.body,
            headers=self.headers(**{"Content-Type": "application/octet-stream", "x-file-size": str(len(f.body)),
                                    "x-file-path": f.filename}),
        ) as answer:
            return answer.status, await answer.text()

    async def upload_snapshot(self, session: aiohttp.ClientSession, snapshot: dict[str, Any]) -> tuple[int, str]:
        async with session.post(
            f"{self.base}/upload", params={"type": "snapshot", "skip_assets": "true"},
            data=json.dumps(snapshot).encode(), headers=self.headers(**{"Content-Type": "application/json"}),
        ) as answer:
            return answer.status, await answer.text()

    async def hash_list(self, session: aiohttp.ClientSession) -> set[str] | None:
        async with session.get(f"{self.base}/__get_application_hash_list__",
                               params={"application_uid": APP_UID}, headers={"Host": EDGE_HOST}) as answer:
            if answer.status != 200:
                return None
            return set((await answer.json()).get("hashes", []))

    async def hash_list_safe(self) -> set[str] | None:
        """The app's hash list, or None when the route is missing or fails."""
        try:
            async with client_session(2) as session:
                return await self.hash_list(session)
        except Exception:
            return None


def snapshot_json(snapshot_id: str, files: dict[str, UploadFile]) -> dict[str, Any]:
    def ext(path: str) -> str:
        name = path.rsplit("/", 1)[-1]
        return name[name.rfind("."):] if "." in name else ""

    return {
        "application_uid": APP_UID, "snapshot_id": snapshot_id, "version": "1.0.0",
        "domain": EDGE_HOST, "target": "web", "type": "csr", "entrypoint": "index.html",
        "uid": {"build": snapshot_id.split(".", 1)[0], "app_name": "bench-app", "repo": "zephyr-edge", "org": "bench"},
        "git": {"branch": "main", "commit": "0" * 40},
        "creator": {"name": "bench", "email": "bench@example.invalid"},
        "createdAt": int(time.time() * 1000),
        "assets": {path: {"path": path, "extname": ext(path), "hash": f.hash, "size": len(f.body)}
                   for path, f in files.items()},
    }


def client_session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def publish(worker: Worker, snapshot_id: str, files: dict[str, UploadFile], env: dict[str, str],
                  allow_direct: bool) -> tuple[str, str]:
    """Upload ``files`` and their snapshot through the worker's routes; return the version
    host and how it was published. When the upload route is not there yet
    (404/405/501) and ``allow_direct``, write storage and KV directly with the project's
    own backends instead (the same records the routes would write)."""
    async with client_session(UPLOAD_CONCURRENCY) as session:
        first = next(iter(files.values()))
        status, text = await worker.upload_file(session, first)
        if status in (404, 405, 501) and allow_direct:
            return await publish_direct(snapshot_id, files, env), "direct (upload route missing)"
        if not 200 <= status < 300:
            raise RuntimeError(f"upload of {first.filename} answered {status}: {text[:300]}")
        for f in list(files.values())[1:]:
            status, text = await worker.upload_file(session, f)
            if not 200 <= status < 300:
                raise RuntimeError(f"upload of {f.filename} answered {status}: {text[:300]}")
        status, text = await worker.upload_snapshot(session, snapshot_json(snapshot_id, files))
        if status != 200:
            raise RuntimeError(f"snapshot upload answered {status}: {text[:300]}")
        url = json.loads(text)["urls"]["version"]
    host = hostnames.normalize_host(url.split("://", 1)[-1].split("/", 1)[0])
    expected = hostnames.version_host(snapshot_id, EDGE_HOST, "-")
    if host != expected:
        raise RuntimeError(f"snapshot answered version URL {url!r}; expected host {expected!r}")
    return host, "upload routes"


async def publish_direct(snapshot_id: str, files: dict[str, UploadFile], env: dict[str, str]) -> str:
    from zephyr_edge import plugins
    from zephyr_edge.settings import config as cfg
    from zephyr_edge.catalog.records import Catalog
    from zephyr_edge.domain.snapshot import parse_snapshot

    conf = cfg.load(env)
    host = hostnames.version_host(snapshot_id, EDGE_HOST, "-")
    async with plugins.open_storage(conf) as storage, plugins.open_kv(conf) as kv:
        catalog = Catalog(kv, conf.worker)
        for f in files.values():
            await storage.put_bytes(storage_key(f.hash), f.body)
            await catalog.add_hash(APP_UID, f.hash, f.name)
        snapshot = parse_snapshot(json.dumps(snapshot_json(snapshot_id, files)).encode(), APP_UID)
        await catalog.save_snapshot(snapshot, host)
    return host


# --- uploads (b) ----------------------------------------------------------------------------


async def _run_pool(items: list[UploadFile], concurrency: int, send: Callable[[UploadFile], Any]) -> dict[str, Any]:
    queue: asyncio.Queue[UploadFile] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    errors: list[str] = []

    async def lane() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                problem = await send(item)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                errors.append(f"{item.filename}: {problem}")

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(concurrency))), PHASE_TIMEOUT_S)
    seconds = time.perf_counter() - start
    total = sum(len(i.body) for i in items)
    return {
        "files": len(items), "bytes": total, "seconds": round(seconds, 3),
        "mb_per_s": round(total / MB / seconds, 3), "files_per_s": round(len(items) / seconds, 1),
        "errors": len(errors), "first_error": errors[0] if errors else None,
    }


async def upload_worker(worker: Worker, items: list[UploadFile], warm: list[UploadFile]) -> dict[str, Any]:
    async with client_session(UPLOAD_CONCURRENCY) as session:

        async def send(f: UploadFile) -> str | None:
            status, text = await worker.upload_file(session, f)
            return None if 200 <= status < 300 else f"HTTP {status}: {text[:200]}"

        await _run_pool(warm, UPLOAD_CONCURRENCY, send)  # connections up, not timed
        return await _run_pool(items, UPLOAD_CONCURRENCY, send)


def s3_client(endpoint: str, pool: int):
    from zephyr_edge.storage.s3 import S3Options, client_config

    options = S3Options(endpoint=endpoint, access_key_id=S3_ACCESS_KEY, secret_access_key=S3_SECRET_KEY,
                        bucket=BUCKET, region=S3_REGION, max_sockets=pool)
    return get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=S3_REGION, aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY, config=client_config(options, options.upload_request_timeout_ms),
    )


async def upload_s3(endpoint: str, items: list[UploadFile], warm: list[UploadFile], head_first: bool = False) -> dict[str, Any]:
    """PutObject of every item; with ``head_first``, a HeadObject before each (the S3
    traffic the worker's upload route makes: a diagnostic, not the baseline)."""
    async with s3_client(endpoint, UPLOAD_CONCURRENCY) as client:
        client.meta.events.unregister("before-call.s3", add_expect_header)  # as the worker does

        async def send(f: UploadFile) -> None:
            key = storage_key(f.hash)
            if head_first:
                try:
                    await client.head_object(Bucket=BUCKET, Key=key)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                        raise
            await client.put_object(Bucket=BUCKET, Key=key, Body=f.body, ContentLength=len(f.body))

        await _run_pool(warm, UPLOAD_CONCURRENCY, send)
        return await _run_pool(items, UPLOAD_CONCURRENCY, send)


async def create_bucket(endpoint: str) -> None:
    async with s3_client(endpoint, 2) as client:
        await client.create_bucket(Bucket=BUCKET)


async def read_back(worker: Worker, host: str, items: list[UploadFile]) -> dict[str, Any]:
    """GET every uploaded file once through the serving path and compare the bytes."""
    async with client_session(UPLOAD_CONCURRENCY) as session:

        async def send(f: UploadFile) -> str | None:
            async with session.get(f"{worker.base}/{f.filename}", headers={"Host": host}) as answer:
                body = await answer.read()
            if answer.status != 200:
                return f"HTTP {answer.status}"
            if hashlib.sha256(body).digest() != hashlib.sha256(f.body).digest():
                return f"served {len(body)} bytes that differ from the {len(f.body)} uploaded"
            return None

        return await _run_pool(items, UPLOAD_CONCURRENCY, send)


# --- profiling ------------------------------------------------------------------------------


def _component(frame: str) -> str:
    m = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    path = m.group(1) if m else frame
    for marker, name in (("zephyr_edge/", "zephyr_edge"), ("aiohttp/", "aiohttp"), ("aiobotocore/", "aiobotocore"),
                         ("botocore/", "botocore"), ("coredis/", "coredis"), ("multidict/", "multidict"),
                         ("yarl/", "yarl"), ("asyncio/", "asyncio"), ("logging/", "logging"), ("json/", "json"),
                         ("urllib3/", "urllib3"), ("jwt/", "pyjwt"), ("attr/", "attrs")):
        if marker in path:
            return name
    return "other: " + path.rsplit("/", 1)[-1]


def summarize_profile(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function and self share per package, from py-spy's
    ``--format raw`` (collapsed stacks, ``--function`` so frames are functions)."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    comp_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        comp_n[_component(frames[-1])] += n
        for f in set(frames):
            incl_n[f] += n

    def share(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in counter.most_common(k)] if total else []

    ours = collections.Counter({f: n for f, n in incl_n.items() if "zephyr_edge/" in f or "(s3.py" in f})
    return {"samples": total, "self": share(self_n, top), "inclusive": share(incl_n, top * 2),
            "by_package": share(comp_n, 12), "zephyr_edge_inclusive": share(ours, top)}


def print_profile(title: str, summary: dict[str, Any]) -> None:
    print(f"\n--- profile: {title} ({summary['samples']} samples, CPU time only) ---")
    print("self time by package:")
    for name, pct in summary["by_package"]:
        print(f"  {pct:5.1f}%  {name}")
    print("self time by function:")
    for name, pct in summary["self"]:
        print(f"  {pct:5.1f}%  {name}")
    print("inclusive time by function:")
    for name, pct in summary["inclusive"]:
        print(f"  {pct:5.1f}%  {name}")
    print("inclusive time of zephyr_edge functions:")
    for name, pct in summary["zephyr_edge_inclusive"]:
        print(f"  {pct:5.1f}%  {name}")


class Profiler:
    """py-spy recording one process until stopped (SIGINT makes it write its output).

    ``--gil``: only samples of the thread holding the GIL, i.e. where the (GIL-bound)
    worker spends its CPU; idle threads and the event loop's wait in epoll drop out."""

    def __init__(self, pid: int, out: Path, rate: int = 200):
        self.out = out
        self.proc = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--rate", str(rate), "--function", "--gil", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_preexec(None),
        )
        time.sleep(1.0)  # attached

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("py-spy did not stop") from None
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        return self.out


def py_spy_available() -> bool:
    return bool(shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists())


# --- the run --------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def median(values: list[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="zebench-"))
        self.results: dict[str, Any] = {"bench": "zephyr_edge", "mode": "quick" if args.quick else "full"}
        self.failures: list[str] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = set(cpus)
        self.server_cpus = {cpus[0]} if len(cpus) >= 2 else None
        self.load_cpus = set(cpus[1:]) if len(cpus) >= 2 else None
        self.monitor: RssMonitor | None = None
        self.sent_hashes: list[str] = []

    # services

    def start_services(self) -> None:
        t0 = time.perf_counter()
        moto_port = free_port()
        self.s3_endpoint = f"http://127.0.0.1:{moto_port}"
        moto = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                    self.tmp).start()
        redis_bin = shutil.which("redis-server")
        if not redis_bin:
            raise RuntimeError("redis-server is not on the PATH (apt-get install redis-server)")
        redis_port = free_port()
        redis_dir = self.tmp / "redis"
        redis_dir.mkdir()
        redis = Proc("redis", [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(redis_dir), "--daemonize", "no",
                               "--protected-mode", "no"], self.tmp).start()
        wait_for(lambda: http_status(self.s3_endpoint + "/moto-api/")[0] > 0, "moto server", moto)
        wait_for(lambda: redis_pong(redis_port), "redis-server", redis)
        asyncio.run(create_bucket(self.s3_endpoint))

        self.secret = "bench-" + os.urandom(16).hex()
        tag = f"{{zebench-{os.getpid()}-{os.urandom(3).hex()}}}"
        self.worker_env = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
        self.worker_env.update({
            "ZE_WORKER_JWT_SECRET": self.secret,
            "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
            "ZE_WORKER_PORT": str(free_port()),
            "ZE_WORKER_LOG_LEVEL": self.args.log_level,
            "ZE_WORKER_PUBLIC_URL": f"http://{EDGE_HOST}",
            "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:",
            "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
            "ZE_WORKER_STORAGE_BACKEND": "s3",
            "ZE_WORKER_S3_ENDPOINT": self.s3_endpoint,
            "ZE_WORKER_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "ZE_WORKER_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "ZE_WORKER_S3_BUCKET": BUCKET,
            "ZE_WORKER_S3_REGION": S3_REGION,
            "ZE_WORKER_KV_BACKEND": "redis",
            "ZE_WORKER_REDIS_HOST": "127.0.0.1",
            "ZE_WORKER_REDIS_PORT": str(redis_port),
            "ZE_WORKER_CACHE_SIZE_MB": str(self.args.cache_mb),
        })
        self.worker_env.pop("ZE_WORKER_CONFIG_JSON", None)
        self.worker_proc = Proc("worker", [sys.executable, "-m", "zephyr_edge", "serve"], self.tmp,
                                env=self.worker_env, cpus=self.server_cpus).start()
        self.worker = Worker(int(self.worker_env["ZE_WORKER_PORT"]),
                             tokens.mint(self.secret, APP_UID, ttl_s=6 * 3600))
        wait_for(lambda: http_status(self.worker.base + "/readyz")[0] == 200, "worker /readyz", self.worker_proc)
        self.monitor = RssMonitor(self.worker_proc.pid)
        self.monitor.start()
        self.results["startup_s"] = round(time.perf_counter() - t0, 1)

    def start_bare(self, files: dict[str, tuple[bytes, str]]) -> int:
        spec = {}
        for route, name in self.serve_routes():
            body, ctype = files[name]
            path = self.tmp / "bare" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            spec[route] = {"file": str(path), "content_type": ctype}
        spec_path = self.tmp / "bare-spec.json"
        spec_path.write_text(json.dumps(spec))
        port = free_port()
        bare = Proc("bare", [sys.executable, str(BENCH_DIR / "bare_server.py"), "--port", str(port),
                             "--spec", str(spec_path)], self.tmp, cpus=self.server_cpus).start()
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/")[0] > 0, "bare server", bare)
        self.bare_proc = bare
        return port

    def serve_routes(self) -> list[tuple[str, str]]:
        routes = [("/assets/app.js", "assets/app.js")]
        if not self.args.quick:
            routes.append(("/", "index.html"))
        return routes

    # phases

    def phase_serve(self) -> None:
        rng = random.Random(self.args.seed)
        site = site_files(rng)
        uploads = {name: UploadFile(name, body) for name, (body, _) in site.items()}
        snapshot_id = f"bench-1.{APP_UID}"
        host, how = asyncio.run(publish(self.worker, snapshot_id, uploads, self.worker_env, allow_direct=True))
        self.results["published_via"] = how
        bare_port = self.start_bare(site)
        for route, name in self.serve_routes():
            for label, url in (("worker", f"{self.worker.base}{route}"), ("bare", f"http://127.0.0.1:{bare_port}{route}")):
                status, body = http_status(url, {"Host": host})
                if status != 200 or body != site[name][0]:
                    raise RuntimeError(f"{label} GET {route} (Host {host}) answered {status} with "
                                       f"{len(body)} bytes; expected 200 and the {len(site[name][0])} published bytes")
        load = LoadGen(self.args.connections, self.load_cpus, force_python=self.args.python_loadgen)
        self.results["serve_setup"] = {
            "loadgen": load.name, "duration_s": self.args.duration, "warmup_s": self.args.warmup,
            "rounds": self.args.rounds, "connections": self.args.connections,
            "server_cpus": sorted(self.server_cpus) if self.server_cpus else "all",
            "loadgen_cpus": sorted(self.load_cpus) if self.load_cpus else "all",
            "version_host": host, "worker_log_level": self.args.log_level,
        }
        set_affinity(self.worker_proc.pid, self.server_cpus or self.all_cpus)
        serve: dict[str, Any] = {}
        assert self.monitor is not None
        self.monitor.begin("serve")
        try:
            for route, name in self.serve_routes():
                runs: dict[str, list[dict[str, Any]]] = {"worker": [], "bare": []}
                for r in range(self.args.rounds):
                    order = ("bare", "worker") if r % 2 == 0 else ("worker", "bare")
                    for side in order:
                        port = self.worker.port if side == "worker" else bare_port
                        pid = self.worker_proc.pid if side == "worker" else self.bare_proc.pid
                        # a full warm-up before a side's first run on a path, a short one after
                        warmup = self.args.warmup if r == 0 else min(self.args.warmup, 1.0)
                        result = load.run(f"http://127.0.0.1:{port}{route}", host, self.args.duration, warmup, pid)
                        cpu = result["cpu_s"]
                        result["requests"] = result.get("requests") or int(result["rps"] * self.args.duration)
                        runs[side].append(result)
                        print(f"  serve {route:16s} round {r + 1} {side:6s} {result['rps']:10.1f} req/s  "
                              f"{result['requests'] / cpu if cpu else 0:8.0f} req/CPU-s  "
                              f"p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms", flush=True)
                w = median([x["rps"] for x in runs["worker"]], 1)
                b = median([x["rps"] for x in runs["bare"]], 1)

                def per_cpu(rs: list[dict[str, Any]]) -> float | None:
                    cpu = sum(x["cpu_s"] for x in rs)
                    return round(sum(x["requests"] for x in rs) / cpu, 1) if cpu else None

                def mid(rs: list[dict[str, Any]], key: str) -> float | None:
                    values = [x[key] for x in rs if x.get(key) is not None]
                    return round(statistics.median(values), 2) if values else None

                serve[route] = {
                    "file": name, "bytes": len(site[name][0]),
                    "worker_rps": w, "bare_rps": b, "ratio": ratio(w, b), "target": TARGET_SERVE_RATIO,
                    "round_ratios": [ratio(a["rps"], c["rps"]) for a, c in zip(runs["worker"], runs["bare"])],
                    "worker_req_per_cpu_s": per_cpu(runs["worker"]), "bare_req_per_cpu_s": per_cpu(runs["bare"]),
                    "cpu_efficiency_ratio": ratio(per_cpu(runs["worker"]), per_cpu(runs["bare"])),
                    "worker_p50_ms": mid(runs["worker"], "p50_ms"), "bare_p50_ms": mid(runs["bare"], "p50_ms"),
                    "worker_p99_ms": mid(runs["worker"], "p99_ms"), "bare_p99_ms": mid(runs["bare"], "p99_ms"),
                }
        finally:
            self.monitor.end("serve")
            set_affinity(self.worker_proc.pid, self.all_cpus)
            self.results["serve"] = serve
        self.bare_port = bare_port
        self.serve_host = host
        self.serve_load = load

    def phase_upload(self) -> None:
        t0 = time.perf_counter()
        base = build_files(self.args.seed, self.args.files, self.args.total_mb * MB)
        sizes = sorted(len(b) for _, b in base)
        self.results["upload_setup"] = {
            "files": len(base), "bytes": sum(sizes), "concurrency": UPLOAD_CONCURRENCY, "rounds": self.args.upload_rounds,
            "size_min": sizes[0], "size_median": sizes[len(sizes) // 2], "size_max": sizes[-1],
            "client": "aiohttp (worker) / aiobotocore put_object (S3), both in bench/run.py",
        }
        sides = ["s3", "worker"] + (["s3_head_put"] if not self.args.no_diagnostics else [])
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        self.worker_uploaded: list[UploadFile] = []
        assert self.monitor is not None
        self.monitor.begin("upload")
        try:
            for r in range(self.args.upload_rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for side in order:
                    items = round_files(base, f"r{r + 1}-{side}")
                    warm = [UploadFile(f"warm/r{r + 1}-{side}-{i}.txt", os.urandom(512)) for i in range(UPLOAD_CONCURRENCY)]
                    if side == "worker":
                        cpu0 = cpu_seconds(self.worker_proc.pid)
                        result = asyncio.run(upload_worker(self.worker, items, warm))
                        result["worker_cpu_s"] = round(cpu_seconds(self.worker_proc.pid) - cpu0, 2)
                        self.worker_uploaded.extend(items)
                    else:
                        result = asyncio.run(upload_s3(self.s3_endpoint, items, warm, head_first=side == "s3_head_put"))
                    runs[side].append(result)
                    print(f"  upload round {r + 1} {side:11s} {result['mb_per_s']:8.2f} MB/s {result['files_per_s']:8.1f} files/s"
                          f"  ({result['seconds']} s, {result['errors']} errors)", flush=True)
                    if result["errors"]:
                        raise RuntimeError(f"{side} upload: {result['errors']} failed, first: {result['first_error']}")
        finally:
            self.monitor.end("upload")
        listed = asyncio.run(self.worker.hash_list_safe())
        missing = None if listed is None else sum(1 for f in self.worker_uploaded if f.hash not in listed)
        med = {side: (median([x["mb_per_s"] for x in rs]), median([x["files_per_s"] for x in rs], 1))
               for side, rs in runs.items()}
        self.results["upload"] = {
            "worker_mb_s": med["worker"][0], "s3_mb_s": med["s3"][0], "ratio_mb_s": ratio(med["worker"][0], med["s3"][0]),
            "worker_files_s": med["worker"][1], "s3_files_s": med["s3"][1],
            "ratio_files_s": ratio(med["worker"][1], med["s3"][1]), "target": TARGET_UPLOAD_RATIO,
            "round_ratios": [ratio(a["mb_per_s"], c["mb_per_s"]) for a, c in zip(runs["worker"], runs["s3"])],
            "worker_seconds": [x["seconds"] for x in runs["worker"]], "s3_seconds": [x["seconds"] for x in runs["s3"]],
            "worker_cpu_ms_per_file": round(1000 * statistics.median(
                [x["worker_cpu_s"] / x["files"] for x in runs["worker"]]), 2),
            "hash_list_missing": missing,
        }
        if "s3_head_put" in med:
            self.results["upload"]["diagnostic_s3_head_put"] = {
                "mb_s": med["s3_head_put"][0], "files_s": med["s3_head_put"][1],
                "ratio_to_s3": ratio(med["s3_head_put"][0], med["s3"][0]),
                "worker_ratio_to_it": ratio(med["worker"][0], med["s3_head_put"][0]),
                "seconds": [x["seconds"] for x in runs["s3_head_put"]],
            }
        self.results["upload_setup"]["phase_s"] = round(time.perf_counter() - t0, 1)

    def phase_read_back(self) -> None:
        """Publish what the worker took in (b) and GET every file once: bytes checked, and
        the in-process cache filled (RSS figure 'fill')."""
        files = {f.filename: f for f in self.worker_uploaded}
        host = asyncio.run(self._publish_snapshot_only(f"bench-2.{APP_UID}", files))
        assert self.monitor is not None
        self.monitor.begin("fill")
        try:
            result = asyncio.run(read_back(self.worker, host, list(files.values())))
        finally:
            self.monitor.end("fill")
        self.results["read_back"] = result
        print(f"  read-back {result['files']} files {result['mb_per_s']:.2f} MB/s ({result['errors']} errors)", flush=True)
        if result["errors"]:
            raise RuntimeError(f"read-back: {result['errors']} files failed, first: {result['first_error']}")

    async def _publish_snapshot_only(self, snapshot_id: str, files: dict[str, UploadFile]) -> str:
        async with client_session(2) as session:
            status, text = await self.worker.upload_snapshot(session, snapshot_json(snapshot_id, files))
        if status != 200:
            raise RuntimeError(f"snapshot upload answered {status}: {text[:300]}")
        url = json.loads(text)["urls"]["version"]
        return url.split("://", 1)[-1].split("/", 1)[0]

    def phase_profile(self) -> None:
        if not py_spy_available():
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out_dir = Path(self.args.profile_dir or (self.tmp / "profiles"))
        out_dir.mkdir(parents=True, exist_ok=True)
        profiles: dict[str, Any] = {}
        pid = self.worker_proc.pid
        if "serve" in self.results and getattr(self, "serve_host", None):
            set_affinity(pid, self.server_cpus or self.all_cpus)
            prof = Profiler(pid, out_dir / "serve.txt")
            try:
                self.serve_load.run(f"{self.worker.base}/assets/app.js", self.serve_host, self.args.duration, 0)
            finally:
                path = prof.stop()
                set_affinity(pid, self.all_cpus)
            profiles["serve"] = summarize_profile(path)
            profiles["serve"]["raw"] = str(path)
            print_profile("worker, warm GET /assets/app.js", profiles["serve"])
        if "upload" in self.results:
            base = build_files(self.args.seed, self.args.files, self.args.total_mb * MB)
            items = round_files(base, "profile-worker")
            prof = Profiler(pid, out_dir / "upload.txt")
            try:
                asyncio.run(upload_worker(self.worker, items, []))
            finally:
                path = prof.stop()
            profiles["upload"] = summarize_profile(path)
            profiles["upload"]["raw"] = str(path)
            print_profile("worker, POST /upload?type=file", profiles["upload"])
        self.results["profile"] = {k: {"samples": v["samples"], "raw": v["raw"], "by_package": v["by_package"],
                                       "self": v["self"][:10], "zephyr_edge_inclusive": v["zephyr_edge_inclusive"][:10]}
                                   for k, v in profiles.items()}

    # reporting

    def rss_figures(self) -> None:
        if self.monitor is None:
            return
        limit = self.args.cache_mb + RSS_ALLOWANCE_MIB
        phases = {p: self.monitor.peak_mib(p) for p in ("startup", "serve", "upload", "fill")}
        measured = [v for p, v in phases.items() if p in ("serve", "upload") and v is not None]
        self.results["rss"] = {
            "peak_mib": max(measured) if measured else None,
            "peak_by_phase_mib": phases,
            "end_of_phase_mib": {p: round(v / 1024, 1) for p, v in self.monitor.end_rss_kb.items()},
            "cache_size_mb": self.args.cache_mb, "limit_mib": limit,
            "method": "VmHWM reset per phase via clear_refs + VmRSS poll 20 ms"
            if self.monitor.hwm_reset_works else "VmRSS poll 20 ms (clear_refs not permitted)",
        }

    def report(self) -> None:
        r = self.results
        r["environment"] = {
            "cpus": len(self.all_cpus), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "zephyr_edge": ZE_VERSION, "kernel": platform.release(),
        }
        checks: dict[str, bool | None] = {}
        rows: list[tuple[str, str, str, str, str, str]] = []

        def fmt(v: Any, spec: str = ".1f") -> str:
            return "-" if v is None else format(v, spec)

        for route, s in r.get("serve", {}).items():
            ok = s["ratio"] is not None and s["ratio"] >= TARGET_SERVE_RATIO
            checks[f"serve {route}"] = ok
            rows.append((f"(a) GET {route} ({s['file']}, {s['bytes']} B) req/s", fmt(s["worker_rps"]),
                         fmt(s["bare_rps"]) + " bare", fmt(s["ratio"], ".3f"), f">= {TARGET_SERVE_RATIO}",
                         "ok" if ok else "MISS"))
            rows.append(("    requests per CPU-second of the server", fmt(s["worker_req_per_cpu_s"], ".0f"),
                         fmt(s["bare_req_per_cpu_s"], ".0f") + " bare", fmt(s["cpu_efficiency_ratio"], ".3f"),
                         "(info)", ""))
            rows.append(("    latency p50 / p99 ms", f"{fmt(s['worker_p50_ms'], '.2f')} / {fmt(s['worker_p99_ms'], '.2f')}",
                         f"{fmt(s['bare_p50_ms'], '.2f')} / {fmt(s['bare_p99_ms'], '.2f')}", "", "", ""))
        u = r.get("upload")
        if u:
            ok = u["ratio_mb_s"] is not None and u["ratio_mb_s"] >= TARGET_UPLOAD_RATIO
            checks["upload"] = ok
            setup = r.get("upload_setup", {})
            label = f"(b) upload {setup.get('files')} files / {setup.get('bytes', 0) / MB:g} MB, MB/s"
            rows.append((label, fmt(u["worker_mb_s"], ".2f"), fmt(u["s3_mb_s"], ".2f") + " S3",
                         fmt(u["ratio_mb_s"], ".3f"), f">= {TARGET_UPLOAD_RATIO}", "ok" if ok else "MISS"))
            rows.append(("    files/s", fmt(u["worker_files_s"]), fmt(u["s3_files_s"]) + " S3",
                         fmt(u["ratio_files_s"], ".3f"), "", ""))
            d = u.get("diagnostic_s3_head_put")
            if d:
                rows.append(("    diagnostic: S3 HEAD+PUT per file, MB/s", fmt(u["worker_mb_s"], ".2f"),
                             fmt(d["mb_s"], ".2f") + " S3 H+P", fmt(d["worker_ratio_to_it"], ".3f"),
                             "(info)", ""))
        rss = r.get("rss")
        if rss:
            peak = rss["peak_mib"]
            ok = peak is not None and peak <= rss["limit_mib"]
            checks["rss"] = ok if peak is not None else None
            rows.append(("(c) worker peak RSS MiB during (a)+(b)", fmt(peak), f"{rss['limit_mib']} limit",
                         fmt(ratio(peak, rss["limit_mib"]), ".3f"), "<= 1.0", "ok" if ok else ("MISS" if peak else "-")))
            for phase, v in rss["peak_by_phase_mib"].items():
                if v is not None:
                    rows.append((f"    peak in {phase}", fmt(v), "", "", "", ""))
        rb = r.get("read_back")
        if rb:
            rows.append(("read-back of the uploads via serving, MB/s", fmt(rb["mb_per_s"], ".2f"), "", "", "",
                         "ok" if not rb["errors"] else "ERR"))
        r["targets_met"] = checks
        r["failures"] = self.failures
        header = ("figure", "worker", "baseline", "ratio", "target", "")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(6)]
        print()
        print("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)))
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)))
        for failure in self.failures:
            print(f"FAILED: {failure}")
        print(json.dumps(r, separators=(",", ":")))
        if self.args.json_out:
            Path(self.args.json_out).write_text(json.dumps(r, indent=2) + "\n")

    def run(self) -> int:
        only = set(self.args.only.split(",")) if self.args.only else {"serve", "upload", "readback"}
        try:
            print(f"zephyr_edge bench ({self.results['mode']}): starting services in {self.tmp}", flush=True)
            self.start_services()
            phases: list[tuple[str, Callable[[], None]]] = [
                ("serve", self.phase_serve), ("upload", self.phase_upload), ("readback", self.phase_read_back)]
            if self.args.profile:
                phases.append(("profile", self.phase_profile))
                only.add("profile")
            for name, phase in phases:
                if name not in only:
                    continue
                if name == "readback" and not getattr(self, "worker_uploaded", None):
                    continue
                print(f"phase {name}", flush=True)
                try:
                    phase()
                except Exception as exc:
                    self.failures.append(f"{name}: {exc}")
                    print(f"phase {name} failed: {exc}", file=sys.stderr, flush=True)
                    if self.args.verbose:
                        traceback.print_exc()
                    if not self.worker_proc.alive():
                        print(f"worker exited:\n{self.worker_proc.tail()}", file=sys.stderr)
                        break
        except Exception as exc:
            self.failures.append(f"setup: {exc}")
            print(f"setup failed: {exc}", file=sys.stderr, flush=True)
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if getattr(self, "worker_proc", None) is not None and self.worker_proc.alive():
                self.results["worker_log_lines"] = sum(1 for _ in open(self.worker_proc.log_path, "rb"))
            self.rss_figures()
            Proc.stop_all()
            if self.args.keep:
                print(f"logs kept in {self.tmp}", file=sys.stderr)
            elif not (self.args.profile and not self.args.profile_dir):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                shutil.rmtree(self.tmp / "redis", ignore_errors=True)
        self.report()
        if self.failures:
            return 1
        if self.args.strict and not all(v for v in self.results["targets_met"].values() if v is not None):
            return 3
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="zephyr_edge benchmark (see the module docstring and docs/performance.md)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds; asset route only (about 2 min)")
    p.add_argument("--rounds", type=int, help="interleaved serve rounds per side (default 5, quick 2)")
    p.add_argument("--upload-rounds", type=int, help="interleaved upload rounds per side (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measured load run (default 5, quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load before each run (default 2, quick 1)")
    p.add_argument("--connections", type=int, default=50, help="load generator connections (default 50)")
    p.add_argument("--files", type=int, default=1000, help="files of the uploaded build (default 1000)")
    p.add_argument("--total-mb", type=int, default=20, help="size of the uploaded build in MB of 10^6 bytes (default 20)")
    p.add_argument("--cache-mb", type=int, default=128, help="ZE_WORKER_CACHE_SIZE_MB of the worker (default 128)")
    p.add_argument("--log-level", default="info", help="ZE_WORKER_LOG_LEVEL of the worker (default info)")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--only", help="comma-separated phases: serve,upload,readback")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the diagnostic S3 HEAD+PUT upload run (what the worker's route sends to S3)")
    p.add_argument("--python-loadgen", action="store_true", help="use bench/pyload.py even when wrk is installed")
    p.add_argument("--profile", action="store_true", help="afterwards, py-spy the worker in one extra serve and upload run")
    p.add_argument("--profile-dir", help="where to keep py-spy's raw output (default: a temporary folder, kept)")
    p.add_argument("--json-out", help="also write the figures to this file")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (service logs)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.upload_rounds = args.upload_rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    return args


def main() -> int:
    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(parse_args())
    try:
        return bench.run()
    finally:
        Proc.stop_all()


if __name__ == "__main__":
    sys.exit(main())
