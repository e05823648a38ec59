"""Verification of batches before anything else (invariant 2)."""

from __future__ import annotations

import pytest

from gateway.types import ReaderKey, StaticKeyRing
from gateway.verify import BatchRejected, verify_batch
from protocol import codec
from protocol.hmac256 import HmacSha256
from sim.reader import SimulatedReader

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CARD = (2, bytes.fromhex("04a1b2c3"))


def ring(keys: dict[int, bytes]) -> StaticKeyRing:
    return StaticKeyRing({rid: [ReaderKey(rid, key, "active")] for rid, key in keys.items()})


def test_a_good_batch_verifies_with_every_field() -> None:
    reader = SimulatedReader(17, KEY, "s1", boot=4, clock=lambda: 1_795_420_800.25,
                             monotonic=iter([0.0, 1.5, 2.0, 2.5]).__next__)
    batch = verify_batch(17, reader.batch([reader.tap(CARD) for _ in range(3)]),
                         ring({17: KEY}))
    assert (batch.reader_id, batch.boot, batch.first_seq, batch.last_seq) == (17, 4, 1, 3)
    assert [r.seq for r in batch.records] == [1, 2, 3]
    first = batch.records[0]
    assert (first.tech, first.uid, first.time_s, first.time_ms, first.ticks_ms) == (
        "iso14443a", CARD[1], 1_795_420_800, 250, 1500)
    assert first.clock_synced and batch.rejected == [] and first.key_id == 17


def test_unknown_reader_and_wrong_key_and_topic_mismatch() -> None:
    reader = SimulatedReader(17, KEY, "s1")
    payload = reader.batch([reader.tap(CARD)])
    for topic_reader, keys, reason in ((17, {}, "unknown_reader"),
                                       (17, {17: OTHER_KEY}, "bad_mac"),
                                       (18, {18: KEY}, "identity_mismatch")):
        with pytest.raises(BatchRejected) as info:
            verify_batch(topic_reader, payload, ring(keys))
        assert info.value.reason == reason


def test_malformed_batches_are_rejected_with_their_code() -> None:
    reader = SimulatedReader(17, KEY, "s1")
    payload = reader.batch([reader.tap(CARD)])
    for data, reason in ((payload[:30], "truncated"), (payload + b"\x00", "trailing_bytes"),
                         (b"\x02" + payload[1:], "unsupported_version"),
                         (bytes([1, 2]) + bytes(5000), "too_large")):
        with pytest.raises(BatchRejected) as info:
            verify_batch(17, data, ring({17: KEY}))
        assert info.value.reason == reason


def test_one_bad_record_is_rejected_alone_and_its_neighbours_kept() -> None:
    """A record corrupted in the reader's flash, inside a batch the reader signed afterwards."""
    reader = SimulatedReader(17, KEY, "s1")
    records = [reader.tap(CARD) for _ in range(3)]
    corrupted = bytearray(records[1])
    corrupted[20] ^= 0x01  # inside the UID: the record's own MAC no longer verifies
    signer = HmacSha256(KEY)
    writer = codec.BatchWriter()
    for rec in (records[0], bytes(corrupted), records[2]):
        writer.add(rec)
    batch = verify_batch(17, bytes(writer.finish(signer, 17, 1)), ring({17: KEY}))
    assert [r.seq for r in batch.records] == [1, 3]
    assert [(r.seq, r.verdict) for r in batch.rejected] == [(2, "bad_mac")]
    assert batch.rejected[0].raw == bytes(corrupted)
