"""Running the worker: logging set up, startup lines, the HTTP server, graceful shutdown.

On SIGTERM or SIGINT the worker stops accepting connections, lets in-flight requests
finish within ``ZE_WORKER_SHUTDOWN_GRACE_MS``, closes its backends and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from zephyr_edge import logs, redaction
from zephyr_edge.app import make_app
from zephyr_edge.config import Config
from zephyr_edge.connections import BoundedAppRunner

log = logging.getLogger(__name__)

#: Signals that start a graceful shutdown.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def configure_logging(config: Config) -> None:
    """Install the JSON log handler for ``config`` and log its warnings."""
    logs.configure(config.worker.log_level, config.worker.replica_name, redaction.secret_values(config))
    for warning in config.warnings:
        log.warning(warning)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def log_startup(config: Config) -> None:
    """The startup lines documented in config.md and protocol.md section 8."""
    worker = config.worker
    if worker.replica_name:
        log.info("Replica mode enabled", extra={"fields": {"zephyr.replica": worker.replica_name}})
        if worker.replicas_urls:
            urls = [_without_userinfo(u) for u in worker.replicas_urls]
            log.info(
                "Replica fan-out configured",
                extra={"fields": {"zephyr.replica.count": len(urls), "zephyr.replica.urls": urls}},
            )
        else:
            log.info("No replica URLs configured; receive-only mode enabled")
    log.info("Worker listening", extra={"fields": {"server.port": int(worker.port)}})


async def run(
    config: Config,
    on_listening: Callable[[], None] | None = None,
    *,
    app: web.Application | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``config`` until SIGTERM/SIGINT (or until ``stop`` is set), then drain and
    clean up.

    ``app`` defaults to ``make_app(config)``. With ``stop`` given, no signal handler is
    installed (the caller decides when to stop).
    """
    loop = asyncio.get_running_loop()
    signals = STOP_SIGNALS if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    worker = config.worker
    runner = BoundedAppRunner(
        app if app is not None else make_app(config),
        header_timeout_s=worker.header_timeout_ms / 1000,
        keepalive_timeout_s=worker.keepalive_timeout_ms / 1000,
        handle_signals=False,
        shutdown_timeout=worker.shutdown_grace_ms / 1000,
        access_log_class=logs.AccessLogger,
        access_log=logging.getLogger(logs.ACCESS_LOGGER) if worker.access_log else None,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, worker.listen_host, int(worker.port))
        await site.start()
        log_startup(config)
        if on_listening is not None:
            on_listening()
        await stop.wait()
        log.info("Shutting down", extra={"fields": {"shutdown.grace_ms": worker.shutdown_grace_ms}})
    finally:
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("Worker stopped")


def serve(config: Config, on_listening: Callable[[], None] | None = None) -> int:
    """Configure logging, run the worker to completion; the process exit code."""
    configure_logging(config)
    try:
        asyncio.run(run(config, on_listening))
    except Exception as exc:
        log.critical("Worker failed: %s", exc, exc_info=exc)
        return 1
    return 0
