"""Roster import: OneRoster 1.1 CSV bulk/delta sets and the school secretary's sheet (CSV or XLSX).

Reading and applying are separate steps. ``read_oneroster`` and ``read_sheet`` turn files into a
:class:`Roster` (classes, students with their card numbers and guardians) and a list of
:class:`RowError` (file, line, reason) for the rows they had to skip; they never touch the
database. ``apply_roster`` writes a roster in one transaction (every good row, or nothing if
anything unexpected fails), records the run in ``roster_imports`` and returns an
:class:`ImportResult` with counts and errors. A file that cannot be used at all (not UTF-8, empty,
a required column missing, an inconsistent manifest) raises :class:`RosterFileError` and nothing is
written.

Rules (docs/roster.md has the operator's version):

- Students are keyed by the 10-digit Ministry student ID; re-importing the same file changes
  nothing; a changed name, class or status is an update.
- A column (or OneRoster field) the file has is authoritative for the students it lists: their
  card numbers and guardians become exactly what the file says. A column the file lacks leaves
  that data alone. Students the file does not list are never touched.
- A card number claimed by two students, in the file or against the database, is assigned to
  neither by the import and reported with both students' IDs; a current owner keeps it.
- Names and phones never appear in logs or error messages; errors name students by their ID.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
import sqlite3
import unicodedata
import zipfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway import cards
from gateway.types import Clock, system_clock
from protocol import card as card_tech

log = logging.getLogger(__name__)

Effect = Literal["file", "row", "card", "guardian"]
Lang = Literal["vi", "en"]

# --- errors ------------------------------------------------------------------------------------

#: Every error code with its Vietnamese and English text; ``{name}`` is filled from the params.
REASONS: dict[str, tuple[str, str]] = {
    # whole file
    "empty_file": ("tệp rỗng", "the file is empty"),
    "unreadable": ("không đọc được tệp: {detail}", "cannot read the file: {detail}"),
    "not_utf8": ("tệp không phải văn bản UTF-8 (dòng {at}): hãy lưu dạng \"CSV UTF-8\"",
                 "not UTF-8 text (line {at}): save it as \"CSV UTF-8\""),
    "bad_csv": ("CSV sai cú pháp: {detail}", "malformed CSV: {detail}"),
    "unsupported_format": ("không hỗ trợ loại tệp \"{suffix}\": dùng .csv hoặc .xlsx",
                           "unsupported file type \"{suffix}\": use .csv or .xlsx"),
    "old_excel": ("tệp Excel đời cũ (.xls): hãy lưu lại dạng .xlsx",
                  "old Excel format (.xls): save it as .xlsx"),
    "bad_xlsx": ("không mở được tệp Excel: {detail}", "cannot open the Excel file: {detail}"),
    "missing_columns": ("thiếu cột: {columns}", "missing column(s): {columns}"),
    "duplicate_column": ("cột \"{column}\" xuất hiện hai lần", "column \"{column}\" appears twice"),
    "not_a_folder": ("không phải thư mục", "not a folder"),
    "missing_manifest": ("thiếu manifest.csv", "manifest.csv is missing"),
    "bad_manifest": ("manifest.csv sai: {detail}", "bad manifest.csv: {detail}"),
    "unsupported_version": ("phiên bản OneRoster \"{version}\" không được hỗ trợ (cần 1.1)",
                            "OneRoster version \"{version}\" is not supported (1.1 expected)"),
    "undeclared_file": ("có tệp {name} nhưng manifest.csv không khai báo (absent)",
                        "{name} is present but manifest.csv does not declare it"),
    "declared_file_missing": ("manifest.csv khai báo {name} nhưng không có tệp",
                              "manifest.csv declares {name} but the file is missing"),
    "required_file": ("manifest.csv phải khai báo {name} là bulk hoặc delta",
                      "manifest.csv must declare {name} as bulk or delta"),
    # a row
    "missing_student_id": ("thiếu mã định danh học sinh", "missing Ministry student ID"),
    "bad_student_id": ("mã định danh phải gồm đúng 10 chữ số (ô này có {length} ký tự)",
                       "the Ministry student ID must be exactly 10 digits (this one has "
                       "{length} characters)"),
    "student_id_lost_zero": (
        "mã định danh chỉ có 9 chữ số: có lẽ Excel đã bỏ số 0 ở đầu (định dạng cột là Văn bản)",
        "the Ministry student ID has 9 digits: Excel probably dropped a leading 0 (format the "
        "column as Text)"),
    "missing_name": ("thiếu họ và tên học sinh", "missing student name"),
    "missing_class": ("thiếu lớp", "missing class"),
    "bad_card_number": ("số thẻ \"{card}\" không phải dạng in trên thẻ (hex 4/5/7/10 byte, số "
                        "thập phân 8 hoặc 10 chữ số, hoặc \"cơ sở,số\")",
                        "card number \"{card}\" is not a printed form (hex of 4/5/7/10 bytes, "
                        "8- or 10-digit decimal, or \"facility,number\")"),
    "bad_phone": ("số điện thoại phụ huynh không phải số di động Việt Nam",
                  "the guardian's phone is not a Vietnamese mobile number"),
    "bad_consent": ("giá trị \"Đồng ý\" không rõ: dùng có/không hoặc yes/no",
                    "unclear consent value: use có/không or yes/no"),
    "bad_cell_type": ("ô cột \"{column_vi}\" chứa {kind_vi}, cần văn bản",
                      "the \"{column_en}\" cell holds {kind_en}, text expected"),
    "conflicting_rows": ("học sinh {student} đã có ở dòng {first} với họ tên hoặc lớp khác",
                         "student {student} is already on line {first} with another name or "
                         "class"),
    "missing_sourced_id": ("thiếu sourcedId", "missing sourcedId"),
    "missing_title": ("thiếu tên lớp (title)", "missing class title"),
    "bad_user_ids": ("userIds sai dạng: cần {loại:mã},{loại:mã}…",
                     "malformed userIds: expected {type:id},{type:id}…"),
    "bad_status": ("status \"{value}\" không hợp lệ (active hoặc tobedeleted)",
                   "status \"{value}\" is not active or tobedeleted"),
    "bad_date": ("{column} \"{value}\" không phải ngày giờ ISO 8601",
                 "{column} \"{value}\" is not an ISO 8601 date"),
    "bad_flag": ("{column} \"{value}\" phải là true hoặc false",
                 "{column} \"{value}\" must be true or false"),
    "duplicate_user": ("sourcedId {user} lặp lại (dòng {first})",
                       "sourcedId {user} is repeated (line {first})"),
    "duplicate_student": ("mã định danh {student} đã có ở dòng {first}",
                          "Ministry student ID {student} is already on line {first}"),
    "duplicate_class": ("lớp {class} lặp lại (dòng {first})",
                        "class {class} is repeated (line {first})"),
    "unknown_user": ("người dùng {user} không có trong users.csv",
                     "user {user} is not in users.csv"),
    "unknown_class": ("lớp {class} không có trong classes.csv và cơ sở dữ liệu",
                      "class {class} is neither in classes.csv nor in the database"),
    "unknown_school": ("trường {school} không có trong orgs.csv",
                       "school {school} is not in orgs.csv"),
    "several_classes": ("học sinh có nhiều lớp chủ nhiệm ({classes}): không chọn được lớp",
                        "the student has several homeroom classes ({classes}): cannot choose"),
    # part of a row
    "missing_phone": ("có phụ huynh nhưng thiếu số điện thoại: không lưu phụ huynh này",
                      "a guardian without a phone number: this guardian is not stored"),
    "duplicate_guardian": ("phụ huynh số điện thoại này đã có ở dòng {first} với thông tin khác: "
                           "giữ dòng {first}",
                           "a guardian with this phone is already on line {first} with other "
                           "details: line {first} is kept"),
    "card_conflict_file": ("thẻ {card} được ghi cho hai học sinh {other} (dòng {other_line}) và "
                           "{student}: không gán cho ai",
                           "card {card} is listed for two students, {other} (line {other_line}) "
                           "and {student}: assigned to neither"),
    "card_taken": ("thẻ {card} đã thuộc học sinh {other}: không gán cho {student}",
                   "card {card} already belongs to student {other}: not assigned to {student}"),
}


def _fill(template: str, params: Iterable[tuple[str, str]]) -> str:
    for name, value in params:
        template = template.replace("{" + name + "}", value)
    return template


@dataclass(frozen=True)
class RowError:
    """Why a row (or part of it, ``effect``) was not imported: ``file:line: reason``.

    ``line`` is the 1-based line of a CSV record (where it starts) or the row of an XLSX sheet;
    0 for the whole file. ``effect``: ``row`` skipped, ``card`` the card not assigned,
    ``guardian`` the guardian not stored, ``file`` nothing imported.
    """

    file: str
    line: int
    code: str
    params: tuple[tuple[str, str], ...] = ()
    effect: Effect = "row"

    def message(self, lang: Lang = "en") -> str:
        vi, en = REASONS[self.code]
        return _fill(vi if lang == "vi" else en, self.params)

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        return f"{self.where()}: {self.message('en')}"


class RosterFileError(Exception):
    """A roster file that cannot be imported at all; nothing was written."""

    def __init__(self, file: str, code: str, line: int = 0, **params: object) -> None:
        self.error = RowError(file, line, code, tuple((k, str(v)) for k, v in params.items()),
                              "file")
        super().__init__(str(self.error))


class _Bad(Exception):
    """A value a row cannot use; becomes a :class:`RowError` at the row's file and line."""

    def __init__(self, code: str, **params: object) -> None:
        super().__init__(code)
        self.code = code
        self.params = tuple((k, str(v)) for k, v in params.items())


