"""The Snapshot JSON (as ``zephyr-agent`` uploads it), the envs publish payload (``type=envs``)
and live records (what a published host's KV record holds).

Pure functions, no I/O. A :class:`Snapshot` keeps the JSON object exactly as sent in
:attr:`Snapshot.raw` (that is what gets stored) and exposes the fields the worker uses.

**Live payload format (``envs:<host>``).** The value stored under ``PREFIX_ENVS + host`` is
the snapshot JSON itself, the same document as under ``PREFIX_SNAPSHOTS + snapshot_id``:
no wrapper record. Zephyr documents this layout for its Kubernetes worker and its
emergency rollback is "copy ``snapshots:<id>`` into ``envs:<host>``", so a hand-copied
snapshot serves, and a KV written by either worker is readable by the other. Publish
metadata, if ever needed, belongs under separate keys (:func:`~zephyr_edge.domain.hostnames.tagged_key`).
:func:`load_live_payload` reads such a value tolerantly.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from zephyr_edge.domain.assets import HASH_PROBLEM, extension, is_hash, path_problem
from zephyr_edge.errors import BadRequest, PayloadTooLarge, ZephyrError, shorten
from zephyr_edge.domain.hostnames import normalize_host

#: ``app.repo.org``: dot-separated labels of ``[a-z0-9_-]`` (zephyr-agent replaces any other
#: character of each part by ``_`` and lower-cases the whole).
APPLICATION_UID_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
#: ``<user>-<buildId>.<application_uid>``: characters that keep the version label a DNS label.
SNAPSHOT_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_ID_CHARS = 512
#: Longest value quoted back in an error message, and longest asset key in a field path.
MAX_SHOWN_CHARS = 80
MAX_SHOWN_KEY_CHARS = 200
#: The configuration key bounding a snapshot's asset count (named in the refusal).
MAX_ASSETS_KEY = "ZE_WORKER_MAX_SNAPSHOT_ASSETS"
#: Longest integer accepted in a JSON body (Python's own int-from-text limit).
MAX_NUMBER_DIGITS = 4300
#: A ``\\uXXXX`` escape of a UTF-16 surrogate (paired or not; pairs are checked after parsing).
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidLivePayload(ZephyrError):
    """A value found under ``envs:<host>`` is not a usable snapshot (a KV data problem)."""

    code = "invalid_live_payload"


@attrs.frozen
class Asset:
    """One entry of ``snapshot.assets``; ``path`` equals its key."""

    path: str
    extname: str
    hash: str
    size: int


@attrs.frozen
class Snapshot:
    """A deployed version. ``raw`` is the JSON object as sent; treat it as read-only."""

    application_uid: str
    snapshot_id: str
    assets: Mapping[str, Asset] = attrs.field(hash=False, repr=False)
    #: ``createdAt`` (epoch ms) when it is an integer, else ``None``.
    created_at: int | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)
    #: Live payloads only: why entries of ``assets`` were left out (never served).
    skipped_assets: tuple[str, ...] = attrs.field(default=(), eq=False, hash=False, repr=False)

    @property
    def hashes(self) -> frozenset[str]:
        """Every asset hash the snapshot refers to."""
        return frozenset(asset.hash for asset in self.assets.values())

    def to_json(self) -> bytes:
        """The stored form: ``raw`` as compact UTF-8 JSON, every field kept (computed once:
        a large snapshot is written under several keys)."""
        return self._json

    @functools.cached_property
    def _json(self) -> bytes:
        return json.dumps(self.raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


@attrs.frozen
class EnvsPayload:
    """A publish request: point ``hosts`` at ``snapshot_id`` (``jwt`` of the body is dropped)."""

    application_uid: str
    snapshot_id: str
    #: Normalised hosts of ``urls`` then ``url_ids``, duplicates removed, in order.
    hosts: tuple[str, ...]


# --- helpers ----------------------------------------------------------------------------


def _show(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return shorten(text, limit)


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest(f"{field}: {problem}", field=field)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {shorten(text, 40)} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _has_lone_surrogate(data: Any) -> bool:
    """Whether a parsed document holds a string that is not valid Unicode text (a lone
    UTF-16 surrogate from a ``\\ud800``-style escape: it could never be stored as UTF-8)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def load_json_object(body: bytes, field: str = "body") -> dict[str, Any]:
    """A JSON object from a request body (or a stored value): the one place JSON sent to
    the worker is parsed. :class:`BadRequest` naming ``field`` when the body is not UTF-8,
    not JSON (``NaN`` and ``Infinity`` included), nested too deeply, holds a number of
    more digits than Python converts, a lone surrogate escape, or is not an object."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad(field, "not UTF-8 text") from None
    try:
        data = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except json.JSONDecodeError as exc:
        raise _bad(field, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:  # NaN, Infinity, an out-of-range number
        raise _bad(field, f"invalid JSON: {shorten(str(exc), MAX_SHOWN_CHARS)}") from None
    except RecursionError:
        raise _bad(field, "invalid JSON: nested too deeply") from None
    # Decoded strictly, the text itself holds no surrogate: only an escape can make one.
    if _SURROGATE_ESCAPE_RE.search(text) and _has_lone_surrogate(data):
        raise _bad(field, "invalid JSON: a \\u escape encodes a lone UTF-16 surrogate, not a character")
    if not isinstance(data, dict):
        raise _bad(field, "expected a JSON object")
    return data



def _check_ids(obj: Mapping[str, Any], prefix: str, token_uid: str | None) -> tuple[str, str]:
    """Validated ``(application_uid, snapshot_id)`` of ``obj``; fields named with ``prefix``."""
    uid, sid = obj.get("application_uid"), obj.get("snapshot_id")
    if not isinstance(uid, str):
        raise _bad(f"{prefix}application_uid", "expected a string")
    if len(uid) > MAX_ID_CHARS or not APPLICATION_UID_RE.fullmatch(uid):
        raise _bad(f"{prefix}application_uid",
                   f"expected dot-separated labels of [a-z0-9_-] (app.repo.org), got {_show(uid)}")
    if token_uid is not None and uid != token_uid:
        raise _bad(f"{prefix}application_uid",
                   f"{_show(uid)} does not match the write token's application {_show(token_uid)}")
    if not isinstance(sid, str):
        raise _bad(f"{prefix}snapshot_id", "expected a string")
    suffix = "." + uid
    if not sid.endswith(suffix) or len(sid) == len(suffix):
        raise _bad(f"{prefix}snapshot_id", f"expected <version>{suffix}, got {_show(sid)}")
    if len(sid) > MAX_ID_CHARS or not SNAPSHOT_ID_RE.fullmatch(sid):
        raise _bad(f"{prefix}snapshot_id", f"expected letters, digits, '_', '-' and '.' only, got {_show(sid)}")
    return uid, sid


def _parse_asset(key: Any, value: Any) -> Asset:
    """One ``assets`` entry; :class:`BadRequest` naming ``assets["<key>"].<field>``."""
    problem = path_problem(key)
    if problem:
        raise _bad(_where(key), problem)
    if value.__class__ is not dict:
        raise _bad(_where(key), "expected a JSON object")
    if value.get("path") != key:
        raise _bad(f"{_where(key)}.path", f"expected the asset's key {_show(key)}, got {_show(value.get('path'))}")
    extname = value.get("extname")
    if extname is None:
        extname = extension(key)
    elif extname.__class__ is not str:
        raise _bad(f"{_where(key)}.extname", "expected a string")
    digest = value.get("hash")
    if not is_hash(digest):
        raise _bad(f"{_where(key)}.hash", HASH_PROBLEM)
    size = value.get("size")
    if size.__class__ is not int or size < 0:  # JSON gives exact types (bool is no int here)
        raise _bad(f"{_where(key)}.size", f"expected a non-negative integer, got {_show(size)}")
    return Asset(key, extname, digest, size)


def _where(key: Any) -> str:
    return f"assets[{_show(key, MAX_SHOWN_KEY_CHARS)}]"


def _created_at(data: Mapping[str, Any]) -> int | None:
    value = data.get("createdAt")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- public -----------------------------------------------------------------------------


def parse_snapshot(
    body: bytes, application_uid_from_token: str | None, *, max_assets: int | None = None
) -> Snapshot:
    """Validate an uploaded Snapshot JSON (``type=snapshot``) field by field.

    ``application_uid_from_token`` is the verified write token's application; ``None``
    skips that comparison (the caller authorised the write otherwise). Raises
    :class:`BadRequest` whose message and ``field`` name the first wrong field, and
    :class:`PayloadTooLarge` when ``assets`` has more than ``max_assets`` entries.
    """
    return snapshot_from_object(load_json_object(body, "body"), application_uid_from_token, max_assets=max_assets)


def parse_snapshot_upload(body: bytes, max_assets: int | None = None) -> Snapshot:
    """:func:`parse_snapshot` of an upload (the token is compared by the caller), its
    stored form computed too: everything a large snapshot costs, in one call that can run
    off the event loop."""
    snapshot = parse_snapshot(body, None, max_assets=max_assets)
    snapshot.to_json()
    return snapshot


def snapshot_from_object(
    data: dict[str, Any], application_uid_from_token: str | None, *, max_assets: int | None = None
) -> Snapshot:
    """:func:`parse_snapshot` of an already parsed JSON object (from
    :func:`load_json_object`, e.g. a replicated snapshot inside a sync body)."""
    uid, sid = _check_ids(data, "", application_uid_from_token)
    assets = data.get("assets")
    if not isinstance(assets, dict):
        raise _bad("assets", "expected a JSON object mapping paths to assets")
    if max_assets is not None and len(assets) > max_assets:
        raise PayloadTooLarge(
            f"assets: {len(assets)} entries, more than the limit of {max_assets} ({MAX_ASSETS_KEY})"
        )
    parsed = {key: _parse_asset(key, value) for key, value in assets.items()}
    return Snapshot(uid, sid, parsed, _created_at(data), data)


def load_live_payload(raw: bytes) -> Snapshot:
    """Read the value of ``envs:<host>`` (or ``snapshots:<id>``): the snapshot JSON itself.

    Tolerant of what a hand copy may hold: a BOM, extra or missing metadata, ids of any
    format; asset entries that are unsafe or malformed are left out (listed in
    :attr:`Snapshot.skipped_assets`) rather than failing the host. Raises
    :class:`InvalidLivePayload` when there is nothing to serve from (not a JSON object,
    no ``assets`` object).
    """
    try:
        data = load_json_object(raw, "live payload")
    except BadRequest as exc:
        raise InvalidLivePayload(str(exc)) from None
    assets = data.get("assets")
    if not isinstance(assets, dict):
        raise InvalidLivePayload("live payload: no \"assets\" object; expected a snapshot JSON")
    parsed: dict[str, Asset] = {}
    skipped: list[str] = []
    for key, value in assets.items():
        try:
            parsed[key] = _parse_asset(key, value)
        except BadRequest as exc:
            skipped.append(str(exc))
    uid, sid = data.get("application_uid"), data.get("snapshot_id")
    return Snapshot(
        uid if isinstance(uid, str) else "", sid if isinstance(sid, str) else "",
        parsed, _created_at(data), data, tuple(skipped),
    )


def _host_of(item: Any, field: str) -> str:
    if not isinstance(item, str) or not item.strip():
        raise _bad(field, "expected a non-empty string")
    text = item.strip()
    try:
        authority = urlsplit(text if "://" in text else "//" + text).netloc
    except ValueError:  # e.g. "https://[x": an unclosed IPv6 bracket
        authority = ""
    host = normalize_host(authority.rpartition("@")[2])
    if host is None:
        raise _bad(field, f"expected a URL or host name with a valid host, got {_show(item)}")
    return host


def parse_envs_payload(body: bytes, application_uid_from_token: str | None = None) -> EnvsPayload:
    """Validate a publish body (``type=envs``): ``{"app_version": {"application_uid",
    "snapshot_id"}, "urls": [...], "url_ids": [...], "jwt"}``.

    Hosts come from each URL of ``urls`` (its host) and each entry of ``url_ids`` (a host
    name, or a URL). Missing lists count as empty. Raises :class:`BadRequest` naming the
    field (e.g. ``urls[2]``).
    """
    data = load_json_object(body, "body")
    version = data.get("app_version")
    if not isinstance(version, dict):
        raise _bad("app_version", "expected a JSON object with application_uid and snapshot_id")
    uid, sid = _check_ids(version, "app_version.", application_uid_from_token)
    hosts: dict[str, None] = {}
    for name in ("urls", "url_ids"):
        items = data.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise _bad(name, "expected a list of strings")
        for index, item in enumerate(items):
            hosts.setdefault(_host_of(item, f"{name}[{index}]"), None)
    return EnvsPayload(uid, sid, tuple(hosts))
