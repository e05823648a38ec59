"""Simulated RS-485 readers behind the far end of a pseudo-terminal, with injected noise.

``SimBus`` owns a pty pair: the gateway opens the slave by its tty name through pyserial, exactly
as it opens ``/dev/ttyUSB0``; the bus reads the master end, decodes the gateway's frames with
``protocol/frame.py`` and lets the addressed ``SimReader`` answer. Readers are built from the
runtime-neutral protocol code a real reader runs (``codec.record_into``, ``codec.BatchWriter``,
``codec.decode_ack``, ``frame.FrameEncoder``) and follow SPEC §9.2: a new poll applies its payload
and gets a new answer, a repeated poll or a ``nack`` gets the previous answer unchanged, records
leave the reader's queue only on an ack that verifies and matches the batch outstanding.

Noise is injected on the bus with a seeded RNG: bit flips and dropped bytes in both directions,
garbage between frames, answers sent twice, readers that are dead or answer late.

``RecordingSink`` is the gateway side's stand-in for ``gateway.ingest``: it verifies batches with
``construct_codec``, keeps each record identity once, counts every delivery, and returns a signed
ack built with ``construct_codec``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import codec, construct_codec, frame
from protocol.errors import ProtocolError
from protocol.hmac256 import HmacSha256
from tests.pty_end import PtyEnd

Identity = tuple[int, int, int]  # reader_id, boot, seq

TECH_ISO14443A = 2
SERIAL_BATCH_MAX = frame.MAX_PAYLOAD  # a serial batch is at most 1024 bytes (SPEC §4)


def reader_key(reader_id: int) -> bytes:
    return bytes((reader_id * 7 + i) & 0xFF for i in range(32))


def identity_of(record: bytes) -> Identity:
    return (int.from_bytes(record[2:6], "big"), int.from_bytes(record[6:10], "big"),
            int.from_bytes(record[10:14], "big"))


class SimReader:
    """One reader's RS-485 side: a record queue and a stop-and-wait uploader (SPEC §9.2, §5)."""

    def __init__(self, address: int, reader_id: int, *, boot: int = 1,
                 batch_max_records: int = codec.BATCH_MAX_RECORDS, key: bytes | None = None,
                 on_free: Callable[[Identity], None] | None = None) -> None:
        self.address = address
        self.reader_id = reader_id
        self.key = key or reader_key(reader_id)
        self.boot = boot
        self.seq = 0
        self.batch_max_records = batch_max_records
        self.on_free = on_free
        self.made: list[bytes] = []  # every record ever made, in order
        self.queue: list[bytes] = []  # made and not yet acknowledged (the "flash queue")
        self.freed: list[Identity] = []
        # behaviour knobs the tests turn
        self.dead = False  # hears nothing, says nothing
        self.late_s = 0.0  # every answer this late
        self.late_probability = 0.0  # or only this share of them ...
        self.late_random_s = 0.0  # ... this late
        self.heartbeat_due = False
        self.outbox: list[bytes] = []  # raw messages to send as data before anything else
        self.replay_next = False  # after a data answer: send it again ahead of the next one
        self.stats: Counter[str] = Counter()
        self._signer = HmacSha256(self.key)
        self._encoder = frame.FrameEncoder()
        self._batch = codec.BatchWriter(max_len=SERIAL_BATCH_MAX, max_records=batch_max_records)
        self._record = bytearray(codec.RECORD_MAX_LEN)
        self._poll_fseq: int | None = None  # of the last poll heard (RAM only)
        self._answer: bytes | None = None  # the last answer, resent unchanged on request
        self._answered_data = False
        self._data_fseq = 0
        self._outstanding: tuple[int, int, int] | None = None  # boot, first_seq, last_seq
        self._last_cmd_seq = 0
        self._result: bytes | None = None

    # -- the card side ----------------------------------------------------------------------

    def tap(self, count: int = 1) -> list[bytes]:
        """Make ``count`` signed records (4-byte ISO 14443A UIDs) and queue them."""
        made = []
        for _ in range(count):
            self.seq += 1
            uid = (self.reader_id * 100_000 + self.seq).to_bytes(4, "big")
            n = codec.record_into(self._record, self._signer, self.reader_id, self.boot,
                                  self.seq, codec.FLAG_CLOCK_SYNCED, TECH_ISO14443A, uid,
                                  1_790_000_000 + self.seq, self.seq % 1000, self.seq * 250)
            record = bytes(self._record[:n])
            made.append(record)
        self.made += made
        self.queue += made
        return made

    def reboot(self) -> None:
        """A power cut: RAM state is gone, the queue (flash) stays, the boot counter advances."""
        self.boot += 1
        self.seq = 0
        self._poll_fseq = None
        self._answer = None
        self._data_fseq = 0
        self._outstanding = None
        self._result = None

    # -- the bus side -------------------------------------------------------------------------

    def handle(self, ftype: int, fseq: int, payload: bytes) -> bytes | None:
        """The answer's wire bytes to a frame addressed to this reader, or None (no answer)."""
        if self.dead:
            return None
        if ftype == frame.NACK:
            self.stats["nacks"] += 1
            return self._answer if fseq == self._poll_fseq else None
        if ftype != frame.POLL:
            return None
        if fseq == self._poll_fseq and self._answer is not None:
            self.stats["retransmissions"] += 1  # payload not applied again (§9.2 item 3)
            return self._answer
        self.stats["polls"] += 1
        self._poll_fseq = fseq
        if payload:
            self._apply(payload)
        previous = self._answer if self._answered_data else None
        self._answer = self._next_answer(fseq)
        if self.replay_next and previous is not None:
            self.replay_next = False
            return previous + self._answer  # a stale copy ahead of the real answer
        return self._answer

    def answer_delay(self, rng: random.Random) -> float:
        if self.late_probability and rng.random() < self.late_probability:
            return self.late_random_s
        return self.late_s

    def _apply(self, payload: bytes) -> None:
        if payload[:2] == b"\x01\x03":
            try:
                ack = codec.decode_ack(payload, self._signer)
            except ProtocolError as exc:
                self.stats[f"bad_ack_{exc.code}"] += 1
                return
            key = (ack["boot"], ack["first_seq"], ack["last_seq"])
            if ack["reader_id"] != self.reader_id or key != self._outstanding:
                self.stats["stale_acks"] += 1  # frees nothing (§5)
                return
            self._free(*key)
            self._outstanding = None
            self.stats["acks"] += 1
        elif payload[:2] == b"\x01\x05":
            try:
                command = codec.decode_command(payload, self._signer)
            except ProtocolError as exc:
                self.stats[f"bad_command_{exc.code}"] += 1
                return
            status = "ok" if command["cmd_seq"] > self._last_cmd_seq else "stale"
            if status == "ok":
                self._last_cmd_seq = command["cmd_seq"]
                self.stats[f"command_{command['opcode']}"] += 1
            self._result = codec.encode_result(
                {"reader_id": self.reader_id, "cmd_seq": command["cmd_seq"], "status": status},
                self._signer)
        else:
            self.stats["unknown_downstream"] += 1

    def _free(self, boot: int, first_seq: int, last_seq: int) -> None:
        # the outstanding batch was filled from the head of the queue: it is a prefix
        n = 0
        for record in self.queue:
            identity = identity_of(record)
            if identity[1] != boot or not first_seq <= identity[2] <= last_seq:
                break
            self.freed.append(identity)
            if self.on_free is not None:
                self.on_free(identity)
            n += 1
        del self.queue[:n]

    def _next_answer(self, poll_fseq: int) -> bytes:
        message: bytes | None = None
        if self.outbox:
            message = self.outbox.pop(0)
        elif self._result is not None:
            message, self._result = self._result, None
        elif self.heartbeat_due:
            self.heartbeat_due = False
            message = self._heartbeat()
        elif self.queue:
            message = self._fill_batch()
        self._answered_data = message is not None
        if message is None:
            self.stats["idles"] += 1
            return bytes(self._encoder.encode(self.address, frame.IDLE, self._data_fseq))
        if message[1:2] == bytes((codec.T_BATCH,)):
            self.stats["batches"] += 1
        self._data_fseq = (self._data_fseq + 1) & 0xFF
        self.stats["data"] += 1
        return bytes(self._encoder.encode(self.address, frame.DATA, self._data_fseq, message))

    def _fill_batch(self) -> bytes:
        """The oldest unacknowledged records of one boot (resent until an ack frees them)."""
        self._batch.reset()
        boot = identity_of(self.queue[0])[1]
        first = last = 0
        for record in self.queue:
            _, rec_boot, seq = identity_of(record)
            if rec_boot != boot or not self._batch.add(record):
                break
            first = first or seq
            last = seq
        self._outstanding = (boot, first, last)
        return bytes(self._batch.finish(self._signer, self.reader_id, boot))

    def _heartbeat(self) -> bytes:
        return codec.encode_heartbeat({
            "reader_id": self.reader_id, "boot": self.boot, "state": "online", "faults": [],
            "fw_version": "1.0.0", "link": "rs485", "rssi_dbm": 0, "clock_synced": True,
            "time_s": 1_790_000_000, "uptime_s": 60, "free_heap": 50_000,
            "queue_depth": len(self.queue), "oldest_unsent_age_s": 0, "dropped": 0,
            "last_ack_boot": 0, "last_ack_seq": 0,
        }, self._signer)


