"""An RDM6300 EM4100 module as seen through machine.UART: ``any()`` and ``readinto(buf)``.

The byte stream is scheduled on a virtual millisecond clock (``now_ms``, set by the test) and
serialised at 9600 8N1 (one byte every 1.042 ms), so a frame takes ~15 ms and a poll can land in
the middle of one. ``max_read`` caps the bytes one ``readinto`` returns, to split frames at chosen
points. Frames are built here from the format (STX, 10 hex digits, 2 hex digits of XOR, ETX), not
with ``protocol.card``, so the tests check the driver and the decoder against an independent
encoder.

Written in the subset MicroPython runs (no dataclasses, no typing at runtime): the same file is
loaded on the MicroPython VM. After scheduling, ``any``/``readinto`` allocate nothing, so heap
figures measured around a driver's ``poll`` are the driver's own.
"""

STX = 0x02
ETX = 0x03
BYTE_US = 1042  # 10 bits at 9600 baud
_HEX = b"0123456789ABCDEF"


def frame(uid, checksum=None):
    """The 14-byte frame for the 5-byte ``uid``; ``checksum`` overrides the XOR byte."""
    if len(uid) != 5:
        raise ValueError("an EM4100 ID is 5 bytes")
    check = 0
    for b in uid:
        check ^= b
    if checksum is not None:
        check = checksum
    out = bytearray(14)
    out[0] = STX
    for i in range(6):
        b = uid[i] if i < 5 else check
        out[1 + 2 * i] = _HEX[b >> 4]
        out[2 + 2 * i] = _HEX[b & 15]
    out[13] = ETX
    return bytes(out)


def bad_checksum_frame(uid):
    """A well-formed frame whose checksum is wrong by one bit."""
    check = 0
    for b in uid:
        check ^= b
    return frame(uid, check ^ 0x01)


class Lcg:
    """A small deterministic random source that behaves the same on both runtimes."""

    def __init__(self, seed=1):
        self.state = seed & 0x7FFFFFFF

    def next(self, bound):
        """An int in ``0 .. bound - 1``."""
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.state >> 8) % bound


class Rdm6300:
    """A module's serial output: schedule bytes with the methods below, then read like a UART."""

    def __init__(self, max_read=0):
        self.now_ms = 0
        self.max_read = max_read  # 0: as many as the buffer holds
        self.fail = False  # True: any()/readinto() raise OSError (a UART driver error)
        self._events = []  # (at_ms, order, data)
        self._data = bytearray()
        self._at = []  # arrival time (ms) of each byte of _data
        self._pos = 0
        self.sent_frames = 0

    # -- scheduling (allocates; call before reading) ----------------------------------------------

    def send(self, at_ms, data):
        """Raw bytes whose transmission starts at ``at_ms`` (or when the line is free)."""
        self._events.append((at_ms, len(self._events), bytes(data)))
        self._build()

    def card(self, uid, start_ms, duration_ms, period_ms=80, jitter_ms=0, seed=1):
        """A card held from ``start_ms`` for ``duration_ms``: a frame every ``period_ms`` +- jitter.

        Returns the number of frames sent.
        """
        rnd = Lcg(seed)
        data = frame(uid)
        t = start_ms
        count = 0
        while t < start_ms + duration_ms:
            self._events.append((t, len(self._events), data))
            count += 1
            step = period_ms
            if jitter_ms:
                step += rnd.next(2 * jitter_ms + 1) - jitter_ms
            t += max(step, 16)  # a frame lasts ~15 ms on the wire
        self._build()
        return count

    def phantom(self, uid, at_ms):
        """One valid frame that never repeats (noise that passed the checksum)."""
        self.send(at_ms, frame(uid))

    def noise(self, at_ms, count, seed=1, framing=False):
        """``count`` random bytes; without ``framing`` they exclude STX and ETX."""
        rnd = Lcg(seed)
        out = bytearray(count)
        for i in range(count):
            b = rnd.next(256)
            while not framing and b in (STX, ETX):
                b = rnd.next(256)
            out[i] = b
        self.send(at_ms, out)

    def _build(self):
        events = sorted(self._events)
        data = bytearray()
        at = []
        free_us = 0
        for at_ms, _order, chunk in events:
            start_us = max(at_ms * 1000, free_us)
            for i in range(len(chunk)):
                data.append(chunk[i])
                at.append((start_us + (i + 1) * BYTE_US) // 1000)
            free_us = start_us + len(chunk) * BYTE_US
        if self._pos:
            raise RuntimeError("schedule everything before the driver starts reading")
        self._data = data
        self._at = at
        self.sent_frames = 0
        for _at_ms, _order, chunk in events:
            if len(chunk) == 14 and chunk[0] == STX:
                self.sent_frames += 1

    def end_ms(self):
        """When the last scheduled byte has arrived."""
        return self._at[-1] if self._at else 0

    # -- machine.UART ------------------------------------------------------------------------------

    def any(self):
        if self.fail:
            raise OSError(5)  # EIO
        n = 0
        i = self._pos
        at = self._at
        end = len(at)
        now = self.now_ms
        while i < end and at[i] <= now:
            n += 1
            i += 1
        return n

    def readinto(self, buf):
        if self.fail:
            raise OSError(5)
        n = self.any()
        if self.max_read and n > self.max_read:
            n = self.max_read
        if n > len(buf):
            n = len(buf)
        if not n:
            return None
        pos = self._pos
        data = self._data
        for i in range(n):
            buf[i] = data[pos + i]
        self._pos = pos + n
        return n
