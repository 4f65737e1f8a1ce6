"""The catalog (snapshots, hostnames, hash lists, publish counter, stamps, the replication
journal) on real KVs: the embedded SQLite one, Redis and a Redis Cluster, each test on all.
Every KV call goes through a recorder, so the tests also prove that every key carries the
configured hash tag (the journal's outbox keys included: one slot on a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import attrs
import coredis
import pytest

from zephyr_edge.domain import hostnames
from zephyr_edge.settings import config
from zephyr_edge.errors import BadRequest, Forbidden, NotFound
from zephyr_edge.kv.base import KV, Op
from zephyr_edge.catalog.records import Catalog, VersionHostTaken
from zephyr_edge.replication import outbox
from zephyr_edge.domain.snapshot import parse_snapshot
from zephyr_edge.domain.stamps import Stamp
from zephyr_edge import plugins
from tests.upload_support import snapshot_body

APP = "web.repo.org"
OTHER = "other.repo.org"


class RecordingKV(KV):
    """Forwards every call to ``inner`` and remembers every key used."""

    def __init__(self, inner: KV):
        self.inner = inner
        self.keys: set[str] = set()

    @classmethod
    def open(cls, options, data_dir):  # pragma: no cover - never opened by name
        raise NotImplementedError

    def _seen(self, *keys: str) -> None:
        self.keys.update(keys)

    async def get(self, key):
        self._seen(key)
        return await self.inner.get(key)

    async def get_many(self, keys: Sequence[str]):
        self._seen(*keys)
        return await self.inner.get_many(keys)

    async def set(self, key, value):
        self._seen(key)
        await self.inner.set(key, value)

    async def set_if_absent(self, key, value):
        self._seen(key)
        return await self.inner.set_if_absent(key, value)

    async def delete(self, key):
        self._seen(key)
        await self.inner.delete(key)

    async def incr(self, key):
        self._seen(key)
        return await self.inner.incr(key)

    async def atomic(self, ops: Sequence[Op]):
        self._seen(*(op.key for op in ops))
        await self.inner.atomic(ops)

    async def atomic_if(self, expect, ops: Sequence[Op]):
        self._seen(*expect, *(op.key for op in ops))
        return await self.inner.atomic_if(expect, ops)

    async def smembers(self, key):
        self._seen(key)
        return await self.inner.smembers(key)

    async def sismember(self, key, member):
        self._seen(key)
        return await self.inner.sismember(key, member)

    async def ping(self):
        await self.inner.ping()


@attrs.frozen
class Setup:
    catalog: Catalog
    kv: RecordingKV
    tag: str


@contextlib.asynccontextmanager
async def open_catalog(kind: str, tmp_path, redis_addr=None, **extra: str) -> AsyncIterator[Setup]:
    tag = f"{{ze-test-{uuid.uuid4().hex[:12]}}}"
    env = {
        "ZE_WORKER_JWT_SECRET": "records-test-secret-0123456789abcdef",
        "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_DATA_DIR": str(tmp_path),
        "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:", "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
        **extra,
    }
    if kind in ("redis", "redis-cluster"):
        env.update({"ZE_WORKER_KV_BACKEND": kind, "ZE_WORKER_REDIS_HOST": redis_addr[0],
                    "ZE_WORKER_REDIS_PORT": str(redis_addr[1])})
    else:
        env["ZE_WORKER_KV_BACKEND"] = "local"
    cfg = config.load(env)
    try:
        async with plugins.open_kv(cfg) as inner:
            kv = RecordingKV(inner)
            yield Setup(Catalog(kv, cfg.worker, outbox.journal_for(kv, cfg.worker)), kv, tag)
    finally:
        if kind in ("redis", "redis-cluster"):
            kind_of_client = coredis.Redis if kind == "redis" else coredis.RedisCluster
            async with kind_of_client(host=redis_addr[0], port=redis_addr[1]) as client:
                keys = [k async for k in client.scan_iter(match=f"{tag}*")]
                for key in keys:
                    await client.delete([key])


def _redis_addr(request):
    """Where the KV of ``request.param`` listens (None for the local one)."""
    if request.param == "redis":
        return request.getfixturevalue("redis_addr")
    if request.param == "redis-cluster":
        return request.getfixturevalue("redis_cluster_nodes")[0]
    return None


@pytest.fixture(params=["local", "redis", "redis-cluster"])
async def setup(request, tmp_path):
    redis_addr = _redis_addr(request)
    async with open_catalog(request.param, tmp_path, redis_addr) as opened:
        yield opened
        # every key the catalog touched carries the configured hash tag
        assert opened.kv.keys
        assert {hostnames.hash_tag(k) for k in opened.kv.keys} == {opened.tag}, sorted(opened.kv.keys)


def snap(app: str = APP, build: str = "1", created_at: int | None = 1000, **fields):
    body = snapshot_body(app, build, files={"index.html": f"{app}-{build}".encode()}, **fields)
    if created_at is None:
        del body["createdAt"]
    else:
        body["createdAt"] = created_at
    return parse_snapshot(json.dumps(body).encode(), app)


def vhost(snapshot) -> str:
    return hostnames.version_host(snapshot.snapshot_id, "ze.test", "-")


# --- hash lists ---------------------------------------------------------------------------------


async def test_hash_lists(setup):
    catalog = setup.catalog
    assert await catalog.hashes(APP) == set()
    await catalog.add_hash(APP, "a" * 64, "a.js")
    await catalog.add_hash(APP, "a" * 64, "a.js")
    await catalog.add_hash(APP, "b" * 64, "b.js")
    await catalog.add_hash(OTHER, "c" * 64, "c.js")
    assert await catalog.hashes(APP) == {"a" * 64, "b" * 64}
    assert await catalog.has_hash(APP, "b" * 64) and not await catalog.has_hash(APP, "c" * 64)
    assert await catalog.hashes(OTHER) == {"c" * 64}


# --- snapshots, versions, publish ---------------------------------------------------------------


async def test_versions_newest_first_with_their_hosts(setup):
    catalog = setup.catalog
    old, new, middle, undated = snap(build="1", created_at=1000), snap(build="2", created_at=3000), \
        snap(build="3", created_at=2000), snap(build="4", created_at=None)
    for s in (old, new, middle, undated):
        await catalog.save_snapshot(s, vhost(s))
    await catalog.save_snapshot(snap(OTHER, "9", created_at=5000), "other-ze.test")
    await catalog.publish(middle.snapshot_id, ["prod.example.com", "staging.example.com"])
    await catalog.publish(new.snapshot_id, ["staging.example.com"])

    versions = await catalog.versions(APP)
    assert [v.snapshot.snapshot_id for v in versions] == [s.snapshot_id for s in (new, middle, old, undated)]
    hosts = {v.snapshot.snapshot_id: set(v.hosts) for v in versions}
    assert hosts == {
        new.snapshot_id: {vhost(new), "staging.example.com"},
        middle.snapshot_id: {vhost(middle), "prod.example.com"},
        old.snapshot_id: {vhost(old)},
        undated.snapshot_id: {vhost(undated)},
    }
    assert (await catalog.live("prod.example.com")).snapshot_id == middle.snapshot_id
    # rollback: the same call with an older id
    await catalog.publish(old.snapshot_id, ["prod.example.com"])
    assert (await catalog.live("prod.example.com")).snapshot_id == old.snapshot_id
    assert "prod.example.com" in (await catalog.versions(APP))[2].hosts


async def test_generation_bumps_on_every_publish(setup):
    catalog = setup.catalog
    assert await catalog.generation() == 0
    s = snap()
    await catalog.save_snapshot(s, vhost(s))
    assert await catalog.generation() == 1
    await catalog.publish(s.snapshot_id, ["a.test"])
    await catalog.publish(s.snapshot_id, ["a.test", "b.test"])
    assert await catalog.generation() == 3
    await catalog.add_hash(APP, "a" * 64, "a.js")  # not a publish
    assert await catalog.generation() == 3


async def test_snapshot_round_trip_keeps_every_field(setup):
    catalog = setup.catalog
    s = snap(extra={"nested": ["kept", "as", "sent"]}, mfConfig={"name": "web"})
    await catalog.save_snapshot(s, vhost(s))
    stored = await catalog.snapshot(s.snapshot_id)
    assert stored == s and stored.raw == s.raw
    assert (await catalog.live(vhost(s))).raw == s.raw
    assert await catalog.snapshot("missing.web.repo.org") is None
    with pytest.raises(NotFound):
        await catalog.require_snapshot("missing.web.repo.org")


async def test_hosts_are_normalised(setup):
    catalog = setup.catalog
    s = snap()
    await catalog.save_snapshot(s, vhost(s).upper())
    await catalog.publish(s.snapshot_id, ["App.Example.COM:443", "app.example.com."])
    for name in ("app.example.com", "APP.example.com:8080", vhost(s), vhost(s).upper() + ":80"):
        assert (await catalog.live(name)).snapshot_id == s.snapshot_id, name
    assert await catalog.live("not a host") is None
    assert set((await catalog.versions(APP))[0].hosts) == {"app.example.com", vhost(s)}
    generation = await catalog.generation()
    with pytest.raises(BadRequest):
        await catalog.publish(s.snapshot_id, ["ok.test", "bad host"])
    assert await catalog.live("ok.test") is None and await catalog.generation() == generation


async def test_publish_refusals_write_nothing(setup):
    catalog = setup.catalog
    mine, theirs = snap(), snap(OTHER)
    await catalog.save_snapshot(mine, vhost(mine))
    await catalog.save_snapshot(theirs, vhost(theirs))
    await catalog.publish(theirs.snapshot_id, ["theirs.test"], OTHER)
    generation = await catalog.generation()

    with pytest.raises(NotFound):
        await catalog.publish("nope.web.repo.org", ["x.test"], APP)
    with pytest.raises(NotFound):  # not this application's snapshot
        await catalog.publish(theirs.snapshot_id, ["x.test"], APP)
    with pytest.raises(Forbidden, match="theirs.test"):  # another application's host
        await catalog.publish(mine.snapshot_id, ["x.test", "theirs.test"], APP)
    with pytest.raises(Forbidden):  # another application's version host
        await catalog.publish(mine.snapshot_id, [vhost(theirs)], APP)
    assert await catalog.generation() == generation
    assert await catalog.live("x.test") is None
    assert (await catalog.live("theirs.test")).snapshot_id == theirs.snapshot_id

    # without an application (an operator's publish), a host may move between applications
    await catalog.publish(mine.snapshot_id, ["theirs.test"])
    assert (await catalog.live("theirs.test")).snapshot_id == mine.snapshot_id


async def test_snapshot_ids_belong_to_their_application(setup):
    """``org`` may name ``u-1.web.repo.org`` (it ends with ``.org``) but not take it over."""
    catalog = setup.catalog
    mine = snap()
    await catalog.save_snapshot(mine, vhost(mine))
    hijack = parse_snapshot(
        json.dumps(snapshot_body("org", snapshot_id=mine.snapshot_id)).encode(), "org"
    )
    with pytest.raises(Forbidden, match=APP):
        await catalog.save_snapshot(hijack, vhost(hijack))
    assert (await catalog.snapshot(mine.snapshot_id)).application_uid == APP
    assert await catalog.versions("org") == []


async def test_hand_copied_and_broken_records(setup):
    """Zephyr's emergency rollback copies a snapshot JSON into ``envs:<host>`` by hand; a
    broken record must not break the application's listing."""
    catalog, kv = setup.catalog, setup.kv
    s = snap()
    await catalog.save_snapshot(s, vhost(s))
    await catalog.publish(s.snapshot_id, ["broken.test"])
    await kv.set(catalog.envs_key("copied.test"), await kv.get(catalog.snapshot_key(s.snapshot_id)))
    assert (await catalog.live("copied.test")).snapshot_id == s.snapshot_id
    await kv.set(catalog.envs_key("broken.test"), b"not json")
    versions = await catalog.versions(APP)
    assert [v.snapshot.snapshot_id for v in versions] == [s.snapshot_id]
    assert versions[0].hosts == (vhost(s),)
    # a record without a readable owner may be overwritten by a publish
    await catalog.publish(s.snapshot_id, ["broken.test"], APP)
    assert (await catalog.live("broken.test")).snapshot_id == s.snapshot_id


