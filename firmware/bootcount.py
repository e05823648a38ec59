"""The reader's persistent boot counter (SPEC.md section 1.1).

``(reader_id, boot, seq)`` must never repeat, across power cuts and reflashes that keep the reader's
identity, so the boot value of this run is made durable **before** the first record is made. The
counter lives in two 8-byte slot files, ``boot.a`` and ``boot.b``::

    b"BC" | value u32 (big-endian) | CRC-16/IBM-3740 of the 6 bytes before it

``advance()`` reads both, takes the highest valid value ``v`` and writes ``v + 1`` into the *other*
slot, so the slot holding ``v`` is never touched. A power cut while writing leaves the target slot
torn (its CRC fails) and the other one intact: the next boot reads ``v`` again and writes ``v + 1``
again, which is safe because that value was never returned, so no record carries it. This needs no
atomic rename (FAT has none) and costs 8 bytes written per boot.

If both slots exist but neither is valid (flash corruption: the writer never touches both), the
counter cannot know the last value: ``fault`` is set and the value restarts above ``floor``, which
the caller takes from what it still holds (the queue's ``max_boot``), so no identity still queued
is reused. Keep the slots next to the reader's key: a reflash that keeps the key keeps the counter.
"""

import struct

from firmware.fs import join
from protocol.compat import const
from protocol.crc16 import crc16

TYPE_CHECKING = False
if TYPE_CHECKING:
    from firmware.fs import FS

_LEN = const(8)
_BODY = const(6)
NAMES = ("boot.a", "boot.b")


def _decode(data: "bytes | None") -> int:
    """The slot's value, 0 when it is absent, -1 when it is present but not valid."""
    if data is None:
        return 0
    if len(data) != _LEN or data[0] != 0x42 or data[1] != 0x43:
        return -1
    if crc16(memoryview(data)[:_BODY]) != (data[6] << 8) | data[7]:
        return -1
    value: int = struct.unpack_from(">I", data, 2)[0]
    return value if value >= 1 else -1


class BootCounter:
    """``advance()`` once per boot, before the first record; ``value`` is this run's boot."""

    def __init__(self, fs: "FS", directory: str) -> None:
        self._fs = fs
        self._paths = (join(directory, NAMES[0]), join(directory, NAMES[1]))
        self.value = 0
        self.fault = False

    def last(self) -> "tuple[int, int]":
        """``(last durable value or 0, slot index holding it or -1)``; sets ``fault``."""
        best = 0
        where = -1
        bad = 0
        for i in range(2):
            value = _decode(self._fs.read_file(self._paths[i]))
            if value < 0:
                bad += 1
            elif value > best:
                best = value
                where = i
        self.fault = bad == 2
        return best, where

    def advance(self, floor: int = 0) -> int:
        """Make ``max(last, floor) + 1`` durable and return it (the boot of this run)."""
        last, where = self.last()
        value = (last if last > floor else floor) + 1
        if value > 0xFFFFFFFF:
            raise ValueError("boot counter exhausted")
        buf = bytearray(_LEN)
        buf[0] = 0x42
        buf[1] = 0x43
        struct.pack_into(">I", buf, 2, value)
        crc = crc16(memoryview(buf)[:_BODY])
        buf[6] = crc >> 8
        buf[7] = crc & 0xFF
        self._fs.write_file(self._paths[1 if where == 0 else 0], buf)
        self.value = value
        return value
