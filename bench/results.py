"""What a benchmark hands to ``make bench`` (bench/report.py): its figures, as one JSON file.

Each benchmark prints its own report for a person and, with ``--json FILE``, writes the same
figures for the report: a :class:`Figure` per number, with the target of ../shared/DESIGN.md it
answers (if any), whether it is met, and the side-by-side comparison measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Figure:
    """One measured number. ``target`` is the DESIGN.md target it answers, as text."""

    key: str
    label: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the figures as JSON (for make bench)")


def machine() -> dict[str, str]:
    """The machine a run measured, for the report's header."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                                   timeout=5).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        mosquitto = "mosquitto not found"
    return {
        "cpus": f"{os.cpu_count()} CPUs" + (f" ({model})" if model else ""),
        "memory": memory,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"Python {platform.python_version()}",
        "sqlite": f"SQLite {sqlite3.sqlite_version}",
        "mosquitto": mosquitto,
    }


def describe_machine() -> str:
    """One line, for a benchmark's printed header."""
    return ", ".join(v for v in machine().values() if v)


def command_line() -> str:
    """How this run was started, without ``--json FILE``: the command that reproduces it."""
    args, kept = sys.argv[1:], []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path(__file__).resolve().parent.parent)
    return " ".join([".venv/bin/python", str(script), *kept])


def write(path: Path | None, bench: str, figures: list[Figure], **extra: Any) -> None:
    """Write ``figures`` (and any JSON-ready ``extra``) to ``path``; nothing when it is None."""
    if path is None:
        return
    document = {
        "bench": bench,
        "command": command_line(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": [dataclasses.asdict(f) for f in figures],
        **extra,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> tuple[dict[str, Any], list[Figure]]:
    """A file :func:`write` made: the document and its figures."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return document, [Figure(**f) for f in document["figures"]]
