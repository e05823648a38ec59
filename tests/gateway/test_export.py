"""The Ministry's Excel workflow: class workbooks read back cell by cell, the collation, atomic
writes, the CLI and the scheduled export with a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import threading
import time
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway import export, reports
from gateway.cli import main
from gateway.commands.run import run as run_gateway
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.db import connect
from gateway.export import DailyExport, ExportError, export_workbooks
from gateway.reports import name_sort_key
from gateway.rules import SchoolCalendar
from gateway.types import system_clock
from tests.gateway.test_rules import (
    CONFIG,
    HOLIDAY,
    MONDAY,
    SUNDAY,
    TZ,
    FakeClock,
    SchoolDb,
    at,
    make_rules,
    tap,
)
from tests.log_text import logged_text

TUESDAY = MONDAY + dt.timedelta(days=1)
CALENDAR = SchoolCalendar(CONFIG, TZ)
SCHOOL_NAME = "Trường THCS Nguyễn Du"

# Class 7A: Ministry IDs with leading zeros, names in the order the roster gives them.
AN, BINH, CHAU, HA, ANH = "0012345678", "0023456789", "0034567890", "0045678901", "0056789012"
STUDENTS_7A = ((AN, "Nguyễn Văn An"), (BINH, "Trần Thị Bình"), (CHAU, "Lê Minh Châu"),
               (HA, "Đặng Thu Hà"), (ANH, "Bùi Đức Anh"))
LEFT_SCHOOL = "0067890123"
CARD = {sid: f"iso14443a:0711{i:04X}" for i, (sid, _) in enumerate(STUDENTS_7A)}
SHEET_ORDER = [AN, ANH, BINH, CHAU, HA]  # by given name: An, Anh, Bình, Châu, Hà


@pytest.fixture
def school(tmp_path: Path) -> Iterator[SchoolDb]:
    """Monday in 7A: An on time and leaves, Bình late, Châu absent, Hà's late voided by an
    earlier tap from a backlog, Anh's absence voided by a 09:00 arrival; afternoon: An only.
    Tuesday morning, still open: An in. Classes 6A and 6B as in test_rules."""
    db = SchoolDb(tmp_path / "gateway.db")
    c = db.conn
    c.execute("INSERT INTO classes VALUES ('7A', 'Lớp 7A', '7', 'test')")
    for sid, name in (*STUDENTS_7A, (LEFT_SCHOOL, "Phạm Văn Cường")):
        c.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                  "updated_ms) VALUES (?, ?, '7A', ?, 'test', 0)",
                  (sid, name, int(sid != LEFT_SCHOOL)))
    for sid, card in CARD.items():
        c.execute("INSERT INTO card_numbers VALUES (?, ?, 'test', 0)", (card.split(":")[1], sid))
    rules = make_rules(FakeClock(at("06:00")))
    tap(db, rules, 1, CARD[AN], "07:05")
    tap(db, rules, 3, CARD[BINH], "07:20")
    tap(db, rules, 1, CARD[HA], "07:25")
    tap(db, rules, 3, CARD[HA], "07:10")  # a reader's backlog: the late check-in is disproved
    tap(db, rules, 1, "S1", "07:02")
    for reader_id in (1, 2, 3):
        db.heartbeat(reader_id, at("08:30:20"))
    rules.close_due_sessions(c, at("08:31"))
    tap(db, rules, 2, CARD[ANH], "09:00")  # arrives after the cut-off: the absence is voided
    tap(db, rules, 1, CARD[AN], "11:35")
    tap(db, rules, 1, CARD[AN], "13:05")
    rules.close_due_sessions(c, at("14:31"))
    tap(db, rules, 1, CARD[AN], "07:01", TUESDAY)
    yield db
    db.conn.close()


def _export(db: SchoolDb, out: Path, day_from: dt.date = MONDAY, day_to: dt.date | None = None,
            **kwargs: Any) -> export.ExportResult:
    return export_workbooks(db.conn, CALENDAR, day_from, day_to or day_from, out,
                            school="thcs-test", school_name=SCHOOL_NAME,
                            clock=FakeClock(at("17:30")), **kwargs)


def _students(sheet: Any) -> list[tuple[Any, ...]]:
    """The student rows of a sheet: from row 8 down to the totals."""
    rows = []
    for row in sheet.iter_rows(min_row=export.FIRST_ROW, values_only=True):
        if not isinstance(row[0], int):
            break
        rows.append(row)
    return rows


def _totals(sheet: Any) -> dict[str, tuple[Any, ...]]:
    labels = dict(export.TOTALS)
    out = {}
    for row in sheet.iter_rows(min_row=export.FIRST_ROW, values_only=True):
        for key, label in labels.items():
            if row[0] == label:
                out[key] = row
    return out


# --- collation -----------------------------------------------------------------------------------

def test_vietnamese_collation_sorts_by_given_name_then_family_name() -> None:
    names = [name for _, name in STUDENTS_7A]
    assert sorted(names, key=name_sort_key) == [
        "Nguyễn Văn An", "Bùi Đức Anh", "Trần Thị Bình", "Lê Minh Châu", "Đặng Thu Hà"]
    # Same given name: the family name decides, then the middle name.
    assert sorted(["Nguyễn Văn An", "Lê Thị An", "Lê Minh An"], key=name_sort_key) == [
        "Lê Minh An", "Lê Thị An", "Nguyễn Văn An"]
    # ă, â, đ, ê, ô, ơ, ư are letters of their own; tones only break ties, in dictionary order
    # (none, huyền, hỏi, ngã, sắc, nặng). Code-point order would put Đ after Z and Á after A-Z.
    given = ["Ân", "Ăn", "Anh", "Ánh", "Ảnh", "Ạnh", "Dũng", "Duy", "Đức", "Zin", "Ơn", "Ôn",
             "On", "Ưng", "Ung", "Ê", "Em"]
    assert sorted(given, key=name_sort_key) == [
        "Anh", "Ảnh", "Ánh", "Ạnh", "Ăn", "Ân", "Dũng", "Duy", "Đức", "Em", "Ê", "On", "Ôn",
        "Ơn", "Ung", "Ưng", "Zin"]
    assert sorted(["Hà", "Hạ", "Há", "Hả", "Hã", "Ha"], key=name_sort_key) == [
        "Ha", "Hà", "Hả", "Hã", "Há", "Hạ"]


def test_collation_is_the_same_for_any_way_of_typing_a_name() -> None:
    name = "Đặng Thu Hà"
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name
    assert name_sort_key(decomposed)[:3] == name_sort_key(name)[:3]
    # The tone mark on either vowel of "oa" (old and new style), upper or lower case.
    assert name_sort_key("Trịnh Hoà")[:3] == name_sort_key("Trịnh Hòa")[:3]
    assert name_sort_key("ĐẶNG THU HÀ")[0][:2] == name_sort_key(name)[0][:2]
    assert sorted(["Ðức", "Dũng", "Em"], key=name_sort_key) == ["Dũng", "Ðức", "Em"]  # eth as Đ
    assert sorted(["  Lê   An ", "Lê Anh"], key=name_sort_key)[0] == "  Lê   An "


def test_reports_use_the_same_class_list_order(school: SchoolDb) -> None:
    rows = reports.day_report(school.conn, CALENDAR, MONDAY, "7A").rows
    assert [r.student_id for r in rows if r.session == "morning"] == SHEET_ORDER


# --- the daily workbook --------------------------------------------------------------------------

def test_class_workbook_reads_like_a_homeroom_sheet(school: SchoolDb, tmp_path: Path) -> None:
    result = _export(school, tmp_path / "out", class_id="7A")
    out = tmp_path / "out" / "diem-danh_7A_2026-09-07.xlsx"
    assert result.files == [out] and result.zip is None and result.school_days == [MONDAY]
    book = openpyxl.load_workbook(out)
    assert book.sheetnames == ["07-09-2026"]
    sheet = book.active
    assert sheet is not None
    assert sheet["A1"].value == f"Trường / School: {SCHOOL_NAME}"
    assert sheet["A2"].value == export.TITLE
    assert sheet["A3"].value == "Lớp / Class: Lớp 7A"
    assert sheet["D3"].value == "Ngày / Date: 07/09/2026 (Thứ Hai / Monday)"
    assert sheet["A4"].value == "Mã lớp / Class ID: 7A"
    assert sheet["D4"].value == "Sĩ số / Students: 5"  # the student who left is not listed

    header = [c.value for c in sheet[export.HEADER_ROW]]
    sub = [c.value for c in sheet[export.HEADER_ROW + 1]]
    assert header == ["STT / No.", "Mã định danh Bộ GD&ĐT / Ministry student ID",
                      "Họ và tên / Full name", "Buổi sáng / Morning", None, None,
                      "Buổi chiều / Afternoon", None, None, "Ghi chú / Notes"]
    assert sub[3:9] == ["Trạng thái / Status", "Giờ đến / Arrival", "Giờ về / Departure"] * 2
    for text in (*header, *sub):  # Vietnamese first, then English
        assert text is None or " / " in str(text)

    t = dt.time
    assert _students(sheet) == [
        (1, AN, "Nguyễn Văn An", "Có mặt", t(7, 5), t(11, 35), "Có mặt", t(13, 5), None, None),
        (2, ANH, "Bùi Đức Anh", "Đi muộn", t(9, 0), None, "Vắng không phép", None, None, None),
        (3, BINH, "Trần Thị Bình", "Đi muộn", t(7, 20), None, "Vắng không phép", None, None,
         None),
        (4, CHAU, "Lê Minh Châu", "Vắng không phép", None, None, "Vắng không phép", None, None,
         None),
        (5, HA, "Đặng Thu Hà", "Có mặt", t(7, 10), None, "Vắng không phép", None, None, None),
    ]
    id_cell = sheet.cell(row=export.FIRST_ROW, column=2)
    assert id_cell.data_type == "s" and id_cell.number_format == "@"  # text, zeros kept
    assert sheet.cell(row=export.FIRST_ROW, column=5).number_format == "hh:mm"

    totals = _totals(sheet)
    assert [(totals[k][3], totals[k][6]) for k in ("present", "late", "absent", "not_yet")] == [
        (2, 1), (2, 0), (1, 4), (0, 0)]

    assert sheet.freeze_panes == "D8"
    assert sheet.print_title_rows == "$6:$7"
    assert sheet.page_setup.orientation == "landscape"
    assert int(sheet.page_setup.paperSize or 0) == int(sheet.PAPERSIZE_A4)  # A4 is 9
    assert (sheet.page_setup.fitToWidth, sheet.page_setup.fitToHeight) == (1, 0)
    assert sheet.sheet_properties.pageSetUpPr is not None
    assert sheet.sheet_properties.pageSetUpPr.fitToPage
    assert sheet.column_dimensions["C"].width == 28
    assert "A6:A7" in {str(r) for r in sheet.merged_cells.ranges}
    notes = [r[0] for r in sheet.iter_rows(values_only=True) if isinstance(r[0], str)]
    assert any("Vắng có phép = excused absence" in n for n in notes)
    assert any("Lập lúc / Generated: 07/09/2026 17:30" in n for n in notes)


def test_formula_like_names_stay_text_in_the_ministry_workbook(school: SchoolDb,
                                                               tmp_path: Path) -> None:
    planted = {AN: '=HYPERLINK("http://x","y")', BINH: "@SUM(1)", CHAU: "-1+2", HA: "+1"}
    for sid, name in planted.items():
        school.conn.execute("UPDATE students SET full_name = ? WHERE student_id = ?",
                            (name, sid))
    school.conn.execute("UPDATE classes SET name = '=1+1' WHERE class_id = '7A'")
    _export(school, tmp_path / "out", class_id="7A")
    sheet = openpyxl.load_workbook(tmp_path / "out" / "diem-danh_7A_2026-09-07.xlsx").active
    assert sheet is not None
    cells = {}
    for row in sheet.iter_rows(min_row=export.FIRST_ROW):
        if not isinstance(row[0].value, int):
            break
        assert row[1].data_type == "s" and row[2].data_type == "s"
        cells[row[1].value] = row[2].value
    assert {sid: cells[sid] for sid in planted} == planted  # the exact text, as a string
    assert sheet["A3"].value == "Lớp / Class: =1+1" and sheet["A3"].data_type == "s"
    assert all(c.data_type != "f" for row in sheet.iter_rows() for c in row)


def test_voided_events_do_not_count(school: SchoolDb, tmp_path: Path) -> None:
    voided = {(kind, who) for kind, who, *_ in school.events(voided=True)}
    assert voided == {("late", HA), ("absent", ANH)}  # the fixture did void them
    _export(school, tmp_path, class_id="7A")
    sheet = openpyxl.load_workbook(tmp_path / "diem-danh_7A_2026-09-07.xlsx").worksheets[0]
    rows = {r[1]: r for r in _students(sheet)}
    assert rows[HA][3:5] == ("Có mặt", dt.time(7, 10))  # not late: 07:10 came in after 07:25
    assert rows[ANH][3:5] == ("Đi muộn", dt.time(9, 0))  # not absent


def test_times_are_in_the_school_time_zone(school: SchoolDb, tmp_path: Path) -> None:
    stored = school.conn.execute(
        "SELECT at_ms FROM attendance_events WHERE student_id = ? AND kind = 'check_in' "
        "AND session = 'morning'", (AN,)).fetchone()[0]
    assert dt.datetime.fromtimestamp(stored / 1000, dt.UTC).time() == dt.time(0, 5)  # UTC+7
    _export(school, tmp_path, class_id="7A")
    sheet = openpyxl.load_workbook(tmp_path / "diem-danh_7A_2026-09-07.xlsx").worksheets[0]
    assert _students(sheet)[0][4] == dt.time(7, 5)


def test_every_class_and_a_zip_for_the_district(school: SchoolDb, tmp_path: Path) -> None:
    school.conn.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                        "updated_ms) VALUES ('0099999999', 'Hồ Văn Khánh', NULL, 1, 'test', 0)")
    result = _export(school, tmp_path / "out", zip_archive=True)
    names = [p.name for p in result.files]
    assert names == ["diem-danh_6A_2026-09-07.xlsx", "diem-danh_6B_2026-09-07.xlsx",
                     "diem-danh_7A_2026-09-07.xlsx"]
    assert result.zip == tmp_path / "out" / "diem-danh_thcs-test_2026-09-07.zip"
    assert result.without_class == 1  # said, not silently dropped
    with zipfile.ZipFile(result.zip) as archive:
        assert archive.namelist() == names
        archive.extract(names[0], tmp_path / "unzipped")
    sheet = openpyxl.load_workbook(tmp_path / "unzipped" / names[0]).worksheets[0]
    assert [r[2] for r in _students(sheet)] == ["Nguyễn Văn An", "Trần Thị Bình"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*names, result.zip.name])  # no temporary file left
    for path in (tmp_path / "out").iterdir():  # children's names: the gateway's user only
        assert path.stat().st_mode & 0o777 == 0o600


def test_range_one_workbook_per_class_one_sheet_per_school_day(school: SchoolDb,
                                                               tmp_path: Path) -> None:
    result = _export(school, tmp_path, SUNDAY, TUESDAY, class_id="7A")
    assert result.school_days == [MONDAY, TUESDAY]  # Sunday has no school
    assert [p.name for p in result.files] == ["diem-danh_7A_2026-09-06_2026-09-08.xlsx"]
    book = openpyxl.load_workbook(result.files[0])
    assert book.sheetnames == ["07-09-2026", "08-09-2026"]
    tuesday = book["08-09-2026"]
    assert tuesday["D3"].value == "Ngày / Date: 08/09/2026 (Thứ Ba / Tuesday)"
    assert [r[3:5] for r in _students(tuesday)] == [
        ("Có mặt", dt.time(7, 1))] + [("Chưa đến", None)] * 4  # the morning is still open
    assert _totals(tuesday)["not_yet"][3] == 4
    assert [r[1] for r in _students(book["07-09-2026"])] == SHEET_ORDER


@pytest.mark.parametrize(
    ("date_from", "date_to", "class_id", "code", "text"),
    [
        (HOLIDAY, HOLIDAY, None, "no_school", "Ngày nghỉ lễ"),
        (SUNDAY, SUNDAY, None, "no_school", "2026-09-06 has no school (Not a school day)"),
        (MONDAY, MONDAY, "9Z", "unknown_class", "no class '9Z'"),
        (TUESDAY, MONDAY, None, "bad_range", "TO is before FROM"),
        (MONDAY, MONDAY + dt.timedelta(days=400), None, "range_too_long", "366"),
    ],
)
def test_requests_that_cannot_be_served(school: SchoolDb, tmp_path: Path, date_from: dt.date,
                                        date_to: dt.date, class_id: str | None, code: str,
                                        text: str) -> None:
    with pytest.raises(ExportError) as info:
        _export(school, tmp_path / "out", date_from, date_to, class_id=class_id)
    assert info.value.code == code and text in str(info.value)
    assert not (tmp_path / "out").exists()


def test_file_names_are_ascii_and_distinct() -> None:
    assert export.file_part("Lớp 6A/1 Đặc biệt") == "Lop-6A-1-Dac-biet"
    parts = export._file_parts(["6A/1", "6A-1", "7B"])
    assert parts["7B"] == "7B" and parts["6A/1"] != parts["6A-1"]
    assert all(p.startswith("6A-1-") for k, p in parts.items() if k != "7B")


# --- atomic writes -------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_previous_file_intact(school: SchoolDb, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _export(school, tmp_path, class_id="7A")
    out = tmp_path / "diem-danh_7A_2026-09-07.xlsx"
    before = out.read_bytes()

    def half_a_file(self: Any, filename: str | Path) -> None:
        Path(filename).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(openpyxl.Workbook, "save", half_a_file)
    with pytest.raises(OSError, match="No space"):
        _export(school, tmp_path, class_id="7A")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- the CLI -------------------------------------------------------------------------------------

def _config(tmp_path: Path, database: Path, export_table: str = "") -> Path:
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

[[attendance.session]]
name = "afternoon"
start = "13:00"
late_after = "13:15"
absent_at = "14:00"
end = "17:00"

[export]
school_name = "{SCHOOL_NAME}"
{export_table}
""", encoding="utf-8")
    return path


