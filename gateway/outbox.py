"""The durable outbox of each upstream target: enqueue with the event, deliver, retry, park.

One module for the concern; the tables are ``outbox`` and ``outbox_targets``
(``gateway/migrations/0008_outbox.sql``), the adapters live in ``gateway/forwarders/`` and meet
the outbox at the contract of ``gateway/forwarders/__init__.py``. docs/gateway.md "Outbox".

**Enqueue in the event's transaction.** :class:`Enqueuer` is an attendance-rules listener
(``gateway.rules.EventListener``): for every created, revised or voided event it inserts one row
per enabled target in the transaction that changed the event (the ingest's), so an event never
exists without its outbox rows and a rolled-back event leaves none. The idempotency key is
``{event_key}.{revision}``: the same on every attempt, after a crash and after a restart, so an
upstream that dedups on it (or upserts on a natural key) never records a version twice.

**Delivery runs outside the ingest.** One :class:`TargetDelivery` per target on the gateway's
event loop picks due items (a read connection of its own), hands them to ``adapter.deliver`` in
batches of ``adapter.max_batch`` with at most ``adapter.concurrency`` batches in flight, and
records what became of each item through the ingest's writer thread
(:meth:`gateway.ingest.Ingest.run_in_transaction`), the database's only writer. Notification
work therefore never delays ingest or acks: the only outbox work in an ingest transaction is the
INSERT.

- ``delivered``: done (kept for audit; pruned after ``retention_ms``).
- ``retry``: ``attempts + 1``, next attempt after the capped exponential backoff of
  ``gateway/retry.py`` (with jitter) and at least the Retry-After the upstream gave; a
  Retry-After also holds the whole target that long (a 429 is about us, not one item).
- ``parked``: kept with the upstream's reason until an operator retries it
  (``attendance-gateway outbox retry``).
- ``TargetDown``, any exception from the adapter or no answer within ``deliver_timeout_s``:
  every item of the batch is retried as above and the circuit breaker counts a failure.

**Circuit breaker per target.** Closed: batches flow. After ``breaker_failures`` consecutive
whole-batch failures it opens: nothing is sent for a cool-down (``gateway/retry.py`` backoff from
``breaker_cooldown_s`` up to ``breaker_cooldown_cap_s``). Then half-open: one probe batch of at
most ``probe_batch`` items; if the adapter answers (whatever each item's outcome) the breaker
closes, and the items still waiting out the backoff of failed probes are due at once; otherwise it
opens again for a longer cool-down. Its state is kept in ``outbox_targets`` for the CLI and
survives restarts. An operator who knows the target is back cuts the cool-down short with
``outbox probe`` (:func:`request_probe`): it moves the stored probe time of the open breaker to
now, and the running loop, which reads the targets table every ``poll_s``, adopts it.

**Timings.** :class:`OutboxPolicy`; the deployed values come from the ``[outbox]`` table
(``gateway.config.OutboxConfig``, :func:`policy_from_config`), for forwarding targets and
notification channels alike.

**Order and coalescing.** Items are picked by event, then revision, and never while another item
of the same event is in flight. Only an event's *current* version is sent: a pending item whose
event has been revised since is ``superseded`` (kept for audit, not sent) and the newest version
goes instead; a parked item is superseded as soon as a newer version of its event is delivered
or parked. So an upstream never receives an older version after a newer one, and a backlog of
revisions costs one request. An adapter sees ``change`` of the version it gets: after
coalescing a ``revised`` may reach an upstream that never saw the ``created``, so adapters treat
``created`` and ``revised`` alike (an upsert) and ``voided`` as "remove if present". The item's
facts are read at delivery time from ``attendance_events`` (which holds the current version) and
``students`` (the class now: a roster fix is picked up by an operator's retry).

**Pause, retry, probe, stop.** ``outbox pause``/``resume``/``retry``/``probe`` (another
process) change the tables; the running gateway polls them every ``poll_s``. A graceful stop
waits up to ``stop_timeout_s`` for batches in flight and records their results; what is still
in flight then stays pending and goes again after the restart under the same idempotency key,
like after a kill -9: nothing is lost, and the upstream dedups what it had already received
(invariants 3 and 4).

Logs and parked reasons carry item ids, event keys (hashes), kinds and the upstream's words;
never names, phones or card numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import math
import random
import sqlite3
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from gateway import forwarders
from gateway.config import ConfigError, OutboxConfig, forward_types
from gateway.db import atomic
from gateway.forwarders import Adapter, AttendanceItem, DeliveryResult, ForwardTarget, TargetDown
from gateway.metrics import DeliveryCounters, GatewayMetrics, OutboxSeen
from gateway.retry import Backoff
from gateway.rules import EventChange
from gateway.types import Clock, TransactionRunner, system_clock

log = logging.getLogger("gateway.outbox")

ItemState = Literal["pending", "delivered", "parked", "superseded"]
BreakerState = Literal["closed", "open", "half_open"]
ErrorCode = Literal["unknown_target", "not_parked", "bad_value", "not_open"]
ITEM_STATES: tuple[ItemState, ...] = ("pending", "delivered", "parked", "superseded")
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
REASON_MAX = 500  # characters of an upstream's reason kept (parked_reason, last_error)
RETRY_AFTER_MAX_S = 86_400.0  # a longer Retry-After is taken as a day
PRUNE_EVERY_S = 3600.0
_T = TypeVar("_T")


class QueuedItem(Protocol):
    """What the delivery loop needs of an item, whatever its queue: forwarding's
    ``AttendanceItem``, the notifier's ``gateway.channels.Message``."""

    @property
    def item_id(self) -> int: ...

    @property
    def attempts(self) -> int: ...


_I = TypeVar("_I", bound=QueuedItem)
_I_contra = TypeVar("_I_contra", bound=QueuedItem, contravariant=True)


class Sender(Protocol[_I_contra]):
    """Who delivers a queue's items: a forwarding ``Adapter`` or a notification ``Channel``."""

    name: str
    max_batch: int
    concurrency: int

    async def deliver(self, items: Sequence[_I_contra]) -> list[DeliveryResult]: ...

    async def close(self) -> None: ...


