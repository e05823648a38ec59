"""Card diagnostics on the reader's serial console, for ``attendance-card watch``.

``watch(hw)`` polls the reader named by the board profile and prints one line per capture::

    W|<ticks_ms>|<format>|<capture>

``format`` is one of ``technician/card.py``'s formats: ``em4100-uart`` (every RDM6300 frame as
received, STX to ETX in hex, also the bad ones: a frame with a wrong checksum is exactly what the
technician is looking for), ``iso14443a`` (the MFRC522's UID, once per presentation) or
``uid-<tech>`` (a Wiegand frame decoded by the driver: tech name and UID hex). ``W|<ticks>|
error|<text>`` reports a reader fault. The laptop decodes the captures with the protocol code.
Ctrl-C on the console stops it; ``seconds`` > 0 stops it after that long.
"""

import json
import time

from firmware.fs import FS, join
from firmware.ticks import ticks_diff, ticks_ms
from protocol import card

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_POLL_MS = 20
_STX = 0x02
_ETX = 0x03
_FRAME_MAX = 14


def _emit(fmt: str, capture: str) -> None:
    print("W|" + str(ticks_ms()) + "|" + fmt + "|" + capture)


def _profile(root: str) -> "Any":
    fs = FS(sync=False)
    raw = fs.read_file(join(root, "config.json"))
    if raw is None:
        raise OSError("config.json is missing: run attendance-provision configure")
    board = json.loads(raw)["board"]
    raw = fs.read_file(join(root, "boards/" + board + ".json"))
    if raw is None:
        raise OSError("boards/" + board + ".json is missing: run attendance-provision deploy")
    return json.loads(raw)


def _uart_frames(hw: "Any", spec: "Any", until: "Any") -> None:
    uart = hw.build_reader_uart(spec)
    frame = bytearray()
    chunk = bytearray(64)
    while until():
        n = uart.readinto(chunk) or 0
        for i in range(n):
            b = chunk[i]
            if b == _STX:
                frame = bytearray()
            frame.append(b)
            if b == _ETX or len(frame) >= _FRAME_MAX:
                _emit("em4100-uart", frame.hex())
                frame = bytearray()
        time.sleep_ms(_POLL_MS)


def _driver(hw: "Any", profile: "Any", until: "Any") -> None:
    reader = hw.build_reader(profile)
    last = b""
    faulty = False
    while until():
        n = reader.poll(ticks_ms())
        if reader.fault != faulty:
            faulty = reader.fault
            _emit("error", "reader fault" if faulty else "reader recovered")
        uid = bytes(reader.uid[:n])
        if n and uid != last:
            if reader.tech == card.ISO14443A:
                _emit("iso14443a", uid.hex())
            else:
                _emit("uid-" + card.TECH_NAMES[reader.tech], uid.hex())
        if profile["reader"]["type"] == "mfrc522":
            last = uid  # a held card is one presentation; Wiegand sends one frame per tap
        time.sleep_ms(_POLL_MS)


def watch(hw: "Any", root: str = "/", seconds: int = 0) -> None:
    profile = _profile(root)
    start = ticks_ms()

    def until() -> bool:
        return seconds <= 0 or ticks_diff(ticks_ms(), start) < seconds * 1000

    print("W|" + str(start) + "|start|" + profile["reader"]["type"])
    try:
        if profile["reader"]["type"] == "rdm6300":
            _uart_frames(hw, profile["reader"], until)
        else:
            _driver(hw, profile, until)
    except KeyboardInterrupt:
        pass
    print("W|" + str(ticks_ms()) + "|end|")
