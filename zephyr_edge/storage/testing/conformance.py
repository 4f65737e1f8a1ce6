"""The storage conformance suite: :class:`StorageConformance` (see the package docstring)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from zephyr_edge import errors
from zephyr_edge.storage.base import CHUNK_SIZE, Storage
from zephyr_edge.settings.units import MiB
from zephyr_edge.storage.testing.data import Generated, ProducerError, failing, pattern, split, stalled, stream
from zephyr_edge.storage.testing.helpers import (
    MAX_CHUNK,
    assert_absent,
    bounded,
    close_iterator,
    fetch,
    new_key,
    read_all,
)

#: Size of the large-object test: well above any sane part or buffer size.
LARGE_SIZE = 64 * MiB
#: Peak of traced Python memory allowed while writing or reading LARGE_SIZE bytes: an
#: implementation that holds the object whole needs at least LARGE_SIZE.
LARGE_PEAK_LIMIT = LARGE_SIZE // 2
#: Size of a failing upload that certainly spans several parts of a chunked backend.
FAILING_LARGE_SIZE = 20 * MiB
#: How long an operation on an unreachable backend may take to fail.
UNREACHABLE_LIMIT_S = 15.0
#: Writers of the same key in the concurrency tests.
WRITERS = 12


class StorageConformance:
    """Subclass as ``Test<Backend>`` and provide the ``storage`` and
    ``unreachable_storage`` fixtures (optionally ``second_storage`` and ``secrets``)."""

    # --- fixtures a backend provides ---------------------------------------------------------

    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[Storage]:
        pytest.fail("a StorageConformance subclass must provide an async 'storage' fixture")
        yield  # pragma: no cover

    @pytest_asyncio.fixture
    async def unreachable_storage(self) -> AsyncIterator[Storage]:
        pytest.fail("a StorageConformance subclass must provide an async 'unreachable_storage' fixture")
        yield  # pragma: no cover

    @pytest_asyncio.fixture
    async def second_storage(self, storage: Storage) -> AsyncIterator[Storage]:
        pytest.skip("provide 'second_storage' (a second instance over the data of 'storage') to test two workers")
        yield  # pragma: no cover

    @pytest.fixture
    def secrets(self) -> tuple[str, ...]:
        return ()

    # --- health --------------------------------------------------------------------------

    @pytest.mark.asyncio
    @bounded()
    async def test_ping_healthy(self, storage: Storage) -> None:
        assert await storage.ping() is None

    # --- basic operations ----------------------------------------------------------------

    @pytest.mark.asyncio
    @bounded()
    async def test_round_trip(self, storage: Storage) -> None:
        key, data = new_key(), pattern(1, 3 * CHUNK_SIZE + 17)
        await storage.put(key, stream(split(data, 100_000)), len(data))
        blob = await storage.get(key)
        assert (blob.size, blob.start, blob.end) == (len(data), 0, len(data))
        assert await read_all(blob) == data
        key2 = new_key("unknown-size")
        await storage.put(key2, stream(split(data, 65_536)))
        assert await fetch(storage, key2) == data
        assert await (await storage.get(key2)).read() == data

    @pytest.mark.asyncio
    @bounded()
    async def test_empty_object(self, storage: Storage) -> None:
        key = new_key()
        await storage.put(key, stream([]), 0)
        info = await storage.head(key)
        assert info is not None and info.size == 0
        assert await storage.exists(key)
        blob = await storage.get(key)
        assert (blob.size, blob.start, blob.end) == (0, 0, 0)
        assert await read_all(blob) == b""
        assert await fetch(storage, key, 0, 0) == b""
        other = new_key("empty-chunks")
        await storage.put(other, stream([b"", b""]))
        assert await fetch(storage, other) == b""

    @pytest.mark.asyncio
    @bounded()
    async def test_overwrite(self, storage: Storage) -> None:
        key = new_key()
        first, second, third = pattern(2, 200_000), pattern(3, 1_000), pattern(4, 300_000)
        for data in (first, second, third):
            await storage.put(key, stream(split(data, 50_000)), len(data))
            assert await fetch(storage, key) == data
            info = await storage.head(key)
            assert info is not None and info.size == len(data)

    @pytest.mark.asyncio
    @bounded()
    async def test_head(self, storage: Storage) -> None:
        key = new_key()
        assert await storage.head(key) is None
        await storage.put_bytes(key, b"x" * 1234)
        info = await storage.head(key)
        assert info is not None and info.size == 1234
        assert await storage.head(key + "0") is None, "head must not match a key by prefix"

    @pytest.mark.asyncio
    @bounded()
    async def test_get_missing(self, storage: Storage) -> None:
        key = new_key()
        with pytest.raises(errors.NotFound):
            await storage.get(key)
        with pytest.raises(errors.NotFound):
            await storage.get(key, 0, 0)
        await storage.put_bytes(key, b"data")
        with pytest.raises(errors.NotFound):
            await storage.get(key[:-1])

    @pytest.mark.asyncio
    @bounded()
    async def test_delete_idempotent(self, storage: Storage) -> None:
        key, neighbour = new_key(), new_key()
        await storage.put_bytes(key, b"to delete")
        await storage.put_bytes(neighbour, b"to keep")
        await storage.delete(key)
        await assert_absent(storage, key)
        await storage.delete(key)
        await storage.delete(new_key("never-written"))
        assert await fetch(storage, neighbour) == b"to keep"

    @pytest.mark.asyncio
    @bounded()
    async def test_exists(self, storage: Storage) -> None:
        key = new_key()
        assert await storage.exists(key) is False
        await storage.put_bytes(key, b"here")
        assert await storage.exists(key) is True
        await storage.delete(key)
        assert await storage.exists(key) is False

    @pytest.mark.asyncio
    @bounded()
    async def test_byte_ranges(self, storage: Storage) -> None:
        key = new_key()
        data = pattern(5, 3 * CHUNK_SIZE + 123)
        size = len(data)
        await storage.put(key, stream(split(data, 70_000)), size)
        ranges = [
            (0, None), (0, size), (0, 1), (1, 2), (7, 7), (0, 0), (size - 1, size), (size - 1, None),
            (size, size), (size, None), (CHUNK_SIZE - 1, CHUNK_SIZE + 1), (100, size - 100), (12345, None),
        ]
        for start, end in ranges:
            blob = await storage.get(key, start, end)
            want_end = size if end is None else end
            assert (blob.size, blob.start, blob.end) == (size, start, want_end), f"range {start}-{end}"
            assert await read_all(blob) == data[start:want_end], f"range {start}-{end}"

    @pytest.mark.asyncio
    @bounded()
    async def test_keys_with_slashes(self, storage: Storage) -> None:
        digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
        keys = [f"ab/cd/{digest}", f"ab/cd/{digest[::-1]}", f"ab/ce/{digest}", f"{digest[:2]}/{digest[2:4]}/{digest}"]
        for index, key in enumerate(keys):
            await storage.put_bytes(key, pattern(10 + index, 1000))
        for index, key in enumerate(keys):
            assert await fetch(storage, key) == pattern(10 + index, 1000)
        await storage.delete(keys[0])
        assert await storage.head(keys[0]) is None
        assert await fetch(storage, keys[1]) == pattern(11, 1000)
        assert await fetch(storage, keys[2]) == pattern(12, 1000)

    @pytest.mark.asyncio
    @bounded()
    async def test_partial_read_then_close(self, storage: Storage) -> None:
        key, data = new_key(), pattern(6, 4 * CHUNK_SIZE)
        await storage.put(key, stream(split(data, CHUNK_SIZE)), len(data))
        for _ in range(20):
            iterator = (await storage.get(key)).chunks()
            first = await anext(iterator)
            assert first and data.startswith(first)
            await close_iterator(iterator)
        assert await fetch(storage, key) == data
        await storage.put_bytes(key, b"replaced")
        assert await fetch(storage, key) == b"replaced"

    # --- concurrency ---------------------------------------------------------------------

    async def _race_same_key(self, writers: list[Storage], reader: Storage) -> None:
        key = new_key()
        candidates = [pattern(100 + i, 150_000 + 7_919 * i) for i in range(WRITERS)]
        seen: list[bytes] = []
        done = asyncio.Event()

        async def write(index: int) -> None:
            data = candidates[index]
            await writers[index % len(writers)].put(key, stream(split(data, 16_384)), len(data))

        async def read_while_writing() -> None:
            while not done.is_set():
                try:
                    seen.append(await fetch(reader, key))
                except errors.NotFound:
                    pass
                await asyncio.sleep(0)

        readers = [asyncio.create_task(read_while_writing()) for _ in range(2)]
        try:
            await asyncio.gather(*(write(i) for i in range(WRITERS)))
        finally:
            done.set()
            await asyncio.gather(*readers)
        final = await fetch(reader, key)
        assert final in candidates, f"final object ({len(final)} bytes) is not one of the writes, whole"
        info = await reader.head(key)
        assert info is not None and info.size == len(final)
        for index, observed in enumerate(seen):
            assert observed in candidates, f"read #{index} during the writes saw a partial or mixed object"
        for other in {id(w): w for w in writers}.values():
            assert await fetch(other, key) == final

    @pytest.mark.asyncio
    @bounded()
    async def test_parallel_puts_same_key(self, storage: Storage) -> None:
        await self._race_same_key([storage], storage)

    @pytest.mark.asyncio
    @bounded()
    async def test_parallel_puts_same_key_two_instances(self, storage: Storage, second_storage: Storage) -> None:
        assert second_storage is not storage, "second_storage must be another instance"
        await self._race_same_key([storage, second_storage], second_storage)

    @pytest.mark.asyncio
    @bounded()
    async def test_parallel_puts_different_keys(self, storage: Storage) -> None:
        items = {new_key(str(i)): pattern(200 + i, 20_000 + 4_099 * i) for i in range(32)}
        await asyncio.gather(*(storage.put(k, stream(split(v, 8_192)), len(v)) for k, v in items.items()))
        for key, data in items.items():
            assert await fetch(storage, key) == data

    # --- failures while writing ----------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", [0, 1, 300_000, FAILING_LARGE_SIZE], ids=["at-once", "1B", "300kB", "20MB"])
    @pytest.mark.parametrize("previous", [None, b"the previous object"], ids=["absent", "previous"])
    @bounded()
    async def test_failing_producer(self, storage: Storage, size: int, previous: bytes | None) -> None:
        key = new_key()
        if previous is not None:
            await storage.put_bytes(key, previous)
        chunks = split(pattern(7, size), MiB)
        with pytest.raises(ProducerError) as raised:
            await storage.put(key, failing(chunks))
        assert type(raised.value) is ProducerError, "the producer's exception must propagate as is"
        if previous is None:
            await assert_absent(storage, key)
        else:
            assert await fetch(storage, key) == previous
        with pytest.raises(ProducerError):
            await storage.put(key, failing(chunks), size + 10)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", [1000, FAILING_LARGE_SIZE // 2], ids=["small", "10MB"])
    @pytest.mark.parametrize("previous", [None, b"the previous object"], ids=["absent", "previous"])
    @bounded()
    async def test_cancelled_put(self, storage: Storage, size: int, previous: bytes | None) -> None:
        key = new_key()
        if previous is not None:
            await storage.put_bytes(key, previous)
        started = asyncio.Event()
        task = asyncio.create_task(storage.put(key, stalled(split(pattern(8, size), MiB), started)))
        async with asyncio.timeout(30):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if previous is None:
            await assert_absent(storage, key)
        else:
            assert await fetch(storage, key) == previous
        await storage.put_bytes(key, b"after")
        assert await fetch(storage, key) == b"after"

    # --- large objects stream ------------------------------------------------------------

    @pytest.mark.asyncio
    @bounded(300)
    async def test_large_object_streams(self, storage: Storage) -> None:
        key = new_key("large")
        source = Generated(LARGE_SIZE)
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            await storage.put(key, source.chunks())
            put_peak = tracemalloc.get_traced_memory()[1] - base
            assert source.produced == LARGE_SIZE

            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            blob = await storage.get(key)
            assert blob.size == LARGE_SIZE
            digest, count = hashlib.sha256(), 0
            async for chunk in blob.chunks():
                assert len(chunk) <= MAX_CHUNK
                digest.update(chunk)
                count += len(chunk)
                del chunk
            get_peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            if not was_tracing:
                tracemalloc.stop()
        assert count == LARGE_SIZE
        assert digest.hexdigest() == source.sha256
        assert put_peak < LARGE_PEAK_LIMIT, f"put buffered {put_peak / MiB:.1f} MiB of a {LARGE_SIZE // MiB} MiB object"
        assert get_peak < LARGE_PEAK_LIMIT, f"get buffered {get_peak / MiB:.1f} MiB of a {LARGE_SIZE // MiB} MiB object"
        await storage.delete(key)

    # --- unreachable backend -------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("operation", ["ping", "get", "head", "put", "delete"])
    @bounded(UNREACHABLE_LIMIT_S + 15)
    async def test_unreachable(self, unreachable_storage: Storage, secrets: tuple[str, ...], operation: str) -> None:
        key = new_key()
        calls = {
            "ping": lambda: unreachable_storage.ping(),
            "get": lambda: unreachable_storage.get(key),
            "head": lambda: unreachable_storage.head(key),
            "put": lambda: unreachable_storage.put_bytes(key, b"data"),
            "delete": lambda: unreachable_storage.delete(key),
        }
        started = time.monotonic()
        with pytest.raises(errors.BackendUnavailable) as raised:
            await calls[operation]()
        elapsed = time.monotonic() - started
        assert elapsed < UNREACHABLE_LIMIT_S, f"{operation} took {elapsed:.1f} s to fail"
        message = f"{raised.value} {raised.value!r}"
        assert str(raised.value).strip(), "the error must say what is wrong"
        for secret in secrets:
            assert secret not in message, f"a secret leaked into the {operation} error message"
