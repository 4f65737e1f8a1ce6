"""The sender: a region's writes reach the other region (over TCP with the real client and
receiver, or a :class:`FakeRegion` to inject failures and watch the order), publishes after
what they publish, nothing sent twice that the target holds, nothing lost while it is
down, permanent refusals set aside, and one delivering worker per target (lease takeover
after a crash)."""

from __future__ import annotations

import asyncio
import logging
import random

from tests.replication.conftest import FakeRegion, eventually
from tests.services import free_port
from tests.upload_support import APP, snapshot_body
from zephyr_edge.domain.assets import asset_hash, storage_key
from zephyr_edge.replication.feature import SENDERS_KEY
from zephyr_edge.replication.sender import Backoff

FILES = {"index.html": b"<html>v1</html>", "assets/main.js": b"console.log(1)", "assets/app.css": b"body{}"}


def publish_body(snapshot_id: str, *hosts: str) -> dict:
    return {"app_version": {"application_uid": APP, "snapshot_id": snapshot_id}, "urls": [f"https://{h}" for h in hosts]}


async def deploy(worker, files=FILES, build: str = "1", hosts=("tag-ze.example.com",)) -> dict:
    """Upload ``files``, their snapshot and a publish through ``worker``; the snapshot body."""
    for name, data in files.items():
        assert (await worker.upload_file(data, name)).status == 200
    body = snapshot_body(build=build, files=files)
    assert (await worker.upload_json("snapshot", body)).status == 200
    if hosts:
        assert (await worker.upload_json("envs", publish_body(body["snapshot_id"], *hosts))).status == 200
    return body


def test_backoff_is_full_jitter_capped_and_resets():
    backoff = Backoff(0.1, 1.0, random.Random(7))
    delays = [backoff.next() for _ in range(12)]
    assert all(0 <= d <= min(1.0, 0.1 * 2 ** i) for i, d in enumerate(delays))
    assert max(delays[6:]) > 0.3  # grows to the cap
    backoff.reset()
    assert backoff.next() <= 0.1


async def test_delivers_everything_to_the_other_region_over_tcp(backends, start_worker):
    onward = FakeRegion()
    eu = await start_worker(backends("eu"), "eu", ["http://ap.invalid"], make_client=onward.client)
    us = await start_worker(backends("us"), "us", [eu.url])
    body = await deploy(us)
    await eventually(us.drained, what="the outbox to drain")
    await eventually(lambda: _served(eu, "tag-ze.example.com", body["snapshot_id"]), what="the publish to arrive")
    assert await eu.catalog.hashes(APP) == {asset_hash(d, n) for n, d in FILES.items()}
    for name, data in FILES.items():
        assert await eu.stored(asset_hash(data, name)) == data
    assert await eu.catalog.snapshot_ids(APP) == {body["snapshot_id"]}
    status = await eventually(lambda: _status_with(us, delivered=5))
    assert status.rejected == 0
    assert await eu.depth() == 0 and onward.calls == []  # a sync write is never forwarded


async def _served(worker, host: str, snapshot_id: str) -> bool:
    live = await worker.catalog.live(host)
    return live is not None and live.snapshot_id == snapshot_id


async def _status_with(worker, **want):
    status = await worker.outbox.status(worker.outbox.targets[0])
    return status if all(getattr(status, k) == v for k, v in want.items()) else None


