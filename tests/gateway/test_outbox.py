"""The outbox (gateway/outbox.py): enqueue with the event, batches and concurrency, retries,
Retry-After, the circuit breaker, parking and operator retries, pause/resume, the operator's
probe, the order of an event's revisions, a crash mid-delivery, graceful stop, metrics, config
(``[[forward]]``, ``[outbox]``) and the operator's CLI.

The upstream here is a test adapter over an in-memory peer that dedups on the idempotency key,
as the real peers do (sim/peers/); the adapters' own HTTP behaviour is tested with theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.machinery
import json
import logging
import random
import sqlite3
import sys
import types
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from gateway import db, outbox
from gateway.cli import build_parser
from gateway.commands.run import run as run_gateway
from gateway.config import AttendanceConfig, ConfigError, OutboxConfig, Session, load_config
from gateway.forwarders import AttendanceItem, DeliveryResult, ForwardTarget, TargetDown
from gateway.ingest import Ingest
from gateway.logs import JsonFormatter
from gateway.metrics import GatewayMetrics
from gateway.outbox import (
    DEFAULT_POLICY,
    Breaker,
    BreakerRow,
    Enqueuer,
    OutboxError,
    OutboxPolicy,
    OutboxService,
    TargetDelivery,
    build_adapter,
    policy_from_config,
    retry_delay_s,
)
from gateway.rules import AttendanceRules, EventChange, EventKind, event_key, to_ms
from gateway.types import StaticKeyRing, StoredScan
from sim.broker import MosquittoBroker

TZ = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
MONDAY = dt.date(2026, 9, 7)
NOW = to_ms(dt.datetime(2026, 9, 7, 7, 30, tzinfo=TZ))
POLICY = OutboxPolicy(poll_s=0.01, retry_initial_s=5.0, retry_cap_s=40.0, jitter=0.0,
                      breaker_failures=3, breaker_cooldown_s=30.0, breaker_cooldown_cap_s=120.0,
                      probe_batch=1, stop_timeout_s=0.5, status_every_s=0.02,
                      db_error_hold_s=0.05)
NAMES = {"S1": "Nguyễn Văn An", "S2": "Trần Thị Bình", "S3": "Lê Minh Châu"}
PEER_MODULE = "gateway.forwarders.outboxtestpeer"


class FakeClock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class Peer:
    """The upstream: keeps one record per idempotency key, counts every request for it."""

    def __init__(self) -> None:
        self.records: dict[str, AttendanceItem] = {}
        self.received: list[str] = []

    def accept(self, item: AttendanceItem) -> DeliveryResult:
        self.received.append(item.idempotency_key)
        self.records.setdefault(item.idempotency_key, item)
        return DeliveryResult(item.item_id, "delivered", upstream_id=f"up-{item.event_key[:6]}")


Answer = Callable[[AttendanceItem], DeliveryResult | None]


class FakeAdapter:
    """A test adapter: records each batch, answers per item through ``answer`` (None: deliver
    to the peer), or fails the whole batch with ``down``; ``gate`` holds deliveries."""

    def __init__(self, name: str = "edfi", *, max_batch: int = 10, concurrency: int = 2,
                 peer: Peer | None = None) -> None:
        self.name, self.max_batch, self.concurrency = name, max_batch, concurrency
        self.peer = peer or Peer()
        self.calls: list[list[AttendanceItem]] = []
        self.answer: Answer = lambda item: None
        self.down: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.accept_then_hang = False
        self.accept_then_fail = False
        self.in_flight = self.max_in_flight = 0
        self.closed = False

    @property
    def keys(self) -> list[str]:
        return [i.idempotency_key for batch in self.calls for i in batch]

    async def deliver(self, items: Sequence[AttendanceItem]) -> list[DeliveryResult]:
        self.calls.append(list(items))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.accept_then_hang:  # the upstream has them; our process never hears back
                for item in items:
                    self.peer.accept(item)
                await asyncio.Event().wait()
            if self.accept_then_fail:  # the upstream has them; the answer is lost
                for item in items:
                    self.peer.accept(item)
                raise TargetDown("read timeout")
            if self.gate is not None:
                await self.gate.wait()
            if self.down is not None:
                raise self.down
            return [self.answer(item) or self.peer.accept(item) for item in items]
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


# -- the database ------------------------------------------------------------------------------


def school_db(path: Path, *, reader: bool = True) -> sqlite3.Connection:
    conn = db.connect(path)
    if reader:  # a stand-in, not a registered one (its key is not sealed)
        conn.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                     "VALUES (1, 'Cổng A', 'A', 'active', 0)")
        conn.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, "
                     "created_ms) VALUES (1, 1, x'00', 'active', 0)")
    conn.execute("INSERT INTO classes VALUES ('6A', 'Lớp 6A', '6', 'test')")
    for sid, name in NAMES.items():
        conn.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                     "updated_ms) VALUES (?, ?, '6A', 1, 'test', 0)", (sid, name))
    conn.execute("INSERT INTO card_numbers VALUES ('04A1B2C3', 'S1', 'test', 0)")
    return conn


def rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params).fetchall()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = school_db(db_path)
    yield connection
    connection.close()


@pytest.fixture
def read_conn(conn: sqlite3.Connection, db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(db_path, migrate=False)
    yield connection
    connection.close()


@pytest.fixture
async def ingest(conn: sqlite3.Connection, clock: FakeClock) -> AsyncIterator[Ingest]:
    ingest = Ingest(conn, StaticKeyRing({}), clock=clock)
    ingest.start()
    yield ingest
    await ingest.close()


class Events:
    """Attendance events made and changed through the ingest's writer, enqueued as the rules
    do (inside the same transaction)."""

    def __init__(self, ingest: Ingest, targets: Sequence[str], clock: FakeClock) -> None:
        self.ingest = ingest
        self.enqueue = Enqueuer(targets, clock)

    async def create(self, student: str = "S1", kind: str = "check_in",
                     session: str = "morning") -> int:
        key = event_key(kind, student, MONDAY, session)

        def make(c: sqlite3.Connection) -> int:
            cursor = c.execute(
                "INSERT INTO attendance_events (event_key, kind, student_id, school_date, "
                "session, at_ms, gate, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'A', ?)",
                (key, kind, student, MONDAY.isoformat(), session, NOW, NOW))
            event_id = int(cursor.lastrowid or 0)
            self.enqueue(c, EventChange(event_id, key, cast(EventKind, kind), "created", 0))
            return event_id

        return await self.ingest.run_in_transaction(make)

    async def change(self, event_id: int, *, void: bool = False) -> int:
        def revise(c: sqlite3.Connection) -> int:
            key, kind, revision = c.execute(
                "UPDATE attendance_events SET revision = revision + 1, at_ms = at_ms + 60000, "
                "voided_ms = ? WHERE event_id = ? RETURNING event_key, kind, revision",
                (NOW if void else None, event_id)).fetchone()
            self.enqueue(c, EventChange(event_id, key, kind, "voided" if void else "revised",
                                        revision))
            return int(revision)

        return await self.ingest.run_in_transaction(revise)

    async def many(self, count: int) -> list[int]:
        kinds = ("check_in", "check_out", "late", "absent")
        sessions = [f"s{i}" for i in range(count)]
        return [await self.create(("S1", "S2", "S3")[i % 3], kinds[i % 4], sessions[i])
                for i in range(count)]


@contextlib.asynccontextmanager
async def outbox_of(ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock,
                    *adapters: FakeAdapter, policy: OutboxPolicy = POLICY,
                    metrics: GatewayMetrics | None = None) -> AsyncIterator[OutboxService]:
    service = OutboxService(ingest, list(adapters), read_conn, metrics=metrics, clock=clock,
                            policy=policy)
    await service.start()
    try:
        yield service
    finally:
        for adapter in adapters:  # let held deliveries finish, even after a failed assertion
            if adapter.gate is not None:
                adapter.gate.set()
        for delivery in service.deliveries.values():
            await delivery.wait_idle()
        await service.close()


async def step(delivery: TargetDelivery) -> int:
    """Start what may go now and let it finish (results recorded)."""
    started = await delivery.fill()
    await delivery.wait_idle()
    return started


def states(read_conn: sqlite3.Connection, target: str = "edfi") -> dict[str, int]:
    return dict(rows(read_conn, "SELECT state, COUNT(*) FROM outbox WHERE target = ? "
                                "GROUP BY state", target))


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """The captured records as the gateway writes them (JSON lines, with their fields)."""
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) for r in caplog.records)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- enqueue in the event's transaction --------------------------------------------------------


def test_an_event_never_exists_without_its_outbox_rows(conn: sqlite3.Connection,
                                                       clock: FakeClock) -> None:
    session = Session("morning", dt.time(7), dt.time(7, 15), dt.time(8, 30), dt.time(11, 30))
    rules = AttendanceRules(AttendanceConfig(sessions=(session,)), TZ, 120, clock,
                            listeners=[Enqueuer(["edfi", "relay"], clock)])
    at = to_ms(dt.datetime(2026, 9, 7, 7, 20, tzinfo=TZ))
    conn.execute("INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, clock_synced, "
                 "ticks_ms, received_ms, at_ms, time_source, key_id, raw) VALUES "
                 "(1, 1, 1, 'iso14443a:04A1B2C3', ?, 1, 0, ?, ?, 'reader', 1, x'00')",
                 (at, at, at))
    scan = StoredScan(1, 1, "A", "iso14443a:04A1B2C3", at, "reader")

    conn.execute("BEGIN IMMEDIATE")  # the ingest's transaction, rolled back
    rules.on_scans(conn, [scan])
    assert rows(conn, "SELECT COUNT(*) FROM outbox") == [(4,)]  # check_in + late, 2 targets
    conn.execute("ROLLBACK")
    assert rows(conn, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert rows(conn, "SELECT COUNT(*) FROM attendance_events") == [(0,)]

    # An outbox that cannot take the row fails the rules, which undo the event.
    conn.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON outbox "
                 "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        rules.on_scans(conn, [scan])
    assert rows(conn, "SELECT COUNT(*) FROM attendance_events") == [(0,)]
    conn.execute("COMMIT")
    conn.execute("DROP TRIGGER full")

    conn.execute("BEGIN IMMEDIATE")
    rules.on_scans(conn, [scan])
    conn.execute("COMMIT")
    check_in = event_key("check_in", "S1", MONDAY, "morning")
    late = event_key("late", "S1", MONDAY, "morning")
    assert sorted(rows(conn, "SELECT target, idempotency_key, revision, change, state, attempts, "
                             "next_attempt_ms FROM outbox")) == sorted(
        (t, f"{k}.0", 0, "created", "pending", 0, NOW)
        for t in ("edfi", "relay") for k in (check_in, late))
    # A listener called again for the same version adds nothing.
    Enqueuer(["edfi"], clock)(conn, EventChange(1, check_in, "check_in", "created", 0))
    assert rows(conn, "SELECT COUNT(*) FROM outbox") == [(4,)]


# -- batches, concurrency, exactly once --------------------------------------------------------


async def test_batches_of_max_batch_with_at_most_concurrency_in_flight(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter(max_batch=10, concurrency=2)
    adapter.gate = asyncio.Event()
    events = Events(ingest, ["edfi"], clock)
    await events.many(25)
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        assert await delivery.fill() == 2
        assert await delivery.fill() == 0  # both slots taken
        assert [len(b) for b in adapter.calls] == [10, 10] and delivery.in_flight == 2
        adapter.gate.set()
        await delivery.wait_idle()
        assert await step(delivery) == 1
    assert [len(b) for b in adapter.calls] == [10, 10, 5] and adapter.max_in_flight == 2
    assert states(read_conn) == {"delivered": 25}
    # in event order, each item once; delivered rows keep what the upstream said
    assert [i.item_id for b in adapter.calls for i in b] == list(range(1, 26))
    assert len(adapter.peer.records) == 25
    assert rows(read_conn, "SELECT DISTINCT attempts, delivered_ms FROM outbox") == [(1, NOW)]
    assert rows(read_conn, "SELECT upstream_id FROM outbox WHERE item_id = 1")[0][0].startswith(
        "up-")
    first = adapter.calls[0][0]
    assert (first.student_id, first.class_id, first.kind, first.school_date, first.session,
            first.change, first.revision, first.attempts, first.gate) == (
        "S1", "6A", "check_in", "2026-09-07", "s0", "created", 0, 0, "A")
    assert first.idempotency_key == f"{first.event_key}.0"
    assert adapter.closed


async def test_retries_after_a_lost_answer_keep_the_key_so_the_upstream_records_once(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.many(3)
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        adapter.accept_then_fail = True
        await step(delivery)
        assert states(read_conn) == {"pending": 3}
        assert rows(read_conn, "SELECT DISTINCT attempts, last_error FROM outbox") == [
            (1, "read timeout")]
        adapter.accept_then_fail = False
        assert await step(delivery) == 0  # backing off
        clock.advance(5)
        await step(delivery)
    assert states(read_conn) == {"delivered": 3}
    assert len(adapter.keys) == 6 and adapter.keys[:3] == adapter.keys[3:]
    assert len(adapter.peer.received) == 6 and len(adapter.peer.records) == 3
    assert sorted(adapter.peer.records) == sorted(set(adapter.keys))
    assert rows(read_conn, "SELECT DISTINCT attempts FROM outbox") == [(2,)]


async def test_retry_after_is_honoured_for_the_items_and_the_target(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter(max_batch=1, concurrency=1)
    events = Events(ingest, ["edfi"], clock)
    await events.many(2)
    adapter.answer = lambda item: DeliveryResult(item.item_id, "retry", "HTTP 429",
                                                 retry_after_s=120)
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        assert await step(delivery) == 1
        # the first item waits 120 s (not the 5 s backoff); the target too, so the second
        # item (due now) is not sent into the rate limit
        assert rows(read_conn, "SELECT item_id, attempts, next_attempt_ms, last_error "
                               "FROM outbox ORDER BY item_id") == [
            (1, 1, NOW + 120_000, "HTTP 429"), (2, 0, NOW, None)]
        assert await step(delivery) == 0
        clock.advance(119.9)
        assert await step(delivery) == 0
        adapter.answer = lambda item: None
        clock.advance(0.1)
        await step(delivery)
        await step(delivery)
    assert [b[0].item_id for b in adapter.calls] == [1, 1, 2]
    assert states(read_conn) == {"delivered": 2}
    assert delivery.breaker.state == "closed"  # a 429 is no target failure


async def test_backoff_grows_per_attempt_up_to_the_cap(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.create()
    adapter.answer = lambda item: DeliveryResult(item.item_id, "retry", "HTTP 500")
    waits = []
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        for _ in range(6):
            assert await step(delivery) == 1
            (due,) = rows(read_conn, "SELECT next_attempt_ms FROM outbox")[0]
            waits.append((due - clock()) / 1000)
            assert await step(delivery) == 0
            clock.now = due
    assert waits == [5, 10, 20, 40, 40, 40]
    assert rows(read_conn, "SELECT attempts, state FROM outbox") == [(6, "pending")]
    assert delivery.breaker.state == "closed"  # item failures are not target failures
    jittered = [retry_delay_s(3, OutboxPolicy(retry_initial_s=5, jitter=0.2), random.Random(i))
                for i in range(50)]
    assert all(16 <= w <= 24 for w in jittered) and len(set(jittered)) > 1


async def test_the_breaker_opens_probes_half_open_and_closes(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.outbox")
    adapter = FakeAdapter(max_batch=2, concurrency=1)
    events = Events(ingest, ["edfi"], clock)
    await events.many(8)
    adapter.down = TargetDown("connection refused")
    metrics = ingest.metrics
    async with outbox_of(ingest, read_conn, clock, adapter, metrics=metrics) as service:
        delivery = service.deliveries["edfi"]
        for _ in range(3):  # three batches fail: the breaker opens
            assert await step(delivery) == 1
        assert delivery.breaker.state == "open"
        assert rows(read_conn, "SELECT breaker, consecutive_failures, breaker_opened_ms, "
                               "breaker_probe_ms, last_error FROM outbox_targets") == [
            ("open", 3, NOW, NOW + 30_000, "connection refused")]
        clock.advance(29)  # items 7 and 8 are due, but nothing goes while open
        assert await step(delivery) == 0
        clock.advance(1)
        assert await step(delivery) == 1  # one probe of one item; still down
        assert len(adapter.calls[-1]) == 1 and delivery.breaker.state == "open"
        assert rows(read_conn, "SELECT breaker_probe_ms - ? FROM outbox_targets",
                    clock()) == [(60_000,)]  # the cool-down doubled
        adapter.down = None
        clock.advance(60)
        adapter.gate = asyncio.Event()
        assert await delivery.fill() == 1
        assert delivery.breaker.state == "half_open" and await delivery.fill() == 0
        adapter.gate.set()
        await delivery.wait_idle()
        assert delivery.breaker.state == "closed"
        while await step(delivery):
            pass
    assert states(read_conn) == {"delivered": 8}
    assert rows(read_conn, "SELECT breaker, consecutive_failures, breaker_probe_ms "
                           "FROM outbox_targets") == [("closed", 0, None)]
    assert metrics.outbox_target_failures.labels("edfi")._value.get() == 4
    assert metrics.outbox_delivered.labels("edfi")._value.get() == 8
    assert [r.getMessage() for r in caplog.records if "breaker" in r.getMessage()] == [
        "outbox breaker opened", "outbox breaker half-open: probing", "outbox breaker opened",
        "outbox breaker half-open: probing", "outbox breaker closed"]


async def test_items_of_failed_probes_go_as_soon_as_the_breaker_closes(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    # An item probed again and again during a long outage has a backoff of its own that grows
    # past the breaker's cool-down; once a probe gets an answer it must not wait that out.
    policy = OutboxPolicy(poll_s=0.01, retry_initial_s=5.0, retry_cap_s=600.0, jitter=0.0,
                          breaker_failures=3, breaker_cooldown_s=30.0,
                          breaker_cooldown_cap_s=60.0, probe_batch=1)
    adapter = FakeAdapter(max_batch=2, concurrency=1)
    events = Events(ingest, ["edfi"], clock)
    await events.many(8)
    adapter.down = TargetDown("connection refused")
    async with outbox_of(ingest, read_conn, clock, adapter, policy=policy) as service:
        delivery = service.deliveries["edfi"]
        for _ in range(3):
            assert await step(delivery) == 1
        for _ in range(4):  # the first item is the probe each time; its backoff: 10 ... 80 s
            clock.now = delivery.breaker.row.probe_ms or 0
            assert await step(delivery) == 1
        assert {batch[0].item_id for batch in adapter.calls[3:]} == {1}
        (waiting,) = rows(read_conn, "SELECT next_attempt_ms FROM outbox WHERE item_id = 1")
        adapter.down = None
        clock.now = delivery.breaker.row.probe_ms or 0
        assert waiting[0] > clock.now  # not due at the next probe
        while await step(delivery):
            pass
        assert delivery.breaker.state == "closed"
    assert states(read_conn) == {"delivered": 8}


async def test_the_breaker_survives_a_restart(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter(max_batch=1, concurrency=1)
    events = Events(ingest, ["edfi"], clock)
    await events.many(3)
    adapter.down = TargetDown("HTTP 503 on login", retry_after_s=300)
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        for i in range(3):
            if i:
                assert await step(service.deliveries["edfi"]) == 0  # the whole target waits
                clock.advance(300)
            assert await step(service.deliveries["edfi"]) == 1
    # Retry-After longer than the cool-down: no probe before it
    assert rows(read_conn, "SELECT breaker, breaker_probe_ms FROM outbox_targets") == [
        ("open", clock() + 300_000)]
    adapter.down = None
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        assert delivery.breaker.state == "open" and await step(delivery) == 0
        clock.advance(300)
        assert await step(delivery) == 1 and delivery.breaker.state == "closed"


async def test_an_adapter_bug_is_a_target_failure_and_its_message_is_not_kept(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.create()
    adapter.down = KeyError(f"{NAMES['S1']} 0123456789")
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        await step(service.deliveries["edfi"])
    assert rows(read_conn, "SELECT state, attempts, last_error FROM outbox") == [
        ("pending", 1, "adapter error: KeyError")]
    assert rows(read_conn, "SELECT consecutive_failures FROM outbox_targets") == [(1,)]
    text = logged(caplog)
    assert "adapter error: KeyError" in text and '"at": "test_outbox.py:' in text
    assert "0123456789" not in text and NAMES["S1"] not in text


async def test_a_deliver_call_that_never_answers_is_a_target_failure(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    adapter.gate = asyncio.Event()  # never set: the adapter's own timeouts failed
    events = Events(ingest, ["edfi"], clock)
    await events.create()
    policy = OutboxPolicy(deliver_timeout_s=0.05)
    async with outbox_of(ingest, read_conn, clock, adapter, policy=policy) as service:
        await service.deliveries["edfi"].fill()
        await service.deliveries["edfi"].wait_idle()
        assert rows(read_conn, "SELECT state, attempts, last_error FROM outbox") == [
            ("pending", 1, "no answer from the adapter within 0.05 s")]
        assert service.deliveries["edfi"].breaker.row.failures == 1


async def test_an_item_without_a_result_is_retried_and_stray_results_are_ignored(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.many(2)

    async def half(items: Sequence[AttendanceItem]) -> list[DeliveryResult]:
        return [adapter.peer.accept(items[0]), DeliveryResult(999, "delivered"),
                DeliveryResult(items[0].item_id, "parked", "a repeat is ignored")]

    adapter.deliver = half  # type: ignore[method-assign]
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        await step(service.deliveries["edfi"])
    assert rows(read_conn, "SELECT item_id, state, last_error FROM outbox ORDER BY item_id") == [
        (1, "delivered", None), (2, "pending", "the adapter returned no result for this item")]


# -- parking and the operator ------------------------------------------------------------------


async def test_a_parked_item_waits_for_the_operator_then_goes(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock, db_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.many(3)
    reason = "HTTP 409 urn:ed-fi:api:conflict:unresolved-reference: Student is not found"
    adapter.answer = lambda item: (DeliveryResult(item.item_id, "parked", reason)
                                   if item.student_id == "S2" else None)
    metrics = ingest.metrics
    async with outbox_of(ingest, read_conn, clock, adapter, metrics=metrics) as service:
        delivery = service.deliveries["edfi"]
        await step(delivery)
        assert rows(read_conn, "SELECT item_id, state, parked_reason FROM outbox "
                               "WHERE state = 'parked'") == [(2, "parked", reason)]
        clock.advance(86_400)
        assert await step(delivery) == 0  # parked stays parked
        cli = db.connect(db_path, migrate=False)  # the operator's CLI: another connection
        try:
            with pytest.raises(OutboxError, match="1: delivered, not parked; 7: no such item"):
                outbox.retry_parked(cli, "edfi", [1, 2, 7], clock())
            assert outbox.retry_parked(cli, "relay", None, clock()) == []
            adapter.answer = lambda item: None  # the roster was fixed upstream
            assert outbox.retry_parked(cli, "edfi", [2], clock()) == [2]
        finally:
            cli.close()
        await step(delivery)
    assert states(read_conn) == {"delivered": 3}
    assert rows(read_conn, "SELECT attempts, parked_reason FROM outbox WHERE item_id = 2") == [
        (2, reason)]
    assert metrics.outbox_parked.labels("edfi")._value.get() == 1
    text = logged(caplog)
    assert '"event": "outbox item parked"' in text and reason in text and '"item_id": 2' in text
    assert not any(name in text for name in NAMES.values()) and '"S2"' not in text


async def test_pause_and_resume_reach_the_running_loop(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock, db_path: Path) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    cli = db.connect(db_path, migrate=False)
    service = OutboxService(ingest, [adapter], read_conn, clock=clock, policy=POLICY)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: "edfi" in service.deliveries)
        assert outbox.set_paused(cli, "edfi", True, clock())
        assert not outbox.set_paused(cli, "edfi", True, clock())
        await until(lambda: service.deliveries["edfi"].paused)
        await events.create()
        await asyncio.sleep(0.1)
        assert adapter.calls == []  # enqueued, not sent
        assert states(read_conn) == {"pending": 1}
        assert outbox.set_paused(cli, "edfi", False, clock())
        await until(lambda: states(read_conn) == {"delivered": 1})
        await events.create("S2")  # and new items go at once
        await until(lambda: states(read_conn) == {"delivered": 2})
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        cli.close()
    assert adapter.closed


# -- the order of an event's revisions ---------------------------------------------------------


async def test_a_revision_never_overtakes_the_one_in_flight(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter(concurrency=2)
    adapter.gate = asyncio.Event()
    events = Events(ingest, ["edfi"], clock)
    event = await events.create()
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        assert await delivery.fill() == 1  # revision 0 in flight
        await events.change(event)
        other = await events.create("S2")
        assert await delivery.fill() == 1  # the other event goes; revision 1 waits
        await asyncio.sleep(0)  # the batch's task starts
        assert [i.revision for i in adapter.calls[1]] == [0]
        assert adapter.calls[1][0].student_id == "S2"
        adapter.gate.set()
        await delivery.wait_idle()
        await step(delivery)
    key = event_key("check_in", "S1", MONDAY, "morning")
    assert [k for k in adapter.keys if k.startswith(key)] == [f"{key}.0", f"{key}.1"]
    assert states(read_conn) == {"delivered": 3} and other != event


async def test_a_new_version_carries_the_upstream_id_of_the_last_delivered_one(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    """So an adapter can update or delete the upstream record by its id, also after a restart."""
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    event = await events.create("S1", "late")
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        await step(service.deliveries["edfi"])
        await events.change(event, void=True)
        await step(service.deliveries["edfi"])
    first, void = [i for b in adapter.calls for i in b]
    assert first.upstream_id is None  # nothing delivered before it
    assert (void.change, void.upstream_id) == ("voided", f"up-{first.event_key[:6]}")


def test_picking_reads_the_events_rows_not_the_whole_target(read_conn: sqlite3.Connection
                                                             ) -> None:
    # Delivered rows stay 90 days (hundreds of thousands for a big school): the upstream-id
    # lookup of each picked item must be an index search, not a scan of the target's rows.
    plan = [str(tuple(r)[3]) for r in read_conn.execute(
        "EXPLAIN QUERY PLAN " + outbox._PICK.format(exclude=""), ("edfi", NOW, 50))]
    lookups = [p for p in plan if p.startswith("SEARCH d ")]
    assert len(lookups) == 1 and "idempotency_key>?" in lookups[0], plan


async def test_only_the_newest_pending_version_is_sent(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    event = await events.create("S1", "late")
    await events.change(event)
    await events.change(event, void=True)  # a backlog disproved the late arrival
    metrics = ingest.metrics
    async with outbox_of(ingest, read_conn, clock, adapter, metrics=metrics) as service:
        await step(service.deliveries["edfi"])
    assert [(i.revision, i.change, i.kind) for b in adapter.calls for i in b] == [
        (2, "voided", "late")]
    assert rows(read_conn, "SELECT revision, state FROM outbox ORDER BY revision") == [
        (0, "superseded"), (1, "superseded"), (2, "delivered")]
    assert metrics.outbox_superseded.labels("edfi")._value.get() == 2


async def test_a_newer_version_replaces_a_parked_one_and_a_stale_retry(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock, db_path: Path) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    event = await events.create()
    adapter.answer = lambda item: DeliveryResult(item.item_id, "parked", "HTTP 400")
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        delivery = service.deliveries["edfi"]
        await step(delivery)
        await events.change(event)
        adapter.answer = lambda item: None
        await step(delivery)
        assert rows(read_conn, "SELECT revision, state FROM outbox ORDER BY revision") == [
            (0, "superseded"), (1, "delivered")]
        # A target that missed a version (disabled then) still gets the current one.
        await events.change(event)
        await ingest.run_in_transaction(lambda c: c.execute(
            "DELETE FROM outbox WHERE revision = 2"))
        await ingest.run_in_transaction(lambda c: c.execute(
            "UPDATE outbox SET state = 'parked' WHERE revision = 0"))
        cli = db.connect(db_path, migrate=False)
        try:
            assert outbox.retry_parked(cli, "edfi", None, clock()) == [1]
        finally:
            cli.close()
        await step(delivery)
        await step(delivery)
    assert [(i.revision, i.change) for b in adapter.calls for i in b] == [
        (0, "created"), (1, "revised"), (2, "revised")]
    assert rows(read_conn, "SELECT revision, state FROM outbox ORDER BY item_id") == [
        (0, "superseded"), (1, "delivered"), (2, "delivered")]


# -- crashes and stops -------------------------------------------------------------------------


async def test_kill_9_mid_delivery_sends_again_under_the_same_keys(
        conn: sqlite3.Connection, db_path: Path, clock: FakeClock) -> None:
    """The upstream accepted a batch but the process died before recording it: after the
    restart the batch goes again with the same idempotency keys, and the peer keeps one."""
    peer = Peer()
    first = Ingest(conn, StaticKeyRing({}), clock=clock)
    first.start()
    events = Events(first, ["edfi"], clock)
    await events.many(4)
    adapter = FakeAdapter(max_batch=10, peer=peer)
    adapter.accept_then_hang = True
    reads = db.connect(db_path, migrate=False)
    service = OutboxService(first, [adapter], reads, clock=clock,
                            policy=OutboxPolicy(poll_s=0.01, stop_timeout_s=0.01))
    task = asyncio.create_task(service.run(asyncio.Event()))
    await until(lambda: len(peer.received) == 4)
    # kill -9: the process is gone; nothing after the upstream's answer ran
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await first.close()
    reads.close()
    conn.close()

    conn2 = db.connect(db_path)  # the restart
    reads2 = db.connect(db_path, migrate=False)
    try:
        assert rows(reads2, "SELECT DISTINCT state, attempts FROM outbox") == [("pending", 0)]
        second = Ingest(conn2, StaticKeyRing({}), clock=clock)
        second.start()
        again = FakeAdapter(max_batch=10, peer=peer)
        async with outbox_of(second, reads2, clock, again) as restarted:
            await step(restarted.deliveries["edfi"])
        await second.close()
        assert rows(reads2, "SELECT DISTINCT state, attempts FROM outbox") == [("delivered", 1)]
    finally:
        reads2.close()
        conn2.close()
    assert again.keys == adapter.keys  # the same keys, so ...
    assert len(peer.received) == 8 and len(peer.records) == 4  # ... the peer has each once


async def test_a_graceful_stop_waits_for_deliveries_in_flight_up_to_a_bound(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    slow, stuck = FakeAdapter("edfi"), FakeAdapter("relay")
    slow.gate, stuck.gate = asyncio.Event(), asyncio.Event()
    events = Events(ingest, ["edfi", "relay"], clock)
    await events.many(2)
    service = OutboxService(ingest, [slow, stuck], read_conn, clock=clock,
                            policy=OutboxPolicy(poll_s=0.01, stop_timeout_s=0.3))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await until(lambda: bool(slow.calls and stuck.calls))
    stop.set()
    await asyncio.sleep(0.05)
    slow.gate.set()  # finishes within the bound: recorded
    await asyncio.wait_for(task, 5)
    assert states(read_conn, "edfi") == {"delivered": 2}
    assert states(read_conn, "relay") == {"pending": 2}  # nothing lost: sent after a restart
    assert rows(read_conn, "SELECT DISTINCT attempts FROM outbox WHERE target = 'relay'") == [
        (0,)]
    assert slow.closed and stuck.closed
    assert "outbox stopped with deliveries in flight" in caplog.text


async def test_results_not_recorded_are_sent_again(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter()
    events = Events(ingest, ["edfi"], clock)
    await events.create()

    class Failing:
        calls = 0

        def run_in_transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
            if getattr(fn, "func", None) is outbox.record and not Failing.calls:
                Failing.calls += 1

                async def fail() -> Any:
                    raise RuntimeError("the transaction failed (see the log)")
                return fail()
            return ingest.run_in_transaction(fn)

    service = OutboxService(Failing(), [adapter], read_conn, clock=clock, policy=POLICY)
    await service.start()
    delivery = service.deliveries["edfi"]
    await step(delivery)
    assert states(read_conn) == {"pending": 1} and delivery.hold_until_ms > clock()
    clock.advance(1)
    await step(delivery)
    assert states(read_conn) == {"delivered": 1}
    assert len(set(adapter.keys)) == 1 and len(adapter.keys) == 2


# -- metrics, status, prune --------------------------------------------------------------------


async def test_metrics_and_status(ingest: Ingest, read_conn: sqlite3.Connection,
                                  clock: FakeClock) -> None:
    metrics = ingest.metrics
    adapter, other = FakeAdapter("edfi"), FakeAdapter("relay")
    events = Events(ingest, ["edfi", "relay"], clock)
    await events.create("S1")  # before the service: not counted as enqueued by it
    service = OutboxService(ingest, [adapter, other], read_conn, metrics=metrics, clock=clock,
                            policy=POLICY)
    await service.start()
    await events.many(3)
    adapter.answer = lambda item: (DeliveryResult(item.item_id, "parked", "HTTP 400")
                                   if item.student_id == "S2" else None)
    await step(service.deliveries["edfi"])
    clock.advance(90)
    await service.refresh()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("attendance_outbox_items_enqueued_total", target="edfi") == 3
    assert sample("attendance_outbox_items_enqueued_total", target="relay") == 3
    assert sample("attendance_outbox_items_delivered_total", target="edfi") == 3
    assert sample("attendance_outbox_items_parked_total", target="edfi") == 1
    assert sample("attendance_outbox_pending", target="edfi") == 0
    assert sample("attendance_outbox_pending", target="relay") == 4
    assert sample("attendance_outbox_parked", target="edfi") == 1
    assert sample("attendance_outbox_oldest_pending_age_seconds", target="relay") == 90
    assert sample("attendance_outbox_oldest_pending_age_seconds", target="edfi") == 0
    assert sample("attendance_outbox_breaker_state", target="edfi", state="closed") == 1
    assert sample("attendance_outbox_breaker_state", target="edfi", state="open") == 0
    assert sample("attendance_outbox_paused", target="relay") == 0
    found = outbox.status(read_conn, since_ms=NOW)
    assert (found["edfi"].pending, found["edfi"].parked, found["edfi"].delivered_since) == (
        0, 1, 3)
    assert (found["relay"].pending, found["relay"].oldest_pending_ms) == (4, NOW)
    await service.close()


async def test_settled_items_are_pruned_by_age_parked_and_pending_never(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    adapter = FakeAdapter(max_batch=2)
    events = Events(ingest, ["edfi"], clock)
    event = await events.create("S1")
    await events.change(event)  # revision 0 is superseded
    await events.many(3)
    adapter.answer = lambda item: (DeliveryResult(item.item_id, "parked", "HTTP 400")
                                   if item.student_id == "S2" else None)
    async with outbox_of(ingest, read_conn, clock, adapter) as service:
        await step(service.deliveries["edfi"])
    await events.create("S3", "absent")  # still pending
    assert states(read_conn) == {"delivered": 3, "parked": 1, "pending": 1, "superseded": 1}
    pruned = await ingest.run_in_transaction(lambda c: outbox.prune(c, before_ms=NOW + 1))
    assert pruned == 4
    assert states(read_conn) == {"parked": 1, "pending": 1}
    assert await ingest.run_in_transaction(lambda c: outbox.prune(c, before_ms=NOW + 1)) == 0


async def test_settled_items_are_pruned_even_with_every_target_turned_off(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock) -> None:
    """Found by the threat model's tests: with no adapter the service returned at once, so a
    gateway whose targets (or notification channels) were turned off kept old items for ever."""
    events = Events(ingest, ["edfi"], clock)
    await events.many(2)
    async with outbox_of(ingest, read_conn, clock, FakeAdapter()) as service:
        await step(service.deliveries["edfi"])
    assert states(read_conn) == {"delivered": 2}
    clock.advance(POLICY.retention_ms / 1000 + 60)
    service = OutboxService(ingest, [], read_conn, clock=clock, policy=POLICY)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    async with asyncio.timeout(5):
        while states(read_conn):
            await asyncio.sleep(0.01)
    stop.set()
    await task


# -- configuration and adapters ----------------------------------------------------------------


@pytest.fixture
def peer_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``type = "outboxtestpeer"``: an adapter module that builds FakeAdapters."""
    module = types.ModuleType(PEER_MODULE)
    module.__spec__ = importlib.machinery.ModuleSpec(PEER_MODULE, None)
    module.built = []  # type: ignore[attr-defined]
    module.adapters = []  # type: ignore[attr-defined]

    def build(target: ForwardTarget, *, clock: Any, config_path: Path | None = None
              ) -> FakeAdapter:
        if target.settings.get("fail"):
            raise ConfigError(Path("elsewhere.toml"), f"forward.{target.name}.fail", "refused")
        adapter = FakeAdapter(target.name, max_batch=target.max_batch,
                              concurrency=target.concurrency)
        module.built.append((target, config_path))
        module.adapters.append(adapter)
        return adapter

    module.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, PEER_MODULE, module)
    return module


