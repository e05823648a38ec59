"""Forwarding benchmark: events/s delivered to an Ed-Fi ODS, and the backlog after an outage.

    .venv/bin/python bench/forwarding.py [--events 3000] [--students 3000] [--latency-ms 0,20]
                                         [--drain-latency-ms 20] [--timeout 300] [--quick]

The gateway's side runs in this process, as ``attendance-gateway run`` wires it: the ingest
(its writer thread is the database's only writer; SQLite in WAL with ``synchronous=FULL``), the
attendance rules with the outbox's enqueuer as their listener (one outbox row per event version,
in the event's transaction), and an ``OutboxService`` with the real Ed-Fi adapter
(``gateway/forwarders/edfi.py``, httpx) built from a ``[[forward]]`` table. The roster comes in
through the CSV import API (``gateway.roster.import_sheet``), the readers through the registry.
Scans are written straight into ``scans`` and handed to the rules in the writer's transaction,
as the ingest does once a record is verified: the ingest has its own benchmarks
(bench/gateway_ingest.py, bench/outage.py), this one is about what happens after it. The
upstream is the Ed-Fi-like peer of the tests (sim/peers/edfi.py: OAuth2, validation, upsert on
the natural key) in a process of its own, with a fixed delay per request to stand in for a real
ODS's database round trips.

In-process rather than the gateway command so that (b) can pass eight hours in seconds: the
outbox's clock (retries, backoff, the circuit breaker) is injected, and a subprocess would have to
wait out the real hours. Everything time-independent is the deployed code and policy
(``DEFAULT_POLICY``); in (b) only ``poll_s`` is 0.05 s instead of 1 s so that the loop sees each
step of simulated time at once. It does not limit the drain: the loop starts the next batch as
soon as one finishes, not at the next poll.

(a) Delivery rate: ``--events`` check-ins pending for a target, the peer up, the outbox started;
    events/s until none is pending, for three target settings (max_batch / concurrency /
    parallel: one request at a time, the defaults, wider) and each peer latency. A run stops
    after ``--run-limit`` s and reports the rate so far.
(b) The morning after: a ``--students`` school's day (06:30-14:30, the upstream unreachable all
    along) -- check-ins, some late, a side gate whose backlog arrives at 10:00 (absences it
    disproves are voided, late check-ins it moves earlier are revised), absences at the cut-off,
    check-outs. The outbox retries, opens its breaker and probes as cool-downs grow. At 14:30 the
    peer comes up; the breaker's next probe is when the outbox looks again (reported, in
    simulated time), then the drain is timed until nothing is pending.

Both check the peer afterwards: every live event exactly once under its natural key (with its
time), nothing else, no natural key ever created twice (a repeated POST answered 200 is an
upsert of the one record and is counted); nothing parked. Exit status 1 if a check fails, 2 if
(b) did not drain within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import multiprocessing as mp
import os
import random
import sqlite3
import sys
import tempfile
import time
import zoneinfo
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from bench.results import Figure, add_json_argument, describe_machine, write  # noqa: E402
from gateway import db  # noqa: E402
from gateway.config import AttendanceConfig, Session  # noqa: E402
from gateway.forwarders import ForwardTarget  # noqa: E402
from gateway.ingest import Ingest  # noqa: E402
from gateway.outbox import (  # noqa: E402
    DEFAULT_POLICY,
    Enqueuer,
    OutboxPolicy,
    OutboxService,
    build_adapter,
)
from gateway.registry import Registry  # noqa: E402
from gateway.roster import import_sheet  # noqa: E402
from gateway.rules import AttendanceRules, from_ms, to_ms  # noqa: E402
from gateway.types import Clock, StaticKeyRing, StoredScan, system_clock  # noqa: E402
from sim.broker import free_port  # noqa: E402
from sim.peers.edfi import (  # noqa: E402
    NAMESPACE,
    RESOURCE_PATH,
    TOKEN_PATH,
    EdFiPeer,
    NaturalKey,
)

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
DAY = dt.date(2026, 3, 2)  # a Monday
SCHOOL_ID = 255901001
SCHOOL_YEAR = 2026
SESSION_NAME = "Học kỳ II"
MORNING = Session("morning", dt.time(6, 30), dt.time(7, 15), dt.time(8, 30), dt.time(11, 30), 30)
CODES = {"check_in": "In Attendance", "late": "Tardy", "absent": "Unexcused Absence",
         "check_out": "Early departure"}
READERS = {1: ("Cổng chính", "main"), 2: ("Cổng phụ", "side")}
CLIENT_ID, CLIENT_SECRET = "attendance-gateway", "s3cr3t-for-bench"
SETTINGS = (("one at a time", 1, 1, 1), ("defaults", 50, 2, 4), ("wider", 100, 4, 8))
DAY_START, DAY_END, BACKLOG_AT = "06:30", "14:30", "10:00"  # (b): the outage, the side gate
STEP_MIN = 5  # (b): simulated minutes per step
_TICK = os.sysconf("SC_CLK_TCK")


def local_ms(hhmm: str, day: dt.date = DAY) -> int:
    return to_ms(dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tzinfo=ZONE))


def student_id(n: int) -> str:
    return f"01{n:08d}"


def card(n: int) -> str:
    return f"iso14443a:0A0B{n:04X}"  # the roster's printed number is 0A0B{n:04X}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# -- the upstream, in its own process ----------------------------------------------------------


class BenchPeer(EdFiPeer):
    """The Ed-Fi peer with a fixed delay before each request is handled."""

    latency_s: float = 0.0

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return await super()._middleware(request, handler)


@dataclass(frozen=True)
class PeerReport:
    live: dict[NaturalKey, str | None]  # stored records: arrival or departure time
    created_twice: dict[NaturalKey, int]  # natural keys answered 201 more than once
    created: int  # POSTs answered 201
    updated: int  # POSTs answered 200 (a repeat or a revision: the same record)
    statuses: Counter[tuple[str, int]]  # (method or "token", status) of every request
    tokens: int


def _report(peer: EdFiPeer) -> PeerReport:
    posts = [r for r in peer.requests if r.method == "POST" and r.path == RESOURCE_PATH]
    created = Counter(peer.natural_key(r.body) for r in posts if r.status == 201)
    return PeerReport(
        live={key: r.get("arrivalTime") or r.get("departureTime")
              for key, r in peer.by_key().items()},
        created_twice={key: n for key, n in created.items() if n > 1},
        created=sum(created.values()), updated=sum(1 for r in posts if r.status == 200),
        statuses=Counter(("token" if r.path == TOKEN_PATH else r.method, r.status)
                         for r in peer.requests), tokens=peer.tokens_issued)


def _peer_main(port: int, latency_s: float, students: list[str], pipe: Connection) -> None:
    async def serve() -> None:
        peer = BenchPeer(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_ttl_s=1800.0,
                         school_id=SCHOOL_ID, sessions={(SCHOOL_YEAR, SESSION_NAME)},
                         students=set(students))
        peer.port, peer.latency_s = port, latency_s
        await peer.start()
        pipe.send("ready")
        while True:
            try:
                message = await asyncio.to_thread(pipe.recv)
            except EOFError:
                break
            if message != "report":
                break
            pipe.send(_report(peer))
        await peer.close()

    asyncio.run(serve())


class PeerProcess:
    def __init__(self, port: int, latency_s: float, students: list[str]) -> None:
        context = mp.get_context("spawn")  # not a fork of a process with threads and a loop
        self._pipe, child = context.Pipe()
        self.proc = context.Process(target=_peer_main, args=(port, latency_s, students, child),
                                    daemon=True)
        self.port = port

    def start(self) -> PeerProcess:
        self.proc.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "ready":
            raise RuntimeError("the Ed-Fi peer did not start")
        return self

    @property
    def cpu_s(self) -> float:
        assert self.proc.pid is not None
        return cpu_s(self.proc.pid)

    def report(self) -> PeerReport:
        self._pipe.send("report")
        if not self._pipe.poll(120):
            raise RuntimeError("the Ed-Fi peer did not report")
        report: PeerReport = self._pipe.recv()
        return report

    def stop(self) -> None:
        if self.proc.is_alive():
            self._pipe.send("stop")
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# -- the gateway's side, in this process -------------------------------------------------------


class SimClock:
    """Unix ms that runs with real time from a chosen start and can jump ahead."""

    def __init__(self, start_ms: int) -> None:
        self.offset = start_ms - system_clock()

    def __call__(self) -> int:
        return system_clock() + self.offset

    def jump(self, to_ms: int) -> None:
        self.offset += max(0, to_ms - self())


class LogCounter(logging.Handler):
    """Counts the gateway's warnings and errors by message (the bench prints no log lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"{record.levelname.lower()}: {record.getMessage()}"] += 1