def test_cli_workbook(school: SchoolDb, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path, tmp_path / "gateway.db"))
    out = tmp_path / "out"
    assert main(["workbook", "--config", config, "--date", "2026-09-07", "--out", str(out),
                 "--zip"]) == 0
    printed = capsys.readouterr().out
    assert "Wrote 3 workbooks to" in printed and "diem-danh_7A_2026-09-07" in printed
    assert (out / "diem-danh_thcs-test_2026-09-07.zip").exists()
    sheet = openpyxl.load_workbook(out / "diem-danh_7A_2026-09-07.xlsx").worksheets[0]
    assert sheet["A1"].value == f"Trường / School: {SCHOOL_NAME}"

    assert main(["workbook", "--config", config, "--range", "2026-09-07", "2026-09-08",
                 "--class", "7A", "--out", str(out)]) == 0
    assert openpyxl.load_workbook(
        out / "diem-danh_7A_2026-09-07_2026-09-08.xlsx").sheetnames == ["07-09-2026",
                                                                        "08-09-2026"]
    capsys.readouterr()

    for argv, message in (
            (["--date", "2026-09-07", "--class", "9Z"], "không có lớp '9Z' / no class '9Z'"),
            (["--date", "2026-09-02"], "Ngày nghỉ lễ) / 2026-09-02 has no school (Holiday)"),
            (["--date", "2026-09-06"], "has no school (Not a school day)"),
            (["--range", "2026-09-08", "2026-09-07"], "TO is before FROM")):
        assert main(["workbook", "--config", config, "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Lỗi / Error: ") and message in err
    with pytest.raises(SystemExit) as info:  # one of --date and --range
        main(["workbook", "--config", config, "--date", "2026-09-07", "--range", "2026-09-07",
              "2026-09-08"])
    assert info.value.code == 2

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert main(["workbook", "--config", config, "--date", "2026-09-07", "--out",
                 str(blocked)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_workbook_without_a_database(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path, tmp_path / "missing.db"))
    assert main(["workbook", "--config", config, "--date", "2026-09-07"]) == 1
    assert "no database" in capsys.readouterr().err


# --- configuration -------------------------------------------------------------------------------

def test_export_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, tmp_path / "g.db",
                                 'daily_dir = "exports"\ndaily_at = "16:45"\nzip = true'))
    assert config.export.daily_dir == tmp_path / "exports"
    assert (config.export.daily_at, config.export.zip) == (dt.time(16, 45), True)
    assert config.export.school_name == SCHOOL_NAME
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "g.toml").write_text('[gateway]\nschool = "s"\n', encoding="utf-8")
    defaults = load_config(plain / "g.toml").export
    assert (defaults.daily_dir, defaults.daily_at, defaults.zip) == (None, dt.time(17, 30), False)
    for line, key, reason in (('daily_at = "5pm"', "export.daily_at", "time of day"),
                              ('zip = "yes"', "export.zip", "true or false"),
                              ("daily_dri = 'x'", "export.daily_dri", "unknown")):
        with pytest.raises(ConfigError) as info:
            load_config(_config(tmp_path, tmp_path / "g.db", line))
        assert (info.value.key, reason in info.value.reason) == (key, True)


