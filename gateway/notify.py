"""Parent notifications: who gets which message, rendered once, delivered once
(docs/notifications.md).

**Deciding, in the rules' transaction.** :class:`Notifier` is an attendance-rules listener
(``gateway.rules.EventListener``). For every event created, revised or voided it decides, per
recipient (each guardian of the student; the ``[notify.staff]`` recipient for unknown cards),
whether a message goes, renders it from its template and inserts it into ``notify_messages``,
and writes one row in ``notify_decisions`` saying what it decided and why — in the same
transaction, so an event never exists without its decisions and a rolled-back event leaves none.
Only these INSERTs happen there: delivery runs outside the ingest and never delays an ack.

The rules, in the order they are checked (the first that applies is the reason recorded):

- ``kind_off``: the school does not send this kind (``[notify] kinds``);
- ``no_channel``: no channel configured for this recipient;
- ``no_consent``: the guardian has not consented (``guardians.consent``);
- ``opted_out``: the guardian turned this kind off (``guardian_opt_outs``);
- ``no_phone``: no number to send to;
- ``covered_by_late``: a check-in after ``late_after``: the ``late`` message says it once;
- ``too_old``: decided more than ``max_delay_min`` after the event's time (a reader's backlog
  uploaded in the afternoon does not announce the morning's arrival), except a check-in that
  corrects an ``absent`` already delivered to that guardian;
- ``revision``: a message for this event and recipient exists: a revision never makes a second
  one (``message_id`` is per event and recipient, not per version);
- ``daily_cap``: the guardian already has ``daily_cap`` messages that school day;
- ``quiet_hours``: now is in ``[notify.quiet_hours]``: kinds in ``hold`` are queued for the end of
  the window (outcome ``held``), the others are dropped (a "your child arrived" at 06:00 for a
  tap at 21:30 misleads more than it informs);
- otherwise ``sent``: queued (outcome ``queued``).

One check-in and one check-out per session come from the rules themselves (their events are
the first check-in and the first tap after the minimum stay; repeated taps revise nothing).
``absent`` comes from the rules' cut-off timer. A **voided** event cancels its messages not yet
delivered (``cancelled``, reason ``event_voided``); a message already delivered is not taken back
(``already_delivered``): when an ``absent`` is disproved by a reader's backlog, the check-in that
disproved it goes as the correction, whatever its age.

**Delivering** is the forwarding outbox's loop (``gateway/outbox.py``) over another queue
(:func:`make_store`): batches, concurrency, retries with ``gateway/retry.py``, Retry-After, the
circuit breaker, parking with the channel's reason, pause, the operator's retry. A message whose
guardian was removed, withdrew consent or opted out of its kind since is cancelled instead of
sent (database triggers do it for the first two whoever changes the roster).

Logs carry item ids, message ids, event keys (hashes), kinds and reasons; never names, phone
numbers or rendered texts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import inspect
import json
import logging
import sqlite3
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from gateway import channels as channels_pkg
from gateway.channels import Channel, ChannelConfig, Message, NotificationKind
from gateway.config import AttendanceConfig, ConfigError, NotifyConfig
from gateway.db import atomic
from gateway.metrics import GatewayMetrics
from gateway.outbox import (
    BreakerRow,
    OutboxError,
    Picked,
    Recorded,
    Settled,
    Store,
    TargetStatus,
    _breaker_row,
    record_outcome,
    save_breaker_after_batch,
    set_paused,
)
from gateway.outbox import retry_parked as outbox_retry_parked
from gateway.rules import EventChange, SchoolCalendar, event_key, from_ms
from gateway.types import Clock, system_clock

log = logging.getLogger("gateway.notify")

Outcome = Literal["queued", "held", "skipped", "cancelled"]
MessageState = Literal["pending", "delivered", "parked", "cancelled"]
MESSAGE_STATES: tuple[MessageState, ...] = ("pending", "delivered", "parked", "cancelled")
TARGETS_TABLE = "notify_channels"
REDACTED = "[đã xoá / removed]"
RETENTION_MS = 90 * 86_400_000

REASONS: dict[str, tuple[str, str]] = {  # code -> (Vietnamese, English), for the CLI and docs
    "sent": ("đã xếp gửi", "queued for delivery"),
    "kind_off": ("trường không gửi loại tin này", "the school does not send this kind"),
    "no_channel": ("chưa cấu hình kênh gửi", "no channel configured"),
    "no_staff_recipient": ("chưa cấu hình người nhận của trường",
                           "no staff recipient configured"),
    "no_guardian": ("học sinh chưa có phụ huynh", "the student has no guardian"),
    "no_consent": ("phụ huynh chưa đồng ý", "the guardian has not consented"),
    "opted_out": ("phụ huynh đã tắt loại tin này", "the guardian turned this kind off"),
    "no_phone": ("không có số điện thoại", "no phone number"),
    "covered_by_late": ("tin \"đến muộn\" thay cho tin này", "the 'late' message covers it"),
    "too_old": ("quá muộn so với giờ sự kiện", "too long after the event"),
    "revision": ("đã có tin cho sự kiện này", "a message for this event exists"),
    "daily_cap": ("đã đủ số tin trong ngày", "the guardian's daily cap is reached"),
    "quiet_hours": ("giờ yên lặng", "quiet hours"),
    "event_voided": ("sự kiện đã bị huỷ", "the event was voided"),
    "already_delivered": ("tin đã gửi trước khi sự kiện bị huỷ",
                          "delivered before the event was voided"),
    "voided": ("sự kiện bị huỷ, không có tin", "voided; no message existed"),
    "guardian_removed": ("phụ huynh đã bị xoá", "the guardian was removed"),
    "consent_withdrawn": ("phụ huynh đã rút đồng ý", "the guardian withdrew consent"),
}


class NotifyError(OutboxError):
    """An operator's request that was refused (``code`` as in :class:`OutboxError`)."""


