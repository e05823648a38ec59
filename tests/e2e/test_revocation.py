"""A revocation reaches the running gateway without a restart (docs/SECURITY.md, actor 3).

The real gateway (``gateway.commands.run.run``, on this test's event loop) against a real
Mosquitto, a reader uploading signed batches over MQTT and waiting for acks
(``tests/e2e/mqtt_reader.AckingReader``). The reader is revoked through the registry on another
database connection, as ``attendance-gateway readers revoke`` does; the gateway's
``_watch_registry`` polls the registry every ``KEY_POLL_S`` (2 s) and swaps the ingest's key
ring, so within a bounded time the reader's next batch is quarantined as ``revoked_key`` and
never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway import db
from gateway.commands.run import run
from gateway.registry import Registry
from tests.e2e.mqtt_reader import batch_range
from tests.e2e.test_mqtt_ingest import CARD, Env, env, reader

__all__ = ["env"]  # the fixture, used by name

REVOCATION_BOUND_S = 3.0  # KEY_POLL_S (2 s) + the reload + a round trip, on a loaded machine


async def test_a_revoked_reader_is_quarantined_and_unacknowledged_within_3_s(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.run")
    stop = asyncio.Event()
    gateway = asyncio.create_task(run(env.config, stop))
    try:
        async with reader(env, 1, ack_timeout_s=0.5) as r, reader(env, 2) as other:
            # both readers upload and are acknowledged: the gateway is up
            assert (await r.send(r.batch_of([CARD]), deadline_s=20))["first_seq"] == 1
            await other.send(other.batch_of([CARD]), deadline_s=20)

            conn = db.connect(env.db_path, migrate=False)  # what the CLI does, elsewhere
            try:
                Registry.open(conn, env.config.master_key_file).revoke(1)
            finally:
                conn.close()
            revoked = time.monotonic()

            # Upload until a batch gets no ack; until the reload, batches are still stored.
            while True:
                payload = r.batch_of([CARD])
                sent = time.monotonic() - revoked
                assert sent < REVOCATION_BOUND_S, \
                    f"reader 1 still acknowledged {sent:.1f} s after its revocation"
                await r.publish(payload)
                if await r.next_ack(0.5, (1, *batch_range(payload))) is None:
                    break
                await asyncio.sleep(0.05)
            _, first_seq, _ = batch_range(payload)
            print(f"the first batch refused was sent {sent:.2f} s after the revocation")

            def quarantined() -> list[tuple[object, ...]]:
                return env.query("SELECT reason, reader_id FROM quarantine WHERE raw = ?",
                                 payload)

            deadline = time.monotonic() + 5
            while not quarantined() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert quarantined() == [("revoked_key", 1)]
            # ... and it stays unacknowledged, as does the next one; the other reader goes on
            again = r.batch_of([CARD])
            await r.publish(again)
            assert (await other.send(other.batch_of([CARD]), deadline_s=10))["first_seq"] == 2
            assert await r.next_ack(1.0) is None
            assert env.query("SELECT COUNT(*) FROM scans WHERE reader_id = 1 AND seq >= ?",
                             first_seq) == [(0,)]
            assert [row[0] for row in env.query(
                "SELECT reason FROM quarantine WHERE reader_id = 1")] == ["revoked_key"] * 2
        assert "reader registry reloaded" in [rec.getMessage() for rec in caplog.records]
    finally:
        stop.set()
        assert await asyncio.wait_for(gateway, 30) == 0
