"""protocol/construct_codec.py against SPEC.md, with bytes packed by hand (``struct``, ``hmac``).

The golden vectors are run by test_vectors.py; these tests pin byte offsets, every error code of
every kind, the check orders of §4.1, §9.1 and §11, and the encoders' own validation.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

from protocol import construct_codec as cc
from protocol.errors import ProtocolError

K = bytes(range(32))
K2 = bytes(range(1, 33))


def mac(body: bytes, key: bytes = K) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:16]


def signed(body: bytes, key: bytes = K) -> bytes:
    return body + mac(body, key)


def resign(data: bytes, key: bytes = K) -> bytes:
    return signed(data[:-16], key)


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value.code


def dec_code(kind: str, data: bytes, key: bytes | None = K) -> str:
    return code_of(lambda: cc.decode(kind, data, key))


def enc_code(kind: str, fields: dict[str, Any], key: bytes | None = K) -> str:
    return code_of(lambda: cc.encode(kind, fields, key))


# --- hand-packed messages ------------------------------------------------------------------------


def record_body(
    *,
    version: int = 1,
    mtype: int = 1,
    reader_id: int = 7,
    boot: int = 2,
    seq: int = 5,
    flags: int = 1,
    tech: int = 2,
    uid: bytes = b"\x04\xa1\xb2\xc3",
    uid_len: int | None = None,
    time_s: int = 1_800_000_000,
    time_ms: int = 999,
    ticks_ms: int = 0xFFFF_FFFF,
) -> bytes:
    n = len(uid) if uid_len is None else uid_len
    head = struct.pack(">BBIIIBBB", version, mtype, reader_id, boot, seq, flags, tech, n)
    return head + uid + struct.pack(">IHI", time_s, time_ms, ticks_ms)


def record(**kw: Any) -> bytes:
    return signed(record_body(**kw))


RECORD_FIELDS: dict[str, Any] = {
    "reader_id": 7,
    "boot": 2,
    "seq": 5,
    "clock_synced": True,
    "tech": "iso14443a",
    "uid": b"\x04\xa1\xb2\xc3",
    "time_s": 1_800_000_000,
    "time_ms": 999,
    "ticks_ms": 0xFFFF_FFFF,
}


def batch(
    records: list[bytes],
    *,
    reader_id: int = 7,
    boot: int = 2,
    first_seq: int | None = None,
    last_seq: int | None = None,
    count: int | None = None,
    key: bytes = K,
) -> bytes:
    seqs = [struct.unpack_from(">I", r, 10)[0] for r in records]
    first = seqs[0] if first_seq is None else first_seq
    last = seqs[-1] if last_seq is None else last_seq
    n = len(records) if count is None else count
    body = struct.pack(">BBIIIIB", 1, 2, reader_id, boot, first, last, n)
    body += b"".join(bytes([len(r)]) + r for r in records)
    return signed(body, key)


def ack(
    verdicts: list[tuple[int, int]], *, reader_id: int = 7, boot: int = 2, first: int = 5,
    last: int = 9, count: int | None = None,
) -> bytes:  # fmt: skip
    n = len(verdicts) if count is None else count
    body = struct.pack(">BBIIIIB", 1, 3, reader_id, boot, first, last, n)
    body += b"".join(struct.pack(">IB", s, v) for s, v in verdicts)
    return signed(body)


def heartbeat(**kw: Any) -> bytes:
    v: dict[str, Any] = {
        "reader_id": 7, "boot": 2, "state": 0, "faults": 0, "fw": (1, 2, 3), "link": 1,
        "rssi": -61, "flags": 1, "rest": (1, 2, 3, 4, 5, 6, 7, 8),
    } | kw  # fmt: skip
    body = struct.pack(
        ">BBIIBB3BBbB8I", 1, 4, v["reader_id"], v["boot"], v["state"], v["faults"], *v["fw"],
        v["link"], v["rssi"], v["flags"], *v["rest"],
    )  # fmt: skip
    return signed(body)


def command(opcode: int, args: bytes, *, reader_id: int = 7, cmd_seq: int = 3) -> bytes:
    body = struct.pack(">BBIIIBB", 1, 5, reader_id, cmd_seq, 1_800_000_000, opcode, len(args))
    return signed(body + args)


def result(status: int = 0, *, reader_id: int = 7, cmd_seq: int = 3) -> bytes:
    return signed(struct.pack(">BBIIB", 1, 6, reader_id, cmd_seq, status))


def crc(data: bytes) -> int:  # bitwise reference, independent of the module's table
    value = 0xFFFF
    for byte in data:
        value ^= byte << 8
        for _ in range(8):
            value = ((value << 1) ^ 0x1021) & 0xFFFF if value & 0x8000 else (value << 1) & 0xFFFF
    return value


def frame_body(addr: int = 5, ftype: int = 2, fseq: int = 9, payload: bytes = b"") -> bytes:
    body = bytes([addr, ftype, fseq]) + payload
    return body + struct.pack(">H", crc(body))


def wire(body: bytes) -> bytes:
    return b"\x00" + cc.cobs_encode(body) + b"\x00"


# --- primitives ----------------------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert cc.crc16_ibm3740(b"123456789") == 0x29B1
    data = bytes(random.Random(1).randrange(256) for _ in range(300))
    assert cc.crc16_ibm3740(data) == crc(data)


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
        (bytes(range(1, 255)) + b"\x00", b"\xff" + bytes(range(1, 255)) + b"\x01\x01"),
    ],
)
def test_cobs_known_encodings(raw: bytes, encoded: bytes) -> None:
    assert cc.cobs_encode(raw) == encoded
    assert cc.cobs_decode(encoded) == raw


def test_cobs_round_trips_and_accepts_redundant_final_code() -> None:
    rng = random.Random(7)
    for _ in range(300):
        raw = bytes(rng.choice((0, 1, 0xFF, rng.randrange(256))) for _ in range(rng.randrange(700)))
        encoded = cc.cobs_encode(raw)
        assert 0 not in encoded
        assert cc.cobs_decode(encoded) == raw
    run = bytes(range(1, 255))
    assert cc.cobs_decode(b"\xff" + run + b"\x01") == run


@pytest.mark.parametrize("encoded", [b"", b"\x03\x11", b"\x02\x11\x00", b"\x05\x01\x01"])
def test_cobs_invalid(encoded: bytes) -> None:
    assert code_of(lambda: cc.cobs_decode(encoded)) == "bad_framing"


def test_verify_and_compute_mac() -> None:
    data = record()
    assert cc.compute_mac(K, data[:-16]) == data[-16:]
    assert cc.verify_mac(data, K)
    assert not cc.verify_mac(data, K2)
    assert not cc.verify_mac(data[:-1] + bytes([data[-1] ^ 1]), K)
    assert not cc.verify_mac(b"\x01" * 16, K)


# --- record (§3) ---------------------------------------------------------------------------------


def test_record_offsets_and_round_trip() -> None:
    data = cc.encode("record", RECORD_FIELDS, K)
    assert len(data) == 43 + 4
    assert data[:2] == b"\x01\x01"
    assert struct.unpack_from(">IIIBBB", data, 2) == (7, 2, 5, 1, 2, 4)
    assert data[17:21] == b"\x04\xa1\xb2\xc3"
    assert struct.unpack_from(">IHI", data, 21) == (1_800_000_000, 999, 0xFFFF_FFFF)
    assert data[31:] == mac(data[:31])
    assert data == record()
    assert cc.decode("record", data, K) == RECORD_FIELDS | {"mac": data[31:]}


@pytest.mark.parametrize(
    ("tech", "name", "uid"),
    [
        (1, "em4100", b"\x12\x34\x56\x78\x9a"),
        (2, "iso14443a", bytes(7)),
        (2, "iso14443a", bytes(range(10))),
        (3, "wiegand26", b"\x0a\x00\x01"),
        (4, "wiegand34", b"\x00\x0a\x00\x01"),
        (5, "wiegand37", b"\x07\xff\xff\xff\xff"),
    ],
)
def test_record_every_technology(tech: int, name: str, uid: bytes) -> None:
    data = record(tech=tech, uid=uid, flags=0, time_ms=0, ticks_ms=0)
    fields = cc.decode("record", data, K)
    assert (fields["tech"], fields["uid"], fields["clock_synced"]) == (name, uid, False)
    assert cc.encode("record", fields, K) == data


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (record(version=0), "unsupported_version"),
        (record(version=2)[:1] + b"\x07", "unsupported_version"),  # version before type
        (record(mtype=2), "wrong_type"),
        (record()[:16], "truncated"),  # no uid_len
        (record()[:-1], "truncated"),
        (record() + b"\x00", "trailing_bytes"),
        (record(uid_len=11)[:20], "bad_card"),  # uid_len > 10 before the size check
        (record()[:-1] + bytes([record()[-1] ^ 0x80]), "bad_mac"),
        (signed(record_body(), K2), "bad_mac"),
        (record(reader_id=0), "bad_field"),
        (record(reader_id=0xFFFF_FFFF), "bad_field"),
        (record(boot=0), "bad_field"),
        (record(seq=0), "bad_field"),
        (record(flags=2), "bad_flags"),
        (record(tech=0), "bad_card"),
        (record(tech=6), "bad_card"),
        (record(tech=1, uid=bytes(4)), "bad_card"),
        (record(tech=2, uid=bytes(5)), "bad_card"),
        (record(tech=3, uid=bytes(4)), "bad_card"),
        (record(tech=5, uid=b"\x08\x00\x00\x00\x00"), "bad_card"),
        (record(uid=b""), "bad_card"),
        (record(time_ms=1000), "bad_field"),
    ],
)
def test_record_errors(data: bytes, code: str) -> None:
    assert dec_code("record", data) == code


def test_record_check_order() -> None:
    # structure before MAC: a cut record with a bad MAC is truncated
    assert dec_code("record", record()[:-3]) == "truncated"
    # MAC before content: bad fields under a bad MAC are bad_mac
    assert dec_code("record", signed(record_body(reader_id=0, tech=9), K2)) == "bad_mac"
    # content in offset order
    assert dec_code("record", record(reader_id=0, flags=0x80, tech=9)) == "bad_field"
    assert dec_code("record", record(flags=0x80, tech=9, time_ms=5000)) == "bad_flags"
    assert dec_code("record", record(tech=1, uid=bytes(4), time_ms=5000)) == "bad_card"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"reader_id": 0}, "bad_field"),
        ({"reader_id": 0xFFFF_FFFF}, "bad_field"),
        ({"boot": 0}, "bad_field"),
        ({"seq": -1}, "bad_field"),
        ({"seq": 1 << 32}, "bad_field"),
        ({"seq": True}, "bad_field"),
        ({"seq": "5"}, "bad_field"),
        ({"clock_synced": 1}, "bad_field"),
        ({"tech": "mifare"}, "bad_card"),
        ({"tech": 2}, "bad_card"),
        ({"uid": bytes(5)}, "bad_card"),
        ({"uid": bytes(11)}, "bad_card"),
        ({"uid": "04a1b2c3"}, "bad_field"),
        ({"tech": "wiegand37", "uid": b"\xff" * 5}, "bad_card"),
        ({"time_ms": 1000}, "bad_field"),
        ({"ticks_ms": 1 << 32}, "bad_field"),
        ({"extra": 1}, "bad_field"),
    ],
)
def test_record_encoder_validates(change: dict[str, Any], code: str) -> None:
    assert enc_code("record", RECORD_FIELDS | change) == code


def test_record_encoder_needs_every_field_and_ignores_mac() -> None:
    fields = dict(RECORD_FIELDS)
    del fields["uid"]
    assert enc_code("record", fields) == "bad_field"
    assert cc.encode("record", RECORD_FIELDS | {"mac": bytes(16)}, K) == record()


# --- batch (§4) ----------------------------------------------------------------------------------


def recs(*seqs: int, **kw: Any) -> list[bytes]:
    return [record(seq=s, **kw) for s in seqs]


def test_batch_offsets_round_trip_and_split() -> None:
    records = [record(seq=5), record(seq=9, tech=1, uid=b"\x01\x02\x03\x04\x05")]
    data = batch(records)
    assert struct.unpack_from(">BBIIIIB", data) == (1, 2, 7, 2, 5, 9, 2)
    assert data[19] == 47 and data[20:67] == records[0]
    assert data[67] == 48 and data[68:116] == records[1]
    assert data[116:] == mac(data[:116])
    header, slices = cc.split_batch(data, K)
    assert slices == records
    assert header == {"reader_id": 7, "boot": 2, "first_seq": 5, "last_seq": 9, "mac": data[-16:]}
    fields = cc.decode("batch", data, K)
    assert [r["seq"] for r in fields["records"]] == [5, 9]
    assert fields["records"][1]["tech"] == "em4100"
    assert cc.encode("batch", fields, K) == data


def test_batch_of_64_longest_records() -> None:
    records = recs(*range(1, 65), uid=bytes(range(10)))
    data = batch(records)
    assert len(data) == 19 + 64 * 54 + 16
    assert cc.encode("batch", cc.decode("batch", data, K), K) == data


def test_split_batch_leaves_step_6_to_the_caller() -> None:
    bad = signed(record_body(seq=6), K2)  # inner record MAC from another key
    data = batch([record(seq=5), bad, record(seq=7, tech=9)])
    header, slices = cc.split_batch(data, K)
    assert header["last_seq"] == 7 and slices[1] == bad
    assert cc.decode("record", slices[0], K)["seq"] == 5
    assert dec_code("record", slices[1]) == "bad_mac"
    assert cc.verify_mac(slices[1], K2)
    assert dec_code("record", slices[2]) == "bad_card"
    assert dec_code("batch", data) == "bad_mac"  # step 6 in order: the first bad record


def with_rec_len(records: list[bytes], lengths: list[int]) -> bytes:
    """A signed batch whose rec_len bytes are forced (the record bytes are kept)."""
    seqs = [struct.unpack_from(">I", r, 10)[0] for r in records]
    body = struct.pack(">BBIIIIB", 1, 2, 7, 2, seqs[0], seqs[-1], len(records))
    body += b"".join(bytes([n]) + r for n, r in zip(lengths, records, strict=True))
    return signed(body)


def test_batch_errors() -> None:
    one = batch(recs(5))
    assert dec_code("batch", b"") == "truncated"
    assert dec_code("batch", b"\x02") == "truncated"
    assert dec_code("batch", b"\x02\x02" + one[2:]) == "unsupported_version"
    assert dec_code("batch", record()) == "wrong_type"
    assert dec_code("batch", one + bytes(4097 - len(one))) == "too_large"
    assert dec_code("batch", one[:18]) == "truncated"
    assert dec_code("batch", batch(recs(5), count=0)) == "bad_count"
    assert dec_code("batch", batch(recs(5), count=65)) == "bad_count"
    assert dec_code("batch", one[:19]) == "truncated"  # no rec_len
    assert dec_code("batch", with_rec_len(recs(5), [45])) == "bad_length"
    assert dec_code("batch", with_rec_len(recs(5), [54])) == "bad_length"
    assert dec_code("batch", one[:40]) == "truncated"  # record cut
    assert dec_code("batch", batch(recs(5), count=2)[:-16]) == "truncated"  # missing record
    assert dec_code("batch", batch(recs(5), count=2)) == "bad_length"  # MAC read as a rec_len
    assert dec_code("batch", one[:-1]) == "truncated"  # MAC cut
    assert dec_code("batch", one + b"\x00") == "trailing_bytes"
    assert dec_code("batch", resign(one[:-17] + b"\x00" + one[-17:])) == "trailing_bytes"
    assert dec_code("batch", batch(recs(5), key=K2)) == "bad_mac"
    assert dec_code("batch", batch(recs(5, 6), reader_id=8)) == "identity_mismatch"
    assert dec_code("batch", batch(recs(5, 6), boot=3)) == "identity_mismatch"
    assert dec_code("batch", batch(recs(6, 5))) == "bad_sequence"
    assert dec_code("batch", batch(recs(5, 5))) == "bad_sequence"
    assert dec_code("batch", batch(recs(5, 6), first_seq=4)) == "bad_sequence"
    assert dec_code("batch", batch(recs(5, 6), last_seq=7)) == "bad_sequence"
    # step 6: each record as a standalone one, rec_len as its length
    assert dec_code("batch", batch(recs(5, 6, tech=1))) == "bad_card"
    short = record(seq=5)[:-1]  # rec_len 46 around a 47-byte record layout
    assert dec_code("batch", with_rec_len([short], [46])) == "truncated"


def test_batch_check_order() -> None:
    big = batch(recs(*range(1, 65), uid=bytes(10)))
    # too_large (step 1) before truncated and bad_count (step 2)
    assert dec_code("batch", big[:2] + bytes(4095)) == "too_large"
    # bad_count before walking
    assert dec_code("batch", batch(recs(5), count=0)[:30]) == "bad_count"
    # walking (step 3) before the MAC (step 4)
    assert dec_code("batch", batch(recs(5), key=K2) + b"\x00") == "trailing_bytes"
    # MAC before identity/sequence (step 5)
    assert dec_code("batch", batch(recs(6, 5), reader_id=8, key=K2)) == "bad_mac"
    # identity_mismatch before bad_sequence, and both before any record content (step 6)
    assert dec_code("batch", batch(recs(6, 5), reader_id=8)) == "identity_mismatch"
    assert dec_code("batch", batch(recs(6, 5, tech=9))) == "bad_sequence"
    assert dec_code("batch", batch(recs(5, 6, tech=9), reader_id=8)) == "identity_mismatch"


def test_batch_encoder_validates() -> None:
    fields = cc.decode("batch", batch(recs(5, 6)), K)
    assert enc_code("batch", fields | {"records": []}) == "bad_count"
    assert enc_code("batch", fields | {"first_seq": 4}) == "bad_sequence"
    assert enc_code("batch", fields | {"records": fields["records"][::-1]}) == "bad_sequence"
    assert enc_code("batch", fields | {"reader_id": 8}) == "identity_mismatch"
    assert enc_code("batch", fields | {"boot": -1}) == "bad_field"
    assert enc_code("batch", fields | {"records": "no"}) == "bad_field"
    bad_record = fields["records"][0] | {"time_ms": 1000}
    assert enc_code("batch", fields | {"records": [bad_record]}) == "bad_field"


# --- ack (§5) ------------------------------------------------------------------------------------


def test_ack_offsets_and_round_trip() -> None:
    data = ack([(6, 1), (7, 2), (8, 3), (9, 4)])
    assert len(data) == 35 + 20
    fields = cc.decode("ack", data, K)
    assert fields == {
        "reader_id": 7, "boot": 2, "first_seq": 5, "last_seq": 9,
        "verdicts": [
            {"seq": 6, "verdict": "bad_mac"}, {"seq": 7, "verdict": "malformed"},
            {"seq": 8, "verdict": "revoked_key"}, {"seq": 9, "verdict": "identity_conflict"},
        ],
        "mac": data[-16:],
    }  # fmt: skip
    assert cc.encode("ack", fields, K) == data
    plain = ack([], first=5, last=5)
    assert len(plain) == 35 and cc.encode("ack", cc.decode("ack", plain, K), K) == plain


def test_ack_errors_and_order() -> None:
    data = ack([(6, 1)])
    assert dec_code("ack", data[:-1]) == "truncated"
    assert dec_code("ack", data[:18]) == "truncated"
    assert dec_code("ack", data + b"\x00") == "trailing_bytes"
    assert dec_code("ack", result()) == "wrong_type"
    assert dec_code("ack", resign(data, K2)) == "bad_mac"
    assert dec_code("ack", ack([(6, 1)] * 65, count=65)) == "bad_count"
    assert dec_code("ack", ack([], count=65)) == "bad_count"  # count before size
    assert dec_code("ack", ack([], reader_id=0)) == "bad_field"
    assert dec_code("ack", ack([], first=9, last=8)) == "bad_sequence"
    assert dec_code("ack", ack([(4, 1)])) == "bad_sequence"
    assert dec_code("ack", ack([(10, 1)])) == "bad_sequence"
    assert dec_code("ack", ack([(7, 1), (7, 1)])) == "bad_sequence"
    assert dec_code("ack", ack([(7, 1), (6, 1)])) == "bad_sequence"
    assert dec_code("ack", ack([(6, 0)])) == "bad_field"
    assert dec_code("ack", ack([(6, 5)])) == "bad_field"
    # offset order inside the verdict list: entry 0's verdict before entry 1's seq
    assert dec_code("ack", ack([(6, 9), (5, 1)])) == "bad_field"
    assert dec_code("ack", ack([(6, 1), (5, 9)])) == "bad_sequence"


def test_ack_encoder_validates() -> None:
    fields = cc.decode("ack", ack([(6, 1)]), K)
    verdict = {"seq": 6, "verdict": "bad_mac"}
    assert enc_code("ack", fields | {"verdicts": [verdict] * 65}) == "bad_count"
    assert enc_code("ack", fields | {"verdicts": [verdict | {"verdict": "x"}]}) == "bad_field"
    assert enc_code("ack", fields | {"verdicts": [verdict | {"seq": 10}]}) == "bad_sequence"
    assert enc_code("ack", fields | {"verdicts": [verdict, verdict]}) == "bad_sequence"
    assert enc_code("ack", fields | {"last_seq": 4}) == "bad_sequence"
    assert enc_code("ack", fields | {"reader_id": 0}) == "bad_field"


# --- heartbeat (§6) ------------------------------------------------------------------------------


def test_fast_ack_builder_matches_the_declaration() -> None:
    """``ack_for_batch`` (the ingest's hot path) builds exactly what ``encode('ack')`` builds."""
    rng = random.Random(5)
    names = list(cc.VERDICTS.values())
    for _ in range(300):
        first = rng.randint(1, 2**32 - 70)
        last = first + rng.randint(0, 63)
        seqs = rng.sample(range(first, last + 1), rng.randint(0, min(8, last - first + 1)))
        verdicts = {seq: rng.choice(names) for seq in seqs}
        ident = (rng.randint(1, 0xFFFFFFFE), rng.randint(1, 2**32 - 1), first, last)
        fields = {"reader_id": ident[0], "boot": ident[1], "first_seq": first, "last_seq": last,
                  "verdicts": [{"seq": s, "verdict": v} for s, v in sorted(verdicts.items())]}
        assert cc.ack_for_batch(*ident, verdicts, K) == cc.encode("ack", fields, K)
    assert code_of(lambda: cc.ack_for_batch(1, 1, 5, 6, {7: "bad_mac"}, K)) == "bad_sequence"
    assert code_of(lambda: cc.ack_for_batch(1, 1, 5, 6, {5: "lost"}, K)) == "bad_field"
    many = {s: "bad_mac" for s in range(1, 66)}
    assert code_of(lambda: cc.ack_for_batch(1, 1, 1, 65, many, K)) == "bad_count"


def test_heartbeat_offsets_and_round_trip() -> None:
    data = heartbeat(state=2, faults=0b101, link=3, rssi=-128, flags=0)
    assert len(data) == 66
    fields = cc.decode("heartbeat", data, K)
    assert fields == {
        "reader_id": 7, "boot": 2, "state": "fault", "faults": ["reader_chip", "queue_full"],
        "fw_version": "1.2.3", "link": "rs485", "rssi_dbm": -128, "clock_synced": False,
        "time_s": 1, "uptime_s": 2, "free_heap": 3, "queue_depth": 4, "oldest_unsent_age_s": 5,
        "dropped": 6, "last_ack_boot": 7, "last_ack_seq": 8, "mac": data[-16:],
    }  # fmt: skip
    assert cc.encode("heartbeat", fields, K) == data


def test_heartbeat_errors() -> None:
    data = heartbeat()
    assert dec_code("heartbeat", data[:-1]) == "truncated"
    assert dec_code("heartbeat", data + b"\x00") == "trailing_bytes"
    assert dec_code("heartbeat", resign(data, K2)) == "bad_mac"
    assert dec_code("heartbeat", heartbeat(reader_id=0)) == "bad_field"
    assert dec_code("heartbeat", heartbeat(boot=0)) == "bad_field"
    assert dec_code("heartbeat", heartbeat(state=3)) == "bad_field"
    assert dec_code("heartbeat", heartbeat(faults=8)) == "bad_flags"
    assert dec_code("heartbeat", heartbeat(link=4)) == "bad_field"
    assert dec_code("heartbeat", heartbeat(flags=2)) == "bad_flags"
    assert dec_code("heartbeat", heartbeat(faults=8, link=4)) == "bad_flags"  # offset order
    assert dec_code("heartbeat", heartbeat(link=4, flags=2)) == "bad_field"


def test_heartbeat_encoder_validates() -> None:
    fields = cc.decode("heartbeat", heartbeat(), K)
    for bad in ("1.2", "1.2.256", "01.2.3", "1.2.3.4", "v1.2.3", 123):
        assert enc_code("heartbeat", fields | {"fw_version": bad}) == "bad_field"
    assert enc_code("heartbeat", fields | {"faults": ["flash", "reader_chip"]}) == "bad_field"
    assert enc_code("heartbeat", fields | {"faults": ["antenna"]}) == "bad_flags"
    assert enc_code("heartbeat", fields | {"state": "asleep"}) == "bad_field"
    assert enc_code("heartbeat", fields | {"rssi_dbm": -129}) == "bad_field"
    assert enc_code("heartbeat", fields | {"free_heap": -1}) == "bad_field"


# --- command (§7.1) ------------------------------------------------------------------------------


def config(*entries: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([k, len(v)]) + v for k, v in entries)


ALL_CONFIG = config(
    (1, struct.pack(">H", 60000)), (2, b"\x00"), (3, struct.pack(">H", 10)), (4, b"\x40")
)


@pytest.mark.parametrize(
    ("opcode", "args", "name", "decoded"),
    [
        (1, struct.pack(">IH", 1_800_000_000, 999), "set_time",
         {"time_s": 1_800_000_000, "time_ms": 999}),
        (2, ALL_CONFIG, "set_config",
         {"debounce_ms": 60000, "volume": 0, "heartbeat_s": 10, "batch_max_records": 64}),
        (2, config((2, b"\x64")), "set_config", {"volume": 100}),
        (3, b"", "request_heartbeat", {}),
        (4, b"", "reboot", {}),
    ],
)  # fmt: skip
def test_command_round_trip(opcode: int, args: bytes, name: str, decoded: dict[str, int]) -> None:
    data = command(opcode, args)
    assert len(data) == 32 + len(args)
    fields = cc.decode("command", data, K)
    assert fields == {
        "reader_id": 7, "cmd_seq": 3, "issued_s": 1_800_000_000, "opcode": name,
        "args": decoded, "mac": data[-16:],
    }  # fmt: skip
    assert cc.encode("command", fields, K) == data


def test_set_config_encodes_keys_ascending_whatever_the_dict_order() -> None:
    fields = cc.decode("command", command(2, ALL_CONFIG), K)
    fields["args"] = dict(reversed(fields["args"].items()))
    assert cc.encode("command", fields, K) == command(2, ALL_CONFIG)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (command(3, b"")[:-1], "truncated"),
        (command(3, b"")[:15], "truncated"),
        (command(3, b"") + b"\x00", "trailing_bytes"),
        (resign(command(3, b""), K2), "bad_mac"),
        (command(3, bytes(65))[:40], "bad_field"),  # arg_len > 64 before the size check
        (command(3, b"", reader_id=0), "bad_field"),
        (command(3, b"", cmd_seq=0), "bad_field"),
        (command(0, b""), "bad_field"),
        (command(5, b""), "bad_field"),
        (command(1, bytes(5)), "bad_field"),
        (command(1, bytes(7)), "bad_field"),
        (command(1, struct.pack(">IH", 0, 1000)), "bad_field"),
        (command(4, b"\x00"), "bad_field"),
        (command(2, b""), "bad_field"),
        (command(2, config((5, b"\x00"))), "bad_field"),
        (command(2, config((0, b"\x00"))), "bad_field"),
        (command(2, config((2, b"\x01"), (1, b"\x01\x00"))), "bad_field"),
        (command(2, config((2, b"\x01"), (2, b"\x01"))), "bad_field"),
        (command(2, config((2, b"\x00\x01"))), "bad_field"),
        (command(2, config((1, b"\x01"))), "bad_field"),
        (command(2, config((2, b"\x01"))[:-1]), "bad_field"),
        (command(2, b"\x02"), "bad_field"),
        (command(2, config((2, b"\x65"))), "bad_field"),
        (command(2, config((1, struct.pack(">H", 99)))), "bad_field"),
        (command(2, config((1, struct.pack(">H", 60001)))), "bad_field"),
        (command(2, config((3, struct.pack(">H", 3601)))), "bad_field"),
        (command(2, config((4, b"\x00"))), "bad_field"),
        (command(2, config((4, b"\x41"))), "bad_field"),
    ],
)
def test_command_errors(data: bytes, code: str) -> None:
    assert dec_code("command", data) == code


