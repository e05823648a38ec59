"""Real Mosquitto, the real gateway service, records signed by the project's protocol code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.config import GatewayConfig, MqttConfig
from gateway.retry import Backoff
from gateway.service import GatewayService
from gateway.verify import VerifiedBatch
from sim.broker import MosquittoBroker
from sim.reader import SimulatedReader

SCHOOL = "e2e-school"
KEYS = {1: bytes(range(32)), 2: bytes(range(2, 34))}
CARD = (2, bytes.fromhex("04a1b2c3"))


def _service(port: int, batches: list[VerifiedBatch]) -> GatewayService:
    config = GatewayConfig(SCHOOL, Path("unused"), MqttConfig(port=port, keepalive_s=5))
    return GatewayService(config, KEYS, on_batch=batches.append,
                          backoff=Backoff(initial_s=0.05, cap_s=0.2))


@contextlib.asynccontextmanager
async def _running(service: GatewayService) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.connected.wait(), 10)
        yield
    finally:
        stop.set()
        await task


async def _until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_records_are_verified_end_to_end(mosquitto_broker: MosquittoBroker) -> None:
    batches: list[VerifiedBatch] = []
    service = _service(mosquitto_broker.port, batches)
    readers = [SimulatedReader(rid, key, SCHOOL) for rid, key in KEYS.items()]
    forger = SimulatedReader(1, bytes(32), SCHOOL, boot=7)
    async with _running(service), aiomqtt.Client("127.0.0.1", mosquitto_broker.port) as client:
        for _ in range(5):
            for reader in readers:
                await client.publish(reader.batch_topic, reader.batch([reader.tap(CARD)]), qos=1)
        await client.publish(forger.batch_topic, forger.batch([forger.tap(CARD)]), qos=1)
        await client.publish(f"att/v1/{SCHOOL}/3/up/batch", b"\x01\x02", qos=1)  # unknown
        await client.publish(f"att/v1/{SCHOOL}/1/up/batch", b"\x07garbage", qos=1)
        await client.publish(f"att/v1/{SCHOOL}/01/up/batch", b"", qos=1)  # outside the tree
        await _until(lambda: sum(service.counters.values()) >= 14)
    got = sorted((r.reader_id, r.seq) for b in batches for r in b.records)
    assert got == sorted((rid, seq) for rid in KEYS for seq in range(1, 6))
    assert service.counters["rejected_bad_mac"] == 1
    assert service.counters["rejected_unknown_reader"] == 1
    assert service.counters["rejected_unsupported_version"] == 1
    assert service.counters["rejected_bad_topic"] == 1


@pytest.mark.slow
async def test_gateway_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker").start()
    batches: list[VerifiedBatch] = []
    service = _service(broker.port, batches)
    reader = SimulatedReader(1, KEYS[1], SCHOOL)
    try:
        async with _running(service):
            broker.stop()
            await _until(lambda: not service.connected.is_set())
            broker = MosquittoBroker(tmp_path / "broker", port=broker.port).start()
            await asyncio.wait_for(service.connected.wait(), 10)
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish(reader.batch_topic, reader.batch([reader.tap(CARD)]), qos=1)
            await _until(lambda: len(batches) == 1)
    finally:
        broker.stop()
    assert batches[0].records[0].seq == 1
