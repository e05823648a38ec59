"""Commands to readers (SPEC.md section 7, gateway/reader_commands.py): numbering, checks, delivery
rules, results, expiry, the automatic set_time, RS-485 delivery and the operator's CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import db, reader_commands
from gateway.cli import build_parser
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.reader_commands import (
    CommandDispatcher,
    CommandError,
    CommandPolicy,
    auto_set_time,
    expire,
    issue,
    mark_sent,
    pending,
    record_result,
    sign,
    take_due,
)
from gateway.registry import Registry
from gateway.rs485 import BusMaster, BusTiming, ReaderLink
from gateway.types import StaticKeyRing
from protocol import codec, construct_codec
from protocol.errors import ProtocolError
from tests.gateway.serial_readers import RecordingSink, SimBus, SimReader

NOW = 1_790_000_000_000
POLICY = CommandPolicy(resend_after_ms=10_000, max_attempts=3, max_age_ms=3_600_000)
BUS = "/dev/ttyUSB0"


class FakeClock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(tmp_path / "gateway.db")
    yield connection
    connection.close()


@pytest.fixture
def registry(conn: sqlite3.Connection, tmp_path: Path, clock: FakeClock) -> Registry:
    registry = Registry.open(conn, tmp_path / "master.key", clock=clock)
    registry.register(17, "Cổng chính", "main")  # MQTT
    registry.register(18, "Cổng sau", "back", bus_port=BUS, bus_address=3)  # RS-485
    return registry


@pytest.fixture
def keys(registry: Registry) -> StaticKeyRing:
    return registry.key_ring()


def key_of(keys: StaticKeyRing, reader_id: int) -> bytes:
    active = keys.active(reader_id)
    assert active is not None
    return active.key


def set_state(conn: sqlite3.Connection, reader_id: int, state: str = "online") -> None:
    """What the reader's last heartbeat said (the ingest writes this row)."""
    conn.execute(
        "INSERT INTO reader_status (reader_id, received_ms, boot, state, faults, fw_version, "
        "link, rssi_dbm, clock_synced, reader_time_s, uptime_s, free_heap, queue_depth, "
        "oldest_unsent_age_s, dropped, last_ack_boot, last_ack_seq) "
        "VALUES (?, 0, 1, ?, '', '1.0.0', 'wifi', 0, 1, 0, 0, 0, 0, 0, 0, 0, 0) "
        "ON CONFLICT (reader_id) DO UPDATE SET state = excluded.state",
        (reader_id, state),
    )


def rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def step(
    conn: sqlite3.Connection,
    clock: FakeClock,
    keys: StaticKeyRing,
    *,
    mqtt_up: bool = True,
    bus: frozenset[int] = frozenset({18}),
    policy: CommandPolicy = POLICY,
) -> reader_commands.Due:
    """One dispatcher step in a transaction of its own, as the ingest's writer runs it."""
    conn.execute("BEGIN IMMEDIATE")
    due = take_due(conn, clock(), keys, mqtt_up=mqtt_up, bus_readers=bus, policy=policy)
    conn.execute("COMMIT")
    return due


# -- issuing ---------------------------------------------------------------------------------


def test_cmd_seq_is_strictly_increasing_persisted_and_never_reused(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, tmp_path: Path
) -> None:
    first = issue(conn, 17, "reboot", {}, clock(), "cli")
    # at least the gateway clock in seconds, so a restored database still issues higher numbers
    assert first.cmd_seq == NOW // 1000
    assert (first.status, first.attempts, first.source, first.issued_ms) == (
        "pending",
        0,
        "cli",
        NOW,
    )
    seqs = [issue(conn, 17, "request_heartbeat", {}, clock(), "cli").cmd_seq for _ in range(3)]
    assert seqs == [first.cmd_seq + 1, first.cmd_seq + 2, first.cmd_seq + 3]
    # another reader has its own numbers
    assert issue(conn, 18, "reboot", {}, clock(), "cli").cmd_seq == NOW // 1000
    # the gateway clock going back never makes a number repeat
    clock.now -= 86_400_000
    assert issue(conn, 17, "reboot", {}, clock(), "cli").cmd_seq == first.cmd_seq + 4
    # settled commands pruned, key rotated, database reopened: still above every number given
    conn.execute("UPDATE reader_commands SET status = 'ok'")
    assert reader_commands.prune(conn, NOW + 1) == 6
    registry.rotate(17)
    again = db.connect(tmp_path / "gateway.db")
    try:
        assert issue(again, 17, "reboot", {}, clock(), "cli").cmd_seq == first.cmd_seq + 5
    finally:
        again.close()
    # and the clock far ahead moves the floor up
    clock.now = NOW + 3_600_000
    assert issue(conn, 17, "reboot", {}, clock(), "cli").cmd_seq == (NOW + 3_600_000) // 1000


