"""The SQLite side of :mod:`zephyr_edge.kv.local`: the schema and the synchronous operations,
each one transaction, all run on the backend's own thread.

Plain values live in ``kv_values``, set members in ``kv_set_members``, mirroring Redis: a
key holds one or the other, ``Set``/``Delete`` replace or remove either. Writes take the
database's write lock up front (``BEGIN IMMEDIATE``), so read-modify-write operations
(``incr``, ``set_if_absent``, ``atomic``, ``atomic_if``) are atomic across threads and processes; reads
that span statements run in one read transaction (a consistent WAL snapshot).

Layout: ``kv_values`` is a rowid table with a unique index on ``key``. A lookup searches
that index (keys only) and reads a value only when its key is found, so one large value
(snapshots of many MB) costs nothing to lookups of other keys. Earlier versions kept
``kv_values`` ``WITHOUT ROWID``: there the value sat in the key's b-tree cell, and SQLite
reads the whole cell, overflow pages included, to compare a key with it, so every lookup
passing a 20 MB value read 20 MB. :func:`connect` migrates such a database once, in one
write transaction (same table name and columns, so a process of the earlier version sharing
the folder keeps working). Set members are small (hashes, host names, ids) and stay in a
``WITHOUT ROWID`` table keyed by (key, member).
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

#: ``kv_values`` as created by this version (``{name}``: the table's name).
_VALUES_TABLE = "CREATE TABLE {name} (key TEXT NOT NULL UNIQUE, value BLOB NOT NULL)"
_SCHEMA = (
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
            _ensure_values_table(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _values_table_sql(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv_values'").fetchone()
    return None if row is None else str(row[0])


def _ensure_values_table(conn: sqlite3.Connection) -> None:
    """Create ``kv_values``, or move an earlier version's ``WITHOUT ROWID`` table to the
    current layout (inside the caller's write transaction: all or nothing)."""
    sql = _values_table_sql(conn)
    if sql is None:
        conn.execute(_VALUES_TABLE.format(name="kv_values"))
        return
    if "without rowid" not in " ".join(sql.lower().split()):
        return
    count = conn.execute("SELECT count(*) FROM kv_values").fetchone()[0]
    log.info("Migrating the KV database to the keys-apart layout (%d values)", count)
    conn.execute("DROP TABLE IF EXISTS kv_values_migrating")
    conn.execute(_VALUES_TABLE.format(name="kv_values_migrating"))
    conn.execute("INSERT INTO kv_values_migrating (key, value) SELECT key, value FROM kv_values ORDER BY key")
    conn.execute("DROP TABLE kv_values")
    conn.execute("ALTER TABLE kv_values_migrating RENAME TO kv_values")


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
