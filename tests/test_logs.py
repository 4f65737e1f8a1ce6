"""The JSON log format: documented fields, levels (trace included), extras, exceptions,
redaction of configured secrets, and the access log."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from zephyr_edge import logs
from zephyr_edge.config import LogLevel

SECRET = "jwt-secret-0123456789abcdef0123456789"


@pytest.fixture
def capture():
    """Configure logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    buffer = io.StringIO()

    def setup(level=LogLevel.INFO, replica="", secrets=()):
        logs.configure(level, replica, secrets, stream=buffer)
        return buffer

    yield setup
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[1]:
        root.addHandler(handler)
    root.setLevel(saved[0])
    logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_documented_fields(capture):
    buffer = capture()
    logging.getLogger("zephyr_edge.server").info("Worker listening", extra={"fields": {"server.port": 8080}})
    (line,) = lines(buffer)
    assert line["level"] == "info"
    assert line["service"] == "ze-k8s-workers"
    assert line["replica"] == "primary"
    assert line["message"] == "Worker listening"
    assert line["logger"] == "zephyr_edge.server"
    assert line["server.port"] == 8080
    stamp = dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60


def test_replica_name_is_carried(capture):
    buffer = capture(replica="us-east-1")
    logging.getLogger("x").warning("hello")
    assert lines(buffer)[0]["replica"] == "us-east-1"
    assert lines(buffer)[0]["level"] == "warn"


@pytest.mark.parametrize(
    "level,emitted",
    [
        (LogLevel.TRACE, ["trace", "debug", "info", "warn", "error", "fatal"]),
        (LogLevel.DEBUG, ["debug", "info", "warn", "error", "fatal"]),
        (LogLevel.INFO, ["info", "warn", "error", "fatal"]),
        (LogLevel.WARN, ["warn", "error", "fatal"]),
        (LogLevel.ERROR, ["error", "fatal"]),
        (LogLevel.FATAL, ["fatal"]),
    ],
)
def test_levels(capture, level, emitted):
    buffer = capture(level)
    log = logging.getLogger("levels")
    log.log(logs.TRACE, "t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert [line["level"] for line in lines(buffer)] == emitted


def test_exception_is_a_string_field(capture):
    buffer = capture()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(buffer)
    assert line["level"] == "error"
    assert isinstance(line["exception"], str)
    assert "RuntimeError: boom" in line["exception"] and "Traceback" in line["exception"]


def test_fields_do_not_override_the_standard_ones(capture):
    buffer = capture()
    logging.getLogger("x").info("real", extra={"fields": {"message": "fake", "level": "fatal", "k": [1, 2]}})
    (line,) = lines(buffer)
    assert (line["message"], line["level"], line["k"]) == ("real", "info", [1, 2])


def test_configured_secrets_are_masked_everywhere(capture):
    buffer = capture(secrets=[SECRET])
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        logging.getLogger("x").exception("leak %s", SECRET, extra={"fields": {"url": f"redis://:{SECRET}@h", "n": 1}})
    text = buffer.getvalue()
    assert SECRET not in text
    (line,) = lines(buffer)
    assert line["message"] == "leak ***" and line["url"] == "redis://:***@h" and line["n"] == 1


def test_reconfiguring_replaces_the_handler(capture):
    capture()
    buffer = capture(LogLevel.DEBUG)
    logging.getLogger("x").debug("once")
    assert len(lines(buffer)) == 1


async def test_access_log_lines(capture, aiohttp_client):
    buffer = capture(LogLevel.INFO)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/healthz", healthz)
    server = TestServer(app)
    await server.start_server(access_log_class=logs.AccessLogger, access_log=logging.getLogger(logs.ACCESS_LOGGER))
    client = await aiohttp_client(server)
    assert (await client.get("/hello?token=abc")).status == 200
    assert (await client.get("/healthz")).status == 200
    access = [line for line in lines(buffer) if line["logger"] == logs.ACCESS_LOGGER]
    assert len(access) == 1  # the probe is logged at debug only
    line = access[0]
    assert line["message"] == "Request handled" and line["level"] == "info"
    assert line["http.method"] == "GET" and line["http.path"] == "/hello" and line["http.status"] == 200
    assert isinstance(line["http.duration_ms"], float)
    assert "abc" not in json.dumps(line)  # no query string: it may carry tokens

    buffer = capture(LogLevel.DEBUG)
    seen = len(lines(buffer))
    assert (await client.get("/healthz")).status == 200
    access = [line for line in lines(buffer)[seen:] if line["logger"] == logs.ACCESS_LOGGER]
    assert [(a["level"], a["http.path"]) for a in access] == [("debug", "/healthz")]
