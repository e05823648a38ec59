"""The reader's RS-485 side (firmware/bus_link.py) against the gateway's real bus master.

Bus tests: readers run the real firmware (``firmware.main.boot`` from files, ``CommandHandler``,
``Uplink``, ``BusLink``) on one shared bus of pseudo-terminals (``tests/firmware/bus_rig.py``),
with seeded noise and one dead reader. The gateway side is ``gateway.rs485.BusMaster`` opening
its pty by name through pyserial and the real ``gateway.ingest.Ingest`` on SQLite. Every bus
test ends with the same checks: each tap of each live reader stored once and in order, every
reader's queue empty, each ack and command handed down once, no collision on the bus.

Logic tests drive ``BusLink.feed`` with an in-memory UART: retransmissions and nacks, result
confirmation, framing limits, half-duplex timing; one runs on the MicroPython VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import types
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import firmware
from firmware.bus_link import BusLink
from firmware.ticks import ticks_diff, ticks_us
from gateway import db
from gateway.cards import card_id
from gateway.registry import Registry
from gateway.rs485 import BusMaster, BusTiming
from protocol import card, construct_codec, frame
from protocol.crc16 import crc16
from tests.firmware.bus_rig import BAUD, BusHub, BusReader, DePin, Noise, RecordingIngest
from tests.mpvm import MPVM

# Shorter than the SPEC's 140 ms answer timeout and 1 s / 5 s probes, so a dead reader costs the
# tests little; still well above the readers' own 40 ms answer deadline plus the pty hops.
TIMING = replace(
    BusTiming.for_baudrate(BAUD),
    answer_timeout_s=0.1,
    quiet_s=0.005,
    idle_poll_s=0.005,
    probe_first_s=0.2,
    probe_cap_s=1.0,
)

LIVE = [(1, 1001), (2, 1002), (7, 1007)]  # bus address, reader_id
DEAD = (9, 1009)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    hub: BusHub
    readers: list[BusReader]
    master: BusMaster
    ingest: RecordingIngest
    conn: Any

    def stored(self) -> list[tuple[int, int, int, str]]:
        """(reader_id, boot, seq, card) of every scan, in the order the gateway stored them."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self.conn.execute(
                "SELECT reader_id, boot, seq, card FROM scans ORDER BY scan_id"
            )
        ]

    def all_delivered(self) -> bool:
        total = sum(len(r.uids) for r in self.readers)
        return (
            all(r.app.queue.depth == 0 for r in self.readers)
            and self.conn.execute("SELECT count(*) FROM scans").fetchone()[0] == total
        )


@contextlib.asynccontextmanager
async def bus(
    tmp_path: Path,
    *,
    noise: Noise | None = None,
    seed: int = 0,
    live: Sequence[tuple[int, int]] = LIVE,
    dead: Sequence[tuple[int, int]] = (DEAD,),
    **config: Any,
) -> AsyncIterator[Rig]:
    conn = db.connect(tmp_path / "gateway.db")
    registry = Registry.open(conn, tmp_path / "master.key")
    hub = BusHub(noise, seed)
    readers = []
    for address, reader_id in live:
        creds = registry.register(
            reader_id, f"reader {reader_id}", "main", bus_port=hub.port, bus_address=address
        )
        uart, de = hub.attach(address)
        readers.append(
            BusReader(
                tmp_path / f"reader-{reader_id}", reader_id, address, creds.key, uart, de, **config
            )
        )
    for address, reader_id in dead:  # configured on the gateway, never answers
        registry.register(
            reader_id, f"reader {reader_id}", "main", bus_port=hub.port, bus_address=address
        )
    addresses = {
        r.bus_address: r.reader_id
        for r in registry.readers()
        if r.bus_port == hub.port and r.bus_address is not None
    }
    ingest = RecordingIngest(conn, registry.key_ring())
    ingest.start()
    master = BusMaster(hub.port, BAUD, addresses, ingest, timing=TIMING)
    stop = asyncio.Event()
    for reader in readers:
        reader.start()
    task = asyncio.create_task(master.run(stop))
    try:
        yield Rig(hub, readers, master, ingest, conn)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        for reader in readers:
            await reader.stop()
        await ingest.close()
        hub.close()
        conn.close()