class School:
    """A gateway database with the roster imported and two readers, the ingest's writer, the
    attendance rules enqueueing for ``targets``."""

    def __init__(self, workdir: Path, students: int, targets: Sequence[str],
                 clock: Clock) -> None:
        workdir.mkdir(parents=True)
        self.path = workdir / "gateway.db"
        self.students = students
        conn = db.connect(self.path)
        sheet = workdir / "roster.csv"
        sheet.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ\n" + "".join(
            f"{student_id(n)},Học sinh {n},{6 + n % 4}A{n % 10},0A0B{n:04X}\n"
            for n in range(students)), encoding="utf-8")
        imported = import_sheet(conn, sheet, clock=clock)
        if imported.errors:
            raise RuntimeError(f"roster: {imported.errors[:3]}")
        registry = Registry.open(conn, workdir / "master.key", clock)
        for rid, (name, gate) in READERS.items():
            registry.register(rid, name, gate)
        self.key_ids = {int(r[0]): int(r[1]) for r in conn.execute(
            "SELECT reader_id, key_id FROM reader_keys WHERE state = 'active'")}
        self.clock = clock
        self.rules = AttendanceRules(
            AttendanceConfig(sessions=(MORNING,)), ZONE, 120,  # Monday-Saturday
            clock, listeners=[Enqueuer(targets, clock)])
        self.ingest = Ingest(conn, StaticKeyRing({}), clock=clock)
        self.read_conn = db.connect(self.path, migrate=False)  # the outbox's
        self._poll = db.connect(self.path, migrate=False)  # this bench's looks
        self._seq = dict.fromkeys(READERS, 0)
        self.ingest.start()

    async def taps(self, taps: Sequence[tuple[int, int, int]]) -> None:
        """(reader, student, at_ms) taps, stored and applied in one transaction."""
        if not taps:
            return

        def apply(conn: sqlite3.Connection) -> None:
            scans = []
            received = self.clock()
            for reader, n, at_ms in taps:
                self._seq[reader] += 1
                cursor = conn.execute(
                    "INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, "
                    "clock_synced, ticks_ms, received_ms, at_ms, time_source, key_id, raw) "
                    "VALUES (?, 1, ?, ?, ?, 1, 0, ?, ?, 'reader', ?, x'00')",
                    (reader, self._seq[reader], card(n), at_ms, received, at_ms,
                     self.key_ids[reader]))
                scans.append(StoredScan(int(cursor.lastrowid or 0), reader, READERS[reader][1],
                                        card(n), at_ms, "reader"))
            self.rules.on_scans(conn, scans)

        await self.ingest.run_in_transaction(apply)

    async def close_due_sessions(self) -> int:
        """The gateway's absence timer."""
        return await self.ingest.run_in_transaction(
            lambda conn: self.rules.close_due_sessions(conn, self.clock()))

    def states(self, target: str) -> Counter[str]:
        return Counter(dict(self._poll.execute(
            "SELECT state, COUNT(*) FROM outbox WHERE target = ? GROUP BY state", (target,))))

    def pending(self, target: str) -> int:
        return int(self._poll.execute("SELECT COUNT(*) FROM outbox WHERE target = ? AND "
                                      "state = 'pending'", (target,)).fetchone()[0])

    def versions(self, target: str) -> Counter[str]:
        return Counter(dict(self._poll.execute(
            "SELECT change, COUNT(*) FROM outbox WHERE target = ? GROUP BY change", (target,))))

    def expected(self, target: str | None = None) -> dict[NaturalKey, str | None]:
        """What Ed-Fi must hold: every live event (of those delivered to ``target``, if given),
        natural key -> arrival or departure time."""
        sql = ("SELECT DISTINCT e.kind, e.student_id, e.school_date, e.at_ms "
               "FROM attendance_events e {join} WHERE e.voided_ms IS NULL AND e.kind IN "
               "('check_in', 'late', 'absent', 'check_out')")
        args: tuple[str, ...] = ()
        if target is None:
            sql = sql.format(join="")
        else:
            sql = sql.format(join="JOIN outbox o ON o.event_id = e.event_id AND o.target = ? "
                                  "AND o.state = 'delivered'")
            args = (target,)
        out: dict[NaturalKey, str | None] = {}
        for kind, sid, day, at_ms in self._poll.execute(sql, args):
            key = (f"{NAMESPACE}#{CODES[kind]}", day, SCHOOL_ID, SCHOOL_YEAR, SESSION_NAME, sid)
            out[key] = None if kind == "absent" else from_ms(at_ms, ZONE).strftime("%H:%M:%S")
        return out

    def event_counts(self) -> Counter[str]:
        return Counter(dict(self._poll.execute(
            "SELECT kind || CASE WHEN voided_ms IS NULL THEN '' ELSE ' (voided)' END, COUNT(*) "
            "FROM attendance_events GROUP BY 1")))

    async def close(self) -> None:
        await self.ingest.close()
        self.read_conn.close()
        self._poll.close()


