"""Multi-region replication end to end (docs/replication.md): REAL ``zephyr-edge serve`` processes in
several regions (``tests/e2e/regions.py``: a bucket, a redis-server and a load balancer of
their own per region), the REAL agent deploying to one of them, sync traffic over loopback
TCP. Nothing is faked; every wait is bounded.

- :func:`test_agent_deploy_is_served_by_every_region`: a ``zephyr-agent`` 1.2.2 deploy to
  region A (two workers behind its balancer) is served byte for byte by every worker of
  every region through the version host, with the same snapshot JSON and hash list.
- :func:`test_region_down_catches_up_without_manual_step`: B is down during three deploys
  and a publish in A; A's outbox holds exactly what B misses; once B is started again it
  serves every version and the published host with nothing lost, and A's queue empties.
- :func:`test_sigkill_of_lease_holder_mid_fanout`: the A worker holding B's lease is
  SIGKILLed while it is delivering; the other A worker takes the lease over once it
  expires and delivers everything.
- :func:`test_target_storage_outage_keeps_entries_until_delivered`: B's bucket fails while
  its KV answers; A keeps every entry pending (none set aside) and delivers them, a 3 MiB
  file included (streamed, no balancer in between), once the bucket is back.
- :func:`test_sync_requests_idempotent_authenticated_never_forwarded`: repeated sync
  requests change nothing; forged, expired, mis-addressed and mismatching tokens get 403
  and change nothing; a region that receives never records nor forwards.
- :func:`test_concurrent_publish_converges_to_greater_stamp`: A and B publish one hostname
  to different snapshots at the same moment; all regions end on the same snapshot, the one
  whose ``(time, replica)`` stamp is greater (stamps read from each region's own Redis
  writes with ``MONITOR``).
- :func:`test_new_region_catches_up_by_resync_and_anti_entropy`: a region that was never a
  target gets everything with ``zephyr-edge replicate --resync URL``; a target added later
  catches up through the periodic anti-entropy pass alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import jwt
import pytest

from tests.e2e.agent import MANIFEST_FILENAME, ControlPlaneStub, deploy, install_agents, make_app_dir, sample_app_files
from tests.e2e.regions import (
    FAST_REPLICATION,
    Region,
    Regions,
    RegionSpec,
    Uploader,
    asset_hash,
    build_files,
    make_snapshot,
    version_host,
    wait_until,
)
from zephyr_edge.domain import tokens
from zephyr_edge.domain.assets import storage_key
from zephyr_edge.replication import protocol, synctoken
from zephyr_edge.domain.snapshot import Snapshot
from zephyr_edge.domain.stamps import Stamp

pytestmark = pytest.mark.e2e

SECRET = "e2e-replication-jwt-secret-0123456789abcdef"
AGENT = "1.2.2"
#: The application of the builds uploaded through the API (not the agent).
UID = "repl-app.e2e-repo.e2e-org"
CHANGED = "assets/main-3f2a1c.js"
ENV_HOST = "staging.e2e-app.example.test"
#: Bound of every wait for replication to happen.
CONVERGE_S = 30.0
LEASE_S = int(FAST_REPLICATION["ZE_WORKER_REPLICATION_LEASE_MS"]) / 1000
_STAMP_SET = re.compile(r'"SET" "(?P<key>[^"]*:host-stamp:[^"]*)" "(?P<stamp>\d+\|[^"]*)"')


@pytest.fixture(scope="session")
def agents():
    return install_agents(versions=(AGENT,))


@pytest.fixture
async def regions(tmp_path, s3_endpoint):
    """``await regions(specs, **kw)``: a started :class:`Regions`; every one is stopped and
    its buckets and Redis servers removed afterwards (their logs printed, shown on failure)."""
    made: list[Regions] = []

    async def make(specs: Mapping[str, RegionSpec | int], **kw) -> Regions:
        rs = Regions(tmp_path / f"set{len(made)}", s3_endpoint, SECRET, specs, **kw)
        made.append(rs)
        return await rs.__aenter__()

    try:
        yield make
    finally:
        for rs in made:
            print(rs.describe())
            await rs.close()


# --- checks -----------------------------------------------------------------------------------


async def snapshot_in(region: Region, snapshot_id: str) -> Snapshot | None:
    async with region.catalog() as catalog:
        return await catalog.snapshot(snapshot_id)


async def serves(region: Region, host: str, snapshot: Snapshot, files: Mapping[str, bytes]) -> bool:
    """Every worker of ``region`` serves every asset of ``snapshot`` through ``host`` with
    its exact bytes (those of ``files`` where known; else bytes matching the asset's hash
    and size); AssertionError naming the first difference."""
    for worker in region.live_workers():
        for path, asset in snapshot.assets.items():
            got = await worker.get_asset(host, path)
            where = f"region {region.name} worker {worker.name}: GET {path!r} on {host}"
            assert got.status == 200, f"{where}: {got.status} {got.body[:200]!r}"
            if path in files:
                assert got.body == files[path], f"{where}: bytes differ ({len(got.body)} vs {len(files[path])})"
            assert len(got.body) == asset.size and asset_hash(path, got.body) == asset.hash, f"{where}: not the asset"
    return True


async def has_all(region: Region, application_uid: str, snapshot_ids: list[str], hashes: set[str]) -> bool:
    async with region.catalog() as catalog:
        missing_ids = set(snapshot_ids) - await catalog.snapshot_ids(application_uid)
        missing = hashes - await catalog.hashes(application_uid)
    assert not missing_ids and not missing, (
        f"region {region.name} lacks snapshots {sorted(missing_ids)} and {len(missing)} hashes"
    )
    return True


async def host_state(region: Region, host: str) -> tuple[str | None, Stamp | None]:
    """(snapshot id the host serves, its stamp) in ``region``'s KV."""
    async with region.catalog() as catalog:
        live = await catalog.live(host)
        stamp = (await catalog.stamps([host]))[host]
    return (live.snapshot_id if live else None), stamp


