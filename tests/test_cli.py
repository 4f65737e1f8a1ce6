"""The ``zephyr-edge`` console script, run as a subprocess: exit codes, messages, JSON logs,
the dev quickstart, tokens, and graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

from zephyr_edge.domain import tokens
from tests.backends_support import REQUIRED_KEYS
from tests.services import free_port

SCRIPT = str(Path(sys.executable).with_name("zephyr-edge"))
JWT_SECRET = "jwt-secret-cli-0123456789abcdef0123456789"
ACCESS_KEY = "AKIAEXAMPLECLIACCESS"
SECRET_KEY = "s3-secret-key-cli-9876543210zyxwvu"
LOG_FIELDS = ("timestamp", "level", "service", "replica", "message", "logger")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any ZE_WORKER_* key, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZE_WORKER_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args], env=env if env is not None else clean_env(), cwd=cwd,
        capture_output=True, text=True, timeout=60,
    )


class Worker:
    """A ``zephyr-edge`` process whose output is collected by two reader threads."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str | Path, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [SCRIPT, *args], env=env, cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_status(self, path: str, status: int, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}: {self.output()}")
            try:
                code, body = self.get(path)
                if code == status:
                    return body
                last = (code, body)
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{path} did not answer {status} within {timeout} s (last: {last}); {self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(STOP_TIMEOUT_S)
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)

    def output(self) -> str:
        return "stdout:\n" + "\n".join(self.stdout[-30:]) + "\nstderr:\n" + "\n".join(self.stderr[-30:])

    def logs(self) -> list[dict]:
        """Every stdout line, parsed (each must be one JSON object)."""
        return [json.loads(line) for line in self.stdout if line.strip()]


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(args: list[str], env: dict[str, str], cwd: str | Path, port: int) -> Worker:
        worker = Worker(args, env, cwd, port)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def token_in(banner: list[str]) -> str:
    """The token line printed by ``zephyr-edge dev`` (the line after the "Write token" one)."""
    for i, line in enumerate(banner):
        if "Write token" in line:
            return banner[i + 1].strip()
    raise AssertionError("no token in: " + "\n".join(banner))


# --- configuration errors -------------------------------------------------------------------


def test_serve_without_configuration_names_every_required_key():
    result = run("serve")
    assert result.returncode == 2
    for key in REQUIRED_KEYS:
        assert key in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.count("is required but not set") == len(REQUIRED_KEYS)


def test_serve_with_bad_values_exits_2_naming_them(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"ZE_WORKER_PORT": "http", "ZE_WORKER_DELIMITER": "/",}')
    result = run("serve", env=clean_env(ZE_WORKER_CONFIG_JSON=str(bad), ZE_WORKER_LOG_LEVEL="loud"))
    assert result.returncode == 2
    for key in ("ZE_WORKER_PORT", "ZE_WORKER_DELIMITER", "ZE_WORKER_LOG_LEVEL"):
        assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_config_file_is_named():
    result = run("serve", env=clean_env(ZE_WORKER_CONFIG_JSON="/nonexistent/ze/config.json"))
    assert result.returncode == 2
    assert "/nonexistent/ze/config.json" in result.stderr and "Traceback" not in result.stderr


# --- config -----------------------------------------------------------------------------------


def test_config_prints_effective_configuration(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"ZE_WORKER_S3_SECRET_ACCESS_KEY": SECRET_KEY, "ZE_WORKER_PORT": "9000"}))
    env = clean_env(
        ZE_WORKER_CONFIG_JSON=str(path), ZE_WORKER_JWT_SECRET=JWT_SECRET, ZE_WORKER_PORT="7000",
        ZE_WORKER_S3_ENDPOINT="http://127.0.0.1:9000", ZE_WORKER_S3_ACCESS_KEY_ID=ACCESS_KEY,
        ZE_WORKER_S3_BUCKET="assets", ZE_WORKER_REDIS_HOST="127.0.0.1", ZE_WORKER_DELIMTER=".",
    )
    result = run("config", env=env)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["ZE_WORKER_PORT"] == {"value": 9000, "source": "file"}
    assert described["ZE_WORKER_S3_BUCKET"] == {"value": "assets", "source": "env"}
    assert described["ZE_WORKER_LOG_LEVEL"] == {"value": "info", "source": "default"}
    for key in ("ZE_WORKER_JWT_SECRET", "ZE_WORKER_S3_ACCESS_KEY_ID", "ZE_WORKER_S3_SECRET_ACCESS_KEY"):
        assert described[key]["value"] == "***"
    for value in (JWT_SECRET, ACCESS_KEY, SECRET_KEY):
        assert value not in result.stdout and value not in result.stderr
    assert "ZE_WORKER_DELIMTER" in result.stderr and "did you mean ZE_WORKER_DELIMITER?" in result.stderr


