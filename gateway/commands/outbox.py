"""``attendance-gateway outbox``: what waits for each upstream target, what is parked and why;
retry parked items, pause and resume a target, probe a target whose breaker is open
(``gateway/outbox.py``).

The commands change the database only; the running gateway picks the change up within a second.
Text tables with Vietnamese / English headers by default, ``--json`` for tools. Student ids are
shown (the operator needs them to fix the roster), names never.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
from typing import Any

from gateway import outbox
from gateway.commands import add_config_argument, print_json, print_table, queue_command
from gateway.config import GatewayConfig
from gateway.forwarders import ForwardTarget
from gateway.outbox import Item, OutboxError, TargetStatus
from gateway.rules import to_ms
from gateway.types import system_clock

_VI = {
    "unknown_target": "Không có đích chuyển tiếp này",
    "not_parked": "Không gửi lại được",
    "bad_value": "Giá trị không hợp lệ",
    "not_open": "Không cần thử lại",
}
_STATE_VI = {"pending": "chờ gửi", "delivered": "đã gửi", "parked": "tạm gác",
             "superseded": "đã có bản mới hơn"}
_BREAKER_VI = {"closed": "đóng", "open": "mở", "half_open": "đang thử"}
_KIND_VI = {"check_in": "vào", "check_out": "ra", "late": "muộn", "absent": "vắng",
            "unknown_card": "thẻ lạ"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "outbox", help="hàng đợi gửi lên hệ thống cấp trên / the outboxes to upstream systems",
        description="Xem và điều khiển việc gửi điểm danh lên các hệ thống cấp trên "
                    "([[forward]]) / see and steer the delivery of attendance to upstream "
                    "targets ([[forward]])")
    actions = parser.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    common.add_argument("--json", action="store_true",
                        help="in JSON cho máy đọc / print JSON for tools")

    status = actions.add_parser(
        "status", parents=[common],
        help="mỗi đích: chờ, tạm gác, đã gửi hôm nay, ngắt mạch / per target: pending, parked, "
             "delivered today, breaker")
    status.set_defaults(func=queue_command(_status, _VI))

    listing = actions.add_parser(
        "list", parents=[common],
        help="các mục chờ gửi (hoặc tạm gác) của một đích / a target's pending (or parked) items")
    listing.add_argument("target", help="tên đích / target name ([[forward]] name)")
    listing.add_argument("--parked", action="store_true",
                         help="các mục tạm gác và lý do / parked items and why")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="số mục / how many (default 50)")
    listing.set_defaults(func=queue_command(_list, _VI))

    retry = actions.add_parser(
        "retry", parents=[common],
        help="gửi lại các mục tạm gác (sau khi sửa danh sách) / send parked items again "
             "(after fixing the roster)")
    retry.add_argument("target", help="tên đích / target name")
    retry.add_argument("items", type=int, nargs="*", metavar="ITEM",
                       help="số mục / item numbers (outbox list --parked)")
    retry.add_argument("--all", action="store_true",
                       help="mọi mục tạm gác của đích / every parked item of the target")
    retry.set_defaults(func=queue_command(_retry, _VI))

    pause = actions.add_parser(
        "pause", parents=[common],
        help="tạm dừng gửi tới một đích (vẫn xếp hàng) / stop sending to a target (items still "
             "queue up)")
    pause.add_argument("target", help="tên đích / target name")
    pause.set_defaults(func=queue_command(_pause, _VI))

    resume = actions.add_parser("resume", parents=[common],
                                help="gửi tiếp tới một đích / resume sending to a target")
    resume.add_argument("target", help="tên đích / target name")
    resume.set_defaults(func=queue_command(_resume, _VI))

    probe = actions.add_parser(
        "probe", parents=[common],
        help="đích đã hoạt động lại: thử gửi ngay, không chờ hết thời gian ngắt mạch / the "
             "target is back: probe it now instead of waiting out the breaker's cool-down")
    probe.add_argument("target", help="tên đích / target name")
    probe.set_defaults(func=queue_command(_probe, _VI))


def _configured(config: GatewayConfig) -> dict[str, ForwardTarget]:
    return {t.name: t for t in config.forward}


def _target(config: GatewayConfig, conn: sqlite3.Connection, name: str, *,
            configured_only: bool) -> str:
    """``name`` if it is a target of the configuration (or, unless ``configured_only``, one
    the database still has items of); else OutboxError ``unknown_target``."""
    known = set(_configured(config))
    if name in known:
        return name
    if not configured_only and name in outbox.known_targets(conn):
        return name
    listed = ", ".join(sorted(known)) or "(none)"
    raise OutboxError("unknown_target",
                      f"{name!r} is not a [[forward]] target of {_config_name(config)}; "
                      f"configured: {listed}")


def _config_name(config: GatewayConfig) -> str:
    return str(config.path) if config.path is not None else "the configuration"


def _local(config: GatewayConfig, ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, config.timezone).strftime("%Y-%m-%d %H:%M:%S")


def _age(ms: int) -> str:
    """A duration for people: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    s = max(0, ms // 1000)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


# -- status ------------------------------------------------------------------------------------


def _status_json(name: str, target: ForwardTarget | None, s: TargetStatus,
                 now_ms: int) -> dict[str, Any]:
    b = s.breaker
    return {
        "target": name, "type": target.type if target else None, "configured": target is not None,
        "enabled": target.enabled if target else False, "paused": s.paused,
        "paused_ms": s.paused_ms, "pending": s.pending, "parked": s.parked,
        "delivered_today": s.delivered_since, "oldest_pending_ms": s.oldest_pending_ms,
        "oldest_pending_age_s": None if s.oldest_pending_ms is None
        else max(0, (now_ms - s.oldest_pending_ms) // 1000),
        "breaker": b.state, "consecutive_failures": b.failures,
        "breaker_opened_ms": b.opened_ms, "breaker_probe_ms": b.probe_ms,
        "last_error": b.last_error, "last_failure_ms": b.failure_ms,
        "last_success_ms": b.success_ms,
    }


def _status(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    now = system_clock()
    today = dt.datetime.fromtimestamp(now / 1000, config.timezone).date()
    midnight = to_ms(dt.datetime.combine(today, dt.time(), tzinfo=config.timezone))
    found = outbox.status(conn, since_ms=midnight)
    configured = _configured(config)
    names = list(configured) + sorted(n for n in found if n not in configured)
    if args.json:
        print_json([_status_json(n, configured.get(n), found.get(n, TargetStatus(n)), now)
                     for n in names])
        return 0
    if not names:
        print("Chưa cấu hình đích chuyển tiếp nào / no [[forward]] targets configured")
        return 0
    rows = [("ĐÍCH / TARGET", "LOẠI / TYPE", "CHỜ / PENDING", "TẠM GÁC / PARKED",
             "ĐÃ GỬI HÔM NAY / DELIVERED TODAY", "CŨ NHẤT / OLDEST", "NGẮT MẠCH / BREAKER",
             "TRẠNG THÁI / STATE")]
    notes = []
    for name in names:
        target = configured.get(name)
        s = found.get(name, TargetStatus(name))
        if target is None:
            state = "không còn cấu hình / not configured"
        elif not target.enabled:
            state = "tắt / disabled"
        elif s.paused:
            state = "tạm dừng / paused"
        else:
            state = "đang gửi / running"
        oldest = "-" if s.oldest_pending_ms is None else _age(now - s.oldest_pending_ms)
        b = s.breaker
        rows.append((name, target.type if target else "-", str(s.pending), str(s.parked),
                     str(s.delivered_since), oldest, f"{b.state} ({_BREAKER_VI[b.state]})",
                     state))
        if b.state != "closed" or b.failures:
            probe = f"; thử lại lúc / next probe {_local(config, b.probe_ms)}" \
                if b.state == "open" and b.probe_ms else ""
            notes.append(f"{name}: {b.failures} lỗi liên tiếp / failures in a row, gần nhất / "
                         f"last: {b.last_error or '-'}{probe}")
        if s.parked:
            notes.append(f"{name}: {s.parked} mục tạm gác, xem lý do / parked, see why: "
                         f"attendance-gateway outbox list --config {args.config} {name} --parked")
    print_table(rows)
    for note in notes:
        print(note)
    return 0


# -- list --------------------------------------------------------------------------------------


def _item_json(item: Item) -> dict[str, Any]:
    return {
        "item": item.item_id, "target": item.target, "state": item.state, "kind": item.kind,
        "school_date": item.school_date, "session": item.session, "at_ms": item.at_ms,
        "student_id": item.student_id, "class_id": item.class_id, "event_key": item.event_key,
        "revision": item.revision, "change": item.change,
        "idempotency_key": item.idempotency_key, "attempts": item.attempts,
        "next_attempt_ms": item.next_attempt_ms if item.state == "pending" else None,
        "last_error": item.last_error, "parked_reason": item.parked_reason,
        "created_ms": item.created_ms, "updated_ms": item.updated_ms,
        "delivered_ms": item.delivered_ms, "upstream_id": item.upstream_id,
    }


def _list(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _target(config, conn, args.target, configured_only=False)
    if args.limit < 1:
        raise OutboxError("bad_value", "--limit must be at least 1")
    state: outbox.ItemState = "parked" if args.parked else "pending"
    found = outbox.items(conn, name, state, args.limit)
    if args.json:
        print_json([_item_json(i) for i in found])
        return 0
    if not found:
        print(f"{name}: không có mục nào {_STATE_VI[state]} / no {state} items")
        return 0
    now = system_clock()
    last = ("TỪ / SINCE", "LÝ DO / REASON") if args.parked else ("GỬI LẠI / NEXT", "LỖI / ERROR")
    rows = [("MỤC / ITEM", "SỰ KIỆN / EVENT", "NGÀY / DATE", "BUỔI / SESSION",
             "HỌC SINH / STUDENT", "LỚP / CLASS", "BẢN / VERSION", "LẦN / TRIES", *last)]
    for i in found:
        if args.parked:
            tail = (_local(config, i.updated_ms), i.parked_reason or "-")
        else:
            due = "ngay / now" if i.next_attempt_ms <= now else _local(config, i.next_attempt_ms)
            tail = (due, i.last_error or "-")
        rows.append((str(i.item_id), f"{i.kind} ({_KIND_VI.get(i.kind, i.kind)})",
                     i.school_date, i.session, i.student_id or "-", i.class_id or "-",
                     f"{i.revision} {i.change}", str(i.attempts), *tail))
    print_table(rows)
    if len(found) == args.limit:
        print(f"… có thể còn nữa / there may be more: --limit {args.limit * 2}")
    if args.parked:
        print(f"Gửi lại sau khi sửa / retry once fixed: attendance-gateway outbox retry --config "
              f"{args.config} {name} ITEM… | --all")
    return 0


# -- retry, pause, resume ----------------------------------------------------------------------


def _retry(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _target(config, conn, args.target, configured_only=True)
    if bool(args.items) == bool(args.all):
        raise OutboxError("bad_value", "give the ITEM numbers or --all (one of them)")
    retried = outbox.retry_parked(conn, name, None if args.all else args.items, system_clock())
    if args.json:
        print_json({"target": name, "retried": retried})
        return 0
    if not retried:
        print(f"{name}: không có mục nào tạm gác / nothing parked")
        return 0
    shown = ", ".join(str(i) for i in retried[:20]) + (" …" if len(retried) > 20 else "")
    print(f"{name}: {len(retried)} mục đã về hàng chờ / items back to pending: {shown}")
    print("Cổng đang chạy sẽ gửi lại trong giây lát / the running gateway sends them within a "
          "second")
    return 0


def _set_paused(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection,
                paused: bool) -> int:
    name = _target(config, conn, args.target, configured_only=True)
    changed = outbox.set_paused(conn, name, paused, system_clock())
    if args.json:
        print_json({"target": name, "paused": paused, "changed": changed})
        return 0
    if not changed:
        print(f"{name}: đã {'tạm dừng' if paused else 'đang gửi'} từ trước / already "
              f"{'paused' if paused else 'running'}")
    elif paused:
        print(f"{name}: đã tạm dừng / paused — cổng đang chạy ngừng gửi trong giây lát, sự kiện "
              "mới vẫn được xếp hàng / the running gateway stops sending within a second; new "
              "events still queue up")
    else:
        print(f"{name}: gửi tiếp / resumed — cổng đang chạy gửi tiếp trong giây lát / the "
              "running gateway resumes within a second")
    return 0


def _pause(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    return _set_paused(args, config, conn, True)


def _resume(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    return _set_paused(args, config, conn, False)


# -- probe -------------------------------------------------------------------------------------


def print_probe(name: str, done: outbox.ProbeRequest, now_ms: int, *, resume: str) -> None:
    """What ``probe`` did, for people (``outbox probe``, ``notify probe``)."""
    if done.was_probe_ms is not None and done.was_probe_ms > now_ms:
        was = f"thay vì sau / instead of in {_age(done.was_probe_ms - now_ms)}"
    else:
        was = "đã đến hạn từ trước / it was already due"
    print(f"{name}: ngắt mạch đang mở ({done.failures} lỗi liên tiếp, gần nhất: "
          f"{done.last_error or '-'}) / breaker open ({done.failures} failures in a row, last: "
          f"{done.last_error or '-'})")
    print(f"{name}: thử gửi ngay / probe due now — {was}")
    if done.released:
        print(f"{name}: {done.released} mục chờ thử lại được gửi ngay làm lần thử / item waiting "
              "out its backoff made due for the probe")
    if done.paused:
        print(f"{name}: đang tạm dừng, chưa thử cho đến khi gửi tiếp / paused: no probe until "
              f"resumed ({resume})")
    else:
        print("Cổng đang chạy thử trong giây lát; nếu được, hàng chờ sẽ gửi tiếp / the running "
              "gateway probes within a second; if the target answers, the backlog flows")


def _probe(args: argparse.Namespace, config: GatewayConfig, conn: sqlite3.Connection) -> int:
    name = _target(config, conn, args.target, configured_only=True)
    now = system_clock()
    done = outbox.request_probe(conn, name, now)
    if args.json:
        print_json({"target": name, "probe_ms": done.probe_ms,
                     "was_probe_ms": done.was_probe_ms, "released": done.released,
                     "paused": done.paused})
        return 0
    print_probe(name, done, now,
                resume=f"attendance-gateway outbox resume --config {args.config} {name}")
    return 0