class OutboxError(Exception):
    """An operator's request that was refused; ``code`` says why (the CLI translates it)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OutboxPolicy:
    """Timing of delivery; tests shrink it."""

    poll_s: float = 1.0  # look for due items, pause and retries this often when idle
    retry_initial_s: float = 5.0  # an item's first retry; doubles per attempt (gateway/retry.py)
    retry_cap_s: float = 600.0  # ... up to this
    jitter: float = 0.2
    breaker_failures: int = 5  # consecutive whole-batch failures that open the breaker
    breaker_cooldown_s: float = 30.0  # open this long before the first probe ...
    breaker_cooldown_cap_s: float = 600.0  # ... doubling per failed probe up to this
    probe_batch: int = 1  # items in a half-open probe
    stop_timeout_s: float = 10.0  # a graceful stop waits this long for batches in flight
    deliver_timeout_s: float = 300.0  # a deliver call without an answer by then: target failure
    status_every_s: float = 5.0  # refresh of the metrics' snapshot
    db_error_hold_s: float = 5.0  # after a failed read or write, wait this long
    retention_ms: int = 90 * 86_400_000  # delivered and superseded rows older than this go


DEFAULT_POLICY = OutboxPolicy()


def policy_from_config(config: OutboxConfig, base: OutboxPolicy = DEFAULT_POLICY
                       ) -> OutboxPolicy:
    """``base`` with the timings of the ``[outbox]`` table (gateway/config.py)."""
    return dataclasses.replace(
        base, poll_s=config.poll_s, retry_initial_s=config.retry_initial_s,
        retry_cap_s=config.retry_cap_s, breaker_failures=config.breaker_failures,
        breaker_cooldown_s=config.breaker_cooldown_s,
        breaker_cooldown_cap_s=config.breaker_cooldown_cap_s)


def idempotency_key(event_key: str, revision: int) -> str:
    """The key one version of one event is delivered under (gateway/forwarders/__init__.py)."""
    return f"{event_key}.{revision}"


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 1] + "…"


# -- enqueue (inside the rules' transaction) ---------------------------------------------------

_ENQUEUE = (
    "INSERT INTO outbox (target, event_id, event_key, revision, change, idempotency_key, "
    "next_attempt_ms, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (target, idempotency_key) DO NOTHING")


def enqueue(conn: sqlite3.Connection, change: EventChange, targets: Sequence[str],
            now_ms: int) -> None:
    """One pending item per target for ``change``; call inside the transaction that made it.
    A version already enqueued for a target is left as it is."""
    key = idempotency_key(change.event_key, change.revision)
    conn.executemany(_ENQUEUE, [
        (target, change.event_id, change.event_key, change.revision, change.change, key, now_ms,
         now_ms, now_ms) for target in targets])


class Enqueuer:
    """The attendance rules' listener (``gateway.rules.EventListener``) for the enabled targets."""

    def __init__(self, targets: Sequence[str], clock: Clock = system_clock) -> None:
        self.targets = tuple(targets)
        self._clock = clock

    def __call__(self, conn: sqlite3.Connection, change: EventChange) -> None:
        if self.targets:
            enqueue(conn, change, self.targets, self._clock())


# -- picking due items (the read connection) ---------------------------------------------------

_PICK = (
    "SELECT o.item_id, o.event_id, o.event_key, o.revision, o.change, o.idempotency_key, "
    "o.attempts, e.revision, e.kind, e.school_date, e.session, e.at_ms, e.gate, e.student_id, "
    "st.class_id, (SELECT d.upstream_id FROM outbox d WHERE d.target = o.target "
    # the event's versions by the prefix of their idempotency keys ("{event_key}.{revision}"),
    # so that the unique (target, idempotency_key) index finds them: by event_id alone it
    # would read every row of the target, for each item picked
    "AND d.idempotency_key >= o.event_key || '.' AND d.idempotency_key < o.event_key || '/' "
    "AND d.event_id = o.event_id AND d.state = 'delivered' AND d.upstream_id IS NOT NULL "
    "ORDER BY d.revision DESC LIMIT 1) "
    "FROM outbox o JOIN attendance_events e ON e.event_id = o.event_id "
    "LEFT JOIN students st ON st.student_id = e.student_id "
    "WHERE o.target = ? AND o.state = 'pending' AND o.next_attempt_ms <= ? {exclude}"
    "ORDER BY o.event_id, o.revision LIMIT ?")


@dataclass(frozen=True)
class Picked(Generic[_I]):
    """Due items to send, in order, and due items older than their event's current version
    (or, in another queue, no longer to be sent: the store's ``supersede`` settles them)."""

    items: list[_I] = field(default_factory=list)
    events: dict[int, int] = field(default_factory=dict)  # item id -> event id, of ``items``
    stale: list[int] = field(default_factory=list)  # item ids to supersede


def pick(conn: sqlite3.Connection, target: str, now_ms: int, limit: int, *,
         exclude_items: Sequence[int] = (), exclude_events: Sequence[int] = ()
         ) -> Picked[AttendanceItem]:
    """Up to ``limit`` due pending items of ``target``, by event then revision, leaving out the
    items and the events already in flight."""
    exclude = ""
    args: list[object] = [target, now_ms]
    if exclude_items:
        exclude += f"AND o.item_id NOT IN ({','.join('?' * len(exclude_items))}) "
        args.extend(exclude_items)
    if exclude_events:
        exclude += f"AND o.event_id NOT IN ({','.join('?' * len(exclude_events))}) "
        args.extend(exclude_events)
    args.append(limit)
    out: Picked[AttendanceItem] = Picked()
    for r in conn.execute(_PICK.format(exclude=exclude), args):
        if int(r[3]) < int(r[7]):
            out.stale.append(int(r[0]))
            continue
        out.events[int(r[0])] = int(r[1])
        out.items.append(AttendanceItem(
            item_id=int(r[0]), idempotency_key=str(r[5]), event_key=str(r[2]),
            revision=int(r[3]), change=r[4], kind=r[8], school_date=str(r[9]),
            session=str(r[10]), at_ms=int(r[11]), gate=r[12], student_id=r[13],
            class_id=r[14], attempts=int(r[6]), upstream_id=r[15]))
    return out


def supersede(conn: sqlite3.Connection, target: str, item_ids: Sequence[int],
              now_ms: int) -> int:
    """Mark pending items older than their event's current version ``superseded`` and make
    sure the current version is enqueued for ``target`` (it is, unless the target was disabled
    when the event last changed). Returns how many were superseded."""
    done = 0
    with atomic(conn, "outbox"):
        for item_id in item_ids:
            row = conn.execute(
                "UPDATE outbox SET state = 'superseded', updated_ms = ? WHERE item_id = ? "
                "AND target = ? AND state = 'pending' RETURNING event_id",
                (now_ms, item_id, target)).fetchone()
            if row is None:
                continue
            done += 1
            conn.execute(
                "INSERT INTO outbox (target, event_id, event_key, revision, change, "
                "idempotency_key, next_attempt_ms, created_ms, updated_ms) "
                "SELECT ?, e.event_id, e.event_key, e.revision, CASE "
                "WHEN e.voided_ms IS NOT NULL THEN 'voided' WHEN e.revision = 0 THEN 'created' "
                "ELSE 'revised' END, e.event_key || '.' || e.revision, ?, ?, ? "
                "FROM attendance_events e WHERE e.event_id = ? "
                "ON CONFLICT (target, idempotency_key) DO NOTHING",
                (target, now_ms, now_ms, now_ms, int(row[0])))
    return done