@pytest.mark.parametrize(
    ("opcode", "args", "message"),
    [
        ("set_config", {"volume": 101}, "volume 101 outside 0..100"),
        ("set_config", {"debounce_ms": 99}, "debounce_ms 99 outside 100..60000"),
        ("set_config", {"heartbeat_s": 3601}, "heartbeat_s 3601 outside 10..3600"),
        ("set_config", {"batch_max_records": 0}, "batch_max_records 0 outside 1..64"),
        ("set_config", {}, "at least one entry"),
        ("set_config", {"brightness": 3}, "unknown config key"),
        ("set_config", {"volume": True}, "must be an int"),
        ("set_time", {"time_s": 1, "time_ms": 1000}, "time_ms 1000 outside 0..999"),
        ("set_time", {"time_s": 1}, "set_time"),
        ("reboot", {"volume": 1}, "takes no args"),
        ("format_flash", {}, "unknown command"),
    ],
)
def test_arguments_are_checked_with_the_protocol_ranges(
    registry: Registry,
    conn: sqlite3.Connection,
    clock: FakeClock,
    opcode: str,
    args: dict[str, int],
    message: str,
) -> None:
    with pytest.raises(CommandError) as info:
        issue(conn, 17, opcode, args, clock(), "cli")
    assert info.value.code == "bad_value" and message in str(info.value)
    assert rows(conn, "SELECT COUNT(*) FROM reader_commands") == [(0,)]
    assert rows(conn, "SELECT COUNT(*) FROM reader_command_seq") == [(0,)]


def test_the_ranges_are_the_protocols(registry: Registry) -> None:
    assert reader_commands.CONFIG_RANGES == {
        "debounce_ms": (100, 60000),
        "volume": (0, 100),
        "heartbeat_s": (10, 3600),
        "batch_max_records": (1, 64),
    }
    assert reader_commands.OPCODES == ("set_time", "set_config", "request_heartbeat", "reboot")


def test_unknown_and_revoked_readers_and_bad_sources_are_refused(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock
) -> None:
    registry.revoke(18)
    for reader_id, source, code in (
        (99, "cli", "unknown_reader"),
        (18, "cli", "reader_revoked"),
        (0, "cli", "bad_value"),
        (17, "", "bad_value"),
        (17, "x" * 33, "bad_value"),
    ):
        with pytest.raises(CommandError) as info:
            issue(conn, reader_id, "reboot", {}, clock(), source)
        assert info.value.code == code
    assert rows(conn, "SELECT COUNT(*) FROM reader_commands") == [(0,)]


