"""The KV SPI: where environment (hostname) and snapshot records live.

A KV backend stores byte values and sets of byte members under string keys. The core
builds every key (from the configured prefixes, all sharing one Redis Cluster hash tag)
and derives publish, hash lists, caching and replication from the primitives below.

Keys passed to one :meth:`KV.atomic` or :meth:`KV.atomic_if` call (expected keys and op
keys alike) always share a hash tag (``{...}``), so a clustered backend may rely on them
living in one slot.

Writing a backend: subclass :class:`KV`, give it an ``Options`` attrs class, implement
``open`` and the abstract methods, register the class in the ``zephyr_edge.kv``
entry-point group, and run :mod:`zephyr_edge.kv.testing` against it. See ``backends.md``.
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
    """Contract of a key-value store. Every method may raise
    :class:`~zephyr_edge.errors.BackendUnavailable` (cannot reach the service) or
    :class:`~zephyr_edge.errors.BackendError` (anything else), with the client library's
    exception chained as the cause. No other exception type may escape.

    A key holds either a plain value or a set; the core never mixes the two on one key.
    """

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
        """Apply ``ops`` in order, all or nothing: no reader ever sees some applied and
        others not, and a failure to reach or to queue the write leaves none applied. All
        keys share one hash tag.

        An op that does not fit the type of its key (``SetAdd`` on a plain value) may fail
        while the others are applied: Redis ``MULTI``/``EXEC`` does not roll back errors it
        finds while executing. The core never mixes plain values and sets on one key, so its
        batches never fail that way; backends need not (and Redis cannot) guard against it.
        """

    @abc.abstractmethod
    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        """Like :meth:`atomic`, but only if every key of ``expect`` holds exactly the given
        value at that moment (``None``: the key is absent); True when ``ops`` were applied,
        False (nothing applied) otherwise. The check and the write are one atomic step: of
        many concurrent callers expecting the same current value of a key that their
        ``ops`` change, exactly one gets True. ``expect`` keys are plain values (never
        sets) and share the hash tag of the ``ops`` keys; ``b""`` is a value, not absence.
        ``ops`` may be empty (a pure check). The caveat of :meth:`atomic` about an op that
        does not fit its key's type applies here too. Used for compare-and-set: replication leases and last-writer-wins publishes.
        """

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