# -- recording what became of a batch (the writer) ---------------------------------------------

@dataclass(frozen=True)
class Settled(Generic[_I]):
    """What to write for one item of a batch."""

    item: _I
    outcome: Literal["delivered", "retry", "parked"]
    reason: str | None = None
    next_attempt_ms: int | None = None  # retry
    upstream_id: str | None = None  # delivered


@dataclass(frozen=True)
class BreakerRow:
    """A target's circuit breaker as stored in ``outbox_targets``."""

    state: BreakerState = "closed"
    failures: int = 0
    opened_ms: int | None = None
    probe_ms: int | None = None
    last_error: str | None = None
    failure_ms: int | None = None
    success_ms: int | None = None


@dataclass
class Recorded(Generic[_I]):
    """What :func:`record` changed (rows still pending when it ran)."""

    delivered: list[Settled[_I]] = field(default_factory=list)
    retried: list[Settled[_I]] = field(default_factory=list)
    parked: list[Settled[_I]] = field(default_factory=list)
    superseded: int = 0  # parked older versions of the events delivered or parked now


def record_outcome(conn: sqlite3.Connection, items: str, s: Settled[Any], now_ms: int,
                   out: Recorded[Any]) -> bool:
    """Write one item's outcome into the queue table ``items`` (``outbox``, ``notify_messages``)
    if it is still pending, and file it in ``out``; False when it was not pending."""
    if s.outcome == "delivered":
        changed = conn.execute(
            f"UPDATE {items} SET state = 'delivered', attempts = attempts + 1, "
            "delivered_ms = ?, updated_ms = ?, upstream_id = ?, last_error = NULL "
            "WHERE item_id = ? AND state = 'pending'",
            (now_ms, now_ms, _clip(s.upstream_id), s.item.item_id)).rowcount
        bucket = out.delivered
    elif s.outcome == "parked":
        changed = conn.execute(
            f"UPDATE {items} SET state = 'parked', attempts = attempts + 1, "
            "parked_reason = ?, last_error = ?, updated_ms = ? "
            "WHERE item_id = ? AND state = 'pending'",
            (_clip(s.reason), _clip(s.reason), now_ms, s.item.item_id)).rowcount
        bucket = out.parked
    else:
        changed = conn.execute(
            f"UPDATE {items} SET attempts = attempts + 1, next_attempt_ms = ?, "
            "last_error = ?, updated_ms = ? WHERE item_id = ? AND state = 'pending'",
            (s.next_attempt_ms, _clip(s.reason), now_ms, s.item.item_id)).rowcount
        bucket = out.retried
    if changed != 1:
        return False
    bucket.append(s)
    return True


def record(conn: sqlite3.Connection, target: str, settled: Sequence[Settled[AttendanceItem]],
           now_ms: int, breaker: BreakerRow | None = None) -> Recorded[AttendanceItem]:
    """Write a batch's outcomes (and the target's breaker, when given) in one transaction. Only
    pending rows change: an item settled meanwhile (it cannot be, while in flight) is left."""
    out: Recorded[AttendanceItem] = Recorded()
    with atomic(conn, "outbox"):
        for s in settled:
            if not record_outcome(conn, "outbox", s, now_ms, out):
                continue
            if s.outcome != "retry" and s.item.revision > 0:
                superseded = conn.execute(
                    "UPDATE outbox SET state = 'superseded', updated_ms = ? WHERE target = ? "
                    "AND event_id = (SELECT event_id FROM outbox WHERE item_id = ?) "
                    "AND state = 'parked' AND revision < ?",
                    (now_ms, target, s.item.item_id, s.item.revision)).rowcount
                out.superseded += superseded
        if breaker is not None:
            save_breaker_after_batch(conn, target, breaker, now_ms, settled)
    return out


def save_breaker(conn: sqlite3.Connection, target: str, b: BreakerRow, now_ms: int, *,
                 table: str = "outbox_targets") -> None:
    """Store a target's breaker in ``table`` (``outbox_targets``, or another queue's table of
    the same shape, e.g. ``notify_channels``)."""
    conn.execute(
        f"INSERT INTO {table} (target, breaker, breaker_opened_ms, breaker_probe_ms, "
        "consecutive_failures, last_error, last_failure_ms, last_success_ms, updated_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target) DO UPDATE SET "
        "breaker = excluded.breaker, breaker_opened_ms = excluded.breaker_opened_ms, "
        "breaker_probe_ms = excluded.breaker_probe_ms, "
        "consecutive_failures = excluded.consecutive_failures, last_error = excluded.last_error, "
        "last_failure_ms = excluded.last_failure_ms, last_success_ms = excluded.last_success_ms, "
        "updated_ms = excluded.updated_ms",
        (target, b.state, b.opened_ms, b.probe_ms, b.failures, _clip(b.last_error),
         b.failure_ms, b.success_ms, now_ms))


def save_breaker_after_batch(conn: sqlite3.Connection, target: str, breaker: BreakerRow,
                             now_ms: int, settled: Sequence[Settled[Any]], *,
                             table: str = "outbox_targets", items: str = "outbox",
                             column: str = "target") -> int:
    """Store the breaker a batch left; when that closed it (the probe answered: the target is
    back), make the target's items still waiting out the backoff of the failed probes due now,
    not up to ``retry_cap_s`` later; the batch just settled keeps what it was told. Only items
    tried before: one never tried waits for a reason of its own (a notification held for the
    end of quiet hours). Returns how many items were released. ``items``/``column``: the
    queue's table and its target column."""
    was = conn.execute(f"SELECT breaker FROM {table} WHERE target = ?", (target,)).fetchone()
    save_breaker(conn, target, breaker, now_ms, table=table)
    if breaker.state != "closed" or was is None or was[0] == "closed":
        return 0
    batch = [s.item.item_id for s in settled]
    released = int(conn.execute(
        f"UPDATE {items} SET next_attempt_ms = ? WHERE {column} = ? AND state = 'pending' "
        f"AND attempts > 0 AND next_attempt_ms > ? "
        f"AND item_id NOT IN ({','.join('?' * len(batch))})",
        (now_ms, target, now_ms, *batch)).rowcount)
    if released:
        log.info("target back: items waiting to be retried are due now",
                 extra={"target": target, "items": released})
    return released


def retry_delay_s(failed_attempts: int, policy: OutboxPolicy, rng: random.Random) -> float:
    """The wait after an item's ``failed_attempts``-th failure: gateway/retry.py's capped
    exponential backoff with jitter, at the step the item's attempts reached."""
    backoff = Backoff(policy.retry_initial_s, policy.retry_cap_s, jitter=policy.jitter, rng=rng)
    to_cap = math.ceil(math.log(policy.retry_cap_s / policy.retry_initial_s, backoff.factor))
    for _ in range(min(max(failed_attempts - 1, 0), to_cap)):
        backoff.next_delay()
    return backoff.next_delay()