def forward_target(name: str, port: int, secret: Path, max_batch: int, concurrency: int,
                   parallel: int) -> ForwardTarget:
    """A ``[[forward]]`` table of type edfi, as gateway/config.py parses it."""
    return ForwardTarget(name=name, type="edfi", max_batch=max_batch, concurrency=concurrency,
                         settings={
                             "base_url": f"http://127.0.0.1:{port}", "client_id": CLIENT_ID,
                             "client_secret_file": str(secret), "school_id": SCHOOL_ID,
                             "school_year": SCHOOL_YEAR, "session_names": SESSION_NAME,
                             "categories": {"check_out": CODES["check_out"]},
                             "parallel": parallel, "timeout_s": 15})


def exactly_once(expected: dict[NaturalKey, str | None], report: PeerReport) -> list[str]:
    """What is wrong on the peer's side (empty: every event exactly once)."""
    problems = []
    missing = expected.keys() - report.live.keys()
    extra = report.live.keys() - expected.keys()
    differ = [k for k in expected.keys() & report.live.keys() if expected[k] != report.live[k]]
    if missing:
        problems.append(f"{len(missing)} live events missing upstream")
    if extra:
        problems.append(f"{len(extra)} records upstream that are no live event")
    if differ:
        problems.append(f"{len(differ)} records with another time")
    if report.created_twice:
        problems.append(f"{len(report.created_twice)} natural keys created twice")
    return problems


