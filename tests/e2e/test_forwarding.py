"""Forwarding end to end: taps through the gateway as operators run it to an Ed-Fi-like peer,
through a kill -9 mid-delivery, a long upstream outage and tokens expiring mid-batch.

- The gateway: ``python -m gateway.cli run --config FILE`` in its own process
  (tests/e2e/gateway_process.py), a real Mosquitto, the roster imported with
  ``attendance-gateway roster import --sheet``, one ``[attendance]`` session and one
  ``[[forward]]`` Ed-Fi target pointing at the peer.
- The upstream: ``sim/peers/edfi.py`` (OAuth2 with expiring tokens, upsert on the natural key,
  fault injection) running in this test's event loop, so everything the test does while the
  gateway runs is asynchronous (the gateway's start and kill go to a thread).
- The readers: ``tests/e2e/mqtt_reader.AckingReader``, stop-and-wait on the gateway's ack like
  the firmware. Chosen over the real firmware (``sim/firmware_reader.py``) because these tests
  are about what happens after the ingest, and AckingReader signs each record with a clock the
  test sets: taps stamped 06:30 (on time), 07:30 (late) or 09:30 (check-out) make exactly the
  events a test wants, whatever the time of day it runs. The firmware's own path to the gateway
  is tested in tests/e2e/test_reader_link.py and bench/outage.py.
- Time: the gateway's ``[gateway] timezone`` is a fixed-offset zone chosen so that it is between
  10:00 and 11:00 there now; the morning session (06:00-11:30, late after 07:00, absent at 08:00)
  is then under way and its cut-off has passed. Yesterday is a holiday, so only today's session
  closes.
- The day starts the same way in every test: the gateway starts with no reader registered, so
  its absence timer closes the session at once (no reader has a backlog to wait for) and every
  student is absent; the readers are registered next (the gateway reloads them within 2 s).
  A student's check-in then voids their absence, which the Ed-Fi adapter deletes upstream.
  One student of our roster is unknown to the ODS: their absence is parked (409 unresolved
  reference) and must be the only parked item.

After each scenario, with the gateway stopped: every live event is on the peer exactly once
under its natural key (with its arrival or departure time), no natural key was ever created
twice (a repeated POST answered 200 is an upsert of the one record, and is counted), voided
events are not on the peer, ``outbox status --json`` says 0 pending and 1 parked, and
``outbox list --parked --json`` names only the unknown student.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import sys
import time
import zoneinfo
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from aiohttp import web

from gateway import db
from gateway.registry import Registry
from sim.broker import MosquittoBroker
from sim.peers.edfi import NAMESPACE, RESOURCE_PATH, EdFiPeer, Fault, NaturalKey
from sim.reader import SimulatedReader
from tests.e2e.gateway_process import ROOT, GatewayProcess
from tests.e2e.mqtt_reader import AckingReader

SCHOOL = "e2e-forwarding"
TARGET = "so-gd"
SCHOOL_ID = 255901001
SCHOOL_YEAR = 2026
SESSION_NAME = "Học kỳ II"
STUDENTS = [f"02{n:08d}" for n in range(24)]
UNKNOWN_UPSTREAM = len(STUDENTS) - 1  # on our roster, not in the ODS: its events are parked
CODES = {"check_in": "In Attendance", "late": "Tardy", "absent": "Unexcused Absence",
         "check_out": "Early departure"}
ON_TIME, LATE, LEAVING = "06:30:00", "07:30:00", "09:30:00"
READERS = {1: "main", 2: "side"}


def school_zone(now_s: float) -> zoneinfo.ZoneInfo:
    """A fixed-offset zone in which it is between 10:00 and 11:00 at ``now_s``."""
    offset = (10 - time.gmtime(now_s).tm_hour) % 24
    if offset > 14:
        offset -= 24
    # POSIX sign: Etc/GMT-7 is seven hours ahead of UTC
    return zoneinfo.ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}")


def card(n: int) -> tuple[int, bytes]:
    return 2, bytes.fromhex(f"0A0B{n:04X}")  # ISO 14443-A, printed as 0A0B00nn on the roster


class Stamp:
    """The readers' synced clock: the time the next record is signed with (Unix seconds)."""

    def __init__(self) -> None:
        self.at = time.time()

    def __call__(self) -> float:
        return self.at


