"""The RS-485 bus master against simulated readers behind a real pseudo-terminal (SPEC §9).

The gateway opens the pty's slave by its tty name through pyserial, as it opens a USB adapter;
``SimBus`` answers on the master end for the addressed ``SimReader``, with injected noise. Every
test ends by checking the invariants: each record a reader made is stored exactly once by the
sink, and each reader freed exactly its records, only on acks, only after the sink held them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.retry import Backoff
from gateway.rs485 import BusMaster, BusTiming
from protocol import construct_codec, frame
from tests.gateway.serial_readers import (
    Identity,
    Noise,
    RecordingSink,
    SimBus,
    SimReader,
    identity_of,
    reader_key,
)

# Small timeouts for tests; production uses BusTiming.for_baudrate as it is.
FAST = replace(BusTiming.for_baudrate(115200), answer_timeout_s=0.05, turnaround_s=0.0,
               quiet_s=0.002, idle_poll_s=0.002, probe_first_s=0.02, probe_cap_s=0.1)


def make_readers(sink_holder: list[RecordingSink], spec: Iterable[tuple[int, int]],
                 batch_max_records: int = 64) -> list[SimReader]:
    """Readers whose every free is checked against what the sink had committed by then."""
    readers = []
    for address, reader_id in spec:
        def on_free(identity: Identity) -> None:
            assert identity in sink_holder[0].stored, f"{identity} freed before it was stored"
        readers.append(SimReader(address, reader_id, on_free=on_free,
                                 batch_max_records=batch_max_records))
    return readers


@contextlib.asynccontextmanager
async def running(master: BusMaster) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(master.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def all_freed(readers: Iterable[SimReader]) -> Callable[[], bool]:
    readers = list(readers)
    return lambda: all(not r.queue and len(r.freed) == len(r.made) for r in readers)


def assert_exactly_once(readers: Iterable[SimReader], sink: RecordingSink,
                        strict: bool = True) -> None:
    """Every record made is stored once and freed once; with ``strict`` also delivered once."""
    made: dict[Identity, bytes] = {}
    for reader in readers:
        assert reader.queue == [], f"reader {reader.reader_id} still holds records"
        identities = [identity_of(r) for r in reader.made]
        assert sorted(reader.freed) == sorted(identities), "freed exactly the records made"
        made.update(zip(identities, reader.made, strict=True))
    assert sink.stored == made
    if strict:
        assert set(sink.deliveries.values()) == {1}, "a record reached the sink twice"


def setup(spec: Sequence[tuple[int, int]], records: int = 0, batch_max_records: int = 64
          ) -> tuple[RecordingSink, list[SimReader]]:
    holder: list[RecordingSink] = []
    readers = make_readers(holder, spec, batch_max_records)
    sink = RecordingSink(r.reader_id for r in readers)
    holder.append(sink)
    for reader in readers:
        reader.tap(records)
    return sink, readers


FOUR = [(1, 101), (2, 102), (7, 107), (247, 147)]


def test_timing_defaults_follow_the_spec() -> None:
    t = BusTiming.for_baudrate(115200)
    assert t.answer_timeout_s == pytest.approx(0.050 + 1036 * 10 / 115200)  # ~140 ms
    assert t.turnaround_s == pytest.approx(0.0005)
    assert (t.attempts, t.probe_first_s, t.probe_cap_s) == (4, 1.0, 5.0)
    slow = BusTiming.for_baudrate(9600)
    assert slow.answer_timeout_s == pytest.approx(0.050 + 1036 * 10 / 9600)  # ~1.13 s
    assert slow.turnaround_s == pytest.approx(2 * 10 / 9600)
    with pytest.raises(ValueError):
        BusTiming.for_baudrate(0)


def test_the_address_map_is_checked() -> None:
    sink = RecordingSink([1])
    for readers in ({0: 1}, {248: 1}, {1: 0}, {1: 5, 2: 5}):
        with pytest.raises(ValueError):
            BusMaster("/dev/null", 115200, readers, sink)
    master = BusMaster("/dev/null", 115200, {3: 1}, sink)
    with pytest.raises(ValueError):
        master.send_command(1, b"\x01\x03" + bytes(40))  # an ack is not a command
    assert master.send_command(2, construct_codec.encode("command", {
        "reader_id": 2, "cmd_seq": 1, "issued_s": 0, "opcode": "reboot", "args": {}},
        reader_key(2))) is False


async def test_four_readers_on_a_clean_bus_deliver_every_record_once() -> None:
    sink, readers = setup(FOUR, records=120, batch_max_records=16)
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, {r.address: r.reader_id for r in readers}, sink,
                           timing=FAST)
        async with running(master):
            await until(all_freed(readers))
            for reader in readers:
                reader.tap(5)  # live taps after the backlog
            await until(all_freed(readers))
    assert_exactly_once(readers, sink)
    c = master.counters
    assert c["timeouts"] == c["crc_errors"] == c["framing_errors"] == c["nacks"] == 0
    assert c["batches"] == c["acks_sent"] == sum(r.stats["acks"] for r in readers)
    assert sink.transports == {f"rs485 {bus.port} #{r.address}" for r in readers}
    assert master.not_answering == [] and all(link.answering for link in master.links())
    assert {r.reader_id: r.stats["stale_acks"] for r in readers} == dict.fromkeys(
        (r.reader_id for r in readers), 0)


NOISES = {
    "bit flips up": Noise(flip_up=0.2),
    "bit flips down": Noise(flip_down=0.2),
    "dropped bytes": Noise(drop_up=0.15, drop_down=0.15),
    "garbage between frames": Noise(garbage=0.3),
    "answers sent twice": Noise(duplicate=0.3),
    "everything": Noise(flip_up=0.07, flip_down=0.07, drop_up=0.05, drop_down=0.05,
                        garbage=0.1, duplicate=0.1),
}


@pytest.mark.parametrize("name", list(NOISES))
async def test_noise_loses_nothing_and_doubles_nothing(name: str) -> None:
    sink, readers = setup(FOUR, records=60, batch_max_records=8)
    async with SimBus(readers, noise=NOISES[name], seed=len(name)) as bus:
        master = BusMaster(bus.port, 115200, {r.address: r.reader_id for r in readers}, sink,
                           timing=FAST)
        async with running(master):
            await until(all_freed(readers), timeout=30)
    assert_exactly_once(readers, sink)
    c = master.counters
    assert sum(bus.stats.damage.values()) > 0
    if name != "answers sent twice" and "down" not in name:
        assert c["crc_errors"] + c["framing_errors"] > 0
    if name in ("bit flips up", "dropped bytes", "everything"):
        assert c["nacks"] > 0  # a garbled answer is asked for again
    if name == "garbage between frames":
        assert c["nacks"] == 0  # noise ahead of a good answer costs nothing
    if "down" in name or name == "dropped bytes":
        assert sum(bus.stats.down_errors.values()) > 0 and c["timeouts"] > 0
        assert sum(r.stats["retransmissions"] for r in readers) + c["timeouts"] > 0
    if name == "answers sent twice":
        assert c["stray_frames"] > 0  # the second copies, counted and dropped
    assert master.not_answering == []


async def test_a_dead_reader_is_marked_and_probed_with_backoff_while_others_flow() -> None:
    sink, readers = setup([(1, 101), (2, 102), (3, 103)], records=40, batch_max_records=4)
    sink.keys = {**sink.keys, 109: reader_key(109)}
    addresses = {r.address: r.reader_id for r in readers} | {9: 109}
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, addresses, sink, timing=FAST)
        async with running(master):
            await until(all_freed(readers))
            await asyncio.sleep(0.45)  # several probes at the capped interval
            assert master.not_answering == [109]
            heard = [(t, ftype, fseq) for t, addr, ftype, fseq in bus.stats.heard if addr == 9]
            # the poll, 3 retries, then probes: always the same outstanding poll
            assert {(ftype, fseq) for _, ftype, fseq in heard} == {(frame.POLL, 1)}
            assert master.counters["marked_not_answering"] == 1
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(heard[3:])]
            expected = [0.02, 0.04, 0.08, 0.1, 0.1]
            assert len(gaps) >= 4
            for gap, floor in zip(gaps, expected, strict=False):
                assert floor * 0.9 <= gap <= floor + 0.06, (gaps, expected)
            # the dead reader did not hold up the others: their records all went through
            assert_exactly_once(readers, sink)
            # it comes back (power restored): answered at the next probe, records delivered
            revived = make_readers([sink], [(9, 109)])[0]
            revived.tap(10)
            bus.readers[9] = revived
            await until(all_freed([revived]))
            assert master.not_answering == []
    assert_exactly_once([*readers, revived], sink)
    assert master.stats()["not_answering"] == 0


async def test_readers_that_answer_late_lose_nothing() -> None:
    """One reader is slow but in time, one is sometimes later than the master waits."""
    timing = replace(FAST, answer_timeout_s=0.03)
    sink, readers = setup([(1, 101), (2, 102), (3, 103)], records=40, batch_max_records=5)
    readers[0].late_s = 0.01
    readers[1].late_probability, readers[1].late_random_s = 0.3, 0.045
    async with SimBus(readers, seed=3) as bus:
        master = BusMaster(bus.port, 115200, {r.address: r.reader_id for r in readers}, sink,
                           timing=timing)
        async with running(master):
            await until(all_freed(readers), timeout=30)
    # late copies may reach the sink twice (at-least-once); it stores each identity once
    assert_exactly_once(readers, sink, strict=False)
    assert master.counters["timeouts"] > 0 and master.counters["retransmissions"] > 0
    assert readers[1].stats["retransmissions"] > 0  # answered again, payload not re-applied


async def test_a_repeated_data_frame_is_dropped_by_fseq() -> None:
    sink, readers = setup([(5, 105)], records=30, batch_max_records=10)
    reader = readers[0]
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, {5: 105}, sink, timing=FAST)
        reader.replay_next = True  # the second poll hears the first data frame again first
        async with running(master):
            await until(all_freed(readers))
        assert not reader.replay_next
    assert master.counters["duplicates"] >= 1
    assert_exactly_once(readers, sink)  # the duplicate's payload never reached the sink


async def test_echo_garbage_and_foreign_addresses_are_counted_not_fatal() -> None:
    sink, readers = setup(FOUR, records=30, batch_max_records=6)
    stranger = frame.encode({"addr": 200, "ftype": "data", "fseq": 1, "payload": b"\x01\x02"})
    async with SimBus(readers, echo=True, noise=Noise(garbage=0.2), seed=11) as bus:
        master = BusMaster(bus.port, 115200, {r.address: r.reader_id for r in readers}, sink,
                           timing=FAST)
        async with running(master):
            for _ in range(20):
                bus.inject(stranger)
                bus.inject(b"\xff\x13\x37\x00\x00\x00")
                bus.inject(b"\x01" * 1100 + b"\x00")  # longer than any frame: too_large
                await asyncio.sleep(0.01)
            await until(all_freed(readers))
    assert_exactly_once(readers, sink)
    c = master.counters
    assert c["echoes"] > 0 and c["unknown_address"] > 0
    assert c["frame_too_large"] > 0 and c["framing_errors"] > 0


async def test_heartbeats_commands_and_odd_payloads_reach_the_sink() -> None:
    sink, readers = setup([(4, 104), (6, 106)], records=3)
    reader = readers[0]
    reader.heartbeat_due = True
    key = reader_key(104)
    reader.outbox += [
        construct_codec.encode("command", {"reader_id": 104, "cmd_seq": 9, "issued_s": 0,
                                           "opcode": "reboot", "args": {}}, key),
        b"\x02\x02" + bytes(60),
        b"",
    ]
    command = construct_codec.encode("command", {
        "reader_id": 104, "cmd_seq": 1, "issued_s": 1_790_000_000, "opcode": "set_time",
        "args": {"time_s": 1_790_000_000, "time_ms": 5}}, key)
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, {4: 104, 6: 106}, sink, timing=FAST)
        assert master.send_command(104, command)
        async with running(master):
            await until(lambda: bool(sink.results) and bool(sink.heartbeats))
            await until(all_freed(readers))
    assert [(h["reader_id"], h["link"], h["queue_depth"]) for h in sink.heartbeats] == [
        (104, "rs485", 3)]
    assert [(r["reader_id"], r["cmd_seq"], r["status"]) for r in sink.results] == [(104, 1, "ok")]
    assert reader.stats["command_set_time"] == 1
    # a data frame that is no batch, heartbeat or result is rejected by the sink's batch decoder
    assert sorted(code for _, code in sink.rejected) == [
        "truncated", "unsupported_version", "wrong_type"]
    assert master.counters["commands_sent"] == 1 and master.counters["heartbeats"] == 1
    assert_exactly_once(readers, sink)


async def test_without_an_ack_the_reader_keeps_its_records_and_sends_them_again() -> None:
    sink, readers = setup([(1, 101), (2, 102)], records=20, batch_max_records=5)
    sink.fail_next, sink.refuse_next = 3, 2
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, {1: 101, 2: 102}, sink, timing=FAST)
        async with running(master):
            await until(all_freed(readers))
    assert master.counters["sink_errors"] == 3 and master.counters["batches_unacked"] == 2
    # each of the 5 batches without an ack freed nothing and was sent again; on_free checked
    # that every record freed was stored first
    sent = sum(r.stats["batches"] for r in readers)
    assert sent == sink.batch_calls == sum(r.stats["acks"] for r in readers) + 5
    assert_exactly_once(readers, sink)


async def test_a_reader_rebooting_mid_run_loses_nothing() -> None:
    sink, readers = setup([(1, 101), (2, 102)], records=25, batch_max_records=5)
    async with SimBus(readers, noise=Noise(flip_up=0.1, flip_down=0.1), seed=5) as bus:
        master = BusMaster(bus.port, 115200, {1: 101, 2: 102}, sink, timing=FAST)
        async with running(master):
            await until(lambda: readers[0].stats["acks"] >= 2)
            readers[0].reboot()  # poll memory and data fseq gone, queue kept
            readers[0].tap(12)  # records of the new boot behind the old boot's backlog
            await until(all_freed(readers), timeout=30)
    assert {identity_of(r)[1] for r in readers[0].made} == {1, 2}
    assert_exactly_once(readers, sink, strict=False)


async def test_stop_finishes_the_exchange_in_flight() -> None:
    sink, readers = setup([(3, 103)], records=4)
    readers[0].late_s = 0.03  # the answer is on its way when stop comes
    sink.commit_s = 0.05
    async with SimBus(readers) as bus:
        master = BusMaster(bus.port, 115200, {3: 103}, sink, timing=FAST)
        stop = asyncio.Event()
        task = asyncio.create_task(master.run(stop))
        await until(lambda: bus.stats.frames_down == 1)
        stop.set()
        await asyncio.wait_for(task, 2)
    c = master.counters
    assert (c["polls"], c["answers_data"], c["timeouts"], c["retransmissions"]) == (1, 1, 0, 0)
    # the sink finished its commit before run returned; the ack never travelled, so the reader
    # still holds its records and will send them again (deduplicated) after a restart
    assert len(sink.stored) == 4 and readers[0].queue == readers[0].made


async def test_the_port_comes_and_goes(tmp_path: Path) -> None:
    """A USB adapter unplugged and plugged again (its by-id symlink points at a new tty)."""
    link = tmp_path / "ttyRS485"
    sink, readers = setup([(1, 101)], records=10, batch_max_records=5)
    master = BusMaster(str(link), 115200, {1: 101}, sink, timing=FAST,
                       reconnect=Backoff(initial_s=0.01, cap_s=0.02, jitter=0.0))
    async with running(master):
        await until(lambda: master.counters["port_errors"] >= 2)  # not there yet
        async with SimBus(readers) as bus:
            os.symlink(bus.port, link)
            await until(all_freed(readers))
            errors = master.counters["port_errors"]
        await until(lambda: master.counters["port_errors"] > errors)  # unplugged
        os.unlink(link)
        readers[0].tap(7)
        async with SimBus(readers) as bus:
            os.symlink(bus.port, link)
            await until(all_freed(readers))
    assert_exactly_once(readers, sink)


async def test_end_to_end_with_the_real_ingest(tmp_path: Path) -> None:
    """Registry keys, ingest's durable commit and signed acks, SQLite rows; noise on the bus."""
    from gateway import db
    from gateway.ingest import Ingest
    from gateway.registry import Registry

    conn = db.connect(tmp_path / "gateway.db")
    registry = Registry.open(conn, tmp_path / "master.key")
    observer = db.connect(tmp_path / "gateway.db", migrate=False)  # sees committed rows only

    def on_free(identity: Identity) -> None:
        row = observer.execute("SELECT 1 FROM scans WHERE reader_id = ? AND boot = ? AND seq = ?",
                               identity).fetchone()
        assert row is not None, f"{identity} freed before its commit"

    async with SimBus([], noise=Noise(flip_up=0.1, flip_down=0.1, garbage=0.1), seed=2) as bus:
        readers = []
        for address, reader_id in FOUR:
            creds = registry.register(reader_id, f"reader {reader_id}", "main",
                                      bus_port=bus.port, bus_address=address)
            readers.append(SimReader(address, reader_id, key=creds.key, batch_max_records=10,
                                     on_free=on_free))
            readers[-1].tap(30)
            bus.readers[address] = readers[-1]
        addresses = {r.bus_address: r.reader_id for r in registry.readers()
                     if r.bus_port == bus.port and r.bus_address is not None}
        ingest = Ingest(conn, registry.key_ring())
        ingest.start()
        master = BusMaster(bus.port, 115200, addresses, ingest, timing=FAST)
        try:
            async with running(master):
                await until(all_freed(readers), timeout=30)
        finally:
            await ingest.close()
    rows = conn.execute("SELECT reader_id, boot, seq, raw FROM scans").fetchall()
    assert {(r[0], r[1], r[2]): bytes(r[3]) for r in rows} == {
        identity_of(rec): rec for reader in readers for rec in reader.made}
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    observer.close()
    conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("paced", [False, True], ids=["pty speed", "paced at 115200 baud"])
async def test_throughput_four_readers(paced: bool) -> None:
    """Records/s through the master with 4 readers and full serial batches (printed, not timed)."""
    per_reader = 400 if paced else 3000
    sink, readers = setup(FOUR, records=per_reader)
    timing = replace(BusTiming.for_baudrate(115200), idle_poll_s=0.002)
    async with SimBus(readers, baudrate=115200 if paced else None) as bus:
        master = BusMaster(bus.port, 115200, {r.address: r.reader_id for r in readers}, sink,
                           timing=timing)
        started = time.perf_counter()
        async with running(master):
            await until(all_freed(readers), timeout=120)
        elapsed = time.perf_counter() - started
    assert_exactly_once(readers, sink)
    records = per_reader * len(readers)
    batches = master.counters["batches"]
    print(f"\n{records} records in {batches} batches over a pty "
          f"({'paced' if paced else 'unpaced'}): {records / elapsed:,.0f} records/s, "
          f"{elapsed:.2f} s")
