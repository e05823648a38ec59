"""The gateway service: one MQTT session that hands every reader message to verification.

This is the skeleton of protocol v1 ingest. It verifies and reports; it does not acknowledge yet,
because an ack promises a durable commit (invariant 3) and the durable store is not here yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

import aiomqtt

from gateway.config import GatewayConfig
from gateway.retry import Backoff
from gateway.verify import BatchRejected, ScanRecord, VerifiedBatch, verify_batch
from protocol import construct_codec, topics
from protocol.errors import ProtocolError

log = logging.getLogger("gateway.ingest")


class GatewayService:
    def __init__(self, config: GatewayConfig, keys: Mapping[int, bytes],
                 on_batch: Callable[[VerifiedBatch], None] | None = None,
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self.keys = keys
        self.on_batch = on_batch
        self.counters: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self._backoff = backoff or Backoff()

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify one message from the broker; never raises for bad input, counts it instead."""
        try:
            school, reader_id, direction, leaf = topics.parse(topic)
            if school != self.config.school or direction != "up":
                raise ProtocolError("bad_topic", f"not ours to ingest: {topic}")
        except ProtocolError as exc:
            self._reject(topic, exc.code, exc.detail)
            return
        if leaf == "batch":
            try:
                batch = verify_batch(reader_id, payload, self.keys)
            except BatchRejected as exc:
                self._reject(topic, exc.reason, exc.detail)
                return
            self.counters["records_verified"] += len(batch.records)
            self.counters["records_rejected"] += len(batch.rejected)
            for record in batch.records:
                log.info("record", extra=_record_fields(record))
            for bad in batch.rejected:
                log.warning("record rejected", extra={"reader_id": reader_id, "seq": bad.seq,
                                                      "verdict": bad.verdict, "reason": bad.reason})
            if self.on_batch:
                self.on_batch(batch)
        elif leaf == "status":
            self._status(topic, reader_id, payload)
        else:
            self.counters["results"] += 1

    def _status(self, topic: str, reader_id: int, payload: bytes) -> None:
        key = self.keys.get(reader_id)
        if key is None:
            self._reject(topic, "unknown_reader", f"no key for reader {reader_id}")
            return
        try:
            status = construct_codec.decode("heartbeat", payload, key)
        except ProtocolError as exc:
            self._reject(topic, exc.code, exc.detail)
            return
        self.counters["heartbeats"] += 1
        log.info("heartbeat", extra={"reader_id": reader_id, "state": status["state"],
                                     "queue_depth": status["queue_depth"]})

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        log.warning("message rejected", extra={"topic": topic, "reason": reason, "detail": detail})

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set, reconnecting with backoff whenever the broker goes away."""
        sessions = asyncio.create_task(self._sessions())
        await stop.wait()
        sessions.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sessions

    async def _sessions(self) -> None:
        mqtt = self.config.mqtt
        while True:
            try:
                async with aiomqtt.Client(
                    mqtt.host, mqtt.port, username=mqtt.username, password=mqtt.password,
                    identifier=self.config.client_id, clean_session=False,
                    keepalive=mqtt.keepalive_s,
                ) as client:
                    await client.subscribe(topics.gateway_filter(self.config.school), qos=1)
                    self._backoff.reset()
                    self.connected.set()
                    log.info("connected", extra={"host": mqtt.host, "port": mqtt.port})
                    async for message in client.messages:
                        self.handle(str(message.topic), _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = self._backoff.next_delay()
                log.warning("broker unreachable", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode()


def _record_fields(record: ScanRecord) -> dict[str, object]:
    return {"reader_id": record.reader_id, "boot": record.boot, "seq": record.seq,
            "tech": record.tech, "uid": record.uid.hex(), "clock_synced": record.clock_synced,
            "time_s": record.time_s, "time_ms": record.time_ms, "ticks_ms": record.ticks_ms}
