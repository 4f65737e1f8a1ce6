"""The sending side of the sync protocol: one other region's ``POST /upload?type=sync-…``.

:class:`ReplicaClient` is what the sender and the anti-entropy pass deliver with. Every
request carries a freshly minted sync token (:mod:`.synctoken`, minted again for each
attempt) and the :data:`~.protocol.SOURCE_HEADER`; each attempt is bounded by ``timeout_s``.

Retries (aiohttp-retry): the JSON requests and a file of at most :data:`RETRY_BODY_LIMIT`
bytes (read into memory, so it can be sent again) are attempted up to
:data:`RETRY_ATTEMPTS` times on connection errors, timeouts and 502/503/504, with
exponential backoff. A larger file is streamed once: the caller's delivery loop retries.

Results: a 2xx answer → its JSON object; anything else raises :class:`DeliveryError`,
``permanent`` for :data:`~.protocol.PERMANENT_STATUSES` (the target will never accept the
request as is), otherwise to be retried later. The target's URL keeps its path as a prefix
(``<url>/upload``); credentials in it (``user:password@``) are never sent (the
``Authorization`` header carries the sync token) nor shown in a message.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp_retry import ExponentialRetry, RetryClient
from yarl import URL

from zephyr_edge.errors import shorten
from zephyr_edge.replication import protocol, synctoken
from zephyr_edge.settings.redaction import without_userinfo
from zephyr_edge.settings.units import MiB

#: Attempts of a retried request (the first included).
RETRY_ATTEMPTS = 3
#: First pause between attempts, doubled after each (seconds), and the longest one.
RETRY_START_S = 0.2
RETRY_MAX_S = 2.0
#: Statuses retried at once (a proxy or a receiver briefly unavailable).
RETRY_STATUSES = frozenset({502, 503, 504})
#: Largest file sent from memory (and so retried); larger ones are streamed once.
RETRY_BODY_LIMIT = MiB
#: Largest answer read from a target.
MAX_ANSWER_BYTES = 16 * MiB
#: Longest part of a target's error message quoted in a :class:`DeliveryError`.
MAX_SHOWN_CHARS = 300

Chunks = Callable[[], AsyncIterator[bytes]]


class DeliveryError(Exception):
    """A sync request that did not succeed. ``permanent``: the target refused it for good
    (status in :data:`~.protocol.PERMANENT_STATUSES`); otherwise retry later. ``status``:
    the HTTP status, or None (network error, timeout)."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        #: the ``error`` code of the target's JSON answer, when it sent one
        self.code = code


@attrs.frozen
class CheckResult:
    """What a target lacks, from ``sync-check``."""

    missing_hashes: frozenset[str] = frozenset()
    missing_snapshots: frozenset[str] = frozenset()
    stale_hosts: frozenset[str] = frozenset()


