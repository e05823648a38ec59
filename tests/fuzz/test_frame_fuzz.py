"""Property tests of the RS-485 framing (SPEC.md section 9.1): COBS + CRC-16 frames.

Single frames (arbitrary, wrapped chunks, bodies with a good CRC) on both codecs; byte streams
with garbage through ``FrameReader`` in arbitrary pieces (the gateway's bus master reads this
way): every event is the one SPEC.md prescribes, the reader stays bounded, and it resynchronises
on the next delimiter. Plus the regression cases the fuzzers found.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_frame
from fuzz.samples import frames
from protocol import cobs, construct_codec, frame
from protocol.crc16 import crc16
from protocol.errors import ProtocolError
from tests.fuzz.support import fuzz_settings

WIRES = frames()


def _body_with_crc(body: bytes) -> bytes:
    crc = crc16(body)
    return body + bytes((crc >> 8, crc & 0xFF))


@fuzz_settings(300)
@given(st.binary(max_size=80))
def test_arbitrary_frames_get_one_answer_from_both_codecs(data: bytes) -> None:
    fuzz_frame.single(data)
    fuzz_frame.single(b"\x00" + data + b"\x00")


@fuzz_settings(300)
@given(addr=st.sampled_from([0, 1, 5, 247, 248, 255]), ftype=st.integers(0, 6),
       fseq=st.integers(0, 255),
       payload=st.one_of(st.binary(max_size=40),
                         st.integers(1020, 1030).map(lambda n: bytes(n)),
                         st.integers(1020, 1030).map(lambda n: b"\x01" * n)))
def test_bodies_with_a_good_crc_reach_the_field_rules_alike(addr: int, ftype: int, fseq: int,
                                                            payload: bytes) -> None:
    body = _body_with_crc(bytes((addr, ftype, fseq)) + payload)
    fuzz_frame.single(b"\x00" + construct_codec.cobs_encode(body) + b"\x00")


garbage = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(WIRES).map(lambda w: w[: len(w) // 2]),  # a frame cut by a reboot
    st.integers(1, 1100).map(lambda n: b"\x01" * n),  # runs of COBS code 1: decode to zeros
    st.integers(1030, 1040).map(lambda n: b"\x07" * n))  # longer than any chunk
stream_parts = st.lists(st.one_of(st.sampled_from(WIRES), garbage), max_size=6)


@fuzz_settings(150)
@given(parts=stream_parts, cut=st.integers(0, 63))
def test_a_stream_of_frames_and_garbage_reads_as_specified(parts: list[bytes], cut: int) -> None:
    """FrameReader reports exactly what the construct codec says of each chunk, holds at most
    one maximal chunk, raises nothing, and a valid frame after the garbage comes through."""
    fuzz_frame.streamed(b"".join(parts), cut)


@fuzz_settings(200)
@given(st.binary(max_size=300))
def test_cobs_round_trips_and_decoding_fits_in_its_input(data: bytes) -> None:
    encoded = construct_codec.cobs_encode(data)
    out = bytearray(len(encoded))
    n = cobs.encode_into(data, out)
    assert bytes(out[:n]) == encoded
    decoded = bytearray(max(1, len(encoded) - 1))
    assert bytes(decoded[: cobs.decode_into(encoded, decoded)]) == data
    assert construct_codec.cobs_decode(encoded) == data


@fuzz_settings(200)
@given(chunk=st.binary(min_size=1, max_size=1100).filter(lambda b: 0 not in b),
       room=st.integers(0, 1100))
def test_cobs_decoding_into_a_short_buffer_is_refused_not_overrun(chunk: bytes,
                                                                 room: int) -> None:
    out = bytearray(room)
    try:
        n = cobs.decode_into(chunk, out)
    except ProtocolError as exc:
        assert exc.code in ("bad_framing", "too_large")
        return
    assert n <= room
    assert bytes(out[:n]) == construct_codec.cobs_decode(chunk)


# --- regressions -------------------------------------------------------------------------------


def test_regression_idle_frame_with_an_oversized_payload_is_trailing_bytes() -> None:
    """Found by the differential oracle: SPEC 9.1 checks 'a payload on idle or nack' before 'a
    payload over 1024 bytes'; protocol/frame.py had them the other way round (too_large)."""
    body = _body_with_crc(bytes((5, frame.IDLE, 0)) + bytes(1025))
    wire = b"\x00" + construct_codec.cobs_encode(body) + b"\x00"
    for decode in (frame.decode, lambda w: construct_codec.decode("frame", w, None)):
        with pytest.raises(ProtocolError) as info:
            decode(wire)
        assert info.value.code == "trailing_bytes"


@pytest.mark.parametrize("chunk", [b"\x01" * 1034, b"\x02\x05" + b"\x01" * 1032],
                         ids=["unaddressed", "addressed"])
def test_regression_a_chunk_of_zero_runs_does_not_overrun_the_readers_buffer(
        chunk: bytes) -> None:
    """Found reading the code, then by the stream oracle: a 1034-byte chunk of COBS code 1
    decodes to 1033 zeros, more than the 1029-byte body buffer FrameReader had (IndexError in
    the gateway's bus master, and in the reader's firmware bus link, which has such a buffer)."""
    events: list[object] = []
    reader = frame.FrameReader(lambda *frame_: events.append(frame_), events.append)
    reader.feed(b"\x00" + chunk + b"\x00")
    assert events == ["bad_crc"]
    # a caller's body buffer of MAX_BODY bytes (firmware/bus_link.py) gets an error, not a crash
    with pytest.raises(ProtocolError) as info:
        frame.decode_chunk(chunk, bytearray(frame.MAX_BODY))
    assert info.value.code == "too_large"
