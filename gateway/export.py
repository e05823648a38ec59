"""The Ministry's Excel workflow: a daily attendance workbook per class (docs/forwarding.md,
"Excel export").

Vietnam's Ministry database has no push API; schools exchange Excel files. This module writes,
for a school date, one ``.xlsx`` workbook per class laid out like a homeroom teacher's daily
attendance sheet: the school, the class, the date (dd/mm/yyyy), one row per student in
Vietnamese class-list order (``gateway.reports.name_sort_key``) with the 10-digit Ministry
student ID as text, per session the status (có mặt / đi muộn / vắng không phép; vắng có phép
is the school's to enter, the gateway records no reasons), arrival and departure times in the
school's time zone, totals per session, bilingual headers, and a printable A4 landscape setup.
With a date range each class gets one workbook with one sheet per school day; a ZIP gathers a
run's workbooks for the district.

The statuses and times come from ``gateway.reports.attendance_rows`` (the one definition of a
student's attendance in a session: ``check_in``/``late`` present, ``absent`` absent, voided
events ignored), the totals from ``ClassCounts``, and every file is written with
``gateway.reports.atomic_file`` (a temporary file renamed into place).

:class:`DailyExport` is the scheduled export of the running gateway (``[export] daily_dir`` and
``daily_at``): after ``daily_at`` on each school day it writes the day's workbooks into
``daily_dir/YYYY-MM-DD/``, in a worker thread on a read-only connection of its own, so it never
holds up the ingest. The day's folder is built under a temporary name and renamed, so it exists
complete or not at all; an existing folder means "done".

Names appear in the workbooks (that is their purpose) and never in logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.reports import (
    DAY_KIND_LABELS,
    AttendanceRow,
    ClassCounts,
    atomic_file,
    attendance_rows,
    fsync_dir,
    local_time,
    set_cell,
)
from gateway.rules import SchoolCalendar, from_ms
from gateway.types import Clock, system_clock

if TYPE_CHECKING:
    from openpyxl.worksheet.worksheet import Worksheet

log = logging.getLogger(__name__)

EXPORT_POLL_S = 60.0  # how often the scheduled export looks whether a day is due
LOOKBACK_DAYS = 3  # a day missed (gateway off at daily_at) is still written this many days later
MAX_RANGE_DAYS = 366

#: What a status cell says: the words of a Vietnamese attendance sheet.
SHEET_STATUS: dict[str, str] = {
    "present": "Có mặt",
    "late": "Đi muộn",
    "absent": "Vắng không phép",
    "not_yet": "Chưa đến",
    "no_record": "Không có dữ liệu",
}
EXCUSED = "Vắng có phép"
SESSION_LABELS: dict[str, str] = {
    "morning": "Buổi sáng / Morning",
    "afternoon": "Buổi chiều / Afternoon",
    "evening": "Buổi tối / Evening",
}
WEEKDAYS = (("Thứ Hai", "Monday"), ("Thứ Ba", "Tuesday"), ("Thứ Tư", "Wednesday"),
            ("Thứ Năm", "Thursday"), ("Thứ Sáu", "Friday"), ("Thứ Bảy", "Saturday"),
            ("Chủ Nhật", "Sunday"))
TITLE = "BẢNG ĐIỂM DANH HẰNG NGÀY / DAILY ATTENDANCE SHEET"
HEADERS = ("STT / No.", "Mã định danh Bộ GD&ĐT / Ministry student ID", "Họ và tên / Full name")
SESSION_HEADERS = ("Trạng thái / Status", "Giờ đến / Arrival", "Giờ về / Departure")
NOTES_HEADER = "Ghi chú / Notes"
TOTALS = (("present", "Có mặt / Present"), ("late", "Đi muộn / Late"),
          ("absent", "Vắng / Absent"), ("not_yet", "Chưa ghi nhận / Not recorded"))

# Sheet geometry: rows 1-4 say what the sheet is, 6-7 are the header, students from 8.
HEADER_ROW = 6
FIRST_ROW = 8
FIXED_COLUMNS = len(HEADERS)
FONT = "Times New Roman"  # the typeface of Vietnamese official documents


class ExportError(Exception):
    """A request that cannot be served; the message is for the operator, in both languages."""

    def __init__(self, code: str, vi: str, en: str) -> None:
        super().__init__(f"{vi} / {en}")
        self.code = code


# --- what a sheet holds --------------------------------------------------------------------------

@dataclass(frozen=True)
class StudentDay:
    """One student on one class sheet: their attendance row in each session."""

    student_id: str
    full_name: str
    sessions: dict[str, AttendanceRow]


@dataclass(frozen=True)
class ClassDay:
    """One class on one school day: a sheet."""

    school_date: dt.date
    class_id: str
    class_name: str
    sessions: tuple[str, ...]
    students: tuple[StudentDay, ...]
    totals: dict[str, ClassCounts]


def class_days(conn: sqlite3.Connection, calendar: SchoolCalendar, class_id: str,
               class_name: str, date_from: dt.date, date_to: dt.date) -> list[ClassDay]:
    """A class's sheets, one per school day from ``date_from`` to ``date_to`` (inclusive)."""
    by_day: dict[str, list[AttendanceRow]] = {}
    for row in attendance_rows(conn, calendar, date_from, date_to, class_id):
        by_day.setdefault(row.school_date, []).append(row)
    out = []
    day = date_from
    while day <= date_to:
        windows = calendar.windows(day)
        if windows:
            sessions = tuple(w.name for w in windows)
            students: dict[str, StudentDay] = {}
            totals = {name: ClassCounts(class_id, class_name) for name in sessions}
            # attendance_rows gives each session's students in class-list order (by given name,
            # in Vietnamese collation: gateway.reports.name_sort_key).
            for row in by_day.get(day.isoformat(), []):
                student = students.setdefault(
                    row.student_id, StudentDay(row.student_id, row.full_name, {}))
                student.sessions[row.session] = row
                totals[row.session] = totals[row.session].add(row.status)
            out.append(ClassDay(day, class_id, class_name, sessions, tuple(students.values()),
                                totals))
        day += dt.timedelta(days=1)
    return out


