"""The region's outbox: writes to replicate, recorded in the KV with the write itself.

Layout (``T`` is the configured hash tag, like every key of ours, so each write and its
record are one atomic step even on Redis Cluster):

- ``T:outbox:seq`` → counter numbering entries (a number taken by a write that then failed
  leaves a gap; nothing relies on the numbers being contiguous, only on their order)
- ``T:outbox:entry:<seq>`` → JSON ``{"seq", "kind", "at_ms", "body"}`` (:class:`Entry`);
  deleted once no target has it pending
- ``T:outbox:pending:<target>`` → set of the seqs not yet delivered to ``target`` (the URL
  as configured). A write adds its seq to the set of every target configured at that
  moment; a target added later catches up through anti-entropy.
- ``T:outbox:rejected:<target>`` → set of seqs the target refused for good (400, 404,
  413, 422), each with its entry and the reason under ``T:outbox:rejected:<target>:<seq>``
- ``T:outbox:lease:<target>`` → ``<owner>|<expires epoch ms>``: the worker delivering to
  ``target`` (:class:`Leases`)
- ``T:outbox:status:<target>`` → JSON of the delivery counters (:class:`TargetStatus`)
- ``T:outbox:targets`` → set of every target a write was ever recorded for, so that a target
  dropped from the configuration still shows (with what it never received) until it is
  forgotten (:meth:`Outbox.forget`, ``zephyr-edge replicate --forget URL``)

Entry bodies: ``file`` ``{"application_uid", "hash", "filename"}``; ``snapshot`` and
``envs`` ``{"snapshot_id", "hosts": {"<host>": "<stamp>"}}`` (the snapshot JSON is read
from the KV when sent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from zephyr_edge.domain import hostnames
from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.settings.redaction import without_userinfo
from zephyr_edge.kv.base import KV, Delete, Op, Set, SetAdd, SetRemove


def now_ms() -> int:
    return int(time.time() * 1000)


def target_name(url: str) -> str:
    """The name a target URL is known by in keys and status: without userinfo (it is
    never sent, and a password must not end up in KV key names) and trailing ``/``."""
    return without_userinfo(url).rstrip("/")


@attrs.frozen
class Entry:
    """One recorded write."""

    seq: int
    kind: str
    at_ms: int
    body: Mapping[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(
            {"seq": self.seq, "kind": self.kind, "at_ms": self.at_ms, "body": self.body},
            separators=(",", ":"), ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Entry:
        """The entry ``raw`` (``ValueError`` when it is not one)."""
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("body"), dict):
            raise ValueError("not an outbox entry")
        return cls(int(data["seq"]), str(data["kind"]), int(data["at_ms"]), data["body"])


@attrs.define
class TargetStatus:
    """Delivery counters of one target, kept in the KV by the worker that delivers."""

    delivered: int = 0
    last_delivered_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None
    rejected: int = 0

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | None) -> TargetStatus:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(**{f.name: data.get(f.name, f.default) for f in attrs.fields(cls)})
        except (ValueError, TypeError):
            return cls()


class Outbox:
    """Records writes (it is the :class:`~zephyr_edge.catalog.records.Journal` of the catalog) and
    hands them to the senders."""

    def __init__(self, kv: KV, worker: WorkerConfig, targets: Sequence[str]):
        self.kv = kv
        self.targets = tuple(dict.fromkeys(target_name(t) for t in targets))
        self._prefix = worker.redis_prefix_envs

    # --- keys ---------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return hostnames.tagged_key(self._prefix, "outbox", *parts)

    @property
    def seq_key(self) -> str:
        return self._key("seq")

    def entry_key(self, seq: int) -> str:
        return self._key("entry", str(seq))

    def pending_key(self, target: str) -> str:
        return self._key("pending", target)

    def rejected_key(self, target: str, seq: int | None = None) -> str:
        return self._key("rejected", target) if seq is None else self._key("rejected", target, str(seq))

    def lease_key(self, target: str) -> str:
        return self._key("lease", target)

    def status_key(self, target: str) -> str:
        return self._key("status", target)

    @property
    def known_key(self) -> str:
        return self._key("targets")

    # --- recording (the Journal) ----------------------------------------------------------

    async def record(self, kind: str, body: Mapping[str, Any]) -> list[Op]:
        """The ops recording a write for every target (apply them with the write)."""
        if not self.targets:
            return []
        seq = await self.kv.incr(self.seq_key)
        entry = Entry(seq, kind, now_ms(), dict(body))
        member = [str(seq).encode()]
        return [
            Set(self.entry_key(seq), entry.to_json()),
            *(SetAdd(self.pending_key(t), member) for t in self.targets),
            SetAdd(self.known_key, [t.encode() for t in self.targets]),
        ]

    # --- reading and acknowledging ---------------------------------------------------------

    async def depth(self, target: str) -> int:
        return await self.kv.scard(self.pending_key(target))

    async def pending(self, target: str, limit: int | None = None) -> list[int]:
        """Seqs pending for ``target``, oldest first (at most ``limit``)."""
        seqs = sorted(int(m) for m in await self.kv.smembers(self.pending_key(target)) if m.isdigit())
        return seqs if limit is None else seqs[:limit]

    async def entries(self, seqs: Sequence[int]) -> list[Entry | None]:
        """The entries of ``seqs`` (None for a missing or unreadable one)."""
        out: list[Entry | None] = []
        for raw in await self.kv.get_many([self.entry_key(s) for s in seqs]):
            try:
                out.append(None if raw is None else Entry.from_json(raw))
            except (ValueError, KeyError, TypeError):
                out.append(None)
        return out

    async def done(self, target: str, seqs: Sequence[int]) -> None:
        """``seqs`` reached ``target``: drop them from its pending set, and drop each entry
        no other target still has pending."""
        if not seqs:
            return
        await self.kv.atomic([SetRemove(self.pending_key(target), [str(s).encode() for s in seqs])])
        await self._collect(seqs)

    async def set_aside(self, target: str, entry: Entry, reason: str) -> None:
        """``target`` refused ``entry`` for good: keep it with ``reason`` under the rejected
        keys instead of retrying it forever."""
        record = json.dumps({"entry": json.loads(entry.to_json()), "reason": reason, "at_ms": now_ms()}).encode()
        member = [str(entry.seq).encode()]
        await self.kv.atomic([
            Set(self.rejected_key(target, entry.seq), record),
            SetAdd(self.rejected_key(target), member),
            SetRemove(self.pending_key(target), member),
        ])
        await self._collect([entry.seq])

    async def rejected(self, target: str) -> int:
        return await self.kv.scard(self.rejected_key(target))

    async def known_targets(self) -> list[str]:
        """Every target writes were recorded for (configured now or not), sorted."""
        return sorted(m.decode("utf-8", "replace") for m in await self.kv.smembers(self.known_key))

    async def forget(self, target: str) -> int:
        """Drop everything kept for ``target`` (a region taken out of the configuration):
        its pending and set-aside entries, counters and lease. The entries no other
        target still waits for are deleted. The number of pending entries dropped."""
        target = target_name(target)
        seqs = await self.pending(target)
        rejected = [m.decode() for m in await self.kv.smembers(self.rejected_key(target))]
        await self.kv.atomic([
            Delete(self.pending_key(target)), Delete(self.lease_key(target)), Delete(self.status_key(target)),
            Delete(self.rejected_key(target)), *(Delete(self._key("rejected", target, r)) for r in rejected),
            SetRemove(self.known_key, [target.encode()]),
        ])
        await self._collect(seqs)
        return len(seqs)

    async def _collect(self, seqs: Sequence[int]) -> None:
        others = dict.fromkeys([*self.targets, *await self.known_targets()])
        for seq in seqs:
            member = str(seq).encode()
            for other in others:
                if await self.kv.sismember(self.pending_key(other), member):
                    break
            else:
                await self.kv.atomic([Delete(self.entry_key(seq))])

    # --- status -----------------------------------------------------------------------------

    async def status(self, target: str) -> TargetStatus:
        return TargetStatus.from_json(await self.kv.get(self.status_key(target)))

    async def save_status(self, target: str, status: TargetStatus) -> None:
        await self.kv.set(self.status_key(target), status.to_json())


class Leases:
    """One worker of the region delivers to each target: it holds the target's lease and
    renews it; when it dies, the lease expires and another worker takes the target over
    (and with it every entry still pending)."""

    def __init__(self, outbox: Outbox, owner: str, lease_ms: int):
        self._outbox = outbox
        self.owner = owner
        self.lease_ms = lease_ms

    async def holder(self, target: str) -> tuple[str, int] | None:
        """``(owner, expires epoch ms)`` of the target's lease, or None."""
        return _parse_lease(await self._outbox.kv.get(self._outbox.lease_key(target)))

    async def acquire(self, target: str) -> bool:
        """Take or renew the lease of ``target``; True when this worker holds it now."""
        key = self._outbox.lease_key(target)
        raw = await self._outbox.kv.get(key)
        held = _parse_lease(raw)
        now = now_ms()
        if held is not None and held[0] != self.owner and held[1] > now:
            return False
        value = f"{self.owner}|{now + self.lease_ms}".encode()
        return await self._outbox.kv.atomic_if({key: raw}, [Set(key, value)])

    async def release(self, target: str) -> None:
        """Give the lease up (at shutdown) so another worker need not wait for it to expire."""
        key = self._outbox.lease_key(target)
        raw = await self._outbox.kv.get(key)
        held = _parse_lease(raw)
        if held is not None and held[0] == self.owner:
            await self._outbox.kv.atomic_if({key: raw}, [Delete(key)])


def _parse_lease(raw: bytes | None) -> tuple[str, int] | None:
    if not raw:
        return None
    owner, _, expires = raw.decode("utf-8", "replace").rpartition("|")
    return (owner, int(expires)) if expires.isdigit() else None


def journal_for(kv: KV, worker: WorkerConfig) -> Outbox | None:
    """The outbox the catalog records writes in, or None when this region sends nothing
    (replication off, or receive-only)."""
    if not worker.replica_name or not worker.replicas_urls:
        return None
    return Outbox(kv, worker, [str(u) for u in worker.replicas_urls])
