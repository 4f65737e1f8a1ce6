"""Running the worker: logging set up, startup lines, the HTTP server, graceful shutdown.

When the address cannot be bound (port in use...), :func:`serve` logs one fatal line
naming the address and the reason, without traceback, and returns exit status 1.

On SIGTERM or SIGINT the worker stops accepting connections, lets in-flight requests
finish within ``ZE_WORKER_SHUTDOWN_GRACE_MS``, closes its backends and returns.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from zephyr_edge.cli import exits, logs
from zephyr_edge.settings import redaction
from zephyr_edge.http.app import make_app
from zephyr_edge.settings.fields import Config
from zephyr_edge.http.connections import BoundedAppRunner

log = logging.getLogger(__name__)

#: Signals that start a graceful shutdown.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ListenError(Exception):
    """The worker cannot listen on its address (exit status 1, one fatal log line)."""

    def __init__(self, host: str, port: int, cause: OSError):
        self.host, self.port = host, port
        reason = os.strerror(cause.errno).lower() if cause.errno else str(cause)
        hint = " (another process uses it: stop it, or choose another port with ZE_WORKER_PORT or `dev --port`)" \
            if cause.errno == errno.EADDRINUSE else ""
        super().__init__(f"Cannot listen on {host}:{port}: {reason}{hint}")


def configure_logging(config: Config) -> None:
    """Install the JSON log handler for ``config`` and log its warnings."""
    logs.configure(config.worker.log_level, config.worker.replica_name, redaction.secret_values(config),
                   own_modules=(config.storage.cls.__module__, config.kv.cls.__module__))
    for warning in config.warnings:
        log.warning(warning)


def log_startup(config: Config) -> None:
    """The startup lines: replica mode and its fan-out (replication on, see
    docs/replication.md), then ``Worker listening`` with the port."""
    worker = config.worker
    if worker.replica_name:
        log.info("Replica mode enabled", extra={"fields": {"zephyr.replica": worker.replica_name}})
        if worker.replicas_urls:
            urls = [redaction.without_userinfo(u, redaction.MASK) for u in worker.replicas_urls]
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
        try:
            await site.start()
        except OSError as exc:  # port in use, address not on this machine, no permission
            raise ListenError(worker.listen_host, int(worker.port), exc) from exc
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
    except ListenError as exc:  # an operator's setup problem, not a bug: no traceback
        log.critical("%s", exc, extra={"fields": {"server.host": exc.host, "server.port": exc.port}})
        return exits.FAILED
    except Exception as exc:
        log.critical("Worker failed: %s", exc, exc_info=exc)
        return exits.FAILED
    return exits.OK
