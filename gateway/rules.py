"""Attendance rules: from stored scans to attendance events (docs/attendance-rules.md).

The ingest calls :meth:`AttendanceRules.on_scans` inside the transaction that stored the scans, so
events commit atomically with their scans; a timer calls :meth:`AttendanceRules.close_due_sessions`
to record absences. The events of one student in one session are a pure function of every tap
received so far (:func:`session_events`), so the order in which taps arrive never changes the
result: a reader's backlog uploaded hours late revises the events it disproves in place, under
the same stable ``event_key``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.cards import student_for_card
from gateway.config import AttendanceConfig, Session
from gateway.db import atomic
from gateway.types import Clock, StoredScan
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

EventKind = Literal["check_in", "late", "check_out", "absent", "unknown_card"]
ChangeKind = Literal["created", "revised", "voided"]
STUDENT_KINDS: tuple[EventKind, ...] = ("check_in", "late", "check_out")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_CARD_CACHE_MAX = 50_000  # card -> student lookups kept (a big school has a few thousand cards)


def event_key(kind: str, subject: str, school_date: dt.date | str, session: str) -> str:
    """The stable idempotency key of an event: 32 hex digits of a SHA-256.

    ``subject`` is the student ID, or the canonical card ID for ``unknown_card``. The same fact
    always gets the same key, whatever the order its scans arrived in, so forwarders and
    notifiers that send it upstream under this key never create a second record on a retry.
    """
    text = f"v1|{kind}|{subject}|{school_date}|{session}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def to_ms(when: dt.datetime) -> int:
    """Unix milliseconds of an aware datetime, exactly."""
    return (when - _EPOCH) // _MS


def from_ms(ms: int, zone: dt.tzinfo) -> dt.datetime:
    """The local time of Unix milliseconds, exactly."""
    return (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(zone)


@dataclass(frozen=True)
class SessionWindow:
    """One session on one school date, in Unix milliseconds.

    A tap in ``[start_ms, end_ms)`` may be an arrival; a tap in ``[start_ms, until_ms)`` may be a
    departure, where ``until_ms`` is the next session's start that day or local midnight.
    """

    session: Session
    school_date: dt.date
    start_ms: int
    late_after_ms: int
    absent_at_ms: int
    end_ms: int
    until_ms: int

    @property
    def name(self) -> str:
        return self.session.name


class SchoolCalendar:
    """School days, holidays and session windows in the school's time zone."""

    def __init__(self, config: AttendanceConfig, timezone: dt.tzinfo) -> None:
        self.config = config
        self.timezone = timezone
        self._windows: dict[dt.date, tuple[SessionWindow, ...]] = {}

    def local_date(self, at_ms: int) -> dt.date:
        return from_ms(at_ms, self.timezone).date()

    def at(self, day: dt.date, time: dt.time) -> int:
        """Unix milliseconds of a local date and time of day."""
        return to_ms(dt.datetime.combine(day, time, tzinfo=self.timezone))

    def day_kind(self, day: dt.date) -> Literal["school_day", "holiday", "not_school_day"]:
        if day in self.config.holidays:
            return "holiday"
        if day.weekday() not in self.config.school_days:
            return "not_school_day"
        return "school_day"

    def is_school_day(self, day: dt.date) -> bool:
        return self.day_kind(day) == "school_day"

    def windows(self, day: dt.date) -> tuple[SessionWindow, ...]:
        """The day's sessions in time order; none on a holiday or a day without school."""
        found = self._windows.get(day)
        if found is None:
            found = self._compute_windows(day)
            if len(self._windows) > 64:
                self._windows.clear()
            self._windows[day] = found
        return found

    def _compute_windows(self, day: dt.date) -> tuple[SessionWindow, ...]:
        if not self.is_school_day(day):
            return ()
        sessions = self.config.sessions  # sorted by start, not overlapping (gateway/config.py)
        midnight = to_ms(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(),
                                             tzinfo=self.timezone))
        out = []
        for i, s in enumerate(sessions):
            until = self.at(day, sessions[i + 1].start) if i + 1 < len(sessions) else midnight
            out.append(SessionWindow(s, day, self.at(day, s.start), self.at(day, s.late_after),
                                     self.at(day, s.absent_at), self.at(day, s.end), until))
        return tuple(out)

    def place(self, at_ms: int) -> tuple[dt.date, SessionWindow | None]:
        """The school date of a tap and the session it belongs to (None: outside every one)."""
        day = self.local_date(at_ms)
        for window in self.windows(day):
            if window.start_ms <= at_ms < window.until_ms:
                return day, window
        return day, None