class ReplicaClient:
    """Sync requests to the region at ``url``, as replica ``source``.

    Use as an async context manager; it creates (and closes) its own session unless
    ``session`` is given.
    """

    def __init__(
        self, url: str, *, secret: str, source: str, timeout_s: float,
        session: aiohttp.ClientSession | None = None, attempts: int = RETRY_ATTEMPTS,
    ):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        base = URL(without_userinfo(url))
        #: The target as shown in messages and logs (no userinfo).
        self.target = str(base).rstrip("/")
        self._upload_url = base.with_path(base.path.rstrip("/") + "/upload").with_query(None).with_fragment(None)
        self._secret = secret
        self._source = source
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owned = session is None
        self._retry_options = ExponentialRetry(
            attempts=attempts, start_timeout=RETRY_START_S, max_timeout=RETRY_MAX_S,
            statuses=set(RETRY_STATUSES), retry_all_server_errors=False,
            exceptions={aiohttp.ClientConnectionError, asyncio.TimeoutError},
        )
        self._retry: RetryClient | None = None

    async def __aenter__(self) -> ReplicaClient:
        self._client()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owned and self._session is not None:
            await self._session.close()
            self._session, self._retry = None, None

    def _client(self) -> tuple[aiohttp.ClientSession, RetryClient]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._retry is None:
            self._retry = RetryClient(client_session=self._session, retry_options=self._retry_options)
        return self._session, self._retry

    # --- requests --------------------------------------------------------------------------

    async def send_file(
        self, application_uid: str, asset_hash: str, filename: str, size: int | None, chunks: Chunks,
        *, jti: str | None = None,
    ) -> dict:
        """``sync-file``: the asset's bytes from ``chunks()`` (called again when a small body
        must be resent, or when ``size`` was not given and the body is large)."""
        params = {"type": protocol.SYNC_FILE, "application_uid": application_uid, "hash": asset_hash, "filename": filename}
        subject = protocol.file_subject(application_uid, asset_hash)
        headers = {"Content-Type": "application/octet-stream"}
        body = None if size is not None and size > RETRY_BODY_LIMIT else await _read_small(chunks)
        if body is not None:
            return await self._post(params, subject, body, headers, jti, retry=True)
        if size is not None:
            headers["Content-Length"] = str(size)
        return await self._post(params, subject, chunks(), headers, jti, retry=False)

    async def send_snapshot(self, snapshot_json: bytes, hosts: Mapping[str, str], *, jti: str | None = None) -> dict:
        """``sync-snapshot``: a new snapshot and its version host (``{host: stamp}``)."""
        return await self._post_json(protocol.SYNC_SNAPSHOT, _apply_body(snapshot_json, hosts), jti)

    async def send_envs(self, snapshot_json: bytes, hosts: Mapping[str, str], *, jti: str | None = None) -> dict:
        """``sync-envs``: a publish or rollback of ``hosts`` (``{host: stamp}``) to the snapshot."""
        return await self._post_json(protocol.SYNC_ENVS, _apply_body(snapshot_json, hosts), jti)

    async def check(
        self, application_uid: str, hashes: Iterable[str] = (), snapshots: Iterable[str] = (),
        hosts: Mapping[str, str] | None = None,
    ) -> CheckResult:
        """``sync-check``: what the target lacks of these, in batches of :data:`~.protocol.CHECK_BATCH`."""
        hash_list, id_list = list(dict.fromkeys(hashes)), list(dict.fromkeys(snapshots))
        host_items = list((hosts or {}).items())
        missing_hashes: set[str] = set()
        missing_ids: set[str] = set()
        stale: set[str] = set()
        batch = protocol.CHECK_BATCH
        for start in range(0, max(len(hash_list), len(id_list), len(host_items)), batch):
            body = json.dumps({
                "application_uid": application_uid, "hashes": hash_list[start : start + batch],
                "snapshots": id_list[start : start + batch], "hosts": dict(host_items[start : start + batch]),
            }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            answer = await self._post_json(protocol.SYNC_CHECK, body, None)
            missing_hashes.update(self._str_list(answer, "missing_hashes"))
            missing_ids.update(self._str_list(answer, "missing_snapshots"))
            stale.update(self._str_list(answer, "stale_hosts"))
        return CheckResult(frozenset(missing_hashes), frozenset(missing_ids), frozenset(stale))

    # --- plumbing --------------------------------------------------------------------------

    async def _post_json(self, kind: str, body: bytes, jti: str | None) -> dict:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        return await self._post({"type": kind}, protocol.body_subject(body), body, headers, jti, retry=True)

    async def _post(
        self, params: dict[str, str], subject: str, data: Any, headers: dict[str, str], jti: str | None,
        *, retry: bool,
    ) -> dict:
        kind = params["type"]
        session, retrying = self._client()
        token_id = jti or f"{self._source}:{uuid.uuid4().hex}"
        headers = {**headers, protocol.SOURCE_HEADER: self._source}

        async def authorize(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
            # minted per attempt, so a retry never carries an old token
            request.headers["Authorization"] = "Bearer " + synctoken.mint(self._secret, self._source, subject, token_id)
            response = await handler(request)
            if response.status in RETRY_STATUSES:
                await response.read()  # free the connection before aiohttp-retry tries again
            return response

        options = {"params": params, "data": data, "headers": headers, "timeout": self._timeout, "middlewares": (authorize,)}
        try:
            requester = retrying.post(self._upload_url, **options) if retry else session.post(self._upload_url, **options)
            async with requester as response:
                return await self._result(kind, response)
        except DeliveryError:
            raise
        except asyncio.TimeoutError as exc:
            raise DeliveryError(f"{kind} to {self.target}: timed out after {self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{kind} to {self.target}: {_cause(exc)}") from exc

    def _str_list(self, answer: Mapping[str, Any], field: str) -> list[str]:
        value = answer.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DeliveryError(f"{protocol.SYNC_CHECK} to {self.target}: answer field {field!r} is not a list of strings")
        return value

    async def _result(self, kind: str, response: aiohttp.ClientResponse) -> dict:
        status = response.status
        if response.content_length is not None and response.content_length > MAX_ANSWER_BYTES:
            raise DeliveryError(f"{kind} to {self.target}: HTTP {status} answer too large", status=status)
        raw = await response.read()
        try:
            answer = json.loads(raw) if raw else None
        except (UnicodeDecodeError, ValueError):
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise DeliveryError(f"{kind} to {self.target}: HTTP {status} with no JSON object", status=status)
            return answer
        message = answer.get("message") if isinstance(answer, dict) else None
        if not isinstance(message, str):
            message = raw.decode("utf-8", "replace").strip() or response.reason or ""
        code = answer.get("error") if isinstance(answer, dict) else None
        raise DeliveryError(
            f"{kind} to {self.target}: HTTP {status}: {shorten(message, MAX_SHOWN_CHARS)}",
            status=status, permanent=status in protocol.PERMANENT_STATUSES,
            code=code if isinstance(code, str) else None,
        )


async def _read_small(chunks: Chunks) -> bytes | None:
    """The whole body of ``chunks()`` if it is at most :data:`RETRY_BODY_LIMIT` bytes, else None."""
    body = bytearray()
    iterator = chunks()
    try:
        async for chunk in iterator:
            body += chunk
            if len(body) > RETRY_BODY_LIMIT:
                return None
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    return bytes(body)


def _apply_body(snapshot_json: bytes, hosts: Mapping[str, str]) -> bytes:
    """``{"snapshot": <snapshot_json as is>, "hosts": {...}}``."""
    stamps = json.dumps({str(h): str(s) for h, s in hosts.items()}, ensure_ascii=False, separators=(",", ":"))
    return b'{"snapshot":' + bytes(snapshot_json).strip() + b',"hosts":' + stamps.encode("utf-8") + b"}"


def _cause(exc: BaseException) -> str:
    """A short description of a network error (the URL it names has no userinfo: none is
    ever put in a request URL)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
