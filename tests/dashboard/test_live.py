"""The ingest's committed listeners (what feeds live taps) and the dashboard as a gateway
service."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.dashboard.app import Dashboard
from gateway.metrics import GatewayMetrics
from gateway.types import StoredScan
from tests.dashboard.school import Clock, Morning, at, write_config


async def test_listeners_hear_only_committed_scans_on_the_loop(tmp_path: Path) -> None:
    clock = Clock(at("09:00"))
    m = Morning(tmp_path, write_config(tmp_path), clock)
    heard: list[tuple[list[StoredScan], threading.Thread]] = []
    m.ingest.committed_listeners.append(
        lambda scans: heard.append((scans, threading.current_thread())))
    rules = m.rules.on_scans

    def failing_rules(conn: sqlite3.Connection, scans: list[StoredScan]) -> None:
        if any(s.card.endswith("0A0B0006") for s in scans):
            raise RuntimeError("a rules failure: the transaction is rolled back")
        rules(conn, scans)

    m.on_scans = failing_rules
    await m.start()
    try:
        with pytest.raises(AssertionError):  # rolled back, so no ack
            await m.taps(("0A0B0006", "06:50"))
        assert heard == []
        await m.taps(("0A0B0001", "06:40"), ("0A0B0002", "06:41"))
        async with asyncio.timeout(5):  # scheduled after the ack's outcome, from the writer
            while not heard:
                await asyncio.sleep(0.01)
        [(scans, thread)] = heard
        assert thread is threading.current_thread()  # the event loop's, not the writer's
        assert [s.card for s in scans] == ["iso14443a:0A0B0001", "iso14443a:0A0B0002"]
        stored = {int(r[0]) for r in m.conn.execute("SELECT scan_id FROM scans")}
        assert {s.scan_id for s in scans} == stored
    finally:
        await m.close()


async def test_a_dashboard_that_cannot_listen_leaves_the_gateway_running(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path)
        config = dataclasses.replace(config, dashboard=dataclasses.replace(
            config.dashboard, listen=f"127.0.0.1:{port}"))
        m = Morning(tmp_path, config, Clock(at("09:00")))
        await m.start()
        stop = asyncio.Event()
        try:
            with caplog.at_level(logging.ERROR, "gateway.dashboard"):
                await asyncio.wait_for(Dashboard(config, m.ingest, GatewayMetrics()).run(stop),
                                       10)
            assert "dashboard not started" in caplog.text
            assert m.ingest.committed_listeners == []
            await m.taps(("0A0B0001", "06:40"))  # taps still flow
        finally:
            await m.close()
