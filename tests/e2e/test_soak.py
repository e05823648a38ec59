"""The fault campaign (``make soak``, ``sim/soak.py``) and the proof that its checks bite.

- The invariant checker (``sim.soak.check``) on hand-made ground truth: a missing record, a
  doubled one, a timestamp outside its provenance bound, a message to a guardian without consent,
  a power cut that lost more than the RAM ring holds: each is reported; records lost in RAM at a
  power cut are counted apart and are no violation.
- ``SoakFS``: the records it calls durable after a torn write are exactly those the firmware's
  queue recovers from the flash.
- (slow) A short soak, every fault kind at least once, passes: lost = 0 and doubled = 0 at the
  gateway, the Ed-Fi peer and in parent messages, every time within its bound.
- (slow) The same soak against a gateway with a deliberate bug fails, reports lost > 0 and exits
  non-zero. The bug is injected from here: this module, run as ``python -m tests.e2e.test_soak
  --bug KIND --config FILE``, patches the ingest and then runs the real ``attendance-gateway
  run``; production code has no fault switch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sim.soak import (
    IN_ATTENDANCE,
    GroundTruth,
    Observed,
    PeerMessage,
    PowerCut,
    RecordTruth,
    ScanRow,
    SoakFS,
    check,
)

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-03-02"
T0 = 1_772_400_000_000.0  # a morning in 2026, in Unix ms


# --- the checker on hand-made ground truth ---------------------------------------------------

def _truth(n: int = 3, **extra: Any) -> GroundTruth:
    """Reader 1, boot 1, records 1..n of students s1..sn, one second apart; s1 has a guardian
    who consented and one who did not."""
    return GroundTruth(
        made={1: [(1, s) for s in range(1, n + 1)]},
        records={(1, 1, s): RecordTruth(T0 + s * 1000, f"s{s}") for s in range(1, n + 1)},
        guardians={f"s{s}": [(f"8490000000{s}", True)] for s in range(1, n + 1)}
        | {"s1": [("84900000001", True), ("84911111111", False)]},
        **extra)


def _scan(seq: int, *, error_ms: float = 0, source: str = "reader", synced: bool = True,
          received_after_ms: float = 50, boot: int = 1) -> ScanRow:
    true = T0 + seq * 1000
    at = int(true + error_ms)
    return ScanRow(1, boot, seq, at if source == "reader" else int(true), synced,
                   int(true + received_after_ms), at, source)


def _seen(scans: list[ScanRow], students: list[str], **extra: Any) -> Observed:
    """What a correct system shows for ``scans`` of ``students``."""
    return Observed(
        scans=scans,
        events=[(s, "check_in") for s in students],
        edfi_records=[(IN_ATTENDANCE, s, DATE) for s in students],
        edfi_creates=Counter({(IN_ATTENDANCE, s, DATE): 1 for s in students}),
        messages=[PeerMessage(f"m-{s}", f"8490000000{s[1:]}", s, "check_in") for s in students],
        school_date=DATE, **extra)


def test_a_clean_run_passes() -> None:
    v = check(_truth(), _seen([_scan(1), _scan(2), _scan(3)], ["s1", "s2", "s3"]))
    assert v.ok, v.violations
    assert all(p.clean() for p in v.places.values())
    assert (v.made, v.stored, v.arrived) == (3, 3, 3)
    assert v.time["reader"].count == 3


def test_a_missing_record_is_lost_everywhere_downstream() -> None:
    v = check(_truth(), _seen([_scan(1), _scan(3)], ["s1", "s3"]))
    assert not v.ok
    assert v.places["gateway scans"].lost == 1
    # s2's only record is gone: no event, no Ed-Fi record, no message, each counted
    assert v.places["attendance events"].lost == 1
    assert v.places["Ed-Fi peer"].lost == 1
    assert v.places["parent messages"].lost == 1
    assert any("(1, 1, 2)" in line for line in v.violations)


def test_a_doubled_record_event_upstream_record_and_message_are_each_reported() -> None:
    students = ["s1", "s2", "s3"]
    seen = _seen([_scan(1), _scan(2), _scan(2), _scan(3)], students)
    seen.events.append(("s2", "check_in"))
    seen.edfi_creates[(IN_ATTENDANCE, "s3", DATE)] += 1  # deleted and created again
    seen.messages.append(PeerMessage("m-s1-again", "84900000001", "s1", "check_in"))
    v = check(_truth(), seen)
    assert v.places["gateway scans"].doubled == 1
    assert v.places["attendance events"].doubled == 1
    assert v.places["Ed-Fi peer"].doubled == 1
    assert v.places["parent messages"].doubled == 1
    assert not v.ok


def test_a_redelivery_under_the_same_message_id_is_not_a_double() -> None:
    seen = _seen([_scan(1), _scan(2), _scan(3)], ["s1", "s2", "s3"], redelivered=2,
                 edfi_upserts=5)
    assert check(_truth(), seen).ok


def test_a_message_to_a_guardian_without_consent_is_a_violation() -> None:
    seen = _seen([_scan(1), _scan(2), _scan(3)], ["s1", "s2", "s3"])
    seen.messages.append(PeerMessage("m-no", "84911111111", "s1", "check_in"))
    v = check(_truth(), seen)
    assert v.places["parent messages"].unexpected == 1
    assert any(line.startswith("no_consent") for line in v.violations)


def test_records_lost_in_ram_at_a_power_cut_are_counted_apart() -> None:
    truth = _truth(lost_in_ram={(1, 1, 3)}, lost_per_cut=[1])
    v = check(truth, _seen([_scan(1), _scan(2)], ["s1", "s2"]))
    assert v.ok, v.violations
    assert v.lost_to_power_cuts == 1 and v.places["gateway scans"].lost == 0
    # stored anyway (sent from RAM before the cut): not lost, and s3 then counts as arrived
    v = check(truth, _seen([_scan(1), _scan(2), _scan(3)], ["s1", "s2", "s3"]))
    assert v.ok and v.lost_to_power_cuts == 0 and v.arrived == 3


def test_a_power_cut_losing_more_than_the_ram_ring_is_a_violation() -> None:
    truth = _truth(lost_in_ram={(1, 1, 3)}, lost_per_cut=[40], ring_slots=32)
    v = check(truth, _seen([_scan(1), _scan(2)], ["s1", "s2"]))
    assert not v.ok
    assert any(line.startswith("power_cut") for line in v.violations)


@pytest.mark.parametrize(("scan", "clock_fault", "why"), [
    (_scan(2, error_ms=3_000), True, "in the future"),  # a reader time 3 s ahead used
    (_scan(2, error_ms=-900), False, "not skewed"),  # an unskewed reader clock off by 0.9 s
    (_scan(2, source="reader", synced=False), False, "unsynced"),
    (_scan(2, error_ms=1_500, source="corrected"), False, "corrected time beyond"),
    (_scan(2, error_ms=-400, source="gateway"), False, "before the tap"),
    (_scan(2, error_ms=600, source="gateway", received_after_ms=100), False, "after the record"),
])
def test_a_time_outside_its_provenance_bound_is_reported(scan: ScanRow, clock_fault: bool,
                                                         why: str) -> None:
    truth = _truth()
    truth.records[(1, 1, 2)] = RecordTruth(T0 + 2000, "s2", clock_fault)
    v = check(truth, _seen([_scan(1), scan, _scan(3)], ["s1", "s2", "s3"]))
    assert not v.ok
    assert any(line.startswith("time") and why in line for line in v.violations), v.violations


def test_times_within_their_bounds_pass() -> None:
    truth = _truth(boot_skew_ms={(1, 1): 30_000.0})
    truth.records[(1, 1, 1)] = RecordTruth(T0 + 1000, "s1", clock_fault=True)
    scans = [_scan(1, error_ms=-30_000),  # a clock stepped back: the gateway cannot tell
             _scan(2, error_ms=20_000, source="corrected", received_after_ms=30_000),
             _scan(3, error_ms=400, source="gateway", received_after_ms=500)]
    v = check(truth, _seen(scans, ["s1", "s2", "s3"]))
    assert v.ok, v.violations
    assert v.time["reader, skewed clock"].worst_ms == 30_000


def test_a_boot_never_synced_must_be_flagged_as_gateway_time() -> None:
    truth = _truth(never_synced={(1, 1)})
    scans = [_scan(1, source="gateway"), _scan(2, source="corrected"),
             _scan(3, source="gateway")]
    v = check(truth, _seen(scans, ["s1", "s2", "s3"]))
    assert [line for line in v.violations if "never had a synced clock" in line]


# --- SoakFS: "durable" is what the queue recovers --------------------------------------------

def _record(boot: int, seq: int) -> bytes:
    from protocol import codec
    from protocol.hmac256 import HmacSha256
    buf = bytearray(64)
    n = codec.record_into(buf, HmacSha256(bytes(32)), 9, boot, seq, codec.FLAG_CLOCK_SYNCED, 2,
                          memoryview(bytes([4, 1, 2, seq & 0xFF])), 1_772_400_000, 0, seq * 10)
    return bytes(buf[:n])


@pytest.mark.parametrize("seed", range(12))
def test_soakfs_durable_records_are_those_the_queue_recovers(tmp_path: Path, seed: int) -> None:
    from firmware.fs import FS
    from firmware.queue import RecordQueue
    from protocol.codec import BATCH_HEADER_LEN, BatchWriter

    rng = random.Random(seed)
    fs = SoakFS(False)
    q = RecordQueue(fs, str(tmp_path / "q"), capacity=64, seg_slots=8).open()
    seq = 0
    for _ in range(rng.randrange(1, 4)):  # a few flushes that land
        for _ in range(rng.randrange(1, 6)):
            seq += 1
            q.append(_record(1, seq))
        q.flush()
    for _ in range(rng.randrange(1, 6)):
        seq += 1
        q.append(_record(1, seq))
    fs.arm(rng)
    with pytest.raises(PowerCut):
        q.flush()
    again = RecordQueue(FS(False), str(tmp_path / "q"), capacity=64, seg_slots=8).open()
    recovered: list[tuple[int, int]] = []
    writer = BatchWriter()
    while True:
        writer.reset()
        boot, n = again.fill(writer)
        if n == 0:
            break
        pos, seqs = BATCH_HEADER_LEN, []
        for _ in range(n):  # [length][record]: the seq is at offset 10 of the record
            length = writer.buf[pos]
            seqs.append(int.from_bytes(writer.buf[pos + 11:pos + 15], "big"))
            pos += 1 + length
        recovered += [(boot, s) for s in seqs]
        again.ack(boot, min(seqs), max(seqs))
    assert set(recovered) == fs.durable
    assert fs.torn is not None


# --- the soak itself (slow) ------------------------------------------------------------------

def _soak(tmp_path: Path, *args: str, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "sim.soak", "--summary", str(summary), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert summary.exists(), f"no summary (exit {proc.returncode}):\n{out[-4000:]}"
    return proc.returncode, json.loads(summary.read_text(encoding="utf-8")), out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_soak_with_every_fault_kind_loses_and_doubles_nothing(tmp_path: Path) -> None:
    status, s, out = _soak(tmp_path, "--minutes", "1.25", "--readers", "4", "--seed", "7")
    assert status == 0, out[-6000:]
    assert s["verdict"] == "PASS" and s["violation_count"] == 0
    assert all(n >= 1 for n in s["faults"]["by_kind"].values()), s["faults"]["by_kind"]
    for place in s["places"].values():
        assert (place["lost"], place["doubled"], place["unexpected"]) == (0, 0, 0)
    assert s["records_made"] > 300 and s["students_arrived"] > 300
    assert s["gateway_starts"] >= 2 and s["gateway_exit"] == 0
    assert s["time"]["reader"]["count"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug", ["drop", "ack-before-commit"])
def test_the_soak_fails_against_a_gateway_with_a_deliberate_bug(tmp_path: Path,
                                                                bug: str) -> None:
    command = f"{sys.executable} -m tests.e2e.test_soak --bug {bug} --config {{config}}"
    status, s, out = _soak(tmp_path, "--minutes", "0.75", "--readers", "3", "--seed", "3",
                           "--drain", "30", "--gateway-command", command)
    assert status == 1, out[-6000:]
    shutil.rmtree(s["workdir"], ignore_errors=True)  # a failed soak keeps it, for diagnosis
    assert s["verdict"] == "FAIL"
    assert s["places"]["gateway scans"]["lost"] > 0
    assert "lost" in out  # the printed summary says where


# --- the gateway with a deliberate bug (run as a module by the test above) -------------------

def _inject(bug: str) -> None:
    import sqlite3

    from gateway.ingest import Ingest

    if bug == "drop":
        # Every 7th record is deleted again after its INSERT and reported as an exact resend:
        # the batch is acknowledged, the record is gone.
        insert, same = Ingest._insert_scans, Ingest._same_bytes

        def insert_dropping(self: Ingest, pending: Any) -> dict[tuple[int, int, int], int]:
            inserted = insert(self, pending)
            for key in [k for k in inserted if k[2] % 7 == 3]:
                self._conn.execute("DELETE FROM scans WHERE scan_id = ?", (inserted.pop(key),))
            return inserted

        def same_dropping(self: Ingest, record: Any) -> bool:
            return bool(record.seq % 7 == 3) or same(self, record)

        Ingest._insert_scans = insert_dropping  # type: ignore[method-assign]
        Ingest._same_bytes = same_dropping  # type: ignore[method-assign]
    elif bug == "ack-before-commit":
        # The acks leave before the COMMIT, and every 4th COMMIT then fails (a full disk, a
        # crash in between): what those acks covered is gone.
        groups = [0]

        def group(self: Ingest, jobs: Any, records: int) -> None:
            conn: sqlite3.Connection = self._conn
            conn.execute("BEGIN IMMEDIATE")
            effects = self._handle_all(jobs)
            self._deliver(jobs, effects, committed=True)
            groups[0] += 1
            if groups[0] % 4 == 0:
                self._rollback()
                return
            conn.execute("COMMIT")

        Ingest._group = group  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown bug {bug!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.test_soak")
    parser.add_argument("--bug", required=True, choices=["drop", "ack-before-commit"])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    _inject(args.bug)
    from gateway import cli
    return cli.main(["run", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