async def tap_rounds(readers: Sequence[BusReader], rounds: int, gap_s: float = 0.02) -> None:
    """A tap at every reader every ``gap_s`` (the queue stages 32 taps between flushes)."""
    for _ in range(rounds):
        for reader in readers:
            reader.tap()
        await asyncio.sleep(gap_s)


def check_delivery(rig: Rig) -> None:
    """Each tap stored once, in tap order; queues empty; acks and commands handed down once."""
    stored = rig.stored()
    assert len(stored) == len(set((r[0], r[1], r[2]) for r in stored)), "an identity twice"
    for reader in rig.readers:
        mine = [row for row in stored if row[0] == reader.reader_id]
        assert mine == [
            (reader.reader_id, 1, seq, card_id(card.WIEGAND26, uid))
            for seq, uid in enumerate(reader.uids, start=1)
        ]
        assert reader.app.queue.depth == reader.app.queue.dropped == 0
        up = reader.uplink
        assert reader.handed["put_ack"] == up.acks
        assert up.stale_acks == up.bad_acks == up.overflow == 0
        assert reader.handed["put_command"] == reader.commands.applied
        assert reader.commands.rejected == 0
        # half duplex: never a byte with the driver off, the driver released after every frame
        assert reader.uart.without_de == 0 and reader.de.level == 0
        assert reader.de.rises == reader.link.sent == reader.uart.frames
    hub = rig.hub.stats
    assert hub.collisions == hub.out_of_turn == hub.wrong_address == 0
    assert rig.ingest.metrics.records_duplicate._value.get() == 0
    assert rig.conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


async def check_dead_reader(rig: Rig, noisy: bool = False) -> None:
    """Marked not answering after the poll and 3 retries, probed, while the others worked.

    On a noisy bus a live reader may also miss 4 attempts in a row; it is answering again now.
    """
    await until(lambda: rig.hub.stats.polled[DEAD[0]] >= TIMING.attempts + 1)
    await until(lambda: rig.master.not_answering == [DEAD[1]])
    master = rig.master
    marked = master.counters["marked_not_answering"]
    assert marked >= 1 if noisy else marked == 1
    assert {link.reader_id: link.answering for link in master.links()} == {
        **{r.reader_id: True for r in rig.readers},
        DEAD[1]: False,
    }
    assert rig.hub.stats.polled[DEAD[0]] >= TIMING.attempts + 1  # the poll, retries, a probe


# -- the whole bus -------------------------------------------------------------------------------


async def test_readers_a_dead_one_and_commands_on_a_clean_bus(tmp_path: Path) -> None:
    async with bus(tmp_path) as rig:
        first, second, third = rig.readers
        await until(lambda: all(r.link.online for r in rig.readers))
        await until(lambda: rig.master.not_answering == [DEAD[1]])
        assert rig.master.send_command(
            first.reader_id, first.command(1, "set_config", {"volume": 10})
        )
        assert rig.master.send_command(second.reader_id, second.command(1, "request_heartbeat", {}))
        await tap_rounds(rig.readers, 15)
        await until(rig.all_delivered)
        await until(lambda: len(rig.ingest.results) == 2)
        await until(lambda: rig.ingest.heartbeat_readers[second.reader_id] == 2)
        check_delivery(rig)
        await check_dead_reader(rig)
        links = dict(rig.conn.execute("SELECT reader_id, link FROM reader_status"))
    assert links == dict.fromkeys((1001, 1002, 1007), "rs485")
    assert sorted(rig.ingest.results) == [(1001, 1, "ok"), (1002, 1, "ok")]
    assert (first.commands.applied, second.commands.applied, third.commands.applied) == (1, 1, 0)
    assert first.app.feedback.volume == 10
    assert '"volume": 10' in (first.root / "config.json").read_text()  # persisted before answered
    # the app's heartbeat at start reached the gateway from every reader, the requested one too
    assert {rid: n for rid, n in rig.ingest.heartbeat_readers.items()} == {
        1001: 1,
        1002: 2,
        1007: 1,
    }
    c = rig.master.counters
    assert c["crc_errors"] == c["framing_errors"] == c["nacks"] == c["duplicates"] == 0
    assert c["stray_frames"] == c["unknown_address"] == c["echoes"] == 0
    for reader in rig.readers:
        link = reader.link
        assert link.bad_frames == link.too_large == link.nacks == link.echoes == 0
        assert link.answers + link.idles == link.polls


