"""Slow and idle connections are closed within their configured bounds
(``ZE_WORKER_HEADER_TIMEOUT_MS``, ``ZE_WORKER_KEEPALIVE_TIMEOUT_MS``) while other requests
are served: a real worker (:func:`zephyr_edge.cli.runner.run`, as ``zephyr-edge serve`` runs
it) on loopback, driven with raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest

from zephyr_edge.cli import runner
from zephyr_edge.http import connections
from zephyr_edge.settings import config
from tests.services import free_port

HEADER_TIMEOUT_S = 0.5
KEEPALIVE_TIMEOUT_S = 1.0
#: Scheduling slack on a shared 2-core machine.
SLACK_S = 1.5
#: Bound of every wait for the worker in these tests.
WAIT_S = 10.0
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: ze.example.com\r\n\r\n"


@contextlib.asynccontextmanager
async def running_worker(tmp_path, **extra: str) -> AsyncIterator[int]:
    port = free_port()
    cfg = config.load({
        "ZE_WORKER_JWT_SECRET": "connections-test-secret-0123456789",
        "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
        "ZE_WORKER_DATA_DIR": str(tmp_path / "data"), "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
        "ZE_WORKER_PORT": str(port), "ZE_WORKER_SHUTDOWN_GRACE_MS": "1000",
        "ZE_WORKER_HEADER_TIMEOUT_MS": str(int(HEADER_TIMEOUT_S * 1000)),
        "ZE_WORKER_KEEPALIVE_TIMEOUT_MS": str(int(KEEPALIVE_TIMEOUT_S * 1000)),
        **extra,
    })
    stop, listening = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(runner.run(cfg, listening.set, stop=stop))
    try:
        async with asyncio.timeout(WAIT_S):
            await listening.wait()
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await task


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP answer with a Content-Length: (status, body)."""
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return int(head.split()[1]), await reader.readexactly(length)


async def closed_after(reader: asyncio.StreamReader, started: float, bound: float) -> tuple[float, bytes]:
    """Seconds from ``started`` until the worker closed the connection (failing past
    ``bound``), and what it sent before closing."""
    received = b""
    async with asyncio.timeout(bound):
        while chunk := await reader.read(65536):
            received += chunk
    return time.monotonic() - started, received


async def healthz_answers_quickly(port: int) -> None:
    reader, writer = await connect(port)
    try:
        started = time.monotonic()
        writer.write(HEALTHZ)
        status, _ = await read_answer(reader)
        assert status == 200 and time.monotonic() - started < SLACK_S
    finally:
        writer.close()


async def test_slow_request_headers_get_408_and_the_connection_closed(tmp_path):
    async with running_worker(tmp_path) as port:
        slow = [await connect(port) for _ in range(20)]
        started = time.monotonic()
        for _, writer in slow:
            writer.write(b"GET /healthz HTTP/1.1\r\nHo")

        async def trickle(writer: asyncio.StreamWriter) -> None:  # one byte every 50 ms, for ever
            with contextlib.suppress(ConnectionError):
                for _ in range(int(WAIT_S / 0.05)):
                    await asyncio.sleep(0.05)
                    writer.write(b"x")
                    await writer.drain()

        tricklers = [asyncio.create_task(trickle(w)) for _, w in slow]
        try:
            await healthz_answers_quickly(port)  # others are served meanwhile
            for reader, _ in slow:
                elapsed, received = await closed_after(reader, started, HEADER_TIMEOUT_S + SLACK_S)
                assert elapsed >= HEADER_TIMEOUT_S * 0.9
                status_line, _, rest = received.partition(b"\r\n")
                assert status_line == b"HTTP/1.1 408 Request Timeout", received[:100]
                answer = json.loads(rest.partition(b"\r\n\r\n")[2])
                assert answer["error"] == "request_timeout" and "0.5 s" in answer["message"]
            await healthz_answers_quickly(port)
        finally:
            for task in tricklers:
                task.cancel()
            await asyncio.gather(*tricklers, return_exceptions=True)
            for _, writer in slow:
                writer.close()