def message_id(event_key_: str, recipient: str) -> str:
    """The stable id of the one message of one event to one recipient (``g<guardian id>`` or
    ``staff``): 32 hex digits of a SHA-256. The event's revision is not part of it."""
    return hashlib.sha256(f"n1|{event_key_}|{recipient}".encode()).hexdigest()[:32]


def render(template: str, values: Mapping[str, str]) -> str:
    """A template checked by ``gateway.config.check_template`` with the given values."""
    return template.format_map(dict(values))


@dataclass(frozen=True)
class _Event:
    event_id: int
    event_key: str
    kind: str
    student_id: str | None
    card: str | None
    school_date: str
    session: str
    at_ms: int
    gate: str | None
    voided: bool


@dataclass(frozen=True)
class _Recipient:
    guardian_id: int | None  # None: staff
    consent: bool
    phone: str | None
    locale: str
    opted_out: bool

    @property
    def key(self) -> str:
        return "staff" if self.guardian_id is None else f"g{self.guardian_id}"


class Notifier:
    """The attendance rules' listener that decides notifications; see the module docstring."""

    def __init__(self, config: NotifyConfig, attendance: AttendanceConfig,
                 timezone: zoneinfo.ZoneInfo | dt.tzinfo, *, school: str = "",
                 clock: Clock = system_clock, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.timezone = timezone
        self.calendar = SchoolCalendar(attendance, timezone)
        self.school = school
        self._clock = clock
        self._metrics = metrics

    def __call__(self, conn: sqlite3.Connection, change: EventChange) -> None:
        if not self.config.enabled:
            return
        row = conn.execute(
            "SELECT event_id, event_key, kind, student_id, card, school_date, session, at_ms, "
            "gate, voided_ms FROM attendance_events WHERE event_id = ?",
            (change.event_id,)).fetchone()
        if row is None:
            return
        event = _Event(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], str(row[5]),
                       str(row[6]), int(row[7]), row[8], row[9] is not None)
        now = self._clock()
        if change.change == "voided":
            decisions = self._void(conn, event, change, now)
        else:
            decisions = self._decide(conn, event, change, now)
        if self._metrics is not None:
            for outcome, reason in decisions:
                self._metrics.notify_decisions.labels(outcome, reason).inc()
        log.debug("notifications decided", extra={
            "event_key": event.event_key, "kind": event.kind, "change": change.change,
            "decisions": [f"{o}:{r}" for o, r in decisions]})

    # -- decisions -----------------------------------------------------------------------------

    def _audit(self, conn: sqlite3.Connection, event: _Event, change: EventChange, now: int,
               guardian_id: int | None, outcome: Outcome, reason: str,
               item_id: int | None = None) -> tuple[str, str]:
        conn.execute(
            "INSERT INTO notify_decisions (decided_ms, event_id, event_key, revision, change, "
            "kind, student_id, school_date, guardian_id, outcome, reason, item_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, event.event_id, event.event_key, change.revision, change.change, event.kind,
             event.student_id, event.school_date, guardian_id, outcome, reason, item_id))
        return outcome, reason

    def _void(self, conn: sqlite3.Connection, event: _Event, change: EventChange,
              now: int) -> list[tuple[str, str]]:
        out = []
        rows = conn.execute("SELECT item_id, guardian_id, state FROM notify_messages "
                            "WHERE event_id = ?", (event.event_id,)).fetchall()
        for item_id, guardian_id, state in rows:
            if state in ("pending", "parked"):
                conn.execute("UPDATE notify_messages SET state = 'cancelled', "
                             "parked_reason = 'event voided', updated_ms = ? WHERE item_id = ?",
                             (now, item_id))
                out.append(self._audit(conn, event, change, now, guardian_id, "cancelled",
                                       "event_voided", item_id))
            elif state == "delivered":
                out.append(self._audit(conn, event, change, now, guardian_id, "skipped",
                                       "already_delivered", item_id))
        if not rows:
            out.append(self._audit(conn, event, change, now, None, "skipped", "voided"))
        return out

    def _recipients(self, conn: sqlite3.Connection, event: _Event) -> list[_Recipient]:
        if event.kind == "unknown_card":
            staff = self.config.staff
            if staff is None:
                return []
            return [_Recipient(None, True, staff.phone, staff.locale, False)]
        rows = conn.execute(
            "SELECT g.guardian_id, g.consent, g.phone, g.locale, EXISTS (SELECT 1 FROM "
            "guardian_opt_outs o WHERE o.guardian_id = g.guardian_id AND o.kind = ?) "
            "FROM guardians g WHERE g.student_id = ? ORDER BY g.guardian_id",
            (event.kind, event.student_id)).fetchall()
        return [_Recipient(int(r[0]), bool(r[1]), r[2], str(r[3] or self.config.default_locale),
                           bool(r[4])) for r in rows]

    def _decide(self, conn: sqlite3.Connection, event: _Event, change: EventChange,
                now: int) -> list[tuple[str, str]]:
        if event.voided:
            return [self._audit(conn, event, change, now, None, "skipped", "voided")]
        recipients = self._recipients(conn, event)
        if not recipients:
            why = "no_staff_recipient" if event.kind == "unknown_card" else "no_guardian"
            return [self._audit(conn, event, change, now, None, "skipped", why)]
        channel = (self.config.staff.channel if event.kind == "unknown_card"
                   and self.config.staff is not None else self.config.guardian_channel)
        late_check_in = event.kind == "check_in" and self._is_late(event)
        out = []
        for r in recipients:
            mid = message_id(event.event_key, r.key)
            reason = self._rule(conn, event, r, mid, channel, late_check_in, now)
            if reason is not None:
                out.append(self._audit(conn, event, change, now, r.guardian_id, "skipped",
                                       reason))
                continue
            held_until = self._quiet_end(now)
            if held_until is not None and event.kind not in self._hold_kinds():
                out.append(self._audit(conn, event, change, now, r.guardian_id, "skipped",
                                       "quiet_hours"))
                continue
            item_id = self._insert(conn, event, r, mid, cast(str, channel),
                                   held_until or now, now)
            if held_until is not None:
                out.append(self._audit(conn, event, change, now, r.guardian_id, "held",
                                       "quiet_hours", item_id))
            else:
                out.append(self._audit(conn, event, change, now, r.guardian_id, "queued",
                                       "sent", item_id))
        return out

    def _rule(self, conn: sqlite3.Connection, event: _Event, r: _Recipient, mid: str,
              channel: str | None, late_check_in: bool, now: int) -> str | None:
        """The reason no message goes to ``r`` (None: one goes, unless quiet hours drop it)."""
        if event.kind != "unknown_card" and event.kind not in self.config.kinds:
            return "kind_off"
        if channel is None:
            return "no_channel"
        if not r.consent:
            return "no_consent"
        if r.opted_out:
            return "opted_out"
        if not r.phone and r.guardian_id is not None:
            return "no_phone"
        if late_check_in:
            return "covered_by_late"
        if conn.execute("SELECT 1 FROM notify_messages WHERE message_id = ?",
                        (mid,)).fetchone():
            return "revision"
        if now - event.at_ms > self.config.max_delay_min * 60_000 and not (
                event.kind in ("check_in", "late") and self._corrects_absent(conn, event, r)):
            return "too_old"
        if r.guardian_id is not None:
            sent = conn.execute(
                "SELECT COUNT(*) FROM notify_messages WHERE guardian_id = ? AND school_date = ? "
                "AND state <> 'cancelled'", (r.guardian_id, event.school_date)).fetchone()[0]
            if int(sent) >= self.config.daily_cap:
                return "daily_cap"
        return None

    def _is_late(self, event: _Event) -> bool:
        _day, window = self.calendar.place(event.at_ms)
        return window is not None and event.at_ms > window.late_after_ms

    def _corrects_absent(self, conn: sqlite3.Connection, event: _Event,
                         r: _Recipient) -> bool:
        if event.student_id is None:
            return False
        absent = event_key("absent", event.student_id, event.school_date, event.session)
        row = conn.execute("SELECT state FROM notify_messages WHERE message_id = ?",
                           (message_id(absent, r.key),)).fetchone()
        return row is not None and row[0] == "delivered"

    def _hold_kinds(self) -> frozenset[str]:
        quiet = self.config.quiet_hours
        return quiet.hold if quiet is not None else frozenset()

    def _quiet_end(self, now: int) -> int | None:
        """When the quiet window around ``now`` ends (Unix ms), or None outside it."""
        quiet = self.config.quiet_hours
        if quiet is None:
            return None
        local = from_ms(now, self.timezone)
        t = local.time()
        inside = (quiet.start <= t < quiet.end) if quiet.start < quiet.end else (
            t >= quiet.start or t < quiet.end)
        if not inside:
            return None
        end_day = local.date() if t < quiet.end else local.date() + dt.timedelta(days=1)
        return self.calendar.at(end_day, quiet.end)

    # -- rendering -----------------------------------------------------------------------------

    def values(self, conn: sqlite3.Connection, event: _Event, locale: str) -> dict[str, str]:
        """The placeholders' values for one event (gateway.config.PLACEHOLDERS)."""
        name, class_name = "", ""
        if event.student_id is not None:
            row = conn.execute(
                "SELECT s.full_name, COALESCE(c.name, s.class_id, '') FROM students s "
                "LEFT JOIN classes c ON c.class_id = s.class_id WHERE s.student_id = ?",
                (event.student_id,)).fetchone()
            if row is not None:
                name, class_name = str(row[0]), str(row[1])
                if class_name.lower().startswith("lớp "):  # the templates say "lớp {class}"
                    class_name = class_name[4:]
        local = from_ms(event.at_ms, self.timezone)
        date = local.strftime("%d/%m/%Y") if locale == "vi" else local.date().isoformat()
        return {"student": name, "class": class_name, "time": local.strftime("%H:%M"),
                "date": date, "gate": event.gate or "-", "session": event.session,
                "school": self.school, "card": event.card or ""}

    def _insert(self, conn: sqlite3.Connection, event: _Event, r: _Recipient, mid: str,
                channel: str, due_ms: int, now: int) -> int:
        locale = r.locale if r.locale in self.config.templates else self.config.default_locale
        values = self.values(conn, event, locale)
        text = render(self.config.templates[locale][event.kind], values)
        zalo = self.config.zalo.get(event.kind)
        data = {k: render(v, values) for k, v in zalo.data.items()} if zalo else {}
        facts: dict[str, Any] = {
            "event_key": event.event_key, "kind": event.kind, "school_date": event.school_date,
            "session": event.session, "at_ms": event.at_ms,
            "at": from_ms(event.at_ms, self.timezone).isoformat(timespec="seconds"),
            "gate": event.gate, "student_id": event.student_id}
        if event.kind == "unknown_card":
            facts["card"] = event.card
        cursor = conn.execute(
            "INSERT INTO notify_messages (message_id, channel, event_id, event_key, guardian_id, "
            "student_id, school_date, kind, locale, text, template_id, template_data, event, "
            "next_attempt_ms, created_ms, updated_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, channel, event.event_id, event.event_key, r.guardian_id, event.student_id,
             event.school_date, event.kind, locale, text, zalo.template_id if zalo else None,
             json.dumps(data, ensure_ascii=False), json.dumps(facts, ensure_ascii=False),
             due_ms, now, now))
        return int(cursor.lastrowid or 0)


