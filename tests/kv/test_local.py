"""The embedded SQLite KV: the conformance suite on a temporary folder, plus what only a
local store has (several processes on one folder, surviving a restart, an unusable folder)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytest_asyncio

from zephyr_edge.errors import BackendError, BackendUnavailable
from zephyr_edge.kv.base import Set, SetAdd
from zephyr_edge.kv.local import LocalKV
from zephyr_edge.kv.testing import KVConformance

PROCESSES = 4
OPS_PER_PROCESS = 60
NX_KEYS = 10
CHILD_TIMEOUT_S = 90

# One worker process: waits for the "go" file so that all start together, then races the others.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from zephyr_edge.settings.config import WorkerConfig
    from zephyr_edge.kv.local import LocalKV

    async def main(data_dir, worker, ops, nx_keys):
        go = Path(data_dir) / "go"
        deadline = time.monotonic() + 30
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit("no go file")
            await asyncio.sleep(0.01)
        wins = []
        async with LocalKV.open(None, Path(data_dir)) as kv:
            for i in range(ops):
                await kv.incr("{t}:counter")
                if await kv.set_if_absent(f"{{t}}:nx-{i % nx_keys}", str(worker).encode()):
                    wins.append(i % nx_keys)
                await kv.sadd("{t}:members", f"{worker}-{i}".encode())
        print(json.dumps(wins))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    """
)


