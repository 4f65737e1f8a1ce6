"""The catalog: every record the worker keeps in the KV, written once against the KV SPI.

Layout (``T`` is the hash tag of the configured prefixes, ``{ze-k8s-worker}`` by default;
every key carries it, so each multi-key write is one Redis Cluster slot):

- ``PREFIX_SNAPSHOTS + id`` → snapshot JSON (Zephyr's documented layout)
- ``PREFIX_ENVS + host`` → the live snapshot JSON of that hostname (Zephyr's layout; a raw
  snapshot JSON copied there by hand serves)
- ``T:hashes:<app>`` → set of asset hashes whose bytes are durably stored for that app
- ``T:app-snapshots:<app>`` → set of the app's snapshot ids
- ``T:app-hosts:<app>`` → set of hostnames ever published for the app
- ``T:generation`` → counter bumped after every publish; workers watch it to drop their
  hostname caches (cross-worker invalidation)
"""

from __future__ import annotations

import attrs

from zephyr_edge import hostnames
from zephyr_edge.config import WorkerConfig
from zephyr_edge.errors import NotFound
from zephyr_edge.kv.base import KV, Op, Set, SetAdd
from zephyr_edge.snapshot import Snapshot, load_live_payload


@attrs.frozen
class Version:
    """A snapshot of an app and the hostnames that currently point at it."""

    snapshot: Snapshot
    hosts: tuple[str, ...]


class Catalog:
    """Snapshots, hostnames and hash lists on top of a :class:`KV`."""

    def __init__(self, kv: KV, worker: WorkerConfig):
        self.kv = kv
        self._envs = worker.redis_prefix_envs
        self._snapshots = worker.redis_prefix_snapshots
        hostnames.configured_hash_tag(worker)  # raises ConfigError for unusable prefixes

    # --- keys ---------------------------------------------------------------------------

    def envs_key(self, host: str) -> str:
        return hostnames.envs_key(self._envs, host)

    def snapshot_key(self, snapshot_id: str) -> str:
        return hostnames.snapshots_key(self._snapshots, snapshot_id)

    def _key(self, *parts: str) -> str:
        return hostnames.tagged_key(self._envs, *parts)

    @property
    def generation_key(self) -> str:
        return self._key("generation")

    # --- hash lists ---------------------------------------------------------------------

    async def hashes(self, application_uid: str) -> set[str]:
        """Hashes whose bytes are durably stored for ``application_uid``."""
        members = await self.kv.smembers(self._key("hashes", application_uid))
        return {m.decode("ascii") for m in members}

    async def add_hash(self, application_uid: str, asset_hash: str) -> None:
        """Record ``asset_hash`` for the app; call only once its bytes are durably stored."""
        await self.kv.atomic([SetAdd(self._key("hashes", application_uid), [asset_hash.encode("ascii")])])

    async def has_hash(self, application_uid: str, asset_hash: str) -> bool:
        return await self.kv.sismember(self._key("hashes", application_uid), asset_hash.encode("ascii"))

    # --- snapshots and hostnames ---------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot, version_host: str) -> None:
        """Store ``snapshot`` and point its version hostname at it, in one atomic write."""
        body = snapshot.to_json()
        await self._write(
            snapshot.application_uid,
            [
                Set(self.snapshot_key(snapshot.snapshot_id), body),
                SetAdd(self._key("app-snapshots", snapshot.application_uid), [snapshot.snapshot_id.encode()]),
            ],
            {version_host: body},
        )

    async def publish(self, snapshot_id: str, hosts: list[str] | tuple[str, ...]) -> Snapshot:
        """Point every host of ``hosts`` at the stored snapshot ``snapshot_id`` (a tag,
        environment, custom domain or a rollback). Raises :class:`NotFound` when the
        snapshot is not stored."""
        snapshot = await self.require_snapshot(snapshot_id)
        body = snapshot.to_json()
        await self._write(snapshot.application_uid, [], {h: body for h in hosts})
        return snapshot

    async def _write(self, application_uid: str, ops: list[Op], live: dict[str, bytes]) -> None:
        if live:
            ops = ops + [Set(self.envs_key(h), body) for h, body in live.items()]
            ops.append(SetAdd(self._key("app-hosts", application_uid), [h.encode() for h in live]))
        await self.kv.atomic(ops)
        if live:
            await self.kv.incr(self.generation_key)

    async def snapshot(self, snapshot_id: str) -> Snapshot | None:
        raw = await self.kv.get(self.snapshot_key(snapshot_id))
        return None if raw is None else load_live_payload(raw)

    async def live(self, host: str) -> Snapshot | None:
        """The snapshot ``host`` (normalised) serves, or None for an unknown host."""
        raw = await self.kv.get(self.envs_key(host))
        return None if raw is None else load_live_payload(raw)

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
        for host, raw in zip(hosts, lives):
            if raw is not None:
                pointing.setdefault(load_live_payload(raw).snapshot_id, []).append(host)
        found = [load_live_payload(raw) for raw in snapshots if raw is not None]
        found.sort(key=lambda s: (s.created_at or 0, s.snapshot_id), reverse=True)
        return [Version(s, tuple(pointing.get(s.snapshot_id, ()))) for s in found]

    async def require_snapshot(self, snapshot_id: str) -> Snapshot:
        snapshot = await self.snapshot(snapshot_id)
        if snapshot is None:
            raise NotFound(f"snapshot {snapshot_id!r} is not stored on this worker")
        return snapshot