def write_config(tmp_path: Path, forward: str, extra: str = "") -> Path:
    path = tmp_path / "etc" / "gateway.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text('[gateway]\nschool = "thcs-a"\ndatabase = "gateway.db"\n'
                    'master_key_file = "master.key"\n' + extra + forward, encoding="utf-8")
    return path


FORWARD = ('[[forward]]\nname = "so-gd"\ntype = "outboxtestpeer"\nmax_batch = 7\n'
           'concurrency = 3\nbase_url = "http://127.0.0.1:1"\nsecret_file = "edfi.secret"\n'
           '[forward.terms]\nyear = 2026\n'
           '[[forward]]\nname = "relay"\ntype = "outboxtestpeer"\nenabled = false\n')


def test_forward_tables_become_targets(tmp_path: Path, peer_module: types.ModuleType) -> None:
    config = load_config(write_config(tmp_path, FORWARD))
    first, second = config.forward
    assert (first.name, first.type, first.max_batch, first.concurrency, first.enabled) == (
        "so-gd", "outboxtestpeer", 7, 3, True)
    assert dict(first.settings) == {"base_url": "http://127.0.0.1:1",
                                    "secret_file": str(tmp_path / "etc" / "edfi.secret"),
                                    "terms": {"year": 2026}}
    assert (second.max_batch, second.concurrency, second.enabled) == (50, 2, False)
    assert config.path == tmp_path / "etc" / "gateway.toml"
    adapter = build_adapter(first, clock=FakeClock(), config_path=config.path)
    assert (adapter.name, adapter.max_batch, adapter.concurrency) == ("so-gd", 7, 3)
    assert peer_module.built[-1] == (first, config.path)


