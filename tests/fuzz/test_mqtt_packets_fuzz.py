"""Property tests of the reader's MQTT 3.1.1 decoder (``firmware/mqtt_packets.py``) under CPython.

Arbitrary, truncated and oversized packets, at once or in pieces: only ``MqttError`` escapes,
no packet beyond the decoder's bound is returned or held, the outcome does not depend on how the
bytes are cut, and valid packets round-trip through the module's encoders.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware import mqtt_packets as mp
from firmware.mqtt_packets import MqttError
from fuzz import fuzz_mqtt_packets
from tests.fuzz.support import fuzz_settings

topics = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                 max_size=40)
packets = st.one_of(
    st.builds(mp.publish, topics, st.binary(max_size=300), st.just(1), st.integers(1, 65535),
              st.booleans(), st.booleans()),
    st.builds(mp.publish, topics, st.binary(max_size=300)),
    st.builds(mp.puback, st.integers(1, 65535)),
    st.builds(mp.connack, st.booleans(), st.integers(0, 5)),
    st.builds(mp.suback, st.integers(1, 65535), st.sampled_from([b"\x00", b"\x01", b"\x80"])),
    st.just(mp.PINGRESP_PACKET))


def _mutate(data: bytes, at: int, value: int, cut: int) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    buf[at % len(buf)] = value
    return bytes(buf[: len(buf) - cut % (len(buf) + 1)])


@fuzz_settings(400)
@given(bound=st.integers(0, 255), step=st.integers(0, 255), data=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(bound: int, step: int, data: bytes) -> None:
    fuzz_mqtt_packets.check(bytes((bound, step)) + data)


@fuzz_settings(300)
@given(bound=st.integers(0, 255), step=st.integers(0, 255), stream=st.lists(packets, max_size=5),
       at=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 400))
def test_valid_mutated_truncated_and_oversized_streams(bound: int, step: int, stream: list[bytes],
                                                       at: int, value: int, cut: int) -> None:
    data = b"".join(stream)
    for variant in (data, _mutate(data, at, value, 0), _mutate(data, at, value, cut),
                    data[: len(data) - cut % (len(data) + 1)]):
        fuzz_mqtt_packets.check(bytes((bound, step)) + variant)


@fuzz_settings(200)
@given(packet=packets)
def test_valid_packets_decode_whole_and_a_smaller_bound_refuses_them(packet: bytes) -> None:
    ptype, _flags, _body = mp.decode(packet, len(packet))
    assert ptype == packet[0] >> 4
    if len(packet) > 8:
        try:
            mp.decode(packet, len(packet) - 1)
        except MqttError as exc:
            assert exc.code == mp.E_OVERSIZE
        else:
            raise AssertionError("a packet larger than the bound was returned")


def test_a_remaining_length_beyond_four_bytes_is_refused() -> None:
    for data in (b"\x30\x80\x80\x80\x80\x01", b"\x30\xff\xff\xff\xff\x7f"):
        try:
            mp.decode(data)
        except MqttError as exc:
            assert exc.code == mp.E_REMAINING_LENGTH
        else:
            raise AssertionError(data)
