"""The receiving side of the sync protocol, on a real worker app (local backends, and S3 on
moto + Redis). The receiving worker has replica URLs of its own, so it has an outbox: a
sync request must never be recorded in it. Every refused request is checked to leave
storage and the KV exactly as they were."""

from __future__ import annotations

import json
import logging
import time

import jwt
import pytest

from zephyr_edge.domain import hostnames, tokens
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.replication import protocol
from zephyr_edge.domain.stamps import Stamp
from tests.replication.support import (
    RECEIVER, SOURCE, apply_body, stamp, start_sync_worker, sync_token,
)
from tests.upload_support import APP, OTHER_APP, SECRET, ingest_backend, snapshot_body

EDGE = "ze.example.com"


@pytest.fixture(params=["local", "s3-redis"])
async def backend(request, tmp_path):
    async with ingest_backend(request, tmp_path) as chosen:
        yield chosen


@pytest.fixture
async def worker(backend, aiohttp_client):
    return await start_sync_worker(aiohttp_client, backend)


def version_host(snapshot_id: str) -> str:
    return hostnames.version_host(snapshot_id, EDGE, "-")


async def answer(resp, status: int) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers.get("Cache-Control") == "no-store"
    return json.loads(text)


# --- authentication ----------------------------------------------------------------------------


def refusals(subject: str) -> dict[str, tuple[str | None, str, str]]:
    """name → (token, X-Replica-Source, a word of the refusal)."""
    now = int(time.time())
    good = {"iss": SOURCE, "aud": protocol.AUDIENCE, "sub": subject, "iat": now, "exp": now + 60, "jti": "x:1"}
    return {
        "none": (None, SOURCE, "missing sync token"),
        "forged": (sync_token(subject, secret="forged-secret-0123456789abcdef0123456"), SOURCE, "bad signature"),
        "expired": (sync_token(subject, ttl_s=60, now=now - 600), SOURCE, "expired"),
        "wrong-aud": (jwt.encode({**good, "aud": "zephyr-edge"}, SECRET, algorithm="HS256"), SOURCE, "audience"),
        "alg-none": (jwt.encode(good, None, algorithm="none"), SOURCE, "'none' not allowed"),
        "iss-not-header": (sync_token(subject), "ap-south-1", "does not match the token issuer"),
        "own-replica": (sync_token(subject, source=RECEIVER), RECEIVER, "this replica"),
        "subject": (sync_token(protocol.body_subject(b"{}")), SOURCE, "subject does not match"),
        "can-write-jwt": (tokens.mint(SECRET, APP), SOURCE, "sync token: missing"),
    }


@pytest.mark.parametrize("kind", sorted(refusals("x")))
async def test_token_refusals_are_403_and_write_nothing(worker, kind, caplog):
    data, name = b"console.log('sync')", "assets/sync.js"
    file_token, source, reason = refusals(protocol.file_subject(APP, asset_hash(data, name)))[kind]
    snap = snapshot_body(build="7")
    body = apply_body(snap, {version_host(snap["snapshot_id"]): stamp(1_700_000_000_000)})
    body_token = refusals(protocol.body_subject(body))[kind][0]
    if kind == "subject":
        file_token, body_token = sync_token(protocol.file_subject(APP, "0" * 64)), sync_token(protocol.body_subject(body + b" "))
    before = await worker.fingerprint()
    caplog.set_level(logging.INFO)
    for resp in [
        await worker.sync_file(data, name, token=file_token, source=source),
        await worker.sync_json(protocol.SYNC_SNAPSHOT, body, token=body_token, source=source),
        await worker.sync_json(protocol.SYNC_ENVS, body, token=body_token, source=source),
        await worker.sync_json(protocol.SYNC_CHECK, {"application_uid": APP}, token=body_token, source=source),
    ]:
        got = await answer(resp, 403)
        code = protocol.SELF_SYNC_CODE if kind == "own-replica" else "forbidden"
        assert got["error"] == code and reason in got["message"], got
        for token in (file_token, body_token):
            assert not token or token not in got["message"]
    assert await worker.fingerprint() == before
    assert all(t not in caplog.text for t in (file_token, body_token) if t)
    assert "Write refused" in caplog.text