# --- field values ------------------------------------------------------------------------------

_ASCII_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9A-F]+")
_FACILITY_NUMBER = re.compile(r"([0-9]{1,5}),([0-9]{1,6})")
_HEX_DIGITS = {8, 10, 14, 20}  # 4, 5, 7 and 10 bytes
_PHONE_JUNK = re.compile(r"[\s.\-()]")
_MOBILE = re.compile(r"[35789][0-9]{8}")


def parse_student_id(text: str) -> str:
    """The 10-digit Ministry student ID (mã định danh), or ``_Bad``."""
    value = text.strip()
    if not value:
        raise _Bad("missing_student_id")
    if len(value) == 9 and _ASCII_DIGITS.fullmatch(value):
        raise _Bad("student_id_lost_zero")
    if len(value) != 10 or not _ASCII_DIGITS.fullmatch(value):
        raise _Bad("bad_student_id", length=len(value))
    return value


def parse_card_number(text: str) -> str:
    """A printed card number, normalised as stored (``gateway.cards.normalize_number``).

    Plausible forms: hex of 4, 5, 7 or 10 bytes (separators and a ``0x`` prefix allowed), an 8- or
    10-digit decimal, or ``facility,number`` (facility up to 65535, number up to 524287).
    """
    value = text.strip()
    if value[:2] in ("0x", "0X"):
        value = value[2:]
    number = cards.normalize_number(value)
    pair = _FACILITY_NUMBER.fullmatch(number)
    if pair and int(pair.group(1)) <= 0xFFFF and int(pair.group(2)) <= 0x7FFFF:
        return number
    if _ASCII_DIGITS.fullmatch(number) and len(number) in (8, 10):
        return number
    if _HEX.fullmatch(number) and len(number) in _HEX_DIGITS:
        return number
    raise _Bad("bad_card_number", card=text.strip())


def normalize_phone(text: str) -> str:
    """A Vietnamese mobile number as ``84`` + 9 digits (the form Zalo ZNS and SMS gateways take).

    Accepts ``0xxxxxxxxx``, ``+84…``, ``84…``, ``0084…``, a stray 0 after the country code, spaces,
    dots, dashes and brackets, and 9 digits whose leading 0 Excel dropped. ``ValueError`` otherwise.
    """
    value = _PHONE_JUNK.sub("", text)
    if value.startswith("+84"):
        rest = value[3:]
    elif value.startswith("0084"):
        rest = value[4:]
    elif value.startswith("84") and len(value) in (11, 12):
        rest = value[2:]
    elif value.startswith("0"):
        rest = value[1:]
    else:
        rest = value
    if len(rest) == 10 and rest.startswith("0"):
        rest = rest[1:]
    if not _MOBILE.fullmatch(rest):
        raise ValueError("not a Vietnamese mobile number")
    return "84" + rest


def _phone(text: str) -> str:
    try:
        return normalize_phone(text)
    except ValueError:
        raise _Bad("bad_phone") from None