@dataclass(frozen=True)
class Tap:
    """A placed scan, as the rules see it. Ties in time are broken by the record's identity,
    which (unlike ``scan_id``) does not depend on the order of arrival."""

    scan_id: int
    at_ms: int
    gate: str
    card: str
    reader_id: int
    boot: int
    seq: int

    @property
    def order(self) -> tuple[int, int, int, int]:
        return (self.at_ms, self.reader_id, self.boot, self.seq)


def effective_taps(taps: Iterable[Tap], repeat_window_ms: int) -> list[Tap]:
    """The taps that count, in time order: a tap within ``repeat_window_ms`` of the last
    counted tap at the same gate (any reader of that gate) is a repeat and does not count."""
    counted: list[Tap] = []
    last_at_gate: dict[str, int] = {}
    for tap in sorted(taps, key=lambda t: t.order):
        previous = last_at_gate.get(tap.gate)
        if previous is not None and tap.at_ms - previous <= repeat_window_ms:
            continue
        last_at_gate[tap.gate] = tap.at_ms
        counted.append(tap)
    return counted


def session_events(window: SessionWindow, taps: Iterable[Tap],
                   repeat_window_ms: int) -> dict[EventKind, Tap]:
    """A student's events in one session, from all their taps in it (any order).

    - ``check_in``: the earliest tap, if it is before the session's ``end``;
    - ``late``: the check-in, if it is after ``late_after``;
    - ``check_out``: the first counted tap at least ``min_stay_min`` after the check-in and not
      the check-in itself, up to the next session's start (or midnight).
    """
    inside = [t for t in taps if window.start_ms <= t.at_ms < window.until_ms]
    counted = effective_taps(inside, repeat_window_ms)
    if not counted or counted[0].at_ms >= window.end_ms:
        return {}
    first = counted[0]
    events: dict[EventKind, Tap] = {"check_in": first}
    if first.at_ms > window.late_after_ms:
        events["late"] = first
    leave_from = first.at_ms + window.session.min_stay_min * 60_000
    for tap in counted[1:]:
        if tap.at_ms >= leave_from:
            events["check_out"] = tap
            break
    return events


@dataclass(frozen=True)
class EventChange:
    """What the rules did to one event, handed to listeners inside the same transaction (the
    outboxes enqueue from here). ``revision`` is the event's revision after the change."""

    event_id: int
    event_key: str
    kind: EventKind
    change: ChangeKind
    revision: int


EventListener = Callable[[sqlite3.Connection, EventChange], None]


@dataclass
class _Stored:
    event_id: int
    at_ms: int
    scan_id: int | None
    gate: str | None
    card: str | None
    revision: int
    voided: bool


