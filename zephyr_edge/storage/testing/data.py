"""Data producers for the storage conformance suite: chunk streams, with and without failures."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from zephyr_edge.settings.units import MiB



class ProducerError(Exception):
    """Raised by a failing producer; a backend must let it propagate as is."""


def pattern(seed: int, size: int) -> bytes:
    """``size`` bytes that differ from one ``seed`` to another at (nearly) every position
    and do not repeat with a short period (so a shifted or spliced copy is detected)."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def split(data: bytes, chunk_size: int) -> list[bytes]:
    """``data`` cut into chunks of ``chunk_size`` (the last shorter); [] for no data."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


async def stream(chunks: Iterable[bytes], pause: bool = True) -> AsyncIterator[bytes]:
    """Yield ``chunks``, giving the loop a turn between them (so concurrent puts interleave)."""
    for chunk in chunks:
        if pause:
            await asyncio.sleep(0)
        yield chunk


async def failing(chunks: Iterable[bytes], error: BaseException | None = None) -> AsyncIterator[bytes]:
    """Yield ``chunks``, then raise ``error`` (a :class:`ProducerError` by default)."""
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk
    raise error or ProducerError("the producer failed midway")


async def stalled(chunks: Iterable[bytes], started: asyncio.Event) -> AsyncIterator[bytes]:
    """Yield ``chunks``, set ``started``, then wait forever (until cancelled)."""
    for chunk in chunks:
        yield chunk
    started.set()
    await asyncio.Event().wait()
    yield b""  # pragma: no cover


class Generated:
    """A large pseudo-random object produced chunk by chunk, never held whole.

    Iterate :meth:`chunks` to produce it; :attr:`sha256` is its digest afterwards.
    """

    def __init__(self, size: int, chunk_size: int = MiB, seed: int = 0):
        self.size = size
        self.chunk_size = chunk_size
        self.seed = seed
        self._hash = hashlib.sha256()
        self.produced = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        block = pattern(self.seed, 4096)[8:]
        index = 0
        while self.produced < self.size:
            n = min(self.chunk_size, self.size - self.produced)
            blocks = -(-n // 4096)
            # a fresh, distinct chunk each time: every 4 KiB block starts with its own index
            chunk = b"".join(i.to_bytes(8, "big") + block for i in range(index, index + blocks))[:n]
            index += blocks
            self._hash.update(chunk)
            self.produced += n
            yield chunk
            del chunk