async def test_missing_source_header_is_403(worker):
    data, name = b"x", "a.js"
    resp = await worker.sync_file(data, name, source=None)
    assert "X-Replica-Source" in (await answer(resp, 403))["message"]


async def test_replication_disabled_is_403(backend, aiohttp_client):
    worker = await start_sync_worker(aiohttp_client, backend, replica=None)
    before = await worker.fingerprint()
    resp = await worker.sync_file(b"x", "a.js")
    assert "not enabled" in (await answer(resp, 403))["message"]
    snap = snapshot_body()
    resp = await worker.sync_json(protocol.SYNC_SNAPSHOT, apply_body(snap, {}))
    assert "not enabled" in (await answer(resp, 403))["message"]
    assert await worker.fingerprint() == before


# --- sync-file ---------------------------------------------------------------------------------


async def test_sync_file_stores_the_bytes_and_lists_the_hash(worker, caplog):
    caplog.set_level(logging.INFO)
    data, name = b"export const x = 1;\n", "assets/ünï côde+1.js"
    digest = asset_hash(data, name)
    got = await answer(await worker.sync_file(data, name), 200)
    assert got == {"status": "ok", "hash": digest, "size": len(data), "already_stored": False}
    assert await worker.stored(digest) == data
    assert (await (await worker.hash_list()).json())["hashes"] == [digest]
    assert (await (await worker.hash_list(OTHER_APP)).json())["hashes"] == []
    assert await worker.outbox_depth() == 0
    line = next(r for r in caplog.records if r.getMessage() == "Sync asset stored")
    assert line.fields["zephyr.replica.source"] == SOURCE
    assert line.fields["zephyr.sync.type"] == protocol.SYNC_FILE
    assert line.fields["zephyr.application_uid"] == APP
    assert "Bearer" not in caplog.text


async def test_empty_and_streamed_files(worker):
    for data, name in [(b"", "empty.txt"), (b"z" * (700 * 1024), "big.bin")]:
        digest = asset_hash(data, name)

        async def chunks(data=data):
            for i in range(0, len(data), 64 * 1024):
                yield data[i : i + 64 * 1024]

        resp = await worker.sync_file(chunks() if data else data, name, asset=digest)
        assert (await answer(resp, 200))["size"] == len(data)
        assert await worker.stored(digest) == data


async def test_sync_file_hash_mismatch_is_400_and_nothing_visible(worker):
    before = await worker.fingerprint()
    resp = await worker.sync_file(b"tampered", "a.js", asset=asset_hash(b"original", "a.js"))
    got = await answer(resp, 400)
    assert got["field"] == "hash"
    assert await worker.fingerprint() == before
    assert (await (await worker.hash_list()).json())["hashes"] == []


async def test_sync_file_oversize_is_413(backend, aiohttp_client):
    worker = await start_sync_worker(aiohttp_client, backend, ZE_WORKER_MAX_FILE_SIZE_MB="1")
    before = await worker.fingerprint()
    data = b"o" * (1024 * 1024 + 1)
    await answer(await worker.sync_file(data, "big.bin"), 413)

    async def chunks():
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    await answer(await worker.sync_file(chunks(), "big.bin", asset=asset_hash(data, "big.bin")), 413)
    assert await worker.fingerprint() == before


@pytest.mark.parametrize("param, value", [
    ("application_uid", "Not An App"), ("filename", "../etc/passwd"), ("filename", "/abs.js"),
])
async def test_sync_file_bad_parameters_are_400(worker, param, value):
    data, name = b"x", "a.js"
    digest = asset_hash(data, name)
    params = {"type": protocol.SYNC_FILE, "application_uid": APP, "hash": digest, "filename": name, param: value}
    token = sync_token(protocol.file_subject(params["application_uid"], digest))
    headers = {"Authorization": f"Bearer {token}", protocol.SOURCE_HEADER: SOURCE}
    resp = await worker.client.post("/upload", params=params, data=data, headers=headers)
    assert (await answer(resp, 400))["field"] == param


# --- sync-snapshot / sync-envs -----------------------------------------------------------------


