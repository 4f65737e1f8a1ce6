"""The application shell: error mapping, typed keys and backend lifetimes, graceful drain."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from zephyr_edge.http import app as zapp
from zephyr_edge.cli import runner
from zephyr_edge.domain import tokens
from zephyr_edge.settings import config
from zephyr_edge.errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)
from zephyr_edge.settings.redaction import Redactor
from tests.services import free_port

SECRET = "jwt-secret-0123456789abcdef0123456789"


def local_config(tmp_path, **extra: str) -> config.Config:
    env = {
        "ZE_WORKER_STORAGE_BACKEND": "local",
        "ZE_WORKER_KV_BACKEND": "local",
        "ZE_WORKER_DATA_DIR": str(tmp_path / "data"),
        "ZE_WORKER_JWT_SECRET": SECRET,
        "ZE_WORKER_LISTEN_HOST": "127.0.0.1",
        **extra,
    }
    return config.load(env)


# --- error middleware -----------------------------------------------------------------------

RAISED = {
    "/unavailable": BackendUnavailable("s3", "cannot reach http://127.0.0.1:1 (connection refused)"),
    "/backend": BackendError("redis", f"WRONGTYPE with password {SECRET}"),
    "/missing": NotFound("no such snapshot"),
    "/bad": BadRequest("hash must be 64 hex digits", field="hash"),
    "/forbidden": Forbidden("can_write_jwt has expired"),
    "/too-large": PayloadTooLarge("asset larger than 100 MiB"),
    "/config": ConfigError(["something odd"]),
    "/bug": KeyError(f"secret {SECRET}"),
}


@pytest.fixture
async def errors_client(aiohttp_client):
    async def handler(request: web.Request) -> web.Response:
        raise RAISED[request.path]

    async def http_exc(request: web.Request) -> web.Response:
        raise web.HTTPNotImplemented(text="Not Implemented")

    app = web.Application(middlewares=[zapp.error_middleware])
    app[zapp.REDACTOR_KEY] = Redactor([SECRET])
    for path in RAISED:
        app.router.add_get(path, handler)
    app.router.add_get("/http", http_exc)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    "path,status,code",
    [
        ("/unavailable", 503, "backend_unavailable"),
        ("/backend", 500, "backend_error"),
        ("/missing", 404, "not_found"),
        ("/bad", 400, "bad_request"),
        ("/forbidden", 403, "forbidden"),
        ("/too-large", 413, "payload_too_large"),
        ("/config", 500, "config_error"),
        ("/bug", 500, "internal_error"),
    ],
)
async def test_errors_become_json_answers(errors_client, caplog, path, status, code):
    caplog.set_level(logging.DEBUG)
    resp = await errors_client.get(path)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == code and isinstance(body["message"], str)
    text = json.dumps(body)
    assert SECRET not in text and "Traceback" not in text
    if status == 500:
        assert body["message"] == zapp.INTERNAL_MESSAGE
        assert any(r.exc_info for r in caplog.records if r.name == "zephyr_edge.http.app"), "500s are logged with a traceback"
    if status == 503:
        assert resp.headers["Retry-After"] == str(zapp.RETRY_AFTER_S)
        assert body["message"] == "s3 backend unavailable, retry later"
    if status == 400:
        assert body["field"] == "hash"
    if status in (403, 404, 413):
        assert body["message"] == str(RAISED[path])


async def test_http_exceptions_pass_through(errors_client):
    resp = await errors_client.get("/http")
    assert resp.status == 501 and await resp.text() == "Not Implemented"


# --- the app over real (local) backends -----------------------------------------------------


async def test_make_app_opens_and_closes_backends(tmp_path, aiohttp_client):
    cfg = local_config(tmp_path)
    app = zapp.make_app(cfg)
    assert app[zapp.CONFIG_KEY] is cfg
    client = await aiohttp_client(app)
    storage, kv = app[zapp.STORAGE_KEY], app[zapp.KV_KEY]
    assert isinstance(storage, cfg.storage.cls) and isinstance(kv, cfg.kv.cls)
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    await kv.set("{ze-k8s-worker}:test", b"v")
    assert await kv.get("{ze-k8s-worker}:test") == b"v"


async def test_graceful_drain_finishes_in_flight_requests(tmp_path):
    """On stop the server refuses new connections, finishes the slow request, then exits."""
    port = free_port()
    cfg = local_config(tmp_path, ZE_WORKER_PORT=str(port), ZE_WORKER_SHUTDOWN_GRACE_MS="5000")
    app = zapp.make_app(cfg)
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    app.router.add_get("/slow", slow)
    stop, listening = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(runner.run(cfg, listening.set, app=app, stop=stop))
    await asyncio.wait_for(listening.wait(), 10)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(url + "/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        started = time.monotonic()
        stop.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200 and await resp.json() == {"done": True}
        await asyncio.wait_for(serving, 10)
        assert time.monotonic() - started < 5
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=2))


async def test_shutdown_grace_bounds_the_drain(tmp_path):
    """A request slower than the grace period does not hold the worker up."""
    port = free_port()
    cfg = local_config(tmp_path, ZE_WORKER_PORT=str(port), ZE_WORKER_SHUTDOWN_GRACE_MS="300")
    app = zapp.make_app(cfg)
    entered = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(60)
        return web.Response(text="never")

    app.router.add_get("/stuck", stuck)
    stop, listening = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(runner.run(cfg, listening.set, app=app, stop=stop))
    await asyncio.wait_for(listening.wait(), 10)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/stuck"))
        await asyncio.wait_for(entered.wait(), 5)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(serving, 10)
        assert time.monotonic() - started < 3
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(in_flight, 5)


# --- refused writes are visible to the operator ----------------------------------------------

APP_UID = "web.repo.org"
OTHER_UID = "other.repo.org"


def _refusal_cases() -> list[tuple[str, str, dict, dict, bytes | None, int, str, str | None]]:
    """(name, method, query, headers, body, status, a word of the reason, logged application:
    the application of a token verified by the request, else a well-formed query parameter)."""
    from tests.upload_support import snapshot_body

    mine, other = tokens.mint(SECRET, APP_UID), tokens.mint(SECRET, OTHER_UID)
    snap = json.dumps(snapshot_body(APP_UID)).encode()
    return [
        ("token-of-another-app", "POST", {"type": "snapshot"}, {"can_write_jwt": other}, snap, 403,
         "does not match", OTHER_UID),
        ("no-token", "POST", {"type": "file", "hash": "0" * 64, "filename": "a.js"}, {}, b"x", 403, "missing", None),
        ("bad-hash", "POST", {"type": "file", "hash": "nope", "filename": "a.js"}, {"can_write_jwt": mine}, b"x",
         400, "hash", APP_UID),
        ("bad-envs-json", "POST", {"type": "envs"}, {"can_write_jwt": mine}, b"{", 400, "JSON", APP_UID),
        ("unknown-type", "POST", {"type": "frobnicate"}, {"can_write_jwt": mine}, b"", 501, "Not Implemented", None),
        ("sync-without-replication", "POST", {"type": "sync-file", "application_uid": APP_UID, "hash": "0" * 64},
         {"Authorization": "Bearer " + mine}, b"x", 403, "replication is not enabled", APP_UID),
        ("other-method", "PUT", {"type": "file"}, {"can_write_jwt": mine}, b"x", 405, "Method Not Allowed", None),
    ]


@pytest.mark.parametrize("case", _refusal_cases(), ids=lambda c: c[0])
async def test_every_refused_write_leaves_one_line(tmp_path, aiohttp_client, caplog, case):
    name, method, query, headers, body, status, reason, uid = case
    client = await aiohttp_client(zapp.make_app(local_config(tmp_path)))
    caplog.set_level(logging.DEBUG, logger="zephyr_edge")
    resp = await client.request(method, "/upload", params=query, headers=headers, data=body)
    assert resp.status == status, await resp.text()
    visible = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("zephyr_edge")]
    assert len(visible) == 1, [r.getMessage() for r in visible]
    (record,) = visible
    assert record.levelno in (logging.INFO, logging.WARNING)
    assert record.getMessage().startswith("Write refused: ") and reason in record.getMessage()
    fields = record.fields
    assert (fields["http.method"], fields["http.path"], fields["http.status"]) == (method, "/upload", status)
    assert fields["zephyr.upload.type"] == query["type"]
    assert fields["zephyr.application_uid"] == uid
    for value in headers.values():
        token = value.removeprefix("Bearer ")
        assert all(token not in r.getMessage() and token not in json.dumps(r.fields, default=str)
                   for r in caplog.records if hasattr(r, "fields"))


async def test_refused_reads_stay_at_debug(tmp_path, aiohttp_client, caplog):
    client = await aiohttp_client(zapp.make_app(local_config(tmp_path)))
    caplog.set_level(logging.DEBUG, logger="zephyr_edge")
    bad = {"can_write_jwt": "not.a.jwt"}
    assert (await client.get("/__get_application_hash_list__", params={"application_uid": APP_UID},
                             headers=bad)).status == 403
    assert (await client.get("/__get_application_hash_list__")).status == 400
    assert (await client.get("/missing.js", headers={"Host": "nothing.example.com"})).status == 404
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "refused" in r.getMessage()]
    refused = [r for r in caplog.records if r.getMessage().startswith("Request refused")]
    assert len(refused) >= 2 and all(r.levelno == logging.DEBUG for r in refused)


async def test_error_answers_mask_short_secrets_as_words_only(aiohttp_client):
    async def handler(request: web.Request) -> web.Response:
        raise BadRequest("a value of redis is not accepted for a header", field="header")

    app = web.Application(middlewares=[zapp.error_middleware])
    app[zapp.REDACTOR_KEY] = Redactor(["a", "redis"])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 400
    assert await resp.json() == {
        "error": "bad_request", "message": "*** value of *** is not accepted for *** header", "field": "header",
    }
