"""``can_write_jwt`` tokens: HS256 JWTs ``{application_uid, can_write: true, exp}``.

Minted by ``zephyr-edge token`` / ``zephyr-edge dev`` and by the replication sender;
verified on every write. The algorithm list is fixed: a token never chooses its own
algorithm, and ``exp`` is required.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import jwt

from zephyr_edge.errors import Forbidden

#: The only algorithms accepted or produced.
ALGORITHMS = ("HS256",)
#: Tolerated clock skew between the minting machine and the worker, in seconds.
LEEWAY_S = 30
#: Default lifetime of a minted token.
DEFAULT_TTL_S = 3600

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


@attrs.frozen
class WriteClaims:
    """The verified claims of a ``can_write_jwt``."""

    application_uid: str
    exp: int
    raw: Mapping[str, Any] = attrs.field(eq=False, repr=False)


def parse_ttl(text: str) -> int:
    """Seconds in a lifetime written ``3600``, ``45s``, ``30m``, ``1h`` or ``7d`` (> 0)."""
    match = _TTL_RE.match(str(text))
    if not match:
        raise ValueError(f"invalid lifetime {text!r}: expected e.g. 3600, 30m, 1h or 7d")
    seconds = int(match.group(1)) * _TTL_UNITS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise ValueError(f"invalid lifetime {text!r}: must be more than zero")
    return seconds


def mint(secret: str, application_uid: str, ttl_s: int = DEFAULT_TTL_S, *, now: float | None = None) -> str:
    """A signed write token for ``application_uid``, valid ``ttl_s`` seconds from ``now``."""
    if not secret:
        raise ValueError("cannot mint a token without a secret")
    if not application_uid:
        raise ValueError("cannot mint a token without an application_uid")
    issued = int(time.time() if now is None else now)
    claims = {"application_uid": application_uid, "can_write": True, "iat": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHMS[0])


def shape_problem(token: str) -> str | None:
    """Why ``token`` cannot even be decoded, or None. A compact JWT is ASCII (base64url and
    dots); a header byte that is not UTF-8 reaches us as a surrogate, which PyJWT cannot
    encode (a ``UnicodeEncodeError``, not an ``InvalidTokenError``): refuse it here."""
    if not token.isascii():
        return "malformed token (characters other than base64url and '.')"
    return None


def verify(token: str | None, secret: str, application_uid: str | None = None) -> WriteClaims:
    """Check a write token; raise :class:`~zephyr_edge.errors.Forbidden` saying why it fails.

    ``application_uid``, when given, must equal the token's. The reason in the error is safe
    to send to the client (it never echoes the token).
    """
    if not token:
        raise Forbidden("missing can_write_jwt")
    problem = shape_problem(token)
    if problem:
        raise Forbidden(f"invalid can_write_jwt: {problem}")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=list(ALGORITHMS),
            options={"require": ["exp"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise Forbidden("can_write_jwt has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"invalid can_write_jwt: {failure_reason(exc)}") from None
    uid = claims.get("application_uid")
    if not isinstance(uid, str) or not uid:
        raise Forbidden("invalid can_write_jwt: no application_uid")
    if claims.get("can_write") is not True:
        raise Forbidden("can_write_jwt does not grant write access")
    if application_uid is not None and uid != application_uid:
        raise Forbidden("can_write_jwt is for another application")
    return WriteClaims(uid, int(claims["exp"]), claims)


def failure_reason(exc: jwt.InvalidTokenError) -> str:
    """A short, token-free reason for a verification failure (also used for sync tokens)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return type(exc).__name__
