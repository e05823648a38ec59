"""Generic SMS HTTP gateway channel (brandname SMS providers and in-house gateways).

Configured, not coded: ``url``, ``method`` (POST or PUT), ``auth`` (``{ type = "basic",
username, password_file }``, ``{ type = "bearer", token_file }`` or ``{ type = "header", name,
value_file }``), ``body_format`` (``json`` or ``form``) and ``body``: a table whose strings may
hold the placeholders ``{phone}``, ``{text}`` and ``{message_id}`` (nothing else is expanded,
so a template cannot reach attributes or other data). ``phone_format`` says how the gateway
wants the number: ``84`` (``84xxxxxxxxx``, the default), ``+84`` or ``0`` (``0xxxxxxxxx``);
numbers that are not Vietnamese mobiles are parked "invalid phone".

The client reference is the message id: in the body (``{message_id}``) when the gateway has a
field for it, and always in the ``reference_header`` (default ``Idempotency-Key``), so a gateway
that dedups sends one SMS however often a message is retried.

Success: one of ``success_status`` (default any 2xx) and, when ``success_field`` is set (a
dotted path into the JSON answer), that field equal to one of ``success_values``; a value in
``retry_values`` retries, any other parks with the value. Other answers as for webhooks: 408
retry, 429/503 with Retry-After throttle, 5xx and timeouts :class:`TargetDown`, other 4xx parked.
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.channels import ChannelConfig, Message
from gateway.channels._base import (
    channel_settings,
    http_client,
    http_outcome,
    send,
    vietnamese_mobile,
)
from gateway.forwarders import DeliveryResult
from gateway.forwarders._common import Settings, deliver_each, short
from gateway.types import Clock

log = logging.getLogger("gateway.notify.sms")

SETTINGS = ("url", "method", "auth", "body_format", "body", "phone_format", "reference_header",
            "success_status", "success_field", "success_values", "retry_values", "id_field",
            "timeout_s", "parallel", "verify", "ca_file")
PLACEHOLDERS = ("phone", "text", "message_id")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PhoneFormat = Literal["84", "+84", "0"]


@dataclass(frozen=True)
class SmsSettings:
    url: str
    method: str
    auth_headers: Mapping[str, str] = field(repr=False)
    body_format: Literal["json", "form"]
    body: Mapping[str, Any]
    phone_format: PhoneFormat
    reference_header: str | None
    success_status: frozenset[int] | None  # None: any 2xx
    success_field: tuple[str, ...] | None
    success_values: frozenset[str]
    retry_values: frozenset[str]
    id_field: tuple[str, ...] | None
    timeout_s: float
    parallel: int
    verify: ssl.SSLContext | bool = field(repr=False)


def _auth(section: Settings) -> dict[str, str]:
    raw = section.table.get("auth")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise section.error("auth", 'must be a table like { type = "bearer", token_file = ... }')
    auth = section.sub("auth", raw)
    kind = auth.choice("type", ("basic", "bearer", "header"), "bearer")
    if kind == "basic":
        auth.check_known(("type", "username", "password_file"))
        user = auth.text("username")
        if ":" in user:
            raise auth.error("username", "must not contain ':'")
        pair = f"{user}:{auth.secret('password_file')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if kind == "bearer":
        auth.check_known(("type", "token_file"))
        return {"Authorization": f"Bearer {auth.secret('token_file')}"}
    auth.check_known(("type", "name", "value_file"))
    name = auth.text("name")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise auth.error("name", f"{name!r} is not an HTTP header name")
    return {name: auth.secret("value_file")}


def _check_template(section: Settings, key: str, value: Any) -> set[str]:
    """The placeholders used in ``value`` (nested tables and lists allowed); unknown ones are
    a config error."""
    used: set[str] = set()
    if isinstance(value, str):
        for name in _PLACEHOLDER.findall(value):
            if name not in PLACEHOLDERS:
                raise section.error(key, f"unknown placeholder {{{name}}} (use "
                                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
            used.add(name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            used |= _check_template(section, f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            used |= _check_template(section, f"{key}[{i}]", v)
    elif not isinstance(value, int | float | bool):
        raise section.error(key, "must be text, a number, true/false, a table or a list")
    return used


def _path(section: Settings, name: str) -> tuple[str, ...] | None:
    if name not in section.table:
        return None
    return tuple(section.text(name).split("."))


def _strings(section: Settings, name: str, default: Sequence[str]) -> frozenset[str]:
    raw = section.table.get(name, list(default))
    if not isinstance(raw, list) or not all(isinstance(v, str | int) and not isinstance(v, bool)
                                            for v in raw):
        raise section.error(name, "must be a list of values (text or numbers)")
    return frozenset(str(v) for v in raw)


def parse_settings(config: ChannelConfig, config_path: Path | None = None) -> SmsSettings:
    section = channel_settings(config, config_path)
    section.check_known(SETTINGS)
    body = section.table.get("body")
    if not isinstance(body, Mapping) or not body:
        raise section.error("body", 'must be a table like { to = "{phone}", '
                                    'message = "{text}", ref = "{message_id}" }')
    body_format = section.choice("body_format", ("json", "form"), "json")
    if body_format == "form" and any(isinstance(v, Mapping | list) for v in body.values()):
        raise section.error("body", "a form body holds only flat values")
    used = _check_template(section, "body", body)
    for needed in ("phone", "text"):
        if needed not in used:
            raise section.error("body", f"has no {{{needed}}} placeholder")
    statuses = section.table.get("success_status")
    if statuses is not None and (not isinstance(statuses, list) or not statuses or not all(
            isinstance(s, int) and not isinstance(s, bool) and 200 <= s < 300 for s in statuses)):
        raise section.error("success_status", "must be a list of 2xx status codes")
    success_field = _path(section, "success_field")
    if success_field is not None and "success_values" not in section.table:
        raise section.error("success_values", "is required with success_field")
    header = section.table.get("reference_header", "Idempotency-Key")
    if header not in ("", False) and (not isinstance(header, str)
                                      or not re.fullmatch(r"[A-Za-z0-9-]+", header)):
        raise section.error("reference_header", "must be an HTTP header name, or \"\" for none")
    phone_format = section.choice("phone_format", ("84", "+84", "0"), "84")
    return SmsSettings(
        url=section.url("url", what="parents' phone numbers"),
        method=section.choice("method", ("POST", "PUT"), "POST"),
        auth_headers=_auth(section),
        body_format="form" if body_format == "form" else "json",
        body=body,
        phone_format="+84" if phone_format == "+84" else "0" if phone_format == "0" else "84",
        reference_header=header or None,
        success_status=frozenset(statuses) if statuses is not None else None,
        success_field=success_field,
        success_values=_strings(section, "success_values", ()),
        retry_values=_strings(section, "retry_values", ()),
        id_field=_path(section, "id_field"),
        timeout_s=section.number("timeout_s", 0.1, 120.0, 15.0),
        parallel=section.integer("parallel", 1, 32, 4),
        verify=section.tls(),
    )


def build(config: ChannelConfig, *, clock: Clock, config_path: Path | None = None
          ) -> SmsChannel:
    """The channel for one ``[[notify.channel]]`` table of ``type = "sms"``."""
    return SmsChannel(config, parse_settings(config, config_path), clock=clock)


def _expand(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, Mapping):
        return {k: _expand(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, values) for v in value]
    return value


def _field(answer: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(answer, dict):
            return None
        answer = answer.get(part)
    return answer


class SmsChannel:
    def __init__(self, config: ChannelConfig, settings: SmsSettings, *, clock: Clock) -> None:
        self.name = config.name
        self.max_batch = config.max_batch
        self.concurrency = config.concurrency
        self.settings = settings
        self._clock = clock
        self._http = http_client(timeout_s=settings.timeout_s, verify=settings.verify,
                                 connections=settings.parallel * max(1, config.concurrency) + 1,
                                 headers={"Accept": "application/json", **settings.auth_headers})

    def __repr__(self) -> str:
        return f"SmsChannel(name={self.name!r}, url={self.settings.url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        return await deliver_each(self.name, messages, self.settings.parallel, self._one, log)

    def _phone(self, message: Message) -> str | None:
        phone = vietnamese_mobile(message.phone)
        if phone is None:
            return None
        if self.settings.phone_format == "+84":
            return "+" + phone
        if self.settings.phone_format == "0":
            return "0" + phone[2:]
        return phone

    async def _one(self, message: Message) -> DeliveryResult:
        settings = self.settings
        phone = self._phone(message)
        if phone is None:
            return DeliveryResult(message.item_id, "parked",
                                  reason="invalid phone (not a Vietnamese mobile number)")
        body = _expand(settings.body, {"phone": phone, "text": message.text,
                                       "message_id": message.message_id})
        headers = ({settings.reference_header: message.message_id}
                   if settings.reference_header else {})
        kwargs: dict[str, Any] = ({"json": body} if settings.body_format == "json"
                                  else {"data": {k: str(v) for k, v in body.items()}})
        response = await send(self._http, settings.method, settings.url, "the SMS gateway",
                              headers=headers, **kwargs)
        refused = http_outcome(message, response, "the SMS gateway", self._clock)
        if refused is not None:
            return refused
        if settings.success_status is not None \
                and response.status_code not in settings.success_status:
            return DeliveryResult(message.item_id, "parked", reason=(
                f"the SMS gateway answered {response.status_code}, not a success status"))
        answer: Any = None
        if settings.success_field is not None or settings.id_field is not None:
            try:
                answer = response.json()
            except ValueError:
                answer = None
        if settings.success_field is not None:
            value = _field(answer, settings.success_field)
            text = "" if value is None else str(value)
            label = ".".join(settings.success_field)
            if text in settings.retry_values:
                return DeliveryResult(message.item_id, "retry",
                                      reason=f"the SMS gateway answered {label}={short(text, 40)}")
            if text not in settings.success_values:
                return DeliveryResult(message.item_id, "parked", reason=(
                    f"the SMS gateway answered {label}={short(text, 40) or '(missing)'}"))
        upstream = _field(answer, settings.id_field) if settings.id_field else None
        return DeliveryResult(message.item_id, "delivered",
                              upstream_id=None if upstream is None else short(str(upstream), 100))
