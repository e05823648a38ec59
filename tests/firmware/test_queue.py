"""The reader's persistent record queue (firmware/queue.py, docs/queue.md) on CPython and on the
real MicroPython VM: round trip, overflow policy and counters, out-of-order range acks, the
capacity bound, corrupt and torn flash, flash errors, and a power cut at every byte."""

from __future__ import annotations

import binascii
import json
from pathlib import Path
from typing import Any

import pytest

from firmware.fs import FS
from firmware.queue import HEADER, LOG, SLOT, RecordQueue
from protocol import codec, peer
from tests.firmware import powercut
from tests.firmware.powercut import SIGNER, drain, record
from tests.mpvm import MPVM

POWERCUT = Path(powercut.__file__)
SMALL = {"capacity": 32, "seg_slots": 4, "ring_slots": 16}


def opened(path: Path, fs: FS | None = None, **config: Any) -> RecordQueue:
    return RecordQueue(fs or FS(sync=False), str(path), **(config or SMALL)).open()


def ids(sent: list[tuple[int, int, bytes]]) -> list[tuple[int, int]]:
    return [(b, s) for b, s, _ in sent]


def put(q: RecordQueue, boot: int, seqs: Any, flush: bool = True) -> None:
    for s in seqs:
        q.append(record(boot, s))
    if flush:
        q.flush()


def segments(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix == ".seg")


# --- round trip --------------------------------------------------------------------------------


def test_append_flush_reopen_fill_ack(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 3, range(1, 11))
    assert (q.depth, q.used, q.staged) == (10, 10, 0)
    q = opened(tmp_path)  # reboot
    assert q.depth == 10 and q.max_boot == 3
    writer = codec.BatchWriter(max_records=4)
    assert q.fill(writer, 0) == (3, 4)
    batch = peer.decode_batch(bytes(writer.finish(SIGNER, powercut.READER_ID, 3)), SIGNER)
    assert [r["seq"] for r in batch["records"]] == [1, 2, 3, 4]
    assert peer.encode_record(batch["records"][0], SIGNER) == record(3, 1)  # bytes unchanged
    assert q.ack(3, 1, 4) == 4
    assert q.depth == 6
    assert len(segments(tmp_path)) == 2  # the first segment (seqs 1-4) is gone
    q = opened(tmp_path)
    assert q.depth == 6
    assert ids(drain(q)) == [(3, s) for s in range(5, 11)]
    assert segments(tmp_path) == []


def test_record_sizes_46_to_53_round_trip(tmp_path: Path) -> None:
    sizes = {len(record(1, s)) for s in range(1, 6)}
    assert min(sizes) == 46 and max(sizes) == 53
    q = opened(tmp_path)
    put(q, 1, range(1, 6))
    sent = drain(opened(tmp_path))
    assert [data for _, _, data in sent] == [record(1, s) for s in range(1, 6)]


def test_append_does_no_file_io(tmp_path: Path) -> None:
    class NoIO(FS):
        armed = False

        def open(self, path: str, mode: str) -> Any:
            assert not self.armed, "append touched the file system"
            return super().open(path, mode)

    fs = NoIO(sync=False)
    q = opened(tmp_path, fs)
    fs.armed = True
    fs.written = 0
    put(q, 1, range(1, 20), flush=False)  # also past the ring's size: overflow is I/O-free too
    assert fs.written == 0
    fs.armed = False
    q.flush()


def test_append_refuses_what_is_not_an_ascending_record(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 2, [5], flush=False)
    with pytest.raises(ValueError, match="ascend"):
        q.append(record(2, 5))
    with pytest.raises(ValueError, match="ascend"):
        q.append(record(1, 9))
    with pytest.raises(ValueError, match="scan record"):
        q.append(record(2, 6)[:45])
    q.append(record(3, 1))  # a later boot is fine


def test_fill_serves_staged_records_and_acks_before_flush(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 4))
    put(q, 1, range(4, 7), flush=False)  # live taps still in RAM
    writer = codec.BatchWriter()
    assert q.fill(writer) == (1, 6)
    assert q.ack(1, 1, 6) == 6 and q.depth == 0
    assert q.flush() == 3  # written anyway (already acknowledged), then deleted when sealed
    q = opened(tmp_path)
    assert q.depth == 0 and q.used == 0


def test_fill_boot_hint_and_from_seq(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 6))
    put(q, 2, range(1, 4))
    writer = codec.BatchWriter()
    assert q.fill(writer) == (1, 5)  # oldest boot first
    assert q.fill(writer, 2) == (2, 3)  # the current boot first, when asked
    assert q.fill(writer, 9) == (1, 5)  # a hint without records falls back to the oldest
    assert q.fill(writer, 1, from_seq=4) == (1, 2)
    assert q.ack(1, 4, 5) == 2
    assert ids(drain(q)) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]


