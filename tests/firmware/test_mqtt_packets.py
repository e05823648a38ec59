"""MQTT 3.1.1 packet codec (firmware/mqtt_packets.py) on CPython and on the real MicroPython VM:
round trips of every packet the reader uses, the streaming decoder fed byte by byte, and every
error (remaining length, truncated, oversize, unknown type, bad flags, malformed bodies)."""

from __future__ import annotations

import pytest

from firmware import mqtt_packets as mp
from firmware.mqtt_packets import Decoder, MqttError
from tests.mpvm import MPVM


def err(code: int) -> pytest.RaisesExc[MqttError]:
    return pytest.raises(MqttError, check=lambda e: e.code == code)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_round_trip(n: int, encoded: bytes) -> None:
    buf = bytearray(4)
    assert mp.varint_into(buf, 0, n) == len(encoded) == mp.varint_size(n)
    assert bytes(buf[: len(encoded)]) == encoded
    assert mp.varint_decode(encoded, 0, len(encoded)) == (n, len(encoded))
    assert mp.varint_decode(encoded, 0, len(encoded) - 1) == (-1, 0)  # incomplete


def test_varint_errors() -> None:
    with err(mp.E_REMAINING_LENGTH):
        mp.varint_decode(b"\xff\xff\xff\xff\x01", 0, 5)
    with err(mp.E_REMAINING_LENGTH):
        mp.varint_decode(b"\x80\x80\x80\x80", 0, 4)
    for bad in (-1, 268435456):
        with err(mp.E_REMAINING_LENGTH):
            mp.varint_size(bad)


def test_varint_error_in_decoder() -> None:
    with err(mp.E_REMAINING_LENGTH):
        list(Decoder(64).feed(b"\x30\xff\xff\xff\xff\x7f"))


def test_connect_round_trip() -> None:
    raw = mp.connect(
        "reader-7", False, 30, "7", b"s3cret", "att/v1/s/7/up/status", b"\x01offline", 1, True
    )
    ptype, flags, body = mp.decode(raw)
    assert (ptype, flags) == (mp.CONNECT, 0)
    assert mp.parse_connect(body) == {
        "client_id": "reader-7",
        "clean_session": False,
        "keepalive": 30,
        "username": "7",
        "password": b"s3cret",
        "will_topic": "att/v1/s/7/up/status",
        "will_payload": b"\x01offline",
        "will_qos": 1,
        "will_retain": True,
    }
    minimal = mp.parse_connect(mp.decode(mp.connect("x"))[2])
    assert minimal["clean_session"] is True and minimal["username"] is None
    assert minimal["will_topic"] is None and minimal["keepalive"] == 60


def test_connect_argument_errors() -> None:
    with err(mp.E_MALFORMED):
        mp.connect("x", password="p")
    with err(mp.E_BAD_FLAGS):
        mp.connect("x", will_topic="t", will_qos=3)
    with err(mp.E_MALFORMED):
        mp.connect("x", keepalive=70000)
    body = bytearray(mp.decode(mp.connect("x"))[2])
    body[7] |= 1  # reserved flag
    with err(mp.E_MALFORMED):
        mp.parse_connect(bytes(body))
    with err(mp.E_MALFORMED):
        mp.parse_connect(b"\x00\x04MQTX\x04\x02\x00\x3c\x00\x01x")


@pytest.mark.parametrize(("sp", "rc"), [(False, 0), (True, 0), (False, 4), (False, 5)])
def test_connack_round_trip(sp: bool, rc: int) -> None:
    ptype, _, body = mp.decode(mp.connack(sp, rc))
    assert ptype == mp.CONNACK
    assert mp.parse_connack(body) == (sp, rc)
    assert mp.CONNACK_NAMES[5] == "not authorized"
    assert mp.CONNACK_NAMES[4] == "bad user name or password"


def test_connack_errors() -> None:
    with err(mp.E_MALFORMED):
        mp.parse_connack(b"\x00\x06")  # unknown return code
    with err(mp.E_MALFORMED):
        mp.parse_connack(b"\x02\x00")  # reserved ack flag


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("size", [0, 1, 200])
def test_publish_round_trip(qos: int, retain: bool, size: int) -> None:
    payload = bytes(range(256))[:size]
    dup = bool(qos)
    raw = mp.publish("att/v1/s/7/up/batch", payload, qos, 4242 if qos else 0, dup, retain)
    ptype, flags, body = mp.decode(raw)
    assert ptype == mp.PUBLISH
    assert mp.parse_publish(flags, body) == (
        "att/v1/s/7/up/batch", payload, qos, 4242 if qos else 0, dup, retain
    )


def test_publish_into_buffer() -> None:
    buf = bytearray(32)
    n = mp.publish_into(buf, b"t", b"abc", 1, 7, False, False)
    assert bytes(buf[:n]) == b"\x32\x08\x00\x01t\x00\x07abc"
    with err(mp.E_OVERSIZE):
        mp.publish_into(buf, b"t", bytes(40))
    with err(mp.E_BAD_FLAGS):
        mp.publish_into(buf, b"t", b"", 2, 1)
    with err(mp.E_MALFORMED):
        mp.publish_into(buf, b"t", b"", 1, 0)
    with err(mp.E_BAD_FLAGS):
        mp.publish_into(buf, b"t", b"", 0, 0, True)