def _fold(text: str) -> str:
    """Lower case without Vietnamese diacritics, for matching headers and yes/no words."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_CONSENT_YES = {"yes", "y", "co", "x", "v", "1", "true", "dong y", "\u2713", "\u2714"}
_CONSENT_NO = {"", "no", "n", "khong", "0", "false", "khong dong y", "-"}


def parse_consent(text: str) -> bool:
    word = " ".join(_fold(text).split())
    if word in _CONSENT_YES:
        return True
    if word in _CONSENT_NO:
        return False
    raise _Bad("bad_consent")


def clean_text(text: str) -> str:
    """Unicode NFC, single spaces: the same name typed on a Mac and on Windows compares equal."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _class_key(name: str) -> str:
    """A sheet class's id: its name in upper case (``6a1`` and ``6A1`` are one class)."""
    return name.upper()


def _grade_of(name: str) -> str | None:
    match = re.match(r"([0-9]{1,2})(?![0-9])", name)
    return match.group(1) if match and 1 <= int(match.group(1)) <= 12 else None


# --- what a file says --------------------------------------------------------------------------

@dataclass
class ClassRecord:
    class_id: str
    name: str
    grade: str | None
    file: str
    line: int


@dataclass
class CardRecord:
    number: str
    file: str
    line: int


@dataclass
class GuardianRecord:
    phone: str  # 84xxxxxxxxx
    name: str
    relation: str | None  # None: no relation column (keep what is stored); "": none
    consent: bool | None  # None: the file has no consent column (keep what is stored)
    file: str
    line: int


@dataclass
class StudentRecord:
    student_id: str
    full_name: str
    class_id: str | None
    file: str
    line: int
    active: bool = True
    keep_class: bool = False  # the file says nothing about the class: keep the stored one
    clear_class: str | None = None  # a deleted enrollment: clear the class if it is this one
    cards: list[CardRecord] | None = None  # None: the file says nothing about cards
    guardians: list[GuardianRecord] | None = None  # None: nothing about guardians
    modified_ms: int | None = None  # OneRoster dateLastModified


@dataclass
class Roster:
    """A roster as read from files, before it meets the database."""

    format: Literal["oneroster", "sheet"]
    source: str  # the file or folder name: recorded as the source of rows and consents
    classes: dict[str, ClassRecord] = field(default_factory=dict)
    students: dict[str, StudentRecord] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    ignored_users: int = 0  # OneRoster users that are not students

    def error(self, file: str, line: int, bad: _Bad, effect: Effect = "row") -> None:
        self.errors.append(RowError(file, line, bad.code, bad.params, effect))


# --- CSV ---------------------------------------------------------------------------------------

Cell = object  # str from CSV; str, int, float, bool, datetime, ... or None from XLSX