def test_batch_limits_are_respected(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=256, seg_slots=16, ring_slots=8)
    for start in range(1, 129, 8):
        put(q, 1, range(start, start + 8))
    writer = codec.BatchWriter(max_len=1024)  # a serial (RS-485) batch
    boot, count = q.fill(writer)
    batch = writer.finish(SIGNER, powercut.READER_ID, boot)
    assert len(batch) <= 1024 and 0 < count < 64
    assert len(peer.split_batch(batch, SIGNER)[4]) == count


# --- acknowledgement ---------------------------------------------------------------------------


def test_out_of_order_range_acks(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=64, seg_slots=8, ring_slots=8)
    for start in range(1, 41, 8):
        put(q, 5, range(start, start + 8))
    assert q.ack(5, 33, 40) == 8  # live taps ahead of the backlog
    assert q.ack(5, 17, 24) == 8
    assert q.ack(5, 20, 28) == 4  # overlapping: only the new ones count
    assert q.ack(5, 17, 28) == 0  # a replay frees nothing new
    assert q.depth == 40 - 20
    assert len(segments(tmp_path)) == 3  # 17-24 and 33-40 are deleted whole
    q = opened(tmp_path, capacity=64, seg_slots=8, ring_slots=8)
    assert q.depth == 20
    writer = codec.BatchWriter(max_records=64)
    assert q.fill(writer) == (5, 20)
    batch = peer.split_batch(writer.finish(SIGNER, powercut.READER_ID, 5), SIGNER)
    assert [int.from_bytes(r[10:14], "big") for r in batch[4]] == [
        *range(1, 17), *range(29, 33)]
    assert q.ack(5, 1, 32) == 20
    assert q.depth == 0 and q.used == 0 and segments(tmp_path) == []


def test_ack_covers_only_queued_records(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 5))
    assert q.ack(1, 1, 100) == 4  # clipped: seqs 5..100 are not queued yet
    put(q, 1, range(5, 9))
    assert q.depth == 4
    assert q.ack(2, 1, 8) == 0  # another boot
    assert q.ack(1, 9, 20) == 0  # nothing there
    assert ids(drain(q)) == [(1, s) for s in range(5, 9)]


def test_ack_state_stays_small(tmp_path: Path) -> None:
    config = {"capacity": 512, "seg_slots": 32, "ring_slots": 16, "log_max": 12,
              "max_ranges": 8}
    q = opened(tmp_path, **config)
    seq = 0
    for _ in range(60):
        put(q, 1, range(seq + 1, seq + 17))
        seq += 16
        writer = codec.BatchWriter(max_records=5)
        boot, _ = q.fill(writer)
        batch = peer.split_batch(writer.finish(SIGNER, powercut.READER_ID, boot), SIGNER)
        q.ack(boot, batch[2], batch[3])
        q.ack(1, seq - 3, seq)  # and the live tail, out of order
        assert len(q._rb) <= 8
        assert (tmp_path / LOG).stat().st_size <= 12 * 20
    assert q.used <= 512


def test_range_table_full_refuses_and_counts(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=64, seg_slots=32, ring_slots=16, max_ranges=2, log_max=4)
    put(q, 1, range(1, 17))
    assert q.ack(1, 2, 2) == 1
    assert q.ack(1, 4, 4) == 1
    assert q.ack(1, 6, 6) == 0 and q.refused == 1  # a third island does not fit: not applied
    assert q.ack(1, 1, 16) == 14 and q.depth == 0  # the records stay until a range that fits
    assert q.used == 16  # the open segment is kept until it is full or the reader reboots
    assert opened(tmp_path).used == 0


# --- overflow policy ---------------------------------------------------------------------------


def test_ring_overflow_drops_oldest_staged_and_counts(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=32, seg_slots=4, ring_slots=4)
    put(q, 1, range(1, 5), flush=False)
    assert not q.full
    q.append(record(1, 5))  # the flash is stalled: no flush
    assert q.append(record(1, 6)) is False
    assert q.dropped == 2 and q.full and q.depth == 4
    assert q.flush() == 4 and not q.full
    q = opened(tmp_path, capacity=32, seg_slots=4, ring_slots=4)
    assert q.dropped == 2  # persisted
    sent = ids(drain(q))
    assert sent == [(1, 3), (1, 4), (1, 5), (1, 6)]  # the gateway sees the gap 1-2