# -- the delivery queue (gateway/outbox.py's loop) ---------------------------------------------

_SELECT = (
    "SELECT m.item_id, m.message_id, m.kind, m.locale, m.text, m.template_id, m.template_data, "
    "m.event, m.attempts, m.guardian_id, m.student_id, g.guardian_id, g.phone, g.consent, "
    "g.student_id, EXISTS (SELECT 1 FROM guardian_opt_outs o WHERE o.guardian_id = "
    "m.guardian_id AND o.kind = m.kind) "
    "FROM notify_messages m LEFT JOIN guardians g ON g.guardian_id = m.guardian_id ")
_PICK = (_SELECT + "WHERE m.channel = ? AND m.state = 'pending' AND m.next_attempt_ms <= ? "
         "{exclude}ORDER BY m.next_attempt_ms, m.item_id LIMIT ?")


def _stale_reason(r: Sequence[Any]) -> str | None:
    """Why a pending message must not go any more (its guardian changed since), or None."""
    if r[9] is None:
        return None  # staff
    if r[11] is None or r[14] != r[10]:
        return "guardian_removed"
    if not r[13]:
        return "consent_withdrawn"
    if r[15]:
        return "opted_out"
    if not r[12]:
        return "no_phone"
    return None


def make_store(staff_phone: str | None = None) -> Store[Message]:
    """The notifier's queue for ``gateway.outbox``'s delivery loop."""

    def pick(conn: sqlite3.Connection, target: str, now_ms: int, limit: int, *,
             exclude_items: Sequence[int] = (), exclude_events: Sequence[int] = ()
             ) -> Picked[Message]:
        exclude = ""
        args: list[object] = [target, now_ms]
        if exclude_items:
            exclude = f"AND m.item_id NOT IN ({','.join('?' * len(exclude_items))}) "
            args.extend(exclude_items)
        args.append(limit)
        out: Picked[Message] = Picked()
        for r in conn.execute(_PICK.format(exclude=exclude), args):
            if _stale_reason(tuple(r)) is not None:
                out.stale.append(int(r[0]))
                continue
            out.events[int(r[0])] = int(r[0])  # no order between messages: each its own group
            out.items.append(Message(
                item_id=int(r[0]), message_id=str(r[1]), kind=cast(NotificationKind, r[2]),
                locale=cast(Literal["vi", "en"], r[3]), text=str(r[4]),
                phone=staff_phone if r[9] is None else str(r[12]), template_id=r[5],
                template_data=json.loads(r[6] or "{}"), event=json.loads(r[7] or "{}"),
                attempts=int(r[8])))
        return out

    return Store(family="notify", targets_table=TARGETS_TABLE, pick=pick, supersede=cancel_stale,
                 record=record, log_fields=_log_fields, status=status, max_item_id=_max_item_id,
                 enqueued_since=_enqueued_since, prune=prune)


