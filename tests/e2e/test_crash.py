"""kill -9 the gateway in the middle of a stream of batches: nothing acked is lost or doubled.

The gateway runs as operators run it (``python -m gateway.cli run --config FILE``) against a
real Mosquitto; readers upload stop-and-wait and resend whatever was not acknowledged in time.
After each kill, before the restart, every batch whose ack a reader received must already be in
the database (the ack followed a durable commit); at the end every batch is stored exactly once
and the resends were absorbed as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from gateway import db
from gateway.registry import Registry
from sim.broker import MosquittoBroker
from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.mqtt_reader import AckingReader, batch_range, batch_records

SCHOOL = "crash-school"
READERS = range(1, 7)
BATCHES = 40
CARDS = [(2, bytes.fromhex("04a1b2c3")), (1, bytes.fromhex("0f002c8a91"))]


def stored(db_path: Path) -> dict[tuple[int, int, int], bytes]:
    conn = sqlite3.connect(db_path)
    try:
        return {(r, b, s): bytes(raw) for r, b, s, raw in
                conn.execute("SELECT reader_id, boot, seq, raw FROM scans")}
    finally:
        conn.close()


def identities(payload: bytes, reader_id: int) -> list[tuple[int, int, int]]:
    boot, first, last = batch_range(payload)
    return [(reader_id, boot, seq) for seq in range(first, last + 1)]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_kill_9_mid_stream_loses_and_doubles_nothing(
        tmp_path: Path, mosquitto_broker: MosquittoBroker) -> None:
    db_path = tmp_path / "gateway.db"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nschool = "{SCHOOL}"\ndatabase = "gateway.db"\n'
        f'master_key_file = "master.key"\n\n[mqtt]\nport = {mosquitto_broker.port}\n'
        f'keepalive_s = 5\n\n[metrics]\nlisten = ""\n', encoding="utf-8")
    conn = db.connect(db_path)
    registry = Registry.open(conn, tmp_path / "master.key")
    keys = {rid: registry.register(rid, f"gate {rid}", "main").key for rid in READERS}
    conn.close()

    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    acked: dict[int, list[bytes]] = {rid: [] for rid in READERS}
    kills = 0
    try:
        gateway.start()
        async with contextlib.AsyncExitStack() as stack:
            readers = [await stack.enter_async_context(AckingReader(
                rid, keys[rid], SCHOOL, "127.0.0.1", mosquitto_broker.port, ack_timeout_s=0.4))
                for rid in READERS]

            async def upload(r: AckingReader) -> None:
                for i in range(BATCHES):
                    payload = r.batch_of([CARDS[(i + n) % 2] for n in range(1 + i % 3)])
                    await r.send(payload, deadline_s=60)
                    acked[r.reader_id].append(payload)
                    await asyncio.sleep(0.005)

            uploads = asyncio.gather(*(upload(r) for r in readers))
            for threshold in (BATCHES, 3 * BATCHES):
                while sum(map(len, acked.values())) < threshold:
                    await asyncio.sleep(0.005)
                await asyncio.to_thread(gateway.kill9)
                kills += 1
                # Every ack received so far followed a durable commit: it is all on disk now,
                # with no gateway running.
                on_disk = stored(db_path)
                for rid, payloads in acked.items():
                    for payload in payloads:
                        for identity in identities(payload, rid):
                            assert identity in on_disk, f"acked but not stored: {identity}"
                await asyncio.sleep(0.3)  # readers keep publishing into the broker meanwhile
                await asyncio.to_thread(gateway.start)
            await asyncio.wait_for(uploads, 90)
        assert gateway.terminate() == 0
    finally:
        gateway.ensure_dead()

    assert kills == 2 and gateway.starts == 3
    on_disk = stored(db_path)
    expected: dict[tuple[int, int, int], bytes] = {}
    for rid, payloads in acked.items():
        assert len(payloads) == BATCHES
        for payload in payloads:
            records = batch_records(payload)
            for identity, raw in zip(identities(payload, rid), records, strict=True):
                expected[identity] = raw
    assert on_disk == expected  # every record once, byte for byte, and nothing else
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM quarantine").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM seq_gaps").fetchone() == (0,)
    finally:
        conn.close()
    resends = sum(r.resends for r in readers)
    log_text = (tmp_path / "gateway.log").read_text()
    assert '"event": "stopped"' in log_text
    print(f"kills {kills}, reader resends {resends}, pid {os.getpid()}")
