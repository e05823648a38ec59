"""The ingest core over a real SQLite database: verify, dedup, timestamp, group commit, ack."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import db
from gateway.config import IngestConfig
from gateway.ingest import Ingest, Outcome
from gateway.types import ReaderKey, StaticKeyRing, StoredScan
from protocol import codec, construct_codec
from protocol.hmac256 import HmacSha256

KEY = bytes(range(32))
RETIRED = bytes(range(1, 33))
REVOKED = bytes(range(2, 34))
OTHER = bytes(range(3, 35))
GONE = bytes(range(4, 36))  # reader 18 is revoked: its only key
NOW = 1_790_000_000_000
CARD = ("iso14443a", bytes.fromhex("04a1b2c3"))
RING = StaticKeyRing({
    17: [ReaderKey(1, RETIRED, "retired"), ReaderKey(2, KEY, "active"),
         ReaderKey(3, REVOKED, "revoked")],
    18: [ReaderKey(4, GONE, "revoked")],
    19: [ReaderKey(5, OTHER, "active")],
})


class FakeClock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def record(seq: int, *, key: bytes = KEY, reader: int = 17, boot: int = 1, synced: bool = True,
           at_ms: int = NOW - 1_000, ticks: int | None = None, tech: str = CARD[0],
           uid: bytes = CARD[1]) -> bytes:
    return construct_codec.encode("record", {
        "reader_id": reader, "boot": boot, "seq": seq, "clock_synced": synced, "tech": tech,
        "uid": uid, "time_s": at_ms // 1000, "time_ms": at_ms % 1000,
        "ticks_ms": ticks if ticks is not None else 100_000 + seq * 1_000}, key)


def batch(records: list[bytes], *, key: bytes = KEY, reader: int = 17, boot: int = 1) -> bytes:
    writer = codec.BatchWriter()
    for rec in records:
        assert writer.add(rec)
    return bytes(writer.finish(HmacSha256(key), reader, boot))


def heartbeat(*, key: bytes = KEY, reader: int = 17, boot: int = 1, uptime_s: int = 100,
              synced: bool = True, time_s: int = NOW // 1000, state: str = "online",
              dropped: int = 0) -> bytes:
    return construct_codec.encode("heartbeat", {
        "reader_id": reader, "boot": boot, "state": state, "faults": [], "fw_version": "1.2.3",
        "link": "wifi", "rssi_dbm": -60, "clock_synced": synced, "time_s": time_s,
        "uptime_s": uptime_s, "free_heap": 40_000, "queue_depth": 0, "oldest_unsent_age_s": 0,
        "dropped": dropped, "last_ack_boot": 0, "last_ack_seq": 0}, key)


def decode_ack(ack: bytes | None, key: bytes = KEY) -> dict[str, Any]:
    assert ack is not None
    return construct_codec.decode("ack", ack, key)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = db.connect(tmp_path / "gateway.db")
    for reader_id, gate, status in ((17, "main", "active"), (18, "back", "revoked"),
                                    (19, "side", "active")):
        conn.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                     "VALUES (?, ?, ?, ?, 0)", (reader_id, f"reader {reader_id}", gate, status))
    for reader_id, keys in ((17, (1, 2, 3)), (18, (4,)), (19, (5,))):
        for key_id in keys:
            state = RING.candidates(reader_id)
            key_state = next(k.state for k in state if k.key_id == key_id)
            conn.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, "
                         "created_ms) VALUES (?, ?, x'00', ?, 0)", (key_id, reader_id, key_state))
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


def rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def quarantine(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return rows(conn, "SELECT reason, reader_id, boot, seq, times_seen, transport "
                      "FROM quarantine ORDER BY quarantine_id")


# -- batches -----------------------------------------------------------------------------------


async def test_a_batch_is_stored_and_acknowledged(ingest: Ingest,
                                                  conn: sqlite3.Connection) -> None:
    ack = await ingest.batch(17, batch([record(s) for s in (1, 2, 3)]), "test")
    assert decode_ack(ack) == {"reader_id": 17, "boot": 1, "first_seq": 1, "last_seq": 3,
                               "verdicts": [], "mac": ack[-16:] if ack else b""}
    assert rows(conn, "SELECT seq, card, time_source, at_ms, key_id FROM scans ORDER BY seq") == [
        (s, "iso14443a:04A1B2C3", "reader", NOW - 1_000, 2) for s in (1, 2, 3)]
    assert rows(conn, "SELECT max_seq, anchor_source FROM reader_boots") == [(3, "reader_synced")]
    assert ingest.metrics.records_stored._value.get() == 3


async def test_an_exact_duplicate_is_stored_once_and_acked_again(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    payload = batch([record(1), record(2)])
    first = await ingest.batch(17, payload, "test")
    again = await ingest.batch(17, payload, "test")
    # Re-batched by the reader with one more record: the two old ones are duplicates.
    bigger = await ingest.batch(17, batch([record(1), record(2), record(3)]), "test")
    assert first == again and decode_ack(bigger)["last_seq"] == 3
    assert rows(conn, "SELECT COUNT(*) FROM scans") == [(3,)]
    assert ingest.metrics.records_duplicate._value.get() == 4
    assert quarantine(conn) == []


async def test_a_replayed_identity_with_other_bytes_is_a_conflict(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    await ingest.batch(17, batch([record(1)]), "test")
    forged = record(1, uid=bytes.fromhex("04deadbe"))  # same identity, another card
    ack = await ingest.batch(17, batch([forged, record(2)]), "test")
    assert decode_ack(ack)["verdicts"] == [{"seq": 1, "verdict": "identity_conflict"}]
    assert rows(conn, "SELECT seq, card FROM scans ORDER BY seq") == [
        (1, "iso14443a:04A1B2C3"), (2, "iso14443a:04A1B2C3")]
    assert quarantine(conn) == [("identity_conflict", 17, 1, 1, 1, "test")]
    await ingest.batch(17, batch([forged, record(2)]), "test")  # the reader resends it
    assert quarantine(conn) == [("identity_conflict", 17, 1, 1, 2, "test")]


async def test_records_failing_alone_get_verdicts_and_their_neighbours_are_kept(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    corrupted = bytearray(record(2))
    corrupted[20] ^= 0x01  # flash corruption inside the UID: the record's MAC fails
    body = bytearray(record(3, tech="wiegand37", uid=bytes.fromhex("0700000001"))[:-16])
    body[17] |= 0xF8  # the reader's firmware set wiegand37 padding bits, then signed it
    bad_card = bytes(body) + construct_codec.compute_mac(KEY, bytes(body))
    ack = await ingest.batch(17, batch([record(1), bytes(corrupted), bad_card,
                                        record(4, key=REVOKED), record(5, key=RETIRED)]), "test")
    assert decode_ack(ack)["verdicts"] == [{"seq": 2, "verdict": "bad_mac"},
                                           {"seq": 3, "verdict": "malformed"},
                                           {"seq": 4, "verdict": "revoked_key"}]
    assert rows(conn, "SELECT seq, key_id FROM scans ORDER BY seq") == [(1, 2), (5, 1)]
    assert [q[:4] for q in quarantine(conn)] == [("bad_mac", 17, 1, 2), ("bad_card", 17, 1, 3),
                                                 ("revoked_key", 17, 1, 4)]


async def test_a_batch_signed_with_a_retired_key_is_acked_with_that_key(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    """The reader was not given its new key yet: its ack must still verify on the reader."""
    ack = await ingest.batch(17, batch([record(1, key=RETIRED)], key=RETIRED), "test")
    assert decode_ack(ack, RETIRED)["last_seq"] == 1
    assert rows(conn, "SELECT key_id FROM scans") == [(1,)]


@pytest.mark.parametrize(("reader", "payload", "reason"), [
    (17, batch([record(1, key=OTHER)], key=OTHER), "bad_mac"),  # forged: wrong key
    (18, batch([record(1, key=GONE, reader=18)], key=GONE, reader=18), "revoked_key"),
    (17, batch([record(1, key=REVOKED)], key=REVOKED), "revoked_key"),
    (20, batch([record(1, reader=20)], reader=20), "unknown_reader"),
    (19, batch([record(1)]), "identity_mismatch"),  # reader 17's batch on reader 19's topic
    (17, batch([record(1)])[:40], "truncated"),
    (17, batch([record(1)]) + b"\x00", "trailing_bytes"),
    (17, b"\x02" + batch([record(1)])[1:], "unsupported_version"),
    (17, b"\x01\x04" + bytes(64), "wrong_type"),
    (17, b"\x01\x02" + bytes(5000), "too_large"),
    (17, b"", "truncated"),
])
async def test_untrusted_batches_are_quarantined_whole_without_ack(
        ingest: Ingest, conn: sqlite3.Connection, reader: int, payload: bytes,
        reason: str) -> None:
    assert await ingest.batch(reader, payload, "mqtt att/v1/s/17/up/batch") is None
    assert await ingest.batch(reader, payload, "mqtt att/v1/s/17/up/batch") is None
    assert quarantine(conn) == [(reason, reader, *quarantine(conn)[0][2:4], 2,
                                 "mqtt att/v1/s/17/up/batch")]
    assert rows(conn, "SELECT COUNT(*) FROM scans") == [(0,)]
    assert ingest.metrics.quarantined.labels(reason)._value.get() == 2


async def test_an_oversized_message_keeps_a_bounded_sample(ingest: Ingest,
                                                           conn: sqlite3.Connection) -> None:
    await ingest.batch(17, b"\x01\x02" + bytes(1_000_000), "test")
    raw, detail = conn.execute("SELECT raw, detail FROM quarantine").fetchone()
    assert len(raw) == 8192 and "of 1000002 bytes" in detail


async def test_a_readers_batches_are_handled_in_arrival_order(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    acks = await asyncio.gather(*(ingest.batch(17, batch([record(s)]), "t") for s in range(1, 41)))
    assert [decode_ack(a)["first_seq"] for a in acks] == list(range(1, 41))
    assert rows(conn, "SELECT seq FROM scans ORDER BY scan_id") == [(s,) for s in range(1, 41)]
    assert rows(conn, "SELECT * FROM seq_gaps") == []


async def test_gaps_are_visible(ingest: Ingest, conn: sqlite3.Connection) -> None:
    await ingest.batch(17, batch([record(1), record(2), record(6)]), "t")
    assert rows(conn, "SELECT reader_id, boot, first_missing, last_missing FROM seq_gaps") == [
        (17, 1, 3, 5)]


# -- group commit and ack-after-commit ---------------------------------------------------------


async def test_concurrent_batches_share_commits_and_every_ack_follows_its_commit(
        conn: sqlite3.Connection, tmp_path: Path, clock: FakeClock) -> None:
    ingest = Ingest(conn, RING, clock=clock, config=IngestConfig(group_commit_max=10_000))
    ingest.start()
    # Another connection holds the write lock, so the writer's first BEGIN waits and the other
    # batches queue up meanwhile: they then share a commit.
    blocker = db.connect(tmp_path / "gateway.db", migrate=False)
    blocker.execute("BEGIN IMMEDIATE")
    # A third connection sees only what was committed: when a batch is acknowledged, its record
    # must already be there.
    observer = db.connect(tmp_path / "gateway.db", migrate=False)
    seen_at_ack: dict[int, bool] = {}

    def waiter(seq: int) -> Callable[[Outcome], None]:
        def done(outcome: Outcome) -> None:
            assert outcome.ack is not None
            seen_at_ack[seq] = observer.execute(
                "SELECT COUNT(*) FROM scans WHERE seq = ?", (seq,)).fetchone()[0] == 1
        return done

    for seq in range(1, 51):
        ingest.submit("batch", 17, batch([record(seq)]), "t", waiter(seq))
    await asyncio.sleep(0.2)
    assert seen_at_ack == {}  # nothing acknowledged while nothing can be committed
    blocker.execute("ROLLBACK")
    blocker.close()
    await ingest.close()
    observer.close()
    assert seen_at_ack == {seq: True for seq in range(1, 51)}
    assert ingest.metrics.group_messages._sum.get() == 50
    commits = next(sample.value for sample in ingest.metrics.group_messages.collect()[0].samples
                   if sample.name.endswith("_count"))
    assert commits <= 2  # what the writer had taken before the lock went, then the rest
    assert rows(conn, "SELECT COUNT(*) FROM scans") == [(50,)]


async def test_a_failed_commit_acknowledges_nothing(ingest: Ingest,
                                                    conn: sqlite3.Connection) -> None:
    refuse = threading.Event()
    refuse.set()

    def authorizer(action: int, arg1: str | None, *rest: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and refuse.is_set():
            refuse.clear()
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)
    assert await ingest.batch(17, batch([record(1)]), "t") is None
    assert rows(conn, "SELECT COUNT(*) FROM scans") == [(0,)]
    assert ingest.metrics.errors.labels("commit")._value.get() == 1
    assert await ingest.batch(17, batch([record(1)]), "t") is not None  # the resend succeeds
    assert rows(conn, "SELECT COUNT(*) FROM scans") == [(1,)]


async def test_the_rules_run_in_the_same_transaction_and_a_failure_rolls_back_only_its_batch(
        conn: sqlite3.Connection, clock: FakeClock) -> None:
    calls: list[list[StoredScan]] = []

    def rules(c: sqlite3.Connection, scans: list[StoredScan]) -> None:
        assert c.in_transaction
        calls.append(scans)
        c.execute("INSERT INTO unknown_cards (card, first_ms, last_ms) VALUES (?, 0, 0) "
                  "ON CONFLICT DO NOTHING", (scans[0].card,))
        if any(scan.reader_id == 19 for scan in scans):
            raise ValueError("rules cannot place this scan")

    ingest = Ingest(conn, RING, clock=clock, on_scans=rules)
    ingest.start()
    good, bad = await asyncio.gather(
        ingest.batch(17, batch([record(1), record(2)]), "t"),
        ingest.batch(19, batch([record(1, key=OTHER, reader=19)], key=OTHER, reader=19), "t"))
    await ingest.close()
    assert good is not None and bad is None
    assert rows(conn, "SELECT reader_id, seq FROM scans ORDER BY seq") == [(17, 1), (17, 2)]
    committed = [c for c in calls if all(s.reader_id == 17 for s in c)]
    assert [(s.reader_id, s.gate, s.card, s.time_source) for s in committed[-1]] == [
        (17, "main", "iso14443a:04A1B2C3", "reader")] * 2
    assert rows(conn, "SELECT COUNT(*) FROM unknown_cards") == [(1,)]
    assert ingest.metrics.errors.labels("rules")._value.get() == 1


async def test_close_finishes_what_was_submitted(conn: sqlite3.Connection,
                                                 clock: FakeClock) -> None:
    ingest = Ingest(conn, RING, clock=clock)
    ingest.start()
    outcomes: list[Outcome] = []
    for seq in range(1, 21):
        ingest.submit("batch", 17, batch([record(seq)]), "t", outcomes.append)
    await ingest.close()
    assert len(outcomes) == 20 and all(o.ack is not None for o in outcomes)
    with pytest.raises(RuntimeError):
        ingest.submit("batch", 17, batch([record(21)]), "t", outcomes.append)


# -- timestamps --------------------------------------------------------------------------------


async def test_each_time_provenance_is_stored(ingest: Ingest, conn: sqlite3.Connection,
                                              clock: FakeClock) -> None:
    # Boot 1: never synced, uploaded live: placed from the receive time, ticks kept.
    clock.now = NOW
    await ingest.batch(17, batch([record(1, synced=False, at_ms=946_684_800_000, ticks=50_000),
                                  record(2, synced=False, at_ms=946_684_810_000, ticks=60_000)]),
                       "t")
    # Boot 2: two taps before sync, then one after; the synced one anchors the others.
    clock.now = NOW + 500_000
    boot2 = [record(1, boot=2, synced=False, at_ms=946_684_800_000, ticks=10_000),
             record(2, boot=2, synced=False, at_ms=946_684_805_000, ticks=15_000),
             record(3, boot=2, synced=True, at_ms=NOW + 400_000, ticks=100_000)]
    await ingest.batch(17, batch(boot2, boot=2), "t")
    # Boot 3: a synced clock one hour in the future is not believed.
    clock.now = NOW + 900_000
    await ingest.batch(17, batch([record(1, boot=3, at_ms=NOW + 4_500_000, ticks=5_000)],
                                 boot=3), "t")
    assert rows(conn, "SELECT boot, seq, time_source, at_ms FROM scans ORDER BY boot, seq") == [
        (1, 1, "gateway", NOW - 10_000), (1, 2, "gateway", NOW),
        (2, 1, "corrected", NOW + 400_000 - 90_000), (2, 2, "corrected", NOW + 400_000 - 85_000),
        (2, 3, "reader", NOW + 400_000),
        (3, 1, "gateway", NOW + 900_000)]
    assert ingest.metrics.clock_implausible._value.get() == 1


async def test_a_heartbeat_on_connect_places_the_backlog_that_follows(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    """Offline for three hours and never synced: the heartbeat's uptime pins the boot."""
    clock.now = NOW + 3 * 3_600_000
    await ingest.heartbeat(17, heartbeat(synced=False, time_s=946_700_000,
                                         uptime_s=3 * 3_600 + 100), "t")
    backlog = [record(s, synced=False, at_ms=946_684_800_000, ticks=100_000 + s * 60_000)
               for s in range(1, 4)]
    clock.now += 200
    await ingest.batch(17, batch(backlog), "t")
    boot_start = NOW - 100_000  # the reader booted 3 h + 100 s before the heartbeat
    for seq, source, at in rows(conn, "SELECT seq, time_source, at_ms FROM scans ORDER BY seq"):
        true = boot_start + 100_000 + seq * 60_000
        assert source == "gateway" and 0 <= at - true <= 1_000


