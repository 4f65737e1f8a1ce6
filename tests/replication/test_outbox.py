"""The outbox and the leases on the real KV backends (the embedded one and Redis), and the
catalog's journal through the real app: each accepted write records exactly one entry per
target in the same step, a refused write records nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from tests.replication.conftest import FakeRegion
from tests.upload_support import APP, load_config, snapshot_body
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.settings import config
from zephyr_edge.replication import outbox, status
from zephyr_edge.replication.outbox import Entry, Leases, Outbox, TargetStatus, journal_for
from zephyr_edge.domain.stamps import Stamp
from zephyr_edge import plugins

T1, T2 = "http://127.0.0.1:9/one", "http://127.0.0.1:9/two/"
TARGETS = [T1, T2.rstrip("/")]


@contextlib.asynccontextmanager
async def opened(backend, **extra) -> AsyncIterator:
    config = load_config(backend, ZE_WORKER_REPLICA_NAME="us", ZE_WORKER_REPLICAS_URLS=json.dumps([T1, T2]), **extra)
    async with plugins.open_kv(config) as kv:
        yield Outbox(kv, config.worker, [T1, T2])


@pytest.fixture(params=["local", "redis"])
def kv_kind(request):
    return request.param


async def record(box: Outbox, kind: str = "file", **body) -> int:
    ops = await box.record(kind, body or {"application_uid": APP, "hash": "a" * 64, "filename": "x.js"})
    await box.kv.atomic(ops)
    return int(json.loads(ops[0].value)["seq"])


async def test_record_adds_one_entry_pending_for_every_target(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        assert box.targets == tuple(TARGETS)  # the trailing "/" dropped
        seq = await record(box, "snapshot", snapshot_id="s.web", hosts={"h.example.com": "1|us"})
        for target in box.targets:
            assert await box.depth(target) == 1
            assert await box.pending(target) == [seq]
        [entry] = await box.entries([seq])
        assert (entry.seq, entry.kind, dict(entry.body)) == (seq, "snapshot", {"snapshot_id": "s.web", "hosts": {"h.example.com": "1|us"}})
        assert Entry.from_json(entry.to_json()) == entry


async def test_pending_is_oldest_first_and_limited(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        seqs = [await record(box) for _ in range(12)]
        assert await box.pending(T1) == seqs  # numeric order (9 before 10)
        assert await box.pending(T1, limit=3) == seqs[:3]


async def test_done_keeps_the_entry_until_every_target_has_it(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        a, b = await record(box), await record(box)
        await box.done(T1, [a])
        assert await box.pending(T1) == [b] and await box.pending(TARGETS[1]) == [a, b]
        assert (await box.entries([a]))[0] is not None  # still pending for the second target
        await box.done(TARGETS[1], [a])
        assert await box.entries([a]) == [None]  # collected
        assert await box.depth(T1) == 1
        await box.done(T1, [])


async def test_set_aside_keeps_the_entry_and_reason_under_rejected(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        seq = await record(box)
        [entry] = await box.entries([seq])
        await box.set_aside(T1, entry, "HTTP 422: refused")
        assert await box.pending(T1) == [] and await box.rejected(T1) == 1 and await box.rejected(TARGETS[1]) == 0
        kept = json.loads(await box.kv.get(box.rejected_key(T1, seq)))
        assert kept["reason"] == "HTTP 422: refused" and kept["entry"]["seq"] == seq
        await box.set_aside(TARGETS[1], entry, "gone")
        assert await box.entries([seq]) == [None]


async def test_unreadable_entries_read_as_none(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        await box.kv.set(box.entry_key(5), b"not json")
        assert await box.entries([5, 6]) == [None, None]


async def test_status_round_trips(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        assert await box.status(T1) == TargetStatus()
        status = TargetStatus(delivered=3, last_delivered_ms=10, last_error="boom", last_error_ms=5, rejected=1)
        await box.save_status(T1, status)
        assert await box.status(T1) == status


async def test_no_targets_records_nothing(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        assert await Outbox(box.kv, load_config(backends("x")).worker, []).record("file", {}) == []


# --- leases ---------------------------------------------------------------------------------


async def test_lease_acquire_renew_refuse_expire_release(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        one, two = Leases(box, "w1", 300), Leases(box, "w2", 300)
        assert await one.holder(T1) is None
        assert await one.acquire(T1) is True
        owner, first_expiry = await one.holder(T1)
        assert owner == "w1"
        assert await two.acquire(T1) is False  # held by another, not expired
        await asyncio.sleep(0.02)
        assert await one.acquire(T1) is True  # renewal moves the expiry
        assert (await one.holder(T1))[1] > first_expiry
        assert await two.acquire(TARGETS[1]) is True  # leases are per target
        await two.release(T1)  # not the holder: nothing happens
        assert (await one.holder(T1))[0] == "w1"
        await asyncio.sleep(0.4)  # w1 died: its lease expires
        assert await two.acquire(T1) is True
        assert await one.acquire(T1) is False
        await two.release(T1)
        assert await one.holder(T1) is None
        assert await one.acquire(T1) is True


async def test_of_concurrent_acquirers_exactly_one_wins(backends, kv_kind):
    async with opened(backends("us", kv_kind)) as box:
        leases = [Leases(box, f"w{i}", 5000) for i in range(8)]
        won = await asyncio.gather(*(lease.acquire(T1) for lease in leases))
        assert sum(won) == 1
        assert (await leases[0].holder(T1))[0] == f"w{won.index(True)}"


# --- the catalog's journal through the app ------------------------------------------------------


def test_journal_only_when_this_region_sends(backends):
    backend = backends("us")
    assert journal_for(None, load_config(backend).worker) is None
    assert journal_for(None, load_config(backend, ZE_WORKER_REPLICA_NAME="us").worker) is None
    worker = load_config(backend, ZE_WORKER_REPLICA_NAME="us", ZE_WORKER_REPLICAS_URLS=T1).worker
    assert journal_for(None, worker).targets == (T1,)


async def entries_of(worker, target) -> list[Entry]:
    box = worker.outbox
    return list(await box.entries(await box.pending(target)))


async def test_each_accepted_write_records_one_entry_per_target(backends, start_worker, kv_kind):
    down = FakeRegion()
    down.down = True  # nothing leaves the outbox
    worker = await start_worker(backends("us", kv_kind), "us", [T1, T2], make_client=down.client)
    data = b"console.log('replicate me')"
    assert (await worker.upload_file(data, "assets/main.js")).status == 200
    for target in TARGETS:
        [entry] = await entries_of(worker, target)
        assert entry.kind == "file"
        assert dict(entry.body) == {"application_uid": APP, "hash": asset_hash(data, "assets/main.js"), "filename": "assets/main.js"}

    body = snapshot_body(files={"assets/main.js": data})
    assert (await worker.upload_json("snapshot", body)).status == 200
    publish = {"app_version": {"application_uid": APP, "snapshot_id": body["snapshot_id"]}, "urls": ["https://tag-ze.example.com"]}
    assert (await worker.upload_json("envs", publish)).status == 200
    for target in TARGETS:
        entries = await entries_of(worker, target)
        assert [e.kind for e in entries] == ["file", "snapshot", "envs"]
        snap, envs = entries[1], entries[2]
        assert snap.body["snapshot_id"] == body["snapshot_id"] and len(snap.body["hosts"]) == 1
        assert envs.body == {"snapshot_id": body["snapshot_id"], "hosts": {"tag-ze.example.com": envs.body["hosts"]["tag-ze.example.com"]}}
        assert Stamp.parse(envs.body["hosts"]["tag-ze.example.com"]).replica == "us"
        assert [e.seq for e in entries] == sorted(e.seq for e in entries)


async def test_a_refused_write_records_nothing(backends, start_worker, kv_kind):
    down = FakeRegion()
    down.down = True
    worker = await start_worker(backends("us", kv_kind), "us", [T1], make_client=down.client)
    response = await worker.upload_file(b"abc", "a.js", asset="0" * 64)  # hash mismatch
    assert response.status == 400
    response = await worker.upload_json("envs", {"app_version": {"application_uid": APP, "snapshot_id": f"nope.{APP}"},
                                                 "urls": ["https://x-ze.example.com"]})
    assert response.status == 404
    assert await worker.depth() == 0


def test_target_names_never_carry_userinfo():
    assert outbox.target_name("https://user:s3cret@eu.example.com:8443/sync/") == "https://eu.example.com:8443/sync"
    assert outbox.target_name("http://eu.example.com/") == "http://eu.example.com"
    worker = config.load({
        "ZE_WORKER_JWT_SECRET": "x" * 32, "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
        "ZE_WORKER_REPLICA_NAME": "us", "ZE_WORKER_REPLICAS_URLS": "https://user:s3cret@eu.example.com",
    }).worker
    box = outbox.Outbox(object(), worker, [str(u) for u in worker.replicas_urls])  # keys only: no KV call
    assert box.targets == ("https://eu.example.com",)
    assert "s3cret" not in box.pending_key(box.targets[0]) + box.lease_key(box.targets[0])


async def test_a_target_taken_out_of_the_configuration_is_shown_then_forgotten(backends):
    """Writes recorded while eu and ap were configured; then ap is dropped from the config:
    its queue is still visible (not lost silently) until it is forgotten, and forgetting it
    deletes only what no other target still waits for."""
    region = backends("us")
    both = load_config(region, ZE_WORKER_REPLICA_NAME="us", ZE_WORKER_REPLICAS_URLS="http://eu.test,http://ap.test")
    only_eu = load_config(region, ZE_WORKER_REPLICA_NAME="us", ZE_WORKER_REPLICAS_URLS="http://eu.test")
    async with plugins.open_kv(both) as kv:
        box = Outbox(kv, both.worker, ["http://eu.test", "http://ap.test"])
        for i in range(3):
            await kv.atomic(await box.record("file", {"application_uid": APP, "hash": f"{i:064x}", "filename": "a.js"}))
        await box.done("http://eu.test", [1])  # eu got entry 1; ap got none
        entry = (await box.entries([2]))[0]
        await box.set_aside("http://ap.test", entry, "refused")
        assert await box.known_targets() == ["http://ap.test", "http://eu.test"]

        doc = await status.read_status(kv, only_eu.worker)
        shown = {t["url"]: t for t in doc["targets"]}
        assert shown["http://eu.test"]["configured"] and shown["http://eu.test"]["queue_depth"] == 2
        assert not shown["http://ap.test"]["configured"] and shown["http://ap.test"]["queue_depth"] == 2
        assert shown["http://ap.test"]["rejected"] == 1

        eu_box = Outbox(kv, only_eu.worker, ["http://eu.test"])
        assert await eu_box.forget("http://ap.test/") == 2
        assert await box.known_targets() == ["http://eu.test"]
        assert await box.depth("http://ap.test") == 0 and await box.rejected("http://ap.test") == 0
        assert await kv.get(box.rejected_key("http://ap.test", 2)) is None
        # entry 1 (delivered to eu, pending only for ap) is gone; 2 and 3 wait for eu
        assert [e is not None for e in await box.entries([1, 2, 3])] == [False, True, True]
        assert [t["url"] for t in (await status.read_status(kv, only_eu.worker))["targets"]] == ["http://eu.test"]
