"""A protocol-level reader stand-in: virtual taps signed with the runtime-neutral protocol code.

It publishes each tap as a one-record batch on its own topic and keeps no flash queue. The
simulator's readers run the real firmware (``sim/firmware_reader.py``); this lighter stand-in
remains for the gateway's load benchmark (thousands of publishes per second from one process)
and for forging traffic in tests and the demo (a device with a password but the wrong key).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

import aiomqtt

from protocol import codec, topics
from protocol.codec import BatchWriter
from protocol.hmac256 import HmacSha256

Card = tuple[int, bytes]  # (technology code, canonical UID)


class SimulatedReader:
    def __init__(self, reader_id: int, key: bytes, school: str, boot: int = 1,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.reader_id = reader_id
        self.school = school
        self.boot = boot
        self.seq = 0
        self._signer = HmacSha256(key)
        self._clock = clock
        self._monotonic = monotonic
        self._booted = monotonic()
        self._record = bytearray(codec.RECORD_MAX_LEN)
        self._batch = BatchWriter()

    def tap(self, card: Card) -> bytes:
        """One signed scan record for ``card``, with a synced clock."""
        self.seq += 1
        now = self._clock()
        n = codec.record_into(
            self._record, self._signer, self.reader_id, self.boot, self.seq,
            codec.FLAG_CLOCK_SYNCED, card[0], card[1], int(now), int(now * 1000) % 1000,
            int((self._monotonic() - self._booted) * 1000))
        return bytes(self._record[:n])

    def batch(self, records: Sequence[bytes]) -> bytes:
        self._batch.reset()
        for record in records:
            if not self._batch.add(record):
                raise ValueError("records do not fit one batch")
        return bytes(self._batch.finish(self._signer, self.reader_id, self.boot))

    @property
    def batch_topic(self) -> str:
        return topics.topic(self.school, self.reader_id, "up", "batch")

    async def run(self, host: str, port: int, cards: Sequence[Card], taps_per_s: float,
                  stop: asyncio.Event, rng: random.Random | None = None,
                  password: str | None = None) -> int:
        """Tap random ``cards`` until ``stop``; return how many taps were published.

        With ``password`` it logs in as SPEC.md section 8 says: username = its reader id.
        """
        rng = rng or random.Random(self.reader_id)
        username = str(self.reader_id) if password is not None else None
        async with aiomqtt.Client(host, port, identifier=f"reader-{self.reader_id}",
                                  clean_session=False, username=username,
                                  password=password) as client:
            published = 0
            while not stop.is_set():
                await client.publish(self.batch_topic, self.batch([self.tap(rng.choice(cards))]),
                                     qos=1)
                published += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.expovariate(taps_per_s))
            return published
