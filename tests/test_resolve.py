"""Path-to-asset resolution (``zephyr_edge.http.serving.resolve``) and Range parsing (RFC 9110 section 14)."""

from __future__ import annotations

import pytest

from zephyr_edge.http.serving.resolve import RangeNotSatisfiable, decode_path, parse_range, resolve_path

ASSETS = {
    "index.html": "INDEX",
    "assets/main.js": "MAIN",
    "zephyr-manifest.json": "MANIFEST",
    "docs/index.html": "DOCS",
    "app/assets/base.js": "BASE",  # non-root base path: keys carry the prefix
    "a b/ü.js": "UNICODE",
    "a%2Fb.js": "LITERAL-PERCENT",
    "x/y.js": "SLASHED",
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "INDEX"),
        ("", "INDEX"),
        ("/index.html", "INDEX"),
        ("/assets/main.js", "MAIN"),
        ("/assets/main.js?v=3", "MAIN"),
        ("/zephyr-manifest.json", "MANIFEST"),
        ("/app/assets/base.js", "BASE"),
        ("/docs/", "DOCS"),
        ("/docs/index.html", "DOCS"),
        ("/a%20b/%C3%BC.js", "UNICODE"),
        ("/a b/ü.js", "UNICODE"),
        ("/a%252Fb.js", "LITERAL-PERCENT"),
        ("/x%2Fy.js", "SLASHED"),
        ("/%61ssets/main.js", "MAIN"),
    ],
)
def test_resolves_existing_assets(raw, expected):
    assert resolve_path(raw, ASSETS) == expected


@pytest.mark.parametrize(
    "raw",
    ["/dashboard", "/users/42/settings", "/app", "/app/", "/nowhere/", "/.well-known/thing", "/route?x=1.js"],
)
def test_spa_fallback_without_extension(raw):
    assert resolve_path(raw, ASSETS) == "INDEX"


@pytest.mark.parametrize(
    "raw",
    [
        "/assets/missing.js",
        "/chunk-123.js",
        "/missing.css",
        "/missing.json",
        "/users/john.doe",
        "/docs/missing.html",
        "/app/zephyr-manifest.json",  # the manifest exists only at the root here
    ],
)
def test_missing_with_extension_is_404_never_index(raw):
    assert resolve_path(raw, ASSETS) is None


@pytest.mark.parametrize("raw", ["/%ff.js", "/%C3", "/%ff", "/a%00.js", "/a%00"])
def test_undecodable_or_nul_paths_are_not_found(raw):
    assert resolve_path(raw, ASSETS) is None


def test_no_spa_fallback_without_index():
    assert resolve_path("/dashboard", {"assets/main.js": "MAIN"}) is None
    assert resolve_path("/", {"assets/main.js": "MAIN"}) is None


def test_directory_index_preferred_over_spa_fallback():
    assert resolve_path("/docs/", ASSETS) == "DOCS"
    assert resolve_path("/docs", ASSETS) == "INDEX"  # no trailing slash: exact, then SPA


def test_only_one_leading_slash_is_stripped():
    assert resolve_path("//assets/main.js", ASSETS) is None


def test_exact_key_wins_over_fallbacks():
    mapping = {"index.html": "INDEX", "dashboard": "EXTENSIONLESS-FILE"}
    assert resolve_path("/dashboard", mapping) == "EXTENSIONLESS-FILE"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "index.html"), ("", "index.html"), ("/a%20b", "a b"), ("/a?q", "a"), ("/%ff", None), ("/%00", None)],
)
def test_decode_path(raw, expected):
    assert decode_path(raw) == expected


# --- Range --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=0-0", 1000, (0, 0)),
        ("bytes=100-", 1000, (100, 999)),
        ("bytes=999-", 1000, (999, 999)),
        ("bytes=500-5000", 1000, (500, 999)),  # last-pos clamped
        ("bytes=-100", 1000, (900, 999)),
        ("bytes=-5000", 1000, (0, 999)),  # suffix longer than the body: all of it
        ("bytes=-1", 1, (0, 0)),
        ("BYTES=0-1", 10, (0, 1)),  # the unit is case-insensitive
        ("bytes= 0-1 ", 10, (0, 1)),
        ("bytes=0-1,", 10, (0, 1)),  # empty list elements are allowed
        ("bytes=, 2-3", 10, (2, 3)),
        ("bytes=0-99999999999999999999999", 10, (0, 9)),
    ],
)
def test_single_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=１-2",  # non-ASCII digits
        "bytes=0 - 1",
        "bytes=5-2",  # last-pos < first-pos: invalid, ignored
        "items=0-1",
        "bytes 0-1",
        "bytes=0-1,5-6",  # several ranges: served whole with 200
        "bytes=0-1, 100-200",
        "bytes=100-200,0-1",
    ],
)
def test_ignored_range_headers(header):
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=5000-", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-0", 0),
    ],
)
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.status == 416
    assert info.value.size == size
    assert info.value.content_range == f"bytes */{size}"


def test_suffix_range_of_empty_body_serves_whole_body():
    assert parse_range("bytes=-5", 0) is None


def test_several_ranges_are_ignored_even_when_unsatisfiable():
    assert parse_range("bytes=5000-,6000-", 1000) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-" + "9" * 5000, (0, 999)),  # an end past the end: up to the last byte
        ("bytes=-" + "9" * 5000, (0, 999)),  # a suffix longer than the body: all of it
        ("bytes=" + "0" * 5000 + "7-8", (7, 8)),  # leading zeros do not count
        ("bytes=5-" + "0" * 5000, None),  # last < first: ignored
    ],
)
def test_positions_of_thousands_of_digits(header, expected):
    """Python refuses to convert more than 4,300 digits (a ValueError, once a 500)."""
    assert parse_range(header, 1000) == expected


def test_a_start_of_thousands_of_digits_is_unsatisfiable():
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 1000)
