"""The serve path's caches: building blocks, the hostname cache and its invalidation, the
asset cache's byte bound, a KV outage under warm traffic, and two worker processes
sharing one KV."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import aiohttp
import pytest

from zephyr_edge.domain import hostnames
from zephyr_edge.http.serving import compression, hostcache
from zephyr_edge.http.app import make_app
from zephyr_edge.http.serving.cache import ENTRY_OVERHEAD_BYTES, ByteLRU, SingleFlight
from zephyr_edge.http.serving.compression import GZIP, Codec, negotiate
from zephyr_edge.errors import BackendUnavailable
from zephyr_edge.http.serving.hostcache import HostCache, is_version_host, watch_generation
from zephyr_edge.kv.local import LocalKV
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.http.serving.variants import Route, etag_matches
from zephyr_edge.domain.snapshot import Asset
from tests.serve_support import (
    APP,
    CountingCalls,
    Site,
    create_bucket,
    deploy,
    load_config,
    local_backend,
    remove_everything,
    s3_redis_backend,
    snapshot_of,
    version_host_of,
    worker_processes,
)
from tests.e2e.worker import WorkerProcess
from tests.services import RedisServer

TAG = "web-latest-ze.example.com"
INDEX = {"1": b"<!doctype html><title>v1</title>", "2": b"<!doctype html><title>v2</title>"}
JS = b"export const answer = 42; // padding to make it worth compressing\n" * 64
#: Bound of the cross-worker switch after a publish (protocol promise: within 1 s).
SWITCH_S = 1.0


def files(build: str) -> dict[str, bytes]:
    return {"index.html": INDEX[build], "assets/main.js": JS}


# --- building blocks --------------------------------------------------------------------------


def test_byte_lru_is_bounded_by_bytes_and_evicts_least_recently_used():
    lru: ByteLRU[str] = ByteLRU(3 * (100 + ENTRY_OVERHEAD_BYTES))
    for key in "abc":
        assert lru.put(key, key.encode() * 100)
    assert lru.get("a") == b"a" * 100  # a is now the most recently used
    assert lru.put("d", b"d" * 100)
    assert "b" not in lru and {"a", "c", "d"} == {k for k in "acd" if k in lru}
    assert lru.used == 3 * (100 + ENTRY_OVERHEAD_BYTES) <= lru.budget
    assert not lru.put("huge", b"x" * lru.budget), "a value larger than the budget is not kept"
    assert lru.put("e", b"e" * 250)  # evicts two entries to fit: the least recently used
    assert lru.used <= lru.budget and [k for k in "abcde" if k in lru] == ["d", "e"]
    assert lru.put("e", b"e")  # replacing an entry releases the old value's bytes
    assert lru.used == sum(ByteLRU.cost(lru.get(k)) for k in "acde" if k in lru)


def test_byte_lru_with_no_budget_keeps_nothing():
    lru: ByteLRU[str] = ByteLRU(0)
    assert not lru.put("a", b"") and len(lru) == 0 and lru.get("a") is None


async def test_single_flight_shares_one_load_and_its_failure():
    flights: SingleFlight[str, int] = SingleFlight()
    calls = []

    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0.05)
        return len(calls)

    assert await asyncio.gather(*(flights.run("k", load) for _ in range(10))) == [1] * 10
    assert len(calls) == 1 and len(flights) == 0

    async def fail() -> int:
        calls.append(1)
        await asyncio.sleep(0.05)
        raise BackendUnavailable("storage", "down")

    results = await asyncio.gather(*(flights.run("k", fail) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results) and len(calls) == 2
    assert await flights.run("k", load) == 3, "a failure is not remembered"


async def test_single_flight_survives_its_first_caller_going_away():
    flights: SingleFlight[str, str] = SingleFlight()
    started = asyncio.Event()

    async def load() -> str:
        started.set()
        await asyncio.sleep(0.1)
        return "bytes"

    first = asyncio.ensure_future(flights.run("k", load))
    await started.wait()
    second = asyncio.ensure_future(flights.run("k", load))
    first.cancel()
    assert await second == "bytes"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_single_flight_forget_and_close():
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    loads = []

    async def load() -> int:
        loads.append(1)
        await gate.wait()
        return len(loads)

    old = asyncio.ensure_future(flights.run("k", load))
    await asyncio.sleep(0)
    flights.forget()
    new = asyncio.ensure_future(flights.run("k", load))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(loads) == 2, "after forget() the next caller starts a new load"
    gate.set()
    assert await old == 2 and await new == 2
    hanging = asyncio.ensure_future(flights.run("h", lambda: asyncio.sleep(3600)))
    await asyncio.sleep(0)
    started = time.monotonic()
    await flights.close()
    assert time.monotonic() - started < 1.0
    with pytest.raises(asyncio.CancelledError):
        await hanging


@pytest.mark.parametrize(
    "header,expected",
    [
        ("gzip", "gzip"), ("br", "br"), ("gzip, br", "br"), ("br;q=0.9, gzip", "gzip"),
        ("br;q=0, gzip", "gzip"), ("br;q=0, gzip;q=0", None), ("*", "br"), ("*;q=0", None),
        ("br;q=0, *", "gzip"), ("x-gzip", "gzip"), ("identity", None), ("", None),
        ("gzip;q=abc", None), ("gzip;q=2", None), ("gzip ; q=0.001", "gzip"), ("GZip;Q=1", "gzip"),
        ("deflate, compress", None), (",,gzip,,", "gzip"),
    ],
)
def test_negotiate(header, expected):
    br = Codec("br", "-br", lambda d: d)
    chosen = negotiate(header, (br, GZIP))
    assert (chosen.token if chosen else None) == expected


def test_negotiator_remembers_a_bounded_number_of_headers():
    negotiator = compression.Negotiator((GZIP,))
    for i in range(compression.MAX_REMEMBERED_HEADERS * 2):
        assert negotiator.choose(f"gzip;q=0.{i % 9 + 1}") is GZIP
        negotiator.choose(f"x-unknown-{i}")
    assert len(negotiator._memo) <= compression.MAX_REMEMBERED_HEADERS


@pytest.mark.parametrize(
    "header,matches",
    [('"h"', True), ('W/"h"', True), ('"a", "h"', True), ('"a",W/"h" ', True), ("*", True),
     ('"a"', False), ('"h-gz"', False), ("h", False), ('"H"', False)],
)
def test_etag_matches(header, matches):
    assert etag_matches(header, '"h"') is matches


def test_version_host_rule():
    sid = "tester-1.web.repo.org"
    host = version_host_of(snapshot_of("1", {"index.html": b"x"}))
    assert host.startswith(hostnames.version_label(sid).lower() + "-")
    assert is_version_host(host, sid, "-")
    assert not is_version_host(host, sid, "."), "the delimiter is part of the rule"
    assert not is_version_host(TAG, sid, "-")
    assert not is_version_host(host, "", "-")
    assert not is_version_host(host, "tester-2.web.repo.org", "-")
    assert not is_version_host(hostnames.version_label(sid).lower() + "-", sid, "-")
    local = hostnames.version_label(sid).lower() + ".localhost"  # what a local edge (127.0.0.1) gets
    assert is_version_host(local, sid, "-") and is_version_host(local, sid, "_")
    assert not is_version_host(local, "tester-2.web.repo.org", "-")


# --- the hostname cache on a real (local) KV --------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def catalog(tmp_path):
    worker = load_config(local_backend(tmp_path)).worker
    async with LocalKV.open(None, Path(worker.data_dir)) as kv:
        yield Catalog(kv, worker)


def route_factory(asset: Asset, immutable: bool) -> Route:
    return Route(asset, immutable, (GZIP,), 1024 * 1024)


def host_cache(catalog: Catalog, clock: FakeClock, ttl_s: float = 5.0, **kw) -> HostCache:
    return HostCache(catalog, ttl_s=ttl_s, delimiter="-", route_factory=route_factory, clock=clock, **kw)


async def test_host_cache_ttl_negative_entries_and_reuse(catalog):
    clock = FakeClock()
    hosts = host_cache(catalog, clock)
    snapshot = await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    reads = CountingCalls(catalog.kv, "get")
    entry = await hosts.lookup(TAG)
    assert entry.snapshot.snapshot_id == snapshot.snapshot_id and not entry.immutable
    assert entry.route("/assets/main.js").asset.path == "assets/main.js"
    assert hosts.fresh(TAG) is entry and hosts.fresh(TAG.upper()) is None  # not seen yet
    for variant in (TAG.upper(), TAG + ":443", TAG + ".", *(f"{TAG}:{port}" for port in range(8000, 8100))):
        assert await hosts.lookup(variant) is entry and hosts.fresh(variant) is entry
    assert len(reads) == 1 and len(hosts) == 1, "Host variants share one entry (and one parsed snapshot)"
    assert (await hosts.lookup(version_host_of(snapshot))).immutable
    clock.now += 4.9
    assert await hosts.lookup(TAG) is entry and len(reads) == 2
    clock.now += 0.2
    assert hosts.fresh(TAG) is None
    assert await hosts.lookup(TAG) is entry, "an unchanged payload keeps its entry (and resolved routes)"
    assert len(reads) == 3

    unknown = await hosts.lookup("new-ze.example.com")
    assert unknown.snapshot is None
    # written by hand (not through the catalog): nothing invalidates, only the TTL helps
    await catalog.kv.set(catalog.envs_key("new-ze.example.com"), snapshot.to_json())
    clock.now += hostcache.NEGATIVE_TTL_MAX_S - 0.01
    assert (await hosts.lookup("new-ze.example.com")).snapshot is None
    clock.now += 0.02
    assert (await hosts.lookup("new-ze.example.com")).snapshot is not None, "negative entries live shorter"
    assert await hosts.lookup("bad host!") is None and await hosts.lookup(None) is None


async def test_host_cache_is_bounded(catalog):
    hosts = host_cache(catalog, FakeClock(), max_entries=3)
    for i in range(10):
        await hosts.lookup(f"h{i}.example.com")
        assert len(hosts) <= 3
    assert hosts.fresh("h9.example.com") is not None and hosts.fresh("h0.example.com") is None
    for i in range(10):
        await hosts.lookup(f"H9.example.com:{i}")
    assert len(hosts._names) <= 3, "the Host header memo is bounded too"


async def test_host_cache_routes_per_host_are_bounded(catalog):
    await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    entry = await host_cache(catalog, FakeClock()).lookup(TAG)
    for i in range(hostcache.MAX_ROUTES_PER_HOST + 50):
        assert entry.route(f"/client/route/{i}").asset.path == "index.html"
    assert len(entry._routes) == hostcache.MAX_ROUTES_PER_HOST
    assert len(entry._by_asset) == 1


async def test_a_lookup_overtaken_by_a_clear_is_not_stored(catalog):
    await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    hosts = host_cache(catalog, FakeClock())
    gate = asyncio.Event()

    async def wait_for_gate(key):
        await gate.wait()

    CountingCalls(catalog.kv, "get", before=wait_for_gate)
    lookup = asyncio.ensure_future(hosts.lookup(TAG))
    await asyncio.sleep(0.01)
    hosts.clear()  # a publish was seen while the read was in flight
    gate.set()
    assert (await lookup).snapshot is not None
    assert len(hosts) == 0 and hosts.fresh(TAG) is None


async def test_a_write_through_the_catalog_drops_its_hosts_at_once(catalog):
    one = await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    two = await deploy(catalog, None, "2", files("2"))
    hosts = host_cache(catalog, FakeClock())
    other = await hosts.lookup("other-ze.example.com")
    assert (await hosts.lookup(TAG)).snapshot.snapshot_id == one.snapshot_id
    await catalog.publish(two.snapshot_id, [TAG.upper()])
    assert hosts.fresh(TAG) is None and hosts.fresh("other-ze.example.com") is other, "only the written host"
    assert (await hosts.lookup(TAG)).snapshot.snapshot_id == two.snapshot_id
    await hosts.close()
    await catalog.publish(one.snapshot_id, [TAG])
    assert hosts.fresh(TAG) is not None, "a closed cache no longer listens"


async def test_a_lookup_that_started_before_a_write_is_not_stored(catalog):
    one = await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    two = await deploy(catalog, None, "2", files("2"))
    hosts = host_cache(catalog, FakeClock())
    gate = asyncio.Event()
    real_get = catalog.kv.get

    async def slow_get(key):
        value = await real_get(key)
        if key == catalog.envs_key(TAG):  # the cache's read of the host answers late
            await asyncio.wait_for(gate.wait(), 5)
        return value

    catalog.kv.get = slow_get
    lookup = asyncio.ensure_future(hosts.lookup(TAG))  # reads the record of build 1...
    await asyncio.sleep(0.01)
    await catalog.publish(two.snapshot_id, [TAG])  # ...which a write replaces meanwhile
    joined = asyncio.ensure_future(hosts.lookup(TAG))  # must not join the stale read
    await asyncio.sleep(0.01)
    gate.set()
    assert (await asyncio.wait_for(lookup, 5)).snapshot.snapshot_id == one.snapshot_id  # started before the write
    assert (await asyncio.wait_for(joined, 5)).snapshot.snapshot_id == two.snapshot_id
    del catalog.kv.get
    assert (await hosts.lookup(TAG)).snapshot.snapshot_id == two.snapshot_id, "the stale read was stored"


async def test_stale_entry_serves_while_the_kv_fails(catalog):
    clock = FakeClock()
    await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    hosts = host_cache(catalog, clock, ttl_s=1.0)
    entry = await hosts.lookup(TAG)

    async def down(key):
        raise BackendUnavailable("kv", "injected outage")

    reads = CountingCalls(catalog.kv, "get", before=down)
    clock.now += 2
    assert await hosts.lookup(TAG) is entry and len(reads) == 1
    assert await hosts.lookup(TAG) is entry and len(reads) == 1, "retried at most every STALE_RETRY_S"
    clock.now += hostcache.STALE_IF_ERROR_S
    with pytest.raises(BackendUnavailable):
        await hosts.lookup(TAG)
    with pytest.raises(BackendUnavailable):
        await hosts.lookup("never-seen.example.com")


async def test_watch_generation_clears_on_publish(catalog):
    await deploy(catalog, None, "1", files("1"), hosts=(TAG,))
    await deploy(catalog, None, "2", files("2"))
    hosts = host_cache(catalog, FakeClock(), ttl_s=3600)
    poller = asyncio.create_task(watch_generation(catalog, hosts, 0.02))
    try:
        await asyncio.sleep(0.1)
        entry = await hosts.lookup(TAG)
        assert entry.snapshot.snapshot_id == "tester-1.web.repo.org"
        await asyncio.sleep(0.1)
        assert hosts.fresh(TAG) is entry, "no publish, no clear"
        await catalog.publish("tester-2.web.repo.org", [TAG])
        published = time.monotonic()
        while hosts.fresh(TAG) is not None:
            assert time.monotonic() - published < SWITCH_S
            await asyncio.sleep(0.01)
        assert (await hosts.lookup(TAG)).snapshot.snapshot_id == "tester-2.web.repo.org"
    finally:
        poller.cancel()
        await asyncio.wait([poller], timeout=5)


# --- on a running worker ----------------------------------------------------------------------


@pytest.fixture
def redis_server():
    """A dedicated Redis the test may stop and start again on the same port."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_kv_outage_warm_traffic_keeps_serving(tmp_path, s3_endpoint, redis_server, aiohttp_client, caplog):
    backend = s3_redis_backend(tmp_path, s3_endpoint, ("127.0.0.1", redis_server.port))
    await create_bucket(backend)
    try:
        app = make_app(load_config(
            backend, ZE_WORKER_HOST_CACHE_TTL_MS="60000", ZE_WORKER_INVALIDATION_POLL_MS="50",
        ))
        site = Site(await aiohttp_client(app, auto_decompress=False))
        snapshot = await site.deploy("1", files("1"), hosts=(TAG,))
        await site.settle()
        for host in (TAG, version_host_of(snapshot)):
            assert (await site.fetch("/", host))[1] == INDEX["1"]
            assert (await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip"}))[0].status == 200

        caplog.set_level(logging.INFO, logger=hostcache.__name__)
        redis_server.stop()
        await asyncio.sleep(0.5)  # ~10 failed polls
        for _ in range(3):
            for host in (TAG, version_host_of(snapshot)):
                resp, body = await site.fetch("/", host)
                assert (resp.status, body) == (200, INDEX["1"])
                resp, _ = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip"})
                assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        resp, _ = await site.fetch("/", "cold-ze.example.com")
        assert resp.status == 503 and resp.headers["Retry-After"]
        warnings = [r for r in caplog.records if "publish counter" in r.getMessage() and r.levelno == logging.WARNING]
        assert len(warnings) == 1, "poll failures are logged once, not per poll"

        redis_server.start()  # empty: this Redis keeps no data across restarts
        await site.deploy("2", files("2"), hosts=(TAG,))
        published = time.monotonic()
        while (await site.fetch("/", TAG))[1] != INDEX["2"]:
            assert time.monotonic() - published < 3.0, "the poller did not recover"
            await asyncio.sleep(0.02)
        assert any("readable again" in r.getMessage() for r in caplog.records)
    finally:
        await remove_everything(backend)


async def test_asset_cache_respects_its_byte_budget(tmp_path, aiohttp_client):
    backend = local_backend(tmp_path)
    app = make_app(load_config(backend, ZE_WORKER_CACHE_SIZE_MB="1", ZE_WORKER_CACHE_MAX_ASSET_KB="512"))
    site = Site(await aiohttp_client(app, auto_decompress=False))
    images = {f"img/{i}.png": os.urandom(300 * 1024) for i in range(8)}
    host = version_host_of(await site.deploy("1", {"index.html": INDEX["1"], **images}))
    gets = CountingCalls(site.storage, "get")
    lru = site.serving.assets.lru
    for path, data in images.items():
        resp, body = await site.fetch("/" + path, host)
        assert (resp.status, body) == (200, data)
        assert lru.used <= lru.budget == 1024 * 1024
    assert len(gets) == 8 and len(lru) == 3
    await site.fetch("/img/7.png", host)
    assert len(gets) == 8, "the most recent asset is still cached"
    await site.fetch("/img/0.png", host)
    assert len(gets) == 9, "the oldest one was evicted"
    assert lru.used <= lru.budget


# --- two worker processes ---------------------------------------------------------------------


async def _get(session: aiohttp.ClientSession, worker: WorkerProcess, host: str) -> bytes:
    async with session.get(worker.url + "/", headers={"Host": host}) as resp:
        return await resp.read()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["local", "s3-redis"])
async def test_publish_is_served_by_every_worker_process_within_a_second(kind, tmp_path, request):
    async with worker_processes(kind, tmp_path, request) as (workers, catalog, storage):
        await deploy(catalog, storage, "1", files("1"), hosts=(TAG,))
        await deploy(catalog, storage, "2", files("2"))
        async with aiohttp.ClientSession() as session:
            for worker in workers:  # both cache the tag host (TTL 5 s: only invalidation can switch it)
                assert await _get(session, worker, TAG) == INDEX["1"]
            for build in ("2", "1"):  # a publish, then a rollback
                await catalog.publish(f"tester-{build}.{APP}", [TAG])
                published = time.monotonic()
                pending = list(workers)
                while pending:
                    elapsed = time.monotonic() - published
                    assert elapsed < SWITCH_S, f"build {build} not served by every worker within 1 s"
                    pending = [w for w in pending if await _get(session, w, TAG) != INDEX[build]]
                    await asyncio.sleep(0.01)