def _log_fields(m: Message) -> dict[str, object]:
    return {"item_id": m.item_id, "message_id": m.message_id, "kind": m.kind}


def cancel_stale(conn: sqlite3.Connection, target: str, item_ids: Sequence[int],
                 now_ms: int) -> int:
    """Cancel pending messages that must not go any more (see :func:`_stale_reason`), with the
    reason, and audit it. Returns how many."""
    done = 0
    with atomic(conn, "notify"):
        for item_id in item_ids:
            r = conn.execute(_SELECT + "WHERE m.item_id = ? AND m.channel = ? "
                             "AND m.state = 'pending'", (item_id, target)).fetchone()
            reason = None if r is None else _stale_reason(tuple(r))
            if reason is None:
                continue
            conn.execute("UPDATE notify_messages SET state = 'cancelled', parked_reason = ?, "
                         "updated_ms = ? WHERE item_id = ?",
                         (REASONS[reason][1], now_ms, item_id))
            conn.execute(
                "INSERT INTO notify_decisions (decided_ms, event_id, event_key, revision, "
                "change, kind, student_id, school_date, guardian_id, outcome, reason, item_id) "
                "SELECT ?, m.event_id, m.event_key, e.revision, 'delivery', m.kind, "
                "m.student_id, m.school_date, m.guardian_id, 'cancelled', ?, m.item_id "
                "FROM notify_messages m JOIN attendance_events e ON e.event_id = m.event_id "
                "WHERE m.item_id = ?", (now_ms, reason, item_id))
            done += 1
    return done


