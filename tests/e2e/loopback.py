"""The lifecycle shared by the small HTTP servers of the end-to-end tests (the control-plane
stub, the recording edge): an aiohttp app on an ephemeral loopback port, started and
stopped within bounds, usable with ``async with``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

#: Bound of a server's shutdown.
STOP_TIMEOUT_S = 10.0


class LoopbackServer:
    """Mixin: ``start()`` serves :meth:`make_app` on ``self.host`` (a free port), ``stop()``
    ends it; ``url`` is where it listens. Subclasses set ``host`` and keep ``_runner`` and
    ``_port`` attributes (None and 0 before the start)."""

    host: str
    _runner: web.AppRunner | None
    _port: int

    def make_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Any:
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=STOP_TIMEOUT_S)
            self._runner = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"
