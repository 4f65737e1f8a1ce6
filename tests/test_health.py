"""``/healthz`` and ``/readyz`` against real services: moto's S3 server, Redis standalone and
a 3-master Redis Cluster, stopped and restarted under a running worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import attrs
import pytest
from aiobotocore.session import get_session

from zephyr_edge.http import health
from zephyr_edge.settings import config
from zephyr_edge.http.app import make_app
from zephyr_edge.errors import BackendError
from zephyr_edge.kv.redis import RedisKV
from zephyr_edge.settings.redaction import Redactor
from zephyr_edge.storage.s3 import S3Storage
from tests.services import RedisCluster, RedisServer, free_port

JWT_SECRET = "jwt-secret-0123456789abcdef0123456789"
ACCESS_KEY = "AKIAEXAMPLEHEALTHKEY"
SECRET_KEY = "s3-secret-key-health-9876543210zyxwvu"
REDIS_PASSWORD = "redis-password-health-abcdef"
SECRETS = (JWT_SECRET, ACCESS_KEY, SECRET_KEY, REDIS_PASSWORD)
#: Bound of every wait for a state change (the readiness answers themselves take ≤ 2 s).
CHANGE_TIMEOUT_S = 20.0


def env_for(s3_endpoint: str, bucket: str, redis_port: int, **extra: str) -> dict[str, str]:
    return {
        "ZE_WORKER_JWT_SECRET": JWT_SECRET,
        "ZE_WORKER_S3_ENDPOINT": s3_endpoint,
        "ZE_WORKER_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "ZE_WORKER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "ZE_WORKER_S3_BUCKET": bucket,
        "ZE_WORKER_REDIS_HOST": "127.0.0.1",
        "ZE_WORKER_REDIS_PORT": str(redis_port),
        "ZE_WORKER_REDIS_CONNECT_TIMEOUT_MS": "500",
        "ZE_WORKER_READINESS_WRITE_CHECK_INTERVAL_MS": "200",
        **extra,
    }


@pytest.fixture
async def s3(s3_endpoint):
    """An S3 client on the moto server."""
    async with get_session().create_client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


@pytest.fixture
async def bucket(s3, unique):
    name = f"ze-health-{unique}"
    await s3.create_bucket(Bucket=name)
    yield name
    try:
        listing = await s3.list_objects_v2(Bucket=name)
        for item in listing.get("Contents", []):
            await s3.delete_object(Bucket=name, Key=item["Key"])
        await s3.delete_bucket(Bucket=name)
    except Exception:
        pass  # already deleted by the test


@pytest.fixture
def redis_server():
    """A dedicated Redis the test may stop and start again on the same port."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def dedicated_cluster():
    """A dedicated 3-master cluster, stopped and restarted by the tests."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


async def ready(client, expect_within: float = 2.5) -> tuple[int, dict]:
    """GET /readyz, checking the time bound and that no secret is in the body."""
    started = time.monotonic()
    resp = await client.get("/readyz")
    text = await resp.text()
    assert time.monotonic() - started < expect_within, "readiness answer took too long"
    for value in SECRETS:
        assert value not in text
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.status, json.loads(text)


async def wait_status(client, status: int, timeout: float = CHANGE_TIMEOUT_S, predicate=None) -> dict:
    """Poll /readyz until it answers ``status`` (and ``predicate(body)``), bounded."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        code, body = await ready(client)
        last = (code, body)
        if code == status and (predicate is None or predicate(body)):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz did not answer {status} within {timeout} s; last: {last}")


# --- healthy --------------------------------------------------------------------------------


async def test_healthz_needs_no_backend(s3_endpoint, bucket, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, 1))  # nothing listens on port 1
    client = await aiohttp_client(make_app(cfg))
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    status, body = await ready(client)
    assert status == 503 and body["failing"] == ["kv"]


async def test_ready_with_s3_and_redis(s3_endpoint, bucket, redis_addr, s3, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, redis_addr[1]))
    app = make_app(cfg)
    client = await aiohttp_client(app)
    status, body = await ready(client)
    assert status == 200, body
    assert body["status"] == "ready" and "failing" not in body
    storage, kv = body["checks"]["storage"], body["checks"]["kv"]
    assert storage["ok"] and storage["backend"] == "s3" and storage["write_check"]["ok"]
    assert kv["ok"] and kv["backend"] == "redis"
    # the write check cleans up after itself
    listing = await s3.list_objects_v2(Bucket=bucket, Prefix=health.PROBE_PREFIX)
    assert listing.get("KeyCount", 0) == 0