async def test_delivered_twice_changes_nothing(worker, caplog):
    caplog.set_level(logging.INFO)
    files = {"index.html": b"<html>twice</html>", "assets/main.js": b"console.log(2)"}
    snap = snapshot_body(build="2", files=files)
    host = version_host(snap["snapshot_id"])
    snap_body = apply_body(snap, {host: stamp(1_700_000_000_000)})
    envs_body = apply_body(snap, {"prod-ze.example.com": stamp(1_700_000_000_500)})

    async def deliver():
        out = []
        for name, data in files.items():
            out.append(await answer(await worker.sync_file(data, name), 200))
        out.append(await answer(await worker.sync_json(protocol.SYNC_SNAPSHOT, snap_body), 200))
        out.append(await answer(await worker.sync_json(protocol.SYNC_ENVS, envs_body), 200))
        return out

    first = await deliver()
    assert [a["already_stored"] for a in first[:2]] == [False, False]
    assert first[2:] == [{"status": "ok", "applied": [host]}, {"status": "ok", "applied": ["prod-ze.example.com"]}]
    after_first = await worker.fingerprint()
    second = await deliver()
    assert [a["already_stored"] for a in second[:2]] == [True, True]
    assert second[2:] == [{"status": "ok", "applied": []}, {"status": "ok", "applied": []}]
    assert await worker.fingerprint() == after_first
    assert await worker.outbox_depth() == 0
    assert (await worker.catalog.live("prod-ze.example.com")).snapshot_id == snap["snapshot_id"]
    lines = [r.fields for r in caplog.records if r.getMessage() == "Sync applied"]
    assert [(f["zephyr.sync.type"], f["zephyr.sync.applied"]) for f in lines] == [
        (protocol.SYNC_SNAPSHOT, [host]), (protocol.SYNC_ENVS, ["prod-ze.example.com"]),
        (protocol.SYNC_SNAPSHOT, []), (protocol.SYNC_ENVS, []),
    ]
    assert all(f["zephyr.replica.source"] == SOURCE and f["zephyr.application_uid"] == APP for f in lines)
    assert all(f["zephyr.snapshot_id"] == snap["snapshot_id"] for f in lines)
    assert "Bearer" not in caplog.text and "eyJ" not in caplog.text


async def test_envs_stamps_last_writer_wins(worker):
    old, new = snapshot_body(build="10"), snapshot_body(build="11")
    host = "staging-ze.example.com"

    async def envs(snap, ms, replica=SOURCE):
        resp = await worker.sync_json(protocol.SYNC_ENVS, apply_body(snap, {host: stamp(ms, replica)}))
        return (await answer(resp, 200))["applied"]

    assert await envs(new, 2000) == [host]
    assert await envs(old, 1000) == []  # older: does not move the host
    assert (await worker.catalog.live(host)).snapshot_id == new["snapshot_id"]
    before = await worker.fingerprint()
    assert await envs(old, 2000) == []  # equal stamp: a no-op
    assert await worker.fingerprint() == before  # (the old snapshot was stored by the older one)
    assert (await worker.catalog.live(host)).snapshot_id == new["snapshot_id"]
    assert await envs(old, 2000, "zz-region") == [host]  # same ms, greater replica: newer
    assert (await worker.catalog.live(host)).snapshot_id == old["snapshot_id"]
    assert await envs(new, 3000) == [host]  # a rollforward
    assert (await worker.catalog.stamps([host]))[host] == Stamp(3000, SOURCE)
    assert {v.snapshot.snapshot_id for v in await worker.catalog.versions(APP)} == {old["snapshot_id"], new["snapshot_id"]}
    assert await worker.outbox_depth() == 0


async def test_equal_stamp_is_a_no_op(worker):
    snap = snapshot_body(build="12")
    body = apply_body(snap, {"eq-ze.example.com": stamp(5000)})
    await answer(await worker.sync_json(protocol.SYNC_ENVS, body), 200)
    before = await worker.fingerprint()
    other = apply_body(snapshot_body(build="12", version="changed"), {"eq-ze.example.com": stamp(5000)})
    assert (await answer(await worker.sync_json(protocol.SYNC_ENVS, other), 200))["applied"] == []
    after = await worker.fingerprint()
    # the snapshot record itself is re-stored as sent; the host keeps what it had
    assert [r for r in after["kv"] if "eq-ze" in str(r)] == [r for r in before["kv"] if "eq-ze" in str(r)]


