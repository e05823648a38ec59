"""The reader's SNTP client (RFC 4330), on MicroPython and CPython.

Runtime-neutral half, tested on the MicroPython VM: ``request_into`` writes the 48-byte client
request into the caller's buffer (LI 0, version 4, mode 3; the transmit timestamp is the local
clock, its low 16 fraction bits a nonce), ``parse_reply`` checks a reply against that request and
returns the server's receive and transmit times, ``offset_delay`` is RFC 4330's arithmetic on the
four timestamps. Times are Unix milliseconds; NTP era 1 (from 2036-02-07) is handled.

A reply is refused, with an ``SntpError`` whose ``code`` is one of ``E_*``, when it is shorter
than 48 bytes, not a server reply (mode 4), of an unknown version, not an answer to our request
(originate timestamp), a kiss-o'-death (stratum 0; ``detail`` is its code, e.g. ``RATE``), from
an unsynchronised server (leap indicator 3, stratum above 15) or without a time.

Async half: ``query`` sends one request over a non-blocking UDP socket and polls for the reply in
short ``sleep_ms`` steps up to its timeout (MicroPython's asyncio has no UDP streams); packets
that do not answer our request (stale or spoofed, truncated) are ignored while the timeout runs.
A reply must come from the address the request went to (``recvfrom``; ``from_server`` compares
host and port) *and* echo the request's transmit timestamp (its nonce): a datagram from another
host or port is ignored unparsed, without ending the wait. An off-path device must then both guess
the nonce and forge the server's source address; an on-path one can still do both
(docs/SECURITY.md, actor 2), which the gateway answers by not believing a clock set back.
The new time is the server's transmit time plus half the network delay, measured with the tick
counter, so a wrong local clock does not matter. ``sync`` retries with ``Backoff`` and sets the
clock. Name lookups (``getaddrinfo``) block on MicroPython: give servers as IP addresses.
"""

import struct

from firmware.aio import sleep_ms
from firmware.backoff import Backoff
from firmware.errors import CodedError
from firmware.ticks import ticks_add, ticks_diff, ticks_ms, ticks_us
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from firmware.clock import Clock

PACKET_LEN = const(48)
NTP_PORT = const(123)
_REQUEST_MODE = const(0x23)  # LI 0 (no warning), VN 4, mode 3 (client)
_SERVER = const(4)
_ORIGINATE = const(24)
_RECEIVE = const(32)
_TRANSMIT = const(40)
_STEP_MAX_MS = const(16)
_NTP_TO_UNIX = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_ERA1_TO_UNIX = 2085978496  # seconds from 1970-01-01 to 2036-02-07 06:28:16 (NTP era 1)

E_SHORT = const(1)  # shorter than 48 bytes
E_MODE = const(2)  # not a server reply (mode is not 4)
E_VERSION = const(3)  # version 0 or above 4
E_ORIGIN = const(4)  # originate timestamp is not our request's transmit timestamp
E_KISS = const(5)  # stratum 0: kiss-o'-death (detail: the kiss code)
E_UNSYNCED = const(6)  # leap indicator 3: the server's clock is not synchronised
E_STRATUM = const(7)  # stratum above 15
E_NO_TIME = const(8)  # receive or transmit timestamp zero
E_TIMEOUT = const(9)  # no reply to our request within the timeout
E_NETWORK = const(10)  # name lookup or socket error
ERROR_NAMES = (
    "",
    "short reply",
    "not a server reply",
    "bad version",
    "not our request",
    "kiss-o'-death",
    "server unsynchronised",
    "bad stratum",
    "no time",
    "timeout",
    "network",
)
_UNRELATED = E_ORIGIN  # codes up to here: not an answer to us, keep listening


class SntpError(CodedError):
    """A refused reply or a failed exchange: ``code`` is one of ``E_*``."""

    NAMES = ERROR_NAMES


# -- packets --------------------------------------------------------------------------------------


