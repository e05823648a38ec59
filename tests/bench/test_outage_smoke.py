"""Smoke run of bench/outage.py: the benchmark itself works end to end (not its timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_outage_quick_drains_every_record_once() -> None:
    out = subprocess.run([sys.executable, "bench/outage.py", "--quick", "--timeout", "120"],
                         cwd=ROOT, capture_output=True, text=True, timeout=220)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "10 readers x 500 queued records" in text
    assert re.search(r"^\s+lost\s+0\s", text, re.M), text
    assert re.search(r"^\s+doubled \(rows per identity\)\s+0\s", text, re.M), text
    assert re.search(r"^\s+stored, never made\s+0\s", text, re.M), text
    assert "sync=False" in text