def test_arguments_are_stored_as_given_and_signed_as_the_reader_decodes_them(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    command = issue(conn, 17, "set_config", {"volume": 60, "debounce_ms": 800}, clock(), "cli")
    assert dict(command.args) == {"debounce_ms": 800, "volume": 60}
    assert rows(conn, "SELECT args FROM reader_commands") == [('{"debounce_ms":800,"volume":60}',)]
    message = sign(command, key_of(keys, 17))
    decoded = codec.decode_command(message, key_of(keys, 17))  # what the reader runs
    assert {k: v for k, v in decoded.items() if k != "mac"} == {
        "reader_id": 17,
        "cmd_seq": command.cmd_seq,
        "issued_s": NOW // 1000,
        "opcode": "set_config",
        "args": {"debounce_ms": 800, "volume": 60},
    }
    with pytest.raises(ProtocolError) as info:
        codec.decode_command(message, key_of(keys, 18))
    assert info.value.code == "bad_mac"
    with pytest.raises(ValueError):  # set_time's time is taken when it is sent
        sign(issue(conn, 17, "set_time", {}, clock(), "cli"), key_of(keys, 17))


# -- delivering ------------------------------------------------------------------------------


def test_a_command_is_sent_then_resent_with_the_same_bytes_then_expires(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    set_state(conn, 17)
    command = issue(conn, 17, "reboot", {}, clock(), "cli")
    clock.now += 500
    due = step(conn, clock, keys)
    assert [(d.command.cmd_seq, d.transport, d.command.attempts) for d in due.deliveries] == [
        (command.cmd_seq, "mqtt", 1)
    ]
    message = due.deliveries[0].message
    sent = due.deliveries[0].command
    assert (sent.status, sent.sent_ms, sent.last_sent_ms, sent.message) == (
        "sent",
        NOW + 500,
        NOW + 500,
        message,
    )
    assert sent.key_id == keys.active(17).key_id  # type: ignore[union-attr]
    clock.now += 9_999
    assert step(conn, clock, keys).deliveries == []  # waiting for the result
    clock.now += 1
    again = step(conn, clock, keys).deliveries
    assert [(d.message, d.command.attempts) for d in again] == [(message, 2)]
    clock.now += 10_000
    assert [d.command.attempts for d in step(conn, clock, keys).deliveries] == [3]
    clock.now += 9_999  # three sends, 30 s since the first: unanswered
    assert step(conn, clock, keys) == reader_commands.Due()
    clock.now += 1
    due = step(conn, clock, keys)
    assert due.deliveries == []
    assert [(c.cmd_seq, c.status, c.detail) for c in due.settled] == [
        (command.cmd_seq, "expired", "no result after 3 send(s)")
    ]
    # a result arriving late still tells what the reader did
    assert record_result(conn, 17, command.cmd_seq, "ok", clock()) == "recorded"
    assert rows(conn, "SELECT status, attempts, result_ms FROM reader_commands") == [
        ("ok", 3, clock())
    ]


def test_each_reader_gets_its_oldest_command_first_and_one_at_a_time(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    set_state(conn, 17)
    volume = issue(conn, 17, "set_config", {"volume": 10}, clock(), "cli")
    reboot = issue(conn, 17, "reboot", {}, clock(), "cli")
    bus = issue(conn, 18, "request_heartbeat", {}, clock(), "cli")
    due = step(conn, clock, keys)
    assert [(d.command.reader_id, d.command.cmd_seq, d.transport) for d in due.deliveries] == [
        (17, volume.cmd_seq, "mqtt"),
        (18, bus.cmd_seq, "rs485"),
    ]
    assert step(conn, clock, keys).deliveries == []  # the reboot waits for the volume's result
    assert [c.cmd_seq for c in pending(conn, clock(), POLICY)] == []
    assert record_result(conn, 17, volume.cmd_seq, "ok", clock()) == "recorded"
    assert [d.command.cmd_seq for d in step(conn, clock, keys).deliveries] == [reboot.cmd_seq]


def test_a_command_waits_for_a_reachable_reader(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    mqtt = issue(conn, 17, "reboot", {}, clock(), "cli")
    issue(conn, 18, "reboot", {}, clock(), "cli")
    assert step(conn, clock, keys, bus=frozenset()).deliveries == []  # no heartbeat yet
    set_state(conn, 17, "offline")
    assert step(conn, clock, keys, bus=frozenset()).deliveries == []
    set_state(conn, 17, "online")
    assert step(conn, clock, keys, mqtt_up=False, bus=frozenset()).deliveries == []
    assert rows(conn, "SELECT status FROM reader_commands") == [("pending",), ("pending",)]
    due = step(conn, clock, keys, bus=frozenset({18}))
    assert [d.transport for d in due.deliveries] == ["mqtt", "rs485"]
    # never reachable: expired an hour after it was issued, with the reason
    later = issue(conn, 17, "request_heartbeat", {}, clock(), "cli")
    record_result(conn, 17, mqtt.cmd_seq, "ok", clock())
    set_state(conn, 17, "offline")
    clock.now += 3_600_000
    settled = step(conn, clock, keys, bus=frozenset()).settled
    assert [(c.reader_id, c.cmd_seq, c.status, c.attempts, c.detail) for c in settled] == [
        (17, later.cmd_seq, "expired", 0, "not delivered within 3600 s (reader not reachable)"),
        (18, later.cmd_seq - 1, "expired", 1, "no result after 1 send(s)"),
    ]


def test_set_time_takes_the_time_of_its_first_send_and_a_newer_one_supersedes(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    old = issue(conn, 18, "set_time", {}, clock(), "cli")
    new = issue(conn, 18, "set_time", {}, clock(), "auto")
    assert rows(conn, "SELECT cmd_seq, status, detail FROM reader_commands ORDER BY cmd_seq") == [
        (old.cmd_seq, "cancelled", f"superseded by {new.cmd_seq}"),
        (new.cmd_seq, "pending", None),
    ]
    clock.now += 4_321
    delivery = step(conn, clock, keys).deliveries[0]
    decoded = codec.decode_command(delivery.message, key_of(keys, 18))
    assert decoded["args"] == {"time_s": (NOW + 4_321) // 1000, "time_ms": 321}
    assert dict(delivery.command.args) == decoded["args"]  # kept for the audit
    clock.now += 10_000
    resent = step(conn, clock, keys).deliveries[0]
    assert resent.message == delivery.message  # the same bytes, the time of the first send
    # an explicit time is sent as given
    record_result(conn, 18, new.cmd_seq, "ok", clock())
    issue(conn, 18, "set_time", {"time_s": 1_800_000_000, "time_ms": 5}, clock(), "cli")
    message = step(conn, clock, keys).deliveries[0].message
    assert codec.decode_command(message, key_of(keys, 18))["args"] == {
        "time_s": 1_800_000_000,
        "time_ms": 5,
    }


def test_commands_of_a_revoked_reader_are_cancelled(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    set_state(conn, 17)
    sent = issue(conn, 17, "reboot", {}, clock(), "cli")
    step(conn, clock, keys)
    waiting = issue(conn, 17, "request_heartbeat", {}, clock(), "cli")
    registry.revoke(17)
    due = step(conn, clock, keys)
    assert due.deliveries == []
    assert [(c.cmd_seq, c.status, c.detail) for c in due.settled] == [
        (sent.cmd_seq, "cancelled", "reader revoked"),
        (waiting.cmd_seq, "cancelled", "reader revoked"),
    ]
    assert not reader_commands.has_open(conn)


def test_a_reader_without_an_active_key_gets_nothing(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock
) -> None:
    set_state(conn, 17)
    issue(conn, 17, "reboot", {}, clock(), "cli")
    due = step(conn, clock, StaticKeyRing({}))
    assert [(c.status, c.detail) for c in due.settled] == [
        ("cancelled", "reader has no active key")
    ]


def test_mark_sent_keeps_the_first_message(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock
) -> None:
    command = issue(conn, 17, "reboot", {}, clock(), "cli")
    first = mark_sent(conn, command.command_id, clock(), "mqtt", b"first", key_id=1)
    second = mark_sent(conn, command.command_id, clock() + 5, "mqtt", b"second", key_id=9)
    assert first is not None and second is not None
    assert (second.message, second.key_id, second.attempts, second.sent_ms) == (
        b"first",
        1,
        2,
        NOW,
    )
    record_result(conn, 17, command.cmd_seq, "failed", clock())
    assert mark_sent(conn, command.command_id, clock(), "mqtt", b"x") is None
    assert expire(conn, clock() + 10**9, POLICY) == []


def test_the_open_commands_have_their_own_small_index(
    registry: Registry, conn: sqlite3.Connection
) -> None:
    plan = " ".join(
        str(r[3])
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT 1 FROM reader_commands WHERE status IN "
            "('pending', 'sent') LIMIT 1"
        )
    )
    assert "reader_commands_open" in plan


# -- results ---------------------------------------------------------------------------------


def test_the_first_definitive_result_is_kept(
    registry: Registry, conn: sqlite3.Connection, clock: FakeClock
) -> None:
    a = issue(conn, 17, "reboot", {}, clock(), "cli")
    b = issue(conn, 17, "set_config", {"volume": 5}, clock(), "cli")
    c = issue(conn, 17, "request_heartbeat", {}, clock(), "cli")
    assert record_result(conn, 17, a.cmd_seq, "ok", NOW + 1) == "recorded"
    assert record_result(conn, 17, a.cmd_seq, "ok", NOW + 2) == "repeat"
    assert record_result(conn, 17, a.cmd_seq, "stale", NOW + 3) == "kept"  # a late resend
    assert record_result(conn, 17, b.cmd_seq, "stale", NOW + 4) == "recorded"
    assert record_result(conn, 17, b.cmd_seq, "stale", NOW + 5) == "repeat"
    assert record_result(conn, 17, b.cmd_seq, "bad_args", NOW + 6) == "recorded"  # overrides
    assert record_result(conn, 17, b.cmd_seq, "ok", NOW + 7) == "kept"
    assert record_result(conn, 17, c.cmd_seq + 1, "ok", NOW) == "unknown_command"
    assert record_result(conn, 18, a.cmd_seq, "ok", NOW) == "unknown_command"
    assert rows(
        conn, "SELECT cmd_seq, status, result_ms, results_seen FROM reader_commands ORDER BY 1"
    ) == [
        (a.cmd_seq, "ok", NOW + 1, 3),
        (b.cmd_seq, "bad_args", NOW + 6, 4),
        (c.cmd_seq, "pending", None, 0),
    ]
    with pytest.raises(ValueError):
        record_result(conn, 17, c.cmd_seq, "maybe", NOW)


# -- through the ingest: results, the automatic set_time ------------------------------------


@pytest.fixture
async def ingest(
    conn: sqlite3.Connection, keys: StaticKeyRing, clock: FakeClock
) -> AsyncIterator[Ingest]:
    ingest = Ingest(conn, keys, clock=clock)
    ingest.start()
    yield ingest
    await ingest.close()


def heartbeat(
    keys: StaticKeyRing, reader_id: int, *, uptime_s: int, synced: bool, time_s: int
) -> bytes:
    return construct_codec.encode(
        "heartbeat",
        {
            "reader_id": reader_id,
            "boot": 1,
            "state": "online",
            "faults": [],
            "fw_version": "1.0.0",
            "link": "rs485",
            "rssi_dbm": 0,
            "clock_synced": synced,
            "time_s": time_s,
            "uptime_s": uptime_s,
            "free_heap": 40_000,
            "queue_depth": 0,
            "oldest_unsent_age_s": 0,
            "dropped": 0,
            "last_ack_boot": 0,
            "last_ack_seq": 0,
        },
        key_of(keys, reader_id),
    )


def result(keys: StaticKeyRing, reader_id: int, cmd_seq: int, status: str) -> bytes:
    payload = {"reader_id": reader_id, "cmd_seq": cmd_seq, "status": status}
    return construct_codec.encode("result", payload, key_of(keys, reader_id))


async def test_a_verified_result_settles_the_command_and_a_forged_one_does_not(
    ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    command = await ingest.run_in_transaction(lambda c: issue(c, 17, "reboot", {}, clock(), "cli"))
    forged = construct_codec.encode(
        "result", {"reader_id": 17, "cmd_seq": command.cmd_seq, "status": "ok"}, bytes(32)
    )
    await ingest.result(17, forged, "test")
    await ingest.result(17, result(keys, 18, command.cmd_seq, "ok"), "test")  # reader 18's
    assert rows(conn, "SELECT status FROM reader_commands") == [("pending",)]
    assert rows(conn, "SELECT reason, reader_id FROM quarantine ORDER BY quarantine_id") == [
        ("bad_mac", 17),
        ("identity_mismatch", 17),
    ]
    await ingest.result(17, result(keys, 17, command.cmd_seq, "ok"), "test")
    await ingest.result(17, result(keys, 17, command.cmd_seq, "stale"), "test")
    assert rows(conn, "SELECT status, result_ms, results_seen FROM reader_commands") == [
        ("ok", NOW, 2)
    ]
    m = ingest.metrics
    assert m.results._value.get() == 2
    assert m.commands_settled.labels("ok")._value.get() == 1
    assert m.commands_settled.labels("stale")._value.get() == 0


async def test_a_bus_reader_with_a_wrong_or_unsynced_clock_gets_the_gateway_time(
    ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock, keys: StaticKeyRing
) -> None:
    bus = f"rs485 {BUS} #3"
    auto = "SELECT reader_id, source, status FROM reader_commands WHERE opcode = 'set_time'"
    good = NOW // 1000
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=10, synced=True, time_s=good), bus)
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=11, synced=True, time_s=good + 1), bus)
    assert rows(conn, auto) == []  # within 2 s (whole seconds: taken at mid-second)
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=12, synced=False, time_s=good), bus)
    assert rows(conn, auto) == [(18, "auto", "pending")]
    clock.now += 59_000
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=71, synced=False, time_s=0), bus)
    assert len(rows(conn, auto)) == 1  # at most one per minute
    clock.now += 1_001
    late = good + 60 - 5
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=72, synced=True, time_s=late), bus)
    assert rows(conn, auto + " ORDER BY cmd_seq") == [
        (18, "auto", "cancelled"),
        (18, "auto", "pending"),
    ]
    # a replayed (older) heartbeat, or one over MQTT (the reader has NTP), changes nothing
    clock.now += 60_000
    await ingest.heartbeat(18, heartbeat(keys, 18, uptime_s=12, synced=False, time_s=0), bus)
    await ingest.heartbeat(17, heartbeat(keys, 17, uptime_s=5, synced=False, time_s=0), "mqtt x")
    assert len(rows(conn, auto)) == 2


