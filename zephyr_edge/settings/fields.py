"""The typed configuration: the core settings (:class:`WorkerConfig`), the selected backends
and their options (:class:`Config`), and the field helpers backends declare options with.

Values only: converting ``ZE_WORKER_*`` strings into these, and every check across keys, is
:mod:`zephyr_edge.settings.config` (the loader), the only settings module that knows the
backends. Backends import their field helpers (:func:`secret`, :data:`Port`, :data:`Url`)
from here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, NewType

import attrs

from zephyr_edge.settings.validators import at_least

KEY_PREFIX = "ZE_WORKER_"
CONFIG_FILE_KEY = "ZE_WORKER_CONFIG_JSON"

Port = NewType("Port", int)
Url = NewType("Url", str)
Delimiter = NewType("Delimiter", str)



class LogLevel(enum.Enum):
    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"


def secret(default: Any = attrs.NOTHING, **kw: Any) -> Any:
    """An attrs field whose value is never printed (nor shown in the class's repr)."""
    kw.setdefault("repr", False)
    return attrs.field(default=default, metadata={"secret": True, **kw.pop("metadata", {})}, **kw)


def key_of(field: attrs.Attribute, prefix: str = "") -> str:
    """The ``ZE_WORKER_*`` key of ``field`` (with its options prefix)."""
    if "key" in field.metadata:
        return field.metadata["key"]
    return KEY_PREFIX + (f"{prefix}_" if prefix else "") + field.name.upper()


@attrs.frozen
class WorkerConfig:
    """The core worker settings (Zephyr's documented keys plus ours)."""

    jwt_secret: str = secret()
    port: Port = Port(8080)
    listen_host: str = "0.0.0.0"
    log_level: LogLevel = LogLevel.INFO
    delimiter: Delimiter = Delimiter("-")
    redis_prefix_envs: str = "{ze-k8s-worker}:envs:"
    redis_prefix_snapshots: str = "{ze-k8s-worker}:snapshots:"
    replica_name: str = ""
    replicas_urls: tuple[Url, ...] = ()
    storage_backend: str = "s3"
    kv_backend: str = "redis"
    data_dir: str = "zephyr-edge-data"
    shutdown_grace_ms: int = attrs.field(default=20000, validator=at_least(0))
    readiness_timeout_ms: int = attrs.field(default=2000, validator=at_least(1))
    readiness_write_check_interval_ms: int = attrs.field(default=60000, validator=at_least(100))
    #: One JSON "Request handled" line per request (off by default: the ingress in front
    #: usually logs requests, and a line per request costs a third of a warm request's CPU).
    access_log: bool = False
    #: Fixes the scheme and host of returned URLs (``https://ze.example.com``); empty: from
    #: the upload request, honouring X-Forwarded-Proto / X-Forwarded-Host.
    public_url: str = ""
    #: Once a request's first byte has arrived, its headers must arrive within this bound
    #: (408 and the connection closed otherwise: a slow client cannot hold it).
    header_timeout_ms: int = attrs.field(default=10000, validator=at_least(1))
    #: A connection on which no request has started (since it opened or since the last
    #: answer) is closed after this long; keep it above the proxy's idle timeout.
    keepalive_timeout_ms: int = attrs.field(default=75000, validator=at_least(1))
    #: Largest accepted asset upload, in MiB (413 above it).
    max_file_size_mb: int = attrs.field(default=256, validator=at_least(1))
    #: Most entries in a snapshot's ``assets`` (413 above it; the JSON is bounded by size too).
    max_snapshot_assets: int = attrs.field(default=50000, validator=at_least(1))
    #: Byte budget of the in-process asset cache, in MiB (0 disables it).
    cache_size_mb: int = attrs.field(default=128, validator=at_least(0))
    #: Assets larger than this (KiB) are streamed from storage, never cached in process.
    cache_max_asset_kb: int = attrs.field(default=1024, validator=at_least(1))
    #: How long a hostname -> snapshot entry is trusted without asking the KV again.
    host_cache_ttl_ms: int = attrs.field(default=5000, validator=at_least(0))
    #: How often each worker checks the publish counter to drop stale hostname entries.
    invalidation_poll_ms: int = attrs.field(default=250, validator=at_least(10))
    #: Replication: parallel deliveries per target region.
    replication_concurrency: int = attrs.field(default=4, validator=at_least(1))
    #: Replication: bound of one sync request (a file body included).
    replication_timeout_ms: int = attrs.field(default=120000, validator=at_least(100))
    #: Replication: longest pause between delivery rounds to an unreachable region
    #: (exponential backoff with jitter up to this).
    replication_retry_max_ms: int = attrs.field(default=30000, validator=at_least(10))
    #: Replication: how often the sender looks for new entries when idle.
    replication_poll_ms: int = attrs.field(default=200, validator=at_least(10))
    #: Replication: a worker's claim on a target; another worker of the region takes over
    #: a target whose claim was not renewed for this long (a dead worker).
    replication_lease_ms: int = attrs.field(default=15000, validator=at_least(100))
    #: Replication: interval of the anti-entropy pass that compares with each target and
    #: sends what it lacks (0 disables it).
    replication_anti_entropy_ms: int = attrs.field(default=600000, validator=at_least(0))


@attrs.frozen
class BackendChoice:
    """A selected backend: its name, class and structured options."""

    name: str
    cls: type
    options: Any


@attrs.frozen
class Config:
    """Everything the worker runs on, with where each value came from."""

    worker: WorkerConfig
    storage: BackendChoice
    kv: BackendChoice
    #: key -> "file" | "env" | "default", for every key of the selected backends and core
    sources: Mapping[str, str]
    #: human-readable warnings (unknown keys...) to log at start
    warnings: tuple[str, ...] = ()