# --- KV outages -----------------------------------------------------------------------------


async def test_redis_down_then_back_without_restart(s3_endpoint, bucket, redis_server, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, redis_server.port))
    client = await aiohttp_client(make_app(cfg))
    await wait_status(client, 200)

    redis_server.stop()
    started = time.monotonic()
    body = await wait_status(client, 503, timeout=3.0)
    assert time.monotonic() - started < 3.0
    assert body["status"] == "not_ready" and body["failing"] == ["kv"]
    assert body["checks"]["kv"]["ok"] is False and body["checks"]["kv"]["error"]
    assert body["checks"]["storage"]["ok"] is True

    redis_server.start()  # same port, same worker
    body = await wait_status(client, 200)
    assert body["checks"]["kv"]["ok"] is True


@pytest.mark.parametrize("backend", ["redis-cluster", "redis"])
async def test_redis_cluster_down_then_back(s3_endpoint, bucket, dedicated_cluster, aiohttp_client, backend):
    host, port = dedicated_cluster.startup_nodes[0]
    cfg = config.load(env_for(s3_endpoint, bucket, port, ZE_WORKER_KV_BACKEND=backend))
    client = await aiohttp_client(make_app(cfg))
    try:
        body = await wait_status(client, 200)
        assert body["checks"]["kv"]["backend"] == backend

        dedicated_cluster.stop()
        started = time.monotonic()
        body = await wait_status(client, 503, timeout=3.0)
        assert time.monotonic() - started < 3.0
        assert body["failing"] == ["kv"] and body["checks"]["kv"]["error"]
    finally:
        for node in dedicated_cluster.nodes:
            if node.proc is None:
                node.start()
        dedicated_cluster.wait_ok()
    await wait_status(client, 200, timeout=30.0)


async def test_one_cluster_primary_down_is_named(s3_endpoint, bucket, dedicated_cluster, aiohttp_client):
    host, port = dedicated_cluster.startup_nodes[0]
    cfg = config.load(env_for(s3_endpoint, bucket, port, ZE_WORKER_KV_BACKEND="redis-cluster"))
    client = await aiohttp_client(make_app(cfg))
    await wait_status(client, 200)
    victim = dedicated_cluster.nodes[2]
    victim.stop()
    try:
        body = await wait_status(client, 503, timeout=3.0)
        assert body["failing"] == ["kv"]
    finally:
        victim.start()
        dedicated_cluster.wait_ok()
    await wait_status(client, 200, timeout=30.0)


async def test_wrong_redis_password_is_reported_without_the_password(s3_endpoint, bucket, redis_server, aiohttp_client):
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(redis_server.port), "CONFIG", "SET", "requirepass", "right-one-0123"],
        check=True, capture_output=True, timeout=10,
    )
    cfg = config.load(env_for(s3_endpoint, bucket, redis_server.port, ZE_WORKER_REDIS_PASSWORD=REDIS_PASSWORD))
    client = await aiohttp_client(make_app(cfg))
    status, body = await ready(client)
    assert status == 503 and body["failing"] == ["kv"]
    assert body["checks"]["kv"]["error"]


# --- storage outages ------------------------------------------------------------------------


async def test_storage_probe_failure_then_recovery(s3_endpoint, bucket, redis_addr, s3, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, redis_addr[1]))
    client = await aiohttp_client(make_app(cfg))
    await wait_status(client, 200)

    await s3.delete_bucket(Bucket=bucket)
    body = await wait_status(client, 503, predicate=lambda b: not b["checks"]["storage"]["write_check"]["ok"])
    assert body["failing"] == ["storage"]
    storage = body["checks"]["storage"]
    assert storage["error"] and "write check failed" in storage["write_check"]["error"]
    assert body["checks"]["kv"]["ok"] is True

    await s3.create_bucket(Bucket=bucket)
    body = await wait_status(client, 200)
    assert body["checks"]["storage"]["write_check"]["ok"] is True


