"""A virtual reader board on a pseudo-terminal: the real MicroPython VM behind a serial port.

``VirtualBoard().port`` (``/dev/pts/N``) is opened by pyserial, mpremote and the technician
tools exactly like a USB serial adapter; the far end is ``vboard.mjs``: the pinned WebAssembly
MicroPython VM fed byte by byte through its own REPL (friendly, raw and raw-paste modes, soft
reset with the file system kept). The VM has no ``machine`` module, so the board is given one
(``vboard_machine.py``) whose SPI bus reaches an emulated MFRC522 (tests/firmware/emulators) and
whose pins and PWM remember what was done to them, plus ``network`` (a Wi-Fi access point) and
``socket`` (the school LAN with its MQTT broker): the real ``firmware/hw_esp32.py`` runs on it.
``wiring`` becomes ``/lib/vboard.json``, which those modules read (see each for its keys).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import tty
from pathlib import Path
from types import TracebackType

from tests.project_files import REPO_ROOT

HERE = Path(__file__).parent
RUNNER = HERE / "vboard.mjs"
EMULATOR = REPO_ROOT / "tests" / "firmware" / "emulators" / "mfrc522.py"


class VirtualBoard:
    def __init__(self, wiring: dict[str, object] | None = None, *,
                 files: dict[str, bytes] | None = None, heapsize: int = 2 * 1024 * 1024,
                 hardware: bool = True) -> None:
        board_files: dict[str, bytes] = {}
        if hardware:
            board_files["/lib/machine.py"] = (HERE / "vboard_machine.py").read_bytes()
            board_files["/lib/network.py"] = (HERE / "vboard_network.py").read_bytes()
            board_files["/lib/socket.py"] = (HERE / "vboard_socket.py").read_bytes()
            board_files["/lib/mfrc522_emulator.py"] = EMULATOR.read_bytes()
            board_files["/lib/vboard.json"] = json.dumps(wiring or {}).encode()
        board_files.update(files or {})
        self._setup = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        json.dump({"heapsize": heapsize,
                   "files": {p: base64.b64encode(d).decode() for p, d in board_files.items()}},
                  self._setup)
        self._setup.close()
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        self.port = os.ttyname(self.slave_fd)
        node = shutil.which("node")
        assert node, "node is not installed: run make setup"
        self._proc = subprocess.Popen([node, str(RUNNER), self._setup.name], cwd=REPO_ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self.stderr = bytearray()
        self._unplugged = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True)
                         for f in (self._to_vm, self._from_vm, self._errors)]
        for t in self._threads:
            t.start()

    def _to_vm(self) -> None:
        assert self._proc.stdin is not None
        while not self._unplugged.is_set():
            try:
                if not select.select([self.master_fd], [], [], 0.05)[0]:
                    continue
                data = os.read(self.master_fd, 4096)
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except OSError:
                return

    def _from_vm(self) -> None:
        assert self._proc.stdout is not None
        while data := self._proc.stdout.read1(4096):
            view = memoryview(data)
            while view:  # a pty takes what fits in its buffer: write the rest after
                try:
                    view = view[os.write(self.master_fd, view):]
                except OSError:
                    return

    def _errors(self) -> None:
        assert self._proc.stderr is not None
        while data := self._proc.stderr.read1(4096):
            self.stderr += data

    def unplug(self) -> None:
        """The USB cable is pulled: the board is gone and the port reports an I/O error."""
        if self._unplugged.is_set():
            return
        self._unplugged.set()
        self._proc.kill()
        self._proc.wait()
        self._threads[0].join()
        self._threads[1].join()
        os.close(self.master_fd)

    def close(self) -> None:
        self.unplug()
        os.close(self.slave_fd)
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # stdin: unsent bytes to a killed process
                    stream.close()
        os.unlink(self._setup.name)

    def __enter__(self) -> VirtualBoard:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
