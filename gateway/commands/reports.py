"""The operator's read-only reports: ``status``, ``today``, ``unknown-cards``, ``quarantine``,
``gaps``, ``export`` and ``workbook`` (gateway/reports.py and gateway/export.py compute them;
this module prints them).

Text tables with Vietnamese / English headers by default, ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from gateway import export as workbooks
from gateway import reports
from gateway.commands import add_config_argument
from gateway.config import GatewayConfig, load_config
from gateway.db import DatabaseError, connect
from gateway.rules import SchoolCalendar, to_ms
from gateway.types import system_clock

Handler = Callable[[argparse.Namespace, GatewayConfig, sqlite3.Connection, SchoolCalendar], int]


class _Unavailable(Exception):
    """The database cannot be opened; the message is for the operator."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ngày không hợp lệ / not a date like 2026-09-05: {text!r}") from None


def _moment(text: str) -> dt.date | dt.datetime:
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"thời điểm không hợp lệ / not a date or time like 2026-09-05 or "
            f"2026-09-05T07:30: {text!r}") from None


@contextmanager
def _open(config: GatewayConfig) -> Iterator[sqlite3.Connection]:
    if not config.database.exists():
        raise _Unavailable(f"không có cơ sở dữ liệu / no database at {config.database}")
    try:
        conn = connect(config.database)
    except DatabaseError as exc:
        raise _Unavailable(f"không mở được cơ sở dữ liệu / cannot open the database: {exc}"
                           ) from None
    try:
        conn.execute("BEGIN")  # one consistent snapshot for the whole report
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def _runner(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        calendar = SchoolCalendar(config.attendance, config.timezone)
        try:
            with _open(config) as conn:
                return handler(args, config, conn, calendar)
        except _Unavailable as exc:
            print(f"Lỗi / Error: {exc}", file=sys.stderr)
            return 1
    return run


def _common(parser: argparse.ArgumentParser, handler: Handler, *, json_flag: bool = True) -> None:
    add_config_argument(parser)
    if json_flag:
        parser.add_argument("--json", action="store_true",
                            help="in JSON cho máy / print JSON for machines")
    parser.set_defaults(func=_runner(handler))


def _print_json(value: Any) -> None:
    def convert(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        raise TypeError(type(obj).__name__)
    print(json.dumps(value, default=convert, ensure_ascii=False, indent=2))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparsers.add_parser(
        "status", help="tình trạng đầu đọc và hàng đợi / readers, queues and clocks")
    status.add_argument("--heartbeat-s", type=int, default=reports.HEARTBEAT_S,
                        help="chu kỳ nhịp tim của đầu đọc / the readers' heartbeat period "
                             "(default: %(default)s s)")
    _common(status, _status)

    today = subparsers.add_parser(
        "today", help="điểm danh trong ngày theo lớp / attendance of a day by class")
    today.add_argument("--date", type=_date, help="ngày / date (default: today)")
    today.add_argument("--class", dest="class_id", metavar="CLASS",
                       help="chỉ một lớp, kèm danh sách học sinh / one class, with its students")
    _common(today, _today)

    unknown = subparsers.add_parser(
        "unknown-cards", help="thẻ lạ chưa có trong danh sách / cards the roster does not know")
    _common(unknown, _unknown_cards)

    quarantine = subparsers.add_parser(
        "quarantine", help="dữ liệu bị cách ly / input that failed verification")
    quarantine.add_argument("--since", type=_moment,
                            help="từ ngày hoặc thời điểm / since a date or time (school time)")
    quarantine.add_argument("--limit", type=int, default=200,
                            help="số dòng tối đa / at most this many, newest first "
                                 "(default: %(default)s)")
    _common(quarantine, _quarantine)

    gaps = subparsers.add_parser(
        "gaps", help="bản ghi còn thiếu theo số thứ tự / missing record sequence numbers")
    _common(gaps, _gaps)

    export = subparsers.add_parser(
        "export", help="xuất điểm danh ra CSV hoặc Excel / export attendance to CSV or Excel")
    export.add_argument("--from", dest="date_from", type=_date, required=True,
                        help="từ ngày / first date")
    export.add_argument("--to", dest="date_to", type=_date, required=True,
                        help="đến ngày / last date (inclusive)")
    export.add_argument("--format", choices=["csv", "xlsx"], default=None,
                        help="định dạng / format (default: from the file name)")
    export.add_argument("--out", type=Path, required=True, help="tệp ra / output file")
    export.add_argument("--class", dest="class_id", metavar="CLASS", help="chỉ một lớp / one class")
    _common(export, _export, json_flag=False)

    workbook = subparsers.add_parser(
        "workbook", help="sổ điểm danh Excel theo lớp cho Bộ GD&ĐT / the Ministry's attendance "
                         "workbook per class")
    when = workbook.add_mutually_exclusive_group()
    when.add_argument("--date", type=_date, help="ngày / date (default: today)")
    when.add_argument("--range", nargs=2, type=_date, metavar=("FROM", "TO"),
                      help="từ ngày đến ngày: mỗi lớp một tệp, mỗi ngày một trang / "
                           "first and last date: one workbook per class, one sheet per day")
    workbook.add_argument("--class", dest="class_id", metavar="CLASS",
                          help="chỉ một lớp / one class")
    workbook.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                          help="thư mục ra / output folder (default: the current folder)")
    workbook.add_argument("--zip", action="store_true",
                          help="thêm một tệp ZIP gồm mọi sổ để gửi phòng giáo dục / also a ZIP of "
                               "the workbooks, for the district")
    _common(workbook, _workbook, json_flag=False)


# --- handlers ----------------------------------------------------------------------------------

def _status(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
            calendar: SchoolCalendar) -> int:
    now = system_clock()
    report = reports.status_report(conn, calendar, now, args.heartbeat_s)
    if args.json:
        _print_json(report)
        return 0
    zone = config.timezone
    print(f"Trường / School: {config.school}    "
          f"Lúc / At: {reports.datetime_text(now, zone)}")
    print(f"Đầu đọc trực tuyến / Readers online: {report.readers_online}/{report.readers_active}"
          f"    Chờ gửi / Queued: {report.queue_depth}"
          f" (cũ nhất / oldest {reports.age_text(report.oldest_unsent_age_s)})"
          f"    Bị bỏ / Dropped: {report.dropped}")
    print(f"Lượt quẹt hôm nay / Scans today: {report.scans_today}    "
          f"Thẻ lạ / Unknown cards: {report.unknown_cards_open}    "
          f"Cách ly 24h / Quarantined 24h: {report.quarantined_24h}")
    print()
    headers = ("ID", "Tên / Name", "Cổng / Gate", "Trực tuyến / Online", "Lần cuối / Last seen",
               "Hàng đợi / Queue", "Cũ nhất / Oldest", "Bỏ / Dropped", "Đồng hồ / Clock",
               "Lỗi / Faults")
    rows = []
    for r in report.readers:
        online = ("có / yes" if r.online else
                  "thu hồi / revoked" if r.status != "active" else "KHÔNG / NO")
        rows.append((r.reader_id, r.name, r.gate, online,
                     reports.age_text(None if r.last_seen_ms is None
                                      else (now - r.last_seen_ms) / 1000),
                     r.queue_depth, reports.age_text(r.oldest_unsent_age_s), r.dropped,
                     r.clock_health, r.faults or ""))
    print(reports.render_table(headers, rows))
    return 0


def _today(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
           calendar: SchoolCalendar) -> int:
    day = args.date or calendar.local_date(system_clock())
    report = reports.day_report(conn, calendar, day, args.class_id)
    if args.json:
        _print_json(report)
        return 0
    print(f"Ngày / Date: {report.school_date}    "
          f"{reports.DAY_KIND_LABELS.get(report.day_kind, report.day_kind)}")
    zone = config.timezone
    for session in report.sessions:
        state = "đã chốt / closed" if session.closed else "đang mở / open"
        print(f"\nBuổi / Session: {session.session} ({state})")
        headers = ("Lớp / Class", "Sĩ số / Total", "Có mặt / Present", "Đi muộn / Late",
                   "Vắng / Absent", "Chưa đến / Not yet")
        rows: list[tuple[object, ...]] = [
            (c.class_name or c.class_id or "(chưa xếp lớp / no class)", c.total, c.present,
             c.late, c.absent, c.not_yet) for c in session.classes]
        t = session.totals
        rows.append(("Tổng / Total", t.total, t.present, t.late, t.absent, t.not_yet))
        print(reports.render_table(headers, rows))
        if args.class_id is not None:
            print()
            print(reports.render_table(
                ("Mã HS / Student ID", "Họ và tên / Name", "Trạng thái / Status",
                 "Giờ vào / In", "Giờ ra / Out"),
                [(r.student_id, r.full_name, reports.STATUS_LABELS[r.status],
                  reports.clock_text(r.check_in_ms, zone), reports.clock_text(r.check_out_ms, zone))
                 for r in report.rows if r.session == session.session]))
    if not report.sessions:
        print("Không có buổi học / No sessions on this day.")
    return 0


def _unknown_cards(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
                   calendar: SchoolCalendar) -> int:
    cards = reports.unknown_cards(conn)
    if args.json:
        _print_json(cards)
        return 0
    zone = config.timezone
    print(reports.render_table(
        ("Thẻ / Card", "Lần đầu / First seen", "Lần cuối / Last seen", "Số lần / Times",
         "Đầu đọc / Reader", "Đã xem / Acknowledged"),
        [(c.card, reports.datetime_text(c.first_ms, zone), reports.datetime_text(c.last_ms, zone),
          c.times_seen, c.last_reader or c.last_reader_id, c.acknowledged) for c in cards]))
    return 0


def _quarantine(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
                calendar: SchoolCalendar) -> int:
    since: dt.date | dt.datetime | None = args.since
    since_ms: int | None = None
    if isinstance(since, dt.datetime):
        since_ms = to_ms(since if since.tzinfo else since.replace(tzinfo=config.timezone))
    elif isinstance(since, dt.date):
        since_ms = calendar.at(since, dt.time())
    entries = reports.quarantine(conn, since_ms, args.limit)
    if args.json:
        _print_json(entries)
        return 0
    zone = config.timezone
    print(reports.render_table(
        ("#", "Lần cuối / Last seen", "Số lần / Times", "Đường truyền / Transport",
         "Đầu đọc / Reader", "Boot", "Seq", "Lý do / Reason", "Chi tiết / Detail"),
        [(e.quarantine_id, reports.datetime_text(e.last_ms, zone), e.times_seen, e.transport,
          e.reader_id, e.boot, e.seq, e.reason, e.detail) for e in entries]))
    return 0


def _gaps(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
          calendar: SchoolCalendar) -> int:
    found = reports.gaps(conn)
    if args.json:
        _print_json([dict(dataclasses.asdict(g), missing=g.missing) for g in found])
        return 0
    print(reports.render_table(
        ("Đầu đọc / Reader", "Tên / Name", "Boot", "Thiếu từ / First missing",
         "Đến / Last missing", "Số bản ghi / Missing"),
        [(g.reader_id, g.reader, g.boot, g.first_missing, g.last_missing, g.missing)
         for g in found]))
    if found:
        print("\nKhoảng trống có thể còn được lấp khi đầu đọc gửi tiếp hàng đợi / Gaps may still "
              "fill as readers upload their queues.")
    return 0


def _export(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
            calendar: SchoolCalendar) -> int:
    out: Path = args.out
    fmt: Literal["csv", "xlsx"] = (
        "xlsx" if (args.format or out.suffix.lower().lstrip(".")) == "xlsx" else "csv")
    if args.date_to < args.date_from:
        print("Lỗi / Error: --to trước --from / --to is before --from", file=sys.stderr)
        return 2
    count = reports.export(conn, calendar, args.date_from, args.date_to, fmt, out, args.class_id)
    print(f"Đã ghi {count} dòng vào / Wrote {count} rows to {out}")
    return 0


def _workbook(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
              calendar: SchoolCalendar) -> int:
    if args.range:
        date_from, date_to = args.range
    else:
        date_from = date_to = args.date or calendar.local_date(system_clock())
    try:
        result = workbooks.export_workbooks(
            conn, calendar, date_from, date_to, args.out, school=config.school,
            school_name=config.export.school_name or config.school, class_id=args.class_id,
            zip_archive=args.zip)
    except workbooks.ExportError as exc:
        print(f"Lỗi / Error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"Lỗi / Error: không ghi được tệp / cannot write: {exc}", file=sys.stderr)
        return 1
    count = len(result.files)
    print(f"Đã ghi {count} sổ điểm danh vào / Wrote {count} workbooks to {args.out} "
          f"({len(result.school_days)} ngày học / school days)")
    for path in result.files:
        print(f"  {path.name}")
    if result.zip is not None:
        print(f"ZIP: {result.zip}")
    if result.without_class:
        print(f"Chú ý / Note: {result.without_class} học sinh chưa được xếp lớp nên không có trong "
              f"sổ nào / students have no class and are on no sheet", file=sys.stderr)
    return 0
