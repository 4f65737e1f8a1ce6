"""The storage SPI: where asset bytes live.

A storage backend holds opaque objects under string keys that the core decides; it only
moves bytes. The contract (what each method guarantees, errors, options, lifecycle,
registration, the conformance suite in :mod:`zephyr_edge.storage.testing`) is stated once,
in ``backends.md`` ("The storage interface"); the docstrings here are reminders.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from pathlib import Path

#: Size of the chunks backends should yield when streaming an object out.
CHUNK_SIZE = 256 * 1024


@attrs.frozen
class ObjectInfo:
    """Metadata of a stored object."""

    size: int


class Blob(abc.ABC):
    """An object being read: its total size, the byte range served, and a chunk stream.

    ``size`` is the size of the whole object; ``start``/``end`` (end exclusive) delimit the
    bytes :meth:`chunks` yields (the whole object unless a range was asked for).
    """

    size: int
    start: int
    end: int

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """Yield the bytes from ``start`` to ``end`` in order, in chunks of bounded size.

        May be iterated once. Failures while streaming raise :class:`BackendError`.
        """

    async def read(self) -> bytes:
        """All the selected bytes at once (for small objects only)."""
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        """Release what the blob holds (pooled connection, open file) without reading the
        rest; idempotent. Exhausting or closing :meth:`chunks` also releases it; a caller
        that may not iterate (HEAD, early error) must call this, e.g. ``async with blob:``."""

    async def __aenter__(self) -> Blob:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Storage(abc.ABC):
    """An asset store (contract: ``backends.md``, "The storage interface" and "Errors").
    Every method raises only :class:`~zephyr_edge.errors.BackendUnavailable` or
    :class:`~zephyr_edge.errors.BackendError`, the client library's exception chained."""

    #: attrs class of this backend's options, or None when it takes none.
    Options: ClassVar[type | None] = None
    #: Key prefix of the options: field ``bucket`` of prefix ``S3`` is ``ZE_WORKER_S3_BUCKET``.
    options_prefix: ClassVar[str] = ""
    #: Name used in logs and errors.
    name: ClassVar[str] = "storage"

    @classmethod
    @abc.abstractmethod
    def open(cls, options: Any, data_dir: Path) -> contextlib.AbstractAsyncContextManager[Storage]:
        """Build the clients from ``options`` and yield a ready backend; close them on exit.

        ``data_dir`` is the worker's data folder (``ZE_WORKER_DATA_DIR``), for a backend that
        keeps files on the host; it may not exist yet.

        Must not perform I/O that fails when the service is down: a worker starts (and
        reports not-ready) while its backends are unreachable.
        """

    @abc.abstractmethod
    async def put(self, key: str, chunks: AsyncIterator[bytes], size: int | None = None) -> None:
        """Store the bytes yielded by ``chunks`` under ``key``, atomically and streaming
        (``size``, when given, is exact); see backends.md for what atomic means here."""

    @abc.abstractmethod
    async def get(self, key: str, start: int = 0, end: int | None = None) -> Blob:
        """Open ``key`` for reading bytes ``start`` to ``end`` (exclusive; None = to the end).

        Raises :class:`~zephyr_edge.errors.NotFound` when there is no such object. The
        caller validates ranges against :meth:`head`; a backend may assume
        ``0 <= start <= end <= size``.
        """

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """Metadata of ``key``, or None when there is no such object."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``. Deleting a missing key is not an error."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Cheap reachability check (the bucket or folder exists and answers).

        Returns on success; raises BackendUnavailable/BackendError naming what is wrong.
        Must not leak secrets in its message.
        """

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""
        return await self.head(key) is not None

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Convenience: store a small bytes object."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.put(key, one(), len(data))
