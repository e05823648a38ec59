"""The gateway's RS-485 bus master (SPEC.md §9): the only talker on a half-duplex bus of readers.

One :class:`BusMaster` per ``[[rs485]]`` bus. It polls every configured address in turn, stop and
wait (one poll outstanding on the bus), hands what the readers send to the :class:`IngestSink`,
and carries the sink's ack back to the reader **in that reader's next poll**, so an ack only
travels after the sink's commit was durable (invariant 3).

Per reader it keeps a poll ``fseq`` (a new poll increments it, a retransmission repeats it with the
same downstream payload), the ``fseq`` of the last ``data`` frame it accepted (a repeat is a
duplicate: the exchange completes, the payload is dropped), and a retry state: a poll is repeated
after the answer timeout, a garbled answer is answered with ``nack``, and after 4 failed attempts
the reader is *not answering* and is probed once per second, backing off to once per 5 s, with the
same outstanding poll, while the other readers are polled as usual.

Transport: pyserial-asyncio-fast, i.e. pyserial's ``Serial`` in non-blocking mode with the file
descriptor registered in the event loop (``add_reader``). No thread: a read timeout is an
``asyncio`` deadline that costs nothing when the answer comes, ``stop`` and cancellation act at
once, and every bus decision happens on the loop that also runs the sink, so there are no locks.
Frames are split and checked by ``protocol/frame.py``, the same runtime-neutral code the readers
run, so both ends apply the same §9.1 rules. See docs/rs485.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import serial
import serial_asyncio_fast

from gateway.retry import Backoff
from gateway.types import Clock, IngestSink, system_clock
from protocol import frame

log = logging.getLogger("gateway.rs485")

__all__ = ["BusMaster", "BusTiming", "ReaderLink"]

BITS_PER_CHAR: Final = 10  # 8N1: start bit, 8 data bits, stop bit
ATTEMPTS: Final = 4  # the poll and at most 3 retries (SPEC §9.2 item 5)
REPLIER_GAP_S: Final = 0.0005  # SPEC §9.2 item 5
ANSWER_MARGIN_S: Final = 0.050  # ... plus the time of a 1036-byte frame
PROBE_FIRST_S: Final = 1.0  # a reader that is not answering is polled once per second ...
PROBE_CAP_S: Final = 5.0  # ... backing off to once per 5 s
MAX_EVENTS: Final = 4096  # received frames/errors not yet looked at (a flood is counted, not kept)

_HEARTBEAT_HEAD: Final = b"\x01\x04"
_RESULT_HEAD: Final = b"\x01\x06"
_COMMAND_HEAD: Final = b"\x01\x05"

_Frame = tuple[int, int, int, bytes]  # addr, ftype, fseq, payload
_Event = _Frame | str  # a frame, or the error code of a rejected chunk
_TIMEOUT: Final = "timeout"
_GARBLED: Final = "garbled"


@dataclass(frozen=True)
class BusTiming:
    """Every duration the master uses; :meth:`for_baudrate` gives the SPEC values.

    Tests shrink them with ``dataclasses.replace``; production keeps the defaults.
    """

    char_s: float  # one character on the wire
    answer_timeout_s: float  # after our frame has left: 50 ms + a 1036-byte frame (§9.2)
    turnaround_s: float  # quiet time after the last byte received before we drive the bus
    quiet_s: float  # line silent this long: a garbled answer is over, a partial chunk is noise
    idle_poll_s: float = 0.01  # a reader that answered idle is polled again after this
    probe_first_s: float = PROBE_FIRST_S
    probe_cap_s: float = PROBE_CAP_S
    attempts: int = ATTEMPTS

    @classmethod
    def for_baudrate(cls, baudrate: int) -> BusTiming:
        if baudrate <= 0:
            raise ValueError(f"baud rate must be positive, not {baudrate}")
        char_s = BITS_PER_CHAR / baudrate
        return cls(
            char_s=char_s,
            answer_timeout_s=ANSWER_MARGIN_S + frame.MAX_WIRE * char_s,
            # the replier's 0.5 ms, and at least two characters for it to release its driver
            turnaround_s=max(REPLIER_GAP_S, 2 * char_s),
            # USB adapters hand received bytes over in bursts (FTDI's latency timer: 16 ms)
            quiet_s=0.020 + 3 * char_s,
        )

    def wire_s(self, n: int) -> float:
        """Transmission time of ``n`` bytes."""
        return n * self.char_s


@dataclass(frozen=True)
class ReaderLink:
    """One reader as the bus sees it (for status pages and metrics)."""

    address: int
    reader_id: int
    answering: bool
    last_answer_ms: int | None
    pending_commands: int


@dataclass(eq=False)
class _Reader:
    address: int
    reader_id: int
    probe: Backoff
    fseq: int = 0  # of the outstanding poll, or of the last one answered
    payload: bytes = b""  # the downstream message the outstanding poll carries
    outstanding: bool = False  # sent and not yet answered
    failures: int = 0  # failed attempts of the outstanding poll
    nack_next: bool = False  # the last attempt was answered garbled
    last_data_fseq: int | None = None
    answering: bool = True
    due: float = 0.0  # loop time from which it may be polled
    busy: bool = False  # the sink is handling its last answer: its ack is not known yet
    ack: bytes | None = None  # the sink's ack, for the next poll
    commands: deque[bytes] = field(default_factory=deque)
    last_answer_ms: int | None = None

    def take_downstream(self) -> bytes:
        if self.ack is not None:
            ack, self.ack = self.ack, None
            return ack
        return self.commands.popleft() if self.commands else b""


class _PortLost(Exception):
    pass


class _BusProtocol(asyncio.Protocol):
    """Receives the bus: splits frames as they arrive and queues them for the master."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: Counter[str]) -> None:
        self._loop = loop
        self._counters = counters
        self.events: deque[_Event] = deque()
        self.arrived = asyncio.Event()
        self.last_rx = 0.0  # loop time of the last byte received
        self.mid_frame = False  # the last byte received was not a delimiter
        self.lost = False
        self.error: Exception | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._reader = frame.FrameReader(self._on_frame, self._on_error)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _push(self, event: _Event) -> None:
        if len(self.events) >= MAX_EVENTS:
            self._counters["events_overflow"] += 1
            return
        self.events.append(event)

    def _on_frame(self, addr: int, ftype: int, fseq: int, payload: memoryview) -> None:
        self._push((addr, ftype, fseq, bytes(payload)))

    def _on_error(self, code: str) -> None:
        self._push(code)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        self.mid_frame = data[-1:] not in (b"", b"\x00")
        self._counters["bytes_received"] += len(data)
        self._reader.feed(data)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.arrived.set()
        if not self.closed.done():
            self.closed.set_result(None)


