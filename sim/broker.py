"""Real Mosquitto brokers for the demo, tests and benchmarks: config, credentials, ACLs, process.

Every broker listens on 127.0.0.1 only, on a free port, with TCP_NODELAY on (QoS 1 round trips stall
on delayed ACKs without it) and persistence off. Later tests add per-reader credentials and ACLs::

    pw = write_password_file(tmp_path / "passwd", {"reader-01": "secret"})
    acl = write_acl_file(tmp_path / "acl", ["user reader-01", "topic write att/r/reader-01/#"])
    with MosquittoBroker(tmp_path, allow_anonymous=False, password_file=pw, acl_file=acl) as b:
        ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class BrokerError(RuntimeError):
    pass


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = Path(d) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_mosquitto() -> str | None:
    """Path of mosquitto (Debian puts it in /usr/sbin, which is often not on a user's PATH)."""
    return _find("mosquitto")


def find_mosquitto_passwd() -> str | None:
    return _find("mosquitto_passwd")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def write_config(
    config_dir: Path,
    *,
    port: int,
    host: str = LOOPBACK,
    allow_anonymous: bool = True,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    log_file: Path | None = None,
    extra_lines: Iterable[str] = (),
    name: str = "mosquitto.conf",
) -> Path:
    """Write a Mosquitto 2.x config into ``config_dir`` and return its path."""
    config_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_file or config_dir / "mosquitto.log"
    lines = [
        "# Written by sim/broker.py for one development broker.",
        "per_listener_settings false",
        f"listener {port} {host}",
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        "set_tcp_nodelay true",
        "persistence false",
        f"log_dest file {log_file}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Run as root would otherwise drop to the "mosquitto" user, which cannot read a test's
        # private temporary directory.
        lines.append("user root")
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    lines.extend(extra_lines)
    path = config_dir / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Create a Mosquitto password file (hashed with mosquitto_passwd) for ``users``."""
    tool = find_mosquitto_passwd()
    if tool is None:
        raise BrokerError("mosquitto_passwd not found: run `make setup`")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    path.chmod(0o600)
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


def write_acl_file(path: Path, lines: Iterable[str]) -> Path:
    """Write an ACL file, e.g. ``["user reader-01", "topic write att/r/reader-01/#"]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def wait_for_port(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class MosquittoBroker:
    """A Mosquitto process on a free loopback port, configured by :func:`write_config`."""

    def __init__(
        self,
        config_dir: Path,
        *,
        port: int | None = None,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra_lines: Iterable[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.host = LOOPBACK
        self.port = port or 0
        self._fixed_port = port is not None
        self.allow_anonymous = allow_anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.extra_lines = list(extra_lines)
        self.start_timeout = start_timeout
        self.config_path: Path | None = None
        self.log_path = self.config_dir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def start(self) -> MosquittoBroker:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto not found: run `make setup`")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            self.config_path = write_config(
                self.config_dir,
                port=self.port,
                host=self.host,
                allow_anonymous=self.allow_anonymous,
                password_file=self.password_file,
                acl_file=self.acl_file,
                log_file=self.log_path,
                extra_lines=self.extra_lines,
            )
            out = (self.config_dir / "mosquitto.out").open("ab")
            try:
                self.process = subprocess.Popen(  # own session: Ctrl-C stops us, not it
                    [binary, "-c", str(self.config_path)], start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            finally:
                out.close()
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if wait_for_port(self.host, self.port, min(deadline, time.monotonic() + 0.25)):
                    return self
            output = self._output()
            self.stop()
            if "in use" in output and attempt + 1 < attempts:
                continue
            raise BrokerError(
                f"mosquitto did not accept connections on {self.host}:{self.port} within "
                f"{self.start_timeout:g} s:\n{output[-4000:]}"
            )
        raise AssertionError("unreachable")

    def _output(self) -> str:
        try:
            return (self.config_dir / "mosquitto.out").read_text(errors="replace")
        except OSError:
            return self.log_text()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