def test_config_with_missing_keys_exits_2():
    result = run("config")
    assert result.returncode == 2 and "ZE_WORKER_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


# --- token --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl,seconds", [(None, 3600), ("30m", 1800), ("7200", 7200)])
def test_token_verifies_with_the_secret(ttl, seconds):
    args = ["token", "--app", "app.repo.org"] + (["--ttl", ttl] if ttl else [])
    before = time.time()
    result = run(*args, env=clean_env(ZE_WORKER_JWT_SECRET=JWT_SECRET))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    assert claims["application_uid"] == "app.repo.org" and claims["can_write"] is True
    assert before + seconds - 5 <= claims["exp"] <= time.time() + seconds + 5
    assert tokens.verify(token, JWT_SECRET, "app.repo.org").application_uid == "app.repo.org"


def test_token_reads_the_secret_from_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  // the shared secret\n  "ZE_WORKER_JWT_SECRET": "%s",\n}' % JWT_SECRET)
    result = run("token", "--app", "a", env=clean_env(ZE_WORKER_CONFIG_JSON=str(path)))
    assert result.returncode == 0, result.stderr
    tokens.verify(result.stdout.strip(), JWT_SECRET, "a")


def test_token_without_a_secret_exits_2(tmp_path):
    result = run("token", "--app", "a", cwd=tmp_path)
    assert result.returncode == 2
    assert "ZE_WORKER_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_token_refuses_a_shipped_placeholder_secret(tmp_path):
    """Anyone who reads the repository knows the placeholders: never sign with one."""
    placeholder = "CHANGE-ME-to-a-long-random-secret"
    result = run("token", "--app", "a", cwd=tmp_path, env=clean_env(ZE_WORKER_JWT_SECRET=placeholder))
    assert result.returncode == 2 and result.stdout == ""
    assert "ZE_WORKER_JWT_SECRET is still a placeholder" in result.stderr
    assert placeholder not in result.stderr and "Traceback" not in result.stderr


def test_token_with_a_bad_lifetime_exits_2():
    result = run("token", "--app", "a", "--ttl", "soon", env=clean_env(ZE_WORKER_JWT_SECRET=JWT_SECRET))
    assert result.returncode == 2 and "soon" in result.stderr and "Traceback" not in result.stderr


# --- dev ----------------------------------------------------------------------------------------