def _retry_after_ms(seconds: float | None) -> int:
    if seconds is None or not seconds > 0:  # also NaN
        return 0
    return int(min(seconds, RETRY_AFTER_MAX_S) * 1000)


def settle(batch: Sequence[_I], results: Sequence[DeliveryResult] | None,
           failure: str | None, now_ms: int, delay_s: Callable[[int], float],
           retry_after_s: float | None = None) -> list[Settled[_I]]:
    """Each item's fate from the adapter's answer: ``results``, or a whole-batch ``failure``
    (TargetDown, an exception). ``delay_s(failed_attempts)`` is the backoff; a retry waits at
    least its Retry-After. An item without a result is retried; results for other items and
    repeats are ignored."""
    def retry(item: _I, reason: str, after_s: float | None) -> Settled[_I]:
        wait_ms = max(int(delay_s(item.attempts + 1) * 1000), _retry_after_ms(after_s))
        return Settled(item, "retry", reason, now_ms + wait_ms)

    if results is None:
        return [retry(item, failure or "target failed", retry_after_s) for item in batch]
    by_id: dict[int, DeliveryResult] = {}
    for result in results:
        by_id.setdefault(result.item_id, result)
    out: list[Settled[_I]] = []
    for item in batch:
        r = by_id.get(item.item_id)
        if r is None:
            out.append(retry(item, "the adapter returned no result for this item", None))
        elif r.outcome == "delivered":
            out.append(Settled(item, "delivered", upstream_id=r.upstream_id))
        elif r.outcome == "parked":
            out.append(Settled(item, "parked", r.reason or "refused by the upstream"))
        elif r.outcome == "retry":
            out.append(retry(item, r.reason or "to be retried", r.retry_after_s))
        else:
            out.append(retry(item, f"the adapter returned outcome {r.outcome!r}", None))
    return out


# -- the operator's side (CLI, another process) ------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One outbox row with the facts of its event (for the CLI: no names)."""

    item_id: int
    target: str
    event_key: str
    revision: int
    change: str
    idempotency_key: str
    state: ItemState
    attempts: int
    next_attempt_ms: int
    last_error: str | None
    parked_reason: str | None
    created_ms: int
    updated_ms: int
    delivered_ms: int | None
    upstream_id: str | None
    kind: str
    school_date: str
    session: str
    at_ms: int
    student_id: str | None
    class_id: str | None


_ITEM_COLUMNS = (
    "o.item_id, o.target, o.event_key, o.revision, o.change, o.idempotency_key, o.state, "
    "o.attempts, o.next_attempt_ms, o.last_error, o.parked_reason, o.created_ms, o.updated_ms, "
    "o.delivered_ms, o.upstream_id, e.kind, e.school_date, e.session, e.at_ms, e.student_id, "
    "st.class_id FROM outbox o JOIN attendance_events e ON e.event_id = o.event_id "
    "LEFT JOIN students st ON st.student_id = e.student_id")


def _item(row: sqlite3.Row | tuple[Any, ...]) -> Item:
    return Item(*tuple(row))


def items(conn: sqlite3.Connection, target: str, state: ItemState = "pending",
          limit: int = 50) -> list[Item]:
    """A target's items in one state: pending in delivery order, the others newest first."""
    order = "o.event_id, o.revision" if state == "pending" else "o.item_id DESC"
    rows = conn.execute(f"SELECT {_ITEM_COLUMNS} WHERE o.target = ? AND o.state = ? "
                        f"ORDER BY {order} LIMIT ?", (target, state, limit)).fetchall()
    return [_item(r) for r in rows]


def get(conn: sqlite3.Connection, item_id: int) -> Item | None:
    row = conn.execute(f"SELECT {_ITEM_COLUMNS} WHERE o.item_id = ?", (item_id,)).fetchone()
    return None if row is None else _item(row)


def known_targets(conn: sqlite3.Connection) -> set[str]:
    """Targets with a row in ``outbox_targets`` or items (configured now or once)."""
    found = {str(r[0]) for r in conn.execute("SELECT target FROM outbox_targets")}
    found.update(str(r[0]) for r in conn.execute(  # the small partial indexes
        "SELECT DISTINCT target FROM outbox WHERE state = 'pending'"))
    found.update(str(r[0]) for r in conn.execute(
        "SELECT DISTINCT target FROM outbox WHERE state = 'parked'"))
    return found


def retry_parked(conn: sqlite3.Connection, target: str, item_ids: Sequence[int] | None,
                 now_ms: int, *, items: str = "outbox", column: str = "target") -> list[int]:
    """Parked items of ``target`` (all of them when ``item_ids`` is None) back to pending, due
    now; returns their ids. All or nothing: an id that is not a parked item of ``target`` is
    refused (OutboxError ``not_parked``) and nothing changes. ``items``/``column``: the queue's
    table and its target column (``notify_messages``/``channel`` for notifications)."""
    with atomic(conn, "retry_parked"):
        if item_ids is None:
            rows = conn.execute(
                f"UPDATE {items} SET state = 'pending', next_attempt_ms = ?, updated_ms = ? "
                f"WHERE {column} = ? AND state = 'parked' RETURNING item_id",
                (now_ms, now_ms, target)).fetchall()
            return sorted(int(r[0]) for r in rows)
        wanted = sorted(set(item_ids))
        problems = []
        for item_id in wanted:
            row = conn.execute(f"SELECT {column}, state FROM {items} WHERE item_id = ?",
                               (item_id,)).fetchone()
            if row is None:
                problems.append(f"{item_id}: no such item")
            elif row[0] != target:
                problems.append(f"{item_id}: an item of {row[0]}")
            elif row[1] != "parked":
                problems.append(f"{item_id}: {row[1]}, not parked")
        if problems:
            raise OutboxError("not_parked", "; ".join(problems))
        conn.executemany(
            f"UPDATE {items} SET state = 'pending', next_attempt_ms = ?, updated_ms = ? "
            "WHERE item_id = ? AND state = 'parked'", [(now_ms, now_ms, i) for i in wanted])
        return wanted


def set_paused(conn: sqlite3.Connection, target: str, paused: bool, now_ms: int, *,
               table: str = "outbox_targets") -> bool:
    """Pause or resume ``target``; False if it already was. The running gateway stops picking
    (batches in flight finish) or resumes within ``poll_s``."""
    with atomic(conn, "outbox"):
        row = conn.execute(f"SELECT paused FROM {table} WHERE target = ?",
                           (target,)).fetchone()
        if row is not None and bool(row[0]) == paused:
            return False
        conn.execute(
            f"INSERT INTO {table} (target, paused, paused_ms, updated_ms) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (target) DO UPDATE SET paused = excluded.paused, "
            "paused_ms = excluded.paused_ms, updated_ms = excluded.updated_ms",
            (target, int(paused), now_ms if paused else None, now_ms))
        return True


