"""Wiegand readers on two GPIO lines: a falling edge on D0 is a 0 bit, on D1 a 1 bit.

A reader sends one frame per card presentation (26, 34 or 37 bits, ~1-2 ms apart); a frame ends
when the lines stay quiet for ``timeout_ms``. "Held" is therefore simply one frame: ``poll`` returns
the UID length once per good frame, and 0 otherwise.

**Interrupt handler.** One falling-edge handler per line stores the bit into a pre-allocated
bytearray and stamps the edge with ``now_us`` (default ``firmware.ticks.ticks_us``); it allocates
nothing and uses no floats. It also splits frames itself: an edge that follows the previous one by
``timeout_ms`` or more closes the frame being received and starts the next. Bits beyond 64 are not
stored; the frame is marked as overflowed (length 65).

**Frame queue.** Four bit buffers: up to three closed frames waiting for ``poll`` plus the one being
received, so frames that arrive while the main loop is busy are not merged or lost. When three
frames are already waiting, a fourth closed frame is dropped and counted in ``dropped``.
The handler and ``poll`` share the buffers without disabling interrupts: each index has one writer
(the handler: ``_w``, ``_n``, ``_last``, ``dropped``; ``poll``: ``_r`` and the other counters), and
``poll`` takes a frame still in the receive buffer only after checking, around its reads, that the
handler did not start a new one meanwhile.

**poll(now_ms).** Takes the oldest closed frame, or the frame being received once ``timeout_ms`` has
passed since its last edge (measured on the handler's microsecond clock; ``now_ms`` is unused),
and decodes it with ``protocol.card.wiegand_into``: on success ``tech`` is WIEGAND26/34/37, ``uid``
holds the canonical UID (SPEC.md section 3.1) and the return value is its length. A frame of an
unsupported length (missing or extra bits, a glitch) counts ``length_errors`` (frames over 64 bits
also count ``overflows``); a parity failure counts ``parity_errors``. Bad frames are skipped and
the next waiting frame is tried in the same call. Only bad frames allocate (the decoder raises).

**Fault.** A line that reads low on two consecutive polls with no edge in between is stuck (a
short, a disconnected reader without pull-ups): ``fault`` is set until both lines read high.

On the ESP32 port pin interrupts are soft (scheduled): the handler runs between bytecodes of the
main program and a long C call (flash erase) delays it, so edges are stamped when the handler
runs. The scheduler queue holds a few edges only; keep blocking C calls well under a frame time.
``hard=True`` is passed to ``Pin.irq`` when asked, on ports that support hard pin interrupts.

``d0``/``d1`` are machine.Pin-like objects already configured as inputs (with pull-ups when the
reader has open-collector outputs): ``irq(handler=..., trigger=...)``, ``value()`` and the
``IRQ_FALLING`` constant.
"""

from firmware.ticks import ticks_diff, ticks_us
from protocol.card import MAX_UID_LEN, wiegand_into
from protocol.compat import const
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from machine import Pin

_MAX_BITS = const(64)
_OVERFLOW = const(65)  # frame length recorded for a frame of more than 64 bits
_SLOT_SHIFT = const(6)  # 64 bits per buffer
_SLOT_MASK = const(3)  # four buffers
_QUEUE = const(3)  # closed frames that may wait for poll
_SEQ = const(0xFF)  # frame counters wrap at 256


