"""Ingest against real backends, each test twice: local storage + local KV, and S3 (moto's
server) + Redis. Every rejected request is checked to leave storage (objects and pending
multipart uploads) and every KV record exactly as they were."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import tracemalloc

import pytest

import zephyr_edge
from zephyr_edge.domain import hostnames
from zephyr_edge.http import bodies
from zephyr_edge.http.ingest import upload
from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import AssetHasher, asset_hash
from zephyr_edge.settings.units import MiB
from zephyr_edge.storage.testing.data import Generated
from tests.upload_support import (
    APP, OTHER_APP, Worker, bad_tokens, chunked, ingest_backend, load_config, local_backend, production_server,
    snapshot_body, start_worker, token,
)

#: Bound of one test (a hang fails the test instead of blocking the run).
TEST_TIMEOUT_S = 120.0


@pytest.fixture(params=["local", "s3-redis"])
async def backend(request, tmp_path):
    async with ingest_backend(request, tmp_path) as chosen:
        yield chosen


@pytest.fixture
async def worker(backend, aiohttp_client):
    return await start_worker(aiohttp_client, backend)


def label_of(snapshot_id: str) -> str:
    return hostnames.version_label(snapshot_id).lower()


async def error_of(resp, status: int) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    body = json.loads(text)
    assert body["message"] and "Traceback" not in text
    return body


# --- hash list -------------------------------------------------------------------------------


async def test_hash_list_lifecycle(worker):
    resp = await worker.hash_list()
    assert resp.status == 200 and await resp.json() == {"hashes": []}

    files = {"a.js": b"a", "b/c.css": b"body{}", "empty.txt": b""}
    for name, data in files.items():
        assert (await worker.upload_file(data, name)).status == 200
    expected = sorted(asset_hash(d, n) for n, d in files.items())
    assert (await (await worker.hash_list()).json()) == {"hashes": expected}
    # another application's list is separate
    assert (await (await worker.hash_list(OTHER_APP)).json()) == {"hashes": []}
    # newer agents send a token: it must be valid and for that application
    resp = await worker.hash_list(jwt_token=token(APP))
    assert resp.status == 200 and (await resp.json())["hashes"] == expected
    body = await error_of(await worker.hash_list(jwt_token=token(OTHER_APP)), 403)
    assert OTHER_APP in body["message"]
    body = await error_of(await worker.hash_list(jwt_token="garbage"), 403)
    assert "malformed" in body["message"]


async def test_hash_list_needs_a_valid_application_uid(worker):
    for uid in ["", "UPPER.case", "a b", "x" * 600, "a..b"]:
        body = await error_of(await worker.hash_list(uid), 400)
        assert body["field"] == "application_uid", uid
    resp = await worker.client.get("/__get_application_hash_list__")
    assert (await error_of(resp, 400))["field"] == "application_uid"


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["assets/main.js", "assets/ünïcødé-文件 a+b~*.js", "index.html"])
async def test_file_is_stored_by_hash_then_listed(worker, filename, caplog):
    caplog.set_level(logging.INFO, logger="zephyr_edge")
    data = b"export const x = 1;\n" * 100
    valid = token(APP)
    resp = await worker.upload_file(data, filename, jwt_token=valid, headers={"x-file-path": "ignored"})
    assert resp.status == 200, await resp.text()
    digest = asset_hash(data, filename)
    assert await resp.json() == {"status": "ok", "hash": digest, "size": len(data), "already_stored": False}
    assert await worker.stored(digest) == data
    assert await worker.catalog.hashes(APP) == {digest}
    records = [r for r in caplog.records if r.name == "zephyr_edge.http.ingest.upload" and r.getMessage() == "Asset stored"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    fields = records[0].fields
    assert fields["zephyr.application_uid"] == APP and fields["zephyr.asset.hash"] == digest
    assert fields["zephyr.asset.size"] == len(data)
    assert all(valid not in r.getMessage() and valid not in str(getattr(r, "fields", "")) for r in caplog.records)


async def test_empty_file(worker):
    resp = await worker.upload_file(b"", "empty.txt")
    assert resp.status == 200
    digest = asset_hash(b"", "empty.txt")
    assert await worker.stored(digest) == b""
    assert await worker.catalog.has_hash(APP, digest)


@pytest.mark.parametrize("kind", ["file", "snapshot", "envs"])
async def test_bad_tokens_are_403_and_store_nothing(worker, kind):
    # a stored snapshot, so that a publish would have something to point at
    assert (await worker.upload_json("snapshot", snapshot_body())).status == 200
    before = await worker.fingerprint()
    for name, (bad, reason) in bad_tokens().items():
        if kind == "file" and name == "other-app":
            continue  # a file upload names no application: it goes to the token's (next test)
        if kind == "file":
            resp = await worker.upload_file(b"payload", "a.js", jwt_token=bad)
        elif kind == "snapshot":
            resp = await worker.upload_json("snapshot", snapshot_body(build="2"), jwt_token=bad)
        else:
            publish = {"app_version": {"application_uid": APP, "snapshot_id": f"tester-1.{APP}"}, "urls": ["https://x.test"]}
            resp = await worker.upload_json("envs", publish, jwt_token=bad)
        text = await resp.text()
        assert resp.status == 403, (name, text)
        body = json.loads(text)
        assert body["error"] == "forbidden" and reason in body["message"], (name, body)
        if bad:
            assert bad not in text, name
        assert await worker.fingerprint() == before, name


async def test_file_goes_to_the_token_application(worker):
    resp = await worker.upload_file(b"payload", "a.js", app=OTHER_APP)
    assert resp.status == 200
    assert await worker.catalog.hashes(OTHER_APP) == {asset_hash(b"payload", "a.js")}
    assert await worker.catalog.hashes(APP) == set()


async def test_body_application_must_match_the_token(worker):
    before = await worker.fingerprint()
    body = await error_of(await worker.upload_json("snapshot", snapshot_body(OTHER_APP)), 403)
    assert OTHER_APP in body["message"] and APP in body["message"]
    publish = {"app_version": {"application_uid": OTHER_APP, "snapshot_id": f"tester-1.{OTHER_APP}"}, "urls": ["x.test"]}
    await error_of(await worker.upload_json("envs", publish), 403)
    assert await worker.fingerprint() == before


BAD_FILE_PARAMETERS = [
    ({"filename": "a.js"}, "hash"),
    ({"hash": "A" * 64, "filename": "a.js"}, "hash"),
    ({"hash": "ab" * 31, "filename": "a.js"}, "hash"),
    ({"hash": "ab" * 32}, "filename"),
    ({"hash": "ab" * 32, "filename": "/etc/passwd"}, "filename"),
    ({"hash": "ab" * 32, "filename": "a/../../b.js"}, "filename"),
    ({"hash": "ab" * 32, "filename": "a\x00.js"}, "filename"),
    ({"hash": "ab" * 32, "filename": "a\\b.js"}, "filename"),
]


async def test_bad_file_parameters_are_400(worker):
    before = await worker.fingerprint()
    for params, field in BAD_FILE_PARAMETERS:
        resp = await worker.client.post(
            "/upload", params={"type": "file", **params}, data=b"x", headers={"can_write_jwt": token()}
        )
        body = await error_of(resp, 400)
        assert body["field"] == field and body["message"].startswith(field), (params, body)
    assert await worker.fingerprint() == before


@pytest.mark.parametrize("size", [10, 3 * MiB, 20 * MiB])
async def test_wrong_hash_is_400_and_stores_nothing(worker, size):
    data = Generated(size)
    body = b"".join([c async for c in data.chunks()])
    claimed = asset_hash(body + b"!", "big.bin")
    before = await worker.fingerprint()
    for payload in (body, chunked(body, 256 * 1024)):
        resp = await worker.upload_file(payload, "big.bin", asset=claimed)
        error = await error_of(resp, 400)
        assert error["field"] == "hash"
        assert claimed in error["message"] and asset_hash(body, "big.bin") in error["message"]
        assert await worker.stored(claimed) is None
        assert await worker.fingerprint() == before  # no object, no multipart upload left, no hash


async def test_oversize_is_413_and_stores_nothing(backend, aiohttp_client):
    worker = await start_worker(aiohttp_client, backend, ZE_WORKER_MAX_FILE_SIZE_MB="1")
    before = await worker.fingerprint()
    data = b"x" * (MiB + 1)
    digest = asset_hash(data, "big.bin")
    body = await error_of(await worker.upload_file(data, "big.bin"), 413)  # Content-Length: before reading
    assert "1 MiB" in body["message"]
    await error_of(await worker.upload_file(chunked(data), "big.bin", asset=digest), 413)  # while streaming
    assert await worker.stored(digest) is None
    assert await worker.fingerprint() == before
    # exactly the limit is fine
    assert (await worker.upload_file(data[:MiB], "big.bin")).status == 200


async def test_client_disconnect_mid_body_stores_nothing(backend, caplog):
    """A client that goes away mid-body (the agent's 30 s deadline) leaves nothing behind and
    no error in the log. Served as in production (aiohttp's test server cancels handlers
    on disconnect instead)."""
    caplog.set_level(logging.DEBUG, logger="zephyr_edge.http.app")
    body = b"".join([c async for c in Generated(20 * MiB, seed=5).chunks()])
    digest = asset_hash(body, "big.bin")
    async with production_server(make_app(load_config(backend))) as port:
        before = await Worker(None, backend).fingerprint()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /upload?type=file&hash={digest}&filename=big.bin HTTP/1.1\r\nHost: ze.test\r\n"
            f"can_write_jwt: {token()}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[: 10 * MiB])  # more than one S3 part: a multipart upload starts
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()
        async with asyncio.timeout(30):
            while not any("closed the connection" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert await Worker(None, backend).fingerprint() == before  # no object, temp file or multipart upload


async def test_idempotent_reupload(worker, caplog):
    caplog.set_level(logging.INFO, logger="zephyr_edge.http.ingest.upload")
    data = b"a" * 5000
    digest = asset_hash(data, "a.js")
    first = await (await worker.upload_file(data, "a.js")).json()
    state = await worker.fingerprint()
    second = await (await worker.upload_file(data, "a.js")).json()
    assert first["already_stored"] is False and second["already_stored"] is True
    assert second == {**first, "already_stored": True}
    assert await worker.fingerprint() == state
    assert "Asset already stored" in [r.getMessage() for r in caplog.records]
    # a wrong body for a stored hash is still refused
    await error_of(await worker.upload_file(b"b" * 5000, "a.js", asset=digest), 400)
    # a streamed re-upload (no Content-Length) is verified and rewritten whole
    assert (await worker.upload_file(chunked(data), "a.js", asset=digest)).status == 200
    assert await worker.stored(digest) == data
    assert await worker.fingerprint() == state


async def test_stored_hash_joins_another_app_only_with_the_bytes(worker):
    data = b"shared library code"
    digest = asset_hash(data, "lib.js")
    assert (await worker.upload_file(data, "lib.js")).status == 200
    before = await worker.fingerprint()
    await error_of(await worker.upload_file(b"guess", "lib.js", asset=digest, app=OTHER_APP), 400)
    assert await worker.catalog.hashes(OTHER_APP) == set()
    assert await worker.fingerprint() == before
    resp = await worker.upload_file(data, "lib.js", app=OTHER_APP)
    # not listed for this app yet: the verified bytes are written again (same content hash)
    assert resp.status == 200 and (await resp.json())["already_stored"] is False
    assert await worker.catalog.hashes(OTHER_APP) == {digest}
    assert await worker.stored(digest) == data


async def test_same_file_uploaded_six_times_at_once(worker):
    data = b"".join([c async for c in Generated(3 * MiB, seed=7).chunks()])
    digest = asset_hash(data, "vendor.js")
    answers = await asyncio.gather(*(worker.upload_file(data, "vendor.js") for _ in range(6)))
    assert [r.status for r in answers] == [200] * 6
    assert await worker.stored(digest) == data
    assert await worker.catalog.hashes(APP) == {digest}
    objects = (await worker.fingerprint())["objects"]
    assert len(objects) == 1, objects  # one object, no temporary file or multipart upload left


async def test_large_upload_streams_with_bounded_memory(worker):
    size = 64 * MiB
    hasher = AssetHasher("big.bin")
    async for chunk in Generated(size, seed=3).chunks():
        hasher.update(chunk)
    digest = hasher.hexdigest()
    source = Generated(size, seed=3)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        async with asyncio.timeout(TEST_TIMEOUT_S):
            resp = await worker.upload_file(
                source.chunks(), "big.bin", asset=digest, headers={"Content-Length": str(size)}
            )
            assert resp.status == 200, await resp.text()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert (await resp.json())["size"] == size
    assert peak < size // 2, f"the upload buffered {peak / MiB:.1f} MiB of a {size // MiB} MiB file"
    info = await worker.storage.head(f"assets/{digest[:2]}/{digest[2:4]}/{digest}")
    assert info is not None and info.size == size
    read = hashlib.sha256()
    async with await worker.storage.get(f"assets/{digest[:2]}/{digest[2:4]}/{digest}") as blob:
        async for chunk in blob.chunks():
            read.update(chunk)
    assert read.hexdigest() == source.sha256


# --- other types ------------------------------------------------------------------------------


async def test_unknown_type_is_501_not_implemented(worker):
    before = await worker.fingerprint()
    for params in [{}, {"type": ""}, {"type": "bogus"}, {"type": "sync-bogus"}, {"type": "FILE"}]:
        resp = await worker.client.post("/upload", params=params, data=b"{}", headers={"can_write_jwt": token()})
        assert resp.status == 501, params
        assert await resp.text() == "Not Implemented"
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert await worker.fingerprint() == before


def test_upload_types_can_be_added(tmp_path):
    app = make_app(load_config(local_backend(tmp_path)))

    async def handler(request):
        raise AssertionError("not called")

    upload.add_upload_type(app, "x-custom", handler)
    assert app[upload.UPLOAD_TYPES_KEY]["x-custom"] is handler
    with pytest.raises(ValueError):
        upload.add_upload_type(app, "file", handler)


# --- snapshots --------------------------------------------------------------------------------


async def test_snapshot_before_its_files(worker):
    files = {"index.html": b"<html>v1</html>", "assets/main.js": b"main()"}
    snap = snapshot_body(files=files)
    resp = await worker.upload_json("snapshot", snap)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    sid = snap["snapshot_id"]
    port = worker.client.server.port
    version_host = f"{label_of(sid)}.localhost"
    assert answer == {"urls": {"version": f"http://{version_host}:{port}"}, "worker_version": zephyr_edge.__version__}
    assert await worker.catalog.hashes(APP) == set()  # accepted before any asset arrived
    live = await worker.catalog.live(version_host)
    assert live is not None and live.snapshot_id == sid and live.raw == snap
    assert (await worker.catalog.snapshot(sid)).raw == snap
    for name, data in files.items():
        assert (await worker.upload_file(data, name)).status == 200
    assert await worker.catalog.hashes(APP) == live.hashes


async def test_snapshot_reupload_overwrites_and_keeps_the_url(worker):
    first = await (await worker.upload_json("snapshot", snapshot_body(version="a"))).json()
    generation = await worker.catalog.generation()
    second = await (await worker.upload_json("snapshot", snapshot_body(version="b"))).json()
    assert first == second
    assert (await worker.catalog.snapshot(f"tester-1.{APP}")).raw["version"] == "b"
    assert await worker.catalog.generation() > generation
    assert [v.snapshot.snapshot_id for v in await worker.catalog.versions(APP)] == [f"tester-1.{APP}"]


#: configuration → [(request headers, expected version URL)]
VERSION_URLS = {
    (): [
        ({"Host": "ze.test:8080"}, "http://{label}-ze.test:8080"),
        ({"Host": "ze.test:80"}, "http://{label}-ze.test"),
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ze.example.com"}, "https://{label}-ze.example.com"),
        ({"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "ze.example.com:443, inner:8080"},
         "https://{label}-ze.example.com"),
        ({"X-Forwarded-Proto": "https", "Host": "ze.example.com:8443"}, "https://{label}-ze.example.com:8443"),
        ({"X-Forwarded-Proto": "gopher", "Host": "ze.test"}, "http://{label}-ze.test"),
        ({"Host": "localhost:3000"}, "http://{label}.localhost:3000"),
        ({"Host": "[::1]:8080"}, "http://{label}.localhost:8080"),
        ({"Host": "ze.localhost:8080"}, "http://{label}-ze.localhost:8080"),
    ],
    (("ZE_WORKER_DELIMITER", "."),): [
        ({"Host": "ZE.Test"}, "http://{label}.ze.test"),
    ],
    (("ZE_WORKER_PUBLIC_URL", "https://edge.example.com"),): [
        ({"X-Forwarded-Host": "evil.test", "Host": "x.test"}, "https://{label}-edge.example.com"),
    ],
    (("ZE_WORKER_PUBLIC_URL", "http://edge.example.com:8080/ignored/path"),): [
        ({}, "http://{label}-edge.example.com:8080"),
    ],
}


@pytest.mark.parametrize("extra", list(VERSION_URLS), ids=["request", "delimiter", "public-url", "public-url-port"])
async def test_version_url(backend, aiohttp_client, extra):
    worker = await start_worker(aiohttp_client, backend, **dict(extra))
    for build, (headers, expected) in enumerate(VERSION_URLS[extra]):
        snap = snapshot_body(build=str(build))
        resp = await worker.upload_json("snapshot", snap, headers=headers)
        assert resp.status == 200, (headers, await resp.text())
        url = (await resp.json())["urls"]["version"]
        assert url == expected.format(label=label_of(snap["snapshot_id"])), headers
        live = await worker.catalog.live(url.split("://", 1)[1])  # as the serving side looks up (port dropped)
        assert live is not None and live.snapshot_id == snap["snapshot_id"], headers
    # the default: the test client's Host 127.0.0.1:<port>
    if not extra:
        snap = snapshot_body(build="default")
        url = (await (await worker.upload_json("snapshot", snap)).json())["urls"]["version"]
        assert url == f"http://{label_of(snap['snapshot_id'])}.localhost:{worker.client.server.port}"


async def test_invalid_host_is_400(worker):
    before = await worker.fingerprint()
    body = await error_of(await worker.upload_json("snapshot", snapshot_body(), headers={"X-Forwarded-Host": "bad host!"}), 400)
    assert body["field"] == "X-Forwarded-Host"
    assert await worker.fingerprint() == before


def _set(path, value):
    def change(snap):
        target = snap
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return snap
    return change


BAD_SNAPSHOTS = [
    (lambda s: b"not json", "body"),
    (lambda s: b"[1, 2]", "body"),
    (lambda s: b"\xff\xfe", "body"),
    (_set(["snapshot_id"], "tester-1.elsewhere"), "snapshot_id"),
    (_set(["snapshot_id"], 42), "snapshot_id"),
    (_set(["application_uid"], None), "application_uid"),
    (_set(["assets"], []), "assets"),
    (_set(["assets", "index.html", "hash"], "XYZ"), 'assets["index.html"].hash'),
    (_set(["assets", "index.html", "size"], -1), 'assets["index.html"].size'),
    (_set(["assets", "index.html", "path"], "other.html"), 'assets["index.html"].path'),
    (_set(["assets", "../secret"], {"path": "../secret", "hash": "a" * 64, "size": 1}), 'assets["../secret"]'),
    (_set(["assets", "/abs.js"], {"path": "/abs.js", "hash": "a" * 64, "size": 1}), 'assets["/abs.js"]'),
]


async def test_bad_snapshot_fields_are_400(worker):
    before = await worker.fingerprint()
    for change, field in BAD_SNAPSHOTS:
        body = change(snapshot_body())
        resp = await worker.upload_json("snapshot", body if isinstance(body, bytes) else json.dumps(body).encode())
        error = await error_of(resp, 400)
        assert error["field"] == field and field in error["message"], (field, error)
    assert await worker.fingerprint() == before


async def test_oversize_snapshot_is_413(worker, monkeypatch):
    monkeypatch.setattr(upload, "MAX_SNAPSHOT_BYTES", 4096)
    before = await worker.fingerprint()
    big = snapshot_body(padding="x" * 5000)
    await error_of(await worker.upload_json("snapshot", big), 413)
    await error_of(await worker.client.post(
        "/upload", params={"type": "snapshot"}, data=chunked(json.dumps(big).encode(), 1000),
        headers={"can_write_jwt": token()},
    ), 413)
    assert await worker.fingerprint() == before


async def test_snapshot_id_of_another_application_is_refused(worker):
    """Ids are ``<version>.<uid>``: application ``org`` could name ``u-1.web.repo.org``."""
    assert (await worker.upload_json("snapshot", snapshot_body())).status == 200
    before = await worker.fingerprint()
    hijack = snapshot_body("org", snapshot_id=f"tester-1.{APP}", application_uid="org")
    body = await error_of(await worker.upload_json("snapshot", hijack, app="org"), 403)
    assert APP in body["message"]
    assert await worker.fingerprint() == before


# --- publish (envs) -------------------------------------------------------------------------


def publish_body(snapshot_id: str, urls=(), url_ids=(), app: str = APP) -> dict:
    return {
        "app_version": {"application_uid": app, "snapshot_id": snapshot_id},
        "urls": list(urls), "url_ids": list(url_ids), "jwt": "ignored",
    }


async def test_publish_and_rollback(worker):
    ids = []
    for build, created in (("1", 1000), ("2", 2000)):
        snap = snapshot_body(build=build, created_at=created, files={"index.html": f"v{build}".encode()})
        assert (await worker.upload_json("snapshot", snap)).status == 200
        ids.append(snap["snapshot_id"])
    v1, v2 = ids
    port = worker.client.server.port

    generation = await worker.catalog.generation()
    resp = await worker.upload_json("envs", publish_body(v1, ["https://App.Example.com/path"], ["latest.localhost"]))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "status": "ok", "snapshot_id": v1, "hosts": ["app.example.com", "latest.localhost"],
        "urls": [f"http://app.example.com:{port}", f"http://latest.localhost:{port}"],
    }
    assert await worker.catalog.generation() > generation
    assert (await worker.catalog.live("app.example.com")).snapshot_id == v1

    # promote v2
    assert (await worker.upload_json("envs", publish_body(v2, ["https://app.example.com"], ["latest.localhost"]))).status == 200
    versions = await worker.catalog.versions(APP)
    assert [v.snapshot.snapshot_id for v in versions] == [v2, v1]  # newest first
    assert set(versions[0].hosts) == {"app.example.com", "latest.localhost", f"{label_of(v2)}.localhost"}
    assert versions[1].hosts == (f"{label_of(v1)}.localhost",)

    # roll back
    assert (await worker.upload_json("envs", publish_body(v1, ["app.example.com:443"]))).status == 200
    assert (await worker.catalog.live("APP.example.com")).snapshot_id == v1
    assert (await worker.catalog.live("latest.localhost")).snapshot_id == v2
    versions = await worker.catalog.versions(APP)
    assert set(versions[1].hosts) == {"app.example.com", f"{label_of(v1)}.localhost"}


async def test_publish_refusals_change_nothing(worker):
    snap = snapshot_body()
    assert (await worker.upload_json("snapshot", snap)).status == 200
    other = snapshot_body(OTHER_APP)
    assert (await worker.upload_json("snapshot", other, app=OTHER_APP)).status == 200
    assert (await worker.upload_json("envs", publish_body(other["snapshot_id"], ["taken.test"], app=OTHER_APP),
                                     app=OTHER_APP)).status == 200
    before = await worker.fingerprint()

    body = await error_of(await worker.upload_json("envs", publish_body(f"tester-9.{APP}", ["x.test"])), 404)
    assert body["error"] == "not_found"
    # another application's host cannot be taken over
    body = await error_of(await worker.upload_json("envs", publish_body(snap["snapshot_id"], ["taken.test"])), 403)
    assert "taken.test" in body["message"] and OTHER_APP in body["message"]
    version_host = f"{label_of(other['snapshot_id'])}.localhost"
    await error_of(await worker.upload_json("envs", publish_body(snap["snapshot_id"], [], [version_host])), 403)
    # bad bodies
    for bad, field in [
        (b"{", "body"),
        ({"urls": ["x.test"]}, "app_version"),
        (publish_body(snap["snapshot_id"]), "urls"),
        (publish_body(snap["snapshot_id"], ["http://"]), "urls[0]"),
        (publish_body(snap["snapshot_id"], ["ok.test"], [7]), "url_ids[0]"),
    ]:
        error = await error_of(await worker.upload_json("envs", bad), 400)
        assert error["field"] == field, error
    assert await worker.fingerprint() == before


# --- hostile input: a 4xx naming the problem, never a 500, nothing written -------------------


async def raw_request(worker: Worker, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes as they are (aiohttp's client cannot send a header that is not UTF-8);
    the status and JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.client.server.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


async def test_a_token_header_that_is_not_utf8_is_403(worker):
    assert (await worker.upload_json("snapshot", snapshot_body())).status == 200
    before = await worker.fingerprint()
    valid = token().encode()
    for bad in (b"ab\xffc", valid[:-4] + b"\xed\xa0\x80", valid + b"\xe9"):
        for target, body in (
            (b"/upload?type=snapshot&skip_assets=true", json.dumps(snapshot_body(build="2")).encode()),
            (b"/upload?type=file&hash=" + b"0" * 64 + b"&filename=a.js", b"x"),
            (b"/__get_application_hash_list__?application_uid=" + APP.encode(), b""),
        ):
            method = b"GET" if b"hash_list" in target else b"POST"
            head = method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\ncan_write_jwt: " + bad + b"\r\n"
            status, answer = await raw_request(worker, head, body)
            assert status == 403, (bad, target, answer)
            assert answer["error"] == "forbidden" and "malformed token" in answer["message"]
    assert await worker.fingerprint() == before


async def test_hostile_json_bodies_are_400_and_store_nothing(worker):
    snap = snapshot_body()
    assert (await worker.upload_json("snapshot", snap)).status == 200
    before = await worker.fingerprint()
    lone = json.dumps(snapshot_body(build="2", version="\ud800")).encode()
    huge = json.dumps(snapshot_body(build="3")).encode().replace(b'"createdAt": 1700000000000', b'"createdAt": 1e999')
    digits = json.dumps(snapshot_body(build="4")).encode().replace(b'"createdAt": 1700000000000', b'"createdAt": ' + b"7" * 5000)
    assert b"1e999" in huge and b"7" * 5000 in digits
    publish = publish_body(snap["snapshot_id"], ["ok.test"])
    for kind, body, problem in (
        ("snapshot", lone, "lone UTF-16 surrogate"),
        ("snapshot", huge, "out of range"),
        ("snapshot", digits, "5000 digits"),
        ("envs", json.dumps({**publish, "jwt": "\udfff"}).encode(), "lone UTF-16 surrogate"),
        ("envs", json.dumps(publish_body(snap["snapshot_id"], ["https://[x"])).encode(), "https://[x"),
        ("envs", json.dumps(publish_body(snap["snapshot_id"], ["ok.test"], ["[::1"])).encode(), "[::1"),
    ):
        answer = await error_of(await worker.upload_json(kind, body), 400)
        assert problem in answer["message"], answer
    assert await worker.fingerprint() == before


# --- large snapshots -------------------------------------------------------------------------


async def test_a_snapshot_over_the_asset_limit_is_413_and_stores_nothing(backend, aiohttp_client):
    worker = await start_worker(aiohttp_client, backend, ZE_WORKER_MAX_SNAPSHOT_ASSETS="10")
    before = await worker.fingerprint()
    files = {f"assets/{i}.js": b"x" for i in range(11)}
    answer = await error_of(await worker.upload_json("snapshot", snapshot_body(files=files)), 413)
    assert "11 entries" in answer["message"] and "ZE_WORKER_MAX_SNAPSHOT_ASSETS" in answer["message"]
    assert await worker.fingerprint() == before
    files.pop("assets/0.js")
    assert (await worker.upload_json("snapshot", snapshot_body(files=files))).status == 200


async def test_health_answers_while_a_large_snapshot_is_validated(worker, monkeypatch):
    """A snapshot of many thousands of assets takes seconds to validate; the event loop
    must keep answering meanwhile. Validation here waits until /healthz has answered: on
    the loop itself it would wait in vain."""
    from zephyr_edge.domain import snapshot as snapshot_module

    validating, answered = threading.Event(), threading.Event()
    real = snapshot_module.snapshot_from_object

    def validate_once_health_answered(*args, **kwargs):
        validating.set()
        if not answered.wait(5):
            raise AssertionError("/healthz was not answered while the snapshot was validated")
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_module, "snapshot_from_object", validate_once_health_answered)
    files = {f"assets/chunk-{i}.js": b"x" for i in range(3000)}
    body = json.dumps(snapshot_body(files=files)).encode()
    assert len(body) > bodies.OFF_LOOP_BYTES
    upload = asyncio.create_task(worker.upload_json("snapshot", body))
    try:
        async with asyncio.timeout(10):
            while not validating.is_set():
                await asyncio.sleep(0.01)
            assert (await worker.client.get("/healthz")).status == 200
            answered.set()
            resp = await upload
        assert resp.status == 200, await resp.text()
    finally:
        answered.set()
        if not upload.done():
            upload.cancel()
    assert len((await worker.catalog.live(f"{label_of(f'tester-1.{APP}')}.localhost")).assets) == 3000


ATTACKER = "evil.attacker.org"


async def test_a_future_version_hostname_cannot_be_claimed_by_another_application(worker):
    evil = snapshot_body(ATTACKER, build="1", files={"index.html": b"<p>attacker</p>"})
    assert (await worker.upload_json("snapshot", evil, app=ATTACKER)).status == 200
    victim_id = f"tester-9.{APP}"  # the victim's next build: guessable, not uploaded yet
    label = label_of(victim_id)
    claims = [f"{label}-ze.example.com", f"{label}.ze.example.com", f"{label}_ze.example.com", f"{label}.localhost"]
    before = await worker.fingerprint()
    for host in claims:
        for urls, url_ids in (([f"https://{host}/"], []), ([], [host])):
            body = publish_body(evil["snapshot_id"], urls, url_ids, app=ATTACKER)
            error = await error_of(await worker.upload_json("envs", body, app=ATTACKER), 403)
            assert error["error"] == "version_host_reserved" and "version hostname" in error["message"], error
            assert host in error["message"], error
    # mixed with a legitimate host: nothing of the request is written
    body = publish_body(evil["snapshot_id"], ["https://evil-latest.example.com", f"https://{claims[0]}"], app=ATTACKER)
    await error_of(await worker.upload_json("envs", body, app=ATTACKER), 403)
    assert await worker.fingerprint() == before
    # the victim's real build 9 then deploys, on either edge host
    victim = snapshot_body(build="9")
    assert victim["snapshot_id"] == victim_id
    for headers in ({}, {"Host": "ze.example.com"}):
        resp = await worker.upload_json("snapshot", victim, headers=headers)
        assert resp.status == 200, await resp.text()
    assert (await worker.catalog.live(claims[0])).snapshot_id == victim_id
    assert (await worker.catalog.live(claims[3])).snapshot_id == victim_id


async def test_version_hostnames_point_only_at_their_own_snapshot(worker):
    one, two = snapshot_body(build="1"), snapshot_body(build="2")
    for snap in (one, two):
        assert (await worker.upload_json("snapshot", snap)).status == 200
    own = f"{label_of(one['snapshot_id'])}.localhost"
    # the owning application cannot move its own version host either...
    error = await error_of(await worker.upload_json("envs", publish_body(two["snapshot_id"], [], [own])), 403)
    assert error["error"] == "version_host_reserved" and one["snapshot_id"] in error["message"]
    # ...nor claim a version host of a build it has not uploaded yet
    future = f"{label_of(f'tester-3.{APP}')}-ze.example.com"
    await error_of(await worker.upload_json("envs", publish_body(two["snapshot_id"], [future])), 403)
    assert await worker.catalog.live(future) is None
    # pointing a version host at its own snapshot is a harmless no-op; tags and environments move freely
    for hosts in ([own], ["web-latest-ze.example.com", "staging.example.com", "latest.localhost"]):
        snapshot_id = one["snapshot_id"] if hosts == [own] else two["snapshot_id"]
        resp = await worker.upload_json("envs", publish_body(snapshot_id, [], hosts))
        assert resp.status == 200, await resp.text()
    assert (await worker.catalog.live("web-latest-ze.example.com")).snapshot_id == two["snapshot_id"]