def test_publish_body_errors() -> None:
    with err(mp.E_MALFORMED):
        mp.parse_publish(0x02, b"\x00\x01t\x00\x00")  # packet id 0
    with err(mp.E_MALFORMED):
        mp.parse_publish(0x00, b"\x00\x05ab")  # topic past the end
    with err(mp.E_MALFORMED):
        mp.parse_publish(0x00, b"\x00\x00xyz")  # empty topic
    with err(mp.E_MALFORMED):
        mp.parse_publish(0x00, b"\x00\x02\xff\xfe")  # not UTF-8
    with err(mp.E_MALFORMED):
        mp.parse_publish(0x02, b"\x00\x01t\x00")  # packet id cut short
    with err(mp.E_BAD_FLAGS):
        mp.parse_publish(0x04, b"\x00\x01t\x00\x01")  # QoS 2


def test_puback_subscribe_suback_ping_disconnect() -> None:
    ptype, flags, body = mp.decode(mp.puback(65535))
    assert (ptype, flags, mp.parse_packet_id(body)) == (mp.PUBACK, 0, 65535)
    raw = mp.subscribe(3, [("att/v1/s/7/down/#", 1), ("x", 0)])
    ptype, flags, body = mp.decode(raw)
    assert (ptype, flags) == (mp.SUBSCRIBE, 2)
    assert mp.parse_subscribe(body) == (3, [("att/v1/s/7/down/#", 1), ("x", 0)])
    ptype, _, body = mp.decode(mp.suback(3, b"\x01\x80"))
    assert ptype == mp.SUBACK
    assert mp.parse_suback(body) == (3, b"\x01\x80")
    assert mp.decode(mp.PINGREQ_PACKET) == (mp.PINGREQ, 0, b"")
    assert mp.decode(mp.PINGRESP_PACKET) == (mp.PINGRESP, 0, b"")
    assert mp.decode(mp.DISCONNECT_PACKET) == (mp.DISCONNECT, 0, b"")
    with err(mp.E_MALFORMED):
        mp.parse_suback(b"\x00\x03\x03")  # code 3
    with err(mp.E_MALFORMED):
        mp.parse_packet_id(b"\x00\x00")
    with err(mp.E_MALFORMED):
        mp.puback(0)
    with err(mp.E_BAD_FLAGS):
        mp.subscribe(1, [("t", 3)])
    with err(mp.E_MALFORMED):
        mp.subscribe(1, [])


def test_streaming_decoder_byte_by_byte_and_coalesced() -> None:
    stream = (
        mp.connack(False, 0)
        + mp.publish("a/b", b"x" * 300, 1, 9)
        + mp.PINGRESP_PACKET
        + mp.suback(2, b"\x01")
        + mp.publish("c", b"", 0)
    )
    whole = list(Decoder(512).feed(stream))
    assert [p[0] for p in whole] == [mp.CONNACK, mp.PUBLISH, mp.PINGRESP, mp.SUBACK, mp.PUBLISH]
    dec = Decoder(512)
    pieces = []
    for i in range(len(stream)):
        pieces.extend(dec.feed(stream[i : i + 1]))
    assert pieces == whole and dec.pending() == 0
    dec = Decoder(512)
    pieces = []
    for i in range(0, len(stream), 7):
        pieces.extend(dec.feed(stream[i : i + 7]))
    assert pieces == whole
    # a chunk larger than the decoder's buffer, made of packets that each fit
    dec = Decoder(16)
    many = mp.PINGRESP_PACKET * 50
    assert len(list(dec.feed(many))) == 50


def test_oversize_is_refused_from_the_header() -> None:
    dec = Decoder(64)
    header = b"\x30\xc8\x01"  # PUBLISH announcing 200 bytes
    with err(mp.E_OVERSIZE):
        list(dec.feed(header))
    assert dec.pending() == 0
    with err(mp.E_OVERSIZE):
        mp.decode(mp.publish("t", bytes(100)), 64)
    exact = mp.publish("t", bytes(64 - 2 - 3))
    assert len(exact) == 64
    assert mp.decode(exact, 64)[0] == mp.PUBLISH


def test_truncated_and_trailing() -> None:
    raw = mp.publish("topic", b"payload", 1, 5)
    for cut in range(len(raw)):
        with err(mp.E_TRUNCATED):
            mp.decode(raw[:cut])
    with err(mp.E_MALFORMED):
        mp.decode(raw + raw)
    with err(mp.E_MALFORMED):
        mp.decode(raw + b"\x30")


