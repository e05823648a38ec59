"""``attendance-gateway readers``: register, list, rotate and revoke readers; broker files;
commands to readers (``command``, ``commands``: ``gateway/reader_commands.py``).

``add`` and ``rotate`` print the reader's new key and MQTT password once, for the technician to
provision the reader; no other command ever prints a secret. ``enrol`` is the machine interface of
``attendance-provision``: the key and MQTT password it made come in as JSON on stdin (never in
argv), the answer is one JSON object on stdout without secrets.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway import db, reader_commands
from gateway.broker_config import (
    DEFAULT_ACL_FILE,
    DEFAULT_PASSWORD_FILE,
    BrokerConfigError,
    write_broker_files,
)
from gateway.commands import add_config_argument
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.keystore import KeystoreError
from gateway.reader_commands import CONFIG_RANGES, Command, CommandError
from gateway.registry import Credentials, Reader, Registry, RegistryError
from gateway.types import system_clock

_VI = {
    "bad_value": "Giá trị không hợp lệ",
    "duplicate_id": "Mã đầu đọc này đã được đăng ký",
    "duplicate_name": "Tên này đã được dùng",
    "bus_address_taken": "Địa chỉ trên bus đã thuộc đầu đọc khác",
    "unknown_reader": "Chưa đăng ký đầu đọc này",
    "reader_revoked": "Đầu đọc đã bị thu hồi",
    "no_master_key": "Thiếu tệp khóa chủ",
    "seq_exhausted": "Đã dùng hết số thứ tự lệnh",
}

# ``readers command READER ACTION``: the protocol's opcode for each action (SPEC §7.1)
_ACTIONS = {"set-time": "set_time", "set-config": "set_config", "heartbeat": "request_heartbeat",
            "reboot": "reboot"}
_CONFIG_HELP = {
    "debounce_ms": "bỏ qua thẻ lặp lại trong N ms / ignore a repeated card for N ms",
    "volume": "âm lượng còi, %% / buzzer volume, %%",
    "heartbeat_s": "nhịp tim mỗi N giây / heartbeat every N seconds",
    "batch_max_records": "số bản ghi tối đa mỗi gói / records per batch at most",
}
_STATUS_VI = {
    "pending": "chờ gửi", "sent": "đã gửi", "ok": "thành công", "unknown_opcode": "không hỗ trợ",
    "bad_args": "tham số sai", "stale": "lệnh cũ, bỏ qua", "failed": "thất bại",
    "expired": "hết hạn", "cancelled": "đã hủy",
}
_WAIT_POLL_S = 0.2


def _reload_hint(config_file: Path) -> str:
    return (f"Tiếp theo / next: sudo attendance-gateway readers broker-config --config "
            f"{config_file} --owner mosquitto && sudo systemctl reload mosquitto")


Handler = Callable[[argparse.Namespace, GatewayConfig, Registry], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "readers", help="đầu đọc, khóa và tài khoản MQTT / readers, keys and MQTT accounts",
        description="Quản lý đầu đọc và khóa / manage readers and their keys")
    actions = parser.add_subparsers(dest="readers_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true",
                         help="in JSON cho máy đọc / print JSON for tools")

    add = actions.add_parser(
        "add", parents=[common, as_json],
        help="đăng ký đầu đọc mới, in khóa một lần / register a reader, print its key once")
    add.add_argument("reader_id", type=int, help="mã đầu đọc / reader id (1..4294967294)")
    add.add_argument("--name", required=True,
                     help="tên duy nhất / unique name, e.g. 'Cổng chính 1'")
    add.add_argument("--gate", required=True, help="cổng / gate (1-32 ký tự / characters)")
    add.add_argument("--bus-port", help="cổng RS-485 / RS-485 port, e.g. /dev/ttyUSB0")
    add.add_argument("--bus-address", type=int, help="địa chỉ RS-485 / RS-485 address (1..247)")
    add.set_defaults(func=_command(_add))

    listing = actions.add_parser("list", parents=[common, as_json],
                                 help="liệt kê đầu đọc (không in khóa) / list readers (no secrets)")
    listing.set_defaults(func=_command(_list))

    rotate = actions.add_parser(
        "rotate", parents=[common, as_json],
        help="khóa mới, khóa cũ chuyển sang 'retired' / new key, the old one is retired")
    rotate.add_argument("reader_id", type=int, help="mã đầu đọc / reader id")
    rotate.add_argument(
        "--finish", action="store_true",
        help="kết thúc đổi khóa: thu hồi các khóa 'retired' / finish a rotation: revoke the "
             "retired keys once the reader's older records are in")
    rotate.set_defaults(func=_command(_rotate))

    revoke = actions.add_parser(
        "revoke", parents=[common, as_json],
        help="thu hồi đầu đọc và mọi khóa của nó / revoke a reader and all its keys")
    revoke.add_argument("reader_id", type=int, help="mã đầu đọc / reader id")
    revoke.set_defaults(func=_command(_revoke))

    broker = actions.add_parser(
        "broker-config", parents=[common],
        help="ghi tệp mật khẩu và ACL cho Mosquitto / write Mosquitto's password file and ACL")
    broker.add_argument("--password-file", type=Path, default=DEFAULT_PASSWORD_FILE,
                        help=f"tệp mật khẩu / password file (default {DEFAULT_PASSWORD_FILE})")
    broker.add_argument("--acl-file", type=Path, default=DEFAULT_ACL_FILE,
                        help=f"tệp ACL / ACL file (default {DEFAULT_ACL_FILE})")
    broker.add_argument("--owner", metavar="USER",
                        help="chủ sở hữu tệp (cần root) / owner of the files (needs root), "
                             "e.g. mosquitto")
    broker.set_defaults(func=_command(_broker_config))

    command = actions.add_parser(
        "command", parents=[common, as_json],
        help="gửi lệnh tới đầu đọc / send a command to a reader",
        description="Xếp lệnh cho đầu đọc; cổng đang chạy gửi lệnh (đã ký) khi đầu đọc trực "
                    "tuyến / queue a command; the running gateway sends it, signed, once the "
                    "reader is online")
    command.add_argument("reader_id", type=int, help="mã đầu đọc / reader id")
    command.add_argument(
        "action", choices=list(_ACTIONS),
        help="set-time: đặt giờ theo cổng / set the reader's clock to the gateway's; "
             "set-config: đổi cấu hình / change its settings; heartbeat: gửi nhịp tim ngay / "
             "send a heartbeat now; reboot: khởi động lại / restart it")
    for name, (lowest, highest) in CONFIG_RANGES.items():
        command.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=int, metavar="N",
            help=f"set-config: {_CONFIG_HELP.get(name, name)} ({lowest}..{highest})")
    command.add_argument("--wait", type=float, default=0.0, metavar="S",
                         help="chờ kết quả tối đa S giây / wait up to S seconds for the result")
    command.set_defaults(func=_command(_send_command))

    enrol = actions.add_parser(
        "enrol", parents=[common],
        help="cho attendance-provision: đăng ký khóa do công cụ tạo (JSON qua stdin) / for "
             "attendance-provision: register a key it made (JSON on stdin)",
        description="Kiểm tra, đăng ký, chuyển bo mạch hoặc hủy đăng ký; trả lời JSON / check, "
                    "register, move to a new board or undo; answers JSON. Secrets: stdin "
                    '{"key_hex": ..., "mqtt_password": ...}')
    enrol.add_argument("reader_id", type=int, help="mã đầu đọc / reader id")
    mode = enrol.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="chỉ kiểm tra, không đổi gì / only check, change nothing")
    mode.add_argument("--replace", action="store_true",
                      help="bo mạch mới cho đầu đọc có sẵn / a new board for an existing reader")
    mode.add_argument("--undo", type=int, metavar="KEY_ID",
                      help="hủy lần đăng ký KEY_ID / undo the enrolment of KEY_ID")
    enrol.add_argument("--name", help="tên duy nhất (đầu đọc mới) / unique name (new reader)")
    enrol.add_argument("--gate", help="cổng (đầu đọc mới) / gate (new reader)")
    enrol.add_argument("--new", action="store_true",
                       help="với --check: mã phải còn trống / with --check: the id must be free")
    enrol.set_defaults(func=_enrol_command)

    history = actions.add_parser(
        "commands", parents=[common, as_json],
        help="các lệnh gần đây và trạng thái / recent commands and their status")
    history.add_argument("reader_id", type=int, nargs="?", help="mã đầu đọc / reader id")
    history.add_argument("--limit", type=int, default=20, metavar="N",
                         help="số lệnh / how many (default 20)")
    history.set_defaults(func=_command(_list_commands))


@contextlib.contextmanager
def _registry(config: GatewayConfig) -> Iterator[Registry]:
    conn = db.connect(config.database)
    try:
        yield Registry.open(conn, config.master_key_file)
    finally:
        conn.close()


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)  # ConfigError: reported by gateway/cli.py
        try:
            with _registry(config) as registry:
                return handler(args, config, registry)
        except (RegistryError, CommandError) as exc:
            print(f"{_VI.get(exc.code, 'Lỗi')} / {exc}", file=sys.stderr)
            return 1
        except (KeystoreError, BrokerConfigError, db.DatabaseError) as exc:
            print(f"Lỗi / Error: {exc}", file=sys.stderr)
            return 2
    return run


def _enrol_command(args: argparse.Namespace) -> int:
    """Every outcome is one JSON object: ``{"ok": true, ...}`` or ``{"ok": false, "code",
    "message"}`` (exit status 1), so the technician's tool never parses prose."""
    def fail(code: str, message: str) -> int:
        print(json.dumps({"ok": False, "code": code, "message": message,
                          "message_vi": _VI.get(code, "Lỗi")}, ensure_ascii=False))
        return 1

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail("config", str(exc))
    try:
        with _registry(config) as registry:
            result = _enrol(args, registry)
    except RegistryError as exc:
        return fail(exc.code, str(exc))
    except (KeystoreError, db.DatabaseError, OSError) as exc:
        return fail("gateway", str(exc))
    print(json.dumps({"ok": True, "school": config.school, **result}))
    return 0