async def queue_empty(region: Region, target: Region) -> dict:
    state = await region.target(target)
    assert state["queue_depth"] == 0, f"{region.name}->{target.name}: {state}"
    return state


def no_errors(rs: Regions, *, allow: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """No worker (of the regions ``only``, default all) logged an error (messages
    containing one of ``allow`` excepted)."""
    found = []
    for region in rs.regions.values():
        if only is not None and region.name not in only:
            continue
        for worker in region.workers:
            found += [
                (worker.name, ln.get("message"))
                for ln in worker.errors()
                if not any(a in str(ln.get("message")) for a in allow)
            ]
    assert found == [], found


def sync_headers(
    subject: str, *, source: str = "a", secret: str = SECRET, header_source: str | None = None, **mint_kw
) -> dict[str, str]:
    token = synctoken.mint(secret, source, subject, **mint_kw)
    return {
        "Authorization": f"Bearer {token}",
        protocol.SOURCE_HEADER: source if header_source is None else header_source,
    }


def sync_file_path(path: str, body: bytes, uid: str = UID) -> str:
    return (
        f"/upload?type={protocol.SYNC_FILE}&application_uid={quote(uid)}"
        f"&hash={asset_hash(path, body)}&filename={quote(path, safe='')}"
    )


async def deploy_and_publish(region, name: str, count: int):
    """A build of ``count`` files deployed to ``region`` and published on ENV_HOST:
    (files, snapshot id, version host, hashes)."""
    files = build_files(name, count)
    sid = f"tester-1.{UID}"
    async with Uploader(region.url, SECRET, UID) as up:
        host = await up.build(sid, files)
        status, text = await up.publish(sid, [ENV_HOST])
        assert status == 200, text
    return files, sid, host, {asset_hash(p, body) for p, body in files.items()}


# --- 1. one deploy, every region ----------------------------------------------------------------


async def test_agent_deploy_is_served_by_every_region(agents, regions, tmp_path):
    rs = await regions({"a": 2, "b": 1, "c": 1})
    a, b, c = rs["a"], rs["b"], rs["c"]
    async with ControlPlaneStub(edge_url=a.url, jwt_secret=SECRET) as stub:
        app = make_app_dir(tmp_path / "app", sample_app_files(AGENT))
        res = await deploy(AGENT, app, stub.url, agents=agents)
    uid, sid = app.application_uid, f"tester-{stub.build_ids[0]}.{app.application_uid}"
    host = urlsplit(res.version_url or "").hostname
    assert host == version_host(sid), res.version_url
    # the replication startup lines (``zephyr_edge.cli.runner.log_startup``), in every worker of every region
    for region in (a, b, c):
        peers = sorted(r.url for r in (a, b, c) if r is not region)
        for worker in region.workers:
            enabled = worker.logged("Replica mode enabled")
            fanout = worker.logged("Replica fan-out configured")
            assert [ln.get("zephyr.replica") for ln in enabled] == [region.name], enabled
            assert [(ln.get("zephyr.replica.count"), sorted(ln.get("zephyr.replica.urls") or [])) for ln in fanout] == [
                (2, peers)], fanout
    # the agent's uploads were spread over both workers of A (both recorded writes)
    posted = {p.backend for p in a.balancer.passed if p.method == "POST" and p.status == 200}
    assert posted == {w.url for w in a.workers}, posted

    snap = await snapshot_in(a, sid)
    assert snap is not None and set(snap.assets) == set(app.files) | {MANIFEST_FILENAME}
    async with a.catalog() as catalog:
        a_hashes = await catalog.hashes(uid)
    assert a_hashes == set(snap.hashes)

    started = time.monotonic()
    for region in (b, c):
        await wait_until(lambda r=region: has_all(r, uid, [sid], a_hashes), f"{region.name} has the deploy", CONVERGE_S)
    print(f"deploy replicated to B and C within {time.monotonic() - started:.2f} s of the agent's end")
    for region in (a, b, c):
        await wait_until(lambda r=region: serves(r, host, snap, app.files), f"{region.name} serves {host}", 10)
        copy = await snapshot_in(region, sid)
        assert copy is not None and copy.raw == snap.raw, f"{region.name}: snapshot JSON differs from A's"
        assert await region.hash_list(uid) == a_hashes
        assert (await host_state(region, host)) == (await host_state(a, host))

    for target in (b, c):
        state = await wait_until(lambda t=target: queue_empty(a, t), f"A's queue for {target.name} empties", 10)
        assert state["delivered"] >= len(a_hashes) + 1 and state["oldest_undelivered_age_s"] is None, state
    # B and C only received: they recorded nothing, and no region got a sync from them
    for region in (b, c):
        assert await region.outbox_seq() == 0, f"{region.name} recorded a received write in its outbox"
    assert a.balancer.syncs() == [] and b.balancer.syncs("c") == [] and c.balancer.syncs("b") == []
    assert {p.source for p in b.balancer.syncs()} == {"a"} == {p.source for p in c.balancer.syncs()}
    no_errors(rs)


# --- 2. a region down, then back -----------------------------------------------------------------


async def test_region_down_catches_up_without_manual_step(agents, regions, tmp_path):
    rs = await regions({"a": 2, "b": 1, "c": 1})
    a, b, c = rs["a"], rs["b"], rs["c"]
    await b.stop()

    deploys: list[tuple[str, str, dict[str, bytes]]] = []  # (snapshot id, version host, files)
    async with ControlPlaneStub(edge_url=a.url, jwt_secret=SECRET) as stub:
        app = make_app_dir(tmp_path / "app", sample_app_files(AGENT))
        uid = app.application_uid
        for n in range(3):
            if n:
                app.write({CHANGED: f"document.body.textContent = 'deploy {n + 1}';\n".encode()})
            res = await deploy(AGENT, app, stub.url, agents=agents)
            sid = f"tester-{stub.build_ids[n]}.{uid}"
            assert urlsplit(res.version_url or "").hostname == version_host(sid)
            deploys.append((sid, version_host(sid), dict(app.files)))
    published = deploys[1]  # an environment on the SECOND deploy (not the latest)
    done = await a.workers[1].cli("publish", "--host", ENV_HOST, "--snapshot", published[0])
    assert done.returncode == 0, done.stderr
    sids = [d[0] for d in deploys]

    async with a.catalog() as catalog:
        a_hashes = await catalog.hashes(uid)
        snaps = {sid: await catalog.snapshot(sid) for sid in sids}
    # C (up) gets everything meanwhile; A keeps exactly what B misses: one entry per new
    # hash, per snapshot and for the publish
    await wait_until(lambda: has_all(c, uid, sids, a_hashes), "C has the three deploys", CONVERGE_S)
    await wait_until(lambda: (host_state(c, ENV_HOST)), "C has the published host", CONVERGE_S)
    assert (await host_state(c, ENV_HOST))[0] == published[0]
    to_b = await a.target(b)
    assert to_b["queue_depth"] == len(a_hashes) + len(sids) + 1, to_b
    assert to_b["oldest_undelivered_age_s"] and to_b["oldest_undelivered_age_s"] > 0, to_b
    to_b = await wait_until(lambda: _with_error(a, b), "A reports B's delivery error", 10)
    print(f"A -> B while B is down: {to_b}")
    # the CLI reads the same state from A's KV
    shown = await a.workers[0].cli("replicate", "--status")
    assert shown.returncode == 0, shown.stderr
    by_url = {t["url"]: t for t in json.loads(shown.stdout)["targets"]}
    assert by_url[b.url]["queue_depth"] == to_b["queue_depth"] and by_url[c.url]["queue_depth"] == 0, by_url
    assert (await a.target(c))["queue_depth"] == 0

    await b.start()  # same ports, nothing else done
    started = time.monotonic()
    await wait_until(lambda: has_all(b, uid, sids, a_hashes), "B catches up", CONVERGE_S)
    await wait_until(lambda: queue_empty(a, b), "A's queue for B empties", CONVERGE_S)
    print(f"B caught up {len(a_hashes)} files, {len(sids)} snapshots and a publish in {time.monotonic() - started:.2f} s")
    for sid, host, files in deploys:
        await wait_until(lambda: serves(b, host, snaps[sid], files), f"B serves {sid}", 10)
    await wait_until(lambda: serves(b, ENV_HOST, snaps[published[0]], published[2]), "B serves the environment", 10)
    # nothing lost, nothing extra: B's catalog is A's
    async with b.catalog() as catalog:
        assert await catalog.hashes(uid) == a_hashes
        assert await catalog.snapshot_ids(uid) == set(sids)
    assert await host_state(b, ENV_HOST) == await host_state(a, ENV_HOST) == await host_state(c, ENV_HOST)
    state = await a.target(b)
    assert state["oldest_undelivered_age_s"] is None and state["rejected"] == 0, state
    assert await b.outbox_seq() == 0 and await c.outbox_seq() == 0
    no_errors(rs)


async def _with_error(region: Region, target: Region) -> dict:
    state = await region.target(target)
    assert state["last_error"], state
    return state


# --- 3. SIGKILL of the lease holder ---------------------------------------------------------------


async def test_sigkill_of_lease_holder_mid_fanout(regions):
    one_at_a_time = {"ZE_WORKER_REPLICATION_CONCURRENCY": "1"}
    rs = await regions({"a": RegionSpec(2, extra=one_at_a_time), "b": 1})
    a, b = rs["a"], rs["b"]
    await b.stop()
    files = build_files("sigkill", 150)
    sid = f"tester-1.{UID}"
    async with Uploader(a.url, SECRET, UID) as up:
        host = await up.build(sid, files)
    expected_hashes = {asset_hash(p, body) for p, body in files.items()}

    # entries pile up for B; find the A worker holding B's lease
    state = await wait_until(lambda: _held(a, b), "a worker of A holds B's lease", 10)
    assert state["queue_depth"] == len(files) + 1, state
    holder = a.worker_of(state["holder"])
    survivor = next(w for w in a.workers if w is not holder)
    print(f"lease of B held by {holder.name} (pid {holder.pid}): {state['holder']}")

    # B comes back; kill the holder while it is delivering (B has received some files)
    await b.start()
    def files_received() -> list:
        return b.balancer.syncs("a", type=protocol.SYNC_FILE, status=200)

    await wait_until(lambda: len(files_received()) >= 10, "delivery to B under way", CONVERGE_S, 0.01)
    code = await holder.kill()
    killed_at = time.monotonic()
    assert code == -9
    at_kill = await a.target(b, survivor)
    received_at_kill = len(files_received())
    print(f"killed {holder.name} with {at_kill['queue_depth']} entries pending; "
          f"B had received {received_at_kill} files")
    assert at_kill["queue_depth"] > 0, f"delivery finished before the kill: {at_kill}"
    assert at_kill["holder"] == state["holder"], "the dead worker's lease vanished at once"

    # the survivor takes the lease over once it expires, then delivers everything
    taken = await wait_until(lambda: _held_by(a, b, survivor), "the survivor takes B's lease", 10 + LEASE_S, 0.05)
    takeover_s = time.monotonic() - killed_at
    print(f"takeover after {takeover_s:.2f} s (lease {LEASE_S:g} s): {taken['holder']}")
    assert takeover_s <= LEASE_S + 3.0
    await wait_until(lambda: queue_empty(a, b), "A's queue for B empties", CONVERGE_S)
    async with b.catalog() as catalog:
        assert await catalog.hashes(UID) == expected_hashes
    snap = await snapshot_in(a, sid)
    assert snap is not None
    await wait_until(lambda: serves(b, host, snap, files), "B serves the build", 10)
    assert survivor.logged("Replication target taken over"), "the survivor did not log the takeover"
    sent = files_received()
    print(f"B received {len(sent)} sync-file requests for {len(files)} files")
    assert len({p.path_qs for p in sent}) == len(files)
    no_errors(rs)


async def _held(region: Region, target: Region) -> dict:
    state = await region.target(target)
    assert state["holder"] and state["queue_depth"] > 0, state
    return state


async def _held_by(region: Region, target: Region, worker) -> dict:
    state = await region.target(target, worker)
    assert state["holder"] and region.worker_of(state["holder"]) is worker, state
    return state


# --- 3b. the target's storage fails while its KV answers ----------------------------------------


async def test_target_storage_outage_keeps_entries_until_delivered(regions):
    """B's bucket goes away (its KV still answers, so ``sync-check`` works and every
    ``sync-file`` fails with a 5xx): A keeps every file entry pending (none set aside),
    then delivers them all once the bucket is back. B is reached without a balancer, so a
    large file goes through the client's streamed path as sent."""
    rs = await regions({"a": 1, "b": RegionSpec(1, direct=True)})
    a, b = rs["a"], rs["b"]
    await asyncio.to_thread(b.bucket.client.delete_bucket, Bucket=b.bucket.name)  # empty: nothing is lost
    files = build_files("outage", 20)
    files["assets/large.bin"] = b"".join(
        asset_hash(str(i), b"x").encode() for i in range(3 * 1024 * 1024 // 64)
    )  # 3 MiB: above the client's in-memory retry limit
    sid = f"tester-1.{UID}"
    async with Uploader(a.url, SECRET, UID) as up:
        host = await up.build(sid, files)
    hashes = {asset_hash(p, body) for p, body in files.items()}

    failing = await wait_until(lambda: _with_error(a, b), "A reports B's failing storage", CONVERGE_S)
    await asyncio.sleep(2.0)  # several delivery rounds (retry pause at most 0.5 s)
    state = await a.target(b)
    print(f"A -> B while B's bucket is gone: {state}")
    assert state["rejected"] == 0, state
    assert state["queue_depth"] >= len(files), state
    async with b.catalog() as catalog:
        assert not (await catalog.hashes(UID)) & hashes, "B listed a file it could not store"

    await asyncio.to_thread(b.bucket.create)
    await wait_until(lambda: has_all(b, UID, [sid], hashes), "B catches up once its bucket is back", CONVERGE_S)
    await wait_until(lambda: queue_empty(a, b), "A's queue for B empties", CONVERGE_S)
    snap = await snapshot_in(a, sid)
    assert snap is not None
    await wait_until(lambda: serves(b, host, snap, files), "B serves the build", 10)
    assert (await a.target(b))["rejected"] == 0
    assert failing["last_error"]
    no_errors(rs, only=("a",))  # B logged its storage failures; A nothing


# --- 4. idempotent, authenticated, never forwarded ----------------------------------------------


async def test_sync_requests_idempotent_authenticated_never_forwarded(regions):
    rs = await regions({"a": 1, "b": 1, "c": 1})
    a, b, c = rs["a"], rs["b"], rs["c"]
    files, sid, host, a_hashes = await deploy_and_publish(a, "forward", 12)
    for region in (b, c):
        await wait_until(lambda r=region: has_all(r, UID, [sid], a_hashes), f"{region.name} has the build", CONVERGE_S)
        await wait_until(lambda r=region: _serves_snapshot(r, ENV_HOST, sid), f"{region.name} has the publish", CONVERGE_S)
    snap = await snapshot_in(a, sid)
    assert snap is not None
    for region in (b, c):
        await wait_until(lambda r=region: serves(r, host, snap, files), f"{region.name} serves the build", 10)

    # never forwarded: B and C recorded nothing and sent nothing
    for region in (b, c):
        assert await region.outbox_seq() == 0, f"{region.name} recorded received writes"
        for state in (await region.replicationz())["targets"]:
            assert state["queue_depth"] == 0 and state["delivered"] == 0, (region.name, state)
    assert a.balancer.syncs() == [] and c.balancer.syncs("b") == [] and b.balancer.syncs("c") == []
    assert {p.source for p in b.balancer.syncs()} == {"a"}

    bw = b.workers[0]

    async def b_state() -> tuple:
        objects = await asyncio.to_thread(b.bucket.keys)
        async with b.catalog() as catalog:
            return (objects, await catalog.hashes(UID), await catalog.snapshot_ids(UID), await catalog.generation(),
                    await host_state(b, ENV_HOST), await b.outbox_seq())

    # a sync-file delivered twice: stored once, answered "already stored" the second time
    path, body = "assets/direct-only-to-b.js", b"export const direct = 'b';\n"
    digest = asset_hash(path, body)
    before = await b_state()
    first = await bw.request("POST", sync_file_path(path, body), headers=sync_headers(protocol.file_subject(UID, digest)), data=body)
    assert first.status == 200, first.body
    assert json.loads(first.body)["already_stored"] is False
    after_first = await b_state()
    assert after_first[0] == before[0] | {storage_key(digest)} and digest in after_first[1]
    again = await bw.request("POST", sync_file_path(path, body), headers=sync_headers(protocol.file_subject(UID, digest)), data=body)
    assert again.status == 200, again.body
    assert json.loads(again.body)["already_stored"] is True
    assert await b_state() == after_first

    # a sync-snapshot delivered twice: applied once, then nothing moves
    sid2 = f"tester-2.{UID}"
    snap2 = make_snapshot(UID, sid2, {path: body})
    stamp = f"{int(time.time() * 1000)}|a"
    payload = json.dumps({"snapshot": snap2, "hosts": {version_host(sid2): stamp}}).encode()
    url = f"/upload?type={protocol.SYNC_SNAPSHOT}"
    headers = {**sync_headers(protocol.body_subject(payload)), "Content-Type": "application/json"}
    first = await bw.request("POST", url, headers=headers, data=payload)
    assert first.status == 200 and json.loads(first.body)["applied"] == [version_host(sid2)], first.body
    settled = await b_state()
    raw_record = await _raw(b, version_host(sid2))
    again = await bw.request("POST", url, headers=headers, data=payload)
    assert again.status == 200 and json.loads(again.body)["applied"] == [], again.body
    assert await b_state() == settled and await _raw(b, version_host(sid2)) == raw_record
    await wait_until(lambda: serves(b, version_host(sid2), _parsed(snap2), {path: body}), "B serves the synced snapshot", 10)

    # an older publish of ENV_HOST (sync-envs) does not undo the newer one
    held = (await host_state(b, ENV_HOST))[1]
    assert held is not None
    old = json.dumps({"snapshot": snap2, "hosts": {ENV_HOST: f"{held.ms - 1000}|a"}}).encode()
    got = await bw.request(
        "POST", f"/upload?type={protocol.SYNC_ENVS}", data=old,
        headers={**sync_headers(protocol.body_subject(old)), "Content-Type": "application/json"},
    )  # fmt: skip
    assert got.status == 200 and json.loads(got.body)["applied"] == [], got.body
    assert (await host_state(b, ENV_HOST))[0] == sid

    # refused: 403 and nothing changes
    path3, body3 = "assets/refused.js", b"export const refused = true;\n"
    digest3 = asset_hash(path3, body3)
    file_sub = protocol.file_subject(UID, digest3)
    now = time.time()
    write_token = tokens.mint(SECRET, UID, 600)
    refusals = {
        "forged (another secret)": sync_headers(file_sub, secret="not-the-shared-secret-0123456789abcdef"),
        "expired": sync_headers(file_sub, now=now - 600, ttl_s=60),
        "another file's token": sync_headers(protocol.file_subject(UID, digest)),
        "source header not the issuer": sync_headers(file_sub, header_source="c"),
        "issued by the receiver itself": sync_headers(file_sub, source="b"),
        "no token": {protocol.SOURCE_HEADER: "a"},
        "a can_write_jwt": {"Authorization": f"Bearer {write_token}", protocol.SOURCE_HEADER: "a",
                            "can_write_jwt": write_token},
        "lifetime too long": sync_headers(file_sub, ttl_s=protocol.TOKEN_TTL_S * 10),
        "alg none": {"Authorization": "Bearer " + jwt.encode(
            {"iss": "a", "aud": protocol.AUDIENCE, "sub": file_sub, "iat": int(now), "exp": int(now) + 60,
             "jti": "x"}, key=None, algorithm="none"), protocol.SOURCE_HEADER: "a"},
    }  # fmt: skip
    before = await b_state()
    for why, hdrs in refusals.items():
        got = await bw.request("POST", sync_file_path(path3, body3), headers=hdrs, data=body3)
        assert got.status == 403, f"{why}: {got.status} {got.body[:300]!r}"
    other = json.dumps({"snapshot": make_snapshot(UID, f"tester-3.{UID}", {path3: body3}),
                        "hosts": {ENV_HOST: f"{int(time.time() * 1000) + 60_000}|a"}}).encode()
    for why, hdrs in {
        "a token for another body": sync_headers(protocol.body_subject(payload)),
        "expired": sync_headers(protocol.body_subject(other), now=now - 600, ttl_s=60),
        "forged": sync_headers(protocol.body_subject(other), secret="not-the-shared-secret-0123456789abcdef"),
    }.items():
        got = await bw.request("POST", f"/upload?type={protocol.SYNC_ENVS}", data=other,
                               headers={**hdrs, "Content-Type": "application/json"})
        assert got.status == 403, f"sync-envs, {why}: {got.status} {got.body[:300]!r}"
    assert await b_state() == before
    assert (await host_state(b, ENV_HOST))[0] == sid

    # a later write in A reaches C (its pipeline ran after all this), yet what only B
    # received never reaches C: B forwarded nothing
    marker = {"assets/after.js": b"export const after = 1;\n"}
    async with Uploader(a.url, SECRET, UID) as up:
        await up.files(marker)
    marker_hash = asset_hash("assets/after.js", marker["assets/after.js"])
    await wait_until(lambda: has_all(c, UID, [], {marker_hash}), "C has A's later write", CONVERGE_S)
    await asyncio.sleep(0.5)  # ten of B's poll intervals more
    async with c.catalog() as catalog:
        assert digest not in await catalog.hashes(UID)
        assert sid2 not in await catalog.snapshot_ids(UID)
    assert c.balancer.syncs("b") == [] and a.balancer.syncs("b") == []
    assert await b.outbox_seq() == 0
    no_errors(rs)


def _parsed(snapshot_json: dict) -> Snapshot:
    from zephyr_edge.domain.snapshot import parse_snapshot

    return parse_snapshot(json.dumps(snapshot_json).encode(), None)


async def _raw(region: Region, host: str) -> tuple:
    async with region.catalog() as catalog:
        raw = await catalog.kv.get_many([catalog.envs_key(host), catalog.stamp_key(host)])
    return tuple(raw)


async def _serves_snapshot(region: Region, host: str, snapshot_id: str) -> bool:
    got, _ = await host_state(region, host)
    assert got == snapshot_id, f"{region.name}: {host} serves {got}"
    return True


# --- 5. the same host published in two regions at once ---------------------------------------


async def test_concurrent_publish_converges_to_greater_stamp(regions):
    rs = await regions({"a": 1, "b": 1, "c": 1})
    a, b, c = rs["a"], rs["b"], rs["c"]
    builds = {n: build_files(f"race-{n}", 4) for n in (1, 2)}
    sids = {n: f"tester-{n}.{UID}" for n in builds}
    async with Uploader(a.url, SECRET, UID) as up:
        for n, files in builds.items():
            await up.build(sids[n], files)
    hashes = {asset_hash(p, body) for files in builds.values() for p, body in files.items()}
    for region in (b, c):
        await wait_until(lambda r=region: has_all(r, UID, list(sids.values()), hashes), f"{region.name} has both", CONVERGE_S)

    host = "race.e2e-app.example.test"
    rounds = [("api", 1, 2), ("api", 2, 1), ("api", 1, 2), ("cli", 2, 1)]
    for i, (how, in_a, in_b) in enumerate(rounds):
        async with a.monitor() as a_cmds, b.monitor() as b_cmds:
            async with Uploader(a.url, SECRET, UID) as ua, Uploader(b.url, SECRET, UID) as ub:
                if how == "api":
                    answers = await asyncio.gather(ua.publish(sids[in_a], [host]), ub.publish(sids[in_b], [host]))
                    assert all(status == 200 for status, _ in answers), answers
                else:
                    done = await asyncio.gather(
                        a.workers[0].cli("publish", "--host", host, "--snapshot", sids[in_a]),
                        b.workers[0].cli("publish", "--host", host, "--snapshot", sids[in_b]),
                    )
                    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
            final = await wait_until(lambda: _agree(rs, host), f"round {i + 1}: regions agree on {host}", CONVERGE_S)
        local_a = _local_stamps(a_cmds, host, "a")
        local_b = _local_stamps(b_cmds, host, "b")
        assert len(local_a) == 1 and len(local_b) == 1, (local_a, local_b)
        winner = max(local_a[0], local_b[0])
        expected = sids[in_a] if winner.replica == "a" else sids[in_b]
        print(f"round {i + 1} ({how}): A {local_a[0]} -> {sids[in_a][:9]}, B {local_b[0]} -> {sids[in_b][:9]}, "
              f"{abs(local_a[0].ms - local_b[0].ms)} ms apart; all serve {final[0][:9]} stamped {final[1]}")
        assert final == (expected, winner), f"round {i + 1}: regions agree on {final}, expected {(expected, winner)}"
        files = builds[1] if expected == sids[1] else builds[2]
        for region in (a, b, c):
            got = await region.fetch(host, "assets/app.js")
            assert got.status == 200 and got.body == files["assets/app.js"], f"{region.name} serves another build"
    no_errors(rs)


async def _agree(rs: Regions, host: str) -> tuple[str, Stamp]:
    states = {name: await host_state(region, host) for name, region in rs.regions.items()}
    assert len(set(states.values())) == 1 and None not in next(iter(states.values())), states
    queues = [await r.target(t) for r in (rs["a"], rs["b"]) for t in rs.regions.values() if t is not r]
    assert all(q["queue_depth"] == 0 for q in queues), queues
    return next(iter(states.values()))


def _local_stamps(commands: list[str], host: str, replica: str) -> list[Stamp]:
    """Stamps of ``host`` written with ``replica``'s name in a region's Redis."""
    out = []
    for line in commands:
        m = _STAMP_SET.search(line)
        if m and m.group("key").endswith(f":host-stamp:{host}"):
            stamp = Stamp.parse(m.group("stamp"))
            if stamp.replica == replica:
                out.append(stamp)
    return out


# --- 6. a region that was never (or not yet) a target ----------------------------------------------


async def test_new_region_catches_up_by_resync_and_anti_entropy(regions):
    # A sends to nobody at first; D and E receive only
    rs = await regions({"a": RegionSpec(1, sends_to=[]), "d": RegionSpec(1, sends_to=[]), "e": RegionSpec(1, sends_to=[])})
    a, d, e = rs["a"], rs["d"], rs["e"]
    files, sid, host, a_hashes = await deploy_and_publish(a, "resync", 30)
    assert await a.outbox_seq() == 0  # nothing recorded: no target
    for region in (a, d, e):
        assert region.workers[0].logged("No replica URLs configured; receive-only mode enabled"), region.name

    # D: one manual resync from A's configuration
    done = await a.workers[0].cli("replicate", "--resync", d.url)
    assert done.returncode == 0, done.stderr + done.stdout
    print(f"replicate --resync: {done.stdout.strip()[-500:]}")
    await has_all(d, UID, [sid], a_hashes)
    assert await host_state(d, ENV_HOST) == await host_state(a, ENV_HOST)
    snap = await snapshot_in(a, sid)
    assert snap is not None
    await wait_until(lambda: serves(d, host, snap, files), "D serves the build", 10)
    await wait_until(lambda: serves(d, ENV_HOST, snap, files), "D serves the environment", 10)
    # a second resync finds nothing to send: it only asks (sync-check)
    sent_before = len(d.balancer.syncs("a"))
    again = await a.workers[0].cli("replicate", "--resync", d.url)
    assert again.returncode == 0, again.stderr
    second = d.balancer.syncs("a")[sent_before:]
    assert second and {p.type for p in second} == {protocol.SYNC_CHECK}, [p.path_qs[:80] for p in second]

    # E: added to A's targets later; nothing of the earlier writes is in A's outbox for it,
    # only the periodic anti-entropy pass can bring them
    worker = a.workers[0]
    await worker.stop()
    worker.env["ZE_WORKER_REPLICAS_URLS"] = json.dumps([e.url])
    worker.env["ZE_WORKER_REPLICATION_ANTI_ENTROPY_MS"] = "2000"
    await worker.start()
    started = time.monotonic()
    await wait_until(lambda: has_all(e, UID, [sid], a_hashes), "E catches up by anti-entropy", CONVERGE_S)
    await wait_until(lambda: _serves_snapshot(e, ENV_HOST, sid), "E has the publish", CONVERGE_S)
    print(f"E caught up through anti-entropy in {time.monotonic() - started:.2f} s")
    assert await host_state(e, ENV_HOST) == await host_state(a, ENV_HOST)
    assert (await a.target(e))["queue_depth"] == 0
    assert worker.logged("Anti-entropy pass finished")
    no_errors(rs)

