"""The reader's asyncio MQTT client (firmware/mqtt.py) against a real Mosquitto on loopback:
connect with clean session off, subscribe, QoS 0/1 publish received back, PUBACK timeout ->
retransmission with DUP and the same packet id (through a proxy that drops the first PUBACK),
the last will on a dead connection (and not on a clean disconnect), keepalive pings and a link
declared dead when PINGRESP stops, and connects that fail cleanly within their timeout. Then
``run()``: the broker restarted under a supervised client, which reconnects with growing backoff
delays and re-sends its unacknowledged QoS 1 publish with DUP and the same packet id; the backoff
sequence itself (fixed seed, same on MicroPython); and the bounded in-flight window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from firmware import mqtt_packets as mp
from firmware.backoff import Backoff
from firmware.mqtt import E_WINDOW_FULL, MqttClient
from firmware.mqtt_packets import Decoder, MqttError
from sim.broker import LOOPBACK, MosquittoBroker, free_port, write_password_file
from tests.mpvm import MPVM

Packet = tuple[str, int, int, bytes]  # direction ("up" client->broker, "down"), type, flags, body
Keep = Callable[[str, int, int, bytes], bool]


class Proxy:
    """A loopback TCP proxy that decodes MQTT both ways, records every packet and can drop some."""

    def __init__(self, target_port: int, keep: Keep | None = None) -> None:
        self.target_port = target_port
        self.keep = keep or (lambda *_: True)
        self.packets: list[Packet] = []
        self.refuse = False  # accept, then close at once (as if the broker were down)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            if self.refuse:
                raise ConnectionRefusedError
            br, bw = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            cw.close()
            return
        for args in ((cr, bw, "up"), (br, cw, "down")):
            t = asyncio.create_task(self._pump(*args))  # type: ignore[arg-type]
            self._tasks.add(t)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, direction: str) -> None:
        dec = Decoder(65536)
        header = bytearray(5)
        try:
            while data := await r.read(4096):
                for ptype, flags, body in dec.feed(data):
                    self.packets.append((direction, ptype, flags, body))
                    if self.keep(direction, ptype, flags, body):
                        n = mp.header_into(header, ptype, flags, len(body))
                        w.write(bytes(header[:n]) + body)
                await w.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            w.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def clients() -> AsyncIterator[list[MqttClient]]:
    made: list[MqttClient] = []
    yield made
    for c in made:
        await c.abort()


def make(
    made: list[MqttClient], port: int, cid: str, **kw: object
) -> tuple[MqttClient, list[tuple[str, bytes, bool, bool]], asyncio.Event]:
    got: list[tuple[str, bytes, bool, bool]] = []
    event = asyncio.Event()

    def on_message(topic: str, payload: bytes, retain: bool, dup: bool) -> None:
        got.append((topic, payload, retain, dup))
        event.set()

    options: dict[str, object] = {
        "connect_timeout_ms": 2000,
        "io_timeout_ms": 2000,
        "ack_timeout_ms": 2000,
    }
    options.update(kw)
    c = MqttClient(cid, LOOPBACK, port, on_message=on_message, **options)  # type: ignore[arg-type]
    made.append(c)
    return c, got, event


async def wait_for(event: asyncio.Event, seconds: float = 3.0) -> None:
    await asyncio.wait_for(event.wait(), seconds)
    event.clear()


async def test_connect_subscribe_publish_round_trip(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    c, got, event = make(clients, broker.port, "reader-1", keepalive=30)
    assert await c.connect() is False  # clean session off, but nothing stored yet
    assert await c.subscribe("att/v1/s/1/down/#", 1) == 1
    await c.publish("att/v1/s/1/down/ack", b"\x00\x01qos1", qos=1)
    await wait_for(event)
    await c.publish("att/v1/s/1/down/cmd", b"qos0", qos=0)
    await wait_for(event)
    assert got == [
        ("att/v1/s/1/down/ack", b"\x00\x01qos1", False, False),
        ("att/v1/s/1/down/cmd", b"qos0", False, False),
    ]
    big = bytes(range(256)) * 3
    await c.publish("att/v1/s/1/down/cmd", big, qos=1)
    await wait_for(event)
    assert got[-1][1] == big
    await c.disconnect()
    assert not c.connected
    with pytest.raises(MqttError):
        await c.publish("att/v1/s/1/up/batch", b"x", qos=1)
    # clean session off: the broker kept the session and the subscription
    assert await c.connect() is True
    await c.publish("att/v1/s/1/down/ack", b"again", qos=1)
    await wait_for(event)
    assert got[-1][:2] == ("att/v1/s/1/down/ack", b"again")
    await c.disconnect()


async def test_puback_timeout_retransmits_with_dup_and_same_packet_id(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    dropped: list[int] = []

    def keep(direction: str, ptype: int, flags: int, body: bytes) -> bool:
        if direction == "down" and ptype == mp.PUBACK and not dropped:
            dropped.append(mp.parse_packet_id(body))
            return False
        return True

    proxy = await Proxy(broker.port, keep).start()
    try:
        c, _, _ = make(clients, proxy.port, "reader-2", ack_timeout_ms=300)
        await c.connect()
        started = time.monotonic()
        await c.publish("att/v1/s/2/up/batch", b"records", qos=1)
        assert 0.25 < time.monotonic() - started < 2.0
        assert c.retransmits == 1
        ups = [
            mp.parse_publish(flags, body)
            for d, ptype, flags, body in proxy.packets
            if d == "up" and ptype == mp.PUBLISH
        ]
        assert len(ups) == 2
        (t1, p1, q1, id1, dup1, _), (t2, p2, q2, id2, dup2, _) = ups
        assert (t1, p1, q1, dup1) == ("att/v1/s/2/up/batch", b"records", 1, False)
        assert (t2, p2, q2, dup2) == ("att/v1/s/2/up/batch", b"records", 1, True)
        assert id1 == id2 == dropped[0]
        # the next publish uses a new packet id and needs no retransmission
        await c.publish("att/v1/s/2/up/batch", b"more", qos=1)
        assert c.retransmits == 1
        await c.disconnect()
    finally:
        await proxy.close()


async def test_puback_never_comes_fails_after_the_retries(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    proxy = await Proxy(broker.port, lambda d, t, f, b: t != mp.PUBACK).start()
    try:
        c, _, _ = make(clients, proxy.port, "reader-3", ack_timeout_ms=100, retries=2)
        await c.connect()
        with pytest.raises(MqttError) as info:
            await c.publish("att/v1/s/3/up/batch", b"x", qos=1)
        assert info.value.code == mp.E_TIMEOUT
        assert c.retransmits == 2
        assert c.connected  # a missing PUBACK is not a dead link by itself
    finally:
        await proxy.close()


async def test_last_will_on_a_dead_connection_not_on_disconnect(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    watcher, got, event = make(clients, broker.port, "gateway-s")
    await watcher.connect()
    await watcher.subscribe("att/v1/s/+/up/status", 1)
    will = {
        "will_topic": "att/v1/s/4/up/status",
        "will_payload": b"offline",
        "will_qos": 1,
        "will_retain": True,
    }
    polite, _, _ = make(clients, broker.port, "reader-5", **will)
    await polite.connect()
    await polite.disconnect()
    reader, _, _ = make(clients, broker.port, "reader-4", **will)
    await reader.connect()
    await reader.abort()  # the socket dies without DISCONNECT
    await wait_for(event)
    assert got == [("att/v1/s/4/up/status", b"offline", False, False)]
    # retained: a later subscriber gets it too
    late, late_got, late_event = make(clients, broker.port, "late")
    await late.connect()
    await late.subscribe("att/v1/s/4/up/status", 1)
    await wait_for(late_event)
    assert late_got == [("att/v1/s/4/up/status", b"offline", True, False)]
    await asyncio.sleep(0.1)
    assert len(got) == 1  # reader-5 said goodbye: no will


async def test_keepalive_pings(broker: MosquittoBroker, clients: list[MqttClient]) -> None:
    c, _, _ = make(clients, broker.port, "reader-6", keepalive=1)
    await c.connect()
    await asyncio.sleep(1.3)
    assert c.pings_sent >= 2
    assert c.pongs >= 2
    assert c.connected and c.error is None
    await c.disconnect()


async def test_missing_pingresp_declares_the_link_dead(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    proxy = await Proxy(broker.port, lambda d, t, f, b: t != mp.PINGRESP).start()
    try:
        c, _, _ = make(clients, proxy.port, "reader-7", keepalive=1)
        await c.connect()
        started = time.monotonic()
        while c.connected and time.monotonic() - started < 3:
            await asyncio.sleep(0.05)
        assert not c.connected
        assert c.error is not None and c.error.code == mp.E_TIMEOUT
        assert c.pongs == 0
        with pytest.raises(MqttError):
            await c.publish("att/v1/s/7/up/batch", b"x")
    finally:
        await proxy.close()


async def test_connect_to_a_closed_port_fails_cleanly(clients: list[MqttClient]) -> None:
    c, _, _ = make(clients, free_port(), "reader-8", connect_timeout_ms=1000)
    started = time.monotonic()
    with pytest.raises(MqttError) as info:
        await c.connect()
    assert info.value.code == mp.E_NETWORK
    assert time.monotonic() - started < 1.5
    assert not c.connected


async def test_connect_to_a_silent_server_times_out(clients: list[MqttClient]) -> None:
    server = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        c, _, _ = make(clients, port, "reader-9", connect_timeout_ms=300)
        started = time.monotonic()
        with pytest.raises(MqttError) as info:
            await c.connect()
        assert info.value.code == mp.E_TIMEOUT
        assert 0.25 < time.monotonic() - started < 1.0
    finally:
        server.close()


async def test_wrong_password_is_refused(tmp_path: Path, clients: list[MqttClient]) -> None:
    pw = write_password_file(tmp_path / "passwd", {"10": "right"})
    with MosquittoBroker(tmp_path / "m", allow_anonymous=False, password_file=pw) as b:
        c, _, _ = make(clients, b.port, "reader-10", username="10", password="wrong")
        started = time.monotonic()
        with pytest.raises(MqttError) as info:
            await c.connect()
        assert info.value.code == mp.E_REFUSED
        assert info.value.detail in ("not authorized", "bad user name or password")
        assert time.monotonic() - started < 2.0
        assert not c.connected
        ok, _, _ = make(clients, b.port, "reader-10", username="10", password="right")
        await ok.connect()
        assert ok.connected
        await ok.disconnect()


# The client on MicroPython. The WebAssembly VM has no sockets, so asyncio.open_connection is
# replaced by an in-memory broker (one object for both ends, as MicroPython's Stream) that answers
# CONNECT, SUBSCRIBE and PINGREQ, echoes publishes to echo/... and drops the first PUBACK.
VM_CODE = """
import asyncio
from firmware import mqtt_packets as mp
from firmware.mqtt import MqttClient
from firmware.mqtt_packets import MqttError