NOISES = {
    "light": Noise(flip_down=0.03, drop_down=0.03, flip_up=0.05, drop_up=0.05),
    "bit flips": pytest.param(Noise(flip_down=0.15, flip_up=0.2), marks=pytest.mark.slow),
    "dropped bytes": pytest.param(Noise(drop_down=0.15, drop_up=0.15), marks=pytest.mark.slow),
    "everything": pytest.param(
        Noise(flip_down=0.1, drop_down=0.1, flip_up=0.1, drop_up=0.1), marks=pytest.mark.slow
    ),
}


@pytest.mark.parametrize("noise", NOISES.values(), ids=list(NOISES))
async def test_noise_loses_nothing_doubles_nothing_and_commands_arrive(
    tmp_path: Path, noise: Noise
) -> None:
    async with bus(tmp_path, noise=noise, seed=7, batch_max_records=4) as rig:
        await until(lambda: all(r.link.online for r in rig.readers))
        for i, reader in enumerate(rig.readers):
            assert rig.master.send_command(
                reader.reader_id, reader.command(1, "set_config", {"volume": 20 + i})
            )
        await tap_rounds(rig.readers, 40)
        await until(rig.all_delivered, timeout=25)
        await until(lambda: len(rig.ingest.results) == len(rig.readers))
        await until(lambda: rig.master.not_answering == [DEAD[1]])
        check_delivery(rig)
        await check_dead_reader(rig, noisy=True)
    assert sorted(rig.ingest.results) == [(r.reader_id, 1, "ok") for r in rig.readers]
    for i, reader in enumerate(rig.readers):
        assert reader.commands.applied == reader.handed["put_command"] == 1
        assert reader.app.feedback.volume == 20 + i
    damage = rig.hub.stats.damage
    assert damage["flip_up"] + damage["drop_up"] > 0
    assert damage["flip_down"] + damage["drop_down"] > 0
    c = rig.master.counters
    assert c["crc_errors"] + c["framing_errors"] > 0 and c["nacks"] > 0
    links = [r.link for r in rig.readers]
    assert sum(link.bad_frames for link in links) > 0  # polls garbled on the way down ...
    assert sum(link.nacks + link.repeats for link in links) > 0  # ... answers asked for again


# -- the link's logic, with an in-memory UART ----------------------------------------------------


class MemUart:
    """``machine.UART`` in memory: ``inbox`` is what the bus delivered, ``sent`` what went out."""

    def __init__(self, de: DePin) -> None:
        self.de = de
        self.inbox = bytearray()
        self.sent: list[bytes] = []
        self.sent_us: list[int] = []
        self.frames = 0
        self.without_de = 0
        self.flushes = 0

    def any(self) -> int:
        return len(self.inbox)

    def readinto(self, buf: bytearray) -> int | None:
        n = min(len(buf), len(self.inbox))
        buf[:n] = self.inbox[:n]
        del self.inbox[:n]
        return n or None

    def write(self, data: memoryview) -> int:
        assert self.de.level == 1, "a write with the driver off never reaches the bus"
        self.sent.append(bytes(data))
        self.sent_us.append(ticks_us())
        self.frames += 1
        return len(data)

    def flush(self) -> None:
        assert self.de.level == 1
        self.flushes += 1


ADDR = 5


def lone_reader(tmp_path: Path, **link_options: Any) -> tuple[BusReader, MemUart]:
    de = DePin()
    uart = MemUart(de)
    reader = BusReader(tmp_path / "reader", 1005, ADDR, bytes(range(32)), uart, de)
    if link_options:
        reader.relink(**link_options)
    return reader, uart


def wire(ftype: str, fseq: int, payload: bytes = b"", addr: int = ADDR) -> bytes:
    return frame.encode({"addr": addr, "ftype": ftype, "fseq": fseq, "payload": payload})


def feed(link: BusLink, data: bytes) -> None:
    buf = bytearray(data)
    link.feed(buf, len(buf))


def answer(data: bytes) -> dict[str, Any]:
    return frame.decode(data)


def ack_for(reader: BusReader, batch: bytes) -> bytes:
    header, _ = construct_codec.split_batch(batch, reader.key)
    return construct_codec.encode(
        "ack",
        {
            "reader_id": reader.reader_id,
            "boot": header["boot"],
            "first_seq": header["first_seq"],
            "last_seq": header["last_seq"],
            "verdicts": [],
        },
        reader.key,
    )


