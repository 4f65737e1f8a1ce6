"""The receiving side of the sync protocol: ``POST /upload?type=sync-…`` (:mod:`.protocol`).

Each handler refuses (403) when replication is not enabled here (no
``ZE_WORKER_REPLICA_NAME``), then checks the sync token (:mod:`.synctoken`) before it reads
any body; a JSON body's ``sub`` is compared once that body is read. What arrives is applied
with :meth:`Catalog.apply_file <zephyr_edge.catalog.records.Catalog.apply_file>` and
:meth:`Catalog.apply_replicated <zephyr_edge.catalog.records.Catalog.apply_replicated>`, which never
record it in the outbox: a sync request is never forwarded. Every handler is idempotent,
so a delivery repeated by the sender changes nothing.

Answers and bodies: :mod:`zephyr_edge.replication.protocol`. Errors are
:mod:`zephyr_edge.errors` exceptions, answered by the app's error middleware.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from zephyr_edge.domain import assets, hostnames
from zephyr_edge.http import answers, bodies
from zephyr_edge.http.ingest import files, upload
from zephyr_edge.errors import BadRequest, Forbidden, shorten
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY
from zephyr_edge.replication import protocol, synctoken
from zephyr_edge.domain.snapshot import Snapshot, load_json_object, snapshot_from_object
from zephyr_edge.domain.stamps import InvalidStamp, Stamp, newer

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest host or value quoted back in an error message.
MAX_SHOWN_CHARS = 100


def setup(app: web.Application) -> None:
    """Route the four sync types of ``POST /upload`` (call after :func:`zephyr_edge.http.ingest.upload.setup`)."""
    upload.add_upload_type(app, protocol.SYNC_FILE, sync_file)
    upload.add_upload_type(app, protocol.SYNC_SNAPSHOT, sync_snapshot)
    upload.add_upload_type(app, protocol.SYNC_ENVS, sync_envs)
    upload.add_upload_type(app, protocol.SYNC_CHECK, sync_check)


def authorize(request: web.Request, subject: str | None) -> synctoken.SyncClaims:
    """The request's verified sync token (``subject`` as in :func:`synctoken.verify`), or
    :class:`Forbidden` (logged at info with the reason by the app's error middleware, never
    the token)."""
    worker = request.app[CONFIG_KEY].worker
    if not worker.replica_name:
        raise Forbidden("replication is not enabled on this worker (ZE_WORKER_REPLICA_NAME is not set)")
    return synctoken.verify(
        synctoken.bearer_token(request.headers.get("Authorization")), worker.jwt_secret,
        source_header=request.headers.get(protocol.SOURCE_HEADER), own_replica=worker.replica_name,
        subject=subject,
    )


async def _read_json(
    request: web.Request, claims: synctoken.SyncClaims, parse: Callable[[dict[str, Any]], T] = lambda data: data,
) -> T:
    """``parse`` of the request's JSON object body, once the token's ``sub`` is checked
    against it (both off the event loop when the body is large)."""
    raw = await bodies.read_limited(request, protocol.MAX_JSON_BYTES, "the sync request")
    synctoken.check_subject(claims, protocol.body_subject(raw))
    return await bodies.parse_off_loop(raw, lambda body: parse(load_json_object(body, "body")))


def _snapshot_and_stamps(data: dict[str, Any]) -> tuple[Snapshot, dict[str, Stamp]]:
    snapshot = _snapshot(data.get("snapshot"))
    snapshot.to_json()  # the stored form, computed here (off the loop when large)
    return snapshot, _stamps(data.get("hosts"))


def _stamps(value: Any) -> dict[str, Stamp]:
    """``{"<host>": "<stamp>"}`` read (hosts as sent); :class:`BadRequest` naming the host."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("hosts: expected a JSON object mapping host names to stamps", field="hosts")
    out: dict[str, Stamp] = {}
    for host, text in value.items():
        try:
            out[host] = Stamp.parse(text)
        except InvalidStamp as exc:
            raise BadRequest(f"hosts[{_show(host)}]: {exc}", field="hosts") from None
    return out


def _snapshot(value: Any) -> Snapshot:
    """The body's ``snapshot`` validated like an upload's; :class:`BadRequest` naming the field."""
    if not isinstance(value, dict):
        raise BadRequest("snapshot: expected the snapshot JSON object", field="snapshot")
    try:
        return snapshot_from_object(value, None)
    except BadRequest as exc:
        raise BadRequest(f"snapshot.{exc}", field=f"snapshot.{exc.field}") from None


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(shorten(text, MAX_SHOWN_CHARS))


