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

from zephyr_edge.config import WorkerConfig
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
    from zephyr_edge.config import WorkerConfig
    from zephyr_edge.kv.local import LocalKV

    async def main(data_dir, worker, ops, nx_keys):
        go = Path(data_dir) / "go"
        deadline = time.monotonic() + 30
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit("no go file")
            await asyncio.sleep(0.01)
        wins = []
        async with LocalKV.open(None, WorkerConfig(jwt_secret="t", data_dir=data_dir)) as kv:
            for i in range(ops):
                await kv.incr("{t}:counter")
                if await kv.set_if_absent(f"{{t}}:nx-{i % nx_keys}", str(worker).encode()):
                    wins.append(i % nx_keys)
                await kv.sadd("{t}:members", f"{worker}-{i}".encode())
        print(json.dumps(wins))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    """
)


def worker(data_dir: Path) -> WorkerConfig:
    return WorkerConfig(jwt_secret="test-secret", data_dir=str(data_dir))


def unusable_dir(tmp_path: Path) -> Path:
    """A data dir that cannot exist: its parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "data"


class TestLocalKV(KVConformance):
    @pytest_asyncio.fixture
    async def kv(self, tmp_path):
        async with LocalKV.open(None, worker(tmp_path)) as kv:
            yield kv

    @pytest_asyncio.fixture
    async def kv2(self, tmp_path, kv):
        async with LocalKV.open(None, worker(tmp_path)) as second:
            yield second

    @pytest_asyncio.fixture
    async def unreachable_kv(self, tmp_path):
        async with LocalKV.open(None, worker(unusable_dir(tmp_path))) as kv:
            yield kv


async def test_data_survives_close_and_reopen(tmp_path):
    async with LocalKV.open(None, worker(tmp_path)) as kv:
        await kv.atomic([Set("{t}:env", b"snapshot-1"), SetAdd("{t}:hashes", [b"h1", b"h2"])])
        assert await kv.incr("{t}:n") == 1
    async with LocalKV.open(None, worker(tmp_path)) as kv:
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
    async with LocalKV.open(None, worker(tmp_path)) as kv:
        assert await kv.get("{t}:counter") == str(PROCESSES * OPS_PER_PROCESS).encode()
        assert len(await kv.smembers("{t}:members")) == PROCESSES * OPS_PER_PROCESS
        winners = await kv.get_many([f"{{t}}:nx-{k}" for k in range(NX_KEYS)])
    for k, value in enumerate(winners):
        assert k in wins[int(value)], f"nx-{k} holds worker {value!r}, which did not win it"


async def test_unusable_folder_opens_then_recovers(tmp_path):
    data_dir = unusable_dir(tmp_path)
    async with LocalKV.open(None, worker(data_dir)) as kv:  # must not raise
        with pytest.raises(BackendUnavailable) as caught:
            await kv.ping()
        message = str(caught.value)
        assert str(data_dir) in message and "Not a directory" in message, message
        (tmp_path / "a-file").unlink()  # the operator fixes the folder: same instance works
        await kv.set("{t}:k", b"v")
        assert await kv.get("{t}:k") == b"v"
        await kv.ping()


async def test_event_loop_runs_while_waiting_for_the_write_lock(tmp_path):
    async with LocalKV.open(None, worker(tmp_path)) as kv:
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
    async with LocalKV.open(None, worker(tmp_path)) as kv:
        await kv.set("{t}:k", b"not a number")
        with pytest.raises(BackendError) as caught:
            await kv.incr("{t}:k")
        assert not isinstance(caught.value, BackendUnavailable)
        assert await kv.get("{t}:k") == b"not a number"


async def test_closed_backend_raises_backend_error(tmp_path):
    async with LocalKV.open(None, worker(tmp_path)) as kv:
        pass
    started = time.monotonic()
    with pytest.raises(BackendError, match="closed"):
        await kv.get("{t}:k")
    assert time.monotonic() - started < 1
