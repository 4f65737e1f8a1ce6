"""The example third-party KV backend, ``examples/zephyr-edge-pgkv``, on a real PostgreSQL.

It is loaded by name through its entry point and configured from ``ZE_WORKER_*`` strings,
exactly as a worker does, then run through the shipped :class:`KVConformance` suite plus
the checks specific to it. The distribution must be installed
(``pip install ./examples/zephyr-edge-pgkv``; CI does): without it these tests fail, they
do not skip.

PostgreSQL: ``ZE_TEST_PG_DSN``, by default the machine's server on 127.0.0.1:5432. Each test
uses its own table prefix and drops its tables afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio

from tests import requirements
from tests.services import free_port
from zephyr_edge import plugins
from zephyr_edge.settings import config
from zephyr_edge.errors import BackendUnavailable, ConfigError, PluginNotFound
from zephyr_edge.kv.base import Set
from zephyr_edge.kv.testing import KeyFactory, KVConformance

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: A password that must never show in an error message (the unreachable DSN carries it).
PASSWORD = "pw-never-in-messages-7c1e"
#: Bound of every wait in this module's own helpers.
TIMEOUT_S = 10.0


def pg_dsn() -> str:
    return os.environ.get("ZE_TEST_PG_DSN") or DEFAULT_DSN


def with_netloc(dsn: str, *, port: int, password: str | None = None) -> str:
    """``dsn`` pointed at 127.0.0.1:``port``, optionally with ``password``."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    userinfo = f"{user}:{password}" if password else (f"{user}:{parts.password}" if parts.password else user)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


def load_config(tmp_path, dsn: str, **pg: str) -> config.Config:
    """The worker's configuration, from env strings, with the postgres KV backend."""
    env = {
        "ZE_WORKER_JWT_SECRET": "test-jwt-secret",
        "ZE_WORKER_STORAGE_BACKEND": "local",
        "ZE_WORKER_DATA_DIR": str(tmp_path / "data"),
        "ZE_WORKER_KV_BACKEND": "postgres",
        "ZE_WORKER_POSTGRES_DSN": dsn,
        **{f"ZE_WORKER_POSTGRES_{name.upper()}": value for name, value in pg.items()},
    }
    return config.load(env)


async def drop_tables(prefix: str) -> None:
    import asyncpg  # a dependency of the plugin: present whenever the plugin is

    conn = await asyncpg.connect(pg_dsn(), timeout=TIMEOUT_S)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{prefix}_values", "{prefix}_members"', timeout=TIMEOUT_S)
    finally:
        await conn.close(timeout=TIMEOUT_S)


@contextlib.asynccontextmanager
async def opened(cfg: config.Config) -> AsyncIterator:
    async with plugins.open_kv(cfg) as kv:
        yield kv


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def postgresql():
    """A PostgreSQL server answers at the DSN's address (skip, or fail on CI, otherwise)."""
    parts = urlsplit(pg_dsn())
    requirements.service(parts.hostname or "127.0.0.1", parts.port or 5432,
                         "tests/kv/test_example_pgkv.py needs PostgreSQL (ZE_TEST_PG_DSN)")


@pytest.fixture(scope="module")
def backend_cls() -> type:
    """The class behind the name ``postgres``; a missing plugin is a failure, not a skip."""
    try:
        return plugins.load("kv", "postgres")
    except PluginNotFound as exc:
        pytest.fail(f"{exc}\nthe example plugin is not installed: pip install ./examples/zephyr-edge-pgkv")


@pytest_asyncio.fixture
async def table_prefix(backend_cls) -> AsyncIterator[str]:
    prefix = f"ze_test_{uuid.uuid4().hex[:12]}"
    yield prefix
    await drop_tables(prefix)


@pytest.fixture
def pg_config(tmp_path, table_prefix, backend_cls) -> config.Config:
    cfg = load_config(tmp_path, pg_dsn(), table_prefix=table_prefix)
    assert cfg.kv.cls is backend_cls
    return cfg


@pytest_asyncio.fixture
async def kv(pg_config):
    async with opened(pg_config) as kv:
        yield kv


@pytest_asyncio.fixture
async def kv2(pg_config):
    async with opened(pg_config) as kv:
        yield kv