@pytest.mark.parametrize(("forward", "key", "reason"), [
    ('[[forward]]\ntype = "outboxtestpeer"\n', "forward[0].name", "is required"),
    ('[[forward]]\nname = "Sở GD"\ntype = "outboxtestpeer"\n', "forward[0].name", "a-z 0-9"),
    ('[[forward]]\nname = "a"\ntype = "edfy"\n', "forward.a.type", "unknown type 'edfy'"),
    ('[[forward]]\nname = "a"\ntype = "../x"\n', "forward.a.type", "unknown type"),
    ('[[forward]]\nname = "a"\n', "forward.a.type", "is required"),
    ('[[forward]]\nname = "a"\ntype = "outboxtestpeer"\nmax_batch = 0\n', "forward.a.max_batch",
     "between 1 and 1000"),
    ('[[forward]]\nname = "a"\ntype = "outboxtestpeer"\nconcurrency = 99\n',
     "forward.a.concurrency", "between 1 and 16"),
    ('[[forward]]\nname = "a"\ntype = "outboxtestpeer"\nenabled = "yes"\n',
     "forward.a.enabled", "true or false"),
    ('[[forward]]\nname = "a"\ntype = "outboxtestpeer"\n[[forward]]\nname = "a"\n'
     'type = "outboxtestpeer"\n', "forward.a.name", "used by two"),
    ('[forward]\nname = "a"\n', "forward", "array of tables"),
])
def test_bad_forward_tables_name_the_key(tmp_path: Path, peer_module: types.ModuleType,
                                         forward: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, forward))
    assert info.value.key == key
    assert reason in info.value.reason