def test_auto_set_time_leaves_readers_alone_otherwise(
    registry: Registry, conn: sqlite3.Connection
) -> None:
    mid = NOW // 1000
    assert auto_set_time(conn, 18, True, mid, NOW + 2_499, "rs485 x #3") is None
    assert auto_set_time(conn, 18, True, mid, NOW + 2_501, "rs485 x #3") is not None
    assert auto_set_time(conn, 99, False, 0, NOW + 90_000, "rs485 x #4") is None  # unknown


# -- the dispatcher ----------------------------------------------------------------------------


FAST_BUS = dataclasses.replace(
    BusTiming.for_baudrate(115200),
    answer_timeout_s=0.05,
    turnaround_s=0.0,
    quiet_s=0.002,
    idle_poll_s=0.002,
    probe_first_s=0.02,
    probe_cap_s=0.1,
)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(*runners: Callable[[asyncio.Event], Any]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(stop)) for run in runners]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_commands_reach_a_reader_on_the_bus_and_its_results_settle_them(
    ingest: Ingest,
    conn: sqlite3.Connection,
    clock: FakeClock,
    keys: StaticKeyRing,
    tmp_path: Path,
) -> None:
    reader = SimReader(3, 18, key=key_of(keys, 18))
    # its clock is not set: the gateway sends its time by itself
    reader.outbox.append(heartbeat(keys, 18, uptime_s=5, synced=False, time_s=0))
    metrics = ingest.metrics
    read_conn = db.connect(tmp_path / "gateway.db", migrate=False)
    try:
        async with SimBus([reader]) as sim:
            master = BusMaster(sim.port, 115200, {3: 18}, ingest, timing=FAST_BUS, clock=clock)
            dispatcher = CommandDispatcher(
                ingest,
                buses=[master],
                read_conn=read_conn,
                metrics=metrics,
                clock=clock,
                poll_s=0.02,
            )
            async with running(master.run, dispatcher.run):
                await until(lambda: reader.stats["command_set_time"] == 1)
                command = await ingest.run_in_transaction(
                    lambda c: issue(c, 18, "set_config", {"volume": 30}, clock(), "cli")
                )
                await until(
                    lambda: (
                        rows(read_conn, "SELECT COUNT(*) FROM reader_commands WHERE status = 'ok'")
                        == [(2,)]
                    )
                )
    finally:
        read_conn.close()
    assert rows(
        conn,
        "SELECT source, opcode, status, transport, attempts FROM reader_commands ORDER BY cmd_seq",
    ) == [
        ("auto", "set_time", "ok", "rs485", 1),
        ("cli", "set_config", "ok", "rs485", 1),
    ]
    assert reader.stats["command_set_config"] == 1
    assert master.counters["commands_sent"] == 2 and master.counters["results"] == 2
    assert command.cmd_seq > 0
    assert metrics.commands_issued.labels("set_time", "auto")._value.get() == 1
    assert metrics.commands_issued.labels("set_config", "cli")._value.get() == 1
    assert metrics.commands_sent.labels("rs485", "first")._value.get() == 2
    assert metrics.commands_settled.labels("ok")._value.get() == 2


