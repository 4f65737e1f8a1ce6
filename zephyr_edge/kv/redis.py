"""The Redis KV backend (coredis): a standalone server or a Redis Cluster, same keys.

``redis`` asks the server on first use whether it is a cluster (``INFO cluster``);
``redis-cluster`` skips the question. Every key the core passes to one :meth:`KV.atomic`
call shares a hash tag, so a transaction (``MULTI``/``EXEC``) always targets one slot;
:meth:`KV.atomic_if` is one Lua script (:mod:`zephyr_edge.kv.redis_scripts`) on that slot.

Every call is bounded by ``connect_timeout_ms + command_timeout_ms``; every failure leaves
as :class:`~zephyr_edge.errors.BackendUnavailable` or :class:`~zephyr_edge.errors.BackendError`
(translated in :func:`translate_error`), never with a secret in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from coredis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterCrossSlotError,
    ClusterTransactionError,
    NoScriptError,
    RedisClusterError,
    ReadOnlyError,
)
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.tokens import PureToken

from zephyr_edge.errors import BackendError, BackendUnavailable, ZephyrError, shorten
from zephyr_edge.kv.base import KV, Delete, Op, Set, SetAdd, SetRemove
from zephyr_edge.kv.redis_clients import Client, ClientProvider, ClientSettings
from zephyr_edge.kv.redis_options import RedisOptions
from zephyr_edge.kv.redis_scripts import ATOMIC_IF, ATOMIC_IF_SHA, encode_atomic_if

if TYPE_CHECKING:
    from pathlib import Path

T = TypeVar("T")

#: Longest error message we pass on (pipeline errors quote whole values).
MAX_MESSAGE_CHARS = 300
_HASH_TAG = re.compile(r"\{([^}]+)\}")


class RedisKV(KV):
    """KV on Redis or a Redis Cluster (detected from the server on first use)."""

    Options: ClassVar[type] = RedisOptions
    options_prefix: ClassVar[str] = "REDIS"
    name: ClassVar[str] = "redis"
    #: Skip detection and use the cluster client.
    force_cluster: ClassVar[bool] = False

    def __init__(self, clients: ClientProvider):
        self._clients = clients
        settings = clients.settings
        self._deadline = settings.connect_timeout + settings.command_timeout
        self._secrets = tuple(s for s in (settings.password,) if s)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, options: RedisOptions, data_dir: Path) -> AsyncIterator[RedisKV]:
        """Yield the backend at once (nothing connects before the first call); close on exit."""
        clients = ClientProvider(cls.name, ClientSettings.from_options(cls.name, options), cls.force_cluster)
        try:
            yield cls(clients)
        finally:
            await clients.close()

    @property
    def mode(self) -> str | None:
        """``"cluster"`` or ``"standalone"`` once known, None before the server answered."""
        cluster = self._clients.cluster
        return None if cluster is None else ("cluster" if cluster else "standalone")

    # --- the one place calls are bounded and errors translated ---------------------------

    async def _call(self, what: str, fn: Callable[[Client], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._deadline):
                client = await self._clients.get()
                return await fn(client)
        except ZephyrError:
            raise
        except Exception as exc:
            raise translate_error(self.name, self._clients.settings.endpoint, what, exc, self._secrets) from exc

    # --- KV ------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._call("GET", lambda c: c.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        if not keys:
            return []

        async def run(c: Client) -> list[bytes | None]:
            if not self._clients.cluster:
                return list(await c.mget(keys))
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                groups.setdefault(_slot_group(key), []).append(i)
            found: list[bytes | None] = [None] * len(keys)

            async def fetch(batch: list[int]) -> None:  # one MGET per slot
                for i, value in zip(batch, await c.mget([keys[i] for i in batch])):
                    found[i] = value

            async with asyncio.TaskGroup() as group:
                for batch in groups.values():
                    group.create_task(fetch(batch))
            return found

        return await self._call("MGET", run)

    async def set(self, key: str, value: bytes) -> None:
        await self._call("SET", lambda c: c.set(key, value))

    async def set_if_absent(self, key: str, value: bytes) -> bool:
        return bool(await self._call("SET NX", lambda c: c.set(key, value, condition=PureToken.NX)))

    async def delete(self, key: str) -> None:
        await self._call("DEL", lambda c: c.delete([key]))

    async def incr(self, key: str) -> int:
        return int(await self._call("INCR", lambda c: c.incr(key)))

    async def atomic(self, ops: Sequence[Op]) -> None:
        # set changes without members are no-ops (and SADD/SREM without members are errors)
        ops = [op for op in ops if not isinstance(op, (SetAdd, SetRemove)) or op.members]
        if not ops:
            return

        async def run(c: Client) -> None:
            async with c.pipeline(transaction=True, timeout=self._clients.settings.command_timeout) as pipe:
                for op in ops:
                    _queue(pipe, op)

        await self._call("MULTI/EXEC", run)

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        ops = [op for op in ops if not isinstance(op, (SetAdd, SetRemove)) or op.members]
        if not expect and not ops:
            return True
        keys, args = encode_atomic_if(expect, ops)

        async def run(c: Client) -> Any:
            try:
                return await c.evalsha(ATOMIC_IF_SHA, keys, args)
            except NoScriptError:  # this node has not seen the script yet: send it once
                return await c.eval(ATOMIC_IF, keys, args)

        return await self._call("EVALSHA atomic_if", run) == 1

    async def scard(self, key: str) -> int:
        return int(await self._call("SCARD", lambda c: c.scard(key)))

    async def sadd(self, key: str, *members: bytes) -> None:
        if members:  # one SADD is atomic on its own: no MULTI/EXEC round trip
            await self._call("SADD", lambda c: c.sadd(key, list(members)))

    async def smembers(self, key: str) -> set[bytes]:
        return set(await self._call("SMEMBERS", lambda c: c.smembers(key)))

    async def sismember(self, key: str, member: bytes) -> bool:
        return bool(await self._call("SISMEMBER", lambda c: c.sismember(key, member)))

    async def ping(self) -> None:
        async def run(c: Client) -> None:
            if self._clients.cluster:
                await _ping_cluster(c)
            else:
                await c.ping()

        await self._call("PING", run)


class RedisClusterKV(RedisKV):
    """KV on a Redis Cluster, without asking the server first."""

    name: ClassVar[str] = "redis-cluster"
    force_cluster: ClassVar[bool] = True


def _queue(pipe: Any, op: Op) -> None:
    """Queue ``op`` on a transactional pipeline."""
    if isinstance(op, Set):
        pipe.set(op.key, op.value)
    elif isinstance(op, Delete):
        pipe.delete([op.key])
    elif isinstance(op, SetAdd):
        pipe.sadd(op.key, list(op.members))
    elif isinstance(op, SetRemove):
        pipe.srem(op.key, list(op.members))
    else:
        raise TypeError(f"unknown KV operation {op!r}")


def _slot_group(key: str) -> str:
    """What decides ``key``'s cluster slot: its first non-empty ``{hash tag}``, else itself."""
    match = _HASH_TAG.search(key)
    if match and key.index("{") == match.start():
        return match.group(1)
    return key