def test_ring_overflow_of_acknowledged_records_is_not_a_loss(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=32, seg_slots=4, ring_slots=4)
    put(q, 1, range(1, 5), flush=False)
    assert q.ack(1, 1, 2) == 2  # sent from RAM and acknowledged before any flush
    put(q, 1, range(5, 7), flush=False)
    assert q.dropped == 0


def test_flash_capacity_evicts_oldest_segment_whole(tmp_path: Path) -> None:
    config = {"capacity": 16, "seg_slots": 4, "ring_slots": 4}
    q = opened(tmp_path, **config)
    assert q.ack(1, 1, 1) == 0
    put(q, 1, range(1, 5))
    assert q.ack(1, 2, 2) == 1
    for start in range(5, 17, 4):
        put(q, 1, range(start, start + 4))
    assert q.used == 16 and q.full and q.dropped == 0
    put(q, 1, [17])
    assert q.used == 13 and q.dropped == 3  # seqs 1, 3, 4 lost (2 was acknowledged)
    for start in range(18, 60, 3):
        put(q, 1, range(start, start + 3))
        assert q.used <= 16
    q = opened(tmp_path, **config)
    assert q.used <= 16
    sent = ids(drain(q))
    assert sent == [(1, s) for s in range(60 - len(sent), 60)]  # the newest survive
    assert q.dropped == 59 - len(sent) - 1


def test_segment_count_is_bounded(tmp_path: Path) -> None:
    q = opened(tmp_path, capacity=32, seg_slots=8, ring_slots=4, max_segments=5)
    for s in range(1, 40, 2):  # every record a gap: one segment each
        put(q, 1, [s])
    assert len(segments(tmp_path)) == 5 and q.dropped == 15


def test_capacity_default_and_validation(tmp_path: Path) -> None:
    q = RecordQueue(FS(), str(tmp_path))
    assert q.capacity >= 20000 and q.seg_slots == 256
    assert RecordQueue(FS(), str(tmp_path), capacity=64).seg_slots == 8  # config's minimum
    with pytest.raises(ValueError):
        RecordQueue(FS(), str(tmp_path), capacity=10, seg_slots=8)


# --- damaged flash -----------------------------------------------------------------------------


def test_corrupt_slot_is_skipped_counted_and_never_sent(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 9))
    seg = tmp_path / segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[HEADER + 2 * SLOT + 30] ^= 0x01  # one bit of seq 3
    seg.write_bytes(data)
    q = opened(tmp_path)
    sent = ids(drain(q, 64))
    assert sent == [(1, s) for s in range(1, 9) if s != 3]
    assert q.dropped == 1 and q.corrupt == 1
    assert opened(tmp_path).dropped == 1


def test_torn_tail_slot_is_discarded(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 7))
    seg = tmp_path / segments(tmp_path)[-1]  # seqs 5, 6
    data = seg.read_bytes()
    seg.write_bytes(data[:-20])  # the power went in the middle of seq 6
    q = opened(tmp_path)
    assert q.depth == 5 and q.dropped == 0
    seg.write_bytes(data[:-SLOT] + bytes(SLOT))  # a whole slot of zeros (a FAT-like tear)
    assert opened(tmp_path).depth == 5
    seg.write_bytes(data[:10])  # torn header
    q = opened(tmp_path)
    assert q.depth == 4 and segments(tmp_path) == ["00000000.seg"]
    put(q, 2, range(1, 3))  # keeps working
    assert ids(drain(q)) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]


def test_torn_ack_log_entry_is_ignored_and_log_repaired(tmp_path: Path) -> None:
    q = opened(tmp_path)
    put(q, 1, range(1, 9))
    q.ack(1, 1, 2)
    q.ack(1, 5, 6)
    log = tmp_path / LOG
    log.write_bytes(log.read_bytes()[:-7])  # the second entry is torn
    q = opened(tmp_path)
    assert q.depth == 6
    assert log.stat().st_size % 20 == 0  # rewritten clean: the next entry is aligned
    q.ack(1, 7, 8)
    assert opened(tmp_path).depth == 4