# -- (a) delivery rate -------------------------------------------------------------------------


@dataclass
class RateRun:
    latency_ms: int
    label: str
    max_batch: int
    concurrency: int
    parallel: int
    delivered: int = 0
    elapsed_s: float = 0.0
    limited: bool = False
    gateway_cpu_s: float = 0.0
    peer_cpu_s: float = 0.0
    requests: int = 0
    problems: list[str] = field(default_factory=list)


async def rate_runs(workdir: Path, secret: Path, events: int, latencies: list[int],
                    run_limit_s: float) -> list[RateRun]:
    runs = [RateRun(lat, label, b, c, p) for lat in latencies for label, b, c, p in SETTINGS]
    names = [f"run{i}" for i in range(len(runs))]
    school = School(workdir / "rate", events, names, system_clock)
    try:
        start = local_ms(MORNING.start.isoformat())
        for first in range(0, events, 500):  # one on-time check-in per student
            await school.taps([(1, n, start + n * 500) for n in range(first,
                                                                     min(events, first + 500))])
        students = [student_id(n) for n in range(events)]
        for name, run in zip(names, runs, strict=True):
            peer = await asyncio.to_thread(
                PeerProcess(free_port(), run.latency_ms / 1000, students).start)
            try:
                adapter = build_adapter(forward_target(
                    name, peer.port, secret, run.max_batch, run.concurrency, run.parallel),
                    clock=system_clock, timezone=ZONE)
                service = OutboxService(school.ingest, [adapter], school.read_conn)
                stop = asyncio.Event()
                cpu0, peer0, t0 = time.process_time(), peer.cpu_s, time.perf_counter()
                task = asyncio.create_task(service.run(stop))
                while school.pending(name) and time.perf_counter() - t0 < run_limit_s:
                    await asyncio.sleep(0.02)
                run.elapsed_s = time.perf_counter() - t0
                run.delivered = school.states(name)["delivered"]
                run.gateway_cpu_s = time.process_time() - cpu0
                run.peer_cpu_s = peer.cpu_s - peer0
                run.limited = school.pending(name) > 0
                stop.set()
                await task
                report = await asyncio.to_thread(peer.report)
            finally:
                await asyncio.to_thread(peer.stop)
            run.requests = sum(report.statuses.values())
            run.problems = exactly_once(school.expected(name), report)
            if school.states(name)["parked"]:
                run.problems.append(f"{school.states(name)['parked']} parked")
            print(f"  {run.latency_ms:>3} ms  {run.label:<14} {run.delivered:>6,} events in "
                  f"{run.elapsed_s:5.1f} s", flush=True)
    finally:
        await school.close()
    return runs


