"""The conformance suite can fail: each of its tests is run against a backend with one
deliberate fault (the embedded backend wrapped) and must not pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from zephyr_edge import errors
from zephyr_edge.storage.base import CHUNK_SIZE, Blob, ObjectInfo, Storage
from zephyr_edge.storage.local import LocalStorage
from zephyr_edge.storage.testing import StorageConformance, conformance

SECRET = "hunter2-very-secret"


class Wrapper(Storage):
    """Delegates everything to a healthy LocalStorage; subclasses break one thing."""

    name = "faulty"

    def __init__(self, inner: LocalStorage):
        self.inner = inner

    @classmethod
    def open(cls, options, data_dir):  # pragma: no cover  (built directly by the fixture)
        raise NotImplementedError

    async def put(self, key, chunks, size=None):
        await self.inner.put(key, chunks, size)

    async def get(self, key, start=0, end=None):
        return await self.inner.get(key, start, end)

    async def head(self, key):
        return await self.inner.head(key)

    async def delete(self, key):
        await self.inner.delete(key)

    async def ping(self):
        await self.inner.ping()

    def path(self, key: str) -> Path:
        return self.inner._path(key)


class BytesBlob(Blob):
    """Bytes held in memory, yielded in CHUNK_SIZE pieces."""

    def __init__(self, data: bytes, size: int, start: int, end: int | None = None):
        self.data, self.size, self.start = data, size, start
        self.end = start + len(data) if end is None else end

    async def chunks(self) -> AsyncIterator[bytes]:
        for offset in range(0, len(self.data), CHUNK_SIZE):
            yield self.data[offset : offset + CHUNK_SIZE]


class BuffersPuts(Wrapper):
    async def put(self, key, chunks, size=None):
        await self.inner.put_bytes(key, b"".join([c async for c in chunks]))


class BuffersGets(Wrapper):
    async def get(self, key, start=0, end=None):
        blob = await self.inner.get(key, start, end)
        return BytesBlob(await blob.read(), blob.size, blob.start)


class WritesInPlace(Wrapper):
    """Not atomic: the final file is written chunk by chunk."""

    async def put(self, key, chunks, size=None):
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            async for chunk in chunks:
                out.write(chunk)
                out.flush()


class SwallowsProducerErrors(Wrapper):
    async def put(self, key, chunks, size=None):
        data = []
        try:
            async for chunk in chunks:
                data.append(chunk)
        except Exception:
            pass
        await self.inner.put_bytes(key, b"".join(data))


class TranslatesProducerErrors(Wrapper):
    async def put(self, key, chunks, size=None):
        try:
            await self.inner.put(key, chunks, size)
        except Exception as exc:
            raise errors.BackendError(self.name, "write failed") from exc


class SharesAScratchBuffer(Wrapper):
    """Concurrent puts mix their data."""

    def __init__(self, inner):
        super().__init__(inner)
        self.scratch: list[bytes] = []

    async def put(self, key, chunks, size=None):
        self.scratch = []
        async for chunk in chunks:
            self.scratch.append(chunk)
        await self.inner.put_bytes(key, b"".join(self.scratch))


class IgnoresRangeEnd(Wrapper):
    """Claims the range asked for, yields up to the end of the object."""

    async def get(self, key, start=0, end=None):
        blob = await self.inner.get(key, start, None)
        return BytesBlob(await blob.read(), blob.size, start, blob.size if end is None else end)


class IgnoresRangeStart(Wrapper):
    """Claims the range asked for, yields from the start of the object."""

    async def get(self, key, start=0, end=None):
        blob = await self.inner.get(key, 0, end)
        return BytesBlob(await blob.read(), blob.size, start, blob.end)


class HeadInventsObjects(Wrapper):
    async def head(self, key):
        return await self.inner.head(key) or ObjectInfo(size=0)


class HeadReportsWrongSize(Wrapper):
    async def head(self, key):
        info = await self.inner.head(key)
        return ObjectInfo(size=info.size + 1) if info else None


class GetMissingIsEmpty(Wrapper):
    async def get(self, key, start=0, end=None):
        try:
            return await self.inner.get(key, start, end)
        except errors.NotFound:
            return BytesBlob(b"", 0, 0)


class DeleteMissingFails(Wrapper):
    async def delete(self, key):
        if await self.inner.head(key) is None:
            raise errors.NotFound(key)
        await self.inner.delete(key)


class DeleteDoesNothing(Wrapper):
    async def delete(self, key):
        pass


class DropsEmptyObjects(Wrapper):
    async def put(self, key, chunks, size=None):
        data = b"".join([c async for c in chunks])
        if data:
            await self.inner.put_bytes(key, data)


class NeverOverwrites(Wrapper):
    async def put(self, key, chunks, size=None):
        if await self.inner.head(key) is None:
            await self.inner.put(key, chunks, size)
        else:
            async for _ in chunks:
                pass


class KeepsOnlyTheLastSegment(Wrapper):
    def _flat(self, key: str) -> str:
        return key.rsplit("/", 1)[-1]

    async def put(self, key, chunks, size=None):
        await self.inner.put(self._flat(key), chunks, size)

    async def get(self, key, start=0, end=None):
        return await self.inner.get(self._flat(key), start, end)

    async def head(self, key):
        return await self.inner.head(self._flat(key))

    async def delete(self, key):
        await self.inner.delete(self._flat(key))


class ExistsAlways(Wrapper):
    async def exists(self, key):
        return True


class PingFails(Wrapper):
    async def ping(self):
        raise errors.BackendUnavailable(self.name, "down")


class Unreachable(Wrapper):
    """Every operation fails the way ``error`` says, after ``delay`` seconds."""

    error: type[Exception] = errors.BackendUnavailable
    message = "cannot reach the service"
    delay = 0.0

    async def _fail(self, *args, **kwargs):
        await asyncio.sleep(self.delay)
        raise self.error(self.name, self.message)

    put = get = head = delete = ping = _fail


class UnreachableWrongType(Unreachable):
    error = errors.BackendError


class UnreachableLeaksSecret(Unreachable):
    message = f"cannot log in with password {SECRET}"


class UnreachableTooSlow(Unreachable):
    delay = 0.5


class UnreachableRawOSError(Unreachable):
    async def _fail(self, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    put = get = head = delete = ping = _fail


FAULTS = [  # (fault, suite test, its parameters, what its failure must mention)
    (BuffersPuts, "test_large_object_streams", {}, "put buffered"),
    (BuffersGets, "test_large_object_streams", {}, "get buffered"),
    (WritesInPlace, "test_failing_producer", {"size": 300_000, "previous": b"previous"}, "AssertionError"),
    (WritesInPlace, "test_cancelled_put", {"size": 1000, "previous": None}, "should not exist"),
    (WritesInPlace, "test_parallel_puts_same_key", {}, "partial or mixed"),
    (SwallowsProducerErrors, "test_failing_producer", {"size": 1, "previous": None}, "DID NOT RAISE"),
    (TranslatesProducerErrors, "test_failing_producer", {"size": 0, "previous": None}, "BackendError"),
    (SharesAScratchBuffer, "test_parallel_puts_different_keys", {}, "AssertionError"),
    (SharesAScratchBuffer, "test_parallel_puts_same_key", {}, "not one of the writes"),
    (IgnoresRangeEnd, "test_byte_ranges", {}, "range 0-1"),
    (IgnoresRangeStart, "test_byte_ranges", {}, "range 1-2"),
    (HeadInventsObjects, "test_head", {}, "AssertionError"),
    (HeadReportsWrongSize, "test_overwrite", {}, "AssertionError"),
    (GetMissingIsEmpty, "test_get_missing", {}, "DID NOT RAISE"),
    (DeleteMissingFails, "test_delete_idempotent", {}, "NotFound"),
    (DeleteDoesNothing, "test_delete_idempotent", {}, "should not exist"),
    (DropsEmptyObjects, "test_empty_object", {}, "AssertionError"),
    (NeverOverwrites, "test_overwrite", {}, "AssertionError"),
    (KeepsOnlyTheLastSegment, "test_keys_with_slashes", {}, "AssertionError"),
    (ExistsAlways, "test_exists", {}, "AssertionError"),
    (PingFails, "test_ping_healthy", {}, "BackendUnavailable"),
]

UNREACHABLE_FAULTS = [  # (fault, what the suite's failure must mention)
    (UnreachableWrongType, "BackendError"),
    (UnreachableLeaksSecret, "leaked"),
    (UnreachableTooSlow, "to fail"),
    (UnreachableRawOSError, "ConnectionRefusedError"),
]


@pytest_asyncio.fixture
async def local(tmp_path):
    async with LocalStorage.open(None, tmp_path) as storage:
        yield storage


async def assert_suite_fails(test, match: str = "", **kwargs) -> None:
    """``test`` (a suite method) does not pass; its failure mentions ``match``."""
    try:
        await test(StorageConformance(), **kwargs)
    except (Exception, pytest.fail.Exception) as exc:
        assert not isinstance(exc, pytest.skip.Exception)
        assert match in f"{type(exc).__name__}: {exc}", f"the suite failed for another reason: {exc!r}"
        return
    pytest.fail(f"{test.__name__} passed against a faulty backend")


@pytest.mark.parametrize(
    ("fault", "test_name", "params", "match"), FAULTS, ids=[f"{f.__name__}-{t}" for f, t, _, _ in FAULTS]
)
async def test_suite_detects(local, fault, test_name, params, match):
    await assert_suite_fails(getattr(StorageConformance, test_name), match, storage=fault(local), **params)


@pytest.mark.parametrize(("fault", "match"), UNREACHABLE_FAULTS, ids=[f.__name__ for f, _ in UNREACHABLE_FAULTS])
@pytest.mark.parametrize("operation", ["ping", "get", "head", "put", "delete"])
async def test_suite_detects_bad_unreachable_behaviour(local, monkeypatch, fault, match, operation):
    monkeypatch.setattr(conformance, "UNREACHABLE_LIMIT_S", 0.2)
    await assert_suite_fails(
        StorageConformance.test_unreachable, match,
        unreachable_storage=fault(local), secrets=(SECRET,), operation=operation,
    )


async def test_healthy_wrapper_passes(local):
    """Control: the wrapper itself is not what makes the suite fail."""
    suite = StorageConformance()
    for _fault, test_name, params, _match in FAULTS:
        if test_name != "test_large_object_streams":
            await getattr(StorageConformance, test_name)(suite, storage=Wrapper(local), **params)
    await StorageConformance.test_unreachable(
        suite, unreachable_storage=Unreachable(local), secrets=(SECRET,), operation="get"
    )