async def test_idle_connections_are_closed_after_the_keepalive_timeout(tmp_path):
    async with running_worker(tmp_path) as port:
        never, never_writer = await connect(port)  # opens and sends nothing
        opened = time.monotonic()
        used, used_writer = await connect(port)  # one request, then idle
        used_writer.write(HEALTHZ)
        assert (await read_answer(used))[0] == 200
        answered = time.monotonic()
        try:
            await healthz_answers_quickly(port)
            elapsed, received = await closed_after(used, answered, KEEPALIVE_TIMEOUT_S + SLACK_S)
            assert elapsed >= KEEPALIVE_TIMEOUT_S * 0.9 and received == b""
            elapsed, received = await closed_after(never, opened, KEEPALIVE_TIMEOUT_S + SLACK_S)
            assert elapsed >= KEEPALIVE_TIMEOUT_S * 0.9 and received == b""
        finally:
            never_writer.close()
            used_writer.close()


async def test_a_prompt_client_keeps_its_connection(tmp_path):
    """The header bound runs per request, from its first byte: a keep-alive client that
    sends each request's head in pieces, within the bound, is served every time even once
    the connection is older than both bounds."""
    async with running_worker(tmp_path) as port:
        reader, writer = await connect(port)
        try:
            started = time.monotonic()
            for _ in range(4):
                for piece in (HEALTHZ[:10], HEALTHZ[10:30], HEALTHZ[30:]):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(HEADER_TIMEOUT_S / 4)
                assert (await read_answer(reader))[0] == 200
                await asyncio.sleep(KEEPALIVE_TIMEOUT_S / 2)
            assert time.monotonic() - started > HEADER_TIMEOUT_S + KEEPALIVE_TIMEOUT_S
        finally:
            writer.close()


async def test_a_slow_body_is_not_cut_by_the_header_bound(tmp_path):
    """Only the head is bounded here: body bytes arriving while a request is handled start
    no timer (bodies have their own bounds in zephyr_edge.http.bodies)."""
    async with running_worker(tmp_path) as port:
        reader, writer = await connect(port)
        try:
            body = b"{" + b" " * 8 + b"}"
            writer.write(
                b"POST /upload?type=envs HTTP/1.1\r\nHost: ze.example.com\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            for byte in body:  # over 3 header bounds
                await asyncio.sleep(HEADER_TIMEOUT_S * 3 / len(body))
                writer.write(bytes([byte]))
            status, answer = await read_answer(reader)
            assert status == 403 and b"can_write_jwt" in answer  # refused for its token, not cut
        finally:
            writer.close()


def test_the_handler_hooks_exist_in_this_aiohttp():
    """The header bound reads these aiohttp internals; an upgrade that drops one fails here."""
    from aiohttp.web_protocol import RequestHandler

    assert all(hasattr(RequestHandler, name) for name in connections.HANDLER_ATTRIBUTES)
    assert connections._handler_compatible()


async def test_an_incompatible_aiohttp_falls_back_to_the_idle_bound(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(connections, "_handler_compatible", lambda: False)
    caplog.set_level(logging.WARNING, logger=connections.__name__)
    async with running_worker(tmp_path) as port:
        assert any("header timeout" in r.getMessage() for r in caplog.records)
        reader, writer = await connect(port)
        try:
            started = time.monotonic()
            writer.write(b"GET /healthz HTTP/1.1\r\nHo")
            elapsed, _ = await closed_after(reader, started, KEEPALIVE_TIMEOUT_S + SLACK_S)
            assert elapsed >= KEEPALIVE_TIMEOUT_S * 0.9  # the idle bound, not the header bound
        finally:
            writer.close()


@pytest.mark.parametrize("key", ["ZE_WORKER_HEADER_TIMEOUT_MS", "ZE_WORKER_KEEPALIVE_TIMEOUT_MS"])
def test_the_bounds_must_be_positive(key):
    with pytest.raises(config.ConfigError, match=key):
        config.load({"ZE_WORKER_JWT_SECRET": "s", "ZE_WORKER_STORAGE_BACKEND": "local",
                     "ZE_WORKER_KV_BACKEND": "local", key: "0"})
