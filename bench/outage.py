"""The morning after an outage: N readers with M queued records each reconnect at once.

    .venv/bin/python bench/outage.py [--readers 100] [--records 5000] [--timeout 180] [--quick]

Target (DESIGN.md): 100 readers x 5,000 queued records, all committed and acked within 60 s on a
2-core machine, zero lost, zero doubled. One run, loopback only; it stops by itself after
``--timeout`` seconds of draining.

Setup, not timed: a fresh gateway database with the readers registered (as ``attendance-gateway
readers add`` does), Mosquitto with the generated per-reader accounts and ACL and the deployed
broker settings (hardware/gateway/mosquitto.conf), the gateway as operators run it (``python -m
gateway.cli run --config FILE``, its own process), and the readers: the real firmware under
CPython (``sim.firmware_reader.FirmwareReader``: boot from flash files, tap path, debounce, flash
queue, MQTT client, stop-and-wait uplink). Each reader is booted, and before its event loop runs
any task (so it has no link, as during the outage) M cards are tapped through the real tap path
(``TapRecorder.sighting``, distinct cards so the debouncer folds none) and flushed to its flash
queue. Simulated readers run with ``sync=False`` (no fsync): they share this machine's one disk,
where each real reader writes its own flash.

Timed: every reader's event loop is let go at once; they connect, send a heartbeat and upload
their backlog stop-and-wait (one batch of up to ``batch_max_records`` in flight per reader). The
drain time ends when the last reader's queue is empty -- each ack follows the gateway's durable
commit, so the database then holds every record, which is checked right away. Then the ground
truth (``FirmwareReader.made()``) is compared with the gateway's ``scans`` table: lost and
doubled must both be 0 (exit status 1 otherwise, 2 when the readers did not drain in time; the
drain time itself never fails the run).

The gateway's ``[ingest] group_commit_ms`` / ``group_commit_max`` are its own defaults unless
``--group-commit-ms`` / ``--group-commit-max`` say otherwise; Mosquitto's
``max_inflight_messages`` is the deployed value unless ``--inflight``. All are printed.

Where the time goes: the report gives the CPU of the reader process(es), of the gateway (its
event loop thread and its busiest other thread, the ingest writer), of Mosquitto and of anything
else on the machine, and the gateway's group-commit metrics. ``--reader-procs`` spreads the
readers over that many processes (the gateway needs a core too). ``--profile FILE`` runs the
reader processes under cProfile during the timed phase; ``--profile-gateway FILE`` runs the same
gateway command with every thread under cProfile (both slow the run down; use them on a smaller
one, e.g. ``--records 1000``) and prints the hottest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import Figure, add_json_argument, write  # noqa: E402
from firmware.config import DEFAULTS as READER_DEFAULTS  # noqa: E402
from firmware.ticks import ticks_add, ticks_ms  # noqa: E402
from gateway import db  # noqa: E402
from gateway.broker_config import write_broker_files  # noqa: E402
from gateway.config import IngestConfig  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from protocol import card  # noqa: E402
from sim.broker import MosquittoBroker, free_port  # noqa: E402
from sim.firmware_reader import FirmwareReader, provision  # noqa: E402

SCHOOL = "bench-outage"
GATEWAY_USER = "gateway"
TARGET_S = 60.0
CARDS = 2000  # distinct cards the prefill cycles through (a school's students)
POLL_S = 0.02  # how often a reader process looks for drained queues
# The deployed broker settings that matter here (hardware/gateway/mosquitto.conf).
_DEPLOYED_BROKER = ROOT / "hardware" / "gateway" / "mosquitto.conf"
_BROKER_KEYS = ("max_packet_size", "max_queued_messages", "max_keepalive")


def _deployed(key: str) -> str:
    """A setting of the Mosquitto configuration the project ships for the Pi."""
    for line in _DEPLOYED_BROKER.read_text(encoding="utf-8").splitlines():
        if line.split(" ", 1)[0] == key:
            return line.split(" ", 1)[1].strip()
    raise SystemExit(f"{_DEPLOYED_BROKER}: no {key}")


BROKER_LINES = [f"{key} {_deployed(key)}" for key in _BROKER_KEYS]
Identity = tuple[int, int, int]  # reader, boot, seq


# -- /proc ---------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (or one of its threads)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # utime, stime


def _machine_cpu() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK, iowait / _TICK


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _minus(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


def _threads(pid: int) -> dict[int, str]:
    """Thread id -> name (``comm``) of a process."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out[int(task.name)] = (task / "comm").read_text().strip()
    return out


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    peak = re.search(r"VmHWM:\s+(\d+)", status)
    return (int(rss[1]) / 1024 if rss else 0.0), (int(peak[1]) / 1024 if peak else 0.0)