class FakeBus:
    """A bus master whose reader answers nothing (for expiry)."""

    def __init__(self, reader_id: int) -> None:
        self.reader_id = reader_id
        self.queued: list[bytes] = []
        self.answering = True

    def send_command(self, reader_id: int, command: bytes) -> bool:
        if reader_id != self.reader_id:
            return False
        self.queued.append(command)
        return True

    def withdraw_command(self, reader_id: int, command: bytes) -> bool:
        if reader_id == self.reader_id and command in self.queued:
            self.queued.remove(command)
            return True
        return False

    def links(self) -> list[ReaderLink]:
        return [ReaderLink(3, self.reader_id, self.answering, None, len(self.queued))]


async def test_an_expired_command_leaves_the_bus_queue(
    ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock
) -> None:
    bus = FakeBus(18)
    metrics = ingest.metrics
    dispatcher = CommandDispatcher(ingest, buses=[bus], metrics=metrics, clock=clock, policy=POLICY)
    await ingest.run_in_transaction(lambda c: issue(c, 18, "reboot", {}, clock(), "cli"))
    await dispatcher.step()
    assert len(bus.queued) == 1
    bus.answering = False  # the reader stopped answering: the command is still queued
    clock.now += POLICY.answer_window_ms
    due = await dispatcher.step()
    assert [c.status for c in due.settled] == ["expired"] and bus.queued == []
    assert metrics.commands_settled.labels("expired")._value.get() == 1
    assert metrics.commands_sent.labels("rs485", "first")._value.get() == 1