def test_dev_quickstart(tmp_path, workers):
    port = free_port()
    worker = workers(["dev", "--port", str(port)], clean_env(), tmp_path, port)
    assert json.loads(worker.wait_status("/healthz", 200)) == {"status": "ok"}
    ready = json.loads(worker.wait_status("/readyz", 200))
    assert ready["status"] == "ready"
    assert ready["checks"]["storage"]["backend"] == "local" and ready["checks"]["kv"]["backend"] == "local"
    assert worker.get("/no-such-route")[0] == 404

    secret_file = tmp_path / "zephyr-edge-data" / "dev-jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32

    deadline = time.monotonic() + 5
    while not any("Write token" in line for line in worker.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)
    banner = list(worker.stderr)
    assert any(f"http://127.0.0.1:{port}" in line for line in banner)
    assert any("can_write_jwt" in line for line in banner)
    first_token = token_in(banner)
    assert tokens.verify(first_token, secret, "dev-app").application_uid == "dev-app"

    assert worker.stop(signal.SIGTERM) == 0, worker.output()
    logs = worker.logs()
    for line in logs:
        for field in LOG_FIELDS:
            assert field in line, line
        assert line["service"] == "ze-k8s-workers" and line["replica"] == "primary"
        assert line["level"] in ("trace", "debug", "info", "warn", "error", "fatal")
        assert secret not in json.dumps(line)
    listening = [line for line in logs if line["message"] == "Worker listening"]
    assert len(listening) == 1 and listening[0]["server.port"] == port and listening[0]["level"] == "info"
    access = [line for line in logs if line["message"] == "Request handled"]
    assert [(a["http.path"], a["http.status"]) for a in access] == [("/no-such-route", 404)]
    assert logs[-1]["message"] == "Worker stopped"
    assert not any("Replica" in line["message"] for line in logs)

    # the secret persists: a second start reuses it, and `token --data-dir` finds it
    port2 = free_port()
    again = workers(["dev", "--port", str(port2), "--app", "shop.web.acme"], clean_env(), tmp_path, port2)
    again.wait_status("/readyz", 200)
    assert secret_file.read_text().strip() == secret
    deadline = time.monotonic() + 5
    while not any("Write token" in line for line in again.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)
    tokens.verify(token_in(list(again.stderr)), secret, "shop.web.acme")
    assert again.stop(signal.SIGINT) == 0, again.output()

    minted = run("token", "--app", "x", "--data-dir", str(tmp_path / "zephyr-edge-data"))
    assert minted.returncode == 0, minted.stderr
    tokens.verify(minted.stdout.strip(), secret, "x")
    minted = run("token", "--app", "y", cwd=tmp_path)  # ./zephyr-edge-data by default
    tokens.verify(minted.stdout.strip(), secret, "y")


def test_dev_honours_environment(tmp_path, workers):
    port = free_port()
    data = tmp_path / "elsewhere"
    env = clean_env(ZE_WORKER_DATA_DIR=str(data), ZE_WORKER_JWT_SECRET=JWT_SECRET, ZE_WORKER_PORT=str(port),
                    ZE_WORKER_LOG_LEVEL="debug")
    worker = workers(["dev"], env, tmp_path, port)
    worker.wait_status("/readyz", 200)
    assert worker.stop() == 0, worker.output()
    assert not (data / "dev-jwt-secret").exists(), "a configured secret is used as is"
    assert (data / "objects").is_dir()
    assert not (tmp_path / "zephyr-edge-data").exists()
    logs = worker.logs()
    assert any(line["level"] == "debug" for line in logs)
    assert any(line["message"] == "Request handled" and line["http.path"] == "/readyz" for line in logs)
    assert all(JWT_SECRET not in json.dumps(line) for line in logs)


@pytest.mark.parametrize(
    "urls,expected",
    [
        (
            '["https://eu.example.com", "https://ap.example.com"]',
            {"message": "Replica fan-out configured", "zephyr.replica.count": 2,
             "zephyr.replica.urls": ["https://eu.example.com", "https://ap.example.com"]},
        ),
        ("", {"message": "No replica URLs configured; receive-only mode enabled"}),
    ],
)
def test_replica_startup_lines(tmp_path, workers, urls, expected):
    port = free_port()
    env = clean_env(ZE_WORKER_REPLICA_NAME="us-east-1", ZE_WORKER_REPLICAS_URLS=urls)
    worker = workers(["dev", "--port", str(port)], env, tmp_path, port)
    worker.wait_status("/healthz", 200)
    assert worker.stop() == 0, worker.output()
    logs = worker.logs()
    assert all(line["replica"] == "us-east-1" for line in logs)
    messages = [line["message"] for line in logs]
    enabled = messages.index("Replica mode enabled")
    assert messages[enabled + 1] == expected["message"]
    line = logs[enabled]
    assert line["level"] == "info" and line["zephyr.replica"] == "us-east-1"
    fan_out = logs[enabled + 1]
    assert fan_out["level"] == "info"
    for key, value in expected.items():
        assert fan_out[key] == value
    documented = set(LOG_FIELDS) | set(expected)
    assert set(fan_out) == documented