def test_build_adapter_refuses_unknown_types_and_names_the_config(
        tmp_path: Path, peer_module: types.ModuleType) -> None:
    path = tmp_path / "gateway.toml"
    with pytest.raises(ConfigError) as info:
        build_adapter(ForwardTarget("x", "nosuchadapter"), clock=FakeClock(), config_path=path)
    assert (info.value.key, info.value.path) == ("forward.x.type", path)
    assert "unknown type 'nosuchadapter'" in info.value.reason
    with pytest.raises(ConfigError) as info:  # a helper module is no adapter
        build_adapter(ForwardTarget("x", "_common"), clock=FakeClock())
    assert "no build()" in info.value.reason
    with pytest.raises(ConfigError) as info:  # the adapter's own error, about our file
        build_adapter(ForwardTarget("x", "outboxtestpeer", {"fail": True}), clock=FakeClock(),
                      config_path=path)
    assert (info.value.path, info.value.key) == (path, "forward.x.fail")


def test_the_outbox_table_sets_the_delivery_timings(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "")).outbox == OutboxConfig()
    assert policy_from_config(OutboxConfig()) == DEFAULT_POLICY  # the same defaults
    config = load_config(write_config(tmp_path, "", (
        "[outbox]\npoll_s = 0.5\nretry_initial_s = 2\nretry_cap_s = 120.0\n"
        "breaker_failures = 3\nbreaker_cooldown_s = 4\nbreaker_cooldown_cap_s = 60\n")))
    assert config.outbox == OutboxConfig(poll_s=0.5, retry_initial_s=2.0, retry_cap_s=120.0,
                                         breaker_failures=3, breaker_cooldown_s=4.0,
                                         breaker_cooldown_cap_s=60.0)
    policy = policy_from_config(config.outbox)
    assert (policy.poll_s, policy.retry_initial_s, policy.retry_cap_s, policy.breaker_failures,
            policy.breaker_cooldown_s, policy.breaker_cooldown_cap_s) == (
        0.5, 2.0, 120.0, 3, 4.0, 60.0)
    assert (policy.jitter, policy.probe_batch) == (DEFAULT_POLICY.jitter, 1)  # not in [outbox]
    # the loop's backoff and breaker follow it
    assert retry_delay_s(1, dataclasses.replace(policy, jitter=0.0), random.Random()) == 2.0
    breaker = Breaker(dataclasses.replace(policy, jitter=0.0), random.Random())
    assert [breaker.failure(NOW, "down") for _ in range(3)] == [False, False, True]
    assert breaker.row.probe_ms == NOW + 4000


