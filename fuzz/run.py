"""Run the atheris harnesses for a bounded time each and keep what they found.

    python fuzz/run.py [--seconds N] [--max-len N] [name ...]     (make fuzz SECONDS=N)

For each harness (``fuzz_<name>.py``; all by default), one after the other:

1. libFuzzer runs ``check`` for ``--seconds`` over the corpus ``fuzz/corpus/<name>/`` (seeded
   from the harness's ``seeds()`` when empty), writing new interesting inputs to a scratch
   directory under ``build/fuzz/``;
2. the corpus and the new inputs are merged with ``-merge=1`` into a fresh directory: libFuzzer
   keeps the smallest set of inputs that covers everything either covered, so the corpus stays
   minimal; that set replaces ``fuzz/corpus/<name>/`` (files named by their SHA-1), except the
   files named ``crash-*``: inputs that once crashed a parser, kept as regression cases;
3. a crash (an exception other than the documented error, a timeout, running out of memory)
   leaves its input in ``build/fuzz/<name>/`` and makes the run fail; turn it into a
   regression test (docs/fuzzing.md) and copy it into the corpus once fixed.

Prints executions per second and totals per harness. Runs on x86_64 with atheris installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
BUILD = ROOT / "build" / "fuzz"
HARNESSES = ("codec", "frame", "mqtt_packets", "cards", "roster", "config")
MAX_LEN = {"codec": 4200, "frame": 2400, "mqtt_packets": 1200, "cards": 200, "roster": 2000,
           "config": 4000}
REGRESSION = "crash-"  # corpus files named so are past findings: merges never drop them
_STATS = re.compile(r"stat::(number_of_executed_units|average_exec_per_sec|new_units_added):"
                    r"\s*(\d+)")


def seed_corpus(name: str) -> Path:
    """``fuzz/corpus/<name>/``, written from the harness's ``seeds()`` if it holds nothing but
    regression inputs."""
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    if all(p.name.startswith(REGRESSION) for p in corpus.iterdir()):
        module = importlib.import_module(f"fuzz.fuzz_{name}")
        for data in module.seeds():
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return corpus


def launcher(name: str, work: Path) -> Path:
    """An executable that runs the harness: libFuzzer's -merge=1 re-executes argv[0]."""
    script = work / "launch.sh"
    script.write_text(f'#!/bin/sh\ncd "{ROOT}" && exec "{sys.executable}" -m fuzz.fuzz_{name} '
                      f'"$@"\n')
    script.chmod(0o755)
    return script


def libfuzzer(name: str, args: list[str], log: Path) -> tuple[int, str]:
    work = log.parent
    command = [str(launcher(name, work)), *args]
    env = {**os.environ, "ATTENDANCE_FUZZ_LAUNCHER": str(work / "launch.sh")}
    with log.open("w") as out:
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return code, log.read_text(errors="replace")


def run(name: str, seconds: int, max_len: int | None) -> bool:
    corpus = seed_corpus(name)
    work = BUILD / name
    shutil.rmtree(work, ignore_errors=True)
    found, merged = work / "found", work / "merged"
    found.mkdir(parents=True)
    merged.mkdir()
    limit = max_len or MAX_LEN.get(name, 4096)
    before = len(list(corpus.iterdir()))
    started = time.monotonic()
    code, text = libfuzzer(name, [
        f"-max_total_time={seconds}", f"-max_len={limit}", "-timeout=10", "-rss_limit_mb=2048",
        "-print_final_stats=1", f"-artifact_prefix={work}/", str(found), str(corpus)],
        work / "fuzz.log")
    elapsed = time.monotonic() - started
    stats = {key: int(value) for key, value in _STATS.findall(text)}
    crashed = code != 0 or any(p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))
                               for p in work.iterdir())
    if not crashed:
        merge_code, merge_text = libfuzzer(name, [
            # edges only (not hit counts) decide what is kept: tens of files, not hundreds
            "-merge=1", "-use_counters=0", f"-max_len={limit}", "-timeout=10", str(merged),
            str(corpus),
            str(found)], work / "merge.log")
        if merge_code != 0 or not any(merged.iterdir()):
            print(merge_text[-2000:])  # the corpus is left as it was
            crashed = True
        else:
            kept = {hashlib.sha1(p.read_bytes()).hexdigest(): p.read_bytes()
                    for p in merged.iterdir()}
            for old in corpus.iterdir():
                if not old.name.startswith(REGRESSION):
                    old.unlink()
            for digest, data in kept.items():
                (corpus / digest).write_bytes(data)
    after = len(list(corpus.iterdir()))
    size = sum(p.stat().st_size for p in corpus.iterdir())
    executed = stats.get("number_of_executed_units", 0)
    print(f"{name:13} {executed:>9} execs in {elapsed:5.0f} s "
          f"({stats.get('average_exec_per_sec', 0):>6}/s), corpus {before} -> {after} files "
          f"({size} bytes){'  CRASH: see ' + str(work) if crashed else ''}", flush=True)
    if crashed:
        print("\n".join(text.splitlines()[-40:]))
    return not crashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    parser.add_argument("--max-len", type=int, default=None, help="longest input (bytes)")
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"harnesses to run (default all): {', '.join(HARNESSES)}")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; one of {', '.join(HARNESSES)}")
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        print("atheris is not installed (x86_64 only): the corpus replay in the test suite "
              "still runs", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    ok = True
    for name in args.names or HARNESSES:
        ok = run(name, args.seconds, args.max_len) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