@dataclass
class Noise:
    """Per-frame probabilities of each kind of damage on the bus."""

    flip_up: float = 0.0  # one bit of an answer flipped
    drop_up: float = 0.0  # one byte of an answer lost
    garbage: float = 0.0  # random bytes on the line ahead of an answer
    duplicate: float = 0.0  # an answer sent twice
    flip_down: float = 0.0  # one bit flipped in what the master sent (per read from the pty)
    drop_down: float = 0.0  # one byte lost from it


@dataclass
class BusStats:
    frames_down: int = 0
    heard: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, addr, ftype, fseq
    down_errors: Counter[str] = field(default_factory=Counter)
    unaddressed: int = 0
    damage: Counter[str] = field(default_factory=Counter)


class SimBus:
    """The readers' side of one pty: answers the gateway for the addressed ``SimReader``.

    ``port`` is the tty name the gateway opens. ``baudrate`` (optional) delays each answer by the
    wire time of the poll and of the answer, for throughput figures that mean something; ``echo``
    returns every byte the master sends, as a transceiver whose receiver stays enabled does.
    """

    def __init__(self, readers: Iterable[SimReader], *, noise: Noise | None = None,
                 seed: int = 0, baudrate: int | None = None, echo: bool = False) -> None:
        self.readers = {reader.address: reader for reader in readers}
        self.noise = noise or Noise()
        self.rng = random.Random(seed)
        self.baudrate = baudrate
        self.echo = echo
        self.stats = BusStats()
        self._pty = PtyEnd()
        self._master_fd = self._pty.master_fd
        self.port = self._pty.port
        self._frames = frame.FrameReader(self._on_frame, self._on_error)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def start(self) -> SimBus:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master_fd, self._readable)
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._master_fd)
        for timer in self._timers:
            timer.cancel()
        self._pty.close()

    async def __aenter__(self) -> SimBus:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the line now (e.g. a frame from an unconfigured address)."""
        self._send(data)

    # -- receiving the master ------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = bytearray(os.read(self._master_fd, 4096))
        except BlockingIOError:
            return
        except OSError:  # the gateway closed its end
            assert self._loop is not None
            self._loop.remove_reader(self._master_fd)
            return
        if self.echo:
            self._send(bytes(data))
        noise, rng = self.noise, self.rng
        if noise.flip_down and rng.random() < noise.flip_down:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            self.stats.damage["flip_down"] += 1
        if noise.drop_down and rng.random() < noise.drop_down:
            del data[rng.randrange(len(data))]
            self.stats.damage["drop_down"] += 1
        self._frames.feed(data)

    def _on_error(self, code: str) -> None:
        self.stats.down_errors[code] += 1  # the readers heard a garbled frame: nobody answers

    def _on_frame(self, addr: int, ftype: int, fseq: int, payload: memoryview) -> None:
        self.stats.frames_down += 1
        assert self._loop is not None
        self.stats.heard.append((self._loop.time(), addr, ftype, fseq))
        reader = self.readers.get(addr)
        if reader is None:
            self.stats.unaddressed += 1
            return
        answer = reader.handle(ftype, fseq, bytes(payload))
        if answer is None:
            return
        delay = reader.answer_delay(self.rng)
        if self.baudrate:
            poll_bytes = len(payload) + 10  # delimiters, COBS, header, CRC
            delay += (poll_bytes + len(answer)) * 10 / self.baudrate + 0.0005
        wire = self._damage(answer)
        if delay <= 0:
            self._send(wire)
            return
        assert self._loop is not None
        handle: asyncio.TimerHandle | None = None

        def later() -> None:
            assert handle is not None
            self._timers.discard(handle)
            self._send(wire)

        handle = self._loop.call_later(delay, later)
        self._timers.add(handle)

    def _damage(self, answer: bytes) -> bytes:
        noise, rng, damage = self.noise, self.rng, self.stats.damage
        data = bytearray(answer)
        if noise.flip_up and rng.random() < noise.flip_up:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            damage["flip_up"] += 1
        if noise.drop_up and rng.random() < noise.drop_up:
            del data[rng.randrange(len(data))]
            damage["drop_up"] += 1
        if noise.garbage and rng.random() < noise.garbage:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
            data[:0] = junk
            damage["garbage"] += 1
        if noise.duplicate and rng.random() < noise.duplicate:
            data += answer
            damage["duplicate"] += 1
        return bytes(data)

    # -- sending to the master -----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._pty.send(data)


class RecordingSink:
    """An ``IngestSink`` that stores each record identity once and acks like the real ingest.

    ``deliveries`` counts every time a record reached the sink (duplicates included), ``stored``
    keeps the first bytes per identity; ``refuse_next``/``fail_next`` make the next batch calls
    return no ack (nothing stored, as for a quarantined batch) or raise, and ``commit_s`` makes
    each commit take that long.
    """

    def __init__(self, readers: Iterable[int], commit_s: float = 0.0) -> None:
        self.keys: Mapping[int, bytes] = {rid: reader_key(rid) for rid in readers}
        self.commit_s = commit_s
        self.stored: dict[Identity, bytes] = {}
        self.deliveries: Counter[Identity] = Counter()
        self.batch_calls = 0
        self.transports: set[str] = set()
        self.heartbeats: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.rejected: list[tuple[int, str]] = []
        self.refuse_next = 0
        self.fail_next = 0

    async def batch(self, reader_id: int, payload: bytes, transport: str) -> bytes | None:
        self.batch_calls += 1
        self.transports.add(transport)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("database is locked")
        key = self.keys.get(reader_id)
        if key is None:
            self.rejected.append((reader_id, "unknown_reader"))
            return None
        try:
            header, records = construct_codec.split_batch(payload, key)
            if header["reader_id"] != reader_id:
                raise ProtocolError("identity_mismatch", "batch of another reader")
            for record in records:
                construct_codec.decode("record", record, key)
        except ProtocolError as exc:
            self.rejected.append((reader_id, exc.code))
            return None
        if self.refuse_next:
            self.refuse_next -= 1
            return None
        if self.commit_s:
            await asyncio.sleep(self.commit_s)
        for record in records:
            identity = identity_of(record)
            self.deliveries[identity] += 1
            if self.stored.setdefault(identity, record) != record:
                raise AssertionError(f"two different records under {identity}")
        return construct_codec.encode("ack", {
            "reader_id": reader_id, "boot": header["boot"], "first_seq": header["first_seq"],
            "last_seq": header["last_seq"], "verdicts": []}, key)

    async def heartbeat(self, reader_id: int, payload: bytes, transport: str) -> None:
        self.heartbeats.append(construct_codec.decode("heartbeat", payload, self.keys[reader_id]))

    async def result(self, reader_id: int, payload: bytes, transport: str) -> None:
        self.results.append(construct_codec.decode("result", payload, self.keys[reader_id]))