@dataclass(frozen=True)
class ProbeRequest:
    """What :func:`request_probe` did."""

    target: str
    probe_ms: int  # the probe is due from then (now, or earlier if it already was)
    was_probe_ms: int | None  # when it was due before
    opened_ms: int | None
    failures: int
    last_error: str | None
    released: int  # items made due so that the probe has something to send (0 or 1)
    paused: bool  # nothing goes, the probe neither, until the target is resumed


def request_probe(conn: sqlite3.Connection, target: str, now_ms: int, *,
                  table: str = "outbox_targets", items: str = "outbox",
                  column: str = "target") -> ProbeRequest:
    """An operator's "the target is back": make its open breaker's probe due now instead of at
    the end of the cool-down. The running gateway adopts the stored time within ``poll_s`` (as
    long as the breaker is still in the same opening, see :meth:`Breaker.adopt_probe`) and
    sends one probe batch; if that is answered, the breaker closes and the backlog flows.

    A probe needs a due item: when every pending item of ``target`` is still waiting out its
    retry backoff, the one due soonest is made due now. Only an item tried before
    (``attempts > 0``): a held notification (quiet hours) is left alone.

    Refused (OutboxError): ``unknown_target`` without a row in ``table`` (the gateway never ran
    the target), ``not_open`` when the breaker is closed or a probe is under way.
    ``table``/``items``/``column`` as in :func:`retry_parked` (``notify_channels``,
    ``notify_messages``, ``channel`` for notifications)."""
    with atomic(conn, "outbox"):
        row = conn.execute(
            f"SELECT breaker, breaker_opened_ms, breaker_probe_ms, consecutive_failures, "
            f"last_error, paused FROM {table} WHERE target = ?", (target,)).fetchone()
        if row is None:
            raise OutboxError("unknown_target", f"{target!r} has no breaker yet (the gateway "
                                                f"has not run it)")
        state, opened_ms, was, failures, last_error, paused = tuple(row)
        if state == "closed":
            raise OutboxError("not_open", f"{target}: the breaker is closed, nothing to probe "
                                          f"(items go as they are due)")
        if state != "open":
            raise OutboxError("not_open", f"{target}: the breaker is {state}: a probe is "
                                          f"under way")
        probe_ms = now_ms if was is None else min(int(was), now_ms)
        conn.execute(f"UPDATE {table} SET breaker_probe_ms = ?, updated_ms = ? "
                     "WHERE target = ?", (probe_ms, now_ms, target))
        released = 0
        due = conn.execute(f"SELECT 1 FROM {items} WHERE {column} = ? AND state = 'pending' "
                           "AND next_attempt_ms <= ? LIMIT 1", (target, now_ms)).fetchone()
        if due is None:
            released = int(conn.execute(
                f"UPDATE {items} SET next_attempt_ms = ?, updated_ms = ? WHERE item_id = ("
                f"SELECT item_id FROM {items} WHERE {column} = ? AND state = 'pending' "
                "AND attempts > 0 ORDER BY next_attempt_ms, item_id LIMIT 1)",
                (now_ms, now_ms, target)).rowcount)
    log.info("breaker probe requested by the operator",
             extra={"target": target, "was_due_in_s": None if was is None
                    else round((int(was) - now_ms) / 1000, 1), "items": released})
    return ProbeRequest(target, probe_ms, None if was is None else int(was), opened_ms,
                        int(failures), last_error, released, bool(paused))


@dataclass(frozen=True)
class TargetStatus:
    """One target's outbox at a glance (CLI ``outbox status``, the metrics)."""

    target: str
    pending: int = 0
    parked: int = 0
    delivered_since: int = 0
    oldest_pending_ms: int | None = None
    paused: bool = False
    paused_ms: int | None = None
    breaker: BreakerRow = field(default_factory=BreakerRow)


def _breaker_row(r: Sequence[Any]) -> BreakerRow:
    state = r[0] if r[0] in BREAKER_STATES else "closed"
    return BreakerRow(cast(BreakerState, state), int(r[1]), r[2], r[3], r[4], r[5], r[6])


def status(conn: sqlite3.Connection, since_ms: int | None = None) -> dict[str, TargetStatus]:
    """Every known target's counts and state; ``delivered_since`` counts deliveries at or after
    ``since_ms`` (0 when None)."""
    found: dict[str, dict[str, Any]] = {}
    for r in conn.execute(
            "SELECT target, paused, paused_ms, breaker, consecutive_failures, "
            "breaker_opened_ms, breaker_probe_ms, last_error, last_failure_ms, last_success_ms "
            "FROM outbox_targets"):
        found[str(r[0])] = {"paused": bool(r[1]), "paused_ms": r[2],
                            "breaker": _breaker_row(tuple(r)[3:])}
    for r in conn.execute("SELECT target, COUNT(*), MIN(created_ms) FROM outbox "
                          "WHERE state = 'pending' GROUP BY target"):
        found.setdefault(str(r[0]), {}).update(pending=int(r[1]), oldest_pending_ms=r[2])
    for r in conn.execute("SELECT target, COUNT(*) FROM outbox WHERE state = 'parked' "
                          "GROUP BY target"):
        found.setdefault(str(r[0]), {})["parked"] = int(r[1])
    if since_ms is not None:
        # grouped by an expression, so that the index on delivered_ms is the one used
        for r in conn.execute("SELECT target || '' AS t, COUNT(*) FROM outbox "
                              "WHERE state = 'delivered' AND delivered_ms >= ? GROUP BY t",
                              (since_ms,)):
            found.setdefault(str(r[0]), {})["delivered_since"] = int(r[1])
    return {name: TargetStatus(name, **values) for name, values in sorted(found.items())}


def prune(conn: sqlite3.Connection, before_ms: int) -> int:
    """Delete delivered and superseded items settled before ``before_ms``; parked and pending
    items are never pruned. Returns how many."""
    with atomic(conn, "outbox"):
        return (conn.execute("DELETE FROM outbox WHERE state = 'delivered' AND delivered_ms < ?",
                             (before_ms,)).rowcount
                + conn.execute("DELETE FROM outbox WHERE state = 'superseded' "
                               "AND updated_ms < ?", (before_ms,)).rowcount)


# -- adapters ----------------------------------------------------------------------------------

