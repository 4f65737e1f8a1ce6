"""A RECORDING FAKE of the edge worker, for the e2e harness's own tests only.

``RecordingEdge`` is a test double of zephyr_edge's write side: just enough of
the upload API (hash list, ``/upload`` of files, snapshot and envs; ``zephyr_edge.http.ingest.upload``) for the
real ``zephyr-agent`` to complete a deploy, recording every request it receives (method,
path, query, headers, body size and sha256, timing). It exists to prove the harness in
``tests/e2e/agent.py`` and to observe the agents' wire traffic (``WIRE.md``). It is NOT the
worker: it serves no application traffic, keeps everything in memory and implements none of
the storage, KV, replication or validation rules beyond the hash check. Tests of the worker
deploy to the real worker instead.

Everything binds to 127.0.0.1; ``stop()`` closes the listener.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
from aiohttp import web

from tests.e2e.loopback import LoopbackServer

WORKER_VERSION = "recording-fake-0"
JWT_ALGORITHMS = ["HS256"]


def asset_hash(filename: str, body: bytes) -> str:
    """The agent's asset hash: ``sha256(body or P) ‖ update(P)``, hex (P = UTF-8 filename)."""
    p = filename.encode("utf-8")
    h = hashlib.sha256(body or p)
    h.update(p)
    return h.hexdigest()


def version_label(snapshot_id: str) -> str:
    """The version hostname's label for a snapshot id (as ``zephyr_edge.domain.hostnames.version_label``)."""
    slug = snapshot_id.replace(".", "-")
    return slug[:49] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:9]