async def test_publish_is_sent_after_the_files_and_snapshot_before_it(backends, start_worker, fake_region):
    fake_region.down = True  # let the whole deploy queue up, then deliver it in one go
    fake_region.delay = 0.03
    us = await start_worker(backends("us"), "us", ["http://eu.invalid"], make_client=fake_region.client,
                            ZE_WORKER_REPLICATION_CONCURRENCY="3")
    body = await deploy(us)
    body2 = await deploy(us, {"index.html": b"<html>v2</html>", "assets/new.js": b"2"}, build="2", hosts=("tag-ze.example.com",))
    assert await us.depth() == 9
    fake_region.down = False
    await eventually(us.drained, what="the outbox to drain")
    events = fake_region.events
    for i, (edge, kind, _key, _t) in enumerate(events):
        if edge == "start" and kind == "envs":
            started = {e[2] for e in events[:i] if e[0] == "start"}
            ended = {e[2] for e in events[:i] if e[0] == "end"}
            assert started == ended, "a publish started while earlier requests were in flight"
    sent = [(e[1], e[2]) for e in events if e[0] == "start"]
    first_envs, second_envs = [i for i, s in enumerate(sent) if s[0] == "envs"]
    assert {k for k, _ in sent[:first_envs]} == {"file", "snapshot"} and len(sent[:first_envs]) == 4
    assert sent[first_envs + 1 : second_envs].count(("snapshot", body2["snapshot_id"])) == 1
    assert fake_region.hosts["tag-ze.example.com"][1] == body2["snapshot_id"]  # the later publish won
    assert 1 < fake_region.max_in_flight <= 3
    assert body["snapshot_id"] in fake_region.snapshots
    jtis = [c[1][-1] for c in fake_region.calls if c[0] != "check"]
    assert all(j.startswith("us:") for j in jtis)


async def test_files_the_target_already_holds_are_not_sent_again(backends, start_worker, fake_region):
    fake_region.down = True
    us = await start_worker(backends("us"), "us", ["http://eu.invalid"], make_client=fake_region.client)
    for name, data in FILES.items():
        await us.upload_file(data, name)
    held = [asset_hash(FILES[n], n) for n in ("index.html", "assets/main.js")]
    fake_region.files.update({(APP, h): b"" for h in held})
    fake_region.down = False
    await eventually(us.drained)
    [(app, digest, filename, jti)] = fake_region.sent("file")
    assert (app, digest, filename) == (APP, asset_hash(FILES["assets/app.css"], "assets/app.css"), "assets/app.css")
    assert jti == "us:3"  # <replica>:<seq>, the third write of a fresh outbox
    assert fake_region.sent("check")  # asked first
    assert (await _status_with(us, delivered=3)) is not None


async def test_nothing_is_lost_while_the_target_region_is_down(backends, start_worker):
    port = free_port()
    target = f"http://127.0.0.1:{port}"
    us = await start_worker(backends("us"), "us", [target])
    body = await deploy(us)
    status = await eventually(lambda: _failing(us), what="a delivery failure to be recorded")
    assert "127.0.0.1" in status.last_error
    assert await us.depth() == 5
    eu = await start_worker(backends("eu"), "eu", port=port)  # the region comes back
    await eventually(lambda: _served(eu, "tag-ze.example.com", body["snapshot_id"]))
    await eventually(us.drained)
    assert await eu.catalog.hashes(APP) == {asset_hash(d, n) for n, d in FILES.items()}
    # the counters are saved just after the queue empties
    status = await eventually(lambda: _status_with(us, delivered=5))
    assert status.last_delivered_ms >= status.last_error_ms


async def _failing(worker):
    status = await worker.outbox.status(worker.outbox.targets[0])
    return status if status.last_error else None


async def test_a_refused_entry_is_set_aside_and_the_rest_delivered(backends, start_worker, fake_region, caplog):
    fake_region.down = True
    us = await start_worker(backends("us"), "us", ["http://eu.invalid"], make_client=fake_region.client)
    await deploy(us)
    fake_region.refuse.add(asset_hash(FILES["assets/main.js"], "assets/main.js"))
    with caplog.at_level(logging.ERROR, logger="zephyr_edge.replication.sender"):
        fake_region.down = False
        await eventually(us.drained)
    box = us.outbox
    assert await box.rejected(box.targets[0]) == 1
    assert len(fake_region.files) == 2 and "tag-ze.example.com" in fake_region.hosts
    status = await eventually(lambda: _status_with(us, delivered=4, rejected=1))
    assert status is not None
    assert any("set aside" in r.getMessage() and "422" in r.getMessage() for r in caplog.records)


