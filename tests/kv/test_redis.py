"""The Redis KV: the conformance suite against a standalone server and a 3-master cluster
(auto-detected by ``redis`` and forced by ``redis-cluster``), plus what only Redis has:
options from the environment, databases, authentication, bounded calls, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.services import RedisCluster, RedisServer, free_port
from zephyr_edge.settings import config
from zephyr_edge.errors import BackendError, BackendUnavailable, ConfigError
from zephyr_edge.kv.base import Set, SetAdd
from zephyr_edge.kv.redis import RedisClusterKV, RedisKV
from zephyr_edge.kv.testing import KVConformance
from zephyr_edge import plugins

SECRET = "s3cret-never-shown"
#: Tags spread over every master of a 3-master cluster.
SPREAD_TAGS = [f"ze-test-spread-{i}" for i in range(30)]
RECOVERY_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0


def load(backend: str, host: str, port: int, **settings: object) -> config.Config:
    """The configuration the worker would build from these ``ZE_WORKER_*`` strings."""
    env = {
        "ZE_WORKER_JWT_SECRET": "test-jwt-secret",
        "ZE_WORKER_STORAGE_BACKEND": "local",
        "ZE_WORKER_KV_BACKEND": backend,
        "ZE_WORKER_REDIS_HOST": host,
        "ZE_WORKER_REDIS_PORT": str(port),
    }
    env.update({f"ZE_WORKER_REDIS_{name.upper()}": str(value) for name, value in settings.items()})
    return config.load(env)


@contextlib.asynccontextmanager
async def open_kv(backend: str, host: str, port: int, **settings: object) -> AsyncIterator[RedisKV]:
    cfg = load(backend, host, port, **settings)
    async with plugins.open_kv(cfg) as kv:
        yield kv


async def eventually(check, timeout: float = RECOVERY_TIMEOUT_S) -> None:
    """Run ``check`` until it stops raising BackendError (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except BackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def assert_unavailable_fast(call, bound: float = 5.0) -> BackendUnavailable:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await call()
    assert time.monotonic() - started < bound
    return caught.value


# --- the conformance suite, three ways ---------------------------------------------------


class TestRedisStandalone(KVConformance):
    @pytest_asyncio.fixture
    async def kv(self, redis_addr):
        async with open_kv("redis", *redis_addr) as kv:
            yield kv

    @pytest_asyncio.fixture
    async def kv2(self, redis_addr, kv):
        async with open_kv("redis", *redis_addr) as second:
            yield second

    @pytest_asyncio.fixture
    async def unreachable_kv(self):
        async with open_kv("redis", "127.0.0.1", free_port(), password=SECRET, username="ze-user") as kv:
            yield kv

    @pytest.fixture
    def secrets(self):
        return [SECRET]

    @pytest.mark.asyncio
    async def test_detects_a_standalone_server(self, kv):
        assert kv.mode is None, "nothing is asked before the first call"
        await kv.ping()
        assert kv.mode == "standalone"


class TestRedisClusterDetected(KVConformance):
    """``redis`` pointed at a cluster node finds out it is a cluster."""

    @pytest_asyncio.fixture
    async def kv(self, redis_cluster_nodes):
        async with open_kv("redis", *redis_cluster_nodes[0]) as kv:
            yield kv

    @pytest_asyncio.fixture
    async def kv2(self, redis_cluster_nodes, kv):
        async with open_kv("redis-cluster", *redis_cluster_nodes[-1]) as second:
            yield second

    @pytest_asyncio.fixture
    async def unreachable_kv(self):
        async with open_kv("redis", "127.0.0.1", free_port(), password=SECRET) as kv:
            yield kv

    @pytest.fixture
    def secrets(self):
        return [SECRET]

    @pytest.mark.asyncio
    async def test_detects_the_cluster(self, kv):
        await kv.ping()
        assert kv.mode == "cluster"


class TestRedisClusterForced(KVConformance):
    @pytest_asyncio.fixture
    async def kv(self, redis_cluster_nodes):
        async with open_kv("redis-cluster", *redis_cluster_nodes[0]) as kv:
            assert isinstance(kv, RedisClusterKV) and kv.mode == "cluster"
            yield kv

    @pytest_asyncio.fixture
    async def kv2(self, redis_cluster_nodes, kv):
        async with open_kv("redis-cluster", *redis_cluster_nodes[1]) as second:
            yield second

    @pytest_asyncio.fixture
    async def unreachable_kv(self):
        async with open_kv("redis-cluster", "127.0.0.1", free_port(), password=SECRET) as kv:
            yield kv

    @pytest.fixture
    def secrets(self):
        return [SECRET]


# --- options -------------------------------------------------------------------------------


def test_options_from_environment_strings():
    cfg = load(
        "redis", "redis.internal", 6380, password=SECRET, tls="true", db="3", username="ze",
        tls_ca_file="/etc/ca.pem", connect_timeout_ms="1500", command_timeout_ms="2500",
    )
    options = cfg.kv.options
    assert (options.host, options.port, options.password, options.tls, options.db) == (
        "redis.internal", 6380, SECRET, True, 3,
    )
    assert (options.username, options.tls_ca_file, options.connect_timeout_ms, options.command_timeout_ms) == (
        "ze", "/etc/ca.pem", 1500, 2500,
    )
    assert SECRET not in repr(options)
    assert config.describe(cfg)["ZE_WORKER_REDIS_PASSWORD"]["value"] == "***"
    defaults = load("redis-cluster", "h", 6379).kv
    assert defaults.cls is RedisClusterKV
    assert (defaults.options.port, defaults.options.db, defaults.options.tls) == (6379, 0, False)


def test_invalid_options_are_all_reported():
    with pytest.raises(ConfigError) as caught:
        config.load({
            "ZE_WORKER_JWT_SECRET": "x", "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "redis",
            "ZE_WORKER_REDIS_PORT": "0", "ZE_WORKER_REDIS_DB": "-1", "ZE_WORKER_REDIS_COMMAND_TIMEOUT_MS": "0",
        })
    text = "\n".join(caught.value.problems)
    for key in ("ZE_WORKER_REDIS_HOST", "ZE_WORKER_REDIS_PORT", "ZE_WORKER_REDIS_DB", "ZE_WORKER_REDIS_COMMAND_TIMEOUT_MS"):
        assert key in text, text


async def test_unreadable_ca_file_is_reported_at_open(tmp_path):
    cfg = load("redis", "127.0.0.1", 6379, tls="true", tls_ca_file=tmp_path / "missing.pem")
    with pytest.raises(BackendError, match="ZE_WORKER_REDIS_TLS_CA_FILE"):
        async with plugins.open_kv(cfg):
            pass


# --- databases ------------------------------------------------------------------------------


async def test_db_selects_another_database(redis_addr, unique):
    key = f"{{ze-test-{unique}}}:db"
    async with open_kv("redis", *redis_addr, db=5) as db5, open_kv("redis", *redis_addr) as db0:
        try:
            await db5.set(key, b"in-5")
            assert await db5.get(key) == b"in-5"
            assert await db0.get(key) is None
        finally:
            await db5.delete(key)


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_db_on_a_cluster_is_a_clear_error(redis_cluster_nodes, backend):
    async with open_kv(backend, *redis_cluster_nodes[0], db=2) as kv:
        for _ in range(2):
            with pytest.raises(BackendError) as caught:
                await kv.ping()
            assert not isinstance(caught.value, BackendUnavailable)
            assert "ZE_WORKER_REDIS_DB" in str(caught.value) and "Cluster" in str(caught.value)


# --- authentication ------------------------------------------------------------------------


class AuthRedisServer(RedisServer):
    """A RedisServer started with ``requirepass`` (tests.services.RedisServer cannot pass
    extra arguments yet)."""

    def __init__(self, password: str):
        super().__init__()
        self.password = password

    def start(self) -> AuthRedisServer:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.workdir, "--daemonize", "no",
                "--requirepass", self.password,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._cli("PING") != "PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.cleanup()
                raise RuntimeError(f"redis-server with a password did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def _cli(self, *args: str) -> str:
        try:
            out = subprocess.run(
                ["redis-cli", "--no-auth-warning", "-a", self.password, "-h", "127.0.0.1", "-p", str(self.port), *args],
                capture_output=True, text=True, timeout=5,
            )
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip()


@pytest.fixture
def auth_server():
    server = AuthRedisServer(SECRET).start()
    try:
        yield server
    finally:
        server.cleanup()


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    seen = 0
    while exc is not None and seen < 20:
        text = f"{exc} {exc!r}"
        assert not any(s in text for s in secrets), f"a secret leaks through {type(exc).__name__}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_wrong_password_is_an_authentication_error_without_the_password(auth_server, backend):
    wrong = "wrong-" + SECRET
    async with open_kv(backend, "127.0.0.1", auth_server.port, password=wrong) as kv:
        for call in (kv.ping, lambda: kv.set("{ze-test-auth}:k", b"v")):
            with pytest.raises(BackendUnavailable) as caught:  # an outage (503), not a request fault
                await call()
            assert "authentication failed" in str(caught.value)
            assert caught.value.__cause__ is not None
            assert_no_secret(caught.value, wrong, SECRET)
    async with open_kv("redis", "127.0.0.1", auth_server.port) as kv:
        with pytest.raises(BackendError, match="authentication failed"):
            await kv.get("{ze-test-auth}:k")
    async with open_kv("redis", "127.0.0.1", auth_server.port, password=SECRET) as kv:
        await kv.ping()
        await kv.set("{ze-test-auth}:k", b"v")
        assert await kv.get("{ze-test-auth}:k") == b"v"


async def test_acl_username(auth_server):
    user_password = "user-" + SECRET
    assert auth_server._cli("ACL", "SETUSER", "ze-user", "on", f">{user_password}", "~*", "+@all") == "OK"
    async with open_kv("redis", "127.0.0.1", auth_server.port, username="ze-user", password=user_password) as kv:
        await kv.set("{ze-test-acl}:k", b"v")
        assert await kv.get("{ze-test-acl}:k") == b"v"
    async with open_kv("redis", "127.0.0.1", auth_server.port, username="ze-user", password=SECRET) as kv:
        with pytest.raises(BackendUnavailable, match="authentication failed") as caught:
            await kv.ping()
        assert_no_secret(caught.value, SECRET, user_password)


async def test_refused_credentials_answer_503_on_data_requests(auth_server, aiohttp_client, tmp_path):
    """A wrong password (or an ACL user without the needed commands) is an outage like any
    other: 503 with Retry-After on every data request, never ``500 backend_error``; the
    liveness route still answers."""
    from zephyr_edge.domain import tokens
    from zephyr_edge.http.app import make_app

    limited_password = "limited-" + SECRET
    assert auth_server._cli("ACL", "SETUSER", "ze-limited", "on", f">{limited_password}", "~*", "+ping") == "OK"
    jwt_secret = "test-jwt-secret-0123456789abcdef"
    for credentials in ({"password": "wrong-" + SECRET}, {"username": "ze-limited", "password": limited_password}):
        cfg = config.load({
            "ZE_WORKER_JWT_SECRET": jwt_secret, "ZE_WORKER_STORAGE_BACKEND": "local",
            "ZE_WORKER_DATA_DIR": str(tmp_path / "data"), "ZE_WORKER_KV_BACKEND": "redis",
            "ZE_WORKER_REDIS_HOST": "127.0.0.1", "ZE_WORKER_REDIS_PORT": str(auth_server.port),
            **{f"ZE_WORKER_REDIS_{k.upper()}": v for k, v in credentials.items()},
        })
        client = await aiohttp_client(make_app(cfg))
        try:
            token = {"can_write_jwt": tokens.mint(jwt_secret, "web.repo.org")}
            snapshot = {"application_uid": "web.repo.org", "snapshot_id": "t-1.web.repo.org", "assets": {}}
            for method, path, kwargs in (
                ("GET", "/__get_application_hash_list__?application_uid=web.repo.org", {}),
                ("GET", "/index.html", {"headers": {"Host": "app.example.com"}}),
                ("POST", "/upload?type=snapshot&skip_assets=true", {"headers": token, "json": snapshot}),
            ):
                resp = await client.request(method, path, **kwargs)
                text = await resp.text()
                assert resp.status == 503, (credentials, path, text)
                assert resp.headers["Retry-After"] and "backend_unavailable" in text
                assert SECRET not in text and "Traceback" not in text
            assert (await client.get("/healthz")).status == 200
        finally:
            await client.close()


# --- bounded calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_a_server_that_never_answers_fails_within_the_timeouts(backend):
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with open_kv(backend, "127.0.0.1", port, connect_timeout_ms=300, command_timeout_ms=500) as kv:
            for call in (
                kv.ping,
                lambda: kv.get("{ze-test-silent}:k"),
                lambda: kv.atomic([Set("{ze-test-silent}:k", b"v")]),
                lambda: kv.atomic_if({"{ze-test-silent}:k": None}, [Set("{ze-test-silent}:k", b"v")]),
            ):
                await assert_unavailable_fast(call, bound=2.5)
    finally:
        server.close()


async def test_a_client_whose_task_died_is_replaced_on_next_use(redis_addr, unique):
    key = f"{{ze-test-{unique}}}:k"
    async with open_kv("redis", *redis_addr) as kv:
        await kv.set(key, b"v")
        held = kv._clients._held
        held._task.cancel()  # as if the client's task group had crashed
        await asyncio.wait([held._task], timeout=5)
        assert not held.alive
        try:
            assert await kv.get(key) == b"v"
            assert kv._clients._held is not held and kv._clients._held.alive
        finally:
            await kv.delete(key)


async def test_open_does_not_connect():
    started = time.monotonic()
    async with open_kv("redis", "127.0.0.1", free_port()) as kv:
        assert kv.mode is None
    assert time.monotonic() - started < 1


# --- recovery --------------------------------------------------------------------------------


async def test_standalone_recovers_after_a_restart():
    server = RedisServer().start()
    try:
        async with open_kv("redis", "127.0.0.1", server.port, command_timeout_ms=1000) as kv:
            await kv.set("{ze-test-restart}:k", b"v1")
            server.stop()
            await assert_unavailable_fast(kv.ping)
            await assert_unavailable_fast(lambda: kv.get("{ze-test-restart}:k"))
            server.start()
            await eventually(kv.ping)
            await kv.set("{ze-test-restart}:k", b"v2")
            assert await kv.get("{ze-test-restart}:k") == b"v2"
    finally:
        server.cleanup()


async def test_detection_is_retried_until_the_server_answers():
    server = RedisServer()  # not started yet: the worker starts first
    try:
        async with open_kv("redis", "127.0.0.1", server.port) as kv:
            await assert_unavailable_fast(kv.ping)
            assert kv.mode is None
            server.start()
            await eventually(kv.ping)
            assert kv.mode == "standalone"
    finally:
        server.cleanup()


async def _spread_round_trip(kv: RedisKV, value: bytes) -> None:
    """Write and read one key on every master (30 tags cover the 3 masters' slot ranges)."""
    keys = [f"{{{tag}}}:k" for tag in SPREAD_TAGS]
    for k in keys:
        await kv.atomic([Set(k, value), SetAdd(k + ":set", [value])])
    assert await kv.get_many(keys) == [value] * len(keys)


async def test_cluster_recovers_after_node_and_full_restarts():
    cluster = RedisCluster().start()
    try:
        host, port = cluster.startup_nodes[0]
        async with open_kv("redis", host, port, command_timeout_ms=1000) as kv:
            await kv.ping()
            assert kv.mode == "cluster"
            await _spread_round_trip(kv, b"before")

            cluster.nodes[1].stop()  # one master down: the cluster cannot serve all slots
            error = await assert_unavailable_fast(kv.ping)
            assert str(cluster.nodes[1].port) in str(error), f"ping should name the node: {error}"
            cluster.nodes[1].start()
            cluster.wait_ok()
            await eventually(kv.ping)
            await eventually(lambda: _spread_round_trip(kv, b"after-node"))

            cluster.stop()  # every node down
            await assert_unavailable_fast(kv.ping)
            await assert_unavailable_fast(lambda: kv.get(f"{{{SPREAD_TAGS[0]}}}:k"))
            for node in cluster.nodes:
                node.start()
            cluster.wait_ok()
            await eventually(kv.ping)
            await eventually(lambda: _spread_round_trip(kv, b"after-all"))
    finally:
        cluster.cleanup()