def test_command_encoder_validates() -> None:
    fields = cc.decode("command", command(1, struct.pack(">IH", 5, 6)), K)
    assert enc_code("command", fields | {"opcode": "selfdestruct"}) == "bad_field"
    assert enc_code("command", fields | {"args": {"time_s": 5}}) == "bad_field"
    assert enc_code("command", fields | {"args": {"time_s": 5, "time_ms": 1000}}) == "bad_field"
    assert enc_code("command", fields | {"opcode": "reboot"}) == "bad_field"  # args not allowed
    assert enc_code("command", fields | {"opcode": "set_config", "args": {}}) == "bad_field"
    for args in ({"volume": 101}, {"volume": -1}, {"brightness": 1}, {"debounce_ms": 99}):
        assert enc_code("command", fields | {"opcode": "set_config", "args": args}) == "bad_field"
    assert enc_code("command", fields | {"cmd_seq": 0}) == "bad_field"


# --- result (§7.2) -------------------------------------------------------------------------------


def test_result_round_trip_and_errors() -> None:
    for status, name in enumerate(("ok", "unknown_opcode", "bad_args", "stale", "failed")):
        data = result(status)
        fields = cc.decode("result", data, K)
        assert fields == {"reader_id": 7, "cmd_seq": 3, "status": name, "mac": data[-16:]}
        assert cc.encode("result", fields, K) == data
    assert dec_code("result", result()[:-1]) == "truncated"
    assert dec_code("result", result() + b"\x00") == "trailing_bytes"
    assert dec_code("result", heartbeat()) == "wrong_type"
    assert dec_code("result", resign(result(), K2)) == "bad_mac"
    assert dec_code("result", result(5)) == "bad_field"
    assert dec_code("result", result(reader_id=0)) == "bad_field"
    assert dec_code("result", result(cmd_seq=0)) == "bad_field"
    assert enc_code("result", {"reader_id": 7, "cmd_seq": 3, "status": "done"}) == "bad_field"


