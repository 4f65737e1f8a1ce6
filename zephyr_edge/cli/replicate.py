"""``zephyr-edge replicate``: catch a region up by hand, or show the replication status.

``--resync URL`` opens this region's backends (configuration as for ``serve``), compares
every application with the region at ``URL`` and sends whatever it lacks (one
:func:`~.antientropy.reconcile` pass, ``ZE_WORKER_REPLICATION_CONCURRENCY`` requests at
once). Requests are signed with ``ZE_WORKER_JWT_SECRET`` (the target's must be the same)
as ``ZE_WORKER_REPLICA_NAME``, or as :data:`DEFAULT_SOURCE` when it is unset (a receiver
refuses its own name). Progress: a one-line bar on stderr when stderr is a terminal, JSON
log lines on stderr otherwise (at most one per :data:`PROGRESS_EVERY_S`, and one per
application done); the summary goes to stdout as one JSON object.

``--status`` prints the ``/replicationz`` document of this region, read from its KV.

``--forget URL`` drops what this region's outbox keeps for a region taken out of
``ZE_WORKER_REPLICAS_URLS`` (refused while it is still configured) and prints
``{"target", "dropped_entries"}``.

Exit codes: 0 everything sent, 1 errors remain (or the backends failed), 2 bad
configuration or URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlsplit

from zephyr_edge.cli import exits
from zephyr_edge.settings.fields import Config, LogLevel
from zephyr_edge.errors import ZephyrError
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.replication import antientropy, status
from zephyr_edge.replication.feature import client_factory
from zephyr_edge.replication.outbox import Outbox, target_name
from zephyr_edge.settings.redaction import without_userinfo
from zephyr_edge import plugins

log = logging.getLogger(__name__)

#: Source name of the requests when this worker has no replica name.
DEFAULT_SOURCE = "resync"
#: Longest pause between two progress lines (log mode) or bar redraws (terminal).
PROGRESS_EVERY_S = 1.0
#: Bound of ``--status``.
STATUS_TIMEOUT_S = 30.0


def _forget(config: Config, url: str, out: TextIO, err: TextIO) -> int:
    problem = url_problem(url)
    target = target_name(url.strip())
    if problem is None and target in {target_name(str(u)) for u in config.worker.replicas_urls}:
        problem = (f"{without_userinfo(target)} is still in ZE_WORKER_REPLICAS_URLS; take it out of every "
                   "worker's configuration first")
    if problem:
        print(f"zephyr-edge: --forget: {problem}", file=err)
        return exits.USAGE
    configure_logging(config, err)
    try:
        dropped = asyncio.run(forget(config, url))
    except (ZephyrError, TimeoutError) as exc:
        print(f"zephyr-edge: {config.kv.name} KV backend failed: {exc or 'timed out'}", file=err)
        return exits.FAILED
    print(json.dumps({"target": target, "dropped_entries": dropped}), file=out, flush=True)
    return exits.OK


def configure_logging(config: Config, stream: TextIO) -> None:
    """JSON log lines at info on ``stream`` (stdout carries the command's result)."""
    from zephyr_edge.cli import logs
    from zephyr_edge.settings import redaction

    logs.configure(LogLevel.INFO, config.worker.replica_name, redaction.secret_values(config), stream=stream)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a target region's URL, or None."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http(s) URL of the other region, got {url!r}"
    return None


class Progress:
    """Shows a pass's :class:`~.antientropy.Report` as it changes: a bar redrawn on a
    terminal, else JSON log lines (throttled)."""

    def __init__(self, stream: TextIO, tty: bool, target: str):
        self.stream, self.tty, self.target = stream, tty, target
        self._at = 0.0
        self._apps = -1

    def __call__(self, r: antientropy.Report) -> None:
        now = time.monotonic()
        if now - self._at < PROGRESS_EVERY_S and r.apps == self._apps:
            return
        self._at, self._apps = now, r.apps
        if self.tty:
            self.stream.write("\r" + bar(r) + "\x1b[K")
            self.stream.flush()
        else:
            log.info("Resync progress", extra={"fields": fields(r, self.target)})

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def bar(r: antientropy.Report, width: int = 24) -> str:
    """``[#####.....] 3/10 apps  files 12/40 sent (1.2 MB)  snapshots 2  hosts 5  errors 0``."""
    done = int(width * r.apps / r.apps_total) if r.apps_total else 0
    return (f"[{'#' * done}{'.' * (width - done)}] {r.apps}/{r.apps_total} apps  "
            f"files {r.files_sent}/{r.files_missing} sent ({r.bytes_sent / 1e6:.1f} MB)  "
            f"snapshots {r.snapshots_sent}  hosts {r.hosts_sent}  errors {r.errors}")


def fields(r: antientropy.Report, target: str) -> dict[str, Any]:
    return {"zephyr.replica.target": target, **{f"resync.{k}": v for k, v in r.to_dict().items()}}


async def resync(config: Config, url: str, progress: Progress | None = None) -> antientropy.Report:
    """One anti-entropy pass from this region's backends to ``url``."""
    worker = config.worker
    async with plugins.open_storage(config) as storage:
        async with plugins.open_kv(config) as kv:
            async with client_factory(worker, worker.replica_name or DEFAULT_SOURCE)(url) as client:
                return await antientropy.reconcile(Catalog(kv, worker), storage, client,
                                                   concurrency=worker.replication_concurrency, progress=progress)


async def forget(config: Config, url: str) -> int:
    async with plugins.open_kv(config) as kv:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            return await Outbox(kv, config.worker, []).forget(url)


async def read_status(config: Config) -> dict[str, Any]:
    async with plugins.open_kv(config) as kv:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            return await status.read_status(kv, config.worker)


def main(config: Config, *, resync_url: str | None = None, show_status: bool = False,
         forget_url: str | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``zephyr-edge replicate``: the exit code (see the module docstring)."""
    out, err = out or sys.stdout, err or sys.stderr
    if forget_url is not None:
        return _forget(config, forget_url, out, err)
    if show_status:
        configure_logging(config, err)
        try:
            doc = asyncio.run(read_status(config))
        except (ZephyrError, TimeoutError) as exc:
            print(f"zephyr-edge: {config.kv.name} KV backend failed: {exc or 'timed out'}", file=err)
            return exits.FAILED
        print(json.dumps(doc, indent=2), file=out, flush=True)
        return exits.OK
    url = (resync_url or "").strip()
    problem = url_problem(url)
    if problem:
        print(f"zephyr-edge: --resync: {problem}", file=err)
        return exits.USAGE
    configure_logging(config, err)
    target = without_userinfo(url)
    progress = Progress(err, err.isatty(), target)
    started = time.monotonic()
    try:
        report = asyncio.run(resync(config, url, progress))
    except Exception as exc:  # a backend failing: one message, never a traceback
        progress.close()
        print(f"zephyr-edge: resync failed: {exc or type(exc).__name__}", file=err)
        return exits.FAILED
    progress.close()
    summary = {"target": target, "ok": report.ok, **report.to_dict(),
               "duration_s": round(time.monotonic() - started, 3)}
    log.log(logging.INFO if report.ok else logging.WARNING, "Resync finished", extra={"fields": fields(report, target)})
    print(json.dumps(summary), file=out, flush=True)
    return exits.OK if report.ok else exits.FAILED
