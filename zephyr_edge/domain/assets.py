"""Assets: the hash rule, path validation, storage keys and response metadata by path.

Pure functions, no I/O.

Hash rule, as ``zephyr-agent`` computes it::

    h = hashlib.sha256(body or p); h.update(p); h.hexdigest()   # p = filename.encode()

:class:`AssetHasher` computes it incrementally while a body streams in.
"""

from __future__ import annotations

import hashlib
import re

from zephyr_edge.errors import BadRequest

#: An asset hash: sha256 hex digest, lower case.
HASH_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
HASH_PROBLEM = "expected 64 lower-case hex characters"
#: Top folder of asset objects in storage: ``assets/ab/cd/<hash>``.
STORAGE_PREFIX = "assets"

CHARSET = "; charset=utf-8"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TEXT = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".cjs": "text/javascript",
    ".json": "application/json", ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".css": "text/css", ".html": "text/html", ".htm": "text/html",
    ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv",
    ".xml": "application/xml", ".svg": "image/svg+xml",
}
_BINARY = {
    ".wasm": "application/wasm",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".avif": "image/avif", ".ico": "image/x-icon", ".bmp": "image/bmp",
    ".apng": "image/apng",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".wav": "audio/wav", ".pdf": "application/pdf", ".zip": "application/zip",
}
#: Media types worth compressing besides ``text/*`` (already-compressed formats are not).
COMPRESSIBLE_TYPES = frozenset({
    "application/json", "application/manifest+json", "application/xml", "application/javascript",
    "image/svg+xml", "application/wasm", "font/ttf", "font/otf", "application/vnd.ms-fontobject",
    "image/x-icon", "image/bmp",
})

CACHE_NO_CACHE = "no-cache"
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
#: Files that must revalidate: HTML documents and Zephyr's runtime manifest.
NO_CACHE_EXTENSIONS = frozenset({".html", ".htm"})
NO_CACHE_NAMES = frozenset({"zephyr-manifest.json"})


class AssetHasher:
    """Incremental protocol-4.1 hash of one upload: feed chunks, then :meth:`hexdigest`.

    When no byte at all was fed, the first update is the filename (``body or p``).
    """

    __slots__ = ("_p", "_sha", "_size", "_digest")

    def __init__(self, filename: str):
        self._p = filename.encode("utf-8")
        self._sha = hashlib.sha256()
        self._size = 0
        self._digest: str | None = None

    @property
    def size(self) -> int:
        """Body bytes fed so far."""
        return self._size

    def update(self, chunk: bytes) -> None:
        if self._digest is not None:
            raise RuntimeError("AssetHasher.update() after hexdigest()")
        if chunk:
            self._sha.update(chunk)
            self._size += len(chunk)

    def hexdigest(self) -> str:
        """The hash (idempotent; the hasher takes no more bytes afterwards)."""
        if self._digest is None:
            if self._size == 0:
                self._sha.update(self._p)
            self._sha.update(self._p)
            self._digest = self._sha.hexdigest()
        return self._digest


def asset_hash(body: bytes, filename: str) -> str:
    """The protocol-4.1 hash of a whole body."""
    hasher = AssetHasher(filename)
    hasher.update(body)
    return hasher.hexdigest()


def is_hash(value: object) -> bool:
    """Whether ``value`` is a well-formed asset hash."""
    return isinstance(value, str) and HASH_RE.fullmatch(value) is not None


def validate_hash(value: object, field: str = "hash") -> str:
    """``value`` if it is a well-formed hash, else :class:`BadRequest` naming ``field``."""
    if not is_hash(value):
        raise BadRequest(f"{field}: {HASH_PROBLEM}", field=field)
    return value  # type: ignore[return-value]


def path_problem(path: object) -> str | None:
    """Why ``path`` is no acceptable asset path (relative, no ``..``...), or ``None``."""
    if not isinstance(path, str) or not path:
        return "expected a non-empty string"
    if _CONTROL_RE.search(path):
        return "must not contain NUL or other control characters"
    if "\\" in path:
        return "must not contain a backslash"
    if path.startswith("/"):
        return "must be a relative path (no leading '/')"
    if ".." in path.split("/"):
        return "must not contain a '..' segment"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def validate_filename(filename: object, field: str = "filename") -> str:
    """The upload's ``filename`` if acceptable, else :class:`BadRequest` naming ``field``."""
    problem = path_problem(filename)
    if problem:
        raise BadRequest(f"{field}: {problem}", field=field)
    return filename  # type: ignore[return-value]


def storage_key(asset_hash: str) -> str:
    """The storage object key of a hash, spread over folders: ``assets/ab/cd/<hash>``.

    Raises :class:`ValueError` for a malformed hash (it becomes a path in some backends).
    """
    if not is_hash(asset_hash):
        raise ValueError(f"not an asset hash: {asset_hash!r}")
    return f"{STORAGE_PREFIX}/{asset_hash[:2]}/{asset_hash[2:4]}/{asset_hash}"


def extension(path: str) -> str:
    """The lower-cased extension of the last segment (``".js"``), ``""`` if none.

    A leading dot does not start an extension (``.htaccess`` has none).
    """
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def content_type(path: str) -> str:
    """``Content-Type`` by extension; text types carry ``charset=utf-8``."""
    ext = extension(path)
    if ext in _TEXT:
        return _TEXT[ext] + CHARSET
    return _BINARY.get(ext, DEFAULT_CONTENT_TYPE)


def is_compressible(media_type: str) -> bool:
    """Whether a response of this ``Content-Type`` (parameters allowed) is worth compressing."""
    base = media_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base in COMPRESSIBLE_TYPES


def cache_control(path: str) -> str:
    """``Cache-Control`` by path: HTML and ``zephyr-manifest.json`` revalidate, the rest is
    immutable (a base-path prefix does not matter)."""
    name = path.rsplit("/", 1)[-1]
    if extension(name) in NO_CACHE_EXTENSIONS or name in NO_CACHE_NAMES:
        return CACHE_NO_CACHE
    return CACHE_IMMUTABLE
