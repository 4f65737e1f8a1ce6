"""Anti-entropy: compare this region with a target and send whatever the target lacks.

The outbox delivers each write once; this pass is the safety net for everything it cannot
cover: a target added after the writes were made, entries set aside, a KV restored from
a backup, a region that was down while another worker of ours delivered... For every
application (:meth:`~zephyr_edge.catalog.records.Catalog.apps`) :func:`reconcile` gathers

- the app's snapshots (ids and JSON),
- the assets they reference: hash → the paths naming it in the snapshots' ``assets``,
- the app's hostnames with the snapshot each one serves and its stamp (an unstamped one,
  published before stamps existed, with the lowest stamp, :data:`UNSTAMPED`),

asks the target what it lacks (``sync-check``, :data:`~.protocol.CHECK_BATCH` items per
list and request), then sends, in this order, the missing files whose bytes are in local
storage (``sync-file``), the missing snapshots (``sync-snapshot`` without hosts) and the
stale hosts grouped by the snapshot they serve (``sync-envs`` with their stamps: the target
applies each only when its stamp is newer, so a pass never undoes a later publish).

Filenames: an asset's hash is computed with the filename it was uploaded as (protocol
4.1), which is its path in the snapshot, except that with a non-root base path the path
carries the base prefix (``app/assets/main.js`` uploaded as ``assets/main.js``). When a path
has folders, the bytes are hashed locally with each candidate (the path, then the path
without its leading folders, one at a time) to find the filename the target will accept.

Errors (a request refused or failed, an unreadable record) are counted and logged, and the
pass goes on with the next item; after :data:`ABORT_AFTER_FAILED_APPS` applications in a
row whose check failed (the target is down), the pass stops (:attr:`Report.aborted`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from zephyr_edge.domain.assets import asset_hash as hash_of, storage_key
from zephyr_edge.errors import NotFound
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.domain.snapshot import Snapshot
from zephyr_edge.domain.stamps import Stamp
from zephyr_edge.storage.base import Storage
from zephyr_edge.settings.units import MiB

if TYPE_CHECKING:
    from zephyr_edge.replication.client import ReplicaClient

log = logging.getLogger(__name__)

#: The pass stops after this many applications in a row whose check failed.
ABORT_AFTER_FAILED_APPS = 3
#: Errors logged at warning per pass (the rest at debug; all are counted).
MAX_LOGGED_ERRORS = 20
#: The stamp a hostname record without one is compared and sent with.
UNSTAMPED = Stamp(0, "")
#: Assets up to this size are read once, into memory, both to find their upload name and to
#: send them; larger ones are streamed (and read twice when the name must be found).
SMALL_ASSET_BYTES = MiB


@attrs.define
class Report:
    """Counters of one pass (``apps`` counts the applications compared so far, failed ones
    included)."""

    apps_total: int = 0
    apps: int = 0
    files_checked: int = 0
    files_missing: int = 0
    files_sent: int = 0
    #: Files the target lacks whose bytes are not in local storage either (not sent).
    files_not_stored: int = 0
    bytes_sent: int = 0
    snapshots_checked: int = 0
    snapshots_sent: int = 0
    hosts_checked: int = 0
    hosts_sent: int = 0
    errors: int = 0
    aborted: str | None = None

    @property
    def ok(self) -> bool:
        """Whether everything the target lacked was sent."""
        return self.errors == 0 and self.aborted is None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def stream_asset(storage: Storage, key: str) -> AsyncIterator[bytes]:
    """The bytes of the stored object ``key``, in chunks (the blob is released at the end)."""
    async with await storage.get(key) as blob:
        async for chunk in blob.chunks():
            yield chunk


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def filename_candidates(paths: Iterable[str]) -> list[str]:
    """Filenames an asset listed under ``paths`` may have been uploaded as, likeliest first."""
    out: dict[str, None] = {}
    for path in paths:
        out.setdefault(path, None)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[i:]), None)
    return list(out)


async def find_filename(storage: Storage, key: str, asset_hash: str, candidates: list[str]) -> str | None:
    """The candidate whose protocol-4.1 hash over the stored bytes is ``asset_hash``."""
    if len(candidates) == 1:
        return candidates[0]  # the target checks it anyway
    sha, size = hashlib.sha256(), 0
    async for chunk in stream_asset(storage, key):
        sha.update(chunk)
        size += len(chunk)
    for name in candidates:
        p = name.encode("utf-8")
        h = sha.copy() if size else hashlib.sha256(p)
        h.update(p)
        if h.hexdigest() == asset_hash:
            return name
    return None


async def reconcile(
    catalog: Catalog, storage: Storage, client: ReplicaClient, *, concurrency: int,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Send ``client``'s region whatever it lacks of this region's catalog (see the module
    docstring). ``progress`` is called with the (live) :class:`Report` whenever a count
    changes. Never raises for a failed item; KV failures listing the apps propagate."""
    return await _Pass(catalog, storage, client, max(1, concurrency), progress).run()


async def periodic(catalog: Catalog, storage: Storage, client: ReplicaClient, *, interval_s: float,
                   first_delay_s: float, concurrency: int, fields: Mapping[str, Any]) -> None:
    """A pass after ``first_delay_s``, then every ``interval_s``, until cancelled; one summary
    log line per pass (with ``fields``)."""
    await asyncio.sleep(first_delay_s)
    while True:
        started = time.monotonic()
        try:
            report = await reconcile(catalog, storage, client, concurrency=concurrency)
            summary = {f"zephyr.antientropy.{k}": v for k, v in report.to_dict().items()}
            summary["zephyr.antientropy.duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            log.log(logging.INFO if report.ok else logging.WARNING, "Anti-entropy pass finished",
                    extra={"fields": {**fields, **summary}})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Anti-entropy pass failed: %s", exc, extra={"fields": {**fields, "error": str(exc)}})
        await asyncio.sleep(interval_s)


