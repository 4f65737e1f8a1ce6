"""Anti-entropy: a target that has nothing ends up with every file, snapshot and hostname
(over TCP: the real client and receiver), a target that has everything receives nothing,
filenames are recovered under a base path, and the periodic pass of the lease holder
catches a region up when the outbox has nothing left for it."""

from __future__ import annotations

import asyncio

import pytest

from tests.replication.conftest import FakeRegion, eventually
from tests.upload_support import APP, SECRET, snapshot_body
from zephyr_edge.domain.assets import asset_hash, extension, storage_key
from zephyr_edge.replication import antientropy
from zephyr_edge.replication.client import ReplicaClient

V1 = {"index.html": b"<html>v1</html>", "assets/main.js": b"console.log(1)", "empty.txt": b""}
V2 = {"index.html": b"<html>v2</html>", "assets/main.js": b"console.log(2)"}


def publish_body(snapshot_id: str, *hosts: str) -> dict:
    return {"app_version": {"application_uid": APP, "snapshot_id": snapshot_id}, "urls": [f"https://{h}" for h in hosts]}


async def seed(worker) -> tuple[dict, dict]:
    """Two deploys (v1, v2) through ``worker``; ``prod`` then points at v1 (a rollback), ``staging`` at v2."""
    bodies = []
    for build, files in (("1", V1), ("2", V2)):
        for name, data in files.items():
            assert (await worker.upload_file(data, name)).status == 200
        body = snapshot_body(build=build, files=files)
        assert (await worker.upload_json("snapshot", body)).status == 200
        bodies.append(body)
    v1, v2 = bodies
    for host, body in (("prod-ze.example.com", v2), ("staging-ze.example.com", v2), ("prod-ze.example.com", v1)):
        assert (await worker.upload_json("envs", publish_body(body["snapshot_id"], host))).status == 200
    return v1, v2


def client_to(worker, source: str = "us") -> ReplicaClient:
    return ReplicaClient(worker.url, secret=SECRET, source=source, timeout_s=10)


async def reconcile(source, client, **kw) -> antientropy.Report:
    return await antientropy.reconcile(source.catalog, source.storage, client, concurrency=3, **kw)


async def test_an_empty_target_ends_up_with_everything(backends, start_worker):
    us = await start_worker(backends("us"), "us")
    eu = await start_worker(backends("eu"), "eu")
    v1, v2 = await seed(us)
    seen = []
    async with client_to(eu) as client:
        report = await reconcile(us, client, progress=lambda r: seen.append(r.to_dict()))
    hashes = {asset_hash(d, n) for files in (V1, V2) for n, d in files.items()}
    assert report.ok and report.apps == report.apps_total == 1
    assert (report.files_checked, report.files_missing, report.files_sent) == (len(hashes),) * 3
    assert report.bytes_sent == sum(len(d) for files in (V1, V2) for d in files.values())
    assert (report.snapshots_sent, report.hosts_sent) == (2, 4)  # two version hosts, prod, staging
    assert seen and seen[-1] == report.to_dict() and seen[0]["apps"] == 0
    assert await eu.catalog.hashes(APP) == hashes
    for files in (V1, V2):
        for name, data in files.items():
            assert await eu.stored(asset_hash(data, name)) == data
    assert await eu.catalog.snapshot_ids(APP) == {v1["snapshot_id"], v2["snapshot_id"]}
    here, there = await us.catalog.host_states(APP), await eu.catalog.host_states(APP)
    assert there == here and there["prod-ze.example.com"].snapshot_id == v1["snapshot_id"]

    async with client_to(eu) as client:  # nothing left to send
        again = await reconcile(us, client)
    assert again.ok and (again.files_sent, again.snapshots_sent, again.hosts_sent) == (0, 0, 0)


async def test_a_target_that_has_everything_receives_only_checks(backends, start_worker, fake_region):
    us = await start_worker(backends("us"), "us")
    await seed(us)
    await reconcile(us, fake_region.client(""))
    fake_region.calls.clear()
    report = await reconcile(us, fake_region.client(""))
    assert report.ok and {kind for kind, _ in fake_region.calls} == {"check"}
    assert report.files_missing == report.files_sent == report.snapshots_sent == report.hosts_sent == 0


async def test_newer_hosts_on_the_target_are_left_alone(backends, start_worker, fake_region):
    us = await start_worker(backends("us"), "us")
    v1, _ = await seed(us)
    await reconcile(us, fake_region.client(""))
    stamp, _ = fake_region.hosts["prod-ze.example.com"]
    fake_region.hosts["prod-ze.example.com"] = (type(stamp)(stamp.ms + 1000, "eu"), "other")
    fake_region.calls.clear()
    report = await reconcile(us, fake_region.client(""))
    assert report.hosts_sent == 0 and fake_region.hosts["prod-ze.example.com"][1] == "other"