# -- the gateway ---------------------------------------------------------------------------------


# ``--profile-gateway``: the same command (``gateway.cli.main``) with every thread under cProfile;
# each thread's profile is written when it ends (the graceful stop ends them all).
_PROFILED_GATEWAY = """
import cProfile, sys, threading
config, out = sys.argv[1], sys.argv[2]
_run = threading.Thread.run
def run(self):
    profile = cProfile.Profile()
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()
        profile.dump_stats(out + "." + self.name)
threading.Thread.run = run
from gateway.cli import main
profile = cProfile.Profile()
profile.enable()
try:
    code = main(["run", "--config", config])
finally:
    profile.disable()
    profile.dump_stats(out + ".main")
sys.exit(code)
"""


class Gateway:
    """The gateway command in its own process, with a TOML config written here."""

    def __init__(self, workdir: Path, port: int, password: str, group_commit_ms: int,
                 group_commit_max: int, profile: Path | None = None) -> None:
        self.profile = profile
        self.metrics_port = free_port()
        (workdir / "gateway.password").write_text(password + "\n", encoding="utf-8")
        (workdir / "gateway.password").chmod(0o600)
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f'[gateway]\nschool = "{SCHOOL}"\ndatabase = "gateway.db"\n'
            f'master_key_file = "master.key"\n\n'
            f'[mqtt]\nport = {port}\nusername = "{GATEWAY_USER}"\n'
            f'password_file = "gateway.password"\n\n'
            f'[ingest]\ngroup_commit_ms = {group_commit_ms}\n'
            f'group_commit_max = {group_commit_max}\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n', encoding="utf-8")
        self.database = workdir / "gateway.db"
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        command = [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)]
        if self.profile is not None:
            command = [sys.executable, "-c", _PROFILED_GATEWAY, str(self.config),
                       str(self.profile)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.metric("attendance_mqtt_connected") == 1.0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the gateway did not connect:\n{self.log_tail()}")

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def log_tail(self) -> str:
        return self.log_text()[-3000:]

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str, text: str | None = None) -> float:
        """The sum of a metric's samples (all labels)."""
        text = self.scrape() if text is None else text
        total = 0.0
        for match in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
            total += float(match[1])
        return total

    def stop(self) -> int | None:
        """SIGTERM (graceful: commits and acks what it took), SIGKILL after 30 s."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode


def stored_counts(database: Path) -> Counter[Identity]:
    """Rows per identity in the gateway's ``scans`` table."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return Counter({(r, b, s): n for r, b, s, n in conn.execute(
            "SELECT reader_id, boot, seq, COUNT(*) FROM scans GROUP BY reader_id, boot, seq")})
    finally:
        conn.close()


# -- reader processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSpec:
    index: int
    readers: list[tuple[int, bytes, str]]  # reader id, key, MQTT password
    port: int
    records: int
    workdir: Path
    timeout_s: float
    batch_max_records: int
    profile: Path | None


@dataclass
class ReaderResult:
    reader_id: int
    made: list[tuple[int, int]]
    connected_at: float | None  # time.monotonic() of the first connection
    drained_at: float | None  # time.monotonic() when its queue was first seen empty
    depth: int  # records still queued at the end
    batches: int
    resends: int  # batches sent again after no ack within ack_timeout_ms
    retransmits: int  # QoS 1 publishes re-sent with DUP after a reconnect
    reconnects: int
    connect_failures: int
    stale_acks: int
    crashed: str | None