class BusMaster:
    """Polls the readers of one RS-485 bus and feeds the sink; ``run(stop)`` until ``stop``.

    ``readers`` maps bus address (1 … 247) to ``reader_id``. ``counters`` (a ``Counter``) holds:
    ``polls`` (new polls), ``retransmissions`` (same poll again after a timeout), ``nacks``,
    ``timeouts``, ``crc_errors``, ``framing_errors`` (every other rejected chunk; ``frame_<code>``
    breaks them down), ``answers_data``, ``answers_idle``, ``duplicates`` (data frames dropped by
    ``fseq``), ``stray_frames`` (a known reader's frame outside its turn), ``unknown_address``,
    ``echoes`` (poll/nack frames heard on the bus), ``batches``, ``heartbeats``, ``results``,
    ``acks_sent``, ``commands_sent``, ``batches_unacked`` (the sink returned no ack),
    ``sink_errors``, ``marked_not_answering``, ``port_errors``, ``line_busy_waits`` (a frame was
    still arriving when we wanted to talk), ``events_overflow``, ``bytes_received``,
    ``bytes_sent``; :meth:`stats` adds the gauge ``not_answering``.
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        readers: Mapping[int, int],
        sink: IngestSink,
        *,
        timing: BusTiming | None = None,
        clock: Clock = system_clock,
        reconnect: Backoff | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timing = timing or BusTiming.for_baudrate(baudrate)
        self.sink = sink
        self.counters: Counter[str] = Counter()
        self._clock = clock
        self._reconnect = reconnect or Backoff(initial_s=1.0, cap_s=30.0)
        self._readers: dict[int, _Reader] = {}
        self._order: list[_Reader] = []
        self._next = 0  # index into _order where round-robin continues
        self._retry: _Reader | None = None  # retried before anyone else
        self._encoder = frame.FrameEncoder()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.set_readers(readers)

    # -- configuration and status -----------------------------------------------------------

    def set_readers(self, readers: Mapping[int, int]) -> None:
        """Replace the bus's address map; readers that keep their address keep their state."""
        new: dict[int, _Reader] = {}
        seen: set[int] = set()
        for address, reader_id in sorted(readers.items()):
            if not frame.MIN_ADDR <= address <= frame.MAX_ADDR:
                raise ValueError(f"bus address {address} outside 1..247")
            if not 1 <= reader_id <= 0xFFFF_FFFE:
                raise ValueError(f"reader_id {reader_id} outside 1..4294967294")
            if reader_id in seen:
                raise ValueError(f"reader {reader_id} has two addresses on {self.port}")
            seen.add(reader_id)
            old = self._readers.get(address)
            if old is not None and old.reader_id == reader_id:
                new[address] = old
            else:
                new[address] = _Reader(address, reader_id, self._probe_backoff())
        self._readers = new
        self._order = list(new.values())
        self._next %= max(1, len(self._order))
        if self._retry is not None and self._retry not in self._order:
            self._retry = None
        self._wake.set()

    def send_command(self, reader_id: int, command: bytes) -> bool:
        """Queue a signed ``command`` message (§7.1) for a later poll; False if not on this bus."""
        if command[:2] != _COMMAND_HEAD or len(command) > frame.MAX_PAYLOAD:
            raise ValueError("not a protocol v1 command message")
        for reader in self._order:
            if reader.reader_id == reader_id:
                reader.commands.append(bytes(command))
                self._wake.set()
                return True
        return False

    def withdraw_command(self, reader_id: int, command: bytes) -> bool:
        """Drop a queued command that has not gone out yet (it expired); True if it was queued."""
        for reader in self._order:
            if reader.reader_id == reader_id and command in reader.commands:
                reader.commands.remove(command)
                return True
        return False

    def links(self) -> list[ReaderLink]:
        return [
            ReaderLink(r.address, r.reader_id, r.answering, r.last_answer_ms, len(r.commands))
            for r in self._order
        ]

    @property
    def not_answering(self) -> list[int]:
        """The reader ids currently marked not answering."""
        return [r.reader_id for r in self._order if not r.answering]

    def stats(self) -> dict[str, int]:
        return {**self.counters, "not_answering": len(self.not_answering)}

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Master the bus until ``stop`` is set, reopening the port whenever it goes away.

        On ``stop`` the attempt in flight (a frame sent, its answer awaited) is finished and the
        sink calls under way complete before ``run`` returns; cancelling ``run`` stops at once.
        """
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop.is_set():
                try:
                    protocol = await self._open()
                except (serial.SerialException, OSError, ValueError) as exc:
                    self.counters["port_errors"] += 1
                    delay = self._reconnect.next_delay()
                    log.warning("serial port cannot be opened", extra={
                        "port": self.port, "error": str(exc), "retry_in_s": round(delay, 3)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                self._reconnect.reset()
                log.info("bus open", extra={"port": self.port, "baudrate": self.baudrate,
                                            "readers": len(self._order)})
                try:
                    await self._serve(protocol, stop)
                except _PortLost:
                    self.counters["port_errors"] += 1
                    log.warning("serial port lost", extra={
                        "port": self.port, "error": str(protocol.error)})
                finally:
                    await self._close(protocol)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            raise
        finally:
            watcher.cancel()

    async def _open(self) -> _BusProtocol:
        loop = asyncio.get_running_loop()
        protocol = _BusProtocol(loop, self.counters)
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: protocol, self.port, baudrate=self.baudrate,
            bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
            exclusive=True,
        )
        protocol.transport = transport
        return protocol

    async def _close(self, protocol: _BusProtocol) -> None:
        # abort: nothing of ours is left to flush (every attempt ends after its answer or its
        # timeout), and a flush on a wedged adapter would block a worker thread
        if protocol.transport is not None:
            protocol.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.closed), 5.0)

    async def _serve(self, protocol: _BusProtocol, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if protocol.lost:
                raise _PortLost
            reader = self._pick(loop.time())
            if reader is None:
                await self._wait(self._next_due())
                continue
            await self._attempt(protocol, reader)

    def _pick(self, now: float) -> _Reader | None:
        if self._retry is not None:
            reader, self._retry = self._retry, None
            return reader
        count = len(self._order)
        for i in range(count):
            index = (self._next + i) % count
            reader = self._order[index]
            if not reader.busy and reader.due <= now:
                self._next = (index + 1) % count
                return reader
        return None

    def _next_due(self) -> float | None:
        dues = [r.due for r in self._order if not r.busy]
        return min(dues) if dues else None

    async def _wait(self, until: float | None) -> None:
        """Until ``until`` (loop time), a sink call finishing, a reader change or ``stop``."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            if until is None:
                await self._wake.wait()
            else:
                async with asyncio.timeout_at(until):
                    await self._wake.wait()

    # -- one attempt on the bus ---------------------------------------------------------------

    async def _attempt(self, protocol: _BusProtocol, reader: _Reader) -> None:
        loop = asyncio.get_running_loop()
        timing = self.timing
        if not reader.outstanding:
            await self._until_line_free(protocol)
            self._drain(protocol)  # whatever arrived since is nobody's answer now
            reader.fseq = (reader.fseq + 1) & 0xFF
            reader.payload = reader.take_downstream()
            reader.outstanding = True
            reader.failures = 0
            reader.nack_next = False
            self.counters["polls"] += 1
            if reader.payload[:2] == _COMMAND_HEAD:
                self.counters["commands_sent"] += 1
            elif reader.payload:
                self.counters["acks_sent"] += 1
            ftype, payload = frame.POLL, reader.payload
        elif reader.nack_next:
            self.counters["nacks"] += 1
            ftype, payload = frame.NACK, b""
        else:
            self.counters["retransmissions"] += 1
            ftype, payload = frame.POLL, reader.payload
        wire = bytes(self._encoder.encode(reader.address, ftype, reader.fseq, payload))
        await self._until_line_free(protocol)
        protocol.write(wire)
        self.counters["bytes_sent"] += len(wire)
        deadline = loop.time() + timing.wire_s(len(wire)) + timing.answer_timeout_s
        outcome = await self._await_answer(protocol, reader, deadline)
        now = loop.time()
        if isinstance(outcome, tuple):
            self._answered(reader, outcome, now)
            return
        reader.failures += 1
        reader.nack_next = outcome == _GARBLED
        if outcome == _TIMEOUT:
            self.counters["timeouts"] += 1
        if reader.answering and reader.failures >= timing.attempts:
            reader.answering = False
            self.counters["marked_not_answering"] += 1
            log.warning("reader not answering", extra={
                "port": self.port, "address": reader.address, "reader_id": reader.reader_id,
                "attempts": reader.failures})
        if reader.answering:
            self._retry = reader
        else:
            reader.due = now + reader.probe.next_delay()

    async def _until_line_free(self, protocol: _BusProtocol) -> None:
        """Never talk over a frame still arriving (a late or repeated answer): wait for its
        closing delimiter, or for ``quiet_s`` of silence (the partial chunk was noise), then for
        the replier to release its driver (``turnaround_s``)."""
        loop = asyncio.get_running_loop()
        waited = False
        while protocol.mid_frame and not protocol.lost:
            quiet_at = protocol.last_rx + self.timing.quiet_s
            if loop.time() >= quiet_at:
                break
            if not waited:
                waited = True
                self.counters["line_busy_waits"] += 1
            protocol.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(quiet_at):
                    await protocol.arrived.wait()
        gap = protocol.last_rx + self.timing.turnaround_s - loop.time()
        if gap > 0:
            await asyncio.sleep(gap)

    async def _await_answer(self, protocol: _BusProtocol, reader: _Reader,
                            deadline: float) -> _Frame | str:
        """The addressed reader's ``data``/``idle`` frame, else ``_TIMEOUT`` or ``_GARBLED``.

        A rejected chunk makes the answer garbled; ``nack`` then waits for the line to be quiet
        (``quiet_s``), so noise ahead of a good answer does not make us talk over it.
        """
        loop = asyncio.get_running_loop()
        quiet_s = self.timing.quiet_s
        garbled = False
        while True:
            while protocol.events:
                event = protocol.events.popleft()
                if isinstance(event, str):
                    self._count_error(event)
                    garbled = True
                elif event[0] == reader.address and event[1] in (frame.DATA, frame.IDLE):
                    return event
                else:
                    self._count_stray(event)
            if protocol.lost:
                raise _PortLost
            now = loop.time()
            quiet_at = protocol.last_rx + quiet_s
            if garbled and now >= quiet_at:
                return _GARBLED
            if now >= deadline:
                return _GARBLED if garbled else _TIMEOUT
            protocol.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, quiet_at) if garbled else deadline):
                    await protocol.arrived.wait()

    def _answered(self, reader: _Reader, answer: _Frame, now: float) -> None:
        _, ftype, fseq, payload = answer
        reader.outstanding = False
        reader.failures = 0
        reader.nack_next = False
        reader.last_answer_ms = self._clock()
        if not reader.answering:
            reader.answering = True
            log.info("reader answering again", extra={
                "port": self.port, "address": reader.address, "reader_id": reader.reader_id})
        reader.probe.reset()
        if ftype == frame.IDLE:
            self.counters["answers_idle"] += 1
            reader.due = now + self.timing.idle_poll_s
            return
        self.counters["answers_data"] += 1
        reader.due = now
        if fseq == reader.last_data_fseq:
            # the reader resent the answer we already have (§9.2 item 4): it answers the poll,
            # its payload was handed over once already
            self.counters["duplicates"] += 1
            return
        reader.last_data_fseq = fseq
        reader.busy = True
        task = asyncio.create_task(self._hand_over(reader, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, reader: _Reader, payload: bytes) -> None:
        """Give one upstream message to the sink; keep a batch's ack for the next poll."""
        transport = f"rs485 {self.port} #{reader.address}"
        head = payload[:2]
        try:
            if head == _HEARTBEAT_HEAD:
                self.counters["heartbeats"] += 1
                await self.sink.heartbeat(reader.reader_id, payload, transport)
            elif head == _RESULT_HEAD:
                self.counters["results"] += 1
                await self.sink.result(reader.reader_id, payload, transport)
            else:
                # a batch, or something that is none of the three: the sink's batch decoder
                # rejects it with the SPEC code (wrong_type, unsupported_version, truncated)
                # and quarantines the bytes for audit
                self.counters["batches"] += 1
                ack = await self.sink.batch(reader.reader_id, payload, transport)
                if ack is None:
                    self.counters["batches_unacked"] += 1
                else:
                    reader.ack = ack
        except Exception:
            self.counters["sink_errors"] += 1
            log.exception("sink failed", extra={"port": self.port, "address": reader.address,
                                                "reader_id": reader.reader_id})
        finally:
            reader.busy = False
            self._wake.set()

    # -- counting what is not an answer --------------------------------------------------------

    def _drain(self, protocol: _BusProtocol) -> None:
        while protocol.events:
            event = protocol.events.popleft()
            if isinstance(event, str):
                self._count_error(event)
            else:
                self._count_stray(event)

    def _count_error(self, code: str) -> None:
        self.counters["crc_errors" if code == "bad_crc" else "framing_errors"] += 1
        self.counters[f"frame_{code}"] += 1
        log.debug("bad frame", extra={"port": self.port, "reason": code})

    def _count_stray(self, event: _Frame) -> None:
        addr, ftype = event[0], event[1]
        if ftype in (frame.POLL, frame.NACK):
            self.counters["echoes"] += 1
        elif addr not in self._readers:
            self.counters["unknown_address"] += 1
            log.debug("frame from an unknown address", extra={"port": self.port, "address": addr})
        else:
            self.counters["stray_frames"] += 1

    def _probe_backoff(self) -> Backoff:
        return Backoff(initial_s=self.timing.probe_first_s, cap_s=self.timing.probe_cap_s,
                       factor=2.0, jitter=0.0)
