"""The region-to-region wire protocol: names, limits and body shapes, in one place.

Every sync request is ``POST /upload?type=<type>`` to the other region's URL (as listed in
``ZE_WORKER_REPLICAS_URLS``; a path in the URL is kept as a prefix), with

- ``Authorization: Bearer <token>``: an HS256 JWT signed with the shared
  ``ZE_WORKER_JWT_SECRET`` with claims ``iss`` = the source replica name, ``aud`` =
  :data:`AUDIENCE`, ``iat``, ``exp`` (at most :data:`TOKEN_TTL_S` after ``iat``), ``jti`` (a
  unique id: ``<replica>:<outbox seq>`` or a random one) and ``sub`` = what the token allows
  (:func:`file_subject` / :func:`body_subject`), so a captured token cannot carry another
  body;
- :data:`SOURCE_HEADER`: the source replica name, equal to ``iss``.

A receiver refuses (403, naming the reason) a missing, forged, expired or mis-addressed
token, a source header that differs from ``iss``, a ``sub`` that does not match the request,
and a request whose source is the receiver's own replica name; it answers 403 when
replication is not enabled on it (``ZE_WORKER_REPLICA_NAME`` unset). It applies what it
receives without recording it for replication: a sync request is never forwarded.

Types and bodies:

- :data:`SYNC_FILE` ``&application_uid=U&hash=H&filename=F``: the asset's bytes (streamed;
  hash checked with the protocol-4.1 rule as for ``type=file``, size limit
  ``ZE_WORKER_MAX_FILE_SIZE_MB``). ``sub`` = ``file:<U>:<H>``. Answer ``{"status": "ok",
  "hash": H, "size": n, "already_stored": bool}``.
- :data:`SYNC_SNAPSHOT` and :data:`SYNC_ENVS`: JSON ``{"snapshot": <snapshot JSON as
  stored>, "hosts": {"<host>": "<stamp>"}}`` (stamps ``<epoch ms>|<replica>``, see
  :mod:`zephyr_edge.domain.stamps`). The receiver stores the snapshot (whether or not its assets
  arrived yet) and points each host whose stamp is newer than its own at it. ``sync-snapshot``
  carries the version host of a new snapshot, ``sync-envs`` a publish or rollback. ``sub`` =
  ``body:<sha256 hex of the body>``. Answer ``{"status": "ok", "applied": [hosts moved]}``.
- :data:`SYNC_CHECK`: JSON ``{"application_uid": U, "hashes": [...], "snapshots": [...],
  "hosts": {"<host>": "<stamp>"}}`` (at most :data:`CHECK_BATCH` items per list) →
  ``{"missing_hashes": [...], "missing_snapshots": [...], "stale_hosts": [...]}``: the hashes
  not in U's hash list there, the snapshot ids not stored there, the hosts whose stamp
  there is older than the given one (or absent). ``sub`` = ``body:<sha256>``. Read-only.

Error statuses a sender acts on: 2xx delivered; 400/404/413/422 the entry can never be
delivered as is (it is set aside, see the outbox); anything else (403 included: a secret
being rotated, a clock skew) is retried with backoff.
"""

from __future__ import annotations

import hashlib
from zephyr_edge.settings.units import MiB

#: Header naming the sending replica.
SOURCE_HEADER = "X-Replica-Source"
#: ``aud`` of every sync token.
AUDIENCE = "zephyr-edge-replication"
#: Lifetime of a sync token (minted per request).
TOKEN_TTL_S = 120
#: Largest list in one ``sync-check`` request.
CHECK_BATCH = 2000
#: Largest ``sync-snapshot`` / ``sync-envs`` / ``sync-check`` body.
MAX_JSON_BYTES = 32 * MiB

SYNC_FILE = "sync-file"
SYNC_SNAPSHOT = "sync-snapshot"
SYNC_ENVS = "sync-envs"
SYNC_CHECK = "sync-check"
SYNC_TYPES = (SYNC_FILE, SYNC_SNAPSHOT, SYNC_ENVS, SYNC_CHECK)

#: Outbox entry kinds (what :class:`~zephyr_edge.catalog.records.Catalog` records) and the sync
#: type that delivers each.
KIND_FILE = "file"
KIND_SNAPSHOT = "snapshot"
KIND_ENVS = "envs"
TYPE_OF_KIND = {KIND_FILE: SYNC_FILE, KIND_SNAPSHOT: SYNC_SNAPSHOT, KIND_ENVS: SYNC_ENVS}

#: Statuses after which an entry is set aside instead of retried.
PERMANENT_STATUSES = frozenset({400, 404, 413, 422})

#: ``error`` code of the 403 a region answers to a sync request signed with its own name:
#: the sender's ``ZE_WORKER_REPLICAS_URLS`` lists its own region (a configuration shared by
#: every region, say). Everything "sent" there is already there, so the sender drops such
#: entries instead of retrying them forever.
SELF_SYNC_CODE = "sync_from_self"

#: Status endpoint of the replication state of this region.
STATUS_PATH = "/replicationz"


def file_subject(application_uid: str, asset_hash: str) -> str:
    return f"file:{application_uid}:{asset_hash}"


def body_subject(body: bytes) -> str:
    return f"body:{hashlib.sha256(body).hexdigest()}"
