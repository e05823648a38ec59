"""Real Mosquitto, the real gateway (registry, ingest, SQLite), readers that wait for acks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import urllib.request
import zoneinfo
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway import db
from gateway.config import GatewayConfig, MqttConfig
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics, MetricsServer
from gateway.registry import Registry
from gateway.retry import Backoff
from gateway.service import GatewayService
from protocol import construct_codec, topics
from sim.broker import MosquittoBroker, free_port
from tests.e2e.mqtt_reader import AckingReader

SCHOOL = "e2e-school"
CARD = (2, bytes.fromhex("04a1b2c3"))
OTHER_CARD = (2, bytes.fromhex("04deadbe"))


@dataclass
class Env:
    config: GatewayConfig
    keys: dict[int, bytes]
    db_path: Path

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()


def make_env(tmp_path: Path, port: int, readers: range = range(1, 4)) -> Env:
    db_path = tmp_path / "gateway.db"
    config = GatewayConfig(SCHOOL, db_path, tmp_path / "master.key",
                           zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"),
                           mqtt=MqttConfig(port=port, keepalive_s=5), metrics_listen="")
    conn = db.connect(db_path)
    registry = Registry.open(conn, config.master_key_file)
    keys = {rid: registry.register(rid, f"reader {rid}", "main").key for rid in readers}
    conn.close()
    return Env(config, keys, db_path)


@pytest.fixture
def env(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Env]:
    yield make_env(tmp_path, mosquitto_broker.port)


@dataclass
class Running:
    service: GatewayService
    ingest: Ingest
    registry: Registry


@contextlib.asynccontextmanager
async def gateway(env: Env, metrics_port: int | None = None,
                  max_pending: int = 256) -> AsyncIterator[Running]:
    conn = db.connect(env.db_path)
    registry = Registry.open(conn, env.config.master_key_file)
    metrics = GatewayMetrics()
    server = MetricsServer(metrics, f"127.0.0.1:{metrics_port}") if metrics_port else None
    ingest = Ingest(conn, registry.key_ring(), config=env.config.ingest, metrics=metrics)
    ingest.start()
    service = GatewayService(env.config, ingest, backoff=Backoff(initial_s=0.05, cap_s=0.2),
                             max_pending_per_reader=max_pending)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.connected.wait(), 10)
        yield Running(service, ingest, registry)
    finally:
        stop.set()
        await task
        await ingest.close()
        if server:
            server.close()
        conn.close()


def reader(env: Env, reader_id: int, **kwargs: Any) -> AckingReader:
    return AckingReader(reader_id, env.keys[reader_id], SCHOOL, "127.0.0.1",
                        env.config.mqtt.port, **kwargs)


async def test_taps_are_stored_and_acknowledged_after_commit(env: Env) -> None:
    async with gateway(env) as gw, reader(env, 1) as r1, reader(env, 2) as r2:
        for i in range(5):
            for r in (r1, r2):
                ack = await r.send(r.batch_of([CARD] * (i + 1)))
                first = i * (i + 1) // 2 + 1
                assert (ack["first_seq"], ack["last_seq"], ack["verdicts"]) == (
                    first, first + i, [])
        assert gw.ingest.metrics.records_stored._value.get() == 30
    assert env.query("SELECT reader_id, COUNT(*), MIN(seq), MAX(seq) FROM scans "
                     "GROUP BY reader_id") == [(1, 15, 1, 15), (2, 15, 1, 15)]
    assert env.query("SELECT DISTINCT time_source, card FROM scans") == [
        ("reader", "iso14443a:04A1B2C3")]
    assert r1.resends == r2.resends == 0 and r1.bad_acks == r2.bad_acks == 0


async def test_duplicates_are_acked_again_but_stored_once(env: Env) -> None:
    async with gateway(env), reader(env, 1) as r:
        payload = r.batch_of([CARD, CARD])
        acks = [await r.send(payload) for _ in range(3)]
    assert acks[0] == acks[1] == acks[2]
    assert env.query("SELECT COUNT(*) FROM scans") == [(2,)]
    assert env.query("SELECT COUNT(*) FROM quarantine") == [(0,)]


async def test_bad_input_gets_its_reason_and_no_ack(env: Env) -> None:
    async with gateway(env) as gw, reader(env, 1) as r1, reader(env, 2) as r2:
        first = r1.batch_of([CARD])
        await r1.send(first)
        forger = AckingReader(1, bytes(32), SCHOOL, "127.0.0.1", env.config.mqtt.port)
        forged = forger.batch_of([CARD])
        wrong_key = AckingReader(1, env.keys[2], SCHOOL, "127.0.0.1", env.config.mqtt.port,
                                 boot=5)
        unknown = AckingReader(9, bytes(range(32)), SCHOOL, "127.0.0.1", env.config.mqtt.port)
        # The replay: the identity of the first record, another card, signed with the real key.
        replayer = AckingReader(1, env.keys[1], SCHOOL, "127.0.0.1", env.config.mqtt.port)
        replay = replayer.batch_of([OTHER_CARD])
        bad = [
            (forged, None, "bad_mac"),
            (wrong_key.batch_of([CARD]), None, "bad_mac"),
            (first[:30], None, "truncated"),
            (b"\x01\x02" + bytes(5000), None, "too_large"),
            (r2.batch_of([CARD]), None, "identity_mismatch"),  # reader 2's batch, reader 1's topic
            (unknown.batch_of([CARD]), f"att/v1/{SCHOOL}/9/up/batch", "unknown_reader"),
            (first, f"att/v1/{SCHOOL}/01/up/batch", "bad_topic"),
            (b"junk", f"att/v1/{SCHOOL}/1/up/nonsense", "bad_topic"),
        ]
        for payload, topic, _ in bad:
            await r1.publish(payload, topic=topic)
        # A good batch after them: the ingest keeps arrival order, so by its ack every bad
        # message above was handled, and none of them got an ack.
        ack = await r1.send(r1.batch_of([CARD]))
        assert ack["first_seq"] == 2
        assert await r1.next_ack(0.2) is None
        # The replay of an old identity with other bytes is acknowledged with its verdict.
        conflict = await r1.send(replay)
        assert conflict["verdicts"] == [{"seq": 1, "verdict": "identity_conflict"}]
        # A revoked reader: its batches verify only with a revoked key, and get no ack.
        gw.registry.revoke(2)
        gw.ingest.keys = gw.registry.key_ring()
        await r2.publish(r2.batch_of([CARD]))
        await r1.send(r1.batch_of([CARD]))
        assert await r2.next_ack(0.2) is None
    got = env.query("SELECT reason, reader_id, transport FROM quarantine ORDER BY quarantine_id")
    want = [(reason, 9 if reason == "unknown_reader" else (None if reason == "bad_topic" else 1))
            for _, _, reason in bad] + [("identity_conflict", 1), ("revoked_key", 2)]
    assert [g[:2] for g in got] == want
    assert got[0][2] == f"mqtt att/v1/{SCHOOL}/1/up/batch"
    assert env.query("SELECT reader_id, seq, card FROM scans ORDER BY scan_id") == [
        (1, 1, "iso14443a:04A1B2C3"), (1, 2, "iso14443a:04A1B2C3"), (1, 3, "iso14443a:04A1B2C3")]


async def test_many_concurrent_readers_share_group_commits(tmp_path: Path,
                                                           mosquitto_broker: MosquittoBroker,
                                                           ) -> None:
    env = make_env(tmp_path, mosquitto_broker.port, range(1, 31))
    async with gateway(env) as gw:
        readers = [reader(env, rid) for rid in env.keys]
        async with contextlib.AsyncExitStack() as stack:
            for r in readers:
                await stack.enter_async_context(r)

            async def upload(r: AckingReader) -> None:
                for _ in range(10):
                    await r.send(r.batch_of([CARD, CARD]))

            await asyncio.gather(*(upload(r) for r in readers))
        messages = gw.ingest.metrics.group_messages
    assert env.query("SELECT COUNT(*), COUNT(DISTINCT reader_id || '/' || seq) FROM scans") == [
        (600, 600)]
    assert all(len(r.acks) == 10 for r in readers)
    assert messages._sum.get() == 300  # every batch went through a group commit


async def test_heartbeats_results_and_metrics(env: Env) -> None:
    port = free_port()
    async with gateway(env, metrics_port=port) as gw, reader(env, 1) as r:
        status = construct_codec.encode("heartbeat", {
            "reader_id": 1, "boot": 1, "state": "online", "faults": ["queue_full"],
            "fw_version": "1.0.0", "link": "wifi", "rssi_dbm": -55, "clock_synced": True,
            "time_s": 1_790_000_000, "uptime_s": 60, "free_heap": 50_000, "queue_depth": 7,
            "oldest_unsent_age_s": 3, "dropped": 2, "last_ack_boot": 0, "last_ack_seq": 0},
            env.keys[1])
        await r.publish(status, "status", retain=True)
        result = construct_codec.encode("result", {"reader_id": 1, "cmd_seq": 1,
                                                   "status": "ok"}, env.keys[1])
        await r.publish(result, "result")
        await r.send(r.batch_of([CARD]))
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
        assert gw.ingest.metrics.results._value.get() == 1
    assert env.query("SELECT state, faults, queue_depth, dropped FROM reader_status") == [
        ("online", "queue_full", 7, 2)]
    assert "attendance_records_stored_total 1.0" in text
    assert "attendance_acks_sent_total 1.0" in text
    assert 'attendance_reader_dropped_records{reader="1"} 2.0' in text
    assert "attendance_readers_online 1.0" in text
    assert 'attendance_mqtt_messages_total{leaf="status"} 1.0' in text


async def test_a_graceful_stop_loses_nothing(env: Env) -> None:
    """Stop the gateway while readers are uploading; start it again; every batch lands once."""
    sent: dict[int, list[bytes]] = {rid: [] for rid in env.keys}
    async with contextlib.AsyncExitStack() as stack:
        readers = [await stack.enter_async_context(reader(env, rid, ack_timeout_s=0.5))
                   for rid in env.keys]

        async def upload(r: AckingReader) -> None:
            for _ in range(15):
                payload = r.batch_of([CARD])
                sent[r.reader_id].append(payload)
                await r.send(payload)

        uploads = asyncio.gather(*(upload(r) for r in readers))
        for _ in range(2):
            async with gateway(env):
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.3)  # down: readers keep publishing into the broker
        async with gateway(env):
            await asyncio.wait_for(uploads, 30)
    assert env.query("SELECT reader_id, COUNT(*) FROM scans GROUP BY reader_id") == [
        (rid, 15) for rid in env.keys]
    assert env.query("SELECT COUNT(*) FROM quarantine") == [(0,)]


@pytest.mark.slow
async def test_gateway_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker").start()
    env = make_env(tmp_path, broker.port)
    try:
        async with gateway(env) as gw:
            broker.stop()
            async with asyncio.timeout(10):
                while gw.service.connected.is_set():
                    await asyncio.sleep(0.01)
            broker = MosquittoBroker(tmp_path / "broker", port=broker.port).start()
            await asyncio.wait_for(gw.service.connected.wait(), 10)
            async with reader(env, 1) as r:
                ack = await r.send(r.batch_of([CARD]))
        assert ack["last_seq"] == 1
    finally:
        broker.stop()
    assert gw.ingest.metrics.mqtt_connects._value.get() == 2


async def test_the_topic_tree_is_what_the_gateway_subscribes(env: Env) -> None:
    assert topics.gateway_filter(SCHOOL) == f"att/v1/{SCHOOL}/+/up/#"
    async with gateway(env), aiomqtt.Client("127.0.0.1", env.config.mqtt.port) as client:
        await client.publish("att/v1/other-school/1/up/batch", b"x", qos=1)
        async with reader(env, 1) as r:
            await r.send(r.batch_of([CARD]))
    assert env.query("SELECT COUNT(*) FROM quarantine") == [(0,)]  # not ours: never received


async def test_a_flooding_reader_is_cut_short_and_counted(env: Env) -> None:
    async with gateway(env, max_pending=3) as gw, reader(env, 1) as r:
        blocker = db.connect(env.db_path, migrate=False)
        blocker.execute("BEGIN IMMEDIATE")  # the ingest cannot commit: messages pile up
        for _ in range(20):
            await r.publish(r.batch_of([CARD]))
        async with asyncio.timeout(10):
            while gw.ingest.metrics.mqtt_dropped.labels("flooding")._value.get() < 17:
                await asyncio.sleep(0.01)
        blocker.execute("ROLLBACK")
        blocker.close()
        ack = await r.send(r.batch_of([CARD]))  # still served once it waits for its acks
        assert ack["last_seq"] == 21
    assert gw.ingest.metrics.mqtt_dropped.labels("flooding")._value.get() == 17
    assert env.query("SELECT COUNT(*) FROM scans") == [(4,)]


async def test_refused_topics_count_against_the_flood_limit_too(env: Env) -> None:
    """Messages the gateway refuses by topic (a leaf that does not exist, no reader id) are
    held to the same budget, per reader the topic names or all together: they cannot pile up
    in the ingest either (docs/SECURITY.md)."""
    async with gateway(env, max_pending=3) as gw, reader(env, 1) as r:
        blocker = db.connect(env.db_path, migrate=False)
        blocker.execute("BEGIN IMMEDIATE")
        for i in range(10):
            await r.publish(b"leaf %d" % i, topic=f"att/v1/{SCHOOL}/1/up/nonsense")
            await r.publish(b"no id %d" % i, topic=f"att/v1/{SCHOOL}/x/up/batch")
        async with asyncio.timeout(10):
            while gw.ingest.metrics.mqtt_dropped.labels("flooding")._value.get() < 14:
                await asyncio.sleep(0.01)
        blocker.execute("ROLLBACK")
        blocker.close()
        ack = await r.send(r.batch_of([CARD]))  # reader 1's own batches still go through
        assert ack["last_seq"] == 1
    assert gw.ingest.metrics.mqtt_dropped.labels("flooding")._value.get() == 14
    assert env.query("SELECT COUNT(*) FROM quarantine WHERE reason = 'bad_topic'") == [(6,)]
