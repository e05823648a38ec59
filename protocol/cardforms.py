"""The forms of a card ID that people see: printed on cards, typed by desk readers, in rosters.

Derived from the canonical UID (SPEC.md section 3.1) and never sent. Used by the gateway and the
technician's tools; the reader does not need it.
"""

from protocol.card import EM4100, ISO14443A, TECH_NAMES, WIEGAND26, WIEGAND34, WIEGAND37, check_uid
from protocol.errors import ProtocolError

# Wiegand facility/number split: (tech, facility bits, number bits).
_WIEGAND_FIELDS = ((WIEGAND26, 8, 16), (WIEGAND34, 16, 16), (WIEGAND37, 16, 19))


def _int(uid: "bytes | bytearray | memoryview", start: int = 0) -> int:
    value = 0
    for i in range(start, len(uid)):
        value = (value << 8) | uid[i]
    return value


def wiegand_fields(tech: int, uid: "bytes | bytearray | memoryview") -> "tuple[int, int]":
    """``(facility, card number)`` of a canonical Wiegand UID."""
    check_uid(tech, uid)
    for code, _facility_bits, number_bits in _WIEGAND_FIELDS:
        if code == tech:
            value = _int(uid)
            return value >> number_bits, value & ((1 << number_bits) - 1)
    raise ProtocolError("bad_card", TECH_NAMES[tech] + " has no facility code")


def _pad(value: int, width: int) -> str:
    text = str(value)
    return "0" * (width - len(text)) + text if len(text) < width else text


def _hex(uid: "bytes | bytearray | memoryview") -> str:
    digits = "0123456789ABCDEF"
    return "".join(digits[b >> 4] + digits[b & 15] for b in uid)


def printed_forms(tech: int, uid: "bytes | bytearray | memoryview") -> "dict[str, str]":
    """The forms operators find printed on cards or shown by desk readers, by name.

    ``hex`` always; EM4100: ``decimal10`` (low 32 bits, 10 digits) and ``facility_number``
    ("FFF,NNNNN" of the low 24 bits, the "8H10D" pair printed on cards); Wiegand: ``decimal`` of
    the data bits and ``facility_number``; ISO 14443A: ``decimal`` (big-endian) and
    ``reversed_decimal`` (bytes reversed, as many USB desk readers type it).
    """
    check_uid(tech, uid)
    forms = {"hex": _hex(uid)}
    if tech == EM4100:
        low = _int(uid, 1)
        forms["decimal10"] = _pad(low, 10)
        forms["facility_number"] = _pad((low >> 16) & 0xFF, 3) + "," + _pad(low & 0xFFFF, 5)
    elif tech == ISO14443A:
        forms["decimal"] = str(_int(uid))
        forms["reversed_decimal"] = _pad(_int(bytes(reversed(bytes(uid)))), 10)
    else:
        facility, number = wiegand_fields(tech, uid)
        forms["decimal"] = str(_int(uid))
        forms["facility_number"] = str(facility) + "," + str(number)
    return forms