def record(conn: sqlite3.Connection, target: str, settled: Sequence[Settled[Message]],
           now_ms: int, breaker: BreakerRow | None = None) -> Recorded[Message]:
    """Write a batch's outcomes (and the channel's breaker) in one transaction; only pending
    messages change."""
    out: Recorded[Message] = Recorded()
    with atomic(conn, "notify"):
        for s in settled:
            record_outcome(conn, "notify_messages", s, now_ms, out)
        if breaker is not None:
            save_breaker_after_batch(conn, target, breaker, now_ms, settled, table=TARGETS_TABLE,
                                     items="notify_messages", column="channel")
    return out


def _max_item_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT MAX(item_id) FROM notify_messages").fetchone()[0] or 0)


def _enqueued_since(conn: sqlite3.Connection, after: int) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    watermark = after
    for r in conn.execute("SELECT channel, COUNT(*), MAX(item_id) FROM notify_messages "
                          "WHERE item_id > ? GROUP BY channel", (after,)):
        counts[str(r[0])] = int(r[1])
        watermark = max(watermark, int(r[2]))
    return counts, watermark


def status(conn: sqlite3.Connection, since_ms: int | None = None) -> dict[str, TargetStatus]:
    """Every known channel's counts and state (CLI ``notify status``, the metrics)."""
    found: dict[str, dict[str, Any]] = {}
    for r in conn.execute(
            "SELECT target, paused, paused_ms, breaker, consecutive_failures, "
            "breaker_opened_ms, breaker_probe_ms, last_error, last_failure_ms, last_success_ms "
            f"FROM {TARGETS_TABLE}"):
        found[str(r[0])] = {"paused": bool(r[1]), "paused_ms": r[2],
                            "breaker": _breaker_row(tuple(r)[3:])}
    for r in conn.execute("SELECT channel, COUNT(*), MIN(created_ms) FROM notify_messages "
                          "WHERE state = 'pending' GROUP BY channel"):
        found.setdefault(str(r[0]), {}).update(pending=int(r[1]), oldest_pending_ms=r[2])
    for r in conn.execute("SELECT channel, COUNT(*) FROM notify_messages WHERE state = 'parked' "
                          "GROUP BY channel"):
        found.setdefault(str(r[0]), {})["parked"] = int(r[1])
    if since_ms is not None:
        for r in conn.execute("SELECT channel || '' AS c, COUNT(*) FROM notify_messages "
                              "WHERE state = 'delivered' AND delivered_ms >= ? GROUP BY c",
                              (since_ms,)):
            found.setdefault(str(r[0]), {})["delivered_since"] = int(r[1])
    return {name: TargetStatus(name, **values) for name, values in sorted(found.items())}


