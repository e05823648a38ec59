"""Zalo ZNS channel: template messages to the guardian's phone (docs/notifications.md,
"Channels").

One message is one ``POST {api_url}`` (default ``https://business.openapi.zalo.me/message/template``)
with header ``access_token`` and the JSON body ``{phone, template_id, template_data,
tracking_id}``: the phone as ``84xxxxxxxxx`` (anything that is not a Vietnamese mobile number
is parked "invalid phone" without a request), the template id from the message or from the
``template_ids`` setting (per kind), and ``tracking_id`` = the message id. Zalo answers HTTP 200
with ``{"error": 0, "data": {"msg_id": ...}}`` on success and a negative ``error`` otherwise.

The OA access token is refreshed with ``POST {token_url}`` (default
``https://oauth.zaloapp.com/v4/oa/access_token``), header ``secret_key`` (the app's secret key,
from ``secret_key_file``), form ``app_id``, ``refresh_token``, ``grant_type=refresh_token``. A
refresh token is single-use: the new one Zalo returns is written back to ``refresh_token_file``
(atomically, mode 600) before the new access token is used. The access token is refreshed
before ``expires_in`` runs out, and once when Zalo says it is invalid or expired; the message is
then sent once more.

Error codes (:data:`DEFAULT_CODES`, overridable per code with the ``error_codes`` setting):
refresh (token invalid or expired), park (invalid phone, no Zalo account, template rejected),
throttle (quota or rate: retry after ``quota_retry_s``); any other code: :class:`TargetDown`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from gateway.channels import ChannelConfig, Message
from gateway.channels._base import (
    channel_settings,
    check_overload,
    http_client,
    send,
    vietnamese_mobile,
)
from gateway.forwarders import DeliveryResult, TargetDown
from gateway.forwarders._common import Settings, Throttled, deliver_each, short
from gateway.types import Clock

log = logging.getLogger("gateway.notify.zalo")

API_URL = "https://business.openapi.zalo.me/message/template"
TOKEN_URL = "https://oauth.zaloapp.com/v4/oa/access_token"
SETTINGS = ("api_url", "token_url", "app_id", "secret_key_file", "refresh_token_file",
            "template_ids", "error_codes", "quota_retry_s", "development_mode", "timeout_s",
            "parallel", "verify", "ca_file")
REFRESH_MARGIN_MS = 300_000  # refresh this long before the token's expiry
Action = Literal["refresh", "park", "throttle", "down"]
ACTIONS: tuple[Action, ...] = ("refresh", "park", "throttle", "down")

# Zalo ZNS error codes -> what to do, with Zalo's own name for the parked reason. Confirmed
# against Zalo's published ZNS error table (zalo.cloud, "Cách xử lý mã lỗi") for -100 to -112;
# the codes past -112 are from the same table as remembered, not re-read: docs/notifications.md
# says so, and ``error_codes`` in the settings corrects any of them without a release.
DEFAULT_CODES: Mapping[int, tuple[Action, str]] = {
    -108: ("park", "invalid phone (Zalo -108 phone number invalid)"),
    -109: ("park", "template rejected (Zalo -109 template ID invalid)"),
    -110: ("park", "recipient's Zalo app too old (Zalo -110)"),
    -111: ("park", "template rejected (Zalo -111 template data empty)"),
    -112: ("park", "template rejected (Zalo -112 template data invalid)"),
    -114: ("park", "recipient inactive or refuses ZNS (Zalo -114)"),
    -115: ("throttle", "out of ZNS quota or balance (Zalo -115)"),
    -117: ("park", "template rejected (Zalo -117 no permission for this template)"),
    -118: ("park", "phone not on Zalo (Zalo -118 account does not exist)"),
    -119: ("park", "phone cannot receive ZNS (Zalo -119)"),
    -124: ("refresh", "access token invalid or expired (Zalo -124)"),
    -131: ("park", "template rejected (Zalo -131 template not approved)"),
    -144: ("throttle", "daily ZNS quota used up (Zalo -144)"),
    -32: ("throttle", "request rate limit (Zalo -32)"),
}


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZaloSettings:
    api_url: str
    token_url: str
    app_id: str
    secret_key: str = field(repr=False)
    refresh_token_file: Path
    template_ids: Mapping[str, str]
    codes: Mapping[int, tuple[Action, str]]
    quota_retry_s: float
    development_mode: bool
    timeout_s: float
    parallel: int
    verify: ssl.SSLContext | bool = field(repr=False)


def _template_ids(section: Settings) -> dict[str, str]:
    raw = section.table.get("template_ids", {})
    kinds = ("check_in", "check_out", "late", "absent", "unknown_card")
    if not isinstance(raw, Mapping):
        raise section.error("template_ids", 'must be a table like { late = "231133" }')
    out = {}
    for kind, value in raw.items():
        key = f"template_ids.{kind}"
        if kind not in kinds:
            raise section.error(key, f"is not one of {', '.join(kinds)}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise section.error(key, "must be a ZNS template id")
        out[kind] = value.strip()
    return out


def _codes(section: Settings) -> dict[int, tuple[Action, str]]:
    raw = section.table.get("error_codes", {})
    if not isinstance(raw, Mapping):
        raise section.error("error_codes", 'must be a table like { "-144" = "throttle" }')
    out = dict(DEFAULT_CODES)
    for code, action in raw.items():
        key = f"error_codes.{code}"
        try:
            number = int(code)
        except ValueError:
            raise section.error(key, "is not a Zalo error code like \"-124\"") from None
        if action not in ACTIONS:
            raise section.error(key, f"must be one of {', '.join(ACTIONS)}, not {action!r}")
        out[number] = (action, f"Zalo error {number} ({action} by error_codes)")
    return out


def parse_settings(config: ChannelConfig, config_path: Path | None = None) -> ZaloSettings:
    section = channel_settings(config, config_path)
    section.check_known(SETTINGS)
    refresh_file = section.file("refresh_token_file")
    section.secret("refresh_token_file")  # readable, one line, mode 600
    if not os.access(refresh_file.parent, os.W_OK):
        raise section.error("refresh_token_file", f"{refresh_file.parent} is not writable: "
                            "each refresh writes the new refresh token there")
    raw_id = section.table.get("app_id")
    app_id = str(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) \
        else section.text("app_id")
    if not app_id.isdigit():
        raise section.error("app_id", "must be the Zalo app's numeric id")
    return ZaloSettings(
        api_url=section.url("api_url", API_URL, what="parents' phone numbers"),
        token_url=section.url("token_url", TOKEN_URL, what="the app's secret key"),
        app_id=app_id,
        secret_key=section.secret("secret_key_file"),
        refresh_token_file=refresh_file,
        template_ids=_template_ids(section),
        codes=_codes(section),
        quota_retry_s=section.number("quota_retry_s", 1.0, 86_400.0, 900.0),
        development_mode=section.boolean("development_mode", False),
        timeout_s=section.number("timeout_s", 0.1, 120.0, 15.0),
        parallel=section.integer("parallel", 1, 32, 4),
        verify=section.tls(),
    )


def build(config: ChannelConfig, *, clock: Clock, config_path: Path | None = None
          ) -> ZaloChannel:
    """The channel for one ``[[notify.channel]]`` table of ``type = "zalo"``."""
    return ZaloChannel(config, parse_settings(config, config_path), clock=clock)


# --- the channel -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    refresh_at_ms: int


class ZaloChannel:
    def __init__(self, config: ChannelConfig, settings: ZaloSettings, *, clock: Clock) -> None:
        self.name = config.name
        self.max_batch = config.max_batch
        self.concurrency = config.concurrency
        self.settings = settings
        self._clock = clock
        self._http = http_client(timeout_s=settings.timeout_s, verify=settings.verify,
                                 connections=settings.parallel * max(1, config.concurrency) + 1,
                                 headers={"Accept": "application/json"})
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self.tokens_refreshed = 0  # for metrics and tests

    def __repr__(self) -> str:
        return f"ZaloChannel(name={self.name!r}, api_url={self.settings.api_url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        return await deliver_each(self.name, messages, self.settings.parallel, self._one, log)

    async def _one(self, message: Message) -> DeliveryResult:
        phone = vietnamese_mobile(message.phone)
        if phone is None:
            return DeliveryResult(message.item_id, "parked",
                                  reason="invalid phone (not a Vietnamese mobile number)")
        template_id = message.template_id or self.settings.template_ids.get(message.kind)
        if template_id is None:
            return DeliveryResult(message.item_id, "parked", reason=(
                f"no ZNS template for {message.kind} "
                f"(notify.channel.{self.name}.template_ids)"))
        body: dict[str, Any] = {"phone": phone, "template_id": template_id,
                                "template_data": dict(message.template_data),
                                "tracking_id": message.message_id}
        if self.settings.development_mode:
            body["mode"] = "development"
        token = await self._access_token(stale=None)
        for attempt in (1, 2):
            code, answer = await self._post(token, body)
            if code == 0:
                data = answer.get("data")
                msg_id = data.get("msg_id") if isinstance(data, dict) else None
                return DeliveryResult(message.item_id, "delivered",
                                      upstream_id=str(msg_id) if msg_id is not None else None)
            action, reason = self.settings.codes.get(code, ("down", f"Zalo error {code}"))
            if action == "refresh" and attempt == 1:
                token = await self._access_token(stale=token)
                continue
            if action == "park":
                return DeliveryResult(message.item_id, "parked", reason=reason)
            if action == "throttle":
                raise Throttled(reason, self.settings.quota_retry_s)
            detail = short(str(answer.get("message") or ""), 80)
            raise TargetDown(f"{reason}{': ' + detail if detail else ''}")
        raise AssertionError("unreachable")

    async def _post(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await send(self._http, "POST", self.settings.api_url, "Zalo ZNS",
                              json=body, headers={"access_token": token})
        check_overload(response, "Zalo ZNS", self._clock)
        answer = _json(response)
        code = answer.get("error") if answer is not None else None
        if response.status_code != 200 or answer is None or not isinstance(code, int) \
                or isinstance(code, bool):
            raise TargetDown(f"Zalo ZNS answered {response.status_code} without an error code")
        return code, answer

    # --- the access token ----------------------------------------------------------------------

    async def _access_token(self, *, stale: str | None) -> str:
        token = self._token
        if token is not None and token.value != stale and self._clock() < token.refresh_at_ms:
            return token.value
        async with self._token_lock:
            token = self._token
            if token is not None and token.value != stale \
                    and self._clock() < token.refresh_at_ms:
                return token.value
            self._token = await self._refresh()
            return self._token.value

    async def _refresh(self) -> _Token:
        settings = self.settings
        refresh_token = _read_refresh_token(settings.refresh_token_file)
        response = await send(
            self._http, "POST", settings.token_url, "the Zalo token refresh",
            headers={"secret_key": settings.secret_key},
            data={"app_id": settings.app_id, "refresh_token": refresh_token,
                  "grant_type": "refresh_token"})
        check_overload(response, "the Zalo token refresh", self._clock)
        answer = _json(response) or {}
        access, renewed = answer.get("access_token"), answer.get("refresh_token")
        if response.status_code != 200 or not isinstance(access, str) or not access \
                or not isinstance(renewed, str) or not renewed:
            code = answer.get("error")
            name = short(str(answer.get("error_name") or answer.get("message") or ""), 80)
            raise TargetDown(
                f"Zalo refused the token refresh ({response.status_code}, error {code} {name}); "
                f"if the refresh token expired, authorise the OA again and put the new refresh "
                f"token in notify.channel.{self.name}.refresh_token_file")
        try:
            _write_refresh_token(settings.refresh_token_file, renewed)
        except OSError as exc:
            # The old refresh token is spent: without the new one on disk a restart cannot
            # refresh. Keep going on this one, loudly.
            log.error("cannot save the new Zalo refresh token",
                      extra={"channel": self.name, "reason": exc.strerror})
        try:
            expires_s = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_s = 3600.0
        if not 0 < expires_s < 1e9:  # NaN, infinity, nonsense: the documented default
            expires_s = 3600.0
        self.tokens_refreshed += 1
        log.info("Zalo access token refreshed", extra={"channel": self.name})
        lifetime_ms = int(expires_s * 1000)
        return _Token(access, self._clock() + max(lifetime_ms // 2,
                                                  lifetime_ms - REFRESH_MARGIN_MS))


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read_refresh_token(path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TargetDown(f"cannot read the Zalo refresh token file: {exc.strerror}") from None
    if not value:
        raise TargetDown("the Zalo refresh token file is empty")
    return value


def _write_refresh_token(path: Path, value: str) -> None:
    """Replace the file atomically (a crash leaves the old or the new token, never half), mode
    600, durable before the new access token is used."""
    fd, tmp = tempfile.mkstemp(prefix=".zalo-refresh-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
