"""The worker's public address as the uploading client sees it, and the URLs built on it.

Where the scheme, host and port come from (our choice):

- ``ZE_WORKER_PUBLIC_URL`` set: its scheme, host and port, whatever the request says;
- otherwise the scheme is the first value of ``X-Forwarded-Proto`` (when it is ``http`` or
  ``https``) or the request's own, and the host (with its port) the first value of
  ``X-Forwarded-Host`` or else ``Host``. (``Forwarded`` and ``X-Forwarded-Port`` are not
  read: a proxy that changes the port must pass it in the host or set the public URL.)

The *edge host* is that host without its port; a version host is
``<label><delimiter><edge host>``. Returned URLs keep a non-default port (not 80 for
http, not 443 for https), so ``http://ze.test:8080`` gives
``http://<label>-ze.test:8080``.

Local development: with an IP literal or ``localhost`` as the edge host (``EDGE_URL =
http://127.0.0.1:8080``, what ``zephyr-edge dev`` prints), ``<label>-127.0.0.1`` would
resolve nowhere and ``<label>-localhost`` neither (a single-label name). The version host
is then ``<label>.localhost`` whatever the delimiter, and the URL
``http://<label>.localhost:8080``: browsers resolve every ``*.localhost`` name to the
loopback address (RFC 6761), and the worker serves the name by its Host header. For an IP
literal other than loopback (a LAN address) that URL only works on the worker's machine:
set ``ZE_WORKER_PUBLIC_URL`` to a DNS name with a wildcard record instead (a warning says
so).
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from zephyr_edge.domain import hostnames
from zephyr_edge.errors import BadRequest, shorten

log = logging.getLogger(__name__)

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
#: The name every ``*.localhost`` subdomain of which resolves to loopback (RFC 6761).
LOCALHOST = "localhost"
#: The delimiter used under ``localhost`` (a subdomain, so that it resolves).
LOCALHOST_DELIMITER = "."


@attrs.frozen
class PublicBase:
    """Scheme, edge host (normalised, no port) and port (None when default) of the worker."""

    scheme: str
    host: str
    port: int | None = None

    @property
    def is_local(self) -> bool:
        """Whether the edge host cannot carry subdomains (``localhost`` or an IP literal)."""
        return self.host == LOCALHOST or _is_ip(self.host)

    def url(self, host: str) -> str:
        """``<scheme>://<host>[:<port>]`` for a host served by this worker."""
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}" + (f":{self.port}" if self.port is not None else "")

    def version_host(self, snapshot_id: str, delimiter: str) -> str:
        """The host serving ``snapshot_id`` on this edge (see the module docstring)."""
        label = hostnames.version_label(snapshot_id)
        try:
            if self.is_local:
                if self.host != LOCALHOST and not ipaddress.ip_address(self.host).is_loopback:
                    log.warning(
                        "Version URL under localhost for the IP edge host %s: it works on this machine "
                        "only; set ZE_WORKER_PUBLIC_URL to a name with a wildcard DNS record",
                        self.host, extra={"fields": {"zephyr.edge_host": self.host}},
                    )
                return hostnames.label_host(label, LOCALHOST, LOCALHOST_DELIMITER)
            return hostnames.label_host(label, self.host, delimiter)
        except ValueError as exc:
            raise BadRequest(f"cannot build the version host name: {exc}", field="Host") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated forwarding header, None when empty."""
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def split_authority(authority: str, scheme: str, field: str) -> tuple[str, int | None]:
    """``(normalised host, port or None when default)`` of ``host[:port]``; :class:`BadRequest`
    naming ``field`` when it is not a valid host."""
    host = hostnames.normalize_host(authority)
    try:
        port = urlsplit("//" + authority.strip()).port
    except ValueError:
        host = None
    if host is None:
        raise BadRequest(f"{field}: not a valid host name or address: {shorten(authority, 100)!r}", field=field)
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    return host, port


def from_public_url(public_url: str) -> PublicBase:
    """The base fixed by ``ZE_WORKER_PUBLIC_URL`` (validated at configuration load)."""
    parts = urlsplit(public_url)
    scheme = parts.scheme.lower()
    host, port = split_authority(parts.netloc.rpartition("@")[2], scheme, "ZE_WORKER_PUBLIC_URL")
    return PublicBase(scheme, host, port)


def from_request(request: web.Request, public_url: str = "") -> PublicBase:
    """The base for answers to ``request`` (see the module docstring for the rule)."""
    if public_url:
        return from_public_url(public_url)
    proto = (_first(request.headers.get("X-Forwarded-Proto")) or "").lower()
    scheme = proto if proto in SCHEMES else request.scheme
    forwarded = _first(request.headers.get("X-Forwarded-Host"))
    if forwarded is not None:
        host, port = split_authority(forwarded, scheme, "X-Forwarded-Host")
    else:
        authority = request.headers.get("Host", "")
        if not authority.strip():
            raise BadRequest("Host: the request has no Host header", field="Host")
        host, port = split_authority(authority, scheme, "Host")
    return PublicBase(scheme, host, port)