def prune(conn: sqlite3.Connection, before_ms: int) -> int:
    """Delete delivered and cancelled messages, and decisions, older than ``before_ms`` (data
    minimisation); parked and pending messages stay. Returns how many messages went."""
    with atomic(conn, "notify"):
        count = conn.execute("DELETE FROM notify_messages WHERE state IN ('delivered', "
                             "'cancelled') AND updated_ms < ?", (before_ms,)).rowcount
        conn.execute("DELETE FROM notify_decisions WHERE decided_ms < ?", (before_ms,))
        return count


# -- channels ----------------------------------------------------------------------------------

def build_channel(config: ChannelConfig, *, clock: Clock,
                  config_path: Path | None = None) -> Channel:
    """``gateway.channels.<type>.build(config, clock=clock)`` (``config_path`` too when its
    ``build`` takes it). An unknown type is a ConfigError naming ``notify.channel.<name>.type``.
    """
    path = config_path or Path("(config)")
    module_name = f"{channels_pkg.__name__}.{config.type}"
    key = f"notify.channel.{config.name}.type"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(path, key, f"unknown channel type {config.type!r}") from None
    build = getattr(module, "build", None)
    if not callable(build):
        raise ConfigError(path, key, f"{module_name} is not a channel (it has no build())")
    kwargs: dict[str, Any] = {"clock": clock}
    try:
        if config_path is not None and "config_path" in inspect.signature(build).parameters:
            kwargs["config_path"] = config_path
    except (TypeError, ValueError):
        pass
    channel = build(config, **kwargs)
    if channel.max_batch < 1 or channel.concurrency < 1:
        raise ConfigError(path, f"notify.channel.{config.name}.max_batch",
                          "the channel needs max_batch and concurrency of at least 1")
    return cast(Channel, channel)


