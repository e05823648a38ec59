"""Smoke run of bench/forwarding.py: the benchmark itself works end to end (not its timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_forwarding_quick_delivers_every_event_once() -> None:
    out = subprocess.run([sys.executable, "bench/forwarding.py", "--quick", "--timeout", "120"],
                         cwd=ROOT, capture_output=True, text=True, timeout=220)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert re.search(r"^machine: \d+ CPUs", text, re.M), text
    assert "command: " in text
    # (a): three settings at each of the two latencies, each run checked on the peer's side
    rows = re.findall(r"^  (\d+) ms\s+(one at a time|defaults|wider)\s.*\s(\S+)$", text, re.M)
    assert len(rows) == 6 and all(ok == "yes" for *_, ok in rows), text
    # (b): the day of a 300-student school, drained after the outage, exactly once
    assert "(b) the backlog after an outage: 300 students" in text
    assert re.search(r"drain after the probe: [\d.]+ s until pending = 0", text), text
    assert "every event exactly once upstream: yes" in text
    assert re.search(r"outbox at the end: [\d,]+ delivered, [\d,]+ superseded$", text, re.M), text
