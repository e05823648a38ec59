"""The reader's MQTT 3.1.1 packet decoder (``firmware/mqtt_packets.py``), run under CPython.

Input: the decoder's bound (``8 + 4 * data[0]`` bytes), a cut size (``data[1]``), then the bytes a
broker (or anything on the network) sends. Properties:

- ``Decoder.feed`` and the body parsers raise nothing but ``MqttError``; after the first error
  the stream is abandoned, as the client does;
- no packet longer than the bound is ever returned and the decoder never holds more;
- the packets and the error are the same whether the bytes arrive at once or in pieces;
- every packet the parsers accept re-encodes with the module's encoders into a packet that
  parses to the same fields.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from firmware import mqtt_packets as mp
from firmware.mqtt_packets import MqttError
from fuzz.common import Bug


def _redecode(packet: bytes) -> tuple[int, int, bytes]:
    return mp.decode(packet, len(packet))


def parse(ptype: int, flags: int, body: bytes) -> tuple[str, Any]:
    """The fields of one packet by its type (the parsers the client and the tests use)."""
    try:
        if ptype == mp.PUBLISH:
            fields: Any = mp.parse_publish(flags, body)
            topic, payload, qos, pid, dup, retain = fields
            again = _redecode(mp.publish(topic, payload, qos, pid, dup, retain))
            if mp.parse_publish(again[1], again[2]) != fields:
                raise Bug(f"PUBLISH {fields!r} does not round-trip")
        elif ptype in (mp.PUBACK, mp.UNSUBACK):
            fields = mp.parse_packet_id(body)
        elif ptype == mp.CONNACK:
            fields = mp.parse_connack(body)
        elif ptype == mp.SUBACK:
            fields = mp.parse_suback(body)
        elif ptype == mp.SUBSCRIBE:
            fields = mp.parse_subscribe(body)
            again = _redecode(mp.subscribe(fields[0], fields[1]))
            if mp.parse_subscribe(again[2]) != fields:
                raise Bug(f"SUBSCRIBE {fields!r} does not round-trip")
        elif ptype == mp.CONNECT:
            fields = mp.parse_connect(body)
            again = _redecode(mp.connect(**fields))
            if mp.parse_connect(again[2]) != fields:
                raise Bug(f"CONNECT {fields!r} does not round-trip")
        else:
            fields = body
    except MqttError as exc:
        return "refused", exc.code
    return "ok", fields


def events(max_packet: int, pieces: list[bytes]) -> list[tuple[str, Any]]:
    decoder = mp.Decoder(max_packet)
    out: list[tuple[str, Any]] = []
    for piece in pieces:
        try:
            for ptype, flags, body in decoder.feed(piece):
                if len(body) + 2 > max_packet:
                    raise Bug(f"a {len(body)}-byte body from a {max_packet}-byte decoder")
                out.append((f"{ptype}/{flags}", parse(ptype, flags, body)))
        except MqttError as exc:
            out.append(("error", exc.code))
            return out
        if not 0 <= decoder.pending() <= max_packet:
            raise Bug(f"decoder holds {decoder.pending()} bytes, bound {max_packet}")
    return out


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    max_packet = 8 + 4 * data[0]
    step = 1 + data[1] % 64
    stream = data[2:]
    whole = events(max_packet, [stream])
    pieces = [stream[i:i + step] for i in range(0, len(stream), step)]
    cut = events(max_packet, pieces)
    if whole != cut:
        raise Bug(f"{stream.hex()} (bound {max_packet}): at once {whole!r}, in pieces of "
                  f"{step} {cut!r}")
    with contextlib.suppress(MqttError):
        mp.decode(stream, max_packet)


def seeds() -> list[bytes]:
    packets = [
        mp.connack(False, 0), mp.connack(True, 5),
        mp.publish("att/v1/s/17/down/ack", bytes(range(40)), 1, 7),
        mp.publish("att/v1/s/17/down/cmd", b"\x01\x05" + bytes(30), 1, 65535, True, True),
        mp.publish("t", b"", 0), mp.puback(1), mp.suback(3, b"\x01\x80"),
        mp.PINGRESP_PACKET, mp.subscribe(2, [("att/v1/s/17/down/#", 1), ("a/+", 0)]),
        mp.connect("reader-17", False, 30, "17", "pw", "att/v1/s/17/up/status", b"\x01\x04",
                   1, True),
        mp.connect("c"), mp.DISCONNECT_PACKET,
    ]
    out = [bytes((250, 0)) + p for p in packets]
    out += [bytes((250, 3)) + b"".join(packets), bytes((0, 1)) + packets[2],
            bytes((250, 0)) + b"\x30\xff\xff\xff\x7f", bytes((250, 0)) + b"\x30\x80\x80\x80\x80"]
    return out


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
