"""``can_write_jwt`` minting and verification (fixed HS256, ``exp`` required)."""

from __future__ import annotations

import time

import jwt
import pytest

from zephyr_edge.domain import tokens
from zephyr_edge.errors import Forbidden

SECRET = "jwt-secret-" + "0123456789abcdef" * 4  # 74 bytes: long enough for HS512 too


def test_mint_then_verify():
    token = tokens.mint(SECRET, "app.repo.org", 600)
    claims = tokens.verify(token, SECRET, "app.repo.org")
    assert claims.application_uid == "app.repo.org"
    assert abs(claims.exp - (time.time() + 600)) < 5
    raw = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert raw["can_write"] is True and jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize(
    "text,seconds",
    [("3600", 3600), ("45s", 45), ("30m", 1800), ("1h", 3600), ("7d", 604800), (" 2H ", 7200)],
)
def test_parse_ttl(text, seconds):
    assert tokens.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-5", "1.5h", "h"])
def test_parse_ttl_rejects(text):
    with pytest.raises(ValueError):
        tokens.parse_ttl(text)


def _forbidden(token, secret=SECRET, app=None) -> str:
    with pytest.raises(Forbidden) as info:
        tokens.verify(token, secret, app)
    return str(info.value)


def test_rejections():
    now = time.time()
    assert "missing" in _forbidden(None)
    assert "malformed" in _forbidden("not-a-jwt")
    assert "expired" in _forbidden(tokens.mint(SECRET, "a", 1, now=now - 3600))
    assert "signature" in _forbidden(tokens.mint("another-secret-0123456789abcdef01", "a"))
    assert "another application" in _forbidden(tokens.mint(SECRET, "a"), app="b")
    no_exp = jwt.encode({"application_uid": "a", "can_write": True}, SECRET, algorithm="HS256")
    assert "'exp'" in _forbidden(no_exp)
    read_only = jwt.encode({"application_uid": "a", "can_write": False, "exp": now + 60}, SECRET, algorithm="HS256")
    assert "write" in _forbidden(read_only)
    other_alg = jwt.encode({"application_uid": "a", "can_write": True, "exp": now + 60}, SECRET, algorithm="HS512")
    assert "algorithm" in _forbidden(other_alg)
    unsigned = jwt.encode({"application_uid": "a", "can_write": True, "exp": now + 60}, None, algorithm="none")
    assert "algorithm" in _forbidden(unsigned)


def test_reasons_never_echo_the_token():
    token = tokens.mint("another-secret-0123456789abcdef01", "a")
    assert token not in _forbidden(token)


@pytest.mark.parametrize("token", ["ab\udcffc.d.e", "\udced\udca0\udc80", tokens.mint(SECRET, "app.repo.org") + "\u00e9"])
def test_a_token_with_bytes_that_are_not_utf8_is_malformed(token):
    """aiohttp hands a header's non-UTF-8 bytes over as surrogates, which PyJWT cannot
    encode (a UnicodeEncodeError, once a 500)."""
    message = _forbidden(token)
    assert "malformed token" in message and token not in message