async def test_s3_unreachable_at_start(bucket, redis_addr, aiohttp_client):
    cfg = config.load(env_for(f"http://127.0.0.1:{free_port()}", bucket, redis_addr[1],
                              ZE_WORKER_S3_CONNECTION_TIMEOUT_MS="300"))
    started = time.monotonic()
    client = await aiohttp_client(make_app(cfg))
    assert time.monotonic() - started < 5, "startup waits at most the readiness timeout"
    status, body = await ready(client)
    assert status == 503 and body["failing"] == ["storage"]
    assert (await client.get("/healthz")).status == 200


# --- bounded answers (hanging backends) -----------------------------------------------------


class HangingPingS3(S3Storage):
    """The real S3 backend whose ping never answers."""

    async def ping(self) -> None:
        await asyncio.sleep(3600)


class HangingPingRedis(RedisKV):
    """The real Redis backend whose ping never answers."""

    async def ping(self) -> None:
        await asyncio.sleep(3600)


class HangingPutS3(S3Storage):
    """The real S3 backend whose writes never finish."""

    async def put(self, key, chunks, size=None) -> None:
        await asyncio.sleep(3600)


def with_backends(cfg: config.Config, storage: type | None = None, kv: type | None = None) -> config.Config:
    if storage is not None:
        cfg = attrs.evolve(cfg, storage=attrs.evolve(cfg.storage, cls=storage))
    if kv is not None:
        cfg = attrs.evolve(cfg, kv=attrs.evolve(cfg.kv, cls=kv))
    return cfg


async def test_hanging_ping_is_reported_as_timed_out(s3_endpoint, bucket, redis_addr, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, redis_addr[1], ZE_WORKER_READINESS_TIMEOUT_MS="300"))
    client = await aiohttp_client(make_app(with_backends(cfg, storage=HangingPingS3)))
    started = time.monotonic()
    status, body = await ready(client)
    assert time.monotonic() - started < 1.0
    assert status == 503 and body["failing"] == ["storage"]
    storage = body["checks"]["storage"]
    assert storage["timed_out"] is True and "timed out after 300 ms" in storage["error"]
    assert body["checks"]["kv"]["ok"] is True


async def test_readiness_never_exceeds_two_seconds(s3_endpoint, bucket, redis_addr, aiohttp_client):
    cfg = config.load(env_for(s3_endpoint, bucket, redis_addr[1], ZE_WORKER_READINESS_TIMEOUT_MS="60000"))
    client = await aiohttp_client(make_app(with_backends(cfg, storage=HangingPingS3, kv=HangingPingRedis)))
    started = time.monotonic()
    status, body = await ready(client, expect_within=2.5)
    assert 1.9 < time.monotonic() - started < 2.5
    assert status == 503 and body["failing"] == ["storage", "kv"]
    assert body["checks"]["kv"]["timed_out"] is True


async def test_hanging_write_check_times_out(s3_endpoint, bucket, redis_addr, aiohttp_client, monkeypatch):
    monkeypatch.setattr(health, "WRITE_CHECK_TIMEOUT_S", 0.3)
    cfg = config.load(env_for(s3_endpoint, bucket, redis_addr[1]))
    client = await aiohttp_client(make_app(with_backends(cfg, storage=HangingPutS3)))
    body = await wait_status(client, 503, timeout=5.0, predicate=lambda b: "write_check" in b["checks"]["storage"])
    write = body["checks"]["storage"]["write_check"]
    assert write["ok"] is False and write["timed_out"] is True and "timed out" in write["error"]
    assert body["failing"] == ["storage"]


# --- redaction ------------------------------------------------------------------------------


async def test_check_results_mask_configured_secrets():
    async def leaky() -> None:
        raise BackendError("redis", f"AUTH {REDIS_PASSWORD} refused")

    async def fine() -> None:
        return None

    results = await health.run_checks({"kv": leaky(), "storage": fine()}, 1.0)
    shown = results["kv"].to_json(Redactor(SECRETS))
    assert shown["ok"] is False and REDIS_PASSWORD not in json.dumps(shown) and "***" in shown["error"]
    assert results["storage"].ok


async def test_short_secrets_are_masked_as_words_only_in_check_results():
    async def leaky() -> None:
        raise BackendError("redis", "AUTH redis refused: WRONGPASS invalid username-password pair")

    results = await health.run_checks({"kv": leaky()}, 1.0)
    shown = results["kv"].to_json(Redactor(["redis", "a"]))
    assert shown["error"] == "***: AUTH *** refused: WRONGPASS invalid username-password pair"