def unusable_dir(tmp_path: Path) -> Path:
    """A data dir that cannot exist: its parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "data"


class TestLocalKV(KVConformance):
    @pytest_asyncio.fixture
    async def kv(self, tmp_path):
        async with LocalKV.open(None, tmp_path) as kv:
            yield kv

    @pytest_asyncio.fixture
    async def kv2(self, tmp_path, kv):
        async with LocalKV.open(None, tmp_path) as second:
            yield second

    @pytest_asyncio.fixture
    async def unreachable_kv(self, tmp_path):
        async with LocalKV.open(None, unusable_dir(tmp_path)) as kv:
            yield kv


async def test_data_survives_close_and_reopen(tmp_path):
    async with LocalKV.open(None, tmp_path) as kv:
        await kv.atomic([Set("{t}:env", b"snapshot-1"), SetAdd("{t}:hashes", [b"h1", b"h2"])])
        assert await kv.incr("{t}:n") == 1
    async with LocalKV.open(None, tmp_path) as kv:
        assert await kv.get("{t}:env") == b"snapshot-1"
        assert await kv.smembers("{t}:hashes") == {b"h1", b"h2"}
        assert await kv.incr("{t}:n") == 2
    assert (tmp_path / "kv" / "kv.sqlite3").is_file()


async def test_processes_sharing_a_folder_count_correctly(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(n), str(OPS_PER_PROCESS), str(NX_KEYS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=CHILD_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"worker process failed:\n{err}"
    wins = [json.loads(out) for out, _ in outputs]
    per_key = [sum(w.count(k) for w in wins) for k in range(NX_KEYS)]
    assert per_key == [1] * NX_KEYS, f"set_if_absent winners per key: {per_key}"
    async with LocalKV.open(None, tmp_path) as kv:
        assert await kv.get("{t}:counter") == str(PROCESSES * OPS_PER_PROCESS).encode()
        assert len(await kv.smembers("{t}:members")) == PROCESSES * OPS_PER_PROCESS
        winners = await kv.get_many([f"{{t}}:nx-{k}" for k in range(NX_KEYS)])
    for k, value in enumerate(winners):
        assert k in wins[int(value)], f"nx-{k} holds worker {value!r}, which did not win it"


async def test_unusable_folder_opens_then_recovers(tmp_path):
    data_dir = unusable_dir(tmp_path)
    async with LocalKV.open(None, data_dir) as kv:  # must not raise
        with pytest.raises(BackendUnavailable) as caught:
            await kv.ping()
        message = str(caught.value)
        assert str(data_dir) in message and "Not a directory" in message, message
        (tmp_path / "a-file").unlink()  # the operator fixes the folder: same instance works
        await kv.set("{t}:k", b"v")
        assert await kv.get("{t}:k") == b"v"
        await kv.ping()


async def test_event_loop_runs_while_waiting_for_the_write_lock(tmp_path):
    async with LocalKV.open(None, tmp_path) as kv:
        await kv.set("{t}:k", b"before")
        holder = sqlite3.connect(tmp_path / "kv" / "kv.sqlite3", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            write = asyncio.create_task(kv.set("{t}:k", b"after"))
            await asyncio.sleep(0.5)
            assert not write.done(), "the write should wait for the lock"
            assert ticks >= 20, f"the event loop was blocked (only {ticks} ticks in 0.5 s)"
            holder.execute("COMMIT")
            await asyncio.wait_for(write, 5)
            task.cancel()
        finally:
            holder.close()
        assert await kv.get("{t}:k") == b"after"


async def test_incr_on_a_non_integer_is_a_backend_error(tmp_path):
    async with LocalKV.open(None, tmp_path) as kv:
        await kv.set("{t}:k", b"not a number")
        with pytest.raises(BackendError) as caught:
            await kv.incr("{t}:k")
        assert not isinstance(caught.value, BackendUnavailable)
        assert await kv.get("{t}:k") == b"not a number"


async def test_closed_backend_raises_backend_error(tmp_path):
    async with LocalKV.open(None, tmp_path) as kv:
        pass
    started = time.monotonic()
    with pytest.raises(BackendError, match="closed"):
        await kv.get("{t}:k")
    assert time.monotonic() - started < 1


# --- one large value must not slow down lookups of other keys ------------------------------------

BIG_VALUE_BYTES = 20 * 1024 * 1024
#: What the lookups below may read from the database file in all (a few pages each).
LOOKUP_READ_BUDGET = 1024 * 1024
#: The schema of versions before the keys-apart layout.
OLD_SCHEMA = (
    "CREATE TABLE kv_values (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE kv_set_members (key TEXT NOT NULL, member BLOB NOT NULL, PRIMARY KEY (key, member)) WITHOUT ROWID",
)


def _thread_read_bytes() -> int:
    """Bytes this thread has read through read()/pread() (Linux)."""
    with open("/proc/thread-self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _fill(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for i in range(40):
        conn.execute("INSERT INTO kv_values (key, value) VALUES (?, ?)", (f"k{i:02d}", b"small %d" % i))
    conn.execute("INSERT INTO kv_values (key, value) VALUES (?, ?)", ("k20-big", b"x" * BIG_VALUE_BYTES))
    conn.executemany("INSERT INTO kv_set_members (key, member) VALUES (?, ?)", [("s", b"a"), ("s", b"b")])
    conn.execute("COMMIT")


def _lookup_reads(conn: sqlite3.Connection) -> int:
    """Bytes read by lookups of missing keys (all around the large value) and small keys."""
    from zephyr_edge.kv import local_sql

    missing = [f"k{i:02d}-missing" for i in range(40)] + ["k20-bif", "k20-bih", "zzz", ""]
    before = _thread_read_bytes()
    assert [local_sql.get(conn, key) for key in missing] == [None] * len(missing)
    assert [local_sql.get(conn, f"k{i:02d}") for i in range(40)] == [b"small %d" % i for i in range(40)]
    assert local_sql.get_many(conn, ["k20-bif", "k00", "nope"]) == [None, b"small 0", None]
    return _thread_read_bytes() - before


@pytest.mark.skipif(not Path("/proc/thread-self/io").exists(), reason="needs Linux per-thread I/O counters")
def test_lookups_never_read_a_large_value_of_another_key(tmp_path):
    from zephyr_edge.kv import local_sql

    conn = local_sql.connect(tmp_path)
    try:
        _fill(conn)
        statements = ("SELECT value FROM kv_values WHERE key = ?", "SELECT key, value FROM kv_values WHERE key IN (?)")
        for statement in statements:
            plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, ("k",)))
            assert "USING INDEX" in plan and "SCAN" not in plan, plan
        read = _lookup_reads(conn)
        assert read < LOOKUP_READ_BUDGET, f"lookups read {read} bytes: the large value is read to compare keys"
        assert local_sql.get(conn, "k20-big") == b"x" * BIG_VALUE_BYTES
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/thread-self/io").exists(), reason="needs Linux per-thread I/O counters")
async def test_a_database_of_the_earlier_layout_is_migrated_on_open(tmp_path, caplog):
    from zephyr_edge.kv import local_sql

    folder = tmp_path / "kv"
    folder.mkdir()
    old = sqlite3.connect(folder / local_sql.DB_FILE, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for statement in OLD_SCHEMA:
        old.execute(statement)
    _fill(old)
    old.execute("INSERT INTO kv_values (key, value) VALUES (?, ?)", ("n", b"41"))
    assert _lookup_reads(old) > BIG_VALUE_BYTES, "the earlier layout reads the large value (the bug this fixes)"
    old.close()

    caplog.set_level("INFO", logger="zephyr_edge.kv.local_sql")
    async with LocalKV.open(None, tmp_path) as kv:
        assert await kv.get("k20-big") == b"x" * BIG_VALUE_BYTES
        assert await kv.get_many(["k00", "k39", "nope"]) == [b"small 0", b"small 39", None]
        assert await kv.smembers("s") == {b"a", b"b"}
        assert await kv.incr("n") == 42
        await kv.atomic([Set("new", b"again"), SetAdd("s", [b"c"])])
        assert await kv.get("new") == b"again" and await kv.scard("s") == 3
    assert sum("Migrating the KV database" in r.getMessage() for r in caplog.records) == 1
    conn = local_sql.connect(folder)
    try:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'kv_values'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql.upper()
        assert conn.execute("SELECT count(*) FROM kv_values").fetchone()[0] == 43
        assert _lookup_reads(conn) < LOOKUP_READ_BUDGET
    finally:
        conn.close()
    assert sum("Migrating the KV database" in r.getMessage() for r in caplog.records) == 1, "migrated once only"
