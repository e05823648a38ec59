"""``attendance-gateway roster``: import the student roster, look up a card (docs/roster.md).

Exit status of ``roster import``: 0 everything imported, 1 imported except the rows reported,
2 nothing imported (an unusable file, configuration or database). ``roster show-card``: 0 found,
1 not on the roster, 2 not a card number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway import db, roster
from gateway.commands import add_config_argument
from gateway.config import load_config

_COUNT_LABELS = (("classes", "Lớp / Classes"), ("students", "Học sinh / Students"),
                 ("cards", "Số thẻ / Card numbers"), ("guardians", "Phụ huynh / Guardians"))
_EFFECTS = {
    "row": "bỏ qua dòng / row skipped",
    "card": "không gán thẻ / card not assigned",
    "guardian": "không lưu phụ huynh / guardian not stored",
    "file": "không nhập gì / nothing imported",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "roster", help="danh sách học sinh và thẻ / student roster and cards",
        description="Danh sách học sinh, lớp, số thẻ và phụ huynh / "
                    "The roster of students, classes, card numbers and guardians")
    actions = parser.add_subparsers(dest="roster_command", required=True, metavar="ACTION")

    imp = actions.add_parser(
        "import", help="nhập danh sách (OneRoster hoặc bảng tính) / import a roster",
        description="Nhập danh sách từ thư mục OneRoster 1.1 CSV hoặc bảng tính CSV/XLSX của "
                    "văn phòng; dòng lỗi được báo và bỏ qua, phần còn lại được nhập; nhập lại "
                    "cùng tệp không thay đổi gì. / Import a roster from a OneRoster 1.1 CSV "
                    "folder or the school office's CSV/XLSX sheet; bad rows are reported and "
                    "skipped, the rest is imported; importing the same file again changes "
                    "nothing.")
    add_config_argument(imp)
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--oneroster", type=Path, metavar="DIR",
                        help="thư mục OneRoster 1.1 (manifest.csv, users.csv, classes.csv, "
                             "enrollments.csv) / OneRoster 1.1 CSV folder")
    source.add_argument("--sheet", type=Path, metavar="FILE",
                        help="bảng tính .csv (UTF-8) hoặc .xlsx: Mã định danh, Họ và tên, Lớp, "
                             "Số thẻ, Phụ huynh, Số điện thoại, Đồng ý / .csv (UTF-8) or .xlsx "
                             "sheet: student ID, full name, class, card number, guardian, "
                             "phone, consent")
    imp.add_argument("--dry-run", action="store_true",
                     help="chỉ kiểm tra, không ghi gì / check only, write nothing")
    imp.set_defaults(func=_import)

    show = actions.add_parser(
        "show-card", help="thẻ này của học sinh nào / which student a card number belongs to",
        description="In mã định danh và lớp của học sinh có số thẻ này (không in họ tên trừ khi "
                    "có --names). / Print the student ID and class a printed card number maps "
                    "to (the name only with --names).")
    add_config_argument(show)
    show.add_argument("number", metavar="NUMBER",
                      help="số in trên thẻ (hex, thập phân, \"cơ sở,số\") hoặc mã chuẩn "
                           "em4100:… / the printed number (hex, decimal, \"facility,number\") "
                           "or a canonical id em4100:…")
    show.add_argument("--names", action="store_true",
                      help="in cả họ tên (dữ liệu cá nhân) / also print the name (personal data)")
    show.set_defaults(func=_show_card)


def _import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    conn = db.connect(config.database)  # DatabaseError: reported by gateway/cli.py
    try:
        if args.oneroster is not None:
            today = dt.datetime.now(config.timezone).date()
            result = roster.import_oneroster(conn, args.oneroster, today=today,
                                             dry_run=args.dry_run)
        else:
            result = roster.import_sheet(conn, args.sheet, dry_run=args.dry_run)
    except roster.RosterFileError as exc:
        print(f"Không nhập được / Nothing imported: {exc.error.where()}", file=sys.stderr)
        print(f"  {exc.error.message('vi')}", file=sys.stderr)
        print(f"  {exc.error.message('en')}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    print("\n".join(format_result(result)))
    return 1 if result.errors else 0


def format_result(result: roster.ImportResult) -> list[str]:
    """The import's report, in Vietnamese and English (no names, no phones)."""
    kind = "OneRoster" if result.format == "oneroster" else "bảng tính / sheet"
    lines = [f"Nhập danh sách / Roster import: {result.source} ({kind})"]
    if result.dry_run:
        lines.append("Chạy thử: không ghi gì / Dry run: nothing written")
    lines.append(f"{'':24}{'thêm':>8}{'sửa':>8}{'giữ':>10}{'xoá':>8}")
    lines.append(f"{'':24}{'added':>8}{'updated':>8}{'unchanged':>10}{'removed':>8}")
    counts = result.counts()
    for key, label in _COUNT_LABELS:
        c = counts[key]
        lines.append(f"{label:24}{c['added']:>8}{c['updated']:>8}{c['unchanged']:>10}"
                     f"{c['removed']:>8}")
    if result.stale:
        lines.append(f"Bỏ qua vì cũ hơn dữ liệu hiện có / Skipped as older than the database: "
                     f"{result.stale}")
    if result.ignored_users:
        lines.append(f"Người dùng không phải học sinh (bỏ qua) / Users who are not students "
                     f"(ignored): {result.ignored_users}")
    lines.append(f"Lỗi / Errors: {len(result.errors)}")
    for error in result.errors:
        lines.append(f"  {error.where()}: [{_EFFECTS[error.effect]}]")
        lines.append(f"    {error.message('vi')}")
        lines.append(f"    {error.message('en')}")
    return lines


def _show_card(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    conn = db.connect(config.database)  # DatabaseError: reported by gateway/cli.py
    try:
        owner = roster.card_owner(conn, args.number)
    except ValueError as exc:
        print(f"Không phải số thẻ / Not a card number: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    if owner is None:
        print(f"Không có trong danh sách / Not on the roster: {args.number}")
        return 1
    print(f"Số thẻ / Card number: {owner.number}")
    print(f"Mã định danh / Student ID: {owner.student_id}")
    class_text = owner.class_name or "-"
    if owner.class_id is not None and owner.class_id != owner.class_name:
        class_text += f" ({owner.class_id})"
    print(f"Lớp / Class: {class_text}")
    if not owner.active:
        print("Trạng thái / Status: đã nghỉ học / inactive")
    if args.names:
        print(f"Họ và tên / Full name: {owner.full_name}")
    return 0
