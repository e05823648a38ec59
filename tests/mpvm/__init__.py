"""Run code on the real MicroPython VM (the official WebAssembly port, pinned in package.json).

One Node process (``runner.mjs``) serves many runs over stdin/stdout JSON lines; each run gets a
fresh VM, so runs are isolated from each other. Each run sees:

- ``/protocol/``: the runtime-neutral modules of protocol/ (see ``tests.project_files``),
- ``/firmware/``: the whole firmware tree,
- any extra files the test passes (``files={"vm/path": str | bytes | Path}``),

with ``/`` as the working directory (first on ``sys.path``, as on the device), so
``import protocol.codec`` and ``import firmware.x`` work. Project files are read from disk on every
run, so edits are picked up without restarting anything.

The code runs through ``runPythonAsync``: plain code behaves as usual and top-level ``await`` works.
This port has no blocking ``asyncio.run``; when the code (or a project file) mentions
``asyncio.run(``, a shim starts the coroutine as a task and the run awaits it after the code's last
line. Prefer ``await main()`` in test code.

Heap: ``heapsize`` sets the VM's initial GC heap (default 1 MiB). The port grows the heap on demand
(split heap), so ``gc.mem_free()`` is not meaningful; measure with ``gc.mem_alloc()`` deltas.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import textwrap
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.project_files import REPO_ROOT, firmware_tree, protocol_sources

__all__ = [
    "DEFAULT_TIMEOUT",
    "MPVM",
    "MPVMError",
    "MPVMTimeout",
    "MicroPythonError",
    "RunResult",
]

RUNNER = Path(__file__).with_name("runner.mjs")
PACKAGE = "@micropython/micropython-webassembly-pyscript"
DEFAULT_TIMEOUT = 60.0
STARTUP_TIMEOUT = 30.0

FileSpec = str | bytes | os.PathLike[str]


class MPVMError(Exception):
    """The harness itself failed (Node missing, runner crashed, protocol error)."""


class MPVMTimeout(MPVMError):
    """A run did not finish in time; the Node process was killed and restarts on the next run."""


class MicroPythonError(MPVMError):
    """The code raised on MicroPython. ``traceback`` is MicroPython's own traceback text."""

    def __init__(self, exc_type: str, traceback: str, stdout: str = "", stderr: str = "") -> None:
        self.exc_type = exc_type
        self.traceback = traceback
        self.stdout = stdout
        self.stderr = stderr
        message = f"MicroPython raised {exc_type}:\n{traceback.rstrip()}"
        if stdout:
            message += f"\n--- stdout before the error ---\n{stdout.rstrip()}"
        if stderr:
            message += f"\n--- stderr ---\n{stderr.rstrip()}"
        super().__init__(message)


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    load_ms: float  # fresh VM + copying files
    run_ms: float  # the code itself


