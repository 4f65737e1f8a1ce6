"""Reading request bodies on the ingest path: bounded in size and time, never whole when large.

- :func:`read_limited` reads a small body (a snapshot, a publish request) whole, up to a
  limit (413 above it, from ``Content-Length`` before reading when announced).
- :class:`VerifiedAsset` streams an asset body in chunks while computing its protocol-4.1
  hash, for :meth:`Storage.put <zephyr_edge.storage.base.Storage.put>`. It holds the last
  chunk back until the whole body has been read and its hash checked: on a mismatch (or a
  body too large, or shorter than announced) it raises *before* handing the last chunk
  over, so the backend's atomic ``put`` aborts ("if ``chunks`` raises, nothing new becomes
  visible") and never sees a complete wrong object, even a backend that would commit as
  soon as it has received ``size`` bytes.

Every read waits at most :data:`IDLE_TIMEOUT_S` for the client's next bytes; a small body
is received within :data:`SMALL_BODY_TIMEOUT_S` (a large one is bounded by its caller).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from zephyr_edge.domain.assets import AssetHasher
from zephyr_edge.errors import BadRequest, PayloadTooLarge, ZephyrError
from zephyr_edge.settings.units import MiB

#: Size of the chunks handed to storage (a few reads of the socket buffer coalesced).
CHUNK_SIZE = 256 * 1024
#: Longest wait for the client's next bytes of a body.
IDLE_TIMEOUT_S = 30.0
#: Longest time to receive a whole small body (:func:`read_limited`).
SMALL_BODY_TIMEOUT_S = 120.0
#: Bodies larger than this are parsed off the event loop (:func:`parse_off_loop`).
OFF_LOOP_BYTES = 256 * 1024

T = TypeVar("T")


async def parse_off_loop(raw: bytes, parse: Callable[[bytes], T]) -> T:
    """``parse(raw)``, in a worker thread when ``raw`` is larger than :data:`OFF_LOOP_BYTES`
    (validating a snapshot of many thousands of assets takes a good part of a second,
    which the event loop must not spend away from other requests)."""
    if len(raw) <= OFF_LOOP_BYTES:
        return parse(raw)
    return await asyncio.to_thread(parse, raw)


class RequestTimeout(ZephyrError):
    """The client stopped sending its body, or the whole upload took too long."""

    status = 408
    code = "request_timeout"


class ClientDisconnected(BadRequest):
    """The client closed the connection before its body was complete (the answer goes
    nowhere; raising this rather than ``ConnectionResetError`` keeps a routine abort, e.g.
    an agent's 30 s deadline, out of the error log)."""

    code = "client_disconnected"


def check_announced_size(request: web.BaseRequest, limit: int, what: str) -> None:
    """:class:`PayloadTooLarge` when ``Content-Length`` announces more than ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"{what} of {length} bytes is larger than the limit of {_size(limit)}")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 and n else f"{n} bytes"


async def _read(request: web.BaseRequest, n: int) -> bytes:
    """Up to ``n`` bytes of the body (b"" at its end), waiting at most the idle timeout."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            return await request.content.read(n)
    except TimeoutError:
        raise RequestTimeout(f"the client sent no body bytes for {IDLE_TIMEOUT_S:g} s") from None
    except HttpProcessingError as exc:  # truncated or badly framed body (a client problem)
        raise BadRequest(f"body: unreadable request body ({exc.message or type(exc).__name__})", field="body") from None
    except ConnectionResetError:
        raise ClientDisconnected("body: the client closed the connection before the end of the body", field="body") from None


async def _read_chunk(request: web.BaseRequest, n: int) -> bytes:
    """``n`` bytes of the body, fewer only at its end (several socket reads coalesced)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = await _read(request, n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_limited(request: web.BaseRequest, limit: int, what: str) -> bytes:
    """The whole body, at most ``limit`` bytes (:class:`PayloadTooLarge` otherwise),
    received within :data:`SMALL_BODY_TIMEOUT_S` (:class:`RequestTimeout` otherwise)."""
    check_announced_size(request, limit, what)
    body = bytearray()
    deadline = asyncio.timeout(SMALL_BODY_TIMEOUT_S)
    try:
        async with deadline:
            while True:
                chunk = await _read_chunk(request, CHUNK_SIZE)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"{what} is larger than the limit of {_size(limit)}")
    except TimeoutError:
        if deadline.expired():
            raise RequestTimeout(f"{what} was not received within {SMALL_BODY_TIMEOUT_S:g} s") from None
        raise


class VerifiedAsset:
    """The body of ``POST /upload?type=file``, checked against its announced hash.

    Iterate :meth:`chunks` once (to store it, or just to check it); it raises
    :class:`BadRequest` (field ``hash``) on a hash mismatch and :class:`PayloadTooLarge`
    above ``limit`` bytes, before yielding the last chunk. :attr:`size` is the body's size
    once :meth:`chunks` has completed.
    """

    def __init__(self, request: web.BaseRequest, expected_hash: str, filename: str, limit: int):
        self._request = request
        self._expected = expected_hash
        self._filename = filename
        self._limit = limit
        self._announced = request.content_length
        self.size: int | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        hasher = AssetHasher(self._filename)
        held: bytes | None = None
        while True:
            chunk = await _read_chunk(self._request, CHUNK_SIZE)
            if not chunk:
                break
            hasher.update(chunk)
            if hasher.size > self._limit:
                raise PayloadTooLarge(f"the file is larger than the limit of {_size(self._limit)}")
            if held is not None:
                yield held
            held = chunk
        if self._announced is not None and hasher.size != self._announced:
            raise BadRequest(
                f"body: got {hasher.size} bytes, Content-Length announced {self._announced}", field="body"
            )
        computed = hasher.hexdigest()
        if computed != self._expected:
            raise BadRequest(
                f"hash: the body does not match the announced hash (expected {self._expected}, "
                f"computed {computed} from {hasher.size} bytes and the filename)",
                field="hash",
            )
        self.size = hasher.size
        if held is not None:
            yield held

    async def drain(self) -> int:
        """Read and check the whole body without keeping it; its size."""
        async for _ in self.chunks():
            pass
        assert self.size is not None
        return self.size