def test_a_repeated_poll_or_a_nack_resends_the_answer_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    reader, uart = lone_reader(tmp_path)
    link, up = reader.link, reader.uplink
    for _ in range(3):
        reader.tap()
    feed(link, wire("poll", 1))
    first = answer(uart.sent[0])
    assert (first["addr"], first["ftype"]) == (ADDR, "data")
    batch = construct_codec.decode("batch", first["payload"], reader.key)
    assert [r["seq"] for r in batch["records"]] == [1, 2, 3]
    assert link.online and up.live_from == 4  # the first poll brought the link up: taps from
    # now on are live and go ahead of the three made before
    feed(link, wire("poll", 1))  # our answer was lost: the master repeats its poll
    feed(link, wire("nack", 1))  # ... or our answer came garbled
    feed(link, wire("nack", 9))  # a nack for a poll we never heard: nothing to say
    assert uart.sent == [uart.sent[0]] * 3
    assert (link.polls, link.repeats, link.nacks) == (1, 1, 1)

    ack = ack_for(reader, first["payload"])
    feed(link, wire("poll", 2, ack))
    assert reader.app.queue.depth == 0 and (reader.handed["put_ack"], up.acks) == (1, 1)
    idle = answer(uart.sent[3])
    assert (idle["ftype"], idle["fseq"]) == ("idle", first["fseq"])  # the last data fseq
    feed(link, wire("poll", 2, ack))  # the same poll again: the ack is not handed down again
    assert uart.sent[4] == uart.sent[3]
    assert (reader.handed["put_ack"], up.acks, up.stale_acks) == (1, 1, 0)
    feed(link, wire("poll", 3, ack))  # a new poll replaying the ack: the uplink refuses it
    assert (reader.handed["put_ack"], up.acks, up.stale_acks) == (2, 1, 1)

    reader.tap()
    reader.tap()
    feed(link, wire("poll", 4))
    second = answer(uart.sent[6])
    assert (second["ftype"], second["fseq"]) == ("data", (first["fseq"] + 1) & 0xFF)
    records = construct_codec.decode("batch", second["payload"], reader.key)["records"]
    assert [r["seq"] for r in records] == [4, 5]
    feed(link, wire("poll", 5))  # no ack in the new poll: the outstanding batch again
    again = answer(uart.sent[7])
    assert again["payload"] == second["payload"] and again["fseq"] == (second["fseq"] + 1) & 0xFF


def test_results_and_status_go_first_and_a_result_is_confirmed_by_the_next_new_poll(
    tmp_path: Path,
) -> None:
    reader, uart = lone_reader(tmp_path)
    link, up = reader.link, reader.uplink
    reader.tap()
    link.send_status(reader.app.heartbeat())
    reboot = reader.command(1, "reboot", {})
    feed(link, wire("poll", 1, reboot))
    result = answer(uart.sent[-1])
    assert construct_codec.decode("result", result["payload"], reader.key)["status"] == "ok"
    feed(link, wire("poll", 1, reboot))  # repeated: same answer, command not handed down again
    assert uart.sent[-1] == uart.sent[-2] and reader.handed["put_command"] == 1
    assert reader.hw.reboots == 0
    feed(link, wire("poll", 2))  # the master has the result: now the reader may reboot
    assert reader.hw.reboots == 1 and up.results == []
    status = answer(uart.sent[-1])
    assert status["payload"][:2] == b"\x01\x04"
    newer = reader.app.heartbeat()
    link.send_status(newer)  # a newer status while the first one is on its way
    feed(link, wire("poll", 3))
    assert answer(uart.sent[-1])["payload"] == newer  # the newer one is not dropped
    feed(link, wire("poll", 4))
    assert answer(uart.sent[-1])["payload"][:2] == b"\x01\x02"  # then the batch
    assert up.status is None


