"""Flash bytes written per tap by the reader's queue, amortised, on CPython and on MicroPython.

    .venv/bin/python bench/flash_per_tap.py [--taps 10000] [--ack-every 32] [--no-vm]

Every tap makes a real signed record (``codec.record_into``), ``append``s it and ``flush``es it (the
worst case: one flash write per tap); every ``--ack-every`` taps the uploader ``fill``s a batch and
the gateway's ack of its range is applied ("live"). A second run queues every tap first and then
uploads the backlog in batches of the same size ("backlog"). Bytes are counted in the queue's file
layer (``firmware.fs.FS.write``): slots, segment headers, ack log entries and log compaction.
Target (docs/queue.md, DESIGN.md): at most 2x the record size. On the MicroPython VM it also
reports ``gc.mem_alloc()`` growth inside ``append`` (target: 0), sampled on every 20th tap.

What the file layer cannot see: LittleFS's own metadata commits and its copy of a file's last
partly written block when an append follows a close (see docs/queue.md, "Flash wear").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import Figure, add_json_argument, write  # noqa: E402

# Runs unchanged on CPython and MicroPython.
CORE = """
import gc
from firmware.fs import FS
from firmware.queue import RecordQueue
from protocol import codec
from protocol.hmac256 import HmacSha256


class CountingFS(FS):
    def __init__(self):
        super().__init__(False)
        self.paths = {}
        self.segments = 0
        self.log = 0

    def open(self, path, mode):
        f = super().open(path, mode)
        self.paths[id(f)] = path
        return f

    def close(self, f):
        self.paths.pop(id(f), None)
        super().close(f)

    def write(self, f, data):
        super().write(f, data)
        if self.paths.get(id(f), "").endswith(".seg"):
            self.segments += len(data)
        else:
            self.log += len(data)


def bench(root, taps, ack_every, uid, tech, backlog):
    fs = CountingFS()
    q = RecordQueue(fs, root).open()  # the default geometry: 20480 records, 256-slot segments
    signer = HmacSha256(bytes(range(32)))
    buf = bytearray(codec.RECORD_MAX_LEN)
    view = memoryview(buf)
    writer = codec.BatchWriter(max_records=ack_every)
    mem_alloc = getattr(gc, "mem_alloc", None)
    alloc = 0
    samples = 0
    record_bytes = 0
    t0 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.monotonic() * 1000)

    def upload():
        boot, count = q.fill(writer)
        if count:
            batch = writer.finish(signer, 7, boot)
            first = (batch[10] << 24) | (batch[11] << 16) | (batch[12] << 8) | batch[13]
            last = (batch[14] << 24) | (batch[15] << 16) | (batch[16] << 8) | batch[17]
            q.ack(boot, first, last)
        return count

    for seq in range(1, taps + 1):
        n = codec.record_into(buf, signer, 7, 1, seq, 1, tech, uid, 1800000000 + seq, 0,
                              seq * 1000)
        rec = view[:n]
        if mem_alloc is not None and seq % 20 == 0:  # sampled: mem_alloc() is slow on the VM
            before = mem_alloc()
            q.append(rec)
            alloc += mem_alloc() - before
            samples += 1
        else:
            q.append(rec)
        record_bytes += n
        q.flush()
        if not backlog and seq % ack_every == 0:
            upload()
    while upload():
        pass
    t1 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.monotonic() * 1000)
    return {"taps": taps, "record_bytes": record_bytes, "written": fs.written,
            "writes": fs.writes, "segments": fs.segments, "log": fs.log,
            "depth": q.depth, "used": q.used, "dropped": q.dropped,
            "append_alloc": alloc if mem_alloc is not None else None, "samples": samples,
            "ms": t1 - t0}
"""

UIDS = {  # name: (tech, uid) -> record sizes 46, 47, 48, 50 bytes
    "wiegand26": (3, "010203"),
    "mifare-4": (2, "04a1b2c3"),
    "em4100": (1, "ff00000001"),
    "mifare-7": (2, "04112233445566"),
}


def run_cpython(taps: int, ack_every: int, uid: str, backlog: bool) -> dict[str, Any]:
    namespace: dict[str, Any] = {"time": time}
    exec(CORE, namespace)
    tech, hexuid = UIDS[uid]
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = namespace["bench"](
            tmp + "/q", taps, ack_every, bytes.fromhex(hexuid), tech, backlog)
    return result


def run_vm(taps: int, ack_every: int, uid: str, backlog: bool) -> dict[str, Any]:
    from tests.mpvm import MPVM

    tech, hexuid = UIDS[uid]
    code = ("import json, time\nfrom binascii import unhexlify\n" + CORE
            + f"\nprint(json.dumps(bench('/q', {taps}, {ack_every}, unhexlify('{hexuid}'), "
            + f"{tech}, {backlog})))\n")
    with MPVM() as vm:
        out = vm.run(code, timeout=600)
    result: dict[str, Any] = json.loads(out)
    return result


def report(runtime: str, mode: str, uid: str, r: dict[str, Any]) -> None:
    taps = r["taps"]
    per_tap = r["written"] / taps
    record = r["record_bytes"] / taps
    seg = r["segments"] / taps
    log = r["log"] / taps
    print(f"{runtime:<11} {mode:<8} {uid:<10} record {record:5.1f} B  flash/tap {per_tap:6.2f} B "
          f"(segments {seg:5.2f}, ack log {log:4.2f})  ratio {per_tap / record:4.2f}x  "
          f"writes/tap {r['writes'] / taps:4.2f}  "
          + f"left {r['depth']}/{r['used']}  {r['ms']} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--taps", type=int, default=10_000)
    parser.add_argument("--ack-every", type=int, default=32)
    parser.add_argument("--no-vm", action="store_true", help="skip the MicroPython VM runs")
    add_json_argument(parser)
    args = parser.parse_args()
    print(f"{args.taps} taps, acks of {args.ack_every}-record batches, flush after every tap")
    worst = 0.0
    for uid in UIDS:
        for backlog in (False, True):
            mode = "backlog" if backlog else "live"
            r = run_cpython(args.taps, args.ack_every, uid, backlog)
            report("CPython", mode, uid, r)
            worst = max(worst, r["written"] / r["record_bytes"])
    if not args.no_vm:
        for uid, backlog in (("mifare-4", False), ("wiegand26", True)):
            r = run_vm(args.taps, args.ack_every, uid, backlog)
            report("MicroPython", "backlog" if backlog else "live", uid, r)
            worst = max(worst, r["written"] / r["record_bytes"])
            per_append = r["append_alloc"] / r["samples"]
            print(f"{'':12}gc.mem_alloc() growth per append: {per_append:.2f} B"
                  f" (sampled over {r['samples']} appends)")
    print(f"worst ratio {worst:.2f}x the record size (target <= 2.00x)")
    write(args.json, "flash_per_tap", [
        Figure("flash_per_tap", "Reader firmware: flash bytes written per tap, amortised, over "
               "the record size", worst, "x", "<= 2x", worst <= 2.0,
               f"worst of live and backlog runs, {args.taps:,} taps, acks every "
               f"{args.ack_every} records" + ("" if args.no_vm else
                                             ", CPython and the MicroPython VM")),
    ])
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