async def test_envs_before_the_snapshot_and_its_files_then_serves(worker):
    files = {"index.html": b"<html>late</html>", "assets/app.js": b"console.log('late')"}
    snap = snapshot_body(build="20", files=files)
    host = "live-ze.example.com"
    resp = await worker.sync_json(protocol.SYNC_ENVS, apply_body(snap, {host: stamp(9000)}))
    assert (await answer(resp, 200))["applied"] == [host]
    assert await worker.catalog.snapshot(snap["snapshot_id"]) is not None
    resp = await worker.client.get("/assets/app.js", headers={"Host": host})
    assert resp.status == 404  # listed, not stored yet
    for name, data in files.items():
        await answer(await worker.sync_file(data, name), 200)
    resp = await worker.client.get("/assets/app.js", headers={"Host": host})
    assert resp.status == 200 and await resp.read() == files["assets/app.js"]
    resp = await worker.client.get("/", headers={"Host": host})
    assert resp.status == 200 and await resp.read() == files["index.html"]
    assert await worker.outbox_depth() == 0


async def test_client_writes_are_recorded_but_sync_writes_are_not(worker):
    """The control: this worker's outbox does record what a client uploads."""
    await answer(await worker.sync_file(b"synced", "s.js"), 200)
    assert await worker.outbox_depth() == 0
    assert (await worker.upload_file(b"uploaded", "u.js")).status == 200
    assert await worker.outbox_depth() == 1


@pytest.mark.parametrize("body, field", [
    (b"[]", "body"),
    (b"not json", "body"),
    (json.dumps({"hosts": {}}).encode(), "snapshot"),
    (json.dumps({"snapshot": {**snapshot_body(), "snapshot_id": "bad"}, "hosts": {}}).encode(), "snapshot.snapshot_id"),
    (json.dumps({"snapshot": snapshot_body(files={"/abs.js": b"x"}), "hosts": {}}).encode(), 'snapshot.assets["/abs.js"]'),
    (json.dumps({"snapshot": snapshot_body(), "hosts": {"a-ze.example.com": "soon"}}).encode(), "hosts"),
    (json.dumps({"snapshot": snapshot_body(), "hosts": {"bad host!": stamp(1)}}).encode(), "hosts"),
    (json.dumps({"snapshot": snapshot_body(), "hosts": ["a"]}).encode(), "hosts"),
    # hostile: a lone surrogate once passed the parse and failed re-encoding (a 500)
    (json.dumps({"snapshot": snapshot_body(version="\ud800"), "hosts": {}}).encode(), "body"),
    (json.dumps({"snapshot": snapshot_body(), "hosts": {"\udc00-ze.example.com": stamp(1)}}).encode(), "body"),
    (json.dumps({"snapshot": snapshot_body(), "hosts": {}}).encode()[:-1] + b', "n": 1e999}', "body"),
])
async def test_bad_bodies_are_400_naming_the_field(worker, body, field):
    before = await worker.fingerprint()
    for kind in (protocol.SYNC_SNAPSHOT, protocol.SYNC_ENVS):
        got = await answer(await worker.sync_json(kind, body), 400)
        assert got["field"] == field, got
    assert await worker.fingerprint() == before


async def test_bad_stamp_names_the_host(worker):
    body = apply_body(snapshot_body(), {"a-ze.example.com": "1700|x", "b-ze.example.com": "yesterday"})
    got = await answer(await worker.sync_json(protocol.SYNC_ENVS, body), 400)
    assert "b-ze.example.com" in got["message"] and "yesterday" in got["message"]


# --- sync-check --------------------------------------------------------------------------------


