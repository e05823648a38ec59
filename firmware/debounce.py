"""What counts as a scan: a card held on the reader makes one; the same card makes another only
after it has been away for ``gap_ms``; different cards in quick succession each make one.

Drivers report a card on every poll while it is in the field, so "held" is a stream of sightings.
A small table remembers the last few cards (a child swapping cards back and forth still makes one
scan per card per gap). Pre-allocated; ``sighting`` allocates nothing.
"""

from firmware.ticks import ticks_diff
from protocol.compat import const

_UID_MAX = const(10)


class Debouncer:
    def __init__(self, gap_ms: int = 2000, slots: int = 8) -> None:
        self.gap_ms = gap_ms
        self._slots = slots
        self._tech = bytearray(slots)  # 0 = free slot
        self._len = bytearray(slots)
        self._uid = bytearray(slots * _UID_MAX)
        self._seen = [0] * slots

    def _find(self, tech: int, uid: "bytes | bytearray | memoryview", n: int) -> int:
        table = self._uid
        for slot in range(self._slots):
            if self._tech[slot] != tech or self._len[slot] != n:
                continue
            base = slot * _UID_MAX
            for i in range(n):
                if table[base + i] != uid[i]:
                    break
            else:
                return slot
        return -1

    def sighting(self, tech: int, uid: "bytes | bytearray | memoryview", n: int,
                 now_ms: int) -> bool:
        """Record that card ``uid[:n]`` is in the field; True when this makes a new scan."""
        slot = self._find(tech, uid, n)
        if slot >= 0:
            new = ticks_diff(now_ms, self._seen[slot]) >= self.gap_ms
            self._seen[slot] = now_ms
            return new
        slot = 0
        for i in range(self._slots):  # a free slot, else the card seen longest ago
            if self._tech[i] == 0:
                slot = i
                break
            if ticks_diff(self._seen[i], self._seen[slot]) < 0:
                slot = i
        self._tech[slot] = tech
        self._len[slot] = n
        base = slot * _UID_MAX
        for i in range(n):
            self._uid[base + i] = uid[i]
        self._seen[slot] = now_ms
        return True