@dataclass
class ShardResult:
    index: int
    prefill_s: float = 0.0
    prefill_cpu_s: float = 0.0
    dropped: int = 0  # records the queues dropped while being filled (must be 0)
    cpu_s: float = 0.0  # CPU of the timed phase
    readers: list[ReaderResult] = field(default_factory=list)
    error: str | None = None


def _prefill(readers: list[FirmwareReader], ids: list[int], records: int,
             conn: Connection) -> int:
    """Tap ``records`` cards on every reader through its tap path; flush as the app would.

    The queue's RAM ring holds 32 records (the app's flush task empties it every 200 ms), so
    the prefill flushes after every 32 taps. Returns the records the queues dropped.
    """
    uid = bytearray(10)
    uid[0] = 0x04  # ISO 14443A, 4-byte UIDs
    tech = card.ISO14443A
    dropped = 0
    for reader, rid in zip(readers, ids, strict=True):
        if conn.poll():
            raise RuntimeError("stopped during the prefill")
        app = reader.app
        assert app is not None
        taps, queue = app.taps, app.queue
        now = ticks_ms()
        for i in range(records):
            c = (rid * 7919 + i) % CARDS + 1  # consecutive taps are different cards
            uid[1] = c >> 16
            uid[2] = (c >> 8) & 0xFF
            uid[3] = c & 0xFF
            now = ticks_add(now, 100)  # a tap every 100 ms, as the debouncer sees it
            if not taps.sighting(tech, uid, 4, now):
                raise RuntimeError(f"reader {rid}: the debouncer folded tap {i}")
            if i % 32 == 31:
                queue.flush()
        queue.flush()
        dropped += queue.dropped
        if queue.depth != records:
            raise RuntimeError(f"reader {rid}: {queue.depth} records queued, not {records}")
    return dropped


def _drained(reader: FirmwareReader) -> bool:
    app = reader.app
    if app is None or app.link is None:
        return False
    uplink = getattr(app.link, "uplink", None)
    if uplink is not None and uplink.outstanding:
        return False  # a batch is waiting for its ack (cheap test first)
    return app.queue.depth == 0


async def _shard_main(spec: ShardSpec, conn: Connection) -> ShardResult:
    result = ShardResult(spec.index)
    readers: list[FirmwareReader] = []
    ids = [rid for rid, _, _ in spec.readers]
    for rid, key, password in spec.readers:
        root = spec.workdir / "readers" / f"{rid:03d}"
        provision(root, rid, key, SCHOOL, host="127.0.0.1", port=spec.port, password=password,
                  batch_max_records=spec.batch_max_records)
        readers.append(FirmwareReader(root, sync=False))

    # Prefill. start() boots the firmware and creates its tasks, but none of them runs until
    # this coroutine first awaits: the readers are offline while their cards are tapped.
    began, cpu0 = time.perf_counter(), time.process_time()
    for reader in readers:
        reader.start()
    result.dropped = _prefill(readers, ids, spec.records, conn)
    result.prefill_s = time.perf_counter() - began
    result.prefill_cpu_s = time.process_time() - cpu0
    conn.send(("ready", result.prefill_s, result.prefill_cpu_s, result.dropped))
    if not conn.poll(600):  # blocking on purpose: nothing may run before "go"
        raise RuntimeError("no go from the parent")
    if conn.recv() != "go":
        raise RuntimeError("stopped before the start")

    # Timed: let every reader's tasks run.
    t0 = time.monotonic()
    profiler = cProfile.Profile() if spec.profile is not None else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    connected: dict[int, float] = {}
    drained: dict[int, float] = {}
    pending = dict(zip(ids, readers, strict=True))
    deadline = t0 + spec.timeout_s
    try:
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            for rid, reader in list(pending.items()):
                if rid not in connected and reader.online:
                    connected[rid] = now
                if reader.crashed is not None or _drained(reader):
                    drained[rid] = now
                    del pending[rid]
            if conn.poll():
                break  # the parent says stop (Ctrl-C, or another process failed)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(spec.profile))
        result.cpu_s = time.process_time() - cpu0

    for rid, reader in zip(ids, readers, strict=True):
        app = reader.app
        assert app is not None
        link: Any = app.link
        client = link.client
        result.readers.append(ReaderResult(
            rid, [], connected.get(rid), drained.get(rid) if reader.crashed is None else None,
            app.queue.depth, link.uplink.batches, link.resends, client.retransmits,
            client.reconnects, client.connect_failures, link.uplink.stale_acks,
            repr(reader.crashed) if reader.crashed is not None else None))
    await asyncio.gather(*(reader.stop() for reader in readers))
    for reader, res in zip(readers, result.readers, strict=True):
        res.made = reader.made()
    return result


