"""Serving applications (``zephyr_edge.http.serving.handler``) on real backends: local files + SQLite, and S3 on
moto + Redis. Deployments are seeded through the Catalog and storage directly."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sys
import time
import tracemalloc
import types
import zlib

import aiohttp
import pytest

from zephyr_edge.http.serving import compression, handler
from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import asset_hash, storage_key
from zephyr_edge.errors import BackendError, BackendUnavailable
from zephyr_edge.storage.base import CHUNK_SIZE
from tests.serve_support import (
    CountingCalls,
    Site,
    backend_of,
    create_bucket,
    load_config,
    remove_everything,
    version_host_of,
)

TAG = "web-latest-ze.example.com"
JS = b"export const answer = 42; // padding to make it worth compressing\n" * 64
REMOTE = b"var remote = {get: function () { return 1; }};\n" * 64
INDEX_V1 = b"<!doctype html><title>v1</title>"
FILES = {
    "index.html": INDEX_V1,
    "assets/main.js": JS,
    "remoteEntry.js": REMOTE,
    "assets/data.json": b'{"a": 1}',
    "assets/style.css": b"body { color: red; }\n" * 80,
    "assets/mod.wasm": bytes(range(256)) * 8,
    "assets/logo.png": bytes(range(256)) * 8,
    "docs/index.html": b"<html>docs</html>",
    "zephyr-manifest.json": b'{"version": 1}',
    "caf\u00e9.js": b"export const cafe = 1;",
}


def etag(path: str, data: bytes, suffix: str = "") -> str:
    return f'"{asset_hash(data, path)}{suffix}"'


def brotli_available() -> bool:
    return compression.brotli_codec() is not None


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3-redis"])
async def backend(request, tmp_path):
    chosen = backend_of(request.param, tmp_path, request)
    await create_bucket(chosen)
    yield chosen
    await remove_everything(chosen)


@pytest.fixture
def make_site(backend, aiohttp_client):
    async def make(**extra: str) -> Site:
        app = make_app(load_config(backend, **extra))
        return Site(await aiohttp_client(app, auto_decompress=False))

    return make


@pytest.fixture
async def site(make_site) -> Site:
    return await make_site()


@pytest.fixture
async def deployed(site):
    """``site`` with FILES deployed on their version host and on TAG; (site, version host)."""
    snapshot = await site.deploy("1", FILES, hosts=(TAG,))
    await site.settle()
    return site, version_host_of(snapshot)


# --- hosts and paths --------------------------------------------------------------------------


async def test_unknown_host_is_404(deployed):
    site, _ = deployed
    for host in ("unknown.example.com", "x" * 63 + ".example.com", "a." * 126 + "b"):
        resp, body = await site.fetch("/", host)
        assert resp.status == 404, host
        assert json.loads(body)["error"] == "not_found"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("host", "problem"), [
    ("bad host!", "characters other than"),
    ("[::zz]", "IPv6"),
    ("x" * 64 + ".example.com", "a label longer than 63 characters"),
    ("a." * 127 + "bc", "longer than 253 characters"),
    ("x" * 8000, "longer than 253 characters"),
    ("app.example.com:123456", "port"),
    ("a..b", "an empty label"),
    ("[::1%\udcff]", "zone id"),  # found by the fuzz: a scope id of any characters, once a 500
])
async def test_invalid_host_is_400_naming_the_problem_and_never_looked_up(deployed, host, problem):
    """RFC 9112 3.2: a Host that is no valid value answers 400. No KV read, nothing
    remembered (raw Host strings of 8 KB once filled the host cache's memo)."""
    site, _ = deployed
    reads = CountingCalls(site.catalog.kv, "get")
    try:
        resp, body = await site.fetch("/index.html", host)
    finally:
        reads.restore()
    answer = json.loads(body)
    assert resp.status == 400, host
    assert answer["error"] == "bad_request" and answer["field"] == "Host" and problem in answer["message"]
    assert host not in answer["message"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert len(reads) == 0 and host not in site.serving.hosts._names
    # the control routes answer whatever the Host
    assert (await site.fetch("/healthz", host))[0].status == 200


async def test_distinct_long_hosts_do_not_grow_memory(deployed):
    """12,000 distinct 8,000-character Hosts once grew a worker by about 80 MB."""
    site, _ = deployed
    memo = site.serving.hosts._names
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(12_000):
            # raw bytes: ~8 KB of header per request, distinct every time
            entry = await site.serving.hosts.lookup(f"{i:08d}" + "h" * 7992)
            assert entry is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 * 1024 * 1024, grown
    assert all(len(raw or "") <= 260 for raw in memo)


async def test_paths_resolve_with_spa_fallback_only_without_extension(deployed):
    site, host = deployed
    expect = {
        "/": INDEX_V1,
        "/index.html": INDEX_V1,
        "/some/client/route": INDEX_V1,
        "/docs/": FILES["docs/index.html"],
        "/assets/main.js": JS,
        "/assets/main.js?v=123": JS,
        "/caf%C3%A9.js": FILES["caf\u00e9.js"],
    }
    for path, data in expect.items():
        resp, body = await site.fetch(path, host)
        assert (resp.status, body) == (200, data), path
    for path in ("/assets/missing.js", "/missing.png", "/docs/missing.css", "/%ff.js"):
        resp, body = await site.fetch(path, host)
        assert resp.status == 404, path
        assert body != INDEX_V1 and resp.content_type == "application/json"


async def test_asset_listed_but_not_stored_is_404_until_stored(site):
    snapshot = await site.deploy("1", FILES, store=False)
    host = version_host_of(snapshot)
    for _ in range(2):
        resp, body = await site.fetch("/assets/main.js", host)
        assert resp.status == 404 and json.loads(body)["error"] == "not_found"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    await site.storage.put_bytes(storage_key(asset_hash(JS, "assets/main.js")), JS)
    resp, body = await site.fetch("/assets/main.js", host)
    assert (resp.status, body) == (200, JS)


async def test_raw_snapshot_json_copied_into_envs_serves(deployed):
    site, _ = deployed
    raw = dict((await site.catalog.snapshot("tester-1.web.repo.org")).raw)
    raw["assets"] = {**raw["assets"], "../evil.js": {"path": "../evil.js", "hash": "x", "size": 1}}
    raw["hand_note"] = "copied by an operator"
    text = "\ufeff" + json.dumps(raw, indent=2)  # a BOM and pretty-printing, as a hand copy may have
    await site.catalog.kv.set(site.catalog.envs_key("hand.example.com"), text.encode("utf-8"))
    resp, body = await site.fetch("/", "Hand.Example.com:8443")
    assert (resp.status, body) == (200, INDEX_V1)
    resp, body = await site.fetch("/assets/main.js", "hand.example.com")
    assert (resp.status, body) == (200, JS)


# --- headers ----------------------------------------------------------------------------------


async def test_content_types(deployed):
    site, host = deployed
    expect = {
        "/assets/main.js": "text/javascript; charset=utf-8",
        "/assets/data.json": "application/json; charset=utf-8",
        "/assets/mod.wasm": "application/wasm",
        "/assets/style.css": "text/css; charset=utf-8",
        "/assets/logo.png": "image/png",
        "/": "text/html; charset=utf-8",
    }
    for path, media_type in expect.items():
        resp, _ = await site.fetch(path, host)
        assert resp.headers["Content-Type"] == media_type, path
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_etag_and_if_none_match(deployed):
    site, host = deployed
    tag = etag("assets/main.js", JS)
    resp, _ = await site.fetch("/assets/main.js", host)
    assert resp.headers["ETag"] == tag
    for header in (tag, f"W/{tag}", f'"nope", W/{tag}', "*", f' "x" ,{tag} '):
        resp, body = await site.fetch("/assets/main.js", host, **{"If-None-Match": header})
        assert resp.status == 304, header
        assert body == b""
        assert resp.headers["ETag"] == tag and resp.headers["Vary"] == "Accept-Encoding"
        assert resp.headers["Cache-Control"] and resp.headers["Access-Control-Allow-Origin"] == "*"
    for header in ('"nope"', etag("assets/main.js", JS, "-gz"), tag[:-2] + '"'):
        resp, body = await site.fetch("/assets/main.js", host, **{"If-None-Match": header})
        assert (resp.status, body) == (200, JS), header
    # the compressed representation has its own validator
    gz = etag("assets/main.js", JS, "-gz")
    resp, _ = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip", "If-None-Match": tag})
    assert resp.status == 200 and resp.headers["ETag"] == gz
    resp, _ = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip", "If-None-Match": gz})
    assert resp.status == 304 and resp.headers["ETag"] == gz


async def test_head_is_get_without_body(deployed):
    site, host = deployed
    for path, headers in (("/assets/main.js", {}), ("/assets/main.js", {"Accept-Encoding": "gzip"}), ("/", {})):
        got, got_body = await site.fetch(path, host, **headers)
        head, head_body = await site.fetch(path, host, method="HEAD", **headers)
        assert head.status == got.status == 200
        assert head_body == b""
        assert int(head.headers["Content-Length"]) == len(got_body)
        strip = lambda h: {k: v for k, v in h.items() if k != "Date"}  # noqa: E731
        assert strip(head.headers) == strip(got.headers)


async def test_single_range_partial_content(deployed):
    site, host = deployed
    size = len(JS)
    cases = {
        "bytes=0-9": (0, 9), "bytes=-5": (size - 5, size - 1), "bytes=10-": (10, size - 1),
        "bytes=100-99999999": (100, size - 1), "BYTES=1-1": (1, 1),
    }
    for header, (start, last) in cases.items():
        resp, body = await site.fetch("/assets/main.js", host, Range=header, **{"Accept-Encoding": "gzip"})
        assert resp.status == 206, header
        assert resp.headers["Content-Range"] == f"bytes {start}-{last}/{size}"
        assert body == JS[start : last + 1]
        assert "Content-Encoding" not in resp.headers  # a range is never compressed
        assert resp.headers["ETag"] == etag("assets/main.js", JS)
    for header in (f"bytes={size}-", "bytes=-0", f"bytes={size + 10}-{size + 20}"):
        resp, body = await site.fetch("/assets/main.js", host, Range=header)
        assert resp.status == 416, header
        assert resp.headers["Content-Range"] == f"bytes */{size}"
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=5-1"):
        resp, body = await site.fetch("/assets/main.js", host, Range=header)
        assert (resp.status, body) == (200, JS), header


async def test_distinct_long_paths_do_not_grow_memory(deployed):
    """Every path of a host is remembered (up to 4,096 of them): 8 KB random single-page
    routes would hold 32 MB per published host. Long paths still serve."""
    site, host = deployed
    resp, body = await site.fetch("/" + "r" * 4000, host)
    assert (resp.status, body) == (200, INDEX_V1)
    entry = await site.serving.hosts.lookup(host)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            assert entry.route(f"/{i:08d}" + "r" * 3992).asset.path == "index.html"
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 * 1024 * 1024, grown


async def test_range_positions_of_thousands_of_digits(make_site):
    """More than 4,300 digits once made int() raise (a 500): past the end → 416, an end
    or suffix past the end → the bytes up to the end; cached and streamed assets alike."""
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/main.js": JS, "big.bin": BIG}))
    many = "9" * 5000
    for path, data in (("/assets/main.js", JS), ("/big.bin", BIG)):
        resp, body = await site.fetch(path, host, Range=f"bytes={many}-")
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(data)}", path
        for header in (f"bytes=0-{many}", f"bytes=-{many}"):
            resp, body = await site.fetch(path, host, Range=header)
            assert (resp.status, body) == (206, data), (path, header[:12])
            assert resp.headers["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"


async def test_if_range(deployed):
    site, host = deployed
    tag = etag("assets/main.js", JS)
    resp, body = await site.fetch("/assets/main.js", host, Range="bytes=0-3", **{"If-Range": tag})
    assert (resp.status, body) == (206, JS[:4])
    for stale in ('"other"', f"W/{tag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        resp, body = await site.fetch("/assets/main.js", host, Range="bytes=0-3", **{"If-Range": stale})
        assert (resp.status, body) == (200, JS), stale


async def test_cors(deployed):
    site, host = deployed
    for method in ("GET", "HEAD"):
        resp, _ = await site.fetch("/assets/main.js", host, method=method, Origin="https://shell.example.org")
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"etag", "content-length", "content-range"} <= exposed
    kv_gets = CountingCalls(site.catalog.kv, "get")
    resp, body = await site.fetch(
        "/assets/main.js", "anything.example.com", method="OPTIONS", Origin="https://shell.example.org",
        **{"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range, x-custom"},
    )
    assert (resp.status, body) == (204, b"")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert {"GET", "HEAD"} <= {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert resp.headers["Access-Control-Allow-Headers"] == "range, x-custom"
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert not [c for c in kv_gets.calls if "envs" in c[0]], "a preflight needs no lookup"


async def test_cache_control_is_immutable_only_on_the_version_host(deployed):
    site, version_host = deployed
    immutable = "public, max-age=31536000, immutable"
    revalidate = "public, max-age=0, must-revalidate"
    local_version_host = version_host.split("-ze.")[0] + ".localhost"  # a local edge's name (publicurl)
    await site.catalog.publish("tester-1.web.repo.org", [local_version_host])
    await site.settle()
    expect = {
        version_host: {"/assets/main.js": immutable, "/remoteEntry.js": immutable},
        version_host.upper() + ":443": {"/assets/main.js": immutable},
        local_version_host + ":8080": {"/assets/main.js": immutable},
        TAG: {"/assets/main.js": revalidate, "/remoteEntry.js": revalidate},
    }
    for host, paths in expect.items():
        for path in ("/", "/index.html", "/client/route", "/zephyr-manifest.json", "/docs/"):
            paths[path] = "no-cache"
        for path, value in paths.items():
            resp, _ = await site.fetch(path, host)
            assert resp.headers["Cache-Control"] == value, (host, path)
            resp, _ = await site.fetch(path, host, **{"If-None-Match": resp.headers["ETag"]})
            assert resp.status == 304 and resp.headers["Cache-Control"] == value


# --- compression ------------------------------------------------------------------------------


async def test_gzip_negotiation(deployed):
    site, host = deployed
    best = "br" if brotli_available() else "gzip"
    expect = {
        "gzip": "gzip", "x-gzip": "gzip", "gzip, deflate": "gzip", "GZIP;q=0.5": "gzip",
        "*": best, "gzip;q=0": None, "gzip;q=0, identity": None, "identity": None,
        "deflate": None, "gzip;q=0, *;q=1": "br" if brotli_available() else None,
    }
    for header, coding in expect.items():
        resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": header})
        assert resp.status == 200
        assert resp.headers["Vary"] == "Accept-Encoding"
        assert resp.headers.get("Content-Encoding") == coding, header
        if coding == "gzip":
            assert gzip.decompress(body) == JS and len(body) < len(JS)
            assert resp.headers["ETag"] == etag("assets/main.js", JS, "-gz")
        elif coding is None:
            assert body == JS and resp.headers["ETag"] == etag("assets/main.js", JS)
    first = (await site.fetch("/assets/style.css", host, **{"Accept-Encoding": "gzip"}))[1]
    again = (await site.fetch("/assets/style.css", host, **{"Accept-Encoding": "gzip"}))[1]
    assert first == again and gzip.decompress(first) == FILES["assets/style.css"]


async def test_no_compression_of_tiny_or_incompressible_bodies(deployed):
    site, host = deployed
    for path in ("/", "/assets/data.json", "/zephyr-manifest.json"):
        resp, body = await site.fetch(path, host, **{"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in resp.headers, path
        assert resp.headers["Vary"] == "Accept-Encoding", "compressible types always vary"
    resp, body = await site.fetch("/assets/logo.png", host, **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in resp.headers and "Vary" not in resp.headers
    assert body == FILES["assets/logo.png"]
    resp, body = await site.fetch("/assets/mod.wasm", host, **{"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == FILES["assets/mod.wasm"]


async def test_a_body_that_does_not_compress_is_sent_as_is(make_site):
    """Random bytes under a text type: compressing them once shows it does not pay; the
    identity bytes are served (and revalidated) from then on, and nothing useless is cached."""
    site = await make_site()
    noise = os.urandom(20_000)
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/blob.js": noise}))
    for _ in range(3):
        resp, body = await site.fetch("/assets/blob.js", host, **{"Accept-Encoding": "gzip"})
        assert resp.status == 200 and body == noise and "Content-Encoding" not in resp.headers
        assert resp.headers["ETag"] == etag("assets/blob.js", noise) and resp.headers["Vary"] == "Accept-Encoding"
    resp, _ = await site.fetch("/assets/blob.js", host, **{"Accept-Encoding": "gzip", "If-None-Match": etag("assets/blob.js", noise)})
    assert resp.status == 304
    key = asset_hash(noise, "assets/blob.js")
    assert site.serving.assets.get(key + "-gz") is None and not site.serving.assets.worth_encoding(key + "-gz")
    assert site.serving.assets.get(key) == noise


async def test_brotli_is_preferred_when_importable(make_site, monkeypatch):
    """A stand-in ``brotli`` module (zlib inside, so the test can decode it) proves that
    the codec is picked up at startup and preferred at equal quality."""
    stub = types.ModuleType("brotli")
    stub.compress = lambda data, quality=11: b"BR" + zlib.compress(data)
    monkeypatch.setitem(sys.modules, "brotli", stub)
    site = await make_site()
    host = version_host_of(await site.deploy("1", FILES))
    resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip, deflate, br"})
    assert resp.headers["Content-Encoding"] == "br"
    assert resp.headers["ETag"] == etag("assets/main.js", JS, "-br")
    assert body.startswith(b"BR") and zlib.decompress(body[2:]) == JS
    resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "br;q=0.5, gzip"})
    assert resp.headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == JS
    resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "br;q=0, gzip;q=0"})
    assert "Content-Encoding" not in resp.headers and body == JS


async def test_real_brotli(deployed):
    brotli = pytest.importorskip("brotli")
    site, host = deployed
    resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "br"})
    assert resp.headers["Content-Encoding"] == "br" and brotli.decompress(body) == JS


async def test_real_brotli_streamed(make_site):
    brotli = pytest.importorskip("brotli")
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/vendor.js": BIG_JS}))
    resp, body = await site.fetch("/assets/vendor.js", host, **{"Accept-Encoding": "gzip, br"})
    assert resp.headers["Content-Encoding"] == "br" and brotli.decompress(body) == BIG_JS
    assert resp.headers["ETag"] == "W/" + etag("assets/vendor.js", BIG_JS, "-br")


async def test_streamed_assets_skip_a_codec_that_cannot_stream(make_site, monkeypatch):
    stub = types.ModuleType("brotli")  # whole-body compress only, no Compressor
    stub.compress = lambda data, quality=11: b"BR" + zlib.compress(data)
    monkeypatch.setitem(sys.modules, "brotli", stub)
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/vendor.js": BIG_JS}))
    resp, body = await site.fetch("/assets/vendor.js", host, **{"Accept-Encoding": "br"})
    assert "Content-Encoding" not in resp.headers and body == BIG_JS
    assert resp.headers["ETag"] == etag("assets/vendor.js", BIG_JS)
    resp, body = await site.fetch("/assets/vendor.js", host, **{"Accept-Encoding": "br, gzip;q=0.5"})
    assert resp.headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == BIG_JS


# --- large assets -----------------------------------------------------------------------------

BIG = os.urandom(3 * CHUNK_SIZE + 12345)
BIG_JS = b"function big() { return 'large but compressible'; }\n" * 8000


async def test_large_assets_stream_from_storage(make_site):
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    files = {"index.html": INDEX_V1, "assets/big.bin": BIG, "assets/vendor.js": BIG_JS}
    host = version_host_of(await site.deploy("1", files))
    gets = CountingCalls(site.storage, "get")
    size = len(BIG)
    for _ in range(2):
        resp, body = await site.fetch("/assets/big.bin", host)
        assert (resp.status, body) == (200, BIG)
        assert int(resp.headers["Content-Length"]) == size and resp.headers["ETag"] == etag("assets/big.bin", BIG)
    assert len(gets) == 2, "large assets are never cached"
    # compressible: compressed on the fly, chunk by chunk, with a weak validator
    for _ in range(2):
        resp, body = await site.fetch("/assets/vendor.js", host, **{"Accept-Encoding": "gzip"})
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == BIG_JS and len(body) < len(BIG_JS) // 10
        assert resp.headers["ETag"] == "W/" + etag("assets/vendor.js", BIG_JS, "-gz")
        assert "Content-Length" not in resp.headers and resp.headers["Vary"] == "Accept-Encoding"
    assert len(gets) == 4
    resp, _ = await site.fetch("/assets/vendor.js", host, **{"Accept-Encoding": "gzip", "If-None-Match": resp.headers["ETag"]})
    assert resp.status == 304
    head, body = await site.fetch("/assets/vendor.js", host, method="HEAD", **{"Accept-Encoding": "gzip"})
    assert (head.status, body, head.headers["Content-Encoding"]) == (200, b"", "gzip")
    resp, body = await site.fetch("/assets/vendor.js", host)  # no Accept-Encoding: identity, with its length
    assert (resp.status, body) == (200, BIG_JS) and "Content-Encoding" not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(BIG_JS)
    resp, body = await site.fetch("/assets/vendor.js", host, Range="bytes=0-9", **{"Accept-Encoding": "gzip"})
    assert (resp.status, body) == (206, BIG_JS[:10]) and "Content-Encoding" not in resp.headers

    resp, body = await site.fetch("/assets/big.bin", host, Range=f"bytes={CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}")
    assert (resp.status, body) == (206, BIG[CHUNK_SIZE - 10 : CHUNK_SIZE + 10])
    assert resp.headers["Content-Range"] == f"bytes {CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}/{size}"
    resp, body = await site.fetch("/assets/big.bin", host, Range="bytes=-100")
    assert (resp.status, body) == (206, BIG[-100:])
    resp, _ = await site.fetch("/assets/big.bin", host, Range=f"bytes={size}-")
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{size}"

    head, body = await site.fetch("/assets/big.bin", host, method="HEAD")
    assert (head.status, body) == (200, b"") and int(head.headers["Content-Length"]) == size
    head, body = await site.fetch("/assets/big.bin", host, method="HEAD", Range="bytes=0-99")
    assert (head.status, body) == (206, b"") and head.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert int(head.headers["Content-Length"]) == 100
    resp, _ = await site.fetch("/assets/big.bin", host, **{"If-None-Match": etag("assets/big.bin", BIG)})
    assert resp.status == 304

    await site.storage.delete(storage_key(asset_hash(BIG, "assets/big.bin")))
    for method in ("GET", "HEAD"):
        resp, _ = await site.fetch("/assets/big.bin", host, method=method)
        assert resp.status == 404


async def test_asset_bigger_in_storage_than_declared_is_streamed(make_site):
    """A snapshot may lie about a size: what is actually stored decides what is buffered."""
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    snapshot = await site.deploy("1", {"index.html": INDEX_V1, "assets/big.bin": BIG})
    raw = json.loads(snapshot.to_json())
    raw["assets"]["assets/big.bin"]["size"] = 10
    await site.catalog.kv.set(site.catalog.envs_key("liar.example.com"), json.dumps(raw).encode())
    resp, body = await site.fetch("/assets/big.bin", "liar.example.com")
    assert (resp.status, body) == (200, BIG)
    assert len(site.serving.assets.lru) == 0


class _Slow:
    """Wraps a live blob: records its chunks and its closing, slows its chunks down."""

    def __init__(self, blob, delay: float, fail_after: int | None = None, hang: bool = False):
        self.yielded = 0
        self.closed = asyncio.Event()
        real_chunks, real_close = blob.chunks, blob.aclose

        async def chunks():
            async for chunk in real_chunks():
                if fail_after is not None and self.yielded >= fail_after:
                    if hang:
                        await asyncio.sleep(3600)
                    raise BackendError("storage", "connection lost mid-object")
                self.yielded += 1
                yield chunk
                await asyncio.sleep(delay)

        async def aclose():
            await real_close()
            self.closed.set()

        blob.chunks, blob.aclose = chunks, aclose


def _wrap_get(storage, delay: float, fail_after: int | None = None, hang: bool = False) -> list[_Slow]:
    wrapped: list[_Slow] = []
    real_get = storage.get

    async def get(*args, **kwargs):
        blob = await real_get(*args, **kwargs)
        wrapped.append(_Slow(blob, delay, fail_after, hang))
        return blob

    storage.get = get
    return wrapped


async def test_client_disconnect_closes_the_blob(make_site):
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    big = os.urandom(24 * CHUNK_SIZE)
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "big.bin": big}))
    blobs = _wrap_get(site.storage, delay=0.02)
    reader, writer = await asyncio.open_connection(site.client.host, site.client.port)
    writer.write(f"GET /big.bin HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readexactly(1000), 5)
    writer.transport.abort()  # the client goes away mid-body
    await asyncio.wait_for(blobs[0].closed.wait(), 5)
    assert blobs[0].yielded < 24, "streaming stopped when the client went away"
    resp, body = await site.fetch("/", host)
    assert (resp.status, body) == (200, INDEX_V1)


async def test_storage_failure_after_headers_cuts_the_connection(make_site, caplog):
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/big.bin": BIG}))
    blobs = _wrap_get(site.storage, delay=0, fail_after=1)
    caplog.set_level(logging.ERROR, logger=handler.__name__)
    resp = await site.client.get("/assets/big.bin", headers={"Host": host})
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 10)
    await asyncio.wait_for(blobs[0].closed.wait(), 5)
    assert any("after the headers were sent" in r.getMessage() for r in caplog.records)
    resp, body = await site.fetch("/", host)
    assert (resp.status, body) == (200, INDEX_V1)