# --- the scheduled export ------------------------------------------------------------------------

@pytest.fixture
def daily_config(school: SchoolDb, tmp_path: Path) -> GatewayConfig:
    return load_config(_config(tmp_path, tmp_path / "gateway.db",
                               'daily_dir = "daily"\ndaily_at = "17:30"\nzip = true'))


def test_scheduled_export_writes_each_school_day_once(daily_config: GatewayConfig,
                                                      tmp_path: Path) -> None:
    clock = FakeClock(at("17:29"))
    daily = DailyExport(daily_config, clock)
    folder = tmp_path / "daily"
    # Before daily_at: nothing; Sunday has no school; Friday and Saturday had no attendance.
    assert daily.due(clock()) == [MONDAY - dt.timedelta(days=3), MONDAY - dt.timedelta(days=2)]
    assert daily.tick() == []
    assert list(folder.iterdir()) == []

    clock.now = at("17:30")
    assert daily.tick() == [folder / "2026-09-07"]
    written = sorted(p.name for p in (folder / "2026-09-07").iterdir())
    assert written == ["diem-danh_6A_2026-09-07.xlsx", "diem-danh_6B_2026-09-07.xlsx",
                       "diem-danh_7A_2026-09-07.xlsx", "diem-danh_thcs-test_2026-09-07.zip"]
    sheet = openpyxl.load_workbook(folder / "2026-09-07" / written[2]).worksheets[0]
    assert [r[1] for r in _students(sheet)] == SHEET_ORDER
    assert any("Generated: 07/09/2026 17:30" in str(r[0]) for r in sheet.iter_rows(
        values_only=True))

    clock.now = at("18:30")
    assert daily.tick() == []  # written once
    assert [p.name for p in folder.iterdir()] == ["2026-09-07"]

    # The gateway was off at Monday's daily_at: Tuesday morning catches up, Tuesday itself waits.
    for path in (folder / "2026-09-07").iterdir():
        path.unlink()
    (folder / "2026-09-07").rmdir()
    clock.now = at("08:00", TUESDAY)
    assert daily.tick() == [folder / "2026-09-07"]
    clock.now = at("17:31", TUESDAY)
    assert daily.tick() == [folder / "2026-09-08"]
    clock.now = at("17:31", MONDAY + dt.timedelta(days=6))  # Sunday: no school
    assert MONDAY + dt.timedelta(days=6) not in daily.due(clock())
    assert daily.tick() == []  # and the week's other days had no attendance recorded