class FakeBroker:
    def __init__(self):
        self.dec = mp.Decoder(512)
        self.inbox = []
        self.ev = asyncio.Event()
        self.closed = False
        self.dropped = False
        self.publishes = []
        self.acked = []

    async def read(self, n):
        while not self.inbox and not self.closed:
            self.ev.clear()
            await self.ev.wait()
        return self.inbox.pop(0) if self.inbox else b""

    def reply(self, data):
        self.inbox.append(data)
        self.ev.set()

    def write(self, data):
        for t, f, body in self.dec.feed(bytes(data)):
            if t == mp.CONNECT:
                c = mp.parse_connect(body)
                print("connect", c["client_id"], c["clean_session"], c["will_topic"])
                self.reply(mp.connack(False, 0))
            elif t == mp.SUBSCRIBE:
                pid, topics = mp.parse_subscribe(body)
                self.reply(mp.suback(pid, b"\\x01"))
            elif t == mp.PINGREQ:
                self.reply(mp.PINGRESP_PACKET)
            elif t == mp.PUBACK:
                self.acked.append(mp.parse_packet_id(body))
            elif t == mp.PUBLISH:
                topic, payload, qos, pid, dup, retain = mp.parse_publish(f, body)
                self.publishes.append((pid, dup))
                if qos and not self.dropped:
                    self.dropped = True
                    continue
                if qos:
                    self.reply(mp.puback(pid))
                if topic.startswith("echo"):
                    self.reply(mp.publish(topic, payload, 1, 77))

    async def drain(self):
        pass

    def close(self):
        self.closed = True
        self.ev.set()

    async def wait_closed(self):
        pass

