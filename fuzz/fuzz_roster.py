"""Roster import (``gateway/roster.py``): the secretary's CSV sheet and a OneRoster 1.1
``users.csv``.

Input: a selector byte, then the file's bytes (any encoding, BOMs, quotes, delimiters). Bit 0 of
the selector picks OneRoster (the bytes are ``users.csv`` of a set whose manifest, classes and
enrollments are fixed) or the sheet (the bytes are a ``.csv``). Properties:

- reading raises nothing but ``RosterFileError`` (a file that cannot be used), whose error names
  the file, a line within it (or 0) and a known reason;
- otherwise every skipped row is a ``RowError`` with the file's name, a line of the file and a
  known reason that renders in Vietnamese and English; every student read comes from a line of
  the file, has a 10-digit Ministry ID, and no row both was imported and was skipped whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fuzz.common import Bug, scratch_dir
from gateway.roster import REASONS, Roster, RosterFileError, RowError, read_oneroster, read_sheet

MANIFEST = ("propertyName,value\noneroster.version,1.1\nfile.users,bulk\nfile.classes,bulk\n"
            "file.enrollments,bulk\n")
CLASSES = "sourcedId,title,classType,status\nc6a1,6A1,homeroom,active\nc7b,7B,homeroom,\n"
ENROLLMENTS = ("sourcedId,classSourcedId,userSourcedId,role,primary\n"
               "e1,c6a1,u1,student,true\ne2,c7b,u2,student,\ne3,c6a1,u3,student,\n")


def _folder() -> Path:
    folder = scratch_dir() / "oneroster"
    if not folder.is_dir():
        folder.mkdir()
        (folder / "manifest.csv").write_text(MANIFEST, encoding="utf-8")
        (folder / "classes.csv").write_text(CLASSES, encoding="utf-8")
        (folder / "enrollments.csv").write_text(ENROLLMENTS, encoding="utf-8")
    return folder


def _lines(data: bytes) -> int:
    return max(1, data.count(b"\n") + data.count(b"\r") + 1)


def _check_error(error: RowError, files: dict[str, int]) -> None:
    """``files``: the name of each file read -> its number of lines."""
    if error.file not in files or not 0 <= error.line <= files[error.file] \
            or error.code not in REASONS:
        raise Bug(f"error {error!r} does not name a file, a line and a known reason")
    error.message("vi")
    error.message("en")
    str(error)


def _check_roster(roster: Roster, files: dict[str, int]) -> None:
    for error in roster.errors:
        _check_error(error, files)
        if error.line < 1:
            raise Bug(f"row error {error!r} without a line")
    skipped = {(e.file, e.line) for e in roster.errors if e.effect == "row"}
    for student in roster.students.values():
        if not (student.file in files and 1 <= student.line <= files[student.file]):
            raise Bug(f"student {student.student_id} from nowhere: {student.file}:{student.line}")
        if len(student.student_id) != 10 or not student.student_id.isascii() \
                or not student.student_id.isdigit():
            raise Bug(f"student ID {student.student_id!r} is not 10 digits")
        if (student.file, student.line) in skipped:
            raise Bug(f"{student.file}:{student.line} was both imported and skipped")


def check(data: bytes) -> None:
    if not data:
        return
    content = data[1:]
    try:
        if data[0] & 1:
            folder = _folder()
            (folder / "users.csv").write_bytes(content)
            files = {"users.csv": _lines(content), "classes.csv": _lines(CLASSES.encode()),
                     "enrollments.csv": _lines(ENROLLMENTS.encode()),
                     "manifest.csv": _lines(MANIFEST.encode())}
            roster = read_oneroster(folder)
        else:
            path = scratch_dir() / "hoc-sinh.csv"
            path.write_bytes(content)
            files = {"hoc-sinh.csv": _lines(content)}
            roster = read_sheet(path)
    except RosterFileError as exc:
        _check_error(exc.error, files)
        return
    _check_roster(roster, files)


def seeds() -> list[bytes]:
    root = Path(__file__).resolve().parents[1] / "tests" / "gateway" / "fixtures" / "roster"
    out = []
    for name in ("hoc-sinh.csv", "hoc-sinh-loi.csv", "students-en.csv"):
        path = root / name
        if path.is_file():
            out.append(b"\x00" + path.read_bytes())
    out.append(b"\x00\xef\xbb\xbfM\xc3\xa3 \xc4\x91\xe1\xbb\x8bnh danh;H\xe1\xbb\x8d v\xc3\xa0 "
               b"t\xc3\xaan;L\xe1\xbb\x9bp;S\xe1\xbb\x91 th\xe1\xba\xbb;S\xe1\xbb\x91 \xc4\x91i"
               b"\xe1\xbb\x87n tho\xe1\xba\xa1i;\xc4\x90\xe1\xbb\x93ng \xc3\xbd\r\n"
               b"0790100010;\"Nguy\xe1\xbb\x85n V\xc4\x83n \"\"A\"\"\";6A1;0012345678;"
               b"0901234567;c\xc3\xb3\r\n0790100011;B;6A1;044,09000/04A1B2C3;;\r\n")
    out.append(b"\x01sourcedId,role,identifier,givenName,familyName,userIds,status\n"
               b"u1,student,0790100010,An,Nguyen,\"{RFID:0012345678},{RFID:04A1B2C3}\",active\n"
               b"u2,student,0790100011,Binh,Tran,,\nu3,teacher,,C,Le,,\n")
    return out


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
