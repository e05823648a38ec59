"""Power-cut injection for the firmware's file layer, and the sweep that uses it.

Runtime-neutral like the firmware (no typing at runtime, no CPython-only modules), so the same
injector and the same scripted scenario run on CPython and on the MicroPython VM.

``PowerCutFS(cut_at=N)`` behaves like the real layer ``firmware.fs.FS`` until ``N`` *units* have
been spent, then the power goes: the write in progress lands only partly and :class:`PowerCut` is
raised from it and from every later call. A unit is one byte handed to ``write`` or one name
operation (``rename``, ``remove``, ``mkdir``), which is cut before it happens. ``cut_at`` = 0, 1, 2,
... thus visits every byte boundary of every write and every point between name operations of a run;
``cut_at=None`` never cuts and counts the units (``spent``) for the sweep.

The model is "bytes reach flash in the order written; a name operation is atomic": what ``write``
accepted before the cut is on disk (each write is flushed to the OS at once), the rest is not.
LittleFS is stronger (a file's new bytes appear only at close or sync), so the model also covers
torn bytes that LittleFS would never show.

After a cut the test "reboots": a new queue and boot counter over the same directory with the real
``FS``, which must find every flushed-but-unacknowledged record exactly once, no acknowledged
record, no identity twice, and must keep working (``check_after_cut``).
"""

import os

from firmware.bootcount import BootCounter
from firmware.fs import FS
from firmware.queue import RecordQueue
from protocol import codec, peer
from protocol.hmac256 import HmacSha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Id = tuple[int, int]

READER_ID = 7
KEY = bytes(range(100, 132))
SIGNER = HmacSha256(KEY)
# tiny geometry so that a short script crosses every path: segment roll-over, ring overflow,
# capacity eviction, out-of-order acks, range merging, log compaction
CONFIG = {"capacity": 16, "seg_slots": 4, "ring_slots": 6, "max_ranges": 4, "log_max": 6}
_UIDS = (b"\x04\xa1\xb2\xc3", b"\x04\x11\x22\x33\x44\x55\x66", b"\xff\x00\x00\x00\x01",
         b"\x01\x02\x03", b"\x04\x55\x66\x77\x88\x99\x00\x11\xaa\xbb")
_TECHS = (2, 2, 1, 3, 2)
_records: "dict[Any, bytes]" = {}


class PowerCut(Exception):
    """The power went while the firmware was writing."""


class PowerCutFS(FS):
    def __init__(self, cut_at: "int | None" = None) -> None:
        super().__init__(False)
        self.cut_at = cut_at
        self.spent = 0  # units spent: bytes written + name operations
        self.dead = False
        self._files: list[Any] = []

    def _die(self) -> PowerCut:
        self.dead = True
        for f in self._files:
            f.close()
        self._files = []
        return PowerCut("power cut after " + str(self.spent) + " units")

    def _alive(self) -> None:
        if self.dead:
            raise PowerCut("the power is off")

    def _spend_op(self) -> None:
        self._alive()
        if self.cut_at is not None and self.spent >= self.cut_at:
            raise self._die()
        self.spent += 1

    def open(self, path: str, mode: str) -> "Any":
        self._alive()
        f = super().open(path, mode)
        if mode != "rb":
            self._files.append(f)
        return f

    def close(self, f: "Any") -> None:
        if f in self._files:
            self._files.remove(f)
        if not self.dead:
            super().close(f)

    def write(self, f: "Any", data: "bytes | bytearray | memoryview") -> None:
        self._alive()
        n = len(data)
        if self.cut_at is not None and self.spent + n > self.cut_at:
            part = self.cut_at - self.spent
            if part:
                super().write(f, memoryview(data)[:part])
                f.flush()
            self.spent += part
            raise self._die()
        super().write(f, data)
        f.flush()
        self.spent += n

    def readinto(self, f: "Any", buf: "bytearray | memoryview") -> int:
        self._alive()
        return super().readinto(f, buf)

    def read_file(self, path: str) -> "bytes | None":
        self._alive()
        return super().read_file(path)

    def rename(self, src: str, dst: str) -> None:
        self._spend_op()
        super().rename(src, dst)

    def remove(self, path: str) -> None:
        self._spend_op()
        super().remove(path)

    def mkdir(self, path: str) -> None:
        self._spend_op()
        super().mkdir(path)

    def listdir(self, path: str) -> "list[str]":
        self._alive()
        return super().listdir(path)

    def size(self, path: str) -> int:
        self._alive()
        return super().size(path)


