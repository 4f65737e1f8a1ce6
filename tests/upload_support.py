"""Helpers of the ingest tests: a worker on real backends (local, or S3 on moto + Redis),
tokens, snapshot bodies, and a fingerprint of everything the worker stores (storage
objects, S3 multipart uploads, every KV record) to prove that a rejected request changed
nothing."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import coredis
import jwt

from zephyr_edge.domain import tokens
from zephyr_edge.settings import config
from zephyr_edge.http.app import make_app
from zephyr_edge.domain.assets import asset_hash, extension, storage_key
from zephyr_edge.http.appkeys import CATALOG_KEY, STORAGE_KEY
from zephyr_edge.kv import local_sql
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.storage.base import Storage

from tests import backends_support
from tests.backends_support import Backend, local_backend, remove_everything, s3_session  # noqa: F401 (the ingest tests' helpers)

SECRET = "upload-test-jwt-secret-0123456789abcdef"
APP = "web.repo.org"
OTHER_APP = "other.repo.org"
#: Storage keys written by the readiness check, which runs in the background.
PROBE_PREFIXES = ("_probe", ".ze-tmp-ping-")


def s3_redis_backend(tmp_path: Path, s3_endpoint: str, redis_addr: tuple[str, int]) -> Backend:
    return backends_support.s3_redis_backend(tmp_path, s3_endpoint, redis_addr, "ze-upload")


def load_config(backend: Backend, **extra: str) -> config.Config:
    return config.load({"ZE_WORKER_JWT_SECRET": SECRET, **backend.env, **extra})


# --- tokens ----------------------------------------------------------------------------------


def token(app: str = APP, **claims: Any) -> str:
    """A valid write token for ``app`` (claims overridable)."""
    now = int(time.time())
    body = {"application_uid": app, "can_write": True, "exp": now + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def bad_tokens(app: str = APP) -> dict[str, tuple[str | None, str]]:
    """name → (token or None, a word the refusal must contain)."""
    now = int(time.time())
    claims = {"application_uid": app, "can_write": True, "exp": now + 600}
    return {
        "none": (None, "missing"),
        "empty": ("", "missing"),
        "malformed": ("not.a.jwt", "malformed"),
        "expired": (tokens.mint(SECRET, app, 1, now=now - 3600), "expired"),
        "wrong-secret": (jwt.encode(claims, "another-secret-0123456789abcdef0123456", algorithm="HS256"), "signature"),
        "alg-none": (jwt.encode(claims, None, algorithm="none"), "'none' not allowed"),
        "alg-hs512": (jwt.encode(claims, SECRET + SECRET, algorithm="HS512"), "'HS512' not allowed"),
        "no-exp": (jwt.encode({"application_uid": app, "can_write": True}, SECRET, algorithm="HS256"), "'exp'"),
        "other-app": (token(OTHER_APP), OTHER_APP),
        "read-only": (token(app, can_write=False), "write access"),
    }


# --- bodies ----------------------------------------------------------------------------------


def snapshot_body(
    app: str = APP, build: str = "1", files: Mapping[str, bytes] | None = None, created_at: int = 1_700_000_000_000,
    **fields: Any,
) -> dict[str, Any]:
    """A snapshot JSON like the agent's (assets from ``files``: path → bytes)."""
    files = {"index.html": b"<html>hi</html>", "assets/main.js": b"console.log(1)"} if files is None else files
    return {
        "application_uid": app,
        "snapshot_id": f"tester-{build}.{app}",
        "version": f"1.0.0-tester.{build}",
        "domain": "http://127.0.0.1:8080",
        "target": "web",
        "type": "csr",
        "createdAt": created_at,
        "uid": {"build": build, "app_name": app.split(".")[0], "repo": "repo", "org": "org"},
        "assets": {
            path: {"path": path, "extname": extension(path), "hash": asset_hash(data, path), "size": len(data)}
            for path, data in files.items()
        },
        **fields,
    }


# --- the worker ------------------------------------------------------------------------------


