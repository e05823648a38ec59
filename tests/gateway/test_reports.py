"""Operator reports against a populated database, exports read back, and the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest

from gateway import reports
from gateway.cli import main
from gateway.rules import SchoolCalendar
from tests.gateway.test_rules import (
    CARDS,
    CONFIG,
    HOLIDAY,
    MONDAY,
    SUNDAY,
    TZ,
    UNKNOWN,
    FakeClock,
    SchoolDb,
    at,
    make_rules,
    tap,
)

TUESDAY = MONDAY + dt.timedelta(days=1)
CALENDAR = SchoolCalendar(CONFIG, TZ)


@pytest.fixture
def school(tmp_path: Path) -> Iterator[SchoolDb]:
    """Monday: S1 on time and leaves, S2 late, S3 absent, an unknown card; both sessions closed.
    Tuesday morning, open: S1 in. Readers: 1 online, 2 stale, 3 sent its last will, 4 revoked,
    5 online by a scan only. Two quarantined inputs; a gap in reader 3's sequence."""
    db = SchoolDb(tmp_path / "gateway.db")
    c = db.conn
    c.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) VALUES "
              "(4, 'Cổng cũ', 'B', 'revoked', 0), (5, 'Cổng phụ', 'C', 'active', 0)")
    c.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, created_ms) VALUES "
              "(4, 4, x'00', 'revoked', 0), (5, 5, x'00', 'active', 0)")
    rules = make_rules(FakeClock(at("06:00")))
    tap(db, rules, 1, "S1", "07:05")
    tap(db, rules, 3, "S2", "07:20")
    tap(db, rules, 2, UNKNOWN, "07:10")
    for reader_id in (1, 2, 3, 5):
        db.heartbeat(reader_id, at("08:30:20"))
    assert rules.close_due_sessions(c, at("08:31")) == 1
    tap(db, rules, 1, "S1", "11:35")
    assert rules.close_due_sessions(c, at("14:31")) == 3
    db.insert(3, CARDS["S3"], at("06:30", SUNDAY), seq=9)  # records 2..8 not (yet) received
    tap(db, rules, 1, "S1", "07:01", TUESDAY)
    tap(db, rules, 5, "S3", "07:01:50", TUESDAY)
    db.heartbeat(1, at("07:01:30", TUESDAY))
    db.heartbeat(2, at("06:50", TUESDAY), queue_depth=3, oldest_unsent_age_s=45, dropped=2)
    db.heartbeat(3, at("07:00", TUESDAY), state="offline", clock_health="drifting")
    c.execute("DELETE FROM reader_status WHERE reader_id = 5")
    for i, (reason, when) in enumerate((("bad_mac", at("07:00")), ("unknown_reader",
                                                                  at("07:00", TUESDAY)))):
        raw = bytes([i]) * 20
        c.execute("INSERT INTO quarantine (first_ms, last_ms, times_seen, transport, reader_id, "
                  "boot, seq, reason, detail, raw, raw_sha256) VALUES (?, ?, 2, "
                  "'mqtt att/v1/s/9/up/batch', 9, 1, 4, ?, 'test', ?, ?)",
                  (when, when, reason, raw, hashlib.sha256(raw).digest()))
    yield db
    db.conn.close()


def test_status_tells_which_readers_are_online(school: SchoolDb) -> None:
    report = reports.status_report(school.conn, CALENDAR, at("07:02", TUESDAY))
    online = {r.reader_id: r.online for r in report.readers}
    assert online == {1: True, 2: False, 3: False, 4: False, 5: True}
    five = next(r for r in report.readers if r.reader_id == 5)
    assert (five.last_scan_ms, five.last_heartbeat_ms, five.clock_health) == (
        at("07:01:50", TUESDAY), None, "unknown")
    three = next(r for r in report.readers if r.reader_id == 3)
    assert (three.state, three.clock_health) == ("offline", "drifting")
    assert (report.readers_active, report.readers_online) == (4, 2)
    assert (report.queue_depth, report.oldest_unsent_age_s, report.dropped) == (3, 45, 2)
    assert (report.scans_today, report.unknown_cards_open, report.quarantined_24h) == (2, 1, 1)
    # With a 10-minute heartbeat the stale reader is still within three periods.
    longer = reports.status_report(school.conn, CALENDAR, at("07:02", TUESDAY), heartbeat_s=600)
    assert {r.reader_id: r.online for r in longer.readers}[2] is True


