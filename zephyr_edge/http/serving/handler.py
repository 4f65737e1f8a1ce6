"""Serving applications: ``Host`` → snapshot → asset → bytes.

Every path not claimed by an earlier route, for GET, HEAD and OPTIONS, whatever the Host.
:func:`setup` must therefore run last among the features.

A warm request costs a few dict lookups: the ``Host`` header finds a
:class:`~zephyr_edge.http.serving.hostcache.HostEntry`, the raw path finds a precomputed
:class:`~zephyr_edge.http.serving.variants.Route` (headers of every variant), and the variant's ETag
finds its bytes in the :class:`~zephyr_edge.http.serving.assetcache.AssetCache`. Neither KV nor storage
is touched. Assets larger than ``cache_max_asset_kb`` stream from storage chunk by chunk,
compressed on the fly (in a thread, with a weak ETag) when the client accepts it.

Answers: a ``Host`` that is no valid name (missing, longer than a DNS name, bad
characters) → 400 naming the problem, before any lookup; unknown host or asset → 404
(an asset listed but not stored yet too; a missing file with an extension never gets
``index.html``); ``If-None-Match`` → 304; one ``Range``
→ 206 (416 with ``Content-Range: bytes */size`` when unsatisfiable; several ranges are
ignored); compressible types are compressed (gzip, brotli when importable) unless a
``Range`` is asked for or the body is tiny; ``OPTIONS`` answers CORS preflights with 204
without any I/O. Cache policy: see :mod:`zephyr_edge.http.serving.variants`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from types import MappingProxyType
from typing import TypeVar

from aiohttp import hdrs, web

from zephyr_edge.domain import hostnames
from zephyr_edge.http.serving.assetcache import AssetCache
from zephyr_edge.http.serving.compression import Negotiator, available_codecs
from zephyr_edge.errors import BackendUnavailable, BadRequest, NotFound
from zephyr_edge.http.serving.hostcache import HostCache, watch_generation
from zephyr_edge.http.answers import error_body
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY, STORAGE_KEY
from zephyr_edge.http.serving.resolve import RangeNotSatisfiable, parse_range
from zephyr_edge.http.serving.choice import choose
from zephyr_edge.http.serving.variants import CORS_HEADERS, Route, Variant, preflight_headers
from zephyr_edge.domain.snapshot import Asset
from zephyr_edge.storage.base import Storage
from zephyr_edge.settings.units import KiB, MiB

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Catch-all route of app traffic (any path).
ROUTE_PATH = "/{path:.*}"
#: Bound of one step of a streamed answer (read one chunk from storage and write it out).
CHUNK_TIMEOUT_S = 60.0
#: Bound of opening a streamed object (and of the metadata read before a range or HEAD).
OPEN_TIMEOUT_S = 30.0
#: Bound of the wait for the invalidation poller at shutdown.
STOP_TIMEOUT_S = 5.0


ERROR_HEADERS: Mapping[str, str] = MappingProxyType({
    "Content-Type": "application/json; charset=utf-8",
    "Cache-Control": "no-store",
    **CORS_HEADERS,
})
UNKNOWN_HOST_BODY = error_body(NotFound.code, "no application is published on this host")
NO_ASSET_BODY = error_body(NotFound.code, "no such file in this application")
NOT_STORED_BODY = error_body(NotFound.code, "this file is not stored (yet)")


class Serving:
    """The serve path's state of one application (created by :func:`serving_ctx`)."""

    __slots__ = ("hosts", "assets", "negotiator", "stream_negotiator")

    def __init__(self, hosts: HostCache, assets: AssetCache, negotiator: Negotiator,
                 stream_negotiator: Negotiator | None = None):
        self.hosts = hosts
        self.assets = assets
        self.negotiator = negotiator
        #: for assets streamed from storage: only the codecs that compress incrementally
        self.stream_negotiator = stream_negotiator or negotiator


#: The serve path's caches (set by :func:`serving_ctx`).
SERVING_KEY = web.AppKey("serving", Serving)