async def test_an_entry_whose_bytes_are_gone_is_set_aside(backends, start_worker, fake_region):
    fake_region.down = True
    us = await start_worker(backends("us"), "us", ["http://eu.invalid"], make_client=fake_region.client)
    await us.upload_file(b"soon gone", "gone.js")
    await us.upload_file(b"stays", "stays.js")
    await us.storage.delete(storage_key(asset_hash(b"soon gone", "gone.js")))
    fake_region.down = False
    await eventually(us.drained)
    box = us.outbox
    assert await box.rejected(box.targets[0]) == 1
    assert list(fake_region.files) == [(APP, asset_hash(b"stays", "stays.js"))]


async def test_one_target_down_does_not_hold_up_another(backends, start_worker):
    down, up = FakeRegion(), FakeRegion()
    down.down = True
    regions = {"http://down.invalid": down, "http://up.invalid": up}
    us = await start_worker(backends("us"), "us", list(regions), make_client=lambda url: regions[url].client(url))
    await deploy(us)
    await eventually(lambda: "tag-ze.example.com" in up.hosts)
    assert await us.depth("http://down.invalid") == 5
    assert await us.depth("http://up.invalid") == 0


async def test_one_worker_delivers_and_another_takes_over_after_a_crash(backends, start_worker, fake_region):
    region = backends("us", "redis")
    fake_region.delay = 0.01
    workers = []
    for name in ("w1", "w2"):
        workers.append(await start_worker(region, "us", ["http://eu.invalid"], ZE_WORKER_REPLICATION_LEASE_MS="600",
                                          make_client=lambda url, who=name: fake_region.client(url, who)))
    owners = {w.senders[0].leases.owner: w for w in workers}
    for i in range(12):  # writes through both workers
        await workers[i % 2].upload_file(f"file {i}".encode(), f"f{i}.js")
    await eventually(workers[0].drained)
    assert fake_region.overlaps == 0 and len(fake_region.files) == 12
    holder = owners[await workers[0].holder()]
    survivor = next(w for w in workers if w is not holder)
    assert holder.senders[0].holding and not survivor.senders[0].holding

    async def no_release(target: str) -> None:  # a crash: the lease is left to expire
        return None

    holder.senders[0].leases.release = no_release
    await holder.stop()
    assert await survivor.holder() == holder.senders[0].leases.owner  # still claimed...
    await survivor.upload_file(b"after the crash", "late.js")
    await eventually(lambda: survivor.senders[0].holding, timeout=5, what="the takeover")
    assert await survivor.holder() == survivor.senders[0].leases.owner
    await eventually(lambda: (APP, asset_hash(b"after the crash", "late.js")) in fake_region.files, timeout=5)
    assert fake_region.overlaps == 0


async def test_stopping_a_worker_releases_its_lease(backends, start_worker, fake_region):
    region = backends("us", "redis")
    one = await start_worker(region, "us", ["http://eu.invalid"], make_client=fake_region.client,
                             ZE_WORKER_REPLICATION_LEASE_MS="30000")
    await eventually(lambda: one.senders[0].holding)
    two = await start_worker(region, "us", ["http://eu.invalid"], make_client=fake_region.client,
                             ZE_WORKER_REPLICATION_LEASE_MS="30000")
    await one.stop()
    # a 30 s lease, released at shutdown: the other worker takes over within one recheck (10 s)
    await eventually(lambda: two.senders[0].holding, timeout=12, what="the takeover after a release")
    assert await asyncio.wait_for(two.holder(), 5) == two.senders[0].leases.owner


async def test_a_target_listed_twice_or_that_is_this_region_itself(backends, start_worker):
    """One config file shared by every region lists each region's own URL too (here twice,
    spelled two ways): one sender for the URL, and its entries are dropped once the target
    answers that it is this region, instead of piling up behind a 403 retried forever."""
    port = free_port()
    own = f"http://127.0.0.1:{port}"
    us = await start_worker(backends("us"), "us", [own, own + "/"], port=port)
    assert us.outbox.targets == (own,)
    assert len(us.client.app[SENDERS_KEY]) == 1
    await deploy(us)
    await eventually(us.drained, what="the entries for this region itself to be dropped")
    status = await eventually(lambda: _failing(us))
    assert "this region itself" in status.last_error and status.rejected == 0
    assert await us.outbox.rejected(own) == 0
    await deploy(us, {"index.html": b"<html>v2</html>"}, build="2")  # later writes too
    await eventually(us.drained)
