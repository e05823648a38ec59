"""The reader's persistent record queue: signed scan records wait here until the gateway acks them.

Format, overflow policy and recovery are specified in docs/queue.md; in short:

- ``append(record)`` copies the signed record into a pre-allocated RAM ring and returns at once
  (no file I/O, no allocation). ``flush()`` (called by the application's flush task) writes staged
  records to flash as fixed 56-byte CRC-checked slots of append-only segment files. A segment
  holds a run of consecutive ``seq`` of one boot: slot ``i`` is ``(boot, first_seq + i)``.
- ``ack(boot, first_seq, last_seq)`` records an acknowledged range in RAM and appends it to a small
  ack log; a segment is deleted when every slot in it is acknowledged. The log is compacted to the
  live ranges, written new then renamed.
- Overflow: when flash is at ``capacity`` the oldest segment is deleted whole; when the RAM ring is
  full (flash stalled) the oldest staged record is discarded. Both count in ``dropped`` (persisted)
  and the gateway sees the gap in ``seq``.
- ``open()`` recovers after a power cut at any byte: torn slots at a segment's end and torn log
  entries are discarded; nothing flushed is lost and nothing acknowledged comes back.
"""

import struct

from firmware.fs import join
from protocol.compat import const
from protocol.crc16 import crc16

TYPE_CHECKING = False
if TYPE_CHECKING:
    from firmware.fs import FS, File
    from protocol.codec import BatchWriter

    Buf = bytes | bytearray | memoryview

SLOT = const(56)  # length byte, record (46..53), zero padding, CRC-16
HEADER = const(16)  # segment header
LOG_ENTRY = const(20)
_CRC_AT = const(54)
_REC_MIN = const(46)
_REC_MAX = const(53)
_FORMAT = const(1)
_K_ACK = const(0x41)  # 'A': range acknowledged by the gateway
_K_COUNT = const(0x43)  # 'C': dropped counter only
_K_DROP = const(0x44)  # 'D': range dropped (overflow, corrupt slot)
_MASK32 = const(0xFFFFFFFF)
_SEG_SLOTS = const(256)  # default slots per segment (14 KiB files)

LOG = "acks.log"
LOG_NEW = "acks.new"
SEG_SUFFIX = ".seg"


def _u32(buf: "Buf", off: int) -> int:
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


def _hex(name: str, n: int) -> int:
    """The value of ``name[:n]`` as lowercase hex digits, -1 if it is not that."""
    value = 0
    for i in range(n):
        c = ord(name[i])
        if 0x30 <= c <= 0x39:
            value = value * 16 + c - 0x30
        elif 0x61 <= c <= 0x66:
            value = value * 16 + c - 0x57
        else:
            return -1
    return value


def _seal(buf: "bytearray | memoryview", off: int, body: int) -> None:
    """Write the CRC-16 of ``buf[off:off+body]`` big-endian right after it."""
    crc = crc16(memoryview(buf)[off : off + body])
    buf[off + body] = crc >> 8
    buf[off + body + 1] = crc & 0xFF


def _sealed(buf: "Buf", off: int, body: int) -> bool:
    crc = crc16(memoryview(buf)[off : off + body])
    return crc == (buf[off + body] << 8) | buf[off + body + 1]


