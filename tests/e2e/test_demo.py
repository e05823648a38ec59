"""`make run`'s main job and the gateway command, as a user starts them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_firmware_readers_whose_records_are_stored_and_acknowledged() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sim.demo", "--readers", "2", "--duration", "3", "--rate", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    stored = re.findall(r"reader (\d+) .* stored", out.stdout)
    assert set(stored) == {"100", "101"}
    summary = re.search(r"(\d+) bản ghi đầu đọc đã tạo / records the readers made, (\d+) đã lưu "
                        r"/ stored, (\d+) xác nhận / acks, 0 còn trong hàng đợi / left in reader "
                        r"queues, 1 lô giả mạo bị từ chối / forged batch rejected", out.stdout)
    assert summary is not None, out.stdout
    # every record the firmware made is stored, and printed as it is stored; acks cover
    # batches (a batch can hold several records), so there is at least one per reader
    assert summary[1] == summary[2] == str(len(stored))
    assert 2 <= int(summary[3]) <= int(summary[2])


def test_gateway_command_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nschool = "s"\n[mqtt]\nport = 0\n')
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "Configuration error" in out.stderr and "mqtt.port" in out.stderr


def test_gateway_command_runs_and_stops_cleanly_on_sigterm(
        tmp_path: Path, mosquitto_broker: MosquittoBroker) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nschool = "s"\n[mqtt]\nport = {mosquitto_broker.port}\n'
                      f'[metrics]\nlisten = ""\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"event": "connected"' in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert '"event": "stopped"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            pytest.fail("gateway did not stop on SIGTERM")
    assert (tmp_path / "gateway.db").exists()
