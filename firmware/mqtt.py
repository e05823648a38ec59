"""The reader's own asyncio MQTT 3.1.1 client (QoS 0 and 1), on MicroPython and CPython.

One TCP connection at a time per ``MqttClient``: ``connect`` (credentials, last will, clean
session off by default), a receive task that dispatches incoming packets, a keepalive task that
sends PINGREQ and declares the link dead when PINGRESP does not come back, ``publish`` at QoS 0 or
1 (QoS 1 waits for PUBACK and retransmits with DUP and the same packet id), ``subscribe`` and
``disconnect``. Every socket operation is bounded by a timeout (``firmware.aio.wait_ms``). Errors
surface as ``MqttError``.

Reconnecting. Without a supervisor, a lost link (``error`` set) stays lost until the caller
calls ``connect`` again. The uploader instead starts ``asyncio.create_task(client.run())``: it
connects, and whenever the link is lost reconnects after a capped exponential backoff with jitter
(``Backoff``: ``backoff_first_ms`` doubling up to ``backoff_cap_ms``, +-20 %, reset by a
successful CONNACK; the jitter comes from a 16-bit xorshift seeded by the client id, so readers
restarted together by a power cut spread out and a test can predict the sequence).
``wait_connected(ms)`` waits for the link; ``disconnect``/``abort`` also end ``run``.

In-flight window. At most ``max_inflight`` QoS 1 publishes (default 1: the uploader is
stop-and-wait) await their PUBACK; one more raises ``MqttError(E_WINDOW_FULL)`` at once. While
``run`` supervises a persistent session (clean session off), a QoS 1 ``publish`` survives a lost
link: it keeps waiting (within its ``ack_timeout_ms * (retries + 1)`` budget), and right after
the next CONNACK -- before any new publish can go out -- every unacknowledged publish is re-sent
with DUP and its original packet id. The window refers to the caller's payload (no copy): it must
stay unchanged until ``publish`` returns, which the uplink's stop-and-wait guarantees.
Unsupervised, or with a clean session, a lost link fails the waiting publishes.
TLS: pass ``ssl`` (an ``SSLContext`` with the school's CA loaded, or ``True``); every socket
operation stays bounded by the same timeouts. Not here: QoS 2.
"""

import asyncio

from firmware import mqtt_packets as mp
from firmware.aio import sleep_ms, wait_ms
from firmware.backoff import Backoff
from firmware.mqtt_packets import MqttError
from firmware.ticks import ticks_add, ticks_diff, ticks_ms
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Buffer = bytes | bytearray | memoryview
    # (topic, payload, retain, dup)
    MessageCallback = Callable[[str, bytes, bool, bool], None]


E_WINDOW_FULL = const(12)  # a QoS 1 publish while ``max_inflight`` others await their PUBACK