class Worker:
    """A test client on a worker app, with the calls the agent makes and state probes."""

    def __init__(self, client: Any, backend: Backend):
        self.client = client
        self.backend = backend

    @property
    def storage(self) -> Storage:
        return self.client.server.app[STORAGE_KEY]

    @property
    def catalog(self) -> Catalog:
        return self.client.server.app[CATALOG_KEY]

    async def upload_file(
        self, data: Any, filename: str, *, asset: str | None = None, jwt_token: str | None = "valid",
        headers: Mapping[str, str] | None = None, app: str = APP,
    ) -> Any:
        """POST a file; ``data`` bytes or an async iterator; ``asset`` defaults to its true hash."""
        if asset is None:
            asset = asset_hash(data, filename)
        sent = {"Content-Type": "application/octet-stream", **(headers or {})}
        if jwt_token is not None:
            sent["can_write_jwt"] = token(app) if jwt_token == "valid" else jwt_token
        params = {"type": "file", "hash": asset, "filename": filename}
        return await self.client.post("/upload", params=params, data=data, headers=sent)

    async def upload_json(
        self, kind: str, body: Any, *, jwt_token: str | None = "valid", app: str = APP,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        sent = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        if jwt_token is not None:
            sent["can_write_jwt"] = token(app) if jwt_token == "valid" else jwt_token
        params = {"type": kind} if kind != "snapshot" else {"type": "snapshot", "skip_assets": "true"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post("/upload", params=params, data=data, headers=sent)

    async def hash_list(self, app: str = APP, jwt_token: str | None = None) -> Any:
        headers = {} if jwt_token is None else {"can_write_jwt": jwt_token}
        return await self.client.get("/__get_application_hash_list__", params={"application_uid": app}, headers=headers)

    async def stored(self, asset: str) -> bytes | None:
        if await self.storage.head(storage_key(asset)) is None:
            return None
        async with await self.storage.get(storage_key(asset)) as blob:
            return await blob.read()

    # --- fingerprint of everything stored --------------------------------------------------

    async def fingerprint(self) -> dict[str, Any]:
        """Every stored object (name, size), pending multipart upload and KV record."""
        return {"objects": await self._objects(), "kv": await self._kv_records()}

    async def _objects(self) -> list[Any]:
        if self.backend.bucket:
            found: list[Any] = []
            s3 = self.backend.s3
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.backend.bucket):
                found += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
            uploads = (await s3.list_multipart_uploads(Bucket=self.backend.bucket)).get("Uploads", [])
            found += [("multipart", u["Key"]) for u in uploads]
            return sorted(f for f in found if not str(f[0]).startswith(PROBE_PREFIXES))
        root = self.backend.data_dir / "objects"
        out = []
        for folder, _, files in os.walk(root):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), root)
                if not rel.startswith(PROBE_PREFIXES):
                    out.append((rel, os.path.getsize(os.path.join(folder, name))))
        return sorted(out)

    async def _kv_records(self) -> list[Any]:
        if self.backend.redis:
            async with coredis.Redis(host=self.backend.redis[0], port=self.backend.redis[1]) as client:
                keys = sorted([k async for k in client.scan_iter(match=f"{self.backend.tag}*")])
                out = []
                for key in keys:
                    kind = await client.type(key)
                    value = sorted(await client.smembers(key)) if kind in (b"set", "set") else await client.get(key)
                    out.append((key, value))
                return out
        path = self.backend.data_dir / "kv" / local_sql.DB_FILE
        if not path.exists():
            return []
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            values = conn.execute("SELECT key, value FROM kv_values ORDER BY key").fetchall()
            members = conn.execute("SELECT key, member FROM kv_set_members ORDER BY key, member").fetchall()
        conn.close()
        return [("value", *v) for v in values] + [("member", *m) for m in members]


async def start_worker(aiohttp_client: Any, backend: Backend, **extra: str) -> Worker:
    client = await aiohttp_client(make_app(load_config(backend, **extra)))
    return Worker(client, backend)


@contextlib.asynccontextmanager
async def production_server(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port as ``zephyr-edge serve`` does (handlers are not
    cancelled when a client disconnects); yield the port."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as a streamed (chunked) request body."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@contextlib.asynccontextmanager
async def ingest_backend(request: Any, tmp_path: Path) -> AsyncIterator[Backend]:
    """The backend of an ingest test parametrized ``local`` / ``s3-redis`` (the S3 bucket
    is created and emptied around it)."""
    if request.param == "local":
        yield local_backend(tmp_path)
        return
    chosen = s3_redis_backend(tmp_path, request.getfixturevalue("s3_endpoint"), request.getfixturevalue("redis_addr"))
    async with s3_session(chosen):
        yield chosen