# -- heartbeats and results --------------------------------------------------------------------


async def test_heartbeats_keep_reader_status_and_clock_health(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    clock.now = NOW + 20
    await ingest.heartbeat(17, heartbeat(uptime_s=100, time_s=NOW // 1000), "t")
    status = "SELECT boot, state, uptime_s, clock_health, dropped FROM reader_status"
    assert rows(conn, status) == [(1, "online", 100, "ok", 0)]
    clock.now = NOW + 60_020
    await ingest.heartbeat(17, heartbeat(uptime_s=160, time_s=NOW // 1000 + 60, dropped=3), "t")
    assert rows(conn, status) == [(1, "online", 160, "ok", 3)]
    # The reader's clock was set five minutes ahead: a step in its own boot.
    clock.now = NOW + 120_020
    await ingest.heartbeat(17, heartbeat(uptime_s=220, time_s=NOW // 1000 + 420, dropped=3),
                           "t")
    assert rows(conn, status) == [(1, "online", 220, "jumped", 3)]
    # A replay of an older heartbeat changes nothing; the last will (made at connect) says
    # offline.
    await ingest.heartbeat(17, heartbeat(uptime_s=160, time_s=NOW // 1000 + 60), "t")
    assert rows(conn, status) == [(1, "online", 220, "jumped", 3)]
    await ingest.heartbeat(17, heartbeat(uptime_s=95, state="offline"), "t")
    assert rows(conn, status) == [(1, "offline", 220, "jumped", 3)]
    # A new boot, not synced yet.
    await ingest.heartbeat(17, heartbeat(boot=2, uptime_s=5, synced=False, time_s=946_684_805),
                           "t")
    assert rows(conn, status) == [(2, "online", 5, "unsynced", 0)]
    assert ingest.metrics.heartbeats._value.get() == 6


async def test_a_reconnect_within_the_same_uptime_second_is_online_again(
        ingest: Ingest, conn: sqlite3.Connection) -> None:
    status = "SELECT state, uptime_s FROM reader_status"
    await ingest.heartbeat(17, heartbeat(uptime_s=100), "t")
    await ingest.heartbeat(17, heartbeat(uptime_s=0, state="offline"), "t")  # the last will
    assert rows(conn, status) == [("offline", 100)]
    # the retained copy of the old status (a new gateway session) is no news
    await ingest.heartbeat(17, heartbeat(uptime_s=100), "t", retained=True)
    assert rows(conn, status) == [("offline", 100)]
    # the reader reconnected within second 100 of its uptime: its status on connect counts
    await ingest.heartbeat(17, heartbeat(uptime_s=100), "t")
    assert rows(conn, status) == [("online", 100)]
    await ingest.heartbeat(17, heartbeat(uptime_s=100), "t")  # now a plain repeat
    assert rows(conn, status) == [("online", 100)]


async def test_a_retained_heartbeat_does_not_anchor_time(ingest: Ingest,
                                                         conn: sqlite3.Connection) -> None:
    await ingest.heartbeat(17, heartbeat(synced=False, uptime_s=100), "t", retained=True)
    assert rows(conn, "SELECT bound_ticks_ms, anchor_source FROM reader_boots") == [(None, None)]
    assert rows(conn, "SELECT state FROM reader_status") == [("online",)]


async def test_bad_heartbeats_and_results_are_quarantined(
        ingest: Ingest, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture) -> None:
    await ingest.heartbeat(17, heartbeat(key=OTHER), "t")
    await ingest.heartbeat(20, heartbeat(reader=20), "t")
    await ingest.result(17, b"\x01\x06" + (17).to_bytes(4, "big") + bytes(21), "t")
    result = construct_codec.encode("result", {"reader_id": 17, "cmd_seq": 4, "status": "ok"},
                                    KEY)
    with caplog.at_level("INFO", logger="gateway.ingest"):
        await ingest.result(17, result, "t")
    assert [q[0] for q in quarantine(conn)] == ["bad_mac", "unknown_reader", "bad_mac"]
    assert any(r.message == "command result" and getattr(r, "cmd_seq", 0) == 4
               for r in caplog.records)
    assert rows(conn, "SELECT COUNT(*) FROM reader_status") == [(0,)]


async def test_a_transport_rejection_is_quarantined(ingest: Ingest,
                                                    conn: sqlite3.Connection) -> None:
    await ingest.reject(None, b"\x01\x02", "mqtt att/v1/s/01/up/batch", "bad_topic", "leading 0")
    assert quarantine(conn) == [("bad_topic", None, None, None, 1, "mqtt att/v1/s/01/up/batch")]


async def test_other_writers_run_on_the_ingest_thread(ingest: Ingest,
                                                      conn: sqlite3.Connection) -> None:
    def absences(c: sqlite3.Connection) -> int:
        assert c.in_transaction and threading.current_thread().name == "ingest-writer"
        c.execute("INSERT INTO unknown_cards (card, first_ms, last_ms) VALUES ('x', 0, 0)")
        return 7

    def broken(c: sqlite3.Connection) -> int:
        c.execute("INSERT INTO unknown_cards (card, first_ms, last_ms) VALUES ('y', 0, 0)")
        raise ValueError("no")

    assert await ingest.run_in_transaction(absences) == 7
    with pytest.raises(RuntimeError):
        await ingest.run_in_transaction(broken)
    assert rows(conn, "SELECT card FROM unknown_cards") == [("x",)]


# -- a reader clock set back (gateway/timing.py, "A clock set back") ---------------------------

MINUTE = 60_000


class SyncedReader:
    """A reader that booted at gateway time ``boot_ms``; its synced clock reads the gateway's
    time plus ``offset_ms``; ``tap`` and ``heartbeat`` are its messages made at a true time."""

    def __init__(self, boot_ms: int, offset_ms: int) -> None:
        self.boot_ms, self.offset_ms = boot_ms, offset_ms

    def tap(self, seq: int, true_ms: int) -> bytes:
        return record(seq, at_ms=true_ms + self.offset_ms, ticks=true_ms - self.boot_ms)

    def heartbeat(self, true_ms: int) -> bytes:
        return heartbeat(uptime_s=(true_ms - self.boot_ms) // 1000,
                         time_s=(true_ms + self.offset_ms) // 1000)


async def test_a_reader_clock_set_back_is_not_believed_through_the_ingest(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    """Twenty minutes behind (a spoofed NTP answer), live taps: the heartbeat on connect pins the
    boot, each tap is placed from its receive bound, and the reader is flagged."""
    reader = SyncedReader(NOW - 100_000, -20 * MINUTE)
    clock.now = NOW + 15
    await ingest.heartbeat(17, reader.heartbeat(NOW), "t")
    taps = [NOW + 60_000 + i * 5_000 for i in range(3)]
    for seq, tap in enumerate(taps, 1):
        clock.now = tap + 30
        await ingest.batch(17, batch([reader.tap(seq, tap)]), "t")
    stored = rows(conn, "SELECT time_source, at_ms, reader_time_ms FROM scans ORDER BY seq")
    for (source, at, claimed), tap in zip(stored, taps, strict=True):
        assert source == "gateway" and tap <= at <= tap + 30
        assert claimed == tap - 20 * MINUTE  # the reader's claim is kept for audit
    assert rows(conn, "SELECT clock_health FROM reader_status") == [("drifting",)]
    offset = rows(conn, "SELECT clock_offset_ms FROM reader_status")[0][0]
    assert -20 * MINUTE - 1_000 <= offset <= -20 * MINUTE + 1_000
    assert ingest.metrics.clock_implausible._value.get() == 3


async def test_an_honest_reader_and_its_two_hour_backlog_keep_their_own_times(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    """300 ms off, offline since the first bell: the records are two hours old in wall time and
    in ticks alike, so their offset agrees with the bound and their own times are kept."""
    reader = SyncedReader(NOW - 3 * 3_600_000, -300)
    clock.now = NOW + 20
    await ingest.heartbeat(17, reader.heartbeat(NOW), "t")
    taps = [NOW - 2 * 3_600_000 + i * 90_000 for i in range(5)]
    clock.now = NOW + 120
    await ingest.batch(17, batch([reader.tap(seq, tap) for seq, tap in enumerate(taps, 1)]), "t")
    assert rows(conn, "SELECT time_source, at_ms FROM scans ORDER BY seq") == [
        ("reader", tap - 300) for tap in taps]
    assert rows(conn, "SELECT clock_health FROM reader_status") == [("ok",)]
    assert ingest.metrics.clock_implausible._value.get() == 0


async def test_a_reader_clock_set_back_then_corrected_is_believed_again(
        ingest: Ingest, conn: sqlite3.Connection, clock: FakeClock) -> None:
    """The records made while the clock was set back keep their receive-bound times; after a
    genuine sync the reader's own times are used again, and the flag is held."""
    reader = SyncedReader(NOW - 100_000, -20 * MINUTE)
    clock.now = NOW + 15
    await ingest.heartbeat(17, reader.heartbeat(NOW), "t")
    clock.now = NOW + 60_030
    await ingest.batch(17, batch([reader.tap(1, NOW + 60_000)]), "t")
    reader.offset_ms = 0  # the next sync reached the real server
    clock.now = NOW + 600_010
    await ingest.heartbeat(17, reader.heartbeat(NOW + 600_000), "t")
    clock.now = NOW + 660_030
    await ingest.batch(17, batch([reader.tap(2, NOW + 660_000)]), "t")
    stored = rows(conn, "SELECT seq, time_source, at_ms FROM scans ORDER BY seq")
    assert stored[0][1] == "gateway" and NOW + 60_000 <= stored[0][2] <= NOW + 60_030
    assert stored[1] == (2, "reader", NOW + 660_000)
    assert rows(conn, "SELECT clock_health FROM reader_status") == [("drifting",)]
    assert ingest.metrics.clock_implausible._value.get() == 1
