"""The aiohttp application: typed keys, backend lifetimes, error mapping, routes.

:func:`make_app` builds everything from a typed :class:`~zephyr_edge.settings.config.Config` and
never reads the environment, so tests build apps directly.

Extension points:

- a feature module exposes ``setup(app)`` adding its routes (and, if it needs one, its own
  cleanup context) and is listed in :data:`FEATURES`; order matters for routes, so the
  data path goes after ``health`` and serving's catch-all route goes last (next issue:
  ``upload.setup``, then ``handler.setup``);
- errors: raise a :mod:`zephyr_edge.errors` exception anywhere below a handler;
  :func:`error_middleware` is the one place they become HTTP answers (built by
  :mod:`zephyr_edge.http.answers`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from zephyr_edge.http import auth, health
from zephyr_edge.http.ingest import upload
from zephyr_edge.http.serving import handler
from zephyr_edge.settings import redaction
from zephyr_edge.settings.fields import Config
from zephyr_edge.errors import BackendError, BackendUnavailable, ZephyrError, shorten
from zephyr_edge.http.answers import INTERNAL_MESSAGE, RETRY_AFTER_S, error_response, internal_error
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY, KV_KEY, REDACTOR_KEY, STORAGE_KEY
from zephyr_edge.http.health import READINESS_KEY
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.replication import feature as replication_feature
from zephyr_edge.replication import outbox
from zephyr_edge.domain.snapshot import APPLICATION_UID_RE
from zephyr_edge import plugins

__all__ = [
    "CATALOG_KEY", "CONFIG_KEY", "FEATURES", "KV_KEY", "READINESS_KEY", "REDACTOR_KEY", "RETRY_AFTER_S",
    "STORAGE_KEY", "INTERNAL_MESSAGE", "error_middleware", "error_response", "make_app",
]

log = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Feature modules' ``setup(app)`` functions, in route order (see the module docstring).
FEATURES: tuple[Callable[[web.Application], None], ...] = (health.setup, upload.setup, replication_feature.setup, handler.setup)


def make_app(config: Config) -> web.Application:
    """A ready-to-run application for ``config`` (backends open when the app starts)."""
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG_KEY] = config
    app[REDACTOR_KEY] = redaction.for_config(config)
    app.cleanup_ctx.append(backends_ctx)
    for setup in FEATURES:
        setup(app)
    return app


async def backends_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the selected storage and KV backends for the app's lifetime, close them after.

    Backends do no failing I/O when opened, so a worker whose services are down still
    starts (and reports not-ready until they come back).
    """
    config = app[CONFIG_KEY]
    async with contextlib.AsyncExitStack() as stack:
        app[STORAGE_KEY] = await stack.enter_async_context(
            plugins.open_storage(config)
        )
        app[KV_KEY] = await stack.enter_async_context(plugins.open_kv(config))
        app[CATALOG_KEY] = Catalog(app[KV_KEY], config.worker, outbox.journal_for(app[KV_KEY], config.worker))
        log.info(
            "Backends opened",
            extra={"fields": {"storage.backend": config.storage.name, "kv.backend": config.kv.name}},
        )
        yield
        log.info("Closing backends")


#: Methods that only read: their refusals (a 404 while serving, a bad Range) are client
#: noise, logged at debug. A refusal of any other method is a refused write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Longest client-given value (``type``, ``application_uid``) quoted in a log line.
MAX_LOGGED_CHARS = 100


def _bounded(value: str | None) -> str | None:
    return None if value is None else shorten(value, MAX_LOGGED_CHARS)


def _application_uid(request: web.Request) -> str | None:
    """The application a write is for, when known: the application of its ``can_write_jwt``
    if that token was verified for this request, else a well-formed ``application_uid``
    query parameter (the hash list, ``sync-file``). Never the token itself."""
    cache, token = request.app.get(auth.VERIFIED_TOKENS_KEY), auth.token_of(request)
    config = request.app.get(CONFIG_KEY)
    if cache is not None and token and config is not None:
        claims = cache.get(token, config.worker.jwt_secret)  # only tokens that passed every check
        if claims is not None:
            return claims.application_uid
    uid = request.query.get("application_uid")
    return uid if uid and len(uid) <= MAX_LOGGED_CHARS and APPLICATION_UID_RE.fullmatch(uid) else None


def request_fields(request: web.Request, status: int) -> dict[str, object]:
    """The log fields of a refused or failed request; for a write, also its upload type and
    application (when known)."""
    fields: dict[str, object] = {
        "http.method": request.method, "http.path": request.path, "http.status": status,
        "http.remote": request.remote,
    }
    if request.method not in READ_METHODS:
        fields["zephyr.upload.type"] = _bounded(request.query.get("type"))
        fields["zephyr.application_uid"] = _application_uid(request)
    return fields


def log_refusal(request: web.Request, status: int, reason: str, code: str | None = None) -> None:
    """The one line of a refused request (status below 500): a write at info, so that the
    operator sees why a deploy failed; a read at debug."""
    fields = request_fields(request, status)
    if code is not None:
        fields["error.code"] = code
    if request.method in READ_METHODS:
        log.debug("Request refused: %s", reason, extra={"fields": fields})
    else:
        log.info("Write refused: %s", reason, extra={"fields": fields})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :mod:`zephyr_edge.errors` exceptions into JSON answers; hide everything else.

    aiohttp's own ``HTTPException`` answers pass through unchanged. A handler that has
    already started streaming a body must handle its own errors (an answer can no longer
    be replaced then).

    Every refused or failed request leaves exactly one log line: refused writes (any
    method but GET, HEAD, OPTIONS answered 4xx, e.g. ``POST /upload`` with a token of
    another application) at info with the reason, method, path, upload type and
    application; refused reads at debug; an unreachable backend at warn; server-side
    failures at error with the traceback. The token is never logged.
    """
    redactor = request.app[REDACTOR_KEY]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            log_refusal(request, exc.status, exc.reason)
        raise
    except ConnectionResetError:
        raise  # the client went away: nothing to answer
    except ZephyrError as exc:
        if isinstance(exc, BackendUnavailable):
            fields = request_fields(request, 503) | {"error.code": exc.code}
            log.warning("Backend unavailable: %s", exc, extra={"fields": fields})
        elif isinstance(exc, BackendError) or exc.status >= 500:
            fields = request_fields(request, 500) | {"error.code": exc.code}
            log.error("Request failed: %s", exc, exc_info=exc, extra={"fields": fields})
        else:
            log_refusal(request, exc.status, str(exc), exc.code)
        return error_response(exc, redactor)
    except Exception as exc:
        log.error("Unhandled error", exc_info=exc, extra={"fields": request_fields(request, 500)})
        return internal_error()
    if response.status >= 400 and request.method not in READ_METHODS:
        # an answer a handler returned rather than raised (an unknown upload type's 501)
        log_refusal(request, response.status, response.reason or str(response.status))
    return response