# --- the workbook --------------------------------------------------------------------------------

def session_label(name: str) -> str:
    return SESSION_LABELS.get(name, f"Buổi / Session: {name}")


def date_text(day: dt.date) -> str:
    """dd/mm/yyyy, as Vietnamese documents write dates."""
    return day.strftime("%d/%m/%Y")


class _Painter:
    """Writes styled cells on one sheet. openpyxl is imported here, not with the module: a
    gateway that never writes a workbook never loads it (as gateway/roster.py does)."""

    def __init__(self, sheet: Worksheet) -> None:
        from openpyxl.styles import Alignment, Border, Font, PatternFill, Side

        self.sheet = sheet
        self._font = Font
        thin = Side(style="thin")
        self.border = Border(left=thin, right=thin, top=thin, bottom=thin)
        self.fills = {"header": PatternFill("solid", fgColor="D9D9D9"),
                      "late": PatternFill("solid", fgColor="FFF2CC"),
                      "absent": PatternFill("solid", fgColor="F8D7DA")}
        self.align = {
            "center": Alignment(horizontal="center", vertical="center", wrap_text=True),
            "left": Alignment(horizontal="left", vertical="center"),
            "right": Alignment(horizontal="right", vertical="center"),
            "notes": Alignment(horizontal="left", vertical="top", wrap_text=True),
        }

    def cell(self, row: int, column: int, value: Any, *, bold: bool = False, size: int = 12,
             align: str | None = None, border: bool = False, fill: str | None = None,
             number_format: str | None = None) -> None:
        cell = self.sheet.cell(row=row, column=column)
        set_cell(cell, value)  # roster text stays text, never a formula
        cell.font = self._font(name=FONT, size=size, bold=bold)
        if align is not None:
            cell.alignment = self.align[align]
        if border:
            cell.border = self.border
        if fill is not None:
            cell.fill = self.fills[fill]
        if number_format is not None:
            cell.number_format = number_format

    def merged(self, row: int, first: int, last: int, value: Any, *, rows: int = 1,
               **style: Any) -> None:
        """A value across columns ``first``..``last`` (and ``rows`` rows), styled throughout."""
        for r in range(row, row + rows):
            for column in range(first, last + 1):
                self.cell(r, column, value if (r, column) == (row, first) else None, **style)
        if last > first or rows > 1:
            self.sheet.merge_cells(start_row=row, start_column=first, end_row=row + rows - 1,
                                   end_column=last)