@pytest.mark.parametrize(("table", "key", "reason"), [
    ("poll_s = 0", "outbox.poll_s", "between 0.1 and 60, not 0"),
    ("poll_s = \"1s\"", "outbox.poll_s", "must be a number"),
    ("poll_s = true", "outbox.poll_s", "must be a number"),
    ("poll_s = nan", "outbox.poll_s", "between 0.1 and 60"),
    ("retry_initial_s = 0.5", "outbox.retry_initial_s", "between 1 and 3600, not 0.5"),
    ("retry_cap_s = 100000", "outbox.retry_cap_s", "between 1 and 86400"),
    ("retry_initial_s = 60\nretry_cap_s = 30", "outbox.retry_cap_s",
     "must be at least retry_initial_s (60), not 30"),
    ("breaker_failures = 0", "outbox.breaker_failures", "between 1 and 1000, not 0"),
    ("breaker_failures = 2.5", "outbox.breaker_failures", "must be an integer"),
    ("breaker_cooldown_s = -1", "outbox.breaker_cooldown_s", "between 1 and 3600"),
    ("breaker_cooldown_cap_s = 10", "outbox.breaker_cooldown_cap_s",
     "must be at least breaker_cooldown_s (30), not 10"),
    ("breaker_cooldown = 5", "outbox.breaker_cooldown", "unknown key (misspelt?)"),
    ("jitter = 0.1", "outbox.jitter", "unknown key"),
])
def test_bad_outbox_tables_name_the_key(tmp_path: Path, table: str, key: str,
                                        reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, "", f"[outbox]\n{table}\n"))
    assert info.value.key == key
    assert reason in info.value.reason


