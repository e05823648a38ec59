"""MQTT 3.1.1 packets: encoding and a bounded streaming decoder, on MicroPython and CPython.

Encoders for the hot path write into a caller's buffer (``publish_into``, ``puback_into``); the
rare packets (CONNECT, SUBSCRIBE) are built as new ``bytes``. ``Decoder`` takes bytes as they come
off the socket into one pre-allocated buffer of ``max_packet`` bytes and yields complete packets as
``(type, flags, body)``; a packet announcing more than ``max_packet`` bytes is refused from its
fixed header (``E_OVERSIZE``), before anything is allocated for it. Every malformed input raises
:class:`MqttError` with one of the ``E_*`` codes; after a decoder error the stream is unusable and
the connection must be closed.
"""

from firmware.errors import CodedError
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    Buffer = bytes | bytearray | memoryview

# packet types (fixed header, high nibble)
CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)

# error codes of MqttError
E_REMAINING_LENGTH = const(1)  # remaining length: a 5th byte, or a value out of range
E_TRUNCATED = const(2)  # the input ended inside a packet
E_OVERSIZE = const(3)  # a packet larger than the decoder's or the buffer's bound
E_UNKNOWN_TYPE = const(4)  # packet type 0 or 15
E_BAD_FLAGS = const(5)  # fixed-header flags not allowed for the type (or QoS 3)
E_MALFORMED = const(6)  # a body that does not parse (bad length, string, code...)
E_REFUSED = const(7)  # CONNACK with a non-zero return code
E_TIMEOUT = const(8)  # a socket operation or an acknowledgement timed out
E_CLOSED = const(9)  # the connection is closed or was lost
E_NETWORK = const(10)  # the TCP connection could not be made (refused, unreachable)
E_PROTOCOL = const(11)  # a well-formed packet that is not allowed here

ERROR_NAMES = (
    "", "remaining_length", "truncated", "oversize", "unknown_type", "bad_flags", "malformed",
    "refused", "timeout", "closed", "network", "protocol",
)

CONNACK_NAMES = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)

MAX_REMAINING = const(268435455)  # 4 varint bytes
SUBACK_FAILURE = const(0x80)

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


class MqttError(CodedError):
    """A protocol or link error: ``code`` is one of ``E_*``, ``detail`` says what exactly."""

    NAMES = ERROR_NAMES


# -- remaining length ---------------------------------------------------------------------------


def varint_size(n: int) -> int:
    if n < 0 or n > MAX_REMAINING:
        raise MqttError(E_REMAINING_LENGTH, "value out of range")
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


def varint_into(buf: "bytearray | memoryview", pos: int, n: int) -> int:
    """Write ``n`` as a remaining length at ``buf[pos]``; return the position after it."""
    varint_size(n)
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            buf[pos] = byte | 0x80
            pos += 1
        else:
            buf[pos] = byte
            return pos + 1


def varint_decode(buf: "Buffer", pos: int, end: int) -> "tuple[int, int]":
    """``(value, position after it)``, or ``(-1, pos)`` if ``buf[pos:end]`` ends inside it.

    A 4th byte with its continuation bit set is an error (``E_REMAINING_LENGTH``).
    """
    value = 0
    shift = 0
    i = pos
    while i < end:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 28:
            raise MqttError(E_REMAINING_LENGTH, "more than 4 bytes")
    return -1, pos


# -- encoding -----------------------------------------------------------------------------------


def _str_into(buf: "bytearray", pos: int, data: "Buffer") -> int:
    n = len(data)
    if n > 65535:
        raise MqttError(E_OVERSIZE, "string longer than 65535 bytes")
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    buf[pos + 2:pos + 2 + n] = data
    return pos + 2 + n


def _b(text: "str | Buffer") -> "Buffer":
    return text.encode() if isinstance(text, str) else text


def _packet(first: int, body_len: int) -> "tuple[bytearray, int]":
    buf = bytearray(1 + varint_size(body_len) + body_len)
    buf[0] = first
    return buf, varint_into(buf, 1, body_len)