@pytest_asyncio.fixture
async def unreachable_kv(tmp_path, table_prefix):
    cfg = load_config(tmp_path, with_netloc(pg_dsn(), port=free_port(), password=PASSWORD), table_prefix=table_prefix)
    async with opened(cfg) as kv:
        yield kv


@pytest.fixture
def secrets() -> list[str]:
    return [s for s in (PASSWORD, urlsplit(pg_dsn()).password) if s]


# --- the shipped suite --------------------------------------------------------------------


class TestPostgresKVConformance(KVConformance):
    """Every test of the KV contract, against the example plugin."""


# --- what is particular to this backend ---------------------------------------------------


def test_registered_under_its_name(backend_cls):
    ep = plugins.installed("kv")["postgres"]
    assert ep.value == "zephyr_edge_pgkv:PostgresKV"
    assert backend_cls.__name__ == "PostgresKV" and backend_cls.options_prefix == "POSTGRES"


def test_options_defaults_and_string_forms(tmp_path, backend_cls):
    cfg = load_config(tmp_path, pg_dsn())
    opts = cfg.kv.options
    assert (opts.table_prefix, opts.pool_size, opts.connect_timeout_ms, opts.command_timeout_ms) == (
        "zephyr_edge", 10, 2000, 5000,
    )
    assert cfg.sources["ZE_WORKER_POSTGRES_POOL_SIZE"] == "default"

    cfg = load_config(tmp_path, pg_dsn(), table_prefix="tenant_a", pool_size="3", command_timeout_ms="750")
    assert (cfg.kv.options.table_prefix, cfg.kv.options.pool_size, cfg.kv.options.command_timeout_ms) == (
        "tenant_a", 3, 750,
    )
    described = config.describe(cfg)
    assert described["ZE_WORKER_POSTGRES_DSN"]["value"] == "***"
    assert described["ZE_WORKER_POSTGRES_POOL_SIZE"] == {"value": 3, "source": "env"}


def test_invalid_options_are_all_reported_without_the_password(tmp_path, backend_cls):
    with pytest.raises(ConfigError) as info:
        load_config(
            tmp_path, f"mysql://root:{PASSWORD}@db/x", table_prefix="Robert'); DROP TABLE x;--",
            pool_size="0", connect_timeout_ms="soon",
        )
    problems = "\n".join(info.value.problems)
    for key in ("DSN", "TABLE_PREFIX", "POOL_SIZE", "CONNECT_TIMEOUT_MS"):
        assert f"ZE_WORKER_POSTGRES_{key}" in problems
    assert PASSWORD not in str(info.value)

    with pytest.raises(ConfigError, match="ZE_WORKER_POSTGRES_DSN is required"):
        load_config(tmp_path, "")


@pytest.mark.asyncio
async def test_tables_are_created_once_by_concurrent_workers(pg_config):
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(opened(pg_config)) for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*(w.set(f"{{t}}w{i}", b"x") for i, w in enumerate(workers))), TIMEOUT_S)
        assert await workers[0].get_many([f"{{t}}w{i}" for i in range(4)]) == [b"x"] * 4


@pytest.mark.asyncio
async def test_atomic_writers_in_opposite_orders_neither_deadlock_nor_interleave(kv, kv2):
    keys = [f"{{t}}k{i}" for i in range(6)]

    async def write(i: int) -> None:
        order = keys if i % 2 else keys[::-1]
        await (kv if i % 2 else kv2).atomic([Set(k, b"%d" % i) for k in order])

    async def read() -> None:
        for _ in range(20):
            values = await kv2.get_many(keys)
            assert len(set(values)) == 1, f"a reader saw half of an atomic write: {values}"

    await kv.atomic([Set(k, b"start") for k in keys])
    await asyncio.wait_for(asyncio.gather(*(write(i) for i in range(12)), read(), read()), TIMEOUT_S)