def _read_text(path: Path, display: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RosterFileError(display, "unreadable", detail=exc.strerror or str(exc)) from None
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n"):
        raise RosterFileError(display, "empty_file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RosterFileError(display, "not_utf8", at=1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RosterFileError(display, "not_utf8", at=data[:exc.start].count(b"\n") + 1) from None


def _csv_rows(path: Path, display: str, *, sniff: bool) -> list[tuple[int, list[Cell]]]:
    """The non-blank records of a CSV file with the line each starts on.

    ``sniff``: the delimiter is whichever of ``,`` ``;`` and tab the first ten lines have most of
    (Excel in a Vietnamese locale writes ``;``); otherwise ``,`` as OneRoster requires.
    """
    text = _read_text(path, display)
    delimiter = ","
    if sniff:
        head = "\n".join(text.split("\n", 10)[:10])
        delimiter = max((",", ";", "\t"), key=head.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[Cell]]] = []
    previous = 0
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if any(cell.strip() for cell in record):
                rows.append((start, list(record)))
    except csv.Error as exc:
        raise RosterFileError(display, "bad_csv", line=reader.line_num, detail=str(exc)) from None
    return rows


class _Table:
    """A CSV file with a header row of exact OneRoster column names."""

    def __init__(self, path: Path, required: Sequence[str]) -> None:
        self.name = path.name
        rows = _csv_rows(path, self.name, sniff=False)
        if not rows:
            raise RosterFileError(self.name, "empty_file")
        header_line, header = rows[0]
        names = [str(h).strip() for h in header]
        for name in names:
            if name and names.count(name) > 1:
                raise RosterFileError(self.name, "duplicate_column", line=header_line,
                                      column=name)
        missing = [c for c in required if c not in names]
        if missing:
            raise RosterFileError(self.name, "missing_columns", line=header_line,
                                  columns=", ".join(missing))
        self.columns = {name: i for i, name in enumerate(names) if name}
        self.rows = rows[1:]

    def records(self) -> Iterable[tuple[int, dict[str, str]]]:
        for line, cells in self.rows:
            yield line, {name: str(cells[i]).strip() if i < len(cells) else ""
                         for name, i in self.columns.items()}


# --- OneRoster 1.1 -----------------------------------------------------------------------------

#: The files of a OneRoster 1.1 CSV set (``file.<name>`` in the manifest).
ONEROSTER_FILES = ("academicSessions", "categories", "classes", "classResources", "courses",
                   "courseResources", "demographics", "enrollments", "lineItems", "orgs",
                   "resources", "results", "users")
_REQUIRED_FILES = ("users", "classes", "enrollments")
_USER_IDS = re.compile(r"\s*\{([^{}:]*):([^{}]*)\}\s*")


def _status(value: str) -> bool:
    """OneRoster ``status``: True if the record is active."""
    status = value.strip().lower()
    if status in ("", "active"):
        return True
    if status in ("tobedeleted", "inactive"):
        return False
    raise _Bad("bad_status", value=value)


def _flag(column: str, value: str, default: bool) -> bool:
    word = value.strip().lower()
    if not word:
        return default
    if word in ("true", "false"):
        return word == "true"
    raise _Bad("bad_flag", column=column, value=value)


def _modified_ms(value: str) -> int | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Bad("bad_date", column="dateLastModified", value=value) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _date(column: str, value: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise _Bad("bad_date", column=column, value=value) from None


def parse_user_ids(text: str) -> list[tuple[str, str]]:
    """OneRoster ``userIds``: ``{type:id},{type:id}`` as (type, id) pairs (ids may hold commas)."""
    out: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _USER_IDS.match(text, pos)
        if not match or not match.group(1).strip() or not match.group(2).strip():
            raise _Bad("bad_user_ids")
        out.append((match.group(1).strip(), match.group(2).strip()))
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise _Bad("bad_user_ids")
            pos += 1
            if pos == len(text):
                raise _Bad("bad_user_ids")
    return out


def _manifest(folder: Path) -> dict[str, str]:
    path = folder / "manifest.csv"
    if not path.is_file():
        raise RosterFileError("manifest.csv", "missing_manifest")
    table = _Table(path, ("propertyName", "value"))
    values: dict[str, str] = {}
    for line, record in table.records():
        name = record["propertyName"]
        if name in values:
            raise RosterFileError(table.name, "bad_manifest", line=line,
                                  detail=f"{name} is repeated")
        values[name] = record["value"]
    version = values.get("oneroster.version", "")
    if version != "1.1":
        raise RosterFileError(table.name, "unsupported_version", version=version)
    for name in ONEROSTER_FILES:
        mode = values.get(f"file.{name}", "absent").strip().lower()
        if mode not in ("absent", "bulk", "delta"):
            raise RosterFileError(table.name, "bad_manifest",
                                  detail=f"file.{name} is {mode!r}, not absent, bulk or delta")
        present = (folder / f"{name}.csv").is_file()
        if mode == "absent" and present:
            raise RosterFileError(f"{name}.csv", "undeclared_file", name=f"{name}.csv")
        if mode != "absent" and not present:
            raise RosterFileError(table.name, "declared_file_missing", name=f"{name}.csv")
        if mode == "absent" and name in _REQUIRED_FILES:
            raise RosterFileError(table.name, "required_file", name=f"file.{name}")
    return values


@dataclass
class _Enrollment:
    class_id: str
    homeroom: bool
    primary: bool
    line: int


def read_oneroster(folder: Path, *, known_classes: Collection[str] = (),
                   today: dt.date | None = None) -> Roster:
    """Read a OneRoster 1.1 CSV set: manifest, users, classes, enrollments (orgs if present).

    ``known_classes``: class ids already in the database (an enrollment may name one that a delta
    ``classes.csv`` leaves out). ``today``: enrollments outside their begin/end dates are ignored.
    """
    if not folder.is_dir():
        raise RosterFileError(folder.name or str(folder), "not_a_folder")
    _manifest(folder)
    roster = Roster("oneroster", folder.resolve().name)

    schools: set[str] | None = None
    if (folder / "orgs.csv").is_file():
        schools = set()
        for _line, record in _Table(folder / "orgs.csv", ("sourcedId",)).records():
            schools.add(record["sourcedId"])

    # classes.csv: sourcedId is the class id; a deleted class takes no enrollments.
    table = _Table(folder / "classes.csv", ("sourcedId", "title"))
    homeroom: dict[str, bool] = {}
    deleted_classes: set[str] = set()
    for line, record in table.records():
        try:
            class_id = record["sourcedId"]
            if not class_id:
                raise _Bad("missing_sourced_id")
            if class_id in homeroom or class_id in deleted_classes:
                first = roster.classes[class_id].line if class_id in roster.classes else "?"
                raise _Bad("duplicate_class", **{"class": class_id, "first": first})
            active = _status(record.get("status", ""))
            _modified_ms(record.get("dateLastModified", ""))
            title = clean_text(record["title"])
            if not title:
                raise _Bad("missing_title")
            school = record.get("schoolSourcedId", "")
            if schools is not None and school not in schools:
                raise _Bad("unknown_school", school=school)
        except _Bad as bad:
            roster.error(table.name, line, bad)
            continue
        if not active:
            deleted_classes.add(class_id)
            continue
        grades = [g.strip() for g in record.get("grades", "").split(",") if g.strip()]
        roster.classes[class_id] = ClassRecord(class_id, title, grades[0] if grades else None,
                                               table.name, line)
        homeroom[class_id] = record.get("classType", "").strip().lower() == "homeroom"

    # users.csv: students only; the Ministry ID in identifier, cards as {RFID:...} in userIds.
    table = _Table(folder / "users.csv",
                   ("sourcedId", "role", "identifier", "givenName", "familyName", "userIds"))
    users: dict[str, int] = {}  # sourcedId -> line, for every user row seen
    student_of: dict[str, str] = {}  # sourcedId -> student ID, for students read
    for line, record in table.records():
        try:
            user = record["sourcedId"]
            if not user:
                raise _Bad("missing_sourced_id")
            if user in users:
                raise _Bad("duplicate_user", user=user, first=users[user])
            users[user] = line
            if record["role"].strip().lower() != "student":
                roster.ignored_users += 1
                continue
            active = _status(record.get("status", "")) and _flag(
                "enabledUser", record.get("enabledUser", ""), True)
            modified = _modified_ms(record.get("dateLastModified", ""))
            student_id = parse_student_id(record["identifier"])
            if student_id in roster.students:
                raise _Bad("duplicate_student", student=student_id,
                           first=roster.students[student_id].line)
            name = clean_text(" ".join((record["familyName"], record.get("middleName", ""),
                                        record["givenName"])))
            if not name:
                raise _Bad("missing_name")
            numbers = [CardRecord(parse_card_number(value), table.name, line)
                       for kind, value in parse_user_ids(record["userIds"])
                       if kind.upper() == "RFID"]
        except _Bad as bad:
            roster.error(table.name, line, bad)
            continue
        student_of[user] = student_id
        roster.students[student_id] = StudentRecord(
            student_id, name, None, table.name, line, active=active, keep_class=True,
            cards=numbers, modified_ms=modified)

    # enrollments.csv: the student's class is its homeroom class (rule in _choose_class).
    table = _Table(folder / "enrollments.csv",
                   ("sourcedId", "classSourcedId", "userSourcedId", "role"))
    enrolled: dict[str, list[_Enrollment]] = {}
    for line, record in table.records():
        try:
            if record["role"].strip().lower() != "student":
                continue
            active = _status(record.get("status", ""))
            _modified_ms(record.get("dateLastModified", ""))
            begin = _date("beginDate", record.get("beginDate", ""))
            end = _date("endDate", record.get("endDate", ""))
            primary = _flag("primary", record.get("primary", ""), False)
            user, class_id = record["userSourcedId"], record["classSourcedId"]
            if user not in users:
                raise _Bad("unknown_user", user=user)
            if class_id not in roster.classes and class_id not in deleted_classes and (
                    class_id not in known_classes):
                raise _Bad("unknown_class", **{"class": class_id})
        except _Bad as bad:
            roster.error(table.name, line, bad)
            continue
        enrolled_id = student_of.get(user)
        if enrolled_id is None:  # not a student, or its row was rejected (already reported)
            continue
        if not active:
            roster.students[enrolled_id].clear_class = class_id
            continue
        current = today is None or ((begin is None or begin <= today)
                                    and (end is None or today <= end))
        if class_id in deleted_classes or not current:
            continue
        enrolled.setdefault(enrolled_id, []).append(
            _Enrollment(class_id, homeroom.get(class_id, False), primary, line))

    for student_id, enrollments in enrolled.items():
        student = roster.students[student_id]
        try:
            student.class_id = _choose_class(enrollments)
        except _Bad as bad:
            roster.error(student.file, student.line, bad)
            del roster.students[student_id]
            continue
        student.keep_class = False
    return roster


def _choose_class(enrollments: list[_Enrollment]) -> str:
    """The homeroom class: among the current student enrollments, the homeroom classes if there
    are any (else all), narrowed to ``primary=true`` ones if that leaves exactly one class."""
    pool = [e for e in enrollments if e.homeroom] or enrollments
    classes = sorted({e.class_id for e in pool})
    if len(classes) > 1:
        primary = sorted({e.class_id for e in pool if e.primary})
        if len(primary) == 1:
            return primary[0]
        raise _Bad("several_classes", classes=", ".join(classes))
    return classes[0]


# --- the secretary's sheet ---------------------------------------------------------------------

@dataclass(frozen=True)
class SheetColumn:
    field: str
    vi: str  # the name shown in errors and docs
    en: str
    aliases: tuple[str, ...]  # header texts accepted, lower case without diacritics
    required: bool = False


#: The sheet's columns; a header matches when, folded (lower case, no diacritics, text in
#: brackets dropped, punctuation as spaces), it equals one of the aliases.
SHEET_COLUMNS = (
    SheetColumn("student_id", "Mã định danh", "Student ID",
                ("ma dinh danh", "ma dinh danh hoc sinh", "ma dinh danh hs", "ma hoc sinh",
                 "ma hs", "ma so hoc sinh", "student id", "ministry id", "ministry student id"),
                required=True),
    SheetColumn("full_name", "Họ và tên", "Full name",
                ("ho va ten", "ho ten", "ho va ten hoc sinh", "ho ten hoc sinh", "ten hoc sinh",
                 "full name", "name", "student name"), required=True),
    SheetColumn("class", "Lớp", "Class",
                ("lop", "lop hoc", "ten lop", "class", "class name", "homeroom"), required=True),
    SheetColumn("card", "Số thẻ", "Card number",
                ("so the", "ma the", "so the in", "the", "the rfid", "card", "card number",
                 "card no", "rfid")),
    SheetColumn("guardian_name", "Phụ huynh", "Guardian",
                ("phu huynh", "ho ten phu huynh", "ho va ten phu huynh", "ten phu huynh",
                 "nguoi giam ho", "guardian", "guardian name", "parent", "parent name")),
    SheetColumn("guardian_phone", "Số điện thoại", "Guardian phone",
                ("so dien thoai", "dien thoai", "sdt", "so dt", "so dien thoai phu huynh",
                 "sdt phu huynh", "dien thoai phu huynh", "phone", "phone number",
                 "guardian phone", "parent phone", "mobile")),
    SheetColumn("relation", "Quan hệ", "Relation",
                ("quan he", "quan he voi hoc sinh", "relation", "relationship")),
    SheetColumn("consent", "Đồng ý", "Consent",
                ("dong y", "dong y nhan thong bao", "phu huynh dong y", "consent",
                 "guardian consent", "parent consent")),
)
_COLUMN_BY_ALIAS = {alias: column for column in SHEET_COLUMNS for alias in column.aliases}
_COLUMN = {column.field: column for column in SHEET_COLUMNS}
_GUARDIAN_FIELDS = ("guardian_name", "relation", "consent")
_HEADER_SEARCH_ROWS = 20  # a title or the school's name may sit above the header
_CARD_SPLIT = re.compile(r"[;/\n]")


def _fold_header(text: str) -> str:
    text = re.sub(r"\(.*?\)|\[.*?\]", " ", _fold(text))
    return " ".join(re.sub(r"[^0-9a-z&]+", " ", text).replace("&", " ").split())


def _label(column: SheetColumn) -> str:
    return f"{column.vi} ({column.en})"


def _header_fields(cells: Sequence[Cell]) -> dict[str, int]:
    """field -> column index for the cells of a candidate header row (first match wins)."""
    found: dict[str, int] = {}
    for i, cell in enumerate(cells):
        if isinstance(cell, str):
            column = _COLUMN_BY_ALIAS.get(_fold_header(cell))
            if column is not None:
                found.setdefault(column.field, i)
    return found


def _find_header(rows: Sequence[tuple[int, list[Cell]]], display: str
                 ) -> tuple[int, dict[str, int]]:
    """(index in rows, field -> column) of the header row, or a ``missing_columns`` error."""
    if not rows:
        raise RosterFileError(display, "empty_file")
    required = [c.field for c in SHEET_COLUMNS if c.required]
    best: tuple[int, dict[str, int]] | None = None
    for index, (line, cells) in enumerate(rows[:_HEADER_SEARCH_ROWS]):
        fields = _header_fields(cells)
        if all(f in fields for f in required):
            _check_header(display, line, cells, fields)
            return index, fields
        if fields and (best is None or len(fields) > len(best[1])):
            best = (index, fields)
    index, fields = best or (0, {})
    missing = [_label(_COLUMN[f]) for f in required if f not in fields]
    raise RosterFileError(display, "missing_columns", line=rows[index][0],
                          columns=", ".join(missing))


def _check_header(display: str, line: int, cells: Sequence[Cell], fields: dict[str, int]
                  ) -> None:
    seen: set[str] = set()
    for cell in cells:
        column = _COLUMN_BY_ALIAS.get(_fold_header(cell)) if isinstance(cell, str) else None
        if column is not None:
            if column.field in seen:
                raise RosterFileError(display, "duplicate_column", line=line,
                                      column=_label(column))
            seen.add(column.field)
    if "guardian_phone" not in fields and any(f in fields for f in _GUARDIAN_FIELDS):
        raise RosterFileError(display, "missing_columns", line=line,
                              columns=_label(_COLUMN["guardian_phone"]))


_NUMBER_FIELDS = ("student_id", "card", "guardian_phone", "class", "consent")


def _bad_cell(field_name: str, kind_vi: str, kind_en: str) -> _Bad:
    column = _COLUMN[field_name]
    return _Bad("bad_cell_type", column_vi=column.vi, column_en=column.en, kind_vi=kind_vi,
                kind_en=kind_en)


def _cell_text(cells: Sequence[Cell], fields: dict[str, int], field_name: str) -> str:
    """A sheet cell as text; a whole number only where digits can stand for the text."""
    index = fields.get(field_name)
    cell = cells[index] if index is not None and index < len(cells) else None
    if cell is None:
        return ""
    if isinstance(cell, str):
        return cell.strip()
    if isinstance(cell, bool):
        if field_name == "consent":
            return "yes" if cell else "no"
        raise _bad_cell(field_name, "giá trị TRUE/FALSE", "a TRUE/FALSE value")
    if isinstance(cell, int | float):
        if field_name not in _NUMBER_FIELDS:
            raise _bad_cell(field_name, "một số", "a number")
        if isinstance(cell, float) and not cell.is_integer():
            raise _bad_cell(field_name, "số thập phân (hãy định dạng cột là Văn bản)",
                            "a decimal number (format the column as Text)")
        return str(int(cell))
    if isinstance(cell, dt.datetime | dt.date | dt.time | dt.timedelta):
        raise _bad_cell(field_name, "ngày giờ", "a date")
    raise _bad_cell(field_name, type(cell).__name__, type(cell).__name__)


def _xlsx_rows(path: Path, display: str) -> tuple[str, list[tuple[int, list[Cell]]]]:
    """(display name, rows) of the first worksheet that has a header row."""
    import openpyxl  # imported here: a gateway that never imports sheets never loads it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=False, data_only=True)
    except (OSError, zipfile.BadZipFile, InvalidFileException, KeyError, ValueError) as exc:
        raise RosterFileError(display, "bad_xlsx", detail=str(exc) or type(exc).__name__
                              ) from None
    sheets: list[tuple[str, list[tuple[int, list[Cell]]]]] = []
    for sheet in book.worksheets:
        rows: list[tuple[int, list[Cell]]] = []
        for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            cells: list[Cell] = list(values)
            if any(c is not None and not (isinstance(c, str) and not c.strip()) for c in cells):
                rows.append((number, cells))
        name = display if len(book.worksheets) == 1 else f"{display}[{sheet.title}]"
        sheets.append((name, rows))
    book.close()
    for name, rows in sheets:
        if any(all(f in _header_fields(cells) for f in ("student_id", "full_name", "class"))
               for _line, cells in rows[:_HEADER_SEARCH_ROWS]):
            return name, rows
    return sheets[0] if sheets else (display, [])


def read_sheet(path: Path) -> Roster:
    """Read the secretary's sheet (``.csv`` UTF-8 with or without BOM, or ``.xlsx``)."""
    display = path.name
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        rows = _csv_rows(path, display, sniff=True)
    elif suffix in (".xlsx", ".xlsm"):
        if not path.is_file():
            raise RosterFileError(display, "unreadable", detail="no such file")
        display, rows = _xlsx_rows(path, display)
    elif suffix == ".xls":
        raise RosterFileError(display, "old_excel")
    else:
        raise RosterFileError(display, "unsupported_format", suffix=suffix or "(none)")
    header, fields = _find_header(rows, display)
    roster = Roster("sheet", path.name)
    has_cards = "card" in fields
    has_guardians = "guardian_phone" in fields

    for line, cells in rows[header + 1:]:
        try:
            row = _sheet_row(cells, fields, display, line)
        except _Bad as bad:
            roster.error(display, line, bad)
            continue
        student_id, name, class_name = row.student_id, row.name, row.class_name

        class_id = _class_key(class_name)
        student = roster.students.get(student_id)
        if student is not None:  # the same student on several rows: one per guardian
            if student.full_name != name or student.class_id != class_id:
                roster.error(display, line, _Bad("conflicting_rows", student=student_id,
                                                 first=student.line))
                continue
        else:
            student = StudentRecord(student_id, name, class_id, display, line,
                                    cards=[] if has_cards else None,
                                    guardians=[] if has_guardians else None)
            roster.students[student_id] = student
        if row.guardian_problem is not None:
            roster.error(display, line, row.guardian_problem, "guardian")
        if class_id not in roster.classes:
            roster.classes[class_id] = ClassRecord(class_id, class_name, _grade_of(class_name),
                                                   display, line)
        if student.cards is not None:
            known = {c.number for c in student.cards}
            student.cards.extend(c for c in row.cards if c.number not in known)
        if row.guardian is not None and student.guardians is not None:
            _add_guardian(roster, student.guardians, row.guardian)
    return roster


@dataclass
class _SheetRow:
    student_id: str
    name: str
    class_name: str
    cards: list[CardRecord]
    guardian: GuardianRecord | None
    guardian_problem: _Bad | None  # the guardian is not stored, the rest of the row is


def _sheet_row(cells: Sequence[Cell], fields: dict[str, int], display: str, line: int
               ) -> _SheetRow:
    """One data row of the sheet, or ``_Bad`` if the row cannot be used."""
    def text(name: str) -> str:
        return _cell_text(cells, fields, name)

    student_id = parse_student_id(text("student_id"))
    name = clean_text(text("full_name"))
    if not name:
        raise _Bad("missing_name")
    class_name = clean_text(text("class"))
    if not class_name:
        raise _Bad("missing_class")
    numbers = [CardRecord(parse_card_number(part), display, line)
               for part in _CARD_SPLIT.split(text("card")) if part.strip()]
    row = _SheetRow(student_id, name, class_name, numbers, None, None)
    if "guardian_phone" in fields:
        phone = text("guardian_phone")
        guardian_name = clean_text(text("guardian_name"))
        relation = clean_text(text("relation")) if "relation" in fields else None
        consent = parse_consent(text("consent")) if "consent" in fields else None
        if phone:
            row.guardian = GuardianRecord(_phone(phone), guardian_name, relation, consent,
                                          display, line)
        elif guardian_name or relation or consent:
            row.guardian_problem = _Bad("missing_phone")
    return row


def _add_guardian(roster: Roster, guardians: list[GuardianRecord], new: GuardianRecord) -> None:
    for old in guardians:
        if old.phone == new.phone:
            if (old.name, old.relation, old.consent) != (new.name, new.relation, new.consent):
                roster.error(new.file, new.line, _Bad("duplicate_guardian", first=old.line),
                             "guardian")
            return
    guardians.append(new)


# --- applying a roster -------------------------------------------------------------------------

@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "removed": self.removed}


@dataclass
class ImportResult:
    """What an import did. ``students.updated`` includes deactivations; ``stale`` counts
    OneRoster students skipped because the database holds a newer ``dateLastModified``."""

    format: str
    source: str
    import_id: int | None  # the roster_imports row; None for a dry run
    classes: Counts = field(default_factory=Counts)
    students: Counts = field(default_factory=Counts)
    cards: Counts = field(default_factory=Counts)
    guardians: Counts = field(default_factory=Counts)
    stale: int = 0
    ignored_users: int = 0
    errors: list[RowError] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(c.added or c.updated or c.removed
                   for c in (self.classes, self.students, self.cards, self.guardians))

    def counts(self) -> dict[str, dict[str, int]]:
        return {"classes": self.classes.as_dict(), "students": self.students.as_dict(),
                "cards": self.cards.as_dict(), "guardians": self.guardians.as_dict(),
                "other": {"stale": self.stale, "ignored_users": self.ignored_users}}


def apply_roster(conn: sqlite3.Connection, roster: Roster, *, clock: Clock = system_clock,
                 dry_run: bool = False) -> ImportResult:
    """Write ``roster`` in one transaction and record the run; ``dry_run`` rolls it back."""
    started = clock()
    result = ImportResult(roster.format, roster.source, None, errors=list(roster.errors),
                          ignored_users=roster.ignored_users, dry_run=dry_run)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _Apply(conn, roster, result, started).run()
        result.errors.sort(key=lambda e: (e.file, e.line))
        cursor = conn.execute(
            "INSERT INTO roster_imports (started_ms, finished_ms, format, source, counts, "
            "error_count) VALUES (?, ?, ?, ?, ?, ?)",
            (started, clock(), roster.format, roster.source, json.dumps(result.counts()),
             len(result.errors)))
        import_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO roster_import_errors (import_id, file, line, code, effect) "
            "VALUES (?, ?, ?, ?, ?)",
            [(import_id, e.file, e.line, e.code, e.effect) for e in result.errors])
        if dry_run:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
            result.import_id = import_id
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.info("roster import", extra={
        "roster_format": roster.format, "source": roster.source, "dry_run": dry_run,
        "counts": result.counts(), "errors": len(result.errors)})
    return result


