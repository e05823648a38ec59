"""A reader on a serial port, reached through mpremote's raw REPL.

Every failure a technician can meet (no such port, port busy, a board that does not answer like
MicroPython, code that raises on the board) becomes a :class:`DeviceError` with a bilingual
message. Files go over as base64 in large chunks: one round trip per 3 KB instead of mpremote's
256 bytes.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import serial
from mpremote.transport import TransportError  # type: ignore[import-untyped]
from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]

_CHUNK = 3072  # raw bytes per exec (4 KB of base64)

# Runs on the board: path and SHA-256 of the given files and of every file under the given folders.
_LIST_HASHES = """
import os, hashlib, binascii
def _walk(p):
    try:
        mode = os.stat(p)[0]
    except OSError:
        return
    if mode & 0x4000:
        for n in os.listdir(p):
            _walk(p + '/' + n)
    else:
        h = hashlib.sha256()
        b = bytearray(512)
        with open(p, 'rb') as f:
            while True:
                k = f.readinto(b)
                if not k:
                    break
                h.update(b if k == 512 else b[:k])
        print(p, binascii.hexlify(h.digest()).decode())
for _d in %r:
    _walk(_d)
"""


class DeviceError(Exception):
    """A problem with the board or the port; ``str()`` is the bilingual message."""


class Device:
    """An open raw-REPL session. Use as a context manager."""

    def __init__(self, port: str, *, soft_reset: bool = True) -> None:
        self.port = port
        try:
            self._t = SerialTransport(port, 115200)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise DeviceError(
                f"Không mở được cổng {port} (sai cổng, thiếu quyền hoặc đang bị chương trình "
                f"khác dùng) / cannot open port {port} (wrong port, no permission or busy): "
                f"{exc}") from None
        try:
            self._t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=5)
        except (TransportError, serial.SerialException, OSError) as exc:
            self._t.close()
            raise DeviceError(
                f"Thiết bị ở {port} không trả lời như MicroPython (chưa nạp firmware, hoặc đang ở "
                f"chế độ nạp) / the device on {port} does not answer like MicroPython (no "
                f"firmware yet, or in bootloader mode): {exc}") from None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self._t.exit_raw_repl()
        with contextlib.suppress(serial.SerialException, OSError):
            self._t.close()

    def exec(self, code: str, timeout: float = 10) -> str:
        """Run ``code`` on the board and return what it printed."""
        try:
            out, err = self._t.exec_raw(code, timeout=timeout)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise DeviceError(f"Mất kết nối với thiết bị ở {self.port} / lost the device on "
                              f"{self.port}: {exc}") from None
        if err:
            raise DeviceError(f"Lỗi trên thiết bị / error on the device:\n"
                              f"{err.decode('utf-8', 'replace').strip()}")
        text: str = out.decode("utf-8", "replace")
        return text

    def eval(self, expression: str) -> object:
        return ast.literal_eval(self.exec(f"print(repr({expression}))").strip())

    def stream(self, code: str, timeout: float) -> Iterator[str]:
        """Start ``code`` and yield the lines it prints until ``timeout`` passes or it returns
        to the prompt (lines printed by tasks it left running also count)."""
        try:
            self._t.exec_raw_no_follow(code)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise DeviceError(f"Mất kết nối với thiết bị ở {self.port} / lost the device on "
                              f"{self.port}: {exc}") from None
        port = self._t.serial
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            try:
                port.timeout = 0.1
                buf += port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise DeviceError(f"Mất kết nối với thiết bị / lost the device: {exc}") from None
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.replace(b"\x04", b"").decode("utf-8", "replace").strip("\r>")

    def interrupt(self) -> None:
        """Ctrl-C: stop what runs on the board."""
        self._t.serial.write(b"\x03")

    # -- files ---------------------------------------------------------------------------------

    def hashes(self, paths: list[str]) -> dict[str, str]:
        """``{path: sha256 hex}`` of ``paths`` on the board, folders walked (absolute paths)."""
        out = self.exec(_LIST_HASHES % (paths,), timeout=60)
        result = {}
        for line in out.splitlines():
            path, _, digest = line.strip().rpartition(" ")
            if path:
                result[path] = digest
        return result

    def write_file(self, path: str, data: bytes,
                   progress: Callable[[int], None] | None = None) -> None:
        """Create or replace ``path``; parent folders are created."""
        parent = path.rsplit("/", 1)[0]
        code = ["import os, binascii"]
        if parent:
            code.append(_MAKEDIRS % (parent,))
        code.append(f"f = open({path!r}, 'wb')")
        chunks = [data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            line = f"f.write(binascii.a2b_base64({base64.b64encode(chunk)!r}))"
            if i == len(chunks) - 1:
                line += "\nf.close()"
            self.exec("\n".join([*code, line]) if i == 0 else line)
            if progress is not None:
                progress(len(chunk))

    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""
        out = self.exec(
            f"import binascii\ntry:\n f = open({path!r}, 'rb')\nexcept OSError:\n print('-')\n"
            "else:\n print(binascii.b2a_base64(f.read()).decode().strip() or '=')\n f.close()")
        text = out.strip()
        if text == "-":
            return None
        return b"" if text == "=" else base64.b64decode(text)

    def remove(self, paths: list[str]) -> None:
        """Delete files (missing ones are fine), then the folders left empty."""
        self.exec(_REMOVE % (paths,))

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


_MAKEDIRS = """p = ''
for n in %r.split('/'):
    if n:
        p += '/' + n
        try:
            os.mkdir(p)
        except OSError:
            pass"""

_REMOVE = """import os
for p in %r:
    try:
        os.remove(p)
    except OSError:
        pass
    d = p.rsplit('/', 1)[0]
    while d:
        try:
            os.rmdir(d)
        except OSError:
            break
        d = d.rsplit('/', 1)[0]"""

