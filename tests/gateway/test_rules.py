"""Attendance rules: check-in, late, check-out, repeats, unknown cards, absences, arrival order."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import AttendanceConfig, Session
from gateway.db import atomic, connect
from gateway.rules import AttendanceRules, EventChange, event_key, to_ms
from gateway.types import StoredScan
from tests.log_text import logged_text

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
MONDAY = dt.date(2026, 9, 7)
HOLIDAY = dt.date(2026, 9, 2)  # a Wednesday
SUNDAY = dt.date(2026, 9, 6)
MORNING = Session("morning", dt.time(7, 0), dt.time(7, 15), dt.time(8, 30), dt.time(11, 30), 30)
AFTERNOON = Session("afternoon", dt.time(13, 0), dt.time(13, 15), dt.time(14, 0),
                    dt.time(17, 0), 30)
CONFIG = AttendanceConfig(school_days=(0, 1, 2, 3, 4, 5), holidays=frozenset({HOLIDAY}),
                          sessions=(MORNING, AFTERNOON))

# Readers 1 and 2 share gate "A"; reader 3 is gate "B".
READERS = ((1, "Cổng A 1", "A"), (2, "Cổng A 2", "A"), (3, "Cổng B", "B"))
CARDS = {"S1": "iso14443a:04A1B2C3", "S2": "iso14443a:04A1B2C4", "S3": "em4100:0102030405",
         "S4": "iso14443a:04A1B2C5"}
UNKNOWN = "iso14443a:DEADBEEF"


def at(hhmm: str, day: dt.date = MONDAY) -> int:
    """Unix ms of a school-local time, "07:05" or "07:05:30"."""
    return to_ms(dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tzinfo=TZ))


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class SchoolDb:
    """A gateway database filled directly: readers, a roster with cards, and scans."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.conn = connect(path)
        self._seq: dict[int, int] = {}
        c = self.conn
        for reader_id, name, gate in READERS:
            c.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                      "VALUES (?, ?, ?, 'active', 0)", (reader_id, name, gate))
            c.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, created_ms) "
                      "VALUES (?, ?, x'00', 'active', 0)", (reader_id, reader_id))
        c.execute("INSERT INTO classes VALUES ('6A', 'Lớp 6A', '6', 'test'), "
                  "('6B', 'Lớp 6B', '6', 'test')")
        for sid, name, class_id, active in (("S1", "Nguyễn Văn An", "6A", 1),
                                            ("S2", "Trần Thị Bình", "6A", 1),
                                            ("S3", "Lê Minh Châu", "6B", 1),
                                            ("S4", "Phạm Đức Dũng", "6B", 0)):
            c.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                      "updated_ms) VALUES (?, ?, ?, ?, 'test', 0)", (sid, name, class_id, active))
        # Roster numbers as printed: hex for the MIFARE cards, 10-digit decimal for the EM4100.
        for sid, number in (("S1", "04A1B2C3"), ("S2", "04A1B2C4"), ("S3", "0033752069"),
                            ("S4", "04A1B2C5")):
            c.execute("INSERT INTO card_numbers VALUES (?, ?, 'test', 0)", (number, sid))

    def insert(self, reader_id: int, card: str, at_ms: int, *, boot: int = 1,
               seq: int | None = None) -> StoredScan:
        """Store one scan as the ingest would, returning what it hands the rules."""
        if seq is None:
            seq = self._seq.get(reader_id, 0) + 1
        self._seq[reader_id] = max(seq, self._seq.get(reader_id, 0))
        cursor = self.conn.execute(
            "INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, clock_synced, "
            "ticks_ms, received_ms, at_ms, time_source, key_id, raw) "
            "VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, 'reader', ?, x'00')",
            (reader_id, boot, seq, card, at_ms, at_ms, at_ms, reader_id))
        gate = str(self.conn.execute("SELECT gate FROM readers WHERE reader_id = ?",
                                     (reader_id,)).fetchone()[0])
        return StoredScan(int(cursor.lastrowid or 0), reader_id, gate, card, at_ms, "reader")

    def heartbeat(self, reader_id: int, received_ms: int, *, state: str = "online",
                  queue_depth: int = 0, **extra: object) -> None:
        values: dict[str, object] = dict(
            reader_id=reader_id, received_ms=received_ms, boot=1, state=state, faults="",
            fw_version="1.0.0", link="wifi", rssi_dbm=-60, clock_synced=1,
            reader_time_s=received_ms // 1000, uptime_s=100, free_heap=50_000,
            queue_depth=queue_depth, oldest_unsent_age_s=0, dropped=0, last_ack_boot=1,
            last_ack_seq=0, clock_offset_ms=5, clock_health="ok")
        values.update(extra)
        names = ", ".join(values)
        marks = ", ".join("?" * len(values))
        self.conn.execute(f"INSERT OR REPLACE INTO reader_status ({names}) VALUES ({marks})",
                          tuple(values.values()))

    def events(self, *, voided: bool = False) -> list[tuple[str, str, str, str, str]]:
        """(kind, student or card, date, session, local time) of the live (or voided) events."""
        rows = self.conn.execute(
            "SELECT kind, COALESCE(student_id, card), school_date, session, at_ms "
            "FROM attendance_events WHERE (voided_ms IS NOT NULL) = ? ORDER BY at_ms, kind",
            (voided,)).fetchall()
        return [(r[0], r[1], r[2], r[3],
                 dt.datetime.fromtimestamp(r[4] / 1000, TZ).strftime("%H:%M:%S")) for r in rows]