# -- the operator's side (CLI, another process) ------------------------------------------------

@dataclass(frozen=True)
class MessageRow:
    """One stored message for the CLI: no phone; the text only when asked for."""

    item_id: int
    message_id: str
    channel: str
    kind: str
    student_id: str | None
    guardian_id: int | None
    school_date: str
    state: str
    attempts: int
    next_attempt_ms: int
    last_error: str | None
    parked_reason: str | None
    created_ms: int
    delivered_ms: int | None
    locale: str
    text: str


_MESSAGE_COLUMNS = ("item_id, message_id, channel, kind, student_id, guardian_id, school_date, "
                    "state, attempts, next_attempt_ms, last_error, parked_reason, created_ms, "
                    "delivered_ms, locale, text")


def messages(conn: sqlite3.Connection, channel: str | None = None,
             state: str | None = "pending", limit: int = 50, *,
             student_id: str | None = None) -> list[MessageRow]:
    """Stored messages, newest first (pending: in delivery order)."""
    where: list[str] = []
    args: list[object] = []
    if channel is not None:
        where.append("channel = ?")
        args.append(channel)
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if student_id is not None:
        where.append("student_id = ?")
        args.append(student_id)
    order = "next_attempt_ms, item_id" if state == "pending" else "item_id DESC"
    sql = (f"SELECT {_MESSAGE_COLUMNS} FROM notify_messages "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order} LIMIT ?")
    return [MessageRow(*tuple(r)) for r in conn.execute(sql, [*args, limit])]


@dataclass(frozen=True)
class Decision:
    decision_id: int
    decided_ms: int
    event_key: str
    revision: int
    change: str
    kind: str
    student_id: str | None
    school_date: str
    guardian_id: int | None
    outcome: str
    reason: str
    item_id: int | None
    state: str | None  # the message's delivery state, when there is one


