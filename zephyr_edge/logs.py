"""Structured JSON logging: one JSON object per line on stdout, configured once at startup.

Every line carries ``timestamp`` (ISO 8601, UTC, milliseconds), ``level`` (``trace``,
``debug``, ``info``, ``warn``, ``error``, ``fatal``), ``service`` (``ze-k8s-workers``),
``replica`` (``ZE_WORKER_REPLICA_NAME`` or ``primary``), ``message`` and ``logger``, then the
structured fields a call passes as ``extra={"fields": {"server.port": 8080}}``, and
``exception`` (the formatted traceback) when the record has exception info. Tracebacks go
to the log only, never to a client.

Configured secret values are replaced by ``***`` in every emitted line (a defence in depth:
the code never logs secrets on purpose).

Access log (:class:`AccessLogger`): one ``Request handled`` line per request with
``http.method``, ``http.path`` (no query string: it may carry tokens), ``http.status``,
``http.duration_ms`` and ``http.remote``, at **info**, except the probe routes ``/healthz`` and ``/readyz``,
which Kubernetes calls every few seconds and which log at **debug**.

Modules log with ``logging.getLogger(__name__)``; only :func:`configure` touches handlers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from zephyr_edge.config import LogLevel
from zephyr_edge.redaction import Redactor

SERVICE = "ze-k8s-workers"
DEFAULT_REPLICA = "primary"
#: Below ``logging.DEBUG``: the ``trace`` level of ``ZE_WORKER_LOG_LEVEL``.
TRACE = 5
#: Routes whose access lines are logged at debug (health probes).
QUIET_PATHS = frozenset({"/healthz", "/readyz"})
ACCESS_LOGGER = "zephyr_edge.access"

#: ``ZE_WORKER_LOG_LEVEL`` → stdlib level number.
LEVELS: Mapping[LogLevel, int] = MappingProxyType({
    LogLevel.TRACE: TRACE,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.FATAL: logging.CRITICAL,
})
#: Attribute marking the handler :func:`configure` installed (so reconfiguring replaces it).
_MARK = "_zephyr_edge_handler"


def level_name(levelno: int) -> str:
    """The documented name of a stdlib level number (rounded down to the nearest level)."""
    if levelno >= logging.CRITICAL:
        return "fatal"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    if levelno >= logging.DEBUG:
        return "debug"
    return "trace"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring for the fields)."""

    def __init__(self, replica: str = DEFAULT_REPLICA, redactor: Redactor | None = None):
        super().__init__()
        self.replica = replica or DEFAULT_REPLICA
        self.redactor = redactor if redactor is not None else Redactor(())

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        out: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level_name(record.levelno),
            "service": SERVICE,
            "replica": self.replica,
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(self.redactor.value(out), default=str, ensure_ascii=False)


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log in the JSON format: one ``Request handled`` line per request."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(
            level,
            "Request handled",
            extra={
                "fields": {
                    "http.method": request.method,
                    "http.path": request.path,
                    "http.status": response.status,
                    "http.duration_ms": round(time * 1000, 3),
                    "http.remote": request.remote,
                }
            },
        )

    @property
    def enabled(self) -> bool:
        """Whether any access line can be emitted (checked by aiohttp per connection)."""
        return self.logger.isEnabledFor(logging.INFO)


def configure(
    level: LogLevel = LogLevel.INFO,
    replica: str = "",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stdout) as JSON lines, at ``level`` and above.

    Replaces the handler a previous call installed; other handlers are left alone.
    Returns the installed handler.
    """
    logging.addLevelName(TRACE, "TRACE")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(replica, Redactor(secrets)))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])  # aiohttp's own loggers follow the root level
    logging.captureWarnings(True)
    return handler