def print_rates(runs: list[RateRun], events: int, run_limit_s: float) -> None:
    print(f"\n(a) events/s delivered to the Ed-Fi peer, {events:,} check-ins pending per run "
          f"(a run stops after {run_limit_s:g} s)")
    print(f"  {'peer latency':<13}{'setting':<15}{'max_batch':>9}{'concurrency':>12}"
          f"{'parallel':>9}{'in flight':>10}{'events/s':>10}{'elapsed':>9}"
          f"{'gateway CPU':>12}{'peer CPU':>9}  exactly once")
    for r in runs:
        rate = r.delivered / r.elapsed_s if r.elapsed_s else 0.0
        note = "yes" if not r.problems else "NO: " + "; ".join(r.problems)
        elapsed = f"{r.elapsed_s:.1f} s" + ("*" if r.limited else "")
        print(f"  {f'{r.latency_ms} ms':<13}{r.label:<15}{r.max_batch:>9}{r.concurrency:>12}"
              f"{r.parallel:>9}{r.concurrency * r.parallel:>10}{rate:>10,.0f}{elapsed:>9}"
              f"{r.gateway_cpu_s / r.elapsed_s:>12.0%}{r.peer_cpu_s / r.elapsed_s:>9.0%}  "
              f"{note}")
    if any(r.limited for r in runs):
        print("  * stopped at the run limit: the rate is of the events delivered so far")
    print("  in flight = concurrency x parallel requests; CPU in % of one core; "
          "gateway = this process (outbox loop, httpx, the writer thread)")


# -- (b) the backlog after an outage -----------------------------------------------------------


