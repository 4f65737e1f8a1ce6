"""Fallback HTTP/1.1 GET load generator, used by ``bench/run.py`` only when ``wrk`` is missing.

    python bench/pyload.py --url http://127.0.0.1:P/path --host-header H \
        --connections 50 --duration 10 [--warmup 2]

Keep-alive connections, one request in flight per connection (like ``wrk``), written on
raw asyncio protocols rather than an HTTP client library so that the generator costs
the server's CPU share as little as possible. Responses with ``Content-Length`` or
chunked bodies are understood. Requests completed during the warm-up are not counted.
Prints one JSON object: ``requests``, ``seconds``, ``rps``, ``non_2xx``, ``errors``,
``p50_ms``, ``p99_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


class _Stats:
    def __init__(self, measure_from: float, stop_at: float):
        self.measure_from = measure_from
        self.stop_at = stop_at
        self.requests = 0
        self.non_2xx = 0
        self.errors = 0
        self.latencies: list[float] = []


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the same request again after each response."""

    def __init__(self, request: bytes, stats: _Stats, done: asyncio.Future):
        self.request = request
        self.stats = stats
        self.done = done
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            parsed = _parse_response(self.buf)
            if parsed is None:
                return
            status, used = parsed
            del self.buf[:used]
            now = time.perf_counter()
            if now >= self.stats.measure_from:
                self.stats.requests += 1
                self.stats.latencies.append(now - self.sent_at)
                if not 200 <= status < 300:
                    self.stats.non_2xx += 1
            if now >= self.stats.stop_at:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.stats.stop_at:
            self.stats.errors += 1
        if not self.done.done():
            self.done.set_result(None)


def _parse_response(buf: bytearray) -> tuple[int, int] | None:
    """``(status, bytes used)`` of the first complete response in ``buf``, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        length = length or 0
        return (status, pos + length) if len(buf) >= pos + length else None
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            return None if trailer_end < 0 else (status, trailer_end + 2)
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


async def run(url: str, host_header: str, connections: int, duration: float, warmup: float) -> dict:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header or parts.netloc}\r\n"
        "User-Agent: zephyr-edge-bench\r\nAccept: */*\r\n\r\n"
    ).encode("latin-1")
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    stats = _Stats(start + warmup, start + warmup + duration)
    futures = []
    for _ in range(connections):
        done = loop.create_future()
        futures.append(done)
        await loop.create_connection(lambda d=done: _Client(request, stats, d), parts.hostname, parts.port or 80)
    await asyncio.wait_for(asyncio.gather(*futures), timeout=warmup + duration + 30)
    lat = sorted(stats.latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    return {
        "requests": stats.requests, "seconds": duration, "rps": round(stats.requests / duration, 1),
        "non_2xx": stats.non_2xx, "errors": stats.errors, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--host-header", default="")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.host_header, args.connections, args.duration, args.warmup))))


if __name__ == "__main__":
    main()
