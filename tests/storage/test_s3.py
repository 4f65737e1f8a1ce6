"""The S3 backend against a real S3-protocol server (moto's server mode, over HTTP).

The conformance suite runs on a fresh bucket per test; the rest covers what is specific
to S3: configuration keys, addressing style, pool and timeouts, multipart uploads, error
messages and secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import traceback
from pathlib import Path

import attrs
import boto3
import pytest
import pytest_asyncio
from botocore import exceptions as bce

from tests.services import MotoServer, free_port
from zephyr_edge import errors, plugins
from zephyr_edge.settings import config
from zephyr_edge.storage.s3 import MAX_ATTEMPTS, PART_SIZE, S3Options, S3Storage
from zephyr_edge.storage.s3_errors import ErrorContext
from zephyr_edge.storage.testing import StorageConformance, fetch, new_key, pattern
from zephyr_edge.storage.testing.data import ProducerError, failing, split, stream

#: The data folder every S3 backend is opened with (it keeps no files on the host).
DATA_DIR = Path("unused-data-dir")
REQUIRED_ENV = {
    "ZE_WORKER_JWT_SECRET": "jwt",
    "ZE_WORKER_STORAGE_BACKEND": "s3",
    "ZE_WORKER_KV_BACKEND": "stub-kv",
    "ZE_WORKER_S3_ENDPOINT": "http://minio:9000",
    "ZE_WORKER_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "ZE_WORKER_S3_SECRET_ACCESS_KEY": "s3cr3t/value",
    "ZE_WORKER_S3_BUCKET": "assets",
}


@pytest.fixture(scope="session")
def admin(s3_endpoint):
    """A plain (synchronous) boto3 client for setting up and inspecting the server."""
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="admin", aws_secret_access_key="admin",
    )
    yield client
    client.close()


@pytest.fixture
def s3_options(s3_endpoint, unique) -> S3Options:
    return S3Options(
        endpoint=s3_endpoint, access_key_id=f"AKIA{unique.upper()}", secret_access_key=f"secret-{unique}-key",
        bucket=f"ze-test-{unique}",
    )


@pytest.fixture
def bucket(admin, s3_options):
    """The admin client, with the bucket of ``s3_options`` created for this test and
    emptied and deleted afterwards (moto keeps objects in memory)."""
    name = s3_options.bucket
    admin.create_bucket(Bucket=name)
    yield admin
    for upload in admin.list_multipart_uploads(Bucket=name).get("Uploads", []):
        admin.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            admin.delete_object(Bucket=name, Key=item["Key"])
    admin.delete_bucket(Bucket=name)


class TestS3Storage(StorageConformance):
    @pytest_asyncio.fixture
    async def storage(self, bucket, s3_options):
        async with S3Storage.open(s3_options, DATA_DIR) as backend:
            yield backend

    @pytest_asyncio.fixture
    async def second_storage(self, storage, s3_options):
        async with S3Storage.open(s3_options, DATA_DIR) as backend:
            yield backend

    @pytest_asyncio.fixture
    async def unreachable_storage(self, s3_options):
        closed = attrs.evolve(s3_options, endpoint=f"http://127.0.0.1:{free_port()}")
        async with S3Storage.open(closed, DATA_DIR) as backend:
            yield backend

    @pytest.fixture
    def secrets(self, s3_options):
        return (s3_options.access_key_id, s3_options.secret_access_key)


# --- configuration ----------------------------------------------------------------------


class _StubKV:
    """Stands in for the KV backend in configuration tests: only its options matter."""

    Options = None
    options_prefix = ""


@pytest.fixture
def load_config(monkeypatch):
    """``config.load`` with the real S3 plugin and a stub KV backend (not under test)."""
    real_load = plugins.load
    monkeypatch.setattr(plugins, "load", lambda kind, name: _StubKV if kind == "kv" else real_load(kind, name))
    return config.load


def test_options_read_from_env_strings(load_config):
    env = {
        **REQUIRED_ENV,
        "ZE_WORKER_S3_ENDPOINT": "https://s3.eu-west-3.amazonaws.com/",
        "ZE_WORKER_S3_REGION": "eu-west-3",
        "ZE_WORKER_S3_FORCE_PATH_STYLE": "false",
        "ZE_WORKER_S3_CONNECTION_TIMEOUT_MS": "1500",
        "ZE_WORKER_S3_REQUEST_TIMEOUT_MS": "12000",
        "ZE_WORKER_S3_UPLOAD_REQUEST_TIMEOUT_MS": "90000",
        "ZE_WORKER_S3_MAX_SOCKETS": "64",
        "ZE_WORKER_S3_SOCKET_ACQUISITION_WARNING_TIMEOUT_MS": "2500",
    }
    cfg = load_config(env)
    assert cfg.storage.cls is S3Storage
    assert cfg.storage.options == S3Options(
        endpoint="https://s3.eu-west-3.amazonaws.com", access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t/value",
        bucket="assets", region="eu-west-3", force_path_style=False, connection_timeout_ms=1500,
        request_timeout_ms=12000, upload_request_timeout_ms=90000, max_sockets=64,
        socket_acquisition_warning_timeout_ms=2500,
    )
    assert not [w for w in cfg.warnings if "S3" in w], cfg.warnings
    described = config.describe(cfg)
    assert described["ZE_WORKER_S3_ACCESS_KEY_ID"]["value"] == "***"
    assert described["ZE_WORKER_S3_SECRET_ACCESS_KEY"]["value"] == "***"
    assert "s3cr3t/value" not in repr(cfg.storage.options)
    assert "AKIAEXAMPLE" not in repr(cfg.storage.options)
    assert {k for k in described if k.startswith("ZE_WORKER_S3_")} == {k for k in env if k.startswith("ZE_WORKER_S3_")}


def test_options_defaults(load_config):
    options = load_config(REQUIRED_ENV).storage.options
    assert (options.region, options.force_path_style) == ("us-east-1", True)
    assert (options.connection_timeout_ms, options.request_timeout_ms, options.upload_request_timeout_ms) == (
        5000, 30000, 60000,
    )
    assert (options.max_sockets, options.socket_acquisition_warning_timeout_ms) == (200, 35000)


def test_missing_and_invalid_options_reported_together(load_config):
    env = {k: v for k, v in REQUIRED_ENV.items() if not k.startswith("ZE_WORKER_S3_")}
    env |= {
        "ZE_WORKER_S3_ENDPOINT": "ftp://nowhere",
        "ZE_WORKER_S3_MAX_SOCKETS": "0",
        "ZE_WORKER_S3_FORCE_PATH_STYLE": "maybe",
    }
    with pytest.raises(errors.ConfigError) as raised:
        load_config(env)
    text = "\n".join(raised.value.problems)
    for key in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "BUCKET", "ENDPOINT", "MAX_SOCKETS", "FORCE_PATH_STYLE"):
        assert f"ZE_WORKER_S3_{key}" in text


async def test_clients_honour_every_option(s3_options):
    options = attrs.evolve(
        s3_options, region="eu-central-1", force_path_style=False, connection_timeout_ms=1234,
        request_timeout_ms=4321, upload_request_timeout_ms=9876, max_sockets=7,
        socket_acquisition_warning_timeout_ms=555,
    )
    async with S3Storage.open(options, DATA_DIR) as storage:
        for client, read_timeout in ((storage._reader.client, 4.321), (storage._writer.client, 9.876)):
            cfg = client.meta.config
            assert cfg.connect_timeout == 1.234
            assert cfg.read_timeout == read_timeout
            assert cfg.max_pool_connections == 7
            assert cfg.s3["addressing_style"] == "virtual"
            assert cfg.retries["total_max_attempts"] == MAX_ATTEMPTS == 3 and cfg.retries["mode"] == "standard"
            assert cfg.request_checksum_calculation == "when_required"
            assert client.meta.region_name == "eu-central-1"
        # the documented timeout bounds each request as a whole, retries included
        assert storage._reader.deadline_s == pytest.approx(4.321)
        assert storage._writer.deadline_s == pytest.approx(9.876)
        assert storage._slots.size == 7
        assert storage._slots.warn_after_s == 0.555
        assert storage._slots.give_up_after_s == pytest.approx(0.555 + 4.321)


@pytest.mark.parametrize("path_style", [True, False])
async def test_addressing_style_used_on_the_wire(s3_endpoint, s3_options, bucket, path_style):
    port = s3_endpoint.rsplit(":", 1)[1]
    options = attrs.evolve(s3_options, endpoint=f"http://localhost:{port}", force_path_style=path_style)
    urls: list[str] = []
    async with S3Storage.open(options, DATA_DIR) as storage:
        storage._reader.client.meta.events.register("before-send.s3", lambda request, **_: urls.append(request.url))
        with contextlib.suppress(errors.BackendError):  # bucket.localhost may not resolve here
            await storage.ping()
    assert urls
    if path_style:
        assert urls[0].startswith(f"http://localhost:{port}/{options.bucket}")
    else:
        assert urls[0].startswith(f"http://{options.bucket}.localhost:{port}/")


# --- errors -----------------------------------------------------------------------------


async def test_missing_bucket_is_a_backend_error_naming_it(s3_options):
    missing = attrs.evolve(s3_options, bucket=f"{s3_options.bucket}-missing")
    async with S3Storage.open(missing, DATA_DIR) as storage:
        for call in (storage.ping, lambda: storage.get("ab/cd/ef"), lambda: storage.put_bytes("ab/cd/ef", b"x")):
            with pytest.raises(errors.BackendError) as raised:
                await call()
            assert not isinstance(raised.value, errors.BackendUnavailable)
            assert repr(missing.bucket) in str(raised.value)
            assert "does not exist" in str(raised.value)
            assert raised.value.__cause__ is not None


@pytest.fixture
def authenticating_s3(monkeypatch):
    """A dedicated moto server that checks credentials (the shared one accepts any)."""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    server = MotoServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


async def test_wrong_credentials_never_leak(authenticating_s3, s3_options):
    options = attrs.evolve(s3_options, endpoint=authenticating_s3)
    secrets = (options.access_key_id, options.secret_access_key)
    async with S3Storage.open(options, DATA_DIR) as storage:
        for call in (storage.ping, lambda: storage.head("k"), lambda: storage.get("k"), lambda: storage.put_bytes("k", b"x")):
            with pytest.raises(errors.BackendError) as raised:
                await call()
            assert not isinstance(raised.value, errors.BackendUnavailable)
            assert "denied" in str(raised.value)
            chain = "".join(traceback.format_exception(raised.value))
            assert not [s for s in secrets if s in chain]


async def test_unreachable_errors_chain_the_cause(s3_options):
    closed = attrs.evolve(s3_options, endpoint=f"http://127.0.0.1:{free_port()}")
    async with S3Storage.open(closed, DATA_DIR) as storage:
        with pytest.raises(errors.BackendUnavailable) as raised:
            await storage.ping()
    assert isinstance(raised.value.__cause__, bce.EndpointConnectionError)
    assert "127.0.0.1" in str(raised.value)


@contextlib.asynccontextmanager
async def silent_server():
    """A TCP server on loopback that accepts connections and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(Exception):
            await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


