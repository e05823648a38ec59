"""``attendance-gateway notify``: parent notifications — per channel what waits, what is parked
and why; retry, pause, resume, probe a channel whose breaker is open; the audit of why each
message was or was not sent; consent and opt-outs; purge of a student's or a guardian's personal
data (``gateway/notify.py``).

The commands change the database only; the running gateway picks changes up within a second.
Names and phone numbers are never printed (ids only); ``--json`` for tools.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
from typing import Any

from gateway import notify
from gateway.commands import Handler, add_config_argument, print_json, print_table, queue_command
from gateway.commands.outbox import print_probe
from gateway.config import NOTIFY_KINDS, GatewayConfig
from gateway.outbox import OutboxError, TargetStatus, request_probe
from gateway.rules import to_ms
from gateway.types import system_clock

_VI = {"unknown_target": "Không có kênh này", "not_parked": "Không gửi lại được",
       "bad_value": "Giá trị không hợp lệ", "not_open": "Không cần thử lại"}
_TABLE_VI = {
    "guardians": "phụ huynh (tên, số điện thoại)",
    "guardian_opt_outs": "lựa chọn tắt tin",
    "notify_messages_redacted": "tin nhắn đã xoá nội dung",
    "notify_messages_cancelled": "tin nhắn chưa gửi đã huỷ",
}
_TABLE_EN = {
    "guardians": "guardians (names, phone numbers)",
    "guardian_opt_outs": "opt-outs",
    "notify_messages_redacted": "messages whose text was redacted",
    "notify_messages_cancelled": "unsent messages cancelled",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "notify", help="tin nhắn cho phụ huynh / parent notifications",
        description="Xem và điều khiển tin nhắn cho phụ huynh / see and steer parent "
                    "notifications ([notify], [[notify.channel]])")
    actions = parser.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    common.add_argument("--json", action="store_true",
                        help="in JSON cho máy đọc / print JSON for tools")

    actions.add_parser(
        "status", parents=[common],
        help="mỗi kênh: chờ, tạm gác, đã gửi hôm nay, ngắt mạch / per channel: pending, parked, "
             "delivered today, breaker").set_defaults(func=queue_command(_status, _VI))

    listing = actions.add_parser("list", parents=[common],
                                 help="tin nhắn của một kênh / a channel's messages")
    listing.add_argument("channel", help="tên kênh / channel name")
    listing.add_argument("--state", choices=notify.MESSAGE_STATES, default="pending",
                         help="trạng thái / state (default pending)")
    listing.add_argument("--limit", type=int, default=50, metavar="N")
    listing.set_defaults(func=queue_command(_list, _VI))

    audit = actions.add_parser(
        "audit", parents=[common],
        help="vì sao mỗi tin được hay không được gửi / why each message was or was not sent")
    audit.add_argument("--student", metavar="ID")
    audit.add_argument("--guardian", type=int, metavar="ID")
    audit.add_argument("--date", metavar="YYYY-MM-DD")
    audit.add_argument("--limit", type=int, default=200, metavar="N")
    audit.set_defaults(func=queue_command(_audit, _VI))

    retry = actions.add_parser("retry", parents=[common],
                               help="gửi lại tin tạm gác / send parked messages again")
    retry.add_argument("channel", help="tên kênh / channel name")
    retry.add_argument("items", type=int, nargs="*", metavar="ITEM")
    retry.add_argument("--all", action="store_true",
                       help="mọi tin tạm gác của kênh / every parked message of the channel")
    retry.set_defaults(func=queue_command(_retry, _VI))

    for name, paused, text in (("pause", True, "tạm dừng gửi / stop sending"),
                               ("resume", False, "gửi tiếp / resume sending")):
        p = actions.add_parser(name, parents=[common], help=f"{text} (một kênh / a channel)")
        p.add_argument("channel", help="tên kênh / channel name")
        p.set_defaults(func=queue_command(_pauser(paused), _VI))

    probe = actions.add_parser(
        "probe", parents=[common],
        help="kênh đã hoạt động lại: thử gửi ngay, không chờ hết thời gian ngắt mạch / the "
             "channel is back: probe it now instead of waiting out the breaker's cool-down")
    probe.add_argument("channel", help="tên kênh / channel name")
    probe.set_defaults(func=queue_command(_probe, _VI))

    consent = actions.add_parser(
        "consent", parents=[common],
        help="ghi nhận phụ huynh đồng ý / rút đồng ý / record a guardian's consent or withdrawal")
    consent.add_argument("guardian", type=int, metavar="GUARDIAN_ID")
    choice = consent.add_mutually_exclusive_group(required=True)
    choice.add_argument("--grant", action="store_true", help="đồng ý / consent given")
    choice.add_argument("--withdraw", action="store_true", help="rút đồng ý / withdrawn")
    consent.add_argument("--source", required=True,
                         help="nguồn (vd. phiếu giấy ngày …) / source (e.g. paper form of …)")
    consent.set_defaults(func=queue_command(_consent, _VI))

    optout = actions.add_parser(
        "opt-out", parents=[common],
        help="tắt (hoặc bật lại) một loại tin cho phụ huynh / turn a kind off (or on again)")
    optout.add_argument("guardian", type=int, metavar="GUARDIAN_ID")
    optout.add_argument("kind", choices=NOTIFY_KINDS)
    optout.add_argument("--undo", action="store_true", help="bật lại / turn it back on")
    optout.add_argument("--source", required=True, help="nguồn / source")
    optout.set_defaults(func=queue_command(_opt_out, _VI))

    purge = actions.add_parser(
        "purge", parents=[common],
        help="xoá dữ liệu cá nhân (khi rút đồng ý) / remove personal data (consent withdrawn)")
    who = purge.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", metavar="ID")
    who.add_argument("--guardian", type=int, metavar="ID")
    purge.set_defaults(func=queue_command(_purge, _VI))


def _local(config: GatewayConfig, ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, config.timezone).strftime("%Y-%m-%d %H:%M:%S")


def _channel(config: GatewayConfig, name: str) -> str:
    names = {c.name for c in config.notify.channels}
    if name not in names:
        raise OutboxError("unknown_target", f"{name!r} is not a [[notify.channel]]; configured: "
                                            f"{', '.join(sorted(names)) or '(none)'}")
    return name


def _status(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    now = system_clock()
    today = dt.datetime.fromtimestamp(now / 1000, config.timezone).date()
    found = notify.status(conn, since_ms=to_ms(dt.datetime.combine(
        today, dt.time(), tzinfo=config.timezone)))
    configured = {c.name: c for c in config.notify.channels}
    names = list(configured) + sorted(n for n in found if n not in configured)
    out = []
    for name in names:
        s = found.get(name, TargetStatus(name))
        c = configured.get(name)
        out.append({"channel": name, "type": c.type if c else None,
                    "enabled": bool(c and c.enabled), "paused": s.paused,
                    "pending": s.pending, "parked": s.parked,
                    "delivered_today": s.delivered_since, "breaker": s.breaker.state,
                    "last_error": s.breaker.last_error})
    if args.json:
        print_json(out)
        return 0
    if not names:
        print("Chưa cấu hình kênh nào / no [[notify.channel]] configured")
        return 0
    rows = [("KÊNH / CHANNEL", "LOẠI / TYPE", "CHỜ / PENDING", "TẠM GÁC / PARKED",
             "ĐÃ GỬI HÔM NAY / DELIVERED TODAY", "NGẮT MẠCH / BREAKER", "TẠM DỪNG / PAUSED")]
    for o in out:
        rows.append((str(o["channel"]), str(o["type"] or "-"), str(o["pending"]),
                     str(o["parked"]), str(o["delivered_today"]), str(o["breaker"]),
                     "có / yes" if o["paused"] else "không / no"))
    print_table(rows)
    return 0


def _list(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _channel(config, args.channel)
    if args.limit < 1:
        raise OutboxError("bad_value", "--limit must be at least 1")
    found = notify.messages(conn, name, args.state, args.limit)
    if args.json:
        print_json([{k: v for k, v in vars(m).items() if k != "text"} for m in found])
        return 0
    if not found:
        print(f"{name}: không có tin nào / no {args.state} messages")
        return 0
    rows = [("TIN / ITEM", "MÃ / MESSAGE ID", "LOẠI / KIND", "HỌC SINH / STUDENT",
             "PHỤ HUYNH / GUARDIAN", "NGÀY / DATE", "LẦN / TRIES", "LÝ DO / REASON")]
    for m in found:
        rows.append((str(m.item_id), m.message_id[:12], m.kind, m.student_id or "-",
                     str(m.guardian_id or "staff"), m.school_date, str(m.attempts),
                     m.parked_reason or m.last_error or "-"))
    print_table(rows)
    return 0


def _audit(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    found = notify.decisions(conn, student_id=args.student, guardian_id=args.guardian,
                             school_date=args.date, limit=args.limit)
    if args.json:
        print_json([vars(d) for d in found])
        return 0
    if not found:
        print("Không có quyết định nào / no decisions")
        return 0
    rows = [("LÚC / AT", "LOẠI / KIND", "HỌC SINH / STUDENT", "PHỤ HUYNH / GUARDIAN",
             "KẾT QUẢ / OUTCOME", "LÝ DO / REASON", "GỬI / DELIVERY")]
    for d in found:
        vi, en = notify.REASONS.get(d.reason, (d.reason, d.reason))
        rows.append((_local(config, d.decided_ms), f"{d.kind} ({d.change})",
                     d.student_id or "-", str(d.guardian_id or "-"), d.outcome,
                     f"{d.reason}: {vi} / {en}", d.state or "-"))
    print_table(rows)
    return 0


def _retry(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _channel(config, args.channel)
    if bool(args.items) == bool(args.all):
        raise OutboxError("bad_value", "give the ITEM numbers or --all (one of them)")
    retried = notify.retry_parked(conn, name, None if args.all else args.items, system_clock())
    if args.json:
        print_json({"channel": name, "retried": retried})
        return 0
    print(f"{name}: {len(retried)} tin đã về hàng chờ / messages back to pending")
    return 0


def _pauser(paused: bool) -> Handler:
    def handler(args: argparse.Namespace, config: GatewayConfig,
                conn: sqlite3.Connection) -> int:
        name = _channel(config, args.channel)
        changed = notify.pause(conn, name, paused, system_clock())
        if args.json:
            print_json({"channel": name, "paused": paused, "changed": changed})
        elif not changed:
            print(f"{name}: không đổi / unchanged ({'paused' if paused else 'running'})")
        else:
            print(f"{name}: {'đã tạm dừng / paused' if paused else 'gửi tiếp / resumed'}")
        return 0
    return handler


def _probe(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _channel(config, args.channel)
    now = system_clock()
    done = request_probe(conn, name, now, table=notify.TARGETS_TABLE, items="notify_messages",
                         column="channel")
    if args.json:
        print_json({"channel": name, "probe_ms": done.probe_ms,
                     "was_probe_ms": done.was_probe_ms, "released": done.released,
                     "paused": done.paused})
        return 0
    print_probe(name, done, now,
                resume=f"attendance-gateway notify resume --config {args.config} {name}")
    return 0


def _consent(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    changed = notify.set_consent(conn, args.guardian, bool(args.grant), args.source,
                                 system_clock())
    if args.json:
        print_json({"guardian": args.guardian, "consent": bool(args.grant),
                     "changed": changed})
    elif args.grant:
        print(f"Phụ huynh {args.guardian}: đã ghi nhận đồng ý / consent recorded"
              + ("" if changed else " (đã có / already)"))
    else:
        print(f"Phụ huynh {args.guardian}: đã rút đồng ý, tin chưa gửi bị huỷ / consent "
              "withdrawn, unsent messages cancelled" + ("" if changed else " (đã có / already)"))
    return 0


def _opt_out(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    changed = notify.set_opt_out(conn, args.guardian, args.kind, not args.undo, args.source,
                                 system_clock())
    if args.json:
        print_json({"guardian": args.guardian, "kind": args.kind, "opted_out": not args.undo,
                     "changed": changed})
    else:
        state = "bật / on" if args.undo else "tắt / off"
        print(f"Phụ huynh {args.guardian}: {args.kind} {state}"
              + ("" if changed else " (không đổi / unchanged)"))
    return 0


def _purge(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    counts = notify.purge(conn, student_id=args.student, guardian_id=args.guardian,
                          now_ms=system_clock())
    subject: dict[str, Any] = ({"student": args.student} if args.student is not None
                               else {"guardian": args.guardian})
    if args.json:
        print_json({**subject, "removed": counts})
        return 0
    who = (f"học sinh / student {args.student}" if args.student is not None
           else f"phụ huynh / guardian {args.guardian}")
    print(f"Đã xoá dữ liệu cá nhân của {who} / personal data removed:")
    for table, count in counts.items():
        print(f"  {table}: {count} — {_TABLE_VI[table]} / {_TABLE_EN[table]}")
    print("Giữ lại cho kiểm tra (không có tên, số điện thoại) / kept for audit (no names or "
          "phone numbers): notify_decisions, guardian_consent_log")
    return 0
