"""Unique, cleaned-up keys for one conformance test."""

from __future__ import annotations

import asyncio
import logging
import uuid

from zephyr_edge.errors import ZephyrError
from zephyr_edge.kv.base import KV

log = logging.getLogger(__name__)

#: Longest wait for deleting a test's keys afterwards.
CLEANUP_TIMEOUT_S = 10.0


class KeyFactory:
    """Makes keys ``{ze-test-<uuid>}:<name>``: unique to one test, all sharing one hash tag
    (so they may go into one :meth:`KV.atomic` call), and remembered for :meth:`cleanup`.

    ``keys("name", group="b")`` puts the key under a second tag (``{ze-test-<uuid>-b}``),
    for tests about keys that span hash tags.
    """

    def __init__(self) -> None:
        self.tag = f"ze-test-{uuid.uuid4().hex}"
        self.created: dict[str, None] = {}

    def __call__(self, name: str, group: str = "") -> str:
        tag = f"{self.tag}-{group}" if group else self.tag
        key = f"{{{tag}}}:{name}"
        self.created[key] = None
        return key

    async def cleanup(self, kv: KV) -> None:
        """Delete every key made (best effort, bounded: a broken backend is the test's news)."""
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await asyncio.gather(*(kv.delete(key) for key in self.created))
        except (ZephyrError, TimeoutError) as exc:
            log.warning("could not delete the keys of test tag %s: %s", self.tag, exc)