def test_framing_limits_foreign_traffic_and_odd_payloads(tmp_path: Path) -> None:
    reader, uart = lone_reader(tmp_path)
    link = reader.link
    foreign = wire("poll", 1, bytes(range(1, 200)) * 5, addr=6)
    feed(link, foreign + wire("data", 3, b"\x01\x02", addr=6) + b"\x01" * 1500 + b"\x00")
    assert (link.bad_frames, link.too_large, uart.sent) == (0, 0, [])  # not ours: skipped
    feed(link, bytes([0x06, ADDR]) + b"\x07" * 1100 + b"\x00")  # ours, longer than any frame
    assert link.too_large == 1
    bad = bytearray(wire("poll", 1))
    bad[-2] ^= 0x10
    feed(link, bytes(bad))
    assert (link.bad_frames, link.last_error) == (1, "bad_crc")
    feed(link, wire("data", 1, b"\x01\x02"))  # our own echo (receiver left on)
    assert link.echoes == 1 and uart.sent == []
    poll = wire("poll", 1, b"\x01\x09junk")  # neither ack nor command: answered all the same
    for byte in poll:  # one byte per read
        feed(link, bytes([byte]))
    assert link.bad_payloads == 1 and len(uart.sent) == 1 and link.polls == 1


def test_an_idle_frame_with_a_long_payload_is_refused_like_the_gateway_refuses_it(
        tmp_path: Path) -> None:
    """The reader's body buffer holds a chunk's longest decoding, so a frame for it with an
    over-long payload gets SPEC 9.1's verdict (trailing_bytes, as the gateway's FrameReader
    gives), not a buffer-size one."""
    reader, uart = lone_reader(tmp_path)
    body = bytearray((ADDR, frame.IDLE, 0)) + bytes(1025)
    crc = crc16(body)
    body += bytes((crc >> 8, crc & 0xFF))
    feed(reader.link, b"\x00" + construct_codec.cobs_encode(bytes(body)) + b"\x00")
    assert (reader.link.bad_frames, reader.link.last_error, uart.sent) == (1, "trailing_bytes", [])


def test_half_duplex_timing_and_answers_held_back(tmp_path: Path) -> None:
    reader, uart = lone_reader(tmp_path)
    link = reader.link
    fed = ticks_us()
    feed(link, wire("poll", 1))
    assert ticks_diff(uart.sent_us[0], fed) >= 500  # SPEC 9.2: >= 0.5 ms of quiet first
    assert (reader.de.rises, reader.de.level, uart.flushes) == (1, 0, 1)
    # bytes right behind the poll: the line is not ours, the master's retry gets the answer
    feed(link, wire("poll", 2) + b"\x00\x05")
    assert link.withheld == 1 and len(uart.sent) == 1
    uart.inbox += b"\x03"  # more bytes waiting in the UART
    feed(link, wire("poll", 2))
    assert link.withheld == 2 and len(uart.sent) == 1
    uart.inbox.clear()
    feed(link, b"\x00" + wire("poll", 2))
    assert len(uart.sent) == 2 and link.polls == 2 and link.repeats == 2

    late, late_uart = lone_reader(tmp_path / "late", answer_within_ms=-1)
    feed(late.link, wire("poll", 1))
    assert late.link.withheld == 1 and late_uart.sent == []
    with pytest.raises(ValueError):
        BusLink(reader.uplink, uart, reader.de, 248, BAUD)


async def test_run_reads_the_uart_and_tracks_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, uart = lone_reader(tmp_path)
    task = asyncio.create_task(reader.link.run())
    try:
        uart.inbox += wire("poll", 1, addr=6) + wire("poll", 1)
        await until(lambda: len(uart.sent) == 1, timeout=2)
        assert reader.link.online and answer(uart.sent[0])["ftype"] == "idle"
        monkeypatch.setattr("firmware.bus_link._ONLINE_MS", 0)  # nobody polled us for a while
        await until(lambda: not reader.link.online, timeout=2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_build_bus_from_the_board_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Pin:
        OUT = 3
        IN = 1
        PULL_UP = 2

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(("Pin", args, kwargs))

    class UART:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(("UART", args, kwargs))

    class Machine(types.ModuleType):
        def __getattr__(self, name: str) -> type:  # whatever else the module names at import
            return type(name, (), {})

    machine = Machine("machine")
    machine.Pin = Pin  # type: ignore[attr-defined]
    machine.UART = UART  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "machine", machine)
    assert "firmware.hw_esp32" not in sys.modules
    try:
        hw = importlib.import_module("firmware.hw_esp32")
    finally:  # nothing else may see the module built on the stand-in
        sys.modules.pop("firmware.hw_esp32", None)
        if hasattr(firmware, "hw_esp32"):
            delattr(firmware, "hw_esp32")
    profile = {"rs485": {"uart": 1, "tx": 17, "rx": 16, "de": 4, "baudrate": 115200}}
    uart, de = hw.build_bus(profile)
    assert isinstance(uart, UART) and isinstance(de, Pin)
    assert made == [
        ("Pin", (4, Pin.OUT), {"value": 0}),  # DE low before the UART exists
        ("UART", (1,), {"baudrate": 115200, "tx": 17, "rx": 16, "rxbuf": 4096, "timeout": 0}),
    ]


