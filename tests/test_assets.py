"""Assets: the protocol-4.1 hash, path validation, storage keys, response metadata."""

from __future__ import annotations

import hashlib

import pytest

from zephyr_edge.domain import assets
from zephyr_edge.errors import BadRequest

# Expected digests computed outside Python with coreutils, e.g.
#   printf 'a.txta.txt' | sha256sum           (empty body: sha256(p) then p)
#   printf 'hello\nassets/main.js' | sha256sum (body then p)
EMPTY_A_TXT = "ad56a22be7ab164aef71cf6af7f8d2e01ca52c70f0ddbc352f13e9bc84688310"
HELLO_MAIN_JS = "1f5c01f4c10388a6eef194fd1ba0c47214b75b8c6145a0e3b12cd41860beab15"
EMPTY_E_ACUTE_JS = "e754b2c8d878d4f7381386563a576a1b59e10978ad23a1245df7d744c306f976"  # "é.js", UTF-8
X100K_BIG_BIN = "4c64e0f5b8079f6f21d3f94cd80c6f7e83663e055587dcb5bbb8b20efb07a083"  # b"x"*100000

H = "0123456789abcdef" * 4


def reference(body: bytes, filename: str) -> str:
    """The hash rule written out as ``zephyr-agent`` computes it (see the docstring of
    ``zephyr_edge.domain.assets``), independently of the code under test."""
    p = filename.encode()
    h = hashlib.sha256(body or p)
    h.update(p)
    return h.hexdigest()


# --- hash rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "filename", "expected"),
    [
        (b"", "a.txt", EMPTY_A_TXT),
        (b"hello\n", "assets/main.js", HELLO_MAIN_JS),
        (b"", "é.js", EMPTY_E_ACUTE_JS),
        (b"x" * 100_000, "big.bin", X100K_BIG_BIN),
    ],
)
def test_asset_hash_known_values(body, filename, expected):
    assert assets.asset_hash(body, filename) == expected
    assert reference(body, filename) == expected


def test_empty_body_hashes_like_a_body_equal_to_the_filename():
    # the rule: b"" hashes p then p, exactly as a body equal to p does
    assert assets.asset_hash(b"", "a.txt") == assets.asset_hash(b"a.txt", "a.txt")
    assert assets.asset_hash(b"", "a.txt") != assets.asset_hash(b"", "b.txt")


def test_path_is_part_of_the_hash():
    assert assets.asset_hash(b"same", "a.js") != assets.asset_hash(b"same", "b.js")


@pytest.mark.parametrize("chunks", [[b"hel", b"lo\n"], [b"h", b"", b"ello\n"], [b"hello\n", b""]])
def test_hasher_streams_in_chunks(chunks):
    hasher = assets.AssetHasher("assets/main.js")
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.hexdigest() == HELLO_MAIN_JS
    assert hasher.size == 6


def test_hasher_with_only_empty_chunks_uses_filename_twice():
    hasher = assets.AssetHasher("a.txt")
    hasher.update(b"")
    hasher.update(b"")
    assert hasher.size == 0
    assert hasher.hexdigest() == EMPTY_A_TXT


def test_hasher_with_no_chunk_at_all():
    assert assets.AssetHasher("a.txt").hexdigest() == EMPTY_A_TXT


def test_hexdigest_is_idempotent_and_closes_the_hasher():
    hasher = assets.AssetHasher("assets/main.js")
    hasher.update(b"hello\n")
    assert hasher.hexdigest() == hasher.hexdigest() == HELLO_MAIN_JS
    with pytest.raises(RuntimeError):
        hasher.update(b"more")


def test_hasher_accepts_memoryview_and_bytearray():
    hasher = assets.AssetHasher("assets/main.js")
    hasher.update(bytearray(b"hel"))
    hasher.update(memoryview(b"lo\n"))
    assert hasher.hexdigest() == HELLO_MAIN_JS


# --- hashes and storage keys ------------------------------------------------------------


@pytest.mark.parametrize("value", [H, "f" * 64, "0" * 64])
def test_is_hash(value):
    assert assets.is_hash(value)
    assert assets.validate_hash(value) == value


@pytest.mark.parametrize("value", [H.upper(), H[:-1], H + "0", "g" * 64, " " + H[1:], None, 5, b"0" * 64, ""])
def test_validate_hash_rejects(value):
    assert not assets.is_hash(value)
    with pytest.raises(BadRequest) as info:
        assets.validate_hash(value)
    assert str(info.value) == "hash: expected 64 lower-case hex characters"
    assert info.value.field == "hash"