class AttendanceRules:
    """Turns scans into attendance events; see the module docstring and
    docs/attendance-rules.md for the rules and their reasons."""

    def __init__(self, config: AttendanceConfig, timezone: dt.tzinfo, repeat_window_s: int,
                 clock: Clock, *, absent_lookback_days: int = 1, absent_hold_s: int = 1800,
                 listeners: Sequence[EventListener] = ()) -> None:
        self.calendar = SchoolCalendar(config, timezone)
        self._repeat_ms = repeat_window_s * 1000
        self._clock = clock
        self._lookback_days = absent_lookback_days
        self._hold_ms = absent_hold_s * 1000
        self._started_ms = clock()
        self._listeners = tuple(listeners)
        self._cards: dict[str, str | None] = {}
        self._roster_version = -1

    # --- scans -------------------------------------------------------------------------------

    def on_scans(self, conn: sqlite3.Connection, scans: Sequence[StoredScan]) -> None:
        """Apply newly stored scans. Call inside the transaction that inserted them.

        Idempotent: a scan already applied is skipped. Raises only on database errors, after
        undoing its own writes (the caller's transaction is left as it was before the call).
        """
        if not scans:
            return
        now = self._clock()
        with atomic(conn, "attendance_rules"):
            students, cards = self._place(conn, scans)
            changes = 0
            for student_id, day, window in sorted(students, key=_group_order):
                changes += self._reconcile_student(conn, student_id, day, window, now)
            for card, day, window in sorted(cards, key=_group_order):
                changes += self._reconcile_card(conn, card, day, window, now)
        log.debug("attendance rules applied", extra={"scans": len(scans), "changes": changes})

    def catch_up(self, conn: sqlite3.Connection, since_ms: int, chunk: int = 512) -> int:
        """Apply stored scans (at or after ``since_ms``) the rules have not seen yet, e.g. after
        an ingest that stored scans without calling the rules. Returns the number applied."""
        done = 0
        while True:
            rows = conn.execute(
                "SELECT s.scan_id, s.reader_id, r.gate, s.card, s.at_ms, s.time_source "
                "FROM scans s JOIN readers r ON r.reader_id = s.reader_id "
                "WHERE s.at_ms >= ? AND NOT EXISTS "
                "(SELECT 1 FROM attendance_taps t WHERE t.scan_id = s.scan_id) "
                "ORDER BY s.scan_id LIMIT ?", (since_ms, chunk)).fetchall()
            if not rows:
                return done
            self.on_scans(conn, [StoredScan(int(r[0]), int(r[1]), str(r[2]), str(r[3]),
                                            int(r[4]), r[5]) for r in rows])
            done += len(rows)

    def _place(self, conn: sqlite3.Connection, scans: Sequence[StoredScan]
               ) -> tuple[set[tuple[str, dt.date, SessionWindow]],
                          set[tuple[str, dt.date, SessionWindow]]]:
        """Record each new scan in attendance_taps; return the student and unknown-card
        sessions to recompute."""
        known = self._known_cards(conn)
        students: set[tuple[str, dt.date, SessionWindow]] = set()
        cards: set[tuple[str, dt.date, SessionWindow]] = set()
        for scan in scans:
            if scan.card not in known:
                known[scan.card] = _student(conn, scan.card)
            student_id = known[scan.card]
            day, window = self.calendar.place(scan.at_ms)
            inserted = conn.execute(
                "INSERT INTO attendance_taps (scan_id, school_date, session, student_id, card, "
                "gate, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scan_id) DO NOTHING",
                (scan.scan_id, day.isoformat(), window.name if window else None, student_id,
                 scan.card, scan.gate, scan.at_ms)).rowcount
            if inserted != 1:
                continue  # applied before
            if student_id is None:
                _upsert_unknown_card(conn, scan)
            if window is None:
                continue  # not a school day, a holiday, or outside every session: no event
            if student_id is None:
                cards.add((scan.card, day, window))
            else:
                students.add((student_id, day, window))
        return students, cards

    def _known_cards(self, conn: sqlite3.Connection) -> dict[str, str | None]:
        """Card -> student lookups kept across calls while the roster's card numbers are
        unchanged (``roster_version``, moved by triggers whoever changes them)."""
        version = int(conn.execute("SELECT version FROM roster_version").fetchone()[0])
        if version != self._roster_version or len(self._cards) > _CARD_CACHE_MAX:
            self._cards = {}
            self._roster_version = version
        return self._cards

    def _taps(self, conn: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[Tap]:
        rows = conn.execute(
            "SELECT t.scan_id, t.at_ms, t.gate, t.card, s.reader_id, s.boot, s.seq "
            "FROM attendance_taps t JOIN scans s ON s.scan_id = t.scan_id "
            f"WHERE {where} AND t.school_date = ? AND t.session = ?", args).fetchall()
        return [Tap(int(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]))
                for r in rows]

    def _reconcile_student(self, conn: sqlite3.Connection, student_id: str, day: dt.date,
                           window: SessionWindow, now: int) -> int:
        taps = self._taps(conn, "t.student_id = ?", (student_id, day.isoformat(), window.name))
        desired = session_events(window, taps, self._repeat_ms)
        keys = {kind: event_key(kind, student_id, day, window.name)
                for kind in (*STUDENT_KINDS, "absent")}
        stored = self._stored(conn, keys.values())
        changes = 0
        for kind in STUDENT_KINDS:
            changes += self._apply(conn, kind, keys[kind], student_id, day, window,
                                   desired.get(kind), stored.get(keys[kind]), now)
        absent = stored.get(keys["absent"])
        if "check_in" in desired and absent is not None and not absent.voided:
            self._void(conn, absent, "absent", keys["absent"], now)  # disproved by a backlog
            changes += 1
        return changes

    def _reconcile_card(self, conn: sqlite3.Connection, card: str, day: dt.date,
                        window: SessionWindow, now: int) -> int:
        taps = self._taps(conn, "t.card = ? AND t.student_id IS NULL",
                          (card, day.isoformat(), window.name))
        first = min(taps, key=lambda t: t.order) if taps else None
        key = event_key("unknown_card", card, day, window.name)
        return self._apply(conn, "unknown_card", key, None, day, window, first,
                           self._stored(conn, [key]).get(key), now)

    def _stored(self, conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, _Stored]:
        wanted = list(keys)
        rows = conn.execute(
            "SELECT event_key, event_id, at_ms, scan_id, gate, card, revision, voided_ms "
            f"FROM attendance_events WHERE event_key IN ({','.join('?' * len(wanted))})",
            wanted).fetchall()
        return {str(r[0]): _Stored(int(r[1]), int(r[2]), r[3], r[4], r[5], int(r[6]),
                                   r[7] is not None) for r in rows}

    def _apply(self, conn: sqlite3.Connection, kind: EventKind, key: str,
               student_id: str | None, day: dt.date, window: SessionWindow, tap: Tap | None,
               stored: _Stored | None, now: int) -> int:
        """Make the stored event of this kind match ``tap`` (None: the event does not hold)."""
        if tap is None:
            if stored is None or stored.voided:
                return 0
            self._void(conn, stored, kind, key, now)
            return 1
        if stored is None:
            cursor = conn.execute(
                "INSERT INTO attendance_events (event_key, kind, student_id, card, school_date, "
                "session, at_ms, gate, scan_id, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, kind, student_id, tap.card, day.isoformat(), window.name, tap.at_ms,
                 tap.gate, tap.scan_id, now))
            self._notify(conn, EventChange(int(cursor.lastrowid or 0), key, kind, "created", 0))
            return 1
        if not stored.voided and (stored.at_ms, stored.scan_id, stored.gate, stored.card) == (
                tap.at_ms, tap.scan_id, tap.gate, tap.card):
            return 0
        conn.execute(
            "UPDATE attendance_events SET at_ms = ?, scan_id = ?, gate = ?, card = ?, "
            "revision = ?, updated_ms = ?, voided_ms = NULL WHERE event_id = ?",
            (tap.at_ms, tap.scan_id, tap.gate, tap.card, stored.revision + 1, now,
             stored.event_id))
        self._notify(conn, EventChange(stored.event_id, key, kind, "revised", stored.revision + 1))
        return 1

    def _void(self, conn: sqlite3.Connection, stored: _Stored, kind: EventKind, key: str,
              now: int) -> None:
        conn.execute("UPDATE attendance_events SET revision = ?, updated_ms = ?, voided_ms = ? "
                     "WHERE event_id = ?", (stored.revision + 1, now, now, stored.event_id))
        self._notify(conn, EventChange(stored.event_id, key, kind, "voided", stored.revision + 1))

    def _notify(self, conn: sqlite3.Connection, change: EventChange) -> None:
        for listener in self._listeners:
            listener(conn, change)

    # --- absences ----------------------------------------------------------------------------

    def close_due_sessions(self, conn: sqlite3.Connection, now_ms: int) -> int:
        """Record ``absent`` for every active student without a check-in in each session whose
        ``absent_at`` has passed, today and up to ``absent_lookback_days`` before. Each session
        is closed once; returns the number of absences created.

        A session is closed only when the readers have caught up with it (each active reader's
        latest heartbeat came after ``absent_at``, online, with an empty queue), or, failing
        that, ``absent_hold_s`` after ``absent_at`` or after this gateway started, whichever is
        later, so a reader's backlog is not reported as absences.
        """
        today = self.calendar.local_date(now_ms)
        created = 0
        for back in range(self._lookback_days, -1, -1):
            day = today - dt.timedelta(days=back)
            for window in self.calendar.windows(day):
                if now_ms < window.absent_at_ms or not self._settled(conn, window, now_ms):
                    continue
                with atomic(conn, "attendance_rules"):
                    created += self._close(conn, window, now_ms)
        return created

    def _settled(self, conn: sqlite3.Connection, window: SessionWindow, now_ms: int) -> bool:
        if now_ms >= max(window.absent_at_ms, self._started_ms) + self._hold_ms:
            return True
        rows = conn.execute(
            "SELECT rs.state, rs.received_ms, rs.queue_depth FROM readers r "
            "LEFT JOIN reader_status rs ON rs.reader_id = r.reader_id "
            "WHERE r.status = 'active'").fetchall()
        return all(r[0] == "online" and r[1] >= window.absent_at_ms and r[2] == 0 for r in rows)

    def _close(self, conn: sqlite3.Connection, window: SessionWindow, now_ms: int) -> int:
        day = window.school_date.isoformat()
        if conn.execute("SELECT 1 FROM closed_sessions WHERE school_date = ? AND session = ?",
                        (day, window.name)).fetchone():
            return 0
        missing = conn.execute(
            "SELECT st.student_id FROM students st WHERE st.active = 1 AND NOT EXISTS ("
            " SELECT 1 FROM attendance_events e WHERE e.student_id = st.student_id"
            " AND e.school_date = ? AND e.session = ? AND e.kind IN ('check_in', 'absent'))"
            " ORDER BY st.student_id", (day, window.name)).fetchall()
        created = 0
        for (student_id,) in missing:
            key = event_key("absent", student_id, day, window.name)
            cursor = conn.execute(
                "INSERT INTO attendance_events (event_key, kind, student_id, school_date, "
                "session, at_ms, created_ms) VALUES (?, 'absent', ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_key) DO NOTHING",
                (key, student_id, day, window.name, window.absent_at_ms, now_ms))
            if cursor.rowcount == 1:
                created += 1
                self._notify(conn, EventChange(int(cursor.lastrowid or 0), key, "absent",
                                               "created", 0))
        conn.execute("INSERT INTO closed_sessions (school_date, session, closed_ms, absent_count) "
                     "VALUES (?, ?, ?, ?)", (day, window.name, now_ms, created))
        log.info("session closed", extra={"school_date": day, "session": window.name,
                                          "absent": created})
        return created