# -- the operator's CLI ------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    status = int(args.func(args))
    out, err = capsys.readouterr()
    return status, out, err


async def test_cli_status_list_retry_pause_resume(
        tmp_path: Path, peer_module: types.ModuleType, capsys: pytest.CaptureFixture[str],
        clock: FakeClock) -> None:
    path = write_config(tmp_path, FORWARD)
    c = str(path)
    db_path = path.parent / "gateway.db"
    conn, read_conn = school_db(db_path), None
    ingest = Ingest(conn, StaticKeyRing({}), clock=clock)
    ingest.start()
    try:
        read_conn = db.connect(db_path, migrate=False)
        events = Events(ingest, ["so-gd"], clock)
        clock.now = int(dt.datetime.now(TZ).timestamp() * 1000) - 300_000  # 5 minutes ago
        await events.many(3)
        adapter = FakeAdapter("so-gd")
        adapter.answer = lambda item: (DeliveryResult(
            item.item_id, "parked", "HTTP 409 unresolved reference: studentUniqueId")
            if item.student_id == "S2" else DeliveryResult(item.item_id, "retry", "HTTP 503"))
        async with outbox_of(ingest, read_conn, clock, adapter) as service:
            await step(service.deliveries["so-gd"])
    finally:
        await ingest.close()
        if read_conn is not None:
            read_conn.close()
        conn.close()

    status, out, _ = run_cli(capsys, "outbox", "status", "--config", c)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split("  ")[0] == "ĐÍCH / TARGET" and "NGẮT MẠCH / BREAKER" in lines[0]
    assert lines[1].split() == ["so-gd", "outboxtestpeer", "2", "1", "0", "5", "min", "closed",
                                "(đóng)", "đang", "gửi", "/", "running"]
    assert lines[2].split()[0] == "relay" and "tắt / disabled" in lines[2]
    assert any("1 mục tạm gác" in line and "--parked" in line for line in lines)
    status, out, _ = run_cli(capsys, "outbox", "status", "--config", c, "--json")
    report = {t["target"]: t for t in json.loads(out)}
    assert (report["so-gd"]["pending"], report["so-gd"]["parked"],
            report["so-gd"]["breaker"], report["relay"]["enabled"]) == (2, 1, "closed", False)

    status, out, _ = run_cli(capsys, "outbox", "list", "--config", c, "so-gd")
    assert status == 0 and "HTTP 503" in out and "check_in (vào)" in out and "S1" in out
    assert not any(name in out for name in NAMES.values())
    status, out, _ = run_cli(capsys, "outbox", "list", "--config", c, "so-gd", "--parked",
                             "--json")
    (parked,) = json.loads(out)
    assert (parked["item"], parked["student_id"], parked["class_id"], parked["state"]) == (
        2, "S2", "6A", "parked")
    assert parked["parked_reason"] == "HTTP 409 unresolved reference: studentUniqueId"
    status, out, _ = run_cli(capsys, "outbox", "list", "--config", c, "so-gd", "--parked")
    assert "studentUniqueId" in out and "outbox retry" in out

    status, _, err = run_cli(capsys, "outbox", "retry", "--config", c, "so-gd", "1")
    assert status == 1 and err.startswith("Không gửi lại được / 1: pending, not parked")
    status, _, err = run_cli(capsys, "outbox", "retry", "--config", c, "so-gd")
    assert status == 1 and "ITEM numbers or --all" in err
    status, out, _ = run_cli(capsys, "outbox", "retry", "--config", c, "so-gd", "2")
    assert status == 0 and "1 mục đã về hàng chờ / items back to pending: 2" in out
    status, out, _ = run_cli(capsys, "outbox", "retry", "--config", c, "so-gd", "--all")
    assert status == 0 and "nothing parked" in out

    status, out, _ = run_cli(capsys, "outbox", "pause", "--config", c, "so-gd")
    assert status == 0 and out.startswith("so-gd: đã tạm dừng / paused")
    status, out, _ = run_cli(capsys, "outbox", "pause", "--config", c, "so-gd", "--json")
    assert json.loads(out) == {"target": "so-gd", "paused": True, "changed": False}
    status, out, _ = run_cli(capsys, "outbox", "status", "--config", c)
    assert "tạm dừng / paused" in out.splitlines()[1]
    status, out, _ = run_cli(capsys, "outbox", "resume", "--config", c, "so-gd")
    assert status == 0 and "resumed" in out

    status, _, err = run_cli(capsys, "outbox", "pause", "--config", c, "nope")
    assert status == 1 and err.startswith("Không có đích chuyển tiếp này / 'nope' is not")
    assert "configured: relay, so-gd" in err
    status, _, err = run_cli(capsys, "outbox", "list", "--config", c, "so-gd", "--limit", "0")
    assert status == 1 and "--limit" in err