def test_today_counts_by_class_and_session(school: SchoolDb) -> None:
    report = reports.day_report(school.conn, CALENDAR, MONDAY)
    assert report.day_kind == "school_day"
    morning, afternoon = report.sessions
    assert (morning.session, morning.closed, afternoon.closed) == ("morning", True, True)
    counts = {c.class_id: (c.total, c.present, c.late, c.absent, c.not_yet)
              for c in morning.classes}
    assert counts == {"6A": (2, 1, 1, 0, 0), "6B": (1, 0, 0, 1, 0)}
    assert (afternoon.totals.total, afternoon.totals.absent) == (3, 3)
    s1 = next(r for r in report.rows if r.student_id == "S1" and r.session == "morning")
    assert (s1.status, s1.check_in_ms, s1.check_out_ms, s1.late, s1.absent) == (
        "present", at("07:05"), at("11:35"), False, False)
    assert "S4" not in {r.student_id for r in report.rows}  # inactive, no events

    tuesday = reports.day_report(school.conn, CALENDAR, TUESDAY, class_id="6A")
    assert [(r.student_id, r.session, r.status) for r in tuesday.rows] == [
        ("S1", "morning", "present"), ("S2", "morning", "not_yet"),
        ("S1", "afternoon", "not_yet"), ("S2", "afternoon", "not_yet")]
    assert not tuesday.sessions[0].closed

    holiday = reports.day_report(school.conn, CALENDAR, HOLIDAY)
    assert (holiday.day_kind, holiday.sessions, holiday.rows) == ("holiday", [], [])


def test_a_student_added_after_the_cut_off_has_no_record(school: SchoolDb) -> None:
    school.conn.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                        "updated_ms) VALUES ('S5', 'Võ Thị Em', '6B', 1, 'test', 0)")
    rows = reports.day_report(school.conn, CALENDAR, MONDAY, "6B").rows
    assert [(r.student_id, r.status) for r in rows if r.session == "morning"] == [
        ("S3", "absent"), ("S5", "no_record")]


def test_unknown_cards_quarantine_and_gaps(school: SchoolDb) -> None:
    cards = reports.unknown_cards(school.conn)
    assert [(c.card, c.times_seen, c.last_reader, c.acknowledged) for c in cards] == [
        (UNKNOWN, 1, "Cổng A 2", False)]
    entries = reports.quarantine(school.conn)
    assert [e.reason for e in entries] == ["unknown_reader", "bad_mac"]
    assert entries[0].size == 20
    assert [e.reason for e in reports.quarantine(school.conn, at("00:00", TUESDAY))] == [
        "unknown_reader"]
    found = reports.gaps(school.conn)
    assert [(g.reader_id, g.reader, g.boot, g.first_missing, g.last_missing, g.missing)
            for g in found] == [(3, "Cổng B", 1, 2, 8, 7)]


EXPECTED_EXPORT = [
    # date, session, class, student, check-in, check-out, late, absent, status
    ("2026-09-07", "morning", "6A", "S1", "07:05:00", "11:35:00", 0, 0, "present"),
    ("2026-09-07", "morning", "6A", "S2", "07:20:00", None, 1, 0, "late"),
    ("2026-09-07", "morning", "6B", "S3", None, None, 0, 1, "absent"),
    ("2026-09-07", "afternoon", "6A", "S1", None, None, 0, 1, "absent"),
    ("2026-09-07", "afternoon", "6A", "S2", None, None, 0, 1, "absent"),
    ("2026-09-07", "afternoon", "6B", "S3", None, None, 0, 1, "absent"),
    ("2026-09-08", "morning", "6A", "S1", "07:01:00", None, 0, 0, "present"),
    ("2026-09-08", "morning", "6A", "S2", None, None, 0, 0, "not_yet"),
    ("2026-09-08", "morning", "6B", "S3", "07:01:50", None, 0, 0, "present"),
    ("2026-09-08", "afternoon", "6A", "S1", None, None, 0, 0, "not_yet"),
    ("2026-09-08", "afternoon", "6A", "S2", None, None, 0, 0, "not_yet"),
    ("2026-09-08", "afternoon", "6B", "S3", None, None, 0, 0, "not_yet"),
]