@pytest.fixture
def school() -> Iterator[SchoolDb]:
    db = SchoolDb()
    yield db
    db.conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at("06:00"))


def make_rules(clock: FakeClock, repeat_window_s: int = 120,
               config: AttendanceConfig = CONFIG, **kwargs: object) -> AttendanceRules:
    return AttendanceRules(config, TZ, repeat_window_s, clock, **kwargs)  # type: ignore[arg-type]


def tap(school: SchoolDb, rules: AttendanceRules, reader_id: int, student: str, hhmm: str,
        day: dt.date = MONDAY) -> StoredScan:
    scan = school.insert(reader_id, CARDS.get(student, student), at(hhmm, day))
    rules.on_scans(school.conn, [scan])
    return scan


def test_first_tap_is_check_in_with_a_stable_key(school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    scan = tap(school, rules, 1, "S1", "07:05")
    assert school.events() == [("check_in", "S1", "2026-09-07", "morning", "07:05:00")]
    row = school.conn.execute("SELECT event_key, scan_id, gate, card, revision, created_ms "
                              "FROM attendance_events").fetchone()
    expected = hashlib.sha256(b"v1|check_in|S1|2026-09-07|morning").hexdigest()[:32]
    assert tuple(row) == (expected, scan.scan_id, "A", CARDS["S1"], 0, clock.now)
    assert event_key("check_in", "S1", MONDAY, "morning") == expected
    assert len({event_key(k, "S1", MONDAY, s) for k in ("check_in", "late", "check_out", "absent")
                for s in ("morning", "afternoon")}) == 8


def test_check_in_after_late_after_is_also_late(school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, "S1", "07:15:00")  # on the minute: not late
    tap(school, rules, 3, "S2", "07:15:01")
    assert school.events() == [
        ("check_in", "S1", "2026-09-07", "morning", "07:15:00"),
        ("check_in", "S2", "2026-09-07", "morning", "07:15:01"),
        ("late", "S2", "2026-09-07", "morning", "07:15:01"),
    ]


def test_check_out_only_after_the_minimum_stay_and_the_first_one_counts(
        school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, "S1", "07:05")
    tap(school, rules, 3, "S1", "07:20")  # another gate, 15 min later: too soon to leave
    tap(school, rules, 1, "S1", "07:34:59")
    assert [e[0] for e in school.events()] == ["check_in"]
    tap(school, rules, 3, "S1", "07:35")  # exactly min_stay_min after the check-in
    tap(school, rules, 1, "S1", "11:40")  # after the session's end, before the afternoon
    assert school.events() == [
        ("check_in", "S1", "2026-09-07", "morning", "07:05:00"),
        ("check_out", "S1", "2026-09-07", "morning", "07:35:00"),
    ]
    assert school.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 5


def test_a_departure_in_the_gap_between_sessions_belongs_to_the_morning(
        school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, "S1", "07:05")
    tap(school, rules, 1, "S1", "12:10")
    tap(school, rules, 1, "S1", "13:02")
    tap(school, rules, 1, "S2", "11:45")  # first seen after the end: not an arrival
    assert school.events() == [
        ("check_in", "S1", "2026-09-07", "morning", "07:05:00"),
        ("check_out", "S1", "2026-09-07", "morning", "12:10:00"),
        ("check_in", "S1", "2026-09-07", "afternoon", "13:02:00"),
    ]


def test_repeats_at_one_gate_across_its_readers_make_no_event(school: SchoolDb,
                                                               clock: FakeClock) -> None:
    config = AttendanceConfig(sessions=(Session("morning", dt.time(7), dt.time(7, 15),
                                                dt.time(8, 30), dt.time(11, 30), 1),))
    rules = make_rules(clock, repeat_window_s=120, config=config)
    tap(school, rules, 1, "S1", "07:05:00")
    tap(school, rules, 2, "S1", "07:06:30")  # gate A's other reader, 90 s later: a repeat
    tap(school, rules, 1, "S1", "07:07:00")  # 120 s after the first: still a repeat
    assert [e[0] for e in school.events()] == ["check_in"]
    tap(school, rules, 2, "S1", "07:07:01")  # 121 s: a new tap at gate A
    assert school.events()[-1] == ("check_out", "S1", "2026-09-07", "morning", "07:07:01")
    assert school.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 4


def test_the_same_card_at_another_gate_is_a_new_tap(school: SchoolDb, clock: FakeClock) -> None:
    config = AttendanceConfig(sessions=(Session("morning", dt.time(7), dt.time(7, 15),
                                                dt.time(8, 30), dt.time(11, 30), 1),))
    rules = make_rules(clock, repeat_window_s=120, config=config)
    tap(school, rules, 1, "S1", "07:05:00")
    tap(school, rules, 3, "S1", "07:06:30")
    assert [e[:2] for e in school.events()] == [("check_in", "S1"), ("check_out", "S1")]


def test_unknown_card_is_recorded_with_one_event_per_session(school: SchoolDb,
                                                             clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, UNKNOWN, "07:30")
    tap(school, rules, 3, UNKNOWN, "07:05")  # arrives later, happened earlier
    tap(school, rules, 1, UNKNOWN, "09:00")
    tap(school, rules, 2, UNKNOWN, "13:10")
    tap(school, rules, 2, UNKNOWN, "06:00")  # outside every session: counted, no event
    assert school.events() == [
        ("unknown_card", UNKNOWN, "2026-09-07", "morning", "07:05:00"),
        ("unknown_card", UNKNOWN, "2026-09-07", "afternoon", "13:10:00"),
    ]
    row = school.conn.execute("SELECT first_ms, last_ms, times_seen, last_reader_id "
                              "FROM unknown_cards WHERE card = ?", (UNKNOWN,)).fetchone()
    assert tuple(row) == (at("06:00"), at("13:10"), 5, 2)
    morning = school.conn.execute("SELECT student_id, revision, gate FROM attendance_events "
                                  "WHERE session = 'morning'").fetchone()
    assert tuple(morning) == (None, 1, "B")  # revised to the earlier tap, same key


def test_card_lookups_are_kept_until_the_roster_changes(tmp_path: Path,
                                                          clock: FakeClock) -> None:
    """The rules remember card -> student across groups; a roster change made on another
    connection (the CLI's import, in another process) is seen at the next group."""
    school = SchoolDb(tmp_path / "gateway.db")
    rules = make_rules(clock)
    try:
        tap(school, rules, 1, UNKNOWN, "07:05")
        operator = connect(tmp_path / "gateway.db")
        number = UNKNOWN.split(":")[1]
        operator.execute("INSERT INTO card_numbers VALUES (?, 'S3', 'operator', 0)", (number,))
        operator.close()
        tap(school, rules, 1, UNKNOWN, "13:10")  # now S3's card
        kinds = {(kind, who) for kind, who, *_ in school.events()}
        assert kinds == {("unknown_card", UNKNOWN), ("check_in", "S3")}
        school.conn.execute("DELETE FROM card_numbers WHERE number = ?", (number,))
        tap(school, rules, 2, UNKNOWN, "13:40", day=MONDAY + dt.timedelta(days=1))
        assert ("unknown_card", UNKNOWN) in {(k, w) for k, w, d, *_ in school.events()
                                             if d == "2026-09-08"}
    finally:
        school.conn.close()


@pytest.mark.parametrize("day", [HOLIDAY, SUNDAY], ids=["holiday", "sunday"])
def test_no_events_on_a_holiday_or_a_day_without_school(school: SchoolDb, clock: FakeClock,
                                                        day: dt.date) -> None:
    rules = make_rules(clock, absent_lookback_days=0)
    tap(school, rules, 1, "S1", "07:05", day)
    tap(school, rules, 1, UNKNOWN, "07:06", day)
    clock.now = at("20:00", day)
    assert rules.close_due_sessions(school.conn, clock.now) == 0
    assert school.events() == []
    assert school.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 2
    assert school.conn.execute("SELECT times_seen FROM unknown_cards").fetchone()[0] == 1


def test_taps_outside_every_session_make_no_event(school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, "S1", "06:59:59")
    assert school.events() == []
    tap(school, rules, 1, "S1", "07:00")
    assert [e[0] for e in school.events()] == ["check_in"]


def test_absent_at_cut_off_once_for_active_students_without_check_in(
        school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    tap(school, rules, 1, "S1", "07:05")
    tap(school, rules, 1, "S3", "11:45")  # only after the end: not an arrival
    clock.now = at("08:29:59")
    assert rules.close_due_sessions(school.conn, clock.now) == 0
    clock.now = at("08:31")  # due, but the readers have not caught up: hold
    assert rules.close_due_sessions(school.conn, clock.now) == 0
    for reader_id, _, _ in READERS:
        school.heartbeat(reader_id, at("08:30:20"))
    assert rules.close_due_sessions(school.conn, clock.now) == 2
    assert [e[:4] for e in school.events() if e[0] == "absent"] == [
        ("absent", "S2", "2026-09-07", "morning"), ("absent", "S3", "2026-09-07", "morning")]
    assert rules.close_due_sessions(school.conn, clock.now) == 0
    clock.now = at("20:00")
    assert rules.close_due_sessions(school.conn, clock.now) == 3  # the afternoon: nobody came
    assert rules.close_due_sessions(school.conn, clock.now) == 0
    assert school.conn.execute("SELECT COUNT(*) FROM closed_sessions").fetchone()[0] == 2


def test_a_silent_reader_holds_the_cut_off_for_a_bounded_time(school: SchoolDb,
                                                              clock: FakeClock) -> None:
    rules = make_rules(clock, absent_hold_s=1800)
    school.heartbeat(1, at("08:30:10"))
    school.heartbeat(2, at("08:30:10"), queue_depth=40)  # still uploading its backlog
    school.heartbeat(3, at("08:29:00"))
    assert rules.close_due_sessions(school.conn, at("08:45")) == 0
    assert rules.close_due_sessions(school.conn, at("09:00")) == 3


def test_a_late_backlog_voids_the_absence_it_disproves(school: SchoolDb,
                                                       clock: FakeClock) -> None:
    rules = make_rules(clock)
    clock.now = at("09:01")
    assert rules.close_due_sessions(school.conn, clock.now) == 3
    tap(school, rules, 3, "S2", "07:10")  # reader 3 was offline until now
    tap(school, rules, 1, "S3", "09:05")  # arrives after the cut-off: present, late
    assert [e[:2] for e in school.events()] == [
        ("check_in", "S2"), ("absent", "S1"), ("check_in", "S3"), ("late", "S3")]
    assert sorted(e[:2] for e in school.events(voided=True)) == [("absent", "S2"),
                                                                  ("absent", "S3")]
    revision = school.conn.execute("SELECT revision FROM attendance_events WHERE voided_ms "
                                   "IS NOT NULL").fetchall()
    assert [r[0] for r in revision] == [1, 1]


def test_sessions_missed_while_the_gateway_was_down(school: SchoolDb) -> None:
    tuesday = MONDAY + dt.timedelta(days=1)
    clock = FakeClock(at("06:00", tuesday))  # the gateway starts again on Tuesday morning
    rules = make_rules(clock, absent_lookback_days=1)
    assert rules.close_due_sessions(school.conn, at("06:05", tuesday)) == 0  # wait for readers
    for reader_id, _, _ in READERS:
        school.heartbeat(reader_id, at("06:06", tuesday))
    tap(school, rules, 1, "S1", "07:05")  # Monday's backlog arrived
    assert rules.close_due_sessions(school.conn, at("06:07", tuesday)) == 2 + 3
    days = school.conn.execute("SELECT school_date, session FROM closed_sessions "
                               "ORDER BY school_date, session").fetchall()
    assert [tuple(d) for d in days] == [("2026-09-07", "afternoon"), ("2026-09-07", "morning")]


def test_on_scans_is_idempotent(school: SchoolDb, clock: FakeClock) -> None:
    rules = make_rules(clock)
    scans = [school.insert(1, CARDS["S1"], at("07:05")), school.insert(1, UNKNOWN, at("07:06"))]
    rules.on_scans(school.conn, scans)
    before = school.conn.execute("SELECT * FROM attendance_events").fetchall()
    rules.on_scans(school.conn, scans)
    rules.on_scans(school.conn, scans + scans)
    assert school.conn.execute("SELECT * FROM attendance_events").fetchall() == before
    assert school.conn.execute("SELECT times_seen FROM unknown_cards").fetchone()[0] == 1


def test_events_commit_and_roll_back_with_the_callers_transaction(
        school: SchoolDb, clock: FakeClock) -> None:
    seen: list[EventChange] = []
    rules = make_rules(clock, listeners=[lambda _conn, change: seen.append(change)])
    conn = school.conn
    conn.execute("BEGIN IMMEDIATE")
    rules.on_scans(conn, [school.insert(1, CARDS["S1"], at("07:20"))])
    conn.execute("ROLLBACK")
    assert school.events() == []
    assert [(c.kind, c.change) for c in seen] == [("check_in", "created"), ("late", "created")]

    def fail(_conn: sqlite3.Connection, _change: EventChange) -> None:
        raise RuntimeError("outbox full")

    failing = make_rules(clock, listeners=[fail])
    conn.execute("BEGIN IMMEDIATE")
    scan = school.insert(1, CARDS["S1"], at("07:05"))
    with pytest.raises(RuntimeError):
        failing.on_scans(conn, [scan])
    # The rules undid their own writes; the caller's scan is still in its transaction.
    assert conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM attendance_taps").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 1
    conn.execute("COMMIT")
    assert rules.catch_up(conn, at("00:00")) == 1
    assert school.events() == [("check_in", "S1", "2026-09-07", "morning", "07:05:00")]


def test_listeners_see_revisions_and_voids(school: SchoolDb, clock: FakeClock) -> None:
    seen: list[EventChange] = []
    rules = make_rules(clock, listeners=[lambda _conn, change: seen.append(change)])
    tap(school, rules, 1, "S1", "07:20")
    tap(school, rules, 3, "S1", "07:10")  # the backlog: S1 was on time after all
    assert [(c.kind, c.change, c.revision) for c in seen] == [
        ("check_in", "created", 0), ("late", "created", 0),
        ("check_in", "revised", 1), ("late", "voided", 1)]
    assert seen[0].event_key == seen[2].event_key
    with atomic(school.conn):
        pass  # a transaction of its own when none is open
    assert not school.conn.in_transaction


def test_a_student_with_two_cards_is_one_student(school: SchoolDb, clock: FakeClock) -> None:
    school.conn.execute("INSERT INTO card_numbers VALUES ('04A1B2C6', 'S1', 'test', 0)")
    rules = make_rules(clock)
    tap(school, rules, 1, "iso14443a:04A1B2C6", "07:40")
    tap(school, rules, 1, "S1", "07:05")
    assert [e[:2] for e in school.events()] == [("check_in", "S1"), ("check_out", "S1")]


def test_logs_name_no_student_and_no_card(school: SchoolDb, clock: FakeClock,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rules = make_rules(clock, absent_hold_s=0)
    tap(school, rules, 1, "S1", "07:05")
    tap(school, rules, 1, UNKNOWN, "07:06")
    assert rules.close_due_sessions(school.conn, at("08:31")) == 2
    assert caplog.records
    logged = logged_text(caplog.records)
    for secret in (*CARDS.values(), UNKNOWN, "S1", "S2", "S3", "Nguyễn", "Trần", "04A1B2C3"):
        assert secret not in logged


# --- arrival order -------------------------------------------------------------------------------

# (reader, student or card, time): a morning with repeats, two gates, a late student, departures,
# an unknown card and an afternoon; the same taps delivered in many orders.
MORNING_TAPS = [
    (1, "S1", "07:05:00"), (2, "S1", "07:05:40"), (3, "S1", "07:06:00"), (1, "S1", "11:32:00"),
    (3, "S2", "07:20:00"), (1, "S2", "07:12:00"), (1, "S2", "07:50:00"), (2, "S2", "07:50:30"),
    (1, UNKNOWN, "07:30:00"), (3, UNKNOWN, "07:01:00"), (3, "S1", "13:05:00"),
    (2, "S3", "07:15:00"), (2, "S3", "07:15:00"), (1, "S3", "07:44:59"), (2, "S3", "07:45:00"),
]


def _final_events(order: list[int], batches: list[int], close_at: int | None) -> set[tuple[
        object, ...]]:
    school = SchoolDb()
    clock = FakeClock(at("06:00"))
    rules = make_rules(clock, absent_hold_s=0)
    # Each reader numbers its records in time order, whatever order they reach the gateway in.
    seqs: dict[int, int] = {}
    last: dict[int, int] = {}
    for i in sorted(range(len(MORNING_TAPS)), key=lambda i: (MORNING_TAPS[i][2], i)):
        reader = MORNING_TAPS[i][0]
        last[reader] = seqs[i] = last.get(reader, 0) + 1
    pending = list(order)
    closed = False
    for size in batches:
        chunk, pending = pending[:size], pending[size:]
        scans = [school.insert(MORNING_TAPS[i][0], CARDS.get(MORNING_TAPS[i][1],
                               MORNING_TAPS[i][1]), at(MORNING_TAPS[i][2]),
                               seq=seqs[i]) for i in chunk]
        school.conn.execute("BEGIN IMMEDIATE")
        rules.on_scans(school.conn, scans)
        school.conn.execute("COMMIT")
        if close_at is not None and not closed:
            closed = rules.close_due_sessions(school.conn, close_at) > 0
    rules.close_due_sessions(school.conn, at("09:00"))
    rows = school.conn.execute(
        "SELECT e.event_key, e.kind, e.student_id, e.card, e.at_ms, e.gate, "
        "s.reader_id, s.boot, s.seq FROM attendance_events e "
        "LEFT JOIN scans s ON s.scan_id = e.scan_id WHERE e.voided_ms IS NULL").fetchall()
    school.conn.close()
    return {tuple(r) for r in rows}


def test_arrival_order_does_not_change_the_events() -> None:
    in_order = sorted(range(len(MORNING_TAPS)), key=lambda i: (MORNING_TAPS[i][2], i))
    expected = _final_events(in_order, [1] * len(in_order), None)
    kinds = sorted((k, s or c) for _, k, s, c, *_ in expected)
    assert kinds == sorted([
        ("check_in", "S1"), ("check_out", "S1"), ("check_in", "S1"),  # morning, afternoon
        ("check_in", "S2"), ("check_out", "S2"),
        ("check_in", "S3"),  # 07:45:00 repeats 07:44:59 at gate A: no check-out
        ("unknown_card", UNKNOWN)])
    rng = random.Random(20260907)
    for _ in range(25):
        order = in_order[:]
        rng.shuffle(order)
        batches: list[int] = []
        while sum(batches) < len(order):
            batches.append(rng.randint(1, 5))
        close_at = at("08:31") if rng.random() < 0.5 else None  # a cut-off mid-backlog
        assert _final_events(order, batches, close_at) == expected
    # A reader's whole backlog after the live taps of the others, reversed.
    backlog = [i for i in in_order if MORNING_TAPS[i][0] == 3]
    live = [i for i in in_order if MORNING_TAPS[i][0] != 3]
    assert _final_events(live + backlog[::-1], [len(live), len(backlog)], at("08:31")) == expected
