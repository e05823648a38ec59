"""HMAC, CRC-16, COBS and the serial frame reader of the runtime-neutral protocol package."""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cobs, frame
from protocol.codec import BatchWriter, record_into
from protocol.crc16 import crc16
from protocol.errors import ProtocolError
from protocol.hmac256 import HmacSha256
from protocol.peer import decode_batch, split_batch

# RFC 4231 test cases 1, 2 and 6 (a key longer than the block size).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
]
KEY = bytes(range(32))


@pytest.mark.parametrize(("key", "data", "expected"), RFC4231)
def test_hmac_matches_rfc4231(key: bytes, data: bytes, expected: str) -> None:
    signer = HmacSha256(key)
    assert signer.digest(data).hex() == expected
    assert signer.verify(data, bytes.fromhex(expected)[:16])
    assert not signer.verify(data, bytes.fromhex(expected)[1:17])
    assert not signer.verify(data, bytes.fromhex(expected)[:15])


@given(st.binary(max_size=100), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key: bytes, data: bytes) -> None:
    assert HmacSha256(key).digest(data) == hmac.new(key, data, hashlib.sha256).digest()


def test_crc16_check_value_and_continuation() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"6789", crc16(b"12345")) == 0x29B1
    assert crc16(b"") == 0xFFFF


def _cobs_round_trip(data: bytes) -> bytes:
    encoded = bytearray(cobs.max_encoded_len(len(data)))
    n = cobs.encode_into(data, encoded)
    assert 0 not in encoded[:n]
    decoded = bytearray(n)
    m = cobs.decode_into(encoded[:n], decoded)
    return bytes(decoded[:m])


@given(st.binary(max_size=2000))
def test_cobs_round_trips_any_bytes(data: bytes) -> None:
    assert _cobs_round_trip(data) == data


def test_cobs_runs_of_254_and_zeros() -> None:
    for data in (b"", b"\x00", b"\x00\x00", bytes(range(1, 255)), bytes(range(1, 256)),
                 bytes(254) + b"\x01" * 600, b"\x01" * 254 + b"\x00" + b"\x02" * 254):
        assert _cobs_round_trip(data) == data


def test_cobs_decoder_accepts_the_non_canonical_trailing_block() -> None:
    out = bytearray(300)
    n = cobs.decode_into(b"\xff" + bytes(range(1, 255)) + b"\x01", out)
    assert bytes(out[:n]) == bytes(range(1, 255))


def _stream(frames: list[bytes]) -> tuple[list[tuple[int, int, int, bytes]], list[str]]:
    got: list[tuple[int, int, int, bytes]] = []
    errors: list[str] = []
    reader = frame.FrameReader(
        lambda a, t, s, p: got.append((a, t, s, bytes(p))), errors.append)
    rng = random.Random(7)
    wire = b"".join(frames)
    pos = 0
    while pos < len(wire):  # arbitrary split points, as a UART delivers them
        step = rng.randint(1, 40)
        reader.feed(wire[pos : pos + step])
        pos += step
    return got, errors


def test_frame_reader_splits_a_noisy_stream() -> None:
    enc = frame.FrameEncoder()
    good = [bytes(enc.encode(5, frame.DATA, i, bytes([i]) * (i * 37 % 300))) for i in range(20)]
    corrupted = bytearray(good[3])
    corrupted[4] ^= 0x10  # a payload byte, not a COBS code byte
    stream = [b"\x17\x99garbage", good[0], good[1], bytes(corrupted), good[2],
              b"\x00" + b"\x05" * 1500 + b"\x00", good[4], b"\x00\x00\x00", *good[5:]]
    got, errors = _stream(stream)
    assert [g[2] for g in got] == [0, 1, 2, *range(4, 20)]
    assert all(g[3] == bytes([g[2]]) * (g[2] * 37 % 300) for g in got)
    # leading garbage, the flipped payload byte, the endless run; empty chunks are ignored
    assert errors == ["bad_framing", "bad_crc", "too_large"]


def test_frame_encoder_rejects_what_the_decoder_would() -> None:
    enc = frame.FrameEncoder()
    for args, code in (((0, frame.POLL, 1), "bad_field"), ((248, frame.POLL, 1), "bad_field"),
                       ((1, 9, 1), "bad_field"), ((1, frame.POLL, 256), "bad_field")):
        with pytest.raises(ProtocolError) as info:
            enc.encode(*args)
        assert info.value.code == code
    with pytest.raises(ProtocolError, match="too_large"):
        enc.encode(1, frame.DATA, 1, bytes(1025))
    with pytest.raises(ProtocolError, match="trailing_bytes"):
        enc.encode(1, frame.IDLE, 1, b"x")


def _record(seq: int, signer: HmacSha256, uid: bytes = b"\x04\x01\x02\x03") -> bytes:
    buf = bytearray(53)
    n = record_into(buf, signer, 17, 3, seq, 1, 2, uid, 1_795_420_800, 5, seq * 10)
    return bytes(buf[:n])


def test_batch_writer_respects_count_and_size_limits() -> None:
    signer = HmacSha256(KEY)
    writer = BatchWriter(max_records=64)
    seq = 0
    while writer.add(_record(seq + 1, signer, bytes(10))):
        seq += 1
    assert seq == 64
    small = BatchWriter(max_len=300)
    added = sum(small.add(_record(i + 1, signer)) for i in range(10))
    assert added == (300 - 19 - 16) // 48
    data = bytes(small.finish(signer, 17, 3))
    assert len(data) <= 300
    reader_id, boot, first, last, slices = split_batch(data, signer)
    assert (reader_id, boot, first, last, len(slices)) == (17, 3, 1, added, added)
    assert [r["seq"] for r in decode_batch(data, KEY)["records"]] == list(range(1, added + 1))


def test_record_into_refuses_invalid_fields() -> None:
    signer = HmacSha256(KEY)
    buf = bytearray(53)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"reader_id": 0}, "bad_field"), ({"seq": 0}, "bad_field"), ({"flags": 2}, "bad_flags"),
        ({"tech": 9}, "bad_card"), ({"uid": b"\x01\x02"}, "bad_card"),
        ({"time_ms": 1000}, "bad_field"), ({"time_s": 2**32}, "bad_field"),
    ]
    for change, code in cases:
        args: dict[str, Any] = {"reader_id": 1, "boot": 1, "seq": 1, "flags": 0, "tech": 2,
                                "uid": b"\x04\x01\x02\x03", "time_s": 0, "time_ms": 0,
                                "ticks_ms": 2**32 + 5, **change}
        with pytest.raises(ProtocolError) as info:
            record_into(buf, signer, **args)
        assert info.value.code == code
