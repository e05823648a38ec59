"""Operator reports: reader health, a day's attendance, unknown cards, quarantine, gaps, export.

Read-only queries over the gateway's database. Each report is a function returning plain
dataclasses; the CLI (gateway/commands/reports.py) prints them as bilingual text tables or JSON,
and the dashboard calls the same functions. :func:`attendance_rows` is the one definition of "a
student's attendance in a session" for the ``today`` report, the exports and the dashboard.

Names of students appear in these reports (the operator's job) and never in logs.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import sqlite3
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.files import fsync_path
from gateway.rules import SchoolCalendar, from_ms

HEARTBEAT_S = 60  # the readers' default heartbeat period (protocol/SPEC.md section 6)
ONLINE_PERIODS = 3  # a reader is online if heard from within this many heartbeat periods

Status = Literal["present", "late", "absent", "not_yet", "no_record"]
STATUS_LABELS: dict[str, str] = {
    "present": "Có mặt / Present",
    "late": "Đi muộn / Late",
    "absent": "Vắng / Absent",
    "not_yet": "Chưa đến / Not yet",
    "no_record": "Không có dữ liệu / No record",
}
DAY_KIND_LABELS: dict[str, str] = {
    "school_day": "Ngày học / School day",
    "holiday": "Ngày nghỉ lễ / Holiday",
    "not_school_day": "Không phải ngày học / Not a school day",
}


# --- reader health -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReaderHealth:
    reader_id: int
    name: str
    gate: str
    status: str  # registry status: active / revoked
    online: bool
    last_seen_ms: int | None  # the later of the last heartbeat and the last scan received
    last_heartbeat_ms: int | None
    last_scan_ms: int | None
    state: str | None  # from the last heartbeat: online / offline (last will) / fault
    faults: str | None
    fw_version: str | None
    link: str | None
    rssi_dbm: int | None
    queue_depth: int | None
    oldest_unsent_age_s: int | None
    dropped: int | None
    clock_health: str
    clock_offset_ms: int | None


@dataclass(frozen=True)
class StatusReport:
    now_ms: int
    heartbeat_s: int
    readers: list[ReaderHealth]
    readers_active: int
    readers_online: int
    queue_depth: int  # records waiting in the readers, as last reported
    oldest_unsent_age_s: int
    dropped: int
    scans_today: int
    unknown_cards_open: int
    quarantined_24h: int


def reader_health(conn: sqlite3.Connection, now_ms: int,
                  heartbeat_s: int = HEARTBEAT_S) -> list[ReaderHealth]:
    """Every registered reader with its last heartbeat and last scan.

    Online: heard from (heartbeat or scan) within 3 heartbeat periods, and the last word was
    not the broker's last will saying it went offline.
    """
    rows = conn.execute(
        "SELECT r.reader_id, r.name, r.gate, r.status, rs.received_ms, rs.state, rs.faults, "
        "rs.fw_version, rs.link, rs.rssi_dbm, rs.queue_depth, rs.oldest_unsent_age_s, "
        "rs.dropped, rs.clock_health, rs.clock_offset_ms "
        "FROM readers r LEFT JOIN reader_status rs ON rs.reader_id = r.reader_id "
        "ORDER BY r.gate, r.name").fetchall()
    out = []
    limit_ms = ONLINE_PERIODS * heartbeat_s * 1000
    for r in rows:
        last_scan = conn.execute(  # the newest record by identity: an index lookup
            "SELECT received_ms FROM scans WHERE reader_id = ? ORDER BY boot DESC, seq DESC "
            "LIMIT 1", (r[0],)).fetchone()
        last_scan_ms = int(last_scan[0]) if last_scan else None
        last_hb_ms = int(r[4]) if r[4] is not None else None
        seen = [t for t in (last_hb_ms, last_scan_ms) if t is not None]
        last_seen = max(seen) if seen else None
        went_offline = r[5] == "offline" and last_hb_ms == last_seen
        online = (r[3] == "active" and last_seen is not None and now_ms - last_seen <= limit_ms
                  and not went_offline)
        out.append(ReaderHealth(
            reader_id=int(r[0]), name=str(r[1]), gate=str(r[2]), status=str(r[3]),
            online=online, last_seen_ms=last_seen, last_heartbeat_ms=last_hb_ms,
            last_scan_ms=last_scan_ms, state=r[5], faults=r[6], fw_version=r[7], link=r[8],
            rssi_dbm=r[9], queue_depth=r[10], oldest_unsent_age_s=r[11], dropped=r[12],
            clock_health=str(r[13] or "unknown"), clock_offset_ms=r[14]))
    return out


def status_report(conn: sqlite3.Connection, calendar: SchoolCalendar, now_ms: int,
                  heartbeat_s: int = HEARTBEAT_S) -> StatusReport:
    readers = reader_health(conn, now_ms, heartbeat_s)
    active = [r for r in readers if r.status == "active"]
    today = calendar.local_date(now_ms)
    day_start = calendar.at(today, dt.time())
    day_end = calendar.at(today + dt.timedelta(days=1), dt.time())
    scans_today = conn.execute("SELECT COUNT(*) FROM scans WHERE at_ms >= ? AND at_ms < ?",
                               (day_start, day_end)).fetchone()[0]
    unknown = conn.execute("SELECT COUNT(*) FROM unknown_cards WHERE acknowledged = 0"
                           ).fetchone()[0]
    quarantined = conn.execute("SELECT COUNT(*) FROM quarantine WHERE last_ms >= ?",
                               (now_ms - 86_400_000,)).fetchone()[0]
    return StatusReport(
        now_ms=now_ms, heartbeat_s=heartbeat_s, readers=readers, readers_active=len(active),
        readers_online=sum(r.online for r in active),
        queue_depth=sum(r.queue_depth or 0 for r in active),
        oldest_unsent_age_s=max((r.oldest_unsent_age_s or 0 for r in active), default=0),
        dropped=sum(r.dropped or 0 for r in active), scans_today=int(scans_today),
        unknown_cards_open=int(unknown), quarantined_24h=int(quarantined))


# --- attendance ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttendanceRow:
    """One student in one session of one school day."""

    school_date: str
    session: str
    class_id: str | None
    class_name: str | None
    student_id: str
    full_name: str
    status: Status
    check_in_ms: int | None
    check_out_ms: int | None
    late: bool
    absent: bool


# Vietnamese collation. Letters in the order of the Vietnamese alphabet, where ă, â, đ, ê, ô, ơ and
# ư are letters of their own (after a, a, d, e, o, o, u), and f, j, w, z (foreign names) in their
# Latin places; tones only break ties, in dictionary order: none, huyền (grave), hỏi (hook above),
# ngã (tilde), sắc (acute), nặng (dot below). Both precomposed and decomposed input sort alike.
_ALPHABET = "aăâbcdđeêfghijklmnoôơpqrstuưvwxyz"
_LETTER_RANK = {letter: 1000 + i for i, letter in enumerate(_ALPHABET)}
_WITH_MARK = {("a", "\u0306"): "ă", ("a", "\u0302"): "â", ("e", "\u0302"): "ê",
              ("o", "\u0302"): "ô", ("o", "\u031b"): "ơ", ("u", "\u031b"): "ư"}
_TONE_RANK = {"\u0300": 1, "\u0309": 2, "\u0303": 3, "\u0301": 4, "\u0323": 5}
_SAME_LETTER = {"ð": "đ"}  # the Icelandic eth, sometimes typed for Đ

WordKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
NameKey = tuple[WordKey, WordKey, tuple[WordKey, ...], str]


def word_sort_key(word: str) -> WordKey:
    """A Vietnamese word's collation key: (letters, tones, case); lower case sorts first.

    Digits sort before letters, other scripts after them; punctuation is ignored (the full
    name still breaks a tie).
    """
    letters: list[int] = []
    bases: list[str] = []
    tones: list[int] = []
    case: list[int] = []
    for char in unicodedata.normalize("NFD", word):
        if unicodedata.combining(char):
            if char in _TONE_RANK:
                tones.append(_TONE_RANK[char])  # one per syllable, wherever it was typed
            elif bases and (bases[-1], char) in _WITH_MARK:
                bases[-1] = _WITH_MARK[(bases[-1], char)]
                letters[-1] = _LETTER_RANK[bases[-1]]
            else:
                tones.append(10 + ord(char))  # a mark Vietnamese does not use
            continue
        for lower in char.casefold():
            lower = _SAME_LETTER.get(lower, lower)
            if lower in _LETTER_RANK:
                rank = _LETTER_RANK[lower]
            elif lower.isdigit():
                rank = 100 + unicodedata.digit(lower, 0)
            elif lower.isalpha():
                rank = 2000 + ord(lower)
            else:
                continue
            letters.append(rank)
            bases.append(lower)
            case.append(0 if char == char.lower() else 1)
    return tuple(letters), tuple(tones), tuple(case)


def name_sort_key(full_name: str) -> NameKey:
    """How Vietnamese class lists are ordered: by given name (the last word), then family name
    (the first), then middle names, each compared in Vietnamese collation (:func:`word_sort_key`).
    """
    words = full_name.split()
    given = words[-1] if words else ""
    family = words[0] if len(words) > 1 else ""
    return (word_sort_key(given), word_sort_key(family),
            tuple(word_sort_key(w) for w in words[1:-1]),
            unicodedata.normalize("NFC", full_name))


@dataclass(frozen=True)
class _Student:
    student_id: str
    full_name: str
    class_id: str | None
    class_name: str | None
    active: bool

    @property
    def order(self) -> tuple[str, NameKey, str]:
        return (self.class_id or "\uffff", name_sort_key(self.full_name), self.student_id)


def _students(conn: sqlite3.Connection) -> dict[str, _Student]:
    rows = conn.execute(
        "SELECT s.student_id, s.full_name, s.class_id, c.name, s.active FROM students s "
        "LEFT JOIN classes c ON c.class_id = s.class_id").fetchall()
    return {str(r[0]): _Student(str(r[0]), str(r[1]), r[2], r[3], bool(r[4])) for r in rows}


def _days(date_from: dt.date, date_to: dt.date) -> Iterator[dt.date]:
    day = date_from
    while day <= date_to:
        yield day
        day += dt.timedelta(days=1)


def attendance_rows(conn: sqlite3.Connection, calendar: SchoolCalendar, date_from: dt.date,
                    date_to: dt.date, class_id: str | None = None) -> Iterator[AttendanceRow]:
    """One row per student per school day per session, from ``date_from`` to ``date_to``
    inclusive, ordered by date, session, class and name. Days without school are skipped.

    Students are those active in today's roster plus anyone with an event that day. Status:
    ``present`` / ``late`` (checked in), ``absent``, ``not_yet`` (the session is not closed
    yet), ``no_record`` (closed, but the student had no event: added to the roster later).
    """
    students = _students(conn)
    in_class = ("" if class_id is None else
                " AND student_id IN (SELECT student_id FROM students WHERE class_id = ?)")
    for day in _days(date_from, date_to):
        windows = calendar.windows(day)
        if not windows:
            continue
        iso = day.isoformat()
        params = (iso,) if class_id is None else (iso, class_id)
        events: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for sid, session, kind, at_ms in conn.execute(
                "SELECT student_id, session, kind, at_ms FROM attendance_events "
                "WHERE school_date = ? AND student_id IS NOT NULL AND voided_ms IS NULL "
                "AND kind IN ('check_in', 'late', 'check_out', 'absent')" + in_class, params):
            events[(str(session), str(sid))][str(kind)] = int(at_ms)
        closed = {str(r[0]) for r in conn.execute(
            "SELECT session FROM closed_sessions WHERE school_date = ?", (iso,))}
        with_events = {sid for _, sid in events}
        roster = [s for s in students.values() if s.active or s.student_id in with_events]
        if class_id is not None:
            roster = [s for s in roster if s.class_id == class_id]
        roster.sort(key=lambda s: s.order)
        for window in windows:
            for student in roster:
                found = events.get((window.name, student.student_id), {})
                status: Status
                if "check_in" in found:
                    status = "late" if "late" in found else "present"
                elif "absent" in found:
                    status = "absent"
                else:
                    status = "no_record" if window.name in closed else "not_yet"
                yield AttendanceRow(
                    school_date=iso, session=window.name, class_id=student.class_id,
                    class_name=student.class_name, student_id=student.student_id,
                    full_name=student.full_name, status=status,
                    check_in_ms=found.get("check_in"), check_out_ms=found.get("check_out"),
                    late="late" in found, absent=status == "absent")


@dataclass(frozen=True)
class ClassCounts:
    class_id: str | None
    class_name: str | None
    total: int = 0
    present: int = 0
    late: int = 0
    absent: int = 0
    not_yet: int = 0  # includes no_record

    def add(self, status: Status) -> ClassCounts:
        key = "not_yet" if status == "no_record" else status
        values = {k: getattr(self, k) for k in ("total", "present", "late", "absent", "not_yet")}
        values["total"] += 1
        values[key] += 1
        return ClassCounts(self.class_id, self.class_name, **values)


@dataclass(frozen=True)
class SessionReport:
    session: str
    closed: bool
    classes: list[ClassCounts]
    totals: ClassCounts


@dataclass(frozen=True)
class DayReport:
    school_date: str
    day_kind: str
    sessions: list[SessionReport]
    rows: list[AttendanceRow] = field(default_factory=list)


def day_report(conn: sqlite3.Connection, calendar: SchoolCalendar, day: dt.date,
               class_id: str | None = None) -> DayReport:
    """Attendance of one day by session and class (``today``)."""
    rows = list(attendance_rows(conn, calendar, day, day, class_id))
    closed = {str(r[0]) for r in conn.execute(
        "SELECT session FROM closed_sessions WHERE school_date = ?", (day.isoformat(),))}
    sessions = []
    for window in calendar.windows(day):
        by_class: dict[str | None, ClassCounts] = {}
        totals = ClassCounts(None, None)
        for row in rows:
            if row.session != window.name:
                continue
            counts = by_class.get(row.class_id) or ClassCounts(row.class_id, row.class_name)
            by_class[row.class_id] = counts.add(row.status)
            totals = totals.add(row.status)
        ordered = sorted(by_class.values(), key=lambda c: c.class_id or "\uffff")
        sessions.append(SessionReport(window.name, window.name in closed, ordered, totals))
    return DayReport(day.isoformat(), calendar.day_kind(day), sessions, rows)


# --- unknown cards, quarantine, gaps -------------------------------------------------------------

@dataclass(frozen=True)
class UnknownCard:
    card: str
    first_ms: int
    last_ms: int
    times_seen: int
    last_reader_id: int | None
    last_reader: str | None
    acknowledged: bool


def unknown_cards(conn: sqlite3.Connection) -> list[UnknownCard]:
    rows = conn.execute(
        "SELECT u.card, u.first_ms, u.last_ms, u.times_seen, u.last_reader_id, r.name, "
        "u.acknowledged FROM unknown_cards u "
        "LEFT JOIN readers r ON r.reader_id = u.last_reader_id ORDER BY u.last_ms DESC").fetchall()
    return [UnknownCard(str(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4], r[5], bool(r[6]))
            for r in rows]


@dataclass(frozen=True)
class QuarantineEntry:
    quarantine_id: int
    first_ms: int
    last_ms: int
    times_seen: int
    transport: str
    reader_id: int | None
    boot: int | None
    seq: int | None
    reason: str
    detail: str
    size: int


def quarantine(conn: sqlite3.Connection, since_ms: int | None = None,
               limit: int = 200) -> list[QuarantineEntry]:
    """Quarantined input, newest first (never the raw bytes: only their size)."""
    rows = conn.execute(
        "SELECT quarantine_id, first_ms, last_ms, times_seen, transport, reader_id, boot, seq, "
        "reason, detail, LENGTH(raw) FROM quarantine WHERE last_ms >= ? "
        "ORDER BY last_ms DESC, quarantine_id DESC LIMIT ?",
        (since_ms if since_ms is not None else -(2**62), limit)).fetchall()
    return [QuarantineEntry(int(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4]), r[5], r[6],
                            r[7], str(r[8]), str(r[9]), int(r[10])) for r in rows]


@dataclass(frozen=True)
class Gap:
    reader_id: int
    reader: str | None
    boot: int
    first_missing: int
    last_missing: int

    @property
    def missing(self) -> int:
        return self.last_missing - self.first_missing + 1


def gaps(conn: sqlite3.Connection) -> list[Gap]:
    """Sequence gaps as seen now; a backlog still travelling may fill them."""
    rows = conn.execute(
        "SELECT g.reader_id, r.name, g.boot, g.first_missing, g.last_missing FROM seq_gaps g "
        "LEFT JOIN readers r ON r.reader_id = g.reader_id "
        "ORDER BY g.reader_id, g.boot, g.first_missing").fetchall()
    return [Gap(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]


# --- export --------------------------------------------------------------------------------------

EXPORT_HEADERS = (
    "Ngày / Date", "Buổi / Session", "Mã lớp / Class ID", "Lớp / Class",
    "Mã học sinh / Student ID", "Họ và tên / Full name", "Giờ vào / Check-in",
    "Giờ ra / Check-out", "Đi muộn / Late", "Vắng / Absent", "Trạng thái / Status",
)


def local_time(ms: int | None, zone: dt.tzinfo) -> dt.time | None:
    """The school-local time of day of Unix milliseconds, to the second."""
    return None if ms is None else from_ms(ms, zone).time().replace(microsecond=0)


def export_values(row: AttendanceRow, zone: dt.tzinfo) -> tuple[Any, ...]:
    """A row's export cells: date, times of day in the school's zone, 1/0 flags."""
    return (dt.date.fromisoformat(row.school_date), row.session, row.class_id or "",
            row.class_name or "", row.student_id, row.full_name,
            local_time(row.check_in_ms, zone), local_time(row.check_out_ms, zone),
            int(row.late), int(row.absent), row.status)


# --- spreadsheet cells: text stays text --------------------------------------------------------

# A text cell starting with one of these is a formula (or the start of one) to Excel and
# LibreOffice when it comes from a CSV file; OWASP's "CSV injection" list. A name or a class
# name in the roster comes from whoever edits the roster sheet, and exports are opened on the
# district's computers: see docs/roster.md ("Names in exports") and docs/SECURITY.md (W6).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text value as it goes into a CSV cell: one that a spreadsheet would read as a formula
    gets a leading single quote (``'=1+2``), which spreadsheet programs show as text; every
    other value is unchanged."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def set_cell(cell: Any, value: Any) -> None:
    """Put ``value`` in an openpyxl cell (normal or write-only). Text is stored as text,
    always: openpyxl would store a string starting with ``=`` as a formula; with the type set
    to string the cell holds exactly the roster's text (no quote added), which Excel shows and
    never evaluates."""
    cell.value = value
    if isinstance(value, str):
        cell.data_type = "s"


@contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` to write; when the block succeeds it is flushed to disk
    and renamed to ``out``, when it fails it is removed. So ``out`` appears complete or not at
    all, and an older ``out`` stays intact until the new one replaces it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fsync_path(folder)


def write_csv(rows: Iterable[AttendanceRow], out: Path, zone: dt.tzinfo) -> int:
    """Write rows as CSV (UTF-8 with a BOM, so spreadsheet programs read Vietnamese); the file
    appears complete or not at all. Returns the number of rows."""
    count = 0
    with atomic_file(out) as tmp, tmp.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_HEADERS)
        for row in rows:
            values = export_values(row, zone)
            writer.writerow(["" if v is None else v.isoformat() if isinstance(
                v, dt.date | dt.time) else csv_text(v) if isinstance(v, str) else v
                for v in values])
            count += 1
    return count


def write_xlsx(rows: Iterable[AttendanceRow], out: Path, zone: dt.tzinfo) -> int:
    """Write rows as an Excel workbook (streamed, for a whole school year)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Điểm danh")
    sheet.freeze_panes = "A2"
    for letter, width in zip("ABCDEFGHIJK", (12, 12, 10, 12, 16, 28, 11, 11, 9, 9, 12),
                             strict=True):
        sheet.column_dimensions[letter].width = width
    header = []
    for text in EXPORT_HEADERS:
        cell = WriteOnlyCell(sheet, value=text)
        cell.font = Font(bold=True)
        header.append(cell)
    sheet.append(header)
    count = 0
    for row in rows:
        cells: list[Any] = []
        for value in export_values(row, zone):
            cell = WriteOnlyCell(sheet)
            set_cell(cell, value)
            if isinstance(value, dt.date):
                cell.number_format = "yyyy-mm-dd"
            elif isinstance(value, dt.time):
                cell.number_format = "hh:mm:ss"
            cells.append(cell)
        sheet.append(cells)
        count += 1
    with atomic_file(out) as tmp:
        workbook.save(tmp)
    return count


