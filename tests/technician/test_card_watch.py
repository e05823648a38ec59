"""``attendance-card watch``: the reader's diagnostic loop (firmware/diag.py) on a virtual board,
its captures decoded on the laptop with the protocol code; ``decode`` keeps working."""

from __future__ import annotations

import json

import pytest

from technician import card
from tests.technician.conftest import WIRING
from tests.technician.vboard import VirtualBoard

CONFIG = b'{"board": "%s"}'
GOOD = b"\x02" + b"0102030405" + b"01" + b"\x03"  # EM4100 ID 0102030405, XOR checksum 01
BAD = b"\x02" + b"0102030405" + b"FF" + b"\x03"


@pytest.mark.slow
def test_watch_prints_each_mfrc522_presentation_once(
        board_image: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    files = {**board_image, "/config.json": CONFIG % b"esp32-devkitc-mfrc522"}
    with VirtualBoard(WIRING, files=files) as board:
        assert card.main(["watch", board.port, "--seconds", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("iso14443a")]
    assert len(rows) == 1
    assert rows[0][:3] == ["iso14443a", "04a1b2c3d4e5f6", "iso14443a:04A1B2C3D4E5F6"]


@pytest.mark.slow
def test_watch_shows_every_rdm6300_frame_also_the_bad_ones(
        board_image: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    files = {**board_image, "/config.json": CONFIG % b"esp32-devkitc-rdm6300"}
    wiring = {"uart": {"2": (b"\x55" + GOOD + BAD).hex()}}
    with VirtualBoard(wiring, files=files) as board:
        assert card.main(["watch", board.port, "--seconds", "1"]) == 0
    out = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("em4100-uart")]
    assert len(out) == 2
    assert out[0].split()[2] == "em4100:0102030405"
    assert "không hợp lệ / invalid (bad_crc: EM4100 frame checksum mismatch)" in out[1]


def test_watch_rows_decode_with_the_protocol_code() -> None:
    assert card.watch_row("W|12|start|mfrc522") is None
    row = card.watch_row("W|15|uid-wiegand26|0102a3")
    assert row is not None and row[2] == "wiegand26:0102A3" and "decimal" in row[3]
    assert card.watch_row("W|16|error|reader fault") == ("error", "reader fault", "-", "-")


def test_watch_on_a_missing_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert card.main(["watch", "/dev/ttyUSB-missing", "--seconds", "1"]) == 2
    assert "cannot open port /dev/ttyUSB-missing" in capsys.readouterr().err


def test_decode_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert card.main(["decode", "--format", "em4100-uart", GOOD.hex()]) == 0
    assert json.loads(capsys.readouterr().out)["uid"] == "0102030405"
