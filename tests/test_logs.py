"""The JSON log format: documented fields, levels (trace included), extras, exceptions,
redaction of configured secrets, and the access log."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sys

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.test_utils import TestServer

from zephyr_edge.cli import logs
from zephyr_edge.domain import tokens
from zephyr_edge.settings.fields import LogLevel
from zephyr_edge.settings.redaction import Redactor

SECRET = "jwt-secret-0123456789abcdef0123456789"


@pytest.fixture
def capture():
    """Configure logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    buffer = io.StringIO()

    def setup(level=LogLevel.INFO, replica="", secrets=(), own_modules=()):
        logs.configure(level, replica, secrets, stream=buffer, own_modules=own_modules)
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
    logging.getLogger("zephyr_edge.cli.runner").info("Worker listening", extra={"fields": {"server.port": 8080}})
    (line,) = lines(buffer)
    assert line["level"] == "info"
    assert line["service"] == "ze-k8s-workers"
    assert line["replica"] == "primary"
    assert line["message"] == "Worker listening"
    assert line["logger"] == "zephyr_edge.cli.runner"
    assert line["server.port"] == 8080
    stamp = dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60


def test_replica_name_is_carried(capture):
    buffer = capture(replica="us-east-1")
    logging.getLogger("zephyr_edge.x").warning("hello")
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
    log = logging.getLogger("zephyr_edge.levels")
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
        logging.getLogger("zephyr_edge.x").exception("failed")
    (line,) = lines(buffer)
    assert line["level"] == "error"
    assert isinstance(line["exception"], str)
    assert "RuntimeError: boom" in line["exception"] and "Traceback" in line["exception"]


def test_fields_do_not_override_the_standard_ones(capture):
    buffer = capture()
    logging.getLogger("zephyr_edge.x").info("real", extra={"fields": {"message": "fake", "level": "fatal", "k": [1, 2]}})
    (line,) = lines(buffer)
    assert (line["message"], line["level"], line["k"]) == ("real", "info", [1, 2])


def test_configured_secrets_are_masked_everywhere(capture):
    buffer = capture(secrets=[SECRET])
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        logging.getLogger("zephyr_edge.x").exception("leak %s", SECRET, extra={"fields": {"url": f"redis://:{SECRET}@h", "n": 1}})
    text = buffer.getvalue()
    assert SECRET not in text
    (line,) = lines(buffer)
    assert line["message"] == "leak ***" and line["url"] == "redis://:***@h" and line["n"] == 1


def test_reconfiguring_replaces_the_handler(capture):
    capture()
    buffer = capture(LogLevel.DEBUG)
    logging.getLogger("zephyr_edge.x").debug("once")
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


# --- redaction of short and dictionary-word secrets --------------------------------------------


@pytest.mark.parametrize(
    "secrets,text,expected",
    [
        (["a"], "a warning about a", "*** warning about ***"),
        (["a"], "key=a; id=(a) 'a'", "key=***; id=(***) '***'"),
        (["redis"], "redis://:redis@redis-0.cache:6379", "***://:***@***-0.cache:6379"),
        (["redis"], "rediscluster predis redis2 Redis", "rediscluster predis redis2 Redis"),
        (["test"], "latest tests test_x", "latest tests ***_x"),
        (["@pw!"], "auth @pw! and x@pw!y", "auth *** and x***y"),  # bounded by its own punctuation
        (["p@ss!"], "auth p@ss!, xp@ss!", "auth ***, xp@ss!"),
        (["ab", "abc"], "abc ab abcd", "*** *** abcd"),
        (["ünï"], "ünï xünï ünïx", "*** xünï ünïx"),  # letters of any script are word characters
    ],
)
def test_secrets_are_masked_as_whole_tokens_only(secrets, text, expected):
    assert Redactor(secrets).text(text) == expected


def test_redaction_never_changes_keys():
    redactor = Redactor(["a", "level", "e"])
    value = {"timestamp": "a", "level": "warn", "nested": {"a": ["a", 1, None, True], "level": ("level",)}}
    assert redactor.value(value) == {
        "timestamp": "***", "level": "warn", "nested": {"a": ["***", 1, None, True], "level": ["***"]},
    }