def test_the_bus_master_can_withdraw_a_queued_command() -> None:
    master = BusMaster("/dev/null", 115200, {3: 18}, RecordingSink([18]))
    command = construct_codec.encode(
        "command",
        {"reader_id": 18, "cmd_seq": 5, "issued_s": 0, "opcode": "reboot", "args": {}},
        bytes(32),
    )
    assert master.send_command(18, command)
    assert master.links()[0].pending_commands == 1
    assert master.withdraw_command(18, command)
    assert not master.withdraw_command(18, command)
    assert master.links()[0].pending_commands == 0


async def test_a_failed_step_is_logged_and_the_loop_goes_on(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    class Broken:
        keys = StaticKeyRing({})

        async def run_in_transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
            nonlocal calls
            calls += 1
            raise RuntimeError("database is locked")

    dispatcher = CommandDispatcher(Broken(), poll_s=0.01, metrics=GatewayMetrics())
    async with running(dispatcher.run):
        await until(lambda: calls >= 3)
    assert "command delivery step failed" in caplog.text


# -- attendance-gateway readers command / commands ------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cli" / "gateway.toml"
    path.parent.mkdir()
    path.write_text(
        '[gateway]\nschool = "thcs-a"\ndatabase = "gateway.db"\nmaster_key_file = "master.key"\n'
        f'[[rs485]]\nport = "{BUS}"\n',
        encoding="utf-8",
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    status = int(args.func(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_queues_commands_and_lists_them(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config)
    run_cli(capsys, "readers", "add", "--config", c, "17", "--name", "Cổng chính", "--gate", "g")
    status, out, err = run_cli(
        capsys,
        "readers",
        "command",
        "--config",
        c,
        "17",
        "set-config",
        "--volume",
        "60",
        "--debounce-ms",
        "800",
    )
    assert status == 0, err
    assert "command queued" in out and "Đã xếp lệnh" in out and "debounce_ms=800 volume=60" in out
    status, out, _ = run_cli(capsys, "readers", "command", "--config", c, "17", "reboot", "--json")
    queued = json.loads(out)
    assert (queued["opcode"], queued["status"], queued["source"], queued["args"]) == (
        "reboot",
        "pending",
        "cli",
        {},
    )
    run_cli(capsys, "readers", "command", "--config", c, "17", "heartbeat")
    run_cli(capsys, "readers", "command", "--config", c, "17", "set-time")
    status, out, _ = run_cli(capsys, "readers", "commands", "--config", c, "17", "--json")
    listed = json.loads(out)
    assert [x["opcode"] for x in listed] == [
        "set_time",
        "request_heartbeat",
        "reboot",
        "set_config",
    ]
    seqs = [x["cmd_seq"] for x in listed]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 4
    assert listed[-1]["args"] == {"debounce_ms": 800, "volume": 60}
    status, out, _ = run_cli(capsys, "readers", "commands", "--config", c, "--limit", "2")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert "TRẠNG THÁI / STATUS" in lines[0] and "pending (chờ gửi)" in lines[1]
    assert "set_time" in lines[1] and "gateway time" in lines[1]


def test_cli_lists_nothing_clearly(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    run_cli(capsys, "readers", "add", "--config", c, "17", "--name", "a", "--gate", "g")
    assert run_cli(capsys, "readers", "commands", "--config", c)[1] == (
        "Chưa có lệnh nào / no commands yet\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("command", "99", "reboot"), "Chưa đăng ký đầu đọc này / reader 99 is not registered"),
        (("command", "18", "reboot"), "Đầu đọc đã bị thu hồi / reader 18 is revoked"),
        (("command", "17", "set-config", "--volume", "101"), "volume 101 outside 0..100"),
        (("command", "17", "set-config"), "set-config needs at least one of --debounce-ms"),
        (("command", "17", "reboot", "--volume", "5"), "reboot takes none of"),
        (("command", "17", "set-config", "--heartbeat-s", "5"), "heartbeat_s 5 outside 10..3600"),
        (("command", "17", "reboot", "--wait", "-1"), "--wait"),
        (("commands", "99"), "reader 99 is not registered"),
    ],
)
def test_cli_errors_are_bilingual_and_exit_non_zero(
    config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    c = str(config)
    run_cli(capsys, "readers", "add", "--config", c, "17", "--name", "a", "--gate", "g")
    run_cli(capsys, "readers", "add", "--config", c, "18", "--name", "b", "--gate", "g")
    run_cli(capsys, "readers", "revoke", "--config", c, "18")
    status, out, err = run_cli(capsys, "readers", argv[0], "--config", c, *argv[1:])
    assert status == 1 and out == "" and message in err
    if "Giá trị" not in err and "Chưa" not in err and "thu hồi" not in err:
        raise AssertionError(f"no Vietnamese in {err!r}")
    conn = db.connect(config.parent / "gateway.db")
    try:
        assert rows(conn, "SELECT COUNT(*) FROM reader_commands") == [(0,)]
    finally:
        conn.close()


def test_cli_wait_reports_a_missing_result(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config)
    run_cli(capsys, "readers", "add", "--config", c, "17", "--name", "a", "--gate", "g")
    status, out, err = run_cli(
        capsys, "readers", "command", "--config", c, "17", "reboot", "--wait", "0.3"
    )
    assert status == 1 and "command queued" in out
    assert "no result after 0.3 s: pending (chờ gửi)" in err


def test_cli_help_is_bilingual(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["readers", "command", "--help"])
    out = capsys.readouterr().out
    for text in (
        "set-time",
        "set-config",
        "heartbeat",
        "reboot",
        "--debounce-ms",
        "(100..60000)",
        "--volume",
        "(0..100)",
        "--heartbeat-s",
        "--batch-max-records",
        "(1..64)",
        "khởi động lại",
        "restart",
    ):
        assert text in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["readers", "--help"])
    out = capsys.readouterr().out
    assert "gửi lệnh tới đầu đọc / send a command to a reader" in out
