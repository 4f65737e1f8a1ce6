"""Publish stamps: the last-writer-wins rule that makes every region agree on a hostname.

Every write of a hostname record (a version host when its snapshot is stored, a tag,
environment or custom domain when published) carries a :class:`Stamp`: the publish time in
epoch milliseconds and the name of the replica (region) that accepted it. Stamps are totally
ordered by ``(ms, replica)``; a region applies a replicated hostname write only when its
stamp is greater than the one it holds for that host. Since the order is the same
everywhere, two regions that publish one host at the same moment end with the same answer
once each has seen the other's write.

A local publish takes ``max(now, held + 1)``, so a publish made after another one (as seen
by this region) always wins even when a remote clock runs ahead.

Stored as ASCII ``<ms>|<replica>`` next to the hostname record. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import time

import attrs

from zephyr_edge.errors import shorten

_STAMP_RE = re.compile(r"(\d{1,20})\|(.{0,200})", re.DOTALL)


class InvalidStamp(ValueError):
    """A stamp that cannot be read."""


@attrs.frozen(order=True)
class Stamp:
    """``(ms, replica)``: compared by time, then by replica name."""

    ms: int
    replica: str

    def encode(self) -> bytes:
        return f"{self.ms}|{self.replica}".encode("utf-8")

    def __str__(self) -> str:
        return f"{self.ms}|{self.replica}"

    @classmethod
    def parse(cls, text: str) -> Stamp:
        """The stamp written ``<ms>|<replica>`` (:class:`InvalidStamp` otherwise)."""
        match = _STAMP_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidStamp(f"expected a stamp '<epoch ms>|<replica>', got {shorten(str(text), 80)!r}")
        return cls(int(match.group(1)), match.group(2))

    @classmethod
    def decode(cls, raw: bytes | None) -> Stamp | None:
        """The stored stamp ``raw`` (None when absent or unreadable: an unreadable stamp
        loses against any readable one, so a replicated write repairs it)."""
        if raw is None:
            return None
        try:
            return cls.parse(raw.decode("utf-8"))
        except (UnicodeDecodeError, InvalidStamp):
            return None


def next_stamp(held: Stamp | None, replica: str, now_ms: int | None = None) -> Stamp:
    """The stamp of a local write over a record stamped ``held``: now, and later than ``held``."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if held is not None and ms <= held.ms:
        ms = held.ms + 1
    return Stamp(ms, replica)


def newer(incoming: Stamp, held: Stamp | None) -> bool:
    """Whether a replicated write stamped ``incoming`` replaces one stamped ``held``."""
    return held is None or incoming > held