def _shard(spec: ShardSpec, conn: Connection) -> None:
    """A reader process: its readers in one event loop; the result goes back on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and says stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (forked)
    try:
        result = asyncio.run(_shard_main(spec, conn))
    except BaseException as exc:  # reported, then the process ends
        result = ShardResult(spec.index, error="".join(traceback.format_exception(exc))[-3000:])
    with contextlib.suppress(OSError):
        conn.send(("result", result))


# -- the run -------------------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` below stops what it started."""
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Shards:
    """The reader processes; ``close`` stops them whatever state they are in."""

    def __init__(self, specs: list[ShardSpec]) -> None:
        ctx = mp.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_shard, args=(spec, child), name=f"readers-{spec.index}",
                               daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def receive(self, i: int, deadline: float) -> tuple[Any, ...]:
        conn = self.conns[i]
        while time.monotonic() < deadline:
            if conn.poll(0.1):
                message: tuple[Any, ...] = conn.recv()
                if message[0] == "result" and message[1].error:
                    raise RuntimeError(f"reader process {i} failed:\n{message[1].error}")
                return message
            if not self.procs[i].is_alive():
                raise RuntimeError(f"reader process {i} died (exit {self.procs[i].exitcode})")
        raise TimeoutError(f"reader process {i} did not answer in time")

    def send_all(self, message: str) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(message)

    def close(self) -> None:
        self.send_all("stop")
        deadline = time.monotonic() + 15
        for conn, proc in zip(self.conns, self.procs, strict=True):
            while proc.is_alive() and time.monotonic() < deadline:
                try:
                    if conn.poll(0.05):
                        conn.recv()  # a result nobody waits for any more: let it be sent
                except (OSError, EOFError):  # the process closed its end: it is ending
                    proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


@dataclass
class Sampler:
    """Gateway memory and progress while the readers drain."""

    gateway: Gateway
    rss_peak_mb: float = 0.0
    progress: list[tuple[float, float]] = field(default_factory=list)  # (elapsed, stored)

    def sample(self) -> None:
        _, peak = _rss_mb(self.gateway.pid)
        self.rss_peak_mb = max(self.rss_peak_mb, peak)


