"""The SQLite side of :mod:`zephyr_edge.kv.local`: the schema and the synchronous operations,
each one transaction, all run on the backend's own thread.

Plain values live in ``kv_values``, set members in ``kv_set_members``, mirroring Redis: a
key holds one or the other, ``Set``/``Delete`` replace or remove either. Writes take the
database's write lock up front (``BEGIN IMMEDIATE``), so read-modify-write operations
(``incr``, ``set_if_absent``, ``atomic``, ``atomic_if``) are atomic across threads and processes; reads
that span statements run in one read transaction (a consistent WAL snapshot).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from zephyr_edge.kv.base import Delete, Op, Set, SetAdd, SetRemove

log = logging.getLogger(__name__)

#: File name of the database inside the backend's folder.
DB_FILE = "kv.sqlite3"
#: How long a statement waits for another connection's write lock before failing.
BUSY_TIMEOUT_S = 5.0
#: Keys per ``SELECT ... IN (...)`` (SQLite limits bound parameters per statement).
KEYS_PER_SELECT = 500

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv_values (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kv_set_members (key TEXT NOT NULL, member BLOB NOT NULL, "
    "PRIMARY KEY (key, member)) WITHOUT ROWID",
)
_INTEGER = re.compile(rb"-?[0-9]+")


class NotAnInteger(ValueError):
    """``incr`` met a value that is not a decimal integer."""


def connect(folder: Path) -> sqlite3.Connection:
    """Open (creating when needed) the database in ``folder``; raises OSError/sqlite3.Error."""
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / DB_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite cannot use WAL in %s (journal mode %s): writers will block readers", folder, mode)
        conn.execute("PRAGMA synchronous=FULL")
        with _write(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction holding the write lock from its start."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def _read(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every statement inside sees the same snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT count(*) FROM kv_values WHERE key = ''").fetchone()


def get(conn: sqlite3.Connection, key: str) -> bytes | None:
    row = conn.execute("SELECT value FROM kv_values WHERE key = ?", (key,)).fetchone()
    return None if row is None else bytes(row[0])


def get_many(conn: sqlite3.Connection, keys: Sequence[str]) -> list[bytes | None]:
    found: dict[str, bytes] = {}
    unique = list(dict.fromkeys(keys))
    with _read(conn):
        for start in range(0, len(unique), KEYS_PER_SELECT):
            chunk = unique[start : start + KEYS_PER_SELECT]
            marks = ",".join("?" * len(chunk))
            for k, value in conn.execute(f"SELECT key, value FROM kv_values WHERE key IN ({marks})", chunk):
                found[k] = bytes(value)
    return [found.get(k) for k in keys]


def _set(conn: sqlite3.Connection, key: str, value: bytes) -> None:
    conn.execute("DELETE FROM kv_set_members WHERE key = ?", (key,))
    conn.execute("INSERT OR REPLACE INTO kv_values (key, value) VALUES (?, ?)", (key, value))


def _delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM kv_values WHERE key = ?", (key,))
    conn.execute("DELETE FROM kv_set_members WHERE key = ?", (key,))


def set_value(conn: sqlite3.Connection, key: str, value: bytes) -> None:
    with _write(conn):
        _set(conn, key, value)


def delete(conn: sqlite3.Connection, key: str) -> None:
    with _write(conn):
        _delete(conn, key)


def set_if_absent(conn: sqlite3.Connection, key: str, value: bytes) -> bool:
    with _write(conn):
        if conn.execute("SELECT 1 FROM kv_set_members WHERE key = ? LIMIT 1", (key,)).fetchone():
            return False
        cursor = conn.execute("INSERT OR IGNORE INTO kv_values (key, value) VALUES (?, ?)", (key, value))
        return cursor.rowcount == 1


def incr(conn: sqlite3.Connection, key: str) -> int:
    with _write(conn):
        row = conn.execute("SELECT value FROM kv_values WHERE key = ?", (key,)).fetchone()
        current = 0
        if row is not None:
            raw = bytes(row[0])
            if not _INTEGER.fullmatch(raw):
                raise NotAnInteger(f"the value at {key!r} is not an integer")
            current = int(raw)
        conn.execute("INSERT OR REPLACE INTO kv_values (key, value) VALUES (?, ?)", (key, str(current + 1).encode()))
        return current + 1


def apply(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Apply ``ops`` in order in one transaction (all or nothing)."""
    with _write(conn):
        _apply(conn, ops)


def apply_if(conn: sqlite3.Connection, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
    """Apply ``ops`` in one transaction if every key of ``expect`` holds its value (None:
    absent); the check runs under the write lock, so no other writer comes in between."""
    with _write(conn):
        for key, want in expect.items():
            if get(conn, key) != want:
                return False
        _apply(conn, ops)
        return True


def _apply(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    for op in ops:
        if isinstance(op, Set):
            _set(conn, op.key, op.value)
        elif isinstance(op, Delete):
            _delete(conn, op.key)
        elif isinstance(op, SetAdd):
            conn.executemany(
                "INSERT OR IGNORE INTO kv_set_members (key, member) VALUES (?, ?)",
                [(op.key, m) for m in op.members],
            )
        elif isinstance(op, SetRemove):
            conn.executemany(
                "DELETE FROM kv_set_members WHERE key = ? AND member = ?", [(op.key, m) for m in op.members]
            )
        else:
            raise TypeError(f"unknown KV operation {op!r}")


def smembers(conn: sqlite3.Connection, key: str) -> set[bytes]:
    return {bytes(m) for (m,) in conn.execute("SELECT member FROM kv_set_members WHERE key = ?", (key,))}


def sismember(conn: sqlite3.Connection, key: str, member: bytes) -> bool:
    row = conn.execute("SELECT 1 FROM kv_set_members WHERE key = ? AND member = ?", (key, member)).fetchone()
    return row is not None


def scard(conn: sqlite3.Connection, key: str) -> int:
    return int(conn.execute("SELECT count(*) FROM kv_set_members WHERE key = ?", (key,)).fetchone()[0])
