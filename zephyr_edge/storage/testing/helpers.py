"""Helpers of the storage conformance suite: keys, reading blobs, bounding tests."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from zephyr_edge import errors
from zephyr_edge.storage.base import Blob, Storage
from zephyr_edge.settings.units import MiB

#: Largest chunk a blob may yield.
MAX_CHUNK = 8 * MiB
#: Bound of any single test (a hanging backend fails instead of blocking the run).
TEST_TIMEOUT_S = 120.0


def bounded(seconds: float = TEST_TIMEOUT_S) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Fail an async test that runs longer than ``seconds`` instead of hanging."""

    def decorate(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> Any:
            deadline = asyncio.timeout(seconds)
            try:
                async with deadline:
                    return await test(*args, **kwargs)
            except TimeoutError:
                if deadline.expired():
                    pytest.fail(f"{test.__name__} did not finish within {seconds:g} s")
                raise

        return run

    return decorate


def new_key(label: str = "") -> str:
    """A fresh key shaped like the core's: ``ab/cd/<64 hex>`` (plus ``label``)."""
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}{'-' + label if label else ''}"


async def read_all(blob: Blob) -> bytes:
    """The blob's bytes, checking every chunk is bytes of bounded size."""
    parts = []
    async for chunk in blob.chunks():
        assert isinstance(chunk, bytes), f"chunks must be bytes, got {type(chunk).__name__}"
        assert len(chunk) <= MAX_CHUNK, f"chunk of {len(chunk)} bytes exceeds {MAX_CHUNK}"
        parts.append(chunk)
    return b"".join(parts)


async def fetch(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return await read_all(await storage.get(key, start, end))


async def assert_absent(storage: Storage, key: str) -> None:
    assert await storage.head(key) is None, f"{key} should not exist"
    assert not await storage.exists(key)
    with pytest.raises(errors.NotFound):
        await storage.get(key)


async def close_iterator(iterator: AsyncIterator[bytes]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
