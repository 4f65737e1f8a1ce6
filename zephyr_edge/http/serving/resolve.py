"""Delivery decisions without I/O: URL path → asset and the ``Range`` header.

:func:`resolve_path` answers which asset of a snapshot a request path names, or ``None``
(404). :func:`parse_range` reads a single-range ``Range`` header per RFC 9110 section 14.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import unquote

from zephyr_edge.domain.assets import extension
from zephyr_edge.errors import ZephyrError

#: The document served for "/", for directories and as the SPA fallback.
INDEX = "index.html"
#: The only range unit we serve (compared case-insensitively, RFC 9110 14.1).
RANGE_UNIT = "bytes"
#: Digits of a byte position kept as sent; longer ones are past the end of anything.
MAX_POSITION_DIGITS = 19

_RANGE_SPEC_RE = re.compile(r"([0-9]*)-([0-9]*)")

T = TypeVar("T")


class RangeNotSatisfiable(ZephyrError):
    """A single byte range none of whose bytes exist (416).

    The response must carry ``Content-Range: bytes */<size>`` (:attr:`content_range`).
    """

    status = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int):
        self.size = size
        super().__init__(f"requested range not satisfiable (size {size})")

    @property
    def content_range(self) -> str:
        return f"{RANGE_UNIT} */{self.size}"


def decode_path(raw_path: str) -> str | None:
    """The asset key a raw request path names before fallbacks, or ``None`` if undecodable.

    Drops a query string, strips the leading ``/``, percent-decodes as UTF-8 (invalid
    UTF-8 or a NUL → ``None``); ``""`` becomes ``index.html``.
    """
    path = raw_path.split("?", 1)[0]
    if path.startswith("/"):
        path = path[1:]
    try:
        path = unquote(path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in path:
        return None
    return path or INDEX


def resolve_path(raw_path: str, assets: Mapping[str, T]) -> T | None:
    """The asset a request path names (Zephyr's rules, below), or ``None`` for a 404.

    1. exact key; 2. a path ending in ``/`` tries ``path + "index.html"``;
    3. a last segment without extension falls back to ``index.html`` (single-page apps);
    anything else with an extension is never answered with ``index.html``.
    A base-path prefix (``app/assets/main.js``) needs nothing special: keys carry it.
    """
    path = decode_path(raw_path)
    if path is None:
        return None
    found = assets.get(path)
    if found is not None:
        return found
    if path.endswith("/"):
        found = assets.get(path + INDEX)
        if found is not None:
            return found
    if extension(path) == "":
        return assets.get(INDEX)
    return None


def _position(digits: str) -> str:
    """A byte position as sent, or, when it has more digits than any size can (Python
    would refuse to convert 4,300 of them), one just as far beyond every size."""
    if not digits:
        return digits
    stripped = digits.lstrip("0") or "0"
    return stripped if len(stripped) <= MAX_POSITION_DIGITS else "9" * MAX_POSITION_DIGITS


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(start, end)`` a ``Range`` header asks of ``size`` bytes.

    ``None`` means "ignore the header, answer 200 with the whole body": no header, another
    unit, invalid syntax (including ``last < first``), several ranges, or a suffix range of
    an empty body. Raises :class:`RangeNotSatisfiable` (416) when the single range starts at
    or beyond the end, or is the suffix ``-0``.
    """
    if header is None:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip().lower() != RANGE_UNIT:
        return None
    specs = [spec.strip() for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # the list rule tolerates empty elements
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC_RE.fullmatch(specs[0])
    if match is None:
        return None
    first, last = (_position(g) for g in match.groups())
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            raise RangeNotSatisfiable(size)
        return start, min(end, size - 1)
    if not last:
        return None
    suffix = int(last)
    if suffix == 0:
        raise RangeNotSatisfiable(size)
    if size == 0:
        return None
    return max(0, size - suffix), size - 1