class MPVM:
    """A session-long Node process serving fresh MicroPython VMs. Not thread-safe across runs."""

    def __init__(
        self,
        root: Path = REPO_ROOT,
        *,
        node: str | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self.node = node or shutil.which("node")
        self.default_timeout = default_timeout
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=200)
        self._next_id = 0
        self._lock = threading.Lock()
        self._stderr_thread: threading.Thread | None = None

    # -- process management -------------------------------------------------------------------

    def _check_installed(self) -> str:
        if not self.node:
            raise MPVMError("node is not installed: run `make setup`")
        if not (self.root / "node_modules" / PACKAGE / "package.json").is_file():
            raise MPVMError(f"{PACKAGE} is not installed in node_modules/: run `make setup`")
        return self.node

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        node = self._check_installed()
        self._lines = queue.Queue()
        self._stderr.clear()
        proc = subprocess.Popen(
            [node, str(RUNNER)],
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._proc = proc
        lines = self._lines
        stderr = self._stderr

        def read_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                stderr.append(line.decode("utf-8", "replace"))

        threading.Thread(target=read_stdout, name="mpvm-stdout", daemon=True).start()
        self._stderr_thread = threading.Thread(target=read_stderr, name="mpvm-stderr", daemon=True)
        self._stderr_thread.start()
        hello = self._receive(time.monotonic() + STARTUP_TIMEOUT, what="start-up")
        if not hello.get("ready"):
            self.close()
            raise MPVMError(f"unexpected first message from the runner: {hello!r}")
        self.info = hello

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> MPVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stderr_tail(self) -> str:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2)
        # Node echoes the offending source line first; in a minified module that line is huge.
        lines = [ln if len(ln) < 500 else ln[:200] + " [...]\n" for ln in self._stderr]
        return "".join(lines[-60:])

    def _receive(self, deadline: float, *, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        try:
            line = self._lines.get(timeout=max(remaining, 0.0))
        except queue.Empty:
            self._kill()
            raise MPVMTimeout(f"MicroPython {what} timed out; the VM process was killed") from None
        if line is None:
            proc, self._proc = self._proc, None
            code = proc.wait() if proc is not None else None
            raise MPVMError(
                f"the MicroPython runner exited (status {code}) during {what}:\n"
                + self._stderr_tail()
            )
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            self._kill()
            raise MPVMError(f"bad line from the runner: {line[:200]!r}") from exc
        return message

    # -- runs -------------------------------------------------------------------------------------

    def _project_files(self) -> list[list[str]]:
        files = []
        for p in protocol_sources(self.root):
            rel = p.relative_to(self.root).as_posix()
            files.append(["/" + rel, "host", str(p)])
        for p in firmware_tree(self.root):
            rel = p.relative_to(self.root).as_posix()
            files.append(["/" + rel, "host", str(p)])
        return files

    @staticmethod
    def _extra_files(files: Mapping[str, FileSpec]) -> list[list[str]]:
        out = []
        for vm_path, spec in files.items():
            path = vm_path if vm_path.startswith("/") else "/" + vm_path
            if isinstance(spec, str):
                out.append([path, "text", spec])
            elif isinstance(spec, bytes | bytearray | memoryview):
                out.append([path, "base64", base64.b64encode(bytes(spec)).decode("ascii")])
            else:
                out.append([path, "host", str(Path(spec).resolve())])
        return out

    def execute(
        self,
        code: str,
        *,
        files: Mapping[str, FileSpec] | None = None,
        timeout: float | None = None,
        heapsize: int | None = None,
        pystack: int | None = None,
        project: bool = True,
        asyncio_run_shim: bool | None = None,
    ) -> RunResult:
        """Run ``code`` (dedented) in a fresh VM and return its output.

        Raises :class:`MicroPythonError` if the code raises, :class:`MPVMTimeout` after ``timeout``
        seconds (default 60), :class:`MPVMError` if the harness fails.
        """
        code = textwrap.dedent(code)
        wire_files = (self._project_files() if project else []) + self._extra_files(files or {})
        if asyncio_run_shim is None:
            asyncio_run_shim = "asyncio.run(" in code or any(
                _mentions_asyncio_run(spec) for spec in wire_files
            )
        timeout = self.default_timeout if timeout is None else timeout
        with self._lock:
            self.start()
            self._next_id += 1
            request = {
                "id": self._next_id,
                "code": code,
                "files": wire_files,
                "heapsize": heapsize,
                "pystack": pystack,
                "cwd": "/",
                "asyncioRunShim": asyncio_run_shim,
            }
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
            except OSError as exc:
                self._kill()
                raise MPVMError(f"the MicroPython runner is gone:\n{self._stderr_tail()}") from exc
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = self._receive(deadline, what="run")
                except MPVMTimeout:
                    raise MPVMTimeout(
                        f"MicroPython run did not finish within {timeout:g} s; the VM process was "
                        "killed (the next run starts a new one)"
                    ) from None
                if reply.get("id") == request["id"]:
                    break
        if not reply["ok"]:
            error = reply["error"] or {}
            raise MicroPythonError(
                error.get("type", "?"), error.get("traceback", ""), reply["stdout"], reply["stderr"]
            )
        return RunResult(reply["stdout"], reply["stderr"], reply["loadMs"], reply["runMs"])

    def run(self, code: str, **kwargs: Any) -> str:
        """Like :meth:`execute` but returns only stdout."""
        return self.execute(code, **kwargs).stdout


def _mentions_asyncio_run(spec: list[str]) -> bool:
    vm_path, kind, data = spec
    if not vm_path.endswith(".py"):
        return False
    if kind == "host":
        try:
            data = Path(data).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    elif kind == "base64":
        return False
    return "asyncio.run(" in data