class RecordQueue:
    """Persistent queue of signed scan records in ``directory`` (one queue per directory).

    Create, then ``open()`` once. Counters for the heartbeat: ``depth``, ``dropped``, ``full``,
    ``oldest_age_s()``; ``fault`` is True while flash writes fail.
    """

    def __init__(self, fs: "FS", directory: str, capacity: int = 20480, seg_slots: int = 0,
                 ring_slots: int = 32, max_ranges: int = 32, log_max: int = 64,
                 max_segments: int = 0) -> None:
        if not seg_slots:
            seg_slots = min(_SEG_SLOTS, capacity // 8)
        if seg_slots < 1 or capacity < 2 * seg_slots:
            raise ValueError("capacity must hold at least two segments")
        if ring_slots < 1 or max_ranges < 1 or log_max < max_ranges + 2:
            raise ValueError("bad ring, range or log size")
        self.fs = fs
        self.directory = directory
        self.capacity = capacity
        self.seg_slots = seg_slots
        self.max_ranges = max_ranges
        self.log_max = log_max
        self.max_segments = max_segments or capacity // seg_slots + 16
        # RAM ring of staged slots (same layout as on flash; padding and CRC are set by flush)
        self._nring = ring_slots
        self._ring = bytearray(ring_slots * SLOT)
        self._ring_mv = memoryview(self._ring)
        self._rhead = 0
        self._rcount = 0
        # read buffer: one slot, with a view per record length so fill() allocates nothing
        self._slot = bytearray(SLOT)
        slot_mv = memoryview(self._slot)
        self._views = tuple(slot_mv[1 : 1 + n] for n in range(_REC_MIN, _REC_MAX + 1))
        self._crc_view = slot_mv[:_CRC_AT]
        self._hdr = bytearray(HEADER)
        self._entry = bytearray(LOG_ENTRY)
        # live segments, oldest first: file number, boot, first seq, valid slots
        self._sno: list[int] = []
        self._sboot: list[int] = []
        self._sfirst: list[int] = []
        self._scount: list[int] = []
        self._tail = -1  # number of the segment this run appends to, -1 when none
        self._next_sno = 0
        # acknowledged (or dropped) ranges, sorted by (boot, first), disjoint
        self._rb: list[int] = []
        self._ra: list[int] = []
        self._rl: list[int] = []
        self._log_n = 0  # entries in the ack log file
        self._last_boot = 0  # identity of the newest queued record (appends must ascend)
        self._last_seq = 0
        self.dropped = 0  # records lost to the overflow policy or to corrupt slots, persisted
        self._dropped_saved = 0
        self.corrupt = 0  # slots found corrupt in this run (also counted in dropped)
        self.refused = 0  # acks not applied because the range table was full
        self.fault = False  # the last flash write failed
        self._overflow = False  # the RAM ring dropped records since the last flush

    # --- the tap path ----------------------------------------------------------------------

    def append(self, rec: "Buf") -> bool:
        """Stage one signed record (no I/O, no allocation). False if the ring had to drop one.

        Identities must ascend (boot, then seq); anything else is a programming error.
        """
        n = len(rec)
        if n < _REC_MIN or n > _REC_MAX or rec[0] != 1 or rec[1] != 1:
            raise ValueError("not a scan record")
        boot = _u32(rec, 6)
        seq = _u32(rec, 10)
        if boot < self._last_boot or (boot == self._last_boot and seq <= self._last_seq):
            raise ValueError("record identity does not ascend")
        ring = self._ring
        kept = True
        if self._rcount == self._nring:  # flash stalled: drop the oldest staged record
            off = self._rhead * SLOT
            if not self._covered(_u32(ring, off + 7), _u32(ring, off + 11)):
                self.dropped += 1
            self._rhead = (self._rhead + 1) % self._nring
            self._rcount -= 1
            self._overflow = True
            kept = False
        off = ((self._rhead + self._rcount) % self._nring) * SLOT
        ring[off] = n
        ring[off + 1 : off + 1 + n] = rec
        self._rcount += 1
        self._last_boot = boot
        self._last_seq = seq
        return kept

    # --- flash -----------------------------------------------------------------------------

    def open(self) -> "RecordQueue":
        """Load and repair the queue on flash; call once, before anything else."""
        fs = self.fs
        fs.makedirs(self.directory)
        log = join(self.directory, LOG)
        new = join(self.directory, LOG_NEW)
        if fs.exists(new):  # compaction interrupted: before the rename, the old log is valid
            if fs.exists(log):
                fs.remove(new)
            else:
                fs.rename(new, log)
        numbers = []
        for name in fs.listdir(self.directory):
            if len(name) == 8 + len(SEG_SUFFIX) and name.endswith(SEG_SUFFIX):
                sno = _hex(name, 8)
                if sno >= 0:
                    numbers.append(sno)
        numbers.sort()
        for sno in numbers:
            path = self._path(sno)
            found = self._load(path)
            if found is None:
                fs.remove(path)  # torn header or no complete slot: it holds nothing
                continue
            self._sno.append(sno)
            self._sboot.append(found[0])
            self._sfirst.append(found[1])
            self._scount.append(found[2])
        if numbers:
            self._next_sno = numbers[-1] + 1
        self._drop_shadowed()
        dirty = self._replay(fs.read_file(log))
        self._sweep()
        if dirty or self._log_n >= self.log_max:
            self._compact()
        if self._sno:
            last = len(self._sno) - 1
            self._last_boot = self._sboot[last]
            self._last_seq = self._sfirst[last] + self._scount[last] - 1
        return self

    def flush(self) -> int:
        """Write every staged record to flash; return how many were made durable.

        On a flash error ``fault`` is set, what did land is kept, the rest stays staged (the
        ring's overflow policy applies meanwhile) and the OSError is raised.
        """
        done = 0
        ring = self._ring
        while self._rcount:
            off = self._rhead * SLOT
            boot = _u32(ring, off + 7)
            seq = _u32(ring, off + 11)
            last = len(self._sno) - 1
            new = not (last >= 0 and self._sno[last] == self._tail
                       and self._sboot[last] == boot
                       and self._sfirst[last] + self._scount[last] == seq
                       and self._scount[last] < self.seg_slots)
            if new:
                self._tail = -1  # the previous segment is sealed (full, gap, other boot)
            room = self.seg_slots if new else self.seg_slots - self._scount[last]
            k = 1  # a run: consecutive seqs, contiguous in the ring, fitting the segment
            while (k < self._rcount and k < room and self._rhead + k < self._nring
                   and _u32(ring, off + k * SLOT + 7) == boot
                   and _u32(ring, off + k * SLOT + 11) == seq + k):
                k += 1
            self._make_room(k, new)
            for j in range(k):
                o = off + j * SLOT
                n = ring[o]
                for p in range(o + 1 + n, o + _CRC_AT):
                    ring[p] = 0
                _seal(ring, o, _CRC_AT)
            sno = self._next_sno if new else self._tail
            self._write_run(sno, new, boot, seq, off, k)
            done += k
        if self.dropped != self._dropped_saved:
            self._log(_K_COUNT, 0, 0, 0)
        self._overflow = False
        self.fault = False
        return done

    def _write_run(self, sno: int, new: bool, boot: int, seq: int, off: int, k: int) -> None:
        fs = self.fs
        path = self._path(sno)
        if new:
            hdr = self._hdr
            hdr[0] = 0x41  # "AQ"
            hdr[1] = 0x51
            hdr[2] = _FORMAT
            hdr[3] = SLOT
            struct.pack_into(">IIH", hdr, 4, boot, seq, 0)
            _seal(hdr, 0, HEADER - 2)
            self._next_sno = sno + 1
        try:
            f = fs.open(path, "ab")
            try:
                if new:
                    fs.write(f, self._hdr)
                fs.write(f, self._ring_mv[off : off + k * SLOT])
            finally:
                fs.close(f)
        except OSError:
            self.fault = True
            self._tail = -1  # never append after a failed write: start a new segment
            landed = 0
            try:  # adopt the slots that did land, so they are not written twice
                found = self._load(path)
                if found is not None and found[0] == boot:
                    if new and found[1] == seq:
                        landed = found[2]
                    elif not new:
                        landed = found[1] + found[2] - seq
            except OSError:
                pass
            if landed > 0:
                self._commit_run(sno, new, boot, seq, landed if landed < k else k)
            raise
        self._commit_run(sno, new, boot, seq, k)
        if new and self._rb:
            self._sweep()  # the previous segment is sealed now and may be fully acked

    def _commit_run(self, sno: int, new: bool, boot: int, seq: int, k: int) -> None:
        if new:
            self._sno.append(sno)
            self._sboot.append(boot)
            self._sfirst.append(seq)
            self._scount.append(k)
            if not self.fault:
                self._tail = sno
        else:
            self._scount[len(self._scount) - 1] += k
        self._rhead = (self._rhead + k) % self._nring
        self._rcount -= k

    def _make_room(self, k: int, new: bool) -> None:
        """Overflow policy: delete the oldest segments whole until ``k`` more slots fit."""
        while self._sno:
            used = 0
            for c in self._scount:
                used += c
            if used + k <= self.capacity and not (new and len(self._sno) >= self.max_segments):
                return
            if not new and len(self._sno) == 1:
                return  # only the segment being written (capacity holds two segments)
            self._evict()

    def _evict(self) -> None:
        boot = self._sboot[0]
        lo = self._sfirst[0]
        hi = lo + self._scount[0] - 1
        self.dropped += self._unacked_in(boot, lo, hi)
        self._add_range(boot, lo, hi)
        self._log(_K_DROP, boot, lo, hi)
        self._sweep()
        self._maybe_compact()

    def _load(self, path: str) -> "tuple[int, int, int] | None":
        """``(boot, first_seq, valid slots)`` of a segment file, torn tail slots excluded."""
        fs = self.fs
        size = fs.size(path)
        if size < HEADER + SLOT:
            return None
        f = fs.open(path, "rb")
        try:
            hdr = self._hdr
            if (fs.readinto(f, hdr) != HEADER or hdr[0] != 0x41 or hdr[1] != 0x51
                    or hdr[2] != _FORMAT or hdr[3] != SLOT or not _sealed(hdr, 0, HEADER - 2)):
                return None
            boot = _u32(hdr, 4)
            first = _u32(hdr, 8)
            count = (size - HEADER) // SLOT
            while count > 0:
                fs.seek(f, HEADER + (count - 1) * SLOT)
                if fs.readinto(f, self._slot) == SLOT and self._check(boot, first + count - 1):
                    break
                count -= 1
        finally:
            f.close()
        if count == 0 or boot == 0 or first == 0:
            return None
        return boot, first, count

    def _drop_shadowed(self) -> None:
        """A later segment of the same boot wins over slots an earlier one also holds.

        Only a flash error followed by a failed read-back leaves such copies (see flush).
        """
        i = len(self._sno) - 2
        while i >= 0:
            if (self._sboot[i] == self._sboot[i + 1]
                    and self._sfirst[i + 1] <= self._sfirst[i] + self._scount[i] - 1):
                keep = self._sfirst[i + 1] - self._sfirst[i]
                if keep > 0:
                    self._scount[i] = keep
                else:
                    self.fs.remove(self._path(self._sno[i]))
                    self._pop_segment(i)
            i -= 1

    def _check(self, boot: int, seq: int) -> int:
        """Length of the record in the read buffer if the slot is intact and is (boot, seq)."""
        buf = self._slot
        n = buf[0]
        if n < _REC_MIN or n > _REC_MAX or buf[1] != 1 or buf[2] != 1 or buf[17] + 43 != n:
            return 0
        if _u32(buf, 7) != boot or _u32(buf, 11) != seq:
            return 0
        if crc16(self._crc_view) != (buf[_CRC_AT] << 8) | buf[_CRC_AT + 1]:
            return 0
        return n

    def _path(self, sno: int) -> str:
        return join(self.directory, f"{sno:08x}{SEG_SUFFIX}")

    def _pop_segment(self, i: int) -> None:
        if self._sno[i] == self._tail:
            self._tail = -1
        self._sno.pop(i)
        self._sboot.pop(i)
        self._sfirst.pop(i)
        self._scount.pop(i)

    # --- acknowledgement -------------------------------------------------------------------

    def ack(self, boot: int, first_seq: int, last_seq: int) -> int:
        """Apply the gateway's ack of ``[first_seq, last_seq]`` of ``boot``; return how many
        queued records it newly acknowledged (0: nothing to do, or refused, see ``refused``).

        The range is durable in the ack log when this returns; segments whose every slot is
        acknowledged are deleted.
        """
        lo, hi = self._span(boot)
        a = first_seq if first_seq > lo else lo
        b = last_seq if last_seq < hi else hi
        if a > b:
            return 0
        n = 0
        for i in range(len(self._sno)):
            if self._sboot[i] == boot:
                f = self._sfirst[i]
                g = f + self._scount[i] - 1
                if f <= b and g >= a:
                    n += self._unacked_in(boot, f if f > a else a, g if g < b else b)
        for j in range(self._rcount):
            off = ((self._rhead + j) % self._nring) * SLOT
            s = _u32(self._ring, off + 11)
            if (_u32(self._ring, off + 7) == boot and a <= s <= b
                    and not self._covered(boot, s)):
                n += 1
        if n == 0:
            return 0
        saved = (self._rb[:], self._ra[:], self._rl[:])
        self._add_range(boot, a, b)
        if len(self._rb) > self.max_ranges:
            self._rb, self._ra, self._rl = saved
            self.refused += 1
            return 0
        try:
            self._log(_K_ACK, boot, a, b)
        except BaseException:
            self._rb, self._ra, self._rl = saved
            raise
        self._sweep()
        self._maybe_compact()
        return n

    def _span(self, boot: int) -> "tuple[int, int]":
        """Lowest and highest queued seq of ``boot`` (``(1, 0)`` when none)."""
        lo = _MASK32 + 1
        hi = 0
        for i in range(len(self._sno)):
            if self._sboot[i] == boot:
                f = self._sfirst[i]
                if f < lo:
                    lo = f
                if f + self._scount[i] - 1 > hi:
                    hi = f + self._scount[i] - 1
        for j in range(self._rcount):
            off = ((self._rhead + j) % self._nring) * SLOT
            if _u32(self._ring, off + 7) == boot:
                s = _u32(self._ring, off + 11)
                if s < lo:
                    lo = s
                if s > hi:
                    hi = s
        return (lo, hi) if hi else (1, 0)

    def _covered(self, boot: int, seq: int) -> bool:
        return self._skip_acked(boot, seq) != seq

    def _unacked_in(self, boot: int, lo: int, hi: int) -> int:
        """How many identities of ``[lo, hi]`` of ``boot`` no range covers."""
        n = hi - lo + 1
        rb = self._rb
        for i in range(len(rb)):
            if rb[i] == boot:
                a = self._ra[i] if self._ra[i] > lo else lo
                b = self._rl[i] if self._rl[i] < hi else hi
                if a <= b:
                    n -= b - a + 1
        return n

    def _queued_in(self, boot: int, lo: int, hi: int) -> bool:
        """Whether any queued record (flash or ring) has an identity in ``[lo, hi]`` of boot."""
        for i in range(len(self._sno)):
            if (self._sboot[i] == boot and self._sfirst[i] <= hi
                    and self._sfirst[i] + self._scount[i] - 1 >= lo):
                return True
        for j in range(self._rcount):
            off = ((self._rhead + j) % self._nring) * SLOT
            if _u32(self._ring, off + 7) == boot and lo <= _u32(self._ring, off + 11) <= hi:
                return True
        return False

    def _add_range(self, boot: int, lo: int, hi: int) -> None:
        rb, ra, rl = self._rb, self._ra, self._rl
        i = 0
        while i < len(rb) and (rb[i] < boot or (rb[i] == boot and ra[i] < lo)):
            i += 1
        rb.insert(i, boot)
        ra.insert(i, lo)
        rl.insert(i, hi)
        self._normalize()

    def _normalize(self) -> None:
        """Merge ranges with nothing unacknowledged between them; forget ranges that cover no
        queued record (their records are gone, and no future record can fall into them)."""
        rb, ra, rl = self._rb, self._ra, self._rl
        i = 0
        while i < len(rb):
            if not self._queued_in(rb[i], ra[i], rl[i]):
                rb.pop(i)
                ra.pop(i)
                rl.pop(i)
                continue
            if i + 1 < len(rb) and rb[i + 1] == rb[i] and (
                    ra[i + 1] <= rl[i] + 1 or not self._queued_in(rb[i], rl[i] + 1, ra[i + 1] - 1)):
                if rl[i + 1] > rl[i]:
                    rl[i] = rl[i + 1]
                rb.pop(i + 1)
                ra.pop(i + 1)
                rl.pop(i + 1)
                continue
            i += 1

    def _sweep(self) -> None:
        """Delete segments whose every slot is acknowledged (not the one still being filled)."""
        i = 0
        removed = False
        while i < len(self._sno):
            boot = self._sboot[i]
            lo = self._sfirst[i]
            count = self._scount[i]
            if ((self._sno[i] != self._tail or count >= self.seg_slots)
                    and self._unacked_in(boot, lo, lo + count - 1) == 0):
                self.fs.remove(self._path(self._sno[i]))
                self._pop_segment(i)
                removed = True
            else:
                i += 1
        if removed:
            self._normalize()

    # --- ack log ---------------------------------------------------------------------------

    def _log(self, kind: int, boot: int, lo: int, hi: int) -> None:
        """Append one entry (durable on return); every entry carries the dropped counter."""
        self._pack(self._entry, 0, kind, boot, lo, hi)
        self.fs.append_file(join(self.directory, LOG), self._entry)
        self._log_n += 1
        self._dropped_saved = self.dropped

    def _pack(self, buf: bytearray, off: int, kind: int, boot: int, lo: int, hi: int) -> None:
        buf[off] = kind
        buf[off + 1] = 0
        struct.pack_into(">IIII", buf, off + 2, boot, lo, hi, self.dropped)
        _seal(buf, off, LOG_ENTRY - 2)

    def _maybe_compact(self) -> None:
        if self._log_n >= self.log_max:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log as the live ranges: written new, then renamed over the old one."""
        n = len(self._rb)
        buf = bytearray(LOG_ENTRY * (n if n else 1))
        if n:
            for i in range(n):
                self._pack(buf, i * LOG_ENTRY, _K_ACK, self._rb[i], self._ra[i], self._rl[i])
        else:
            self._pack(buf, 0, _K_COUNT, 0, 0, 0)
        new = join(self.directory, LOG_NEW)
        self.fs.write_file(new, buf)
        self.fs.rename(new, join(self.directory, LOG))
        self._log_n = n if n else 1
        self._dropped_saved = self.dropped

    def _replay(self, data: "bytes | None") -> bool:
        """Apply the log; return True when it holds torn or misaligned bytes (compact it)."""
        if not data:
            return False
        dirty = len(data) % LOG_ENTRY != 0
        for off in range(0, len(data) - LOG_ENTRY + 1, LOG_ENTRY):
            kind = data[off]
            if kind not in (_K_ACK, _K_COUNT, _K_DROP) or not _sealed(data, off, LOG_ENTRY - 2):
                dirty = True
                continue
            boot, lo, hi, dropped = struct.unpack_from(">IIII", data, off + 2)
            if dropped > self.dropped:
                self.dropped = dropped
            if kind != _K_COUNT and 1 <= lo <= hi:
                self._add_range(boot, lo, hi)
            self._log_n += 1
        self._dropped_saved = self.dropped
        return dirty

    # --- reading for upload ----------------------------------------------------------------

    def fill(self, writer: "BatchWriter", boot_hint: int = 0, from_seq: int = 0
             ) -> "tuple[int, int]":
        """Reset ``writer`` and fill it with the oldest unacknowledged records of one boot, in
        ascending seq; return ``(boot, count)`` (``(0, 0)`` when nothing is waiting).

        The boot is ``boot_hint`` when it has unacknowledged records, else the oldest such boot;
        ``from_seq`` skips records below it (e.g. to send live taps ahead of a backlog). Every
        unacknowledged record between the batch's first and last seq is in the batch, so the
        gateway's ack of that range is exact. Records are read into one pre-allocated slot
        buffer and handed to the writer as pre-made views: nothing is allocated per record.
        A slot found corrupt is counted in ``dropped`` and never sent (the gateway sees a gap).
        """
        writer.reset()
        boot = self._pick(boot_hint)
        if not boot:
            return 0, 0
        fs = self.fs
        views = self._views
        marked = False
        stop = False
        for i in range(len(self._sno)):
            if stop:
                break
            if self._sboot[i] != boot:
                continue
            lo = self._sfirst[i]
            hi = lo + self._scount[i] - 1
            s = from_seq if from_seq > lo else lo
            f: File = None
            pos = -1
            try:
                while s <= hi:
                    s = self._skip_acked(boot, s)
                    if s > hi:
                        break
                    if f is None:
                        f = fs.open(self._path(self._sno[i]), "rb")
                    at = HEADER + (s - lo) * SLOT
                    if pos != at:
                        fs.seek(f, at)
                    got = fs.readinto(f, self._slot)
                    pos = at + got
                    n = self._check(boot, s) if got == SLOT else 0
                    if not n:
                        if writer.count:
                            stop = True  # send what precedes it; the next fill marks it
                            break
                        self._mark_corrupt(boot, s)
                        marked = True
                    elif not writer.add(views[n - _REC_MIN]):
                        stop = True
                        break
                    s += 1
            finally:
                if f is not None:
                    f.close()
        if not stop:
            ring = self._ring
            slot = self._slot
            for j in range(self._rcount):
                off = ((self._rhead + j) % self._nring) * SLOT
                s = _u32(ring, off + 11)
                if _u32(ring, off + 7) != boot or s < from_seq or self._covered(boot, s):
                    continue
                n = ring[off]
                for p in range(n + 1):
                    slot[p] = ring[off + p]
                if not writer.add(views[n - _REC_MIN]):
                    break
        if marked:
            self._sweep()
            self._maybe_compact()
        return boot, writer.count

    def _skip_acked(self, boot: int, seq: int) -> int:
        rb = self._rb
        for i in range(len(rb)):
            if rb[i] == boot and self._ra[i] <= seq <= self._rl[i]:
                seq = self._rl[i] + 1
        return seq

    def _mark_corrupt(self, boot: int, seq: int) -> None:
        self.corrupt += 1
        self.dropped += 1
        self._add_range(boot, seq, seq)
        self._log(_K_DROP, boot, seq, seq)

    def _pick(self, boot_hint: int) -> int:
        """``boot_hint`` if it has unacknowledged records, else the oldest boot that has."""
        first = 0
        for i in range(len(self._sno)):
            boot = self._sboot[i]
            lo = self._sfirst[i]
            if self._unacked_in(boot, lo, lo + self._scount[i] - 1):
                if boot == boot_hint or not boot_hint:
                    return boot
                if not first:
                    first = boot
        for j in range(self._rcount):
            off = ((self._rhead + j) % self._nring) * SLOT
            boot = _u32(self._ring, off + 7)
            if not self._covered(boot, _u32(self._ring, off + 11)):
                if boot == boot_hint or not boot_hint:
                    return boot
                if not first:
                    first = boot
        return first

    # --- state for the heartbeat -----------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records waiting for an ack (on flash and staged)."""
        n = 0
        for i in range(len(self._sno)):
            lo = self._sfirst[i]
            n += self._unacked_in(self._sboot[i], lo, lo + self._scount[i] - 1)
        for j in range(self._rcount):
            off = ((self._rhead + j) % self._nring) * SLOT
            if not self._covered(_u32(self._ring, off + 7), _u32(self._ring, off + 11)):
                n += 1
        return n

    @property
    def used(self) -> int:
        """Slots on flash (acknowledged ones too, until their segment is deleted)."""
        n = 0
        for c in self._scount:
            n += c
        return n

    @property
    def staged(self) -> int:
        return self._rcount

    @property
    def full(self) -> bool:
        """The queue is dropping, or the next segment will evict the oldest one."""
        return self._overflow or self.used + self.seg_slots > self.capacity

    @property
    def max_boot(self) -> int:
        """Highest boot the queue knows of: a floor for the boot counter."""
        best = self._last_boot
        for b in self._sboot:
            if b > best:
                best = b
        for b in self._rb:
            if b > best:
                best = b
        return best

    def oldest_age_s(self, boot: int, uptime_ms: int, now_s: int = 0, synced: bool = False
                     ) -> int:
        """Age in seconds of the oldest unacknowledged record (0 when none), from the record's
        own fields: its ``ticks_ms`` when it is of this ``boot`` (``uptime_ms`` is this boot's
        32-bit tick count, as records carry it); else its ``time_s`` when it and the clock now
        are both synced; else at least this boot's uptime (the record predates this boot)."""
        rec_boot = self._read_oldest()
        if not rec_boot:
            return 0
        buf = self._slot
        n = buf[17]
        if rec_boot == boot:
            return ((uptime_ms - _u32(buf, 24 + n)) & _MASK32) // 1000
        if synced and rec_boot > 0 and buf[15] & 1:
            age = now_s - _u32(buf, 18 + n)
            return age if age > 0 else 0
        return uptime_ms // 1000

    def _read_oldest(self) -> int:
        """Load the oldest unacknowledged record into the slot buffer; return its boot, 0 when
        there is none, -1 when its slot is unreadable."""
        rec_boot, seq, where, idx = self._oldest()
        if not rec_boot:
            return 0
        buf = self._slot
        if where < 0:
            ring = self._ring
            off = idx * SLOT
            for p in range(SLOT):
                buf[p] = ring[off + p]
            return rec_boot
        f = self.fs.open(self._path(self._sno[where]), "rb")
        try:
            self.fs.seek(f, HEADER + idx * SLOT)
            ok = self.fs.readinto(f, buf) == SLOT and self._check(rec_boot, seq)
        finally:
            f.close()
        return rec_boot if ok else -1

    def _oldest(self) -> "tuple[int, int, int, int]":
        """``(boot, seq, segment index or -1 for the ring, slot index)`` of the oldest
        unacknowledged record; boot 0 when there is none."""
        for i in range(len(self._sno)):
            boot = self._sboot[i]
            lo = self._sfirst[i]
            s = self._skip_acked(boot, lo)
            if s <= lo + self._scount[i] - 1:
                return boot, s, i, s - lo
        for j in range(self._rcount):
            idx = (self._rhead + j) % self._nring
            boot = _u32(self._ring, idx * SLOT + 7)
            seq = _u32(self._ring, idx * SLOT + 11)
            if not self._covered(boot, seq):
                return boot, seq, -1, idx
        return 0, 0, -1, 0
