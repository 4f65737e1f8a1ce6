"""Storing one asset from a request body: the part of ``type=file`` that ``sync-file`` shares.

:func:`store_asset` streams the body to storage under its hash while checking it
(:class:`~zephyr_edge.http.bodies.VerifiedAsset`: size limit, protocol-4.1 hash), within
:data:`FILE_UPLOAD_TIMEOUT_S`. It does not touch the hash list: the caller lists the hash
once the bytes are stored, with :meth:`Catalog.add_hash <zephyr_edge.catalog.records.Catalog.add_hash>`
for a client upload (recorded for replication) or :meth:`Catalog.apply_file
<zephyr_edge.catalog.records.Catalog.apply_file>` for one received from another region (never
recorded again).

An asset already listed for the application is not written again: its body is still read
and its hash checked (it is cheap, and it proves that the sender has the bytes).
"""

from __future__ import annotations

import asyncio

import attrs
from aiohttp import web

from zephyr_edge.domain import assets
from zephyr_edge.http import bodies
from zephyr_edge.errors import BackendError, BadRequest
from zephyr_edge.http.appkeys import CATALOG_KEY, CONFIG_KEY, STORAGE_KEY
from zephyr_edge.domain.snapshot import APPLICATION_UID_RE, MAX_ID_CHARS
from zephyr_edge.settings.units import MiB

#: Bound of one whole file upload (body and storage write); the client's own deadline is
#: 30 s with agent 1.2, so this only stops a stuck upload from holding resources forever.
FILE_UPLOAD_TIMEOUT_S = 600.0


@attrs.frozen
class Stored:
    """The outcome of :func:`store_asset`: the body's size, and whether the bytes were
    already listed for the application (nothing written then)."""

    size: int
    reused: bool


def validate_application_uid(value: str | None, field: str = "application_uid") -> str:
    """``value`` if it is an application uid (``app.repo.org``), else :class:`BadRequest`."""
    if not value or len(value) > MAX_ID_CHARS or not APPLICATION_UID_RE.fullmatch(value):
        raise BadRequest(f"{field}: expected an application uid (app.repo.org)", field=field)
    return value


async def store_asset(
    request: web.Request, application_uid: str, expected_hash: str, filename: str,
    timeout_s: float = FILE_UPLOAD_TIMEOUT_S,
) -> Stored:
    """Store the request's body as the asset ``expected_hash`` (uploaded as ``filename``).

    Raises :class:`~zephyr_edge.errors.PayloadTooLarge` above ``ZE_WORKER_MAX_FILE_SIZE_MB``
    (before reading when ``Content-Length`` announces it), :class:`BadRequest` on a hash
    mismatch or a truncated body, :class:`~zephyr_edge.http.bodies.RequestTimeout` past
    ``timeout_s``; in each case nothing new becomes visible in storage.
    """
    limit = request.app[CONFIG_KEY].worker.max_file_size_mb * MiB
    bodies.check_announced_size(request, limit, "the file")
    storage, key = request.app[STORAGE_KEY], assets.storage_key(expected_hash)
    body = bodies.VerifiedAsset(request, expected_hash, filename, limit)
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            # Listed for the app means durably stored (the hash joins the list only after
            # its write): check the body anyway, without writing it again. Otherwise write:
            # a put under a content hash is atomic and idempotent, so no HEAD is needed
            # first (it would double the storage requests of every upload).
            if await request.app[CATALOG_KEY].has_hash(application_uid, expected_hash):
                return Stored(await body.drain(), True)
            await storage.put(key, body.chunks(), request.content_length)
            if body.size is None:  # the backend stopped reading early: a contract breach
                raise BackendError(storage.name, f"put {key!r} returned before the end of the body")
            return Stored(body.size, False)
    except TimeoutError:
        if deadline.expired():
            raise bodies.RequestTimeout(f"the upload did not complete within {timeout_s:g} s") from None
        raise
