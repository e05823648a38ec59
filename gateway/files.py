"""Durability on disk: flush a file or a folder to the device, so that what was written, or a
rename inside the folder, survives a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync ``path``, a file or a folder; OSError when the platform refuses."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