def decisions(conn: sqlite3.Connection, *, student_id: str | None = None,
              school_date: str | None = None, guardian_id: int | None = None,
              limit: int = 200) -> list[Decision]:
    """The audit, oldest first: what was decided for each (event, recipient) and why."""
    where, args = [], []
    for column, value in (("d.student_id", student_id), ("d.school_date", school_date),
                          ("d.guardian_id", guardian_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = ("SELECT d.decision_id, d.decided_ms, d.event_key, d.revision, d.change, d.kind, "
           "d.student_id, d.school_date, d.guardian_id, d.outcome, d.reason, d.item_id, m.state "
           "FROM notify_decisions d LEFT JOIN notify_messages m ON m.item_id = d.item_id "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY d.decision_id LIMIT ?")
    return [Decision(*tuple(r)) for r in conn.execute(sql, [*args, limit])]


def retry_parked(conn: sqlite3.Connection, channel: str, item_ids: Sequence[int] | None,
                 now_ms: int) -> list[int]:
    """Parked messages of ``channel`` (all when ``item_ids`` is None) back to pending, due now.
    All or nothing: an id that is not a parked message of ``channel`` is refused."""
    try:
        return outbox_retry_parked(conn, channel, item_ids, now_ms, items="notify_messages",
                                   column="channel")
    except OutboxError as exc:
        raise NotifyError("not_parked", str(exc)) from None


def pause(conn: sqlite3.Connection, channel: str, paused: bool, now_ms: int) -> bool:
    """Pause or resume a channel (the running gateway picks it up within ``poll_s``)."""
    return set_paused(conn, channel, paused, now_ms, table=TARGETS_TABLE)


def set_consent(conn: sqlite3.Connection, guardian_id: int, consent: bool, source: str,
                now_ms: int) -> bool:
    """Record a guardian's consent given or withdrawn, with its time and source (the history
    is written by a trigger). False if it already was so; NotifyError if no such guardian."""
    with atomic(conn, "notify"):
        row = conn.execute("SELECT consent FROM guardians WHERE guardian_id = ?",
                           (guardian_id,)).fetchone()
        if row is None:
            raise NotifyError("bad_value", f"no guardian {guardian_id}")
        if bool(row[0]) == consent:
            return False
        conn.execute("UPDATE guardians SET consent = ?, consent_ms = ?, consent_source = ? "
                     "WHERE guardian_id = ?", (int(consent), now_ms, source, guardian_id))
        return True


def set_opt_out(conn: sqlite3.Connection, guardian_id: int, kind: str, opted_out: bool,
                source: str, now_ms: int) -> bool:
    """Turn one kind off (``opted_out``) or back on for a guardian. False if it already was."""
    with atomic(conn, "notify"):
        if conn.execute("SELECT 1 FROM guardians WHERE guardian_id = ?",
                        (guardian_id,)).fetchone() is None:
            raise NotifyError("bad_value", f"no guardian {guardian_id}")
        if opted_out:
            return conn.execute(
                "INSERT INTO guardian_opt_outs (guardian_id, kind, set_ms, source) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (guardian_id, kind, now_ms, source)).rowcount == 1
        return conn.execute("DELETE FROM guardian_opt_outs WHERE guardian_id = ? AND kind = ?",
                            (guardian_id, kind)).rowcount == 1


def purge(conn: sqlite3.Connection, *, student_id: str | None = None,
          guardian_id: int | None = None, now_ms: int) -> dict[str, int]:
    """Remove the personal data the notifier holds for a student (all their guardians) or one
    guardian: guardian rows (name, phone) and opt-outs go; stored messages keep their ids,
    kinds, times and delivery state but their text and template data become
    :data:`REDACTED`; what was not delivered yet is cancelled. The consent history and the
    decisions (ids, times, reasons: no names or phones) stay for audit. Returns the rows
    changed per table. Nothing happens unless the subject exists (NotifyError)."""
    if (student_id is None) == (guardian_id is None):
        raise ValueError("give a student or a guardian")
    with atomic(conn, "notify"):
        if guardian_id is not None:
            guardians = [r[0] for r in conn.execute(
                "SELECT guardian_id FROM guardians WHERE guardian_id = ?", (guardian_id,))]
            known = bool(guardians) or conn.execute(
                "SELECT 1 FROM notify_messages WHERE guardian_id = ?",
                (guardian_id,)).fetchone() is not None
            message_where, message_args = "guardian_id = ?", [cast(object, guardian_id)]
        else:
            guardians = [r[0] for r in conn.execute(
                "SELECT guardian_id FROM guardians WHERE student_id = ?", (student_id,))]
            known = conn.execute("SELECT 1 FROM students WHERE student_id = ?",
                                 (student_id,)).fetchone() is not None
            message_where, message_args = "student_id = ?", [cast(object, student_id)]
        if not known:
            subject = "guardian" if student_id is None else "student"
            raise NotifyError("bad_value", f"no such {subject}")
        counts = {"notify_messages_cancelled": 0, "notify_messages_redacted": 0,
                  "guardian_opt_outs": 0, "guardians": 0}
        counts["notify_messages_cancelled"] = conn.execute(
            "UPDATE notify_messages SET state = 'cancelled', parked_reason = 'purged', "
            f"updated_ms = ? WHERE {message_where} AND state IN ('pending', 'parked')",
            [now_ms, *message_args]).rowcount
        counts["notify_messages_redacted"] = conn.execute(
            "UPDATE notify_messages SET text = ?, template_data = '{}', redacted_ms = ?, "
            f"updated_ms = ? WHERE {message_where} AND redacted_ms IS NULL",
            [REDACTED, now_ms, now_ms, *message_args]).rowcount
        for gid in guardians:
            counts["guardian_opt_outs"] += conn.execute(
                "DELETE FROM guardian_opt_outs WHERE guardian_id = ?", (gid,)).rowcount
            counts["guardians"] += conn.execute(
                "DELETE FROM guardians WHERE guardian_id = ?", (gid,)).rowcount
        return counts