async def _ping_cluster(client: Any) -> None:
    """Every primary answers and reports ``cluster_state:ok``; names the first that does not."""
    pool = client.connection_pool
    primaries = list(pool.cluster_layout.primaries)
    if not primaries:
        raise RedisClusterError("no primary node known")

    async def check(node: Any) -> None:
        async with pool.acquire(node=node) as connection:
            reply = await connection.create_request(b"CLUSTER INFO", decode=False)
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        state = dict(line.split(":", 1) for line in text.splitlines() if ":" in line).get("cluster_state")
        if state != "ok":
            raise ClusterStateError(node.host, node.port, state)

    results = await asyncio.gather(*(check(n) for n in primaries), return_exceptions=True)
    failed = [(n, r) for n, r in zip(primaries, results) if isinstance(r, BaseException)]
    # a primary that does not answer is the cause; the others' "fail" state its consequence
    for node, error in sorted(failed, key=lambda pair: isinstance(pair[1], ClusterStateError)):
        if isinstance(error, ClusterStateError):
            raise error
        raise NodeError(node.host, node.port) from error


class ClusterStateError(Exception):
    """A cluster node reports a state other than ``ok``."""

    def __init__(self, host: str, port: int, state: str | None):
        super().__init__(f"cluster node {host}:{port} reports cluster_state:{state or 'unknown'}")


class NodeError(Exception):
    """A cluster primary did not answer; the cause says why."""

    def __init__(self, host: str, port: int):
        super().__init__(f"cluster primary {host}:{port} does not answer")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the leaves of exception groups and the causes, depth first (bounded)."""
    stack, seen = [exc], set()
    while stack and len(seen) < 50:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)


def translate_error(
    backend: str, endpoint: str, what: str, exc: BaseException, secrets: Sequence[str] = ()
) -> BackendError:
    """The :class:`BackendError` (or :class:`BackendUnavailable`) for a failed call."""
    chain = list(_chain(exc))
    first = next((e for e in chain if not isinstance(e, BaseExceptionGroup)), exc)

    def clean(message: str) -> str:
        for value in secrets:
            message = message.replace(value, "***")
        return shorten(message, MAX_MESSAGE_CHARS)

    def describe(e: BaseException) -> str:
        text = str(e) or type(e).__name__
        return clean(text.split("\n", 1)[0])

    # Refused credentials or permissions are an outage for every request (503, retry
    # later), not a fault of the request (500): the message names the fix for the log.
    if any(isinstance(e, AuthenticationError) for e in chain):
        return BackendUnavailable(
            backend, f"authentication failed at {endpoint} (check ZE_WORKER_REDIS_USERNAME and ZE_WORKER_REDIS_PASSWORD)"
        )
    if (denied := next((e for e in chain if isinstance(e, AuthorizationError)), None)) is not None:
        return BackendUnavailable(backend, f"{what}: permission denied at {endpoint}: {describe(denied)}")
    if (tls := next((e for e in chain if isinstance(e, ssl.SSLError)), None)) is not None:
        return BackendError(backend, f"TLS with {endpoint} failed: {describe(tls)}")
    if isinstance(first, (ClusterStateError, NodeError)):
        cause = f": {describe(first.__cause__)}" if first.__cause__ else ""
        return BackendUnavailable(backend, f"{what}: {describe(first)}{cause}")
    if isinstance(first, (ClusterCrossSlotError, ClusterTransactionError)):
        return BackendError(backend, f"{what}: {describe(first)}")
    if isinstance(first, (RedisConnectionError, TimeoutError, OSError, RedisClusterError, ReadOnlyError)):
        detail = describe(first) if str(first) else "no answer in time"
        return BackendUnavailable(backend, f"{what}: Redis at {endpoint} unavailable: {detail}")
    return BackendError(backend, f"{what}: {type(first).__name__}: {describe(first)}")