def test_cli_without_database_or_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    path = write_config(tmp_path, "")
    status, _, err = run_cli(capsys, "outbox", "status", "--config", str(path))
    assert status == 1 and "no database" in err
    school_db(path.parent / "gateway.db").close()
    status, out, _ = run_cli(capsys, "outbox", "status", "--config", str(path))
    assert status == 0 and "no [[forward]] targets configured" in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["outbox", "--help"])
    help_text = capsys.readouterr().out
    assert "tạm dừng" in help_text and "resume sending" in help_text


# -- the operator's probe ----------------------------------------------------------------------


def test_the_breaker_adopts_only_an_earlier_probe_of_the_same_opening() -> None:
    opened = BreakerRow("open", 3, opened_ms=NOW, probe_ms=NOW + 30_000)
    breaker = Breaker(POLICY, random.Random(), opened)
    # the row as it was before this opening (its probe time is past): ignored
    assert not breaker.adopt_probe(BreakerRow("open", 3, NOW - 60_000, NOW - 30_000))
    assert not breaker.adopt_probe(BreakerRow("closed"))
    assert not breaker.adopt_probe(None)
    assert not breaker.adopt_probe(opened)  # nothing new
    assert not breaker.adopt_probe(dataclasses.replace(opened, probe_ms=NOW + 40_000))
    assert breaker.allows(NOW + 1000) == "none"
    assert breaker.adopt_probe(dataclasses.replace(opened, probe_ms=NOW + 1000))
    assert breaker.row.probe_ms == NOW + 1000 and breaker.allows(NOW + 1000) == "probe"
    breaker.probing()  # a probe in flight: its outcome decides, not the table
    assert not breaker.adopt_probe(dataclasses.replace(opened, probe_ms=NOW))


async def test_a_probe_request_makes_one_tried_item_due_when_none_is(
        ingest: Ingest, read_conn: sqlite3.Connection, clock: FakeClock, db_path: Path) -> None:
    adapter = FakeAdapter(max_batch=1, concurrency=1)
    events = Events(ingest, ["edfi"], clock)
    await events.many(3)
    adapter.down = TargetDown("connection refused")
    cli = db.connect(db_path, migrate=False)
    try:
        with pytest.raises(OutboxError) as info:  # the gateway never ran it: no breaker
            outbox.request_probe(cli, "edfi", clock())
        assert info.value.code == "unknown_target"
        async with outbox_of(ingest, read_conn, clock, adapter) as service:
            delivery = service.deliveries["edfi"]
            with pytest.raises(OutboxError) as info:
                outbox.request_probe(cli, "edfi", clock())
            assert info.value.code == "not_open" and "the breaker is closed" in str(info.value)
            for _ in range(3):
                assert await step(delivery) == 1
            assert delivery.breaker.state == "open"  # every item waits 5 s, the probe 30 s
            # a held notification looks like this: never tried, due later; it stays held
            cli.execute("UPDATE outbox SET attempts = 0 WHERE item_id = 1")
            clock.advance(1)
            done = outbox.request_probe(cli, "edfi", clock())
            assert (done.was_probe_ms, done.probe_ms, done.released, done.failures,
                    done.last_error, done.paused) == (
                NOW + 30_000, clock(), 1, 3, "connection refused", False)
            assert rows(read_conn, "SELECT item_id FROM outbox WHERE next_attempt_ms <= ?",
                        clock()) == [(2,)]
            assert await step(delivery) == 1 and [i.item_id for i in adapter.calls[-1]] == [2]
            assert delivery.breaker.state == "open"  # still down: a longer cool-down
            assert delivery.breaker.row.probe_ms == clock() + 60_000
            again = outbox.request_probe(cli, "edfi", clock())  # item 2 waits 10 s now
            assert (again.was_probe_ms, again.released) == (clock() + 60_000, 1)
            adapter.down = None
            assert await step(delivery) == 1 and delivery.breaker.state == "closed"
            assert [i.item_id for i in adapter.calls[-1]] == [3]  # the soonest due, made due
            # the probes' items are released when it closes, the never-tried one is not
            assert rows(read_conn, "SELECT item_id FROM outbox WHERE state = 'pending' AND "
                                   "next_attempt_ms <= ?", clock()) == [(2,)]
            assert await step(delivery) == 1 and await step(delivery) == 0
            clock.advance(5)
            assert await step(delivery) == 1
        assert states(read_conn) == {"delivered": 3}
    finally:
        cli.close()


