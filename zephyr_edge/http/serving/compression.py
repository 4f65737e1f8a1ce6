"""Content codings of the serve path: gzip always, brotli when the optional ``brotli``
module is importable, and ``Accept-Encoding`` negotiation (RFC 9110 section 12.5.3).

A compressed answer is a representation of its own: its ``ETag`` carries the codec's
suffix (``"<hash>-gz"``, ``"<hash>-br"``), so a cache never confuses it with the
identity bytes (``"<hash>"``). Output is deterministic (gzip's mtime is 0), so every
worker produces the same bytes for the same ETag.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import attrs

log = logging.getLogger(__name__)

#: zlib level for gzip (compressed once per asset, then cached).
GZIP_LEVEL = 6
#: brotli quality (0-11): 5 is the usual balance of time and size for on-the-fly work.
BROTLI_QUALITY = 5
#: Optional module providing brotli (``pip install brotli``); not a dependency.
BROTLI_MODULE = "brotli"
#: ``Accept-Encoding`` values remembered per negotiator (a few distinct values in practice).
MAX_REMEMBERED_HEADERS = 256


class StreamCoder(Protocol):
    """An incremental compressor: feed chunks, then flush once."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


@attrs.frozen
class Codec:
    """One content coding: its ``Content-Encoding`` token, ETag suffix and compressor,
    and (for assets streamed from storage) a factory of incremental compressors."""

    token: str
    etag_suffix: str
    compress: Callable[[bytes], bytes] = attrs.field(eq=False, repr=False)
    #: Other tokens naming the same coding in ``Accept-Encoding`` (``x-gzip``).
    aliases: tuple[str, ...] = ()
    #: A new incremental compressor, or None when this codec can only compress whole bodies.
    stream: Callable[[], StreamCoder] | None = attrs.field(default=None, eq=False, repr=False)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def _gzip_stream() -> StreamCoder:
    # wbits 31: a gzip container (mtime 0, so the output is deterministic too)
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)


GZIP = Codec("gzip", "-gz", _gzip, ("x-gzip",), _gzip_stream)


class _BrotliStream:
    """``brotli.Compressor`` under the :class:`StreamCoder` names."""

    __slots__ = ("_compressor",)

    def __init__(self, compressor: Any):
        self._compressor = compressor

    def compress(self, data: bytes) -> bytes:
        return self._compressor.process(data)

    def flush(self) -> bytes:
        return self._compressor.finish()


def brotli_codec() -> Codec | None:
    """The brotli codec if the ``brotli`` module is importable, else None."""
    try:
        module = importlib.import_module(BROTLI_MODULE)
    except ImportError:
        return None
    quality = BROTLI_QUALITY

    def compress(data: bytes) -> bytes:
        return module.compress(data, quality=quality)

    def stream() -> StreamCoder:
        return _BrotliStream(module.Compressor(quality=quality))

    return Codec("br", "-br", compress, stream=stream if hasattr(module, "Compressor") else None)


def available_codecs() -> tuple[Codec, ...]:
    """Codecs this process can produce, most preferred first (brotli, then gzip)."""
    br = brotli_codec()
    if br is None:
        log.debug("brotli module not importable; compressing with gzip only")
    return (br, GZIP) if br is not None else (GZIP,)


def _quality(params: list[str]) -> float | None:
    """The ``q`` of one list element's parameters (1.0 without one); None if invalid."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0


def negotiate(header: str, codecs: tuple[Codec, ...]) -> Codec | None:
    """The codec to answer with for ``Accept-Encoding: header``, or None for identity.

    The highest ``q`` above 0 wins; ties go to the order of ``codecs``. ``*`` covers the
    codings not named; ``q=0`` refuses a coding (also when ``*`` would accept it). Invalid
    elements are ignored.
    """
    named: dict[str, float] = {}
    wildcard: float | None = None
    for element in header.split(","):
        token, *params = element.split(";")
        token = token.strip().lower()
        if not token:
            continue
        q = _quality(params)
        if q is None:
            continue
        if token == "*":
            wildcard = q
        else:
            named[token] = max(q, named.get(token, 0.0))
    best: Codec | None = None
    best_q = 0.0
    for codec in codecs:
        qs = [named[t] for t in (codec.token, *codec.aliases) if t in named]
        q = max(qs) if qs else (wildcard or 0.0)
        if q > best_q:
            best, best_q = codec, q
    return best


class Negotiator:
    """:func:`negotiate` remembering its answers per header value (bounded)."""

    __slots__ = ("codecs", "_memo")

    def __init__(self, codecs: tuple[Codec, ...]):
        self.codecs = codecs
        self._memo: dict[str, Codec | None] = {}

    def choose(self, header: str) -> Codec | None:
        try:
            return self._memo[header]
        except KeyError:
            pass
        codec = negotiate(header, self.codecs)
        if len(self._memo) >= MAX_REMEMBERED_HEADERS:
            self._memo.clear()
        self._memo[header] = codec
        return codec