class _Apply:
    """One import inside the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection, roster: Roster, result: ImportResult,
                 now: int) -> None:
        self.conn, self.roster, self.result, self.now = conn, roster, result, now
        self.source = roster.source

    def run(self) -> None:
        self._classes()
        students = [s for s in self._fresh_students() if self._student(s)]
        self._cards(students)
        for student in students:
            if student.guardians is not None:
                self._guardians(student.student_id, student.guardians)

    def _classes(self) -> None:
        counts = self.result.classes
        for record in self.roster.classes.values():
            row = self.conn.execute("SELECT name, grade FROM classes WHERE class_id = ?",
                                    (record.class_id,)).fetchone()
            if row is None:
                self.conn.execute("INSERT INTO classes (class_id, name, grade, source) "
                                  "VALUES (?, ?, ?, ?)",
                                  (record.class_id, record.name, record.grade, self.source))
                counts.added += 1
            elif (row["name"], row["grade"]) != (record.name, record.grade):
                self.conn.execute("UPDATE classes SET name = ?, grade = ?, source = ? "
                                  "WHERE class_id = ?",
                                  (record.name, record.grade, self.source, record.class_id))
                counts.updated += 1
            else:
                counts.unchanged += 1

    def _fresh_students(self) -> list[StudentRecord]:
        """The roster's students, less those the database knows in a newer version."""
        fresh = []
        for student in self.roster.students.values():
            if student.modified_ms is not None:
                row = self.conn.execute("SELECT modified_ms FROM roster_versions "
                                        "WHERE student_id = ?", (student.student_id,)).fetchone()
                if row is not None and row[0] > student.modified_ms:
                    self.result.stale += 1
                    continue
            fresh.append(student)
        return fresh

    def _student(self, student: StudentRecord) -> bool:
        """Insert or update one student; False if it is not written (a deleted, unknown one)."""
        counts = self.result.students
        row = self.conn.execute("SELECT full_name, class_id, active FROM students "
                                "WHERE student_id = ?", (student.student_id,)).fetchone()
        if row is None and not student.active:
            return False  # never store a student the file says has left
        class_id = student.class_id
        if student.keep_class:
            class_id = row["class_id"] if row is not None else None
            if class_id is not None and class_id == student.clear_class:
                class_id = None
        values = (student.full_name, class_id, int(student.active))
        if row is None:
            self.conn.execute(
                "INSERT INTO students (student_id, full_name, class_id, active, source, "
                "updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (student.student_id, *values, self.source, self.now))
            counts.added += 1
        elif (row["full_name"], row["class_id"], row["active"]) != values:
            self.conn.execute(
                "UPDATE students SET full_name = ?, class_id = ?, active = ?, source = ?, "
                "updated_ms = ? WHERE student_id = ?",
                (*values, self.source, self.now, student.student_id))
            counts.updated += 1
        else:
            counts.unchanged += 1
        if student.modified_ms is not None:
            self.conn.execute(
                "INSERT INTO roster_versions (student_id, modified_ms, source) VALUES (?, ?, ?) "
                "ON CONFLICT (student_id) DO UPDATE SET modified_ms = excluded.modified_ms, "
                "source = excluded.source WHERE excluded.modified_ms > modified_ms",
                (student.student_id, student.modified_ms, self.source))
        return True

    def _cards(self, students: list[StudentRecord]) -> None:
        """Card numbers: conflicts first (nothing assigned), then releases, then assignments."""
        counts = self.result.cards
        # Students whose cards this import decides: listed with a card field, or deactivated.
        decided = {s.student_id: s for s in students if s.cards is not None or not s.active}
        claims: dict[str, list[tuple[StudentRecord, CardRecord]]] = {}
        for student in decided.values():
            if student.active and student.cards is not None:
                for card in student.cards:
                    claims.setdefault(card.number, []).append((student, card))

        withheld: dict[str, set[str]] = {}  # student -> numbers in a conflict (kept if owned)
        assign: list[tuple[str, str]] = []  # (number, student)
        for number, claimants in claims.items():
            first_student, first_card = claimants[0]
            if len(claimants) > 1:
                for student, record in claimants[1:]:
                    self.result.errors.append(RowError(
                        record.file, record.line, "card_conflict_file",
                        (("card", number), ("student", student.student_id),
                         ("other", first_student.student_id),
                         ("other_line", str(first_card.line))), "card"))
                for student, _record in claimants:
                    withheld.setdefault(student.student_id, set()).add(number)
                continue
            owner = self._owner(number)
            if owner is not None and owner != first_student.student_id and not self._released(
                    decided.get(owner), number):
                self.result.errors.append(RowError(
                    first_card.file, first_card.line, "card_taken",
                    (("card", number), ("other", owner),
                     ("student", first_student.student_id)), "card"))
                continue
            assign.append((number, first_student.student_id))

        wanted = {(n, s) for n, s in assign}
        for student_id in decided:
            for row in self.conn.execute("SELECT number FROM card_numbers WHERE student_id = ?",
                                         (student_id,)).fetchall():
                number = row[0]
                if (number, student_id) in wanted or number in withheld.get(student_id, ()):
                    continue
                self.conn.execute("DELETE FROM card_numbers WHERE number = ?", (number,))
                counts.removed += 1
        for number, student_id in assign:
            owner = self._owner(number)
            if owner == student_id:
                counts.unchanged += 1
                continue
            self.conn.execute("INSERT INTO card_numbers (number, student_id, source, assigned_ms)"
                              " VALUES (?, ?, ?, ?)", (number, student_id, self.source, self.now))
            counts.added += 1

    @staticmethod
    def _released(owner: StudentRecord | None, number: str) -> bool:
        """Whether this import takes ``number`` from its current owner (listed without it, or
        deactivated): a card moving between two students of the same file."""
        if owner is None:
            return False
        return not owner.active or number not in {c.number for c in owner.cards or ()}

    def _owner(self, number: str) -> str | None:
        row = self.conn.execute("SELECT student_id FROM card_numbers WHERE number = ?",
                                (number,)).fetchone()
        return str(row[0]) if row is not None else None

    def _guardians(self, student_id: str, guardians: list[GuardianRecord]) -> None:
        counts = self.result.guardians
        stored = {row["phone"]: row for row in self.conn.execute(
            "SELECT guardian_id, name, phone, relation, consent FROM guardians "
            "WHERE student_id = ?", (student_id,)).fetchall()}
        for guardian in guardians:
            row = stored.pop(guardian.phone, None)
            if row is None:
                self.conn.execute(
                    "INSERT INTO guardians (student_id, name, phone, relation, consent, "
                    "consent_ms, consent_source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (student_id, guardian.name, guardian.phone, guardian.relation or None,
                     int(bool(guardian.consent)),
                     None if guardian.consent is None else self.now,
                     None if guardian.consent is None else self.source))
                counts.added += 1
                continue
            relation = row["relation"] if guardian.relation is None else (
                guardian.relation or None)
            consent = bool(row["consent"]) if guardian.consent is None else guardian.consent
            if (row["name"], row["relation"]) != (guardian.name, relation):
                self.conn.execute("UPDATE guardians SET name = ?, relation = ? "
                                  "WHERE guardian_id = ?",
                                  (guardian.name, relation, row["guardian_id"]))
            if bool(row["consent"]) != consent:
                self.conn.execute("UPDATE guardians SET consent = ?, consent_ms = ?, "
                                  "consent_source = ? WHERE guardian_id = ?",
                                  (int(consent), self.now, self.source, row["guardian_id"]))
            if (row["name"], row["relation"], bool(row["consent"])) != (
                    guardian.name, relation, consent):
                counts.updated += 1
            else:
                counts.unchanged += 1
        for row in stored.values():
            self.conn.execute("DELETE FROM guardians WHERE guardian_id = ?",
                              (row["guardian_id"],))
            counts.removed += 1