@pytest.mark.parametrize("read", ["in memory", "streamed"])
async def test_assets_under_a_base_path_are_sent_with_their_upload_filename(backends, start_worker, monkeypatch, read):
    if read == "streamed":
        monkeypatch.setattr(antientropy, "SMALL_ASSET_BYTES", 1)
    us = await start_worker(backends("us"), "us")
    eu = await start_worker(backends("eu"), "eu")
    uploaded = {"assets/main.js": b"export const x = 1", "index.html": b"<html>base</html>"}
    for name, data in uploaded.items():
        assert (await us.upload_file(data, name)).status == 200
    body = snapshot_body(files={})
    body["assets"] = {  # keys carry the base path except index.html; hashes use the upload filename
        key: {"path": key, "extname": extension(key), "hash": asset_hash(uploaded[name], name), "size": len(uploaded[name])}
        for key, name in (("app/assets/main.js", "assets/main.js"), ("index.html", "index.html"))
    }
    assert (await us.upload_json("snapshot", body)).status == 200
    async with client_to(eu) as client:
        report = await reconcile(us, client)
    assert report.ok and report.files_sent == 2
    assert await eu.catalog.hashes(APP) == {asset_hash(d, n) for n, d in uploaded.items()}


def test_filename_candidates():
    assert antientropy.filename_candidates(["a/b/c.js", "c.js"]) == ["a/b/c.js", "c.js", "b/c.js"]


async def test_files_missing_here_too_are_counted_not_failed(backends, start_worker, fake_region):
    us = await start_worker(backends("us"), "us")
    await seed(us)
    await us.storage.delete(storage_key(asset_hash(V2["index.html"], "index.html")))
    report = await reconcile(us, fake_region.client(""))
    assert report.ok and report.files_not_stored == 1 and report.files_sent == report.files_missing - 1


async def test_failures_are_counted_and_an_unreachable_target_stops_the_pass(backends, start_worker, fake_region):
    us = await start_worker(backends("us"), "us")
    await seed(us)
    for i in range(4):
        assert (await us.upload_json("snapshot", snapshot_body(app=f"app{i}.repo.org", build="1", files={}),
                                     app=f"app{i}.repo.org")).status == 200
    fake_region.refuse.add(asset_hash(V1["empty.txt"], "empty.txt"))
    report = await reconcile(us, fake_region.client(""))
    assert report.errors == 1 and not report.ok and report.aborted is None and report.apps == 5
    fake_region.down = True
    report = await reconcile(us, fake_region.client(""))
    assert report.aborted and report.apps == antientropy.ABORT_AFTER_FAILED_APPS
    assert report.errors == antientropy.ABORT_AFTER_FAILED_APPS


async def test_the_lease_holder_runs_periodic_passes(backends, start_worker):
    """The outbox has nothing for the target (the writes were made before it was
    configured, as when they were delivered elsewhere): the periodic pass sends them."""
    region = backends("us")
    first = await start_worker(region, "us")  # receive-only: no outbox entries
    v1, v2 = await seed(first)
    await first.stop()
    eu = await start_worker(backends("eu"), "eu")
    us = await start_worker(region, "us", [eu.url], ZE_WORKER_REPLICATION_ANTI_ENTROPY_MS="200")
    assert await us.depth() == 0
    await eventually(lambda: _synced(eu, v1, v2), what="the anti-entropy pass")


async def _synced(eu, v1, v2) -> bool:
    states = await eu.catalog.host_states(APP)
    return (await eu.catalog.snapshot_ids(APP) == {v1["snapshot_id"], v2["snapshot_id"]}
            and states.get("prod-ze.example.com") is not None
            and states["prod-ze.example.com"].snapshot_id == v1["snapshot_id"]
            and len(await eu.catalog.hashes(APP)) == 5)


async def test_no_periodic_pass_when_disabled(backends, start_worker):
    seen = FakeRegion()
    region = backends("us")
    first = await start_worker(region, "us")
    await seed(first)
    await first.stop()
    us = await start_worker(region, "us", ["http://eu.invalid"], make_client=seen.client)
    await eventually(lambda: us.senders[0].holding)
    await asyncio.sleep(0.3)
    assert seen.calls == []


async def test_hosts_published_before_stamps_existed_are_sent_with_the_lowest_stamp(backends, start_worker):
    """A region deployed with an older version holds hostname records without stamps: a new
    region still gets them, and they never win over a real publish there."""
    us = await start_worker(backends("us"), "us")
    eu = await start_worker(backends("eu"), "eu")
    v1, v2 = await seed(us)
    for host in ("prod-ze.example.com", "staging-ze.example.com"):
        await us.catalog.kv.delete(us.catalog.stamp_key(host))  # as written before stamps
    eu_stamp = None
    async with client_to(eu) as client:
        report = await reconcile(us, client)
        assert report.ok and report.hosts_sent == 4
        assert (await eu.catalog.live("prod-ze.example.com")).snapshot_id == v1["snapshot_id"]
        assert str((await eu.catalog.stamps(["staging-ze.example.com"]))["staging-ze.example.com"]) == "0|"
        # a publish in eu afterwards is kept by later passes
        assert (await eu.upload_json("envs", publish_body(v2["snapshot_id"], "prod-ze.example.com"))).status == 200
        eu_stamp = (await eu.catalog.stamps(["prod-ze.example.com"]))["prod-ze.example.com"]
        again = await reconcile(us, client)
    assert again.ok and again.hosts_sent == 0
    assert (await eu.catalog.live("prod-ze.example.com")).snapshot_id == v2["snapshot_id"]
    assert (await eu.catalog.stamps(["prod-ze.example.com"]))["prod-ze.example.com"] == eu_stamp
