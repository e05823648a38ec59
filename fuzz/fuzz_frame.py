"""RS-485 serial framing (SPEC.md section 9.1): COBS + CRC-16 frames, one at a time and as a stream.

Input: one mode byte, then bytes. Modes:

0. the bytes are one frame (delimiters included): ``protocol.frame.decode`` and the construct
   codec must agree (decision, error code, fields); an accepted frame round-trips;
1. the bytes are a frame's chunk: wrapped in delimiters, then as mode 0;
2. the bytes are a frame body: its CRC is appended and it is COBS-encoded and wrapped, so that
   mutations reach the field rules; then as mode 0;
3. the bytes are a serial stream, fed to ``FrameReader`` (the gateway's bus master and the
   tests' readers use it) in pieces cut where the mode byte's high bits say. Every event must
   be what the construct codec says of each chunk between delimiters, the reader never holds
   more than one maximal chunk, and a valid frame sent after the garbage comes through intact
   (resynchronisation).
"""

from __future__ import annotations

import sys
from typing import Any

from fuzz.common import Bug
from protocol import construct_codec, frame
from protocol.crc16 import crc16
from protocol.errors import ProtocolError


def _with_crc(body: bytes) -> bytes:
    crc = crc16(body)
    return body + bytes((crc >> 8, crc & 0xFF))


RESYNC = b"\x00" + construct_codec.cobs_encode(_with_crc(b"\x07\x02\x2a\x01\x02")) + b"\x00"
RESYNC_FIELDS = {"addr": 7, "ftype": "data", "fseq": 42, "payload": b"\x01\x02"}


def _outcome(decode: Any, wire: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(wire)
    except ProtocolError as exc:
        return "error", exc.code


def single(wire: bytes) -> tuple[str, Any]:
    neutral = _outcome(frame.decode, wire)
    declared = _outcome(lambda w: construct_codec.decode("frame", w, None), wire)
    if neutral != declared:
        raise Bug(f"frame {wire.hex()}: runtime-neutral {neutral!r}, construct {declared!r}")
    if neutral[0] == "ok":
        fields = neutral[1]
        for encode in (frame.encode, lambda f: construct_codec.encode("frame", f, None)):
            again = encode(fields)
            if frame.decode(again) != fields:
                raise Bug(f"frame {wire.hex()}: {fields!r} does not round-trip")
    return neutral


def expected_events(stream: bytes) -> list[tuple[str, Any]]:
    """What a receiver must report for ``stream``: one event per non-empty complete chunk."""
    events: list[tuple[str, Any]] = []
    for chunk in stream.split(b"\x00")[:-1]:
        if len(chunk) > frame.MAX_CHUNK:
            events.append(("error", "too_large"))
        elif chunk:
            events.append(_outcome(lambda w: construct_codec.decode("frame", w, None),
                                   b"\x00" + chunk + b"\x00"))
    return events


def stream_events(pieces: list[bytes]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []

    def on_frame(addr: int, ftype: int, fseq: int, payload: memoryview) -> None:
        events.append(("ok", {"addr": addr, "ftype": frame.FTYPE_NAMES[ftype], "fseq": fseq,
                              "payload": bytes(payload)}))

    reader = frame.FrameReader(on_frame, lambda code: events.append(("error", code)))
    held = (len(reader._chunk), len(reader._body))
    for piece in pieces:
        try:
            reader.feed(piece)
        except ProtocolError as exc:  # FrameReader reports errors, it must not raise them
            raise Bug(f"FrameReader.feed raised {exc!r}") from None
        if not 0 <= reader._n <= frame.MAX_CHUNK or held != (len(reader._chunk),
                                                                len(reader._body)):
            raise Bug("FrameReader holds more than one maximal chunk")
    return events


def streamed(stream: bytes, cut: int) -> None:
    step = 1 + cut * 37  # 1 (byte by byte) ... 2332 bytes per read
    pieces = [stream[i:i + step] for i in range(0, len(stream), step)] + [RESYNC]
    got = stream_events(pieces)
    want = expected_events(stream + RESYNC)
    if got != want:
        raise Bug(f"stream {stream.hex()} (pieces of {step}): FrameReader {got!r}, "
                  f"expected {want!r}")
    if got[-1] != ("ok", RESYNC_FIELDS):
        raise Bug(f"stream {stream.hex()}: no resynchronisation, last event {got[-1]!r}")


def check(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] & 3, data[1:]
    if mode == 0:
        single(rest)
    elif mode == 1:
        single(b"\x00" + rest + b"\x00")
    elif mode == 2:
        single(b"\x00" + construct_codec.cobs_encode(_with_crc(rest)) + b"\x00")
    else:
        streamed(rest, data[0] >> 2)


def seeds() -> list[bytes]:
    from fuzz.samples import frames

    wires = frames()
    out = [b"\x00" + w for w in wires]
    out += [b"\x01" + w[1:-1] for w in wires[:3]]
    out += [b"\x02" + construct_codec.cobs_decode(w[1:-1])[:-2] for w in wires[:5]]
    out += [b"\x03" + b"".join(wires[:5]), b"\x07" + b"\xff" * 40 + wires[1] + b"\x00\x00",
            b"\xfb" + wires[2][:-30] + wires[0]]
    return out


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
