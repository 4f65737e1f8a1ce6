"""The KV SPI: where environment (hostname) and snapshot records live.

A KV backend stores byte values and sets of byte members under string keys that the core
builds; the core derives publish, hash lists, caching and replication from the primitives
below. The contract (what each method guarantees, errors, options, lifecycle, registration,
the conformance suite in :mod:`zephyr_edge.kv.testing`) is stated once, in ``backends.md``
("The KV interface"); the docstrings here are reminders.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from pathlib import Path


def _members(value: Iterable[bytes]) -> frozenset[bytes]:
    return frozenset(value)


@attrs.frozen
class Set:
    """Write ``value`` at ``key`` (a plain value; replaces any previous value)."""

    key: str
    value: bytes


@attrs.frozen
class Delete:
    """Remove ``key`` (whatever its type; missing is fine)."""

    key: str


@attrs.frozen
class SetAdd:
    """Add ``members`` to the set at ``key``."""

    key: str
    members: frozenset[bytes] = attrs.field(converter=_members)


@attrs.frozen
class SetRemove:
    """Remove ``members`` from the set at ``key``."""

    key: str
    members: frozenset[bytes] = attrs.field(converter=_members)


Op = Set | Delete | SetAdd | SetRemove


class KV(abc.ABC):
    """A key-value store (contract: ``backends.md``, "The KV interface" and "Errors"). Every
    method raises only :class:`~zephyr_edge.errors.BackendUnavailable` or
    :class:`~zephyr_edge.errors.BackendError`, the client library's exception chained."""

    Options: ClassVar[type | None] = None
    options_prefix: ClassVar[str] = ""
    name: ClassVar[str] = "kv"

    @classmethod
    @abc.abstractmethod
    def open(cls, options: Any, data_dir: Path) -> contextlib.AbstractAsyncContextManager[KV]:
        """Build the clients from ``options`` and yield a ready backend; close them on exit.

        ``data_dir`` is the worker's data folder (``ZE_WORKER_DATA_DIR``), for a backend that
        keeps files on the host; it may not exist yet.

        Must not fail when the service is down at start: the worker starts and reports
        not-ready until it comes back.
        """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value at ``key``, or None when absent."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (None where absent). Keys may span hash tags."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes) -> None:
        """Write ``value`` at ``key``."""

    @abc.abstractmethod
    async def set_if_absent(self, key: str, value: bytes) -> bool:
        """Write ``value`` only if ``key`` is absent; True when this call wrote it.

        Of many concurrent callers on one absent key exactly one gets True.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; missing is fine."""

    @abc.abstractmethod
    async def incr(self, key: str) -> int:
        """Atomically add one to the integer at ``key`` (absent counts as 0); the new value."""

    @abc.abstractmethod
    async def atomic(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, all or nothing; all keys share one hash tag (see
        backends.md for an op that does not fit its key's type)."""

    @abc.abstractmethod
    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        """Compare-and-set: apply ``ops`` (as :meth:`atomic`) only if every key of ``expect``
        holds exactly the given value (``None``: absent), in one atomic step; True when
        applied. Replication leases and last-writer-wins publishes rely on it (backends.md,
        "Compare-and-set: atomic_if")."""

    @abc.abstractmethod
    async def smembers(self, key: str) -> set[bytes]:
        """Members of the set at ``key`` (empty when absent)."""

    @abc.abstractmethod
    async def sismember(self, key: str, member: bytes) -> bool:
        """Whether ``member`` is in the set at ``key``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Cheap reachability check; raises BackendUnavailable/BackendError naming the
        problem, never a secret."""

    async def scard(self, key: str) -> int:
        """Number of members of the set at ``key`` (0 when absent). Backends with a cheap
        count should override this default, which reads every member."""
        return len(await self.smembers(key))

    async def sadd(self, key: str, *members: bytes) -> None:
        """Add members to the set at ``key``."""
        await self.atomic([SetAdd(key, members)])
