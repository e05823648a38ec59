"""An SMS HTTP gateway in the style of Vietnamese brandname providers.

``POST /sms`` with a JSON or form body ``{Phone, Content, RequestId}`` (names configurable by
the channel's body template) and an ``Authorization`` header (Bearer ``token``). It answers
200 ``{"CodeResult": "100", "SMSID": ...}`` when accepted; ``{"CodeResult": "99"}`` for a number
on its block list; 401 without the token. It fails intermittently: with probability
``failure_rate`` (drawn from ``random.Random(seed)``, so a run is reproducible) a request gets
a 500, a 503 with Retry-After 0, or a dropped connection *after* it was accepted (the client
cannot tell whether the SMS went out). It sends each ``RequestId`` once: a repeat answers the
first SMSID and counts as a duplicate.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sim.peers import LoopbackServer

PATH = "/sms"


@dataclass
class SmsPeer(LoopbackServer):
    token: str = "sms-token-for-tests"
    seed: int = 7
    failure_rate: float = 0.0
    blocked: set[str] = field(default_factory=set)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # RequestId -> request
    requests: int = 0
    failures: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._ids: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self._sms)
        return app

    async def _sms(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"CodeResult": "101"}, status=401)
        if request.content_type == "application/x-www-form-urlencoded":
            body: dict[str, Any] = dict(await request.post())
        else:
            body = await request.json()
        roll = self._random.random()
        if roll < self.failure_rate:
            self.failures += 1
            mode = self._random.choice(("500", "503", "drop-after"))
            if mode == "500":
                return web.json_response({"CodeResult": "-1"}, status=500)
            if mode == "503":
                return web.Response(status=503, headers={"Retry-After": "0"})
            self._accept(body)  # sent, but the answer is lost
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if str(body.get("Phone")) in self.blocked:
            return web.json_response({"CodeResult": "99"})
        return web.json_response({"CodeResult": "100", "SMSID": self._accept(body)})

    def _accept(self, body: dict[str, Any]) -> str:
        ref = str(body.get("RequestId") or secrets.token_hex(8))
        if ref in self._ids:
            self.duplicates += 1
            return self._ids[ref]
        self._ids[ref] = secrets.token_hex(8)
        self.sent[ref] = body
        return self._ids[ref]
