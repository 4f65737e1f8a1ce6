"""Sync tokens: what :func:`synctoken.verify` accepts and every reason it refuses, and that
sync tokens and ``can_write_jwt`` never pass for one another."""

from __future__ import annotations

import time

import jwt
import pytest

from zephyr_edge.domain import tokens
from zephyr_edge.errors import Forbidden
from zephyr_edge.replication import protocol, synctoken

SECRET = "sync-token-test-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdef0123456"
SUBJECT = protocol.file_subject("web.repo.org", "a" * 64)


def verify(token, *, source_header="us-east-1", own_replica="eu-west-1", subject=SUBJECT, secret=SECRET):
    return synctoken.verify(token, secret, source_header=source_header, own_replica=own_replica, subject=subject)


def claims(**overrides):
    now = int(time.time())
    body = {
        "iss": "us-east-1", "aud": protocol.AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 60,
        "jti": "us-east-1:7",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def signed(secret=SECRET, algorithm="HS256", **overrides):
    return jwt.encode(claims(**overrides), secret, algorithm=algorithm)


def test_minted_token_verifies():
    token = synctoken.mint(SECRET, "us-east-1", SUBJECT, jti="us-east-1:42")
    got = verify(token)
    assert (got.source, got.subject, got.jti) == ("us-east-1", SUBJECT, "us-east-1:42")
    assert 0 < got.exp - got.iat <= protocol.TOKEN_TTL_S
    assert got.raw["aud"] == protocol.AUDIENCE
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_minted_jti_is_unique_when_not_given():
    ids = {verify(synctoken.mint(SECRET, "us-east-1", SUBJECT)).jti for _ in range(20)}
    assert len(ids) == 20


def test_subject_check_can_wait_for_the_body():
    body = b'{"snapshot": {}}'
    token = synctoken.mint(SECRET, "us-east-1", protocol.body_subject(body))
    got = verify(token, subject=None)
    synctoken.check_subject(got, protocol.body_subject(body))
    with pytest.raises(Forbidden, match="subject does not match"):
        synctoken.check_subject(got, protocol.body_subject(body + b" "))


def test_leeway_tolerates_small_clock_skew():
    verify(synctoken.mint(SECRET, "us-east-1", SUBJECT, ttl_s=60, now=time.time() - 80))  # expired 20 s ago
    verify(synctoken.mint(SECRET, "us-east-1", SUBJECT, ttl_s=60, now=time.time() + 20))  # issued 20 s ahead


def refusals():
    now = int(time.time())
    return {
        "missing": (None, {}, "missing sync token"),
        "empty": ("", {}, "missing sync token"),
        "malformed": ("not.a.jwt", {}, "malformed"),
        "not-utf8": (signed() + "\udcff", {}, "sync token: malformed token"),
        "forged": (signed(OTHER_SECRET), {}, "bad signature"),
        "expired": (synctoken.mint(SECRET, "us-east-1", SUBJECT, ttl_s=60, now=now - 600), {}, "has expired"),
        "future": (signed(iat=now + 600, exp=now + 660), {}, "future"),
        "too-long": (signed(exp=now + protocol.TOKEN_TTL_S + 60), {}, "lifetime"),
        "wrong-aud": (signed(aud="something-else"), {}, "wrong audience"),
        "no-aud": (signed(aud=None), {}, "'aud'"),
        "no-jti": (signed(jti=None), {}, "'jti'"),
        "no-sub": (signed(sub=None), {}, "'sub'"),
        "no-iat": (signed(iat=None), {}, "'iat'"),
        "no-exp": (signed(exp=None), {}, "'exp'"),
        "no-iss": (signed(iss=None), {}, "'iss'"),
        "alg-none": (jwt.encode(claims(), None, algorithm="none"), {}, "'none' not allowed"),
        "alg-hs512": (signed(SECRET * 2, algorithm="HS512"), {}, "'HS512' not allowed"),
        "no-header": (signed(), {"source_header": None}, "missing X-Replica-Source"),
        "iss-not-header": (signed(), {"source_header": "ap-south-1"},
                           "X-Replica-Source 'ap-south-1' does not match the token issuer 'us-east-1'"),
        "own-replica": (signed(iss="eu-west-1"), {"source_header": "eu-west-1"}, "this replica 'eu-west-1'"),
        "subject": (signed(sub=protocol.file_subject("web.repo.org", "b" * 64)), {}, "subject does not match"),
        "no-secret": (signed(), {"secret": ""}, "no JWT secret"),
        "can-write-jwt": (tokens.mint(SECRET, "web.repo.org"), {}, "sync token: missing '"),
    }


@pytest.mark.parametrize("kind", sorted(refusals()))
def test_refusals_name_the_reason_and_never_echo_the_token(kind):
    token, kw, reason = refusals()[kind]
    with pytest.raises(Forbidden) as caught:
        verify(token, **kw)
    message = str(caught.value)
    assert reason in message
    if token:
        assert token not in message
        for part in token.split("."):
            assert len(part) < 8 or part not in message


def test_sync_token_is_not_a_write_token():
    token = synctoken.mint(SECRET, "us-east-1", SUBJECT)
    with pytest.raises(Forbidden) as caught:
        tokens.verify(token, SECRET)
    assert token not in str(caught.value)
    # even one that also carried an application_uid and can_write: the audience refuses it
    both = signed(application_uid="web.repo.org", can_write=True)
    with pytest.raises(Forbidden):
        tokens.verify(both, SECRET, "web.repo.org")


def test_bearer_token():
    assert synctoken.bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert synctoken.bearer_token("bearer   abc ") == "abc"
    for value in (None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer a b"):
        assert synctoken.bearer_token(value) is None


def test_mint_needs_a_secret_and_a_source():
    with pytest.raises(ValueError):
        synctoken.mint("", "us-east-1", SUBJECT)
    with pytest.raises(ValueError):
        synctoken.mint(SECRET, "", SUBJECT)