@pytest.mark.asyncio
async def test_statement_timeout_is_unavailable(tmp_path, pg_config, kv):
    """A statement stuck behind a lock ends at command_timeout_ms as BackendUnavailable."""
    await kv.set("{t}locked", b"0")
    cfg = load_config(tmp_path, pg_dsn(), table_prefix=pg_config.kv.options.table_prefix, command_timeout_ms="300")
    import asyncpg

    blocker = await asyncpg.connect(pg_dsn(), timeout=TIMEOUT_S)
    try:
        async with blocker.transaction(), opened(cfg) as impatient:
            table = f'"{pg_config.kv.options.table_prefix}_values"'
            await blocker.execute(f"SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE", "{t}locked")
            with pytest.raises(BackendUnavailable) as info:
                await asyncio.wait_for(impatient.set("{t}locked", b"1"), TIMEOUT_S)
            assert isinstance(info.value.__cause__, TimeoutError)
    finally:
        await blocker.close(timeout=TIMEOUT_S)
    assert await kv.get("{t}locked") == b"0"


@pytest.mark.asyncio
async def test_atomic_if_blocks_writers_of_keys_expected_absent(kv, kv2):
    """While ``atomic_if`` holds its transaction, a plain write of a key it expects absent
    waits, and then the conditional write has won."""
    k = "{t}claimed"
    started = asyncio.Event()
    original = kv._apply

    async def slow_apply(conn, op):  # hold the transaction open after the check
        started.set()
        await asyncio.sleep(0.3)
        await original(conn, op)

    kv._apply = slow_apply
    conditional = asyncio.create_task(kv.atomic_if({k: None}, [Set(k, b"conditional")]))
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    assert await kv2.get(k) is None, "the placeholder row must never be visible"
    assert await asyncio.wait_for(kv2.set_if_absent(k, b"plain"), TIMEOUT_S) is False
    assert await asyncio.wait_for(conditional, TIMEOUT_S) is True
    assert await kv2.get(k) == b"conditional"


@pytest.mark.asyncio
async def test_the_suite_catches_atomic_if_without_claiming_absent_keys(pg_config, tmp_path):
    """Without the placeholder rows, a set_if_absent slips in between the check and the
    write of an atomic_if expecting the key absent, and the shipped suite notices."""

    class NoClaim(pg_config.kv.cls):
        async def _claim(self, conn, expect):
            rows = await conn.fetch(self._sql.lock_rows, sorted(expect))
            current = {row["key"]: row["value"] for row in rows}
            return all(current.get(key) == want for key, want in expect.items())

    keys = KeyFactory()
    async with NoClaim.open(pg_config.kv.options, tmp_path) as kv, \
            NoClaim.open(pg_config.kv.options, tmp_path) as kv2:
        with pytest.raises(AssertionError, match="expected one"):
            await KVConformance().test_atomic_if_expecting_absent_races_set_if_absent(kv, kv2, keys)


class Forwarder:
    """A TCP forwarder on loopback to PostgreSQL: PostgreSQL "going down" and "coming back"
    without touching the real server."""

    def __init__(self, port: int, target: tuple[str, int]):
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and cut every open connection (idempotent)."""
        if self.server is None:
            return
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), TIMEOUT_S)
        await asyncio.wait_for(self.server.wait_closed(), TIMEOUT_S)
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), TIMEOUT_S)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(asyncio.current_task())

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.mark.asyncio
async def test_starts_while_postgres_is_down_and_recovers(tmp_path, table_prefix):
    target = urlsplit(pg_dsn())
    port = free_port()
    cfg = load_config(tmp_path, with_netloc(pg_dsn(), port=port), table_prefix=table_prefix)
    forwarder = Forwarder(port, (target.hostname or "127.0.0.1", target.port or 5432))

    try:
        async with opened(cfg) as kv:  # nothing listens yet: open() must not fail
            with pytest.raises(BackendUnavailable):
                await kv.ping()

            await forwarder.start()  # PostgreSQL "comes back"
            await kv.ping()
            await kv.set("{t}a", b"1")

            await forwarder.stop()  # "goes down" with connections open in the pool
            with pytest.raises(BackendUnavailable):
                await asyncio.wait_for(kv.get("{t}a"), TIMEOUT_S)

            await forwarder.start()
            # the first call may still meet a pooled connection that died with the forwarder
            for _ in range(3):
                with contextlib.suppress(BackendUnavailable):
                    assert await asyncio.wait_for(kv.get("{t}a"), TIMEOUT_S) == b"1"
                    break
            else:
                pytest.fail("the backend did not recover after PostgreSQL came back")
    finally:
        await forwarder.stop()