def build_adapter(target: ForwardTarget, *, clock: Clock, config_path: Path | None = None,
                  **extra: Any) -> Adapter:
    """The adapter of a ``[[forward]]`` table: ``gateway.forwarders.<type>.build(target,
    clock=clock)``. ``config_path`` and ``extra`` keywords (e.g. ``timezone``) are passed to a
    ``build`` that accepts them. An unknown type is a ConfigError naming ``forward.<name>.type``.
    """
    path = config_path or Path("(config)")
    module_name = f"{forwarders.__name__}.{target.type}"
    key = f"forward.{target.name}.type"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the adapter is there but one of its imports is not
        known = ", ".join(forward_types()) or "(none installed)"
        raise ConfigError(path, key, f"unknown type {target.type!r}; one of {known}") from None
    build = getattr(module, "build", None)
    if not callable(build):
        raise ConfigError(path, key, f"{module_name} is not an adapter (it has no build())")
    try:
        accepted: Mapping[str, inspect.Parameter] = inspect.signature(build).parameters
    except (TypeError, ValueError):
        accepted = {}
    kwargs: dict[str, Any] = {"clock": clock}
    if config_path is not None:
        extra = {"config_path": config_path, **extra}
    kwargs.update({k: v for k, v in extra.items() if k in accepted})
    try:
        adapter = build(target, **kwargs)
    except ConfigError as exc:
        if config_path is None or exc.path == config_path:
            raise
        raise ConfigError(config_path, exc.key, exc.reason) from None
    if adapter.max_batch < 1 or adapter.concurrency < 1:
        raise ConfigError(path, f"forward.{target.name}.max_batch",
                          "the adapter needs max_batch and concurrency of at least 1")
    return cast(Adapter, adapter)


# -- delivery (the running gateway) ------------------------------------------------------------

class Reads:
    """The outbox's read connection, used from executor threads one call at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    async def __call__(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(None, fn, self._conn)


class Breaker:
    """A target's circuit breaker (see the module docstring); state in memory, persisted with
    each batch's results."""

    def __init__(self, policy: OutboxPolicy, rng: random.Random,
                 row: BreakerRow | None = None) -> None:
        self._policy = policy
        self._cooldown = Backoff(policy.breaker_cooldown_s, policy.breaker_cooldown_cap_s,
                                 jitter=policy.jitter, rng=rng)
        self.row = row or BreakerRow()
        if self.row.state == "half_open":  # a probe was in flight when the gateway stopped
            self.row = dataclasses.replace(self.row, state="open", probe_ms=self.row.opened_ms)

    @property
    def state(self) -> BreakerState:
        return self.row.state

    def allows(self, now_ms: int) -> Literal["batches", "probe", "none"]:
        """What may be sent now: batches (closed), one probe (open, cooled down), nothing."""
        if self.row.state == "closed":
            return "batches"
        if self.row.state == "open" and now_ms >= (self.row.probe_ms or 0):
            return "probe"
        return "none"

    def adopt_probe(self, stored: BreakerRow | None) -> bool:
        """Take an operator's earlier probe time (``outbox probe``, :func:`request_probe`) from
        the ``stored`` row. Only while open, and only for the same opening (the stored
        ``opened_ms`` is this one's): a row not yet rewritten after this breaker opened again
        holds the old, past probe time, which must not cut the new cool-down short. True if
        the probe moved earlier."""
        r = self.row
        if (stored is None or r.state != "open" or stored.state != "open"
                or stored.opened_ms != r.opened_ms or stored.probe_ms is None
                or (r.probe_ms is not None and stored.probe_ms >= r.probe_ms)):
            return False
        self.row = dataclasses.replace(r, probe_ms=stored.probe_ms)
        return True

    def probing(self) -> None:
        self.row = dataclasses.replace(self.row, state="half_open")

    def success(self, now_ms: int) -> bool:
        """The target answered. True if that changed the state (closed it)."""
        before = self.row
        self._cooldown.reset()
        self.row = dataclasses.replace(self.row, state="closed", failures=0, opened_ms=None,
                                       probe_ms=None, success_ms=now_ms)
        return before.state != "closed"

    def failure(self, now_ms: int, reason: str, hold_ms: int = 0) -> bool:
        """The whole target failed. True if that opened the breaker."""
        row = dataclasses.replace(self.row, failures=self.row.failures + 1, last_error=reason,
                                  failure_ms=now_ms)
        opens = row.state == "half_open" or (
            row.state == "closed" and row.failures >= self._policy.breaker_failures)
        if opens:
            wait_ms = max(int(self._cooldown.next_delay() * 1000), hold_ms)
            row = dataclasses.replace(row, state="open", opened_ms=now_ms,
                                      probe_ms=now_ms + wait_ms)
        self.row = row
        return opens


def load_breaker(conn: sqlite3.Connection, target: str, *,
                 table: str = "outbox_targets") -> BreakerRow | None:
    row = conn.execute(
        "SELECT breaker, consecutive_failures, breaker_opened_ms, breaker_probe_ms, last_error, "
        f"last_failure_ms, last_success_ms FROM {table} WHERE target = ?",
        (target,)).fetchone()
    return None if row is None else _breaker_row(tuple(row))


def control(conn: sqlite3.Connection, target: str, *, table: str = "outbox_targets"
            ) -> tuple[bool, BreakerRow | None]:
    """What the operator may have changed in another process: the pause flag and the stored
    breaker (an ``outbox probe`` moves its probe time)."""
    row = conn.execute(
        "SELECT paused, breaker, consecutive_failures, breaker_opened_ms, breaker_probe_ms, "
        f"last_error, last_failure_ms, last_success_ms FROM {table} WHERE target = ?",
        (target,)).fetchone()
    if row is None:
        return False, None
    return bool(row[0]), _breaker_row(tuple(row)[1:])


def is_paused(conn: sqlite3.Connection, target: str, *, table: str = "outbox_targets") -> bool:
    row = conn.execute(f"SELECT paused FROM {table} WHERE target = ?",
                       (target,)).fetchone()
    return row is not None and bool(row[0])


# -- queues: what the delivery loop needs of a table of items -----------------------------------

@dataclass(frozen=True)
class Store(Generic[_I]):
    """One queue the delivery loop serves: forwarding's ``outbox`` (:data:`FORWARDING`) or the
    notifier's ``notify_messages`` (``gateway.notify.STORE``). Each function runs on a
    connection: ``pick``/``status``/``max_item_id``/``enqueued_since`` on the loop's read
    connection, ``supersede``/``record``/``prune`` in the writer's transactions. The targets'
    pause flag and breaker live in ``targets_table`` (the shape of ``outbox_targets``)."""

    family: Literal["outbox", "notify"]  # metrics (gateway/metrics.py) and log messages
    targets_table: str
    pick: Callable[..., Picked[_I]]  # (conn, target, now_ms, limit, *, exclude_items, ...)
    supersede: Callable[..., int]  # (conn, target, item_ids, now_ms)
    record: Callable[..., Recorded[_I]]  # (conn, target, settled, now_ms, breaker)
    log_fields: Callable[[_I], dict[str, object]]  # no personal data
    status: Callable[[sqlite3.Connection], dict[str, TargetStatus]]
    max_item_id: Callable[[sqlite3.Connection], int]
    enqueued_since: Callable[[sqlite3.Connection, int], tuple[dict[str, int], int]]
    prune: Callable[..., int]  # (conn, before_ms)


