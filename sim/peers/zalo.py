"""A Zalo-ZNS-shaped server: the part of the API the ZNS channel uses.

- ``POST /v4/oa/access_token`` (Zalo's OAuth host): header ``secret_key``, form ``app_id``,
  ``refresh_token``, ``grant_type=refresh_token`` -> ``{access_token, refresh_token,
  expires_in}`` (``expires_in`` as a string of seconds, as Zalo sends it). Refresh tokens are
  single-use: each refresh issues a new one and retires the old. A wrong secret key or a spent
  refresh token answers an ``error`` object.
- ``POST /message/template`` (the business API host): header ``access_token``; JSON ``{phone,
  template_id, template_data, tracking_id}``. HTTP 200 always, ``error`` 0 with
  ``data.msg_id`` on success, else a negative code: -124 access token invalid or expired (on the
  peer's clock, injectable; :meth:`ZaloPeer.expire_tokens`), -108 phone not ``84…``, -109
  unknown template, -131 template not approved, -118 phone without a Zalo account. One message
  per ``tracking_id``: a repeat answers the first msg_id and counts as a duplicate.
- Faults (:meth:`ZaloPeer.inject`): the next N send requests answer an error code, an HTTP
  status, or have their connection dropped.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from sim.peers import LoopbackServer

SEND_PATH = "/message/template"
TOKEN_PATH = "/v4/oa/access_token"


@dataclass(frozen=True)
class Fault:
    kind: Literal["error", "status", "drop"] = "error"
    error: int = -100
    status: int = 500


@dataclass
class ZaloPeer(LoopbackServer):
    app_id: str = "4318016000000000001"
    secret_key: str = "zalo-app-secret-for-tests"
    refresh_token: str = "first-refresh-token"
    token_ttl_s: float = 90_000
    templates: set[str] = field(default_factory=lambda: {"231133"})
    unapproved: set[str] = field(default_factory=set)
    not_on_zalo: set[str] = field(default_factory=set)
    clock: Callable[[], float] = time.time
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # tracking_id -> body
    codes: list[int] = field(default_factory=list)  # the error code of every send answered
    refreshes: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._msg_ids: dict[str, str] = {}
        self._faults: deque[Fault] = deque()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SEND_PATH}"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TOKEN_PATH}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SEND_PATH, self._send)
        app.router.add_post(TOKEN_PATH, self._token)
        return app

    def inject(self, fault: Fault, times: int = 1) -> None:
        self._faults.extend([fault] * times)

    def expire_tokens(self) -> None:
        self._tokens.clear()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.headers.get("secret_key") != self.secret_key \
                or form.get("app_id") != self.app_id:
            return web.json_response({"error": -14002, "error_name": "Invalid app secret key"})
        if form.get("grant_type") != "refresh_token" \
                or form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": -14014, "error_name": "Invalid refresh token"})
        self.refreshes += 1
        self.refresh_token = secrets.token_hex(12)
        access = secrets.token_hex(16)
        self._tokens[access] = self.clock() + self.token_ttl_s
        return web.json_response({"access_token": access, "refresh_token": self.refresh_token,
                                  "expires_in": str(int(self.token_ttl_s))})

    def _answer(self, code: int, data: dict[str, Any] | None = None) -> web.Response:
        self.codes.append(code)
        payload: dict[str, Any] = {"error": code,
                                   "message": "Success" if code == 0 else f"error {code}"}
        if data is not None:
            payload["data"] = data
        return web.json_response(payload)

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault is not None and fault.kind == "status":
            return web.Response(status=fault.status)
        expires = self._tokens.get(request.headers.get("access_token", ""))
        if expires is None or self.clock() >= expires:
            return self._answer(-124)
        if fault is not None:
            return self._answer(fault.error)
        phone, template = str(body.get("phone", "")), str(body.get("template_id", ""))
        if not re.fullmatch(r"84\d{9}", phone):
            return self._answer(-108)
        if template in self.unapproved:
            return self._answer(-131)
        if template not in self.templates:
            return self._answer(-109)
        if phone in self.not_on_zalo:
            return self._answer(-118)
        tracking = str(body.get("tracking_id", ""))
        if tracking in self._msg_ids:
            self.duplicates += 1
        else:
            self._msg_ids[tracking] = secrets.token_hex(10)
            self.sent[tracking] = body
        return self._answer(0, {"msg_id": self._msg_ids[tracking],
                                "sent_time": str(int(self.clock() * 1000))})
