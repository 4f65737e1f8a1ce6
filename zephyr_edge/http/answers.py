"""The worker's JSON answers in one place: every error body ``{"error", "message"[, "field"]}``
(from a :mod:`zephyr_edge.errors` exception or a code and message) and the no-store success answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aiohttp import web

from zephyr_edge.errors import BackendError, BackendUnavailable, BadRequest, ZephyrError
from zephyr_edge.settings import redaction

#: Seconds a client is asked to wait (``Retry-After``) when a backend is unreachable.
RETRY_AFTER_S = 5
#: The message of every server-side failure (its details are logged, never answered).
INTERNAL_MESSAGE = "internal server error"
#: Headers of every answer that must never be cached.
NO_STORE: Mapping[str, str] = MappingProxyType({"Cache-Control": "no-store"})


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON error body ``{"error": code, "message": message, **extra}``, encoded."""
    return json.dumps({"error": code, "message": message, **extra}).encode()


def error_answer(status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                 **extra: Any) -> web.Response:
    """A JSON error answer (no-store, plus ``headers``) with :func:`error_body`."""
    return web.json_response({"error": code, "message": message, **extra}, status=status,
                             headers={**NO_STORE, **(headers or {})})


def ok(body: Mapping[str, Any], status: int = 200) -> web.Response:
    """A JSON success answer that is never cached."""
    return web.json_response(body, status=status, headers=NO_STORE)


def internal_error() -> web.Response:
    """The 500 answer of an unexpected failure (generic message, details only logged)."""
    return error_answer(500, ZephyrError.code, INTERNAL_MESSAGE)


def error_response(exc: ZephyrError, redactor: redaction.Redactor | None = None) -> web.Response:
    """The JSON answer ``{"error": code, "message": ...}`` for a worker error.

    Server-side failures (status 500 and up, except an unreachable backend, whose message
    names the backend and says it cannot be reached) answer a generic message.
    """
    status = exc.status
    headers: dict[str, str] = {}
    message = str(exc)
    if isinstance(exc, BackendUnavailable):
        headers["Retry-After"] = str(RETRY_AFTER_S)
        message = f"{exc.backend} backend unavailable, retry later"
    elif isinstance(exc, BackendError) or status >= 500:
        status, message = 500, INTERNAL_MESSAGE
    extra = {"field": exc.field} if isinstance(exc, BadRequest) else {}
    return error_answer(status, exc.code, redactor.text(message) if redactor else message, headers, **extra)