@pytest.mark.parametrize("first", [0x00, 0x0F << 4, 0xF2])
def test_unknown_type(first: int) -> None:
    with err(mp.E_UNKNOWN_TYPE):
        mp.decode(bytes((first, 0)))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x36\x03\x00\x01t",  # PUBLISH QoS 3
        b"\x38\x03\x00\x01t",  # PUBLISH DUP at QoS 0
        b"\x80\x06\x00\x01\x00\x01t\x01",  # SUBSCRIBE without its 0b0010
        b"\x41\x02\x00\x01",  # PUBACK flags
        b"\xc1\x00",  # PINGREQ flags
        b"\x21\x02\x00\x00",  # CONNACK flags
    ],
)
def test_bad_flags(raw: bytes) -> None:
    with err(mp.E_BAD_FLAGS):
        mp.decode(raw)


@pytest.mark.parametrize("raw", [b"\x40\x03\x00\x01\x00", b"\xd0\x01\x00", b"\x20\x01\x00"])
def test_fixed_length_packets_with_a_bad_length(raw: bytes) -> None:
    with err(mp.E_MALFORMED):
        mp.decode(raw)


def test_error_text() -> None:
    e = MqttError(mp.E_OVERSIZE, "packet of 2000 bytes")
    assert str(e) == "oversize: packet of 2000 bytes"
    assert str(MqttError(mp.E_CLOSED)) == "closed"


# The same codec on MicroPython: round trips, byte-by-byte streaming and every error class.
VM_CODE = """
from firmware import mqtt_packets as mp
from firmware.mqtt_packets import Decoder, MqttError

def code_of(fn):
    try:
        fn()
    except MqttError as e:
        return e.code
    return 0

raw = mp.connect("reader-7", False, 30, "7", b"pw", "att/v1/s/7/up/status", b"off", 1, True)
t, f, body = mp.decode(raw)
c = mp.parse_connect(body)
print("connect", t, c["client_id"], c["clean_session"], c["keepalive"], c["username"],
      c["password"], c["will_topic"], c["will_payload"], c["will_qos"], c["will_retain"])
buf = bytearray(300)
n = mp.publish_into(buf, b"a/b", b"x" * 200, 1, 513, True, False)
t, f, body = mp.decode(buf[:n])
print("publish", mp.parse_publish(f, body)[2:], len(mp.parse_publish(f, body)[1]))
stream = mp.connack(True, 0) + bytes(buf[:n]) + mp.PINGRESP_PACKET + mp.suback(2, b"\\x80")
dec = Decoder(256)
got = []
for i in range(len(stream)):
    for p in dec.feed(stream[i:i + 1]):
        got.append(p[0])
print("stream", got, mp.parse_suback(mp.decode(mp.suback(2, b"\\x80"))[2]))
ack = bytearray(4)
mp.puback_into(ack, 258)
print("puback", mp.parse_packet_id(mp.decode(ack)[2]))
print("errors",
      code_of(lambda: mp.varint_decode(b"\\xff\\xff\\xff\\xff\\x01", 0, 5)),
      code_of(lambda: mp.decode(buf[:5])),
      code_of(lambda: list(Decoder(64).feed(b"\\x30\\xc8\\x01"))),
      code_of(lambda: mp.decode(b"\\xf0\\x00")),
      code_of(lambda: mp.decode(b"\\x36\\x03\\x00\\x01t")),
      code_of(lambda: mp.parse_publish(0, b"\\x00\\x09ab")),
      code_of(lambda: mp.parse_publish(0, b"\\x00\\x02\\xff\\xfe")),
      code_of(lambda: mp.parse_connack(b"\\x00\\x09")))
print(str(MqttError(mp.E_OVERSIZE, "x")))
"""


def test_codec_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(VM_CODE).splitlines()
    assert out == [
        "connect 1 reader-7 False 30 7 b'pw' att/v1/s/7/up/status b'off' 1 True",
        "publish (1, 513, True, False) 200",
        "stream [2, 3, 13, 9] (2, b'\\x80')",
        "puback 258",
        "errors "
        + " ".join(
            str(c)
            for c in (
                mp.E_REMAINING_LENGTH,
                mp.E_TRUNCATED,
                mp.E_OVERSIZE,
                mp.E_UNKNOWN_TYPE,
                mp.E_BAD_FLAGS,
                mp.E_MALFORMED,
                mp.E_MALFORMED,
                mp.E_MALFORMED,
            )
        ),
        "oversize: x",
    ]


def test_decoder_state_survives_an_iteration_stopped_early() -> None:
    dec = Decoder(64)
    stream = mp.connack(False, 0) + mp.publish("t", b"1") + mp.PINGRESP_PACKET + b"\xd0"
    for first in dec.feed(stream):
        assert first[0] == mp.CONNACK
        break  # the caller stops after CONNACK; the rest stays buffered
    assert [p[0] for p in dec.feed(b"\x00")] == [mp.PUBLISH, mp.PINGRESP, mp.PINGRESP]
    assert dec.pending() == 0


def test_decoder_error_resets_it() -> None:
    dec = Decoder(64)
    with err(mp.E_UNKNOWN_TYPE):
        list(dec.feed(mp.PINGRESP_PACKET + b"\xf0\x00"))
    assert dec.pending() == 0
    assert list(dec.feed(mp.PINGRESP_PACKET)) == [(mp.PINGRESP, 0, b"")]