class WiegandReader:
    """Reader interface: ``tech``, ``uid``, ``fault``, ``poll(now_ms) -> int``."""

    def __init__(self, d0: "Pin", d1: "Pin", timeout_ms: int = 25,
                 now_us: "Callable[[], int] | None" = None, hard: bool = False) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.tech = 0  # set by each good frame
        self.uid = bytearray(MAX_UID_LEN)
        self.fault = False
        # counters (never reset; the heartbeat reports them)
        self.frames = 0
        self.length_errors = 0
        self.parity_errors = 0
        self.overflows = 0
        self.dropped = 0  # written by the interrupt handler
        self._d0 = d0
        self._d1 = d1
        self._now_us = ticks_us if now_us is None else now_us
        self._gap_us = timeout_ms * 1000
        self._bits = bytearray((_SLOT_MASK + 1) << _SLOT_SHIFT)
        whole = memoryview(self._bits)
        self._views = tuple(whole[i << _SLOT_SHIFT:(i + 1) << _SLOT_SHIFT]
                            for i in range(_SLOT_MASK + 1))
        self._lens = bytearray(_SLOT_MASK + 1)  # bit count of each closed frame
        # written only by the interrupt handler
        self._w = 0  # number (mod 256) of the frame being received; its buffer is _w & 3
        self._n = 0  # its bits so far (0: none yet), at most _OVERFLOW
        self._last = 0  # ticks_us of the last edge
        # written only by poll
        self._r = 0  # number of the next frame to decode; _w + 1 once poll took frame _w early
        self._low_polls = 0
        self._seen_last = 0
        if hard:
            d0.irq(handler=self._on_d0, trigger=d0.IRQ_FALLING, hard=True)
            d1.irq(handler=self._on_d1, trigger=d1.IRQ_FALLING, hard=True)
        else:
            d0.irq(handler=self._on_d0, trigger=d0.IRQ_FALLING)
            d1.irq(handler=self._on_d1, trigger=d1.IRQ_FALLING)

    def deinit(self) -> None:
        """Detach the interrupt handlers."""
        self._d0.irq(handler=None)
        self._d1.irq(handler=None)

    # -- interrupt handlers: no allocation, no floats ---------------------------------------------

    def _on_d0(self, _pin: "Pin") -> None:
        self._edge(0)

    def _on_d1(self, _pin: "Pin") -> None:
        self._edge(1)

    def _edge(self, bit: int) -> None:
        now = self._now_us()
        n = self._n
        if n:
            w = self._w
            r = self._r
            if r == (w + 1) & _SEQ:  # poll already took this frame: start the next one
                self._w = r
                n = 0
            elif ticks_diff(now, self._last) >= self._gap_us:  # quiet long enough: a new frame
                if (w - r) & _SEQ < _QUEUE:
                    self._lens[w & _SLOT_MASK] = n
                    self._w = (w + 1) & _SEQ
                else:
                    self.dropped += 1  # poll is three frames behind; the buffer is reused
                n = 0
        if n < _MAX_BITS:
            self._bits[((self._w & _SLOT_MASK) << _SLOT_SHIFT) + n] = bit
        if n < _OVERFLOW:
            n += 1
        self._n = n
        self._last = now

    # -- main loop --------------------------------------------------------------------------------

    def poll(self, now_ms: int) -> int:
        """Decode the next finished frame: the UID length for a good one, else 0."""
        self._check_lines()
        while True:
            r = self._r
            w = self._w
            if r == w:  # nothing closed: take the frame being received once it has gone quiet
                now = self._now_us()  # read before _n and _last: an edge after this is newer
                n = self._n
                last = self._last
                if self._w != w or not n or ticks_diff(now, last) < self._gap_us:
                    return 0
            elif r == (w + 1) & _SEQ:  # took the frame being received; no new frame yet
                return 0
            else:
                n = self._lens[r & _SLOT_MASK]
            uid_len = self._decode(r & _SLOT_MASK, n)
            self._r = (r + 1) & _SEQ
            if uid_len:
                return uid_len

    def _decode(self, slot: int, n: int) -> int:
        if n > _MAX_BITS:
            self.overflows += 1
            self.length_errors += 1
            return 0
        try:
            tech = wiegand_into(self._views[slot], n, self.uid)
        except ProtocolError as exc:
            if exc.code == "bad_crc":
                self.parity_errors += 1
            else:
                self.length_errors += 1
            return 0
        self.tech = tech
        self.frames += 1
        return (n + 5) >> 3  # n - 2 data bits, right-aligned in whole bytes

    def _check_lines(self) -> None:
        last = self._last
        if self._d0.value() and self._d1.value():
            self._low_polls = 0
        elif last == self._seen_last:
            self._low_polls += 1
        else:
            self._low_polls = 0  # edges since the last poll: a frame, not a stuck line
        self._seen_last = last
        self.fault = self._low_polls >= 2