async def test_sync_check(worker):
    data, name = b"have", "have.js"
    have = asset_hash(data, name)
    await answer(await worker.sync_file(data, name), 200)
    snap = snapshot_body(build="30")
    await answer(await worker.sync_json(protocol.SYNC_ENVS, apply_body(snap, {"c-ze.example.com": stamp(5000)})), 200)
    before = await worker.fingerprint()
    lacking = asset_hash(b"lack", "lack.js")
    query = {
        "application_uid": APP, "hashes": [have, lacking], "snapshots": [snap["snapshot_id"], "u-99." + APP],
        "hosts": {"c-ze.example.com": stamp(6000), "C-ZE.example.com:443": stamp(4000), "new-ze.example.com": stamp(1)},
    }
    got = await answer(await worker.sync_json(protocol.SYNC_CHECK, query), 200)
    assert got == {
        "missing_hashes": [lacking], "missing_snapshots": ["u-99." + APP],
        "stale_hosts": ["c-ze.example.com", "new-ze.example.com"],
    }
    assert await worker.fingerprint() == before  # read-only
    got = await answer(await worker.sync_json(protocol.SYNC_CHECK, {"application_uid": OTHER_APP, "hashes": [have]}), 200)
    assert got == {"missing_hashes": [have], "missing_snapshots": [], "stale_hosts": []}


@pytest.mark.parametrize("query, field", [
    ({"application_uid": "Bad App"}, "application_uid"),
    ({"application_uid": APP, "hashes": ["0" * 64] * (protocol.CHECK_BATCH + 1)}, "hashes"),
    ({"application_uid": APP, "snapshots": ["s"] * (protocol.CHECK_BATCH + 1)}, "snapshots"),
    ({"application_uid": APP, "hosts": {f"h{i}.example.com": stamp(1) for i in range(protocol.CHECK_BATCH + 1)}}, "hosts"),
    ({"application_uid": APP, "hashes": ["nothex"]}, "hashes"),
    ({"application_uid": APP, "hosts": {"a.example.com": "x"}}, "hosts"),
])
async def test_sync_check_refuses_bad_queries(worker, query, field):
    got = await answer(await worker.sync_json(protocol.SYNC_CHECK, query), 400)
    assert got["field"] == field


async def test_a_file_token_is_for_one_application(worker):
    """A captured sync-file token cannot list its hash under another application."""
    data, name = b"bound", "a.js"
    digest = asset_hash(data, name)
    token = sync_token(protocol.file_subject(APP, digest))
    params = {"type": protocol.SYNC_FILE, "application_uid": "other.repo.org", "hash": digest, "filename": name}
    headers = {"Authorization": f"Bearer {token}", protocol.SOURCE_HEADER: SOURCE}
    resp = await worker.client.post("/upload", params=params, data=data, headers=headers)
    assert "subject does not match" in (await answer(resp, 403))["message"]
    assert await worker.catalog.hashes("other.repo.org") == set()


SLOW_CACHE = {"ZE_WORKER_HOST_CACHE_TTL_MS": "60000", "ZE_WORKER_INVALIDATION_POLL_MS": "60000"}


async def test_sync_envs_is_served_by_the_receiver_at_once(backend, aiohttp_client):
    worker = await start_sync_worker(aiohttp_client, backend, **SLOW_CACHE)
    host = "prod-ze.example.com"
    pages = {build: f"<p>{build}</p>".encode() for build in ("30", "31")}
    for build, page in pages.items():
        await answer(await worker.sync_file(page, "index.html"), 200)
    for round_, build in enumerate(["30", "31", "30", "31"]):
        snap = snapshot_body(build=build, files={"index.html": pages[build]})
        resp = await worker.sync_json(protocol.SYNC_ENVS, apply_body(snap, {host: stamp(10_000 + round_)}))
        assert (await answer(resp, 200))["applied"] == [host]
        resp = await worker.client.get("/", headers={"Host": host})
        assert resp.status == 200 and await resp.read() == pages[build], f"round {round_}: served the previous one"


async def test_sync_envs_never_moves_a_version_hostname(worker):
    evil = snapshot_body("evil.attacker.org", build="1")
    future = version_host(f"tester-9.{APP}")
    body = apply_body(evil, {future: stamp(5000), "evil-ze.example.com": stamp(5000)})
    assert (await answer(await worker.sync_json(protocol.SYNC_ENVS, body), 200))["applied"] == ["evil-ze.example.com"]
    assert await worker.catalog.live(future) is None
