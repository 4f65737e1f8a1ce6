"""``zephyr-edge publish`` / ``rollback`` / ``versions``, run as subprocesses of the real
console script against real KV backends: the embedded ``local`` one in a temporary data
dir, and Redis (``redis_addr``) under a unique ``{ze-test-<uuid>}`` hash tag. Snapshots are
seeded in process through ``Catalog.save_snapshot``; results are read back the same way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest

from tests.services import free_port
from zephyr_edge.settings import config
from zephyr_edge.domain.hostnames import version_host
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.domain.snapshot import Snapshot, parse_snapshot
from zephyr_edge import plugins

SCRIPT = str(Path(sys.executable).with_name("zephyr-edge"))
JWT_SECRET = "jwt-secret-admin-0123456789abcdef01234567"
UID = "shop.frontend.acme"
OTHER_UID = "blog.frontend.acme"
EDGE = "ze.example.com"
RUN_TIMEOUT_S = 60.0
#: Redis calls to a closed port: connect timeout + command timeout, each 500 ms.
UNAVAILABLE_BOUND_S = 15.0


def snapshot(build: int, uid: str = UID, created_at: int | None = None) -> Snapshot:
    """A valid snapshot of ``uid`` for build ``build`` (created ``build`` minutes after 2024-01-01)."""
    body = {
        "application_uid": uid,
        "snapshot_id": f"tester-{build}.{uid}",
        "version": f"1.0.{build}-tester.{build}",
        "createdAt": 1704067200000 + build * 60000 if created_at is None else created_at,
        "type": "csr",
        "assets": {
            "index.html": {"path": "index.html", "extname": ".html", "hash": f"{build:064x}", "size": 10 + build},
            "assets/main.js": {"path": "assets/main.js", "extname": ".js", "hash": f"{build + 100:064x}", "size": 5},
        },
    }
    return parse_snapshot(json.dumps(body).encode(), None)


def vhost(s: Snapshot) -> str:
    return version_host(s.snapshot_id, EDGE, "-")


class Backend:
    """One worker configuration (environment) on a real KV, with in-process access."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.config = config.load(env)

    @contextlib.asynccontextmanager
    async def catalog(self) -> AsyncIterator[Catalog]:
        async with plugins.open_kv(self.config) as kv:
            yield Catalog(kv, self.config.worker)

    async def seed(self, *snapshots: Snapshot) -> None:
        async with self.catalog() as cat:
            for s in snapshots:
                await cat.save_snapshot(s, vhost(s))

    async def live(self, host: str) -> str | None:
        async with self.catalog() as cat:
            s = await cat.live(host)
            return None if s is None else s.snapshot_id

    async def generation(self) -> int:
        async with self.catalog() as cat:
            return await cat.generation()

    async def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(run, *args, env=self.env if env is None else env)

    async def publish(self, host: str, s: Snapshot) -> subprocess.CompletedProcess:
        return await self.run("publish", "--host", host, "--snapshot", s.snapshot_id)


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without ZE_WORKER_* keys, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def local_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(
        ZE_WORKER_JWT_SECRET=JWT_SECRET,
        ZE_WORKER_STORAGE_BACKEND="local",
        ZE_WORKER_KV_BACKEND="local",
        ZE_WORKER_DATA_DIR=str(tmp_path / "data"),
    )


def redis_env(host: str, port: int, tag: str, **extra: str) -> dict[str, str]:
    return clean_env(
        ZE_WORKER_JWT_SECRET=JWT_SECRET,
        ZE_WORKER_STORAGE_BACKEND="local",  # not opened by admin commands
        ZE_WORKER_KV_BACKEND="redis",
        ZE_WORKER_REDIS_HOST=host,
        ZE_WORKER_REDIS_PORT=str(port),
        ZE_WORKER_REDIS_PREFIX_ENVS=f"{tag}:envs:",
        ZE_WORKER_REDIS_PREFIX_SNAPSHOTS=f"{tag}:snapshots:",
        **extra,
    )


async def drop_keys(host: str, port: int, tag: str) -> None:
    async with coredis.Redis(host=host, port=port, connect_timeout=2, stream_timeout=5) as client:
        keys = [k async for k in client.scan_iter(match=tag.replace("{", "\\{").replace("}", "\\}") + "*")]
        if keys:
            await client.delete(keys)


