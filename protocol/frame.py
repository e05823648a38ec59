"""RS-485 frames (SPEC.md section 9.1): body with CRC-16, COBS-encoded between 0x00 delimiters.

``FrameEncoder`` and ``FrameReader`` own pre-allocated buffers, so the reader's serial link builds
and parses frames without allocating; ``encode``/``decode`` speak the canonical fields of
``protocol/vectors/README.md``.
"""

from protocol import cobs
from protocol.compat import const
from protocol.crc16 import crc16
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Buf = bytes | bytearray | memoryview

POLL = const(1)
DATA = const(2)
IDLE = const(3)
NACK = const(4)
FTYPE_NAMES = ("", "poll", "data", "idle", "nack")

MIN_ADDR = const(1)
MAX_ADDR = const(247)
MAX_PAYLOAD = const(1024)
_HEADER = const(3)
MIN_BODY = const(5)
MAX_BODY = const(1029)
MAX_CHUNK = const(1034)  # COBS encoding of the longest body
MAX_WIRE = const(1036)  # with both delimiters


def _check_fields(addr: int, ftype: int, payload_len: int) -> None:
    if not MIN_ADDR <= addr <= MAX_ADDR:
        raise ProtocolError("bad_field", "bus address " + str(addr) + " outside 1..247")
    if not POLL <= ftype <= NACK:
        raise ProtocolError("bad_field", "unknown frame type " + str(ftype))
    # SPEC 9.1 order: a payload on idle/nack is trailing_bytes even when it is also too large
    if payload_len and (ftype in (IDLE, NACK)):
        raise ProtocolError("trailing_bytes", FTYPE_NAMES[ftype] + " frame carries a payload")
    if payload_len > MAX_PAYLOAD:
        raise ProtocolError("too_large", "frame payload of " + str(payload_len) + " bytes")


class FrameEncoder:
    """Builds frames in its own buffers; ``encode`` returns a view valid until the next call."""

    def __init__(self) -> None:
        self._body = bytearray(MAX_BODY)
        self._wire = bytearray(MAX_WIRE)

    def encode(self, addr: int, ftype: int, fseq: int,
               payload: "Buf" = b"") -> memoryview:
        n = len(payload)
        _check_fields(addr, ftype, n)
        if not 0 <= fseq <= 255:
            raise ProtocolError("bad_field", "fseq " + str(fseq) + " outside 0..255")
        body = self._body
        body[0] = addr
        body[1] = ftype
        body[2] = fseq
        body[_HEADER : _HEADER + n] = payload
        crc = crc16(memoryview(body)[: _HEADER + n])
        body[_HEADER + n] = crc >> 8
        body[_HEADER + n + 1] = crc & 0xFF
        wire = self._wire
        wire[0] = 0
        size = 1 + cobs.encode_into(memoryview(body)[: _HEADER + n + 2], memoryview(wire)[1:])
        wire[size] = 0
        return memoryview(wire)[: size + 1]


def decode_chunk(chunk: "Buf", body: "bytearray | memoryview"
                 ) -> "tuple[int, int, int, memoryview]":
    """Decode the bytes between two delimiters into ``body``.

    ``body`` should hold ``MAX_CHUNK - 1`` bytes (the longest decoding of a chunk); with a smaller
    one (``MAX_BODY`` bytes at least) a chunk whose decoding does not fit is ``too_large``.
    Returns ``(addr, ftype, fseq, payload)`` with ``payload`` a view into ``body``.
    """
    if len(chunk) > MAX_CHUNK:
        raise ProtocolError("too_large", "frame of " + str(len(chunk)) + " encoded bytes")
    n = cobs.decode_into(chunk, body)
    if n < MIN_BODY:
        raise ProtocolError("truncated", "frame body of " + str(n) + " bytes")
    view = memoryview(body)
    if crc16(view[: n - 2]) != (body[n - 2] << 8) | body[n - 1]:
        raise ProtocolError("bad_crc", "frame CRC mismatch")
    _check_fields(body[0], body[1], n - MIN_BODY)
    return body[0], body[1], body[2], view[_HEADER : n - 2]


class FrameReader:
    """Splits a serial byte stream into frames; bounded to one maximal frame of memory.

    ``feed`` calls ``on_frame(addr, ftype, fseq, payload)`` for each valid frame (``payload`` is
    only valid during the call) and ``on_error(code)`` for each rejected one; frames for other
    addresses are the caller's to ignore.
    """

    def __init__(self, on_frame: "Callable[[int, int, int, memoryview], None]",
                 on_error: "Callable[[str], None]") -> None:
        self._chunk = bytearray(MAX_CHUNK)
        self._body = bytearray(MAX_CHUNK)  # a chunk of MAX_CHUNK bytes decodes to up to 1033
        self._n = 0
        self._overflow = False
        self._on_frame = on_frame
        self._on_error = on_error

    def feed(self, data: "Buf") -> None:
        chunk = self._chunk
        for byte in data:
            if byte:
                if self._n < MAX_CHUNK:
                    chunk[self._n] = byte
                    self._n += 1
                else:
                    self._overflow = True
                continue
            n = self._n
            self._n = 0
            if self._overflow:
                self._overflow = False
                self._on_error("too_large")
            elif n:
                try:
                    addr, ftype, fseq, payload = decode_chunk(memoryview(chunk)[:n], self._body)
                except ProtocolError as exc:
                    self._on_error(exc.code)
                    continue
                self._on_frame(addr, ftype, fseq, payload)


def decode(wire: "Buf") -> "dict[str, Any]":
    """Decode exactly one frame given with both delimiters into its canonical fields."""
    n = len(wire)
    if n < 3 or wire[0] != 0 or wire[n - 1] != 0:
        raise ProtocolError("bad_framing", "a frame starts and ends with 0x00 and is not empty")
    addr, ftype, fseq, payload = decode_chunk(memoryview(wire)[1 : n - 1], bytearray(MAX_CHUNK))
    return {"addr": addr, "ftype": FTYPE_NAMES[ftype], "fseq": fseq, "payload": bytes(payload)}


def encode(fields: "dict[str, Any]") -> bytes:
    ftype = 0
    for code in range(1, len(FTYPE_NAMES)):
        if FTYPE_NAMES[code] == fields["ftype"]:
            ftype = code
    return bytes(FrameEncoder().encode(fields["addr"], ftype, fields["fseq"], fields["payload"]))
