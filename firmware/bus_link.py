"""The reader's side of the RS-485 bus (SPEC.md section 9): it answers the gateway's polls.

The gateway is the only master; this reader talks only when a ``poll`` or ``nack`` for its own
address asks it to. What goes up and what comes down is decided by ``firmware/uplink.py``; this
module moves it over a half-duplex UART with a driver-enable (DE) pin.

**Receiving.** ``run`` reads whatever the UART holds into a small pre-allocated buffer and
``feed`` splits the stream on ``0x00`` into a bounded chunk buffer (one maximal frame, 1034
bytes). As soon as a chunk's second byte shows a foreign address (COBS keeps the first body byte
there, since addresses are never 0), the rest of the chunk is skipped without being stored or
decoded: every reader hears every frame on the bus, and most are not its own. A chunk longer than
a frame is discarded up to the next delimiter and counted (``too_large``); our own chunks are
decoded with ``protocol/frame.py`` and a rejected one is counted (``bad_frames``, code in
``last_error``). Nothing is allocated per byte.

Why polling the UART every millisecond and not ``asyncio.StreamReader(uart)``: the stream reader
rests on the port's ``select``/``ioctl`` machinery, which CPython's asyncio does not offer for such
an object and which the MicroPython VM the tests run lacks, so the device would run a code path no
test runs; a 1 ms step costs a few percent of one core on the ESP32, and the master waits 50 ms
for an answer. The driver's receive ring (``hw_esp32.build_bus``: 4 KiB) holds what arrives while
another task blocks (a flash write).

**Answering** (SPEC.md 9.2). A ``poll`` with a new ``fseq`` first confirms the previous answer
(the master only moves on once it has it): a command result is then ``result_sent()`` (a pending
reboot happens now) and a status is dropped. Then it applies its payload -- an ack with
``put_ack``/``take_ack``, a command with ``put_command``/``take_command`` -- and answers with
``data`` (own ``fseq`` + 1) carrying the first of: the oldest command result, the pending status,
the batch (the outstanding one again until it is acked, so a new poll without an ack resends it);
else ``idle`` (carrying the last ``data`` ``fseq``). The same ``fseq`` again, or a ``nack`` with
it, resends that answer byte for byte and applies nothing. A nack for any other ``fseq`` is
ignored: it follows a poll this reader never heard, and the master's retry will bring that poll.

**Driving the bus.** The answer goes out only when the line has been quiet since the poll: if more
bytes followed it, or the poll is older than ``answer_within_ms`` (the master waits at least 50 ms
after its frame), the answer is withheld (``withheld``) rather than sent over someone else's frame;
the master's retry gets it. Otherwise: wait until ``max(0.5 ms, 2 characters)`` after the last byte
received, DE high, write, ``uart.flush()`` (waits until the last stop bit has left the shift
register), DE low. The flush blocks the event loop for the frame's wire time (about 90 ms for a
full 1 KiB batch at 115 200 baud, under 1 ms for an idle answer). That is deliberate: the driver
must be released within one character time (87 us at 115 200 baud) or it collides with the master's
next frame, and an asyncio wake-up can come tens of milliseconds late behind a flash write.

``online`` is True while this address was polled within the last 3 s; when it turns True the
uplink is told (``link_up``), so taps from then on travel ahead of the backlog.
"""

from firmware.aio import sleep_ms
from firmware.ticks import ticks_diff, ticks_ms, ticks_us
from protocol import frame
from protocol.compat import const
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from firmware.uplink import Uplink

    Buf = bytes | bytearray | memoryview

    class Uart(Protocol):  # machine.UART, non-blocking (timeout=0)
        def any(self) -> int: ...

        def readinto(self, __buf: bytearray) -> "int | None": ...

        def write(self, __buf: memoryview) -> "int | None": ...

        def flush(self) -> None: ...

    class OutPin(Protocol):  # machine.Pin configured as an output
        def value(self, __v: int) -> None: ...