def export(conn: sqlite3.Connection, calendar: SchoolCalendar, date_from: dt.date,
           date_to: dt.date, fmt: Literal["csv", "xlsx"], out: Path,
           class_id: str | None = None) -> int:
    rows = attendance_rows(conn, calendar, date_from, date_to, class_id)
    writer = write_csv if fmt == "csv" else write_xlsx
    return writer(rows, out, calendar.timezone)


# --- text ----------------------------------------------------------------------------------------

def text_width(text: str) -> int:
    """Columns a string takes in a terminal (combining marks take none, wide characters two)."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in unicodedata.normalize("NFC", text))


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table; numbers are right-aligned."""
    body = [[_cell(v) for v in row] for row in rows]
    widths = [text_width(h) for h in headers]
    for row in body:
        widths = [max(w, text_width(v)) for w, v in zip(widths, row, strict=True)]
    numeric = [all(row[i].lstrip("-").isdigit() for row in body if row[i]) and bool(body)
               for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - text_width(cell))
            parts.append(pad + cell if numeric[i] else cell + pad)
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in body)
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "x" if value else ""
    return str(value)


def clock_text(ms: int | None, zone: dt.tzinfo) -> str:
    return "" if ms is None else from_ms(ms, zone).strftime("%H:%M:%S")


def datetime_text(ms: int | None, zone: dt.tzinfo) -> str:
    return "" if ms is None else from_ms(ms, zone).strftime("%Y-%m-%d %H:%M:%S")


def age_text(seconds: float | None) -> str:
    """A short age: 45s, 12m, 3h05m, 2d04h."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"
