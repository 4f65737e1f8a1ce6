"""The sending side: :class:`ReplicaClient` over TCP against a real receiving worker, and
against small stand-in servers on 127.0.0.1 that fail, stall or record what they get."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from aiohttp import web

from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.replication import client as client_module
from zephyr_edge.replication import protocol, synctoken
from zephyr_edge.replication.client import CheckResult, DeliveryError, ReplicaClient
from tests.replication.support import RECEIVER, SOURCE, stamp, start_sync_worker
from tests.upload_support import APP, SECRET, local_backend, snapshot_body
from zephyr_edge.settings.units import MiB

TIMEOUT_S = 10.0


@pytest.fixture
async def receiver(tmp_path, aiohttp_client):
    return await start_sync_worker(aiohttp_client, local_backend(tmp_path))


def url_of(worker) -> str:
    return str(worker.client.make_url("/"))


def replica(url: str, **kw) -> ReplicaClient:
    kw.setdefault("secret", SECRET)
    kw.setdefault("source", SOURCE)
    kw.setdefault("timeout_s", TIMEOUT_S)
    return ReplicaClient(url, **kw)


class Chunks:
    """A ``chunks`` factory that counts its calls."""

    def __init__(self, data: bytes, size: int = 64 * 1024):
        self.data, self.size, self.calls = data, size, 0

    def __call__(self):
        self.calls += 1
        return self._gen()

    async def _gen(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


class StandIn:
    """A tiny server recording each request; the first ``fail`` answer ``status``."""

    def __init__(self, fail: int = 0, status: int = 503, path: str = "/upload", delay_s: float = 0.0,
                 ok_body: object = None):
        self.fail, self.status, self.delay_s = fail, status, delay_s
        self.ok_body = {"status": "ok", "applied": []} if ok_body is None else ok_body
        self.seen: list[tuple[str, dict, dict, bytes]] = []
        self.app = web.Application(client_max_size=64 * MiB)
        self.app.router.add_post(path, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.path, dict(request.query), dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if len(self.seen) <= self.fail:
            return web.json_response({"error": "busy", "message": f"busy {len(self.seen)}"}, status=self.status)
        if isinstance(self.ok_body, bytes):
            return web.Response(body=self.ok_body)
        return web.json_response(self.ok_body)


async def stand_in(aiohttp_server, **kw) -> tuple[StandIn, str]:
    server = StandIn(**kw)
    running = await aiohttp_server(server.app)
    return server, str(running.make_url("/"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- against the real receiver -------------------------------------------------------------------


async def test_files_small_and_large_reach_the_receiver(receiver):
    files = {"small.js": b"console.log('s')", "large.bin": bytes(range(256)) * (6 * 1024)}  # 1.5 MiB
    async with replica(url_of(receiver)) as sync:
        for name, data in files.items():
            digest = asset_hash(data, name)
            chunks = Chunks(data)
            got = await sync.send_file(APP, digest, name, len(data), chunks, jti=f"{SOURCE}:1")
            assert got == {"status": "ok", "hash": digest, "size": len(data), "already_stored": False}
            assert chunks.calls == 1
            assert await receiver.stored(digest) == data
        # size unknown: read to the in-memory limit, then streamed from a second call
        data, name = b"u" * (MiB + 10), "unknown-size.bin"
        chunks = Chunks(data)
        got = await sync.send_file(APP, asset_hash(data, name), name, None, chunks)
        assert got["size"] == len(data) and chunks.calls == 2
        again = await sync.send_file(APP, asset_hash(data, name), name, None, Chunks(data))
        assert again["already_stored"] is True
        name = "ünï côde+plus & amp.js"
        got = await sync.send_file(APP, asset_hash(b"x", name), name, 1, Chunks(b"x"))
        assert got["hash"] == asset_hash(b"x", name)
    expected = sorted(asset_hash(d, n) for n, d in files.items())
    listed = (await (await receiver.hash_list()).json())["hashes"]
    assert set(expected) <= set(listed) and len(listed) == 4
    assert await receiver.outbox_depth() == 0


async def test_snapshot_envs_and_check_round_trip(receiver):
    snap = snapshot_body(build="40")
    raw = json.dumps(snap).encode()
    host = "v40-ze.example.com"
    async with replica(url_of(receiver)) as sync:
        assert await sync.send_snapshot(raw, {host: stamp(1000)}) == {"status": "ok", "applied": [host]}
        assert await sync.send_snapshot(raw, {host: stamp(1000)}) == {"status": "ok", "applied": []}
        assert (await sync.send_envs(raw, {"prod-ze.example.com": stamp(2000)}, jti="us-east-1:9"))["applied"] == [
            "prod-ze.example.com"
        ]
        result = await sync.check(
            APP, hashes=list(snap_hashes(snap)), snapshots=[snap["snapshot_id"], "u-0." + APP],
            hosts={host: stamp(1000), "prod-ze.example.com": stamp(3000)},
        )
    assert result == CheckResult(frozenset(snap_hashes(snap)), frozenset({"u-0." + APP}), frozenset({"prod-ze.example.com"}))
    assert (await receiver.catalog.live("prod-ze.example.com")).snapshot_id == snap["snapshot_id"]
    assert await receiver.outbox_depth() == 0


def snap_hashes(snap) -> set[str]:
    return {a["hash"] for a in snap["assets"].values()}


async def test_check_batches(receiver, aiohttp_server, monkeypatch):
    monkeypatch.setattr(protocol, "CHECK_BATCH", 3)  # the receiver refuses more than 3 per list now
    hashes = [asset_hash(str(i).encode(), "f.js") for i in range(8)]
    await receiver.sync_file(b"3", "f.js")
    hosts = {f"h{i}-ze.example.com": stamp(10) for i in range(5)}
    async with replica(url_of(receiver)) as sync:
        got = await sync.check(APP, hashes=hashes, snapshots=["a." + APP], hosts=hosts)
        assert got == CheckResult(frozenset(hashes) - {hashes[3]}, frozenset({"a." + APP}), frozenset(hosts))
        assert await sync.check(APP) == CheckResult()
    answer = {"missing_hashes": [], "missing_snapshots": [], "stale_hosts": []}
    server, url = await stand_in(aiohttp_server, ok_body=answer)
    async with replica(url) as sync:
        await sync.check(APP, hashes=hashes, snapshots=["a." + APP], hosts=hosts)
    sent = [json.loads(s[3]) for s in server.seen]
    assert [(len(b["hashes"]), len(b["snapshots"]), len(b["hosts"])) for b in sent] == [(3, 1, 3), (3, 0, 2), (2, 0, 0)]
    assert all(b["application_uid"] == APP for b in sent)


async def test_refusals_map_to_permanent_or_retryable(tmp_path, aiohttp_client):
    receiver = await start_sync_worker(aiohttp_client, local_backend(tmp_path), ZE_WORKER_MAX_FILE_SIZE_MB="1")
    url = url_of(receiver)
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:  # hash mismatch: 400
            await sync.send_file(APP, asset_hash(b"a", "a.js"), "a.js", 1, Chunks(b"b"))
        assert caught.value.permanent and caught.value.status == 400
        assert "hash" in str(caught.value) and url.rstrip("/") in str(caught.value)
        with pytest.raises(DeliveryError) as caught:  # bad snapshot: 400
            await sync.send_snapshot(b'{"not": "a snapshot"}', {})
        assert caught.value.permanent and "snapshot.application_uid" in str(caught.value)
        data = b"o" * (MiB + 1)
        with pytest.raises(DeliveryError) as caught:  # oversize: 413
            await sync.send_file(APP, asset_hash(data, "o.bin"), "o.bin", len(data), Chunks(data))
        assert caught.value.permanent and caught.value.status == 413
    async with replica(url, secret="another-secret-0123456789abcdef0123456") as sync:
        with pytest.raises(DeliveryError) as caught:  # 403: a secret being rotated, retried
            await sync.send_envs(json.dumps(snapshot_body()).encode(), {})
        assert not caught.value.permanent and caught.value.status == 403
        assert "bad signature" in str(caught.value)
    async with replica(url, source=RECEIVER) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.check(APP, hashes=["0" * 64])
        assert caught.value.status == 403 and not caught.value.permanent
    assert await receiver.fingerprint() == {"objects": [], "kv": []}


# --- against stand-ins -----------------------------------------------------------------------------


async def test_retries_a_503_then_succeeds_with_a_valid_token_each_time(aiohttp_server):
    server, url = await stand_in(aiohttp_server, fail=2)
    body = json.dumps(snapshot_body()).encode()
    async with replica(url) as sync:
        assert await sync.send_envs(body, {"a-ze.example.com": stamp(1)}, jti="us-east-1:77") == {"status": "ok", "applied": []}
    assert len(server.seen) == 3
    sent = server.seen[0][3]
    for path, query, headers, got in server.seen:
        assert (path, query, got) == ("/upload", {"type": protocol.SYNC_ENVS}, sent)
        token = synctoken.bearer_token(headers["Authorization"])
        claims = synctoken.verify(token, SECRET, source_header=headers[protocol.SOURCE_HEADER],
                                  own_replica=RECEIVER, subject=protocol.body_subject(got))
        assert claims.jti == "us-east-1:77" and claims.source == SOURCE
    assert json.loads(sent)["hosts"] == {"a-ze.example.com": stamp(1)}


async def test_small_file_is_resent_from_memory(aiohttp_server):
    server, url = await stand_in(aiohttp_server, fail=1, ok_body={"status": "ok"})
    data = b"small" * 100
    chunks = Chunks(data, size=7)
    async with replica(url) as sync:
        await sync.send_file(APP, asset_hash(data, "s.js"), "s.js", len(data), chunks)
    assert chunks.calls == 1 and [s[3] for s in server.seen] == [data, data]
    assert server.seen[0][1] == {"type": protocol.SYNC_FILE, "application_uid": APP,
                                 "hash": asset_hash(data, "s.js"), "filename": "s.js"}


async def test_large_file_is_streamed_once(aiohttp_server):
    server, url = await stand_in(aiohttp_server, fail=1)
    data = b"L" * (MiB + 1)
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_file(APP, asset_hash(data, "l.bin"), "l.bin", len(data), Chunks(data))
    assert caught.value.status == 503 and not caught.value.permanent
    assert len(server.seen) == 1 and server.seen[0][3] == data
    assert server.seen[0][2]["Content-Length"] == str(len(data))


async def test_persistent_503_and_500_are_retryable(aiohttp_server):
    server, url = await stand_in(aiohttp_server, fail=100)
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_snapshot(b"{}", {})
    assert caught.value.status == 503 and not caught.value.permanent
    assert len(server.seen) == client_module.RETRY_ATTEMPTS and "busy 3" in str(caught.value)
    server, url = await stand_in(aiohttp_server, fail=100, status=500)
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_snapshot(b"{}", {})
    assert caught.value.status == 500 and not caught.value.permanent and len(server.seen) == 1


@pytest.mark.parametrize("status", sorted(protocol.PERMANENT_STATUSES))
async def test_permanent_statuses(aiohttp_server, status):
    server, url = await stand_in(aiohttp_server, fail=100, status=status)
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_envs(b"{}", {})
    assert caught.value.permanent and caught.value.status == status and len(server.seen) == 1


async def test_connection_refused_is_retryable_and_names_the_target():
    port = closed_port()
    async with replica(f"http://replicator:hunter2@127.0.0.1:{port}/region/", timeout_s=2) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_envs(b"{}", {})
    err = caught.value
    assert err.status is None and not err.permanent
    assert f"127.0.0.1:{port}/region" in str(err)
    shown = f"{err} {err!r} {err.__cause__} {err.__cause__!r}"
    assert "hunter2" not in shown and "replicator" not in shown


async def test_path_prefix_is_kept_and_userinfo_never_sent_nor_shown(aiohttp_server):
    server = StandIn(fail=1, status=400, path="/pre/fix/upload")
    running = await aiohttp_server(server.app)
    url = f"http://replicator:hunter2@127.0.0.1:{running.port}/pre/fix/"
    async with replica(url) as sync:
        assert sync.target == f"http://127.0.0.1:{running.port}/pre/fix"
        with pytest.raises(DeliveryError) as caught:
            await sync.send_envs(b"{}", {})
        assert caught.value.permanent and "busy 1" in str(caught.value)
        assert "hunter2" not in str(caught.value) and "replicator" not in str(caught.value)
        assert await sync.send_envs(b"{}", {}) == {"status": "ok", "applied": []}
    assert [s[0] for s in server.seen] == ["/pre/fix/upload"] * 2
    assert all(s[2]["Authorization"].startswith("Bearer ") for s in server.seen)


async def test_timeouts_are_retryable(aiohttp_server):
    server, url = await stand_in(aiohttp_server, delay_s=1.0)
    async with replica(url, timeout_s=0.2, attempts=2) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_envs(b"{}", {})
    assert caught.value.status is None and not caught.value.permanent
    assert "timed out" in str(caught.value) and len(server.seen) == 2


async def test_a_2xx_without_json_is_retryable(aiohttp_server):
    _, url = await stand_in(aiohttp_server, ok_body=b"<html>proxy page</html>")
    async with replica(url) as sync:
        with pytest.raises(DeliveryError) as caught:
            await sync.send_envs(b"{}", {})
    assert caught.value.status == 200 and not caught.value.permanent


async def test_a_given_session_is_used_and_left_open(aiohttp_server):
    server, url = await stand_in(aiohttp_server)
    async with aiohttp.ClientSession() as session:
        async with replica(url, session=session) as sync:
            await sync.send_envs(b"{}", {})
        assert not session.closed
        async with replica(url, session=session) as sync:
            await sync.send_envs(b"{}", {})
    assert len(server.seen) == 2