class Peer(EdFiPeer):
    """The Ed-Fi peer, counting the requests it is still handling, by method."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_flight: Counter[str] = Counter()

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        self.in_flight[request.method] += 1
        try:
            return await super()._middleware(request, handler)
        finally:
            self.in_flight[request.method] -= 1

    def posts(self, status: int, since: int = 0) -> Counter[NaturalKey]:
        """Natural keys of the resource POSTs answered ``status`` (after request ``since``)."""
        return Counter(self.natural_key(r.body) for r in self.requests[since:]
                       if r.method == "POST" and r.path == RESOURCE_PATH and r.status == status)


async def until(what: str, check: Callable[[], bool], timeout_s: float,
                detail: Callable[[], object] = lambda: "") -> None:
    """Wait until ``check()``; fail naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s. {detail()}")
        await asyncio.sleep(0.05)


async def cli(config: Path, *args: str) -> Any:
    """``attendance-gateway ARGS --config FILE``, as an operator types it; its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"attendance-gateway {' '.join(args)}: no answer in 30 s") from None
    assert proc.returncode == 0, f"attendance-gateway {' '.join(args)}: {err.decode()}"
    return json.loads(out) if "--json" in args else out.decode()


_P = TypeVar("_P")


@dataclass
class GatewaySchool(Generic[_P]):
    """One school run by the gateway command: its gateway, database, readers and an upstream
    ``peer``; shared with tests/e2e/test_notify.py."""

    tmp: Path
    peer: _P
    zone: zoneinfo.ZoneInfo
    gateway: GatewayProcess
    readers: dict[int, AckingReader] = field(default_factory=dict)
    stamp: Stamp = field(default_factory=Stamp)

    @property
    def config(self) -> Path:
        return self.tmp / "gateway.toml"

    @property
    def db_path(self) -> Path:
        return self.tmp / "gateway.db"

    @property
    def today(self) -> dt.date:
        return dt.datetime.now(self.zone).date()

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def log_since(self, offset: int) -> bytes:
        return self.gateway.log.read_bytes()[offset:]

    async def start_gateway(self) -> None:
        await asyncio.to_thread(self.gateway.start)

    async def tap(self, reader: int, taps: Sequence[tuple[int, str]]) -> float:
        """Students ``n`` tapping at local times today, uploaded by ``reader`` as one batch;
        returns the seconds until its ack (the ack follows the gateway's durable commit)."""
        r = self.readers[reader]
        records = []
        for n, hhmm in taps:
            self.stamp.at = dt.datetime.combine(self.today, dt.time.fromisoformat(hhmm),
                                                tzinfo=self.zone).timestamp()
            records.append(r.sim.tap(card(n)))
        started = time.monotonic()
        await r.send(r.sim.batch(records), deadline_s=15)
        return time.monotonic() - started


@dataclass
class School(GatewaySchool[Peer]):
    """The forwarding tests' school (see the module docstring)."""

    def outbox(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM outbox GROUP BY state"))

    def breaker(self) -> tuple[str, int | None]:
        rows = self.query("SELECT breaker, breaker_probe_ms FROM outbox_targets "
                          "WHERE target = ?", TARGET)
        return (str(rows[0][0]), rows[0][1]) if rows else ("closed", None)

    async def drained(self, timeout_s: float) -> None:
        await until("the outbox drained", lambda: self.outbox().get("pending", 0) == 0,
                    timeout_s, lambda: f"outbox {self.outbox()}, breaker {self.breaker()}, "
                                       f"peer saw {len(self.peer.requests)} requests")


@contextlib.asynccontextmanager
async def school(tmp_path: Path, broker: MosquittoBroker, peer: Peer, *,
                 outbox: Mapping[str, object] | None = None, **forward: object
                 ) -> AsyncIterator[School]:
    """The day begins: roster imported, gateway started, every student absent (the session's
    cut-off has passed and no reader is registered), the absences on their way upstream, then
    the readers registered and connected. ``outbox``: keys of an ``[outbox]`` table (the
    delivery timings); ``forward``: more keys of the ``[[forward]]`` table."""
    zone = school_zone(time.time())
    yesterday = (dt.datetime.now(zone) - dt.timedelta(days=1)).date()
    settings = {"max_batch": 10, "concurrency": 2, "parallel": 4, **forward}
    forward_lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    outbox_table = "".join(f"{key} = {value}\n" for key, value in (outbox or {}).items())
    (tmp_path / "gateway.toml").write_text(f"""\
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "{zone.key}"

[mqtt]
port = {broker.port}
keepalive_s = 5

[metrics]
listen = ""

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
holidays = ["{yesterday.isoformat()}"]

[[attendance.session]]
name = "morning"
start = "06:00"
late_after = "07:00"
absent_at = "08:00"
end = "11:30"
min_stay_min = 30

[outbox]
{outbox_table}
[[forward]]
name = "{TARGET}"
type = "edfi"
base_url = "{peer.base_url}"
client_id = "{peer.client_id}"
client_secret_file = "edfi.secret"
school_id = {SCHOOL_ID}
school_year = {SCHOOL_YEAR}
session_names = "{SESSION_NAME}"
categories = {{ check_out = "{CODES['check_out']}" }}
timeout_s = 5
{forward_lines}""", encoding="utf-8")
    secret = tmp_path / "edfi.secret"
    secret.write_text(peer.client_secret + "\n", encoding="utf-8")
    secret.chmod(0o600)
    sheet = tmp_path / "roster.csv"
    sheet.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ\n" + "".join(
        f"{sid},Học sinh {n},6A,0A0B{n:04X}\n" for n, sid in enumerate(STUDENTS)),
        encoding="utf-8")
    peer.students = set(STUDENTS) - {STUDENTS[UNKNOWN_UPSTREAM]}
    peer.sessions = {(SCHOOL_YEAR, SESSION_NAME)}
    s = School(tmp_path, peer, zone, GatewayProcess(tmp_path / "gateway.toml",
                                                    tmp_path / "gateway.log"))
    await cli(s.config, "roster", "import", "--sheet", str(sheet))
    try:
        offset = s.gateway.log.stat().st_size if s.gateway.log.exists() else 0
        await s.start_gateway()
        await until("every student absent at the cut-off", lambda: s.query(
            "SELECT COUNT(*) FROM attendance_events WHERE kind = 'absent'")[0][0]
            == len(STUDENTS), 10, lambda: s.log_since(offset)[-2000:])
        conn = db.connect(s.db_path, migrate=False)
        try:
            registry = Registry.open(conn, tmp_path / "master.key")
            keys = {rid: registry.register(rid, f"gate {gate}", gate).key
                    for rid, gate in READERS.items()}
        finally:
            conn.close()
        await until("the gateway reloaded its readers",
                    lambda: b'"event": "reader registry reloaded"' in s.log_since(offset), 10)
        async with contextlib.AsyncExitStack() as stack:
            for rid, key in keys.items():
                reader = await stack.enter_async_context(AckingReader(
                    rid, key, SCHOOL, "127.0.0.1", broker.port, ack_timeout_s=1.0))
                reader.sim = SimulatedReader(rid, key, SCHOOL, clock=s.stamp)
                s.readers[rid] = reader
            yield s
    finally:
        s.gateway.ensure_dead()