# --- stamps, last writer wins, the replication journal ------------------------------------------


def stamp(ms: int, replica: str = "b") -> Stamp:
    return Stamp(ms, replica)


async def test_every_hostname_write_is_stamped_later_than_the_last(setup):
    catalog = setup.catalog
    first, second = snap(build="1"), snap(build="2")
    await catalog.save_snapshot(first, vhost(first))
    await catalog.publish(first.snapshot_id, ["prod.test"])
    held = (await catalog.stamps(["prod.test"]))["prod.test"]
    assert held is not None and abs(held.ms - time.time() * 1000) < 60_000
    # a remote region's clock far ahead: a later local publish still gets a greater stamp
    ahead = stamp(held.ms + 10_000_000, "zz")
    assert await catalog.apply_replicated(second, {"prod.test": ahead}) == ["prod.test"]
    await catalog.publish(first.snapshot_id, ["prod.test"])
    after = (await catalog.stamps(["prod.test"]))["prod.test"]
    assert after > ahead and after.ms == ahead.ms + 1
    assert (await catalog.live("prod.test")).snapshot_id == first.snapshot_id
    assert (await catalog.host_states(APP))["prod.test"].stamp == after


async def test_replicated_writes_apply_only_when_newer(setup):
    catalog = setup.catalog
    one, two = snap(build="1"), snap(build="2")
    generation = await catalog.generation()
    # unknown snapshot, unknown host: both stored
    assert await catalog.apply_replicated(one, {"PROD.test:443": stamp(1000)}) == ["prod.test"]
    assert (await catalog.live("prod.test")).snapshot_id == one.snapshot_id
    assert await catalog.snapshot(one.snapshot_id) == one
    assert await catalog.apps() == [APP]
    assert await catalog.generation() == generation + 1
    # older and equal stamps change nothing (the snapshot itself is still stored)
    assert await catalog.apply_replicated(two, {"prod.test": stamp(999)}) == []
    assert await catalog.apply_replicated(two, {"prod.test": stamp(1000)}) == []
    assert (await catalog.live("prod.test")).snapshot_id == one.snapshot_id
    assert await catalog.snapshot(two.snapshot_id) == two
    assert await catalog.generation() == generation + 1
    # same time, greater replica name wins (the same decision in every region)
    assert await catalog.apply_replicated(two, {"prod.test": stamp(1000, "c")}) == ["prod.test"]
    assert (await catalog.live("prod.test")).snapshot_id == two.snapshot_id
    # applied twice: nothing changes
    assert await catalog.apply_replicated(two, {"prod.test": stamp(1000, "c")}) == []
    assert await catalog.snapshot_ids(APP) == {one.snapshot_id, two.snapshot_id}