def _row(name: str, value: str, target: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    return f"  {name:<32} {value:>24}   {target:<27} {verdict}"


def run(args: argparse.Namespace, workdir: Path) -> int:
    n, m = args.readers, args.records
    print(f"outage: {n} readers x {m:,} queued records = {n * m:,} records; "
          f"{os.cpu_count()} CPUs; workdir {workdir}", flush=True)
    setup0 = time.perf_counter()
    conn = db.connect(workdir / "gateway.db")
    registry = Registry.open(conn, workdir / "master.key")
    creds = [registry.register(rid, f"gate {rid}", "main") for rid in range(1, n + 1)]
    gateway_password = secrets.token_urlsafe(24)
    files = write_broker_files(registry, school=SCHOOL, gateway_username=GATEWAY_USER,
                               gateway_password=gateway_password,
                               password_file=workdir / "mosquitto.passwd",
                               acl_file=workdir / "mosquitto.acl")
    conn.close()
    broker_lines = [*BROKER_LINES, f"max_inflight_messages {args.inflight}"]
    with MosquittoBroker(workdir / "broker", allow_anonymous=False,
                         password_file=files.password_file, acl_file=files.acl_file,
                         extra_lines=broker_lines) as broker:
        assert broker.process is not None
        broker_pid = broker.process.pid
        gateway = Gateway(workdir, broker.port, gateway_password, args.group_commit_ms,
                          args.group_commit_max,
                          Path(args.profile_gateway) if args.profile_gateway else None)
        shards: Shards | None = None
        try:
            gateway.start()
            print(f"Mosquitto 127.0.0.1:{broker.port}: per-reader accounts and ACL, "
                  f"{', '.join(broker_lines)}", flush=True)
            print(f"gateway: python -m gateway.cli run --config {gateway.config.name} "
                  f"(pid {gateway.pid}); [ingest] group_commit_ms = {args.group_commit_ms}, "
                  f"group_commit_max = {args.group_commit_max}", flush=True)
            procs = max(1, min(args.reader_procs, n))
            cpu_note = " (readers profiled: slower)" if args.profile else ""
            print(f"readers: real firmware under CPython in {procs} process(es){cpu_note}, "
                  f"batch_max_records {args.batch_max_records}, ack_timeout_ms 10000; "
                  f"sync=False: simulated readers share one disk, a real reader writes its own "
                  f"flash, so no fsync", flush=True)
            specs = []
            for i in range(procs):
                mine = [(c.reader_id, c.key, c.mqtt_password) for c in creds[i::procs]]
                profile = None
                if args.profile:
                    profile = Path(f"{args.profile}.{i}") if procs > 1 else Path(args.profile)
                specs.append(ShardSpec(i, mine, broker.port, m, workdir, args.timeout,
                                       args.batch_max_records, profile))
            shards = Shards(specs)
            prefill_deadline = time.monotonic() + max(600.0, n * m / 500)
            ready = [shards.receive(i, prefill_deadline) for i in range(procs)]
            prefill_s = max(r[1] for r in ready)
            prefill_cpu = sum(r[2] for r in ready)
            dropped = sum(r[3] for r in ready)
            print(f"setup {time.perf_counter() - setup0:.1f} s, of which prefill {prefill_s:.1f} s "
                  f"({n * m / prefill_s:,.0f} taps/s through the tap path and flash queue, "
                  f"{prefill_cpu:.1f} CPU s; {dropped} dropped)", flush=True)
            if dropped:
                print("the prefill dropped records: the queues overflowed", flush=True)
                return 1

            # -- timed ---------------------------------------------------------------------------
            before = gateway.scrape()
            gw_threads = _threads(gateway.pid)
            gw_cpu0 = {tid: _cpu_s(gateway.pid, tid) for tid in gw_threads}
            broker_cpu0 = _cpu_s(broker_pid)
            machine0, load0 = _machine_cpu(), _loadavg()
            sampler = Sampler(gateway)
            t0 = time.monotonic()
            shards.send_all("go")
            print(f"go: {n} readers reconnect at once (timeout {args.timeout:.0f} s)", flush=True)
            deadline = t0 + args.timeout + 30
            results: list[ShardResult | None] = [None] * procs
            next_report = t0 + 10
            while None in results and time.monotonic() < deadline:
                for i in range(procs):
                    if results[i] is None and shards.conns[i].poll(0):
                        message = shards.receive(i, deadline)
                        results[i] = message[1]
                    elif results[i] is None and not shards.procs[i].is_alive():
                        raise RuntimeError(f"reader process {i} died")
                sampler.sample()
                now = time.monotonic()
                if now >= next_report:
                    with contextlib.suppress(OSError):
                        stored = gateway.metric("attendance_records_stored_total")
                        last_t, last_n = sampler.progress[-1] if sampler.progress else (0, 0)
                        sampler.progress.append((now - t0, stored))
                        print(f"  +{now - t0:5.1f} s  {stored:>10,.0f} records stored, "
                              f"{(stored - last_n) / (now - t0 - last_t):>6,.0f}/s in the last "
                              f"{now - t0 - last_t:.0f} s", flush=True)
                    next_report += 10
                time.sleep(0.1)
            if None in results:
                raise TimeoutError("the reader processes did not report in time")
            done = [r for r in results if r is not None]
            readers = [rr for r in done for rr in r.readers]
            all_drained = all(r.drained_at is not None for r in readers)
            end = max((r.drained_at or time.monotonic()) for r in readers)
            # Every ack followed its commit: the gateway must hold every record right now.
            after = gateway.scrape()
            checked_at = time.monotonic() - t0
            in_db = int(gateway.metric("attendance_records_stored_total", after)
                        - gateway.metric("attendance_records_stored_total", before))
            gw_cpu = {tid: _minus(_cpu_s(gateway.pid, tid), gw_cpu0.get(tid, (0.0, 0.0)))
                      for tid in _threads(gateway.pid)}
            broker_cpu = sum(_minus(_cpu_s(broker_pid), broker_cpu0))
            machine_busy, machine_iowait = _minus(_machine_cpu(), machine0)
            load1 = _loadavg()
            db_mb = sum(p.stat().st_size for p in workdir.glob("gateway.db*")) / 2**20
            sampler.sample()
            rss_now, _ = _rss_mb(gateway.pid)
        finally:
            if shards is not None:
                shards.close()
            gateway_rc = gateway.stop()

    # -- verification against the ground truth -------------------------------------------------
    made = {(r.reader_id, b, s) for r in readers for b, s in r.made}
    stored_rows = stored_counts(gateway.database)
    lost = len(made - stored_rows.keys())
    doubled = sum(c - 1 for c in stored_rows.values() if c > 1)
    unexpected = len(stored_rows.keys() - made)
    still_queued = sum(r.depth for r in readers)
    crashed = [r for r in readers if r.crashed]
    if not all_drained:
        lost -= min(lost, still_queued)  # those are still on the readers, not lost

    drain_s = end - t0
    total = len(made)
    per_reader = [r.drained_at - t0 for r in readers if r.drained_at is not None]
    connects = [r.connected_at - t0 for r in readers if r.connected_at is not None]
    batches = sum(r.batches for r in readers)
    resends = sum(r.resends for r in readers)
    retransmits = sum(r.retransmits for r in readers)
    reconnects = sum(r.reconnects for r in readers)
    reader_cpu = sum(r.cpu_s for r in done)

    def delta(name: str) -> float:
        return gateway.metric(name, after) - gateway.metric(name, before)

    groups = delta("attendance_group_commit_records_count")
    group_records = delta("attendance_group_commit_records_sum")
    group_messages = delta("attendance_group_commit_messages_sum")
    commit_s = delta("attendance_commit_seconds_sum")
    latency_n = delta("attendance_batch_latency_seconds_count")
    latency_s = delta("attendance_batch_latency_seconds_sum")
    duplicates = delta("attendance_records_duplicate_total")
    flood_dropped = delta("attendance_mqtt_dropped_total")
    main_tid = gateway.pid
    gw_user, gw_sys = (sum(c[0] for c in gw_cpu.values()), sum(c[1] for c in gw_cpu.values()))
    loop_cpu = gw_cpu.get(main_tid, (0.0, 0.0))
    others = sorted((c for t, c in gw_cpu.items() if t != main_tid), key=sum, reverse=True)
    busiest = others[0] if others else (0.0, 0.0)

    def pct(cpu: float) -> str:
        return f"{cpu:.1f} s = {cpu / drain_s:.0%} of a core"

    outcome = f"drained in {drain_s:.1f} s" if all_drained else \
        f"NOT drained within {args.timeout:.0f} s"
    print(f"\nresults: {total:,} records made by {n} readers (ground truth: "
          f"FirmwareReader.made()), {outcome}")
    print(f"  {'':<32} {'measured':>24}   {'target':<27}")
    print(_row("drain time, all acked", f"{drain_s:.1f} s" if all_drained else
               f"> {args.timeout:.0f} s", f"<= {TARGET_S:.0f} s",
               all_drained and drain_s <= TARGET_S))
    if all_drained:
        print(_row("lost", f"{lost}", "0", lost == 0))
    else:  # by count: what is neither stored nor still queued on a reader
        print(_row("lost (not stored, not queued)", f"{lost}", "0", lost == 0))
    print(_row("doubled (rows per identity)", f"{doubled}", "0", doubled == 0))
    print(_row("stored, never made", f"{unexpected}", "0", unexpected == 0))
    print(_row("gateway RSS peak", f"{sampler.rss_peak_mb:.1f} MB", "<= 80 MB",
               sampler.rss_peak_mb <= 80))
    print(_row("records/s", f"{(total if all_drained else in_db) / drain_s:,.0f}",
               f">= {n * m / TARGET_S:,.0f} (implied)", None))
    if per_reader:
        print(_row("per-reader drain p50/p99/max",
                   f"{_percentile(per_reader, 50):.1f}/{_percentile(per_reader, 99):.1f}/"
                   f"{max(per_reader):.1f} s", "", None))
    if connects:
        print(_row("first connect p50/max",
                   f"{_percentile(connects, 50):.2f}/{max(connects):.2f} s", "", None))
    print(_row("batches / resends", f"{batches:,} / {resends:,}",
               f"{n * -(-m // args.batch_max_records):,} / 0 at best", None))
    print(_row("DUP retransmits / reconnects", f"{retransmits} / {reconnects}", "", None))
    print(_row("gateway duplicates / flood drops", f"{duplicates:,.0f} / {flood_dropped:,.0f}",
               "", None))
    if groups:
        print(_row("group commits", f"{groups:,.0f}",
                   f"{group_records / groups:.0f} records, {group_messages / groups:.1f} msgs",
                   None))
        print(_row("  time in COMMIT", f"{commit_s:.1f} s",
                   f"{commit_s / groups * 1000:.1f} ms each", None))
    if latency_n:
        print(_row("batch arrival -> ack ready", f"{latency_s / latency_n * 1000:.0f} ms mean",
                   "", None))
    print(_row("CPU readers", pct(reader_cpu), f"{procs} process(es)", None))
    print(_row("CPU gateway", pct(gw_user + gw_sys), f"user {gw_user:.1f} s, sys {gw_sys:.1f} s",
               None))
    print(_row("  event loop thread", pct(sum(loop_cpu)),
               f"user {loop_cpu[0]:.1f} s, sys {loop_cpu[1]:.1f} s", None))
    print(_row("  busiest other thread", pct(sum(busiest)),
               f"user {busiest[0]:.1f} s, sys {busiest[1]:.1f} s", None))
    print(_row("CPU Mosquitto", pct(broker_cpu), "", None))
    rest = machine_busy - reader_cpu - gw_user - gw_sys - broker_cpu
    print(_row("CPU anything else", pct(max(0.0, rest)),
               f"load avg {load0} -> {load1}", None))
    print(_row("machine busy / iowait", f"{machine_busy / drain_s:.0%} / "
               f"{machine_iowait / drain_s:.0%}", f"of {os.cpu_count()} cores = "
               f"{100 * (os.cpu_count() or 1)} %", None))
    print(f"  gateway RSS at the end {rss_now:.1f} MB; database {db_mb:.0f} MB (with WAL); "
          f"checked at +{checked_at:.1f} s: {in_db:,} stored; gateway exit status {gateway_rc}")
    levels = Counter(re.findall(r'"level": "(\w+)"', gateway.log_text()))
    events = Counter(re.findall(r'"level": "(?:warning|error|critical)".*?"event": "([^"]*)"',
                                gateway.log_text()))
    print(f"  gateway log: {levels['warning']} warnings, {levels['error']} errors"
          + (f" ({', '.join(f'{e}: {k}' for e, k in events.most_common(3))})" if events else ""))
    if crashed:
        print(f"  {len(crashed)} reader(s) crashed, first: {crashed[0].crashed}")
    if not all_drained:
        print(f"  NOT DRAINED within {args.timeout:.0f} s: {still_queued:,} records still queued "
              f"on the readers")
    if args.profile:
        _print_profile("reader processes",
                       [s.profile for s in specs if s.profile is not None])
    if args.profile_gateway:
        base = Path(args.profile_gateway)
        for path in sorted(base.parent.glob(base.name + ".*")):
            busy = _busy_s(path)
            if busy >= 0.5:  # threads that mostly waited are left out
                _print_profile(f"gateway thread {path.name[len(base.name) + 1:]} "
                               f"({busy:.1f} s not waiting)", [path], 20)
    records_s = (total if all_drained else in_db) / drain_s
    write(args.json, "outage", [
        Figure("outage_drain", f"Morning after an outage: {n} readers x {m:,} queued records, "
               "all committed and acked", drain_s if all_drained else float("inf"), "s",
               f"<= {TARGET_S:.0f} s", all_drained and drain_s <= TARGET_S,
               f"{records_s:,.0f} records/s; gateway RSS peak {sampler.rss_peak_mb:.1f} MB"),
        Figure("outage_lost", "Morning after an outage: records lost", lost, "records", "0",
               lost == 0, "ground truth: every record the firmware made"),
        Figure("outage_doubled", "Morning after an outage: records doubled", doubled, "records",
               "0", doubled == 0, f"stored but never made: {unexpected}"),
    ])
    if lost or doubled or unexpected or crashed:
        return 1
    return 0 if all_drained else 2


_WAITS = ("{method 'get' of '_queue.SimpleQueue' objects}",
          "{method 'acquire' of '_thread.lock' objects}",
          "{method 'poll' of 'select.epoll' objects}", "{built-in method select.select}")


def _busy_s(path: Path) -> float:
    """Seconds a profiled thread spent other than blocked in a queue, lock or poll."""
    stats: Any = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    return float(sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items()
                     if name not in _WAITS))


