"""Roster import: OneRoster 1.1 CSV and the secretary's sheet (CSV/XLSX), against a real database.

Fixtures in tests/gateway/fixtures/roster/: ``oneroster/`` (a clean OneRoster 1.1 set),
``oneroster-errors/`` (one bad row of each kind), ``hoc-sinh.csv`` / ``hoc-sinh.xlsx`` (the same
sheet; the XLSX as Excel leaves it, see make_xlsx.py), ``students-en.csv`` (English headers,
semicolons) and ``hoc-sinh-loi.csv`` (one bad row of each kind).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway import cards, db, roster
from gateway.cli import main
from gateway.roster import RosterFileError, import_oneroster, import_sheet
from tests.log_text import logged_text

FIXTURES = Path(__file__).parent / "fixtures" / "roster"
ONEROSTER = FIXTURES / "oneroster"
TODAY = dt.date(2026, 10, 1)

AN, NGOC, PHUC, DUC, NHUNG, KHOA = (f"79010001{n:02d}" for n in range(1, 7))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_790_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(tmp_path / "gateway.db")
    yield connection
    connection.close()


def _oneroster(conn: sqlite3.Connection, folder: Path = ONEROSTER,
               clock: FakeClock | None = None) -> roster.ImportResult:
    return import_oneroster(conn, folder, today=TODAY, clock=clock or FakeClock())


def _students(conn: sqlite3.Connection) -> dict[str, tuple[str, str | None, int]]:
    return {r["student_id"]: (r["full_name"], r["class_id"], r["active"])
            for r in conn.execute("SELECT * FROM students")}


def _cards(conn: sqlite3.Connection) -> dict[str, str]:
    return {r["number"]: r["student_id"] for r in conn.execute("SELECT * FROM card_numbers")}


def _guardians(conn: sqlite3.Connection) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in conn.execute(
        "SELECT student_id, name, phone, relation, consent, consent_source FROM guardians")}


def _snapshot(conn: sqlite3.Connection) -> list[list[tuple[Any, ...]]]:
    tables = ("classes", "students", "card_numbers", "guardians", "roster_versions")
    return [sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in tables]


def _codes(result: roster.ImportResult) -> list[tuple[str, int, str, str]]:
    return [(e.file, e.line, e.code, e.effect) for e in result.errors]


def _copy(folder: Path, tmp_path: Path, name: str = "or") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def _write_sheet(path: Path, rows: list[list[Any]]) -> Path:
    if path.suffix == ".xlsx":
        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        for row in rows:
            sheet.append(row)
        book.save(path)
    else:
        path.write_text("\n".join(",".join(str(c) for c in row) for row in rows) + "\n",
                        encoding="utf-8")
    return path


HEADER = ["Mã định danh", "Họ và tên", "Lớp", "Số thẻ", "Phụ huynh", "Số điện thoại", "Đồng ý"]


# --- OneRoster -----------------------------------------------------------------------------------

def test_oneroster_import(conn: sqlite3.Connection) -> None:
    result = _oneroster(conn)
    assert result.errors == []
    assert (result.classes.added, result.students.added, result.cards.added) == (4, 5, 5)
    assert result.ignored_users == 2  # a teacher and a parent
    assert _students(conn) == {
        AN: ("Nguyễn Văn An", "cls-6a1", 1),  # homeroom 6A1 chosen over scheduled "Toán 6A1"
        NGOC: ("Trần Thị Bích Ngọc", "cls-6a1", 1),
        PHUC: ("Lê Hoàng Phúc", "cls-6a2", 1),
        DUC: ("Phạm Minh Đức", "cls-7a1", 1),
        NHUNG: ("Võ Thị Hồng Nhung", "cls-7a1", 1),
    }  # KHOA is tobedeleted and was never stored
    assert _cards(conn) == {"04A1B2C3": AN, "0012345678": NGOC, "188,24911": PHUC,
                            "1026300682": DUC, "04112233445566": NHUNG}
    row = conn.execute("SELECT name, grade, source FROM classes WHERE class_id = 'cls-6a1'"
                       ).fetchone()
    assert tuple(row) == ("6A1", "06", "oneroster")
    assert _guardians(conn) == set()  # OneRoster carries no consent: guardians come from sheets
    audit = conn.execute("SELECT format, source, error_count FROM roster_imports").fetchall()
    assert [tuple(r) for r in audit] == [("oneroster", "oneroster", 0)]


def test_oneroster_reimport_is_idempotent(conn: sqlite3.Connection) -> None:
    _oneroster(conn)
    before = _snapshot(conn)
    again = _oneroster(conn)
    assert not again.changed and again.errors == []
    assert (again.students.unchanged, again.cards.unchanged, again.classes.unchanged) == (5, 5, 4)
    assert _snapshot(conn) == before


def test_oneroster_changes_update_and_tobedeleted_deactivates(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    _oneroster(conn)
    folder = _copy(ONEROSTER, tmp_path)
    users = (folder / "users.csv").read_text(encoding="utf-8")
    users = users.replace("Ngọc,Trần,Thị Bích", "Ngọc Anh,Trần,Thị Bích")
    users = users.replace("usr-hs-004,active,2026-08-10T08:00:00Z",
                          "usr-hs-004,tobedeleted,2026-08-20T08:00:00Z")
    (folder / "users.csv").write_text(users, encoding="utf-8")
    enrollments = (folder / "enrollments.csv").read_text(encoding="utf-8")
    (folder / "enrollments.csv").write_text(
        enrollments.replace("enr-004,active,2026-08-10T08:00:00Z,cls-6a2",
                            "enr-004,active,2026-08-10T08:00:00Z,cls-7a1"), encoding="utf-8")
    result = _oneroster(conn, folder)
    assert result.errors == []
    assert (result.students.updated, result.students.unchanged) == (3, 2)
    students = _students(conn)
    assert students[NGOC] == ("Trần Thị Bích Ngọc Anh", "cls-6a1", 1)
    assert students[PHUC] == ("Lê Hoàng Phúc", "cls-7a1", 1)
    assert students[DUC][2] == 0
    assert "1026300682" not in _cards(conn)  # a student who left releases the card
    assert result.cards.removed == 1


def test_oneroster_older_file_does_not_undo_a_newer_one(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    newer = _copy(ONEROSTER, tmp_path, "newer")
    users = (newer / "users.csv").read_text(encoding="utf-8")
    (newer / "users.csv").write_text(
        users.replace("2026-08-10T08:00:00Z,true,org-thcs-nguyen-du,student,hs7901000101",
                      "2026-09-01T08:00:00Z,true,org-thcs-nguyen-du,student,hs7901000101")
        .replace("An,Nguyễn,Văn", "An,Nguyễn,Thành"), encoding="utf-8")
    _oneroster(conn, newer)
    result = _oneroster(conn)  # the older export
    assert result.stale == 1
    assert _students(conn)[AN][0] == "Nguyễn Thành An"


def test_oneroster_bad_rows_are_reported_and_skipped(conn: sqlite3.Connection) -> None:
    result = _oneroster(conn, FIXTURES / "oneroster-errors")
    assert _codes(result) == [
        ("enrollments.csv", 5, "unknown_class", "row"),
        ("enrollments.csv", 6, "unknown_user", "row"),
        ("users.csv", 3, "missing_student_id", "row"),
        ("users.csv", 4, "student_id_lost_zero", "row"),  # 9 digits
        ("users.csv", 5, "bad_user_ids", "row"),
        ("users.csv", 7, "card_conflict_file", "card"),
        ("users.csv", 8, "bad_card_number", "row"),
        ("users.csv", 9, "bad_date", "row"),
    ]
    conflict = result.errors[5]
    assert NHUNG in conflict.message("en") and KHOA in conflict.message("en")
    assert NHUNG in conflict.message("vi") and KHOA in conflict.message("vi")
    assert "cls-9z9" in result.errors[0].message("en")
    # The rest imported: the good rows, and the two students of the conflict without the card.
    assert set(_students(conn)) == {AN, NHUNG, KHOA}
    assert _cards(conn) == {"04A1B2C3": AN}
    assert _students(conn)[AN][1] == "cls-6a1"  # the unknown second class did not matter
    stored = conn.execute("SELECT file, line, code FROM roster_import_errors").fetchall()
    assert len(stored) == 8


def test_oneroster_homeroom_rule(conn: sqlite3.Connection, tmp_path: Path) -> None:
    folder = _copy(ONEROSTER, tmp_path)
    extra = ("enr-101,active,,cls-6a2,org-thcs-nguyen-du,usr-hs-001,student,false,,\n"
             "enr-103,active,,cls-6a2,org-thcs-nguyen-du,usr-hs-002,student,true,,\n"
             "enr-104,active,,cls-6a1,org-thcs-nguyen-du,usr-hs-003,student,true,2027-09-05,\n")
    with (folder / "enrollments.csv").open("a", encoding="utf-8") as f:
        f.write(extra)
    result = _oneroster(conn, folder)
    students = _students(conn)
    assert students[AN][1] == "cls-6a1"  # two homerooms, one of them primary
    assert NGOC not in students  # two homerooms, both primary: cannot choose
    assert _codes(result) == [("users.csv", 3, "several_classes", "row")]
    assert "cls-6a1, cls-6a2" in result.errors[0].message("en")
    assert students[PHUC][1] == "cls-6a2"  # next year's enrollment is not current yet


def test_oneroster_deleted_enrollment_clears_the_class(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    _oneroster(conn)
    folder = _copy(ONEROSTER, tmp_path)
    lines = (folder / "enrollments.csv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("enr-003,active", "enr-003,tobedeleted")
    (folder / "enrollments.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _oneroster(conn, folder)
    assert _students(conn)[NGOC][1] is None


@pytest.mark.parametrize(
    ("change", "code", "file"),
    [
        (lambda f: (f / "manifest.csv").unlink(), "missing_manifest", "manifest.csv"),
        (lambda f: (f / "classes.csv").unlink(), "declared_file_missing", "manifest.csv"),
        (lambda f: (f / "courses.csv").write_text("sourcedId\n", encoding="utf-8"),
         "undeclared_file", "courses.csv"),
        (lambda f: _edit(f / "manifest.csv", "oneroster.version,1.1", "oneroster.version,1.2"),
         "unsupported_version", "manifest.csv"),
        (lambda f: _drop_enrollments(f), "required_file", "manifest.csv"),
        (lambda f: (f / "users.csv").write_bytes(b""), "empty_file", "users.csv"),
        (lambda f: _edit(f / "users.csv", ",identifier,", ",ident,"), "missing_columns",
         "users.csv"),
    ],
)
def test_oneroster_unusable_sets_import_nothing(
        conn: sqlite3.Connection, tmp_path: Path, change: Any, code: str, file: str) -> None:
    folder = _copy(ONEROSTER, tmp_path)
    change(folder)
    with pytest.raises(RosterFileError) as info:
        _oneroster(conn, folder)
    assert (info.value.error.code, info.value.error.file) == (code, file)
    assert _students(conn) == {}
    if code == "missing_columns":
        assert "identifier" in info.value.error.message("en")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _drop_enrollments(folder: Path) -> None:
    _edit(folder / "manifest.csv", "file.enrollments,bulk", "file.enrollments,absent")
    (folder / "enrollments.csv").unlink()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("{RFID:04A1B2C3}", [("RFID", "04A1B2C3")]),
        ("{SIS:1}, {RFID:188,24911}", [("SIS", "1"), ("RFID", "188,24911")]),
        ("{rfid:04:A1:B2:C3}", [("rfid", "04:A1:B2:C3")]),
    ],
)
def test_user_ids(text: str, expected: list[tuple[str, str]]) -> None:
    assert roster.parse_user_ids(text) == expected


@pytest.mark.parametrize("text", ["RFID:04A1B2C3", "{RFID:04A1B2C3", "{RFID}", "{:04A1}",
                                  "{RFID:}", "{RFID:1}{SIS:2}", "{RFID:1},", "{RFID:1};{X:2}"])
def test_malformed_user_ids(text: str) -> None:
    with pytest.raises(roster._Bad):
        roster.parse_user_ids(text)


# --- the secretary's sheet -----------------------------------------------------------------------

def test_sheet_csv_import(conn: sqlite3.Connection, clock: FakeClock) -> None:
    result = import_sheet(conn, FIXTURES / "hoc-sinh.csv", clock=clock)
    assert result.errors == []
    assert (result.classes.added, result.students.added, result.cards.added,
            result.guardians.added) == (3, 5, 5, 5)
    assert _students(conn) == {
        AN: ("Nguyễn Văn An", "6A1", 1), NGOC: ("Trần Thị Bích Ngọc", "6A1", 1),
        PHUC: ("Lê Hoàng Phúc", "6A2", 1), DUC: ("Phạm Minh Đức", "7A1", 1),
        NHUNG: ("Võ Thị Hồng Nhung", "7A1", 1)}
    assert tuple(conn.execute("SELECT name, grade FROM classes WHERE class_id = '7A1'"
                              ).fetchone()) == ("7A1", "7")
    assert _guardians(conn) == {
        (AN, "Nguyễn Văn Bình", "84912345678", "Bố", 1, "hoc-sinh.csv"),
        (NGOC, "Trần Văn Cường", "84987654321", "Bố", 1, "hoc-sinh.csv"),
        (NGOC, "Lê Thị Dung", "84387654321", "Mẹ", 0, "hoc-sinh.csv"),
        (PHUC, "Lê Văn Em", "84365111222", "Bố", 1, "hoc-sinh.csv"),
        (DUC, "Phạm Thị Giang", "84709888777", "Mẹ", 0, "hoc-sinh.csv"),
    }
    times = {r[0] for r in conn.execute("SELECT consent_ms FROM guardians")}
    assert times == {clock.now}
    assert _cards(conn) == {"04A1B2C3": AN, "0012345678": NGOC, "188,24911": PHUC,
                            "1026300682": DUC, "04112233445566": NHUNG}


def test_sheet_xlsx_matches_csv(conn: sqlite3.Connection, tmp_path: Path) -> None:
    import_sheet(conn, FIXTURES / "hoc-sinh.csv")
    other = db.connect(tmp_path / "xlsx.db")
    try:
        result = import_sheet(other, FIXTURES / "hoc-sinh.xlsx")
        assert result.errors == []
        assert result.source == "hoc-sinh.xlsx"
        assert _students(other) == _students(conn)
        assert {g[:5] for g in _guardians(other)} == {g[:5] for g in _guardians(conn)}
        assert {g[5] for g in _guardians(other)} == {"hoc-sinh.xlsx"}
        # Excel turned 0012345678 into the number 12345678: the tap still matches (below).
        expected = _cards(conn)
        expected["12345678"] = expected.pop("0012345678")
        assert _cards(other) == expected
    finally:
        other.close()


def test_sheet_english_headers_and_semicolons(conn: sqlite3.Connection) -> None:
    result = import_sheet(conn, FIXTURES / "students-en.csv")
    assert result.errors == []
    assert _students(conn) == {AN: ("Nguyễn Văn An", "6A1", 1),
                               PHUC: ("Lê Hoàng Phúc", "6A2", 1)}
    assert _cards(conn) == {"04A1B2C3": AN, "188,24911": PHUC}
    assert {(g[0], g[2], g[4]) for g in _guardians(conn)} == {(AN, "84912345678", 1),
                                                             (PHUC, "84365111222", 0)}


@pytest.mark.parametrize("name", ["hoc-sinh.csv", "hoc-sinh.xlsx"])
def test_sheet_reimport_is_idempotent(conn: sqlite3.Connection, clock: FakeClock,
                                      name: str) -> None:
    import_sheet(conn, FIXTURES / name, clock=clock)
    before = _snapshot(conn)
    clock.now += 86_400_000
    again = import_sheet(conn, FIXTURES / name, clock=clock)
    assert not again.changed and again.errors == []
    assert (again.students.unchanged, again.cards.unchanged, again.guardians.unchanged) == (
        5, 5, 5)
    assert _snapshot(conn) == before  # consent times included
    assert conn.execute("SELECT COUNT(*) FROM roster_imports").fetchone()[0] == 2


def test_sheet_changes_update(conn: sqlite3.Connection, clock: FakeClock,
                              tmp_path: Path) -> None:
    import_sheet(conn, FIXTURES / "hoc-sinh.csv", clock=clock)
    first = clock.now
    text = (FIXTURES / "hoc-sinh.csv").read_text(encoding="utf-8-sig")
    text = text.replace("Lê Hoàng Phúc,6A2", "Lê Hoàng Phúc,7A1")  # moved class
    text = text.replace("0387.654.321,không", "0387.654.321,có")  # consent given
    text = text.replace("Phạm Minh Đức,7A1,1026300682,Phạm Thị Giang,Mẹ,(070) 988-8777,no,",
                        "Phạm Minh Đức,7A1,04D4E5F6,,,,,")  # new card, guardian removed
    changed = tmp_path / "hoc-sinh-2.csv"
    changed.write_text(text, encoding="utf-8")
    clock.now += 1000
    result = import_sheet(conn, changed, clock=clock)
    assert result.errors == []
    assert (result.students.updated, result.students.unchanged) == (1, 4)
    assert (result.cards.added, result.cards.removed) == (1, 1)
    assert (result.guardians.updated, result.guardians.removed) == (1, 1)
    assert _students(conn)[PHUC][1] == "7A1"
    assert _cards(conn)["04D4E5F6"] == DUC and "1026300682" not in _cards(conn)
    consents = {r["phone"]: (r["consent"], r["consent_ms"], r["consent_source"])
                for r in conn.execute("SELECT * FROM guardians")}
    assert consents["84387654321"] == (1, clock.now, "hoc-sinh-2.csv")
    assert consents["84912345678"] == (1, first, "hoc-sinh.csv")  # unchanged: kept


def test_sheet_bad_rows_are_reported_and_skipped(conn: sqlite3.Connection) -> None:
    result = import_sheet(conn, FIXTURES / "hoc-sinh-loi.csv")
    name = "hoc-sinh-loi.csv"
    assert _codes(result) == [
        (name, 3, "missing_student_id", "row"),
        (name, 4, "student_id_lost_zero", "row"),
        (name, 5, "bad_phone", "row"),
        (name, 7, "card_conflict_file", "card"),
        (name, 8, "bad_card_number", "row"),
        (name, 9, "bad_consent", "row"),
        (name, 10, "missing_phone", "guardian"),
    ]
    assert set(_students(conn)) == {AN, NHUNG, KHOA, "7901000109"}
    assert _cards(conn) == {"04A1B2C3": AN, "04B1B1B1": "7901000109"}  # 04C0FFEE: neither
    assert {g[0] for g in _guardians(conn)} == {AN, NHUNG, KHOA}
    for error in result.errors:  # no names or phones in any message
        for text in (error.message("vi"), error.message("en")):
            assert "Phạm" not in text and "0123" not in text and "Bùi" not in text


def test_card_owned_by_another_student_in_the_database(conn: sqlite3.Connection,
                                                       tmp_path: Path) -> None:
    import_sheet(conn, FIXTURES / "hoc-sinh.csv")
    sheet = _write_sheet(tmp_path / "moi.csv", [
        HEADER, [KHOA, "Đặng Anh Khoa", "7A1", "04-A1-B2-C3", "", "", ""]])
    result = import_sheet(conn, sheet)
    assert _codes(result) == [("moi.csv", 2, "card_taken", "card")]
    for lang in ("vi", "en"):
        message = result.errors[0].message(lang)
        assert AN in message and KHOA in message and "04A1B2C3" in message
    assert _cards(conn)["04A1B2C3"] == AN
    assert KHOA in _students(conn)


def test_cards_swapped_between_listed_students_move(conn: sqlite3.Connection,
                                                    tmp_path: Path) -> None:
    import_sheet(conn, FIXTURES / "students-en.csv")
    swapped = _write_sheet(tmp_path / "swap.csv", [
        ["Student ID", "Full name", "Class", "Card number"],
        [AN, "Nguyễn Văn An", "6A1", '"188,24911"'],
        [PHUC, "Lê Hoàng Phúc", "6A2", "04A1B2C3"]])
    result = import_sheet(conn, swapped)
    assert result.errors == []
    assert _cards(conn) == {"188,24911": AN, "04A1B2C3": PHUC}
    assert len(_guardians(conn)) == 2  # no guardian columns: guardians left alone


def test_xlsx_bad_cell_types(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "kieu.xlsx", [
        HEADER,
        [dt.datetime(2026, 1, 2), "Nguyễn Văn An", "6A1", "04A1B2C3", None, None, None],
        [NGOC, True, "6A1", None, None, None, None],
        [PHUC, "Lê Hoàng Phúc", "6A2", 1.5e3 + 0.25, None, None, None],
        [DUC, 12345, "7A1", None, None, None, None],
    ])
    result = import_sheet(conn, sheet)
    assert _codes(result) == [("kieu.xlsx", line, "bad_cell_type", "row") for line in (2, 3, 4, 5)]
    assert "Mã định danh" in result.errors[0].message("vi")
    assert "Student ID" in result.errors[0].message("en") and "date" in str(result.errors[0])
    assert "Full name" in str(result.errors[1]) and "TRUE/FALSE" in str(result.errors[1])
    assert "Text" in str(result.errors[2])
    assert "Full name" in str(result.errors[3]) and "number" in str(result.errors[3])
    assert _students(conn) == {}


def test_xlsx_numbers_where_digits_are_expected(conn: sqlite3.Connection,
                                                tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "so.xlsx", [
        HEADER, [7901000105, "Võ Thị Hồng Nhung", 7, 12345678, "Võ Văn Hải", 901234567, True]])
    result = import_sheet(conn, sheet)
    assert result.errors == []
    assert _students(conn) == {NHUNG: ("Võ Thị Hồng Nhung", "7", 1)}
    assert _cards(conn) == {"12345678": NHUNG}
    assert {(g[2], g[4]) for g in _guardians(conn)} == {("84901234567", 1)}


@pytest.mark.parametrize(
    ("name", "content"),
    [("rong.csv", b""), ("bom.csv", b"\xef\xbb\xbf\r\n"), ("trang.csv", b"\n\n,,,\n")],
)
def test_empty_csv(conn: sqlite3.Connection, tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, tmp_path / name)
    assert info.value.error.code == "empty_file"
    assert "empty" in str(info.value) and "rỗng" in info.value.error.message("vi")


def test_empty_xlsx(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "rong.xlsx", [])
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, sheet)
    assert info.value.error.code == "empty_file"


def test_wrong_headers_name_the_missing_column(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "sai.csv", [
        ["Danh sách lớp 6A1"],
        ["Mã định danh", "Tên", "Lớp", "Số thẻ"],
        [AN, "Nguyễn Văn An", "6A1", "04A1B2C3"]])
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, sheet)
    error = info.value.error
    assert (error.code, error.file, error.line) == ("missing_columns", "sai.csv", 2)
    assert "Họ và tên (Full name)" in error.message("en")
    assert "Họ và tên" in error.message("vi")
    assert _students(conn) == {}


def test_guardian_columns_need_a_phone_column(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "ph.xlsx", [
        ["Mã định danh", "Họ và tên", "Lớp", "Phụ huynh", "Đồng ý"],
        [AN, "Nguyễn Văn An", "6A1", "Nguyễn Văn Bình", "có"]])
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, sheet)
    assert info.value.error.code == "missing_columns"
    assert "Số điện thoại" in info.value.error.message("vi")


def test_header_names_are_matched_loosely(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "loose.csv", [
        ["STT", "MÃ ĐỊNH DANH (Bộ GD&ĐT)", "Ho va ten hoc sinh", "Lớp:", "SĐT phụ huynh",
         "Ngày sinh"],
        [1, AN, "Nguyễn  Văn   An", "6a1", "0912345678", "2014-03-02"]])
    result = import_sheet(conn, sheet)
    assert result.errors == []
    assert _students(conn) == {AN: ("Nguyễn Văn An", "6A1", 1)}
    assert conn.execute("SELECT name FROM classes").fetchone()[0] == "6a1"
    # No consent column: nothing is recorded about consent (not a refusal at this time).
    row = conn.execute("SELECT phone, consent, consent_ms, consent_source FROM guardians"
                       ).fetchone()
    assert tuple(row) == ("84912345678", 0, None, None)


def test_duplicate_column_is_refused(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "dup.csv", [[*HEADER, "Mã HS"], [AN, "A", "6A1"]])
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, sheet)
    assert info.value.error.code == "duplicate_column"


def test_not_utf8_csv(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "ansi.csv"
    path.write_bytes(",".join(HEADER).encode() + b"\n" + "7901000101,Nguy\xe1n".encode("latin-1"))
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, path)
    assert (info.value.error.code, info.value.error.params) == ("not_utf8", (("at", "2"),))
    path.write_bytes(",".join(HEADER).encode("utf-16"))
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, path)
    assert info.value.error.code == "not_utf8"


@pytest.mark.parametrize(("name", "code"), [("a.xls", "old_excel"), ("a.ods", "unsupported_format"),
                                            ("missing.csv", "unreadable")])
def test_unsupported_files(conn: sqlite3.Connection, tmp_path: Path, name: str, code: str) -> None:
    if name != "missing.csv":
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, tmp_path / name)
    assert info.value.error.code == code


def test_broken_xlsx(conn: sqlite3.Connection, tmp_path: Path) -> None:
    (tmp_path / "hong.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RosterFileError) as info:
        import_sheet(conn, tmp_path / "hong.xlsx")
    assert info.value.error.code == "bad_xlsx"


def test_line_numbers_count_multiline_cells(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "ml.csv"
    path.write_text("Mã định danh,Họ và tên,Lớp,Ghi chú\n"
                    f'{AN},Nguyễn Văn An,6A1,"ghi chú\nhai dòng"\n'
                    "123,Lê Hoàng Phúc,6A2,\n", encoding="utf-8")
    result = import_sheet(conn, path)
    assert _codes(result) == [("ml.csv", 4, "bad_student_id", "row")]


def test_conflicting_rows_for_one_student(conn: sqlite3.Connection, tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path / "hai.csv", [
        HEADER,
        [AN, "Nguyễn Văn An", "6A1", "04A1B2C3", "Nguyễn Văn Bình", "0912345678", "có"],
        [AN, "Nguyễn Văn An", "6A2", "", "Lê Thị Dung", "0387654321", "có"],
        [AN, "Nguyễn Văn An", "6A1", "", "Nguyễn Văn Bình", "0912345678", "không"]])
    result = import_sheet(conn, sheet)
    assert _codes(result) == [("hai.csv", 3, "conflicting_rows", "row"),
                              ("hai.csv", 4, "duplicate_guardian", "guardian")]
    assert {(g[2], g[4]) for g in _guardians(conn)} == {("84912345678", 1)}


# --- one transaction ------------------------------------------------------------------------------

def test_unexpected_failure_writes_nothing(conn: sqlite3.Connection,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(roster._Apply, "_guardians", boom)
    with pytest.raises(RuntimeError):
        import_sheet(conn, FIXTURES / "hoc-sinh.csv")
    assert _snapshot(conn) == [[], [], [], [], []]
    assert conn.execute("SELECT COUNT(*) FROM roster_imports").fetchone()[0] == 0
    assert not conn.in_transaction


def test_dry_run_writes_nothing(conn: sqlite3.Connection) -> None:
    result = roster.import_sheet(conn, FIXTURES / "hoc-sinh.csv", dry_run=True)
    assert result.students.added == 5 and result.import_id is None
    assert _snapshot(conn) == [[], [], [], [], []]


# --- taps find the imported students -------------------------------------------------------------

TAPS = [
    ("iso14443a:04A1B2C3", AN),  # hex as printed
    ("em4100:1A00BC614E", NGOC),  # 10-digit decimal (Excel: 8 digits, zeros dropped)
    ("em4100:1A00BC614F", PHUC),  # facility,number
    ("iso14443a:0A1B2C3D", DUC),  # reversed decimal, as a MIFARE desk reader types it
    ("iso14443a:04112233445566", NHUNG),  # 7-byte hex with separators
]


@pytest.mark.parametrize("source", ["oneroster", "hoc-sinh.csv", "hoc-sinh.xlsx"])
def test_taps_match_imported_numbers(conn: sqlite3.Connection, source: str) -> None:
    if source == "oneroster":
        _oneroster(conn)
    else:
        import_sheet(conn, FIXTURES / source)
    for canonical, student in TAPS:
        assert cards.student_for_card(conn, canonical) == student, canonical
    assert cards.student_for_card(conn, "iso14443a:04A1B2C4") is None


def test_printed_forms_in_the_fixtures_are_the_cards() -> None:
    """The fixture numbers are printed forms of the TAPS ids (protocol/cardforms.py)."""
    forms = {c: set(cards.printed_numbers(c)) for c, _ in TAPS}
    assert "04A1B2C3" in forms["iso14443a:04A1B2C3"]
    assert {"0012345678", "12345678"} <= forms["em4100:1A00BC614E"]
    assert "188,24911" in forms["em4100:1A00BC614F"]
    assert "1026300682" in forms["iso14443a:0A1B2C3D"]


# --- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [("0912345678", "84912345678"), ("+84 912 345 678", "84912345678"),
     ("84912345678", "84912345678"), ("0084912345678", "84912345678"),
     ("+84 (0) 912.345.678", "84912345678"), ("(070) 988-8777", "84709888777"),
     ("912345678", "84912345678"), ("0387654321", "84387654321")],
)
def test_phone_numbers(text: str, expected: str) -> None:
    assert roster.normalize_phone(text) == expected


@pytest.mark.parametrize("text", ["", "0123456789", "0241234567", "091234567", "09123456789",
                                  "+1 912 345 678", "phone", "0912-345-67x", "84 2438 123 456"])
def test_bad_phone_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        roster.normalize_phone(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("04A1B2C3", "04A1B2C3"), ("04:a1:b2:c3", "04A1B2C3"), ("0x04A1B2C3", "04A1B2C3"),
     ("1A00BC614E", "1A00BC614E"), ("04 11 22 33 44 55 66", "04112233445566"),
     ("0011223344556677889A", "0011223344556677889A"), ("0012345678", "0012345678"),
     ("12345678", "12345678"), ("188,24910", "188,24910"), ("188, 24910", "188,24910"),
     ("65535,524287", "65535,524287")],
)
def test_card_numbers(text: str, expected: str) -> None:
    assert roster.parse_card_number(text) == expected


@pytest.mark.parametrize("text", ["", "12345", "123456789", "04A1B2", "04A1B2C3D4E5", "XYZ",
                                  "188,", "70000,1", "1,600000", "04A1B2C3G"])
def test_implausible_card_numbers(text: str) -> None:
    with pytest.raises(roster._Bad):
        roster.parse_card_number(text)


@pytest.mark.parametrize(("text", "code"), [("", "missing_student_id"),
                                            ("790100010", "student_id_lost_zero"),
                                            ("79010001011", "bad_student_id"),
                                            ("79010001O1", "bad_student_id"),
                                            ("٧٩٠١٠٠٠١٠١", "bad_student_id")])
def test_bad_student_ids(text: str, code: str) -> None:
    with pytest.raises(roster._Bad) as info:
        roster.parse_student_id(text)
    assert info.value.code == code


@pytest.mark.parametrize(("text", "expected"), [("có", True), ("Có", True), ("CO", True),
                                                ("x", True), ("yes", True), ("Đồng ý", True),
                                                ("không", False), ("Khong", False),
                                                ("", False), ("no", False)])
def test_consent_words(text: str, expected: bool) -> None:
    assert roster.parse_consent(text) is expected


def test_every_reason_has_both_languages() -> None:
    for code, (vi, en) in roster.REASONS.items():
        assert vi and en and vi != en, code


# --- the command ----------------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "thcs-nguyen-du"\ndatabase = "gw.db"\n',
                    encoding="utf-8")
    return path


def test_cli_import_and_show_card(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roster", "import", "--config", str(config), "--sheet",
                 str(FIXTURES / "hoc-sinh.xlsx")]) == 0
    out = capsys.readouterr().out
    assert "Học sinh / Students" in out and "added" in out and "thêm" in out
    assert "Nguyễn" not in out and "8491" not in out

    assert main(["roster", "show-card", "--config", str(config), "0012345678"]) == 0
    out = capsys.readouterr().out
    assert NGOC in out and "6A1" in out and "Trần" not in out
    assert main(["roster", "show-card", "--config", str(config), "--names", "04-A1-B2-C3"]) == 0
    assert "Nguyễn Văn An" in capsys.readouterr().out
    assert main(["roster", "show-card", "--config", str(config), "em4100:1a00bc614f"]) == 0
    assert PHUC in capsys.readouterr().out
    assert main(["roster", "show-card", "--config", str(config), "04D4E5F6"]) == 1
    assert main(["roster", "show-card", "--config", str(config), "12"]) == 2


def test_cli_reports_row_errors_and_file_errors(config: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roster", "import", "--config", str(config), "--sheet",
                 str(FIXTURES / "hoc-sinh-loi.csv")]) == 1
    out = capsys.readouterr().out
    assert "hoc-sinh-loi.csv:5:" in out and "Lỗi / Errors: 7" in out
    assert "không phải số di động" in out and "not a Vietnamese mobile number" in out
    (tmp_path / "rong.csv").write_bytes(b"")
    assert main(["roster", "import", "--config", str(config), "--sheet",
                 str(tmp_path / "rong.csv")]) == 2
    err = capsys.readouterr().err
    assert "Nothing imported" in err and "tệp rỗng" in err and "the file is empty" in err


def test_cli_oneroster_dry_run(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roster", "import", "--config", str(config), "--oneroster", str(ONEROSTER),
                 "--dry-run"]) == 0
    assert "Dry run" in capsys.readouterr().out
    conn = db.connect(config.parent / "gw.db")
    try:
        assert _students(conn) == {}
    finally:
        conn.close()


def test_cli_needs_one_source(config: Path) -> None:
    with pytest.raises(SystemExit):
        main(["roster", "import", "--config", str(config)])
    with pytest.raises(SystemExit):
        main(["roster", "import", "--config", str(config), "--sheet", "a.csv",
              "--oneroster", "d"])


def test_help_is_bilingual(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["roster", "import", "--help"])
    out = capsys.readouterr().out
    assert "Nhập danh sách" in out and "Import a roster" in out


def test_logs_carry_no_names_or_phones(conn: sqlite3.Connection,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        import_sheet(conn, FIXTURES / "hoc-sinh.csv")
        import_sheet(conn, FIXTURES / "hoc-sinh-loi.csv")
    assert caplog.records
    for record in caplog.records:
        text = logged_text([record])
        for secret in ("Nguyễn", "Trần", "Bình", "84912345678", "0912", "7901000101"):
            assert secret not in text
