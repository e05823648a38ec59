"""``attendance-provision``: turn a blank ESP32 into a registered gate reader (docs/technician.md).

``flash`` writes MicroPython, ``deploy`` copies the reader's code, ``configure`` writes its
configuration and a fresh key and registers the key with the gateway, ``selftest`` checks the
board, ``replace`` moves a reader id to a new board. The key and the MQTT password never appear
on screen, in argv or in logs: they go to the board over the raw REPL and to the gateway on the
gateway command's stdin.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from firmware.board import BoardError, load_profile
from firmware.config import ConfigError, ReaderConfig
from firmware.net import check_network
from technician import deploy as deploy_mod
from technician import flash as flash_mod
from technician.device import Device, DeviceError
from technician.gateway_link import DEFAULT_CONFIG, DEFAULT_PREFIX, Gateway, GatewayError

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

KEY_LEN = 32
_STAGED = ("/config.json.new", "/key.bin.new")

# Runs on the board: put the staged files in place; a new identity starts with an empty queue
# and, after a replacement, a boot counter above the last boot the gateway saw (the firmware's
# own BootCounter writes it, so the format is the firmware's).
_COMMIT = """import os
from firmware.fs import FS
from firmware.bootcount import BootCounter
from firmware.selftest import remove_tree
remove_tree("/data")
fs = FS()
fs.makedirs('/data/queue')
if {floor}:
    BootCounter(fs, '/data').advance(floor={floor})
os.rename('/key.bin.new', '/key.bin')
os.rename('/config.json.new', '/config.json')
print('committed')"""


class ProvisionError(Exception):
    """A refusal; ``str()`` is bilingual."""


def _fail(message: str) -> int:
    errors.print(f"[bold red]✗[/] {message}", markup=True, soft_wrap=True)
    return 1


@contextmanager
def _progress() -> Iterator[Callable[[int, int], Callable[[int], None]]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        def start(total: int, files: int) -> Callable[[int], None]:
            task = bar.add_task(f"Chép / copying {files} tệp / files", total=total)
            return lambda n: bar.advance(task, n)
        yield start


# -- flash ----------------------------------------------------------------------------------------


def cmd_flash(args: argparse.Namespace) -> int:
    try:
        image = flash_mod.read_image(args.image)
        console.print(f"Ảnh / image: {image.path.name}, {image.size} bytes, chip {image.chip}, "
                      f"ghi tại / written at 0x{image.offset:x}")
        flash_mod.flash(args.port, args.image, before=args.before, attempts=args.attempts,
                        baud=args.baud)
    except flash_mod.FlashError as exc:
        return _fail(str(exc))
    console.print("[green]✓[/] Đã nạp MicroPython / MicroPython written. Tiếp theo / next: "
                  f"attendance-provision deploy {args.port}")
    return 0


# -- deploy ---------------------------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        with Device(args.port) as device, _progress() as progress:
            todo = deploy_mod.deploy(device, force=args.force, progress=progress)
    except (DeviceError, deploy_mod.DeployError) as exc:
        return _fail(str(exc))
    console.print(f"[green]✓[/] {len(todo.write)} tệp đã chép / files copied, {todo.unchanged} "
                  f"không đổi / unchanged, {len(todo.delete)} tệp cũ đã xóa / stale files "
                  "deleted")
    return 0


# -- configure and replace --------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The reader's config.json (without secrets) and its board profile's text."""

    config: dict[str, Any]
    profile_name: str
    profile_text: str


def _profile(args: argparse.Namespace, quiet: bool = False) -> tuple[str, str, dict[str, Any]]:
    path = args.board_file or deploy_mod.BOARDS / f"{args.board}.json"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        known = ", ".join(sorted(p.stem for p in deploy_mod.BOARDS.glob("*.json")))
        raise ProvisionError(f"Không có hồ sơ bo mạch / no board profile {path} (có / known: "
                             f"{known})") from None
    try:
        profile, warnings = load_profile(text)
    except BoardError as exc:
        raise ProvisionError(f"Hồ sơ bo mạch sai / bad board profile {path}: {exc}") from None
    for warning in [] if quiet else warnings:
        console.print(f"[yellow]![/] {warning}")
    return str(profile["name"]), text, profile


