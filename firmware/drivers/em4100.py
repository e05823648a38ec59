"""EM4100 (125 kHz) cards through an RDM6300-style module on a UART.

The module sends, at 9600 8N1, one frame per read: STX (0x02), 10 ASCII hex digits of data, 2 of
their XOR checksum, ETX (0x03); it repeats the frame every ~60-100 ms while a card is in the field.

What ``poll(now_ms)`` does with the byte stream:

- **Framing.** Bytes before an STX are noise (``noise_bytes``). An STX inside a frame abandons the
  partial frame and starts a new one; an ETX before the 14th byte, or a 14th byte that is not ETX
  (a byte too many), drops the frame. Each abandoned or dropped frame counts one
  ``framing_errors``. Hex digits are never 0x02/0x03, so the parser is back in step at the next STX.
- **Checksum.** A complete frame is decoded by ``protocol.card.em4100_frame_into`` (the one place
  that knows the format): ``bad_crc`` counts ``checksum_errors``, ``bad_framing`` (no ETX, non-hex
  digits) counts ``framing_errors``; good frames count ``frames``. The full 40-bit ID is kept
  (version/customer byte first, SPEC.md section 3.1).
- **Phantom filter.** A card counts only after ``confirm`` identical good frames, of which the first
  and the last lie within ``window_ms`` (a different good frame in between restarts the count).
  Noise that happens to pass the 8-bit checksum makes one frame that never repeats: it is counted in
  ``phantoms`` once it can no longer be confirmed, and never reported.
- **Held.** Once confirmed the card is *held*: every poll returns 5 (``uid[:5]`` is the card) while
  its frames keep coming, and 0 once no frame of it has arrived for more than ``hold_ms``. The
  debouncer turns "held" into one scan. Another card's confirmed frames replace the held card at
  once. ``reads`` counts confirmations.
- **Defaults.** ``confirm=2``, ``window_ms=300``, ``hold_ms=300``: at the module's 60-100 ms
  repeat a card is reported with its second frame, a lost frame between them is tolerated, and one
  or two lost frames do not break the hold.
- **Timing.** Frames are stamped with the ``now_ms`` of the poll that reads them, so the windows are
  accurate to one poll period; a stalled main loop delays frames but loses none as long as the
  UART's receive buffer holds them (256 bytes on the ESP32 port: ~18 frames).
- **Fault.** An ``OSError`` from the UART sets ``fault`` (and counts ``io_errors``) until a read
  succeeds again.

``uart`` is anything with machine.UART's ``any()`` and non-blocking ``readinto(buf)`` (UART
``timeout=0``). ``poll`` reads while ``any()`` reports bytes, at most 256 per call (the ESP32 UART's
receive buffer), so one call is bounded; it allocates nothing unless a frame is bad (the decoder
raises).
"""

from firmware.ticks import ticks_diff
from protocol.card import EM4100, MAX_UID_LEN, em4100_frame_into
from protocol.compat import const
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machine import UART

_STX = const(0x02)
_ETX = const(0x03)
_FRAME_LEN = const(14)  # protocol.card.EM4100_FRAME_LEN
_UID_LEN = const(5)
_RX_LEN = const(64)  # one readinto; 9600 baud brings ~48 bytes per 50 ms poll
_MAX_BYTES = const(256)  # per poll: the ESP32 UART's receive buffer


def _copy5(dst: bytearray, src: bytearray) -> None:
    for i in range(_UID_LEN):
        dst[i] = src[i]


class Em4100Reader:
    """Reader interface: ``tech``, ``uid``, ``fault``, ``poll(now_ms) -> int``."""

    def __init__(self, uart: "UART", confirm: int = 2, window_ms: int = 300,
                 hold_ms: int = 300) -> None:
        if confirm < 1 or window_ms < 0 or hold_ms < 0:
            raise ValueError("confirm must be >= 1, window_ms and hold_ms >= 0")
        self.tech = EM4100
        self.uid = bytearray(MAX_UID_LEN)
        self.fault = False
        # counters (never reset; the heartbeat reports them)
        self.frames = 0
        self.framing_errors = 0
        self.checksum_errors = 0
        self.noise_bytes = 0
        self.phantoms = 0
        self.reads = 0
        self.io_errors = 0
        self._uart = uart
        self._confirm = confirm
        self._window = window_ms
        self._hold = hold_ms
        self._rx = bytearray(_RX_LEN)
        self._frame = bytearray(_FRAME_LEN)
        self._fill = 0  # bytes of self._frame received; 0: waiting for STX
        self._got = bytearray(_UID_LEN)  # the frame just decoded
        self._cand = bytearray(_UID_LEN)  # the card being confirmed
        self._cand_n = 0  # its identical frames so far (0: no candidate), kept below 2 * confirm
        self._cand_last = 0
        self._times = [0] * confirm  # ring: times of its last `confirm` frames
        self._card = bytearray(_UID_LEN)  # the held card
        self._held = False
        self._seen = 0  # when the held card's last frame arrived

    def poll(self, now_ms: int) -> int:
        """Read what the module sent; 5 while a confirmed card is held, else 0."""
        self._read(now_ms)
        if self._cand_n and ticks_diff(now_ms, self._cand_last) > self._window:
            self.phantoms += 1  # too late for any further frame to confirm it
            self._cand_n = 0
        if self._held and ticks_diff(now_ms, self._seen) > self._hold:
            self._held = False
        return _UID_LEN if self._held else 0

    def _read(self, now: int) -> None:
        uart = self._uart
        rx = self._rx
        frame = self._frame
        budget = _MAX_BYTES
        while budget > 0:
            try:
                n = uart.readinto(rx) if uart.any() else 0
            except OSError:
                self.io_errors += 1
                self.fault = True
                return
            self.fault = False
            if not n:
                return
            fill = self._fill
            for i in range(n):
                b = rx[i]
                if b == _STX:
                    if fill:
                        self.framing_errors += 1  # a new frame starts inside this one
                    frame[0] = b
                    fill = 1
                elif not fill:
                    self.noise_bytes += 1
                else:
                    frame[fill] = b
                    fill += 1
                    if fill == _FRAME_LEN:
                        fill = 0
                        self._frame_done(now)
                    elif b == _ETX:
                        fill = 0
                        self.framing_errors += 1  # a short frame
            self._fill = fill
            budget -= n

    def _frame_done(self, now: int) -> None:
        got = self._got
        try:
            em4100_frame_into(self._frame, got)
        except ProtocolError as exc:
            if exc.code == "bad_crc":
                self.checksum_errors += 1
            else:
                self.framing_errors += 1
            return
        self.frames += 1
        if self._held and got == self._card:
            self._seen = now
            return
        n = self._cand_n
        if n and got != self._cand:
            self.phantoms += 1  # a different card interrupts the candidate: it never repeated
            n = 0
        if not n:
            _copy5(self._cand, got)
        confirm = self._confirm
        self._times[n % confirm] = now
        n += 1
        self._cand_last = now
        if n >= confirm and ticks_diff(now, self._times[n % confirm]) <= self._window:
            _copy5(self._card, got)
            _copy5(self.uid, got)
            self._held = True
            self._seen = now
            self.reads += 1
            n = 0
        elif n >= 2 * confirm:
            n -= confirm  # same ring slots, bounded counter
        self._cand_n = n
