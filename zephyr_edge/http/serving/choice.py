"""What an asset request answers, decided without I/O: the variant (content coding), a 304,
and the ``Range`` still in force.

:func:`choose` is pure: it reads the request's conditional headers and the
:class:`~zephyr_edge.http.serving.variants.Route`, and returns a :class:`Choice`; the
handler (:mod:`zephyr_edge.http.serving.handler`) only sends it. The rules:

- ``If-Range`` naming another ETag than the identity's drops the ``Range`` (the client's
  copy is outdated: it gets the whole body);
- a coded variant only for an encodable asset, when no ``Range`` is in force and
  ``Accept-Encoding`` picks a codec; never one that turned out not to pay
  (``worth_encoding`` says which, see :mod:`~zephyr_edge.http.serving.assetcache`);
- ``If-None-Match`` matching the chosen variant's ETag → 304.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from zephyr_edge.http.serving.compression import Negotiator
from zephyr_edge.http.serving.variants import Route, Variant, etag_matches


class Choice(NamedTuple):
    """The answer to send: ``variant``'s bytes, ``range`` (the ``Range`` header still in
    force, None for the whole body), or a 304 when ``not_modified``."""

    variant: Variant
    range: str | None
    not_modified: bool


def choose(
    route: Route,
    *,
    accept_encoding: str | None,
    range_header: str | None,
    if_range: str | None,
    if_none_match: str | None,
    negotiator: Negotiator,
    worth_encoding: Callable[[str], bool],
) -> Choice:
    """The :class:`Choice` for a GET or HEAD of ``route`` (see the module docstring)."""
    if range_header is not None and if_range is not None and if_range.strip() != route.identity.etag:
        range_header = None
    codec = None
    if route.encodable and range_header is None and accept_encoding:
        codec = negotiator.choose(accept_encoding)
    variant = route.variant(codec)
    if variant.codec is not None and not worth_encoding(variant.cache_key):
        variant = route.identity
    not_modified = if_none_match is not None and etag_matches(if_none_match, variant.etag)
    return Choice(variant, range_header, not_modified)
