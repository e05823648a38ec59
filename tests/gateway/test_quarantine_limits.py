"""The quarantine cannot be used to fill the gateway's disk (docs/SECURITY.md): a source's
distinct rejected messages beyond the hourly allowance are counted on one summary row, the same
bytes again only count on their row, and old rows are pruned."""

from __future__ import annotations

import logging
import sqlite3
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway import db
from gateway import ingest as ingest_module
from gateway.ingest import QUARANTINE_KEEP_MS, QUARANTINE_ROWS_PER_HOUR, Ingest
from gateway.types import ReaderKey, StaticKeyRing
from tests.gateway.test_ingest import KEY, OTHER, FakeClock, batch, record, rows

HOUR = 3_600_000
RING = StaticKeyRing({17: [ReaderKey(1, KEY, "active")], 19: [ReaderKey(2, OTHER, "active")]})


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = db.connect(tmp_path / "gateway.db")
    for reader_id, key_id in ((17, 1), (19, 2)):
        conn.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                     "VALUES (?, ?, 'main', 'active', 0)", (reader_id, f"reader {reader_id}"))
        conn.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, created_ms) "
                     "VALUES (?, ?, x'00', 'active', 0)", (key_id, reader_id))
    yield conn
    conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ingest(conn: sqlite3.Connection, clock: FakeClock) -> AsyncIterator[Ingest]:
    ingest = Ingest(conn, RING, clock=clock)
    ingest.start()
    yield ingest
    await ingest.close()


def forged(seq: int, reader: int = 17) -> bytes:
    """A batch signed with another reader's key: bad_mac, distinct bytes per ``seq``."""
    key = KEY if reader == 19 else OTHER
    return batch([record(seq, reader=reader, key=key)], key=key, reader=reader)


def summary(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return rows(conn, "SELECT reader_id, reason, times_seen, length(raw) FROM quarantine "
                      "WHERE detail LIKE 'more than % distinct rejected messages%' "
                      "ORDER BY quarantine_id")


async def test_a_flood_of_distinct_forgeries_keeps_a_bounded_number_of_rows(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    flood = 3 * QUARANTINE_ROWS_PER_HOUR
    for seq in range(1, flood + 1):
        assert await ingest.batch(17, forged(seq), "mqtt att/v1/s/17/up/batch") is None
    kept = rows(conn, "SELECT COUNT(*), SUM(length(raw)) FROM quarantine WHERE raw != x''")
    assert kept == [(QUARANTINE_ROWS_PER_HOUR, QUARANTINE_ROWS_PER_HOUR * len(forged(1)))]
    assert summary(conn) == [(17, "bad_mac", flood - QUARANTINE_ROWS_PER_HOUR, 0)]
    # every message is still counted where operators look
    assert ingest.metrics.quarantined.labels("bad_mac")._value.get() == flood


async def test_the_same_bytes_again_do_not_use_the_allowance(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    for _ in range(2 * QUARANTINE_ROWS_PER_HOUR):
        await ingest.batch(17, forged(1), "mqtt")
    assert rows(conn, "SELECT times_seen FROM quarantine") == [(2 * QUARANTINE_ROWS_PER_HOUR,)]
    for seq in range(2, QUARANTINE_ROWS_PER_HOUR + 1):
        await ingest.batch(17, forged(seq), "mqtt")
    assert summary(conn) == []


async def test_the_allowance_is_per_source_and_per_hour(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    for seq in range(1, QUARANTINE_ROWS_PER_HOUR + 2):
        await ingest.batch(17, forged(seq), "mqtt")
    # another reader's account is not held back by reader 17's flood
    await ingest.batch(19, forged(1, reader=19), "mqtt")
    assert rows(conn, "SELECT COUNT(*) FROM quarantine WHERE reader_id = 19 AND raw != x''") \
        == [(1,)]
    clock.now += HOUR
    await ingest.batch(17, forged(500), "mqtt")
    assert rows(conn, "SELECT COUNT(*) FROM quarantine WHERE reader_id = 17 AND raw != x''") \
        == [(QUARANTINE_ROWS_PER_HOUR + 1,)]
    assert [r[2] for r in summary(conn)] == [1]


async def test_rows_not_seen_for_a_year_are_pruned(ingest: Ingest, conn: sqlite3.Connection,
                                                   clock: FakeClock) -> None:
    await ingest.batch(17, forged(1), "mqtt")
    await ingest.batch(17, forged(2), "mqtt")
    clock.now += QUARANTINE_KEEP_MS - HOUR
    await ingest.batch(17, forged(2), "mqtt")  # seen again: kept
    clock.now += 2 * HOUR
    await ingest.batch(17, forged(3), "mqtt")
    assert rows(conn, "SELECT times_seen FROM quarantine ORDER BY quarantine_id") == [(2,), (1,)]


async def test_quarantine_log_lines_are_limited_to_20_per_reason_and_minute_then_summed(
        ingest: Ingest, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood fills no log: 20 ``quarantined`` lines per reason and minute; the rest are counted
    and summed in one ``quarantine warnings suppressed`` line, written with the first quarantine
    of a later minute. The minute is read from ``time.monotonic`` in gateway/ingest.py: replaced
    here by a clock the test moves (the writer thread's commit window reads it too)."""
    minute = [1_000 * 60.0]  # the start of a minute
    monkeypatch.setattr(ingest_module, "time", types.SimpleNamespace(
        monotonic=lambda: minute[0], perf_counter=time.perf_counter))
    caplog.set_level(logging.WARNING, logger="gateway.ingest")

    def lines(message: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == message]

    for seq in range(1, 101):
        assert await ingest.batch(17, forged(seq), "mqtt") is None  # bad_mac
    for seq in range(1, 31):  # another reason has its own 20
        assert await ingest.batch(99, forged(seq, reader=99), "mqtt") is None  # unknown_reader
    assert ingest.metrics.quarantined.labels("bad_mac")._value.get() == 100
    assert ingest.metrics.quarantined.labels("unknown_reader")._value.get() == 30
    assert [getattr(r, "reason", None) for r in lines("quarantined")] == \
        ["bad_mac"] * 20 + ["unknown_reader"] * 20
    assert lines("quarantine warnings suppressed") == []

    minute[0] += 59.5  # still the same minute: still nothing more
    await ingest.batch(17, forged(101), "mqtt")
    assert len(lines("quarantined")) == 40 and lines("quarantine warnings suppressed") == []

    minute[0] += 0.5  # the next minute: the sum of what was held back, then a new burst
    await ingest.batch(17, forged(102), "mqtt")
    (summed,) = lines("quarantine warnings suppressed")
    assert getattr(summed, "suppressed", None) == {"bad_mac": 81, "unknown_reader": 10}
    assert len(lines("quarantined")) == 41
    assert caplog.records[-2:] == [summed, lines("quarantined")[-1]]
