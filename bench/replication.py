"""zephyr_edge replication benchmark: real workers in several regions, on loopback.

    python bench/replication.py [--publishes N] [--only lag,catchup] [--json-out FILE]

Run from the repository root with the project's virtualenv. Starts, on 127.0.0.1 only:
moto's S3 server (one bucket per region), one ``redis-server`` per region on a free port
(never the shared 6379), and one worker per region (``python -m zephyr_edge serve``);
stops every one of them at the end, whatever happens (they also get SIGTERM should this
script die: ``PR_SET_PDEATHSIG``, through ``bench/run.py``'s ``Proc``).

(a) lag: regions A and B replicate to each other. While A takes a steady deploy load (a
    fresh build of ``--deploy-files`` small files + its snapshot every ``--deploy-interval``
    seconds through the upload API, with a minted ``can_write_jwt``), one hostname is
    published in A ``--publishes`` times (``POST /upload?type=envs``), each time to another
    of ten release snapshots. Lag = from A's 200 answer to the first moment B serves the new
    snapshot for that host (B polled every ``--probe-ms``, 5 ms). p50 / p99 / max; target
    p99 <= 1 s. Replication settings are the worker defaults unless given.
(b) catch-up: region C takes 1,000 files (``--catchup-files``, ``--catchup-mb`` MB in all,
    log-normal sizes) and a snapshot of them while region D, its target, is down; then D
    is started again. Time from D ready until D's hash list holds all of them (files/s,
    MB/s), and from the first file arriving ("transfer"). Then region E, never in C's
    ``ZE_WORKER_REPLICAS_URLS``, gets the same through ``zephyr-edge replicate --resync E``
    run with C's configuration. The workers use ``ZE_WORKER_REPLICATION_RETRY_MAX_MS=1000``
    here so that D's figure is not mostly the sender's backoff pause (default up to 30 s).

The last line printed is the JSON of all figures. Exit status: 0 when every phase ran
(targets missed or not; ``--strict`` makes a missed target exit 3), 1 when a phase failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench import run as base  # noqa: E402  (services, uploads and data of bench/run.py)
from zephyr_edge.domain import hostnames, tokens  # noqa: E402

APP_UID, EDGE_HOST, MB = base.APP_UID, base.EDGE_HOST, base.MB
TARGET_LAG_P99_S = 1.0
PHASE_TIMEOUT_S = 600.0
RELEASES = 10
LAG_HOST = "prod.bench-app.example.test"


# --- regions --------------------------------------------------------------------------------


class Region:
    """One region: a bucket, a redis-server and one worker (its URL is the worker's)."""

    def __init__(self, bench: "ReplicationBench", name: str):
        self.bench = bench
        self.name = name
        self.port = base.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = f"zebench-{name}-{os.urandom(3).hex()}"
        self.worker: base.Proc | None = None
        self.lifetimes = 0
        self.env: dict[str, str] = {}

    def start_kv(self) -> None:
        redis_port = base.free_port()
        folder = self.bench.tmp / f"redis-{self.name}"
        folder.mkdir()
        proc = base.Proc(f"redis-{self.name}", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder),
                         "--daemonize", "no", "--protected-mode", "no"], self.bench.tmp).start()
        base.wait_for(lambda: base.redis_pong(redis_port), f"redis-server of {self.name}", proc)
        self.redis_port = redis_port

    def configure(self, targets: list["Region"], extra: dict[str, str]) -> None:
        tag = f"{{zebench-repl-{self.name}}}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
        self.env.update({
            "ZE_WORKER_JWT_SECRET": self.bench.secret,
            "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
            "ZE_WORKER_PORT": str(self.port),
            "ZE_WORKER_LOG_LEVEL": self.bench.args.log_level,
            "ZE_WORKER_PUBLIC_URL": f"http://{EDGE_HOST}",
            "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:",
            "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
            "ZE_WORKER_STORAGE_BACKEND": "s3",
            "ZE_WORKER_S3_ENDPOINT": self.bench.s3_endpoint,
            "ZE_WORKER_S3_ACCESS_KEY_ID": base.S3_ACCESS_KEY,
            "ZE_WORKER_S3_SECRET_ACCESS_KEY": base.S3_SECRET_KEY,
            "ZE_WORKER_S3_BUCKET": self.bucket,
            "ZE_WORKER_S3_REGION": base.S3_REGION,
            "ZE_WORKER_KV_BACKEND": "redis",
            "ZE_WORKER_REDIS_HOST": "127.0.0.1",
            "ZE_WORKER_REDIS_PORT": str(self.redis_port),
            "ZE_WORKER_REPLICA_NAME": self.name,
            "ZE_WORKER_REPLICAS_URLS": json.dumps([t.url for t in targets]),
            **extra,
        })

    def start(self) -> None:
        """Start the worker (again: same port, same configuration) and wait until ready."""
        self.lifetimes += 1
        self.worker = base.Proc(f"worker-{self.name}-{self.lifetimes}", [sys.executable, "-m", "zephyr_edge", "serve"],
                                self.bench.tmp, env=self.env).start()
        base.wait_for(lambda: base.http_status(self.url + "/readyz")[0] == 200, f"worker of {self.name}", self.worker)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def client(self) -> base.Worker:
        return base.Worker(self.port, self.bench.token)

    async def replicationz(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.url + "/replicationz") as answer:
            return await answer.json()


