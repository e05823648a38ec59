"""The whole reader application on CPython: boot from files, emulated MFRC522, real queue."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from firmware.app import ReaderApp
from firmware.drivers.mfrc522 import MFRC522
from firmware.feedback import Feedback
from firmware.fs import FS
from firmware.main import boot
from firmware.ticks import ticks_add, ticks_ms
from protocol import construct_codec
from protocol.codec import BatchWriter
from sim.broker import free_port
from sim.hardware import LoopbackNetwork
from tests.firmware.emulators.mfrc522 import MFRC522Emulator, Picc

BOARDS = Path(__file__).resolve().parents[2] / "hardware" / "boards"
KEY = bytes(range(100, 132))
CARD_A = bytes.fromhex("04224be2a13c80")
CARD_B = bytes.fromhex("3a9c5e21")


class _Out:
    def __init__(self) -> None:
        self.calls = 0

    def value(self, v: int) -> None:
        self.calls += 1

    def freq(self, v: int) -> None:
        self.calls += 1

    def duty_u16(self, v: int) -> None:
        self.calls += 1


class _Watchdog:
    def __init__(self) -> None:
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class EmulatedHardware:
    """What firmware/hw_esp32.py builds on the board, made of emulators."""

    def __init__(self) -> None:
        self.chip = MFRC522Emulator()
        self.watchdog = _Watchdog()
        self.rtc: list[int] = []

    def build_reader(self, profile: dict[str, Any]) -> MFRC522:
        assert profile["reader"]["type"] == "mfrc522"
        return MFRC522(self.chip.spi, self.chip.cs, self.chip.rst)

    def build_feedback(self, profile: dict[str, Any], volume: int) -> Feedback:
        return Feedback(_Out(), _Out(), _Out(), volume)

    def build_watchdog(self) -> _Watchdog:
        return self.watchdog

    def set_rtc(self, unix_s: int) -> None:
        self.rtc.append(unix_s)

    def build_network(self, profile: dict[str, Any], config: Any, clock: Any) -> LoopbackNetwork:
        network = LoopbackNetwork(clock, ntp=False)
        network.up = False
        return network

    def reboot(self) -> None:
        raise AssertionError("nothing here asks the reader to reboot")


def _provision(root: Path, **overrides: Any) -> None:
    (root / "boards").mkdir(parents=True)
    shutil.copy(BOARDS / "esp32-devkitc-mfrc522.json", root / "boards")
    config = {"reader_id": 42, "school": "thcs-1", "gate": "main",
              "board": "esp32-devkitc-mfrc522", "debounce_ms": 1500,
              "network": {"broker": "127.0.0.1", "port": free_port()}, **overrides}
    (root / "config.json").write_text(json.dumps(config))
    (root / "key.bin").write_bytes(KEY)


def _queued(app: ReaderApp) -> list[dict[str, Any]]:
    writer = BatchWriter()
    boot_number, count = app.queue.fill(writer)
    if not count:
        return []
    data = bytes(writer.finish(app.signer, app.config.reader_id, boot_number))
    return construct_codec.decode("batch", data, KEY)["records"]  # type: ignore[no-any-return]


async def _run_for(app: ReaderApp, seconds: float) -> None:
    task = asyncio.create_task(app.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_boot_tap_queue_and_heartbeat(tmp_path: Path) -> None:
    _provision(tmp_path)
    hw = EmulatedHardware()
    app = boot(FS(), str(tmp_path), hw)
    assert (app.boot, app.config.reader_id) == (1, 42)
    card_a, card_b = Picc(CARD_A), Picc(CARD_B)
    task = asyncio.create_task(app.run())
    await asyncio.sleep(0.2)
    hw.chip.add(card_a)  # held for a second: one scan
    await asyncio.sleep(1.0)
    hw.chip.remove(card_a)
    hw.chip.add(card_b)
    await asyncio.sleep(0.4)
    hw.chip.remove(card_b)
    hw.chip.add(card_a)  # back after less than the gap: same tap
    await asyncio.sleep(0.3)
    hw.chip.remove(card_a)
    await asyncio.sleep(0.4)  # a flush round
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = _queued(app)
    assert [(r["seq"], r["uid"], r["tech"]) for r in records] == [
        (1, CARD_A, "iso14443a"), (2, CARD_B, "iso14443a")]
    assert all(r["reader_id"] == 42 and r["boot"] == 1 and not r["clock_synced"]
               for r in records)
    assert records[0]["ticks_ms"] < records[1]["ticks_ms"]
    assert app.feedback.played == 2 and hw.watchdog.feeds >= 1
    status = construct_codec.decode("heartbeat", app.heartbeat(), KEY)
    assert (status["state"], status["queue_depth"], status["faults"]) == ("online", 2, [])
    assert status["oldest_unsent_age_s"] in (1, 2)

    # a power cut and reboot: the next boot number, the queue still holds both records
    app2 = boot(FS(), str(tmp_path), EmulatedHardware())
    assert app2.boot == 2
    assert [r["seq"] for r in _queued(app2)] == [1, 2]
    app2.queue.ack(1, 1, 2)
    assert _queued(app2) == []


async def test_synced_clock_and_remote_config(tmp_path: Path) -> None:
    _provision(tmp_path)
    hw = EmulatedHardware()
    app = boot(FS(), str(tmp_path), hw)
    app.clock.set_time(1_795_420_800, 0)
    app.apply_config({"debounce_ms": 100, "volume": 0})
    assert (app.debouncer.gap_ms, app.feedback.volume) == (100, 0)
    card = Picc(CARD_B)
    hw.chip.add(card)
    await _run_for(app, 0.5)
    records = _queued(app)
    assert records and records[0]["clock_synced"]
    assert 1_795_420_800 <= records[0]["time_s"] <= 1_795_420_801
    assert hw.rtc == [1_795_420_800]


async def test_reader_chip_fault_shows_in_heartbeat_and_watchdog_stops_when_poll_dies(
        tmp_path: Path) -> None:
    _provision(tmp_path)
    hw = EmulatedHardware()
    app = boot(FS(), str(tmp_path), hw)
    hw.chip.power_off()
    await _run_for(app, 0.6)
    status = construct_codec.decode("heartbeat", app.heartbeat(), KEY)
    assert (status["state"], status["faults"]) == ("fault", ["reader_chip"])
    assert app.feedback.fault

    def broken_poll(now_ms: int) -> int:
        raise RuntimeError("driver bug")

    assert app.healthy()
    app._poll_alive = ticks_add(ticks_ms(), -5000)  # the poll task made no progress for 5 s
    assert not app.healthy()

    app.reader.poll = broken_poll  # type: ignore[method-assign]
    task = asyncio.create_task(app.run())
    await asyncio.sleep(0.2)
    assert task.done()  # the poll task died and took the app with it
    with pytest.raises(RuntimeError):
        task.result()
    feeds = hw.watchdog.feeds
    await asyncio.sleep(1.2)
    assert hw.watchdog.feeds == feeds  # nothing feeds the dog: the board will reset


def test_bad_files_are_refused_with_the_key(tmp_path: Path) -> None:
    from firmware.board import BoardError
    from firmware.config import ConfigError

    _provision(tmp_path / "a", reader_id=0)
    with pytest.raises(ConfigError, match="reader_id"):
        boot(FS(), str(tmp_path / "a"), EmulatedHardware())
    _provision(tmp_path / "b")
    (tmp_path / "b" / "key.bin").write_bytes(b"short")
    with pytest.raises(ConfigError, match="32 bytes"):
        boot(FS(), str(tmp_path / "b"), EmulatedHardware())
    _provision(tmp_path / "c")
    profile = json.loads((tmp_path / "c/boards/esp32-devkitc-mfrc522.json").read_text())
    profile["buzzer"] = 5
    (tmp_path / "c/boards/esp32-devkitc-mfrc522.json").write_text(json.dumps(profile))
    with pytest.raises(BoardError, match="already used"):
        boot(FS(), str(tmp_path / "c"), EmulatedHardware())
