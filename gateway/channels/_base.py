"""What the parent-notification channels share: their settings' reader (errors name
``notify.channel.<name>.<key>``), the message as JSON, Vietnamese mobile numbers, and HTTP's
answers mapped onto the delivery contract. Used by ``webhook``, ``zalo``, ``sms`` and ``command``.

Everything generic (typed settings, secret files, Retry-After, sending one item at a time)
comes from ``gateway.forwarders._common``: one implementation per idea.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from gateway.channels import ChannelConfig, Message
from gateway.forwarders import DeliveryResult, TargetDown
from gateway.forwarders._common import Settings, Throttled, fetch, retry_after_s, short
from gateway.types import Clock

# Vietnamese mobile numbers since the 2018 renumbering: 84 + 3/5/7/8/9 + eight digits.
_VN_MOBILE = re.compile(r"84[35789]\d{8}")
_SEPARATORS = re.compile(r"[\s.\-()]")


def channel_settings(config: ChannelConfig, config_path: Path | None) -> Settings:
    return Settings(config_path or Path("<config>"), f"notify.channel.{config.name}",
                    config.settings)


def vietnamese_mobile(phone: str | None) -> str | None:
    """``phone`` as ``84xxxxxxxxx`` when it is a Vietnamese mobile number (``84…``, ``+84…``,
    ``0…``, with spaces, dots or dashes), else None."""
    if phone is None:
        return None
    digits = _SEPARATORS.sub("", phone).removeprefix("+")
    if digits.startswith("0") and len(digits) == 10:
        digits = "84" + digits[1:]
    return digits if _VN_MOBILE.fullmatch(digits) else None


def message_payload(message: Message, *, include_phone: bool) -> dict[str, Any]:
    """The message as the JSON a webhook receiver or a command hook gets."""
    payload: dict[str, Any] = {
        "type": f"attendance.{message.kind}",
        "message_id": message.message_id,
        "kind": message.kind,
        "locale": message.locale,
        "text": message.text,
        "event": dict(message.event),
    }
    if message.template_id is not None:
        payload["template_id"] = message.template_id
        payload["template_data"] = dict(message.template_data)
    if include_phone and message.phone is not None:
        payload["phone"] = message.phone
    return payload


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def http_client(*, timeout_s: float, verify: ssl.SSLContext | bool, connections: int,
                headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    # httpx logs request lines at INFO; a URL can carry a query with a phone number (an SMS
    # gateway's GET): keep that logger to warnings, as the forwarders do.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s), verify=verify, follow_redirects=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": "school-attendance-gateway", **(headers or {})})


async def send(client: httpx.AsyncClient, method: str, url: str, what: str,
               **kwargs: Any) -> httpx.Response:
    """One request, its answer read up to ``MAX_ANSWER_BYTES`` (``fetch``); unreachable, timed
    out or an answer too large -> :class:`TargetDown` (never the URL's query or the body in the
    reason)."""
    try:
        return await fetch(client, method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TargetDown(f"{what} timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TargetDown(f"{what} failed: {type(exc).__name__}") from None


def check_overload(response: httpx.Response, what: str, clock: Clock) -> None:
    """429, and 503 with Retry-After -> :class:`Throttled` (this message and the rest of the
    batch wait); other 5xx -> :class:`TargetDown`."""
    status = response.status_code
    if status == 429 or (status == 503 and "retry-after" in response.headers):
        raise Throttled(f"{what} asked to slow down ({status})",
                        retry_after_s(response.headers.get("retry-after"), clock()))
    if status >= 500:
        raise TargetDown(f"{what} answered {status}")


def http_outcome(message: Message, response: httpx.Response, what: str,
                 clock: Clock) -> DeliveryResult | None:
    """The outcome an HTTP status decides on its own: None for 2xx (the caller looks closer),
    408 retry, other 3xx/4xx parked with the status, overload as :func:`check_overload`."""
    check_overload(response, what, clock)
    status = response.status_code
    if 200 <= status < 300:
        return None
    if status == 408:
        return DeliveryResult(message.item_id, "retry", reason=f"{what} answered 408 timeout")
    phrase = short(response.reason_phrase, 60)
    return DeliveryResult(message.item_id, "parked",
                          reason=f"{what} refused it ({status} {phrase})")


