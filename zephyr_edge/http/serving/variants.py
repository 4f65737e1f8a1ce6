"""What an asset answers on a given host, computed once and reused by every request:
per-variant headers (identity and each codec), ETags, cache policy, and ``If-None-Match``.

Cache policy (Zephyr's, refined): an asset's bytes never change under its hash, but a
*URL* only keeps its bytes on a **version hostname**, whose snapshot is fixed. Tag,
environment and custom-domain hosts move on every publish, and an un-hashed name such as
``remoteEntry.js`` changes bytes under the same URL. So:

- ``*.html`` and ``zephyr-manifest.json``: ``no-cache`` everywhere;
- other assets on the snapshot's version host: ``public, max-age=31536000, immutable``;
- other assets on any other host: ``public, max-age=0, must-revalidate`` (browsers
  revalidate with the ETag and get a 304 while the bytes are unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from multidict import CIMultiDict, CIMultiDictProxy

from zephyr_edge.domain import assets
from zephyr_edge.http.serving.compression import Codec
from zephyr_edge.domain.snapshot import Asset

#: ``Cache-Control`` of assets on hosts whose snapshot may change (tags, environments...).
CACHE_REVALIDATE = "public, max-age=0, must-revalidate"
#: Bodies below this size are never compressed (the gain does not pay the coding).
MIN_COMPRESS_BYTES = 1024
#: CORS: module federation loads remotes cross-origin; everything served is public.
CORS_HEADERS: Mapping[str, str] = MappingProxyType({
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, Content-Length, Content-Range, Content-Encoding",
})
#: CORS preflight answer (OPTIONS).
PREFLIGHT_METHODS = "GET, HEAD, OPTIONS"
PREFLIGHT_DEFAULT_HEADERS = "Range, If-None-Match, If-Range, Accept-Encoding"
PREFLIGHT_MAX_AGE_S = 86400
#: Headers a 304 repeats (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = ("ETag", "Cache-Control", "Vary", *CORS_HEADERS)


class Variant:
    """One representation of an asset: identity or one content coding."""

    __slots__ = ("codec", "etag", "cache_key", "headers", "not_modified_headers")

    def __init__(self, codec: Codec | None, asset_hash: str, base: Mapping[str, str], weak: bool = False):
        self.codec = codec
        #: key of these bytes in the asset cache: the ETag without its quotes
        self.cache_key = asset_hash + (codec.etag_suffix if codec else "")
        self.etag = f'W/"{self.cache_key}"' if weak else f'"{self.cache_key}"'
        headers = dict(base)
        headers["ETag"] = self.etag
        if codec is not None:
            headers["Content-Encoding"] = codec.token
        # Read-only CIMultiDicts: aiohttp copies a response's headers, and copying one of
        # these costs a fifth of copying a dict (a warm request does it once).
        self.headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(headers))
        self.not_modified_headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(
            (k, headers[k]) for k in NOT_MODIFIED_HEADERS if k in headers
        ))


class Route:
    """An asset as served on one host: its variants and how to deliver it."""

    __slots__ = ("asset", "storage_key", "encodable", "stream", "identity", "encoded")

    def __init__(self, asset: Asset, immutable_host: bool, codecs: tuple[Codec, ...], max_cached_bytes: int):
        self.asset = asset
        self.storage_key = assets.storage_key(asset.hash)
        media_type = assets.content_type(asset.path)
        compressible = assets.is_compressible(media_type)
        #: too large for the cache: streamed from storage (and compressed on the fly)
        self.stream = asset.size > max_cached_bytes
        #: a codec may be negotiated: compressible type, body not tiny
        self.encodable = compressible and asset.size >= MIN_COMPRESS_BYTES
        cache_control = assets.cache_control(asset.path)
        if cache_control == assets.CACHE_IMMUTABLE and not immutable_host:
            cache_control = CACHE_REVALIDATE
        base = {
            "Content-Type": media_type,
            "Cache-Control": cache_control,
            "Accept-Ranges": "bytes",
            "X-Content-Type-Options": "nosniff",
            **CORS_HEADERS,
        }
        if compressible:
            base["Vary"] = "Accept-Encoding"
        self.identity = Variant(None, asset.hash, base)
        # Compressed on the fly, a streamed variant's bytes are only equivalent, not
        # byte-identical, across zlib/brotli versions: its ETag is weak.
        usable = [c for c in codecs if not self.stream or c.stream is not None]
        self.encoded: Mapping[str, Variant] = (
            {c.token: Variant(c, asset.hash, base, weak=self.stream) for c in usable} if self.encodable else {}
        )

    def variant(self, codec: Codec | None) -> Variant:
        """The representation for ``codec`` (identity for None or a codec this route
        cannot produce)."""
        if codec is None:
            return self.identity
        return self.encoded.get(codec.token, self.identity)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, lists, ``*``)."""
    if if_none_match == etag:
        return True
    if etag.startswith("W/"):
        etag = etag[2:]
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def preflight_headers(requested_headers: str | None) -> dict[str, str]:
    """Headers of a 204 preflight answer; requested headers are allowed back (no
    credentials are involved, everything served is public)."""
    headers = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": PREFLIGHT_METHODS,
        "Access-Control-Allow-Headers": requested_headers or PREFLIGHT_DEFAULT_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    }
    if requested_headers:
        headers["Vary"] = "Access-Control-Request-Headers"
    return headers
