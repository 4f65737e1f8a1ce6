"""The ``can_write_jwt`` header check of every write.

Built on :func:`zephyr_edge.domain.tokens.verify`: HS256 only (the algorithm list is fixed, a
token never chooses its own), ``exp`` required, ``can_write: true``, and the token's
``application_uid`` must be the application written to. Every failure is a
:class:`~zephyr_edge.errors.Forbidden` (403, never 401: ``zephyr-agent`` 1.2 deletes the
developer's stored login on a 401) whose message names the reason and never echoes the
token. Refusals are logged by the app's error middleware, never the token.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict

import jwt
from aiohttp import web

from zephyr_edge.domain import tokens
from zephyr_edge.errors import Forbidden
from zephyr_edge.http.appkeys import CONFIG_KEY

#: How many distinct verified tokens a worker remembers (an agent uses one per deploy).
TOKEN_CACHE_SIZE = 256


#: The header carrying the write token (lower case, with underscores: nginx and some other
#: reverse proxies drop headers with underscores unless told not to, see docs/deployment.md).
HEADER = "can_write_jwt"
#: An algorithm name safe to quote back in an error message (it comes from the client).
_SHOWABLE_ALG = re.compile(r"[A-Za-z0-9_-]{1,16}")


def token_of(request: web.Request) -> str | None:
    """The request's write token (surrounding spaces removed), or None when absent or empty."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    return value.strip() or None


def _algorithm_problem(token: str) -> str | None:
    """Why the token's declared algorithm is refused, or None when it is HS256 or unreadable
    (an unreadable header is reported by :func:`tokens.verify` as a malformed token)."""
    if tokens.shape_problem(token):
        return None
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return None
    if alg in tokens.ALGORITHMS:
        return None
    shown = repr(alg) if isinstance(alg, str) and _SHOWABLE_ALG.fullmatch(alg) else "an unsupported one"
    return f"invalid can_write_jwt: algorithm {shown} not allowed (only {', '.join(tokens.ALGORITHMS)})"


class VerifiedTokens:
    """The claims of recently verified tokens, so that the burst of uploads an agent sends
    with one token checks its signature once. Bounded (least recently used out); an entry
    is only used until the token's ``exp`` (plus the usual leeway), and only tokens that
    passed every check are kept, so a hit gives exactly the answer a full check would."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE):
        self._size = size
        self._claims: OrderedDict[tuple[str, str], tokens.WriteClaims] = OrderedDict()

    def get(self, token: str, secret: str) -> tokens.WriteClaims | None:
        key = (token, secret)
        claims = self._claims.get(key)
        if claims is None:
            return None
        if time.time() > claims.exp + tokens.LEEWAY_S:
            del self._claims[key]
            return None
        self._claims.move_to_end(key)
        return claims

    def put(self, token: str, secret: str, claims: tokens.WriteClaims) -> None:
        self._claims[(token, secret)] = claims
        self._claims.move_to_end((token, secret))
        while len(self._claims) > self._size:
            self._claims.popitem(last=False)


#: A worker's :class:`VerifiedTokens` (set by :func:`zephyr_edge.http.ingest.upload.setup`).
VERIFIED_TOKENS_KEY = web.AppKey("verified_tokens", VerifiedTokens)


def verify_token(
    token: str | None, secret: str, application_uid: str | None = None, cache: VerifiedTokens | None = None
) -> tokens.WriteClaims:
    """The verified claims of ``token``; :class:`Forbidden` naming the reason otherwise.

    ``application_uid``, when given, must be the token's application. With ``cache``, a
    token verified recently is not verified again.
    """
    if not secret:
        raise Forbidden("writes are disabled: no JWT secret is configured on this worker")
    token = token.strip() if token else None
    claims = cache.get(token, secret) if cache is not None and token else None
    if claims is None:
        if token:
            problem = _algorithm_problem(token)
            if problem:
                raise Forbidden(problem)
        claims = tokens.verify(token, secret)
        if cache is not None and token:
            cache.put(token, secret, claims)
    if application_uid is not None and claims.application_uid != application_uid:
        raise Forbidden(
            f"can_write_jwt is for application {claims.application_uid!r}, not {application_uid!r}"
        )
    return claims


def require_write(request: web.Request, application_uid: str | None = None) -> tokens.WriteClaims:
    """Check the request's ``can_write_jwt``; its claims, or :class:`Forbidden` (logged
    once, by the app's error middleware)."""
    return verify_token(
        token_of(request), request.app[CONFIG_KEY].worker.jwt_secret, application_uid,
        request.app.get(VERIFIED_TOKENS_KEY),
    )


def check_application(claims: tokens.WriteClaims, application_uid: str, field: str) -> None:
    """:class:`Forbidden` unless the body's ``application_uid`` (named ``field``) is the token's."""
    if claims.application_uid != application_uid:
        raise Forbidden(
            f"{field} {application_uid!r} does not match the can_write_jwt application "
            f"{claims.application_uid!r}"
        )


def optional_write(request: web.Request, application_uid: str) -> tokens.WriteClaims | None:
    """For reads that agents send with or without a token (the hash list): None without a
    token; with one, it must be valid and for ``application_uid`` (:class:`Forbidden`)."""
    if request.headers.get(HEADER) is None:
        return None
    return require_write(request, application_uid)
