"""The gateway as operators run it: ``python -m gateway.cli run --config FILE`` in a subprocess,
started, stopped with SIGTERM or killed with SIGKILL by the tests (tests/e2e/test_crash.py,
tests/e2e/test_reader_link.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, school: str, mqtt_port: int, database: str = "gateway.db",
                 master_key_file: str = "master.key") -> Path:
    """A minimal gateway config (paths relative to ``path``'s directory, metrics off)."""
    path.write_text(
        f'[gateway]\nschool = "{school}"\ndatabase = "{database}"\n'
        f'master_key_file = "{master_key_file}"\n\n[mqtt]\nport = {mqtt_port}\n'
        f'keepalive_s = 5\n\n[metrics]\nlisten = ""\n', encoding="utf-8")
    return path


class GatewayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start it and return once it logged its MQTT connection (fails after 20 s)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.starts += 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:]
            if b'"event": "connected"' in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"gateway did not connect:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
