"""``GET /healthz`` (liveness, no I/O) and ``GET /readyz`` (readiness, bounded).

``/readyz`` pings storage and KV concurrently and answers within the readiness timeout
(``ZE_WORKER_READINESS_TIMEOUT_MS``, capped at :data:`MAX_READINESS_TIMEOUT_S`) whatever the
backends do: a ping still running then is reported as timed out.

Storage read/write access is not tested per request (a write per kubelet probe would be
wasteful): a background task puts a small probe object at ``_probe/<instance id>``, reads
it back and deletes it, at startup and then every
``ZE_WORKER_READINESS_WRITE_CHECK_INTERVAL_MS`` (every :data:`FAILED_RECHECK_S` at most
while it fails, so that a backend coming back is noticed quickly). Its last result is part
of the storage check.

Answers: 200 ``{"status": "ready", "checks": {"storage": {"ok": true, ...}, "kv": {...}}}``
or 503 ``{"status": "not_ready", "failing": [...], "checks": {...}}`` where each failing
check says why (``error``; ``timed_out: true`` for a timeout). Error texts come from the
backends, which promise never to include secrets; configured secret values are masked
again here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import attrs
from aiohttp import web

from zephyr_edge.errors import BackendError
from zephyr_edge.http import answers
from zephyr_edge.http.appkeys import CONFIG_KEY, KV_KEY, REDACTOR_KEY, STORAGE_KEY
from zephyr_edge.settings.redaction import Redactor
from zephyr_edge.storage.base import Storage

log = logging.getLogger(__name__)

#: Hard upper bound of one ``/readyz`` answer, whatever the configuration says.
MAX_READINESS_TIMEOUT_S = 2.0
#: Bound of one storage write check (put + get + delete).
WRITE_CHECK_TIMEOUT_S = 10.0
#: Bound of the best-effort removal of a probe object after a failed check.
PROBE_CLEANUP_TIMEOUT_S = 1.0
#: Re-check interval while the write check fails (if shorter than the configured one).
FAILED_RECHECK_S = 5.0
#: Bound of the wait for the background task at shutdown.
STOP_TIMEOUT_S = 5.0
#: Storage key prefix of the write-check probe objects.
PROBE_PREFIX = "_probe/"
PROBE_SIZE = 32


@attrs.frozen
class CheckResult:
    """Outcome of one check of one component."""

    ok: bool
    duration_ms: float
    error: str | None = None
    timed_out: bool = False
    at: float = attrs.field(factory=time.time)

    def to_json(self, redactor: Redactor | None = None) -> dict[str, Any]:
        """The result as shown by ``/readyz`` (secrets masked by ``redactor``)."""
        out: dict[str, Any] = {"ok": self.ok, "duration_ms": round(self.duration_ms, 1)}
        if not self.ok:
            error = self.error or "failed"
            out["error"] = redactor.text(error) if redactor is not None else error
            if self.timed_out:
                out["timed_out"] = True
        return out


class Readiness:
    """Readiness state of one application: the last storage write-check result."""

    def __init__(self, instance_id: str | None = None):
        self.instance_id = instance_id or uuid.uuid4().hex
        self.write_check: CheckResult | None = None
        self.first_check_done = asyncio.Event()

    @property
    def probe_key(self) -> str:
        return PROBE_PREFIX + self.instance_id

    def record(self, result: CheckResult) -> None:
        previous, self.write_check = self.write_check, result
        self.first_check_done.set()
        fields: dict[str, Any] = {"readiness.duration_ms": round(result.duration_ms, 1)}
        if not result.ok:
            fields["error"] = result.error
        if not result.ok and (previous is None or previous.ok):
            log.warning("Storage write check failed", extra={"fields": fields})
        elif result.ok and previous is not None and not previous.ok:
            log.info("Storage write check passes again", extra={"fields": fields})
        else:
            log.debug("Storage write check %s", "passed" if result.ok else "failed", extra={"fields": fields})


#: Readiness state: the last storage write-check result (set by the health cleanup context).
READINESS_KEY = web.AppKey("readiness", Readiness)


def readiness_timeout_s(timeout_ms: int) -> float:
    """The configured readiness timeout in seconds, capped at :data:`MAX_READINESS_TIMEOUT_S`."""
    return max(0.001, min(timeout_ms / 1000, MAX_READINESS_TIMEOUT_S))


def _failure(exc: BaseException, what: str) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    log.error("%s raised an unexpected %s", what, type(exc).__name__, exc_info=exc)
    return f"{what} raised an unexpected {type(exc).__name__}"


def _forget(task: asyncio.Task[Any]) -> None:
    """Cancel an abandoned task and consume its outcome (no "never retrieved" warning)."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def run_checks(checks: dict[str, Awaitable[Any]], timeout: float) -> dict[str, CheckResult]:
    """Run ``checks`` concurrently; answer within ``timeout`` even if one never returns."""
    started = time.monotonic()
    finished: dict[str, float] = {}
    tasks = {name: asyncio.ensure_future(aw) for name, aw in checks.items()}
    for name, task in tasks.items():
        task.add_done_callback(lambda _t, name=name: finished.setdefault(name, time.monotonic()))
    try:
        await asyncio.wait(tasks.values(), timeout=timeout)
    finally:
        for task in tasks.values():
            if not task.done():
                _forget(task)
    results: dict[str, CheckResult] = {}
    for name, task in tasks.items():
        elapsed = (finished.get(name, time.monotonic()) - started) * 1000
        if not task.done() or name not in finished:
            results[name] = CheckResult(False, elapsed, f"{name} ping timed out after {timeout * 1000:.0f} ms", True)
        elif task.cancelled():
            results[name] = CheckResult(False, elapsed, f"{name} ping was cancelled")
        elif (exc := task.exception()) is not None:
            results[name] = CheckResult(False, elapsed, _failure(exc, f"{name} ping"))
        else:
            results[name] = CheckResult(True, elapsed)
    return results


