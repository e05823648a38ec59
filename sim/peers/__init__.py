"""Real HTTP servers that implement an upstream's or a parent channel's contract, on loopback.

Each peer listens on 127.0.0.1 on a free port, records every request it got, keeps what it
stored (so a test or the demo can check "every event exactly once upstream" on the peer's side)
and takes injected faults. ``edfi``: the Ed-Fi ODS/API (OAuth2, upsert by natural key,
problem+json); ``zalo``: Zalo ZNS template messages; ``webhook``: a school's receiver of signed
webhooks. ``make run`` (sim/demo.py) runs them as the demo school's upstream and parent
channels; the tests use them too, with the peers only tests need in tests/peers/.
"""

from __future__ import annotations

from typing import Self

from aiohttp import web


class LoopbackServer:
    """Runs ``build_app()`` on 127.0.0.1: ``port`` 0 picks a free port, which a restart keeps."""

    port: int = 0
    _runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