def connect(
    client_id: "str | Buffer",
    clean_session: bool = True,
    keepalive: int = 60,
    username: "str | Buffer | None" = None,
    password: "str | Buffer | None" = None,
    will_topic: "str | Buffer | None" = None,
    will_payload: "Buffer" = b"",
    will_qos: int = 0,
    will_retain: bool = False,
) -> bytes:
    if not 0 <= keepalive <= 65535:
        raise MqttError(E_MALFORMED, "keepalive out of range")
    if will_qos not in (0, 1, 2):
        raise MqttError(E_BAD_FLAGS, "will QoS")
    if password is not None and username is None:
        raise MqttError(E_MALFORMED, "password without user name")
    cid = _b(client_id)
    flags = 0x02 if clean_session else 0
    size = 10 + 2 + len(cid)
    wt: Buffer = b""
    if will_topic is not None:
        wt = _b(will_topic)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        size += 4 + len(wt) + len(will_payload)
    user: Buffer = b""
    pw: Buffer = b""
    if username is not None:
        user = _b(username)
        flags |= 0x80
        size += 2 + len(user)
    if password is not None:
        pw = _b(password)
        flags |= 0x40
        size += 2 + len(pw)
    buf, pos = _packet(CONNECT << 4, size)
    pos = _str_into(buf, pos, b"MQTT")
    buf[pos] = 4
    buf[pos + 1] = flags
    buf[pos + 2] = keepalive >> 8
    buf[pos + 3] = keepalive & 0xFF
    pos = _str_into(buf, pos + 4, cid)
    if will_topic is not None:
        pos = _str_into(buf, pos, wt)
        pos = _str_into(buf, pos, will_payload)
    if username is not None:
        pos = _str_into(buf, pos, user)
    if password is not None:
        pos = _str_into(buf, pos, pw)
    return bytes(buf)


def connack(session_present: bool, return_code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present else 0, return_code))


def publish_into(
    buf: "bytearray",
    topic: "Buffer",
    payload: "Buffer",
    qos: int = 0,
    packet_id: int = 0,
    dup: bool = False,
    retain: bool = False,
) -> int:
    """Write a PUBLISH into ``buf``; return its length (``E_OVERSIZE`` if it does not fit)."""
    if qos not in (0, 1):
        raise MqttError(E_BAD_FLAGS, "only QoS 0 and 1 are supported")
    if qos and not 0 < packet_id <= 65535:
        raise MqttError(E_MALFORMED, "QoS 1 needs a packet id 1-65535")
    if dup and not qos:
        raise MqttError(E_BAD_FLAGS, "DUP on QoS 0")
    body = 2 + len(topic) + (2 if qos else 0) + len(payload)
    total = 1 + varint_size(body) + body
    if total > len(buf):
        raise MqttError(E_OVERSIZE, f"PUBLISH of {total} bytes, buffer {len(buf)}")
    buf[0] = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    pos = varint_into(buf, 1, body)
    pos = _str_into(buf, pos, topic)
    if qos:
        buf[pos] = packet_id >> 8
        buf[pos + 1] = packet_id & 0xFF
        pos += 2
    buf[pos:pos + len(payload)] = payload
    return total


def publish(topic: "str | Buffer", payload: "Buffer", qos: int = 0, packet_id: int = 0,
            dup: bool = False, retain: bool = False) -> bytes:
    t = _b(topic)
    buf = bytearray(5 + 2 + len(t) + 2 + len(payload))
    n = publish_into(buf, t, payload, qos, packet_id, dup, retain)
    return bytes(buf[:n])


def _pid_packet_into(buf: "bytearray", first: int, packet_id: int) -> int:
    if not 0 < packet_id <= 65535:
        raise MqttError(E_MALFORMED, "packet id out of range")
    buf[0] = first
    buf[1] = 2
    buf[2] = packet_id >> 8
    buf[3] = packet_id & 0xFF
    return 4


def puback_into(buf: "bytearray", packet_id: int) -> int:
    return _pid_packet_into(buf, PUBACK << 4, packet_id)


def puback(packet_id: int) -> bytes:
    buf = bytearray(4)
    puback_into(buf, packet_id)
    return bytes(buf)


def subscribe(packet_id: int, topics: "list[tuple[str, int]]") -> bytes:
    """SUBSCRIBE to ``[(filter, qos), ...]``."""
    if not 0 < packet_id <= 65535:
        raise MqttError(E_MALFORMED, "packet id out of range")
    if not topics:
        raise MqttError(E_MALFORMED, "SUBSCRIBE without topics")
    encoded = []
    size = 2
    for topic, qos in topics:
        if qos not in (0, 1, 2):
            raise MqttError(E_BAD_FLAGS, "subscription QoS")
        t = _b(topic)
        encoded.append((t, qos))
        size += 3 + len(t)
    buf, pos = _packet((SUBSCRIBE << 4) | 0x02, size)
    buf[pos] = packet_id >> 8
    buf[pos + 1] = packet_id & 0xFF
    pos += 2
    for t, qos in encoded:
        pos = _str_into(buf, pos, t)
        buf[pos] = qos
        pos += 1
    return bytes(buf)