async def create_bucket(endpoint: str, name: str) -> None:
    async with base.s3_client(endpoint, 2) as client:
        await client.create_bucket(Bucket=name)


async def publish(session: aiohttp.ClientSession, region: Region, snapshot_id: str, host: str) -> tuple[int, str]:
    body = {"app_version": {"application_uid": APP_UID, "snapshot_id": snapshot_id},
            "urls": [f"https://{host}"], "url_ids": [], "jwt": region.bench.token}
    async with session.post(f"{region.url}/upload", params={"type": "envs"}, data=json.dumps(body).encode(),
                            headers={"Host": EDGE_HOST, "can_write_jwt": region.bench.token,
                                     "Content-Type": "application/json"}) as answer:
        return answer.status, await answer.text()


async def upload_build(session: aiohttp.ClientSession, region: Region, snapshot_id: str,
                       files: dict[str, base.UploadFile], concurrency: int = base.UPLOAD_CONCURRENCY) -> str:
    """Files (``concurrency`` at once), then the snapshot; the version host."""
    worker = region.client()
    queue = list(files.values())
    errors: list[str] = []

    async def lane() -> None:
        while queue:
            f = queue.pop()
            status, text = await worker.upload_file(session, f)
            if status != 200:
                errors.append(f"{f.filename}: {status} {text[:200]}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    if errors:
        raise RuntimeError(f"upload to {region.name}: {len(errors)} failed, first: {errors[0]}")
    status, text = await worker.upload_snapshot(session, base.snapshot_json(snapshot_id, files))
    if status != 200:
        raise RuntimeError(f"snapshot {snapshot_id} to {region.name}: {status} {text[:300]}")
    return hostnames.version_host(snapshot_id, EDGE_HOST, "-")


def small_build(label: str, count: int, rng: random.Random) -> dict[str, base.UploadFile]:
    """``count`` small unique files (index.html, version.txt naming ``label``, chunks)."""
    files = {
        "index.html": base.UploadFile("index.html", f"<!doctype html><title>{label}</title>".encode()),
        "version.txt": base.UploadFile("version.txt", label.encode()),
    }
    for i in range(count - len(files)):
        name = f"assets/chunk-{i:03d}.js"
        files[name] = base.UploadFile(name, f"/* {label} {i} */".encode() + rng.randbytes(rng.randint(500, 4000)).hex().encode())
    return files


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# --- the run --------------------------------------------------------------------------------


class ReplicationBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="zebench-repl-"))
        self.secret = "bench-" + os.urandom(16).hex()
        self.token = tokens.mint(self.secret, APP_UID, ttl_s=6 * 3600)
        self.results: dict[str, Any] = {"bench": "zephyr_edge replication"}
        self.failures: list[str] = []
        self.regions: dict[str, Region] = {}

    def start_services(self) -> None:
        moto_port = base.free_port()
        self.s3_endpoint = f"http://127.0.0.1:{moto_port}"
        moto = base.Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                         self.tmp).start()
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not on the PATH (apt-get install redis-server)")
        base.wait_for(lambda: base.http_status(self.s3_endpoint + "/moto-api/")[0] > 0, "moto server", moto)

    def region(self, name: str) -> Region:
        region = Region(self, name)
        region.start_kv()
        asyncio.run(create_bucket(self.s3_endpoint, region.bucket))
        self.regions[name] = region
        return region

    def replication_settings(self) -> dict[str, str]:
        out = {"ZE_WORKER_REPLICATION_ANTI_ENTROPY_MS": "0"}
        if self.args.poll_ms:
            out["ZE_WORKER_REPLICATION_POLL_MS"] = str(self.args.poll_ms)
        if self.args.concurrency:
            out["ZE_WORKER_REPLICATION_CONCURRENCY"] = str(self.args.concurrency)
        if self.args.invalidation_poll_ms:
            out["ZE_WORKER_INVALIDATION_POLL_MS"] = str(self.args.invalidation_poll_ms)
        return out

    # (a) ------------------------------------------------------------------------------------

    def phase_lag(self) -> None:
        a, b = self.region("a"), self.region("b")
        settings = self.replication_settings()
        a.configure([b], settings)
        b.configure([a], settings)
        a.start()
        b.start()
        self.results["lag_setup"] = {
            "publishes": self.args.publishes, "deploy_interval_s": self.args.deploy_interval,
            "deploy_files": self.args.deploy_files, "probe_ms": self.args.probe_ms,
            "worker_settings": {k: v for k, v in settings.items()},
        }
        self.results["lag"] = asyncio.run(asyncio.wait_for(self._lag(a, b), PHASE_TIMEOUT_S))
        a.stop()
        b.stop()

    async def _lag(self, a: Region, b: Region) -> dict[str, Any]:
        rng = random.Random(self.args.seed)
        async with base.client_session(base.UPLOAD_CONCURRENCY + 2) as session:
            releases = [f"release-{i}.{APP_UID}" for i in range(RELEASES)]
            builds = {sid: small_build(sid, 8, rng) for sid in releases}
            for sid in releases:
                await upload_build(session, a, sid, builds[sid])
            # every release is in B before measuring
            deadline = time.monotonic() + 60
            while True:
                status = await a.replicationz(session)
                if all(t["queue_depth"] == 0 for t in status["targets"]):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"releases not replicated within 60 s: {status}")
                await asyncio.sleep(0.1)

            stop = asyncio.Event()
            load = {"deploys": 0, "files": 0, "errors": [], "late": 0}

            async def deploy_load() -> None:
                n = 0
                async with base.client_session(base.UPLOAD_CONCURRENCY) as load_session:
                    while not stop.is_set():
                        began = time.monotonic()
                        n += 1
                        sid = f"load-{n}.{APP_UID}"
                        try:
                            await upload_build(load_session, a, sid, small_build(sid, self.args.deploy_files, rng))
                            load["deploys"] += 1
                            load["files"] += self.args.deploy_files
                        except Exception as exc:
                            load["errors"].append(str(exc)[:300])
                        spent = time.monotonic() - began
                        if spent > self.args.deploy_interval:
                            load["late"] += 1
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), max(0.0, self.args.deploy_interval - spent))

            loader = asyncio.create_task(deploy_load())
            await asyncio.sleep(2 * self.args.deploy_interval)  # the load is steady before measuring
            lags: list[float] = []
            publish_ms: list[float] = []
            probes = 0
            current = None
            try:
                async with base.client_session(2) as probe:
                    for i in range(self.args.publishes):
                        sid = releases[i % RELEASES]
                        if sid == current:
                            sid = releases[(i + 1) % RELEASES]
                        sent = time.perf_counter()
                        status, text = await publish(session, a, sid, LAG_HOST)
                        acked = time.perf_counter()
                        if status != 200:
                            raise RuntimeError(f"publish {i + 1} answered {status}: {text[:300]}")
                        current = sid
                        expected = sid.encode()
                        while True:
                            probes += 1
                            async with probe.get(f"{b.url}/version.txt", headers={"Host": LAG_HOST}) as answer:
                                body = await answer.read()
                            if answer.status == 200 and body == expected:
                                seen = time.perf_counter()
                                break
                            if time.perf_counter() - acked > 30:
                                raise RuntimeError(f"publish {i + 1} ({sid}) not served by B within 30 s")
                            await asyncio.sleep(self.args.probe_ms / 1000)
                        lags.append(seen - acked)
                        publish_ms.append((acked - sent) * 1000)
                        if (i + 1) % 20 == 0:
                            print(f"  {i + 1} publishes: lag p50 {statistics.median(lags) * 1000:.0f} ms, "
                                  f"max {max(lags) * 1000:.0f} ms ({load['deploys']} deploys so far)", flush=True)
                        await asyncio.sleep(rng.uniform(0.1, 0.3))
            finally:
                stop.set()
                await loader
            if load["errors"]:
                raise RuntimeError(f"deploy load: {len(load['errors'])} failed, first: {load['errors'][0]}")
            state = await a.replicationz(session)
        p99 = percentile(lags, 99)
        return {
            "publishes": len(lags),
            "lag_p50_s": round(statistics.median(lags), 3), "lag_p99_s": round(p99, 3),
            "lag_max_s": round(max(lags), 3), "lag_min_s": round(min(lags), 3),
            "lag_mean_s": round(statistics.fmean(lags), 3),
            "target_p99_s": TARGET_LAG_P99_S, "met": p99 <= TARGET_LAG_P99_S,
            "publish_in_a_p50_ms": round(statistics.median(publish_ms), 1),
            "deploys_during": load["deploys"], "deploy_files_during": load["files"], "deploys_late": load["late"],
            "probes": probes,
            "a_targets_at_end": [{k: t.get(k) for k in ("queue_depth", "delivered", "rejected", "last_error")}
                                 for t in state["targets"]],
        }

    # (b) ------------------------------------------------------------------------------------

    def phase_catchup(self) -> None:
        c, d, e = self.region("c"), self.region("d"), self.region("e")
        settings = {**self.replication_settings(), "ZE_WORKER_REPLICATION_RETRY_MAX_MS": "1000"}
        c.configure([d], settings)
        d.configure([c], settings)
        e.configure([], settings)
        for r in (c, d, e):
            r.start()
        d.stop()  # D goes down
        files = {f.filename: f for f in (base.UploadFile(n, body) for n, body in
                                         base.build_files(self.args.seed, self.args.catchup_files,
                                                          int(self.args.catchup_mb * MB)))}
        total = sum(len(f.body) for f in files.values())
        self.results["catchup_setup"] = {
            "files": len(files), "bytes": total, "worker_settings": settings,
            "size_median": statistics.median(len(f.body) for f in files.values()),
            "size_max": max(len(f.body) for f in files.values()),
        }
        hashes = {f.hash for f in files.values()}
        out: dict[str, Any] = {}
        out["upload_to_c"] = asyncio.run(self._upload(c, files))
        print(f"  uploaded {len(files)} files to C at {out['upload_to_c']['mb_per_s']} MB/s while D was down", flush=True)
        with_d = asyncio.run(self._depth(c))
        out["c_queue_for_d_before"] = with_d

        started = time.perf_counter()
        d.start()
        ready = time.perf_counter()
        out["outbox"] = asyncio.run(self._until_listed(d, hashes, total, ready))
        out["outbox"]["start_to_ready_s"] = round(ready - started, 2)
        print(f"  outbox: D listed all {len(hashes)} files {out['outbox']['seconds_from_ready']} s after it was ready "
              f"({out['outbox']['files_per_s']} files/s, {out['outbox']['mb_per_s']} MB/s)", flush=True)

        listed = asyncio.run(self._until_listed(e, hashes, total, time.perf_counter(), resync_from=c))
        out["resync"] = listed
        print(f"  resync: E listed all {len(hashes)} files {listed['seconds_from_ready']} s after the command started "
              f"({listed['files_per_s']} files/s, {listed['mb_per_s']} MB/s)", flush=True)
        self.results["catchup"] = out

    async def _upload(self, region: Region, files: dict[str, base.UploadFile]) -> dict[str, Any]:
        async with base.client_session(base.UPLOAD_CONCURRENCY) as session:
            t0 = time.perf_counter()
            await upload_build(session, region, f"catchup-1.{APP_UID}", files)
            seconds = time.perf_counter() - t0
        total = sum(len(f.body) for f in files.values())
        return {"seconds": round(seconds, 2), "files_per_s": round(len(files) / seconds, 1),
                "mb_per_s": round(total / MB / seconds, 3)}

    async def _depth(self, region: Region) -> int:
        async with base.client_session(2) as session:
            return sum(t["queue_depth"] for t in (await region.replicationz(session))["targets"])

    async def _until_listed(self, region: Region, hashes: set[str], total: int, t0: float,
                            resync_from: Region | None = None) -> dict[str, Any]:
        """Poll ``region``'s hash list until it holds ``hashes`` (bounded); the figures."""
        proc = None
        if resync_from is not None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "zephyr_edge", "replicate", "--resync", region.url,
                env=resync_from.env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
        first = None
        worker = region.client()
        try:
            async with base.client_session(2) as session:
                while True:
                    listed = await worker.hash_list(session) or set()
                    have = len(hashes & listed)
                    now = time.perf_counter()
                    if have and first is None:
                        first = now
                    if have == len(hashes):
                        break
                    if now - t0 > PHASE_TIMEOUT_S:
                        raise RuntimeError(f"{region.name} holds {have} of {len(hashes)} files after {PHASE_TIMEOUT_S:.0f} s")
                    await asyncio.sleep(0.05)
            done = time.perf_counter()
            out: dict[str, Any] = {
                "files": len(hashes), "seconds_from_ready": round(done - t0, 2),
                "files_per_s": round(len(hashes) / (done - t0), 1), "mb_per_s": round(total / MB / (done - t0), 3),
                "first_file_after_s": round((first or done) - t0, 2),
                "transfer_files_per_s": round(len(hashes) / max(1e-3, done - (first or t0)), 1),
                "transfer_mb_per_s": round(total / MB / max(1e-3, done - (first or t0)), 3),
            }
            if proc is not None:
                stdout, _ = await asyncio.wait_for(proc.communicate(), PHASE_TIMEOUT_S)
                out["command_exit"] = proc.returncode
                out["command_s"] = round(time.perf_counter() - t0, 2)
                try:
                    out["command_report"] = json.loads(stdout.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    out["command_report"] = stdout.decode(errors="replace")[-500:]
                if proc.returncode != 0:
                    raise RuntimeError(f"replicate --resync exited {proc.returncode}: {out['command_report']}")
            return out
        finally:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()

    # reporting ------------------------------------------------------------------------------

    def report(self) -> None:
        r = self.results
        rows: list[tuple[str, str, str]] = []
        checks: dict[str, bool] = {}
        lag = r.get("lag")
        if lag:
            checks["lag_p99"] = lag["met"]
            rows.append(("(a) lag publish in A -> served by B, p50 / p99 / max",
                         f"{lag['lag_p50_s'] * 1000:.0f} / {lag['lag_p99_s'] * 1000:.0f} / {lag['lag_max_s'] * 1000:.0f} ms",
                         f"p99 <= {TARGET_LAG_P99_S * 1000:.0f} ms: {'met' if lag['met'] else 'MISSED'}"))
            rows.append(("    publishes / deploys of the load meanwhile",
                         f"{lag['publishes']} / {lag['deploys_during']} ({lag['deploy_files_during']} files)",
                         f"{lag['deploys_late']} deploys took longer than the interval"))
        cu = r.get("catchup")
        if cu:
            setup = r["catchup_setup"]
            label = f"{setup['files']} files / {setup['bytes'] / MB:.1f} MB"
            rows.append((f"(b) upload of {label} to C (reference)",
                         f"{cu['upload_to_c']['files_per_s']} files/s, {cu['upload_to_c']['mb_per_s']} MB/s", ""))
            for key, what in (("outbox", "outbox: D down, then started"), ("resync", "replicate --resync E")):
                x = cu.get(key)
                if x:
                    rows.append((f"(b) catch-up {what}", f"{x['seconds_from_ready']} s: {x['files_per_s']} files/s, "
                                 f"{x['mb_per_s']} MB/s", f"transfer {x['transfer_files_per_s']} files/s, "
                                 f"{x['transfer_mb_per_s']} MB/s; first file after {x['first_file_after_s']} s"))
        r["targets_met"] = checks
        r["failures"] = self.failures
        if rows:
            widths = [max(len(row[i]) for row in rows) for i in range(3)]
            print()
            for row in rows:
                print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
        for failure in self.failures:
            print(f"FAILED: {failure}")
        print(json.dumps(r, separators=(",", ":")))
        if self.args.json_out:
            Path(self.args.json_out).write_text(json.dumps(r, indent=2) + "\n")

    def run(self) -> int:
        only = set(self.args.only.split(",")) if self.args.only else {"lag", "catchup"}
        try:
            print(f"zephyr_edge replication bench: services in {self.tmp}", flush=True)
            self.start_services()
            for name, phase in (("lag", self.phase_lag), ("catchup", self.phase_catchup)):
                if name not in only:
                    continue
                print(f"phase {name}", flush=True)
                try:
                    phase()
                except Exception as exc:
                    self.failures.append(f"{name}: {exc}")
                    print(f"phase {name} failed: {exc}", file=sys.stderr, flush=True)
                    if self.args.verbose:
                        traceback.print_exc()
                    for region in self.regions.values():
                        if region.worker is not None:
                            print(f"--- worker {region.name}:\n{region.worker.tail()}", file=sys.stderr)
                finally:
                    for region in self.regions.values():
                        region.stop()
        except Exception as exc:
            self.failures.append(f"setup: {exc}")
            print(f"setup failed: {exc}", file=sys.stderr, flush=True)
        finally:
            base.Proc.stop_all()
            if self.args.keep:
                print(f"logs kept in {self.tmp}", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self.report()
        if self.failures:
            return 1
        if self.args.strict and not all(self.results["targets_met"].values()):
            return 3
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="zephyr_edge replication benchmark (see the module docstring)")
    p.add_argument("--publishes", type=int, default=100, help="publishes measured in (a) (default 100)")
    p.add_argument("--deploy-interval", type=float, default=1.0, help="seconds between the load's deploys (default 1)")
    p.add_argument("--deploy-files", type=int, default=20, help="files per deploy of the load (default 20)")
    p.add_argument("--probe-ms", type=float, default=5.0, help="pause between two probes of B (default 5)")
    p.add_argument("--catchup-files", type=int, default=1000, help="files region D misses in (b) (default 1000)")
    p.add_argument("--catchup-mb", type=float, default=4.0, help="their total size in MB of 10^6 bytes (default 4)")
    p.add_argument("--poll-ms", type=int, help="ZE_WORKER_REPLICATION_POLL_MS of the workers (default: the worker's)")
    p.add_argument("--concurrency", type=int,
                   help="ZE_WORKER_REPLICATION_CONCURRENCY of the workers (default: the worker's)")
    p.add_argument("--invalidation-poll-ms", type=int,
                   help="ZE_WORKER_INVALIDATION_POLL_MS of the workers (default: the worker's)")
    p.add_argument("--log-level", default="info", help="ZE_WORKER_LOG_LEVEL of the workers (default info)")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--only", help="comma-separated phases: lag,catchup")
    p.add_argument("--json-out", help="also write the figures to this file")
    p.add_argument("--strict", action="store_true", help="exit 3 when the lag target is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (service logs)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main() -> int:
    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    bench = ReplicationBench(parse_args())
    try:
        return bench.run()
    finally:
        base.Proc.stop_all()


if __name__ == "__main__":
    sys.exit(main())
