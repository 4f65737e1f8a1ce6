"""Operator commands on the catalog: ``zephyr-edge publish`` / ``rollback`` and ``versions``.

They open the configured KV backend directly (no worker needs to run) and go through
:class:`~zephyr_edge.catalog.records.Catalog`, so a publish here is the same atomic write as a
``POST /upload?type=envs``: the hostnames' live records and the publish counter, which the
running workers watch to drop their hostname caches.

Output: ``publish`` prints one JSON line on stdout; ``versions`` a table (or JSON with
``--json``). Messages go to stderr, never a traceback. Exit codes follow
:mod:`zephyr_edge.cli.commands`: 0 done, 1 refused or failed (unknown snapshot, an application
without snapshots, unreachable backend), 2 bad arguments or configuration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

from zephyr_edge.cli import exits
from zephyr_edge.domain import hostnames
from zephyr_edge.settings.fields import Config
from zephyr_edge.errors import BackendError, BackendUnavailable, Forbidden, NotFound, ZephyrError
from zephyr_edge.catalog.records import Catalog, Version, VersionHostTaken
from zephyr_edge.replication import outbox
from zephyr_edge.domain.snapshot import InvalidLivePayload
from zephyr_edge import plugins

T = TypeVar("T")

#: Upper bound of one admin command's KV work (each backend call is bounded too).
COMMAND_TIMEOUT_S = 60.0
#: Table columns of ``versions``.
TABLE_HEADERS = ("SNAPSHOT", "VERSION", "CREATED (UTC)", "ASSETS", "HOSTNAMES")


class UsageError(ZephyrError):
    """A command-line argument is unusable (exit 2)."""

    code = "usage_error"


class Refused(ZephyrError):
    """The command would do something harmful and was not run (exit 1)."""

    code = "refused"


# --- arguments ----------------------------------------------------------------------------


def parse_hosts(values: Sequence[str]) -> tuple[str, ...]:
    """Normalised hostnames of ``--host`` values (a host name or a URL), duplicates removed,
    in order. Raises :class:`UsageError` naming every invalid one."""
    hosts: dict[str, None] = {}
    bad: list[str] = []
    for value in values:
        text = value.strip()
        authority = urlsplit(text).netloc if "://" in text else text
        host = hostnames.normalize_host(authority.rpartition("@")[2]) if "/" not in authority else None
        if host is None:
            bad.append(value)
        else:
            hosts.setdefault(host, None)
    if bad:
        raise UsageError("invalid hostname " + ", ".join(repr(b) for b in bad) + " (expected e.g. app.example.com)")
    if not hosts:
        raise UsageError("at least one --host is required")
    return tuple(hosts)


# --- running against the KV ---------------------------------------------------------------


def _run(config: Config, work: Callable[[Catalog], Awaitable[T]]) -> T:
    async def main() -> T:
        async with plugins.open_kv(config) as kv:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await work(Catalog(kv, config.worker, outbox.journal_for(kv, config.worker)))

    return asyncio.run(main())


def _fail(message: str, code: int, err: TextIO) -> int:
    print(f"zephyr-edge: {message}", file=err)
    return code


def _guarded(config: Config, work: Callable[[Catalog], Awaitable[T]], err: TextIO) -> tuple[int, T | None]:
    """Run ``work``; map every expected failure to (exit code, None) with one message."""
    try:
        return exits.OK, _run(config, work)
    except UsageError as exc:
        return _fail(str(exc), exits.USAGE, err), None
    except (NotFound, Refused) as exc:
        return _fail(str(exc), exits.FAILED, err), None
    except BackendUnavailable as exc:
        return _fail(f"{config.kv.name} KV backend unavailable: {exc}", exits.FAILED, err), None
    except BackendError as exc:
        return _fail(f"{config.kv.name} KV backend failed: {exc}", exits.FAILED, err), None
    except TimeoutError:
        message = f"{config.kv.name} KV backend did not answer within {COMMAND_TIMEOUT_S:.0f} s"
        return _fail(message, exits.FAILED, err), None
    except ZephyrError as exc:
        return _fail(str(exc), exits.FAILED, err), None


# --- publish / rollback -------------------------------------------------------------------


async def _live_id(catalog: Catalog, host: str) -> str | None:
    try:
        snapshot = await catalog.live(host)
    except InvalidLivePayload:
        return "(invalid record)"
    return None if snapshot is None else snapshot.snapshot_id


async def publish_hosts(
    catalog: Catalog, snapshot_id: str, hosts: Sequence[str], force: bool = False
) -> dict[str, Any]:
    """Point ``hosts`` at the stored ``snapshot_id``; the result printed by ``publish``.

    Refuses to repoint another snapshot's version hostname (version URLs are immutable)
    and, unless ``force``, a hostname serving another application (a typo must not take
    over another team's domain). ``previous`` maps each host to the snapshot it served
    before (``None``: unknown host), which is the ``--snapshot`` of an undo.
    """
    snapshot = await catalog.require_snapshot(snapshot_id)
    previous = {h: await _live_id(catalog, h) for h in hosts}
    try:
        # the catalog refuses to move a version hostname (even with force) and, with the
        # application given, hosts serving another application
        await catalog.publish(snapshot.snapshot_id, list(hosts), None if force else snapshot.application_uid)
    except VersionHostTaken as exc:
        raise Refused(str(exc)) from None
    except Forbidden as exc:
        raise Refused(f"{exc}; pass --force to move it to {snapshot.application_uid!r}") from None
    return {
        "ok": True,
        "application_uid": snapshot.application_uid,
        "snapshot_id": snapshot.snapshot_id,
        "version": snapshot.raw.get("version"),
        "hosts": list(hosts),
        "previous": previous,
    }


def publish(
    config: Config, host_args: Sequence[str], snapshot_id: str, *, force: bool = False,
    action: str = "publish", out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    """``zephyr-edge publish`` (and ``rollback``): the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        hosts = parse_hosts(host_args)
    except UsageError as exc:
        return _fail(str(exc), exits.USAGE, err)
    snapshot_id = snapshot_id.strip()
    if not snapshot_id:
        return _fail("--snapshot must not be empty", exits.USAGE, err)
    code, result = _guarded(config, lambda c: publish_hosts(c, snapshot_id, hosts, force), err)
    if result is not None:
        print(json.dumps({"action": action, **result}, ensure_ascii=False), file=out, flush=True)
    return code


# --- versions -----------------------------------------------------------------------------


def _created(ms: int | None) -> str | None:
    if ms is None:
        return None
    try:
        stamp = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def version_record(v: Version) -> dict[str, Any]:
    """One entry of ``versions --json``."""
    s = v.snapshot
    return {
        "snapshot_id": s.snapshot_id,
        "application_uid": s.application_uid,
        "version": s.raw.get("version"),
        "created_at": s.created_at,
        "created": _created(s.created_at),
        "assets": len(s.assets),
        "hosts": list(v.hosts),
    }


def render_table(records: Sequence[dict[str, Any]]) -> str:
    """The human-readable ``versions`` table (one line per hostname beyond the first)."""
    rows: list[tuple[str, ...]] = []
    for r in records:
        hosts = r["hosts"] or ["-"]
        first = (r["snapshot_id"], str(r["version"] or "-"), r["created"] or "-", str(r["assets"]), hosts[0])
        rows.append(first)
        rows.extend(("", "", "", "", h) for h in hosts[1:])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(TABLE_HEADERS)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (TABLE_HEADERS, *rows)]
    return "\n".join(lines)


def versions(
    config: Config, application_uid: str, *, as_json: bool = False,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    """``zephyr-edge versions``: the app's snapshots, newest first, with their hostnames."""
    out, err = out or sys.stdout, err or sys.stderr
    uid = application_uid.strip()
    if not uid:
        return _fail("--app must not be empty", exits.USAGE, err)
    code, found = _guarded(config, lambda c: c.versions(uid), err)
    if found is None:
        return code
    records = [version_record(v) for v in found]
    if as_json:
        print(json.dumps(records, ensure_ascii=False, indent=2), file=out, flush=True)
    elif records:
        print(render_table(records), file=out, flush=True)
    if not records:  # a typo in --app, or the wrong worker: say so, and fail
        message = (f"unknown application {uid!r}: no snapshots of it on this worker "
                   "(check --app, expected app.repo.org, and the configuration or --data-dir)")
        return _fail(message, exits.FAILED, err)
    return code