#: Scheduling slack allowed over a request's timeout (2 shared cores).
TIMEOUT_SLACK_S = 0.8


async def test_request_timeout_bounds_the_whole_request(s3_options):
    async with silent_server() as endpoint:
        options = attrs.evolve(s3_options, endpoint=endpoint, request_timeout_ms=1000, upload_request_timeout_ms=1500)
        async with S3Storage.open(options, DATA_DIR) as storage:
            calls = [
                (storage.ping, 1.0), (lambda: storage.head("ab/cd/ef"), 1.0), (lambda: storage.get("ab/cd/ef"), 1.0),
                (lambda: storage.delete("ab/cd/ef"), 1.0), (lambda: storage.put_bytes("ab/cd/ef", b"x" * 5000), 1.5),
            ]
            for call, timeout in calls:
                started = time.monotonic()
                with pytest.raises(errors.BackendUnavailable, match="cannot reach"):
                    await call()
                # not once per attempt (three attempts and their backoff would take about 3.5-5 s)
                assert time.monotonic() - started < timeout + TIMEOUT_SLACK_S


def test_translation_of_server_errors():
    context = ErrorContext("s3", "assets", "https://user:pw@minio:9000/", ("AKIASECRET", "topsecret"))

    def client_error(code: str, status: int, message: str = "") -> bce.ClientError:
        return bce.ClientError(
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert isinstance(context.translate(client_error("NoSuchKey", 404), "get", "k"), errors.NotFound)
    assert type(context.translate(client_error("NoSuchBucket", 404), "get", "k")) is errors.BackendError
    assert type(context.translate(client_error("SlowDown", 503), "get", "k")) is errors.BackendUnavailable
    assert type(context.translate(client_error("InvalidArgument", 400), "get", "k")) is errors.BackendError
    denied = context.translate(client_error("SignatureDoesNotMatch", 403, "key AKIASECRET / topsecret"), "get", "k")
    assert type(denied) is errors.BackendError
    assert "AKIASECRET" not in str(denied) and "topsecret" not in str(denied)
    assert "pw@" not in str(denied) and "minio:9000" in str(denied)
    unreachable = context.translate(bce.EndpointConnectionError(endpoint_url="http://minio:9000"), "ping")
    assert type(unreachable) is errors.BackendUnavailable
    assert type(context.translate(asyncio.TimeoutError(), "get", "k")) is errors.BackendUnavailable
    assert type(context.translate(bce.NoCredentialsError(), "get", "k")) is errors.BackendError


# --- pool and streaming -----------------------------------------------------------------


async def test_socket_acquisition_warning(s3_options, bucket, caplog):
    options = attrs.evolve(s3_options, max_sockets=1, socket_acquisition_warning_timeout_ms=50)
    async with S3Storage.open(options, DATA_DIR) as storage:
        key = new_key()
        await storage.put_bytes(key, b"x" * 1000)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zephyr_edge.storage"):
            async with await storage.get(key):  # holds the only connection until closed
                waiting = asyncio.create_task(storage.head(key))
                await asyncio.sleep(0.3)
                assert not waiting.done()
            info = await asyncio.wait_for(waiting, 5)
        assert info is not None and info.size == 1000
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "pooled connection" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert "ZE_WORKER_S3_MAX_SOCKETS" in warnings[0].getMessage()
        assert options.secret_access_key not in caplog.text and options.access_key_id not in caplog.text

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zephyr_edge.storage"):
            for _ in range(3):  # a free connection at once: no warning
                await storage.head(key)
        assert not caplog.records


async def test_pool_wait_is_bounded(s3_options, bucket):
    options = attrs.evolve(s3_options, max_sockets=1, socket_acquisition_warning_timeout_ms=50, request_timeout_ms=200)
    async with S3Storage.open(options, DATA_DIR) as storage:
        key = new_key()
        await storage.put_bytes(key, b"x")
        async with await storage.get(key):
            started = time.monotonic()
            with pytest.raises(errors.BackendUnavailable, match="no free connection"):
                await storage.head(key)
            assert time.monotonic() - started < 2


async def test_blobs_give_their_connection_back(s3_options, bucket, caplog):
    options = attrs.evolve(s3_options, max_sockets=1, request_timeout_ms=1000, socket_acquisition_warning_timeout_ms=100)
    async with S3Storage.open(options, DATA_DIR) as storage:
        key, data = new_key(), pattern(1, 3 * 256 * 1024)
        await storage.put_bytes(key, data)

        async def ok() -> None:  # fails with "no free connection" if a slot leaked
            assert await asyncio.wait_for(storage.head(key), 5) is not None

        for _ in range(3):
            assert await fetch(storage, key) == data  # read to the end
            await ok()
            iterator = (await storage.get(key)).chunks()
            await anext(iterator)
            await iterator.aclose()  # stopped early
            await ok()
            await (await storage.get(key)).aclose()  # never read
            await ok()
            async with await storage.get(key, 10, 20) as blob:
                assert await blob.read() == data[10:20]
            await ok()
        await storage.get(key)  # dropped without closing: the safety net closes it
        gc.collect()
        await ok()
        assert "dropped without being read or closed" in caplog.text


async def test_large_objects_use_multipart(s3_options, bucket):
    async with S3Storage.open(s3_options, DATA_DIR) as storage:
        big, small = new_key("big"), new_key("small")
        data = pattern(2, 2 * PART_SIZE + 12345)
        await storage.put(big, stream(split(data, 1024 * 1024)))
        await storage.put(small, stream(split(data[:PART_SIZE], 1024 * 1024)))
        assert bucket.head_object(Bucket=s3_options.bucket, Key=big)["ETag"].endswith('-3"')
        assert "-" not in bucket.head_object(Bucket=s3_options.bucket, Key=small)["ETag"]
        assert await fetch(storage, big) == data


@pytest.mark.parametrize("how", ["producer-fails", "cancelled"])
async def test_failed_multipart_upload_is_aborted(s3_options, bucket, how):
    async with S3Storage.open(s3_options, DATA_DIR) as storage:
        key = new_key()
        chunks = split(pattern(3, 2 * PART_SIZE + 1), 1024 * 1024)
        if how == "producer-fails":
            with pytest.raises(ProducerError):
                await storage.put(key, failing(chunks))
        else:
            gate = asyncio.Event()

            async def slow():
                for chunk in chunks:
                    yield chunk
                gate.set()
                await asyncio.sleep(3600)

            task = asyncio.create_task(storage.put(key, slow()))
            await asyncio.wait_for(gate.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert bucket.list_multipart_uploads(Bucket=s3_options.bucket).get("Uploads", []) == []
        assert await storage.head(key) is None


@pytest.mark.parametrize("announced", [PART_SIZE + 4, PART_SIZE + 6])
async def test_wrong_announced_size_leaves_nothing(s3_options, bucket, announced):
    data = pattern(4, PART_SIZE + 5)  # more than a part: the multipart path
    async with S3Storage.open(s3_options, DATA_DIR) as storage:
        key = new_key()
        with pytest.raises(errors.BackendError, match="announced"):
            await storage.put(key, stream(split(data, 1024 * 1024)), announced)
        assert await storage.head(key) is None
    assert bucket.list_multipart_uploads(Bucket=s3_options.bucket).get("Uploads", []) == []
