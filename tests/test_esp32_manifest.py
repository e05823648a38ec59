"""The freeze manifest of the reader's ESP32 image names exactly the code the reader runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import project_files

MANIFEST = project_files.REPO_ROOT / "hardware" / "esp32-image" / "manifest.py"


def test_manifest_freezes_the_firmware_and_the_runtime_neutral_protocol_code() -> None:
    packages: dict[str, dict[str, Any]] = {}
    includes: list[str] = []

    def package(name: str, files: list[str] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        packages[name] = {"files": files, "base": (MANIFEST.parent / base_path).resolve()}

    def include(path: str) -> None:
        includes.append(path)

    # MicroPython's makemanifest runs the file with these functions in scope; so do we.
    exec(MANIFEST.read_text(), {"package": package, "include": include})
    assert includes == ["$(PORT_DIR)/boards/manifest.py"]  # the port's own modules stay
    assert set(packages) == {"firmware", "protocol"}
    assert all(p["base"] == project_files.REPO_ROOT for p in packages.values())
    assert packages["firmware"]["files"] is None  # the whole package, drivers included
    protocol = project_files.REPO_ROOT / "protocol"
    expected = sorted(p.relative_to(protocol).as_posix()
                      for p in project_files.protocol_sources())
    assert sorted(packages["protocol"]["files"]) == expected
    assert all(Path(protocol, name).is_file() for name in expected)
