"""Hostnames and KV keys: Zephyr's version label rule, Host normalisation, key building.

Pure functions, no I/O. Every host stored or looked up in the KV goes through
:func:`normalize_host` first, so that ``App.Example.COM:443`` and ``app.example.com.``
find the same ``envs:`` record.

Redis Cluster hash tags: the configured prefixes (``{ze-k8s-worker}:envs:`` and
``{ze-k8s-worker}:snapshots:``) must carry the same ``{...}`` tag, and every extra key of
ours is built with :func:`tagged_key` so that it carries it too (multi-key transactions
then stay within one slot). Our extra keys are namespaced by the tag alone: two
deployments sharing one Redis must use different tags.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from zephyr_edge.errors import ConfigError

if TYPE_CHECKING:
    from zephyr_edge.settings.fields import WorkerConfig

#: Zephyr's version label: the first 49 characters of the slug, "-", 9 hex chars of its sha256.
LABEL_SLUG_CHARS = 49
LABEL_HASH_CHARS = 9
#: Delimiters that may join a label to the edge host (``ZE_WORKER_DELIMITER``).
DELIMITERS = ("-", ".", "_")
#: DNS limits (RFC 1035): a label is 1..63 characters, a name at most 253.
MAX_LABEL_CHARS = 63
MAX_HOST_CHARS = 253
#: Longest Host header that may hold a valid name: 253 characters, a trailing dot and a
#: port of at most 5 digits (an IPv6 literal is shorter).
MAX_HOST_HEADER_CHARS = MAX_HOST_CHARS + 7
#: Configuration keys named in problem strings.
PREFIX_ENVS_KEY = "ZE_WORKER_REDIS_PREFIX_ENVS"
PREFIX_SNAPSHOTS_KEY = "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS"
#: Separator between the hash tag and the parts of a key of ours.
KEY_SEPARATOR = ":"

# "_" is allowed: a delimiter may be "_" and Zephyr's own ids may carry it.
_LABEL_RE = re.compile(r"[a-z0-9_-]{1,%d}" % MAX_LABEL_CHARS)
_PORT_RE = re.compile(r"[0-9]{0,5}")
_HEX_RE = re.compile(r"[0-9a-f]+")


def version_label(snapshot_id: str) -> str:
    """Zephyr's version label of ``snapshot_id`` (as the agent and Zephyr's own edge build it), case preserved.

    ``slug = snapshot_id.replace(".", "-")``; ``slug[:49] + "-" + sha256(slug)[:9]``.
    """
    slug = snapshot_id.replace(".", "-")
    digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()
    return f"{slug[:LABEL_SLUG_CHARS]}-{digest[:LABEL_HASH_CHARS]}"


def _label_shapes(host: str) -> Iterator[tuple[str, str, bool]]:
    """``(slug, label, verified)`` for each way ``host`` starts with ``<slug>-<9 hex>`` and
    a delimiter (then more): ``verified`` when the hex is the start of ``sha256(slug)`` or
    the slug has the full :data:`LABEL_SLUG_CHARS` (the slug of a longer id was cut: its
    hash cannot be checked, the whole shape is reserved)."""
    end = len(host)
    start = host.find("-")
    while 0 < start <= LABEL_SLUG_CHARS and "." not in host[:start]:
        tail = start + 1 + LABEL_HASH_CHARS
        digest = host[start + 1 : tail]
        if tail < end - 1 and host[tail] in DELIMITERS and _HEX_RE.fullmatch(digest):
            slug = host[:start]
            full = hashlib.sha256(slug.encode("utf-8")).hexdigest()[:LABEL_HASH_CHARS]
            yield slug, host[:tail], start == LABEL_SLUG_CHARS or full == digest
        start = host.find("-", start + 1)


def claimed_version_label(host: str) -> str | None:
    """The version label ``host`` (normalised) verifiably starts with, or None: a version
    hostname belongs to its snapshot id, even before that snapshot exists.

    Recognised: ``<slug>-<9 hex><delimiter><rest>`` (any of :data:`DELIMITERS`, so
    ``<label>.localhost`` too) where the 9 hex characters are the start of
    ``sha256(slug)``, or where the slug has the full :data:`LABEL_SLUG_CHARS`. The label of
    an id with upper-case letters does not verify against the lower-cased host (see
    :func:`version_host_conflict` for how such hosts are kept).
    """
    return next((label for _, label, verified in _label_shapes(host) if verified), None)


def is_version_host_of(host: str, snapshot_id: str) -> bool:
    """Whether ``host`` (normalised) is ``snapshot_id``'s own version hostname, joined to an
    edge host by any delimiter (``<label>.localhost`` included)."""
    if not snapshot_id:
        return False
    label = version_label(snapshot_id).lower()
    return any(host.startswith(label + d) and len(host) > len(label) + 1 for d in DELIMITERS)


def version_host_conflict(
    host: str, snapshot_id: str, serving_id: str | None, application_uid: str | None = None,
) -> str | None:
    """Why pointing ``host`` (normalised) at ``snapshot_id`` (of ``application_uid``) would
    move a version hostname, or None. A version hostname only ever points at its own
    snapshot. Refused:

    - the version hostname of ``serving_id``, the snapshot ``host`` serves now;
    - a host carrying another id's verified version label (:func:`claimed_version_label`),
      whether that snapshot exists or not;
    - a host of the version label's shape whose hash does not verify (the label of an id
      with upper-case letters, or a name that merely looks like one), unless its slug ends
      with ``application_uid`` (dots as dashes): only that application's ids can have it.
    """
    if is_version_host_of(host, snapshot_id):
        return None
    if serving_id and serving_id != snapshot_id and is_version_host_of(host, serving_id):
        return f"{host} is the version hostname of snapshot {serving_id!r}; version hostnames never move"
    own_suffix = "-" + application_uid.replace(".", "-") if application_uid else None
    for slug, label, verified in _label_shapes(host):
        if verified:
            return (
                f"{host} is a version hostname (label {label!r} is reserved for the snapshot it names), "
                f"not the one of snapshot {snapshot_id!r}; version hostnames never move"
            )
        if own_suffix is None or not slug.endswith(own_suffix):
            return (
                f"{host} starts with {label!r}, the shape of a version label (<slug>-<9 hex>), which is "
                f"reserved for snapshot uploads; choose a hostname without it"
            )
    return None


def label_host(label: str, edge_host: str, delimiter: str) -> str:
    """``label`` joined to ``edge_host`` by ``delimiter``, normalised.

    Raises :class:`ValueError` for an unknown delimiter or a result that is no valid host.
    """
    if delimiter not in DELIMITERS:
        raise ValueError(f"unknown delimiter {delimiter!r}; expected one of {', '.join(DELIMITERS)}")
    edge = normalize_host(edge_host)
    if edge is None:
        raise ValueError(f"invalid edge host {edge_host!r}")
    host = normalize_host(f"{label}{delimiter}{edge}")
    if host is None:
        raise ValueError(f"{label!r} joined to {edge!r} is not a valid host name")
    return host


def version_host(snapshot_id: str, edge_host: str, delimiter: str) -> str:
    """The host serving ``snapshot_id``: ``<label><delimiter><edge host>``, lower-cased."""
    return label_host(version_label(snapshot_id), edge_host, delimiter)


def normalize_host(host: str | None) -> str | None:
    """A Host header (or URL authority) as a KV lookup name, or ``None`` if it is invalid.

    Lower-cases, removes a port, the brackets of an IPv6 literal and one trailing dot;
    converts an internationalised name to its ASCII (punycode) form. Labels may hold
    ``[a-z0-9_-]``. :func:`host_problem` says why a host is invalid.
    """
    return parse_host(host)[0]


def host_problem(host: str | None) -> str | None:
    """Why ``host`` cannot be a host name (a short, fixed phrase), or ``None`` if it can."""
    return parse_host(host)[1]


def parse_host(host: str | None) -> tuple[str | None, str | None]:
    """``(normalised host, None)``, or ``(None, why it is invalid)``: see :func:`normalize_host`.

    Anything longer than :data:`MAX_HOST_HEADER_CHARS` is refused before any other work
    (no valid name, with a port, is longer), so callers may remember hosts as sent.
    """
    if not host or not host.strip():
        return None, "empty"
    if len(host) > MAX_HOST_HEADER_CHARS:
        return None, f"longer than {MAX_HOST_CHARS} characters"
    text = host.strip().lower()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or not (rest == "" or (rest[0] == ":" and _PORT_RE.fullmatch(rest[1:]))):
            return None, "not a valid [IPv6] literal with an optional port"
        return _ipv6(inner)
    if text.count(":") > 1:
        return _ipv6(text)
    name, colon, port = text.partition(":")
    if colon and not _PORT_RE.fullmatch(port):
        return None, "the port is not a number of at most 5 digits"
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None, "not a valid internationalised domain name"
    if len(name) > MAX_HOST_CHARS:
        return None, f"longer than {MAX_HOST_CHARS} characters"
    for label in name.split("."):
        if not _LABEL_RE.fullmatch(label):
            if not label:
                return None, "an empty label"
            if len(label) > MAX_LABEL_CHARS:
                return None, f"a label longer than {MAX_LABEL_CHARS} characters"
            return None, "characters other than letters, digits, '-', '_' and '.'"
    return name, None


def _ipv6(text: str) -> tuple[str | None, str | None]:
    if "%" in text:  # a zone id ("fe80::1%eth0") names an interface of the client's machine
        return None, "an IPv6 zone id is not allowed"
    try:
        return ipaddress.IPv6Address(text).compressed, None
    except ValueError:
        return None, "not a valid IPv6 address"


# --- KV keys ----------------------------------------------------------------------------


def envs_key(prefix_envs: str, host: str) -> str:
    """The KV key of the live payload of ``host`` (already normalised)."""
    return prefix_envs + host


def snapshots_key(prefix_snapshots: str, snapshot_id: str) -> str:
    """The KV key of the snapshot ``snapshot_id``."""
    return prefix_snapshots + snapshot_id


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of ``key`` with its braces (``"{x}"``), or ``None``.

    Redis' rule: the part between the first ``{`` and the first ``}`` after it, when
    that part is not empty.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start : end + 1]


def prefix_problems(prefix_envs: str, prefix_snapshots: str) -> list[str]:
    """Configuration problems of the two KV prefixes (empty when they are usable)."""
    problems = []
    tags = {}
    for key, prefix in ((PREFIX_ENVS_KEY, prefix_envs), (PREFIX_SNAPSHOTS_KEY, prefix_snapshots)):
        tags[key] = hash_tag(prefix)
        if tags[key] is None:
            problems.append(
                f"{key}: {prefix!r} has no Redis Cluster hash tag; "
                "expected a non-empty {...} part such as '{ze-k8s-worker}:envs:'"
            )
    if not problems and tags[PREFIX_ENVS_KEY] != tags[PREFIX_SNAPSHOTS_KEY]:
        problems.append(
            f"{PREFIX_ENVS_KEY} and {PREFIX_SNAPSHOTS_KEY} must carry the same hash tag, "
            f"got {tags[PREFIX_ENVS_KEY]} and {tags[PREFIX_SNAPSHOTS_KEY]}"
        )
    if prefix_envs == prefix_snapshots:
        problems.append(f"{PREFIX_ENVS_KEY} and {PREFIX_SNAPSHOTS_KEY} must differ, both are {prefix_envs!r}")
    return problems


def configured_hash_tag(config: WorkerConfig) -> str:
    """The hash tag shared by the configured prefixes; :class:`ConfigError` if there is none."""
    problems = prefix_problems(config.redis_prefix_envs, config.redis_prefix_snapshots)
    if problems:
        raise ConfigError(problems)
    tag = hash_tag(config.redis_prefix_envs)
    assert tag is not None  # checked by prefix_problems
    return tag


def tagged_key(prefix: str, *parts: str) -> str:
    """A key of ours carrying ``prefix``'s hash tag: ``tagged_key("{t}:envs:", "hashes", u)``
    is ``"{t}:hashes:u"``. Raises :class:`ValueError` if ``prefix`` has no tag or a part is
    empty."""
    tag = hash_tag(prefix)
    if tag is None:
        raise ValueError(f"{prefix!r} has no Redis Cluster hash tag")
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"key parts must be non-empty strings, got {parts!r}")
    return KEY_SEPARATOR.join((tag, *parts))
