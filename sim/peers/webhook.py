"""A webhook receiver that checks Standard Webhooks signatures the way a school's would.

``POST /hook``: the raw body is verified with :func:`gateway.channels.webhook.verify_webhook`
against the receiver's ``secrets`` at the receiver's clock (seconds, injectable): a missing
header, a stale timestamp or a tampered body answers 401 and is recorded with the reason.
A verified delivery is stored once per ``webhook-id`` (a repeat answers 200 and counts as a
duplicate). Faults (:meth:`WebhookPeer.inject`): the next N requests answer a status (with a
Retry-After), are slow, or have their connection dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from gateway.channels.webhook import WebhookVerificationError, verify_webhook
from sim.peers import LoopbackServer

PATH = "/hook"


@dataclass(frozen=True)
class Fault:
    kind: Literal["status", "slow", "drop"] = "status"
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    status: int
    webhook_id: str | None
    reason: str | None  # why it was refused (WebhookVerificationError.code), or the fault


@dataclass
class WebhookPeer(LoopbackServer):
    secrets: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.time  # Unix seconds
    tolerance_s: float = 300
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> payload
    received: list[Received] = field(default_factory=list)
    duplicates: int = 0

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self._hook)
        return app

    def inject(self, fault: Fault, times: int = 1) -> None:
        self._faults.extend([fault] * times)

    def refused(self) -> list[str | None]:
        return [r.reason for r in self.received if r.status == 401]

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "drop":
            self.received.append(Received(0, None, "drop"))
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault is not None and fault.kind == "status":
            self.received.append(Received(fault.status, None, "fault"))
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.Response(status=fault.status, headers=headers)
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        try:
            webhook_id = verify_webhook(request.headers, body, self.secrets, self.clock(),
                                        self.tolerance_s)
        except WebhookVerificationError as exc:
            self.received.append(Received(401, request.headers.get("webhook-id"), exc.code))
            return web.json_response({"error": exc.code}, status=401)
        self.received.append(Received(200, webhook_id, None))
        if webhook_id in self.stored:
            self.duplicates += 1
        else:
            self.stored[webhook_id] = json.loads(body)
        return web.json_response({"ok": True})