def _forward_fields(item: AttendanceItem) -> dict[str, object]:
    return {"item_id": item.item_id, "event_key": item.event_key, "kind": item.kind,
            "revision": item.revision}


def _forward_enqueued(conn: sqlite3.Connection, after: int) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    watermark = after
    for r in conn.execute("SELECT target, COUNT(*), MAX(item_id) FROM outbox "
                          "WHERE item_id > ? GROUP BY target", (after,)):
        counts[str(r[0])] = int(r[1])
        watermark = max(watermark, int(r[2]))
    return counts, watermark


FORWARDING: Store[AttendanceItem] = Store(
    family="outbox", targets_table="outbox_targets", pick=pick, supersede=supersede,
    record=record, log_fields=_forward_fields, status=status,
    max_item_id=lambda conn: _max_item_id(conn), enqueued_since=_forward_enqueued, prune=prune)


class TargetDelivery(Generic[_I]):
    """Delivers one target's outbox while the gateway runs; see the module docstring.
    ``store`` says which queue (forwarding's by default, the notifier's for a channel).

    :meth:`run` is the loop; :meth:`fill` (start what may go now) and :meth:`wait_idle` (let the
    batches in flight finish and be recorded) are its steps, public for tests.
    """

    def __init__(self, adapter: Sender[_I], writer: TransactionRunner, reads: Reads, *,
                 metrics: GatewayMetrics | None = None, clock: Clock = system_clock,
                 policy: OutboxPolicy = DEFAULT_POLICY, rng: random.Random | None = None,
                 breaker: BreakerRow | None = None,
                 store: Store[_I] | None = None) -> None:
        store = store if store is not None else cast(Store[_I], FORWARDING)
        self.adapter = adapter
        self.name = adapter.name
        self.store = store
        self._writer = writer
        self._reads = reads
        self.metrics: DeliveryCounters | None = (
            None if metrics is None else metrics.counters(store.family))
        self._clock = clock
        self.policy = policy
        self._rng = rng or random.Random()
        self.breaker = Breaker(policy, self._rng, breaker)
        self.paused = False
        self.hold_until_ms = 0  # Retry-After of the whole target, or after a database error
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[int, int] = {}  # item id -> event id

    @property
    def in_flight(self) -> int:
        """Batches in flight."""
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; then wait up to ``stop_timeout_s`` for the batches in flight
        and leave the rest pending."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    await self.fill()
                except Exception as exc:
                    log.error("outbox step failed", extra={"target": self.name,
                                                           "error": str(exc)})
                    self.hold_until_ms = self._clock() + int(self.policy.db_error_hold_s * 1000)
                await asyncio.wait({stopping, *self._tasks}, timeout=self.policy.poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await self._stop()

    async def _stop(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.policy.stop_timeout_s)
        if pending:
            left = len(self._in_flight)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("outbox stopped with deliveries in flight: left pending, sent again "
                        "after the restart under the same keys",
                        extra={"target": self.name, "items": left})

    async def wait_idle(self) -> None:
        """Wait until no batch is in flight (each one's results recorded)."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    async def fill(self) -> int:
        """Start every batch that may go now; returns how many were started."""
        paused, stored = await self._reads(functools.partial(
            control, target=self.name, table=self.store.targets_table))
        if self.breaker.adopt_probe(stored):
            # the operator says the target is back: a Retry-After hold goes too
            self.hold_until_ms = min(self.hold_until_ms, self._clock())
            log.info(f"{self.store.family} probe requested by the operator",
                     extra={"target": self.name})
        if paused != self.paused:
            self.paused = paused
            log.info(f"{self.store.family} target paused" if paused
                     else f"{self.store.family} target resumed", extra={"target": self.name})
        if paused:
            return 0
        started = 0
        while True:
            now = self._clock()
            if now < self.hold_until_ms:
                break
            mode = self.breaker.allows(now)
            if mode == "none" or (mode == "probe" and self._tasks) or (
                    mode == "batches" and len(self._tasks) >= self.adapter.concurrency):
                break
            probe = mode == "probe"
            limit = min(self.adapter.max_batch, self.policy.probe_batch) if probe \
                else self.adapter.max_batch
            picked = await self._reads(functools.partial(
                self.store.pick, target=self.name, now_ms=now, limit=limit,
                exclude_items=list(self._in_flight), exclude_events=list(
                    set(self._in_flight.values()))))
            if picked.stale:
                await self._supersede(picked.stale, now)
                continue
            if not picked.items:
                break
            if probe:
                self.breaker.probing()
                log.info("outbox breaker half-open: probing",
                         extra={"target": self.name, "items": len(picked.items)})
            self._in_flight.update(picked.events)
            task = asyncio.create_task(self._batch(picked.items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
            if probe:
                break
        return started

    async def _supersede(self, stale: list[int], now: int) -> None:
        count = await self._writer.run_in_transaction(
            functools.partial(self.store.supersede, target=self.name, item_ids=stale, now_ms=now))
        if count and self.metrics is not None:
            self.metrics.superseded.labels(self.name).inc(count)
        log.debug("outbox items superseded by newer versions",
                  extra={"target": self.name, "items": count})

    async def _batch(self, batch: list[_I]) -> None:
        try:
            await self._deliver(batch)
        finally:
            for item in batch:
                self._in_flight.pop(item.item_id, None)

    async def _deliver(self, batch: list[_I]) -> None:
        results: list[DeliveryResult] | None = None
        failure: str | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(self.policy.deliver_timeout_s):
                results = list(await self.adapter.deliver(batch))
        except TargetDown as exc:
            failure, retry_after = _clip(exc.reason) or "target down", exc.retry_after_s
        except TimeoutError:  # the adapter's own timeouts should have answered long before
            failure = f"no answer from the adapter within {self.policy.deliver_timeout_s:g} s"
        except Exception as exc:  # an adapter's bug must not stop delivery: retried as down
            failure = f"adapter error: {type(exc).__name__}"
            # where, not what: an exception's message may hold anything (a student, a token)
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            log.error("outbox adapter error", extra={
                "target": self.name, "error": type(exc).__name__, "at": where})
        now = self._clock()
        delay = functools.partial(retry_delay_s, policy=self.policy, rng=self._rng)
        settled = settle(batch, results, failure, now, delay, retry_after)
        hold_ms = max([_retry_after_ms(retry_after)]
                      + [_retry_after_ms(r.retry_after_s) for r in results or ()
                         if r.outcome == "retry"])
        if hold_ms:
            self.hold_until_ms = max(self.hold_until_ms, now + hold_ms)
        if failure is None:
            changed = self.breaker.success(now)
            if changed:
                log.info("outbox breaker closed", extra={"target": self.name})
        else:
            if self.breaker.failure(now, failure, hold_ms):
                log.warning("outbox breaker opened", extra={
                    "target": self.name, "failures": self.breaker.row.failures,
                    "probe_in_s": round(((self.breaker.row.probe_ms or now) - now) / 1000, 1),
                    "error": failure})
            else:
                log.warning("outbox delivery failed", extra={
                    "target": self.name, "items": len(batch), "error": failure,
                    "failures": self.breaker.row.failures})
            if self.metrics is not None:
                self.metrics.target_failures.labels(self.name).inc()
        try:
            done = await self._writer.run_in_transaction(functools.partial(
                self.store.record, target=self.name, settled=settled, now_ms=now,
                breaker=self.breaker.row))
        except Exception as exc:  # left pending: delivered again later under the same keys
            log.error("outbox results not recorded", extra={
                "target": self.name, "items": len(batch), "error": str(exc)})
            self.hold_until_ms = max(self.hold_until_ms,
                                     now + int(self.policy.db_error_hold_s * 1000))
            return
        self._account(done)

    def _account(self, done: Recorded[_I]) -> None:
        m = self.metrics
        if m is not None:
            m.delivered.labels(self.name).inc(len(done.delivered))
            m.retried.labels(self.name).inc(len(done.retried))
            m.parked.labels(self.name).inc(len(done.parked))
            if done.superseded:
                m.superseded.labels(self.name).inc(done.superseded)
        for s in done.parked:
            log.warning(f"{self.store.family} item parked", extra={
                "target": self.name, **self.store.log_fields(s.item), "reason": s.reason})
        if done.retried:
            first = done.retried[0]
            log.info("outbox items to be retried", extra={
                "target": self.name, "items": len(done.retried), "error": first.reason,
                "next_in_s": round(((first.next_attempt_ms or 0) - self._clock()) / 1000, 1)})
        log.debug("outbox batch recorded", extra={
            "target": self.name, "delivered": len(done.delivered),
            "retried": len(done.retried), "parked": len(done.parked)})


class OutboxService(Generic[_I]):
    """Every target's delivery loop, the metrics' snapshot and the hourly prune, for one queue
    (``store``: forwarding's by default; the notifier runs another with its channels)."""

    def __init__(self, writer: TransactionRunner, adapters: Sequence[Sender[_I]],
                 read_conn: sqlite3.Connection, *, metrics: GatewayMetrics | None = None,
                 clock: Clock = system_clock, policy: OutboxPolicy = DEFAULT_POLICY,
                 rng: random.Random | None = None,
                 store: Store[_I] | None = None) -> None:
        store = store if store is not None else cast(Store[_I], FORWARDING)
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ValueError("two adapters with the same target name")
        self._writer = writer
        self.store = store
        self.reads = Reads(read_conn)
        self.metrics = metrics
        self._clock = clock
        self.policy = policy
        self._rng = rng or random.Random()
        self.adapters = list(adapters)
        self.deliveries: dict[str, TargetDelivery[_I]] = {}
        self._snapshot: dict[str, OutboxSeen] = {}
        # items committed after this are counted as enqueued (construct before the ingest runs)
        self._watermark: int | None = store.max_item_id(read_conn)
        self._closed = False
        if metrics is not None:
            metrics.watch_outbox(lambda: self._snapshot, clock, family=store.family)

    async def start(self) -> None:
        """Make each target's row, load its breaker; idempotent."""
        if self.deliveries or not self.adapters:
            return
        now = self._clock()
        targets = [a.name for a in self.adapters]

        table = self.store.targets_table

        def rows(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT INTO {table} (target, updated_ms) VALUES (?, ?) "
                             "ON CONFLICT (target) DO NOTHING", [(t, now) for t in targets])

        await self._writer.run_in_transaction(rows)
        for adapter in self.adapters:
            row = await self.reads(functools.partial(load_breaker, target=adapter.name,
                                                     table=table))
            self.deliveries[adapter.name] = TargetDelivery(
                adapter, self._writer, self.reads, metrics=self.metrics, clock=self._clock,
                policy=self.policy, rng=self._rng, breaker=row, store=self.store)
        await self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``, then stop gracefully and close the adapters. With no
        adapters (forwarding or notifications turned off) only the hourly prune runs, so what
        was kept before is still deleted after its retention."""
        try:
            if not self.adapters:
                await self._monitor(stop)
                return
            await self.start()
            await asyncio.gather(*(d.run(stop) for d in self.deliveries.values()),
                                 self._monitor(stop))
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every adapter (once)."""
        if self._closed:
            return
        self._closed = True
        for adapter in self.adapters:
            try:
                await adapter.close()
            except Exception as exc:
                log.warning("outbox adapter did not close cleanly",
                            extra={"target": adapter.name, "error": str(exc)})

    async def refresh(self) -> None:
        """Re-read the counts for the metrics; count the items committed since the last look."""
        snapshot, counts, watermark = await self.reads(
            functools.partial(_observe, after=self._watermark, store=self.store))
        if self.metrics is not None and self._watermark is not None:
            enqueued = self.metrics.counters(self.store.family).enqueued
            for target, count in counts.items():
                if target in self.deliveries:
                    enqueued.labels(target).inc(count)
        self._watermark = watermark
        seen = {}
        for name, delivery in self.deliveries.items():
            s = snapshot.get(name, TargetStatus(name))
            seen[name] = OutboxSeen(s.pending, s.parked, s.oldest_pending_ms,
                                    delivery.breaker.state, delivery.paused)
        self._snapshot = seen

    async def _monitor(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        pruned_at: float | None = None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.status_every_s)
            try:
                await self.refresh()
                if pruned_at is None or loop.time() - pruned_at >= PRUNE_EVERY_S:
                    pruned_at = loop.time()
                    before = self._clock() - self.policy.retention_ms
                    pruned = await self._writer.run_in_transaction(
                        functools.partial(self.store.prune, before_ms=before))
                    if pruned:
                        log.info(f"old {self.store.family} items pruned",
                                 extra={"items": pruned})
            except Exception as exc:
                log.error(f"{self.store.family} status not refreshed", extra={"error": str(exc)})


def _max_item_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT MAX(item_id) FROM outbox").fetchone()[0] or 0)


def _observe(conn: sqlite3.Connection, after: int | None, store: Store[Any]
             ) -> tuple[dict[str, TargetStatus], dict[str, int], int]:
    snapshot = store.status(conn)
    if after is None:
        return snapshot, {}, store.max_item_id(conn)
    counts, watermark = store.enqueued_since(conn, after)
    return snapshot, counts, watermark

