"""Bounds on client connections, so that slow or idle clients cannot hold file descriptors.

- **Idle** (``ZE_WORKER_KEEPALIVE_TIMEOUT_MS``): a connection on which no request has
  started, since it opened or since the previous answer, is closed after this long.
  aiohttp's own keep-alive timer does this (its default is about an hour); it is passed to
  the request handlers. Keep it longer than the idle timeout of the proxy or load balancer
  in front (AWS ALB: 60 s), or the proxy may reuse a connection just as the worker closes it.
- **Request headers** (``ZE_WORKER_HEADER_TIMEOUT_MS``): once the first byte of a request
  has arrived, its whole head (request line and headers) must arrive within this bound;
  otherwise the worker answers ``408`` and closes the connection (a slowloris client sends
  one header byte a second for ever). aiohttp has no such bound: :class:`BoundedRequestHandler`
  adds it. Request bodies are bounded by the handlers that read them (:mod:`zephyr_edge.http.bodies`).

:class:`BoundedAppRunner` is ``web.AppRunner`` with both. The handler relies on a few
attributes of aiohttp's ``RequestHandler`` (:data:`HANDLER_ATTRIBUTES`); should an aiohttp
release drop one, the runner logs a warning and serves with the idle bound only (the
connection tests would fail first).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from zephyr_edge.http.answers import error_body

log = logging.getLogger(__name__)

#: aiohttp ``RequestHandler`` attributes :class:`BoundedRequestHandler` reads.
HANDLER_ATTRIBUTES = ("_request_count", "_current_request", "_waiter", "_force_close", "_loop", "transport")


def _timeout_answer(header_timeout_s: float) -> bytes:
    body = error_body("request_timeout", f"the request headers were not received within {header_timeout_s:g} s")
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedRequestHandler(RequestHandler):
    """aiohttp's request handler with a bound on receiving a request's head.

    The timer starts with the first byte received while the connection waits for a
    request, and stops when the parser has produced a message (a request, or a parse
    error that aiohttp answers with 400). Bytes received while a request is being handled
    (its body, a pipelined request) start nothing.
    """

    __slots__ = ("_header_timeout_s", "_header_timer", "_header_count", "_header_answer")

    def __init__(self, manager: Any, *, header_timeout_s: float, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_count = 0
        self._header_answer = _timeout_answer(header_timeout_s)

    def _waiting_for_request(self) -> bool:
        if self._current_request is not None:
            return False
        waiter = self._waiter
        # before the first request the handler task may not have started waiting yet
        return (waiter is not None and not waiter.done()) or self._request_count == 0

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        waiting = self._waiting_for_request()
        super().data_received(data)
        if self._request_count != count:
            self._stop_header_timer()
        elif data and waiting and self._header_timer is None:
            self._header_count = count
            self._header_timer = self._loop.call_later(self._header_timeout_s, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        transport = self.transport
        if (
            self._request_count != self._header_count or self._current_request is not None
            or transport is None or self._force_close
        ):
            return
        log.debug("Request headers not received in time; closing the connection",
                  extra={"fields": {"http.header_timeout_s": self._header_timeout_s}})
        transport.write(self._header_answer)
        self.force_close()  # closes once the answer is flushed

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)


def _handler_compatible() -> bool:
    return all(hasattr(RequestHandler, name) for name in HANDLER_ATTRIBUTES)


class _BoundedHandlers:
    """The protocol factory the sites listen with: the app's ``web.Server``, building
    :class:`BoundedRequestHandler` instances (everything else is the server's)."""

    def __init__(self, server: web.Server, header_timeout_s: float):
        self._server = server
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        server = self._server
        return BoundedRequestHandler(
            server, loop=server._loop, header_timeout_s=self._header_timeout_s, **server._kwargs
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class BoundedAppRunner(web.AppRunner):
    """``web.AppRunner`` bounding idle connections (``keepalive_timeout_s``) and the time
    to receive a request's head (``header_timeout_s``)."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, keepalive_timeout_s: float, **kwargs: Any):
        super().__init__(app, keepalive_timeout=keepalive_timeout_s, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> Any:
        server = await super()._make_server()
        if not (_handler_compatible() and hasattr(server, "_kwargs") and hasattr(server, "_loop")):
            log.warning(
                "This aiohttp version is not supported by the request header timeout; "
                "only idle connections are bounded (ZE_WORKER_KEEPALIVE_TIMEOUT_MS)"
            )
            return server
        return _BoundedHandlers(server, self.header_timeout_s)