def fill_sheet(sheet: Worksheet, day: ClassDay, *, school_name: str, calendar: SchoolCalendar,
               generated_ms: int) -> None:
    """Lay out one class's day on ``sheet`` (see the module docstring)."""
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.page import PageMargins
    from openpyxl.worksheet.properties import PageSetupProperties

    paint = _Painter(sheet)
    zone = calendar.timezone
    last = FIXED_COLUMNS + 3 * len(day.sessions) + 1  # + the notes column
    sheet.title = day.school_date.strftime("%d-%m-%Y")
    weekday_vi, weekday_en = WEEKDAYS[day.school_date.weekday()]

    paint.merged(1, 1, last, f"Trường / School: {school_name}", bold=True, align="left")
    paint.merged(2, 1, last, TITLE, bold=True, size=14, align="center")
    paint.merged(3, 1, FIXED_COLUMNS, f"Lớp / Class: {day.class_name}", bold=True, align="left")
    paint.merged(3, FIXED_COLUMNS + 1, last,
                 f"Ngày / Date: {date_text(day.school_date)} ({weekday_vi} / {weekday_en})",
                 bold=True, align="left")
    paint.merged(4, 1, FIXED_COLUMNS, f"Mã lớp / Class ID: {day.class_id}", align="left")
    paint.merged(4, FIXED_COLUMNS + 1, last, f"Sĩ số / Students: {len(day.students)}",
                 align="left")

    # Header: two rows; the fixed columns and the notes span both, each session spans three.
    head: dict[str, Any] = dict(bold=True, align="center", border=True, fill="header")
    sub = HEADER_ROW + 1
    for column, text in enumerate(HEADERS, start=1):
        paint.merged(HEADER_ROW, column, column, text, rows=2, **head)
    for i, name in enumerate(day.sessions):
        first = FIXED_COLUMNS + 1 + 3 * i
        paint.merged(HEADER_ROW, first, first + 2, session_label(name), **head)
        for offset, text in enumerate(SESSION_HEADERS):
            paint.cell(sub, first + offset, text, **head)
    paint.merged(HEADER_ROW, last, last, NOTES_HEADER, rows=2, **head)

    row = FIRST_ROW
    for number, student in enumerate(day.students, start=1):
        paint.cell(row, 1, number, border=True, align="center")
        paint.cell(row, 2, student.student_id, border=True, align="center",
                   number_format="@")  # text: the ID keeps its leading zeros
        paint.cell(row, 3, student.full_name, border=True, align="left")
        for i, name in enumerate(day.sessions):
            first = FIXED_COLUMNS + 1 + 3 * i
            found = student.sessions.get(name)
            status = found.status if found else "no_record"
            paint.cell(row, first, SHEET_STATUS[status], border=True, align="center",
                       fill=status if status in ("late", "absent") else None)
            for offset, ms in ((1, found.check_in_ms if found else None),
                               (2, found.check_out_ms if found else None)):
                paint.cell(row, first + offset, local_time(ms, zone), border=True,
                           align="center", number_format="hh:mm")
        paint.cell(row, last, None, border=True)
        row += 1

    for key, label in TOTALS:
        paint.merged(row, 1, FIXED_COLUMNS, label, bold=True, border=True, align="right")
        for i, name in enumerate(day.sessions):
            first = FIXED_COLUMNS + 1 + 3 * i
            paint.cell(row, first, int(getattr(day.totals[name], key)), bold=True,
                       border=True, align="center")
            paint.cell(row, first + 1, None, border=True)
            paint.cell(row, first + 2, None, border=True)
        paint.cell(row, last, None, border=True)
        row += 1

    row += 1
    generated = from_ms(generated_ms, zone)
    notes = (
        f"Trạng thái / Statuses: {SHEET_STATUS['present']} = present; {SHEET_STATUS['late']} = "
        f"late; {SHEET_STATUS['absent']} = unexcused absence; {EXCUSED} = excused absence "
        "(nhà trường ghi, cổng điểm danh không biết lý do vắng / entered by the school: the "
        f"gateway records no reasons); {SHEET_STATUS['not_yet']} = not yet; "
        f"{SHEET_STATUS['no_record']} = no record.",
        f"Giờ theo múi giờ / Times in {calendar.timezone}. Lập lúc / Generated: "
        f"{generated.strftime('%d/%m/%Y %H:%M')}.",
    )
    for text in notes:
        paint.merged(row, 1, last, text, size=10, align="notes")
        sheet.row_dimensions[row].height = 40
        row += 1
    row += 1
    sign_from = max(FIXED_COLUMNS + 1, last - 3)
    paint.merged(row, sign_from, last, "Giáo viên chủ nhiệm / Homeroom teacher", bold=True,
                 align="center")
    paint.merged(row + 1, sign_from, last, "(Ký, ghi rõ họ tên / Signature and full name)",
                 size=10, align="center")

    widths = [6, 16, 28] + [16, 9, 9] * len(day.sessions) + [18]
    for column, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(column)].width = width
    sheet.row_dimensions[HEADER_ROW].height = 22
    sheet.row_dimensions[sub].height = 32
    sheet.freeze_panes = f"{get_column_letter(FIXED_COLUMNS + 1)}{FIRST_ROW}"  # D8

    sheet.print_title_rows = f"{HEADER_ROW}:{sub}"
    sheet.print_area = f"A1:{get_column_letter(last)}{row + 1}"
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0  # as many pages down as the class needs
    sheet.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    sheet.print_options.horizontalCentered = True
    sheet.page_margins = PageMargins(left=0.4, right=0.4, top=0.5, bottom=0.5)
    footer = sheet.oddFooter
    if footer is not None:
        footer.center.text = "Trang &P / &N"


