"""The few file-system operations the queue and the boot counter need, over ``os`` and ``open``.

Runs unchanged on MicroPython (LittleFS on the ESP32, the VM's file system in the tests) and on
CPython. Every byte written goes through :meth:`FS.write`, which counts it (``written``), so the
flash-write benchmark measures here and the power-cut injector of the tests (a subclass) can cut a
write short. A file written with ``open``/``write``/``close`` is durable when ``close`` returns:
LittleFS commits on close; on CPython ``close`` also calls ``os.fsync`` when ``sync`` is true.
"""

import os

from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    File = Any  # the runtime's file object: write, readinto, seek, flush, close
    Buf = bytes | bytearray | memoryview

_SIZE = const(6)  # index of st_size in the os.stat tuple, on both runtimes


class FS:
    """Thin file layer. ``sync``: fsync on close where the runtime has it (CPython)."""

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.written = 0  # bytes handed to write() since creation
        self.writes = 0  # write() calls

    # --- files ---------------------------------------------------------------------------------

    def open(self, path: str, mode: str) -> "File":
        """``mode`` is one of ``rb``, ``wb`` (create or truncate), ``ab`` (create or append)."""
        return open(path, mode)

    def write(self, f: "File", data: "Buf") -> None:
        n = len(data)
        self.written += n
        self.writes += 1
        done = f.write(data)
        if done is not None and done != n:
            raise OSError(28, "short write")  # ENOSPC on both runtimes' ports

    def close(self, f: "File") -> None:
        """Flush and close; the data is durable when this returns."""
        try:
            if self.sync:
                f.flush()
                fsync = getattr(os, "fsync", None)
                if fsync is not None:
                    fsync(f.fileno())
        finally:
            f.close()

    def readinto(self, f: "File", buf: "bytearray | memoryview") -> int:
        n = f.readinto(buf)
        return 0 if n is None else n

    def seek(self, f: "File", pos: int) -> None:
        f.seek(pos)

    # --- whole files ---------------------------------------------------------------------------

    def read_file(self, path: str) -> "bytes | None":
        """The file's bytes, or None when it does not exist or cannot be read."""
        try:
            f = self.open(path, "rb")
        except OSError:
            return None
        try:
            return f.read()
        finally:
            f.close()

    def write_file(self, path: str, data: "Buf") -> None:
        """Create or replace ``path`` with ``data`` (not atomic: see ``rename``)."""
        f = self.open(path, "wb")
        try:
            self.write(f, data)
        finally:
            self.close(f)

    def append_file(self, path: str, data: "Buf") -> None:
        f = self.open(path, "ab")
        try:
            self.write(f, data)
        finally:
            self.close(f)

    # --- names ---------------------------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing ``dst`` (atomic on LittleFS and POSIX)."""
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, path: str) -> "list[str]":
        return os.listdir(path)

    def size(self, path: str) -> int:
        """Size in bytes, or -1 when ``path`` does not exist."""
        try:
            return os.stat(path)[_SIZE]
        except OSError:
            return -1

    def exists(self, path: str) -> bool:
        return self.size(path) >= 0

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents where missing."""
        part = "/" if path.startswith("/") else ""
        for name in path.split("/"):
            if name:
                part = join(part, name)
                if not self.exists(part):
                    self.mkdir(part)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)


def join(directory: str, name: str) -> str:
    if not directory or directory.endswith("/"):
        return directory + name
    return directory + "/" + name