# --- entry points ------------------------------------------------------------------------------

def _class_ids(conn: sqlite3.Connection) -> set[str]:
    return {str(row[0]) for row in conn.execute("SELECT class_id FROM classes")}


def import_oneroster(conn: sqlite3.Connection, folder: Path, *, clock: Clock = system_clock,
                     today: dt.date | None = None, dry_run: bool = False) -> ImportResult:
    """Read and apply a OneRoster 1.1 CSV folder (``RosterFileError`` if it is unusable)."""
    roster = read_oneroster(folder, known_classes=_class_ids(conn), today=today)
    return apply_roster(conn, roster, clock=clock, dry_run=dry_run)


def import_sheet(conn: sqlite3.Connection, path: Path, *, clock: Clock = system_clock,
                 dry_run: bool = False) -> ImportResult:
    """Read and apply the secretary's sheet (``RosterFileError`` if it is unusable)."""
    return apply_roster(conn, read_sheet(path), clock=clock, dry_run=dry_run)


# --- which student a card is -------------------------------------------------------------------

@dataclass(frozen=True)
class CardOwner:
    number: str  # the stored number that matched
    student_id: str
    class_id: str | None
    class_name: str | None
    active: bool
    full_name: str  # personal data: show only when asked


def _is_card_id(text: str) -> bool:
    name, sep, _ = text.partition(":")
    return bool(sep) and name.lower() in card_tech.TECH_NAMES[1:]