def test_scheduled_export_builds_the_day_folder_atomically(
        daily_config: GatewayConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "daily"
    daily = DailyExport(daily_config, FakeClock(at("17:45")))
    real = export.write_workbook
    calls = []

    def fail_on_the_second(*args: Any, **kwargs: Any) -> None:
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(export, "write_workbook", fail_on_the_second)
    with pytest.raises(OSError):
        daily.tick()
    assert list(folder.iterdir()) == []  # no half-written day, no temporary folder
    (folder / ".2026-09-07.killed").mkdir()  # what a kill -9 in mid-write leaves
    (folder / ".2026-09-07.killed" / "diem-danh_6A_2026-09-07.xlsx").write_bytes(b"PK")
    monkeypatch.setattr(export, "write_workbook", real)
    assert daily.tick() == [folder / "2026-09-07"]
    assert [p.name for p in folder.iterdir()] == ["2026-09-07"]


def test_scheduled_export_reads_on_a_read_only_connection(daily_config: GatewayConfig) -> None:
    conn = export.connect_read_only(daily_config.database)
    try:
        assert conn.execute("SELECT COUNT(*) FROM students").fetchone()[0] == 10
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM students")
    finally:
        conn.close()


async def test_scheduled_export_runs_in_a_worker_thread(
        daily_config: GatewayConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The writing happens off the event loop: the loop keeps ticking meanwhile."""
    caplog.set_level(logging.INFO, logger="gateway.export")
    loop_thread = threading.get_ident()
    writers: list[int] = []
    real = export.write_workbook

    def slow_write(*args: Any, **kwargs: Any) -> None:
        writers.append(threading.get_ident())
        time.sleep(0.1)  # a slow SD card
        real(*args, **kwargs)

    monkeypatch.setattr(export, "write_workbook", slow_write)
    daily = DailyExport(daily_config, FakeClock(at("17:30")), poll_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(daily.run(stop))
    beats = 0
    day = tmp_path / "daily" / "2026-09-07"
    for _ in range(500):
        await asyncio.sleep(0.01)
        beats += 1
        if day.exists():
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert day.exists() and len(writers) == 3
    assert loop_thread not in writers
    assert beats >= 15  # the event loop ran throughout the ~0.3 s of writing
    assert [r.getMessage() for r in caplog.records].count("daily export written") == 1
    for record in caplog.records:  # counts and dates, never a name or a student ID
        text = logged_text([record])
        assert not any(sid in text or name in text for sid, name in STUDENTS_7A)


async def test_scheduled_export_survives_a_failure(daily_config: GatewayConfig, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "daily").write_text("a file where the folder should be")
    daily = DailyExport(daily_config, FakeClock(at("17:30")), poll_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(daily.run(stop))
    await asyncio.sleep(0.05)
    assert not task.done()  # the gateway carries on
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [r for r in caplog.records if r.getMessage() == "daily export failed"]


async def test_the_running_gateway_writes_the_daily_workbooks(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    """``attendance-gateway run`` with ``[export] daily_dir``: the day's folder appears (real
    clock: every day a school day, ``daily_at`` at midnight)."""
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
school = "thcs-test"
database = "gateway.db"
master_key_file = "master.key"
[mqtt]
port = {mosquitto_broker.port}
[metrics]
listen = ""
[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
[[attendance.session]]
name = "morning"
start = "00:00"
late_after = "23:59"
absent_at = "23:59"
end = "23:59"
[export]
daily_dir = "daily"
daily_at = "00:00"
""", encoding="utf-8")
    config = load_config(path)
    today = SchoolCalendar(config.attendance, config.timezone).local_date(system_clock())
    conn = connect(config.database)
    conn.execute("INSERT INTO classes VALUES ('7A', 'Lớp 7A', '7', 'test')")
    conn.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                 "updated_ms) VALUES (?, 'Nguyễn Văn An', '7A', 1, 'test', 0)", (AN,))
    conn.execute("INSERT INTO attendance_events (event_key, kind, student_id, school_date, "
                 "session, at_ms, created_ms) VALUES ('k', 'check_in', ?, ?, 'morning', ?, 0)",
                 (AN, today.isoformat(), system_clock()))
    conn.close()
    stop = asyncio.Event()
    running = asyncio.create_task(run_gateway(config, stop))
    folder = tmp_path / "daily" / today.isoformat()
    try:
        async with asyncio.timeout(15):
            while not folder.exists():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        assert await asyncio.wait_for(running, 15) == 0
    assert [p.name for p in folder.iterdir()] == [f"diem-danh_7A_{today.isoformat()}.xlsx"]
