"""Card-format decoders: RDM6300 EM4100 UART frames, Wiegand bit trains, the technician's
``attendance-card decode`` and the printed numbers of rosters (``gateway/cards.py``).

Input: a selector byte, then bytes. Properties:

- ``em4100_frame_into`` and ``wiegand_into`` raise nothing but ``ProtocolError``; what they accept
  is a canonical UID (``check_uid``) that encodes back to exactly the frame or bit train;
- ``technician.card.decode`` raises nothing but ``ProtocolError`` for any text;
- ``normalize_number`` never raises and is idempotent; a roster cell ``parse_card_number``
  accepts normalises to itself;
- every printed form of a canonical card that a roster accepts is among the numbers a tap of
  that card is matched with (``printed_numbers``): what is printed on a card finds its student.
"""

from __future__ import annotations

import contextlib
import sys

from fuzz.common import Bug
from gateway import cards
from gateway.roster import _Bad, parse_card_number
from protocol import card, cardforms
from protocol.errors import ProtocolError
from technician import card as technician_card

TECHS = ("em4100", "iso14443a", "wiegand26", "wiegand34", "wiegand37")
UID_LENGTHS = {"em4100": (5,), "iso14443a": (4, 7, 10), "wiegand26": (3,), "wiegand34": (4,),
               "wiegand37": (5,)}
FORMATS = ("em4100-uart", "em4100", "iso14443a", "wiegand")
WIEGAND = {card.WIEGAND26: (26, 13, 13), card.WIEGAND34: (34, 17, 17),
           card.WIEGAND37: (37, 19, 18)}  # tech: (bits, even parity span, odd parity start)


def em4100_frame(uid: bytes) -> bytes:
    check = 0
    for byte in uid:
        check ^= byte
    return b"\x02" + (uid.hex() + f"{check:02x}").upper().encode() + b"\x03"


def wiegand_bits(tech: int, uid: bytes) -> bytes:
    total, even_span, odd_start = WIEGAND[tech]
    data = total - 2
    value = int.from_bytes(uid, "big")
    bits = [0] + [(value >> (data - 1 - i)) & 1 for i in range(data)] + [0]
    bits[0] = sum(bits[1:even_span]) & 1
    bits[-1] = 1 - (sum(bits[odd_start:total - 1]) & 1)
    return bytes(bits)


def em4100(frame: bytes) -> None:
    uid = bytearray(5)
    try:
        card.em4100_frame_into(frame, uid)
    except ProtocolError:
        return
    card.check_uid(card.EM4100, uid)
    if em4100_frame(bytes(uid)) != frame.upper():
        raise Bug(f"EM4100 frame {frame!r} decodes to {uid.hex()}, which encodes otherwise")


def wiegand(bits: bytes) -> None:
    uid = bytearray(card.MAX_UID_LEN)
    try:
        tech = card.wiegand_into(bits, len(bits), uid)
    except ProtocolError:
        return
    size = (len(bits) - 2 + 7) // 8
    card.check_uid(tech, uid[:size])
    if wiegand_bits(tech, bytes(uid[:size])) != bits:
        raise Bug(f"Wiegand bits {bits.hex()} decode to {uid[:size].hex()}, not back")


def technician(fmt: str, text: str) -> None:
    with contextlib.suppress(ProtocolError):
        technician_card.decode(fmt, text)


def roster_number(text: str) -> None:
    number = cards.normalize_number(text)
    if cards.normalize_number(number) != number:
        raise Bug(f"normalize_number is not idempotent on {text!r}")
    try:
        stored = parse_card_number(text)
    except _Bad:
        return
    if parse_card_number(stored) != stored:
        raise Bug(f"roster card number {text!r} is stored as {stored!r}, which reads otherwise")


def printed(tech_name: str, uid: bytes) -> None:
    canonical = cards.card_id(tech_name, uid)
    numbers = set(cards.printed_numbers(canonical))
    for form in cardforms.printed_forms(card.tech_code(tech_name), uid).values():
        try:
            stored = parse_card_number(form)
        except _Bad:
            continue
        if stored not in numbers:
            raise Bug(f"{canonical}: printed {form!r} is stored as {stored!r}, which a tap "
                      f"never matches ({sorted(numbers)})")


def check(data: bytes) -> None:
    if not data:
        return
    selector, rest = data[0] % 6, data[1:]
    text = rest.decode("utf-8", "replace")
    if selector == 0:
        em4100(rest)
    elif selector == 1:
        wiegand(bytes(b & 1 for b in rest))
    elif selector == 2 and rest:
        technician(FORMATS[rest[0] % len(FORMATS)], text[1:])
    elif selector == 3:
        roster_number(text)
    elif selector == 4 and rest:
        tech = TECHS[rest[0] % len(TECHS)]
        sizes = UID_LENGTHS[tech]
        size = sizes[rest[0] // len(TECHS) % len(sizes)]
        uid = bytearray(rest[1:1 + size].ljust(size, b"\x00"))
        if tech == "wiegand37":
            uid[0] &= 0x07
        printed(tech, bytes(uid))
    elif selector == 5:
        # the text forms a technician types: one path through every decoder
        for fmt in FORMATS:
            technician(fmt, text)


def seeds() -> list[bytes]:
    out = [b"\x00" + em4100_frame(bytes.fromhex("0A1B2C3D4E")),
           b"\x00" + em4100_frame(bytes.fromhex("0A1B2C3D4E")).lower()]
    for tech in (card.WIEGAND26, card.WIEGAND34, card.WIEGAND37):
        uid = bytes.fromhex("05FFFF1234")[-((WIEGAND[tech][0] - 2 + 7) // 8):]
        out.append(b"\x01" + wiegand_bits(tech, uid))
    out += [b"\x02\x00" + em4100_frame(bytes(5)).hex().encode(), b"\x02\x01 0a1b2c3d4e",
            b"\x02\x02 04:A1:B2:C3", b"\x02\x03" + b"10" * 13]
    out += [b"\x03" + t.encode() for t in ("0x04A1B2C3", "0012345678", "044,09000",
                                          "04-A1-B2-C3-D4-E5-F6", "123,45")]
    out += [b"\x04" + bytes((i,)) + bytes(range(0xA0, 0xAA)) for i in range(10)]
    out += [b"\x05" + b"02 30 41 31 42 32 43 33 44 34 45 30 30 03"]
    return out


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
