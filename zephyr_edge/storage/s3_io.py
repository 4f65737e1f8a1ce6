"""Streaming helpers of the S3 backend: cutting an upload into parts, reading a body.

:func:`split_parts` turns any chunk stream into parts of exactly ``part_size`` bytes (the
last one shorter), so memory stays bounded by about two parts whatever the object size.
:class:`S3Blob` streams a GetObject body and gives its pooled connection back when the
body is exhausted, when :meth:`S3Blob.aclose` is called, or when the chunk iterator is
closed or garbage-collected early.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from zephyr_edge.errors import BackendError
from zephyr_edge.storage.base import CHUNK_SIZE, Blob
from zephyr_edge.storage.s3_errors import ErrorContext
from zephyr_edge.storage.s3_slots import Slot

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


async def split_parts(
    chunks: AsyncIterator[bytes], part_size: int, backend: str, key: str, size: int | None = None,
) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(part, is_last)``: parts of ``part_size`` bytes, the last one 0..part_size.

    A part is only emitted once more bytes are known to follow, so ``is_last`` is exact.
    Exceptions of ``chunks`` propagate as they are. When ``size`` is given, a stream of
    another length raises :class:`BackendError` before its last part is emitted.
    """
    buf = bytearray()
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if size is not None and total > size:
            raise BackendError(backend, f"put {key!r}: the data is longer than the announced {size} bytes")
        buf += chunk
        while len(buf) > part_size:
            with memoryview(buf) as view:
                part = bytes(view[:part_size])
                rest = bytearray(view[part_size:])
            # a fresh buffer: deleting a bytearray's head keeps its whole allocation alive
            buf = rest
            del rest
            yield part, False
            del part
    if size is not None and total != size:
        raise BackendError(backend, f"put {key!r}: got {total} bytes, {size} were announced")
    last = bytes(buf)
    del buf
    yield last, True


def parse_range(response: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """``(size, start, end)`` (end exclusive) of a GetObject response, None if unusable."""
    content_range = response.get("ContentRange")
    if content_range:
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if match is None:
            return None
        first, last, size = (int(g) for g in match.groups())
        return size, first, last + 1
    length = response.get("ContentLength")
    return (length, 0, length) if length is not None else None


class EmptyBlob(Blob):
    """Zero bytes at ``start`` of an object of ``size`` bytes (a range with start == end)."""

    def __init__(self, size: int, start: int):
        self.size, self.start, self.end = size, start, start

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield  # pragma: no cover  (makes this an async generator)

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> EmptyBlob:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class S3Blob(Blob):
    """A GetObject body being streamed; holds a connection slot until done.

    Consume it with ``async for chunk in blob.chunks()`` (the slot is released at the end
    or when the iterator is closed), or release it without reading by ``await
    blob.aclose()`` / ``async with blob:``. A blob dropped without either is closed, with
    a warning, when it is garbage-collected.
    """

    def __init__(self, body: Any, size: int, start: int, end: int, slot: Slot, errors: ErrorContext, key: str):
        self.size, self.start, self.end = size, start, end
        self._body = body
        self._slot = slot
        self._errors = errors
        self._key = key
        self._iterated = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._iterated:
            raise BackendError(self._errors.backend, f"read {self._key!r}: a blob can be read only once")
        self._iterated = True
        try:
            while not self._slot.released:
                with self._errors.translating("read", self._key):
                    chunk = await self._body.read(CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk
        finally:
            self._release()

    async def aclose(self) -> None:
        """Stop reading and give the connection back (idempotent)."""
        self._release()

    async def __aenter__(self) -> S3Blob:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _release(self) -> None:
        if self._slot.released:
            return
        try:
            # After a complete read aiohttp has already pooled the connection and this
            # is a no-op; after a partial one it drops the connection (cannot be reused).
            self._body.close()
        finally:
            self._slot.release()

    def __del__(self) -> None:
        if not getattr(self, "_slot", None) or self._slot.released:
            return
        log.warning("%s: blob of %r dropped without being read or closed; closing it", self._errors.backend, self._key)
        try:
            self._release()
        except Exception:  # pragma: no cover  (interpreter shutdown)
            pass