brokers = []

async def fake_open(host, port):
    b = FakeBroker()
    brokers.append(b)
    return b, b

asyncio.open_connection = fake_open
got = []

async def main():
    c = MqttClient("reader-1", "gw", 1883, keepalive=1, ack_timeout_ms=150,
                   will_topic="att/v1/s/1/up/status", will_payload=b"off",
                   on_message=lambda t, p, r, d: got.append((t, p)))
    print("session", await c.connect())
    print("granted", await c.subscribe("echo/#", 1))
    await c.publish("echo/x", b"hello", qos=1)
    await asyncio.sleep_ms(50)
    b = brokers[0]
    print("publishes", b.publishes, "retransmits", c.retransmits)
    print("got", got, "acked", b.acked)
    await asyncio.sleep_ms(1100)
    print("pings", c.pings_sent >= 2, c.pongs >= 2, c.connected)
    await c.disconnect()
    print("closed", b.closed, c.connected)
    try:
        await c.publish("echo/x", b"late", qos=1)
    except MqttError as e:
        print("after", e.code == mp.E_CLOSED)

asyncio.run(main())
"""


def test_client_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(VM_CODE, timeout=30).splitlines()
    assert out == [
        "connect reader-1 False att/v1/s/1/up/status",
        "session False",
        "granted 1",
        "publishes [(2, False), (2, True)] retransmits 1",
        "got [('echo/x', b'hello')] acked [77]",
        "pings True True True",
        "closed True False",
        "after True",
    ]


async def test_keepalive_while_only_sending_qos0(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    c, _, _ = make(clients, broker.port, "reader-11", keepalive=1)
    await c.connect()
    for _ in range(18):  # 1.8 s: longer than the 1.5 keepalives the receive side waits
        await c.publish("att/v1/s/11/up/status", b"x", qos=0)
        await asyncio.sleep(0.1)
    assert c.connected and c.error is None
    assert c.pings_sent >= 2 and c.pongs >= 2
    await c.disconnect()


async def test_a_failing_message_callback_closes_the_link(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    c, _, _ = make(clients, broker.port, "reader-12")

    def boom(topic: str, payload: bytes, retain: bool, dup: bool) -> None:
        raise ValueError("application bug")

    c.on_message = boom
    await c.connect()
    await c.subscribe("t/12", 1)
    await c.publish("t/12", b"x", qos=0)
    for _ in range(40):
        if not c.connected:
            break
        await asyncio.sleep(0.05)
    assert c.error is not None and c.error.code == mp.E_PROTOCOL
    assert "application bug" in c.error.detail


def test_backoff_grows_caps_and_is_deterministic() -> None:
    b = Backoff("reader-1", 500, 30000)
    delays = [b.next() for _ in range(10)]
    assert delays == [580, 1020, 1740, 3880, 7920, 15520, 29400, 26400, 28800, 26400]
    bases = [min(500 << i, 30000) for i in range(10)]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.8 <= d <= min(base * 1.2, 30000)
    assert max(delays) <= 30000
    b.reset()
    assert 400 <= b.next() <= 600  # a successful CONNACK starts over
    again = Backoff("reader-1", 500, 30000)
    assert [again.next() for _ in range(10)] == delays
    other = Backoff("reader-2", 500, 30000)
    assert [other.next() for _ in range(10)] != delays  # readers restarted together spread out


def test_backoff_on_micropython(mpvm: MPVM) -> None:
    code = "from firmware.backoff import Backoff\nb = Backoff('reader-1')\n"
    code += "print([b.next() for _ in range(10)])\n"
    out = mpvm.run(code, timeout=30).strip()
    assert out == "[580, 1020, 1740, 3880, 7920, 15520, 29400, 26400, 28800, 26400]"


async def test_broker_restart_reconnects_and_resends_the_unacked_publish(
    tmp_path: Path, clients: list[MqttClient]
) -> None:
    drop_pubacks = True

    def keep(direction: str, ptype: int, flags: int, body: bytes) -> bool:
        return not (drop_pubacks and ptype == mp.PUBACK)

    first = MosquittoBroker(tmp_path / "a").start()
    port = first.port
    proxy = await Proxy(port, keep).start()
    second: MosquittoBroker | None = None
    run_task: asyncio.Task[None] | None = None
    try:
        c, _, _ = make(
            clients,
            proxy.port,
            "reader-13",
            ack_timeout_ms=2000,
            retries=3,
            backoff_first_ms=100,
            backoff_cap_ms=800,
        )
        delays: list[int] = []
        real_next = c.backoff.next

        def recording_next() -> int:
            delays.append(real_next())
            return delays[-1]

        c.backoff.next = recording_next  # type: ignore[method-assign]
        run_task = asyncio.create_task(c.run())
        assert await c.wait_connected(2000)
        pub = asyncio.create_task(c.publish("att/v1/s/13/up/batch", b"records", qos=1))
        await asyncio.sleep(0.2)  # sent; its PUBACK is dropped
        assert not pub.done()
        proxy.refuse = True
        first.stop()  # the broker goes away: the proxy closes the client's connection
        for _ in range(40):
            if not c.connected:
                break
            await asyncio.sleep(0.05)
        assert not c.connected
        second = MosquittoBroker(tmp_path / "b", port=port).start()
        watcher, got, event = make(clients, port, "gateway-13")
        await watcher.connect()
        await watcher.subscribe("att/v1/s/13/up/#", 1)
        await asyncio.sleep(0.8)  # a few refused reconnects
        drop_pubacks = False
        proxy.refuse = False
        await asyncio.wait_for(pub, 4.0)  # acknowledged by the restarted broker
        await wait_for(event)
        assert got == [("att/v1/s/13/up/batch", b"records", False, False)]
        assert c.connected and c.reconnects == 1
        assert len(delays) >= 3 and c.connect_failures == len(delays)
        assert delays[1] > delays[0] and delays[2] > delays[1]
        assert max(delays) <= 800
        ups = [
            mp.parse_publish(flags, body)
            for d, ptype, flags, body in proxy.packets
            if d == "up" and ptype == mp.PUBLISH
        ]
        assert [(u[1], u[4]) for u in ups] == [(b"records", False), (b"records", True)]
        assert ups[0][3] == ups[1][3]  # the original packet id
        downs = [mp.parse_packet_id(b) for d, t, _, b in proxy.packets if t == mp.PUBACK]
        assert downs[-1] == ups[0][3]
        await c.disconnect()
        await asyncio.wait_for(run_task, 2.0)  # disconnect ends run()
    finally:
        if run_task is not None:
            run_task.cancel()
        await proxy.close()
        first.stop()
        if second is not None:
            second.stop()


async def test_inflight_window_is_bounded(
    broker: MosquittoBroker, clients: list[MqttClient]
) -> None:
    proxy = await Proxy(broker.port, lambda d, t, f, b: t != mp.PUBACK).start()
    try:
        c, _, _ = make(clients, proxy.port, "reader-14", ack_timeout_ms=200, retries=0)
        await c.connect()
        first = asyncio.create_task(c.publish("att/v1/s/14/up/batch", b"1", qos=1))
        await asyncio.sleep(0.05)
        with pytest.raises(MqttError) as info:
            await c.publish("att/v1/s/14/up/batch", b"2", qos=1)
        assert info.value.code == E_WINDOW_FULL
        await c.publish("att/v1/s/14/up/status", b"qos0 is not windowed", qos=0)
        with pytest.raises(MqttError):
            await first  # no PUBACK: times out and frees its slot
        two, _, _ = make(
            clients, proxy.port, "reader-15", ack_timeout_ms=200, retries=0, max_inflight=2
        )
        await two.connect()
        a = asyncio.create_task(two.publish("t/15", b"a", qos=1))
        b = asyncio.create_task(two.publish("t/15", b"b", qos=1))
        await asyncio.sleep(0.05)
        with pytest.raises(MqttError) as info:
            await two.publish("t/15", b"c", qos=1)
        assert info.value.code == E_WINDOW_FULL
        for t in (a, b):
            with pytest.raises(MqttError):
                await t
        assert c.connected and two.connected
    finally:
        await proxy.close()


# run() on MicroPython: the first fake broker swallows the PUBACK and then dies, the next connect
# is refused once (backoff), the third broker gets the publish again with DUP and acknowledges it.
VM_RECONNECT = (
    VM_CODE.split("got = []")[0]
    + """