# --- frame (§9.1) --------------------------------------------------------------------------------


def test_frame_layout_and_round_trip() -> None:
    payload = result()
    data = cc.encode("frame", {"addr": 5, "ftype": "data", "fseq": 255, "payload": payload}, None)
    assert data[0] == 0 and data[-1] == 0 and 0 not in data[1:-1]
    body = cc.cobs_decode(data[1:-1])
    assert body[:3] == bytes([5, 2, 255]) and body[3:-2] == payload
    assert struct.unpack(">H", body[-2:])[0] == crc(body[:-2])
    assert cc.decode("frame", data, None) == {
        "addr": 5, "ftype": "data", "fseq": 255, "payload": payload,
    }  # fmt: skip
    for ftype, code in (("poll", 1), ("idle", 3), ("nack", 4)):
        data = wire(frame_body(addr=247, ftype=code, fseq=0))
        fields = cc.decode("frame", data, None)
        assert fields == {"addr": 247, "ftype": ftype, "fseq": 0, "payload": b""}
        assert cc.encode("frame", fields, None) == data


def test_longest_frame() -> None:
    payload = bytes(range(1, 256)) * 4 + bytes(range(1, 5))  # 1024 bytes, no zero
    data = cc.encode("frame", {"addr": 1, "ftype": "poll", "fseq": 1, "payload": payload}, None)
    assert len(data) <= 1036
    assert cc.decode("frame", data, None)["payload"] == payload


