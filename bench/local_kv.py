"""The embedded KV: what a lookup of a missing key costs, without and with one large value
stored, on this version's SQLite layout and on the earlier one (``WITHOUT ROWID``), all in
one invocation.

    python bench/local_kv.py [--big-mb 20] [--keys 20] [--lookups 300]

Each layout gets a fresh database in a temporary folder filled with ``--keys`` small values;
missing keys are looked up (the ``get`` of :mod:`zephyr_edge.kv.local_sql`, as an unknown
``Host`` does), then one ``--big-mb`` value is stored and the same lookups run again. The
figure that matters is the ratio with/without the large value on the same layout (1.0: the
large value costs other lookups nothing). Prints a table, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zephyr_edge.kv import local_sql  # noqa: E402

OLD_SCHEMA = (
    "CREATE TABLE kv_values (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE kv_set_members (key TEXT NOT NULL, member BLOB NOT NULL, PRIMARY KEY (key, member)) WITHOUT ROWID",
)


def open_db(folder: Path, layout: str) -> sqlite3.Connection:
    if layout == "current":
        return local_sql.connect(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / local_sql.DB_FILE, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in OLD_SCHEMA:
        conn.execute(statement)
    return conn


def per_lookup_us(conn: sqlite3.Connection, missing: list[str]) -> float:
    for key in missing[:50]:  # warm the page cache
        local_sql.get(conn, key)
    started = time.perf_counter()
    for key in missing:
        assert local_sql.get(conn, key) is None
    return (time.perf_counter() - started) / len(missing) * 1e6


def run(layout: str, keys: int, lookups: int, big_bytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ze-bench-kv-") as tmp:
        conn = open_db(Path(tmp), layout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO kv_values (key, value) VALUES (?, ?)",
                [(f"{{ze}}:envs:host-{i:06d}.example.com", b"x" * 2000) for i in range(keys)],
            )
            conn.execute("COMMIT")
            missing = [f"{{ze}}:envs:host-{i % keys:06d}.example.com.unknown" for i in range(lookups)]
            without = per_lookup_us(conn, missing)
            local_sql.set_value(conn, f"{{ze}}:envs:host-{keys // 2:06d}.example.com-big", b"y" * big_bytes)
            with_big = per_lookup_us(conn, missing)
        finally:
            conn.close()
    return {"without_us": without, "with_big_us": with_big, "ratio": with_big / without}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mb", type=float, default=20.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()
    big = int(args.big_mb * 1024 * 1024)
    results = {layout: run(layout, args.keys, args.lookups, big) for layout in ("current", "earlier")}
    print(f"missing-key lookup, {args.keys} small values, then one {args.big_mb:g} MB value ({args.lookups} lookups)")
    print(f"{'layout':<10}{'without (us)':>14}{'with big (us)':>15}{'ratio':>9}")
    for layout, r in results.items():
        print(f"{layout:<10}{r['without_us']:>14.1f}{r['with_big_us']:>15.1f}{r['ratio']:>9.2f}")
    speedup = results["earlier"]["with_big_us"] / results["current"]["with_big_us"]
    print(f"with the big value, the current layout is {speedup:.1f}x faster than the earlier one")
    rounded = {layout: {name: round(v, 3) for name, v in r.items()} for layout, r in results.items()}
    print(json.dumps({"big_mb": args.big_mb, "keys": args.keys, "lookups": args.lookups, **rounded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
