"""Card identity at the gateway: the canonical id of a tap and the roster's printed numbers.

A tap carries the canonical UID (SPEC.md section 3.1); rosters carry whatever is printed on the
card or typed by a desk reader. A roster number is normalised once on import; a tap matches a
student when any printed form of its canonical id equals a stored number.
"""

from __future__ import annotations

import re
import sqlite3

from protocol import card, cardforms

_SEPARATORS = re.compile(r"[\s:.\-]")
_DIGITS = re.compile(r"[0-9]+")


def card_id(tech: str | int, uid: bytes) -> str:
    """The canonical card id stored with scans: ``'<tech>:<UID upper hex>'``."""
    name = card.TECH_NAMES[tech] if isinstance(tech, int) else tech
    return f"{name}:{uid.hex().upper()}"


def parse_card_id(text: str) -> tuple[int, bytes]:
    name, _, hexed = text.partition(":")
    tech = card.tech_code(name)
    uid = bytes.fromhex(hexed)
    card.check_uid(tech, uid)
    return tech, uid


def normalize_number(text: str) -> str:
    """A roster's card number as stored: upper case, no spaces or separators.

    Decimal numbers keep their digits as printed (a 10-digit EM4100 number keeps its leading
    zeros); a "facility,number" pair loses the leading zeros of each part ("044,09000" and
    "44,9000" are the same card).
    """
    number = _SEPARATORS.sub("", text).upper()
    facility, comma, rest = number.partition(",")
    # ASCII digits only, zeros stripped as text: int() would take other scripts' digits and
    # raise ValueError on a cell of more than 4300 digits
    if comma and _DIGITS.fullmatch(facility) and _DIGITS.fullmatch(rest):
        return f"{facility.lstrip('0') or '0'},{rest.lstrip('0') or '0'}"
    return number


def printed_numbers(card_text: str) -> list[str]:
    """Every normalised number a card with this canonical id may appear as in a roster."""
    tech, uid = parse_card_id(card_text)
    forms = cardforms.printed_forms(tech, uid)
    numbers = {normalize_number(v) for v in forms.values()}
    for value in forms.values():  # decimals are also written without leading zeros
        if value.isdecimal():
            numbers.add(str(int(value)))
    return sorted(numbers)


def student_for_card(conn: sqlite3.Connection, card_text: str) -> str | None:
    """The student whose roster number matches the card, or None (an unknown card)."""
    numbers = printed_numbers(card_text)
    marks = ",".join("?" * len(numbers))
    rows = conn.execute(
        f"SELECT DISTINCT student_id FROM card_numbers WHERE number IN ({marks})", numbers
    ).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None
