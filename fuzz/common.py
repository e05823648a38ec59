"""What the harnesses share: the test key, the oracle's failure, and running under atheris."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

KEY = bytes(range(1, 33))  # the reader key every harness signs and verifies with
SCRATCH = Path("/tmp")  # replaced by a per-process directory in ``scratch_dir``


class Bug(AssertionError):
    """A property the parser must keep was broken (an exception is a finding, not a refusal)."""


def scratch_dir() -> Path:
    """A private directory for harnesses that parse files (created once per process)."""
    global SCRATCH
    if Path("/tmp") == SCRATCH:
        import atexit
        import shutil
        import tempfile

        SCRATCH = Path(tempfile.mkdtemp(prefix="attendance-fuzz-"))
        atexit.register(shutil.rmtree, SCRATCH, True)
    return SCRATCH


def fuzz_main(check: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Run ``check`` under atheris with libFuzzer's command line (``fuzz/run.py`` builds it)."""
    # Every function of our packages loaded so far (the harness imported the parsers) gets
    # coverage counters; the standard library and third-party code are left alone, so that
    # the counters (and the corpus they select) are about our code.
    import gc
    import types

    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # x86_64 only, no stubs

    roots = ("protocol", "gateway", "firmware", "technician", "fuzz")
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and obj.__module__ is not None \
                and obj.__module__.split(".")[0] in roots:
            atheris.instrument_func(obj)
    args = list(sys.argv if argv is None else argv)
    # libFuzzer's -merge=1 re-runs argv[0] in a subprocess: under ``python -m`` that is a .py
    # file that is not executable, so fuzz/run.py passes a launcher script instead
    launcher = os.environ.get("ATTENDANCE_FUZZ_LAUNCHER")
    if launcher:
        args[0] = launcher
    atheris.Setup(args, check)
    atheris.Fuzz()