async def serving_ctx(app: web.Application) -> AsyncIterator[None]:
    """Create the caches and run the invalidation poller for the app's lifetime."""
    worker = app[CONFIG_KEY].worker
    codecs = available_codecs()
    max_asset_bytes = worker.cache_max_asset_kb * KiB

    def route_factory(asset: Asset, immutable_host: bool) -> Route:
        return Route(asset, immutable_host, codecs, max_asset_bytes)

    hosts = HostCache(
        app[CATALOG_KEY], ttl_s=worker.host_cache_ttl_ms / 1000, delimiter=worker.delimiter,
        route_factory=route_factory,
    )
    assets = AssetCache(app[STORAGE_KEY], budget_bytes=worker.cache_size_mb * MiB, max_asset_bytes=max_asset_bytes)
    stream_codecs = tuple(c for c in codecs if c.stream is not None)
    app[SERVING_KEY] = Serving(hosts, assets, Negotiator(codecs), Negotiator(stream_codecs))
    poller = asyncio.create_task(
        watch_generation(app[CATALOG_KEY], hosts, worker.invalidation_poll_ms / 1000), name="host-cache-invalidation"
    )
    log.debug(
        "Serving caches ready",
        extra={"fields": {"cache.codecs": [c.token for c in codecs], "cache.budget_bytes": assets.lru.budget}},
    )
    try:
        yield
    finally:
        poller.cancel()
        await asyncio.wait([poller], timeout=STOP_TIMEOUT_S)
        await hosts.close()
        await assets.close()


def _error(status: int, body: bytes, extra: Mapping[str, str] | None = None) -> web.Response:
    headers = ERROR_HEADERS if extra is None else {**ERROR_HEADERS, **extra}
    return web.Response(status=status, body=body, headers=headers)


def _invalid_host(raw_host: str | None) -> web.Response:
    """400 for a ``Host`` that cannot name anything (RFC 9112 3.2): no KV read, nothing cached."""
    problem = "missing" if raw_host is None else hostnames.host_problem(raw_host) or "not a valid host name"
    return _error(400, error_body(BadRequest.code, f"Host: not a valid host name ({problem})", field="Host"))


def _unsatisfiable(exc: RangeNotSatisfiable) -> web.Response:
    body = error_body(exc.code, str(exc))
    return _error(exc.status, body, {"Content-Range": exc.content_range})


async def handle(request: web.Request) -> web.StreamResponse:
    """GET and HEAD of app traffic."""
    serving = request.app[SERVING_KEY]
    headers = request.headers
    raw_host = headers.get(hdrs.HOST)
    entry = serving.hosts.fresh(raw_host) or await serving.hosts.lookup(raw_host)
    if entry is None:
        return _invalid_host(raw_host)
    if entry.snapshot is None:
        return _error(404, UNKNOWN_HOST_BODY)
    route = entry.route(request.rel_url.raw_path)
    if route is None:
        return _error(404, NO_ASSET_BODY)

    choice = choose(
        route,
        accept_encoding=headers.get(hdrs.ACCEPT_ENCODING),
        range_header=headers.get(hdrs.RANGE),
        if_range=headers.get(hdrs.IF_RANGE),
        if_none_match=headers.get(hdrs.IF_NONE_MATCH),
        negotiator=serving.stream_negotiator if route.stream else serving.negotiator,
        worth_encoding=serving.assets.worth_encoding,
    )
    variant, range_header = choice.variant, choice.range
    if choice.not_modified:
        return web.Response(status=304, headers=variant.not_modified_headers)
    codec = variant.codec

    if not route.stream:
        data = serving.assets.get(variant.cache_key)
        if data is None:
            try:
                identity = await serving.assets.load(route)
            except NotFound:
                return _error(404, NOT_STORED_BODY)
            if identity is None:  # stored bigger than its snapshot says: stream it
                return await _stream(request, serving.assets.storage, route, range_header)
            data = identity if codec is None else await serving.assets.encoded(variant, identity)
            if data is None:  # not worth encoding after all
                data, variant = identity, route.identity
        if range_header is not None:
            try:
                span = parse_range(range_header, len(data))
            except RangeNotSatisfiable as exc:
                return _unsatisfiable(exc)
            if span is not None:
                start, last = span
                partial = {**variant.headers, "Content-Range": f"bytes {start}-{last}/{len(data)}"}
                return web.Response(status=206, body=data[start : last + 1], headers=partial)
        return web.Response(body=data, headers=variant.headers)
    return await _stream(request, serving.assets.storage, route, range_header, variant)