@pytest.fixture(params=["local", "redis"])
async def backend(request, tmp_path):
    if request.param == "local":
        yield Backend(local_env(tmp_path))
        return
    host, port = request.getfixturevalue("redis_addr")
    tag = "{ze-test-%s}" % uuid.uuid4().hex
    try:
        yield Backend(redis_env(host, port, tag))
    finally:
        await asyncio.wait_for(drop_keys(host, port, tag), 10)


# --- publish and rollback -------------------------------------------------------------------


async def test_publish_then_rollback(backend):
    s1, s2, other = snapshot(1), snapshot(2), snapshot(1, OTHER_UID)
    await backend.seed(s1, s2, other)
    gen0 = await backend.generation()

    result = await backend.run(
        "publish", "--host", "staging.shop.example.com", "--host", "HTTPS://WWW.Shop.Example.COM:443/",
        "--host", "staging.shop.example.com.", "--snapshot", s2.snapshot_id,
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    (line,) = result.stdout.splitlines()  # one JSON line
    out = json.loads(line)
    assert out == {
        "action": "publish", "ok": True, "application_uid": UID, "snapshot_id": s2.snapshot_id,
        "version": "1.0.2-tester.2",
        "hosts": ["staging.shop.example.com", "www.shop.example.com"],  # normalised, deduplicated
        "previous": {"staging.shop.example.com": None, "www.shop.example.com": None},
    }
    assert await backend.live("staging.shop.example.com") == s2.snapshot_id
    assert await backend.live("www.shop.example.com") == s2.snapshot_id
    gen1 = await backend.generation()
    assert gen1 > gen0  # running workers drop their hostname caches

    # rollback: the same command with the older id (alias `rollback`)
    result = await backend.run("rollback", "--host", "www.shop.example.com", "--snapshot", s1.snapshot_id)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["action"] == "rollback" and out["snapshot_id"] == s1.snapshot_id
    assert out["previous"] == {"www.shop.example.com": s2.snapshot_id}
    assert await backend.live("www.shop.example.com") == s1.snapshot_id
    assert await backend.live("staging.shop.example.com") == s2.snapshot_id  # untouched
    assert await backend.generation() > gen1
    # the other app's version host still serves the other app
    assert await backend.live(vhost(other)) == other.snapshot_id


async def test_unknown_snapshot_exits_1_and_writes_nothing(backend):
    await backend.seed(snapshot(1))
    gen0 = await backend.generation()
    result = await backend.run("publish", "--host", "staging.shop.example.com", "--snapshot", f"tester-9.{UID}")
    assert result.returncode == 1
    no_traceback(result)
    assert result.stdout == ""
    assert f"tester-9.{UID}" in result.stderr and "not stored" in result.stderr
    assert await backend.live("staging.shop.example.com") is None
    assert await backend.generation() == gen0


@pytest.mark.parametrize(
    "bad", ["bad host", "app.example.com/path", "http://", "", "exa mple.com", "a..b", "a" * 64 + ".com"]
)
async def test_invalid_host_exits_2_and_writes_nothing(tmp_path, bad):
    b = Backend(local_env(tmp_path))
    s1 = snapshot(1)
    await b.seed(s1)
    result = await b.run("publish", "--host", "ok.example.com", f"--host={bad}", "--snapshot", s1.snapshot_id)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "invalid hostname" in result.stderr and repr(bad) in result.stderr
    assert await b.live("ok.example.com") is None


async def test_missing_arguments_exit_2(tmp_path):
    env = local_env(tmp_path)
    for args in (["publish", "--snapshot", "x.a"], ["publish", "--host", "a.example.com"], ["versions"]):
        result = await asyncio.to_thread(run, *args, env=env)
        assert result.returncode == 2, args
        assert "required" in result.stderr
        no_traceback(result)


async def test_version_hostnames_never_move(backend):
    s1, s2 = snapshot(1), snapshot(2)
    await backend.seed(s1, s2)
    result = await backend.run("publish", "--host", vhost(s1), "--snapshot", s2.snapshot_id)
    assert result.returncode == 1
    no_traceback(result)
    assert "version hostname" in result.stderr and s1.snapshot_id in result.stderr
    assert await backend.live(vhost(s1)) == s1.snapshot_id
    # re-publishing a version host to its own snapshot is harmless
    result = await backend.run("publish", "--host", vhost(s1), "--snapshot", s1.snapshot_id)
    assert result.returncode == 0, result.stderr


async def test_hostname_of_another_application_needs_force(backend):
    mine, theirs = snapshot(1), snapshot(1, OTHER_UID)
    await backend.seed(mine, theirs)
    assert (await backend.publish("blog.example.com", theirs)).returncode == 0
    result = await backend.run("publish", "--host", "blog.example.com", "--snapshot", mine.snapshot_id)
    assert result.returncode == 1
    no_traceback(result)
    assert OTHER_UID in result.stderr and "--force" in result.stderr and result.stdout == ""
    assert await backend.live("blog.example.com") == theirs.snapshot_id
    result = await backend.run("publish", "--host", "blog.example.com", "--snapshot", mine.snapshot_id, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["previous"] == {"blog.example.com": theirs.snapshot_id}
    assert await backend.live("blog.example.com") == mine.snapshot_id


async def test_configuration_errors_exit_2(tmp_path):
    result = await asyncio.to_thread(run, "publish", "--host", "a.example.com", "--snapshot", "x.a", env=clean_env())
    assert result.returncode == 2
    assert "ZE_WORKER_JWT_SECRET" in result.stderr
    no_traceback(result)
    bad = local_env(tmp_path) | {"ZE_WORKER_REDIS_PREFIX_ENVS": "no-tag:envs:"}
    result = await asyncio.to_thread(run, "versions", "--app", UID, env=bad)
    assert result.returncode == 2 and "ZE_WORKER_REDIS_PREFIX_ENVS" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize("args", [["publish", "--host", "a.example.com", "--snapshot", f"tester-1.{UID}"],
                                  ["versions", "--app", UID]])
async def test_unreachable_backend_exits_1_quickly(args):
    env = redis_env(
        "127.0.0.1", free_port(), "{ze-test-%s}" % uuid.uuid4().hex,
        ZE_WORKER_REDIS_CONNECT_TIMEOUT_MS="500", ZE_WORKER_REDIS_COMMAND_TIMEOUT_MS="500",
    )
    started = time.monotonic()
    result = await asyncio.to_thread(run, *args, env=env)
    assert time.monotonic() - started < UNAVAILABLE_BOUND_S
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert "unavailable" in result.stderr and result.stdout == ""
    assert JWT_SECRET not in result.stderr


# --- versions -------------------------------------------------------------------------------


async def test_versions_json_newest_first_with_hostnames(backend):
    s1, s2, s3 = snapshot(1), snapshot(2), snapshot(3)
    await backend.seed(s2, s3, s1, snapshot(5, OTHER_UID))
    assert (await backend.publish("www.shop.example.com", s2)).returncode == 0
    assert (await backend.publish("staging.shop.example.com", s3)).returncode == 0
    assert (await backend.publish("staging.shop.example.com", s1)).returncode == 0

    result = await backend.run("versions", "--app", UID, "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [v["snapshot_id"] for v in listed] == [s3.snapshot_id, s2.snapshot_id, s1.snapshot_id]
    by_id = {v["snapshot_id"]: v for v in listed}
    assert by_id[s3.snapshot_id]["hosts"] == [vhost(s3)]
    assert sorted(by_id[s2.snapshot_id]["hosts"]) == sorted([vhost(s2), "www.shop.example.com"])
    assert sorted(by_id[s1.snapshot_id]["hosts"]) == sorted([vhost(s1), "staging.shop.example.com"])
    assert by_id[s1.snapshot_id] | {"hosts": None} == {
        "snapshot_id": s1.snapshot_id, "application_uid": UID, "version": "1.0.1-tester.1",
        "created_at": 1704067260000, "created": "2024-01-01T00:01:00Z", "assets": 2, "hosts": None,
    }

    table = await backend.run("versions", "--app", UID)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SNAPSHOT", "VERSION", "CREATED", "(UTC)", "ASSETS", "HOSTNAMES"]
    ids = [ln.split()[0] for ln in lines[1:] if ln and not ln.startswith(" ")]
    assert ids == [s3.snapshot_id, s2.snapshot_id, s1.snapshot_id]
    assert "www.shop.example.com" in table.stdout and "2024-01-01T00:03:00Z" in table.stdout
    assert OTHER_UID not in table.stdout


async def test_versions_of_an_unknown_app_exits_1(backend):
    await backend.seed(snapshot(1))
    result = await backend.run("versions", "--app", "nothing.here.acme", "--json")
    assert result.returncode == 1 and json.loads(result.stdout) == []  # still valid JSON for scripts
    assert "unknown application 'nothing.here.acme'" in result.stderr
    result = await backend.run("versions", "--app", "nothing.here.acme")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown application 'nothing.here.acme'" in result.stderr
    no_traceback(result)
    assert (await backend.run("versions", "--app", UID)).returncode == 0