@dataclass
class RecordedRequest:
    """One request as the fake worker received it, and what it answered."""

    seq: int
    method: str
    path: str
    raw_path: str  # the request target as sent (path and query, percent-encoding kept)
    raw_query: str  # the query string, percent-decoded
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    body_size: int
    body_sha256: str
    started: float  # time.monotonic() when the handler began
    finished: float = 0.0  # time.monotonic() when the answer was ready
    status: int = 0
    answer: str = ""
    jwt_claims: dict[str, Any] | None = None
    jwt_error: str | None = None

    def q(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return default

    @property
    def kind(self) -> str:
        """``hash_list``, ``file``, ``snapshot``, ``envs``, ``upload:<type>`` or ``other``."""
        if self.path == "/__get_application_hash_list__":
            return "hash_list"
        if self.path == "/upload":
            t = self.q("type") or ""
            return t if t in ("file", "snapshot", "envs") else f"upload:{t}"
        return "other"

    def json(self) -> Any:
        return json.loads(self.body)

    def summary(self) -> str:
        return f"#{self.seq} {self.method} {self.raw_path} -> {self.status} ({self.body_size} B)"


@dataclass
class Fault:
    """Answer requests of ``kind`` with ``status``/``body`` (``times`` None = always)."""

    kind: str
    status: int
    body: str = ""
    times: int | None = None
    content_type: str = "text/plain"


@dataclass
class RecordingEdge(LoopbackServer):
    """The recording fake worker. ``async with RecordingEdge(jwt_secret=...) as edge: edge.url``."""

    jwt_secret: str | None = None  # when set, writes need a valid ``can_write_jwt`` (else 403)
    delimiter: str = "-"
    #: Seconds added before answering requests of a kind (see RecordedRequest.kind), e.g.
    #: ``{"file": 0.05}`` to make upload concurrency observable.
    delays: dict[str, float] = field(default_factory=dict)
    worker_version: str = WORKER_VERSION
    host: str = "127.0.0.1"

    requests: list[RecordedRequest] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # hash -> bytes
    hashes: dict[str, set[str]] = field(default_factory=dict)  # application_uid -> stored hashes
    snapshots: dict[str, dict] = field(default_factory=dict)  # snapshot_id -> snapshot
    envs: dict[str, dict] = field(default_factory=dict)  # hostname -> snapshot
    faults: list[Fault] = field(default_factory=list)
    max_in_flight: dict[str, int] = field(default_factory=dict)

    _in_flight: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _port: int = 0

    # -- lifecycle -------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # -- configuration / inspection ----------------------------------------------------
    def fail(self, kind: str, status: int, body: str = "", times: int | None = None) -> None:
        """Answer the next ``times`` requests of ``kind`` (see RecordedRequest.kind) with status/body."""
        self.faults.append(Fault(kind, status, body, times))

    def of_kind(self, kind: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == kind]

    def clear(self) -> None:
        """Forget recorded requests (stored files, hashes and snapshots stay)."""
        self.requests.clear()
        self.max_in_flight.clear()

    def version_url_for(self, snapshot_id: str, host_header: str) -> str:
        hostname, _, port = host_header.partition(":")
        host = f"{version_label(snapshot_id)}{self.delimiter}{hostname.lower()}"
        return f"http://{host}:{port}" if port else f"http://{host}"

    # -- request handling ----------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        rec = RecordedRequest(
            seq=len(self.requests) + 1,
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            raw_query=request.query_string,
            query=parse_qsl(request.query_string, keep_blank_values=True),
            headers={k.lower(): v for k, v in request.headers.items()},
            raw_headers=list(request.raw_headers),
            body=body,
            body_size=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            started=started,
        )
        self.requests.append(rec)
        kind = rec.kind
        self._in_flight[kind] = self._in_flight.get(kind, 0) + 1
        self.max_in_flight[kind] = max(self.max_in_flight.get(kind, 0), self._in_flight[kind])
        try:
            if self.delays.get(kind):
                await asyncio.sleep(self.delays[kind])
            status, payload, ctype = self._answer(rec, request)
        finally:
            self._in_flight[kind] -= 1
        rec.status, rec.answer, rec.finished = status, payload, time.monotonic()
        return web.Response(status=status, text=payload, content_type=ctype)

    def _answer(self, rec: RecordedRequest, request: web.Request) -> tuple[int, str, str]:
        kind = rec.kind
        token = rec.headers.get("can_write_jwt")
        if token is not None and self.jwt_secret is not None:
            try:
                rec.jwt_claims = jwt.decode(
                    token, self.jwt_secret, algorithms=JWT_ALGORITHMS, options={"require": ["exp"]}
                )
            except jwt.PyJWTError as exc:
                rec.jwt_error = f"{type(exc).__name__}: {exc}"

        for fault in self.faults:
            if fault.kind == kind and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                return fault.status, fault.body, fault.content_type

        if kind == "hash_list" and rec.method == "GET":
            uid = rec.q("application_uid") or ""
            return _json(200, {"hashes": sorted(self.hashes.get(uid, set()))})
        if rec.path != "/upload":
            return 404, "Not Found", "text/plain"
        if kind.startswith("upload:"):
            return 501, "Not Implemented", "text/plain"
        if rec.method != "POST":
            return 405, "Method Not Allowed", "text/plain"
        if self.jwt_secret is not None and rec.jwt_claims is None:
            return 403, "Forbidden", "text/plain"
        uid = (rec.jwt_claims or {}).get("application_uid", "")

        if kind == "file":
            filename, want = rec.q("filename") or "", rec.q("hash") or ""
            got = asset_hash(filename, rec.body)
            if got != want:
                return _json(400, {"error": f"hash mismatch: query {want}, body gives {got}"})
            self.files[got] = rec.body
            self.hashes.setdefault(uid, set()).add(got)
            return _json(200, {"status": "ok", "hash": got})
        if kind == "snapshot":
            try:
                snapshot = json.loads(rec.body)
                snapshot_id = snapshot["snapshot_id"]
            except (ValueError, KeyError, TypeError) as exc:
                return _json(400, {"error": f"bad snapshot: {exc}"})
            self.snapshots[snapshot_id] = snapshot
            version = self.version_url_for(snapshot_id, request.headers.get("Host", self.url[7:]))
            self.envs[version.split("://", 1)[1].split(":")[0]] = snapshot
            return _json(200, {"urls": {"version": version}, "worker_version": self.worker_version})
        if kind == "envs":
            try:
                payload = json.loads(rec.body)
            except ValueError as exc:
                return _json(400, {"error": f"bad envs body: {exc}"})
            sid = (payload.get("app_version") or {}).get("snapshot_id")
            if sid in self.snapshots:
                for u in payload.get("urls", []):
                    self.envs[u.split("://", 1)[-1].split("/")[0].split(":")[0]] = self.snapshots[sid]
            return _json(200, {"status": "ok"})
        return 501, "Not Implemented", "text/plain"


def _json(status: int, obj: Any) -> tuple[int, str, str]:
    return status, json.dumps(obj), "application/json"
