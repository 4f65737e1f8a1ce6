"""The ingest half of the data path: the hash list and ``POST /upload``, as ``zephyr-agent`` calls them.

Routes (matched by path, whatever the Host):

- ``GET /__get_application_hash_list__?application_uid=U`` → ``{"hashes": [...]}``: the
  hashes whose bytes are durably stored for U. Agents 1.0/1.2 send no token; a token, when
  present, must be valid and for U.
- ``POST /upload?type=T``, dispatched on ``T`` through the app's table
  :data:`UPLOAD_TYPES_KEY` (``file``, ``snapshot``, ``envs``; a later feature adds its own
  types with :func:`add_upload_type`). An unknown or missing type answers 501 with the
  plain-text body ``Not Implemented``, which the agent recognises.

Integrity rules: every write is authorised by ``can_write_jwt`` (:mod:`zephyr_edge.http.auth`)
before its body is read; an asset's bytes are hashed while they stream to storage and a
mismatch aborts the (atomic) write; the hash joins the application's hash list only once
its bytes are stored; a rejected request (403, 400, 413, 501) changes nothing.

An asset already listed for the application is not written again: its body is still read
and its hash checked (:func:`zephyr_edge.http.ingest.files.store_asset`, shared with the replication
receiver's ``sync-file``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

import zephyr_edge
from zephyr_edge.domain import assets, publicurl
from zephyr_edge.http import answers, auth, bodies
from zephyr_edge.http.ingest import files
from zephyr_edge.errors import BadRequest
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY
from zephyr_edge.domain.snapshot import parse_envs_payload, parse_snapshot_upload
from zephyr_edge.settings.units import MiB

log = logging.getLogger(__name__)

HASH_LIST_PATH = "/__get_application_hash_list__"
UPLOAD_PATH = "/upload"
#: The answer to an unknown ``type`` (its exact text is what the agent matches).
NOT_IMPLEMENTED = "Not Implemented"
#: Largest accepted snapshot JSON (a manifest of many thousands of assets fits easily).
MAX_SNAPSHOT_BYTES = 32 * MiB
#: Largest accepted publish (``type=envs``) body.
MAX_ENVS_BYTES = 1 * MiB
#: Bound of one whole file upload (body and storage write): see :mod:`zephyr_edge.http.ingest.files`.
FILE_UPLOAD_TIMEOUT_S = files.FILE_UPLOAD_TIMEOUT_S

UploadHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The app's ``type`` → handler table of ``POST /upload`` (built by :func:`setup`).
UPLOAD_TYPES_KEY = web.AppKey("upload_types", dict)


def setup(app: web.Application) -> None:
    """Add the hash-list and upload routes and the upload type table to ``app``."""
    app[UPLOAD_TYPES_KEY] = {"file": upload_file, "snapshot": upload_snapshot, "envs": upload_envs}
    app[auth.VERIFIED_TOKENS_KEY] = auth.VerifiedTokens()
    app.router.add_get(HASH_LIST_PATH, hash_list)
    app.router.add_post(UPLOAD_PATH, upload)


def add_upload_type(app: web.Application, name: str, handler: UploadHandler) -> None:
    """Route ``POST /upload?type=<name>`` to ``handler`` (call after :func:`setup`)."""
    table = app[UPLOAD_TYPES_KEY]
    if name in table:
        raise ValueError(f"upload type {name!r} is already handled")
    table[name] = handler


async def upload(request: web.Request) -> web.StreamResponse:
    """``POST /upload``: dispatch on ``type``; 501 ``Not Implemented`` for anything else."""
    handler = request.app[UPLOAD_TYPES_KEY].get(request.query.get("type", ""))
    if handler is None:
        return web.Response(status=501, text=NOT_IMPLEMENTED, content_type="text/plain", headers=answers.NO_STORE)
    return await handler(request)


# --- hash list --------------------------------------------------------------------------


async def hash_list(request: web.Request) -> web.Response:
    """``{"hashes": [...]}`` of ``application_uid`` (sorted; ``[]`` for an unknown app)."""
    uid = files.validate_application_uid(request.query.get("application_uid"))
    auth.optional_write(request, uid)
    hashes = await request.app[CATALOG_KEY].hashes(uid)
    return answers.ok({"hashes": sorted(hashes)})


# --- files ------------------------------------------------------------------------------


async def upload_file(request: web.Request) -> web.Response:
    """``type=file&hash=H&filename=P``: store the body by hash, then list H for the app."""
    claims = auth.require_write(request)
    expected = assets.validate_hash(request.query.get("hash"), "hash")
    filename = assets.validate_filename(request.query.get("filename"), "filename")
    started = time.monotonic()
    stored = await files.store_asset(request, claims.application_uid, expected, filename, FILE_UPLOAD_TIMEOUT_S)
    if not stored.reused:
        await request.app[CATALOG_KEY].add_hash(claims.application_uid, expected, filename)
    log.info(
        "Asset already stored" if stored.reused else "Asset stored",
        extra={"fields": {
            "zephyr.application_uid": claims.application_uid, "zephyr.asset.hash": expected,
            "zephyr.asset.size": stored.size, "zephyr.asset.filename": filename,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }},
    )
    return answers.ok({"status": "ok", "hash": expected, "size": stored.size, "already_stored": stored.reused})


# --- snapshots and publishing -----------------------------------------------------------


async def upload_snapshot(request: web.Request) -> web.Response:
    """``type=snapshot``: validate, store, publish the version host; answer its URL.

    Accepted before its assets arrive (the agent sends both at once).
    """
    claims = auth.require_write(request)
    raw = await bodies.read_limited(request, MAX_SNAPSHOT_BYTES, "the snapshot")
    worker = request.app[CONFIG_KEY].worker
    snapshot = await bodies.parse_off_loop(raw, lambda body: parse_snapshot_upload(body, worker.max_snapshot_assets))
    auth.check_application(claims, snapshot.application_uid, "application_uid")
    base = publicurl.from_request(request, worker.public_url)
    host = base.version_host(snapshot.snapshot_id, worker.delimiter)
    await request.app[CATALOG_KEY].save_snapshot(snapshot, host)
    url = base.url(host)
    log.info(
        "Snapshot stored",
        extra={"fields": {
            "zephyr.application_uid": snapshot.application_uid, "zephyr.snapshot_id": snapshot.snapshot_id,
            "zephyr.snapshot.assets": len(snapshot.assets), "zephyr.version_url": url,
        }},
    )
    return answers.ok({"urls": {"version": url}, "worker_version": zephyr_edge.__version__})


async def upload_envs(request: web.Request) -> web.Response:
    """``type=envs``: point the body's hosts at a stored snapshot (publish, rollback)."""
    claims = auth.require_write(request)
    raw = await bodies.read_limited(request, MAX_ENVS_BYTES, "the publish request")
    payload = parse_envs_payload(raw, None)
    auth.check_application(claims, payload.application_uid, "app_version.application_uid")
    if not payload.hosts:
        raise BadRequest("urls: expected at least one URL in urls or url_ids", field="urls")
    base = publicurl.from_request(request, request.app[CONFIG_KEY].worker.public_url)
    await request.app[CATALOG_KEY].publish(payload.snapshot_id, payload.hosts, payload.application_uid)
    log.info(
        "Snapshot published",
        extra={"fields": {
            "zephyr.application_uid": payload.application_uid, "zephyr.snapshot_id": payload.snapshot_id,
            "zephyr.hosts": list(payload.hosts),
        }},
    )
    return answers.ok({
        "status": "ok",
        "snapshot_id": payload.snapshot_id,
        "hosts": list(payload.hosts),
        "urls": [base.url(h) for h in payload.hosts],
    })
