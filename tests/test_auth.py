"""The ``can_write_jwt`` check: every failure is a 403 naming the reason, never the token."""

from __future__ import annotations

import base64
import json
import logging
import time

import jwt
import pytest
from aiohttp import web

from zephyr_edge.domain import tokens
from zephyr_edge.http import auth
from zephyr_edge.settings import config
from zephyr_edge.http.app import error_middleware
from zephyr_edge.errors import Forbidden
from zephyr_edge.http.appkeys import CONFIG_KEY, REDACTOR_KEY
from zephyr_edge.settings.redaction import Redactor

SECRET = "auth-test-jwt-secret-0123456789abcdef0123"
APP = "web.repo.org"


def _claims(**extra):
    return {"application_uid": APP, "can_write": True, "exp": int(time.time()) + 600, **extra}


def _unsigned(header: dict, claims: dict) -> str:
    """A token with any header (signature garbage)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}.c2lnbmF0dXJl"


def refusals() -> dict[str, tuple[str | None, str]]:
    """name → (token, text the refusal must contain)."""
    now = time.time()
    return {
        "missing": (None, "missing can_write_jwt"),
        "empty": ("  ", "missing can_write_jwt"),
        "malformed": ("abc.def", "malformed"),
        "expired": (tokens.mint(SECRET, APP, 1, now=now - 3600), "expired"),
        "bad-signature": (jwt.encode(_claims(), SECRET + "x", algorithm="HS256"), "bad signature"),
        "alg-none": (jwt.encode(_claims(), None, algorithm="none"), "algorithm 'none' not allowed (only HS256)"),
        "alg-None-case": (_unsigned({"alg": "None", "typ": "JWT"}, _claims()), "algorithm 'None' not allowed"),
        "alg-hs512": (jwt.encode(_claims(), SECRET * 2, algorithm="HS512"), "algorithm 'HS512' not allowed"),
        "alg-odd": (_unsigned({"alg": "../../<script>", "typ": "JWT"}, _claims()), "algorithm an unsupported one"),
        "alg-missing": (_unsigned({"typ": "JWT"}, _claims()), "not allowed"),
        "no-exp": (jwt.encode({"application_uid": APP, "can_write": True}, SECRET, algorithm="HS256"), "'exp'"),
        "read-only": (jwt.encode(_claims(can_write=False), SECRET, algorithm="HS256"), "write access"),
        "can-write-string": (jwt.encode(_claims(can_write="true"), SECRET, algorithm="HS256"), "write access"),
        "no-application": (jwt.encode({"can_write": True, "exp": int(now) + 60}, SECRET, algorithm="HS256"),
                           "no application_uid"),
        "other-app": (tokens.mint(SECRET, "other.repo.org"), "for application 'other.repo.org', not 'web.repo.org'"),
    }


@pytest.mark.parametrize("name", sorted(refusals()))
def test_refusals_name_the_reason_never_the_token(name):
    token, reason = refusals()[name]
    with pytest.raises(Forbidden) as raised:
        auth.verify_token(token, SECRET, APP)
    assert raised.value.status == 403
    assert reason in str(raised.value)
    if token and token.strip():
        assert token not in str(raised.value)
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(raised.value)


@pytest.mark.parametrize("token", ["ab\udcffc.d.e", "\udced\udca0\udc80", "x" * 20 + "\udcff"])
def test_a_token_that_is_not_utf8_is_malformed_not_an_error(token):
    """Header bytes that are not UTF-8 arrive as surrogates; PyJWT raised
    UnicodeEncodeError on them (a 500) from the algorithm check already."""
    with pytest.raises(Forbidden) as raised:
        auth.verify_token(token, SECRET, APP, auth.VerifiedTokens())
    assert "malformed token" in str(raised.value) and token not in str(raised.value)


def test_valid_token():
    claims = auth.verify_token(tokens.mint(SECRET, APP), SECRET, APP)
    assert claims.application_uid == APP
    # no application to match (a file upload): the token's application is the one written to
    assert auth.verify_token(tokens.mint(SECRET, APP), SECRET).application_uid == APP
    # a token just expired is accepted within the clock-skew leeway
    recent = tokens.mint(SECRET, APP, 1, now=time.time() - 10)
    assert auth.verify_token(recent, SECRET, APP).application_uid == APP


def test_no_secret_refuses_everything():
    with pytest.raises(Forbidden, match="no JWT secret"):
        auth.verify_token(tokens.mint(SECRET, APP), "", APP)


def test_check_application():
    claims = auth.verify_token(tokens.mint(SECRET, APP), SECRET)
    auth.check_application(claims, APP, "application_uid")
    with pytest.raises(Forbidden, match="application_uid 'x.y.z' does not match"):
        auth.check_application(claims, "x.y.z", "application_uid")


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    cfg = config.load({
        "ZE_WORKER_JWT_SECRET": SECRET, "ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
        "ZE_WORKER_DATA_DIR": str(tmp_path),
    })

    async def write(request: web.Request) -> web.Response:
        claims = auth.require_write(request, request.query.get("app"))
        return web.json_response({"app": claims.application_uid})

    async def read(request: web.Request) -> web.Response:
        claims = auth.optional_write(request, request.query["app"])
        return web.json_response({"app": claims.application_uid if claims else None})

    app = web.Application(middlewares=[error_middleware])
    app[auth.VERIFIED_TOKENS_KEY] = auth.VerifiedTokens()
    app[CONFIG_KEY] = cfg
    app[REDACTOR_KEY] = Redactor([SECRET])
    app.router.add_post("/write", write)
    app.router.add_get("/read", read)
    return await aiohttp_client(app)


@pytest.mark.parametrize("name", sorted(refusals()))
async def test_http_refusals_are_403_never_401(client, caplog, name):
    caplog.set_level(logging.DEBUG)
    token, reason = refusals()[name]
    headers = {} if token is None else {auth.HEADER: token}
    resp = await client.post("/write", params={"app": APP}, headers=headers)
    text = await resp.text()
    assert resp.status == 403, text
    body = json.loads(text)
    assert body["error"] == "forbidden" and reason in body["message"]
    refused = [r for r in caplog.records if r.name == "zephyr_edge.http.app"]
    assert refused and refused[0].levelno == logging.INFO and reason in refused[0].getMessage()
    if token and token.strip():
        assert token not in text
        assert all(token not in r.getMessage() and token not in str(getattr(r, "fields", "")) for r in caplog.records)


async def test_http_valid_and_optional(client):
    good = tokens.mint(SECRET, APP)
    resp = await client.post("/write", params={"app": APP}, headers={auth.HEADER: f" {good} "})
    assert resp.status == 200 and await resp.json() == {"app": APP}
    # the hash-list style: no token is fine, a token must be valid and for that app
    assert await (await client.get("/read", params={"app": APP})).json() == {"app": None}
    assert await (await client.get("/read", params={"app": APP}, headers={auth.HEADER: good})).json() == {"app": APP}
    resp = await client.get("/read", params={"app": "other.repo.org"}, headers={auth.HEADER: good})
    assert resp.status == 403
    resp = await client.get("/read", params={"app": APP}, headers={auth.HEADER: ""})
    assert resp.status == 403 and "missing" in (await resp.json())["message"]


# --- the verified-token cache -------------------------------------------------------------


def _counting_verify(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = tokens.verify

    def verify(token, secret, application_uid=None):
        calls.append(token)
        return real(token, secret, application_uid)

    monkeypatch.setattr(tokens, "verify", verify)
    return calls


def test_a_cached_token_is_verified_once(monkeypatch):
    calls = _counting_verify(monkeypatch)
    cache = auth.VerifiedTokens()
    token = tokens.mint(SECRET, APP)
    for _ in range(5):
        assert auth.verify_token(token, SECRET, APP, cache).application_uid == APP
    assert calls == [token]
    # the cache never widens what a token may do: another application is still refused
    with pytest.raises(Forbidden, match="not 'other.repo.org'"):
        auth.verify_token(token, SECRET, "other.repo.org", cache)
    # nor does a hit under one secret count for another
    with pytest.raises(Forbidden, match="bad signature"):
        auth.verify_token(token, "another-secret-0123456789abcdef0123456789", APP, cache)


def test_refused_tokens_are_not_cached(monkeypatch):
    calls = _counting_verify(monkeypatch)
    cache = auth.VerifiedTokens()
    forged = jwt.encode(_claims(), "wrong-secret-0123456789abcdef0123456789ab", algorithm="HS256")
    for _ in range(2):
        with pytest.raises(Forbidden, match="bad signature"):
            auth.verify_token(forged, SECRET, APP, cache)
    assert calls == [forged, forged]


def test_a_cached_token_is_checked_again_once_expired(monkeypatch):
    calls = _counting_verify(monkeypatch)
    cache = auth.VerifiedTokens()
    token = tokens.mint(SECRET, APP, ttl_s=60)
    auth.verify_token(token, SECRET, APP, cache)
    assert cache.get(token, SECRET) is not None
    later = time.time() + 60 + tokens.LEEWAY_S + 1
    monkeypatch.setattr(time, "time", lambda: later)  # the cache's clock (PyJWT keeps its own)
    assert cache.get(token, SECRET) is None
    auth.verify_token(token, SECRET, APP, cache)
    assert calls == [token, token]


def test_the_cache_is_bounded(monkeypatch):
    calls = _counting_verify(monkeypatch)
    cache = auth.VerifiedTokens(size=2)
    first, second, third = (tokens.mint(SECRET, f"app{i}.repo.org") for i in range(3))
    for token in (first, second, third, third, second, first):
        auth.verify_token(token, SECRET, None, cache)
    assert calls == [first, second, third, first]  # first fell out when third came in


async def test_uploads_use_the_cache(client, monkeypatch):
    calls = _counting_verify(monkeypatch)
    good = tokens.mint(SECRET, APP)
    for _ in range(3):
        assert (await client.post("/write", params={"app": APP}, headers={auth.HEADER: good})).status == 200
    assert calls == [good]