def request_into(buf: "bytearray | memoryview", unix_s: int, ms: int, nonce: int = 0) -> int:
    """Write the client request into ``buf[:48]``; return 48.

    The transmit timestamp is ``unix_s``.``ms`` (the local clock) with ``nonce`` in the low 16
    bits of its fraction (about 15 us), so two requests in the same millisecond differ.
    """
    for i in range(PACKET_LEN):
        buf[i] = 0
    buf[0] = _REQUEST_MODE
    struct.pack_into(
        ">IHH",
        buf,
        _TRANSMIT,
        (unix_s + _NTP_TO_UNIX) & 0xFFFFFFFF,
        (ms << 16) // 1000,
        nonce & 0xFFFF,
    )
    return PACKET_LEN


def unix_ms(data: "bytes | bytearray | memoryview", offset: int) -> int:
    """The NTP timestamp at ``data[offset:offset + 8]`` in Unix milliseconds (eras 0 and 1)."""
    seconds, fraction = struct.unpack_from(">IH", data, offset)
    if seconds >= 0x80000000:
        seconds -= _NTP_TO_UNIX  # era 0: 1968..2036
    else:
        seconds += _ERA1_TO_UNIX  # era 1: 2036..2104
    return seconds * 1000 + ((fraction * 1000) >> 16)


def _zero(data: "bytes | bytearray | memoryview", offset: int) -> bool:
    return not any(data[offset : offset + 8])


def parse_reply(
    data: "bytes | bytearray | memoryview", request: "bytes | bytearray | memoryview"
) -> "tuple[int, int, int]":
    """Check a server reply to ``request``; return ``(receive_ms, transmit_ms, stratum)``.

    The two times are the server's (T2 and T3 of RFC 4330) in Unix milliseconds. Raises
    ``SntpError``; codes up to ``E_ORIGIN`` mean the packet is not an answer to this request.
    """
    n = len(data)
    if n < PACKET_LEN:
        raise SntpError(E_SHORT, str(n) + " bytes")
    first = data[0]
    if first & 7 != _SERVER:
        raise SntpError(E_MODE, "mode " + str(first & 7))
    version = (first >> 3) & 7
    if not 1 <= version <= 4:
        raise SntpError(E_VERSION, "version " + str(version))
    for i in range(8):
        if data[_ORIGINATE + i] != request[_TRANSMIT + i]:
            raise SntpError(E_ORIGIN)
    stratum = data[1]
    if stratum == 0:
        code = ""
        for i in range(12, 16):
            if 32 < data[i] < 127:
                code += chr(data[i])
        raise SntpError(E_KISS, code or "no code")
    if first >> 6 == 3:
        raise SntpError(E_UNSYNCED, "leap indicator 3")
    if stratum > 15:
        raise SntpError(E_STRATUM, "stratum " + str(stratum))
    if _zero(data, _TRANSMIT) or _zero(data, _RECEIVE):
        raise SntpError(E_NO_TIME)
    return unix_ms(data, _RECEIVE), unix_ms(data, _TRANSMIT), stratum


def offset_delay(t1: int, t2: int, t3: int, t4: int) -> "tuple[int, int]":
    """RFC 4330's clock offset and round-trip delay from the four timestamps (same unit)."""
    return ((t2 - t1) + (t3 - t4)) // 2, (t4 - t1) - (t3 - t2)


# -- the exchange ---------------------------------------------------------------------------------


class Sample:
    """One answered query: the time when the reply arrived, and how it was measured."""

    def __init__(
        self, unix_ms: int, offset_ms: int, delay_ms: int, stratum: int, at_ticks: int
    ) -> None:
        self.unix_ms = unix_ms  # server time at the reply's arrival (T3 + delay / 2)
        self.offset_ms = offset_ms  # server clock minus the local clock
        self.delay_ms = delay_ms  # round trip minus the server's processing time
        self.stratum = stratum
        self.at_ticks = at_ticks  # ticks_ms() at the arrival

    def now(self) -> "tuple[int, int]":
        """``(unix seconds, milliseconds)`` now, carried forward from the arrival by the ticks."""
        t = self.unix_ms + ticks_diff(ticks_ms(), self.at_ticks)
        return t // 1000, t % 1000