def suback(packet_id: int, codes: "Buffer") -> bytes:
    buf, pos = _packet(SUBACK << 4, 2 + len(codes))
    buf[pos] = packet_id >> 8
    buf[pos + 1] = packet_id & 0xFF
    buf[pos + 2:] = codes
    return bytes(buf)


def header_into(buf: "bytearray", ptype: int, flags: int, body_len: int) -> int:
    """A fixed header (for relaying a decoded packet); returns its length."""
    buf[0] = (ptype << 4) | flags
    return varint_into(buf, 1, body_len)


# -- decoding -----------------------------------------------------------------------------------

# allowed fixed-header flags per type (-1: any, PUBLISH is checked for QoS 3 on its own)
_FLAGS = (-2, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, -2)
# exact remaining length per type (-1: variable)
_LENGTHS = (-1, -1, 2, -1, 2, 2, 2, 2, -1, -1, -1, 2, 0, 0, 0, -1)


def check_header(first: int, remaining: int) -> None:
    ptype = first >> 4
    flags = first & 0x0F
    allowed = _FLAGS[ptype]
    if allowed == -2:
        raise MqttError(E_UNKNOWN_TYPE, f"packet type {ptype}")
    if allowed == -1:
        if flags & 0x06 == 0x06:
            raise MqttError(E_BAD_FLAGS, "PUBLISH with QoS 3")
        if flags & 0x08 and not flags & 0x06:
            raise MqttError(E_BAD_FLAGS, "PUBLISH with DUP at QoS 0")
    elif flags != allowed:
        raise MqttError(E_BAD_FLAGS, f"type {ptype} flags 0x{flags:x}")
    want = _LENGTHS[ptype]
    if want >= 0 and remaining != want:
        raise MqttError(E_MALFORMED, f"type {ptype} remaining length {remaining}")


class Decoder:
    """Streaming decoder into one buffer of ``max_packet`` bytes (the whole packet, header too).

    ``for ptype, flags, body in decoder.feed(data): ...`` -- consume the iterator fully.
    """

    def __init__(self, max_packet: int = 1024) -> None:
        if max_packet < 8:
            raise ValueError("max_packet")
        self.max_packet = max_packet
        self._buf = bytearray(max_packet)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._start = 0

    def pending(self) -> int:
        """Bytes held of a packet not complete yet."""
        return self._n - self._start

    def reset(self) -> None:
        self._n = 0
        self._start = 0

    def _compact(self) -> None:
        start = self._start
        if start:
            rest = self._n - start
            if rest:
                self._mv[0:rest] = bytes(self._mv[start : self._n])
            self._n = rest
            self._start = 0

    def feed(self, data: "Buffer") -> "Iterator[tuple[int, int, bytes]]":
        """Yield the packets completed by ``data``. The decoder's state is advanced before each
        yield, but bytes of ``data`` not yet taken in are lost if the iteration stops early."""
        src = 0
        total = len(data)
        mv = self._mv
        while True:
            self._compact()
            take = min(total - src, self.max_packet - self._n)
            if take:
                mv[self._n : self._n + take] = data[src : src + take]
                self._n += take
                src += take
            while True:
                pkt = self._next(self._start)
                if pkt is None:
                    break
                end, ptype, flags, body_start = pkt
                self._start = end
                yield ptype, flags, bytes(mv[body_start:end])
            if src >= total:
                return

    def _next(self, start: int) -> "tuple[int, int, int, int] | None":
        end = self._n
        if end - start < 2:
            return None
        try:
            remaining, body = varint_decode(self._buf, start + 1, end)
            if remaining < 0:
                return None
            first = self._buf[start]
            check_header(first, remaining)
        except MqttError:
            self.reset()
            raise
        size = body - start + remaining
        if size > self.max_packet:
            self.reset()
            raise MqttError(E_OVERSIZE, f"packet of {size} bytes, limit {self.max_packet}")
        if body + remaining > end:
            return None
        return body + remaining, first >> 4, first & 0x0F, body


def decode(data: "Buffer", max_packet: int = 1024) -> "tuple[int, int, bytes]":
    """Exactly one complete packet from ``data`` (``E_TRUNCATED`` if it ends early)."""
    dec = Decoder(max(max_packet, 8))
    packets = list(dec.feed(data))
    if len(packets) > 1 or (packets and dec.pending()):
        raise MqttError(E_MALFORMED, "more than one packet")
    if not packets:
        raise MqttError(E_TRUNCATED, f"{len(data)} bytes of an incomplete packet")
    return packets[0]


# -- body parsers -------------------------------------------------------------------------------


