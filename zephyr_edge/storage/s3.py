"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW) through aiobotocore.

Configuration: Zephyr's documented ``ZE_WORKER_S3_*`` keys (:class:`S3Options`).

- Two clients share one pool budget: the reader (gets, heads, deletes, pings; read
  timeout ``REQUEST_TIMEOUT_MS``) and the writer (uploads; ``UPLOAD_REQUEST_TIMEOUT_MS``),
  both with ``CONNECTION_TIMEOUT_MS`` to connect. Every request holds one of
  ``MAX_SOCKETS`` slots (:mod:`~zephyr_edge.storage.s3_slots`), which logs the
  socket-acquisition warning and bounds the queueing. The client's timeout is also the
  bound of each request as a whole (:func:`call_deadline`): connecting, retries and their
  backoff included, so a frozen server costs a request its timeout once, not once per
  attempt; past it the request fails with
  :class:`~zephyr_edge.errors.BackendUnavailable` (503 with ``Retry-After``).
- ``FORCE_PATH_STYLE`` true: ``endpoint/bucket/key`` (MinIO, Ceph); false: virtual-hosted
  ``bucket.endpoint/key`` where the endpoint is a host name (AWS).
- Objects up to :data:`PART_SIZE` are written with one PutObject; larger ones (or of
  unknown size, once more than a part has arrived) with a multipart upload that is aborted
  on any failure or cancellation, so a partial object never becomes visible.
- Reads stream (:class:`~zephyr_edge.storage.s3_io.S3Blob`), with a Range header for
  byte ranges.
- Only portable S3 features are used; checksums are computed only when an operation
  requires them (MinIO and Ceph RGW reject or ignore the newer AWS-only ones).