def write_workbook(days: Sequence[ClassDay], out: Path, *, school_name: str,
                   calendar: SchoolCalendar, generated_ms: int) -> None:
    """One workbook, one sheet per class day, written atomically to ``out``."""
    from openpyxl import Workbook

    workbook = Workbook()
    default = workbook.active
    for day in days:
        fill_sheet(workbook.create_sheet(), day, school_name=school_name, calendar=calendar,
                   generated_ms=generated_ms)
    if days and default is not None:
        workbook.remove(default)
    workbook.properties.title = TITLE
    workbook.properties.creator = "attendance-gateway"
    with atomic_file(out) as tmp:
        workbook.save(tmp)


def write_zip(files: Iterable[Path], out: Path) -> None:
    """The workbooks in one ZIP (stored: an .xlsx is compressed already), written atomically."""
    with atomic_file(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, arcname=path.name)


# --- a run ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportResult:
    files: list[Path] = field(default_factory=list)
    zip: Path | None = None
    school_days: list[dt.date] = field(default_factory=list)
    without_class: int = 0  # students on no sheet: the roster gives them no class


def file_part(text: str) -> str:
    """An ASCII file-name part: diacritics dropped, anything else unsafe becomes '-'."""
    plain = "".join(c for c in unicodedata.normalize("NFD", text.replace("đ", "d")
                                                     .replace("Đ", "D"))
                    if not unicodedata.combining(c))
    return re.sub(r"[^A-Za-z0-9_.]+", "-", plain).strip("-.") or "lop"


