"""``make soak``: the fault campaign. A school morning on loopback while things break, then the
invariants of DESIGN.md checked against ground truth.

    python -m sim.soak --minutes 10 [--seed N] [--readers N] [--summary FILE] [--keep]

What runs, in a temporary directory, on 127.0.0.1 only:

- Mosquitto (``sim/broker.py``) with per-reader accounts and ACLs written from the gateway's
  registry (``gateway.broker_config``) and the deployed broker limits
  (``hardware/gateway/mosquitto.conf``);
- the gateway as operators run it, ``python -m gateway.cli run --config FILE``, in its own
  process (so it can be killed -9), forwarding to the Ed-Fi-like peer (``sim/peers/edfi.py``) and
  notifying guardians through a signed-webhook receiver (``sim/peers/webhook.py``);
- a generated school (``sim/school.py``: 12 classes, guardians with phones and consent answers)
  imported with ``attendance-gateway roster import --sheet``;
- N readers running the real firmware (``sim/firmware_reader.FirmwareReader``), each behind its
  own TCP proxy (``sim/proxy.py``) so its link can be black-holed, tapped by the morning's
  wave (``sim.school.plan_morning`` compressed into the run, repeats included).

A seeded fault scheduler (every kind at least once, early, then at random) restarts the broker
(SIGTERM or SIGKILL), kills -9 and restarts the gateway, black-holes a reader's link, cuts a
reader's power in the middle of a flash write (``SoakFS`` tears the next write of its queue),
takes the Ed-Fi peer and the webhook receiver down or makes them answer 500/429/503 or drop the
connection, and skews reader clocks (a boot without NTP, a step, a drift). Then the faults stop,
everything is restored and drains (bounded), the gateway is stopped with SIGTERM, and
:func:`check` compares what the readers made (``FirmwareReader.made()`` plus the harness's own
record of every tap: the true time, the card, the clock's state) with the gateway's database, the
Ed-Fi peer and the messages the receiver got. ``docs/soak.md`` describes every fault and bound.

Exit status: 0 when every invariant held, 1 on any violation, 2 when the setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import heapq
import inspect
import itertools
import json
import math
import random
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zoneinfo
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from firmware.fs import FS
from firmware.queue import RecordQueue
from gateway import db
from gateway.broker_config import write_broker_files
from gateway.registry import Registry
from gateway.timing import HEARTBEAT_RESOLUTION_MS, TimingPolicy
from sim.broker import LOOPBACK, MosquittoBroker, free_port
from sim.firmware_reader import FirmwareReader, provision
from sim.peers.edfi import RESOURCE_PATH, EdFiPeer
from sim.peers.edfi import Fault as EdFiFault
from sim.peers.webhook import Fault as HookFault
from sim.peers.webhook import WebhookPeer
from sim.proxy import LinkProxy
from sim.school import School, generate_school, plan_morning

ROOT = Path(__file__).resolve().parents[1]
SCHOOL = "thcs-soak"
GATES = ("main", "side")
FIRST_READER = 301
GATEWAY_USER = "gateway"
EDFI_SCHOOL_ID = 620101099
EDFI_TERM = "Học kỳ I"
FORWARD_TARGET = "so-gd"
CHANNEL = "parents"
IN_ATTENDANCE = "In Attendance"
KINDS = ("broker_restart", "gateway_kill9", "link_blackhole", "power_cut", "edfi_down",
         "edfi_errors", "notify_down", "notify_errors", "clock_unsynced", "clock_jump",
         "clock_drift")
READER_KINDS = frozenset({"link_blackhole", "power_cut", "clock_unsynced", "clock_jump",
                          "clock_drift"})
# The reader's link timeouts: a fault is noticed in a few seconds, as on a school LAN.
READER_OPTIONS: dict[str, Any] = {
    "ack_timeout_ms": 2000, "puback_timeout_ms": 1000, "keepalive": 2,
    "connect_timeout_ms": 1000, "io_timeout_ms": 1000, "backoff_first_ms": 100,
    "backoff_cap_ms": 1000,
}
HEARTBEAT_S = 10  # the shortest the firmware takes
REPEAT_SAME_S = 4.0  # past the firmware's 2 s debounce: a second record, no second event
REPEAT_OTHER_S = 1.0
# The deployed broker limits (hardware/gateway/mosquitto.conf) the gateway relies on.
_DEPLOYED_BROKER = ROOT / "hardware" / "gateway" / "mosquitto.conf"
_BROKER_KEYS = ("max_packet_size", "max_queued_messages", "max_inflight_messages",
                "max_keepalive")
# Bounds of the time check (docs/soak.md). The gateway's own numbers come from gateway.timing.
POLICY = TimingPolicy()
FUTURE_TOLERANCE_MS = POLICY.future_tolerance_ms  # a reader time may be this far ahead
HEARTBEAT_ERROR_MS = HEARTBEAT_RESOLUTION_MS  # a heartbeat anchor's uncertainty
ROUNDING_MS = 50  # whole milliseconds on both sides, and the host clock read a moment apart
UNSKEWED_READER_MS = 250  # a reader time from a clock the soak did not skew, NTP-synced
RING_SLOTS: int = inspect.signature(RecordQueue.__init__).parameters["ring_slots"].default

Identity = tuple[int, int, int]  # reader_id, boot, seq


# =============================================================================================
# The invariant checker: pure, so its tests can hand it made-up ground truth
# =============================================================================================

@dataclass(frozen=True)
class RecordTruth:
    """What the harness saw when the firmware made one record."""

    true_ms: float  # the host's clock at that moment (the tap's true time)
    student_id: str | None  # whose card it was (None: not on the roster)
    clock_fault: bool = False  # the soak had stepped or drifted this reader's clock then


@dataclass
class GroundTruth:
    made: dict[int, list[tuple[int, int]]]  # reader -> every (boot, seq) it made
    records: dict[Identity, RecordTruth]
    guardians: dict[str, list[tuple[str, bool]]]  # student -> (phone, consent) per guardian
    lost_in_ram: set[Identity] = field(default_factory=set)  # power cuts: never durably queued
    lost_per_cut: list[int] = field(default_factory=list)  # of those, not stored, per cut
    never_synced: set[tuple[int, int]] = field(default_factory=set)  # (reader, boot)
    boot_skew_ms: dict[tuple[int, int], float] = field(default_factory=dict)  # largest |skew|
    ring_slots: int = RING_SLOTS


@dataclass(frozen=True)
class ScanRow:
    reader_id: int
    boot: int
    seq: int
    reader_time_ms: int
    clock_synced: bool
    received_ms: int
    at_ms: int
    time_source: str


@dataclass(frozen=True)
class PeerMessage:
    message_id: str
    phone: str | None
    student_id: str | None
    kind: str


@dataclass
class Observed:
    scans: list[ScanRow]
    events: list[tuple[str | None, str]]  # live attendance events: (student, kind)
    edfi_records: list[tuple[str, str, str]]  # (category, student, eventDate) held by the peer
    edfi_creates: Counter[tuple[str, str, str]]  # POSTs the peer answered 201, per key
    messages: list[PeerMessage]  # one per message id the receiver stored
    school_date: str
    edfi_upserts: int = 0  # POSTs answered 200: a repeat absorbed by the upsert
    redelivered: int = 0  # deliveries the receiver had already stored (same webhook-id)
    problems: list[str] = field(default_factory=list)  # from the run: crashes, stuck queues


@dataclass
class Place:
    lost: int = 0
    doubled: int = 0
    unexpected: int = 0

    def clean(self) -> bool:
        return self.lost == self.doubled == self.unexpected == 0


@dataclass
class TimeStats:
    count: int = 0
    worst_ms: float = 0.0  # largest |stored - true|
    min_ms: float = 0.0  # most negative (stored before the tap)
    max_ms: float = 0.0  # most positive (stored after the tap)

    def add(self, error: float) -> None:
        if self.count == 0:
            self.min_ms = self.max_ms = error
        self.count += 1
        self.worst_ms = max(self.worst_ms, abs(error))
        self.min_ms = min(self.min_ms, error)
        self.max_ms = max(self.max_ms, error)


@dataclass
class Verdict:
    places: dict[str, Place]
    time: dict[str, TimeStats]
    made: int
    stored: int
    lost_to_power_cuts: int
    arrived: int
    violations: list[str]
    violation_count: int = 0

    @property
    def ok(self) -> bool:
        return self.violation_count == 0


class _Violations:
    """Counts every violation, keeps the first ``keep`` lines (and one per kind) for the report."""

    def __init__(self, keep: int = 40) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.keep = keep
        self._kinds: Counter[str] = Counter()

    def add(self, kind: str, detail: str) -> None:
        self.count += 1
        self._kinds[kind] += 1
        if len(self.lines) < self.keep or self._kinds[kind] == 1:
            self.lines.append(f"{kind}: {detail}")


def check(truth: GroundTruth, seen: Observed) -> Verdict:
    """Every invariant of the soak (docs/soak.md), against the ground truth."""
    bad = _Violations()
    for problem in seen.problems:
        bad.add("run", problem)
    made = {(r, b, s) for r, ids in truth.made.items() for b, s in ids}
    for r, ids in truth.made.items():
        if len(ids) != len(set(ids)):
            bad.add("identity", f"reader {r} made an identity twice")
    # --- the gateway's scans table: every identity once -------------------------------------
    gateway = Place()
    stored_count = Counter((row.reader_id, row.boot, row.seq) for row in seen.scans)
    stored = set(stored_count)
    for ident, n in stored_count.items():
        if n > 1:
            gateway.doubled += n - 1
            bad.add("doubled", f"scan {ident} stored {n} times")
    readers = set(truth.made)
    for ident in sorted(stored - made):
        if ident[0] in readers:
            gateway.unexpected += 1
            bad.add("unexpected", f"scan {ident} stored but never made")
    lost_to_cuts = truth.lost_in_ram - stored
    for ident in sorted(made - stored - truth.lost_in_ram):
        gateway.lost += 1
        bad.add("lost", f"record {ident} made, durably queued, never stored")
    for n in truth.lost_per_cut:
        if n > truth.ring_slots:
            bad.add("power_cut", f"a power cut lost {n} records, more than the RAM ring's "
                                 f"{truth.ring_slots}")
    # --- who arrived: every student with a record that is (or must be) stored ---------------
    arrived: set[str] = set()
    for ident in made:
        rec = truth.records.get(ident)
        if rec is None:
            bad.add("truth", f"record {ident} made without the harness seeing the tap")
        elif rec.student_id is not None and (ident in stored or ident not in truth.lost_in_ram):
            arrived.add(rec.student_id)
    # --- attendance events: one check-in per arrived student, nothing else ------------------
    events = Place()
    check_ins = Counter(s for s, kind in seen.events if kind == "check_in" and s is not None)
    for student in sorted(arrived):
        n = check_ins.get(student, 0)
        if n == 0:
            events.lost += 1
            bad.add("lost", f"no check-in event for student {student}")
        elif n > 1:
            events.doubled += n - 1
            bad.add("doubled", f"{n} check-in events for student {student}")
    for who, kind in seen.events:
        if kind != "check_in" or who not in arrived:
            events.unexpected += 1
            bad.add("unexpected", f"event {kind} for student {who}")
    # --- the Ed-Fi peer: each event once under its natural key ------------------------------
    edfi = Place()
    expected_keys = {(IN_ATTENDANCE, s, seen.school_date) for s in arrived}
    held = Counter(seen.edfi_records)
    for key in sorted(expected_keys - set(held)):
        edfi.lost += 1
        bad.add("lost", f"Ed-Fi has no {key[0]!r} for student {key[1]}")
    for key, n in sorted(held.items()):
        if key not in expected_keys:
            edfi.unexpected += n
            bad.add("unexpected", f"Ed-Fi holds {key}")
        if n > 1:
            edfi.doubled += n - 1
            bad.add("doubled", f"Ed-Fi holds {key} {n} times")
    for key, n in sorted(seen.edfi_creates.items()):
        if n > 1:
            edfi.doubled += n - 1
            bad.add("doubled", f"Ed-Fi created {key} {n} times")
    # --- parent messages: one per consenting guardian and event, none without consent -------
    messages = Place()
    expected_pairs = {(s, phone) for s in arrived
                      for phone, consent in truth.guardians.get(s, []) if consent}
    no_consent = {phone for gs in truth.guardians.values() for phone, ok in gs if not ok}
    ids_by_pair: dict[tuple[str | None, str | None], set[str]] = {}
    for m in seen.messages:
        if m.phone in no_consent:
            messages.unexpected += 1
            bad.add("no_consent", f"message {m.message_id} to a guardian without consent")
            continue
        if m.kind != "check_in" or (m.student_id, m.phone) not in expected_pairs:
            messages.unexpected += 1
            bad.add("unexpected", f"message {m.message_id} ({m.kind}, student {m.student_id})")
            continue
        ids_by_pair.setdefault((m.student_id, m.phone), set()).add(m.message_id)
    for pair in sorted(expected_pairs):
        got = ids_by_pair.get(pair, set())
        if not got:
            messages.lost += 1
            bad.add("lost", f"no message for student {pair[0]} to guardian …{pair[1][-3:]}")
        elif len(got) > 1:
            messages.doubled += len(got) - 1
            bad.add("doubled", f"{len(got)} messages for student {pair[0]} to guardian "
                               f"…{pair[1][-3:]}")
    # --- time provenance: every stored time within its stated bound -------------------------
    stats = {source: TimeStats() for source in ("reader", "reader, skewed clock", "corrected",
                                                 "gateway")}
    for row in seen.scans:
        ident = (row.reader_id, row.boot, row.seq)
        rec = truth.records.get(ident)
        if row.time_source not in ("reader", "corrected", "gateway"):
            bad.add("time", f"{ident}: unknown time_source {row.time_source!r}")
            continue
        if rec is None:
            continue
        error = row.at_ms - rec.true_ms
        skewed = row.time_source == "reader" and rec.clock_fault
        stats["reader, skewed clock" if skewed else row.time_source].add(error)
        for why in _time_violations(row, rec, error, truth):
            bad.add("time", f"{ident} ({row.time_source}, error {error / 1000:+.3f} s): {why}")
    return Verdict(
        places={"gateway scans": gateway, "attendance events": events, "Ed-Fi peer": edfi,
                "parent messages": messages},
        time=stats, made=len(made), stored=len(stored), lost_to_power_cuts=len(lost_to_cuts),
        arrived=len(arrived), violations=bad.lines, violation_count=bad.count)


def _time_violations(row: ScanRow, rec: RecordTruth, error: float,
                     truth: GroundTruth) -> Iterable[str]:
    boot = (row.reader_id, row.boot)
    if boot in truth.never_synced and row.time_source != "gateway":
        yield "a boot that never had a synced clock is not flagged as gateway time"
    if row.time_source == "reader":
        if not row.clock_synced:
            yield "an unsynced reader clock stored as reader time"
        if row.at_ms != row.reader_time_ms:
            yield "reader time that is not the reader's"
        if row.at_ms > row.received_ms + FUTURE_TOLERANCE_MS or \
                error > FUTURE_TOLERANCE_MS + ROUNDING_MS:
            yield f"a reader time more than {FUTURE_TOLERANCE_MS} ms in the future was used"
        if not rec.clock_fault and abs(error) > UNSKEWED_READER_MS:
            yield f"the reader's clock was not skewed, yet off by more than " \
                  f"{UNSKEWED_READER_MS} ms"
    elif row.time_source == "corrected":
        bound = HEARTBEAT_ERROR_MS + ROUNDING_MS + truth.boot_skew_ms.get(boot, 0.0)
        if abs(error) > bound:
            yield f"corrected time beyond its bound of {bound / 1000:.3f} s (anchor " \
                  f"uncertainty plus the boot's injected skew)"
        if row.at_ms > row.received_ms:
            yield "corrected time after the record was received"
    elif row.time_source == "gateway":
        if error < -ROUNDING_MS:
            yield "gateway time before the tap (a receive bound must be at or after it)"
        if row.at_ms > row.received_ms:
            yield "gateway time after the record was received"


# =============================================================================================
# The flash layer that can lose power in the middle of a write
# =============================================================================================

class PowerCut(Exception):
    """The power went in the middle of a flash write (the firmware does not catch it)."""


_HEADER, _SLOT = 16, 56  # docs/queue.md: segment header and slot sizes


class SoakFS(FS):
    """The firmware's file layer for one boot's queue, with two additions:

    - it remembers every slot written whole to a segment (``durable``: ``(boot, seq)``, read
      from the slot's record header as docs/queue.md lays it out), so after a cut the harness
      knows which records never reached flash;
    - ``arm(rng)``: the next write lands only partly (a random number of its bytes, flushed to
      the file) and the power goes: :class:`PowerCut` from it and from every later call.
    """

    def __init__(self, sync: bool) -> None:
        super().__init__(sync)
        self.durable: set[tuple[int, int]] = set()
        self.dead = False
        self.torn: str | None = None  # what the cut tore: "<file>: k of n bytes"
        self._armed: random.Random | None = None
        self._only = ""

    def arm(self, rng: random.Random, only: str = "") -> None:
        """Tear the next write (to a file whose name ends with ``only``, if given)."""
        self._armed = rng
        self._only = only

    def die(self) -> None:
        self.dead = True

    def _alive(self) -> None:
        if self.dead:
            raise PowerCut("the power is off")

    def open(self, path: str, mode: str) -> Any:
        self._alive()
        return super().open(path, mode)

    def write(self, f: Any, data: Any) -> None:
        self._alive()
        name = str(getattr(f, "name", ""))
        pos = f.tell()
        rng = self._armed
        if rng is None or not name.endswith(self._only):
            super().write(f, data)
            self._landed(name, pos, data, len(data))
            return
        n = len(data)
        keep = rng.randrange(n) if n > 1 else 0
        f.write(bytes(data[:keep]))
        f.flush()
        self._landed(name, pos, data, keep)
        self.dead = True
        self.torn = f"{Path(name).name}: {keep} of {n} bytes"
        raise PowerCut(f"power cut in a write to {self.torn}")

    def _landed(self, name: str, pos: int, data: Any, n: int) -> None:
        if not name.endswith(".seg"):
            return
        first = max(0, math.ceil((pos - _HEADER) / _SLOT))
        j = first
        while _HEADER + (j + 1) * _SLOT <= pos + n:
            at = _HEADER + j * _SLOT - pos
            slot = bytes(data[at:at + _SLOT])
            self.durable.add((int.from_bytes(slot[7:11], "big"),
                              int.from_bytes(slot[11:15], "big")))
            j += 1

    def close(self, f: Any) -> None:
        if self.dead:
            f.close()
            raise PowerCut("the power is off")
        super().close(f)

    def rename(self, src: str, dst: str) -> None:
        self._alive()
        super().rename(src, dst)

    def remove(self, path: str) -> None:
        self._alive()
        super().remove(path)

    def listdir(self, path: str) -> list[str]:
        self._alive()
        return super().listdir(path)

    def size(self, path: str) -> int:
        self._alive()
        return super().size(path)

    def mkdir(self, path: str) -> None:
        self._alive()
        super().mkdir(path)


# =============================================================================================
# The parts: readers, the gateway process, the fault log
# =============================================================================================

class SoakReader:
    """One gate reader: the real firmware, its proxy, and what the harness knows about it."""

    def __init__(self, reader_id: int, gate: int, root: Path, proxy: LinkProxy,
                 cards: dict[bytes, str]) -> None:
        self.reader_id = reader_id
        self.gate = gate
        self.proxy = proxy
        self.reader = FirmwareReader(root, sync=False, **READER_OPTIONS)
        self.cards = cards  # uid -> student id
        self.on = False
        self.fs: SoakFS | None = None
        self.skew_ms = 0.0  # what the soak did to the clock of this boot, now
        self.clock_fault = False
        self.records: dict[tuple[int, int], RecordTruth] = {}
        self.lost_in_ram: set[tuple[int, int]] = set()
        self.cuts: list[set[tuple[int, int]]] = []
        self.never_synced: set[int] = set()
        self.boot_skew_ms: dict[int, float] = {}
        self.crashes: list[str] = []
        self.health_seen: set[str] = set()

    @property
    def boot(self) -> int:
        app = self.reader.app
        return app.boot if app is not None else 0

    def power_on(self) -> None:
        app = self.reader.start()
        fs = SoakFS(self.reader.sync)
        app.queue.fs = fs  # the queue's writes from now on (boot() only read and repaired)
        self.fs = fs
        self.skew_ms = 0.0
        self.clock_fault = False
        taps = app.taps
        original = taps.sighting

        def sighting(tech: int, uid: bytearray, n: int, now_ms: int) -> bool:
            if fs.dead:
                return False  # the board is off: nothing is seen any more
            true_ms = time.time() * 1000
            if not original(tech, uid, n, now_ms):
                return False
            self.records[(app.boot, taps.seq)] = RecordTruth(
                true_ms, self.cards.get(bytes(uid[:n])), self.clock_fault)
            return True

        setattr(taps, "sighting", sighting)  # noqa: B010 (mypy: a method cannot be assigned)
        self.on = True

    async def power_off(self, cut: bool) -> set[tuple[int, int]]:
        """Graceful (the queue is flushed) or a cut; returns the records lost in RAM."""
        app, fs = self.reader.app, self.fs
        self.on = False
        if app is None or fs is None:
            return set()
        boot, synced = app.boot, app.clock.synced
        if cut:
            fs.die()
        await self.reader.stop(flush=not cut)
        crashed, self.reader.crashed = self.reader.crashed, None
        if crashed is not None and not (cut and isinstance(crashed, PowerCut)):
            self.crashes.append(f"reader {self.reader_id} boot {boot}: {crashed!r}")
        if not synced:
            self.never_synced.add(boot)
        if self.skew_ms:
            self._note_skew(boot)
        lost: set[tuple[int, int]] = set()
        if cut:
            lost = {(boot, s) for s in range(1, app.taps.seq + 1)} - fs.durable
            self.lost_in_ram |= lost
            self.cuts.append(lost)
        return lost

    def tap(self, card: tuple[int, bytes]) -> bool:
        if not self.on or self.reader.hardware is None:
            return False
        self.reader.tap(card)
        return True

    # --- the clock ---------------------------------------------------------------------------

    def _note_skew(self, boot: int) -> None:
        self.boot_skew_ms[boot] = max(self.boot_skew_ms.get(boot, 0.0), abs(self.skew_ms))

    def shift_clock(self, delta_ms: float) -> None:
        """Step the running reader's clock by ``delta_ms`` (it stays "synced")."""
        app = self.reader.app
        assert app is not None
        s, ms = app.clock.now()
        total = s * 1000 + ms + round(delta_ms)
        app.clock.set_time(total // 1000, total % 1000)
        self.skew_ms += delta_ms
        self.clock_fault = True
        self._note_skew(app.boot)

    def ntp_sync(self) -> None:
        """What an NTP answer does: the clock set from the host's, exactly."""
        app = self.reader.app
        assert app is not None
        now = time.time()
        app.clock.set_time(int(now), int(now * 1000) % 1000)
        self.skew_ms = 0.0
        self.clock_fault = False

    @property
    def synced(self) -> bool:
        app = self.reader.app
        return app is not None and app.clock.synced

    @property
    def drained(self) -> bool:
        return self.on and self.reader.online and self.reader.queue_depth == 0


class GatewayProcess:
    """The gateway command in its own process (its own session: Ctrl-C reaches the harness)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and the exit status (-9 if it had to be killed)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                return -9
        return int(proc.returncode)


@dataclass
class FaultRecord:
    at_s: float  # seconds after the taps began
    kind: str
    target: str
    detail: str = ""
    duration_s: float = 0.0


# =============================================================================================
# The soak
# =============================================================================================

@dataclass(frozen=True)
class Options:
    minutes: float = 10.0
    seed: int = 1
    readers: int = 8
    class_size: int = 30
    summary: Path | None = None
    keep: bool = False
    drain_s: float = 90.0
    gateway_command: tuple[str, ...] = ()  # "{config}" is replaced; default: gateway.cli run
    verbose: bool = False


def morning_zone(now_s: float, hour: int = 7) -> zoneinfo.ZoneInfo:
    """A fixed-offset zone in which it is ``hour``:xx at ``now_s``."""
    offset = (hour - time.gmtime(now_s).tm_hour) % 24
    if offset > 14:
        offset -= 24
    return zoneinfo.ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}")


def _deployed_broker_lines() -> list[str]:
    lines = []
    for line in _DEPLOYED_BROKER.read_text(encoding="utf-8").splitlines():
        key = line.split(" ", 1)[0]
        if key in _BROKER_KEYS:
            lines.append(line.strip())
    return lines


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path.name


def write_gateway_config(workdir: Path, zone: zoneinfo.ZoneInfo, broker_port: int,
                         mqtt_password: str, edfi: EdFiPeer, hook: WebhookPeer,
                         school_year: int) -> Path:
    """The session is under way all soak long (06:00-12:00, late after 10:00, absent at 11:00,
    it is 07:xx now) and a check-out needs 4 h: every arrival is one ``check_in``."""
    yesterday = dt.datetime.now(zone).date() - dt.timedelta(days=1)
    text = f"""\
# The soak's gateway, written by sim/soak.py.
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "{zone.key}"

[mqtt]
port = {broker_port}
username = "{GATEWAY_USER}"
password_file = "{_secret_file(workdir / 'mqtt.password', mqtt_password)}"
keepalive_s = 5

[metrics]
listen = ""

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
holidays = ["{yesterday.isoformat()}"]

[[attendance.session]]
name = "morning"
start = "06:00"
late_after = "10:00"
absent_at = "11:00"
end = "12:00"
min_stay_min = 240

[outbox]
poll_s = 0.5
retry_initial_s = 1
retry_cap_s = 4
breaker_failures = 5
breaker_cooldown_s = 2
breaker_cooldown_cap_s = 8

[[forward]]
name = "{FORWARD_TARGET}"
type = "edfi"
base_url = "{edfi.base_url}"
client_id = "{edfi.client_id}"
client_secret_file = "{_secret_file(workdir / 'edfi.secret', edfi.client_secret)}"
school_id = {EDFI_SCHOOL_ID}
school_year = {school_year}
session_names = "{EDFI_TERM}"

[notify]
guardian_channel = "{CHANNEL}"
kinds = ["check_in", "check_out", "late", "absent"]
max_delay_min = 600

[[notify.channel]]
name = "{CHANNEL}"
type = "webhook"
url = "{hook.url}"
secret_file = "{_secret_file(workdir / 'hook.key', hook.secrets[0])}"
include_phone = true
timeout_s = 5
"""
    path = workdir / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Soak:
    def __init__(self, opts: Options, workdir: Path, out: TextIO = sys.stdout) -> None:
        self.opts = opts
        self.workdir = workdir
        self.out = out
        self.rng = random.Random(opts.seed)
        self.faults: list[FaultRecord] = []
        self.busy: set[str] = set()
        self.readers: list[SoakReader] = []
        self.taps = 0
        self.taps_missed = 0  # arrivals while no reader of the school was powered
        self.t0 = 0.0
        self.stop = asyncio.Event()
        self._log = (workdir / "soak.log").open("a", encoding="utf-8")
        self._tasks: set[asyncio.Task[None]] = set()
        # set up by run()
        self.school: School
        self.broker: MosquittoBroker
        self.gateway: GatewayProcess
        self.edfi: EdFiPeer
        self.hook: WebhookPeer
        self.db_path = workdir / "gateway.db"
        self.drain_s: dict[str, float] = {}
        self.gateway_exit: int | None = None

    # --- output ------------------------------------------------------------------------------

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def log(self, text: str) -> None:
        line = f"{self.now_s():8.2f}s  {text}"
        self._log.write(line + "\n")
        self._log.flush()
        if self.opts.verbose:
            print(line, file=self.out, flush=True)

    # --- set-up ------------------------------------------------------------------------------

    async def setup(self) -> None:
        opts, workdir = self.opts, self.workdir
        self.school = generate_school(opts.seed, opts.class_size)
        now = time.time()
        zone = morning_zone(now)
        self.zone = zone
        today = dt.datetime.fromtimestamp(now, zone).date()
        self.school_date = today.isoformat()
        school_year = today.year + 1 if today.month >= 8 else today.year
        conn = db.connect(self.db_path)
        try:
            registry = Registry.open(conn, workdir / "master.key")
            creds = [registry.register(FIRST_READER + i, f"{GATES[i % 2]} {i // 2 + 1}",
                                       GATES[i % 2]) for i in range(opts.readers)]
            mqtt_password = secrets.token_urlsafe(24)
            files = write_broker_files(registry, school=SCHOOL, gateway_username=GATEWAY_USER,
                                       gateway_password=mqtt_password,
                                       password_file=workdir / "mosquitto.passwd",
                                       acl_file=workdir / "mosquitto.acl")
        finally:
            conn.close()
        self.broker = MosquittoBroker(workdir / "broker", port=free_port(),
                                      allow_anonymous=False, password_file=files.password_file,
                                      acl_file=files.acl_file,
                                      extra_lines=_deployed_broker_lines())
        await asyncio.to_thread(self.broker.start)
        self.edfi = await EdFiPeer(school_id=EDFI_SCHOOL_ID,
                                   sessions={(school_year, EDFI_TERM)},
                                   students={s.student_id for s in self.school.students},
                                   token_ttl_s=30).start()
        self.hook = await WebhookPeer(secrets=[
            "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()]).start()
        config = write_gateway_config(workdir, zone, self.broker.port, mqtt_password, self.edfi,
                                      self.hook, school_year)
        sheet = self.school.write_sheet(workdir / "roster.csv")
        imported = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway.cli", "roster", "import", "--config",
                             str(config), "--sheet", str(sheet)],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        if imported.returncode != 0:
            raise RuntimeError(f"roster import failed: {imported.stderr[-2000:]}")
        argv = [a.replace("{config}", str(config)) for a in opts.gateway_command] or \
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)]
        self.gateway = GatewayProcess(argv, workdir / "gateway.log")
        self.gateway.start()
        if not await self._until(lambda: b'"event": "connected"' in self.gateway.log.read_bytes(),
                                 30):
            raise RuntimeError("the gateway did not connect to the broker within 30 s:\n"
                               + self.gateway.log.read_text(errors="replace")[-3000:])
        cards = {s.card[1]: s.student_id for s in self.school.students}
        for i, c in enumerate(creds):
            proxy = await LinkProxy(self.broker.port).start()
            root = workdir / "readers" / str(c.reader_id)
            provision(root, c.reader_id, c.key, SCHOOL, host=LOOPBACK, port=proxy.port,
                      password=c.mqtt_password, gate=GATES[i % 2], heartbeat_s=HEARTBEAT_S)
            self.readers.append(SoakReader(c.reader_id, i % 2, root, proxy, cards))
        for r in self.readers:
            r.power_on()
        if not await self._until(lambda: all(r.reader.online for r in self.readers), 30):
            raise RuntimeError("the readers did not all come online within 30 s")

    async def _until(self, what: Callable[[], bool], timeout_s: float,
                     every_s: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout_s
        while not what():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(every_s)
        return True

    # --- the morning -------------------------------------------------------------------------

    def _reader_at(self, gate: int, rng: random.Random,
                   exclude: SoakReader | None = None) -> SoakReader | None:
        here = [r for r in self.readers if r.on and r.gate == gate and r is not exclude]
        anywhere = [r for r in self.readers if r.on and r is not exclude]
        pool = here or anywhere
        return rng.choice(pool) if pool else None

    async def morning(self, active_s: float) -> None:
        """The wave of ``plan_morning``, compressed into the active phase (its last late
        arrivals a moment before the end, so the drain starts with work in flight)."""
        rng = random.Random(self.opts.seed + 10)
        arrivals = plan_morning(self.school).arrivals
        last = max((a.at_s for a in arrivals), default=1.0) or 1.0
        span = max(1.0, active_s - 3.0)
        queue: list[tuple[float, int, Callable[[], None]]] = []
        order = itertools.count()
        for a in arrivals:
            card = a.student.card

            def arrive(card: tuple[int, bytes] = card, gate: int = a.gate,
                       repeat: str | None = a.repeat) -> None:
                reader = self._reader_at(gate, rng)
                if reader is None or not reader.tap(card):
                    self.taps_missed += 1
                    return
                self.taps += 1
                if repeat is None:
                    return
                again = self._reader_at(gate, rng, reader) if repeat == "other_reader" else reader
                delay = REPEAT_OTHER_S if repeat == "other_reader" else REPEAT_SAME_S

                def tap_again(target: SoakReader | None = again) -> None:
                    if target is not None and target.tap(card):
                        self.taps += 1
                heapq.heappush(queue, (self.now_s() + delay, next(order), tap_again))
            heapq.heappush(queue, (1.0 + a.at_s / last * span, next(order), arrive))
        while queue and not self.stop.is_set():
            when, _, action = queue[0]
            delay = when - self.now_s()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), min(delay, 0.5))
                continue
            heapq.heappop(queue)
            action()

    # --- the fault scheduler -----------------------------------------------------------------

    def _span(self, lo: float, hi: float) -> float:
        """A fault's duration: shorter in short runs, so that every kind fits."""
        scale = 1.0 if self.opts.minutes >= 3 else 0.5
        return self.rng.uniform(lo * scale, hi * scale)

    def _free_reader(self, synced: bool = False) -> SoakReader | None:
        free = [r for r in self.readers if r.on and f"reader:{r.reader_id}" not in self.busy
                and (r.synced or not synced)]
        return self.rng.choice(free) if free else None

    def _target(self, kind: str) -> tuple[str, SoakReader | None] | None:
        if kind in READER_KINDS:
            reader = self._free_reader(synced=kind in ("clock_jump", "clock_drift"))
            if reader is None:
                return None
            return f"reader:{reader.reader_id}", reader
        name = {"broker_restart": "broker", "gateway_kill9": "gateway", "edfi_down": "edfi",
                "edfi_errors": "edfi", "notify_down": "notify", "notify_errors": "notify"}[kind]
        return (None if name in self.busy else (name, None))

    async def scheduler(self, active_s: float) -> None:
        """Every kind once, shuffled, in the first half; then at random (about one fault every
        6 s) until shortly before the end, so the drain starts from live faults."""
        start, end = min(3.0, active_s * 0.05), active_s - min(5.0, active_s * 0.05)
        coverage = list(KINDS)
        self.rng.shuffle(coverage)
        spacing = min(8.0, (end * 0.5 - start) / len(coverage))
        plan = [(start + i * spacing, kind) for i, kind in enumerate(coverage)]
        pending = list(plan)
        next_random = plan[-1][0] + self.rng.expovariate(1 / 6.0)
        while not self.stop.is_set() and self.now_s() < end:
            now = self.now_s()
            if pending and pending[0][0] <= now:
                kind = pending[0][1]
                if self._launch(kind):
                    pending.pop(0)
                else:
                    pending.append((now + 1.0, pending.pop(0)[1]))  # try again in a moment
                    pending.sort()
            elif not pending and now >= next_random:
                self._launch(self.rng.choice(KINDS))
                next_random = now + self.rng.expovariate(1 / 6.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)

    def _launch(self, kind: str) -> bool:
        target = self._target(kind)
        if target is None:
            return False
        name, reader = target
        self.busy.add(name)
        record = FaultRecord(round(self.now_s(), 2), kind, name)
        self.faults.append(record)
        if reader is not None:
            on_reader: dict[str, Callable[[SoakReader], Awaitable[str]]] = {
                "link_blackhole": self._blackhole, "power_cut": self._power_cut,
                "clock_unsynced": self._unsynced, "clock_jump": self._jump,
                "clock_drift": self._drift}
            action = on_reader[kind](reader)
        else:
            global_: dict[str, Callable[[], Awaitable[str]]] = {
                "broker_restart": self._broker_restart, "gateway_kill9": self._gateway_kill9,
                "edfi_down": self._edfi_down, "edfi_errors": self._edfi_errors,
                "notify_down": self._notify_down, "notify_errors": self._notify_errors}
            action = global_[kind]()

        async def run() -> None:
            began = time.monotonic()
            try:
                record.detail = await action
            except asyncio.CancelledError:
                record.detail += " (ended early)"
            except Exception as exc:  # a harness problem: say so, keep going
                record.detail = f"harness error {exc!r}"
            finally:
                record.duration_s = round(time.monotonic() - began, 2)
                self.busy.discard(name)
                self.log(f"{kind:15} {name:12} {record.duration_s:5.1f}s  {record.detail}")
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not past the end of the faults."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    # --- the faults (each restores what it broke, also when cancelled) -----------------------

    async def _broker_restart(self) -> str:
        how = self.rng.choice(("SIGTERM", "SIGKILL"))
        down = self._span(0.5, 4)
        proc = self.broker.process
        if how == "SIGKILL" and proc is not None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            self.broker.process = None
        else:
            await asyncio.to_thread(self.broker.stop)
        try:
            await self._pause(down)
        finally:
            await self._start_broker()
        return f"{how}, down {down:.1f} s"

    async def _start_broker(self) -> None:
        for attempt in range(10):
            try:
                await asyncio.to_thread(self.broker.start)
                return
            except Exception:  # the port still held for a moment: try again
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)

    async def _gateway_kill9(self) -> str:
        down = self._span(0.2, 4)
        await asyncio.to_thread(self.gateway.kill9)
        try:
            await self._pause(down)
        finally:
            self.gateway.start()
        return f"kill -9, down {down:.1f} s"

    async def _edfi_down(self) -> str:
        down = self._span(2, 20)
        await self.edfi.close()
        try:
            await self._pause(down)
        finally:
            await self.edfi.start()
        return f"down {down:.1f} s"

    async def _edfi_errors(self) -> str:
        n = self.rng.randint(3, 12)
        fault, label = self.rng.choice((
            (EdFiFault(status=500), "500"), (EdFiFault(status=429, retry_after="1"), "429"),
            (EdFiFault(status=503, retry_after="2"), "503"), (EdFiFault(kind="drop"), "drop")))
        self.edfi.inject(fault, n)
        await self._pause(self._span(2, 10))
        return f"next {n} requests answer {label}"

    async def _notify_down(self) -> str:
        down = self._span(2, 20)
        await self.hook.close()
        try:
            await self._pause(down)
        finally:
            await self.hook.start()
        return f"down {down:.1f} s"

    async def _notify_errors(self) -> str:
        n = self.rng.randint(3, 12)
        fault, label = self.rng.choice((
            (HookFault(status=500), "500"), (HookFault(status=429, retry_after="1"), "429"),
            (HookFault(status=503, retry_after="2"), "503"), (HookFault(kind="drop"), "drop")))
        self.hook.inject(fault, n)
        await self._pause(self._span(2, 10))
        return f"next {n} deliveries answer {label}"

    async def _blackhole(self, r: SoakReader) -> str:
        d = self._span(2, 20)
        r.proxy.black_hole()
        try:
            await self._pause(d)
        finally:
            r.proxy.forward()
        return f"black hole {d:.1f} s"

    async def _power_cut(self, r: SoakReader) -> str:
        """A card is tapped (so the flush task has a slot to write), the next flash write of
        the queue is torn and the power goes; the reader stays off a moment, then boots."""
        student = self.rng.choice(self.school.students)
        if r.tap(student.card):
            self.taps += 1
        fs = r.fs
        assert fs is not None
        fs.arm(self.rng, self.rng.choice((".seg", "")))  # a slot write, or whatever comes first
        try:
            await self._until(lambda: fs.dead, 2.0, 0.002)
        finally:  # also when the run ends meanwhile: an armed queue must not stay powered
            lost = await r.power_off(cut=True)
        off = self._span(0.5, 4)
        try:
            await self._pause(off)
        finally:
            r.power_on()
        where = f"torn write ({fs.torn})" if fs.torn else "no write under way"
        return f"{where}, {len(lost)} record(s) not yet on flash, off {off:.1f} s"

    async def _unsynced(self, r: SoakReader) -> str:
        """A boot whose NTP server does not answer; the link is also lost for a while (the
        first time always) so unsynced records wait in the queue. Then either NTP answers in
        the same boot (its queued records get corrected times) or the reader reboots with NTP
        back (the unsynced boot stays unanchored: gateway times)."""
        first = not any(f.kind == "clock_unsynced" for f in self.faults[:-1])
        late_ntp = first or self.rng.random() < 0.5
        blackhole = first or self.rng.random() < 0.5
        d = self._span(4, 24)
        r.reader.ntp = False
        await r.power_off(cut=False)
        r.power_on()
        r.reader.ntp = True  # the next boot finds its NTP server again
        try:
            await self._pause(d / 3)
            if blackhole:
                r.proxy.black_hole()
            await self._pause(d * 2 / 3)
        finally:
            if late_ntp and r.on:
                r.ntp_sync()
            await asyncio.sleep(0.5)
            r.proxy.forward()
            if not late_ntp and r.on:
                await r.power_off(cut=False)
                r.power_on()
        return (f"unsynced {d:.1f} s{', link lost meanwhile' if blackhole else ''}, then "
                f"{'NTP answered' if late_ntp else 'rebooted with NTP'}")

    async def _jump(self, r: SoakReader) -> str:
        sign = self.rng.choice((-1, 1))
        delta = sign * self.rng.uniform(3, 90) * 1000
        d = self._span(3, 20)
        r.shift_clock(delta)
        boot = r.boot
        try:
            await self._pause(d)
        finally:
            if r.on and r.boot == boot:
                r.ntp_sync()
        return f"clock stepped {delta / 1000:+.1f} s for {d:.1f} s, then NTP"

    async def _drift(self, r: SoakReader) -> str:
        rate = self.rng.choice((-1, 1)) * self.rng.uniform(20, 100)  # ms per second
        d = self._span(6, 40)
        boot = r.boot
        ended = time.monotonic() + d
        try:
            while time.monotonic() < ended and not self.stop.is_set():
                await asyncio.sleep(0.5)
                if not r.on or r.boot != boot:
                    break
                r.shift_clock(rate / 2)
        finally:
            if r.on and r.boot == boot:
                r.ntp_sync()
        return f"clock drifting {rate:+.0f} ms/s for {d:.1f} s, then NTP"

    # --- watching ----------------------------------------------------------------------------

    async def watch(self) -> None:
        """Once a second: what the gateway says of each reader's clock (``clock_health``)."""
        by_id = {r.reader_id: r for r in self.readers}
        next_progress = 60.0
        while not self.stop.is_set():
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=1)
                try:
                    for rid, health in conn.execute(
                            "SELECT reader_id, clock_health FROM reader_status"):
                        if rid in by_id:
                            by_id[rid].health_seen.add(str(health))
                    if self.now_s() >= next_progress:
                        scans = conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
                        print(f"  {self.now_s():6.0f} s  taps {self.taps}, stored {scans}, "
                              f"faults {len(self.faults)}", file=self.out, flush=True)
                        next_progress += 60.0
                finally:
                    conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    # --- the end -----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Stop the faults: every fault task restores what it broke; then make sure."""
        self.stop.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.broker.process is None or self.broker.process.poll() is not None:
            await self._start_broker()
        if not self.gateway.alive:
            self.gateway.start()
        self.edfi.clear_faults()  # the webhook's few injected faults are used up by retries
        for r in self.readers:
            r.proxy.forward()
            if not r.on:
                r.power_on()

    def _pending(self) -> tuple[int, int]:
        """Outbox rows and parent messages still to deliver."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            outbox = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
                                  ).fetchone()[0]
            notify = conn.execute("SELECT COUNT(*) FROM notify_messages WHERE state = 'pending'"
                                  ).fetchone()[0]
            return int(outbox), int(notify)
        finally:
            conn.close()

    async def drain(self) -> bool:
        started = time.monotonic()
        budget = self.opts.drain_s
        readers_ok = await self._until(lambda: all(r.drained for r in self.readers), budget, 0.1)
        self.drain_s["readers"] = round(time.monotonic() - started, 2)
        left = max(5.0, budget - (time.monotonic() - started))
        mark = time.monotonic()

        def outboxes_empty() -> bool:
            try:
                return self._pending() == (0, 0)
            except sqlite3.Error:
                return False
        outboxes_ok = await self._until(outboxes_empty, left, 0.25)
        self.drain_s["outboxes"] = round(time.monotonic() - mark, 2)
        self.drain_s["total"] = round(time.monotonic() - started, 2)
        return readers_ok and outboxes_ok

    async def finish(self) -> tuple[GroundTruth, Observed]:
        """Stop everything and gather what each side holds."""
        problems: list[str] = []
        drained = await self.drain()
        queues = {r.reader_id: r.reader.queue_depth for r in self.readers}
        self.gateway_exit = await asyncio.to_thread(self.gateway.terminate)
        for r in self.readers:
            await r.power_off(cut=False)
            await r.proxy.close()
        await self.edfi.close()
        await self.hook.close()
        await asyncio.to_thread(self.broker.stop)
        if not drained:
            problems.append(f"not drained within {self.opts.drain_s:g} s "
                            f"(reader queues {queues}, pending {self._pending()})")
        if self.gateway_exit != 0:
            problems.append(f"the gateway exited with {self.gateway_exit} on SIGTERM")
        for r in self.readers:
            problems += r.crashes
        truth = GroundTruth(
            made={r.reader_id: r.reader.made() for r in self.readers},
            records={(r.reader_id, b, s): rec for r in self.readers
                     for (b, s), rec in r.records.items()},
            guardians={s.student_id: [(g.phone, g.consent) for g in s.guardians]
                       for s in self.school.students},
            lost_in_ram={(r.reader_id, b, s) for r in self.readers for b, s in r.lost_in_ram},
            never_synced={(r.reader_id, b) for r in self.readers for b in r.never_synced},
            boot_skew_ms={(r.reader_id, b): v for r in self.readers
                          for b, v in r.boot_skew_ms.items()})
        seen = self.observe(problems)
        truth.lost_per_cut = [len({(r.reader_id, b, s) for b, s in cut}
                                  - {(x.reader_id, x.boot, x.seq) for x in seen.scans})
                              for r in self.readers for cut in r.cuts]
        return truth, seen

    def observe(self, problems: list[str]) -> Observed:
        conn = db.connect(self.db_path, migrate=False)
        try:
            scans = [ScanRow(int(r), int(b), int(s), int(rt), bool(cs), int(rc), int(at), str(src))
                     for r, b, s, rt, cs, rc, at, src in conn.execute(
                         "SELECT reader_id, boot, seq, reader_time_ms, clock_synced, received_ms, "
                         "at_ms, time_source FROM scans")]
            events = [(None if s is None else str(s), str(k)) for s, k in conn.execute(
                "SELECT student_id, kind FROM attendance_events WHERE voided_ms IS NULL")]
            quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            parked = dict(conn.execute(
                "SELECT 'outbox', COUNT(*) FROM outbox WHERE state = 'parked' UNION ALL "
                "SELECT 'messages', COUNT(*) FROM notify_messages WHERE state = 'parked'"))
        finally:
            conn.close()
        if quarantined:
            problems.append(f"{quarantined} message(s) quarantined (no forger in the soak)")
        for where, n in parked.items():
            if n:
                problems.append(f"{n} {where} item(s) parked")
        records = []
        for rec in self.edfi.records.values():
            records.append((str(rec["attendanceEventCategoryDescriptor"]).partition("#")[2],
                            str(rec["studentReference"]["studentUniqueId"]),
                            str(rec["eventDate"])))
        creates: Counter[tuple[str, str, str]] = Counter()
        upserts = 0
        for req in self.edfi.requests:
            if req.method == "POST" and req.path == RESOURCE_PATH and req.status in (200, 201):
                if req.status == 200:
                    upserts += 1
                    continue
                key = self.edfi.natural_key(req.body)
                creates[(key[0].partition("#")[2], key[5], key[1])] += 1
        messages = []
        for mid, payload in self.hook.stored.items():
            event = payload.get("event") or {}
            messages.append(PeerMessage(mid, payload.get("phone"), event.get("student_id"),
                                        str(payload.get("kind"))))
        return Observed(scans=scans, events=events, edfi_records=records, edfi_creates=creates,
                        messages=messages, school_date=self.school_date, edfi_upserts=upserts,
                        redelivered=self.hook.duplicates, problems=problems)

    async def cleanup(self) -> None:
        """Whatever is still running after an error."""
        self.stop.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self.readers:
            with contextlib.suppress(Exception):
                if r.reader._task is not None:
                    await r.reader.stop()
            with contextlib.suppress(Exception):
                await r.proxy.close()
        for peer in (getattr(self, "edfi", None), getattr(self, "hook", None)):
            if peer is not None:
                with contextlib.suppress(Exception):
                    await peer.close()
        gateway = getattr(self, "gateway", None)
        if gateway is not None and gateway.alive:
            await asyncio.to_thread(gateway.terminate, 10)
        broker = getattr(self, "broker", None)
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        self._log.close()

    # --- the whole run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        active_s = self.opts.minutes * 60
        print(f"soak: seed {self.opts.seed}, {self.opts.readers} readers, "
              f"{active_s:.0f} s of taps and faults, workdir {self.workdir}",
              file=self.out, flush=True)
        try:
            await self.setup()
            self.t0 = time.monotonic()
            self.log(f"start: {len(self.school.students)} students, {len(self.readers)} "
                     f"readers, gateway {' '.join(self.gateway.argv[1:4])}")
            tasks = [asyncio.create_task(self.morning(active_s)),
                     asyncio.create_task(self.scheduler(active_s)),
                     asyncio.create_task(self.watch())]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), active_s)
            self.stop.set()
            await asyncio.gather(*tasks)
            await self.restore()
            self.log("faults stopped; draining")
            truth, seen = await self.finish()
        finally:
            await self.cleanup()
        verdict = check(truth, seen)
        return self.summary(truth, seen, verdict)

    def summary(self, truth: GroundTruth, seen: Observed, v: Verdict) -> dict[str, Any]:
        kinds = Counter(f.kind for f in self.faults)
        torn = sum(1 for f in self.faults if f.kind == "power_cut" and "torn write" in f.detail)
        health = {str(r.reader_id): sorted(r.health_seen) for r in self.readers
                  if r.health_seen & {"jumped", "drifting"}}
        return {
            "verdict": "PASS" if v.ok else "FAIL",
            "seed": self.opts.seed, "minutes": self.opts.minutes, "readers": self.opts.readers,
            "students": len(self.school.students), "workdir": str(self.workdir),
            "faults": {"total": len(self.faults), "by_kind": {k: kinds.get(k, 0) for k in KINDS},
                       "torn_writes": torn, "log": [vars(f) for f in self.faults]},
            "taps": self.taps, "taps_missed_all_readers_off": self.taps_missed,
            "records_made": v.made, "scans_stored": v.stored,
            "lost_to_power_cuts": v.lost_to_power_cuts, "power_cuts": len(truth.lost_per_cut),
            "ring_slots": truth.ring_slots, "students_arrived": v.arrived,
            "places": {name: vars(p) for name, p in v.places.items()},
            "edfi": {"records": len(seen.edfi_records), "upserts_absorbed": seen.edfi_upserts,
                     "requests": len(self.edfi.requests)},
            "messages": {"delivered": len(seen.messages), "redelivered_same_id":
                         seen.redelivered},
            "time": {src: {"count": t.count, "worst_ms": round(t.worst_ms, 1),
                           "min_ms": round(t.min_ms, 1), "max_ms": round(t.max_ms, 1)}
                     for src, t in v.time.items()},
            "clock_flagged_by_gateway": health,
            "drain_s": self.drain_s, "gateway_exit": self.gateway_exit,
            "gateway_starts": self.gateway.starts,
            "violation_count": v.violation_count, "violations": v.violations,
        }


# =============================================================================================
# The report
# =============================================================================================

def render(s: dict[str, Any]) -> str:
    faults = s["faults"]
    by_kind = ", ".join(f"{k} {n}" for k, n in faults["by_kind"].items())
    lines = [
        "",
        f"SOAK {s['verdict']} — seed {s['seed']}, {s['readers']} readers, {s['students']} "
        f"students, {s['minutes']:g} min of faults",
        f"faults injected: {faults['total']} ({by_kind}; torn flash writes "
        f"{faults['torn_writes']})",
        f"taps {s['taps']} → records made {s['records_made']} → stored {s['scans_stored']}; "
        f"lost to power cuts before reaching flash {s['lost_to_power_cuts']} "
        f"({s['power_cuts']} cuts, documented bound ≤ {s['ring_slots']} per cut)",
        f"  {'':20}{'lost':>6}{'doubled':>9}{'unexpected':>12}",
    ]
    notes = {
        "gateway scans": "",
        "attendance events": f"  {s['students_arrived']} students arrived",
        "Ed-Fi peer": f"  {s['edfi']['records']} records, {s['edfi']['upserts_absorbed']} "
                      f"repeated POSTs absorbed by the upsert",
        "parent messages": f"  {s['messages']['delivered']} delivered, "
                           f"{s['messages']['redelivered_same_id']} redelivered under the "
                           f"same id",
    }
    for name, p in s["places"].items():
        lines.append(f"  {name:20}{p['lost']:>6}{p['doubled']:>9}{p['unexpected']:>12}"
                     f"{notes.get(name, '')}")
    bounds = {"reader": f"±{UNSKEWED_READER_MS} ms (NTP-synced, not skewed)",
              "reader, skewed clock": f"≤ +{FUTURE_TOLERANCE_MS / 1000:g} s (never further "
                                      f"ahead); behind: flagged",
              "corrected": f"±{HEARTBEAT_ERROR_MS / 1000:g} s + the boot's injected skew",
              "gateway": "tap ≤ time ≤ receipt"}
    lines.append(f"time provenance        {'count':>7}  {'worst':>9}  {'range (s)':>17}  bound")
    for src, t in s["time"].items():
        lines.append(f"  {src:20} {t['count']:>7}  {t['worst_ms'] / 1000:>8.3f}s  "
                     f"{t['min_ms'] / 1000:>+8.3f}…{t['max_ms'] / 1000:<+8.3f}  {bounds[src]}")
    flagged = s["clock_flagged_by_gateway"]
    if flagged:
        lines.append("clocks the gateway flagged: " + ", ".join(
            f"{r} {'/'.join(h for h in hs if h in ('jumped', 'drifting'))}"
            for r, hs in flagged.items()))
    d = s["drain_s"]
    lines.append(f"drain {d.get('total', 0):.1f} s (readers {d.get('readers', 0):.1f} s, "
                 f"outboxes {d.get('outboxes', 0):.1f} s); gateway started "
                 f"{s['gateway_starts']} times, exit {s['gateway_exit']} on SIGTERM")
    if s["violation_count"]:
        lines.append(f"violations: {s['violation_count']}")
        lines += [f"  {line}" for line in s["violations"][:12]]
    lines.append(f"verdict: {s['verdict']}")
    return "\n".join(lines)


async def soak(opts: Options, workdir: Path, out: TextIO = sys.stdout) -> dict[str, Any]:
    return await Soak(opts, workdir, out).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.soak",
        description="The fault campaign: a school morning on loopback while the broker, the "
                    "gateway, the links, the readers' power and clocks and the upstream peers "
                    "fail; then lost = 0, doubled = 0 and every time within its bound")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="taps and faults for this long (default 10), then the drain")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--readers", type=int, default=8, help="readers, >= 2 (default 8)")
    parser.add_argument("--class-size", type=int, default=30,
                        help="students per class, 12 classes (default 30)")
    parser.add_argument("--drain", type=float, default=90.0, metavar="S",
                        help="the longest wait for queues and outboxes to drain (default 90)")
    parser.add_argument("--summary", type=Path, metavar="FILE", help="write the JSON summary")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (kept anyway when the run fails)")
    parser.add_argument("--verbose", action="store_true", help="print every fault as it ends")
    parser.add_argument("--gateway-command", metavar="CMD",
                        help="run the gateway with this command instead ({config} is the "
                             "configuration's path); the tests use it to run a gateway with "
                             "a deliberate bug")
    args = parser.parse_args(argv)
    if args.readers < 2 or args.minutes <= 0 or args.class_size < 1 or args.drain <= 0:
        parser.error("--readers must be >= 2; --minutes, --class-size and --drain positive")
    opts = Options(args.minutes, args.seed, args.readers, args.class_size, args.summary,
                   args.keep, args.drain,
                   tuple(shlex.split(args.gateway_command)) if args.gateway_command else (),
                   args.verbose)
    workdir = Path(tempfile.mkdtemp(prefix="attendance-soak-"))
    try:
        summary = asyncio.run(soak(opts, workdir))
    except Exception as exc:
        print(f"soak: setup or harness failure: {exc}\nworkdir kept: {workdir}", flush=True)
        return 2
    print(render(summary), flush=True)
    if opts.summary is not None:
        opts.summary.write_text(json.dumps(summary, ensure_ascii=False, indent=2),
                                encoding="utf-8")
    if summary["verdict"] == "PASS" and not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"workdir kept: {workdir}", flush=True)
    return 0 if summary["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