def _applied(claims: synctoken.SyncClaims, kind: str, message: str, **fields: Any) -> None:
    log.info(message, extra={"fields": {
        "zephyr.replica.source": claims.source, "zephyr.sync.type": kind, "zephyr.sync.jti": claims.jti,
        **{f"zephyr.{k}": v for k, v in fields.items()},
    }})


# --- handlers -----------------------------------------------------------------------------


async def sync_file(request: web.Request) -> web.Response:
    """``sync-file&application_uid=U&hash=H&filename=F``: store the bytes, list H for U."""
    claims = authorize(request, protocol.file_subject(request.query.get("application_uid", ""), request.query.get("hash", "")))
    uid = files.validate_application_uid(request.query.get("application_uid"))
    expected = assets.validate_hash(request.query.get("hash"), "hash")
    filename = assets.validate_filename(request.query.get("filename"), "filename")
    started = time.monotonic()
    stored = await files.store_asset(request, uid, expected, filename)
    if not stored.reused:
        await request.app[CATALOG_KEY].apply_file(uid, expected)
    _applied(
        claims, protocol.SYNC_FILE, "Sync asset already stored" if stored.reused else "Sync asset stored",
        application_uid=uid, **{"asset.hash": expected, "asset.size": stored.size},
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return answers.ok({"status": "ok", "hash": expected, "size": stored.size, "already_stored": stored.reused})


async def _apply(request: web.Request, kind: str) -> web.Response:
    claims = authorize(request, None)
    snapshot, stamps = await _read_json(request, claims, _snapshot_and_stamps)
    applied = await request.app[CATALOG_KEY].apply_replicated(snapshot, stamps)
    _applied(
        claims, kind, "Sync applied", application_uid=snapshot.application_uid,
        snapshot_id=snapshot.snapshot_id, hosts=sorted(stamps), **{"sync.applied": applied},
    )
    return answers.ok({"status": "ok", "applied": applied})


async def sync_snapshot(request: web.Request) -> web.Response:
    """``sync-snapshot``: store a snapshot and move its version host (when newer)."""
    return await _apply(request, protocol.SYNC_SNAPSHOT)


async def sync_envs(request: web.Request) -> web.Response:
    """``sync-envs``: a publish or rollback; the snapshot is stored too if it was not."""
    return await _apply(request, protocol.SYNC_ENVS)


def _strings(value: Any, field: str, check: Any = None) -> list[str]:
    """A list of at most :data:`~protocol.CHECK_BATCH` strings (each passing ``check``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{field}: expected a list of strings", field=field)
    if len(value) > protocol.CHECK_BATCH:
        raise BadRequest(f"{field}: at most {protocol.CHECK_BATCH} items per request, got {len(value)}", field=field)
    for index, item in enumerate(value):
        if not isinstance(item, str) or (check is not None and not check(item)):
            raise BadRequest(f"{field}[{index}]: unexpected value {_show(item)}", field=field)
    return value


async def sync_check(request: web.Request) -> web.Response:
    """``sync-check``: which of the given hashes, snapshots and host stamps this region lacks."""
    claims = authorize(request, None)
    data = await _read_json(request, claims)
    uid = files.validate_application_uid(data.get("application_uid"))
    hashes = _strings(data.get("hashes"), "hashes", assets.is_hash)
    snapshot_ids = _strings(data.get("snapshots"), "snapshots")
    given = _stamps(data.get("hosts"))
    if len(given) > protocol.CHECK_BATCH:
        raise BadRequest(f"hosts: at most {protocol.CHECK_BATCH} items per request, got {len(given)}", field="hosts")
    names = _normalized(given)
    catalog = request.app[CATALOG_KEY]
    have_hashes = await catalog.hashes(uid) if hashes else set()
    have_ids = await catalog.snapshot_ids(uid) if snapshot_ids else set()
    held = await catalog.stamps(sorted(set(names.values()))) if names else {}
    log.debug(
        "Sync check answered",
        extra={"fields": {"zephyr.replica.source": claims.source, "zephyr.application_uid": uid}},
    )
    return answers.ok({
        "missing_hashes": [h for h in dict.fromkeys(hashes) if h not in have_hashes],
        "missing_snapshots": [s for s in dict.fromkeys(snapshot_ids) if s not in have_ids],
        "stale_hosts": [h for h, stamp in given.items() if newer(stamp, held.get(names[h]))],
    })


def _normalized(stamps: Mapping[str, Stamp]) -> dict[str, str]:
    """host as sent → its normalised name; :class:`BadRequest` for an invalid one."""
    out: dict[str, str] = {}
    for host in stamps:
        name = hostnames.normalize_host(host)
        if name is None:
            raise BadRequest(f"hosts: invalid host name {_show(host)}", field="hosts")
        out[host] = name
    return out
