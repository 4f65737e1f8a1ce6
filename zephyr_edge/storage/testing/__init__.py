"""Conformance suite for storage backends, shipped in the package.

Every storage backend, built-in or third-party, proves it honours the contract of
:class:`zephyr_edge.storage.base.Storage` by running this suite. Subclass
:class:`StorageConformance` in a test module (the class name must start with ``Test`` for
pytest to collect it) and provide two async fixtures:

``storage``
    yields a ready, opened backend, isolated per test (a fresh bucket, folder or prefix).
``unreachable_storage``
    yields the same backend opened against something that does not answer (a closed
    port, a missing folder...). Opening it must succeed: only operations fail.

and optionally:

``second_storage``
    yields a *second*, separately opened instance over the same data as ``storage``
    (two workers sharing a store). Without it the two-instance race test is skipped.
``secrets``
    a tuple of strings (passwords, keys) that must never appear in error messages;
    default ``()``.

Example (requires pytest and pytest-asyncio; works in pytest-asyncio's strict mode, every
test carries its own ``@pytest.mark.asyncio``)::

    import pytest
    import pytest_asyncio

    from zephyr_edge.storage.testing import StorageConformance
    from my_backend import MyStorage


    class TestMyStorage(StorageConformance):
        @pytest_asyncio.fixture
        async def storage(self, tmp_path):
            options = MyStorage.Options(url="...", folder=str(tmp_path))
            async with MyStorage.open(options, tmp_path) as backend:
                yield backend

        @pytest_asyncio.fixture
        async def unreachable_storage(self, tmp_path):
            options = MyStorage.Options(url="http://127.0.0.1:9", password="hunter2")
            async with MyStorage.open(options, tmp_path) as backend:
                yield backend

        @pytest.fixture
        def secrets(self):
            return ("hunter2",)

What it checks: round trips, empty objects, overwrites, ``head``/``exists``/``delete``
semantics, ``NotFound`` on missing keys, byte ranges (including empty ranges and the last
byte), ``ab/cd/<hex>`` keys, concurrent writers of one key (one of them wins whole; readers
never see a partial object), concurrent writers of different keys, producers that fail or
are cancelled midway (their exception propagates, nothing new becomes visible, a previous
object stays intact), a 64 MiB object written and read with bounded memory (measured with
:mod:`tracemalloc`: the peak must stay under half the object), and that an unreachable
backend fails every operation with ``BackendUnavailable`` within 15 s without leaking a
secret. Each test is bounded in time, so a hanging backend fails rather than blocks the
run. The suite creates its own keys (``new_key``) and deletes nothing it did not write.
"""

from zephyr_edge.storage.testing.conformance import (
    LARGE_PEAK_LIMIT,
    LARGE_SIZE,
    UNREACHABLE_LIMIT_S,
    StorageConformance,
)
from zephyr_edge.storage.testing.data import Generated, ProducerError, pattern
from zephyr_edge.storage.testing.helpers import bounded, fetch, new_key, read_all

__all__ = [
    "LARGE_PEAK_LIMIT",
    "LARGE_SIZE",
    "UNREACHABLE_LIMIT_S",
    "Generated",
    "ProducerError",
    "StorageConformance",
    "bounded",
    "fetch",
    "new_key",
    "pattern",
    "read_all",
]