# -- on the MicroPython VM -----------------------------------------------------------------------

VM_CODE = """
import asyncio, gc
from firmware.bus_link import BusLink
from protocol import frame

class Pin:
    def __init__(self):
        self.level = 0
        self.log = []
    def value(self, v):
        self.level = v
        self.log.append(v)

class Uart:
    def __init__(self, de):
        self.de = de
        self.inbox = []
        self.out = []
        self.flushes = 0
    def any(self):
        return len(self.inbox)
    def readinto(self, buf):
        if not self.inbox:
            return None
        piece = self.inbox.pop(0)
        buf[:len(piece)] = piece
        return len(piece)
    def write(self, data):
        self.out.append((self.de.level, bytes(data)))
        return len(data)
    def flush(self):
        self.flushes += 1

class Up:
    def __init__(self):
        self.results = []
        self.status = None
        self.pending = b""
        self.acks = []
        self.commands = []
        self.ups = 0
        self.confirmed = 0
    def link_up(self):
        self.ups += 1
    def send_status(self, hb):
        self.status = hb
    def put_ack(self, data):
        self.acks.append(bytes(data))
    def take_ack(self):
        self.pending = b""
        return True
    def put_command(self, data):
        self.commands.append(bytes(data))
    def take_command(self):
        self.results.append(b"\\x01\\x06result")
    def result_sent(self):
        self.results.pop(0)
        self.confirmed += 1
    def batch(self):
        return self.pending or None

def poll(ftype, fseq, payload=b"", addr=5):
    return frame.encode({"addr": addr, "ftype": ftype, "fseq": fseq, "payload": payload})

def pieces(data, size):
    return [bytearray(data[i:i + size]) for i in range(0, len(data), size)]

de = Pin()
uart = Uart(de)
up = Up()
link = BusLink(up, uart, de, 5, 115200)
up.pending = b"\\x01\\x02batch"

def show():
    level, data = uart.out[-1]
    f = frame.decode(data)
    print(len(uart.out), level, f["ftype"], f["payload"], de.level)

async def sent(n):
    for _ in range(1000):
        if len(uart.out) >= n:
            return
        await asyncio.sleep_ms(2)
    raise AssertionError("no answer")

async def main():
    task = asyncio.create_task(link.run())
    stream = b"\x13\x37" + poll("poll", 1, b"x" * 300, addr=9) + poll("poll", 1)
    uart.inbox.extend(pieces(stream, 100))
    await sent(1)
    show()
    first = uart.out[0][1]
    uart.inbox.append(bytearray(poll("poll", 1)))
    await sent(2)
    uart.inbox.append(bytearray(poll("nack", 1)))
    await sent(3)
    print(uart.out[1][1] == first, uart.out[2][1] == first, link.repeats, link.nacks)
    uart.inbox.append(bytearray(poll("poll", 2, b"\x01\x05cmd")))
    await sent(4)
    show()
    uart.inbox.append(bytearray(poll("poll", 3, b"\x01\x03ack")))
    await sent(5)
    show()
    print(up.confirmed, up.commands, up.acks, up.ups, link.online)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    print(uart.flushes == len(uart.out), de.log.count(1) == len(uart.out), de.level)

await main()

# no allocation per byte: 64 KB of other readers' frames, fed 256 bytes at a time
traffic = []
for i in range(64):
    traffic.extend(pieces(poll("poll", i, bytes(1000), addr=9), 256))
gc.collect()
before = gc.mem_alloc()
for piece in traffic:
    link.feed(piece, len(piece))
grown = gc.mem_alloc() - before
print("alloc", grown < 512, link.bad_frames, link.too_large)
"""


def test_bus_link_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(VM_CODE, timeout=60).splitlines()
    assert out == [
        "1 1 data b'\\x01\\x02batch' 0",
        "True True 1 1",
        "4 1 data b'\\x01\\x06result' 0",
        "5 1 idle b'' 0",
        "1 [b'\\x01\\x05cmd'] [b'\\x01\\x03ack'] 1 True",
        "True True 0",
        "alloc True 0 0",
    ]