@dataclass
class DayPlan:
    live: list[tuple[int, int, int]]  # (reader, student, at_ms), received as they happen
    backlog: list[tuple[int, int, int]]  # the side gate's, received at BACKLOG_AT
    groups: dict[str, int]


def plan_day(students: int, rng: random.Random) -> DayPlan:
    """Who comes when: most on time, some late, a side gate offline until 10:00 whose taps
    void absences (students seen only there) and revise late check-ins (students seen at the
    main gate later), some never come; every student present leaves after 11:30."""
    order = list(range(students))
    rng.shuffle(order)
    taken = 0

    def take(fraction: float) -> list[int]:
        nonlocal taken
        n = round(students * fraction)
        out = order[taken:taken + n]
        taken += n
        return out

    absent, side_only, late, moved, on_time = (take(0.02), take(0.02), take(0.06), take(0.03),
                                               order[taken:])

    def between(start: str, end: str) -> int:
        return rng.randrange(local_ms(start), local_ms(end))

    live = [(1, n, between("06:30", "07:14")) for n in on_time]
    live += [(1, n, between("07:16", "07:45")) for n in late + moved]
    backlog = [(2, n, between("06:35", "07:10")) for n in side_only + moved]
    live += [(1, n, between("11:30", "12:00")) for n in on_time + late + moved + side_only]
    live.sort(key=lambda t: t[2])
    return DayPlan(live, backlog, {
        "on time": len(on_time), "late": len(late), "late, moved earlier by the side gate":
        len(moved), "seen only at the side gate": len(side_only), "absent": len(absent)})


@dataclass
class Drain:
    students: int
    latency_ms: int
    groups: dict[str, int]
    events: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    pending_before: int = 0
    failures: int = 0
    opened: str = "-"
    last_error: str | None = None
    probe_wait_s: float = 0.0
    drain_s: float | None = None
    p99_s: float | None = None
    delivered: int = 0
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    updated: int = 0
    gateway_cpu_s: float = 0.0
    peer_cpu_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)


async def outage_day(workdir: Path, secret: Path, students: int, latency_ms: int,
                     timeout_s: float) -> Drain:
    clock = SimClock(local_ms(DAY_START))
    plan = plan_day(students, random.Random(2026))
    out = Drain(students, latency_ms, plan.groups)
    school = School(workdir / "day", students, ["edfi"], clock)
    port = free_port()  # nothing listens there until the upstream is back
    adapter = build_adapter(forward_target("edfi", port, secret, *SETTINGS[1][1:]),
                            clock=clock, timezone=ZONE)
    policy = dataclasses.replace(DEFAULT_POLICY, poll_s=0.05)
    service = OutboxService(school.ingest, [adapter], school.read_conn, clock=clock,
                            policy=policy)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    peer: PeerProcess | None = None
    try:
        while not service.deliveries:  # run() starts them
            await asyncio.sleep(0.01)
        delivery = service.deliveries["edfi"]
        # 06:30-14:30 in steps: the taps of each step, the side gate's backlog at 10:00, the
        # absence timer; the outbox retries, opens its breaker and probes meanwhile.
        live = iter(plan.live)
        upcoming = next(live, None)
        at, end, backlog_at = local_ms(DAY_START), local_ms(DAY_END), local_ms(BACKLOG_AT)
        while at < end:
            at += STEP_MIN * 60_000
            clock.jump(at)
            taps = []
            while upcoming is not None and upcoming[2] < at:
                taps.append(upcoming)
                upcoming = next(live, None)
            if at - STEP_MIN * 60_000 < backlog_at <= at:
                taps += plan.backlog
            await school.taps(taps)
            await school.close_due_sessions()
            await asyncio.sleep(policy.poll_s * 1.5)
            if out.opened == "-" and delivery.breaker.state != "closed":
                out.opened = from_ms(at, ZONE).strftime("%H:%M")
        breaker = delivery.breaker.row
        out.events = school.event_counts()
        out.versions = school.versions("edfi")
        out.pending_before = school.pending("edfi")
        out.failures, out.last_error = breaker.failures, breaker.last_error
        # 14:30: the upstream is back. The breaker probes when its cool-down is over.
        peer = await asyncio.to_thread(
            PeerProcess(port, latency_ms / 1000, [student_id(n) for n in range(students)]).start)
        probe_ms = delivery.breaker.row.probe_ms if delivery.breaker.state == "open" else None
        out.probe_wait_s = max(0, (probe_ms or clock()) - clock()) / 1000
        cpu0, peer0, t0 = time.process_time(), peer.cpu_s, time.perf_counter()
        clock.jump(probe_ms or clock())
        first = max(1, out.pending_before)
        while (left := school.pending("edfi")) and time.perf_counter() - t0 < timeout_s:
            if out.p99_s is None and left <= first // 100:
                out.p99_s = time.perf_counter() - t0
            await asyncio.sleep(0.02)
        if not left:
            out.drain_s = time.perf_counter() - t0
        out.gateway_cpu_s = time.process_time() - cpu0
        out.peer_cpu_s = peer.cpu_s - peer0
        stop.set()
        await task
        report = await asyncio.to_thread(peer.report)
        out.requests, out.updated = report.statuses, report.updated
        out.states = school.states("edfi")
        out.delivered = out.states["delivered"]
        out.problems = exactly_once(school.expected(), report)
        if out.states["parked"]:
            out.problems.append(f"{out.states['parked']} parked")
    finally:
        stop.set()
        await task
        if peer is not None:
            await asyncio.to_thread(peer.stop)
        await school.close()
    return out


