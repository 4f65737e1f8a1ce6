"""Structured JSON logging: one JSON object per line on stdout, configured once at startup.

Every line carries ``timestamp`` (ISO 8601, UTC, milliseconds), ``level`` (``trace``,
``debug``, ``info``, ``warn``, ``error``, ``fatal``), ``service`` (``ze-k8s-workers``),
``replica`` (``ZE_WORKER_REPLICA_NAME`` or ``primary``), ``message`` and ``logger``, then the
structured fields a call passes as ``extra={"fields": {"server.port": 8080}}``, and
``exception`` (the formatted traceback) when the record has exception info. Tracebacks go
to the log only, never to a client.

Configured secret values are replaced by ``***`` in every emitted line (a defence in depth:
the code never logs secrets on purpose), wherever they stand as whole words: a secret is
not masked inside a longer word, field names and the fixed fields (``timestamp``,
``level``, ``service``, ``replica``, ``logger``) are never changed, so every line stays
valid JSON (:mod:`zephyr_edge.settings.redaction`).

Third-party libraries (aiohttp, botocore and aiobotocore, urllib3, coredis, asyncio...) log
through the same handler, filtered by :class:`Gate` (the package of a selected backend
plugin logs as the worker's own code):

- their records below warn are dropped unless the level is ``trace`` (at debug, botocore
  alone writes dozens of lines per S3 request, among them the signed request with its
  ``Authorization`` header); ``debug`` shows the worker's own debug lines only;
- every third-party line that is shown, and every traceback, has credentials masked
  (``Authorization`` and ``can_write_jwt`` values, SigV4 ``Signature=``, ``Credential=``
  and ``X-Amz-Signature=``, bearer tokens, anything shaped like a JWT): ``trace`` is meant
  for debugging a backend, and still shows no credential;
- a malformed request (bad request line, header, chunking: aiohttp's
  ``Error handling request`` with a parse error) is the client's fault, not the worker's: it
  becomes one ``Malformed request refused: <reason>`` line at debug, without traceback,
  and nothing at info. Real failures stay at error with their traceback.

Refused requests (:func:`zephyr_edge.http.app.error_middleware`): a refused write (any method
but GET/HEAD/OPTIONS answered 4xx) is one ``Write refused: <reason>`` line at info, with
``http.method``, ``http.path``, ``http.status``, ``zephyr.upload.type`` and
``zephyr.application_uid`` when known (never the token); a refused read (a 404 while
serving, a bad Range) is one ``Request refused`` line at debug.

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
import re
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from zephyr_edge.settings.fields import LogLevel
from zephyr_edge.settings.redaction import MASK, Redactor

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
#: Logger name of the worker's own records (and prefix of its modules' loggers); every
#: other logger (aiohttp, botocore, aiobotocore, urllib3, coredis, asyncio...) is a third party.
OWN_LOGGER = "zephyr_edge"
#: aiohttp's logger of connection-level problems (a malformed request among them).
AIOHTTP_SERVER_LOGGER = "aiohttp.server"
#: Credentials a third-party line may carry (botocore logs whole signed requests at debug):
#: each pattern's first group is kept, the rest of the match becomes ``***``.
_CREDENTIALS = (
    # header dumps: 'Authorization': b'AWS4-HMAC-SHA256 ...', can_write_jwt: eyJ..., X-Amz-Security-Token=...
    re.compile(
        r"""(?i)((?:authorization|proxy-authorization|can_write_jwt|x-amz-security-token)['"]?\s*[:=]\s*b?['"]?)"""
        r"""[^'"\r\n]+"""
    ),
    # query strings and SigV4 parts: X-Amz-Signature=..., Credential=..., Signature=...
    re.compile(r"(?i)((?:signature|credential|x-amz-credential|x-amz-signature|x-amz-security-token)=)[^&\s,'\"]+"),
    # botocore's "Signature:\n<hex>" debug line
    re.compile(r"(?i)(signature:\s*)[0-9a-f]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # anything shaped like a JWT
    re.compile(r"()\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
)
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


def is_own(record: logging.LogRecord, own: Iterable[str] = (OWN_LOGGER,)) -> bool:
    """Whether ``record`` comes from the worker's own code: the logger ``zephyr_edge`` or one
    below it, or one of the packages ``own`` (the selected backends' plugin packages)."""
    name = record.name
    return any(name == prefix or name.startswith(prefix + ".") for prefix in own)


def own_packages(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """``zephyr_edge`` and the top-level packages of ``extra`` module names, deduplicated."""
    return tuple(dict.fromkeys([OWN_LOGGER, *(m.split(".", 1)[0] for m in extra if m)]))


def client_garbage(record: logging.LogRecord) -> HttpProcessingError | None:
    """The parse error of an aiohttp ``Error handling request`` record caused by a client's
    malformed request (bad request line, header, chunking...), or None for any other record."""
    if record.name != AIOHTTP_SERVER_LOGGER or not record.exc_info:
        return None
    exc = record.exc_info[1]
    return exc if isinstance(exc, HttpProcessingError) else None


def scrub_credentials(text: str) -> str:
    """``text`` with authorization headers, SigV4 signatures and credentials, bearer and
    JWT tokens replaced by ``***`` (applied to third-party lines and tracebacks)."""
    for pattern in _CREDENTIALS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class Gate(logging.Filter):
    """Which records reach the log, beyond the root level: the worker's own at the
    configured level; a client's malformed request only at debug (as one line, see
    :class:`JsonFormatter`); other third-party records at warn and above, all of them
    only at trace."""

    def __init__(self, level: int, own: Iterable[str] = (OWN_LOGGER,)):
        super().__init__()
        self.level = level
        self.own = tuple(own)

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own(record, self.own):
            return True
        if client_garbage(record) is not None:
            return self.level <= logging.DEBUG
        return record.levelno >= logging.WARNING or self.level <= TRACE


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring for the fields)."""

    def __init__(
        self, replica: str = DEFAULT_REPLICA, redactor: Redactor | None = None, own: Iterable[str] = (OWN_LOGGER,)
    ):
        super().__init__()
        self.replica = replica or DEFAULT_REPLICA
        self.redactor = redactor if redactor is not None else Redactor(())
        self.own = tuple(own)

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        # the fixed fields are the code's own words: never redacted (a secret "warn" or
        # "info" must not blank the level); everything else may carry data and is
        head: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level_name(record.levelno),
            "service": SERVICE,
            "replica": self.replica,
        }
        garbage = client_garbage(record)
        if garbage is not None:  # a client's fault, not ours: one debug line, no traceback
            head["level"] = "debug"
            reason = str(garbage.message or type(garbage).__name__).strip().splitlines()[0].rstrip(":")
            out: dict[str, Any] = {
                "message": f"Malformed request refused: {reason}", "logger": record.name,
                "http.status": garbage.code, "error.type": type(garbage).__name__,
                "http.remote": record.args[0] if isinstance(record.args, tuple) and record.args else None,
            }
            return json.dumps(head | self.redactor.value(out), default=str, ensure_ascii=False)
        message = record.getMessage()
        out = {"message": message if is_own(record, self.own) else scrub_credentials(message), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if str(key) not in head:
                    out.setdefault(str(key), value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = scrub_credentials(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = scrub_credentials(record.exc_text)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        logger = out["logger"]
        out = self.redactor.value(out)
        out["logger"] = logger
        return json.dumps(head | out, default=str, ensure_ascii=False)


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
    own_modules: Iterable[str] = (),
) -> logging.Handler:
    """Send every log record to ``stream`` (stdout) as JSON lines, at ``level`` and above.

    ``own_modules`` names modules whose packages log as the worker's own code (the selected
    backends, which may come from plugin distributions); other third parties are filtered
    by :class:`Gate`. Replaces the handler a previous call installed; other handlers are
    left alone. Returns the installed handler.
    """
    logging.addLevelName(TRACE, "TRACE")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    own = own_packages(own_modules)
    handler.setFormatter(JsonFormatter(replica, Redactor(secrets), own))
    handler.addFilter(Gate(LEVELS[level], own))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])  # aiohttp's own loggers follow the root level
    logging.captureWarnings(True)
    return handler