class _Waiter:
    """One outstanding acknowledgement (PUBACK or SUBACK) by packet id."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.result: Any = None


class MqttClient:
    def __init__(
        self,
        client_id: str,
        host: str,
        port: int = 1883,
        *,
        username: "str | None" = None,
        password: "str | bytes | None" = None,
        keepalive: int = 30,
        clean_session: bool = False,
        will_topic: "str | None" = None,
        will_payload: bytes = b"",
        will_qos: int = 1,
        will_retain: bool = True,
        on_message: "MessageCallback | None" = None,
        on_connect: "Callable[[], None] | None" = None,
        connect_timeout_ms: int = 5000,
        io_timeout_ms: int = 5000,
        ack_timeout_ms: int = 5000,
        retries: int = 3,
        max_packet: int = 1024,
        max_publish: int = 0,  # largest outgoing PUBLISH (default: max_packet)
        max_inflight: int = 1,
        backoff_first_ms: int = 500,
        backoff_cap_ms: int = 30000,
        ssl: "Any" = None,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.will_topic = will_topic
        self.will_payload = will_payload
        self.will_qos = will_qos
        self.will_retain = will_retain
        self.on_message = on_message
        self.on_connect = on_connect  # called after each CONNACK (and the resends)
        self.connect_timeout_ms = connect_timeout_ms
        self.io_timeout_ms = io_timeout_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.retries = retries
        self.max_inflight = max_inflight
        self.ssl = ssl  # an ssl.SSLContext (or True) for TLS; None: plain TCP
        self.backoff = Backoff(client_id, backoff_first_ms, backoff_cap_ms)
        # packet id -> (topic, payload, retain) of QoS 1 publishes awaiting PUBACK; the payload
        # is the caller's (no copy): it must stay unchanged until ``publish`` returns
        self._inflight: dict[int, tuple[bytes, Buffer, bool]] = {}
        self._running = False
        self._down = asyncio.Event()  # set while the link is lost (wakes ``run``)
        self._up = asyncio.Event()  # set while connected
        self._stop = asyncio.Event()  # cuts ``run``'s backoff sleep short
        self._decoder = mp.Decoder(max_packet)
        self._txbuf = bytearray(max_publish or max_packet)
        self._ackbuf = bytearray(4)
        self._reader: Any = None
        self._writer: Any = None
        self._rx: bytes = b""
        self._tasks: list[Any] = []
        self._early: list[tuple[int, int, bytes]] = []
        self._waiters: dict[int, _Waiter] = {}
        self._next_pid = 0
        self._last_tx = 0
        self._last_rx = 0
        self._ping_pending = False
        self._ping_at = 0
        self.connected = False
        self.session_present = False
        self.error: MqttError | None = None
        # counters, for status reports and tests
        self.pings_sent = 0
        self.pongs = 0
        self.retransmits = 0
        self.connects = 0  # successful connects (each one a new connection)
        self.reconnects = 0  # successful connects by ``run`` after the first
        self.connect_failures = 0

    # -- socket operations, each with a timeout ----------------------------------------------

    async def _open(self) -> None:
        if self.ssl is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        else:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl)

    async def _read_some(self) -> None:
        self._rx = await self._reader.read(512)

    async def _send(self, data: "bytes | bytearray | memoryview") -> None:
        writer = self._writer
        if writer is None or self.error is not None:
            raise self.error or MqttError(mp.E_CLOSED, "not connected")
        try:
            writer.write(data)
            ok = await wait_ms(writer.drain(), self.io_timeout_ms)
        except OSError as exc:
            raise self._lost(MqttError(mp.E_CLOSED, "send: " + repr(exc))) from None
        if not ok:
            raise self._lost(MqttError(mp.E_TIMEOUT, "send"))
        self._last_tx = ticks_ms()

    async def _recv(self, timeout_ms: int) -> bytes:
        try:
            ok = await wait_ms(self._read_some(), timeout_ms)
        except OSError as exc:
            raise MqttError(mp.E_CLOSED, "receive: " + repr(exc)) from None
        if not ok:
            raise MqttError(mp.E_TIMEOUT, "receive")
        if not self._rx:
            raise MqttError(mp.E_CLOSED, "closed by the broker")
        self._last_rx = ticks_ms()
        return self._rx

    # -- connection ------------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect and wait for CONNACK; returns ``session_present``. Raises ``MqttError``."""
        if self.connected:
            raise MqttError(mp.E_PROTOCOL, "already connected")
        self.error = None
        self._decoder.reset()
        try:
            ok = await wait_ms(self._open(), self.connect_timeout_ms)
        except OSError as exc:
            raise MqttError(mp.E_NETWORK, f"{self.host}:{self.port}: {exc!r}") from None
        if not ok:
            raise MqttError(mp.E_TIMEOUT, f"TCP connect to {self.host}:{self.port}")
        try:
            await self._send(mp.connect(
                self.client_id, self.clean_session, self.keepalive, self.username, self.password,
                self.will_topic, self.will_payload, self.will_qos, self.will_retain,
            ))
            await self._await_connack()
            if not self.clean_session:
                # unacknowledged QoS 1 publishes first, with DUP and their original packet ids;
                # ``connected`` is still False, so no new publish can get in between
                for pid, (t, payload, retain) in list(self._inflight.items()):
                    self.retransmits += 1
                    n = mp.publish_into(self._txbuf, t, payload, 1, pid, True, retain)
                    await self._send(memoryview(self._txbuf)[:n])
        except MqttError as exc:
            await self._close()
            self.error = exc
            raise
        self.connected = True
        self.connects += 1
        self._down.clear()
        self._up.set()
        self._ping_pending = False
        self._tasks = [asyncio.create_task(self._rx_loop())]
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop()))
        if self.on_connect is not None:
            self.on_connect()
        return self.session_present

    async def _await_connack(self) -> None:
        deadline = ticks_add(ticks_ms(), self.connect_timeout_ms)
        while True:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                raise MqttError(mp.E_TIMEOUT, "CONNACK")
            data = await self._recv(left)
            # the whole read is decoded: a resumed session's messages may follow CONNACK in it
            packets = list(self._decoder.feed(data))
            if not packets:
                continue
            ptype, _flags, body = packets[0]
            if ptype != mp.CONNACK:
                raise MqttError(mp.E_PROTOCOL, f"packet type {ptype} before CONNACK")
            self.session_present, rc = mp.parse_connack(body)
            if rc:
                raise MqttError(mp.E_REFUSED, mp.CONNACK_NAMES[rc])
            self._early = packets[1:]
            return

    async def run(self) -> None:
        """Stay connected until ``disconnect``/``abort``: reconnect with ``backoff`` after a
        failed connect or a lost link. Run it as a task; it never raises ``MqttError``."""
        if self._running:
            raise MqttError(mp.E_PROTOCOL, "already running")
        self._running = True
        self._stop.clear()
        first = True
        try:
            while self._running:
                if not self.connected:
                    await self._close()
                    try:
                        await self.connect()
                    except MqttError:
                        self.connect_failures += 1
                        await wait_ms(self._stop.wait(), self.backoff.next())
                        continue
                    self.backoff.reset()
                    if not first:
                        self.reconnects += 1
                    first = False
                await self._down.wait()
        finally:
            self._running = False

    async def wait_connected(self, timeout_ms: int) -> bool:
        """True once connected (at once if already), False after ``timeout_ms``."""
        return self.connected or await wait_ms(self._up.wait(), timeout_ms)

    def _stop_running(self) -> None:
        self._running = False
        self._stop.set()
        self._down.set()

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then drops the last will), close, and end ``run``."""
        self._stop_running()
        if self.connected and self.error is None:
            try:
                await self._send(mp.DISCONNECT_PACKET)
            except MqttError:  # lost meanwhile: closing is all that is left
                self.connected = False
        self._lost(MqttError(mp.E_CLOSED, "disconnected"))
        await self._close()

    async def abort(self) -> None:
        """Close the socket without DISCONNECT (the broker publishes the last will); end ``run``."""
        self._stop_running()
        self._lost(MqttError(mp.E_CLOSED, "aborted"))
        await self._close()

    def _lost(self, exc: MqttError) -> MqttError:
        """Record the first error, wake every waiter, stop the tasks (not the caller's)."""
        if self.error is None:
            self.error = exc
        self.connected = False
        self._up.clear()
        self._down.set()
        # a supervised persistent session keeps its in-flight publishes waiting for the resend
        keep = self._running and not self.clean_session
        for pid, w in self._waiters.items():
            if not (keep and pid in self._inflight):
                w.event.set()
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        self._tasks = []
        writer = self._writer
        if writer is not None:
            try:
                writer.close()
                self._reader = None
            except OSError:
                pass
        return self.error

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
                await wait_ms(writer.wait_closed(), self.io_timeout_ms)
            except OSError:
                pass

    # -- tasks -----------------------------------------------------------------------------------

    async def _rx_loop(self) -> None:
        # the broker disconnects a client silent for 1.5 keepalives; we give it the same span
        timeout = self.keepalive * 1500 if self.keepalive else 3600000
        try:
            early, self._early = self._early, []
            for ptype, flags, body in early:
                await self._dispatch(ptype, flags, body)
            while True:
                data = await self._recv(timeout)
                for ptype, flags, body in self._decoder.feed(data):
                    await self._dispatch(ptype, flags, body)
        except MqttError as exc:
            self._lost(exc)
        except Exception as exc:  # e.g. the message callback: the link is unusable either way
            self._lost(MqttError(mp.E_PROTOCOL, "receive task: " + repr(exc)))

    async def _dispatch(self, ptype: int, flags: int, body: bytes) -> None:
        if ptype == mp.PUBLISH:
            topic, payload, qos, pid, dup, retain = mp.parse_publish(flags, body)
            if qos:
                # acknowledged before the callback: QoS 1 is at-least-once, duplicates are the
                # application's business (records carry their own sequence numbers)
                await self._send(memoryview(self._ackbuf)[:mp.puback_into(self._ackbuf, pid)])
            if self.on_message is not None:
                self.on_message(topic, payload, retain, dup)
        elif ptype == mp.PUBACK or ptype == mp.SUBACK:
            if ptype == mp.PUBACK:
                pid = mp.parse_packet_id(body)
                result: Any = pid
            else:
                pid, result = mp.parse_suback(body)
            w = self._waiters.get(pid)
            if w is not None:  # an ack for nothing outstanding (a late duplicate) is ignored
                w.result = result
                w.event.set()
        elif ptype == mp.PINGRESP:
            self._ping_pending = False
            self.pongs += 1
        else:
            raise MqttError(mp.E_PROTOCOL, f"unexpected packet type {ptype}")

    async def _ping_loop(self) -> None:
        # PINGREQ once either direction has been quiet for half the keepalive (a reader that
        # only sends QoS 0 still hears from the broker); no PINGRESP within another half: dead
        half = self.keepalive * 500
        try:
            while True:
                now = ticks_ms()
                if self._ping_pending:
                    left = half - ticks_diff(now, self._ping_at)
                    if left <= 0:
                        raise MqttError(mp.E_TIMEOUT, "no PINGRESP")
                else:
                    idle = max(ticks_diff(now, self._last_tx), ticks_diff(now, self._last_rx))
                    left = half - idle
                    if left <= 0:
                        self._ping_pending = True
                        self._ping_at = now
                        self.pings_sent += 1
                        await self._send(mp.PINGREQ_PACKET)
                        continue
                await sleep_ms(left)
        except MqttError as exc:
            self._lost(exc)

    # -- application operations ------------------------------------------------------------------

    def _new_pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._waiters:
                return self._next_pid
        raise MqttError(mp.E_PROTOCOL, "no free packet id")

    async def _await_ack(self, pid: int, w: _Waiter) -> bool:
        ok = await wait_ms(w.event.wait(), self.ack_timeout_ms)
        if self.error is not None:
            raise self.error
        return ok

    async def publish(self, topic: "str | bytes", payload: "bytes | bytearray | memoryview",
                      qos: int = 0, retain: bool = False) -> None:
        """Publish; at QoS 1 return once PUBACK arrived (``E_TIMEOUT`` after the retries)."""
        if self.error is not None or not self.connected:
            raise self.error or MqttError(mp.E_CLOSED, "not connected")
        t = topic.encode() if isinstance(topic, str) else topic
        if not qos:
            n = mp.publish_into(self._txbuf, t, payload, 0, 0, False, retain)
            await self._send(memoryview(self._txbuf)[:n])
            return
        if len(self._inflight) >= self.max_inflight:
            raise MqttError(E_WINDOW_FULL, f"{self.max_inflight} publish(es) awaiting PUBACK")
        pid = self._new_pid()
        w = _Waiter()
        self._waiters[pid] = w
        self._inflight[pid] = (t, payload, retain)
        try:
            for attempt in range(self.retries + 1):
                # while the link is down the resend after the reconnect stands in for this one
                if self.connected:
                    if attempt:
                        self.retransmits += 1
                    # encoded and written without an await in between: the shared buffer is safe
                    n = mp.publish_into(self._txbuf, t, payload, 1, pid, attempt > 0, retain)
                    try:
                        await self._send(memoryview(self._txbuf)[:n])
                    except MqttError:
                        if not (self._running and not self.clean_session):
                            raise
                await wait_ms(w.event.wait(), self.ack_timeout_ms)
                if w.result is not None:
                    return
                if w.event.is_set():  # set without a result: the link was lost
                    raise self.error or MqttError(mp.E_CLOSED, "link lost")
            raise MqttError(mp.E_TIMEOUT, f"no PUBACK for packet {pid}")
        finally:
            del self._waiters[pid]
            del self._inflight[pid]

    async def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and return the granted QoS (``E_REFUSED`` on a SUBACK failure)."""
        if self.error is not None or not self.connected:
            raise self.error or MqttError(mp.E_CLOSED, "not connected")
        pid = self._new_pid()
        w = _Waiter()
        self._waiters[pid] = w
        try:
            await self._send(mp.subscribe(pid, [(topic, qos)]))
            if not await self._await_ack(pid, w):
                raise MqttError(mp.E_TIMEOUT, f"no SUBACK for {topic}")
        finally:
            del self._waiters[pid]
        code = w.result[0]
        if code == mp.SUBACK_FAILURE:
            raise MqttError(mp.E_REFUSED, f"subscription to {topic}")
        return int(code)