def card_owner(conn: sqlite3.Connection, text: str) -> CardOwner | None:
    """The student a printed number (or a canonical id ``em4100:…``) maps to, or None.

    ``ValueError`` if ``text`` is neither a plausible printed number nor a canonical id. A decimal
    is also looked up with and without leading zeros, as ``gateway.cards`` matches taps.
    """
    if _is_card_id(text):
        name, _, hexed = text.partition(":")
        canonical = f"{name.lower()}:{cards.normalize_number(hexed)}"
        try:
            numbers = cards.printed_numbers(canonical)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if cards.student_for_card(conn, canonical) is None:
            return None
    else:
        try:
            number = parse_card_number(text)
        except _Bad:
            raise ValueError(REASONS["bad_card_number"][1].replace("{card}", text)) from None
        numbers = [number]
        if number.isdecimal():
            numbers += [str(int(number)), number.zfill(10)]
    marks = ",".join("?" * len(numbers))
    row = conn.execute(
        "SELECT n.number, s.student_id, s.class_id, c.name AS class_name, s.active, s.full_name "
        "FROM card_numbers n JOIN students s ON s.student_id = n.student_id "
        f"LEFT JOIN classes c ON c.class_id = s.class_id WHERE n.number IN ({marks}) "
        "ORDER BY n.number", numbers).fetchone()
    if row is None:
        return None
    return CardOwner(row["number"], row["student_id"], row["class_id"], row["class_name"],
                     bool(row["active"]), row["full_name"])