def expected_upstream(s: School) -> dict[NaturalKey, str | None]:
    """The live events Ed-Fi must hold: natural key -> arrival or departure time."""
    out: dict[NaturalKey, str | None] = {}
    for kind, student, day, at_ms in s.query(
            "SELECT kind, student_id, school_date, at_ms FROM attendance_events "
            "WHERE voided_ms IS NULL AND kind IN ('check_in', 'late', 'absent', 'check_out')"):
        if student == STUDENTS[UNKNOWN_UPSTREAM]:
            continue
        key = (f"{NAMESPACE}#{CODES[kind]}", day, SCHOOL_ID, SCHOOL_YEAR, SESSION_NAME, student)
        local = dt.datetime.fromtimestamp(at_ms / 1000, s.zone).strftime("%H:%M:%S")
        out[key] = None if kind == "absent" else local
    return out


async def check_exactly_once(s: School) -> Counter[NaturalKey]:
    """The checks of the module docstring, on the stopped gateway; returns the natural keys
    POSTed again (200: an upsert of the one record) with how often."""
    expected = expected_upstream(s)
    on_peer = {key: r.get("arrivalTime") or r.get("departureTime")
               for key, r in s.peer.by_key().items()}
    assert set(on_peer) - set(expected) == set(), "on the peer, but not a live event"
    assert set(expected) - set(on_peer) == set(), "a live event missing on the peer"
    assert on_peer == expected, "times differ"
    created = s.peer.posts(201)
    twice = {key: n for key, n in created.items() if n > 1}
    assert twice == {}, f"natural keys created more than once: {twice}"
    assert all(created[key] == 1 for key in expected)

    (status,) = await cli(s.config, "outbox", "status", "--json")
    assert (status["target"], status["pending"], status["parked"], status["breaker"]) \
        == (TARGET, 0, 1, "closed"), status
    parked = await cli(s.config, "outbox", "list", TARGET, "--parked", "--json")
    assert [(p["kind"], p["student_id"]) for p in parked] \
        == [("absent", STUDENTS[UNKNOWN_UPSTREAM])], parked
    assert parked[0]["parked_reason"].startswith("unknown student or session (409 "), parked
    states = s.outbox()
    assert set(states) <= {"delivered", "superseded", "parked"}, states
    return s.peer.posts(200)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with Peer(token_ttl_s=600) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_kill_9_mid_delivery_then_restart(
        tmp_path: Path, mosquitto_broker: MosquittoBroker, peer: Peer) -> None:
    async with school(tmp_path, mosquitto_broker, peer) as s:
        await s.drained(15)  # the absences are upstream
        # A slow upstream: every request takes 0.8 s, so batches are in flight for a while.
        peer.inject(Fault(kind="slow", delay_s=0.8), times=1000)
        await s.tap(1, [(n, ON_TIME) for n in range(12)])
        await s.tap(2, [(n, LATE) for n in range(12, 16)])
        # voided absences go first (lower event ids), then the check-ins: kill with POSTs out
        await until("check-in POSTs in flight", lambda: peer.in_flight["POST"] >= 2, 20,
                    lambda: f"in flight {dict(peer.in_flight)}, outbox {s.outbox()}")
        await asyncio.to_thread(s.gateway.kill9)
        killed_at = len(peer.requests)
        # The peer finishes what it was handling: stored upstream, the answers lost.
        await until("the peer finished the orphaned requests",
                    lambda: sum(peer.in_flight.values()) == 0, 5)
        orphans = peer.posts(201, since=killed_at)
        assert orphans, "no POST was in flight at the kill"
        peer.clear_faults()
        restarted_at = len(peer.requests)
        await s.start_gateway()
        await s.tap(1, [(n, LEAVING) for n in range(6)])  # check-outs after the restart
        await s.tap(2, [(n, ON_TIME) for n in range(16, 20)])
        await s.drained(20)
        assert await asyncio.to_thread(s.gateway.terminate) == 0
    resent = await check_exactly_once(s)
    # The records stored while the gateway was dead were sent again after the restart, under
    # the same keys, and the upsert kept one record each.
    again = peer.posts(200, since=restarted_at)
    assert set(orphans) <= set(again), "an orphaned POST was not sent again"
    print(f"kill -9 with {len(orphans)} POSTs in flight; {sum(resent.values())} POSTs repeated "
          f"as upserts, {len(peer.records)} records, {peer.count('DELETE', status=204)} deletes")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_upstream_down_for_long_the_breaker_opens_then_everything_goes_once(
        tmp_path: Path, mosquitto_broker: MosquittoBroker, peer: Peer) -> None:
    # The gateway runs the deployed policy (gateway/outbox.py) but for the cool-down, which
    # [outbox] shortens from 30 to 10 s: the breaker opens after 5 batches failed in a row and
    # probes after 10 s +/- 20 %; that is what this test waits for.
    async with school(tmp_path, mosquitto_broker, peer, max_batch=5,
                      outbox={"breaker_failures": 5, "breaker_cooldown_s": 10}) as s:
        await s.drained(15)
        await peer.close()  # the school's internet is down: connections refused
        await s.tap(1, [(n, ON_TIME) for n in range(16)])  # 32 items: 7 batches of 5
        await until("the breaker opened", lambda: s.breaker()[0] == "open", 15,
                    lambda: f"breaker {s.breaker()}, outbox {s.outbox()}")
        (status,) = await cli(s.config, "outbox", "status", "--json")
        assert status["breaker"] == "open" and status["consecutive_failures"] >= 5, status
        assert "ConnectError" in (status["last_error"] or ""), status
        probe_ms = s.breaker()[1]
        opened_ms = s.query("SELECT breaker_opened_ms FROM outbox_targets")[0][0]
        assert probe_ms is not None and opened_ms is not None
        assert 8000 <= probe_ms - opened_ms <= 12_000, "not the [outbox] cool-down"
        # The upstream answers again, but only 503s; nothing may reach it before the probe.
        await peer.start()
        peer.inject(Fault(status=503), times=1000)
        reopened_at = len(peer.requests)
        # Taps keep coming while the breaker is open, and are acknowledged at once.
        acks = [await s.tap(2, [(n, LATE) for n in range(16, 20)]),
                await s.tap(1, [(n, LEAVING) for n in range(8)])]
        assert max(acks) < 2.0, acks
        await asyncio.sleep(max(0.0, (probe_ms - 1500) / 1000 - time.time()))
        assert len(peer.requests) == reopened_at, "a request reached the upstream before the probe"
        # 16 check-ins and their voided absences, 4 late (check-in, late, void), 8 check-outs
        assert s.outbox().get("pending", 0) == 32 + 12 + 8
        peer.clear_faults()  # back for good, just before the probe
        await s.drained(probe_ms / 1000 - time.time() + 25)
        assert s.breaker()[0] == "closed"
        assert await asyncio.to_thread(s.gateway.terminate) == 0
    resent = await check_exactly_once(s)
    print(f"breaker opened, probed after {(probe_ms - opened_ms) / 1000:.1f} s; then "
          f"{len(peer.requests) - reopened_at} requests, {sum(resent.values())} POSTs repeated, "
          f"{len(peer.records)} records")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_tokens_expiring_mid_batch(tmp_path: Path, mosquitto_broker: MosquittoBroker,
                                         peer: Peer) -> None:
    # The peer's token clock advances 0.1 s per request it gets: its 2 s tokens die every 20
    # requests, in the middle of batches of 20 sent 4 at a time, whatever the gateway's clock
    # says (the adapter refreshes by its own clock too, shortly before expires_in).
    peer.token_ttl_s = 2.0
    peer.clock = lambda: len(peer.requests) * 0.1
    async with school(tmp_path, mosquitto_broker, peer, max_batch=20) as s:
        await s.tap(1, [(n, ON_TIME) for n in range(16)])
        await s.tap(2, [(n, LATE) for n in range(16, 20)])
        await s.tap(1, [(n, LEAVING) for n in range(10)])
        await s.drained(20)
        peer.expire_tokens()  # and all at once, between batches
        await s.tap(2, [(n, LEAVING) for n in range(10, 20)])
        await s.drained(20)
        assert await asyncio.to_thread(s.gateway.terminate) == 0
    await check_exactly_once(s)
    refused = sum(1 for r in peer.requests if r.status == 401)
    assert refused >= 2, "no token expired mid-batch"
    assert peer.tokens_issued >= 3
    print(f"{peer.tokens_issued} tokens, {refused} requests refused with 401 and repeated")
