"""The logs of a REAL worker process (``zephyr-edge serve``) under conditions that used to
spoil them: one-letter and dictionary-word secrets (S3 keys ``test`` / ``a`` on moto, the
Redis password ``redis`` on a password-protected redis-server), third-party debug chatter
carrying SigV4 signatures, and client garbage on the socket."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any

import pytest

from tests.e2e.worker import S3Bucket, WorkerProcess, worker_env
from tests.services import free_port
from zephyr_edge.domain import tokens
from zephyr_edge.domain.assets import asset_hash

pytestmark = pytest.mark.e2e

JWT_SECRET = "log-hygiene-jwt-secret-0123456789abcdef"
S3_ACCESS_KEY, S3_SECRET_KEY, REDIS_PASSWORD = "test", "a", "redis"
SECRETS = (S3_ACCESS_KEY, S3_SECRET_KEY, REDIS_PASSWORD)
APP = "web.repo.org"
STANDARD = ("timestamp", "level", "service", "replica", "message", "logger")
#: Fields the code fills with its own words (the logger is a module name such as
#: ``zephyr_edge.kv.redis``): never redacted.
FIXED = ("timestamp", "level", "service", "replica", "logger")
LEVELS = {"trace", "debug", "info", "warn", "error", "fatal"}
#: A secret standing as a whole word (not touching a letter or digit).
WHOLE_WORD = re.compile(r"(?<![^\W_])(?:%s)(?![^\W_])" % "|".join(map(re.escape, SECRETS)))
#: What a SigV4 signature or credential, an Authorization header or a write token looks like
#: in a log line.
CREDENTIAL = re.compile(
    r"AWS4-HMAC-SHA256 Credential|Signature[=:]\s*[0-9a-f]{16}|Credential=\w|Authorization'?:\s*b?'\w|eyJ[\w-]+\."
)


@pytest.fixture
def password_redis():
    """A redis-server of its own on loopback, requiring the password ``redis``."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="ze-redis-pw-")
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(["redis-cli", "-p", str(port), "-a", REDIS_PASSWORD, "--no-auth-warning", "PING"],
                                 capture_output=True, text=True, timeout=5)
            if out.stdout.strip() == "PONG":
                break
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def check_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Every stdout line parsed as one JSON object with the documented fields."""
    parsed = []
    for raw in worker.stdout:
        line = json.loads(raw)
        assert isinstance(line, dict), raw
        assert all(key in line for key in STANDARD), raw
        assert line["level"] in LEVELS and line["service"] == "ze-k8s-workers" and line["replica"] == "primary", raw
        assert not any("*" in key for key in line), raw  # keys are never redacted
        parsed.append(line)
    return parsed


@pytest.mark.parametrize("level", ["debug", "trace"])
async def test_worker_logs_with_one_letter_and_word_secrets(tmp_path, s3_endpoint, password_redis, level):
    """At debug the libraries' chatter stays out; at trace it is in, with credentials masked."""
    bucket = S3Bucket(s3_endpoint).create()
    env = worker_env(
        port=free_port(), jwt_secret=JWT_SECRET, s3_endpoint=s3_endpoint, bucket=bucket.name,
        redis_addr=password_redis, tag="{ze-logs-%s}" % uuid.uuid4().hex[:8],
        extra={"ZE_WORKER_S3_ACCESS_KEY_ID": S3_ACCESS_KEY, "ZE_WORKER_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
               "ZE_WORKER_REDIS_PASSWORD": REDIS_PASSWORD, "ZE_WORKER_LOG_LEVEL": level},
    )  # fmt: skip
    (tmp_path / "w").mkdir()
    worker = WorkerProcess(env, tmp_path / "w")
    token = tokens.mint(JWT_SECRET, APP)
    try:
        await worker.start()
        data = b"console.log('a test of redis')"
        digest = asset_hash(data, "assets/main.js")
        stored = await worker.request(
            "POST", f"/upload?type=file&hash={digest}&filename=assets/main.js", headers={"can_write_jwt": token},
            data=data,
        )  # fmt: skip
        assert stored.status == 200, stored.body  # a real PUT to S3 signed with the one-letter key
        assert any(digest in key for key in bucket.keys())
        snap = {"application_uid": "a.redis.test", "snapshot_id": "x-1.a.redis.test", "assets": {}}
        refused = await worker.request("POST", "/upload?type=snapshot", headers={"can_write_jwt": token},
                                       data=json.dumps(snap).encode())
        assert refused.status == 403
        assert (await worker.request("GET", "/a/redis/test", host="nothing.example.com")).status == 404
        await worker.mark_logs()
    finally:
        assert await worker.stop() == 0, worker.output()
        bucket.drop()

    lines = check_lines(worker)
    for line in lines:
        for text in strings({k: v for k, v in line.items() if k not in FIXED}):
            assert not WHOLE_WORD.search(text), line  # every whole-word occurrence is masked
            assert not CREDENTIAL.search(text), line  # no SigV4 signature, credential or token
        if not line["logger"].startswith("zephyr_edge") and level == "debug":
            assert line["level"] not in ("trace", "debug", "info"), line  # third-party chatter stays out
    if level == "trace":  # botocore's debug lines, among them the signed requests, masked
        assert any(ln["logger"].startswith("botocore") and ln["level"] == "debug" for ln in lines)
        assert any("'Authorization': b'***'" in ln["message"] for ln in lines)
    assert not any(token in raw for raw in worker.stdout + worker.stderr)
    assert "Traceback" not in "\n".join(worker.stderr)
    # masked where the secrets stood as words, intact where they were parts of words
    access = [ln for ln in lines if ln["message"] == "Request handled" and ln["http.status"] == 404]
    assert access and access[0]["http.path"] == "/***/***/***"
    (write,) = [ln for ln in lines if ln["message"].startswith("Write refused")]
    assert write["level"] == "info" and "'***.***.***'" in write["message"] and write["zephyr.application_uid"] == APP
    assert any(ln["message"] == "Asset stored" for ln in lines)
    assert any(ln["message"] == "Worker listening" for ln in lines)
    assert any(ln["level"] == "debug" for ln in lines)


GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /upload?type=file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
        return b"".join(chunks)


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_client_garbage_is_one_quiet_line(tmp_path, level):
    env = {k: v for k, v in worker_env(port=free_port(), jwt_secret=JWT_SECRET, s3_endpoint="", bucket="",
                                       redis_addr=("", 0), tag="").items()
           if not k.startswith(("ZE_WORKER_S3_", "ZE_WORKER_REDIS_"))}
    env.update({"ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
                "ZE_WORKER_DATA_DIR": str(tmp_path / "data"), "ZE_WORKER_LOG_LEVEL": level})
    worker = WorkerProcess(env, tmp_path)
    try:
        await worker.start()
        start = worker.log_position()
        for data in GARBAGE:
            answer = await asyncio.to_thread(send_raw, worker.port, data)
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
        end = await worker.mark_logs()
    finally:
        assert await worker.stop() == 0, worker.output()
    lines = check_lines(worker)[start:end]
    assert not [ln for ln in lines if ln["level"] in ("warn", "error", "fatal") or "exception" in ln], lines
    garbage = [ln for ln in lines if ln["message"].startswith("Malformed request refused")]
    if level == "info":
        assert garbage == []
    else:
        assert len(garbage) == len(GARBAGE), lines
        assert all(ln["level"] == "debug" and ln["http.status"] == 400 for ln in garbage)
    assert "Traceback" not in "\n".join(worker.stdout + worker.stderr)
