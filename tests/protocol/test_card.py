"""Canonical card IDs, reader captures and printed forms (protocol/card.py) and attendance-card."""

from __future__ import annotations

import functools
import json
import operator
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import card, cardforms
from protocol.errors import ProtocolError


def em4100_frame(uid: bytes, checksum: int | None = None) -> bytes:
    check = functools.reduce(operator.xor, uid) if checksum is None else checksum
    return b"\x02" + uid.hex().upper().encode() + f"{check:02X}".encode() + b"\x03"


def wiegand_bits(nbits: int, data: int, break_parity: str = "") -> bytes:
    ndata = nbits - 2
    bits = [(data >> (ndata - 1 - i)) & 1 for i in range(ndata)]
    even_span, odd_start = {26: (13, 13), 34: (17, 17), 37: (19, 18)}[nbits]
    frame = [0, *bits, 0]
    frame[0] = sum(frame[1:even_span]) & 1
    frame[-1] = 1 - (sum(frame[odd_start:-1]) & 1)
    if break_parity == "even":
        frame[0] ^= 1
    if break_parity == "odd":
        frame[-1] ^= 1
    return bytes(frame)


def test_em4100_frame_keeps_all_40_bits() -> None:
    out = bytearray(5)
    card.em4100_frame_into(em4100_frame(bytes.fromhex("ff002c8a91")), out)
    assert out == bytes.fromhex("ff002c8a91")  # version byte kept: no 32-bit truncation


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (em4100_frame(bytes.fromhex("0f002c8a91"), checksum=0x00), "bad_crc"),
        (em4100_frame(bytes.fromhex("0f002c8a91"))[:-1] + b"\x02", "bad_framing"),
        (b"\x02" + b"0G002C8A9138" + b"\x03", "bad_framing"),
        (em4100_frame(bytes.fromhex("0f002c8a91"))[1:], "bad_framing"),
    ],
)
def test_em4100_frame_errors(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        card.em4100_frame_into(frame, bytearray(5))
    assert info.value.code == code


@given(st.sampled_from([26, 34, 37]), st.data())
def test_wiegand_round_trip(nbits: int, data: st.DataObject) -> None:
    value = data.draw(st.integers(0, (1 << (nbits - 2)) - 1))
    out = bytearray(5)
    tech = card.wiegand_into(wiegand_bits(nbits, value), nbits, out)
    n = (nbits - 2 + 7) // 8
    assert tech == {26: card.WIEGAND26, 34: card.WIEGAND34, 37: card.WIEGAND37}[nbits]
    assert int.from_bytes(out[:n], "big") == value
    card.check_uid(tech, out[:n])
    for broken in ("even", "odd"):
        with pytest.raises(ProtocolError) as info:
            card.wiegand_into(wiegand_bits(nbits, value, broken), nbits, bytearray(5))
        assert info.value.code == "bad_crc"


def test_wiegand_unsupported_length() -> None:
    with pytest.raises(ProtocolError, match="bad_card"):
        card.wiegand_into(bytes(30), 30, bytearray(5))


def test_printed_forms() -> None:
    assert cardforms.printed_forms(card.EM4100, bytes.fromhex("0f002c8a91")) == {
        "hex": "0F002C8A91", "decimal10": "0002919057", "facility_number": "044,35473"}
    assert cardforms.printed_forms(card.ISO14443A, bytes.fromhex("04a1b2c3")) == {
        "hex": "04A1B2C3", "decimal": "77705923", "reversed_decimal": "3283263748"}
    assert cardforms.printed_forms(card.WIEGAND26, bytes.fromhex("7b3039")) == {
        "hex": "7B3039", "decimal": "8073273", "facility_number": "123,12345"}
    forms = cardforms.printed_forms
    assert forms(card.WIEGAND37, bytes.fromhex("07ffffffff"))["facility_number"] == "65535,524287"
    assert forms(card.WIEGAND34, bytes.fromhex("04d23039"))["facility_number"] == "1234,12345"


def test_card_functions_on_micropython(mpvm: Any) -> None:
    frame = em4100_frame(bytes.fromhex("0f002c8a91"))
    bits = wiegand_bits(26, (123 << 16) | 12345)
    code = f"""
from protocol import card, cardforms
out = bytearray(5)
card.em4100_frame_into({frame!r}, out)
print(out.hex(), cardforms.printed_forms(card.EM4100, out)["decimal10"])
tech = card.wiegand_into({bits!r}, 26, out)
print(tech, out[:3].hex(), cardforms.printed_forms(tech, out[:3])["facility_number"])
print(cardforms.printed_forms(card.ISO14443A, bytes([4, 0xa1, 0xb2, 0xc3]))["reversed_decimal"])
"""
    assert mpvm.run(code).split() == ["0f002c8a91", "0002919057", "3", "7b3039", "123,12345",
                                      "3283263748"]


def _cli(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "technician.card", *args],
                         capture_output=True, text=True, timeout=30)
    return out.returncode, json.loads(out.stdout)


def test_attendance_card_decode_cli() -> None:
    frame = em4100_frame(bytes.fromhex("0f002c8a91")).hex(" ")
    code, result = _cli("decode", "--format", "em4100-uart", *frame.split())
    assert code == 0
    assert result == {"tech": "em4100", "uid": "0F002C8A91", "uid_len": 5,
                      "forms": {"hex": "0F002C8A91", "decimal10": "0002919057",
                                "facility_number": "044,35473"}}
    bits = "".join(str(b) for b in wiegand_bits(34, (1234 << 16) | 12345))
    code, result = _cli("decode", "--format", "wiegand", bits)
    assert (code, result["tech"], result["forms"]["facility_number"]) == (0, "wiegand34",
                                                                          "1234,12345")
    code, result = _cli("decode", "--format", "iso14443a", "04:22:4B:E2:A1:3C:80")
    assert (code, result["uid_len"]) == (0, 7)
    code, result = _cli("decode", "--format", "iso14443a", "04A1B2")
    assert (code, result["error"]) == (2, "bad_card")
    code, result = _cli("decode", "--format", "wiegand", "10102")
    assert (code, result["error"]) == (2, "bad_framing")
