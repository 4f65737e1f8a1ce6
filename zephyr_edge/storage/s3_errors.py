"""Translation of S3 client failures into the worker's error hierarchy, in one place.

Every call the S3 backend makes runs inside :meth:`ErrorContext.translating`, which turns
botocore / aiohttp / socket failures into :class:`~zephyr_edge.errors.NotFound`,
:class:`~zephyr_edge.errors.BackendUnavailable` or :class:`~zephyr_edge.errors.BackendError`,
always chaining the original (``raise ... from exc``). Messages name the operation, the
bucket and the endpoint (without any userinfo), never a credential: as a last line of
defence every configured secret is also scrubbed from the final text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import attrs
from botocore import exceptions as bce

from zephyr_edge.errors import BackendError, BackendUnavailable, NotFound

#: Error codes S3 (and MinIO, Ceph RGW) use for "no such object".
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
#: Error codes that mean the bucket is missing.
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
#: Error codes that mean the credentials are wrong or lack a permission.
DENIED_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
     "ExpiredToken", "AllAccessDisabled", "AccountProblem"}
)
#: Error codes of a server that is overloaded or temporarily failing (worth retrying later).
UNAVAILABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"})
#: Shorter "secrets" are not scrubbed: replacing every "a" would garble the message.
MIN_SCRUBBED_LEN = 4

#: Client-side failures that mean "the service could not be reached or did not answer".
_UNREACHABLE = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    bce.ResponseStreamingError,
    bce.ProxyConnectionError,
    bce.HTTPClientError,
    bce.ConnectionError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)
#: Everything the boundary translates. Anything else (a bug, a producer's own exception,
#: cancellation) passes through untouched.
_TRANSLATED = (bce.ClientError, bce.BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def redacted_endpoint(endpoint: str) -> str:
    """``scheme://host[:port][/path]`` of ``endpoint`` without userinfo, query or fragment."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def error_code(exc: bce.ClientError) -> tuple[str, int | None]:
    """The S3 error code and HTTP status of a ClientError."""
    response = exc.response or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


@attrs.frozen
class ErrorContext:
    """What the translator needs to write useful, secret-free messages."""

    backend: str
    bucket: str
    endpoint: str
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        for secret in self.secrets:
            if len(secret) >= MIN_SCRUBBED_LEN:
                text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def translating(self, action: str, key: str | None = None) -> Iterator[None]:
        """Run the body, translating client failures; ``action`` names the operation."""
        try:
            yield
        except _TRANSLATED as exc:
            raise self.translate(exc, action, key) from exc

    def translate(self, exc: BaseException, action: str, key: str | None = None) -> Exception:
        """The worker error standing for ``exc`` (raised by ``action`` on ``key``)."""
        where = f"{action} {key!r}" if key is not None else action
        bucket = f"bucket {self.bucket!r} at {redacted_endpoint(self.endpoint)}"
        if isinstance(exc, bce.ClientError):
            code, status = error_code(exc)
            detail = self._server_message(exc)
            if code in NO_BUCKET_CODES:
                return self._error(BackendError, f"{where}: {bucket} does not exist")
            if code in NOT_FOUND_CODES or status == 404:
                if key is None:
                    return self._error(BackendError, f"{where}: {bucket} does not exist")
                return NotFound(f"no object {key!r} in {self.backend} {bucket}")
            if code in DENIED_CODES or status == 403:
                return self._error(
                    BackendError,
                    f"{where}: access to {bucket} denied ({code or status}{detail}); check the S3 "
                    f"credentials and the bucket policy",
                )
            if code in UNAVAILABLE_CODES or (status is not None and status >= 500):
                return self._error(BackendUnavailable, f"{where}: {bucket} is failing ({code or status}{detail})")
            return self._error(BackendError, f"{where}: {bucket} refused the request ({code or status}{detail})")
        if isinstance(exc, bce.SSLError):
            return self._error(BackendError, f"{where}: TLS failure talking to {bucket} ({type(exc).__name__})")
        if isinstance(exc, _UNREACHABLE):
            return self._error(BackendUnavailable, f"{where}: cannot reach {bucket} ({self._describe(exc)})")
        return self._error(BackendError, f"{where}: S3 client failure on {bucket} ({self._describe(exc)})")

    def _error(self, cls: type[BackendError], message: str) -> BackendError:
        return cls(self.backend, self.scrub(message))

    def _server_message(self, exc: bce.ClientError) -> str:
        message = str((exc.response or {}).get("Error", {}).get("Message", "") or "")
        return f": {self.scrub(message)}" if message else ""

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError) and not str(exc):
            text = "timed out"
        return self.scrub(f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text)