async def test_concurrent_replicated_writes_converge_on_the_greatest_stamp(setup):
    catalog = setup.catalog
    snaps = [snap(build=str(i)) for i in range(4)]
    writes = [(snaps[i % 4], stamp(5000 + (i * 7919) % 97, f"r{i % 3}")) for i in range(24)]
    await asyncio.gather(*(catalog.apply_replicated(s, {"race.test": st}) for s, st in writes))
    winner = max(writes, key=lambda w: w[1])
    assert (await catalog.stamps(["race.test"]))["race.test"] == winner[1]
    assert (await catalog.live("race.test")).snapshot_id == winner[0].snapshot_id


async def test_without_targets_nothing_is_journaled(setup):
    assert setup.catalog.journal is None
    s = snap()
    await setup.catalog.save_snapshot(s, vhost(s))
    assert not any(":outbox:" in k for k in setup.kv.keys)


@pytest.fixture(params=["local", "redis", "redis-cluster"])
async def replicating(request, tmp_path):
    redis_addr = _redis_addr(request)
    extra = {"ZE_WORKER_REPLICA_NAME": "a", "ZE_WORKER_REPLICAS_URLS": "http://b.test/,http://c.test"}
    async with open_catalog(request.param, tmp_path, redis_addr, **extra) as opened:
        yield opened


