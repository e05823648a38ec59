"""``attendance-card``: decode what a card reader captured into canonical IDs and printed forms.

Uses the same protocol code as the reader, so what it prints is what the gateway will store.
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
    args = parser.parse_args(argv)
    try:
        result = decode(args.format, " ".join(args.capture))
    except ProtocolError as exc:
        print(json.dumps({"error": exc.code, "detail": exc.detail}, ensure_ascii=False))
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