def test_warnings_are_logged_as_json_after_logging_is_configured(tmp_path, workers):
    port = free_port()
    env = clean_env(ZE_WORKER_PROT="1234")
    worker = workers(["dev", "--port", str(port)], env, tmp_path, port)
    worker.wait_status("/healthz", 200)
    assert worker.stop() == 0
    warns = [line for line in worker.logs() if line["level"] == "warn"]
    assert any("ZE_WORKER_PROT" in w["message"] and "did you mean ZE_WORKER_PORT?" in w["message"] for w in warns)


def test_port_in_use_exits_1_with_a_fatal_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("dev", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    logs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    fatal = [line for line in logs if line["level"] in ("error", "fatal")]
    assert len(fatal) == 1 and fatal[0]["level"] == "fatal", logs  # one clear line...
    assert fatal[0]["message"].startswith(f"Cannot listen on 127.0.0.1:{port}: address already in use")
    assert "exception" not in fatal[0]  # ...without a traceback
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# --- serve on the real services ---------------------------------------------------------------


def test_serve_on_s3_and_redis(tmp_path, workers, s3_endpoint, redis_addr, unique):
    import boto3

    bucket = f"ze-cli-{unique}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    s3.create_bucket(Bucket=bucket)
    try:
        port = free_port()
        env = clean_env(
            ZE_WORKER_JWT_SECRET=JWT_SECRET, ZE_WORKER_S3_ENDPOINT=s3_endpoint,
            ZE_WORKER_S3_ACCESS_KEY_ID=ACCESS_KEY, ZE_WORKER_S3_SECRET_ACCESS_KEY=SECRET_KEY,
            ZE_WORKER_S3_BUCKET=bucket, ZE_WORKER_REDIS_HOST=redis_addr[0],
            ZE_WORKER_REDIS_PORT=str(redis_addr[1]), ZE_WORKER_PORT=str(port),
            ZE_WORKER_LISTEN_HOST="127.0.0.1",
        )
        worker = workers(["serve"], env, tmp_path, port)
        body = json.loads(worker.wait_status("/readyz", 200))
        assert body["checks"]["storage"]["backend"] == "s3" and body["checks"]["kv"]["backend"] == "redis"
        assert worker.stop() == 0, worker.output()
        text = "\n".join(worker.stdout + worker.stderr)
        for value in (JWT_SECRET, ACCESS_KEY, SECRET_KEY):
            assert value not in text
        assert [line["message"] for line in worker.logs()].count("Worker listening") == 1
    finally:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_access_log_follows_its_key(tmp_path, workers):
    """``ZE_WORKER_ACCESS_LOG=false`` silences the per-request lines (dev turns them on)."""
    port = free_port()
    env = clean_env(ZE_WORKER_JWT_SECRET=JWT_SECRET, ZE_WORKER_PORT=str(port), ZE_WORKER_ACCESS_LOG="false",
                    ZE_WORKER_DATA_DIR=str(tmp_path / "data"))
    worker = workers(["dev"], env, tmp_path, port)
    worker.wait_status("/no-such-route", 404)
    assert worker.stop() == 0, worker.output()
    logs = worker.logs()
    assert any(line["message"] == "Worker listening" for line in logs)
    assert not any(line["message"] == "Request handled" for line in logs)


# --- shipped placeholders and short secrets -----------------------------------------------------


def test_serve_refuses_the_shipped_example_config(tmp_path):
    from zephyr_edge.settings.config import strip_jsonc

    example = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "config.example.json"
    placeholder = json.loads(strip_jsonc(example.read_text(encoding="utf-8")))["ZE_WORKER_JWT_SECRET"]
    result = run("serve", env=clean_env(ZE_WORKER_CONFIG_JSON=str(example), ZE_WORKER_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert "ZE_WORKER_JWT_SECRET is still a placeholder" in result.stderr
    assert placeholder not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_short_jwt_secret_is_warned_about_at_start(tmp_path, workers):
    port = free_port()
    short = "short-secret-3f9a"
    worker = workers(["dev", "--port", str(port)], clean_env(ZE_WORKER_JWT_SECRET=short), tmp_path, port)
    worker.wait_status("/healthz", 200)
    assert worker.stop() == 0
    warns = [line["message"] for line in worker.logs() if line["level"] == "warn"]
    assert any("ZE_WORKER_JWT_SECRET is shorter than 32 bytes" in w for w in warns), warns
    assert short not in "\n".join(worker.stdout + worker.stderr)


# --- help, and the admin commands against a dev worker -------------------------------------------


def test_every_subcommand_and_option_is_described():
    from zephyr_edge.cli.main import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) >= {"serve", "dev", "token", "config", "publish", "rollback", "versions", "replicate"}
    for name, command in sub.choices.items():
        assert command.description and len(command.description) > 40, name
        for action in command._actions:
            assert action.help and action.help.strip(), (name, action.option_strings)
    for name in ("serve", "config", "token", "versions"):
        shown = run(name, "--help")
        assert shown.returncode == 0
        assert len([line for line in shown.stdout.splitlines() if line.strip()]) > 4, shown.stdout
        assert sub.choices[name].description.split()[0] in shown.stdout


def wait_banner(worker: Worker) -> list[str]:
    deadline = time.monotonic() + 10
    while not any(line.startswith("  Tokens for other applications") for line in worker.stderr):
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.05)
    return list(worker.stderr)


def http(url: str, method: str = "GET", host: str | None = None, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dev_banner_and_admin_commands_on_the_dev_data(tmp_path, workers):
    from tests.upload_support import snapshot_body
    from zephyr_edge.domain.assets import asset_hash

    port, app = free_port(), "shop.web.acme"
    worker = workers(["dev", "--port", str(port), "--app", app], clean_env(), tmp_path, port)
    worker.wait_status("/readyz", 200)
    banner = "\n".join(wait_banner(worker))
    data_dir = (tmp_path / "zephyr-edge-data").resolve()
    # the banner says where apps are served and how to point the agent at the worker
    assert f"http://<label>.localhost:{port}/" in banner
    assert f"EDGE_URL http://127.0.0.1:{port}" in banner and "ZE_API" in banner
    assert f"versions --app <application_uid> --data-dir {data_dir}" in banner
    token = token_in(banner.splitlines())

    # deploy one version through the dev worker, as the agent would
    body = snapshot_body(app, files={"index.html": b"<html>dev</html>"})
    digest = asset_hash(b"<html>dev</html>", "index.html")
    assert http(f"{worker.url}/upload?type=file&hash={digest}&filename=index.html", "POST",
                data=b"<html>dev</html>", headers={"can_write_jwt": token})[0] == 200
    status, answer = http(f"{worker.url}/upload?type=snapshot", "POST", data=json.dumps(body).encode(),
                          headers={"can_write_jwt": token, "Content-Type": "application/json"})
    assert status == 200, answer
    version_url = json.loads(answer)["urls"]["version"]
    label_host = version_url.split("//", 1)[1]
    assert label_host.endswith(f".localhost:{port}")  # the shape the banner announced
    assert http(worker.url + "/", host=label_host) == (200, b"<html>dev</html>")

    # the admin commands find the dev worker's data with --data-dir only (no configuration at all)
    listed = run("versions", "--app", app, "--json", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    assert [v["snapshot_id"] for v in json.loads(listed.stdout)] == [body["snapshot_id"]]
    published = run("publish", "--host", "staging.localhost", "--snapshot", body["snapshot_id"],
                    "--data-dir", str(data_dir))
    assert published.returncode == 0, published.stderr
    deadline = time.monotonic() + 10
    while http(worker.url + "/", host=f"staging.localhost:{port}")[0] != 200:
        assert time.monotonic() < deadline, "the dev worker did not pick up the publish"
        time.sleep(0.1)
    status = run("replicate", "--status", "--data-dir", str(data_dir))
    assert status.returncode == 0, status.stderr
    json.loads(status.stdout)

    # without --data-dir the production configuration is required, and the error says what to do
    bare = run("versions", "--app", app, cwd=tmp_path)
    assert bare.returncode == 2 and "--data-dir" in bare.stderr and "Traceback" not in bare.stderr
    # a directory that is not a dev worker's
    for wrong in (tmp_path / "nothing-here", tmp_path):
        result = run("versions", "--app", app, "--data-dir", str(wrong))
        assert result.returncode == 2 and str(wrong) in result.stderr and "Traceback" not in result.stderr
    assert worker.stop() == 0, worker.output()
