"""Upstream targets of attendance events: the contract between the outbox and each adapter.

The outbox (``gateway/outbox.py``) owns durability, ordering, retries, backoff, Retry-After, the
circuit breaker, parking and the operator's view; an adapter (one module per upstream in this
package: ``edfi``, ``openemis``, ``relay``) only turns a batch of items into requests and says,
per item, what became of it. An adapter never sleeps to retry and never touches the database.

An item is one *version* of one attendance event: the outbox enqueues an item each time the
rules create, revise or void an event (``gateway.rules.EventChange``), in the same transaction.
``idempotency_key`` is stable across retries, crashes and restarts (``{event_key}.{revision}``),
so an upstream that dedups on it (or upserts on a natural key) never records an event twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

EventKind = Literal["check_in", "check_out", "late", "absent", "unknown_card"]
Outcome = Literal["delivered", "retry", "parked"]


@dataclass(frozen=True)
class AttendanceItem:
    """What an adapter gets: one version of one event, with the roster facts it needs."""

    item_id: int  # the outbox row
    idempotency_key: str  # "{event_key}.{revision}": stable per version
    event_key: str  # stable per event (gateway.rules.event_key)
    revision: int
    change: Literal["created", "revised", "voided"]
    kind: EventKind
    school_date: str  # ISO date, the school's calendar day
    session: str  # "morning", "afternoon", ... (config [[attendance.session]] names)
    at_ms: int  # the tap's authoritative time (Unix ms); the cut-off for "absent"
    gate: str | None
    student_id: str | None  # the Ministry student id; None for unknown_card
    class_id: str | None
    attempts: int  # delivery attempts made before this one
    upstream_id: str | None = None  # the upstream's id from this event's last delivered version


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one item. ``retry`` waits at least ``retry_after_s`` when given (a 429's or
    503's Retry-After); ``parked`` is permanent until an operator retries it (a 409 unresolved
    reference, a 400 the upstream will always refuse) and ``reason`` says why, for the CLI and
    the dashboard. No personal data in ``reason``: it is shown and logged."""

    item_id: int
    outcome: Outcome
    reason: str = ""
    retry_after_s: float | None = None
    upstream_id: str | None = None  # the upstream's own id or location, when it returns one


class TargetDown(Exception):
    """The whole target failed (connection refused, timeout, 5xx on login): every item of the
    batch is retried and the circuit breaker counts one failure."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Adapter(Protocol):
    """One upstream target. ``deliver`` returns one result per item, in any order."""

    name: str  # the target's name in the config ([[forward]] name), for metrics and the CLI
    max_batch: int  # items per ``deliver`` call
    concurrency: int  # ``deliver`` calls in flight at once

    async def deliver(self, items: Sequence[AttendanceItem]) -> list[DeliveryResult]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ForwardTarget:
    """One ``[[forward]]`` table of the gateway's config (parsed by ``gateway/config.py``).

    ``type`` names the adapter module (``gateway.forwarders.<type>``), whose
    ``build(target, *, clock) -> Adapter`` validates ``settings`` itself and raises
    ``gateway.config.ConfigError`` naming the key as ``forward.<name>.<key>``. Secrets are never
    inline: a setting ending in ``_file`` names a file (mode 600) that holds the secret.
    """

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    max_batch: int = 50
    concurrency: int = 2
    enabled: bool = True
