"""Webhook channel: each message is POSTed as JSON, signed per Standard Webhooks.

Headers: ``webhook-id`` (the message id: stable across retries, so a receiver dedups on it),
``webhook-timestamp`` (Unix seconds from the injected clock, at each attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the key
from a ``whsec_<base64>`` secret, one space-separated entry per secret while a secret is being
rotated (``secret_file`` plus ``extra_secret_files``).

The body is ``gateway.channels._base.message_payload``: type, message_id, kind, locale, text,
event (and template_id/template_data when set); the guardian's phone number only with
``include_phone = true`` (a receiver trusted to send the message on).

Answers: 2xx delivered; 408 retry; 429, and 503 with Retry-After, retry after that delay (the
rest of the batch waits); other 5xx, timeouts and refused connections: :class:`TargetDown`;
other 3xx/4xx parked with the status.

:func:`verify_webhook` is the receiver's side (sim/peers/webhook.py uses it; a school's own
receiver may too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.channels import ChannelConfig, Message
from gateway.channels._base import (
    channel_settings,
    http_client,
    http_outcome,
    json_bytes,
    message_payload,
    send,
)
from gateway.forwarders import DeliveryResult
from gateway.forwarders._common import Settings, deliver_each
from gateway.types import Clock

log = logging.getLogger("gateway.notify.webhook")

SETTINGS = ("url", "secret_file", "extra_secret_files", "include_phone", "timeout_s",
            "parallel", "verify", "ca_file")
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300  # the spec's recommended window either side of now
_KEY_MIN, _KEY_MAX = 24, 64  # secret sizes the spec allows, in bytes


class WebhookVerificationError(Exception):
    """A delivery that must be refused (answer 400/401, never retry with the same bytes).
    ``code``: missing_header, bad_timestamp, stale_timestamp, no_matching_signature,
    bad_secret."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is not {SECRET_PREFIX} followed by base64") from None
    if not _KEY_MIN <= len(key) <= _KEY_MAX:
        raise ValueError(f"must hold {_KEY_MIN} to {_KEY_MAX} bytes, not {len(key)}")
    return key


def sign(keys: Iterable[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys)


def verify_webhook(headers: Mapping[str, str], body: bytes, secrets: Sequence[str],
                   now: float, tolerance_s: float = TOLERANCE_S) -> str:
    """Check a Standard Webhooks delivery; returns its ``webhook-id``.

    ``headers`` (any case), the raw ``body`` bytes, the receiver's ``whsec_`` ``secrets`` (any
    may match: rotation), ``now`` in Unix seconds. Raises :class:`WebhookVerificationError`.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    values = []
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = lower.get(name, "").strip()
        if not value:
            raise WebhookVerificationError("missing_header", f"no {name} header")
        values.append(value)
    webhook_id, stamp, signature = values
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise WebhookVerificationError("bad_timestamp", "webhook-timestamp is not Unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            "stale_timestamp", f"webhook-timestamp is {now - timestamp:+.0f} s from now "
                               f"(tolerance {tolerance_s:g} s)")
    try:
        keys = [secret_key(secret) for secret in secrets]
    except ValueError as exc:
        raise WebhookVerificationError("bad_secret", f"a receiver's secret {exc}") from None
    expected = sign(keys, webhook_id, timestamp, body).split(" ") if keys else []
    offered = [entry for entry in signature.split(" ") if entry.startswith("v1,")]
    if not any(hmac.compare_digest(e.encode(), o.encode()) for e in expected for o in offered):
        raise WebhookVerificationError("no_matching_signature",
                                       "no v1 signature matches a secret")
    return webhook_id


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class WebhookSettings:
    url: str
    keys: tuple[bytes, ...] = field(repr=False)  # the current secret's first
    include_phone: bool
    timeout_s: float
    parallel: int
    verify: ssl.SSLContext | bool = field(repr=False)


def _key(section: Settings, name: str) -> bytes:
    try:
        return secret_key(section.secret(name))
    except ValueError as exc:
        raise section.error(name, f"the secret {exc}") from None


def parse_settings(config: ChannelConfig, config_path: Path | None = None) -> WebhookSettings:
    section = channel_settings(config, config_path)
    section.check_known(SETTINGS)
    keys = [_key(section, "secret_file")]
    extra = section.table.get("extra_secret_files", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
        raise section.error("extra_secret_files", "must be a list of secret file paths")
    for i, path in enumerate(extra):
        name = f"extra_secret_files[{i}]"
        keys.append(_key(Settings(section.path, section.prefix, {name: path}), name))
    return WebhookSettings(
        url=section.url("url", what="messages to parents"),
        keys=tuple(keys),
        include_phone=section.boolean("include_phone", False),
        timeout_s=section.number("timeout_s", 0.1, 120.0, 10.0),
        parallel=section.integer("parallel", 1, 32, 4),
        verify=section.tls(),
    )


def build(config: ChannelConfig, *, clock: Clock, config_path: Path | None = None
          ) -> WebhookChannel:
    """The channel for one ``[[notify.channel]]`` table of ``type = "webhook"``."""
    return WebhookChannel(config, parse_settings(config, config_path), clock=clock)


# --- the channel -----------------------------------------------------------------------------

class WebhookChannel:
    def __init__(self, config: ChannelConfig, settings: WebhookSettings, *, clock: Clock) -> None:
        self.name = config.name
        self.max_batch = config.max_batch
        self.concurrency = config.concurrency
        self.settings = settings
        self._clock = clock
        self._http = http_client(timeout_s=settings.timeout_s, verify=settings.verify,
                                 connections=settings.parallel * max(1, config.concurrency) + 1,
                                 headers={"Content-Type": "application/json"})

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r}, url={self.settings.url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        return await deliver_each(self.name, messages, self.settings.parallel, self._one, log)

    async def _one(self, message: Message) -> DeliveryResult:
        body = json_bytes(message_payload(message, include_phone=self.settings.include_phone))
        timestamp = self._clock() // 1000
        headers = {
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.settings.keys, message.message_id, timestamp, body),
        }
        response = await send(self._http, "POST", self.settings.url, "the webhook",
                              content=body, headers=headers)
        refused = http_outcome(message, response, "the webhook", self._clock)
        return refused or DeliveryResult(message.item_id, "delivered")