async def write_check(storage: Storage, key: str, timeout: float | None = None) -> CheckResult:
    """Put a small random object at ``key``, read it back, delete it; never raises.

    Bounded by ``timeout`` (default :data:`WRITE_CHECK_TIMEOUT_S`).
    """
    timeout = WRITE_CHECK_TIMEOUT_S if timeout is None else timeout
    started = time.monotonic()
    data = os.urandom(PROBE_SIZE)
    written = False
    try:
        async with asyncio.timeout(timeout):
            written = True
            await storage.put_bytes(key, data)
            blob = await storage.get(key)
            if await blob.read() != data:
                raise BackendError(storage.name, "write check read back different bytes")
            await storage.delete(key)
            written = False
        return CheckResult(True, (time.monotonic() - started) * 1000)
    except TimeoutError:
        error, timed_out = f"storage write check timed out after {timeout * 1000:.0f} ms", True
    except Exception as exc:
        error, timed_out = f"storage write check failed: {_failure(exc, 'storage write check')}", False
    if written:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(PROBE_CLEANUP_TIMEOUT_S):
                await storage.delete(key)
    return CheckResult(False, (time.monotonic() - started) * 1000, error, timed_out)


async def _write_check_loop(storage: Storage, state: Readiness, interval_s: float) -> None:
    """Check storage writes now and then every ``interval_s`` (faster while failing)."""
    while True:
        result = await write_check(storage, state.probe_key)
        state.record(result)
        await asyncio.sleep(interval_s if result.ok else min(interval_s, FAILED_RECHECK_S))


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the storage write check in the background for the app's lifetime.

    Startup waits (at most the readiness timeout) for the first result, so that a worker
    whose storage works is ready as soon as it listens.
    """
    worker = app[CONFIG_KEY].worker
    state = Readiness()
    app[READINESS_KEY] = state
    interval_s = max(worker.readiness_write_check_interval_ms, 1) / 1000
    task = asyncio.create_task(_write_check_loop(app[STORAGE_KEY], state, interval_s), name="storage-write-check")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(readiness_timeout_s(worker.readiness_timeout_ms)):
            await state.first_check_done.wait()
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=STOP_TIMEOUT_S)


def _iso(epoch: float) -> str:
    stamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process runs and its event loop answers. No I/O."""
    return answers.ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: storage and KV answer (and the last storage write check passed)."""
    app = request.app
    config, state, redactor = app[CONFIG_KEY], app[READINESS_KEY], app[REDACTOR_KEY]
    timeout = readiness_timeout_s(config.worker.readiness_timeout_ms)
    pings = await run_checks({"storage": app[STORAGE_KEY].ping(), "kv": app[KV_KEY].ping()}, timeout)

    storage = pings["storage"].to_json(redactor)
    storage["backend"] = config.storage.name
    last = state.write_check
    if last is None:
        write = {"ok": False, "error": "storage write check has not completed yet"}
    else:
        write = last.to_json(redactor) | {"checked_at": _iso(last.at)}
    storage["write_check"] = write
    if storage["ok"] and not write["ok"]:
        storage["ok"] = False
        storage["error"] = write["error"]
        if write.get("timed_out"):
            storage["timed_out"] = True
    kv = pings["kv"].to_json(redactor) | {"backend": config.kv.name}

    checks = {"storage": storage, "kv": kv}
    failing = [name for name, check in checks.items() if not check["ok"]]
    body: dict[str, Any] = {"status": "not_ready" if failing else "ready"}
    if failing:
        body["failing"] = failing
    body["checks"] = checks
    return answers.ok(body, status=503 if failing else 200)


def setup(app: web.Application) -> None:
    """Add the health routes and the background write check to ``app``."""
    app.cleanup_ctx.append(readiness_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