def print_drain(d: Drain, policy: OutboxPolicy) -> None:
    print(f"\n(b) the backlog after an outage: {d.students:,} students, the upstream unreachable "
          f"{DAY_START}-{DAY_END} (8 h), peer latency {d.latency_ms} ms, target settings "
          f"max_batch {SETTINGS[1][1]}, concurrency {SETTINGS[1][2]}, parallel {SETTINGS[1][3]}")
    print("  the day: " + ", ".join(f"{v:,} {k}" for k, v in d.groups.items()))
    print("  events:  " + ", ".join(f"{v:,} {k}" for k, v in sorted(d.events.items())))
    total = sum(d.versions.values())
    print(f"  versions enqueued {total:,} (" + ", ".join(
        f"{v:,} {k}" for k, v in sorted(d.versions.items())) + f"); pending at {DAY_END}: "
        f"{d.pending_before:,}")
    print(f"  breaker open from {d.opened}; by {DAY_END} {d.failures} failed batches and probes "
          f"in a row, the last: {d.last_error}")
    cap = policy.breaker_cooldown_cap_s
    print(f"  upstream back at {DAY_END}: next probe {d.probe_wait_s:,.0f} s later (simulated; "
          f"the cool-down is capped at {cap:g} s +/- {policy.jitter:.0%})")
    if d.drain_s is None:
        print(f"  drain: NOT finished within the timeout; {d.states['pending']:,} pending")
    else:
        rate = d.pending_before / d.drain_s if d.drain_s else 0.0
        p99 = f"{d.p99_s:.1f} s" if d.p99_s is not None else "-"
        print(f"  drain after the probe: {d.drain_s:.1f} s until pending = 0 ({rate:,.0f} "
              f"items/s; 99 % after {p99}); with the breaker's wait "
              f"{d.probe_wait_s + d.drain_s:,.0f} s")
    requests = ", ".join(f"{m} {s}: {n:,}" for (m, s), n in sorted(d.requests.items()))
    print(f"  requests to the peer: {requests}; POSTs answered 200 (the same record again): "
          f"{d.updated:,}")
    print("  outbox at the end: "
          + ", ".join(f"{v:,} {k}" for k, v in sorted(d.states.items())))
    if d.drain_s:
        print(f"  CPU during the drain: gateway {d.gateway_cpu_s / d.drain_s:.0%}, peer "
              f"{d.peer_cpu_s / d.drain_s:.0%} of a core")
    print("  every event exactly once upstream: " + (
        "yes" if not d.problems else "NO: " + "; ".join(d.problems)))


