"""The firmware type-check (mypy-firmware.ini) checks code as MicroPython ESP32 code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_files import REPO_ROOT

CONFIG = REPO_ROOT / "mypy-firmware.ini"
TYPINGS = REPO_ROOT / ".venv" / "mpy-typings"

GOOD = '''
import hashlib
import struct
import time

import machine
from micropython import const

_LED = const(2)


def blink(n: int) -> bytes:
    pin = machine.Pin(_LED, machine.Pin.OUT)
    pin.value(1)
    start = time.ticks_ms()
    time.sleep_ms(1)
    elapsed = time.ticks_diff(time.ticks_ms(), start)
    return hashlib.sha256(struct.pack("<I", n + elapsed)).digest()
'''

BAD = """
import machine

machine.Pin("x", 99, foo=1)
"""

CPYTHON_ONLY = """
import dataclasses
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    if not (TYPINGS / "stdlib" / "VERSIONS").is_file():
        pytest.fail("MicroPython stubs missing in .venv/mpy-typings: run `make setup`", False)
    module = tmp_path / "fw_module.py"
    module.write_text(source)
    return subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(CONFIG),
            "--cache-dir", str(tmp_path / "cache"),
            str(module),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_clean_micropython_code_passes(tmp_path: Path) -> None:
    result = _mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_machine_call_is_flagged(tmp_path: Path) -> None:
    result = _mypy(tmp_path, BAD)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Unexpected keyword argument "foo" for "Pin"' in result.stdout


def test_cpython_only_module_is_not_available(tmp_path: Path) -> None:
    result = _mypy(tmp_path, CPYTHON_ONLY)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'module named "dataclasses"' in result.stdout