opens = []

async def flaky_open(host, port):
    opens.append(1)
    if len(opens) == 2:
        raise OSError(111)
    r, w = await fake_open(host, port)
    w.dropped = len(brokers) > 1  # only the first broker swallows a PUBACK
    return r, w

asyncio.open_connection = flaky_open

async def main():
    c = MqttClient("reader-1", "gw", 1883, keepalive=0, ack_timeout_ms=400, retries=3,
                   backoff_first_ms=20, backoff_cap_ms=100)
    task = asyncio.create_task(c.run())
    print("up", await c.wait_connected(500))
    pub = asyncio.create_task(c.publish("att/x", b"rec", qos=1))
    await asyncio.sleep_ms(50)
    try:
        await c.publish("att/x", b"more", qos=1)
    except MqttError as e:
        print("window", e.code == E_WINDOW_FULL)
    brokers[0].reply(b"")
    brokers[0].close()
    await pub
    print("first", brokers[0].publishes, "third", brokers[1].publishes)
    print("reconnects", c.reconnects, "failures", c.connect_failures, c.connected)
    await c.disconnect()
    await task
    print("stopped")

asyncio.run(main())
"""
)


def test_reconnect_and_resend_on_micropython(mpvm: MPVM) -> None:
    code = VM_RECONNECT.replace(
        "from firmware.mqtt import MqttClient",
        "from firmware.mqtt import E_WINDOW_FULL, MqttClient",
    )
    out = mpvm.run(code, timeout=30).splitlines()
    assert out == [
        "connect reader-1 False None",
        "up True",
        "window True",
        "connect reader-1 False None",
        "first [(1, False)] third [(1, True)]",
        "reconnects 1 failures 1 True",
        "stopped",
    ]


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "school test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_tls_when_configured(tmp_path: Path, clients: list[MqttClient]) -> None:
    """With ``ssl`` the client talks TLS to the broker, verifying the school's CA; a broker it
    cannot verify is a clean ``MqttError`` within the connect timeout, not a hang."""
    import ssl

    ca, cert, key = _tls_files(tmp_path / "tls")
    lines = [f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
    with MosquittoBroker(tmp_path / "m", extra_lines=lines) as b:
        trusted = ssl.create_default_context(cafile=str(ca))
        c, got, event = make(clients, b.port, "reader-7", ssl=trusted)
        await c.connect()
        assert await c.subscribe("att/v1/s/7/down/#", 1) == 1
        await c.publish("att/v1/s/7/down/ack", b"over tls", qos=1)
        await wait_for(event)
        assert got == [("att/v1/s/7/down/ack", b"over tls", False, False)]
        await c.disconnect()

        plain, _, _ = make(clients, b.port, "reader-8")  # no TLS against a TLS listener
        with pytest.raises(MqttError):
            await plain.connect()
        untrusted, _, _ = make(clients, b.port, "reader-9", ssl=ssl.create_default_context())
        started = time.monotonic()
        with pytest.raises(MqttError) as info:
            await untrusted.connect()
        assert info.value.code == mp.E_NETWORK and "CERTIFICATE_VERIFY_FAILED" in info.value.detail
        assert time.monotonic() - started < 2.5
