"""``zephyr-edge replicate --resync URL`` (the real console script, as a subprocess, against
a receiving worker on loopback) and ``--status``: exit codes, JSON progress lines and
summary, the terminal progress bar."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from tests.services import free_port
from tests.upload_support import APP, SECRET, load_config, snapshot_body
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.cli import replicate

SCRIPT = str(Path(sys.executable).with_name("zephyr-edge"))
RUN_TIMEOUT_S = 60.0
FILES = {"index.html": b"<html>cli</html>", "assets/main.js": b"console.log('cli')"}


async def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
    proc = await asyncio.create_subprocess_exec(
        SCRIPT, "replicate", *args, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    return proc.returncode, out.decode(), err.decode()


async def seeded(backends, start_worker):
    """A region ``us`` holding one deploy (published on ``prod``); its environment."""
    region = backends("us")
    us = await start_worker(region, "us")
    for name, data in FILES.items():
        assert (await us.upload_file(data, name)).status == 200
    body = snapshot_body(files=FILES)
    assert (await us.upload_json("snapshot", body)).status == 200
    publish = {"app_version": {"application_uid": APP, "snapshot_id": body["snapshot_id"]}, "urls": ["https://prod-ze.example.com"]}
    assert (await us.upload_json("envs", publish)).status == 200
    await us.stop()
    return {**region.env, "ZE_WORKER_JWT_SECRET": SECRET}, body


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_resync_sends_everything_and_exits_0(backends, start_worker):
    env, body = await seeded(backends, start_worker)
    eu = await start_worker(backends("eu"), "eu")
    code, out, err = await run({**env, "ZE_WORKER_REPLICA_NAME": "us"}, "--resync", eu.url)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] is True and summary["target"] == eu.url
    assert (summary["files_sent"], summary["snapshots_sent"], summary["hosts_sent"], summary["errors"]) == (2, 1, 2, 0)
    lines = json_lines(err)
    progress = [line for line in lines if line["message"] == "Resync progress"]
    assert progress and all(line["zephyr.replica.target"] == eu.url for line in progress)
    assert progress[-1]["resync.apps"] == 1 and progress[-1]["resync.apps_total"] == 1
    assert [line for line in lines if line["message"] == "Resync finished"]
    assert SECRET not in out + err
    assert await eu.catalog.hashes(APP) == {asset_hash(d, n) for n, d in FILES.items()}
    assert (await eu.catalog.live("prod-ze.example.com")).snapshot_id == body["snapshot_id"]


async def test_without_a_replica_name_the_source_is_resync(backends, start_worker):
    env, _ = await seeded(backends, start_worker)
    eu = await start_worker(backends("eu"), "eu")
    code, out, err = await run(env, "--resync", eu.url + "/")
    assert code == 0, err
    assert json.loads(out)["files_sent"] == 2


async def test_errors_remaining_exit_1(backends, start_worker):
    env, _ = await seeded(backends, start_worker)
    code, out, err = await run(env, "--resync", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    summary = json.loads(out)
    assert summary["ok"] is False and summary["errors"] >= 1
    eu = await start_worker(backends("eu"), "eu")  # a receiver refusing its own name (403)
    code, out, err = await run({**env, "ZE_WORKER_REPLICA_NAME": "eu"}, "--resync", eu.url)
    assert code == 1 and json.loads(out)["files_sent"] == 0


@pytest.mark.parametrize("url", ["ftp://eu.example.com", "not a url", ""])
async def test_bad_url_exits_2(backends, url):
    code, out, err = await run({**backends("us").env, "ZE_WORKER_JWT_SECRET": SECRET}, "--resync", url)
    assert code == 2 and out == "" and "--resync" in err


async def test_bad_configuration_exits_2(backends):
    code, out, err = await run(backends("us").env, "--resync", "http://127.0.0.1:9")  # no JWT secret
    assert code == 2 and "ZE_WORKER_JWT_SECRET" in err and "Traceback" not in err
    code, _, err = await run({}, "--frobnicate")
    assert code == 2


async def test_status_prints_the_replication_state(backends, start_worker):
    env, _ = await seeded(backends, start_worker)
    code, out, err = await run({**env, "ZE_WORKER_REPLICA_NAME": "us", "ZE_WORKER_REPLICAS_URLS": "http://u:p@eu.invalid"},
                               "--status")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "fan-out" and doc["targets"][0]["url"] == "http://eu.invalid"
    assert doc["targets"][0]["queue_depth"] == 0  # the deploy was made before the target was configured


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_terminal_gets_a_progress_bar(backends, start_worker, restore_logging):
    env, _ = await seeded(backends, start_worker)
    eu = await start_worker(backends("eu"), "eu")
    out, err = io.StringIO(), Terminal()
    config = load_config(backends("x"), **{k: v for k, v in env.items() if k != "ZE_WORKER_JWT_SECRET"})
    code = await asyncio.to_thread(replicate.main, config, resync_url=eu.url, out=out, err=err)
    assert code == 0
    assert "\r[########################] 1/1 apps" in err.getvalue()
    assert "Resync progress" not in err.getvalue()
    assert json.loads(out.getvalue())["ok"] is True


async def test_forget_refuses_a_configured_target_and_drops_an_old_one(backends, start_worker):
    env, _ = await seeded(backends, start_worker)
    env = {**env, "ZE_WORKER_REPLICA_NAME": "us", "ZE_WORKER_REPLICAS_URLS": "http://eu.invalid"}
    code, _, err = await run(env, "--forget", "http://eu.invalid/")
    assert code == 2 and "still in ZE_WORKER_REPLICAS_URLS" in err
    code, _, err = await run(env, "--forget", "ftp://gone.invalid")
    assert code == 2 and "expected an http(s) URL" in err
    code, out, err = await run(env, "--forget", "http://u:p@gone.invalid")
    assert code == 0, err
    assert json.loads(out) == {"target": "http://gone.invalid", "dropped_entries": 0}
