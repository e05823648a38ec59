"""Card technologies and their canonical UID sizes (SPEC.md section 3.1)."""

from protocol.compat import const
from protocol.errors import ProtocolError

EM4100 = const(1)
ISO14443A = const(2)
WIEGAND26 = const(3)
WIEGAND34 = const(4)
WIEGAND37 = const(5)

# Indexed by technology code; index 0 is not a technology.
TECH_NAMES = ("", "em4100", "iso14443a", "wiegand26", "wiegand34", "wiegand37")
MAX_UID_LEN = const(10)


def tech_code(name: str) -> int:
    """The code of a technology name, or ``ProtocolError('bad_card')``."""
    for code in range(1, len(TECH_NAMES)):
        if TECH_NAMES[code] == name:
            return code
    raise ProtocolError("bad_card", "unknown card technology " + repr(name))


def check_uid(tech: int, uid: bytes | bytearray | memoryview) -> None:
    """Raise ``ProtocolError('bad_card')`` unless ``uid`` is canonical for ``tech``."""
    n = len(uid)
    if tech == ISO14443A:
        ok = n == 4 or n == 7 or n == 10
    elif tech in (EM4100, WIEGAND37):
        ok = n == 5
    elif tech == WIEGAND26:
        ok = n == 3
    elif tech == WIEGAND34:
        ok = n == 4
    else:
        raise ProtocolError("bad_card", "unknown card technology " + str(tech))
    if not ok:
        raise ProtocolError("bad_card", TECH_NAMES[tech] + " UID cannot be " + str(n) + " bytes")
    if tech == WIEGAND37 and uid[0] & 0xF8:
        raise ProtocolError("bad_card", "wiegand37 UID has padding bits set")


# --- captures from readers: RDM6300-style EM4100 UART frames and Wiegand bit trains -----------

EM4100_FRAME_LEN = const(14)  # STX, 10 hex digits of data, 2 of XOR checksum, ETX
_STX = const(0x02)
_ETX = const(0x03)


def _hex_value(ch: int) -> int:
    if 0x30 <= ch <= 0x39:
        return ch - 0x30
    if 0x41 <= ch <= 0x46:
        return ch - 0x37
    if 0x61 <= ch <= 0x66:
        return ch - 0x57
    raise ProtocolError("bad_framing", "non-hex character " + str(ch) + " in EM4100 frame")


def em4100_frame_into(frame: "bytes | bytearray | memoryview",
                      out: "bytearray | memoryview") -> None:
    """Decode a 14-byte RDM6300 frame into the 5 canonical UID bytes in ``out``.

    Raises ``bad_framing`` (length, STX/ETX, non-hex) or ``bad_crc`` (XOR checksum).
    """
    if len(frame) != EM4100_FRAME_LEN or frame[0] != _STX or frame[13] != _ETX:
        raise ProtocolError("bad_framing", "EM4100 frame is STX, 12 hex digits, ETX")
    check = 0
    for i in range(6):
        value = (_hex_value(frame[1 + 2 * i]) << 4) | _hex_value(frame[2 + 2 * i])
        if i < 5:
            out[i] = value
            check ^= value
        elif value != check:
            raise ProtocolError("bad_crc", "EM4100 frame checksum mismatch")


# Wiegand: (tech, total bits, data bits, bits covered by the leading even parity (itself included),
# first bit covered by the trailing odd parity). Facility/number split is in _WIEGAND_FIELDS.
_WIEGAND = ((WIEGAND26, 26, 24, 13, 13), (WIEGAND34, 34, 32, 17, 17), (WIEGAND37, 37, 35, 19, 18))


def _wiegand_layout(nbits: int) -> "tuple[int, int, int, int, int]":
    for layout in _WIEGAND:
        if layout[1] == nbits:
            return layout
    raise ProtocolError("bad_card", "unsupported Wiegand length " + str(nbits))


def wiegand_into(bits: "bytes | bytearray | memoryview", nbits: int,
                 out: "bytearray | memoryview") -> int:
    """Decode ``nbits`` Wiegand bits (one 0/1 per byte, first received first) into ``out``.

    Returns the technology code; the canonical UID is the data bits without parity, right-aligned
    in ``uid_len`` bytes. Raises ``bad_card`` for an unsupported length and ``bad_crc`` for parity.
    """
    tech, total, data, even_span, odd_start = _wiegand_layout(nbits)
    ones = 0
    for i in range(even_span):
        ones += bits[i]
    if ones & 1:
        raise ProtocolError("bad_crc", "Wiegand leading even parity fails")
    ones = 0
    for i in range(odd_start, total):
        ones += bits[i]
    if not ones & 1:
        raise ProtocolError("bad_crc", "Wiegand trailing odd parity fails")
    n = (data + 7) // 8
    for i in range(n):
        out[i] = 0
    pad = n * 8 - data
    for i in range(data):
        if bits[1 + i]:
            pos = pad + i
            out[pos >> 3] |= 0x80 >> (pos & 7)
    return tech
