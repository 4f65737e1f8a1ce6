"""The embedded KV backend: SQLite in ``<ZE_WORKER_DATA_DIR>/kv/``, no service to run.

Data survives restarts, and several worker processes on one host may share the folder:
SQLite's WAL mode lets readers run during a write, and every write takes the database's
write lock (see :mod:`zephyr_edge.kv.local_sql`). Each backend instance owns one
connection on one thread of its own, so SQLite never blocks the event loop.

Opening never fails on an unusable folder: the problem is logged, reported by :meth:`ping`
and by every operation as :class:`~zephyr_edge.errors.BackendUnavailable`, and the backend
works as soon as the folder does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from zephyr_edge.errors import BackendError, BackendUnavailable, ZephyrError
from zephyr_edge.kv import local_sql
from zephyr_edge.kv.base import KV, Op


log = logging.getLogger(__name__)

T = TypeVar("T")

#: Sub-folder of the data dir holding the database.
SUBDIR = "kv"
#: Longest wait for one operation (queueing on the instance's thread included).
OPERATION_TIMEOUT_S = 2 * local_sql.BUSY_TIMEOUT_S
#: Longest wait for the connection to close.
CLOSE_TIMEOUT_S = 5.0


class LocalKV(KV):
    """KV in an SQLite database under the worker's data dir."""

    Options: ClassVar[type | None] = None
    name: ClassVar[str] = "local"

    def __init__(self, folder: Path):
        self.folder = folder
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="zephyr-edge-kv-local")
        self._conn: sqlite3.Connection | None = None  # only touched on the executor's thread
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, options: None, data_dir: Path) -> AsyncIterator[LocalKV]:
        """Yield the backend on ``data_dir``; close its connection on exit."""
        kv = cls(Path(data_dir) / SUBDIR)
        try:
            try:
                await kv.ping()
            except BackendError as exc:
                log.warning("KV data folder not usable yet: %s", exc)
            yield kv
        finally:
            await kv.close()

    async def close(self) -> None:
        """Close the connection and stop the thread (idempotent, bounded)."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        except TimeoutError:
            log.warning("KV database in %s did not close within %.0f s", self.folder, CLOSE_TIMEOUT_S)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the thread side -----------------------------------------------------------------

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _in_thread(self, fn: Callable[..., T], args: tuple) -> T:
        if self._conn is None:
            self._conn = local_sql.connect(self.folder)
        try:
            return fn(self._conn, *args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):  # the file may be gone or broken: reconnect next time
                self._disconnect()
            raise

    # --- the one place calls are bounded and errors translated ---------------------------

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._closed:
                raise BackendError(self.name, f"{what}: the backend is closed")
            async with asyncio.timeout(OPERATION_TIMEOUT_S):
                return await asyncio.get_running_loop().run_in_executor(self._executor, self._in_thread, fn, args)
        except ZephyrError:
            raise
        except Exception as exc:
            raise self._translate(what, exc) from exc

    def _translate(self, what: str, exc: Exception) -> BackendError:
        where = self.folder / local_sql.DB_FILE
        if isinstance(exc, TimeoutError):
            return BackendUnavailable(self.name, f"{what}: no answer from {where} within {OPERATION_TIMEOUT_S:.0f} s")
        if isinstance(exc, OSError):
            return BackendUnavailable(self.name, f"{what}: data folder {self.folder} is not usable: {exc}")
        if isinstance(exc, sqlite3.OperationalError):
            return BackendUnavailable(self.name, f"{what}: database {where}: {exc}")
        if isinstance(exc, local_sql.NotAnInteger):
            return BackendError(self.name, f"{what}: {exc}")
        if isinstance(exc, RuntimeError) and self._closed:
            return BackendError(self.name, f"{what}: the backend is closed")
        return BackendError(self.name, f"{what}: {type(exc).__name__}: {exc}")

    # --- KV ------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", local_sql.get, key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        return await self._run("get_many", local_sql.get_many, keys) if keys else []

    async def set(self, key: str, value: bytes) -> None:
        await self._run("set", local_sql.set_value, key, bytes(value))

    async def set_if_absent(self, key: str, value: bytes) -> bool:
        return await self._run("set_if_absent", local_sql.set_if_absent, key, bytes(value))

    async def delete(self, key: str) -> None:
        await self._run("delete", local_sql.delete, key)

    async def incr(self, key: str) -> int:
        return await self._run("incr", local_sql.incr, key)

    async def atomic(self, ops: Sequence[Op]) -> None:
        ops = list(ops)
        if ops:
            await self._run("atomic", local_sql.apply, ops)

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        expect = {key: None if value is None else bytes(value) for key, value in expect.items()}
        ops = list(ops)
        if not expect and not ops:
            return True
        return await self._run("atomic_if", local_sql.apply_if, expect, ops)

    async def scard(self, key: str) -> int:
        return await self._run("scard", local_sql.scard, key)

    async def smembers(self, key: str) -> set[bytes]:
        return await self._run("smembers", local_sql.smembers, key)

    async def sismember(self, key: str, member: bytes) -> bool:
        return await self._run("sismember", local_sql.sismember, key, bytes(member))

    async def ping(self) -> None:
        await self._run("ping", local_sql.ping)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