def _print_profile(what: str, paths: list[Path], lines: int = 25) -> None:
    found = [str(p) for p in paths if p.exists()]
    if not found:
        print(f"\n{what}: no profile written")
        return
    out = io.StringIO()
    stats = pstats.Stats(*found, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    text = out.getvalue()
    start = text.find("   ncalls")
    print(f"\n{what}, cProfile by own time ({stats.total_tt:.1f} s profiled; "  # type: ignore[attr-defined]
          f"{', '.join(found)}):")
    print(text[start:].rstrip() if start >= 0 else text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100, help="simulated readers (100)")
    parser.add_argument("--records", type=int, default=5_000,
                        help="records queued on each reader (5,000)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="give up draining after this many seconds (180)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 readers x 500")
    parser.add_argument("--reader-procs", type=int, default=1,
                        help="processes the readers are spread over (1)")
    parser.add_argument("--batch-max-records", type=int,
                        default=READER_DEFAULTS["batch_max_records"],
                        help="the readers' batch_max_records (firmware default)")
    ingest = IngestConfig()
    parser.add_argument("--group-commit-ms", type=int, default=ingest.group_commit_ms,
                        help="gateway [ingest] group_commit_ms (the gateway's default, "
                             f"{ingest.group_commit_ms})")
    parser.add_argument("--group-commit-max", type=int, default=ingest.group_commit_max,
                        help="gateway [ingest] group_commit_max (the gateway's default, "
                             f"{ingest.group_commit_max})")
    parser.add_argument("--inflight", type=int,
                        default=int(_deployed("max_inflight_messages")),
                        help="Mosquitto max_inflight_messages (default: the deployed "
                             "hardware/gateway/mosquitto.conf)")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the reader processes' timed phase into FILE")
    parser.add_argument("--profile-gateway", metavar="FILE",
                        help="run the gateway command with cProfile on every thread "
                             "(FILE.main, FILE.<thread name>)")
    add_json_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.readers, args.records = 10, 500
    if args.readers < 1 or args.records < 1 or args.timeout <= 0:
        parser.error("--readers, --records and --timeout must be positive")
    for name in ("profile", "profile_gateway"):
        if getattr(args, name):
            path = Path(getattr(args, name)).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            setattr(args, name, str(path))
    with _terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
        try:
            return run(args, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted; broker, gateway and readers stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