def _u16(body: "Buffer", pos: int) -> int:
    if pos + 2 > len(body):
        raise MqttError(E_MALFORMED, "body ends inside a 2-byte field")
    return (body[pos] << 8) | body[pos + 1]


def _bytes_at(body: "Buffer", pos: int) -> "tuple[bytes, int]":
    n = _u16(body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise MqttError(E_MALFORMED, "string runs past the end of the packet")
    return bytes(body[pos + 2:end]), end


def _str_at(body: "Buffer", pos: int) -> "tuple[str, int]":
    raw, pos = _bytes_at(body, pos)
    try:
        return raw.decode(), pos
    except ValueError:
        raise MqttError(E_MALFORMED, "string is not UTF-8") from None


def parse_connack(body: "Buffer") -> "tuple[bool, int]":
    """``(session_present, return_code)``."""
    if len(body) != 2 or body[0] & 0xFE:
        raise MqttError(E_MALFORMED, "CONNACK")
    if body[1] >= len(CONNACK_NAMES):
        raise MqttError(E_MALFORMED, f"CONNACK return code {body[1]}")
    return bool(body[0]), body[1]


def parse_packet_id(body: "Buffer") -> int:
    pid = _u16(body, 0)
    if len(body) != 2 or not pid:
        raise MqttError(E_MALFORMED, "packet id")
    return pid


def parse_publish(flags: int, body: "Buffer") -> "tuple[str, bytes, int, int, bool, bool]":
    """``(topic, payload, qos, packet_id, dup, retain)``."""
    qos = (flags >> 1) & 3
    if qos > 1:
        raise MqttError(E_BAD_FLAGS, f"QoS {qos} is not supported")
    topic, pos = _str_at(body, 0)
    if not topic:
        raise MqttError(E_MALFORMED, "empty topic")
    pid = 0
    if qos:
        pid = _u16(body, pos)
        if not pid:
            raise MqttError(E_MALFORMED, "packet id 0")
        pos += 2
    return topic, bytes(body[pos:]), qos, pid, bool(flags & 8), bool(flags & 1)


def parse_suback(body: "Buffer") -> "tuple[int, bytes]":
    """``(packet_id, return codes)``; a code is a granted QoS or ``SUBACK_FAILURE``."""
    pid = _u16(body, 0)
    codes = bytes(body[2:])
    if not pid or not codes:
        raise MqttError(E_MALFORMED, "SUBACK")
    for c in codes:
        if c not in (0, 1, 2, SUBACK_FAILURE):
            raise MqttError(E_MALFORMED, f"SUBACK code 0x{c:x}")
    return pid, codes


def parse_subscribe(body: "Buffer") -> "tuple[int, list[tuple[str, int]]]":
    pid = _u16(body, 0)
    pos = 2
    topics = []
    while pos < len(body):
        topic, pos = _str_at(body, pos)
        if pos >= len(body) or body[pos] > 2:
            raise MqttError(E_MALFORMED, "SUBSCRIBE QoS")
        topics.append((topic, body[pos]))
        pos += 1
    if not pid or not topics:
        raise MqttError(E_MALFORMED, "SUBSCRIBE")
    return pid, topics


def parse_connect(body: "Buffer") -> "dict[str, Any]":
    """The fields of a CONNECT, by the keyword names of :func:`connect`."""
    name, pos = _bytes_at(body, 0)
    if name != b"MQTT" or pos + 4 > len(body) or body[pos] != 4:
        raise MqttError(E_MALFORMED, "not MQTT 3.1.1")
    flags = body[pos + 1]
    if flags & 1 or (flags & 0x18) == 0x18 or (not flags & 4 and flags & 0x38):
        raise MqttError(E_MALFORMED, f"CONNECT flags 0x{flags:x}")
    if flags & 0x40 and not flags & 0x80:
        raise MqttError(E_MALFORMED, "password without user name")
    out: dict[str, Any] = {
        "clean_session": bool(flags & 2),
        "keepalive": _u16(body, pos + 2),
        "will_qos": (flags >> 3) & 3,
        "will_retain": bool(flags & 0x20),
        "will_topic": None,
        "will_payload": b"",
        "username": None,
        "password": None,
    }
    out["client_id"], pos = _str_at(body, pos + 4)
    if flags & 4:
        out["will_topic"], pos = _str_at(body, pos)
        out["will_payload"], pos = _bytes_at(body, pos)
    if flags & 0x80:
        out["username"], pos = _str_at(body, pos)
    if flags & 0x40:
        out["password"], pos = _bytes_at(body, pos)
    if pos != len(body):
        raise MqttError(E_MALFORMED, "trailing bytes in CONNECT")
    return out
