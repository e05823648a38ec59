"""Reader keys at rest: a TOML file readable by the gateway's user only.

The file maps decimal reader ids to 64-hex-digit keys (``[readers]`` table). It must not be
readable by group or others: a key lets anyone forge that reader's scans.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

KEY_LEN = 32


class KeyFileError(Exception):
    """A key file that cannot be used, with the file and the reason."""


def load_reader_keys(path: Path) -> dict[int, bytes]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); "
                           "run chmod 600 on it")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: not a valid key file: {exc}") from None
    readers = raw.get("readers")
    if not isinstance(readers, dict):
        raise KeyFileError(f"{path}: needs a [readers] table")
    keys: dict[int, bytes] = {}
    for name, value in readers.items():
        if not name.isdecimal() or not 1 <= int(name) <= 0xFFFFFFFE or name != str(int(name)):
            raise KeyFileError(f"{path}: readers.{name}: not a reader id (1..4294967294)")
        try:
            key = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            key = b""
        if len(key) != KEY_LEN:
            raise KeyFileError(f"{path}: readers.{name}: key must be {KEY_LEN * 2} hex digits")
        keys[int(name)] = key
    return keys


def write_reader_keys(path: Path, keys: dict[int, bytes]) -> None:
    """Write ``keys`` with mode 600 from the first byte (never world-readable, even briefly)."""
    lines = ["[readers]"] + [f'{rid} = "{key.hex()}"' for rid, key in sorted(keys.items())]
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