def from_server(source: object, server: object) -> bool:
    """Whether a datagram's ``source`` address (from ``recvfrom``) is ``server``, the address the
    request was sent to (from ``getaddrinfo``): same host and port. IPv6 flow and scope fields
    are not compared; an address in any other form must be equal."""
    if source == server:
        return True
    if isinstance(source, tuple) and isinstance(server, tuple):
        return len(source) >= 2 and len(server) >= 2 and source[:2] == server[:2]
    return False


def _again(exc: OSError) -> bool:
    import errno

    code = exc.args[0] if exc.args else 0
    return code == errno.EAGAIN or code == getattr(errno, "EWOULDBLOCK", errno.EAGAIN)


async def query(
    host: str, port: int = NTP_PORT, timeout_ms: int = 2000, clock: "Clock | None" = None
) -> Sample:
    """Ask ``host`` for the time once; raise ``SntpError`` (``E_TIMEOUT`` when no reply to our
    request came within ``timeout_ms``, else what was wrong with the last packet received)."""
    import socket

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except (OSError, IndexError) as exc:
        raise SntpError(E_NETWORK, host + ": " + repr(exc)) from None
    try:
        if clock is None:
            from firmware.clock import Clock

            clock = Clock()
        request = bytearray(PACKET_LEN)
        unix_s, ms = clock.now()
        request_into(request, unix_s, ms, ticks_us())
        sock.setblocking(False)
        sent = ticks_ms()
        try:
            sock.sendto(request, address)
        except OSError as exc:
            raise SntpError(E_NETWORK, "send to " + host + ": " + repr(exc)) from None
        deadline = ticks_add(sent, timeout_ms)
        ignored: SntpError | None = None
        step = 1
        while True:
            waiting = False
            try:
                data, source = sock.recvfrom(PACKET_LEN + 20)  # room for a MAC, not checked
            except OSError as exc:
                if not _again(exc):
                    raise SntpError(E_NETWORK, "receive from " + host + ": " + repr(exc)) from None
                waiting = True
            if not waiting and from_server(source, address):  # else: not our server, ignored
                arrived = ticks_ms()
                try:
                    t2, t3, stratum = parse_reply(data, request)
                except SntpError as exc:
                    if exc.code > _UNRELATED:
                        raise
                    ignored = exc
                else:
                    t1 = unix_s * 1000 + ms
                    t4 = t1 + ticks_diff(arrived, sent)
                    offset, delay = offset_delay(t1, t2, t3, t4)
                    delay = max(delay, 0)
                    return Sample(t3 + delay // 2, offset, delay, stratum, arrived)
            # the deadline holds also against a stream of ignored packets, and other tasks run
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                timeout = SntpError(E_TIMEOUT, host + " in " + str(timeout_ms) + " ms")
                raise (ignored or timeout) from None
            if waiting:
                await sleep_ms(min(step, left))
                step = min(step * 2, _STEP_MAX_MS)
            else:
                await sleep_ms(0)  # read on at once: the answer may be queued behind it
    finally:
        sock.close()


async def sync(
    clock: "Clock",
    host: str,
    port: int = NTP_PORT,
    timeout_ms: int = 2000,
    attempts: int = 3,
    backoff: "Backoff | None" = None,
) -> Sample:
    """Query ``host`` up to ``attempts`` times, waiting ``backoff`` between them (not after a
    kiss-o'-death), then set ``clock``. Raises the last ``SntpError``."""
    if backoff is None:
        backoff = Backoff(host, 250, 2000)
    backoff.reset()
    attempt = 0
    while True:
        attempt += 1
        try:
            sample = await query(host, port, timeout_ms, clock)
        except SntpError as exc:
            if exc.code == E_KISS or attempt >= attempts:
                raise
            await sleep_ms(backoff.next())
            continue
        unix_s, ms = sample.now()
        clock.set_time(unix_s, ms)
        return sample
