"""Sync tokens: the ``Authorization: Bearer`` JWT of every region-to-region request.

HS256 only (a fixed algorithm list: a token never chooses its own), signed with the shared
``ZE_WORKER_JWT_SECRET``; claims ``iss`` (the source replica), ``aud``
(:data:`~zephyr_edge.replication.protocol.AUDIENCE`), ``iat``, ``exp`` (at most
:data:`~zephyr_edge.replication.protocol.TOKEN_TTL_S` after ``iat``), ``jti`` and ``sub``
(what the token allows: :func:`~zephyr_edge.replication.protocol.file_subject` or
:func:`~zephyr_edge.replication.protocol.body_subject`), all required. See
:mod:`zephyr_edge.replication.protocol`.

A ``can_write_jwt`` (no ``aud``) never passes as a sync token, and a sync token (an
``aud``, no ``application_uid``) never passes as a ``can_write_jwt``. Every failure is a
:class:`~zephyr_edge.errors.Forbidden` whose message names the reason and never echoes the
token.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import jwt

from zephyr_edge.domain import tokens
from zephyr_edge.errors import Forbidden, shorten
from zephyr_edge.replication import protocol

#: The only algorithms accepted or produced (the same as for write tokens).
ALGORITHMS = tokens.ALGORITHMS
#: Tolerated clock skew between regions, in seconds.
LEEWAY_S = tokens.LEEWAY_S
#: Claims a sync token must carry.
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti", "sub")
#: Longest replica name quoted back in an error message.
MAX_SHOWN_CHARS = 80
_SHOWABLE_ALG = re.compile(r"[A-Za-z0-9_-]{1,16}")
_BEARER = re.compile(r"\s*Bearer\s+(\S+)\s*", re.IGNORECASE)


@attrs.frozen
class SyncClaims:
    """The verified claims of a sync token."""

    source: str
    subject: str
    jti: str
    iat: int
    exp: int
    raw: Mapping[str, Any] = attrs.field(eq=False, repr=False)



class SyncFromSelf(Forbidden):
    """A sync request signed with the receiver's own replica name (see
    :data:`~zephyr_edge.replication.protocol.SELF_SYNC_CODE`)."""

    code = protocol.SELF_SYNC_CODE

def mint(
    secret: str, source: str, subject: str, jti: str | None = None, ttl_s: int = protocol.TOKEN_TTL_S,
    *, now: float | None = None,
) -> str:
    """A sync token from replica ``source`` allowing ``subject``, valid ``ttl_s`` seconds
    from ``now`` (``jti`` random when not given)."""
    if not secret:
        raise ValueError("cannot mint a sync token without a secret")
    if not source:
        raise ValueError("cannot mint a sync token without a source replica name")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": source, "aud": protocol.AUDIENCE, "sub": subject, "iat": issued, "exp": issued + int(ttl_s),
        "jti": jti or f"{source}:{uuid.uuid4().hex}",
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHMS[0])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    match = _BEARER.fullmatch(authorization) if authorization else None
    return match.group(1) if match else None


def verify(
    token: str | None, secret: str, *, source_header: str | None, own_replica: str, subject: str | None
) -> SyncClaims:
    """Check a sync token; raise :class:`Forbidden` saying why it fails.

    ``source_header`` (the request's :data:`~zephyr_edge.replication.protocol.SOURCE_HEADER`)
    must equal ``iss``, and ``iss`` must differ from ``own_replica``. ``subject`` must equal
    ``sub``; None skips that check, for a request whose subject is known only once its body
    is read (check it then with :func:`check_subject`).
    """
    if not secret:
        raise Forbidden("replication is refused: no JWT secret is configured on this worker")
    if not token:
        raise Forbidden("missing sync token (Authorization: Bearer)")
    problem = tokens.shape_problem(token)
    if problem:
        raise Forbidden(f"sync token: {problem}")
    problem = _algorithm_problem(token)
    if problem:
        raise Forbidden(problem)
    try:
        claims = jwt.decode(
            token, secret, algorithms=list(ALGORITHMS), audience=protocol.AUDIENCE,
            options={"require": list(REQUIRED_CLAIMS)}, leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise Forbidden("sync token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"sync token: {_reason(exc)}") from None
    source, sub, jti = claims.get("iss"), claims.get("sub"), claims.get("jti")
    if not all(isinstance(v, str) and v for v in (source, sub, jti)):
        raise Forbidden("sync token: 'iss', 'sub' and 'jti' must be non-empty strings")
    iat, exp = claims["iat"], claims["exp"]  # numbers: checked by the decode
    if exp - iat > protocol.TOKEN_TTL_S:
        raise Forbidden(f"sync token: lifetime longer than {protocol.TOKEN_TTL_S} s")
    if not source_header:
        raise Forbidden(f"missing {protocol.SOURCE_HEADER} header")
    if source_header != source:
        raise Forbidden(
            f"{protocol.SOURCE_HEADER} {_show(source_header)} does not match the token issuer {_show(source)}"
        )
    if source == own_replica:
        raise SyncFromSelf(f"sync token issued by this replica {_show(source)}: a replica does not sync with itself")
    result = SyncClaims(source, sub, jti, int(iat), int(exp), claims)
    if subject is not None:
        check_subject(result, subject)
    return result


def check_subject(claims: SyncClaims, subject: str) -> None:
    """:class:`Forbidden` unless the token allows ``subject`` (this file, this body)."""
    if claims.subject != subject:
        kind = subject.partition(":")[0] or "request"
        raise Forbidden(f"sync token subject does not match the request ({kind})")


def _algorithm_problem(token: str) -> str | None:
    """Why the token's declared algorithm is refused, or None when it is allowed or the
    header is unreadable (then reported by the decode as a malformed token)."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return None
    if alg in ALGORITHMS:
        return None
    shown = repr(alg) if isinstance(alg, str) and _SHOWABLE_ALG.fullmatch(alg) else "an unsupported one"
    return f"sync token: algorithm {shown} not allowed (only {', '.join(ALGORITHMS)})"


def _reason(exc: jwt.InvalidTokenError) -> str:
    """A short, token-free reason for a verification failure."""
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"wrong audience (expected {protocol.AUDIENCE!r})"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "issued in the future"
    return tokens.failure_reason(exc)


def _show(value: str) -> str:
    """``value`` quoted for a message, cut to :data:`MAX_SHOWN_CHARS`."""
    return repr(shorten(value, MAX_SHOWN_CHARS))