def _group_order(group: tuple[str, dt.date, SessionWindow]) -> tuple[dt.date, int, str]:
    return (group[1], group[2].start_ms, group[0])


def _student(conn: sqlite3.Connection, card: str) -> str | None:
    try:
        return student_for_card(conn, card)
    except (ProtocolError, ValueError):
        return None  # not a canonical card id: it cannot match a roster number


def _upsert_unknown_card(conn: sqlite3.Connection, scan: StoredScan) -> None:
    """first/last seen stay the earliest and latest tap whatever the order of arrival."""
    conn.execute(
        "INSERT INTO unknown_cards (card, first_ms, last_ms, times_seen, last_reader_id) "
        "VALUES (?, ?, ?, 1, ?) ON CONFLICT (card) DO UPDATE SET "
        "first_ms = CASE WHEN excluded.first_ms < unknown_cards.first_ms "
        "  THEN excluded.first_ms ELSE unknown_cards.first_ms END, "
        "last_reader_id = CASE WHEN excluded.last_ms >= unknown_cards.last_ms "
        "  THEN excluded.last_reader_id ELSE unknown_cards.last_reader_id END, "
        "last_ms = CASE WHEN excluded.last_ms > unknown_cards.last_ms "
        "  THEN excluded.last_ms ELSE unknown_cards.last_ms END, "
        "times_seen = unknown_cards.times_seen + 1",
        (scan.card, scan.at_ms, scan.at_ms, scan.reader_id))