def test_export_csv(school: SchoolDb, tmp_path: Path) -> None:
    out = tmp_path / "out" / "diem-danh.csv"
    count = reports.export(school.conn, CALENDAR, SUNDAY, TUESDAY, "csv", out)
    assert count == len(EXPECTED_EXPORT)  # Sunday has no school: no rows
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # a BOM, so spreadsheet programs read Vietnamese
    with out.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == reports.EXPORT_HEADERS
    got = [(r[0], r[1], r[2], r[4], r[6] or None, r[7] or None, int(r[8]), int(r[9]), r[10])
           for r in rows[1:]]
    assert got == EXPECTED_EXPORT
    assert rows[1][3] == "Lớp 6A" and rows[1][5] == "Nguyễn Văn An"
    assert [p.name for p in out.parent.iterdir()] == ["diem-danh.csv"]  # no temporary left


def test_export_xlsx(school: SchoolDb, tmp_path: Path) -> None:
    out = tmp_path / "diem-danh.xlsx"
    assert reports.export(school.conn, CALENDAR, MONDAY, TUESDAY, "xlsx", out) == 12
    sheet = openpyxl.load_workbook(out, read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == reports.EXPORT_HEADERS
    got = []
    for r in rows[1:]:
        assert isinstance(r[0], dt.datetime)  # a real date cell

        def clock(value: object) -> str | None:
            return value.strftime("%H:%M:%S") if isinstance(value, dt.time) else None

        got.append((r[0].date().isoformat(), r[1], r[2], r[4], clock(r[6]), clock(r[7]), r[8],
                    r[9], r[10]))
    assert got == EXPECTED_EXPORT
    assert rows[2][5] == "Trần Thị Bình"

    only_6b = tmp_path / "6b.xlsx"
    assert reports.export(school.conn, CALENDAR, MONDAY, MONDAY, "xlsx", only_6b, "6B") == 2


# What a roster sheet's author could type as a name: a formula, a function, arithmetic.
FORMULA_NAMES = {"S1": '=HYPERLINK("http://x","y")', "S2": "@SUM(1)", "S3": "-1+2"}


def _plant_formulas(school: SchoolDb) -> None:
    for sid, name in FORMULA_NAMES.items():
        school.conn.execute("UPDATE students SET full_name = ? WHERE student_id = ?",
                            (name, sid))
    school.conn.execute("UPDATE classes SET name = '+1+1' WHERE class_id = '6A'")


@pytest.mark.parametrize(("text", "written"), [
    ("=1+2", "'=1+2"), ("+1", "'+1"), ("-1+2", "'-1+2"), ("@SUM(1)", "'@SUM(1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("Nguyễn Văn An", "Nguyễn Văn An"), ("", ""),
    ("a=1", "a=1"), ("'=1", "'=1"),
])
def test_csv_text_quotes_what_a_spreadsheet_would_evaluate(text: str, written: str) -> None:
    assert reports.csv_text(text) == written


def test_exports_keep_formula_like_names_as_text(school: SchoolDb, tmp_path: Path) -> None:
    """CSV: a leading single quote (OWASP); XLSX: a string cell holding the exact text."""
    _plant_formulas(school)
    out = tmp_path / "diem-danh.csv"
    reports.export(school.conn, CALENDAR, MONDAY, MONDAY, "csv", out)
    with out.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert {(r[4], r[5]) for r in rows} == {(sid, "'" + name)
                                            for sid, name in FORMULA_NAMES.items()}
    assert {r[3] for r in rows if r[2] == "6A"} == {"'+1+1"}
    assert {r[6] for r in rows} >= {"07:05:00"}  # times are not text from the roster

    out = tmp_path / "diem-danh.xlsx"
    reports.export(school.conn, CALENDAR, MONDAY, MONDAY, "xlsx", out)
    sheet = openpyxl.load_workbook(out).worksheets[0]
    names = {}
    for row in sheet.iter_rows(min_row=2):
        class_name, sid, name = row[3], row[4], row[5]
        assert name.data_type == "s" and class_name.data_type == "s"
        names[sid.value] = name.value
        if row[2].value == "6A":
            assert class_name.value == "+1+1"
    assert names == FORMULA_NAMES  # exactly the roster's text, no quote added
    assert sheet["A2"].is_date and sheet["J2"].data_type == "n"  # other cells keep their types


def test_text_table_aligns_vietnamese() -> None:
    decomposed = "Nguye\u0302\u0303n"  # 'Nguyễn' with combining marks
    text = reports.render_table(("Tên / Name", "Số / N"), [(decomposed, 5), ("An", 12)])
    lines = text.splitlines()
    assert lines[2].endswith(" 5") and lines[3].endswith("12")
    assert reports.text_width(decomposed) == 6 == reports.text_width("Nguyễn")
    assert reports.age_text(3725) == "1h02m" and reports.age_text(None) == ""


# --- the CLI -------------------------------------------------------------------------------------

def _config(tmp_path: Path, database: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
school = "thcs-test"
database = "{database}"
timezone = "Asia/Ho_Chi_Minh"

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat"]
holidays = ["2026-09-02"]

[[attendance.session]]
name = "morning"
start = "07:00"
late_after = "07:15"
absent_at = "08:30"
end = "11:30"
min_stay_min = 30

[[attendance.session]]
name = "afternoon"
start = "13:00"
late_after = "13:15"
absent_at = "14:00"
end = "17:00"
min_stay_min = 30
""", encoding="utf-8")
    return path


def test_cli_reports(school: SchoolDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path, tmp_path / "gateway.db"))

    assert main(["today", "--config", config, "--date", "2026-09-07", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sessions"][0]["totals"]["absent"] == 1
    assert {r["student_id"]: r["status"] for r in data["rows"] if r["session"] == "morning"} == {
        "S1": "present", "S2": "late", "S3": "absent"}

    assert main(["today", "--config", config, "--date", "2026-09-07", "--class", "6A"]) == 0
    out = capsys.readouterr().out
    assert "Đi muộn / Late" in out and "Trần Thị Bình" in out and "07:20:00" in out

    assert main(["today", "--config", config, "--date", "2026-09-02"]) == 0
    assert "Ngày nghỉ lễ / Holiday" in capsys.readouterr().out

    assert main(["status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "Readers online" in out and "Cổng A 1" in out and "drifting" in out
    assert main(["status", "--config", config, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["readers"]) == 5

    assert main(["unknown-cards", "--config", config]) == 0
    assert UNKNOWN in capsys.readouterr().out
    assert main(["quarantine", "--config", config, "--since", "2026-09-08", "--json"]) == 0
    assert [e["reason"] for e in json.loads(capsys.readouterr().out)] == ["unknown_reader"]
    assert main(["quarantine", "--config", config, "--since", "2026-09-07T06:00"]) == 0
    assert "bad_mac" in capsys.readouterr().out
    assert main(["gaps", "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["missing"] == 7

    out_file = tmp_path / "x.xlsx"
    assert main(["export", "--config", config, "--from", "2026-09-07", "--to", "2026-09-08",
                 "--out", str(out_file)]) == 0
    assert "12" in capsys.readouterr().out
    assert openpyxl.load_workbook(out_file).worksheets[0].max_row == 13
    csv_file = tmp_path / "x.txt"
    assert main(["export", "--config", config, "--from", "2026-09-07", "--to", "2026-09-07",
                 "--format", "csv", "--out", str(csv_file)]) == 0
    assert len(csv_file.read_text(encoding="utf-8-sig").splitlines()) == 7
    assert main(["export", "--config", config, "--from", "2026-09-08", "--to", "2026-09-07",
                 "--out", str(csv_file)]) == 2


def test_cli_without_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path, tmp_path / "missing.db"))
    assert main(["status", "--config", config]) == 1
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(SystemExit):
        main(["today", "--config", config, "--date", "7/9/2026"])