def test_frame_errors() -> None:
    good = wire(frame_body(payload=b"\x01\x02"))
    assert dec_code("frame", good[1:], None) == "bad_framing"
    assert dec_code("frame", good[:-1], None) == "bad_framing"
    assert dec_code("frame", b"\x00", None) == "bad_framing"
    assert dec_code("frame", b"\x00\x00", None) == "bad_framing"
    assert dec_code("frame", good[:4] + b"\x00" + good[4:], None) == "bad_framing"
    assert dec_code("frame", b"\x00\x09\x01\x02\x00", None) == "bad_framing"
    assert dec_code("frame", wire(frame_body()[:4]), None) == "truncated"
    body = bytearray(frame_body())
    body[-1] ^= 1
    assert dec_code("frame", wire(bytes(body)), None) == "bad_crc"
    assert dec_code("frame", wire(frame_body(addr=0)), None) == "bad_field"
    assert dec_code("frame", wire(frame_body(addr=248)), None) == "bad_field"
    assert dec_code("frame", wire(frame_body(ftype=0)), None) == "bad_field"
    assert dec_code("frame", wire(frame_body(ftype=5)), None) == "bad_field"
    assert dec_code("frame", wire(frame_body(ftype=3, payload=b"\x01")), None) == "trailing_bytes"
    assert dec_code("frame", wire(frame_body(ftype=4, payload=b"\x01")), None) == "trailing_bytes"
    assert dec_code("frame", wire(frame_body(payload=bytes(1025))), None) == "too_large"
    long_chunk = b"\x00" + b"\x01" * 1035 + b"\x00"
    assert dec_code("frame", long_chunk, None) == "too_large"


