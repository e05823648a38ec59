"""gateway/systemd.py: sd_notify over a real unix datagram socket, and the watchdog's health rule.

The gateway's writer is wedged through its own public door (a transaction that waits on an event),
so the watchdog's probe really queues behind it; nothing sleeps for long.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway import db, systemd
from gateway.commands.run import run as run_gateway
from gateway.config import load_config
from gateway.ingest import Ingest
from gateway.types import StaticKeyRing

INTERVAL_USEC = 100_000  # WatchdogSec=0.1 s: a ping every 50 ms
NO_INGEST = cast(Ingest, None)  # with a probe of its own, supervise() never touches the ingest


class Listener:
    """The systemd side: a bound AF_UNIX datagram socket collecting notifications."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(target)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def env(self, watchdog_usec: int | None = INTERVAL_USEC) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
            env["WATCHDOG_PID"] = str(os.getpid())
        return env

    async def next(self, timeout: float = 5.0) -> list[str]:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 4096),
                                      timeout)
        fields = data.decode().split("\n")
        self.messages.append(fields)
        return fields

    async def until(self, field: str, timeout: float = 5.0) -> list[str]:
        """Messages up to and including the first one holding ``field``."""
        seen: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                fields = await self.next(timeout)
                seen.extend(fields)
                if field in fields:
                    return seen

    def drain(self) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return seen
            seen.extend(data.decode().split("\n"))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    if request.param == "path":  # short: sun_path holds 108 bytes
        folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        address = os.path.join(folder, "notify.sock")
    else:
        folder = ""
        address = f"@attendance-test-{secrets.token_hex(6)}"
    lst = Listener(address)
    yield lst
    lst.close()
    if folder:
        os.unlink(address)
        os.rmdir(folder)


@pytest.fixture
def ingest_conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = db.connect(tmp_path / "gateway.db")
    yield conn
    conn.close()


async def test_notifier_sends_one_datagram_per_message(listener: Listener) -> None:
    notifier = systemd.Notifier(listener.address)
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=đang chạy / running")
    assert await listener.next() == ["READY=1", "STATUS=đang chạy / running"]


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not systemd.Notifier.from_environment({}).enabled
    assert not systemd.Notifier(None).notify("READY=1")


def test_an_unreachable_socket_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    notifier = systemd.Notifier("/nonexistent/notify.sock")
    assert not notifier.notify("READY=1")
    assert not notifier.notify("WATCHDOG=1")
    assert sum("not sent" in r.getMessage() for r in caplog.records) == 1  # once, not per ping


def test_watchdog_interval_is_half_the_period_and_only_for_this_process() -> None:
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_outside_systemd_supervise_returns_at_once(
        ingest_conn: sqlite3.Connection) -> None:
    ingest = Ingest(ingest_conn, StaticKeyRing({}))
    ingest.start()
    try:
        await asyncio.wait_for(systemd.supervise(ingest, asyncio.Event(), environ={}), 1)
    finally:
        await ingest.close()


async def test_ready_watchdog_stall_recovery_and_stopping(
        listener: Listener, ingest_conn: sqlite3.Connection) -> None:
    """READY after start; WATCHDOG every period while the writer answers; none while it is
    wedged (STATUS says so); pings again once it moves; STOPPING=1 when the stop begins."""
    ingest = Ingest(ingest_conn, StaticKeyRing({}))
    ingest.start()
    stop, connected = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(systemd.supervise(ingest, stop, connected,
                                                 environ=listener.env()))
    release = threading.Event()
    try:
        first = await listener.next()
        assert first[0] == "READY=1"
        assert "chờ máy chủ MQTT / waiting for the MQTT broker" in first[1]
        for _ in range(3):
            assert "WATCHDOG=1" in await listener.until("WATCHDOG=1", timeout=2)

        connected.set()  # the MQTT session came up: STATUS follows
        assert any("MQTT đã kết nối / MQTT connected" in f
                   for f in await listener.until("WATCHDOG=1", timeout=2)
                   + await listener.until("WATCHDOG=1", timeout=2))

        # Wedge the writer: a transaction that blocks its thread until released.
        wedged = asyncio.create_task(ingest.run_in_transaction(
            lambda conn: release.wait(10)))
        stalled = await listener.until(f"STATUS={systemd.STATUS_RUNNING}; "
                                       f"{systemd.STATUS_MQTT_UP}; {systemd.STATUS_STALLED}")
        listener.drain()
        await asyncio.sleep(0.4)  # eight periods without a ping
        silent = listener.drain()
        assert "WATCHDOG=1" not in silent, silent
        assert stalled[-1].endswith(systemd.STATUS_STALLED)

        release.set()
        await wedged
        recovered = await listener.until("WATCHDOG=1", timeout=2)
        assert any(systemd.STATUS_STALLED not in f for f in recovered if f.startswith("STATUS="))

        stop.set()
        await listener.until("STOPPING=1", timeout=2)
        await asyncio.wait_for(task, 2)
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 5)
        await ingest.close()


async def test_a_failed_probe_transaction_still_feeds_the_watchdog(listener: Listener) -> None:
    """The writer answered (with an error: database locked, disk full): restarting would not
    help, so the watchdog is fed and the failure is logged."""
    calls = 0

    async def failing() -> object:
        nonlocal calls
        calls += 1
        raise RuntimeError("the transaction failed (see the log)")

    stop = asyncio.Event()
    task = asyncio.create_task(systemd.supervise(
        NO_INGEST, stop, environ=listener.env(), probe=failing))
    try:
        assert (await listener.next())[0] == "READY=1"
        await listener.until("WATCHDOG=1", timeout=2)
        await listener.until("WATCHDOG=1", timeout=2)
        assert calls >= 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_cancelled_supervisor_still_says_stopping(listener: Listener) -> None:
    async def forever() -> object:
        await asyncio.Event().wait()
        return None

    task = asyncio.create_task(systemd.supervise(
        NO_INGEST, asyncio.Event(), environ=listener.env(), probe=forever))
    assert (await listener.next())[0] == "READY=1"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "STOPPING=1" in await listener.until("STOPPING=1", timeout=2)


async def test_the_running_gateway_notifies_systemd(
        tmp_path: Path, mosquitto_broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``attendance-gateway run`` under a notify socket: READY=1 (MQTT connected soon after),
    WATCHDOG=1 while it runs, STOPPING=1 when asked to stop."""
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
school = "thcs-test"
database = "gateway.db"
master_key_file = "master.key"
[mqtt]
port = {mosquitto_broker.port}
[metrics]
listen = ""
""", encoding="utf-8")
    folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
    listener = Listener(os.path.join(folder, "notify.sock"))
    for key, value in listener.env().items():
        monkeypatch.setenv(key, value)
    stop = asyncio.Event()
    running = asyncio.create_task(run_gateway(load_config(path), stop))
    try:
        assert (await listener.next(timeout=15))[0] == "READY=1"
        seen = await listener.until(f"STATUS={systemd.STATUS_RUNNING}; {systemd.STATUS_MQTT_UP}",
                                    timeout=10)
        seen += await listener.until("WATCHDOG=1", timeout=5)
        assert "WATCHDOG=1" in seen
        stop.set()
        await listener.until("STOPPING=1", timeout=5)
        assert await asyncio.wait_for(running, 15) == 0
    finally:
        stop.set()
        if not running.done():
            running.cancel()
        listener.close()
        os.unlink(listener.address)
        os.rmdir(folder)
