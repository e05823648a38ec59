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