def test_storage_key_spreads_over_folders():
    assert assets.storage_key(H) == f"assets/01/23/{H}"


@pytest.mark.parametrize("value", ["../../etc/passwd", H.upper(), "ab", ""])
def test_storage_key_rejects_non_hashes(value):
    with pytest.raises(ValueError):
        assets.storage_key(value)


# --- path validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["index.html", "assets/main.js", "app/assets/main.js", "a..b.js", "..a/b", "a/.../b",
     "dir/", "é/ü.js", "a b.js", ".well-known/x", "a/./b"],
)
def test_validate_filename_accepts(path):
    assert assets.path_problem(path) is None
    assert assets.validate_filename(path) == path


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "expected a non-empty string"),
        (None, "expected a non-empty string"),
        (7, "expected a non-empty string"),
        ("/etc/passwd", "must be a relative path (no leading '/')"),
        ("..", "must not contain a '..' segment"),
        ("../x.js", "must not contain a '..' segment"),
        ("a/../../x.js", "must not contain a '..' segment"),
        ("a/..", "must not contain a '..' segment"),
        ("a\x00.js", "must not contain NUL or other control characters"),
        ("a\n.js", "must not contain NUL or other control characters"),
        ("a\x7f.js", "must not contain NUL or other control characters"),
        ("..\\x.js", "must not contain a backslash"),
        ("\\\\server\\share", "must not contain a backslash"),
        ("a\\b.js", "must not contain a backslash"),
        ("a\ud800.js", "must be valid Unicode text"),
    ],
)
def test_validate_filename_rejects(path, problem):
    assert assets.path_problem(path) == problem
    with pytest.raises(BadRequest) as info:
        assets.validate_filename(path)
    assert str(info.value) == f"filename: {problem}"
    assert info.value.field == "filename"


# --- response metadata ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ext"),
    [("a/b.JS", ".js"), ("a.b/c", ""), (".htaccess", ""), ("x.tar.gz", ".gz"), ("dir/", ""), ("a.", ".")],
)
def test_extension(path, ext):
    assert assets.extension(path) == ext


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("assets/main.js", "text/javascript; charset=utf-8"),
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.cjs", "text/javascript; charset=utf-8"),
        ("MAIN.JS", "text/javascript; charset=utf-8"),
        ("zephyr-manifest.json", "application/json; charset=utf-8"),
        ("assets/main.js.map", "application/json; charset=utf-8"),
        ("site.webmanifest", "application/manifest+json; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("robots.txt", "text/plain; charset=utf-8"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("a.wasm", "application/wasm"),
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("favicon.ico", "image/x-icon"),
        ("f.woff", "font/woff"),
        ("f.woff2", "font/woff2"),
        ("f.ttf", "font/ttf"),
        ("f.otf", "font/otf"),
        ("unknown.xyz", "application/octet-stream"),
        ("LICENSE", "application/octet-stream"),
    ],
)
def test_content_type(path, expected):
    assert assets.content_type(path) == expected


@pytest.mark.parametrize(
    "media_type",
    ["text/javascript; charset=utf-8", "text/css", "TEXT/HTML; charset=utf-8", "application/json; charset=utf-8",
     "application/manifest+json", "image/svg+xml; charset=utf-8", "application/wasm", "font/ttf"],
)
def test_compressible(media_type):
    assert assets.is_compressible(media_type)


@pytest.mark.parametrize(
    "media_type",
    ["image/png", "image/jpeg", "font/woff2", "font/woff", "application/octet-stream", "application/zip", "video/mp4"],
)
def test_not_compressible(media_type):
    assert not assets.is_compressible(media_type)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("index.html", "no-cache"),
        ("app/index.html", "no-cache"),
        ("docs/PAGE.HTML", "no-cache"),
        ("old.htm", "no-cache"),
        ("zephyr-manifest.json", "no-cache"),
        ("app/zephyr-manifest.json", "no-cache"),
        ("assets/main-abc123.js", "public, max-age=31536000, immutable"),
        ("other-manifest.json", "public, max-age=31536000, immutable"),
        ("zephyr-manifest.json.map", "public, max-age=31536000, immutable"),
        ("html", "public, max-age=31536000, immutable"),
    ],
)
def test_cache_control(path, expected):
    assert assets.cache_control(path) == expected