# -- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> int:
    secret = workdir / "edfi.secret"
    secret.write_text(CLIENT_SECRET + "\n", encoding="utf-8")
    secret.chmod(0o600)
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.WARNING)
    print(f"machine: {describe_machine()}")
    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}", flush=True)
    failed = False
    figures: list[Figure] = []
    if not args.skip_rates:
        print(f"\n(a) running {len(SETTINGS) * len(args.latency_ms)} runs ...", flush=True)
        runs = await rate_runs(workdir, secret, args.events, args.latency_ms, args.run_limit)
        print_rates(runs, args.events, args.run_limit)
        failed |= any(r.problems for r in runs)
        figures += [Figure(f"edfi_rate_{r.latency_ms}ms_{r.label.replace(' ', '_')}",
                           f"Events/s to the Ed-Fi peer, {r.latency_ms} ms per request, "
                           f"{r.label}", r.delivered / r.elapsed_s if r.elapsed_s else 0.0,
                           "events/s", "", None if not r.problems else False,
                           f"max_batch {r.max_batch}, concurrency {r.concurrency}, parallel "
                           f"{r.parallel}" + ("; stopped at the run limit" if r.limited else ""))
                    for r in runs]
    print(f"\n(b) simulating the day for {args.students:,} students ...", flush=True)
    drain = await outage_day(workdir, secret, args.students, args.drain_latency_ms,
                             args.timeout)
    print_drain(drain, DEFAULT_POLICY)
    seen = counter.seen.most_common(4)
    print(f"\ngateway log: {sum(counter.seen.values()):,} warnings and errors"
          + (f" ({'; '.join(f'{k} x{n:,}' for k, n in seen)})" if seen else ""))
    failed |= bool(drain.problems)
    if drain.drain_s is not None:
        figures.append(Figure(
            "edfi_drain", f"Upstream back after 8 h: drain of {drain.pending_before:,} items, "
            f"{drain.students:,} students", drain.drain_s, "s", "", not drain.problems,
            f"after the breaker's next probe ({drain.probe_wait_s:,.0f} s simulated); every "
            "event exactly once upstream: " + ("yes" if not drain.problems else "NO")))
    write(args.json, "forwarding", figures)
    if failed:
        return 1
    return 0 if drain.drain_s is not None else 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000,
                        help="(a) check-ins pending per run (3,000)")
    parser.add_argument("--latency-ms", default="0,20",
                        help="(a) the peer's delay per request, comma-separated (0,20)")
    parser.add_argument("--run-limit", type=float, default=20.0,
                        help="(a) stop a run after this many seconds (20)")
    parser.add_argument("--students", type=int, default=3000, help="(b) the school (3,000)")
    parser.add_argument("--drain-latency-ms", type=int, default=20,
                        help="(b) the peer's delay per request (20)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="(b) give up draining after this many seconds (300)")
    parser.add_argument("--skip-rates", action="store_true", help="run (b) only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 300 events, 300 students, 5 s per run")
    add_json_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.events, args.students, args.run_limit = 300, 300, 5.0
    try:
        args.latency_ms = [int(v) for v in args.latency_ms.split(",") if v.strip()]
    except ValueError:
        parser.error("--latency-ms: integers separated by commas")
    if args.events < 1 or args.students < 100 or args.timeout <= 0 or args.run_limit <= 0:
        parser.error("--events, --timeout and --run-limit must be positive, --students >= 100")
    if args.students > 0xFFFF or args.events > 0xFFFF:
        parser.error("at most 65,535 students (their card numbers are 0A0B0000-0A0BFFFF)")
    with tempfile.TemporaryDirectory(prefix="bench-forwarding-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