- Failures are translated in one place (:mod:`~zephyr_edge.storage.s3_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import attrs
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from botocore.handlers import add_expect_header

from zephyr_edge.settings.fields import Url, secret
from zephyr_edge.errors import BackendError, NotFound
from zephyr_edge.storage.base import Blob, ObjectInfo, Storage
from zephyr_edge.storage.s3_errors import ErrorContext, error_code
from zephyr_edge.storage.s3_io import EmptyBlob, S3Blob, parse_range, split_parts
from zephyr_edge.storage.s3_slots import ConnectionSlots
from zephyr_edge.settings.units import MiB
from zephyr_edge.settings.validators import at_least

log = logging.getLogger(__name__)

#: Size of the parts of a multipart upload (and the largest single PutObject).
PART_SIZE = 8 * MiB
#: S3's limit on the number of parts of one upload.
MAX_PARTS = 10_000
#: Attempts per request (botocore "standard" retry mode: exponential backoff with jitter),
#: all within the request's deadline (:func:`call_deadline`).
MAX_ATTEMPTS = 3
#: Bound on aborting a failed multipart upload.
ABORT_TIMEOUT_S = 10.0
#: Configuration key of the pool size, named in messages.
MAX_SOCKETS_KEY = "ZE_WORKER_S3_MAX_SOCKETS"

@attrs.frozen
class S3Options:
    """``ZE_WORKER_S3_*``: the S3 keys of Zephyr's documented worker."""

    endpoint: Url
    access_key_id: str = secret(repr=False)
    secret_access_key: str = secret(repr=False)
    bucket: str = attrs.field()
    region: str = "us-east-1"
    force_path_style: bool = True
    connection_timeout_ms: int = attrs.field(default=5000, validator=at_least(1))
    request_timeout_ms: int = attrs.field(default=30000, validator=at_least(1))
    upload_request_timeout_ms: int = attrs.field(default=60000, validator=at_least(1))
    max_sockets: int = attrs.field(default=200, validator=at_least(1))
    socket_acquisition_warning_timeout_ms: int = attrs.field(default=35000, validator=at_least(1))


def client_config(options: S3Options, read_timeout_ms: int) -> AioConfig:
    """The botocore configuration of one client (``read_timeout_ms`` differs by client)."""
    return AioConfig(
        connect_timeout=options.connection_timeout_ms / 1000,
        read_timeout=read_timeout_ms / 1000,
        max_pool_connections=options.max_sockets,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path" if options.force_path_style else "virtual"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def call_deadline(options: S3Options, read_timeout_ms: int) -> float:
    """Overall bound of one request: the client's timeout (``REQUEST_TIMEOUT_MS`` or
    ``UPLOAD_REQUEST_TIMEOUT_MS``), connecting, every attempt and the backoff between
    attempts included. The socket timeouts bound each connect and each read of one attempt;
    botocore retries a timed-out attempt, so without this bound a silent server would cost
    up to :data:`MAX_ATTEMPTS` times the timeout plus backoff."""
    return read_timeout_ms / 1000


def _without_expect_continue(client: Any) -> Any:
    """Stop botocore from sending ``Expect: 100-continue`` on uploads.

    aiohttp applies no read timeout while it waits for the ``100 Continue`` answer, so
    an upload to a server that accepts the connection and then stalls would hang for
    ever. Without the header the body is sent at once and the read timeout applies.
    """
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


@attrs.frozen
class TimedClient:
    """An S3 client and the overall bound of each of its requests, retries included."""

    client: Any
    deadline_s: float


class S3Storage(Storage):
    """Objects in one bucket of an S3-compatible service."""

    Options = S3Options
    options_prefix = "S3"
    name = "s3"

    def __init__(self, reader: TimedClient, writer: TimedClient, bucket: str, slots: ConnectionSlots, errors: ErrorContext):
        """``reader`` serves reads, heads, deletes and pings; ``writer`` uploads."""
        self._reader = reader
        self._writer = writer
        self._bucket = bucket
        self._slots = slots
        self._errors = errors

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, options: S3Options, data_dir: Path) -> AsyncIterator[S3Storage]:
        """Create both clients (no network I/O) and close them on exit."""
        errors = ErrorContext(
            cls.name, options.bucket, options.endpoint, (options.access_key_id, options.secret_access_key)
        )
        slots = ConnectionSlots(
            cls.name,
            options.max_sockets,
            warn_after_s=options.socket_acquisition_warning_timeout_ms / 1000,
            give_up_after_s=(options.socket_acquisition_warning_timeout_ms + options.request_timeout_ms) / 1000,
            size_key=MAX_SOCKETS_KEY,
        )
        session = get_session()
        credentials = dict(
            endpoint_url=options.endpoint,
            region_name=options.region,
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
        )
        async with contextlib.AsyncExitStack() as stack:

            async def timed_client(read_timeout_ms: int) -> TimedClient:
                config = client_config(options, read_timeout_ms)
                client = await stack.enter_async_context(session.create_client("s3", config=config, **credentials))
                return TimedClient(_without_expect_continue(client), call_deadline(options, read_timeout_ms))

            with errors.translating("open"):
                reader = await timed_client(options.request_timeout_ms)
                writer = await timed_client(options.upload_request_timeout_ms)
            yield cls(reader, writer, options.bucket, slots, errors)

    async def _call(self, lane: TimedClient, action: str, key: str | None, method: str, **params: Any) -> Any:
        """One request through the pool gate, the overall deadline and the error boundary."""
        slot = await self._slots.take(action)
        try:
            with self._errors.translating(action, key):
                async with asyncio.timeout(lane.deadline_s):
                    return await getattr(lane.client, method)(Bucket=self._bucket, **params)
        finally:
            slot.release()

    # --- writes ----------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterator[bytes], size: int | None = None) -> None:
        parts = split_parts(chunks, PART_SIZE, self.name, key, size)
        upload_id: str | None = None
        try:
            part: bytes | None
            part, last = await anext(parts)
            if last:
                await self._call(
                    self._writer, "put", key, "put_object", Key=key, Body=part, ContentLength=len(part)
                )
                return
            created = await self._call(self._writer, "put", key, "create_multipart_upload", Key=key)
            upload_id = created["UploadId"]
            done: list[dict[str, Any]] = []
            while part is not None:
                number = len(done) + 1
                if number > MAX_PARTS:
                    raise BackendError(self.name, f"put {key!r}: larger than {MAX_PARTS} parts of {PART_SIZE} bytes")
                answer = await self._call(
                    self._writer, "put", key, "upload_part",
                    Key=key, UploadId=upload_id, PartNumber=number, Body=part, ContentLength=len(part),
                )
                done.append({"ETag": answer["ETag"], "PartNumber": number})
                part = None  # drop the bytes before the next part is assembled
                if not last:
                    part, last = await anext(parts)
            await self._call(
                self._writer, "put", key, "complete_multipart_upload",
                Key=key, UploadId=upload_id, MultipartUpload={"Parts": done},
            )
        except BaseException:
            if upload_id is not None:
                await self._abort(key, upload_id)
            raise
        finally:
            await parts.aclose()

    async def _abort(self, key: str, upload_id: str) -> None:
        """Best effort, bounded: drop the parts of a failed upload."""
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                await self._call(self._writer, "abort", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except Exception as exc:
            log.warning(
                "%s: could not abort the multipart upload of %r (%s); its parts stay invisible until "
                "a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                self.name, key, exc if isinstance(exc, BackendError) else type(exc).__name__,
            )

    async def delete(self, key: str) -> None:
        await self._call(self._reader, "delete", key, "delete_object", Key=key)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> Blob:
        if end is not None and start == end:
            return await self._empty_blob(key, start)
        params: dict[str, Any] = {"Key": key}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        slot = await self._slots.take("get")
        try:
            with self._errors.translating("get", key):
                try:
                    async with asyncio.timeout(self._reader.deadline_s):
                        response = await self._reader.client.get_object(Bucket=self._bucket, **params)
                except ClientError as exc:
                    if error_code(exc)[0] != "InvalidRange":
                        raise
                    response = None  # start == size: nothing to read
        except BaseException:
            slot.release()
            raise
        if response is None:
            slot.release()
            return await self._empty_blob(key, start)
        bounds = parse_range(response)
        if bounds is None or ("Range" in params and "ContentRange" not in response):
            response["Body"].close()
            slot.release()
            raise BackendError(self.name, f"get {key!r}: the server ignored the byte range or sent no length")
        size, first, stop = bounds
        return S3Blob(response["Body"], size, first, stop, slot, self._errors, key)

    async def _empty_blob(self, key: str, start: int) -> Blob:
        info = await self.head(key)
        if info is None:
            raise NotFound(f"no object {key!r} in {self.name} bucket {self._bucket!r}")
        return EmptyBlob(info.size, start)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = await self._call(self._reader, "head", key, "head_object", Key=key)
        except NotFound:
            return None
        return ObjectInfo(size=int(answer["ContentLength"]))

    async def ping(self) -> None:
        await self._call(self._reader, "ping", None, "head_bucket")