class _Pass:
    def __init__(self, catalog: Catalog, storage: Storage, client: ReplicaClient, concurrency: int,
                 progress: Callable[[Report], None] | None):
        self.catalog, self.storage, self.client = catalog, storage, client
        self.concurrency = concurrency
        self.progress = progress
        self.report = Report()
        self._logged = 0

    def _changed(self) -> None:
        if self.progress is not None:
            self.progress(self.report)

    def _error(self, what: str, exc: BaseException | None = None) -> None:
        self.report.errors += 1
        self._logged += 1
        level = logging.WARNING if self._logged <= MAX_LOGGED_ERRORS else logging.DEBUG
        log.log(level, "Anti-entropy: %s%s", what, f": {exc}" if exc else "",
                extra={"fields": {"error.type": type(exc).__name__} if exc else {}})
        self._changed()

    async def run(self) -> Report:
        apps = await self.catalog.apps()
        self.report.apps_total = len(apps)
        self._changed()
        failed_in_a_row = 0
        for app in apps:
            try:
                await self._app(app)
                failed_in_a_row = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.report.apps += 1
                self._error(f"comparing application {app!r} failed", exc)
                failed_in_a_row += 1
                if failed_in_a_row >= ABORT_AFTER_FAILED_APPS:
                    self.report.aborted = f"stopped after {failed_in_a_row} applications in a row failed: {exc}"
                    self._changed()
                    break
                continue
            self.report.apps += 1
            self._changed()
        return self.report

    async def _app(self, app: str) -> None:
        snapshots = {v.snapshot.snapshot_id: v.snapshot for v in await self.catalog.versions(app)}
        paths: dict[str, list[str]] = {}
        for snapshot in snapshots.values():
            for path, asset in snapshot.assets.items():
                paths.setdefault(asset.hash, []).append(path)
        hosts = await self.catalog.host_states(app)
        # A host never stamped (published before stamps existed) goes out with the lowest
        # stamp: it fills a region that has no stamp for it and loses against any publish.
        stamps = {h: str(s.stamp or UNSTAMPED) for h, s in hosts.items()}
        r = self.report
        r.files_checked += len(paths)
        r.snapshots_checked += len(snapshots)
        r.hosts_checked += len(hosts)
        self._changed()
        missing = await self.client.check(app, hashes=sorted(paths), snapshots=sorted(snapshots), hosts=stamps)

        files = sorted(h for h in missing.missing_hashes if h in paths)
        r.files_missing += len(files)
        await self._bounded(self._file(app, h, paths[h]) for h in files)
        await self._bounded(
            self._guarded(f"sending snapshot {sid!r}", self._snapshot(snapshots[sid]))
            for sid in sorted(missing.missing_snapshots) if sid in snapshots
        )
        groups: dict[str, dict[str, str]] = {}
        for host in sorted(h for h in missing.stale_hosts if h in hosts):
            groups.setdefault(hosts[host].snapshot_id, {})[host] = stamps[host]
        await self._bounded(
            self._guarded(f"sending hosts {sorted(group)} of {sid!r}", self._hosts(sid, snapshots, group))
            for sid, group in groups.items()
        )

    async def _bounded(self, coros: Iterable[Awaitable[None]]) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(coro: Awaitable[None]) -> None:
            async with gate:
                await coro

        await asyncio.gather(*(one(c) for c in coros))

    async def _guarded(self, what: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(f"{what} failed", exc)

    async def _file(self, app: str, asset_hash: str, paths: list[str]) -> None:
        try:
            key = storage_key(asset_hash)
            try:
                blob = await self.storage.get(key)
            except NotFound:
                self.report.files_not_stored += 1
                self._changed()
                return
            async with blob:
                size = blob.size
                data = await blob.read() if size <= SMALL_ASSET_BYTES else None
            candidates = filename_candidates(paths)
            if data is not None:
                name = next((n for n in candidates if len(candidates) == 1 or hash_of(data, n) == asset_hash), None)
                chunks: Callable[[], AsyncIterator[bytes]] = lambda: _one_chunk(data)  # noqa: E731
            else:
                name = await find_filename(self.storage, key, asset_hash, candidates)
                chunks = lambda: stream_asset(self.storage, key)  # noqa: E731
            if name is None:
                self._error(f"no path of asset {asset_hash} matches its hash; not sent")
                return
            await self.client.send_file(app, asset_hash, name, size, chunks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(f"sending asset {asset_hash} of {app!r} failed", exc)
            return
        self.report.files_sent += 1
        self.report.bytes_sent += size
        self._changed()

    async def _snapshot(self, snapshot: Snapshot) -> None:
        await self.client.send_snapshot(snapshot.to_json(), {})
        self.report.snapshots_sent += 1
        self._changed()

    async def _hosts(self, snapshot_id: str, snapshots: Mapping[str, Snapshot], group: dict[str, str]) -> None:
        if snapshot_id in snapshots:
            await self.client.send_envs(snapshots[snapshot_id].to_json(), group)
            self.report.hosts_sent += len(group)
            self._changed()
            return
        for host, stamp in group.items():  # a record not among the app's snapshots (hand-copied)
            live = await self.catalog.live(host)
            if live is None:
                continue
            await self.client.send_envs(live.to_json(), {host: stamp})
            self.report.hosts_sent += 1
            self._changed()
