"""Parent-notification channels: the contract between the notifier and each channel.

The notifier (``gateway/notify.py``) decides who gets which message (rules, consent, quiet
hours, caps), renders it once from its template, stores it for audit, and delivers it through
the same durable mechanism as the forwarders (retries with ``gateway/retry.py``, Retry-After,
breaker, parking, the operator's view). A channel (one module per kind in this package:
``webhook``, ``zalo``, ``sms``, ``command``) only sends a batch of stored messages and says, per
message, what became of it, with ``gateway.forwarders.DeliveryResult`` and ``TargetDown``.

``message_id`` is stable across retries, crashes and restarts (one per event and recipient: a
revised event never makes a second message), and goes to the channel as its idempotency or
tracking key (``webhook-id``, Zalo's
``tracking_id``, an SMS gateway's client reference), so a retry never sends a second message.
Names and phone numbers are personal data: channels never log them and never put them in a
``DeliveryResult.reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.forwarders import DeliveryResult

NotificationKind = Literal["check_in", "check_out", "late", "absent", "unknown_card"]


@dataclass(frozen=True)
class Message:
    """One rendered notification to one recipient, as stored by the notifier."""

    item_id: int  # the notifier's outbox row (DeliveryResult.item_id answers it)
    message_id: str  # stable per event and recipient (hashed); the channel's idempotency key
    kind: NotificationKind
    locale: Literal["vi", "en"]
    text: str  # rendered once, stored with the message for audit
    phone: str | None  # E.164 without "+", Vietnamese numbers as 84…; None for staff webhooks
    template_id: str | None  # a channel-side template (Zalo ZNS) when the channel uses one
    template_data: Mapping[str, str] = field(default_factory=dict)  # its parameters
    event: Mapping[str, Any] = field(default_factory=dict)  # the event as JSON-safe fields
    attempts: int = 0


@dataclass(frozen=True)
class ChannelConfig:
    """One ``[[notify.channel]]`` table: ``type`` names the module ``gateway.channels.<type>``,
    whose ``build(config, *, clock, config_path=None)`` validates ``settings`` and raises
    ``gateway.config.ConfigError`` naming ``notify.channel.<name>.<key>``. Secrets are never
    inline: a setting ending in ``_file`` names a file (mode 600) that holds the secret."""

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    max_batch: int = 20
    concurrency: int = 2
    enabled: bool = True


class Channel(Protocol):
    """One configured channel. ``deliver`` returns one result per message, in any order; a
    permanent refusal (an invalid phone number, a template the provider rejected) is
    ``parked`` with a reason free of personal data."""

    name: str
    max_batch: int
    concurrency: int

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]: ...

    async def close(self) -> None: ...
