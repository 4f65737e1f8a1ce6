"""End to end with the REAL client and the REAL worker: ``zephyr-agent`` 1.2.2 and 1.0.1
(npm, driven by ``tests/e2e/agent.py``) deploy the sample app to a ``zephyr-edge serve``
subprocess on S3 (moto, a bucket of its own) and Redis (a hash tag of its own); every asset
is then fetched back through the worker by its version hostname and compared byte for byte.
A second deploy changes one file; an environment hostname is published and rolled back,
through the admin CLI and through ``POST /upload?type=envs``.

How "only the changed files were uploaded" is made honest per agent (WIRE.md section 3),
counted on the WORKER side — the worker's own JSON log lines (the access line of each
``POST /upload``, and the upload handler's line naming each file) and a diff of the objects
in its bucket:

- 1.2.2 waits for the hash list and skips listed hashes: exactly the changed files (plus
  ``zephyr-manifest.json``, which 1.2.2 regenerates with a timestamp on every deploy) are
  POSTed, and exactly their objects are new in the bucket.
- 1.0.1 reads its hash list only once it has been written to ``~/.zephyr``, and usually
  loses that race against a fast control plane: it may POST every file again. Its
  assertion is that every changed file was POSTed, that only the changed file produced a
  NEW object in storage, and that each re-sent unchanged file was answered from what was
  already stored. (Which way the race went is printed.)

For both, the hash list the worker answers before the second deploy holds every hash of the
first one: that is what lets an agent skip them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import pytest

from tests.e2e.agent import (
    AGENT_GENERATES_MANIFEST,
    AGENT_VERSIONS,
    MANIFEST_FILENAME,
    UNICODE_JS,
    ControlPlaneStub,
    asset_hash,
    deploy,
    install_agents,
    make_app_dir,
    sample_app_files,
)
from tests.e2e.worker import S3Bucket, WorkerProcess, drop_redis_keys, open_catalog, start_worker
from zephyr_edge.domain import tokens
from zephyr_edge.domain.assets import storage_key
from zephyr_edge.domain.hostnames import version_label
from zephyr_edge.domain.snapshot import Snapshot

pytestmark = pytest.mark.e2e

SECRET = "e2e-worker-jwt-secret-0123456789abcdef"
#: The file changed by the second deploy (same name, new bytes).
CHANGED = "assets/main-3f2a1c.js"
CHANGED_BYTES = b"import './vendor.js';\ndocument.getElementById('app').textContent = 'second deploy';\n"
ENV_HOST = "staging.e2e-app.example.test"
#: Cache-Control of HTML and manifests, and of hashed assets on a version host (``zephyr_edge.http.serving.variants``)
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
#: Bound of the wait for a publish to reach the serving path (invalidation poll: 250 ms).
SWITCH_TIMEOUT_S = 15.0


@pytest.fixture(scope="session")
def agents():
    return install_agents()


@pytest.fixture
async def bucket(s3_endpoint):
    b = await asyncio.to_thread(lambda: S3Bucket(s3_endpoint).create())
    try:
        yield b
    finally:
        await asyncio.to_thread(b.drop)


@pytest.fixture
async def start(tmp_path, s3_endpoint, redis_addr, bucket):
    """Start a real worker (``ZE_WORKER_*`` extras allowed) on the test's bucket and its
    own hash tag; every worker started is stopped and its keys dropped afterwards."""
    tag = "{ze-test-%s}" % uuid.uuid4().hex
    started: list[WorkerProcess] = []

    async def start_one(**extra: str) -> WorkerProcess:
        w = await start_worker(
            tmp_path / f"w{len(started)}", jwt_secret=SECRET, s3_endpoint=s3_endpoint, bucket=bucket.name,
            redis_addr=redis_addr, tag=tag, extra=extra,
        )  # fmt: skip
        started.append(w)
        return w

    try:
        yield start_one
    finally:
        for w in started:
            await w.stop()
        await asyncio.wait_for(drop_redis_keys(redis_addr, tag), 10)


@pytest.fixture
async def worker(start):
    return await start()


# --- helpers --------------------------------------------------------------------------------


async def stored_snapshot(worker: WorkerProcess, snapshot_id: str) -> Snapshot:
    async with open_catalog(worker.env) as catalog:
        snapshot = await catalog.snapshot(snapshot_id)
    assert snapshot is not None, f"snapshot {snapshot_id} is not in the worker's KV"
    return snapshot


async def check_serves(
    worker: WorkerProcess, host: str, snapshot: Snapshot, files: Mapping[str, bytes], *, movable: bool = False
) -> None:
    """Every asset of ``snapshot`` comes back through ``host`` with its exact bytes (those of
    ``files`` where known; else the bytes matching the asset's hash and size). HTML and
    ``zephyr-manifest.json`` always revalidate; on a ``movable`` host (an environment,
    whose bytes change on publish) nothing may be cached as immutable."""
    assert set(files) <= set(snapshot.assets)
    for path, asset in snapshot.assets.items():
        got = await worker.get_asset(host, path)
        where = f"GET {path!r} on {host}"
        assert got.status == 200, f"{where}: {got.status} {got.body[:300]!r}\n{worker.output()}"
        if path in files:
            assert got.body == files[path], f"{where}: bytes differ ({len(got.body)} vs {len(files[path])})"
        assert len(got.body) == asset.size, where
        assert asset_hash(path, got.body) == asset.hash, f"{where}: body does not match the asset hash"
        assert asset.hash in got.headers.get("ETag", ""), f"{where}: ETag {got.headers.get('ETag')!r}"
        cache = got.headers.get("Cache-Control", "")
        if path.endswith(".html") or path == MANIFEST_FILENAME:
            assert cache == NO_CACHE, f"{where}: Cache-Control {cache!r}"
        elif movable:
            assert "immutable" not in cache and "no-store" not in cache, f"{where}: Cache-Control {cache!r}"
    # "/" is index.html; the empty file is a 200 with no bytes; the non-ASCII name percent-encoded
    root = await worker.get_asset(host, "")
    assert root.status == 200 and root.body == files["index.html"], f"GET / on {host}: {root.status}"
    assert root.headers["Content-Type"].startswith("text/html")
    empty = await worker.get_asset(host, "empty.txt")
    assert empty.status == 200 and empty.body == b"" and empty.headers.get("Content-Length", "0") == "0"
    uni = await worker.get_asset(host, UNICODE_JS)
    assert uni.status == 200 and uni.body == files[UNICODE_JS]
    assert uni.headers["Content-Type"].startswith("text/javascript")
    # compressed answers decompress to the same bytes
    for path in ("assets/vendor.js", "data/config.json", "index.html"):
        got = await worker.get_asset(host, path, accept_encoding="gzip")
        assert got.status == 200 and got.body == files[path], f"gzip GET {path!r} on {host}"
    # a missing file with an extension is a 404, never index.html
    missing = await worker.get_asset(host, "assets/no-such-chunk.js")
    assert missing.status == 404, f"missing chunk on {host}: {missing.status} {missing.body[:200]!r}"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = SWITCH_TIMEOUT_S) -> float:
    """Wait until ``check()`` is true (bounded); the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def serves_bytes(worker: WorkerProcess, host: str, path: str, body: bytes) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = await worker.get_asset(host, path)
        return got.status == 200 and got.body == body

    return check


def upload_lines(lines: list[dict]) -> tuple[list[dict], list[dict]]:
    """(access lines of ``POST /upload``, the upload handler's lines naming a stored file)."""
    posts = [
        ln for ln in lines
        if ln.get("message") == "Request handled"
        and (ln.get("http.method"), ln.get("http.path")) == ("POST", "/upload")
    ]  # fmt: skip
    files = [ln for ln in lines if "zephyr.asset.filename" in ln and "zephyr.asset.hash" in ln]
    return posts, files


# --- the test -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", AGENT_VERSIONS)
async def test_deploy_serve_redeploy_publish_rollback(version, agents, worker, bucket, tmp_path):
    async with ControlPlaneStub(edge_url=worker.url, jwt_secret=SECRET) as stub:
        app = make_app_dir(tmp_path / "app", sample_app_files(version))
        uid = app.application_uid
        files1 = dict(app.files)

        # 1. first deploy: the version URL serves every asset, byte for byte
        res1 = await deploy(version, app, stub.url, agents=agents)
        print(f"agent {version} first deploy: {res1.duration_s:.1f} s")
        sid1 = f"tester-{stub.build_ids[0]}.{uid}"
        url1 = urlsplit(res1.version_url or "")
        assert url1.hostname and url1.hostname.startswith(version_label(sid1).lower()), res1.version_url
        assert url1.port == worker.port, res1.version_url
        host1 = url1.netloc
        snap1 = await stored_snapshot(worker, sid1)
        assert set(snap1.assets) == set(files1) | {MANIFEST_FILENAME}
        await check_serves(worker, host1, snap1, files1)

        # the hash list now holds every hash of the first deploy (no token, as the agents ask)
        got = await worker.request("GET", f"/__get_application_hash_list__?application_uid={uid}")
        assert got.status == 200, got.body
        assert set(json.loads(got.body)["hashes"]) == set(snap1.hashes)

        # 2. second deploy with one changed file: count uploads on the worker side
        keys_before = await asyncio.to_thread(bucket.keys, "assets/")
        assert keys_before == {storage_key(h) for h in snap1.hashes}
        start = await worker.mark_logs()
        app.write({CHANGED: CHANGED_BYTES})
        files2 = dict(app.files)
        res2 = await deploy(version, app, stub.url, agents=agents)
        print(f"agent {version} second deploy: {res2.duration_s:.1f} s")
        end = await worker.mark_logs()
        sid2 = f"tester-{stub.build_ids[1]}.{uid}"
        assert sid2 != sid1
        host2 = urlsplit(res2.version_url or "").netloc
        assert host2.startswith(version_label(sid2).lower()), res2.version_url
        snap2 = await stored_snapshot(worker, sid2)
        assert set(snap2.assets) == set(snap1.assets)

        changed = {p for p, a in snap2.assets.items() if snap1.assets[p].hash != a.hash}
        expected_changed = {CHANGED} | ({MANIFEST_FILENAME} if AGENT_GENERATES_MANIFEST[version] else set())
        assert changed == expected_changed
        keys_after = await asyncio.to_thread(bucket.keys, "assets/")
        new_objects = keys_after - keys_before
        assert new_objects == {storage_key(snap2.assets[p].hash) for p in changed}, (
            f"new objects in the bucket: {sorted(new_objects)}"
        )

        posts, file_lines = upload_lines(worker.log_lines(start, end))
        posted = sorted(ln["zephyr.asset.filename"] for ln in file_lines)
        assert all(p["http.status"] == 200 for p in posts), posts
        assert len(posts) == len(posted) + 1, f"POST /upload: {len(posts)}; files logged: {posted}"  # + the snapshot
        if version == "1.2.2":
            # the agent honoured the worker's hash list: only the changed files were POSTed
            assert posted == sorted(changed)
        else:
            # 1.0.1 may ignore the hash list (WIRE.md 3); whatever it re-sent, only the
            # changed file became a new object (checked above) and the rest were answered
            # from what was stored
            assert set(changed) <= set(posted)
            resent = [ln for ln in file_lines if ln["zephyr.asset.filename"] not in changed]
            assert all(storage_key(ln["zephyr.asset.hash"]) in keys_before for ln in resent)
            print(f"agent 1.0.1 second deploy POSTed {len(posted)} files ({len(resent)} unchanged ones again)")

        # both version URLs keep serving their own deploy
        await check_serves(worker, host2, snap2, files2)
        assert (await worker.get_asset(host1, CHANGED)).body == files1[CHANGED]

        # 3. an environment hostname: unknown, published (CLI), rolled back (POST type=envs)
        assert (await worker.get_asset(ENV_HOST, "")).status == 404
        result = await worker.cli("publish", "--host", ENV_HOST, "--snapshot", sid2)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["hosts"] == [ENV_HOST]
        await eventually(serves_bytes(worker, ENV_HOST, CHANGED, CHANGED_BYTES), "publish of the second deploy")
        await check_serves(worker, ENV_HOST, snap2, files2, movable=True)

        token = tokens.mint(SECRET, uid, 600)
        body = {
            "app_version": {"application_uid": uid, "snapshot_id": sid1},
            "urls": [f"http://{ENV_HOST}"], "url_ids": [], "jwt": token,
        }  # fmt: skip
        got = await worker.request(
            "POST", "/upload?type=envs", headers={"can_write_jwt": token, "Content-Type": "application/json"},
            data=json.dumps(body).encode(),
        )  # fmt: skip
        assert got.status == 200, got.body
        assert json.loads(got.body)  # a non-empty JSON answer
        await eventually(serves_bytes(worker, ENV_HOST, CHANGED, files1[CHANGED]), "rollback to the first deploy")
        await check_serves(worker, ENV_HOST, snap1, files1, movable=True)

        # and once more through the CLI: forward, then `rollback`
        assert (await worker.cli("publish", "--host", ENV_HOST, "--snapshot", sid2)).returncode == 0
        await eventually(serves_bytes(worker, ENV_HOST, CHANGED, CHANGED_BYTES), "second publish")
        result = await worker.cli("rollback", "--host", ENV_HOST, "--snapshot", sid1)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["previous"] == {ENV_HOST: sid2}
        await eventually(serves_bytes(worker, ENV_HOST, CHANGED, files1[CHANGED]), "CLI rollback")
        await check_serves(worker, ENV_HOST, snap1, files1, movable=True)

        result = await worker.cli("versions", "--app", uid, "--json")
        assert result.returncode == 0, result.stderr
        listed = {v["snapshot_id"]: v for v in json.loads(result.stdout)}
        assert list(listed) == [sid2, sid1]
        assert ENV_HOST in listed[sid1]["hosts"] and ENV_HOST not in listed[sid2]["hosts"]

        assert stub.unknown == []

    # the worker logged no error and stops cleanly
    errors = [ln for ln in worker.log_lines() if ln.get("level") in ("error", "fatal")]
    assert errors == [], errors
    assert await worker.stop() == 0, worker.output()


# --- the version hostname's cache policy, per way of naming the edge ------------------------

@pytest.mark.parametrize(
    "edge",
    ["public-url", "localhost"],
)
async def test_version_url_assets_are_immutable(edge, agents, start, tmp_path):
    """A version URL's bytes never change: its hashed assets are cached for a year (6.3),
    whether the edge is named by ``ZE_WORKER_PUBLIC_URL`` (production: ``<label>-<edge>``)
    or only by the agent's ``EDGE_URL`` (``http://127.0.0.1:<port>``, as with
    ``zephyr-edge dev``: ``<label>.localhost``)."""
    version = AGENT_VERSIONS[0]
    extra = {"ZE_WORKER_PUBLIC_URL": "http://ze.e2e.test"} if edge == "public-url" else {}
    worker = await start(**extra)
    async with ControlPlaneStub(edge_url=worker.url, jwt_secret=SECRET) as stub:
        app = make_app_dir(tmp_path / "app", sample_app_files(version))
        res = await deploy(version, app, stub.url, agents=agents)
        sid = f"tester-{stub.build_ids[0]}.{app.application_uid}"
    url = urlsplit(res.version_url or "")
    label = version_label(sid).lower()
    if edge == "public-url":
        assert res.version_url == f"http://{label}-ze.e2e.test", res.version_url
    else:
        assert res.version_url == f"http://{label}.localhost:{worker.port}", res.version_url
    snapshot = await stored_snapshot(worker, sid)
    await check_serves(worker, url.netloc, snapshot, app.files)
    for path in ("assets/vendor.js", "assets/style-9b1e.css", "assets/logo.png", UNICODE_JS):
        got = await worker.get_asset(url.netloc, path)
        assert got.status == 200
        assert got.headers.get("Cache-Control") == IMMUTABLE, (
            f"{path} on the version URL {res.version_url}: Cache-Control {got.headers.get('Cache-Control')!r}"
        )