def _file_parts(class_ids: Sequence[str]) -> dict[str, str]:
    parts = {c: file_part(c) for c in class_ids}
    taken = [p.casefold() for p in parts.values()]
    for class_id, part in parts.items():  # two IDs that read alike get a short hash each
        if taken.count(part.casefold()) > 1:
            parts[class_id] = f"{part}-{hashlib.sha256(class_id.encode()).hexdigest()[:6]}"
    return parts


def _span(date_from: dt.date, date_to: dt.date) -> str:
    return date_from.isoformat() if date_from == date_to else \
        f"{date_from.isoformat()}_{date_to.isoformat()}"


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """10A after 9A."""
    return tuple((0, int(p)) if p.isdigit() else (1, p.casefold())
                 for p in re.split(r"(\d+)", text) if p)


def school_days(calendar: SchoolCalendar, date_from: dt.date, date_to: dt.date) -> list[dt.date]:
    """The school days from ``date_from`` to ``date_to``, checked as an operator's request."""
    if date_to < date_from:
        raise ExportError("bad_range", "ngày cuối trước ngày đầu", "TO is before FROM")
    if (date_to - date_from).days >= MAX_RANGE_DAYS:
        raise ExportError("range_too_long", f"tối đa {MAX_RANGE_DAYS} ngày một lần",
                          f"at most {MAX_RANGE_DAYS} days at a time")
    days = [date_from + dt.timedelta(days=i) for i in range((date_to - date_from).days + 1)]
    found = [d for d in days if calendar.windows(d)]
    if not found:
        if date_from == date_to:
            vi, en = DAY_KIND_LABELS[calendar.day_kind(date_from)].split(" / ")
            if calendar.is_school_day(date_from):  # a school day without sessions configured
                vi, en = "chưa cấu hình buổi học", "no sessions configured"
            raise ExportError("no_school", f"{date_text(date_from)} không có buổi học ({vi})",
                              f"{date_from.isoformat()} has no school ({en})")
        raise ExportError("no_school", "không có ngày học nào trong khoảng này",
                          "no school day in this range")
    return found


def export_workbooks(conn: sqlite3.Connection, calendar: SchoolCalendar, date_from: dt.date,
                     date_to: dt.date, out_dir: Path, *, school: str, school_name: str,
                     class_id: str | None = None, zip_archive: bool = False,
                     clock: Clock = system_clock) -> ExportResult:
    """Write one workbook per class (or only ``class_id``) for the school days from
    ``date_from`` to ``date_to``, one sheet per day, into ``out_dir``; with ``zip_archive``
    also a ZIP of them. Raises :class:`ExportError` for an unknown class or no school day.

    All classes: every class with students on its sheets. Run it inside one read transaction
    so every sheet shows the same moment.
    """
    days = school_days(calendar, date_from, date_to)
    classes = {str(r[0]): str(r[1]) for r in conn.execute("SELECT class_id, name FROM classes")}
    if class_id is not None and class_id not in classes:
        raise ExportError("unknown_class", f"không có lớp {class_id!r}", f"no class {class_id!r}")
    if class_id is not None:
        wanted = [class_id]
    else:
        wanted = sorted({str(r[0]) for r in conn.execute(
            "SELECT DISTINCT class_id FROM students WHERE class_id IS NOT NULL")} & set(classes),
            key=_natural)
    parts = _file_parts(wanted)
    span = _span(date_from, date_to)
    now = clock()
    files: list[Path] = []
    for cid in wanted:
        sheets = class_days(conn, calendar, cid, classes[cid], days[0], days[-1])
        if class_id is None and not any(s.students for s in sheets):
            continue  # e.g. a class whose students have all left
        out = out_dir / f"diem-danh_{parts[cid]}_{span}.xlsx"
        write_workbook(sheets, out, school_name=school_name, calendar=calendar,
                       generated_ms=now)
        files.append(out)
    archive = None
    if zip_archive:
        archive = out_dir / f"diem-danh_{file_part(school)}_{span}.zip"
        write_zip(files, archive)
    without_class = 0
    if class_id is None:
        without_class = int(conn.execute(
            "SELECT COUNT(*) FROM students s WHERE s.class_id IS NULL AND (s.active = 1 OR "
            "EXISTS (SELECT 1 FROM attendance_events e WHERE e.student_id = s.student_id AND "
            "e.school_date BETWEEN ? AND ? AND e.voided_ms IS NULL))",
            (days[0].isoformat(), days[-1].isoformat())).fetchone()[0])
    return ExportResult(files, archive, days, without_class)