def test_flash_error_sets_fault_keeps_records_and_never_duplicates(tmp_path: Path) -> None:
    class Failing(FS):
        fail_after: int | None = None

        def write(self, f: Any, data: bytes | bytearray | memoryview) -> None:
            if self.fail_after is not None:
                part = min(self.fail_after, len(data))
                super().write(f, memoryview(data)[:part])
                raise OSError(28, "no space")
            super().write(f, data)

    fs = Failing(sync=False)
    q = opened(tmp_path, fs)
    put(q, 1, range(1, 4))
    put(q, 1, range(4, 8), flush=False)
    fs.fail_after = SLOT + 10  # one slot lands, the next is torn
    with pytest.raises(OSError):
        q.flush()
    assert q.fault and q.staged == 3 and q.depth == 7
    fs.fail_after = None
    assert q.flush() == 3 and not q.fault
    sent = ids(drain(opened(tmp_path)))
    assert sent == [(1, s) for s in range(1, 8)]


# --- heartbeat figures -------------------------------------------------------------------------


def test_oldest_age(tmp_path: Path) -> None:
    q = opened(tmp_path)
    assert q.oldest_age_s(1, 5000) == 0
    put(q, 1, range(1, 4))  # record(b, s) has ticks_ms = 1000 s, time_s = 1.8e9 + s, synced
    assert q.oldest_age_s(1, 61_000) == 60  # same boot: from the record's ticks
    q.ack(1, 1, 1)
    assert q.oldest_age_s(1, 61_000) == 59
    assert q.oldest_age_s(2, 7_000, 1_800_000_102, synced=True) == 100  # older boot: clocks
    assert q.oldest_age_s(2, 7_000) == 7  # older boot, no clock: at least this boot's uptime
    q.ack(1, 2, 3)
    put(q, 1, [4], flush=False)  # staged only
    assert q.oldest_age_s(1, 10_000) == 6


# --- power cuts --------------------------------------------------------------------------------


def test_power_cut_at_every_byte(tmp_path: Path) -> None:
    """The scripted scenario (powercut.scenario: two boots of appends, flushes, overflow,
    out-of-order acks, eviction, compaction) cut at every byte and name operation."""
    total, runs = powercut.sweep(str(tmp_path / "pc"))
    assert total > 1500 and runs == total


# --- the real MicroPython VM -------------------------------------------------------------------

VM_SCENARIO = """
import gc, os
from firmware.fs import FS
from firmware.queue import RecordQueue
from protocol import codec
from powercut import record, drain, rmtree

rmtree("/q")
cfg = {"capacity": 16, "seg_slots": 4, "ring_slots": 4}
q = RecordQueue(FS(), "/q", **cfg).open()
recs = [record(1, s) for s in range(1, 31)]
for s in range(1, 5):
    q.append(recs[s - 1])
q.flush()
for s in range(5, 11):  # ring of 4: seqs 5 and 6 dropped
    q.append(recs[s - 1])
q.flush()
out = {"after_ring": [q.dropped, q.depth, q.used]}
q = RecordQueue(FS(), "/q", **cfg).open()
out["reopened"] = [q.dropped, q.depth]
out["ack"] = q.ack(1, 3, 8)
for s in range(11, 27):
    q.append(recs[s - 1])
    if s % 4 == 2:
        q.flush()
q.flush()
out["after_evict"] = [q.dropped, q.depth, q.used, q.full]
q = RecordQueue(FS(), "/q", **cfg).open()
out["sent"] = [[b, s] for b, s, _ in drain(q, 5)]
out["end"] = [q.depth, q.used, sorted(os.listdir("/q"))]

# allocation: append (also when the ring overflows) and fill, measured with gc.mem_alloc
q = RecordQueue(FS(), "/a", capacity=64, seg_slots=8, ring_slots=8).open()
view = memoryview(bytearray(recs[0]))
for s in range(1, 9):
    q.append(record(2, s))
q.flush()
batch = [record(2, s) for s in range(9, 41)]


def append(first, n):
    for i in range(first, first + n):
        q.append(batch[i])


append(0, 4)  # warm up: the first call of a function may allocate once
gc.collect()
before = gc.mem_alloc()
append(4, 28)  # the ring holds 8: most of these also drop the oldest staged record
out["append_alloc"] = gc.mem_alloc() - before
q.flush()
q = RecordQueue(FS(), "/b", capacity=256, seg_slots=64, ring_slots=32).open()
for s in range(1, 33):
    q.append(record(3, s))
q.flush()  # one segment: a fill opens one file
writer = codec.BatchWriter()
view = memoryview(bytearray(recs[0]))


def fill(n):
    writer.max_records = n
    return q.fill(writer)


def add(n):
    writer.reset()
    for _ in range(n):
        writer.add(view)


def alloc(f, n):
    f(n)
    gc.collect()
    before = gc.mem_alloc()
    f(n)
    return gc.mem_alloc() - before


# per record: the slope between two batch sizes, for fill and for BatchWriter.add alone
out["fill_alloc"] = [alloc(fill, 4), alloc(fill, 16)]
out["add_alloc"] = [alloc(add, 4), alloc(add, 16)]
print(json.dumps(out))
"""


