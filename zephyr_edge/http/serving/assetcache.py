"""Asset bytes by hash, in process: a warm request reads no storage.

One :class:`~zephyr_edge.http.serving.cache.ByteLRU` (``cache_size_mb``; 0 disables it) holds the
identity bytes of assets up to ``cache_max_asset_kb`` under their hash, and their
compressed variants under ``<hash>-gz`` / ``<hash>-br`` (the ETag values), within the
same byte budget. Bytes under a hash never change, so entries need no invalidation.

A compressed variant that saves less than :data:`MIN_SAVING` of the identity bytes (an
already compressed or random body under a text type) is neither cached nor sent: the key is
remembered as not worth encoding and the identity bytes are served instead.

Concurrent misses of one key share one storage read (or one compression): the first
starts it, the others wait for it; a failure (missing object, storage down) reaches every
waiter and is not cached, so the next request tries again.
"""

from __future__ import annotations

import asyncio
import logging

from zephyr_edge.http.serving.cache import ByteLRU, SingleFlight
from zephyr_edge.errors import BackendUnavailable
from zephyr_edge.http.serving.variants import Route, Variant
from zephyr_edge.storage.base import Storage

log = logging.getLogger(__name__)

#: Bound of one storage read of a cacheable asset (open + all its bytes).
READ_TIMEOUT_S = 30.0
#: Bodies at least this large are compressed in a worker thread, off the event loop.
THREAD_COMPRESS_BYTES = 64 * 1024
#: Smallest share of the identity size a compressed variant must save to be used.
MIN_SAVING = 0.1
#: Bound of the set of variants known not to be worth encoding (cleared when full).
MAX_REMEMBERED_INCOMPRESSIBLE = 65536


class AssetCache:
    """Identity and compressed bytes of small assets, bounded by total bytes."""

    __slots__ = ("storage", "max_asset_bytes", "lru", "_flights", "reads", "_incompressible")

    def __init__(self, storage: Storage, *, budget_bytes: int, max_asset_bytes: int):
        self.storage = storage
        self.max_asset_bytes = max_asset_bytes
        self.lru: ByteLRU[str] = ByteLRU(budget_bytes)
        self._flights: SingleFlight[str, bytes | None] = SingleFlight()
        self._incompressible: set[str] = set()

    def worth_encoding(self, cache_key: str) -> bool:
        """False once the variant ``cache_key`` turned out not to pay (see the module doc)."""
        return cache_key not in self._incompressible

    def get(self, cache_key: str) -> bytes | None:
        """Cached bytes of a variant (the warm path: no I/O), or None."""
        return self.lru.get(cache_key)

    async def load(self, route: Route) -> bytes | None:
        """The identity bytes of ``route``'s asset, from the cache or one shared storage
        read. None when the stored object turns out larger than ``max_asset_bytes`` (the
        caller streams it). Raises :class:`~zephyr_edge.errors.NotFound` when it is not
        stored (yet)."""
        key = route.identity.cache_key
        data = self.lru.get(key)
        if data is not None:
            return data
        return await self._flights.run(key, lambda: self._read(route.storage_key, key))

    async def _read(self, storage_key: str, cache_key: str) -> bytes | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                async with await self.storage.get(storage_key) as blob:
                    if blob.size > self.max_asset_bytes:
                        return None
                    data = await blob.read()
        except TimeoutError:
            raise BackendUnavailable(
                self.storage.name, f"reading {storage_key!r} took more than {READ_TIMEOUT_S:.0f} s"
            ) from None
        self.lru.put(cache_key, data)
        return data

    async def encoded(self, variant: Variant, identity: bytes) -> bytes | None:
        """The bytes of ``variant`` (a codec's) made from ``identity``, cached; None when
        they would not save :data:`MIN_SAVING` (send the identity bytes)."""
        key = variant.cache_key
        data = self.lru.get(key)
        if data is not None:
            return data
        if key in self._incompressible:
            return None
        return await self._flights.run(key, lambda: self._compress(variant, identity))

    async def _compress(self, variant: Variant, identity: bytes) -> bytes | None:
        assert variant.codec is not None
        if len(identity) >= THREAD_COMPRESS_BYTES:
            data = await asyncio.to_thread(variant.codec.compress, identity)
        else:
            data = variant.codec.compress(identity)
        if len(data) > len(identity) * (1 - MIN_SAVING):
            if len(self._incompressible) >= MAX_REMEMBERED_INCOMPRESSIBLE:
                self._incompressible.clear()
            self._incompressible.add(variant.cache_key)
            return None
        self.lru.put(variant.cache_key, data)
        return data

    async def close(self) -> None:
        await self._flights.close()
        self.lru.clear()
