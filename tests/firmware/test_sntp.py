"""The reader's SNTP client (firmware/sntp.py): the request it builds and the replies it refuses,
the same on CPython and on the real MicroPython VM; then ``query``/``sync`` against a real UDP
SNTP server on 127.0.0.1 written here (RFC 4330 replies, plus broken ones: wrong originate
timestamp, leap indicator 3, kiss-o'-death, stratum 16, truncated, silent), ending with the
reader's clock set to the server's time within a few milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from firmware import sntp
from firmware.backoff import Backoff
from firmware.clock import Clock
from firmware.sntp import SntpError
from tests.mpvm import MPVM

NTP_TO_UNIX = 2208988800
LOOPBACK = "127.0.0.1"


def ntp_timestamp(t: float) -> bytes:
    """Unix seconds (float) as a 64-bit NTP timestamp (era 0 or 1 by wrapping)."""
    whole = int(t // 1)
    fraction = int((t - whole) * 2**32) & 0xFFFFFFFF
    return struct.pack(">II", (whole + NTP_TO_UNIX) & 0xFFFFFFFF, fraction)


def make_reply(
    request: bytes,
    t2: float,
    t3: float,
    *,
    li: int = 0,
    version: int = 4,
    mode: int = 4,
    stratum: int = 2,
    refid: bytes = b"\x7f\x00\x00\x01",
    origin: bytes | None = None,
) -> bytes:
    """A server reply (RFC 4330 section 4) to ``request``: T2 received, T3 transmitted."""
    first = (li << 6) | (version << 3) | mode
    header = struct.pack(">BBbbII", first, stratum, 6, -20, 0x00000100, 0x00000200) + refid
    origin = request[40:48] if origin is None else origin
    return header + ntp_timestamp(t3 - 30) + origin + ntp_timestamp(t2) + ntp_timestamp(t3)


class SntpServer(asyncio.DatagramProtocol):
    """An SNTP server on 127.0.0.1 whose clock is the host's plus ``offset_s``.

    ``behaviour``: ``ok``; ``bad_origin`` (originate timestamp not the request's);
    ``bad_then_good`` (a spoofed reply first, then the real one); ``li3``; ``kod`` (stratum 0,
    RATE); ``stratum16``; ``short`` (40 bytes); ``silent``. ``silent_first`` requests get no
    answer at all; ``hold_ms`` is the time between receiving (T2) and answering (T3).
    """

    def __init__(self, offset_s: float = 0.0, behaviour: str = "ok", hold_ms: int = 0) -> None:
        self.offset_s = offset_s
        self.behaviour = behaviour
        self.hold_ms = hold_ms
        self.silent_first = 0
        self.requests: list[tuple[float, bytes]] = []  # (monotonic arrival, packet)
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> SntpServer:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(LOOPBACK, 0)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def now(self) -> float:
        return time.time() + self.offset_s

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t2 = self.now()
        self.requests.append((time.monotonic(), data))
        if self.behaviour == "silent" or len(self.requests) <= self.silent_first:
            return
        if self.hold_ms:
            asyncio.get_running_loop().call_later(self.hold_ms / 1000, self._answer, data, addr, t2)
        else:
            self._answer(data, addr, t2)

    def _answer(self, request: bytes, addr: Any, t2: float) -> None:
        assert self._transport is not None
        t3 = self.now()
        b = self.behaviour
        bad = request[40:47] + bytes([request[47] ^ 1])  # one nonce bit off
        if b in ("bad_origin", "bad_then_good"):
            self._transport.sendto(make_reply(request, t2, t3, origin=bad), addr)
            if b == "bad_origin":
                return
        variants: dict[str, dict[str, Any]] = {
            "li3": {"li": 3},
            "kod": {"li": 3, "stratum": 0, "refid": b"RATE"},
            "stratum16": {"stratum": 16},
        }
        options = variants.get(b, {})
        reply = make_reply(request, t2, t3, **options)
        self._transport.sendto(reply[:40] if b == "short" else reply, addr)


@pytest.fixture
async def server() -> AsyncIterator[SntpServer]:
    s = await SntpServer(offset_s=1_000_000.25).start()
    yield s
    s.close()


def clock_ms(clock: Clock) -> int:
    s, ms = clock.now()
    return s * 1000 + ms


def assert_synced(clock: Clock, server: SntpServer, sample: sntp.Sample | None) -> None:
    """The clock reads the server's time within the exchange's own error bound (RFC 4330: the
    true offset lies within delay / 2 of the measured one) plus millisecond rounding: a few ms on
    an idle machine, more only when the event loop was late to see the reply."""
    assert clock.synced and sample is not None
    error = abs(clock_ms(clock) - server.now() * 1000)
    assert error <= sample.delay_ms / 2 + 3, (error, sample.delay_ms)


def unsynced_clock() -> Clock:
    return Clock(rtc_seconds=lambda: 0)  # an RTC that lost its time: 1970


def err(code: int) -> pytest.RaisesExc[SntpError]:
    return pytest.raises(SntpError, check=lambda e: e.code == code)


# -- packets ---------------------------------------------------------------------------------------


def test_request_layout() -> None:
    buf = bytearray(b"\xee" * 60)
    assert sntp.request_into(buf, 1_700_000_000, 500, 0xABCD) == 48
    assert buf[0] == 0x23  # LI 0, VN 4, mode 3
    assert bytes(buf[1:40]) == bytes(39)
    seconds, frac_hi, nonce = struct.unpack(">IHH", buf[40:48])
    assert seconds == 1_700_000_000 + NTP_TO_UNIX
    assert frac_hi == 32768 and nonce == 0xABCD  # .500 s; the low 16 bits are the nonce
    assert bytes(buf[48:]) == b"\xee" * 12  # nothing written past the packet
    assert sntp.unix_ms(buf, 40) == 1_700_000_000_500


@pytest.mark.parametrize(
    ("t", "expected_ms"),
    [
        (1_700_000_000.25, 1_700_000_000_250),
        (0.0, 0),
        (2_085_978_495.5, 2_085_978_495_500),  # the last second of era 0 (2036-02-07 06:28:15)
        (2_085_978_496.0, 2_085_978_496_000),  # era 1 starts: NTP seconds wrap to 0
        (2_200_000_000.75, 2_200_000_000_750),
    ],
)
def test_timestamps_across_eras(t: float, expected_ms: int) -> None:
    assert sntp.unix_ms(ntp_timestamp(t), 0) == expected_ms


def test_parse_a_good_reply() -> None:
    request = bytearray(48)
    sntp.request_into(request, 1_600_000_000, 0, 7)
    reply = make_reply(bytes(request), 1_700_000_000.125, 1_700_000_000.375, stratum=3)
    assert sntp.parse_reply(reply, request) == (1_700_000_000_125, 1_700_000_000_375, 3)
    # a reply with a trailing MAC is fine; version 3 servers too
    assert sntp.parse_reply(reply + bytes(20), request)[2] == 3
    v3 = make_reply(bytes(request), 1.0, 2.0, version=3)
    assert sntp.parse_reply(v3, request)[:2] == (1000, 2000)


def test_offset_and_delay() -> None:
    # client sends at 1000 (its clock), server gets it at 1510 and answers at 1520,
    # client receives at 1040: delay 30, server 500 ahead
    assert sntp.offset_delay(1000, 1510, 1520, 1040) == (495, 30)


def _refused(**changes: Any) -> SntpError:
    request = bytearray(48)
    sntp.request_into(request, 1_600_000_000, 0, 7)
    reply = bytearray(make_reply(bytes(request), 1_700_000_000.0, 1_700_000_000.0))
    for field, value in changes.items():
        if field == "length":
            reply = reply[:value]
        elif field == "first":
            reply[0] = value
        elif field == "stratum":
            reply[1] = value
        elif field == "refid":
            reply[12:16] = value
        elif field == "origin_byte":
            reply[24 + value] ^= 0x01
        elif field == "zero":
            reply[value : value + 8] = bytes(8)
    with pytest.raises(SntpError) as info:
        sntp.parse_reply(reply, request)
    return info.value


@pytest.mark.parametrize(
    ("changes", "code", "text"),
    [
        ({"length": 47}, sntp.E_SHORT, "short reply: 47 bytes"),
        ({"length": 0}, sntp.E_SHORT, "short reply: 0 bytes"),
        ({"first": 0x23}, sntp.E_MODE, "not a server reply: mode 3"),
        ({"first": 0x25}, sntp.E_MODE, "mode 5"),  # broadcast
        ({"first": 0x04}, sntp.E_VERSION, "bad version: version 0"),
        ({"first": 0x2C}, sntp.E_VERSION, "version 5"),
        ({"origin_byte": 0}, sntp.E_ORIGIN, "not our request"),
        ({"origin_byte": 7}, sntp.E_ORIGIN, "not our request"),  # the nonce bits count too
        ({"first": 0xE4}, sntp.E_UNSYNCED, "server unsynchronised: leap indicator 3"),
        ({"first": 0xE4, "stratum": 0, "refid": b"RATE"}, sntp.E_KISS, "kiss-o'-death: RATE"),
        ({"stratum": 0, "refid": b"DENY"}, sntp.E_KISS, "DENY"),
        ({"stratum": 0, "refid": b"\x00\x00\x00\x00"}, sntp.E_KISS, "no code"),
        ({"stratum": 16}, sntp.E_STRATUM, "bad stratum: stratum 16"),
        ({"stratum": 255}, sntp.E_STRATUM, "stratum 255"),
        ({"zero": 40}, sntp.E_NO_TIME, "no time"),
        ({"zero": 32}, sntp.E_NO_TIME, "no time"),
    ],
)
def test_refused_replies(changes: dict[str, Any], code: int, text: str) -> None:
    e = _refused(**changes)
    assert e.code == code
    assert text in str(e)


VM_CODE = """
import struct
from firmware import sntp

def ts(sec, frac):
    return struct.pack(">II", sec, frac)

def reply(req, first=0x24, stratum=2, refid=b"GPS\\x00", t2=(3908908800, 0x20000000),
          t3=(3908908801, 0xC0000000), origin=None, n=48):
    r = bytearray(struct.pack(">BBbbII", first, stratum, 6, -20, 256, 512) + refid)
    r += ts(3908900000, 0) + (req[40:48] if origin is None else origin)
    r += ts(*t2) + ts(*t3)
    return r[:n]

def outcome(data, req):
    try:
        return sntp.parse_reply(data, req)
    except sntp.SntpError as e:
        return (e.code, str(e))

req = bytearray(48)
print(sntp.request_into(req, 1759000000, 999, 0x1234), bytes(req).hex())
for unix_s, ms, nonce in ((0, 0, 0), (2085978495, 1, 65535), (2085978496, 500, 1)):
    sntp.request_into(req, unix_s, ms, nonce)
    print(bytes(req[40:48]).hex(), sntp.unix_ms(req, 40))
sntp.request_into(req, 1759000000, 999, 0x1234)
print(outcome(reply(req), req))
print(outcome(reply(req, t2=(16, 0), t3=(17, 0x80000000)), req))
print(outcome(reply(req, n=47), req))
print(outcome(reply(req, first=0x23), req))
print(outcome(reply(req, first=0x3C), req))
print(outcome(reply(req, origin=bytes(8)), req))
print(outcome(reply(req, first=0xE4), req))
print(outcome(reply(req, first=0xE4, stratum=0, refid=b"RSTR"), req))
print(outcome(reply(req, stratum=16), req))
print(outcome(reply(req, t3=(0, 0)), req))
print(sntp.offset_delay(1000, 1510, 1520, 1040), sntp.offset_delay(5000, 2000, 2001, 5100))
server = ("192.168.4.1", 123)
print([sntp.from_server(source, server) for source in (
    ("192.168.4.1", 123), ("192.168.4.1", 1123), ("192.168.4.7", 123), ("192.168.4.1",),
    "192.168.4.1", bytes([2, 0, 0, 123, 192, 168, 4, 1]))],
    sntp.from_server(("fe80::1", 123, 0, 2), ("fe80::1", 123, 0, 0)),
    sntp.from_server(bytes([2, 0, 0, 123]), bytes([2, 0, 0, 123])))
"""


def test_packets_on_micropython_match_cpython(mpvm: MPVM) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(VM_CODE, {"__name__": "vm_code"})
    cpython = out.getvalue().splitlines()
    micropython = mpvm.run(VM_CODE).splitlines()
    assert micropython == cpython
    assert len(cpython) == 16
    assert cpython[15] == "[True, False, False, False, False, False] True True"
    assert cpython[4] == "(1699920000125, 1699920001750, 2)"
    assert cpython[5] == "(2085978512000, 2085978513500, 2)"  # NTP era 1


# -- against a real server on 127.0.0.1 ------------------------------------------------------------


async def test_sync_sets_the_clock_to_the_servers_time(server: SntpServer) -> None:
    rtc: list[int] = []
    clock = Clock(rtc_seconds=lambda: 0, set_rtc=rtc.append)
    sample = await sntp.sync(clock, LOOPBACK, server.port, timeout_ms=1000)
    assert_synced(clock, server, sample)
    assert rtc and -0.1 < server.now() - rtc[0] < 2  # whole seconds to the RTC
    assert sample.stratum == 2 and 0 <= sample.delay_ms < 100
    # the clock was at 1970: the offset is the server's whole time
    assert abs(sample.offset_ms - server.now() * 1000) <= 1000
    assert len(server.requests) == 1
    request = server.requests[0][1]
    assert len(request) == 48 and request[0] == 0x23


async def test_offset_against_a_set_clock(server: SntpServer) -> None:
    clock = Clock()
    now = time.time()
    clock.set_time(int(now), int(now * 1000) % 1000)
    sample = await sntp.query(LOOPBACK, server.port, 1000, clock)
    assert abs(sample.offset_ms - 1_000_000_250) <= sample.delay_ms / 2 + 3
    # the request's transmit timestamp is the local clock
    assert -2 <= sntp.unix_ms(server.requests[0][1], 40) - now * 1000 < 50


async def test_server_processing_time_is_not_network_delay() -> None:
    slow = await SntpServer(offset_s=-3600.0, hold_ms=80).start()
    try:
        clock = unsynced_clock()
        started = time.monotonic()
        sample = await sntp.sync(clock, LOOPBACK, slow.port, timeout_ms=1000)
        assert time.monotonic() - started >= 0.08
        assert sample.delay_ms < 60  # T3 - T2 (80 ms) is taken out of the round trip
        assert_synced(clock, slow, sample)
    finally:
        slow.close()


@pytest.mark.parametrize(
    ("behaviour", "code", "detail", "waits"),
    [
        ("bad_origin", sntp.E_ORIGIN, "", True),  # ignored, reported when the time is up
        ("short", sntp.E_SHORT, "40 bytes", True),
        ("silent", sntp.E_TIMEOUT, "127.0.0.1 in 300 ms", True),
        ("li3", sntp.E_UNSYNCED, "leap indicator 3", False),  # an answer: refused at once
        ("kod", sntp.E_KISS, "RATE", False),
        ("stratum16", sntp.E_STRATUM, "stratum 16", False),
    ],
)
async def test_query_refusals(behaviour: str, code: int, detail: str, waits: bool) -> None:
    bad = await SntpServer(behaviour=behaviour).start()
    try:
        clock = unsynced_clock()
        started = time.monotonic()
        with err(code) as info:
            await sntp.query(LOOPBACK, bad.port, 300, clock)
        elapsed = time.monotonic() - started
        assert detail in info.value.detail
        if waits:
            assert 0.29 <= elapsed < 0.6
        else:
            assert elapsed < 0.2
        assert not clock.synced
        assert len(bad.requests) == 1
    finally:
        bad.close()


async def test_a_spoofed_reply_is_ignored_and_the_real_one_taken() -> None:
    s = await SntpServer(offset_s=42.0, behaviour="bad_then_good").start()
    try:
        clock = unsynced_clock()
        sample = await sntp.sync(clock, LOOPBACK, s.port, timeout_ms=1000, attempts=1)
        assert_synced(clock, s, sample)
    finally:
        s.close()


class SpoofedServer(SntpServer):
    """The real server on 127.0.0.1, and beside it a second UDP socket on 127.0.0.1 (another
    port) that answers every request first with a well-formed reply -- the right originate
    timestamp, a time 20 minutes behind -- as an on-LAN spoofer that saw the request would. The
    real reply follows ``hold_ms`` later, or never when ``behaviour`` is ``silent``."""

    def __init__(self, behaviour: str = "ok") -> None:
        super().__init__(offset_s=42.0, behaviour=behaviour, hold_ms=30)
        self.spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.spoofer.bind((LOOPBACK, 0))
        self.spoofed = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        behind = self.now() - 20 * 60
        self.spoofer.sendto(make_reply(data, behind, behind), addr)
        self.spoofed += 1
        super().datagram_received(data, addr)

    def close(self) -> None:
        self.spoofer.close()
        super().close()


async def test_a_reply_from_another_address_is_ignored_and_the_servers_taken() -> None:
    s = await SpoofedServer().start()
    try:
        assert s.spoofer.getsockname()[1] != s.port
        clock = unsynced_clock()
        sample = await sntp.sync(clock, LOOPBACK, s.port, timeout_ms=1000, attempts=1)
        assert s.spoofed == 1 and len(s.requests) == 1
        assert_synced(clock, s, sample)  # the server's time, not the spoofer's 20 min behind
    finally:
        s.close()


async def test_a_reply_only_from_another_address_is_no_answer() -> None:
    s = await SpoofedServer(behaviour="silent").start()
    try:
        clock = unsynced_clock()
        started = time.monotonic()
        with err(sntp.E_TIMEOUT):  # ignored, not refused: the wait runs to its end
            await sntp.query(LOOPBACK, s.port, 300, clock)
        assert 0.29 <= time.monotonic() - started < 0.6
        assert s.spoofed == 1 and not clock.synced
    finally:
        s.close()


async def test_sync_retries_with_backoff(server: SntpServer) -> None:
    server.silent_first = 2
    clock = unsynced_clock()
    backoff = Backoff("ntp-test", 100, 400)
    expected = Backoff("ntp-test", 100, 400)
    delays = [expected.next() / 1000 for _ in range(2)]
    await sntp.sync(clock, LOOPBACK, server.port, 150, attempts=3, backoff=backoff)
    assert clock.synced
    arrivals = [t for t, _ in server.requests]
    assert len(arrivals) == 3
    for gap, delay in zip(
        (arrivals[1] - arrivals[0], arrivals[2] - arrivals[1]), delays, strict=True
    ):
        assert 0.15 + delay - 0.01 <= gap < 0.15 + delay + 0.2
    # each attempt sends a fresh request (new transmit timestamp)
    assert len({r[40:48] for _, r in server.requests}) == 3


async def test_sync_gives_up_after_its_attempts() -> None:
    silent = await SntpServer(behaviour="silent").start()
    try:
        clock = unsynced_clock()
        with err(sntp.E_TIMEOUT):
            await sntp.sync(
                clock, LOOPBACK, silent.port, 100, attempts=2, backoff=Backoff("x", 20, 20)
            )
        assert len(silent.requests) == 2 and not clock.synced
    finally:
        silent.close()


async def test_kiss_of_death_is_not_retried() -> None:
    kod = await SntpServer(behaviour="kod").start()
    try:
        with err(sntp.E_KISS):
            await sntp.sync(unsynced_clock(), LOOPBACK, kod.port, 300, attempts=3)
        assert len(kod.requests) == 1
    finally:
        kod.close()


async def test_socket_is_always_closed(server: SntpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[socket.socket] = []
    real: Callable[..., socket.socket] = socket.socket

    def tracked(*args: Any) -> socket.socket:
        s = real(*args)
        made.append(s)
        return s

    monkeypatch.setattr(socket, "socket", tracked)
    await sntp.query(LOOPBACK, server.port, 500)
    server.behaviour = "silent"
    with err(sntp.E_TIMEOUT):
        await sntp.query(LOOPBACK, server.port, 50)
    server.behaviour = "kod"
    with err(sntp.E_KISS):
        await sntp.query(LOOPBACK, server.port, 500)
    assert len(made) == 3
    assert all(s.fileno() == -1 for s in made)


async def test_lookup_failure_is_a_network_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with err(sntp.E_NETWORK) as info:
        await sntp.query("gateway.invalid", 123, 100)
    assert "gateway.invalid" in str(info.value)