def _settings(args: argparse.Namespace, school: str, gate: str, mqtt_password: str) -> Settings:
    name, text, profile = _profile(args)
    kind = profile["network"]["type"]
    config: dict[str, Any] = {"reader_id": args.reader_id, "school": school, "gate": gate,
                              "board": name}
    if args.debounce_ms is not None:
        config["debounce_ms"] = args.debounce_ms
    if kind == "rs485":
        if args.bus_address is None:
            raise ProvisionError("Bo RS-485 cần --bus-address / an RS-485 board needs "
                                 "--bus-address")
        config["bus_address"] = args.bus_address
    else:
        if not args.broker:
            raise ProvisionError("Cần --broker (địa chỉ IP của cổng) / --broker is required "
                                 "(the gateway's IP address)")
        network: dict[str, Any] = {"broker": args.broker, "port": args.broker_port,
                                   "mqtt_password": mqtt_password}
        if kind == "wifi":
            if not args.wifi_ssid:
                raise ProvisionError("Bo Wi-Fi cần --wifi-ssid / a Wi-Fi board needs --wifi-ssid")
            network["ssid"] = args.wifi_ssid
            network["password"] = _wifi_password(args)
        try:
            for warning in check_network(network, kind):
                console.print(f"[yellow]![/] {warning}")
        except ConfigError as exc:
            raise ProvisionError(f"Cấu hình mạng sai / bad network settings: {exc}") from None
        config["network"] = network
    try:
        ReaderConfig(dict(config))
    except ConfigError as exc:
        raise ProvisionError(f"Cấu hình sai / bad configuration: {exc}") from None
    return Settings(config, name, text)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class _RefusePassword(argparse.Action):
    """``--wifi-password VALUE``: refused without repeating VALUE, which would put the password
    on screen (and, unlisted, argparse would take it as ``--wifi-password-env``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        raise argparse.ArgumentError(self, "không nhập mật khẩu trên dòng lệnh; dùng "
                                           "--wifi-password-env VAR hoặc trả lời câu hỏi / never "
                                           "type a password on the command line: use "
                                           "--wifi-password-env VAR or answer the prompt")


def _wifi_password(args: argparse.Namespace) -> str:
    if args.wifi_password_env is not None:
        name = args.wifi_password_env
        if not _ENV_NAME.fullmatch(name):  # perhaps the password itself: never shown
            raise ProvisionError("--wifi-password-env: cần tên biến môi trường / needs the name "
                                 "of an environment variable, e.g. WIFI_PASSWORD")
        value = os.environ.get(name)
        if value is None:
            raise ProvisionError(f"Biến môi trường / environment variable {name} is not set")
        return value
    if sys.stdin.isatty():
        return getpass.getpass("Mật khẩu Wi-Fi / Wi-Fi password: ")
    raise ProvisionError("Không có mật khẩu Wi-Fi: dùng --wifi-password-env VAR (biến rỗng cho "
                         "mạng mở) hoặc chạy trên terminal / no Wi-Fi password: give "
                         "--wifi-password-env VAR (an empty variable for an open network) or "
                         "run it at a terminal")


def _check_device(device: Device, wipe: bool) -> None:
    try:
        device.exec("import firmware.main, firmware.selftest")
    except DeviceError:
        raise ProvisionError("Thiết bị chưa có mã đầu đọc: chạy deploy trước / the reader's "
                             "code is not on the board: run attendance-provision deploy "
                             "first") from None
    current = device.read_file("/config.json")
    if current is not None and not wipe:
        try:
            reader = json.loads(current).get("reader_id")
        except ValueError:
            reader = "?"
        raise ProvisionError(
            f"Bo mạch đã được cấu hình cho đầu đọc {reader}; dùng --wipe để xóa (mất hàng đợi "
            f"chưa gửi) / the board is already configured as reader {reader}; --wipe erases it "
            "(and its unsent queue)")


def _provision(args: argparse.Namespace, replace: bool) -> int:
    gateway = Gateway(args.gateway, args.gateway_config)
    mqtt_password = secrets.token_urlsafe(24)
    key = secrets.token_bytes(KEY_LEN)
    try:
        _profile(args, quiet=True)  # a bad profile is refused before anything is touched
        with Device(args.port) as device:
            _check_device(device, args.wipe)
            if replace:
                known = gateway.check_existing(args.reader_id)
                gate = known["gate"]
            else:
                known = gateway.check_new(args.reader_id, args.name)
                gate = args.gate
            settings = _settings(args, known["school"], gate, mqtt_password)
            state = "có sẵn / registered" if replace else "còn trống / free"
            console.print(f"Cổng / gateway: trường / school {known['school']}, mã / id "
                          f"{args.reader_id} {state}")
            device.write_file(f"/boards/{settings.profile_name}.json",
                              settings.profile_text.encode())
            device.write_file("/config.json.new", json.dumps(settings.config).encode())
            device.write_file("/key.bin.new", key)
            try:
                if replace:
                    done = gateway.replace(args.reader_id, key, mqtt_password)
                else:
                    done = gateway.enrol(args.reader_id, args.name, gate, key, mqtt_password)
            except GatewayError:
                device.remove(list(_STAGED))
                raise
            _commit(device, gateway, args.reader_id, done)
    except (ProvisionError, DeviceError, GatewayError) as exc:
        return _fail(str(exc))
    floor = done["last_boot"]
    what = "đã chuyển sang bo mạch mới / moved to this board" if replace \
        else "đã đăng ký / registered"
    console.print(f"[green]✓[/] Đầu đọc / reader {args.reader_id} ({gate}) {what}, khóa / key "
                  f"#{done['key_id']}"
                  + (f"; khóa cũ đã thu hồi, bắt đầu sau lần khởi động {floor} / old keys "
                     f"revoked, boots continue after {floor}" if replace else ""))
    console.print("Tiếp theo trên cổng / next, on the gateway: attendance-gateway readers "
                  "broker-config … && systemctl reload mosquitto; rồi / then: "
                  f"attendance-provision selftest {args.port}")
    return 0


def _commit(device: Device, gateway: Gateway, reader_id: int, done: dict[str, Any]) -> None:
    """Put the staged files in place; if that fails, take the registration back."""
    try:
        out = device.exec(_COMMIT.format(floor=int(done["last_boot"])))
        if "committed" not in out:
            raise DeviceError(f"unexpected answer {out!r}")
    except DeviceError as exc:
        try:
            gateway.undo(reader_id, int(done["key_id"]))
        except GatewayError as undo_exc:
            raise ProvisionError(
                f"Ghi thiết bị thất bại ({exc}) VÀ không hủy được đăng ký ({undo_exc}): chạy "
                f"`attendance-gateway readers enrol {reader_id} --undo {done['key_id']}` trên "
                f"cổng / writing the board failed AND undoing the registration failed: run that "
                "command on the gateway") from None
        raise ProvisionError(f"Ghi thiết bị thất bại, đã hủy đăng ký ở cổng / writing the board "
                             f"failed, the registration was undone: {exc}") from None


def cmd_configure(args: argparse.Namespace) -> int:
    return _provision(args, replace=False)


def cmd_replace(args: argparse.Namespace) -> int:
    return _provision(args, replace=True)


# -- selftest -------------------------------------------------------------------------------------

_STATE = {"PASS": "[green]ĐẠT / PASS[/]", "FAIL": "[bold red]LỖI / FAIL[/]",
          "SKIP": "[yellow]BỎ QUA / SKIP[/]"}
_CHECKS = {"config": "cấu hình / config", "board": "bo mạch / board profile",
           "reader": "đầu đọc thẻ / card reader", "feedback": "còi, đèn / buzzer, LEDs",
           "flash": "bộ nhớ flash / flash queue", "link": "kết nối / link to broker"}
SELFTEST_CODE = "from firmware import selftest, hw_esp32\nselftest.start(hw_esp32)\n"


def run_selftest(device: Device, timeout: float) -> list[tuple[str, str, str]]:
    """``(check, PASS|FAIL|SKIP, detail)`` rows; an exception on the board is a failed row."""
    rows: list[tuple[str, str, str]] = []
    traceback = False
    for line in device.stream(SELFTEST_CODE, timeout):
        parts = line.split("|", 3)
        if len(parts) >= 3 and parts[0] == "ST":
            if parts[1] == "END":
                return rows
            rows.append((parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
        elif line.startswith("Traceback"):
            traceback = True
        elif traceback and re.match(r"\w+(Error|Exception)\b", line):
            rows.append(("selftest", "FAIL", line))
            return rows
    rows.append(("selftest", "FAIL", f"không xong sau / unfinished after {timeout:g} s"))
    return rows


def cmd_selftest(args: argparse.Namespace) -> int:
    try:
        with Device(args.port) as device:
            rows = run_selftest(device, args.timeout)
    except DeviceError as exc:
        return _fail(str(exc))
    table = Table(title=f"Tự kiểm tra / self-test: {args.port}")
    for column in ("Mục / check", "Kết quả / result", "Chi tiết / detail"):
        table.add_column(column)
    for check, state, detail in rows:
        table.add_row(_CHECKS.get(check, check), _STATE.get(state, state), detail)
    console.print(table)
    failed = sum(state == "FAIL" for _, state, _ in rows)
    if failed:
        return _fail(f"{failed} mục lỗi / checks failed")
    console.print("[green]✓[/] Mọi mục đạt / all checks passed")
    return 0


# -- the CLI --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attendance-provision",
        description="Nạp và cài đặt đầu đọc / flash and provision a reader (docs/technician.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("flash", help="nạp MicroPython / write the MicroPython image")
    p.add_argument("port", help="cổng nối tiếp / serial port, e.g. /dev/ttyUSB0")
    p.add_argument("image", type=Path, help="ảnh firmware / firmware .bin (ESP32_GENERIC)")
    p.add_argument("--before", default="default-reset",
                   choices=["default-reset", "usb-reset", "no-reset"],
                   help="cách vào chế độ nạp / how to enter the bootloader")
    p.add_argument("--attempts", type=int, default=7, help="số lần kết nối / connect attempts")
    p.add_argument("--baud", type=int, default=460800, help="tốc độ ghi / write baud rate")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("deploy", help="dịch và chép mã đầu đọc / compile and copy the code")
    p.add_argument("port")
    p.add_argument("--force", action="store_true",
                   help="chép lại mọi tệp / copy every file again")
    p.set_defaults(func=cmd_deploy)

    for name, func, helptext in (
            ("configure", cmd_configure, "cấu hình và đăng ký đầu đọc mới / configure and "
                                         "register a new reader"),
            ("replace", cmd_replace, "chuyển mã đầu đọc sang bo mạch mới / move a reader id "
                                     "to a new board")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("port")
        p.add_argument("--reader-id", type=int, required=True, help="mã đầu đọc / reader id")
        if name == "configure":
            p.add_argument("--name", required=True, help="tên duy nhất / unique name")
            p.add_argument("--gate", required=True, help="cổng trường / gate")
        board = p.add_mutually_exclusive_group(required=True)
        board.add_argument("--board", help="hồ sơ trong / profile in hardware/boards")
        board.add_argument("--board-file", type=Path, help="tệp hồ sơ riêng / own profile")
        p.add_argument("--broker", help="IP của cổng (MQTT) / the gateway's IP (MQTT broker)")
        p.add_argument("--broker-port", type=int, default=1883)
        p.add_argument("--wifi-ssid")
        p.add_argument("--wifi-password-env", metavar="VAR",
                       help="đọc mật khẩu Wi-Fi từ biến môi trường / read the Wi-Fi password "
                            "from this environment variable (else it is asked)")
        p.add_argument("--wifi-password", nargs="?", action=_RefusePassword,
                       help=argparse.SUPPRESS)
        p.add_argument("--bus-address", type=int, help="địa chỉ RS-485 / RS-485 address")
        p.add_argument("--debounce-ms", type=int)
        p.add_argument("--wipe", action="store_true",
                       help="xóa cấu hình và hàng đợi cũ trên bo / erase an old config and queue")
        p.add_argument("--gateway", default=os.environ.get("ATTENDANCE_GATEWAY", DEFAULT_PREFIX),
                       help="lệnh gọi CLI của cổng / gateway CLI command prefix, e.g. "
                            "'ssh pi@10.0.0.2 sudo -u attendance attendance-gateway' "
                            "(env ATTENDANCE_GATEWAY)")
        p.add_argument("--gateway-config", default=DEFAULT_CONFIG,
                       help=f"gateway.toml trên cổng / on the gateway (default {DEFAULT_CONFIG})")
        p.set_defaults(func=func)

    p = sub.add_parser("selftest", help="tự kiểm tra trên bo / self-test on the board")
    p.add_argument("port")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return _fail("Đã dừng / interrupted")
    return status


if __name__ == "__main__":
    sys.exit(main())
