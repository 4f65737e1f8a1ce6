"""The pieces of one delivery batch of :class:`~.sender.TargetSender`: which files the
target already holds, the order and concurrency of the sends, and how each kind of outbox
entry is sent. No state of its own: the sender owns the lease, the queue and the counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from zephyr_edge.domain.assets import storage_key
from zephyr_edge.errors import NotFound
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.replication.client import DeliveryError
from zephyr_edge.replication.outbox import Entry
from zephyr_edge.replication.protocol import KIND_ENVS, KIND_FILE, KIND_SNAPSHOT
from zephyr_edge.domain.snapshot import InvalidLivePayload
from zephyr_edge.storage.base import Storage


class Gone(Exception):
    """The entry can never be delivered from here (its data is no longer stored)."""


class Retry(Exception):
    """A batch stopped on a failure that may pass (entries stay pending)."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`~.client.DeliveryError` meaning "refused for good"."""
    return isinstance(exc, DeliveryError) and exc.permanent


async def held_files(client: Any, entries: Sequence[Entry]) -> list[int]:
    """Seqs of the file entries whose hash the target already lists (``sync-check``);
    :class:`Retry` when the target cannot be asked."""
    by_app: dict[str, dict[str, list[int]]] = {}
    for e in entries:
        app, digest = e.body.get("application_uid"), e.body.get("hash")
        if e.kind == KIND_FILE and isinstance(app, str) and isinstance(digest, str):
            by_app.setdefault(app, {}).setdefault(digest, []).append(e.seq)
    held: list[int] = []
    for app, seqs_of in by_app.items():
        try:
            answer = await client.check(app, hashes=sorted(seqs_of))  # batched by the client
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not is_permanent(exc):
                raise Retry(f"check failed: {exc}") from exc
            continue  # a check refused: send them all
        held += [s for h, seqs in seqs_of.items() if h not in answer.missing_hashes for s in seqs]
    return held


async def deliver_in_order(
    entries: Sequence[Entry], deliver: Callable[[Entry], Awaitable[bool]], concurrency: int, acked: list[int]
) -> tuple[Exception | None, int]:
    """Run ``deliver`` (True: delivered, False: set aside) over ``entries`` in seq order
    with at most ``concurrency`` in flight, files and snapshots side by side but an
    ``envs`` entry (a publish) alone, after everything before it; delivered seqs are
    appended to ``acked``. After a failure no new send starts. (The first failure or None,
    the number set aside.)"""
    gate = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    outcome: dict[str, Any] = {"failure": None, "rejected": 0}

    async def one(entry: Entry) -> None:
        try:
            if await deliver(entry):
                acked.append(entry.seq)
            else:
                outcome["rejected"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome["failure"] = outcome["failure"] or exc
        finally:
            gate.release()

    try:
        for entry in entries:
            if entry.kind == KIND_ENVS and running:
                await asyncio.wait(running)  # a publish acts after what it publishes
            await gate.acquire()
            if outcome["failure"] is not None:
                gate.release()
                break
            task = asyncio.create_task(one(entry))
            running.add(task)
            task.add_done_callback(running.discard)
            if entry.kind == KIND_ENVS:
                await asyncio.wait([task])
        if running:
            await asyncio.wait(running)
    finally:
        for task in running:
            task.cancel()
    return outcome["failure"], outcome["rejected"]


async def send_entry(client: Any, entry: Entry, *, catalog: Catalog, storage: Storage, replica: str) -> None:
    """Send one outbox entry to the target; :class:`Gone` when it cannot be sent from here."""
    jti = f"{replica}:{entry.seq}"
    body = entry.body
    if entry.kind == KIND_FILE:
        try:
            app, digest, filename = str(body["application_uid"]), str(body["hash"]), str(body["filename"])
            key = storage_key(digest)
        except (KeyError, ValueError) as exc:
            raise Gone(f"malformed file entry: {exc}") from None
        try:
            blob = await storage.get(key)  # no HEAD first: the open object tells its size
        except NotFound:
            raise Gone(f"asset {digest} is no longer in local storage") from None
        opened = [blob]

        async def chunks() -> AsyncIterator[bytes]:
            # the first call reads the object opened above; a resend opens it again
            source = opened.pop() if opened else await storage.get(key)
            async with source:
                async for chunk in source.chunks():
                    yield chunk

        try:
            await client.send_file(app, digest, filename, blob.size, chunks, jti=jti)
        finally:
            if opened:  # never read (the request failed before its body)
                await opened.pop().aclose()
    elif entry.kind in (KIND_SNAPSHOT, KIND_ENVS):
        snapshot_id, hosts = body.get("snapshot_id"), body.get("hosts") or {}
        try:
            snapshot = await catalog.snapshot(str(snapshot_id))
        except InvalidLivePayload as exc:
            raise Gone(f"snapshot {snapshot_id!r} is unreadable here: {exc}") from None
        if snapshot is None:
            raise Gone(f"snapshot {snapshot_id!r} is no longer stored here")
        send = client.send_snapshot if entry.kind == KIND_SNAPSHOT else client.send_envs
        await send(snapshot.to_json(), {str(h): str(s) for h, s in dict(hosts).items()}, jti=jti)
    else:
        raise Gone(f"unknown entry kind {entry.kind!r}")
