"""Property tests of the roster import (``gateway/roster.py``): CSV sheets with arbitrary cells,
encodings, BOMs, quotes and delimiters. Every bad row is reported with its file, line and
reason, nothing else escapes, and exactly the valid rows are imported."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_roster
from gateway.roster import RosterFileError, read_sheet
from tests.fuzz.support import fuzz_settings

HEADER = ["Mã định danh", "Họ và tên", "Lớp", "Số thẻ"]
good_row = st.tuples(
    st.from_regex(r"0[0-9]{9}", fullmatch=True),
    st.text(st.characters(categories=["L"]), min_size=1, max_size=12).filter(str.strip),
    st.sampled_from(["6A1", "7B", "10A2"]),
    st.sampled_from(["", "0012345678", "04A1B2C3", "44,9000", "0x0A1B2C3D4E"]))
bad_row = st.one_of(
    st.tuples(st.sampled_from(["", "12345", "079010001", "abcdefghij", "\u0667" * 10]),
              st.just("Tên"), st.just("6A1"), st.just("")),
    st.tuples(st.from_regex(r"1[0-9]{9}", fullmatch=True), st.just(""), st.just("6A1"),
              st.just("")),
    st.tuples(st.from_regex(r"2[0-9]{9}", fullmatch=True), st.just("Tên"), st.just("6A1"),
              st.sampled_from(["12", "ZZZZ", "1" * 5000 + ",1", "999999,1"])))
cell = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@fuzz_settings(150)
@given(data=st.binary(max_size=400), oneroster=st.booleans())
def test_arbitrary_bytes_are_a_file_error_or_rows_with_lines(data: bytes,
                                                            oneroster: bool) -> None:
    fuzz_roster.check(bytes((oneroster,)) + data)


@fuzz_settings(150)
@given(rows=st.lists(st.lists(cell, max_size=6), max_size=8),
       delimiter=st.sampled_from([",", ";", "\t"]), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), encoding=st.sampled_from(
           ["utf-8", "utf-16", "cp1258", "latin-1"]))
def test_arbitrary_cells_quotes_and_encodings(rows: list[list[str]], delimiter: str, bom: bool,
                                              newline: str, encoding: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerows([HEADER, *rows])
    text = ("\ufeff" if bom else "") + out.getvalue()
    fuzz_roster.check(b"\x00" + text.encode(encoding, "replace"))


@fuzz_settings(120)
@given(rows=st.lists(st.tuples(st.booleans(), good_row, bad_row), min_size=1, max_size=8),
       delimiter=st.sampled_from([",", ";"]))
def test_valid_rows_are_imported_and_each_bad_row_is_reported(
        rows: list[tuple[bool, tuple[str, ...], tuple[str, ...]]],
        delimiter: str) -> None:
    lines: list[list[str]] = [HEADER]
    good: dict[str, int] = {}
    bad: set[int] = set()
    for use_good, ok, ko in rows:
        row = list(ok if use_good else ko)
        if use_good:
            if row[0] in good:
                continue
            good[row[0]] = len(lines) + 1
        else:
            bad.add(len(lines) + 1)
        lines.append(row)
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(lines)
    path = fuzz_roster.scratch_dir() / "lop.csv"
    path.write_bytes(b"\xef\xbb\xbf" + out.getvalue().encode())
    try:
        roster = read_sheet(path)
    except RosterFileError as exc:  # only a sheet without any good row may be refused
        assert not good, exc
        return
    assert {s: r.line for s, r in roster.students.items()} == good
    assert {(e.file, e.line) for e in roster.errors} == {("lop.csv", line) for line in bad}
    for error in roster.errors:
        assert str(error).startswith(f"lop.csv:{error.line}: ")


def test_regression_a_5000_digit_card_pair_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    """Found by the roster oracle: gateway.cards.normalize_number called int() on the parts of
    a "facility,number" cell, which raises ValueError beyond 4300 digits (Python's limit)."""
    path = tmp_path / "lop.csv"
    path.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ\n0790100010,An,6A1,\"" + "1" * 5000
                    + ",1\"\n0790100011,Bình,6A1,0012345678\n", encoding="utf-8")
    roster = read_sheet(path)
    assert list(roster.students) == ["0790100011"]
    assert [(e.line, e.code) for e in roster.errors] == [(2, "bad_card_number")]
