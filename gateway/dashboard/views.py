"""What the dashboard's pages show that ``gateway/reports.py`` does not already compute: the
outboxes at a glance, the charts' numbers and the operator's actions on cards.

The tables of readers, attendance, unknown cards and quarantine, and the exports, are
``gateway.reports``'s (the CLI's) own functions; the outbox and notification queues are read and
retried with ``gateway.outbox`` and ``gateway.notify``; a card is assigned through
``gateway.roster.apply_roster``, so the roster's rules apply to it as to an import.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal

from gateway import notify, outbox, reports, roster
from gateway.cards import printed_numbers
from gateway.config import GatewayConfig
from gateway.db import atomic
from gateway.outbox import BreakerState, TargetStatus
from gateway.rules import SchoolCalendar, SessionWindow, from_ms

QueueKind = Literal["forward", "notify"]


# -- outboxes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueRow:
    kind: QueueKind
    name: str
    type: str | None  # None: no longer configured
    state: Literal["running", "paused", "disabled", "not_configured"]
    pending: int
    parked: int
    delivered_today: int
    oldest_pending_age_s: int | None
    breaker: BreakerState
    failures: int
    last_error: str | None


def _rows(kind: QueueKind, configured: dict[str, tuple[str, bool]],
          found: dict[str, TargetStatus], now_ms: int) -> list[QueueRow]:
    names = list(configured) + sorted(n for n in found if n not in configured)
    out = []
    for name in names:
        s = found.get(name, TargetStatus(name))
        kind_type, enabled = configured.get(name, (None, False))
        state: Literal["running", "paused", "disabled", "not_configured"] = (
            "not_configured" if kind_type is None else "disabled" if not enabled
            else "paused" if s.paused else "running")
        out.append(QueueRow(
            kind, name, kind_type, state, s.pending, s.parked, s.delivered_since,
            None if s.oldest_pending_ms is None else max(0, (now_ms - s.oldest_pending_ms) // 1000),
            s.breaker.state, s.breaker.failures, s.breaker.last_error))
    return out


def queues(conn: sqlite3.Connection, config: GatewayConfig, calendar: SchoolCalendar,
           now_ms: int) -> tuple[list[QueueRow], list[QueueRow]]:
    """Every upstream target and every notification channel (configured, or with items)."""
    midnight = calendar.at(calendar.local_date(now_ms), dt.time())
    targets = _rows("forward", {t.name: (t.type, t.enabled) for t in config.forward},
                    outbox.status(conn, since_ms=midnight), now_ms)
    channels = _rows("notify", {c.name: (c.type, c.enabled) for c in config.notify.channels},
                     notify.status(conn, since_ms=midnight), now_ms)
    return targets, channels


@dataclass(frozen=True)
class ParkedItem:
    item_id: int
    kind: str
    school_date: str
    student_id: str | None
    attempts: int
    since_ms: int
    reason: str


def parked(conn: sqlite3.Connection, kind: QueueKind, name: str,
           limit: int = 50) -> list[ParkedItem]:
    if kind == "forward":
        return [ParkedItem(i.item_id, i.kind, i.school_date, i.student_id, i.attempts,
                           i.updated_ms, i.parked_reason or "")
                for i in outbox.items(conn, name, "parked", limit)]
    return [ParkedItem(m.item_id, m.kind, m.school_date, m.student_id, m.attempts,
                       m.created_ms, m.parked_reason or m.last_error or "")
            for m in notify.messages(conn, name, "parked", limit)]


def retry(conn: sqlite3.Connection, kind: QueueKind, name: str, item_ids: list[int] | None,
          now_ms: int) -> list[int]:
    """Parked items back to pending (``OutboxError`` as the CLI gets it)."""
    if kind == "forward":
        return outbox.retry_parked(conn, name, item_ids, now_ms)
    return notify.retry_parked(conn, name, item_ids, now_ms)


# -- charts ------------------------------------------------------------------------------------

def arrivals(conn: sqlite3.Connection, window: SessionWindow, zone: dt.tzinfo, now_ms: int
             ) -> tuple[list[tuple[str, int]], int]:
    """Check-ins per minute of a session, from 30 minutes before its start to the later of 30
    minutes after ``late_after`` and the last arrival (not beyond its end or now); and the bar
    where lateness begins."""
    counts: Counter[int] = Counter()
    for (at_ms,) in conn.execute(
            "SELECT at_ms FROM attendance_events WHERE school_date = ? AND session = ? "
            "AND kind = 'check_in' AND voided_ms IS NULL",
            (window.school_date.isoformat(), window.name)):
        counts[int(at_ms) // 60_000] += 1
    start = window.start_ms // 60_000 - 30
    late = window.late_after_ms // 60_000
    end = min(max([late + 30, *counts]), window.end_ms // 60_000,
              max(late + 30, now_ms // 60_000))
    return ([(from_ms(m * 60_000, zone).strftime("%H:%M"), counts.get(m, 0))
             for m in range(start, end + 1)], late - start)


def weekly_rates(conn: sqlite3.Connection, calendar: SchoolCalendar, today: dt.date,
                 weeks: int) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """Attendance rate per class and week (Monday to Sunday) over the last ``weeks`` weeks up to
    today, from ``reports.attendance_rows`` (the CLI's definition of attendance): present and
    late count as attending, absent not, sessions not closed yet are left out."""
    monday = today - dt.timedelta(days=today.weekday())
    first = monday - dt.timedelta(weeks=weeks - 1)
    starts = [first + dt.timedelta(weeks=w) for w in range(weeks)]
    attended: dict[tuple[str, int], int] = defaultdict(int)
    counted: dict[tuple[str, int], int] = defaultdict(int)
    names: dict[str, str] = {}
    for row in reports.attendance_rows(conn, calendar, first, today):
        if row.status not in ("present", "late", "absent") or row.class_id is None:
            continue
        week = (dt.date.fromisoformat(row.school_date) - first).days // 7
        names[row.class_id] = row.class_name or row.class_id
        counted[(row.class_id, week)] += 1
        attended[(row.class_id, week)] += row.status != "absent"
    table = [(names[c], [attended[(c, w)] / counted[(c, w)] if counted[(c, w)] else None
                         for w in range(weeks)]) for c in sorted(names)]
    return [d.strftime("%d/%m") for d in starts], table


# -- unknown cards -----------------------------------------------------------------------------

class ActionError(Exception):
    """An operator's action refused: an i18n key and its parameters."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def acknowledge(conn: sqlite3.Connection, card: str) -> None:
    with atomic(conn, "dashboard_ack"):
        if conn.execute("UPDATE unknown_cards SET acknowledged = 1 WHERE card = ?",
                        (card,)).rowcount == 0:
            raise ActionError("unknown.no_card", card=card)


@dataclass(frozen=True)
class Assigned:
    number: str
    already: bool


def _reason(code: str, **params: str) -> str:
    """A roster error's text in both languages (``gateway.roster.REASONS``)."""
    vi, en = roster.REASONS[code]
    for name, value in params.items():
        vi, en = vi.replace("{" + name + "}", value), en.replace("{" + name + "}", value)
    return f"{vi} / {en}"


def _printed_number(conn: sqlite3.Connection, card: str) -> str:
    """The number to put on the roster for a tapped card: its hex form, or another printed form
    when the hex one is not one the roster takes."""
    hexed = card.partition(":")[2]
    for number in [hexed, *printed_numbers(card)]:
        try:
            roster.card_owner(conn, number)  # ValueError: not a printed form the roster takes
        except ValueError:
            continue
        return roster.parse_card_number(number)
    raise ActionError("unknown.refused", reason=_reason("bad_card_number", card=hexed))


def assign_card(conn: sqlite3.Connection, card: str, student_id: str, source: str,
                now_ms: int) -> Assigned:
    """Give the student an unknown card's number as a one-student roster import, so the
    roster's checks and audit apply (``roster_imports``); the card is then acknowledged. A card
    that any printed form of which belongs to another student is refused with the roster's
    ``card_taken`` text."""
    student_id = student_id.strip()
    row = conn.execute("SELECT full_name, class_id, active FROM students WHERE student_id = ?",
                       (student_id,)).fetchone()
    if row is None:
        raise ActionError("unknown.no_student", student=student_id)
    if not row["active"]:
        raise ActionError("unknown.inactive", student=student_id)
    if conn.execute("SELECT 1 FROM unknown_cards WHERE card = ?", (card,)).fetchone() is None:
        raise ActionError("unknown.no_card", card=card)
    number = _printed_number(conn, card)
    forms = printed_numbers(card)
    marks = ",".join("?" * len(forms))
    owners = {str(r[0]) for r in conn.execute(
        f"SELECT student_id FROM card_numbers WHERE number IN ({marks})", forms)}
    if student_id in owners:
        return Assigned(number, True)
    if owners:
        raise ActionError("unknown.refused", reason=_reason(
            "card_taken", card=number, other=", ".join(sorted(owners)), student=student_id))
    owned = [str(r[0]) for r in conn.execute(
        "SELECT number FROM card_numbers WHERE student_id = ?", (student_id,))]
    record = roster.StudentRecord(
        student_id, str(row["full_name"]), row["class_id"], source, 0, keep_class=True,
        cards=[roster.CardRecord(n, source, 0) for n in [*owned, number]])
    result = roster.apply_roster(conn, roster.Roster("sheet", source,
                                                     students={student_id: record}),
                                 clock=lambda: now_ms)
    if result.errors:
        raise ActionError("unknown.refused", reason=" ".join(
            f"{e.message('vi')} / {e.message('en')}" for e in result.errors))
    acknowledge(conn, card)
    return Assigned(number, False)