def test_log_lines_stay_valid_json_with_one_letter_and_word_secrets(capture):
    buffer = capture(secrets=["a", "redis", "test", "warn"])
    log = logging.getLogger("zephyr_edge.test")
    log.warning("a message about redis with password redis", extra={"fields": {"http.path": "/a/b", "obj": ValueError("a")}})
    try:
        raise ValueError('quote " and test')
    except ValueError:
        log.exception("test failed")
    first, second = lines(buffer)
    for line in (first, second):
        assert {"timestamp", "level", "service", "replica", "message", "logger"} <= set(line)
        assert line["service"] == "ze-k8s-workers" and line["replica"] == "primary"
    assert first["level"] == "warn"  # a secret "warn" never touches the documented fields
    assert first["message"] == "*** message about *** with password ***"
    assert first["http.path"] == "/***/b" and first["obj"] == "***"
    assert second["message"] == "*** failed" and 'quote " and ***' in second["exception"]


# --- third-party records and client garbage ---------------------------------------------------

SIGNED = ("Sending http request: <AWSPreparedRequest method=PUT, url=http://127.0.0.1:9000/b/k?X-Amz-Signature=0a1b2c3d,"
          " headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/s3/aws4_request,"
          " SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef'}>")


@pytest.mark.parametrize("level", [LogLevel.DEBUG, LogLevel.INFO])
def test_third_party_chatter_is_capped_at_warn(capture, level):
    buffer = capture(level)
    logging.getLogger("botocore.endpoint").debug(SIGNED)
    logging.getLogger("coredis.client").info("connected")
    logging.getLogger("zephyr_edge.storage.s3").debug("our own debug line")
    logging.getLogger("botocore.credentials").warning("a warning")
    got = [(line["logger"], line["level"]) for line in lines(buffer)]
    own = [("zephyr_edge.storage.s3", "debug")] if level == LogLevel.DEBUG else []
    assert got == own + [("botocore.credentials", "warn")]


def test_third_party_lines_at_trace_have_credentials_scrubbed(capture):
    buffer = capture(LogLevel.TRACE)
    token = tokens.mint(SECRET, "web.repo.org")
    logging.getLogger("botocore.endpoint").debug(SIGNED)
    logging.getLogger("botocore.auth").debug("Signature:\n%s", "f" * 64)
    logging.getLogger("aiohttp.client").debug("headers: can_write_jwt: %s, Authorization: Bearer %s", token, token)
    text = buffer.getvalue()
    assert len(lines(buffer)) == 3
    for leaked in ("0123456789abcdef", "AKIAEXAMPLE", "0a1b2c3d", "f" * 64, token, "AWS4-HMAC-SHA256"):
        assert leaked not in text
    assert "X-Amz-Signature=***" in text and "'Authorization': b'***'" in text


def _garbage_record() -> logging.LogRecord:
    try:
        raise BadHttpMessage("Invalid header value char")
    except BadHttpMessage:
        return logging.getLogger("aiohttp.server").makeRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s", ("127.0.0.1",),
            sys.exc_info(),
        )


@pytest.mark.parametrize("level,shown", [(LogLevel.INFO, 0), (LogLevel.DEBUG, 1)])
def test_client_garbage_is_one_debug_line_without_traceback(capture, level, shown):
    buffer = capture(level)
    logging.getLogger("aiohttp.server").handle(_garbage_record())
    got = lines(buffer)
    assert len(got) == shown
    if shown:
        (line,) = got
        assert line["level"] == "debug" and "exception" not in line and line["http.status"] == 400
        assert line["message"] == "Malformed request refused: Invalid header value char"
        assert line["http.remote"] == "127.0.0.1"


def test_real_server_errors_keep_their_traceback(capture):
    buffer = capture()
    try:
        raise RuntimeError("handler bug")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    (line,) = lines(buffer)
    assert line["level"] == "error" and "RuntimeError: handler bug" in line["exception"]


def test_a_selected_backend_plugin_logs_as_our_own(capture):
    buffer = capture(LogLevel.DEBUG, own_modules=["zephyr_edge_pgkv.backend"])
    logging.getLogger("zephyr_edge_pgkv.backend").debug("atomic: retrying")
    logging.getLogger("zephyr_edge_pgkvx").debug("another package")
    assert [(line["logger"], line["level"]) for line in lines(buffer)] == [("zephyr_edge_pgkv.backend", "debug")]