async def test_a_stalled_stream_is_cut_after_its_bound(make_site, monkeypatch, caplog):
    monkeypatch.setattr(handler, "CHUNK_TIMEOUT_S", 0.3)
    site = await make_site(ZE_WORKER_CACHE_MAX_ASSET_KB="64")
    host = version_host_of(await site.deploy("1", {"index.html": INDEX_V1, "assets/big.bin": BIG}))
    blobs = _wrap_get(site.storage, delay=0, fail_after=1, hang=True)
    caplog.set_level(logging.ERROR, logger=handler.__name__)
    started = time.monotonic()
    resp = await site.client.get("/assets/big.bin", headers={"Host": host})
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 10)
    assert time.monotonic() - started < 5
    await asyncio.wait_for(blobs[0].closed.wait(), 5)
    assert any("after the headers were sent" in r.getMessage() for r in caplog.records)


# --- caches on the serve path -----------------------------------------------------------------


async def test_single_flight_one_storage_read_for_concurrent_misses(deployed):
    site, host = deployed

    async def slow(*args):
        await asyncio.sleep(0.2)

    gets = CountingCalls(site.storage, "get", before=slow)
    results = await asyncio.gather(*(site.fetch("/assets/main.js", host) for _ in range(20)))
    assert [(r.status, b) for r, b in results] == [(200, JS)] * 20
    assert len(gets) == 1
    results = await asyncio.gather(
        *(site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip"}) for _ in range(10))
    )
    assert all(gzip.decompress(b) == JS for _, b in results) and len(gets) == 1


async def test_single_flight_host_lookup(deployed):
    site, host = deployed
    fresh_host = "fresh-ze.example.com"
    await site.catalog.publish("tester-1.web.repo.org", [fresh_host])
    await site.settle()
    envs_reads = []

    async def slow(key):
        if key.endswith(fresh_host):
            envs_reads.append(key)
            await asyncio.sleep(0.2)

    CountingCalls(site.catalog.kv, "get", before=slow)
    results = await asyncio.gather(*(site.fetch("/", fresh_host) for _ in range(20)))
    assert [(r.status, b) for r, b in results] == [(200, INDEX_V1)] * 20
    assert len(envs_reads) == 1


async def test_single_flight_failure_reaches_every_waiter_and_is_not_cached(deployed):
    site, host = deployed
    failed = []

    async def fail_once(*args):
        await asyncio.sleep(0.2)
        if not failed:
            failed.append(args)
            raise BackendUnavailable("storage", "injected outage")

    gets = CountingCalls(site.storage, "get", before=fail_once)
    results = await asyncio.gather(*(site.fetch("/assets/main.js", host) for _ in range(10)))
    assert [r.status for r, _ in results] == [503] * 10
    assert len(gets) == 1
    resp, body = await site.fetch("/assets/main.js", host)
    assert (resp.status, body) == (200, JS) and len(gets) == 2


async def test_warm_requests_read_no_storage(deployed):
    site, host = deployed
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        await site.fetch("/assets/main.js", host, **headers)
    gets = CountingCalls(site.storage, "get")
    heads = CountingCalls(site.storage, "head")
    kv_gets = CountingCalls(site.catalog.kv, "get")
    await site.storage.delete(storage_key(asset_hash(JS, "assets/main.js")))
    for _ in range(3):
        resp, body = await site.fetch("/assets/main.js", host)
        assert (resp.status, body) == (200, JS)
        resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip"})
        assert gzip.decompress(body) == JS
    assert len(gets) == len(heads) == 0
    assert not [c for c in kv_gets.calls if c[0] != site.catalog.generation_key]


async def test_cache_disabled_reads_storage_every_time(make_site):
    site = await make_site(ZE_WORKER_CACHE_SIZE_MB="0")
    host = version_host_of(await site.deploy("1", FILES))
    gets = CountingCalls(site.storage, "get")
    for _ in range(3):
        resp, body = await site.fetch("/assets/main.js", host, **{"Accept-Encoding": "gzip"})
        assert resp.status == 200 and gzip.decompress(body) == JS
    assert len(gets) == 3 and len(site.serving.assets.lru) == 0


async def test_publish_and_rollback_are_served_within_a_second(deployed):
    site, _ = deployed
    assert (await site.fetch("/", TAG))[1] == INDEX_V1
    v2 = {**FILES, "index.html": b"<!doctype html><title>v2</title>"}
    await site.deploy("2", v2)
    for snapshot_id, expected in (("tester-2.web.repo.org", v2["index.html"]), ("tester-1.web.repo.org", INDEX_V1)):
        await site.catalog.publish(snapshot_id, [TAG])
        published = time.monotonic()
        while (await site.fetch("/", TAG))[1] != expected:
            assert time.monotonic() - published < 1.0, f"{snapshot_id} not served within 1 s"
            await asyncio.sleep(0.02)