def test_queue_on_micropython(mpvm: MPVM) -> None:
    out = json.loads(mpvm.run("import json\n" + VM_SCENARIO, files={"powercut.py": POWERCUT}))
    assert out["after_ring"] == [2, 8, 8]
    assert out["reopened"] == [2, 8]
    assert out["ack"] == 4  # 3, 4, 7, 8 (5 and 6 were never queued)
    dropped, depth, used, full = out["after_evict"]
    assert used <= 16 and full and dropped == 6  # 2 from the ring, 4 evicted with seqs 1-4
    sent = [tuple(i) for i in out["sent"]]
    assert sent == sorted(sent) and len(sent) == depth
    assert sent[-1] == (1, 26) and not {(1, s) for s in (3, 4, 5, 6, 7, 8)} & set(sent)
    assert out["end"] == [0, 0, ["acks.log"]]
    assert out["append_alloc"] == 0, "append allocated on MicroPython"
    fill4, fill16 = out["fill_alloc"]
    add4, add16 = out["add_alloc"]
    # fill allocates per batch (opening the file), nothing per record beyond what
    # BatchWriter.add itself allocates (struct.unpack_from's tuple)
    assert fill16 - fill4 == add16 - add4, out
    assert fill4 - add4 <= 256, out


def test_flash_format_is_the_same_on_both_runtimes(mpvm: MPVM, tmp_path: Path) -> None:
    """Files written by the queue on MicroPython are read by the queue on CPython."""
    code = """
    import binascii, os
    from firmware.fs import FS
    from firmware.queue import RecordQueue
    from powercut import record
    q = RecordQueue(FS(), "/x", capacity=32, seg_slots=4, ring_slots=8).open()
    for s in range(1, 8):
        q.append(record(4, s))
    q.flush()
    q.ack(4, 2, 3)
    for name in sorted(os.listdir("/x")):
        with open("/x/" + name, "rb") as f:
            print(name, binascii.hexlify(f.read()).decode())
    """
    lines = mpvm.run(code, files={"powercut.py": POWERCUT}).splitlines()
    for line in lines:
        name, data = line.split()
        (tmp_path / name).write_bytes(binascii.unhexlify(data))
    q = opened(tmp_path)
    assert q.depth == 5
    assert ids(drain(q)) == [(4, s) for s in (1, 4, 5, 6, 7)]


def test_power_cut_sweep_on_micropython(mpvm: MPVM) -> None:
    """Every 11th cut point of the same scenario on the VM (11 is prime to the slot and log
    entry sizes, so the cuts fall at every offset inside them)."""
    out = mpvm.run(
        "import powercut\nprint(powercut.sweep('/pc', 0, None, 11))",
        files={"powercut.py": POWERCUT}, timeout=120,
    )
    total, runs = json.loads(out)
    assert total > 1500 and runs == (total + 10) // 11


@pytest.mark.slow
def test_power_cut_at_every_byte_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(
        "import powercut\nprint(powercut.sweep('/pc'))",
        files={"powercut.py": POWERCUT}, timeout=300,
    )
    total, runs = json.loads(out)
    assert runs == total


@pytest.mark.slow
def test_power_cut_during_recovery(tmp_path: Path) -> None:
    """A second power cut while ``open()`` repairs after the first (every 3rd first cut, every
    unit of the repair)."""
    import shutil

    root = tmp_path / "pc"
    counting = powercut.PowerCutFS()
    powercut.scenario(counting, str(root), powercut.Truth())
    total = counting.spent
    checked = 0
    for cut in range(0, total, 3):
        powercut.rmtree(str(root))
        truth = powercut.Truth()
        with pytest.raises(powercut.PowerCut):
            powercut.scenario(powercut.PowerCutFS(cut), str(root), truth)
        root.mkdir(exist_ok=True)  # a cut before the first mkdir leaves nothing
        saved = tmp_path / "saved"
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(root, saved)
        repair = powercut.PowerCutFS()
        RecordQueue(repair, str(root / "q"), **powercut.CONFIG).open()
        for second in range(repair.spent):
            shutil.rmtree(root)
            shutil.copytree(saved, root)
            with pytest.raises(powercut.PowerCut):
                RecordQueue(powercut.PowerCutFS(second), str(root / "q"),
                            **powercut.CONFIG).open()
            powercut.check_after_cut(str(root), truth)
            checked += 1
    assert checked > 100, checked