async def test_outbox_probe_makes_the_running_loop_probe_at_once(
        tmp_path: Path, peer_module: types.ModuleType, capsys: pytest.CaptureFixture[str],
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, FORWARD)
    c = str(path)
    db_path = path.parent / "gateway.db"
    monkeypatch.setattr("gateway.commands.outbox.system_clock", clock)
    conn, read_conn = school_db(db_path), db.connect(db_path, migrate=False)
    ingest = Ingest(conn, StaticKeyRing({}), clock=clock)
    ingest.start()
    adapter = FakeAdapter("so-gd", max_batch=2, concurrency=1)
    adapter.down = TargetDown("connection refused")
    service = OutboxService(ingest, [adapter], read_conn, clock=clock, policy=POLICY)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: "so-gd" in service.deliveries)
        status, _, err = run_cli(capsys, "outbox", "probe", "--config", c, "so-gd")
        assert status == 1 and err.startswith(
            "Không cần thử lại / so-gd: the breaker is closed, nothing to probe")
        await Events(ingest, ["so-gd"], clock).many(8)
        delivery = service.deliveries["so-gd"]
        await until(lambda: delivery.breaker.state == "open")  # three batches of two failed
        adapter.down = None  # the target is back; the loop does not know for 30 s
        await asyncio.sleep(0.1)
        assert len(adapter.calls) == 3 and delivery.breaker.state == "open"

        status, out, _ = run_cli(capsys, "outbox", "probe", "--config", c, "so-gd")
        assert status == 0
        assert out.splitlines() == [
            "so-gd: ngắt mạch đang mở (3 lỗi liên tiếp, gần nhất: connection refused) / "
            "breaker open (3 failures in a row, last: connection refused)",
            "so-gd: thử gửi ngay / probe due now — thay vì sau / instead of in 30 s",
            "Cổng đang chạy thử trong giây lát; nếu được, hàng chờ sẽ gửi tiếp / the running "
            "gateway probes within a second; if the target answers, the backlog flows"]
        # the fake clock stands still: only the operator's request can have made it due
        await until(lambda: states(read_conn, "so-gd") == {"delivered": 8})
        assert len(adapter.calls[3]) == 1  # one probe of one item, then the backlog
        assert delivery.breaker.state == "closed"
        assert rows(read_conn, "SELECT breaker, breaker_probe_ms FROM outbox_targets "
                               "WHERE target = 'so-gd'") == [("closed", None)]
        status, _, err = run_cli(capsys, "outbox", "probe", "--config", c, "so-gd", "--json")
        assert status == 1 and "the breaker is closed" in err
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await ingest.close()
        read_conn.close()
        conn.close()
    status, _, err = run_cli(capsys, "outbox", "probe", "--config", c, "nope")
    assert status == 1 and err.startswith("Không có đích chuyển tiếp này / 'nope' is not")
    status, _, err = run_cli(capsys, "outbox", "probe", "--config", c, "relay")
    assert status == 1 and "'relay' has no breaker yet" in err  # configured, never run


def test_notify_probe_and_a_paused_target(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          clock: FakeClock, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    path = write_config(tmp_path, "", '[notify]\n[[notify.channel]]\nname = "sms"\n'
                                      'type = "webhook"\n')
    c = str(path)
    monkeypatch.setattr("gateway.commands.outbox.system_clock", clock)
    monkeypatch.setattr("gateway.commands.notify.system_clock", clock)
    conn = school_db(path.parent / "gateway.db")
    try:
        row = BreakerRow("open", 5, opened_ms=NOW - 10_000, probe_ms=NOW + 20_000,
                         last_error="HTTP 503")
        outbox.save_breaker(conn, "sms", row, NOW, table="notify_channels")
        assert outbox.set_paused(conn, "sms", True, NOW, table="notify_channels")
        status, out, _ = run_cli(capsys, "notify", "probe", "--config", c, "sms", "--json")
        assert status == 0 and json.loads(out) == {
            "channel": "sms", "probe_ms": NOW, "was_probe_ms": NOW + 20_000, "released": 0,
            "paused": True}
        assert rows(conn, "SELECT breaker, breaker_probe_ms FROM notify_channels") == [
            ("open", NOW)]
        clock.advance(5)
        status, out, _ = run_cli(capsys, "notify", "probe", "--config", c, "sms")
        assert status == 0 and "it was already due" in out
        assert "paused: no probe until resumed (attendance-gateway notify resume" in out
        assert rows(conn, "SELECT breaker_probe_ms FROM notify_channels") == [(NOW,)]
        outbox.save_breaker(conn, "sms", BreakerRow(), NOW, table="notify_channels")
        status, _, err = run_cli(capsys, "notify", "probe", "--config", c, "sms")
        assert status == 1 and err.startswith("Không cần thử lại / sms: the breaker is closed")
        status, _, err = run_cli(capsys, "notify", "probe", "--config", c, "zalo")
        assert status == 1 and err.startswith("Không có kênh này / 'zalo' is not")
        # the same loop serves channels: the outbox CLI does not know them
        status, _, err = run_cli(capsys, "outbox", "probe", "--config", c, "sms")
        assert status == 1 and "not a [[forward]] target" in err
    finally:
        conn.close()


# -- the service -------------------------------------------------------------------------------


async def test_the_gateway_enqueues_and_delivers_what_its_rules_decide(
        tmp_path: Path, peer_module: types.ModuleType, mosquitto_broker: MosquittoBroker
) -> None:
    """`attendance-gateway run`: the absences its timer records reach the enabled target."""
    sessions = ('[attendance]\nschool_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
                '[[attendance.session]]\nname = "all-day"\nstart = "00:00"\n'
                'late_after = "00:00"\nabsent_at = "00:00"\nend = "23:59"\n'
                f'[mqtt]\nport = {mosquitto_broker.port}\n[metrics]\nlisten = ""\n')
    path = write_config(tmp_path, FORWARD, sessions)
    school_db(path.parent / "gateway.db", reader=False).close()  # no reader: sessions close
    config = load_config(path)
    stop = asyncio.Event()
    task = asyncio.create_task(run_gateway(config, stop))
    await until(lambda: bool(peer_module.built), timeout=10)
    ((target, _),) = peer_module.built  # the disabled target has no adapter
    adapter = _built_adapter(peer_module)
    await until(lambda: len(adapter.peer.records) >= 3, timeout=10)
    stop.set()
    assert await asyncio.wait_for(task, 15) == 0
    assert adapter.closed and target.name == "so-gd"
    check = sqlite3.connect(path.parent / "gateway.db")
    try:
        assert rows(check, "SELECT DISTINCT target, state FROM outbox") == [("so-gd", "delivered")]
        assert {i.kind for i in adapter.peer.records.values()} == {"absent"}
    finally:
        check.close()


def _built_adapter(module: types.ModuleType) -> FakeAdapter:
    adapters: list[FakeAdapter] = module.adapters
    return adapters[-1]
