"""The coredis clients behind :mod:`zephyr_edge.kv.redis`: built from the options, each held
open by a task of its own, standalone or cluster decided once from the server itself.

Why a task per client: a coredis 6 client must be used as an async context manager, and
that context (an anyio task group) must be exited by the task that entered it. The backend
is opened by one task, used by many (request handlers, background loops), and its cluster
client can only be entered once the cluster answers, maybe long after start. So
:class:`HeldClient` enters the client in a small task that lives until the backend closes;
when that task dies (its task group crashed), :class:`ClientProvider` starts a fresh client
on the next call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Union

import attrs
import coredis
from coredis.connection import TCPLocation
from coredis.exceptions import AuthorizationError, UnknownCommandError
from coredis.retry import NoRetryPolicy

from zephyr_edge.errors import BackendError

if TYPE_CHECKING:
    from zephyr_edge.kv.redis_options import RedisOptions

log = logging.getLogger(__name__)

#: Longest wait for a held client's task to finish when closing.
CLOSE_TIMEOUT_S = 5.0
#: Connections per standalone pool (coredis multiplexes commands over them).
MAX_CONNECTIONS = 64

Client = Union[coredis.Redis, coredis.RedisCluster]


@attrs.frozen
class ClientSettings:
    """Everything needed to build a client, resolved once from the options."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None = attrs.field(repr=False)
    ssl_context: ssl.SSLContext | None = attrs.field(repr=False)
    connect_timeout: float
    command_timeout: float

    @classmethod
    def from_options(cls, backend: str, options: RedisOptions) -> ClientSettings:
        """Resolve ``options``; an unreadable CA file is a :class:`BackendError` now."""
        if options.tls_ca_file and not options.tls:
            log.warning("ZE_WORKER_REDIS_TLS_CA_FILE is set but ZE_WORKER_REDIS_TLS is false: not using TLS")
        return cls(
            host=options.host,
            port=int(options.port),
            db=options.db,
            username=options.username or None,
            password=options.password or None,
            ssl_context=_ssl_context(backend, options.tls_ca_file) if options.tls else None,
            connect_timeout=options.connect_timeout_ms / 1000,
            command_timeout=options.command_timeout_ms / 1000,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _common(self) -> dict:
        return {
            "username": self.username,
            "password": self.password,
            "ssl_context": self.ssl_context,
            "connect_timeout": self.connect_timeout,
            "stream_timeout": self.command_timeout,
            "pool_timeout": self.command_timeout,
            "decode_responses": False,
            # No hidden retries: every call is bounded by the timeouts above, and a retried
            # INCR or SET NX could apply twice. Callers get BackendUnavailable and retry.
            "retry_policy": NoRetryPolicy(),
        }

    def standalone(self, db: int | None = None) -> coredis.Redis:
        """A client for a standalone server (``db`` overrides the configured database)."""
        return coredis.Redis(
            self.host, self.port, db=self.db if db is None else db,
            max_connections=MAX_CONNECTIONS, **self._common(),
        )

    def cluster(self) -> coredis.RedisCluster:
        """A cluster client bootstrapped from the configured host as its startup node."""
        return coredis.RedisCluster(startup_nodes=[TCPLocation(self.host, self.port)], **self._common())


def _ssl_context(backend: str, ca_file: str) -> ssl.SSLContext:
    """A verifying TLS context, trusting ``ca_file`` when given, else the system store."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise BackendError(backend, f"cannot load ZE_WORKER_REDIS_TLS_CA_FILE {ca_file}: {exc}") from exc


class HeldClient:
    """A coredis client whose async context is held open by a task of its own."""

    def __init__(self, client: Client, label: str):
        self.client = client
        self._label = label
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._entered: asyncio.Future | None = None

    @property
    def alive(self) -> bool:
        """Whether the client's context is still open."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Enter the client's context in its task; raise what entering raised.

        Bounded by the caller (the backend's per-call deadline); cancellation stops the task.
        """
        self._entered = entered = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(entered), name=f"zephyr-edge {self._label}")
        try:
            await asyncio.wait([entered, self._task], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.close()
            raise
        if not entered.done():  # the task ended without entering: cannot happen, be safe
            raise RuntimeError(f"{self._label} client task ended before starting")
        entered.result()  # re-raises the error of entering

    async def _hold(self, entered: asyncio.Future) -> None:
        try:
            async with self.client:
                entered.set_result(None)
                await self._stop.wait()
        except Exception as exc:  # ExceptionGroup included: the pool's task group crashed
            if not entered.done():
                entered.set_exception(exc)
            else:
                log.warning("Redis client for %s stopped unexpectedly; restarting it on next use: %r",
                            self._label, exc)

    async def close(self) -> None:
        """Exit the client's context (its connections close); bounded."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        if self._entered is not None and not self._entered.done():
            task.cancel()  # still connecting: nothing to close gracefully
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            log.warning("Redis client for %s did not close within %.0f s; cancelled", self._label,
                        CLOSE_TIMEOUT_S)


class ClientProvider:
    """Hands out the client for the configured server, deciding once (on first use, under a
    lock, retried while the server is unreachable) whether it is a Redis Cluster."""

    def __init__(self, backend: str, settings: ClientSettings, force_cluster: bool = False):
        self._backend = backend
        self.settings = settings
        self._cluster: bool | None = True if force_cluster else None
        self._held: HeldClient | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def cluster(self) -> bool | None:
        """True/False once the mode is known, None before the server first answered."""
        return self._cluster

    async def get(self) -> Client:
        """The live client, starting (and first detecting) it when needed."""
        held = self._held
        if held is not None and held.alive:
            return held.client
        async with self._lock:
            if self._closed:
                raise BackendError(self._backend, "the backend is closed")
            if self._held is not None:
                if self._held.alive:
                    return self._held.client
                await self._held.close()
                self._held = None
            if self._cluster is None:
                self._cluster = await self._detect()
                log.info("Redis at %s is a %s", self.settings.endpoint,
                         "cluster" if self._cluster else "standalone server")
            if self._cluster and self.settings.db != 0:
                raise BackendError(
                    self._backend,
                    f"ZE_WORKER_REDIS_DB is {self.settings.db} but {self.settings.endpoint} is a Redis "
                    "Cluster, which only has database 0: set ZE_WORKER_REDIS_DB=0",
                )
            client = self.settings.cluster() if self._cluster else self.settings.standalone()
            held = HeldClient(client, f"{'cluster' if self._cluster else 'redis'} {self.settings.endpoint}")
            await held.start()
            self._held = held
            return client

    async def _detect(self) -> bool:
        """Ask the server (``INFO cluster``) whether cluster mode is enabled."""
        async with self.settings.standalone(db=0) as probe:
            try:
                info = await probe.info("cluster")
            except (UnknownCommandError, AuthorizationError) as exc:
                log.warning(
                    "Cannot detect cluster mode at %s (%s); assuming a standalone server. Select "
                    "ZE_WORKER_KV_BACKEND=redis-cluster for a Redis Cluster.", self.settings.endpoint, exc,
                )
                return False
        return str(info.get("cluster_enabled", 0)) == "1"

    async def close(self) -> None:
        """Close the live client; later calls fail with BackendError."""
        async with self._lock:
            self._closed = True
            if self._held is not None:
                await self._held.close()
                self._held = None
