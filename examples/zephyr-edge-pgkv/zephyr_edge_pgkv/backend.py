"""A zephyr_edge KV backend keeping its data in PostgreSQL, through asyncpg.

Two tables, created on first use: ``<prefix>_values`` (key -> bytea) holds plain values
and counters, ``<prefix>_members`` (key, member) holds sets, one row per member.

Every method is one SQL statement except :meth:`PostgresKV.atomic` and
:meth:`PostgresKV.atomic_if`, which apply their operations in one transaction. PostgreSQL makes a transaction's writes visible all at once
when it commits, and under its default READ COMMITTED isolation each *statement* reads one
snapshot, so a reader never sees half of an ``atomic`` call: ``get_many`` reads all its
keys in one statement for that reason. Concurrent writers of one row wait for each other's
row lock. Two ``atomic`` calls writing the same keys in opposite orders would deadlock, so
each first takes a transaction-scoped advisory lock on the keys' hash tag (the SPI promises
that all keys of one call share it): ``atomic`` calls on one tag run one at a time, as a
Redis Cluster runs a MULTI on one slot. A transaction PostgreSQL still rolls back (deadlock,
serialization failure) is retried whole, a bounded number of times.

``atomic_if`` takes the same lock, then locks the expected keys' rows (``SELECT ... FOR
UPDATE``) and compares. A key expected absent has no row to lock, so it is claimed by
inserting an invisible placeholder row (uncommitted, and removed again before commit unless
an operation writes the key): a plain ``set``, ``set_if_absent`` or ``incr`` of that key,
which does not take the advisory lock, then waits for the transaction instead of slipping in
between the check and the write.

Errors are translated here, at the boundary: cannot connect, connection lost, timeouts,
server shutting down or out of connections -> :class:`BackendUnavailable`; anything else
-> :class:`BackendError`; the asyncpg or OS exception is chained as the cause. No message
ever carries the DSN or its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import attrs

from zephyr_edge.settings.fields import secret
from zephyr_edge.errors import BackendError, BackendUnavailable
from zephyr_edge.kv.base import KV, Delete, Op, Set, SetAdd, SetRemove

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

#: Attempts of an ``atomic`` transaction that PostgreSQL rolled back (deadlock, serialization).
TX_ATTEMPTS = 3
#: How long closing waits for connections still in use before dropping them.
CLOSE_TIMEOUT_S = 5.0
#: Table prefixes: lower-case SQL identifiers short enough for ``<prefix>_members`` (63 bytes).
TABLE_PREFIX_RE = r"[a-z_][a-z0-9_]{0,54}"

#: Exceptions meaning "PostgreSQL cannot be reached right now" (everything else is an error).
_UNAVAILABLE = (
    OSError,  # refused, reset, unreachable, DNS failure (socket.gaierror), TLS
    TimeoutError,  # connect, pool-acquire and command timeouts (asyncio.TimeoutError is TimeoutError)
    asyncpg.exceptions.PostgresConnectionError,  # 08xxx: connection lost or rejected
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutting down, starting up, query canceled
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
)


def _check_dsn(_instance: object, _attribute: object, value: str) -> None:
    # Never echo the value in the message: the DSN may carry a password.
    if urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("expected a postgresql:// URL, e.g. postgresql://user:password@host:5432/dbname")


@attrs.frozen
class PostgresOptions:
    """Options of the backend, read as ``ZE_WORKER_POSTGRES_<FIELD>`` (e.g. ``ZE_WORKER_POSTGRES_DSN``)."""

    #: asyncpg connection URL; secret, as it may carry a password.
    dsn: str = secret(validator=_check_dsn)
    #: Tables are ``<table_prefix>_values`` and ``<table_prefix>_members``.
    table_prefix: str = attrs.field(default="zephyr_edge", validator=attrs.validators.matches_re(TABLE_PREFIX_RE))
    #: Most connections this worker process opens.
    pool_size: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    connect_timeout_ms: int = attrs.field(default=2000, validator=attrs.validators.ge(1))
    #: Bound of every SQL statement.
    command_timeout_ms: int = attrs.field(default=5000, validator=attrs.validators.ge(1))


class _Statements:
    """The SQL of the backend, for one table prefix (validated, then quoted anyway)."""

    def __init__(self, prefix: str):
        values, members = f'"{prefix}_values"', f'"{prefix}_members"'
        self.create = f"""
            CREATE TABLE IF NOT EXISTS {values} (key text PRIMARY KEY, value bytea NOT NULL);
            CREATE TABLE IF NOT EXISTS {members} (
                key text NOT NULL, member bytea NOT NULL, PRIMARY KEY (key, member));
        """
        # Advisory locks are named by a string, hashed: collisions only cost some waiting.
        self.lock = "SELECT pg_advisory_xact_lock(hashtext($1))"
        self.get = f"SELECT value FROM {values} WHERE key = $1"
        self.get_many = f"SELECT key, value FROM {values} WHERE key = ANY($1::text[])"
        # In key order, so that concurrent transactions lock rows in one order.
        self.lock_rows = f"SELECT key, value FROM {values} WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE"
        # Claims absent keys: a row another transaction inserts meanwhile is not returned.
        self.claim = (
            f"INSERT INTO {values} (key, value) SELECT k, ''::bytea FROM unnest($1::text[]) AS k"
            " ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        self.unclaim = f"DELETE FROM {values} WHERE key = ANY($1::text[])"
        self.set = (
            f"INSERT INTO {values} (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        self.set_if_absent = (
            f"INSERT INTO {values} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING true"
        )
        # A data-modifying WITH runs even though nothing reads it: one statement, both tables.
        self.delete = f"WITH gone AS (DELETE FROM {values} WHERE key = $1) DELETE FROM {members} WHERE key = $1"
        # Counters are stored as ASCII decimal, like Redis' INCR does.
        self.incr = (
            f"INSERT INTO {values} AS t (key, value) VALUES ($1, '1'::bytea) ON CONFLICT (key) DO UPDATE"
            " SET value = convert_to((convert_from(t.value, 'UTF8')::bigint + 1)::text, 'UTF8')"
            " RETURNING value"
        )
        self.sadd = f"INSERT INTO {members} (key, member) SELECT $1, unnest($2::bytea[]) ON CONFLICT DO NOTHING"
        self.srem = f"DELETE FROM {members} WHERE key = $1 AND member = ANY($2::bytea[])"
        self.smembers = f"SELECT member FROM {members} WHERE key = $1"
        self.scard = f"SELECT count(*) FROM {members} WHERE key = $1"
        self.sismember = f"SELECT EXISTS (SELECT 1 FROM {members} WHERE key = $1 AND member = $2)"


class _Mismatch(Exception):
    """An expectation of ``atomic_if`` does not hold: roll back, answer False."""


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the text in its first ``{...}``, if not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def _secret_strings(dsn: str) -> tuple[str, ...]:
    """The DSN and the password in it (raw and decoded): what no message may contain."""
    found = [dsn]
    with contextlib.suppress(ValueError):
        parts = urlsplit(dsn)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += parse_qs(parts.query).get("password", [])
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


class PostgresKV(KV):
    """zephyr_edge's KV in two PostgreSQL tables. Build it with :meth:`open`."""

    Options: ClassVar[type] = PostgresOptions
    options_prefix: ClassVar[str] = "POSTGRES"  # options are read as ZE_WORKER_POSTGRES_<FIELD>
    name: ClassVar[str] = "postgres"  # names the backend in errors and logs

    def __init__(self, pool: asyncpg.Pool, options: PostgresOptions):
        self._pool = pool
        self._sql = _Statements(options.table_prefix)
        self._prefix = options.table_prefix
        # A pooled connection may first have to be opened: bound both waits.
        self._acquire_timeout = (options.connect_timeout_ms + options.command_timeout_ms) / 1000
        self._secrets = _secret_strings(options.dsn)
        self._schema_ready = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, options: PostgresOptions, data_dir: Path) -> AsyncIterator[PostgresKV]:
        # min_size=0: the pool connects nothing now, so the worker starts while PostgreSQL
        # is down; every call acquires (and if need be opens) a connection, so a call made
        # after PostgreSQL came back simply works.
        pool = await asyncpg.create_pool(
            options.dsn,
            min_size=0,
            max_size=options.pool_size,
            timeout=options.connect_timeout_ms / 1000,
            command_timeout=options.command_timeout_ms / 1000,
            server_settings={"application_name": "zephyr-edge"},
        )
        try:
            yield cls(pool, options)
        finally:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # timed out, or a connection failed to close cleanly
                log.warning("PostgreSQL pool did not close cleanly (%s); terminating it", type(exc).__name__)
                pool.terminate()
            except asyncio.CancelledError:
                pool.terminate()
                raise

    # --- the KV SPI ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        async with self._connection("get") as conn:
            return await conn.fetchval(self._sql.get, key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        async with self._connection("get_many") as conn:
            rows = await conn.fetch(self._sql.get_many, list(keys))
        found = {row["key"]: row["value"] for row in rows}
        return [found.get(key) for key in keys]

    async def set(self, key: str, value: bytes) -> None:
        async with self._connection("set") as conn:
            await conn.execute(self._sql.set, key, value)

    async def set_if_absent(self, key: str, value: bytes) -> bool:
        async with self._connection("set_if_absent") as conn:
            return bool(await conn.fetchval(self._sql.set_if_absent, key, value))

    async def delete(self, key: str) -> None:
        async with self._connection("delete") as conn:
            await conn.execute(self._sql.delete, key)

    async def incr(self, key: str) -> int:
        async with self._connection("incr") as conn:
            return int(await conn.fetchval(self._sql.incr, key))

    async def atomic(self, ops: Sequence[Op]) -> None:
        if not ops:
            return
        async with self._connection("atomic") as conn:
            for attempt in range(1, TX_ATTEMPTS + 1):
                try:
                    async with conn.transaction():
                        await conn.execute(self._sql.lock, f"{self._prefix}:atomic:{hash_tag(ops[0].key)}")
                        for op in ops:
                            await self._apply(conn, op)
                    return
                except asyncpg.exceptions.TransactionRollbackError:
                    # Deadlock or serialization failure: rolled back whole, safe to redo.
                    if attempt == TX_ATTEMPTS:
                        raise
                    log.debug("atomic: transaction rolled back by PostgreSQL, retrying (%d)", attempt)

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        expect = dict(expect)
        ops = list(ops)
        keys = [*expect, *(op.key for op in ops)]
        if not keys:
            return True
        # Keys expected absent that no op writes: their placeholder rows go before commit.
        written = {op.key for op in ops if isinstance(op, (Set, Delete))}
        leftovers = sorted(k for k, want in expect.items() if want is None and k not in written)
        async with self._connection("atomic_if") as conn:
            for attempt in range(1, TX_ATTEMPTS + 1):
                try:
                    async with conn.transaction():
                        await conn.execute(self._sql.lock, f"{self._prefix}:atomic:{hash_tag(keys[0])}")
                        if not await self._claim(conn, expect):
                            raise _Mismatch  # rolls back the placeholders
                        for op in ops:
                            await self._apply(conn, op)
                        if leftovers:
                            await conn.execute(self._sql.unclaim, leftovers)
                    return True
                except _Mismatch:
                    return False
                except asyncpg.exceptions.TransactionRollbackError:
                    if attempt == TX_ATTEMPTS:
                        raise
                    log.debug("atomic_if: transaction rolled back by PostgreSQL, retrying (%d)", attempt)
        return False  # not reached: the last attempt returns or raises

    async def scard(self, key: str) -> int:
        async with self._connection("scard") as conn:
            return int(await conn.fetchval(self._sql.scard, key))

    async def smembers(self, key: str) -> set[bytes]:
        async with self._connection("smembers") as conn:
            return {row["member"] for row in await conn.fetch(self._sql.smembers, key)}

    async def sismember(self, key: str, member: bytes) -> bool:
        async with self._connection("sismember") as conn:
            return bool(await conn.fetchval(self._sql.sismember, key, member))

    async def ping(self) -> None:
        # Also creates the tables on first use: ready means usable.
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    # --- internals ----------------------------------------------------------------------

    async def _claim(self, conn: asyncpg.Connection, expect: dict[str, bytes | None]) -> bool:
        """Lock the rows of ``expect`` (placeholders for the absent ones) in this transaction;
        whether every key holds its expected value."""
        if not expect:
            return True
        rows = await conn.fetch(self._sql.lock_rows, sorted(expect))
        current = {row["key"]: row["value"] for row in rows}
        if any(current.get(key) != want for key, want in expect.items()):
            return False
        absent = sorted(k for k, want in expect.items() if want is None)
        if not absent:
            return True
        # A key inserted (and committed) since the SELECT conflicts: it is no longer absent.
        claimed = await conn.fetch(self._sql.claim, absent)
        return len(claimed) == len(absent)

    async def _apply(self, conn: asyncpg.Connection, op: Op) -> None:
        match op:
            case Set(key, value):
                await conn.execute(self._sql.set, key, value)
            case Delete(key):
                await conn.execute(self._sql.delete, key)
            case SetAdd(key, members):
                # sorted: concurrent transactions lock rows in one order
                await conn.execute(self._sql.sadd, key, sorted(members))
            case SetRemove(key, members):
                await conn.execute(self._sql.srem, key, sorted(members))
            case _:
                raise TypeError(f"unknown KV operation {type(op).__name__}")

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, the tables in place; every failure in the block translated."""
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                if not self._schema_ready:
                    await self._create_tables(conn)
                yield conn
        except Exception as exc:
            raise self._translate(what, exc) from exc

    async def _create_tables(self, conn: asyncpg.Connection) -> None:
        # CREATE TABLE IF NOT EXISTS is not safe against itself running concurrently (two
        # sessions may both try to create); the advisory lock makes workers take turns.
        async with conn.transaction():
            await conn.execute(self._sql.lock, f"{self._prefix}:create")
            await conn.execute(self._sql.create)
        self._schema_ready = True

    def _translate(self, what: str, exc: Exception) -> BackendError:
        detail = str(exc)
        for value in self._secrets:
            detail = detail.replace(value, "***")
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        if isinstance(exc, _UNAVAILABLE):
            return BackendUnavailable(self.name, f"{what}: cannot reach PostgreSQL ({detail})")
        return BackendError(self.name, f"{what}: {detail}")
