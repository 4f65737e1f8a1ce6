"""The catalog: every record the worker keeps in the KV, written once against the KV SPI.

Layout (``T`` is the hash tag of the configured prefixes, ``{ze-k8s-worker}`` by default;
every key carries it, so each multi-key write is one Redis Cluster slot):

- ``PREFIX_SNAPSHOTS + id`` → snapshot JSON (Zephyr's documented layout)
- ``PREFIX_ENVS + host`` → the live snapshot JSON of that hostname (Zephyr's layout; a raw
  snapshot JSON copied there by hand serves)
- ``T:hashes:<app>`` → set of asset hashes whose bytes are durably stored for that app
- ``T:app-snapshots:<app>`` → set of the app's snapshot ids
- ``T:app-hosts:<app>`` → set of hostnames ever published for the app
- ``T:host-stamp:<host>`` → the :class:`~zephyr_edge.domain.stamps.Stamp` of the hostname's last
  write (``<epoch ms>|<replica>``): last-writer-wins across regions
- ``T:apps`` → set of application uids with at least one stored snapshot
- ``T:generation`` → counter bumped after every publish; workers watch it to drop their
  hostname caches (cross-worker invalidation)

Read-your-writes: callbacks registered with :meth:`Catalog.on_hosts_written` are called
with the hostnames of every hostname write made through this catalog, once it is stored
and before the write's caller returns; the worker's hostname cache registers one, so the
worker that accepted a publish serves it in its answer's wake (the others see the
generation counter move).

Replication: with a :class:`Journal` (the region's outbox), every write accepted from a
client (a new hash, a snapshot, a publish) is recorded for the other regions in the same
atomic KV step that makes it visible here. Writes received from another region go through
:meth:`Catalog.apply_replicated` / :meth:`Catalog.apply_file`, which never record them
again, and apply a hostname only when its stamp is newer than the one held.

Ownership: a snapshot id stored for one application cannot be saved again by another, and
a publish on behalf of an application (``publish(..., application_uid=...)``) can neither
use another application's snapshot nor take over a hostname that serves another
application. These checks are part of the write's compare-and-set: two applications
racing for one hostname cannot both win. A version hostname only ever points at its own
snapshot (:func:`hostnames.version_host_conflict`: also for a snapshot that does not exist
yet), whoever writes: a publish that would move one raises :class:`VersionHostTaken`, and
a replicated write skips it. Records that cannot be read are skipped (and logged) by listings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from zephyr_edge.domain import hostnames
from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.errors import BackendError, BadRequest, Forbidden, NotFound, shorten
from zephyr_edge.kv.base import KV, Op, Set, SetAdd
from zephyr_edge.domain.snapshot import InvalidLivePayload, Snapshot, load_live_payload
from zephyr_edge.domain.stamps import Stamp, newer, next_stamp

log = logging.getLogger(__name__)


class VersionHostTaken(Forbidden):
    """A write would point a version hostname at another snapshot than its own."""

    code = "version_host_reserved"


#: Attempts of a hostname write that keeps losing its compare-and-set to concurrent writes.
STAMPED_WRITE_ATTEMPTS = 20


class Journal(Protocol):
    """Where writes to replicate are recorded (:class:`zephyr_edge.replication.outbox.Outbox`)."""

    async def record(self, kind: str, body: Mapping[str, Any]) -> list[Op]:
        """The KV operations that record one write of ``kind`` (``file``, ``snapshot``,
        ``envs``) described by ``body``; the caller applies them in the same atomic step
        as the write itself."""


@attrs.frozen
class HostState:
    """What a hostname serves here, and the stamp of its last write (None: unstamped)."""

    snapshot_id: str
    stamp: Stamp | None


@attrs.frozen
class Version:
    """A snapshot of an app and the hostnames that currently point at it."""

    snapshot: Snapshot
    hosts: tuple[str, ...]


class Catalog:
    """Snapshots, hostnames and hash lists on top of a :class:`KV`."""

    def __init__(self, kv: KV, worker: WorkerConfig, journal: Journal | None = None):
        self.kv = kv
        #: Records writes for the other regions; None when this region sends nothing.
        self.journal = journal
        self._replica = worker.replica_name
        self._envs = worker.redis_prefix_envs
        self._snapshots = worker.redis_prefix_snapshots
        self._written: list[Callable[[Sequence[str]], None]] = []
        hostnames.configured_hash_tag(worker)  # raises ConfigError for unusable prefixes

    # --- local write notification -------------------------------------------------------

    def on_hosts_written(self, callback: Callable[[Sequence[str]], None]) -> Callable[[], None]:
        """Call ``callback(hosts)`` after every hostname write stored through this catalog
        (normalised names; before the write's caller gets its answer). Returns the function
        that unregisters it. A callback must not raise or block."""
        self._written.append(callback)
        return lambda: self._written.remove(callback) if callback in self._written else None

    def _hosts_written(self, hosts: Sequence[str]) -> None:
        for callback in list(self._written):
            try:
                callback(hosts)
            except Exception:  # a broken listener must not fail a stored write
                log.exception("Hostname write listener failed")

    # --- keys ---------------------------------------------------------------------------

    def envs_key(self, host: str) -> str:
        return hostnames.envs_key(self._envs, host)

    def snapshot_key(self, snapshot_id: str) -> str:
        return hostnames.snapshots_key(self._snapshots, snapshot_id)

    def _key(self, *parts: str) -> str:
        return hostnames.tagged_key(self._envs, *parts)

    def stamp_key(self, host: str) -> str:
        return self._key("host-stamp", host)

    @property
    def generation_key(self) -> str:
        return self._key("generation")

    @property
    def apps_key(self) -> str:
        return self._key("apps")

    # --- hash lists ---------------------------------------------------------------------

    async def hashes(self, application_uid: str) -> set[str]:
        """Hashes whose bytes are durably stored for ``application_uid``."""
        members = await self.kv.smembers(self._key("hashes", application_uid))
        return {m.decode("ascii") for m in members}

    async def add_hash(self, application_uid: str, asset_hash: str, filename: str) -> None:
        """Record ``asset_hash`` (uploaded as ``filename``) for the app; call only once its
        bytes are durably stored. Recorded for the other regions in the same step."""
        key, member = self._key("hashes", application_uid), asset_hash.encode("ascii")
        if self.journal is None:
            await self.kv.sadd(key, member)
            return
        body = {"application_uid": application_uid, "hash": asset_hash, "filename": filename}
        await self.kv.atomic([SetAdd(key, [member]), *await self.journal.record("file", body)])

    async def apply_file(self, application_uid: str, asset_hash: str) -> None:
        """List ``asset_hash`` for the app after another region sent its bytes (stored
        already); never recorded for replication again."""
        await self.kv.sadd(self._key("hashes", application_uid), asset_hash.encode("ascii"))

    async def has_hash(self, application_uid: str, asset_hash: str) -> bool:
        return await self.kv.sismember(self._key("hashes", application_uid), asset_hash.encode("ascii"))

    # --- snapshots and hostnames ---------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot, version_host: str) -> None:
        """Store ``snapshot`` and point its version hostname at it, in one atomic write.

        Re-saving an id overwrites it. Raises :class:`Forbidden` when the id is already
        stored for another application (ids are ``<version>.<application_uid>``, so an
        application ``org`` could otherwise name ``u-1.app.repo.org``), or when the version
        host serves another application.
        """
        version_host = _normalized([version_host], "version_host")[0]
        id_key = self.snapshot_key(snapshot.snapshot_id)

        def id_not_taken(values: Mapping[str, bytes | None]) -> None:
            owner = _owner(values[id_key])
            if owner and owner != snapshot.application_uid:
                raise Forbidden(f"snapshot {snapshot.snapshot_id!r} belongs to application {owner!r}")

        await self._stamped_write(
            snapshot, [version_host], self._snapshot_ops(snapshot), "snapshot",
            owner=snapshot.application_uid, guard=[id_key], check=id_not_taken,
        )

    async def publish(
        self, snapshot_id: str, hosts: Iterable[str], application_uid: str | None = None
    ) -> Snapshot:
        """Point every host of ``hosts`` at the stored snapshot ``snapshot_id`` (a tag,
        environment, custom domain or a rollback). Hosts are normalised first
        (:class:`BadRequest` for an invalid one).

        Raises :class:`NotFound` when the snapshot is not stored. With ``application_uid``
        (a write on behalf of that application), the snapshot must be that application's
        (:class:`NotFound` otherwise) and no host may currently serve another application
        (:class:`Forbidden`): an application's token cannot take over another's hostnames.
        Whoever writes, :class:`VersionHostTaken` when a host is another snapshot's version
        hostname (existing or not): version hostnames never move.
        """
        names = _normalized(hosts, "hosts")
        snapshot = await self.require_snapshot(snapshot_id)
        if application_uid is not None and snapshot.application_uid != application_uid:
            raise NotFound(f"snapshot {snapshot_id!r} is not stored for application {application_uid!r}")
        await self._stamped_write(snapshot, names, [], "envs", owner=application_uid)
        return snapshot

    def _snapshot_ops(self, snapshot: Snapshot) -> list[Op]:
        uid = snapshot.application_uid
        return [
            Set(self.snapshot_key(snapshot.snapshot_id), snapshot.to_json()),
            SetAdd(self._key("app-snapshots", uid), [snapshot.snapshot_id.encode()]),
            SetAdd(self.apps_key, [uid.encode()]),
        ]

    def _host_ops(self, snapshot: Snapshot, stamps: Mapping[str, Stamp]) -> list[Op]:
        body = snapshot.to_json()
        ops: list[Op] = []
        for host, stamp in stamps.items():
            ops += [Set(self.envs_key(host), body), Set(self.stamp_key(host), stamp.encode())]
        if stamps:
            ops.append(SetAdd(self._key("app-hosts", snapshot.application_uid), [h.encode() for h in stamps]))
        return ops

    async def _stamped_write(
        self, snapshot: Snapshot, hosts: list[str], ops: list[Op], kind: str, *, owner: str | None = None,
        guard: Sequence[str] = (), check: Callable[[Mapping[str, bytes | None]], None] | None = None,
    ) -> None:
        """Point ``hosts`` at ``snapshot`` with a stamp later than any they hold, together
        with ``ops`` and (with a journal) the record of the write, as one compare-and-set
        (redone when a concurrent write changed what it read).

        With ``owner`` (a write on behalf of that application), :class:`Forbidden` when a
        host serves another application (a record without a readable owner may be
        overwritten). ``check`` may refuse the write from the values of the ``guard``
        keys. Always :class:`VersionHostTaken` when a host is another snapshot's version
        hostname. All are decided on the values the compare-and-set then expects, so no
        concurrent write can slip in between the check and the write.
        """
        stamp_keys = [self.stamp_key(h) for h in hosts]
        live_keys = [self.envs_key(h) for h in hosts]
        keys = stamp_keys + live_keys + list(guard)
        for _ in range(STAMPED_WRITE_ATTEMPTS):
            values = dict(zip(keys, await self.kv.get_many(keys)))
            for host, key in zip(hosts, live_keys):
                live = _live(values[key])  # parsed once for both checks
                serving_id = (live.snapshot_id or None) if live else None
                problem = hostnames.version_host_conflict(
                    host, snapshot.snapshot_id, serving_id, snapshot.application_uid
                )
                if problem:
                    raise VersionHostTaken(problem)
                serving = (live.application_uid or None) if live else None
                if owner is not None and serving and serving != owner:
                    raise Forbidden(f"host {host!r} serves application {serving!r}")
            if check is not None:
                check(values)
            held = [s for s in (Stamp.decode(values[k]) for k in stamp_keys) if s is not None]
            stamp = next_stamp(max(held, default=None), self._replica)
            stamps = {h: stamp for h in hosts}
            write = ops + self._host_ops(snapshot, stamps)
            if self.journal is not None:
                body = {"snapshot_id": snapshot.snapshot_id, "hosts": {h: str(s) for h, s in stamps.items()}}
                write += await self.journal.record(kind, body)
            if await self.kv.atomic_if(values, write):
                self._hosts_written(hosts)
                await self.kv.incr(self.generation_key)
                return
        raise BackendError(self.kv.name, f"hostname write kept conflicting with concurrent writes of {hosts!r}")

    async def apply_replicated(self, snapshot: Snapshot, stamps: Mapping[str, Stamp]) -> list[str]:
        """Store ``snapshot`` sent by another region and point each host of ``stamps`` at
        it when that stamp is newer than the one held here (last writer wins); never
        recorded for replication again. Idempotent. The hosts actually moved."""
        incoming: dict[str, Stamp] = {}
        for host, stamp in stamps.items():
            name = _normalized([host], "hosts")[0]
            if hostnames.version_host_conflict(name, snapshot.snapshot_id, None, snapshot.application_uid):
                log.warning(
                    "Replicated write skipped: %s is another snapshot's version hostname", name,
                    extra={"fields": {"http.host": name, "zephyr.snapshot_id": snapshot.snapshot_id}},
                )
                continue
            incoming[name] = max(stamp, incoming.get(name, stamp))
        keys = {h: self.stamp_key(h) for h in incoming}
        for _ in range(STAMPED_WRITE_ATTEMPTS):
            held_raw = dict(zip(keys, await self.kv.get_many(list(keys.values()))))
            winners = {h: s for h, s in incoming.items() if newer(s, Stamp.decode(held_raw[h]))}
            expect = {keys[h]: held_raw[h] for h in winners}
            if await self.kv.atomic_if(expect, self._snapshot_ops(snapshot) + self._host_ops(snapshot, winners)):
                if winners:
                    self._hosts_written(sorted(winners))
                    await self.kv.incr(self.generation_key)
                return sorted(winners)
        raise BackendError(self.kv.name, f"replicated hostname write kept conflicting for {sorted(incoming)!r}")

    async def snapshot(self, snapshot_id: str) -> Snapshot | None:
        raw = await self.kv.get(self.snapshot_key(snapshot_id))
        return None if raw is None else load_live_payload(raw)

    async def live(self, host: str) -> Snapshot | None:
        """The snapshot ``host`` serves (looked up normalised: case and port do not
        matter), or None for an unknown or invalid host."""
        name = hostnames.normalize_host(host)
        if name is None:
            return None
        raw = await self.kv.get(self.envs_key(name))
        return None if raw is None else load_live_payload(raw)

    # --- inventory (anti-entropy) --------------------------------------------------------

    async def apps(self) -> list[str]:
        """Application uids with at least one stored snapshot, sorted."""
        return sorted(m.decode() for m in await self.kv.smembers(self.apps_key))

    async def snapshot_ids(self, application_uid: str) -> set[str]:
        return {m.decode() for m in await self.kv.smembers(self._key("app-snapshots", application_uid))}

    async def host_states(self, application_uid: str) -> dict[str, HostState]:
        """Every hostname published for the app that serves a readable snapshot, with its stamp."""
        hosts = sorted(m.decode() for m in await self.kv.smembers(self._key("app-hosts", application_uid)))
        lives = _readable(hosts, await self.kv.get_many([self.envs_key(h) for h in hosts]))
        stamps = await self.kv.get_many([self.stamp_key(h) for h in hosts])
        return {
            host: HostState(live.snapshot_id, Stamp.decode(raw))
            for host, live, raw in zip(hosts, lives, stamps)
            if live is not None
        }

    async def stamps(self, hosts: Iterable[str]) -> dict[str, Stamp | None]:
        names = list(hosts)
        return dict(zip(names, map(Stamp.decode, await self.kv.get_many([self.stamp_key(h) for h in names]))))

    async def generation(self) -> int:
        """The publish counter (0 before the first publish)."""
        raw = await self.kv.get(self.generation_key)
        return int(raw) if raw else 0

    async def versions(self, application_uid: str) -> list[Version]:
        """The app's snapshots, newest first, each with the hostnames pointing at it now."""
        ids = sorted(m.decode() for m in await self.kv.smembers(self._key("app-snapshots", application_uid)))
        hosts = sorted(m.decode() for m in await self.kv.smembers(self._key("app-hosts", application_uid)))
        snapshots = await self.kv.get_many([self.snapshot_key(i) for i in ids])
        lives = await self.kv.get_many([self.envs_key(h) for h in hosts])
        pointing: dict[str, list[str]] = {}
        for host, live in zip(hosts, _readable(hosts, lives)):
            if live is not None:
                pointing.setdefault(live.snapshot_id, []).append(host)
        found = [s for s in _readable(ids, snapshots) if s is not None]
        found.sort(key=lambda s: (s.created_at or 0, s.snapshot_id), reverse=True)
        return [Version(s, tuple(pointing.get(s.snapshot_id, ()))) for s in found]

    async def require_snapshot(self, snapshot_id: str) -> Snapshot:
        snapshot = await self.snapshot(snapshot_id)
        if snapshot is None:
            raise NotFound(f"snapshot {snapshot_id!r} is not stored on this worker")
        return snapshot


def _live(raw: bytes | None) -> Snapshot | None:
    """A stored snapshot or live record (None: absent or unreadable)."""
    if raw is None:
        return None
    try:
        return load_live_payload(raw)
    except InvalidLivePayload:
        return None


def _owner(raw: bytes | None) -> str | None:
    """The application of a stored snapshot or live record (None: absent or unreadable)."""
    live = _live(raw)
    return (live.application_uid or None) if live else None


def _normalized(hosts: Iterable[str], field: str) -> list[str]:
    """``hosts`` normalised (:func:`hostnames.normalize_host`), duplicates removed, in order."""
    names: dict[str, None] = {}
    for host in hosts:
        name = hostnames.normalize_host(host)
        if name is None:
            raise BadRequest(f"{field}: invalid host name {shorten(host, 100)!r}", field=field)
        names.setdefault(name, None)
    return list(names)


def _readable(keys: list[str], raws: list[bytes | None]) -> list[Snapshot | None]:
    """The records ``raws`` read (None where absent or unreadable: one hand-edited record
    must not break a whole listing; it is logged)."""
    out: list[Snapshot | None] = []
    for key, raw in zip(keys, raws):
        snapshot = None
        if raw is not None:
            try:
                snapshot = load_live_payload(raw)
            except InvalidLivePayload as exc:
                log.warning("Unreadable catalog record for %s: %s", key, exc, extra={"fields": {"catalog.record": key}})
        out.append(snapshot)
    return out