async def test_client_writes_are_journaled_with_the_write(replicating):
    catalog = replicating.catalog
    box = catalog.journal
    assert isinstance(box, outbox.Outbox) and box.targets == ("http://b.test", "http://c.test")
    s = snap()
    await catalog.add_hash(APP, "a" * 64, "index.html")
    await catalog.save_snapshot(s, vhost(s))
    await catalog.publish(s.snapshot_id, ["prod.test"])
    for target in box.targets:
        seqs = await box.pending(target)
        entries = await box.entries(seqs)
        assert [e.kind for e in entries] == ["file", "snapshot", "envs"]
        assert entries[0].body == {"application_uid": APP, "hash": "a" * 64, "filename": "index.html"}
        assert entries[1].body["snapshot_id"] == s.snapshot_id
        assert set(entries[1].body["hosts"]) == {vhost(s)}
        stamps = await catalog.stamps(["prod.test"])
        assert entries[2].body == {"snapshot_id": s.snapshot_id, "hosts": {"prod.test": str(stamps["prod.test"])}}
    # writes received from another region are never journaled again
    before = await box.pending(box.targets[0])
    await catalog.apply_replicated(snap(build="2"), {"other.test": stamp(10**13)})
    await catalog.apply_file(APP, "b" * 64)
    assert await box.pending(box.targets[0]) == before
    # a refused write records nothing either
    with pytest.raises(NotFound):
        await catalog.publish("no-such-snapshot", ["prod.test"])
    assert await box.pending(box.targets[0]) == before


