"""A loopback TCP proxy between a reader and the broker, for the link fault tests and the soak.

It forwards whole MQTT packets (it splits both byte streams at packet boundaries, nothing more) and
lets a test break the path the way networks break:

- ``forward()``: pass everything (the default). After a black hole, connections that were open
  before it carry on with whatever they held (TCP retransmits once the path is back); the ones
  accepted during it are closed (their client gave up long ago).
- ``black_hole()``: stop forwarding both ways, without closing anything: no FIN, no RST, bytes in
  flight are held. New connections are accepted but hear nothing (a CONNECT never gets its
  CONNACK). Only keepalives and timeouts can tell.
- ``drop_next_ack(topic)``: the next PUBLISH from the broker to the reader on ``topic`` (the
  reader's ``down/ack``) is dropped, once. The broker still waits for the reader's PUBACK of it.
- ``cut_before(ptype)``: when the reader next sends a packet of type ``ptype``, drop it and close
  that connection (e.g. the link lost between CONNACK and SUBSCRIBE).
- ``close_all()``: close every connection now, both sides (the broker sees the reader go).
- ``refuse``: while True, new connections are closed at once (the reader's network is down).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
PUBLISH = 3
SUBSCRIBE = 8


def _split(buf: bytearray) -> list[bytes]:
    """Take the complete MQTT packets off the front of ``buf`` (fixed header + remaining length)."""
    out: list[bytes] = []
    while len(buf) >= 2:
        length = shift = 0
        at = 1
        while True:
            if at >= len(buf):
                return out  # the length is not all here yet
            byte = buf[at]
            length |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed MQTT remaining length")
        end = at + length
        if len(buf) < end:
            return out
        out.append(bytes(buf[:end]))
        del buf[:end]
    return out


def publish_topic(packet: bytes) -> str | None:
    """The topic of a PUBLISH packet, None for any other packet."""
    if packet[0] >> 4 != PUBLISH:
        return None
    at = 1
    while packet[at] & 0x80:
        at += 1
    at += 1
    n = (packet[at] << 8) | packet[at + 1]
    return packet[at + 2:at + 2 + n].decode("utf-8", "replace")


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    born_in_black_hole: bool
    broker: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client, self.broker):
            if w is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()


class LinkProxy:
    """``await LinkProxy(broker_port).start()``; point the reader at ``.port``."""

    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.refuse = False
        self.connections = 0  # accepted and forwarded to the broker
        self.refused = 0
        self.dropped: list[bytes] = []  # packets dropped on purpose, in order
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._ack_topic: str | None = None
        self._cut_type: int | None = None
        self._open: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.close_all()
        self._flowing.set()  # wakes the handlers of connections accepted in a black hole
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- modes -------------------------------------------------------------------------------

    @property
    def black_holed(self) -> bool:
        return not self._flowing.is_set()

    def forward(self) -> None:
        for conn in list(self._open):
            if conn.born_in_black_hole:
                self._drop(conn)
        self._flowing.set()

    def black_hole(self) -> None:
        self._flowing.clear()

    def drop_next_ack(self, topic: str) -> None:
        self._ack_topic = topic

    @property
    def ack_drop_pending(self) -> bool:
        return self._ack_topic is not None

    def cut_before(self, ptype: int) -> None:
        self._cut_type = ptype

    def close_all(self) -> None:
        for conn in list(self._open):
            self._drop(conn)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # --- plumbing ----------------------------------------------------------------------------

    def _drop(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.close()
        current = asyncio.current_task()
        for t in conn.pumps:  # not the handler: asyncio's server wants it to end normally
            if t is not current:
                t.cancel()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Connection(cw, self.black_holed)
        try:
            if self.refuse:
                self.refused += 1
                conn.close()
                return
            self._open.add(conn)
            await self._flowing.wait()
            if conn not in self._open:
                return
            try:
                br, bw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                self._drop(conn)
                return
            conn.broker = bw
            if conn not in self._open:  # closed while connecting
                conn.close()
                return
            self.connections += 1
            up = asyncio.create_task(self._pump(conn, cr, bw, up=True))
            down = asyncio.create_task(self._pump(conn, br, cw, up=False))
            conn.pumps += [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._handlers.discard(task)

    async def _pump(self, conn: _Connection, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                    *, up: bool) -> None:
        buf = bytearray()
        try:
            while True:
                await self._flowing.wait()  # black hole: stop reading (a FIN is held too)
                data = await r.read(65536)
                if not data:
                    break
                buf += data
                out = bytearray()
                for packet in _split(buf):
                    if up and self._cut_type is not None and packet[0] >> 4 == self._cut_type:
                        self._cut_type = None
                        self.dropped.append(packet)
                        self._drop(conn)
                        return
                    if (not up and self._ack_topic is not None
                            and publish_topic(packet) == self._ack_topic):
                        self._ack_topic = None
                        self.dropped.append(packet)
                        continue
                    out += packet
                await self._flowing.wait()  # black-holed meanwhile: hold what was read
                if out:
                    w.write(bytes(out))
                    await w.drain()
        except (OSError, ValueError):
            pass
        finally:
            self._drop(conn)