async def _stream(
    request: web.Request, storage: Storage, route: Route, range_header: str | None,
    variant: Variant | None = None,
) -> web.StreamResponse:
    """Answer from storage chunk by chunk (large assets), compressed on the fly when
    ``variant`` is a coded one (never with a range)."""
    key = route.storage_key
    coder = variant.codec.stream() if variant is not None and variant.codec and variant.codec.stream else None
    headers = variant.headers if coder is not None and variant is not None else route.identity.headers
    start, end, status = 0, None, 200
    if range_header is not None or request.method == hdrs.METH_HEAD:
        info = await _bounded(storage, f"head {key!r}", storage.head(key))
        if info is None:
            return _error(404, NOT_STORED_BODY)
        if range_header is not None:
            try:
                span = parse_range(range_header, info.size)
            except RangeNotSatisfiable as exc:
                return _unsatisfiable(exc)
            if span is not None:
                start, end, status = span[0], span[1] + 1, 206
        if request.method == hdrs.METH_HEAD:
            response = web.StreamResponse(status=status, headers=headers)
            if status == 206:
                response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
            if coder is None:  # a compressed length is only known once compressed
                response.content_length = (info.size if end is None else end) - start
            return response
    try:
        blob = await _bounded(storage, f"get {key!r}", storage.get(key, start, end))
    except NotFound:
        return _error(404, NOT_STORED_BODY)
    async with blob:
        response = web.StreamResponse(status=status, headers=headers)
        if status == 206:
            response.headers["Content-Range"] = f"bytes {blob.start}-{blob.end - 1}/{blob.size}"
        if coder is None:
            response.content_length = blob.end - blob.start
        await response.prepare(request)
        chunks = blob.chunks().__aiter__()
        try:
            while True:
                async with asyncio.timeout(CHUNK_TIMEOUT_S):
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    if coder is not None:  # zlib and brotli release the GIL: off the loop
                        chunk = await asyncio.to_thread(coder.compress, chunk)
                    if chunk:
                        await response.write(chunk)
            if coder is not None:
                await response.write(await asyncio.to_thread(coder.flush))
        except ConnectionResetError:
            log.debug("Client went away during a streamed answer", extra={"fields": _fields(request, key)})
        except Exception as exc:  # headers are sent: all we can do is cut the connection
            log.error("Streaming failed after the headers were sent", exc_info=exc,
                      extra={"fields": _fields(request, key)})
            if request.transport is not None:
                request.transport.close()
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
    return response


async def _bounded(storage: Storage, what: str, call: Awaitable[T]) -> T:
    """``await call`` within :data:`OPEN_TIMEOUT_S`; a timeout is an unavailable storage."""
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            return await call
    except TimeoutError:
        raise BackendUnavailable(storage.name, f"{what} took more than {OPEN_TIMEOUT_S:.0f} s") from None


def _fields(request: web.Request, key: str) -> dict[str, str]:
    return {"http.method": request.method, "http.path": request.path, "storage.key": key}


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS: a CORS preflight answer (no I/O; everything served is public)."""
    return web.Response(status=204, headers=preflight_headers(request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)))


def setup(app: web.Application) -> None:
    """Add the catch-all app-traffic routes and the serving caches' lifetime (run last)."""
    app.cleanup_ctx.append(serving_ctx)
    app.router.add_get(ROUTE_PATH, handle)  # HEAD too
    app.router.add_route(hdrs.METH_OPTIONS, ROUTE_PATH, preflight)