def test_frame_check_order() -> None:
    # chunk size before COBS, COBS before CRC, CRC before fields, fields before payload size
    assert dec_code("frame", b"\x00" + b"\xff" * 1035 + b"\x00", None) == "too_large"
    bad_crc = bytearray(frame_body(addr=0, ftype=9))
    bad_crc[-1] ^= 1
    assert dec_code("frame", wire(bytes(bad_crc)), None) == "bad_crc"
    assert dec_code("frame", wire(frame_body(addr=0, ftype=3, payload=b"x")), None) == "bad_field"
    assert dec_code("frame", wire(frame_body(ftype=3, payload=bytes(1025))), None) == (
        "trailing_bytes"
    )


def test_frame_encoder_validates() -> None:
    base = {"addr": 5, "ftype": "poll", "fseq": 0, "payload": b""}
    assert enc_code("frame", base | {"addr": 0}, None) == "bad_field"
    assert enc_code("frame", base | {"addr": 248}, None) == "bad_field"
    assert enc_code("frame", base | {"fseq": 256}, None) == "bad_field"
    assert enc_code("frame", base | {"ftype": "ack"}, None) == "bad_field"
    assert enc_code("frame", base | {"payload": "x"}, None) == "bad_field"
    assert enc_code("frame", base | {"ftype": "idle", "payload": b"x"}, None) == "trailing_bytes"
    assert enc_code("frame", base | {"payload": bytes(1025)}, None) == "too_large"


