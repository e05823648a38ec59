"""A reader's MQTT uploader for the tests: stop-and-wait on the gateway's ack, like the firmware.

It publishes a batch on its ``up/batch`` topic, waits for the ack of exactly that batch on its
``down/ack`` topic (verified with its own key, SPEC.md section 5), and resends the same bytes when
no ack came in time. Every ack it accepts is kept in :attr:`acks`; acks that do not verify are
counted in :attr:`bad_acks`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import aiomqtt

from protocol import construct_codec, topics
from protocol.errors import ProtocolError
from sim.reader import Card, SimulatedReader


def batch_range(payload: bytes) -> tuple[int, int, int]:
    """``(boot, first_seq, last_seq)`` from a batch header."""
    return (int.from_bytes(payload[6:10], "big"), int.from_bytes(payload[10:14], "big"),
            int.from_bytes(payload[14:18], "big"))


def batch_records(payload: bytes) -> list[bytes]:
    """The raw records of a well-formed batch, in order."""
    out, at = [], 19
    for _ in range(payload[18]):
        length = payload[at]
        out.append(payload[at + 1:at + 1 + length])
        at += 1 + length
    return out


class AckingReader:
    def __init__(self, reader_id: int, key: bytes, school: str, host: str, port: int, *,
                 boot: int = 1, ack_timeout_s: float = 2.0) -> None:
        self.sim = SimulatedReader(reader_id, key, school, boot=boot)
        self.reader_id = reader_id
        self.key = key
        self.school = school
        self.ack_timeout_s = ack_timeout_s
        self.acks: list[dict[str, Any]] = []
        self.bad_acks = 0
        self.resends = 0
        self._client = aiomqtt.Client(host, port, identifier=f"reader-{reader_id}",
                                      clean_session=False, keepalive=10)
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckingReader:
        await self._client.__aenter__()
        await self._client.subscribe(topics.reader_filter(self.school, self.reader_id), qos=1)
        self._listener = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._listener
        await self._client.__aexit__(exc_type, exc, tb)

    async def _listen(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            try:
                ack = construct_codec.decode("ack", payload, self.key)
            except ProtocolError:
                self.bad_acks += 1
                continue
            self._incoming.put_nowait(ack)

    def batch_of(self, cards: list[Card]) -> bytes:
        return self.sim.batch([self.sim.tap(card) for card in cards])

    async def publish(self, payload: bytes, leaf: str = "batch", *, topic: str | None = None,
                      retain: bool = False) -> None:
        name = topic or topics.topic(self.school, self.reader_id, "up", leaf)
        await self._client.publish(name, payload, qos=1, retain=retain)

    async def send(self, payload: bytes, *, deadline_s: float = 30.0) -> dict[str, Any]:
        """Publish a batch and resend it until its ack arrives; returns the ack's fields."""
        wanted = (self.reader_id, *batch_range(payload))
        async with asyncio.timeout(deadline_s):
            while True:
                await self.publish(payload)
                ack = await self.next_ack(self.ack_timeout_s, wanted)
                if ack is not None:
                    self.acks.append(ack)
                    return ack
                self.resends += 1

    async def next_ack(self, timeout_s: float,
                       wanted: tuple[int, int, int, int] | None = None) -> dict[str, Any] | None:
        """The next ack (of ``wanted`` = reader, boot, first, last, if given) within the timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (left := end - loop.time()) > 0:
            try:
                ack = await asyncio.wait_for(self._incoming.get(), left)
            except TimeoutError:
                return None
            key = (ack["reader_id"], ack["boot"], ack["first_seq"], ack["last_seq"])
            if wanted is None or key == wanted:
                return ack
        return None