async def test_two_applications_racing_for_one_host_cannot_both_win(setup):
    """The ownership check is part of the write's compare-and-set: of two applications
    publishing a new hostname at the same moment, one wins and the other is refused."""
    catalog = setup.catalog
    mine, theirs = snap(build="1"), snap(OTHER, "1")
    for s in (mine, theirs):
        await catalog.save_snapshot(s, vhost(s))
    for round_ in range(8):
        host = f"contested-{round_}.test"
        results = await asyncio.gather(
            catalog.publish(mine.snapshot_id, [host], APP),
            catalog.publish(theirs.snapshot_id, [host], OTHER),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert all(isinstance(r, Forbidden) for r in results if isinstance(r, BaseException)), results
        assert (await catalog.live(host)).application_uid == won[0].application_uid


async def test_two_applications_racing_for_one_snapshot_id_cannot_both_win(setup):
    catalog = setup.catalog
    for round_ in range(8):
        mine = snap(build=f"race{round_}")
        hijack = parse_snapshot(json.dumps(snapshot_body("org", snapshot_id=mine.snapshot_id)).encode(), "org")
        results = await asyncio.gather(
            catalog.save_snapshot(mine, vhost(mine)), catalog.save_snapshot(hijack, vhost(hijack) + ".x"),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1, results
        assert all(isinstance(r, Forbidden) for r in results if isinstance(r, BaseException)), results


async def test_version_hostnames_never_move_whoever_writes(setup):
    catalog = setup.catalog
    mine, evil = snap(build="1"), snap(app="evil.attacker.org", build="1")
    await catalog.save_snapshot(evil, vhost(evil))
    future = vhost(snap(build="9"))  # another snapshot's version host, before that snapshot exists
    for owner in ("evil.attacker.org", None):  # a client's publish, the admin CLI with --force
        with pytest.raises(VersionHostTaken, match="version hostname"):
            await catalog.publish(evil.snapshot_id, [future], owner)
    # a replicated write skips it (and applies the rest)
    assert await catalog.apply_replicated(evil, {future: stamp(1000), "evil.test": stamp(1000)}) == ["evil.test"]
    assert await catalog.live(future) is None
    # the snapshot itself takes it
    await catalog.save_snapshot(mine, vhost(mine))
    await catalog.save_snapshot(snap(build="9"), future)
    assert (await catalog.live(future)).snapshot_id == snap(build="9").snapshot_id


async def test_hostname_writes_are_reported_to_listeners(setup):
    catalog = setup.catalog
    seen: list[list[str]] = []
    stop = catalog.on_hosts_written(lambda hosts: seen.append(list(hosts)))
    one = snap(build="1")
    await catalog.save_snapshot(one, vhost(one))
    await catalog.publish(one.snapshot_id, ["Prod.test", "b.test"])
    await catalog.apply_replicated(one, {"c.test": stamp(1000)})
    await catalog.apply_replicated(one, {"c.test": stamp(999)})  # older: nothing moves, nothing reported
    stop()
    await catalog.publish(one.snapshot_id, ["d.test"])
    assert seen == [[vhost(one)], ["prod.test", "b.test"], ["c.test"]]