# --- the scheduled export ------------------------------------------------------------------------

def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (it only reads the gateway's WAL database)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class DailyExport:
    """After ``[export] daily_at`` on each school day, the day's class workbooks (and the ZIP
    with ``zip = true``) in ``daily_dir/YYYY-MM-DD/``.

    A day is written once: its folder is built as ``.YYYY-MM-DD.*`` and renamed when complete,
    and a folder that exists is never rewritten (delete it to have it written again). A day the
    gateway missed (off at ``daily_at``) is written when it runs again, up to ``lookback_days``
    later. Days with no attendance recorded (the gateway was not running) are skipped.
    """

    def __init__(self, config: GatewayConfig, clock: Clock = system_clock, *,
                 lookback_days: int = LOOKBACK_DAYS, poll_s: float = EXPORT_POLL_S) -> None:
        if config.export.daily_dir is None:
            raise ValueError("[export] daily_dir is not set")
        self.config = config
        self.folder = config.export.daily_dir
        self.calendar = SchoolCalendar(config.attendance, config.timezone)
        self._clock = clock
        self._lookback = lookback_days
        self._poll_s = poll_s
        self._said_empty: set[dt.date] = set()

    def due(self, now_ms: int) -> list[dt.date]:
        """School days whose export is due and not written yet, oldest first."""
        today = self.calendar.local_date(now_ms)
        out = []
        for back in range(self._lookback, -1, -1):
            day = today - dt.timedelta(days=back)
            if not self.calendar.windows(day):
                continue  # no school
            if back == 0 and now_ms < self.calendar.at(day, self.config.export.daily_at):
                continue
            if not (self.folder / day.isoformat()).exists():
                out.append(day)
        return out

    def tick(self) -> list[Path]:
        """Write every due day (blocking: run it in a thread). Returns the folders written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".????-??-??.*"):  # left by a run that was killed
            shutil.rmtree(stale, ignore_errors=True)
        written = []
        for day in self.due(self._clock()):
            folder = self.write_day(day)
            if folder is not None:
                written.append(folder)
        return written

    def write_day(self, day: dt.date) -> Path | None:
        """The day's folder, or None when there was nothing to write."""
        final = self.folder / day.isoformat()
        conn = connect_read_only(self.config.database)
        try:
            conn.execute("BEGIN")  # one snapshot for every class
            recorded = conn.execute(
                "SELECT 1 FROM attendance_events WHERE school_date = ? AND voided_ms IS NULL "
                "AND student_id IS NOT NULL LIMIT 1", (day.isoformat(),)).fetchone()
            if recorded is None:
                if day not in self._said_empty:
                    self._said_empty.add(day)
                    log.info("daily export skipped: no attendance recorded",
                             extra={"school_date": day.isoformat()})
                return None
            building = Path(tempfile.mkdtemp(prefix=f".{day.isoformat()}.", dir=self.folder))
            try:
                result = export_workbooks(
                    conn, self.calendar, day, day, building, school=self.config.school,
                    school_name=self.config.export.school_name or self.config.school,
                    zip_archive=self.config.export.zip, clock=self._clock)
                os.rename(building, final)  # fails if the folder appeared meanwhile: kept
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
        finally:
            conn.close()
        fsync_dir(self.folder)
        log.info("daily export written", extra={
            "school_date": day.isoformat(), "workbooks": len(result.files),
            "without_class": result.without_class, "folder": str(final)})
        return final

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: look every ``poll_s`` seconds whether a day is due, and write it in a
        worker thread (the event loop and the ingest's writer carry on meanwhile)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # a full disk or a bad folder must not stop the gateway
                log.error("daily export failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)
