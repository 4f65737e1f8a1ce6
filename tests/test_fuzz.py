"""A seeded fuzz of the whole HTTP surface: tens of thousands of hostile requests, sent as
raw bytes (odd header bytes included) over keep-alive connections to a real worker app on
the local backends. Every route is covered: app traffic (GET/HEAD/OPTIONS with random Host,
path, Range, If-None-Match, If-Range, Accept-Encoding), the hash list, health routes and
``POST /upload`` of every type (file, snapshot, envs, every sync type, unknown ones) with
missing, garbled, foreign or valid tokens and hostile bodies (lone surrogates, huge numbers,
truncated JSON, unclosed brackets in URLs...).

Asserted: no answer is a 5xx, every request gets an answer, no upload is accepted, and
nothing is written (the storage objects and every KV record are unchanged).

``ZE_TEST_FUZZ_SEED`` picks another seed, ``ZE_TEST_FUZZ_REQUESTS`` another request count
and ``ZE_TEST_FUZZ_BACKEND=s3-redis`` S3 + Redis instead of the local backends, for
exploration; a failure prints the seed and the first offending requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from urllib.parse import quote

import jwt
import pytest

from zephyr_edge.domain import tokens
from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.replication import protocol, synctoken
from tests.upload_support import (
    APP, OTHER_APP, SECRET, Worker, load_config, local_backend, s3_redis_backend, s3_session, snapshot_body, token,
)

SEED = int(os.environ.get("ZE_TEST_FUZZ_SEED", "9"))
REQUESTS = int(os.environ.get("ZE_TEST_FUZZ_REQUESTS", "40000"))
#: Keep-alive connections sending at once.
CONNECTIONS = 8
#: Bound of the whole run and of one answer.
RUN_TIMEOUT_S = 240.0
ANSWER_TIMEOUT_S = 20.0
#: Offending requests shown in a failure.
SHOWN = 8

FILES = {
    "index.html": b"<!doctype html><title>fuzz</title>",
    "assets/main.js": b"export const answer = 42; // padding to make it worth compressing\n" * 64,
    "assets/data.json": b'{"a": 1}',
    "caf\u00e9.js": b"export const cafe = 1;",
}
TAG = "fuzz-latest-ze.example.com"
REGION = "fuzz-region"
ODD = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe9", b"\x7f", b"\t", b"\x00", b"\xf0\x9f\x98\x80", b"%", b'"', b"\\"]


# --- the raw client --------------------------------------------------------------------------


class Connection:
    """One keep-alive connection; reopened whenever the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def exchange(self, raw: bytes, head_only: bool) -> int | None:
        """Send one request; the answer's status, or None when the server closed the
        connection without answering."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        try:
            self.writer.write(raw)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                while True:
                    head = await self.reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    if status >= 200:
                        break  # (1xx: an interim answer, the real one follows)
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip().lower()
                if head_only or status in (204, 304):
                    pass
                elif headers.get(b"transfer-encoding") == b"chunked":
                    while True:
                        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await self.reader.readexactly(size + 2)
                        if size == 0:
                            break
                elif b"content-length" in headers:
                    await self.reader.readexactly(int(headers[b"content-length"]))
                else:
                    await self.reader.read()
                    headers[b"connection"] = b"close"
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            return None
        if headers.get(b"connection") == b"close" or head.startswith(b"HTTP/1.0"):
            await self.close()
        return status


# --- request generation ------------------------------------------------------------------------


def request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"] + [name + b": " + value for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Fuzzer:
    def __init__(self, rng: random.Random, version_host: str, etags: list[str]):
        self.rng = rng
        self.version_host = version_host
        self.etags = etags
        now = int(time.time())
        claims = {"application_uid": APP, "can_write": True, "exp": now + 3600}
        self.bad_tokens: list[bytes | None] = [
            None, b"", b"garbage", b"not.a.jwt", b"ab\xffc", token().encode()[:-3] + b"\xed\xa0\x80",
            token().encode() + b"\xe9", token(OTHER_APP).encode(), token(can_write=False).encode(),
            tokens.mint(SECRET, APP, 1, now=now - 3600).encode(),
            jwt.encode(claims, None, algorithm="none").encode(), jwt.encode(claims, SECRET * 2, algorithm="HS512").encode(),
            jwt.encode(claims, "another-secret-0123456789abcdef012345", algorithm="HS256").encode(),
            b"x" * 7000, synctoken.mint(SECRET, "elsewhere", "body:x").encode(),
        ]

    # -- small pieces

    def choice(self, items):
        return items[self.rng.randrange(len(items))]

    def digits(self) -> bytes:
        return self.choice([b"0", b"7", b"18446744073709551616", b"9" * 4301, b"9" * 5000, b"0" * 5000 + b"1"])

    def odd(self) -> bytes:
        return b"".join(self.choice(ODD) for _ in range(self.rng.randint(1, 3)))

    def garble(self, value: bytes) -> bytes:
        """``value`` unchanged, cut, or with odd bytes inserted."""
        roll = self.rng.random()
        if roll < 0.6 or not value:
            return value
        cut = self.rng.randrange(len(value) + 1)
        if roll < 0.75:
            return value[:cut]
        return value[:cut] + self.odd() + value[cut:]

    def host(self) -> bytes:
        if self.rng.random() < 0.55:  # mostly hosts that serve, so that paths and headers get exercised
            return self.choice([self.version_host.encode(), TAG.encode(), TAG.upper().encode() + b":443"])
        return self.garble(self.choice([
            self.version_host.encode(), TAG.encode(), TAG.upper().encode() + b":443", b"unknown.example.com",
            b"127.0.0.1", b"[::1]:8080", b"[::zz]", b"[x", b"a..b", b"bad host!", b"", b" ", b"x" * 300,
            b"x" * 64 + b".example.com", b"h" * 8000, b"x.com:99999999", b"\xff.example.com",
            b"caf\xc3\xa9.example.com", b"xn--caf-dma.example.com", b"a" * 63 + b"." + b"b" * 63, b"." , b":80",
        ]))

    def path(self) -> bytes:
        base = self.choice([
            b"/", b"/index.html", b"/assets/main.js", b"/assets/data.json", b"/caf%C3%A9.js", b"/%ff.js", b"/%00",
            b"/..%2f..%2fetc/passwd", b"/assets/%2e%2e/main.js", b"/" + b"a" * 4000, b"/assets/", b"/missing.png",
            b"/some/spa/route", b"/%ed%a0%80", b"/%", b"/%zz", b"/assets/main.js?v=" + self.digits(),
            b"/zephyr-manifest.json", b"/healthz/", b"//double", b"/a b",
        ])
        return self.garble(base) or b"/"

    def range_header(self) -> bytes:
        d = self.digits
        return self.garble(self.choice([
            b"bytes=0-10", b"bytes=-5", b"bytes=5-", b"bytes=" + d() + b"-", b"bytes=0-" + d(), b"bytes=-" + d(),
            b"bytes=" + d() + b"-" + d(), b"bytes=1-0", b"bytes=0-1,2-3", b"items=0-1", b"bytes=--", b"bytes=",
            b"bytes=-0", b"BYTES = 0 - 1", b"bytes=0-1" + b",0-1" * 500,
        ]))

    def get_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"Host", self.host())]
        rng = self.rng
        if rng.random() < 0.3:
            headers.append((b"Range", self.range_header()))
        if rng.random() < 0.2:
            headers.append((b"If-Range", self.garble(self.choice([b'"x"', *(e.encode() for e in self.etags)]))))
        if rng.random() < 0.3:
            headers.append((b"If-None-Match", self.garble(self.choice(
                [b"*", b'W/"x"', b'"a", "b"', b",,,", *(e.encode() for e in self.etags)]))))
        if rng.random() < 0.4:
            headers.append((b"Accept-Encoding", self.garble(self.choice([
                b"gzip", b"br", b"gzip, br", b"gzip;q=0", b"*", b"identity;q=0", b"gzip;q=1e999", b"br;q=nan",
                b"br;q=" + self.digits(), b"gzip;q=-1", b"*;q=0, identity;q=0", b"gzip;;;q", b"x" * 6000,
            ]))))
        if rng.random() < 0.15:
            headers.append((self.choice([b"X-Forwarded-Host", b"X-Forwarded-Proto", b"Cookie", b"X-Odd"]), self.odd()))
        return headers

    def write_token(self, valid_share: float = 0.35) -> bytes | None:
        if self.rng.random() < valid_share:
            return token().encode()
        return self.choice(self.bad_tokens)

    # -- request kinds: (kind, raw request, head_only, may succeed)

    def serve(self):
        method = self.choice([b"GET"] * 9 + [b"HEAD"])
        return "serve", request(method, self.path(), self.get_headers()), method == b"HEAD", True

    def preflight(self):
        headers = [(b"Host", self.host()), (b"Origin", self.garble(b"https://app.example.com")),
                   (b"Access-Control-Request-Method", self.garble(b"GET"))]
        if self.rng.random() < 0.7:
            headers.append((b"Access-Control-Request-Headers", self.garble(self.choice(
                [b"range", b"x-a, x-b", b"\xff", b"x" * 3000, b"caf\xc3\xa9"]))))
        return "preflight", request(b"OPTIONS", self.path(), headers), False, True

    def hash_list(self):
        uid = self.garble(self.choice([APP.encode(), OTHER_APP.encode(), b"UPPER.case", b"a..b", b"x" * 600, b"%ff", b""]))
        headers = [(b"Host", self.host())]
        tok = self.write_token(0.2) if self.rng.random() < 0.6 else None
        if tok is not None:
            headers.append((b"can_write_jwt", tok))
        target = b"/__get_application_hash_list__?application_uid=" + uid
        return "hash-list", request(b"GET", target, headers), False, True

    def control(self):
        path = self.choice([b"/healthz", b"/healthz?x=%ff", b"/replicationz", b"/readyz"])
        return "control", request(b"GET", path, [(b"Host", self.host())]), False, True

    def hostile_json(self, doc: dict) -> bytes:
        """``doc`` (valid) made invalid in a way no validation may let through."""
        text = json.dumps(doc).encode()
        mutation = self.rng.randrange(9)
        if mutation == 0:
            return text.replace(b'"version": "', b'"version": "\\ud800', 1) if b'"version"' in text else text[:-1]
        if mutation == 1:
            return text[:-1] + b', "n": 1e999}'
        if mutation == 2:
            return text[:-1] + b', "n": ' + b"9" * self.rng.choice([4301, 5000]) + b"}"
        if mutation == 3:
            return text[: self.rng.randrange(len(text))]
        if mutation == 4:
            return text[:-1] + b', "n": NaN}'
        if mutation == 5:
            return b"[" * 50_000
        if mutation == 6:
            return text[:-1] + b', "\\udfff": 1}'
        if mutation == 7:
            return text.replace(b"{", b"{\xff", 1)
        return self.garble(b'{"a": "\\ud83d"}')

    def envs_body(self) -> bytes:
        snapshot_id = self.choice([f"tester-1.{APP}", f"tester-9.{APP}", f"tester-1.{OTHER_APP}"])
        app = self.choice([APP, OTHER_APP])
        url = self.choice(["https://[x", "[", "http://[::1", "https://[::zz]/", "https://x]", "\ud800.example.com",
                           "https://a..b", "https://" + "x" * 300, "ok.example.com"])
        doc = {"app_version": {"application_uid": app, "snapshot_id": snapshot_id}, "urls": [url],
               "url_ids": [self.choice(["[", "tag", "a b"])], "jwt": "x"}
        if url == "ok.example.com" and app == APP and snapshot_id == f"tester-1.{APP}":
            return self.hostile_json(doc)  # otherwise it would publish
        return json.dumps(doc).encode() if self.rng.random() < 0.5 else self.hostile_json(doc)

    def upload(self):
        rng = self.rng
        kind = self.choice(["file", "snapshot", "envs", "sync-file", "sync-snapshot", "sync-envs", "sync-check",
                            "", "nope", "FILE", "snapshot\xff"])
        params = {"type": kind}
        headers = [(b"Host", self.host())]
        body = b""
        if kind == "file":
            filename = self.choice(["a.js", "caf\u00e9.js", "../x.js", "/abs.js", "a\x00b.js", "x" * 3000, "%ff"])
            data = self.garble(b"payload bytes")
            params |= {"hash": self.choice([asset_hash(b"other", "a.js"), "0" * 64, "xyz", "A" * 64]), "filename": filename}
            body = data
        elif kind == "snapshot":
            params["skip_assets"] = "true"
            body = self.hostile_json(snapshot_body(build=str(rng.randrange(3, 9))))
        elif kind == "envs":
            body = self.envs_body()
        elif kind in ("sync-snapshot", "sync-envs"):
            body = self.hostile_json({"snapshot": snapshot_body(build="5"), "hosts": {"a-ze.example.com": "1700000000000|x"}})
        elif kind == "sync-check":
            body = self.garble(json.dumps({"application_uid": APP, "hashes": ["0" * 64], "snapshots": ["x"],
                                           "hosts": {self.choice(["a.example.com", "\ud800", "[x"]): "1|x"}},
                                          ).encode()) if rng.random() < 0.5 else self.hostile_json({"application_uid": APP})
        elif kind == "sync-file":
            params |= {"application_uid": APP, "hash": "0" * 64, "filename": "a.js"}
            body = b"sync bytes"
        else:
            body = self.garble(b"{}")
        if kind.startswith("sync-"):
            subject = protocol.body_subject(body) if kind != "sync-file" else protocol.file_subject(APP, "0" * 64)
            bearer = self.choice([
                synctoken.mint(SECRET, "us-east-1", subject).encode(), synctoken.mint(SECRET, REGION, subject).encode(),
                b"garbage", b"ab\xffc", synctoken.mint(SECRET, "us-east-1", subject).encode() + b"\xed\xa0\x80",
                token().encode(), b"",
            ])
            headers += [(b"Authorization", b"Bearer " + bearer),
                        (b"X-Replica-Source", self.garble(self.choice([b"us-east-1", REGION.encode(), b"\xff"])))]
        else:
            tok = self.write_token()
            if tok is not None:
                headers.append((b"can_write_jwt", tok))
        query = "&".join(f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items()).encode()
        if rng.random() < 0.2:
            query = self.garble(query) + self.choice([b"&type=file", b"&hash=", b"&%zz", b"&&&", b"&filename=%ff"])
        return f"upload:{kind}", request(b"POST", b"/upload?" + query, headers, body), False, kind == "sync-check"

    def next(self):
        roll = self.rng.random()
        if roll < 0.45:
            return self.serve()
        if roll < 0.50:
            return self.preflight()
        if roll < 0.58:
            return self.hash_list()
        if roll < 0.60:
            return self.control()
        return self.upload()


# --- the test ------------------------------------------------------------------------------


@pytest.fixture
async def backend(request, tmp_path):
    """The local backends; ``ZE_TEST_FUZZ_BACKEND=s3-redis`` explores S3 (moto) + Redis."""
    if os.environ.get("ZE_TEST_FUZZ_BACKEND", "local") == "local":
        yield local_backend(tmp_path)
        return
    chosen = s3_redis_backend(tmp_path, request.getfixturevalue("s3_endpoint"), request.getfixturevalue("redis_addr"))
    async with s3_session(chosen):
        yield chosen


async def test_fuzz_the_http_surface(aiohttp_client, backend):
    app = make_app(load_config(backend, ZE_WORKER_REPLICA_NAME=REGION, ZE_WORKER_HOST_CACHE_TTL_MS="60000"))
    client = await aiohttp_client(app)
    worker = Worker(client, backend)
    # a real deployment, through the upload routes
    for name, data in FILES.items():
        assert (await worker.upload_file(data, name)).status == 200
    snapshot = snapshot_body(build="1", files=FILES)
    answer = await worker.upload_json("snapshot", snapshot)
    assert answer.status == 200
    version_host = (await answer.json())["urls"]["version"].split("://", 1)[1].split(":")[0]
    publish = {"app_version": {"application_uid": APP, "snapshot_id": snapshot["snapshot_id"]}, "urls": [TAG]}
    assert (await worker.upload_json("envs", publish)).status == 200
    etags = [f'"{asset_hash(d, n)}"' for n, d in FILES.items()] + [f'"{asset_hash(FILES["assets/main.js"], "assets/main.js")}-gz"']
    before = await worker.fingerprint()

    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng, version_host, etags)
    plan = [fuzzer.next() for _ in range(REQUESTS)]
    statuses: dict[str, dict[int | None, int]] = {}
    findings: list[str] = []
    port = client.server.port

    async def run(share: list) -> None:
        connection = Connection(port)
        try:
            for kind, raw, head_only, may_succeed in share:
                status = await connection.exchange(raw, head_only)
                counts = statuses.setdefault(kind, {})
                counts[status] = counts.get(status, 0) + 1
                # 501 "Not Implemented" is the protocol's answer to an unknown upload type
                server_error = status is not None and status >= 500 and not (status == 501 and kind.startswith("upload"))
                if status is None or server_error or (not may_succeed and status < 400):
                    findings.append(f"{kind} -> {status}: {raw[:300]!r}")
        finally:
            await connection.close()

    started = time.monotonic()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await asyncio.gather(*(run(plan[i::CONNECTIONS]) for i in range(CONNECTIONS)))
    took = time.monotonic() - started
    summary = {kind: dict(sorted(c.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))) for kind, c in sorted(statuses.items())}
    print(f"fuzz seed {SEED}: {REQUESTS} requests in {took:.1f} s; statuses by kind: {summary}")
    assert not findings, (
        f"seed {SEED}: {len(findings)} requests answered 5xx, no answer, or an accepted upload; first ones:\n"
        + "\n".join(findings[:SHOWN])
    )
    assert await worker.fingerprint() == before, f"seed {SEED}: refused requests changed what is stored"
    # the deployment still serves
    for host in (version_host, TAG):
        resp = await client.get("/assets/main.js", headers={"Host": host})
        assert resp.status == 200 and await resp.read() == FILES["assets/main.js"]
    assert sum(sum(c.values()) for c in statuses.values()) == REQUESTS
    assert {k.split(":")[0] for k in statuses} == {"serve", "preflight", "hash-list", "control", "upload"}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_plan_depends_on_the_seed_only(seed):
    plans = [[Fuzzer(random.Random(seed), "v-ze.example.com", ['"x"']).next()[1] for _ in range(50)] for _ in range(2)]
    # tokens carry their minting second: compare everything else
    strip = lambda raw: raw.split(b"can_write_jwt")[0].split(b"Authorization")[0]  # noqa: E731
    assert [strip(r) for r in plans[0]] == [strip(r) for r in plans[1]]
