"""Hostname → snapshot, in process: a warm request reads no KV.

Entries (:class:`HostEntry`) are keyed by the normalised host, and a memo maps each
``Host`` header as sent to its normalised form, so a warm lookup is two dict accesses and
the variants of one host (case, port) share one entry and one parsed snapshot. An entry
is trusted for ``host_cache_ttl_ms``; an unknown host is remembered too (a negative
entry), for at most :data:`NEGATIVE_TTL_MAX_S`. Both maps are bounded
(:data:`MAX_HOST_ENTRIES`, oldest dropped first), so random ``Host`` headers cannot grow
memory; a ``Host`` that is no valid name (too long, bad characters) is never remembered.

Invalidation across workers: every publish bumps the catalog's generation counter
(:meth:`~zephyr_edge.catalog.records.Catalog.generation`). :func:`watch_generation` polls it every
``invalidation_poll_ms`` and clears the cache when it moved, so a publish or rollback made
through any worker sharing the KV is served everywhere within one poll interval (plus one
KV read). A value written into ``envs:<host>`` by hand does not bump the counter: it is
served once the entry's TTL has run out.

Read-your-writes: the cache registers with :meth:`Catalog.on_hosts_written
<zephyr_edge.catalog.records.Catalog.on_hosts_written>`, so a hostname write made through this
worker (an ``envs`` publish, a snapshot's version host, a replicated write) drops that
host's entry before the write is answered (:meth:`HostCache.invalidate`): the accepting
worker serves it at once, without waiting for the poll.

Resilience: concurrent misses of one host share one KV read; a lookup that started before
a clear never stores its (possibly stale) result; when the KV cannot be reached, a host
seen before keeps serving its last snapshot for up to :data:`STALE_IF_ERROR_S`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable

from zephyr_edge.domain import hostnames, publicurl
from zephyr_edge.http.serving.cache import SingleFlight
from zephyr_edge.errors import BackendError, BackendUnavailable
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.http.serving.resolve import resolve_path
from zephyr_edge.http.serving.variants import Route
from zephyr_edge.domain.snapshot import Asset, Snapshot, load_live_payload

log = logging.getLogger(__name__)

#: Longest life of a negative (unknown host) entry, whatever the TTL.
NEGATIVE_TTL_MAX_S = 1.0
#: Most hostnames remembered at once.
MAX_HOST_ENTRIES = 10_000
#: Most request paths remembered per host (further paths are resolved every time).
MAX_ROUTES_PER_HOST = 4096
#: Longer request paths are resolved every time, never remembered (random 8 KB paths
#: would otherwise hold 32 MB per published host).
MAX_REMEMBERED_PATH_CHARS = 1024
#: How long a known host keeps serving its last snapshot while the KV cannot be reached.
STALE_IF_ERROR_S = 900.0
#: While serving stale, how often a request tries the KV again.
STALE_RETRY_S = 1.0
#: Bound of one KV read of a live payload.
LOOKUP_TIMEOUT_S = 5.0
#: Bound of one read of the generation counter.
POLL_TIMEOUT_S = 2.0
#: While the KV fails, the poller logs at most once per this many seconds.
POLL_FAILURE_LOG_EVERY_S = 30.0

RouteFactory = Callable[[Asset, bool], Route]


class HostEntry:
    """What one hostname serves: its snapshot (None for an unknown host) and the routes
    resolved so far."""

    __slots__ = (
        "host", "snapshot", "raw", "immutable", "expires_at", "stale_until", "stale", "_routes", "_by_asset", "_factory",
    )

    def __init__(self, host: str, snapshot: Snapshot | None, raw: bytes | None, immutable: bool, factory: RouteFactory):
        self.host = host
        self.snapshot = snapshot
        self.raw = raw
        #: the host is the snapshot's version host: its URLs never change bytes
        self.immutable = immutable
        self.expires_at = 0.0
        self.stale_until = 0.0
        #: served past its TTL because the KV failed (logged once per episode)
        self.stale = False
        self._routes: dict[str, Route | None] = {}
        self._by_asset: dict[str, Route] = {}
        self._factory = factory

    def route(self, raw_path: str) -> Route | None:
        """The route a raw request path (no query) resolves to, or None (404)."""
        try:
            return self._routes[raw_path]
        except KeyError:
            pass
        assert self.snapshot is not None
        asset = resolve_path(raw_path, self.snapshot.assets)
        route = None
        if asset is not None:
            route = self._by_asset.get(asset.path)
            if route is None:
                route = self._by_asset[asset.path] = self._factory(asset, self.immutable)
        if len(self._routes) < MAX_ROUTES_PER_HOST and len(raw_path) <= MAX_REMEMBERED_PATH_CHARS:
            self._routes[raw_path] = route
        return route


def _bounded_put(mapping: dict, key: object, value: object, limit: int) -> None:
    """``mapping[key] = value``, first dropping the oldest entry when ``limit`` is reached."""
    if key not in mapping and len(mapping) >= limit:
        del mapping[next(iter(mapping))]
    mapping[key] = value


def is_version_host(host: str, snapshot_id: str, delimiter: str) -> bool:
    """Whether ``host`` is the version host of ``snapshot_id``: ``<version label><delimiter>
    <edge host>``, or ``<version label>.localhost`` (the name given under a local edge, see
    :mod:`zephyr_edge.domain.publicurl`). The label carries a hash of the id, so no other host
    starts with it."""
    if not snapshot_id:
        return False
    label = hostnames.version_label(snapshot_id).lower()
    if host == f"{label}{publicurl.LOCALHOST_DELIMITER}{publicurl.LOCALHOST}":
        return True
    prefix = label + delimiter
    return host.startswith(prefix) and len(host) > len(prefix)


class HostCache:
    """Bounded hostname → :class:`HostEntry` cache over a :class:`Catalog`.

    Entries are keyed by the normalised host; a second bounded map remembers how each
    ``Host`` header as sent normalises, so a warm lookup is two dict accesses and ``Host``
    variants (case, port) share one entry.
    """

    def __init__(
        self, catalog: Catalog, *, ttl_s: float, delimiter: str, route_factory: RouteFactory,
        max_entries: int = MAX_HOST_ENTRIES, clock: Callable[[], float] = time.monotonic,
    ):
        self.catalog = catalog
        self.ttl_s = ttl_s
        self.negative_ttl_s = min(ttl_s, NEGATIVE_TTL_MAX_S)
        self.delimiter = delimiter
        self.max_entries = max_entries
        self._factory = route_factory
        self._clock = clock
        self._names: dict[str | None, str | None] = {}
        self._entries: dict[str, HostEntry] = {}
        self._flights: SingleFlight[str, HostEntry] = SingleFlight()
        self._epoch = 0
        #: the publish counter last read by :func:`watch_generation` (None: unknown)
        self.generation: int | None = None
        self._unsubscribe = catalog.on_hosts_written(self.invalidate)

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, raw_host: str | None) -> HostEntry | None:
        """The entry of ``raw_host`` if it is still trusted (the warm path: no I/O)."""
        host = self._names.get(raw_host)
        if host is None:
            return None
        entry = self._entries.get(host)
        if entry is not None and entry.expires_at > self._clock():
            return entry
        return None

    def _normalize(self, raw_host: str | None) -> str | None:
        try:
            return self._names[raw_host]
        except KeyError:
            pass
        host = hostnames.normalize_host(raw_host)
        if host is not None:  # valid names only, so at most MAX_HOST_HEADER_CHARS each
            _bounded_put(self._names, raw_host, host, self.max_entries)
        return host

    async def lookup(self, raw_host: str | None) -> HostEntry | None:
        """The entry of ``raw_host``, read from the KV when not fresh; None for an invalid
        ``Host``. Raises :class:`BackendError` when the KV fails and nothing stale may serve."""
        host = self._normalize(raw_host)
        if host is None:
            return None
        previous = self._entries.get(host)
        if previous is not None and previous.expires_at > self._clock():
            return previous
        epoch = self._epoch
        try:
            entry = await self._flights.run(host, lambda: self._load(host, previous))
        except BackendError as exc:
            now = self._clock()
            if previous is None or previous.snapshot is None or previous.stale_until <= now:
                raise
            previous.expires_at = now + STALE_RETRY_S
            if not previous.stale:
                previous.stale = True
                log.warning(
                    "KV unavailable; serving the last known snapshot of this host",
                    extra={"fields": {"http.host": host, "error": str(exc)}},
                )
            return previous
        if self._epoch == epoch:
            if self._entries.pop(host, None) is None and len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[host] = entry
        return entry

    async def _load(self, host: str, previous: HostEntry | None) -> HostEntry:
        key = self.catalog.envs_key(host)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                raw = await self.catalog.kv.get(key)
        except TimeoutError:
            raise BackendUnavailable(self.catalog.kv.name, f"reading {key!r} timed out") from None
        now = self._clock()
        if raw is None:
            entry = HostEntry(host, None, None, False, self._factory)
        elif previous is not None and previous.raw == raw:
            entry = previous  # unchanged: keep its resolved routes
        else:
            snapshot = load_live_payload(raw)
            immutable = is_version_host(host, snapshot.snapshot_id, self.delimiter)
            entry = HostEntry(host, snapshot, raw, immutable, self._factory)
        entry.stale = False
        entry.expires_at = now + (self.ttl_s if raw is not None else self.negative_ttl_s)
        entry.stale_until = now + STALE_IF_ERROR_S if raw is not None else 0.0
        return entry

    def clear(self) -> None:
        """Forget every entry; lookups running now will not store their results."""
        self._epoch += 1
        self._entries.clear()
        self._flights.forget()

    def invalidate(self, hosts: Iterable[str]) -> None:
        """Forget the entries of ``hosts`` (normalised names) after a write moved them.
        Lookups running now (of any host: they may have read the old record) will not
        store their results, and later lookups do not join them."""
        self._epoch += 1
        for host in hosts:
            self._entries.pop(host, None)
        self._flights.forget()

    async def close(self) -> None:
        self._unsubscribe()
        await self._flights.close()


async def watch_generation(catalog: Catalog, hosts: HostCache, interval_s: float) -> None:
    """Clear ``hosts`` whenever the catalog's generation counter moves (runs until
    cancelled). The first successful read, and the first after a failure, clear too (a
    publish may have been missed). Failures are logged, rate-limited, and never end the
    loop."""
    last: int | None = None
    failures = 0
    last_logged = -math.inf
    while True:
        try:
            async with asyncio.timeout(POLL_TIMEOUT_S):
                generation = await catalog.generation()
        except Exception as exc:  # TimeoutError, BackendError, a corrupt counter...
            last = hosts.generation = None
            failures += 1
            now = time.monotonic()
            if now - last_logged >= POLL_FAILURE_LOG_EVERY_S:
                last_logged = now
                log.warning(
                    "Cannot read the publish counter; hostname cache invalidation is paused",
                    extra={"fields": {"error": str(exc) or type(exc).__name__, "poll.failures": failures}},
                )
        else:
            if failures:
                log.info("Publish counter readable again", extra={"fields": {"poll.failures": failures}})
                failures, last_logged = 0, -math.inf
            if generation != last:
                if last is not None:
                    log.debug("Publish seen; clearing the hostname cache", extra={"fields": {"generation": generation}})
                hosts.clear()
                last = hosts.generation = generation
        await asyncio.sleep(interval_s)