# --- robustness ----------------------------------------------------------------------------------


def valid_samples() -> dict[str, bytes]:
    return {
        "record": record(),
        "batch": batch(recs(5, 6, 9)),
        "ack": ack([(6, 1), (8, 4)]),
        "heartbeat": heartbeat(),
        "command": command(2, ALL_CONFIG),
        "result": result(),
        "frame": wire(frame_body(payload=result())),
    }


@pytest.mark.parametrize("kind", sorted(cc.KINDS))
def test_only_protocol_errors_escape(kind: str) -> None:
    """Cut, extended and mutated inputs (re-signed, so field checks run) raise ProtocolError."""
    rng = random.Random(kind)
    base = valid_samples()[kind]
    key = None if kind == "frame" else K
    for _ in range(1500):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.choice((0, 1, 0xFF, rng.randrange(256)))
        choice = rng.random()
        if choice < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        elif choice < 0.4:
            data += bytes(rng.randrange(3))
        if kind != "frame" and len(data) > 16 and rng.random() < 0.8:
            data = bytearray(resign(bytes(data)))
        try:
            fields = cc.decode(kind, bytes(data), key)
        except ProtocolError:
            continue
        assert cc.encode(kind, fields, key) == bytes(data)


@pytest.mark.parametrize("kind", sorted(cc.KINDS - {"frame"}))
def test_every_kind_checks_version_type_and_key(kind: str) -> None:
    data = valid_samples()[kind]
    assert dec_code(kind, b"\x00" + data[1:]) == "unsupported_version"
    other = 3 if data[1] != 3 else 4
    assert dec_code(kind, data[:1] + bytes([other]) + data[2:]) == "wrong_type"
    assert dec_code(kind, data, K2) == "bad_mac"
    with pytest.raises(TypeError):
        cc.decode(kind, data, None)


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown kind") as info:
        cc.decode("status", b"\x01\x04", K)
    assert not isinstance(info.value, ProtocolError)


def test_compiled_and_interpreted_declarations_agree() -> None:
    samples = valid_samples()
    for kind, declaration in (
        ("record", cc.RECORD), ("ack", cc.ACK), ("heartbeat", cc.HEARTBEAT),
        ("command", cc.COMMAND), ("result", cc.RESULT),
    ):  # fmt: skip
        compiled = declaration.compile().parse(samples[kind])
        interpreted = declaration.parse(samples[kind])
        assert {k: v for k, v in compiled.items() if not k.startswith("_")} == {
            k: v for k, v in interpreted.items() if not k.startswith("_")
        }
