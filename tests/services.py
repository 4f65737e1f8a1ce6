"""Real services on loopback for the tests: moto's S3 server, Redis, a 3-master Redis Cluster.

Used two ways:
- by ``tests/conftest.py``, which starts what the environment does not already provide;
- by ``.ci/run``: ``python -m tests.services up STATE_DIR`` starts everything and prints
  ``export`` lines for the test run; ``python -m tests.services down STATE_DIR`` stops it.

Everything binds to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 30.0
ENV_S3 = "ZE_TEST_S3_ENDPOINT"
ENV_REDIS = "ZE_TEST_REDIS"
ENV_CLUSTER = "ZE_TEST_REDIS_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 45000)
        if not port_open(port) and not port_open(port + 10000):
            try:
                for p in (port, port + 10000):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class MotoServer:
    """moto's S3 server mode: real HTTP and SigV4."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=0.5).close()
                return True
            except OSError:
                return False

        _wait(ready, "moto server")
        return self

    def stop(self) -> None:
        _stop(self.proc)


class RedisServer:
    """One redis-server process on loopback, restartable on the same port."""

    def __init__(self, port: int | None = None, workdir: str | None = None, cluster: bool = False):
        self.port = port or free_port()
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"ze-redis-{self.port}-")
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.workdir, "--daemonize", "no", "--protected-mode", "no",
        ]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "1000",
            ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self._cli("PING") == "PONG", f"redis-server on port {self.port}")
        return self

    def _cli(self, *args: str) -> str:
        try:
            out = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
                capture_output=True, text=True, timeout=5,
            )
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip()

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisCluster:
    """A 3-master Redis Cluster (no replicas) on consecutive free ports."""

    def __init__(self, masters: int = 3):
        self.workdir = tempfile.mkdtemp(prefix="ze-redis-cluster-")
        self.nodes = [RedisServer(free_cluster_port(), self.workdir, cluster=True) for _ in range(masters)]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        _wait(
            lambda: all("cluster_state:ok" in n._cli("CLUSTER", "INFO") for n in self.nodes),
            "redis cluster",
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- .ci/run entry point --------------------------------------------------------------------


def _up(state_dir: Path) -> None:
    """Start every service, recording each one as soon as it runs so ``down`` stops it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"pids": [], "dirs": []}
    env: dict[str, str] = {}

    def record(procs: list[subprocess.Popen], workdir: str | None = None) -> None:
        state["pids"] += [p.pid for p in procs]
        if workdir:
            state["dirs"].append(workdir)
        (state_dir / "services.json").write_text(json.dumps(state))

    moto = MotoServer()
    try:
        moto.start()
    finally:
        record([moto.proc] if moto.proc else [])
    env[ENV_S3] = moto.endpoint
    if not port_open(6379):
        redis = RedisServer(6379)
        try:
            redis.start()
        finally:
            record([redis.proc] if redis.proc else [], redis.workdir)
    env[ENV_REDIS] = "127.0.0.1:6379"
    cluster = RedisCluster()
    try:
        cluster.start()
    finally:
        record([n.proc for n in cluster.nodes if n.proc], cluster.workdir)
    env[ENV_CLUSTER] = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    for key, value in env.items():
        print(f"export {key}={value}")


def _down(state_dir: Path) -> None:
    path = state_dir / "services.json"
    if not path.exists():
        return
    state = json.loads(path.read_text())
    for pid in state["pids"]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    for d in state["dirs"]:
        shutil.rmtree(d, ignore_errors=True)
    path.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python -m tests.services up|down STATE_DIR")
    (_up if sys.argv[1] == "up" else _down)(Path(sys.argv[2]))