def record(boot: int, seq: int) -> bytes:
    """A real signed record of (READER_ID, boot, seq), 46 to 53 bytes (cached)."""
    key = (boot, seq)
    rec = _records.get(key)
    if rec is None:
        i = (boot * 7 + seq) % len(_UIDS)
        buf = bytearray(codec.RECORD_MAX_LEN)
        n = codec.record_into(buf, SIGNER, READER_ID, boot, seq, codec.FLAG_CLOCK_SYNCED,
                              _TECHS[i], _UIDS[i], 1_800_000_000 + seq, seq % 1000, 1000 * seq)
        rec = bytes(buf[:n])
        _records[key] = rec
    return rec


def rmtree(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def drain(q: RecordQueue, max_records: int = 64, boot_hint: int = 0) -> "list[Any]":
    """Upload everything: fill, check the batch like the gateway would, ack; return
    ``[(boot, seq, record bytes)]`` in the order sent."""
    writer = codec.BatchWriter(max_records=max_records)
    out = []
    for _ in range(10000):
        boot, count = q.fill(writer, boot_hint)
        if not count:
            assert q.depth == 0, "fill found nothing but depth is " + str(q.depth)
            return out
        reader, b, first, last, recs = peer.split_batch(writer.finish(SIGNER, READER_ID, boot),
                                                          SIGNER)
        assert (reader, b) == (READER_ID, boot)
        for r in recs:
            out.append((boot, (r[10] << 24) | (r[11] << 16) | (r[12] << 8) | r[13], bytes(r)))
        q.ack(boot, first, last)
    raise AssertionError("drain does not end")


class Truth:
    """What the script knows for sure when the power goes (updated only after calls return)."""

    def __init__(self) -> None:
        self.boots: list[int] = []  # boot values advance() returned
        self.appended: dict[Any, bytes] = {}  # every record handed to append()
        self.staged: list[Any] = []  # model of the RAM ring (oldest dropped when full)
        self.flushed: set[Any] = set()  # in the ring when a flush() returned
        self.acked: set[Any] = set()  # in a range whose ack() returned
        self.acking: set[Any] = set()  # in the range of the ack() the power cut
        self.dropped_durable = 0  # q.dropped when the last flush()/ack()/fill() returned
        self.q: RecordQueue | None = None


class _Round:
    def __init__(self, fs: FS, root: str, t: Truth) -> None:
        self.t = t
        self.q = q = RecordQueue(fs, root + "/q", **CONFIG).open()
        t.q = q
        t.staged = []
        t.dropped_durable = q.dropped
        self.boot = BootCounter(fs, root).advance(q.max_boot)
        t.boots.append(self.boot)
        self.seq = 0

    def taps(self, n: int) -> None:
        t = self.t
        for _ in range(n):
            self.seq += 1
            ident = (self.boot, self.seq)
            rec = record(self.boot, self.seq)
            t.appended[ident] = rec
            if len(t.staged) == CONFIG["ring_slots"]:
                t.staged.pop(0)
            t.staged.append(ident)
            self.q.append(rec)

    def flush(self) -> None:
        self.q.flush()
        for ident in self.t.staged:
            self.t.flushed.add(ident)
        self.t.staged = []
        self.t.dropped_durable = self.q.dropped

    def ack(self, boot: int, first: int, last: int) -> None:
        t = self.t
        t.acking = set(i for i in t.appended if i[0] == boot and first <= i[1] <= last)
        self.q.ack(boot, first, last)
        for ident in t.acking:
            t.acked.add(ident)
        t.acking = set()
        t.dropped_durable = self.q.dropped

    def fill_ack(self, max_records: int, boot_hint: int = 0) -> None:
        writer = codec.BatchWriter(max_records=max_records)
        boot, count = self.q.fill(writer, boot_hint)
        self.t.dropped_durable = self.q.dropped
        if count:
            batch = writer.finish(SIGNER, READER_ID, boot)
            first = (batch[10] << 24) | (batch[11] << 16) | (batch[12] << 8) | batch[13]
            last = (batch[14] << 24) | (batch[15] << 16) | (batch[16] << 8) | batch[17]
            self.ack(boot, first, last)


def scenario(fs: FS, root: str, t: Truth) -> None:
    """Two boots of appends, flushes, fills and acks over ``fs`` (the one that may cut)."""
    r = _Round(fs, root, t)
    r.taps(5)
    r.flush()
    r.taps(3)
    r.flush()
    r.fill_ack(3)
    r.taps(8)  # the ring holds 6: the two oldest staged are dropped
    r.flush()
    r.ack(r.boot, 13, 16)  # live records acked ahead of the backlog
    r.taps(5)
    r.flush()  # over capacity: the oldest segment goes
    r.fill_ack(4)
    r.taps(2)  # staged, never flushed: lost at the reboot, never acked
    r = _Round(fs, root, t)
    r.taps(6)
    r.flush()
    r.fill_ack(3, r.boot)  # this boot's taps first
    r.fill_ack(2)
    r.taps(4)
    r.flush()
    r.fill_ack(64)
    r.fill_ack(64)
    r.taps(1)
    r.flush()


def check_after_cut(root: str, t: Truth) -> None:
    """Reboot over ``root`` with the real file layer and prove the invariants."""
    fs = FS(False)
    q = RecordQueue(fs, root + "/q", **CONFIG).open()
    boot = BootCounter(fs, root).advance(q.max_boot)
    for b in t.boots:
        assert boot > b, "boot " + str(boot) + " reused after " + str(t.boots)
    dropped = q.dropped
    at_cut = t.q.dropped if t.q is not None else 0
    assert t.dropped_durable <= dropped <= at_cut, (t.dropped_durable, dropped, at_cut)
    for s in range(1, 4):
        t.appended[(boot, s)] = record(boot, s)
        q.append(record(boot, s))
    q.flush()  # may evict: the geometry is tiny
    dropped = q.dropped
    sent = drain(q, 5)
    ids = [(b, s) for b, s, _ in sent]
    assert len(set(ids)) == len(ids), "a record came back twice: " + str(ids)
    for b, s, data in sent:
        assert t.appended.get((b, s)) == data, "record " + str((b, s)) + " changed or unknown"
    old = set(i for i in ids if i[0] != boot)
    back = old & t.acked
    assert not back, "acknowledged records came back: " + str(sorted(back))
    for s in range(1, 4):
        assert (boot, s) in ids, "a record of the new boot is missing"
    missing = sorted(t.flushed - t.acked - t.acking - old)
    if missing:
        # only the overflow policy may lose flushed records: the oldest, whole, and counted
        assert not old or missing[-1] < min(old), "lost " + str(missing) + " kept " + str(old)
        assert len(missing) <= dropped, "lost " + str(missing) + " but dropped=" + str(dropped)
    assert q.depth == 0
    q2 = RecordQueue(fs, root + "/q", **CONFIG).open()
    assert q2.depth == 0 and q2.used == 0, (q2.depth, q2.used)


def sweep(root: str, start: int = 0, stop: "int | None" = None, step: int = 1) -> "list[int]":
    """Run the scenario with a cut at every ``step``-th unit of ``[start, stop)``, reboot and check
    each; return ``[units in the uncut run, runs checked]``."""
    rmtree(root)
    counting = PowerCutFS()
    t = Truth()
    scenario(counting, root, t)
    check_after_cut(root, t)  # the uncut run must satisfy the same invariants
    total = counting.spent
    end = total if stop is None or stop > total else stop
    runs = 0
    for cut in range(start, end, step):
        rmtree(root)
        t = Truth()
        try:
            scenario(PowerCutFS(cut), root, t)
        except PowerCut:
            pass
        else:
            raise AssertionError("no power cut at unit " + str(cut))
        try:
            check_after_cut(root, t)
        except AssertionError as exc:
            raise AssertionError("cut at unit " + str(cut) + ": " + str(exc)) from exc
        runs += 1
    rmtree(root)
    return [total, runs]
