"""Which project files are MicroPython code: one definition for the VM harness, mpy-cross and mypy.

Runtime-neutral protocol modules are every ``protocol/**/*.py`` except the CPython-only construct
declaration and the golden vectors; the firmware is every ``firmware/**/*.py``.

``python -m tests.project_files`` prints them, one path per line, relative to the repository root
(the Makefile's ``typecheck-firmware`` target uses this).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Paths under protocol/ that are CPython-only (relative to protocol/).
PROTOCOL_CPYTHON_ONLY = ("construct_codec.py",)
#: Folders under protocol/ that hold data, not MicroPython code.
PROTOCOL_DATA_DIRS = ("vectors",)

_SKIP_DIRS = {"__pycache__"}


def _walk(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(
        p
        for p in base.rglob("*")
        if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(base).parts)
    )


def protocol_sources(root: Path = REPO_ROOT) -> list[Path]:
    """Runtime-neutral ``.py`` modules of protocol/ (run on MicroPython and CPython)."""
    base = root / "protocol"
    out = []
    for p in _walk(base):
        rel = p.relative_to(base)
        if p.suffix != ".py" or rel.as_posix() in PROTOCOL_CPYTHON_ONLY:
            continue
        if rel.parts[0] in PROTOCOL_DATA_DIRS:
            continue
        out.append(p)
    return out


def firmware_sources(root: Path = REPO_ROOT) -> list[Path]:
    """Every ``.py`` file of the firmware tree."""
    return [p for p in _walk(root / "firmware") if p.suffix == ".py"]


def firmware_tree(root: Path = REPO_ROOT) -> list[Path]:
    """Every file of the firmware tree (code and data such as board profiles), no caches."""
    return [p for p in _walk(root / "firmware") if p.suffix not in (".pyc", ".mpy")]


def micropython_sources(root: Path = REPO_ROOT) -> list[Path]:
    """All files that must compile with mpy-cross and type-check against the MicroPython stubs."""
    return firmware_sources(root) + protocol_sources(root)


def main() -> int:
    for p in micropython_sources():
        print(p.relative_to(REPO_ROOT).as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
