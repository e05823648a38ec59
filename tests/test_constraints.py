"""Gate: constraints.txt pins every package that `pip install -e .[dev]` brings in."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.project_files import REPO_ROOT

PROJECT = "school-attendance"


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _required(name: str, extras: frozenset[str], seen: set[str]) -> None:
    dist = metadata.distribution(name)
    for text in dist.requires or []:
        req = Requirement(text)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
            continue
        key = canonicalize_name(req.name)
        if key not in seen:
            seen.add(key)
            _required(req.name, frozenset(req.extras), seen)


def test_every_installed_dependency_is_pinned() -> None:
    needed: set[str] = set()
    _required(PROJECT, frozenset({"dev"}), needed)
    pins = _pins()
    missing = sorted(needed - pins.keys())
    assert not missing, f"not pinned in constraints.txt (run `make constraints`): {missing}"
    wrong = {
        name: (pins[name], metadata.version(name))
        for name in needed
        if metadata.version(name) != pins[name]
    }
    assert not wrong, f"installed version differs from constraints.txt (pin, installed): {wrong}"
