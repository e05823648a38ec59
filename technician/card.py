"""``attendance-card``: decode what a card reader captured into canonical IDs and printed forms.

``decode`` takes one capture; ``watch PORT`` runs the reader's diagnostic loop
(``firmware/diag.py``) over its serial console and decodes every capture it prints. Uses the same
protocol code as the reader, so what it prints is what the gateway will store.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from protocol import card, cardforms
from protocol.errors import ProtocolError

FORMATS = {
    "em4100-uart": "khung UART RDM6300 dạng hex (02 … 03) / RDM6300 UART frame as hex (02 … 03)",
    "em4100": "mã EM4100 40 bit, 10 chữ số hex / 40-bit EM4100 ID as 10 hex digits",
    "iso14443a": "UID thẻ MIFARE 4, 7 hoặc 10 byte dạng hex / MIFARE UID of 4, 7 or 10 bytes, hex",
    "wiegand": "chuỗi bit Wiegand 26, 34 hoặc 37 bit / Wiegand bit string of 26, 34 or 37 bits",
}


def _hex(text: str) -> bytes:
    cleaned = re.sub(r"[\s:.-]", "", text)
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ProtocolError("bad_framing", f"not hexadecimal: {text!r}") from None


def decode(fmt: str, capture: str) -> dict[str, Any]:
    """The canonical card ID and printed forms of one capture, as a JSON-ready dict."""
    if fmt == "em4100-uart":
        uid = bytearray(5)
        card.em4100_frame_into(_hex(capture), uid)
        tech = card.EM4100
    elif fmt in ("em4100", "iso14443a"):
        uid = bytearray(_hex(capture))
        tech = card.EM4100 if fmt == "em4100" else card.ISO14443A
    elif fmt == "wiegand":
        bits = re.sub(r"\s", "", capture)
        if not bits or set(bits) - {"0", "1"}:
            raise ProtocolError("bad_framing", "a Wiegand capture is a string of 0 and 1")
        uid = bytearray(5)
        tech = card.wiegand_into(bytes(int(b) for b in bits), len(bits), uid)
        uid = uid[: (len(bits) - 2 + 7) // 8]
    else:
        raise ValueError(f"unknown format {fmt}")
    card.check_uid(tech, uid)
    return {"tech": card.TECH_NAMES[tech], "uid": uid.hex().upper(), "uid_len": len(uid),
            "forms": cardforms.printed_forms(tech, uid)}


def watch_row(line: str) -> tuple[str, str, str, str] | None:
    """``(format, capture, canonical id, printed forms)`` of one ``W|ticks|format|capture`` line
    from the reader, None for other lines (the start and end markers included)."""
    parts = line.strip().split("|", 3)
    if len(parts) != 4 or parts[0] != "W" or parts[2] in ("start", "end"):
        return None
    fmt, capture = parts[2], parts[3]
    if fmt == "error":
        return fmt, capture, "-", "-"
    try:
        if fmt.startswith("uid-"):
            tech = card.tech_code(fmt[4:])
            uid = bytearray(_hex(capture))
            card.check_uid(tech, uid)
            result: dict[str, Any] = {"tech": fmt[4:], "uid": uid.hex().upper(),
                                      "forms": cardforms.printed_forms(tech, uid)}
        else:
            result = decode(fmt, capture)
    except (ProtocolError, ValueError) as exc:
        detail = f"{exc.code}: {exc.detail}" if isinstance(exc, ProtocolError) else str(exc)
        return fmt, capture, f"không hợp lệ / invalid ({detail})", "-"
    forms = ", ".join(f"{k}={v}" for k, v in result["forms"].items())
    return fmt, capture, f"{result['tech']}:{result['uid']}", forms


def watch(port: str, seconds: int) -> int:
    from technician.device import Device, DeviceError

    code = (f"from firmware import diag, hw_esp32\n"
            f"diag.watch(hw_esp32, '/', {int(seconds)})\n")
    print("Đặt thẻ lên đầu đọc, Ctrl-C để dừng / tap cards, Ctrl-C stops", flush=True)
    print(f"{'FORMAT':<12} {'CAPTURE':<30} {'CANONICAL ID':<30} PRINTED FORMS", flush=True)
    try:
        with Device(port) as device:
            try:
                for line in device.stream(code, seconds + 5 if seconds > 0 else 10 ** 9):
                    row = watch_row(line)
                    if row is not None:
                        print(f"{row[0]:<12} {row[1]:<30} {row[2]:<30} {row[3]}", flush=True)
                    elif line.startswith("W|") and "|end|" in line:
                        break
                    elif line.startswith(("Traceback", "OSError", "ImportError")):
                        print(f"Lỗi trên thiết bị / error on the device: {line}",
                              file=sys.stderr)
            except KeyboardInterrupt:
                device.interrupt()
    except DeviceError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="attendance-card",
        description="Chẩn đoán thẻ / card diagnostics: decode a capture into the canonical card "
        "ID and the numbers printed on cards, as JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dec = commands.add_parser("decode", help="giải mã một lần đọc / decode one capture")
    dec.add_argument("--format", required=True, choices=sorted(FORMATS),
                     help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    dec.add_argument("capture", nargs="+", help="dữ liệu đọc được / the captured data")
    wat = commands.add_parser(
        "watch", help="xem mọi lần đọc của đầu đọc đang nối / show every capture of a "
                      "connected reader, decoded")
    wat.add_argument("port", help="cổng nối tiếp / serial port, e.g. /dev/ttyUSB0")
    wat.add_argument("--seconds", type=int, default=0,
                     help="dừng sau N giây (0: đến Ctrl-C) / stop after N s (0: until Ctrl-C)")
    args = parser.parse_args(argv)
    if args.command == "watch":
        return watch(args.port, args.seconds)
    try:
        result = decode(args.format, " ".join(args.capture))
    except ProtocolError as exc:
        print(json.dumps({"error": exc.code, "detail": exc.detail}, ensure_ascii=False))
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