_CHUNK = const(1034)  # frame.MAX_CHUNK: the COBS encoding of the longest body
_SKIP = const(-1)  # chunk index while skipping a chunk for another address
_OVERSIZE = const(-2)  # ... while discarding a chunk longer than any frame
_RX_BUF = const(256)  # bytes taken from the UART per read
_ONLINE_MS = const(3000)  # polled within this: the master has us on its list
_MIN_GAP_US = const(500)  # SPEC 9.2 item 5: quiet time before the replier drives the bus
_ANSWER_WITHIN_MS = const(40)  # the master waits 50 ms after its frame; keep a margin
_T_ACK = const(3)
_T_COMMAND = const(5)


class BusLink:
    """The app's ``Link`` over RS-485; ``run()`` is its task. See the module docstring."""

    link_type = "rs485"
    rssi_dbm = 0

    def __init__(
        self,
        uplink: "Uplink",
        uart: "Uart",
        de: "OutPin",
        address: int,
        baudrate: int,
        answer_within_ms: int = _ANSWER_WITHIN_MS,
    ) -> None:
        if not frame.MIN_ADDR <= address <= frame.MAX_ADDR:
            raise ValueError("bus address " + str(address) + " outside 1..247")
        if baudrate <= 0:
            raise ValueError("baud rate must be positive")
        self.uplink = uplink
        self.address = address
        self.online = False
        self._uart = uart
        self._de = de
        de.value(0)
        # the replier's 0.5 ms, and at least two characters for the master to release its driver
        gap = 2 * 10_000_000 // baudrate
        self._gap_us = gap if gap > _MIN_GAP_US else _MIN_GAP_US
        self._late_ms = answer_within_ms
        self._rx = bytearray(_RX_BUF)
        self._chunk = bytearray(_CHUNK)
        self._chunk_mv = memoryview(self._chunk)
        self._body = bytearray(frame.MAX_CHUNK)  # a chunk's longest decoding
        self._k = 0  # bytes in _chunk, or _SKIP / _OVERSIZE
        self._encoder = frame.FrameEncoder()
        self._answer: memoryview | None = None  # the last answer's wire bytes (in _encoder)
        self._poll_fseq = -1  # of the last poll applied; -1: none since boot
        # our data fseq; differs from boot to boot, so that the first data frame after a reboot
        # is unlikely to repeat the last one the master accepted (it would drop it as a copy)
        self._data_fseq = ticks_us() & 0xFF
        self._sent_result = False  # the last answer carried uplink.results[0]
        self._sent_status: bytes | None = None  # ... or this status
        self._rx_us = ticks_us()  # when the last bytes were read
        self._rx_ms = ticks_ms()
        self._polled_ms = 0  # when our address was last polled
        # counters (never reset)
        self.polls = 0  # new polls applied
        self.repeats = 0  # a poll heard again: answer resent
        self.nacks = 0  # nacks answered
        self.answers = 0  # data frames made
        self.idles = 0  # idle frames made
        self.sent = 0  # frames transmitted (resends included)
        self.withheld = 0  # answers not sent: the line was not quiet, or the poll too old
        self.bad_frames = 0  # our chunks that failed to decode
        self.too_large = 0  # chunks longer than any frame
        self.echoes = 0  # data/idle frames with our address (our echo, or an address clash)
        self.bad_payloads = 0  # poll payloads that are neither ack nor command
        self.bad_answers = 0  # messages too large for a frame (answered idle instead)
        self.last_error = ""

    # --- Link --------------------------------------------------------------------------------

    def send_status(self, heartbeat: bytes) -> None:
        self.uplink.send_status(heartbeat)

    async def run(self) -> None:
        """Read the bus for ever, answering polls for our address as they complete."""
        uart = self._uart
        rx = self._rx
        while True:
            n = uart.readinto(rx)
            if n:
                self.feed(rx, n)
            if self.online and ticks_diff(ticks_ms(), self._polled_ms) >= _ONLINE_MS:
                self.online = False
            # a full read: more is probably waiting; yield to the other tasks, come back at once
            await sleep_ms(0 if n == _RX_BUF else 1)

    # --- receiving ---------------------------------------------------------------------------

    def feed(self, data: "Buf", n: int) -> None:
        """Take ``data[:n]``, just read from the bus: split on 0x00, act on frames for us."""
        self._rx_us = ticks_us()
        self._rx_ms = ticks_ms()
        chunk = self._chunk
        addr = self.address
        k = self._k
        for i in range(n):
            byte = data[i]
            if byte:
                if k >= 0:
                    if k == _CHUNK:
                        k = _OVERSIZE
                    else:
                        chunk[k] = byte
                        k += 1
                        if k == 2 and (chunk[0] == 1 or chunk[1] != addr):
                            k = _SKIP  # another reader's frame, or addr 0: not ours
                continue
            if k == _OVERSIZE:
                self.too_large += 1
            elif k > 0:
                self._k = 0
                self._chunk_end(k, i + 1 < n)
            k = 0
        self._k = k

    def _chunk_end(self, k: int, more: bool) -> None:
        try:
            _, ftype, fseq, payload = frame.decode_chunk(self._chunk_mv[:k], self._body)
        except ProtocolError as exc:
            self.bad_frames += 1
            self.last_error = exc.code
            return
        if ftype == frame.POLL:
            self._on_poll(fseq, payload, more)
        elif ftype == frame.NACK:
            if self._answer is not None and fseq == self._poll_fseq:
                self.nacks += 1
                self._heard()
                self._send(more)
        else:
            self.echoes += 1

    def _heard(self) -> None:
        if not self.online:
            self.online = True
            self.uplink.link_up()
        self._polled_ms = ticks_ms()

    def _on_poll(self, fseq: int, payload: memoryview, more: bool) -> None:
        self._heard()
        if self._answer is not None and fseq == self._poll_fseq:
            self.repeats += 1  # our answer was lost: the same again, nothing applied twice
            self._send(more)
            return
        self.polls += 1
        self._poll_fseq = fseq
        self._confirm()
        if len(payload):
            self._apply(payload)
        self._prepare()
        self._send(more)

    # --- what a new poll does ----------------------------------------------------------------

    def _confirm(self) -> None:
        """A new poll: the master has our previous answer."""
        uplink = self.uplink
        if self._sent_status is not None:
            if uplink.status is self._sent_status:
                uplink.status = None
            self._sent_status = None
        if self._sent_result:
            self._sent_result = False
            uplink.result_sent()  # may reboot the reader: the answer has arrived

    def _apply(self, payload: memoryview) -> None:
        uplink = self.uplink
        kind = payload[1] if len(payload) >= 2 else 0
        if kind == _T_ACK:
            uplink.put_ack(payload)
            uplink.take_ack()
        elif kind == _T_COMMAND:
            uplink.put_command(payload)
            uplink.take_command()
        else:
            self.bad_payloads += 1

    def _prepare(self) -> None:
        """Encode the answer to a new poll: result, status, batch, else idle."""
        uplink = self.uplink
        message: bytes | memoryview | None = None
        if uplink.results:
            message = uplink.results[0]
            self._sent_result = True
        elif uplink.status is not None:
            message = uplink.status
            self._sent_status = uplink.status
        else:
            message = uplink.batch()
        encoder = self._encoder
        if message is not None:
            fseq = (self._data_fseq + 1) & 0xFF
            try:
                self._answer = encoder.encode(self.address, frame.DATA, fseq, message)
                self._data_fseq = fseq
                self.answers += 1
                return
            except ProtocolError as exc:  # an uplink built without the serial batch limit
                self.bad_answers += 1
                self.last_error = exc.code
                self._sent_result = False
                self._sent_status = None
        self._answer = encoder.encode(self.address, frame.IDLE, self._data_fseq)
        self.idles += 1

    # --- driving the bus ---------------------------------------------------------------------

    def _send(self, more: bool) -> None:
        answer = self._answer
        if answer is None:
            return
        uart = self._uart
        if more or uart.any() or ticks_diff(ticks_ms(), self._rx_ms) > self._late_ms:
            self.withheld += 1  # someone talks after the poll, or the master gave up on us
            return
        rx_us = self._rx_us
        gap = self._gap_us
        while ticks_diff(ticks_us(), rx_us) < gap:
            pass
        de = self._de
        de.value(1)
        try:
            uart.write(answer)
            uart.flush()
        finally:
            de.value(0)
        self.sent += 1
