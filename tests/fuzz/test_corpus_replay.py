"""Replays every input of the atheris corpus (``fuzz/corpus/<name>/``) through its harness's
``check``, without atheris, so that every machine runs what the fuzzers found.

Files named ``crash-*`` are inputs that once crashed a parser (docs/fuzzing.md lists them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from fuzz.run import CORPUS, HARNESSES

CASES = sorted((name, path) for name in HARNESSES if (CORPUS / name).is_dir()
               for path in (CORPUS / name).iterdir())


def _check(name: str) -> Callable[[bytes], None]:
    check: Callable[[bytes], None] = importlib.import_module(f"fuzz.fuzz_{name}").check
    return check


def test_every_harness_has_a_small_corpus() -> None:
    for name in HARNESSES:
        files = list((CORPUS / name).iterdir())
        assert 5 <= len(files) <= 200, (name, len(files))
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 1_000_000


@pytest.mark.parametrize("name", HARNESSES)
def test_corpus_replays_without_a_finding(name: str) -> None:
    check = _check(name)
    for path in sorted((CORPUS / name).iterdir()):
        try:
            check(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"fuzz/corpus/{name}/{path.name}: {exc!r}") from exc


@pytest.mark.parametrize("name", HARNESSES)
def test_seeds_replay_without_a_finding(name: str) -> None:
    module = importlib.import_module(f"fuzz.fuzz_{name}")
    for data in module.seeds():
        module.check(data)


def test_crash_inputs_are_kept() -> None:
    kept = {p.parent.name for p in CORPUS.glob("*/crash-*")}
    assert {"codec", "frame", "cards", "roster", "config"} <= kept