def _secrets() -> tuple[bytes, str]:
    try:
        given = json.loads(sys.stdin.read())
        return bytes.fromhex(given["key_hex"]), str(given["mqtt_password"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError("bad_value", 'stdin must be {"key_hex": ..., "mqtt_password": ...}'
                            ) from None


def _enrol(args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    reader_id = args.reader_id
    known = {r.reader_id: r for r in registry.readers()}
    if args.undo is not None:
        return {"reader_id": reader_id, "undone": registry.undo_enrol(reader_id, args.undo)}
    if args.check:
        reader = known.get(reader_id)
        if args.new and reader is not None:
            raise RegistryError("duplicate_id", f"reader id {reader_id} is already registered")
        if not args.new:
            if reader is None:
                raise RegistryError("unknown_reader", f"reader {reader_id} is not registered")
            if reader.status != "active":
                raise RegistryError("reader_revoked", f"reader {reader_id} is revoked")
        names = {r.name for r in known.values()}
        if args.new and args.name in names:
            raise RegistryError("duplicate_name", f"the name {args.name!r} is already in use")
        return {"reader_id": reader_id, "registered": reader is not None,
                "gate": reader.gate if reader else None,
                "last_boot": registry.last_boot(reader_id) if reader else 0}
    key, password = _secrets()
    if args.replace:
        creds, last = registry.replace(reader_id, key, password)
        return {"reader_id": reader_id, "key_id": creds.key_id, "last_boot": last,
                "gate": registry.reader(reader_id).gate}
    if args.name is None or args.gate is None:
        raise RegistryError("bad_value", "a new reader needs --name and --gate")
    creds = registry.register(reader_id, args.name, args.gate, given=(key, password))
    return {"reader_id": reader_id, "key_id": creds.key_id, "last_boot": 0, "gate": args.gate}


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _print_credentials(args: argparse.Namespace, config: GatewayConfig, reader: Reader,
                       creds: Credentials, title: str) -> None:
    secrets_out = {"key_hex": creds.key.hex(), "mqtt_password": creds.mqtt_password}
    if args.json:
        _print_json({**_reader_json(reader), "school": config.school, "key_id": creds.key_id,
                     "mqtt_username": creds.mqtt_username, **secrets_out})
        return
    print(f"{title}: {reader.reader_id} “{reader.name}”, cổng / gate {reader.gate}")
    print("CHỈ HIỆN MỘT LẦN — nạp vào đầu đọc ngay / SHOWN ONCE — provision the reader now:")
    for label, value in (("reader_id", str(creds.reader_id)), ("school", config.school),
                         ("key_id", str(creds.key_id)), ("key (hex)", secrets_out["key_hex"]),
                         ("mqtt username", creds.mqtt_username),
                         ("mqtt password", creds.mqtt_password)):
        print(f"  {label:<14} {value}")
    print(_reload_hint(args.config))


def _add(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    ports = {bus.port for bus in config.rs485}
    if args.bus_port is not None and args.bus_port not in ports:
        raise RegistryError("bad_value", f"bus port {args.bus_port} is not an [[rs485]] port of "
                                         f"{args.config}")
    creds = registry.register(args.reader_id, args.name, args.gate, bus_port=args.bus_port,
                              bus_address=args.bus_address)
    _print_credentials(args, config, registry.reader(creds.reader_id), creds,
                       "Đã đăng ký đầu đọc / reader registered")
    return 0


def _rotate(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    if args.finish:
        count = registry.finish_rotation(args.reader_id)
        if args.json:
            _print_json({"reader_id": args.reader_id, "keys_revoked": count})
        else:
            print(f"Đầu đọc / reader {args.reader_id}: {count} khóa cũ đã thu hồi / retired "
                  "keys revoked")
        return 0
    creds = registry.rotate(args.reader_id)
    _print_credentials(args, config, registry.reader(creds.reader_id), creds,
                       "Đã đổi khóa / key rotated")
    return 0


def _revoke(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    registry.revoke(args.reader_id)
    if args.json:
        _print_json(_reader_json(registry.reader(args.reader_id)))
    else:
        print(f"Đã thu hồi đầu đọc / reader revoked: {args.reader_id}")
        print(_reload_hint(args.config))
    return 0


def _reader_json(reader: Reader) -> dict[str, Any]:
    return {
        "reader_id": reader.reader_id, "name": reader.name, "gate": reader.gate,
        "status": reader.status, "bus_port": reader.bus_port, "bus_address": reader.bus_address,
        "created_ms": reader.created_ms, "active_key_id": reader.active_key_id,
        "keys": [{"key_id": k.key_id, "state": k.state, "created_ms": k.created_ms,
                  "retired_ms": k.retired_ms, "revoked_ms": k.revoked_ms} for k in reader.keys],
    }


def _list(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    readers = registry.readers()
    if args.json:
        _print_json([_reader_json(r) for r in readers])
        return 0
    if not readers:
        print("Chưa có đầu đọc nào / no readers registered")
        return 0
    rows = [("ID", "TÊN / NAME", "CỔNG / GATE", "TRẠNG THÁI / STATUS", "BUS", "KHÓA / KEYS",
             "ĐĂNG KÝ / SINCE")]
    for r in readers:
        bus = f"{r.bus_port}#{r.bus_address}" if r.bus_port else "-"
        retired = sum(k.state == "retired" for k in r.keys)
        keys = f"#{r.active_key_id}" if r.active_key_id else "-"
        keys += f" (+{retired} retired)" if retired else ""
        since = dt.datetime.fromtimestamp(r.created_ms / 1000, config.timezone)
        rows.append((str(r.reader_id), r.name, r.gate, r.status, bus, keys,
                     since.strftime("%Y-%m-%d %H:%M")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _broker_config(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    if not config.mqtt.username or not config.mqtt.password:
        raise BrokerConfigError(
            f"{args.config}: set mqtt.username and mqtt.password_file: the gateway's own broker "
            "account goes into the password file")
    files = write_broker_files(
        registry, school=config.school, gateway_username=config.mqtt.username,
        gateway_password=config.mqtt.password, password_file=args.password_file,
        acl_file=args.acl_file, owner=args.owner)
    print(f"Đã ghi / wrote {files.password_file} ({len(files.readers)} đầu đọc / readers + "
          f"tài khoản cổng / gateway account '{config.mqtt.username}') và / and {files.acl_file}")
    print("Nạp lại Mosquitto / reload Mosquitto: sudo systemctl reload mosquitto")
    return 0


# -- commands to readers -------------------------------------------------------------------------


def _command_json(command: Command) -> dict[str, Any]:
    return {
        "reader_id": command.reader_id, "cmd_seq": command.cmd_seq, "opcode": command.opcode,
        "args": dict(command.args), "source": command.source, "issued_ms": command.issued_ms,
        "status": command.status, "attempts": command.attempts, "transport": command.transport,
        "sent_ms": command.sent_ms, "result_ms": command.result_ms, "detail": command.detail,
    }


def _args_text(command: Command) -> str:
    if command.opcode == "set_time" and not command.args:
        return "(giờ của cổng / gateway time)"
    return " ".join(f"{k}={v}" for k, v in sorted(command.args.items())) or "-"


def _status_text(status: str) -> str:
    return f"{status} ({_STATUS_VI[status]})" if status in _STATUS_VI else status


def _send_command(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    reader = registry.reader(args.reader_id)
    if reader.status != "active":
        raise RegistryError("reader_revoked", f"reader {args.reader_id} is revoked")
    opcode = _ACTIONS[args.action]
    values = {name: getattr(args, name) for name in CONFIG_RANGES
              if getattr(args, name) is not None}
    options = ", ".join("--" + name.replace("_", "-") for name in CONFIG_RANGES)
    if opcode == "set_config" and not values:
        raise CommandError("bad_value", f"set-config needs at least one of {options}")
    if opcode != "set_config" and values:
        raise CommandError("bad_value", f"{args.action} takes none of {options}")
    if args.wait < 0:
        raise CommandError("bad_value", "--wait must be 0 or more seconds")
    conn = db.connect(config.database)
    try:
        command = reader_commands.issue(conn, args.reader_id, opcode, values, system_clock(),
                                        "cli")
        waited = args.wait > 0
        if waited:
            deadline = time.monotonic() + args.wait
            while command.is_open and time.monotonic() < deadline:
                time.sleep(_WAIT_POLL_S)
                command = reader_commands.get(conn, command.command_id) or command
    finally:
        conn.close()
    failed = waited and command.status != "ok"
    if args.json:
        _print_json(_command_json(command))
        return 1 if failed else 0
    print(f"Đã xếp lệnh / command queued: đầu đọc / reader {command.reader_id} “{reader.name}”, "
          f"#{command.cmd_seq} {command.opcode} {_args_text(command)}")
    if not waited:
        print("Cổng đang chạy sẽ gửi lệnh khi đầu đọc trực tuyến / the running gateway sends it "
              "once the reader is online")
        print(f"Xem kết quả / see the result: attendance-gateway readers commands --config "
              f"{args.config} {command.reader_id}")
        return 0
    if command.is_open:
        print(f"Chưa có kết quả sau {args.wait:g} s / no result after {args.wait:g} s: "
              f"{_status_text(command.status)}", file=sys.stderr)
    elif failed:
        detail = f" — {command.detail}" if command.detail else ""
        print(f"Đầu đọc không thực hiện / not done: {_status_text(command.status)}{detail}",
              file=sys.stderr)
    else:
        print(f"Kết quả / result: {_status_text(command.status)}")
    return 1 if failed else 0


def _list_commands(args: argparse.Namespace, config: GatewayConfig, registry: Registry) -> int:
    if args.reader_id is not None:
        registry.reader(args.reader_id)  # unknown_reader
    if args.limit < 1:
        raise CommandError("bad_value", "--limit must be at least 1")
    conn = db.connect(config.database)
    try:
        commands = reader_commands.recent(conn, args.reader_id, args.limit)
    finally:
        conn.close()
    if args.json:
        _print_json([_command_json(c) for c in commands])
        return 0
    if not commands:
        print("Chưa có lệnh nào / no commands yet")
        return 0
    rows = [("ĐẦU ĐỌC / READER", "SỐ / SEQ", "LỆNH / COMMAND", "THAM SỐ / ARGS",
             "NGUỒN / SOURCE", "TRẠNG THÁI / STATUS", "GỬI / SENDS", "LÚC / ISSUED",
             "GHI CHÚ / DETAIL")]
    for c in commands:
        issued = dt.datetime.fromtimestamp(c.issued_ms / 1000, config.timezone)
        rows.append((str(c.reader_id), str(c.cmd_seq), c.opcode, _args_text(c), c.source,
                     _status_text(c.status), str(c.attempts),
                     issued.strftime("%Y-%m-%d %H:%M:%S"), c.detail or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
