"""The gateway as ``attendance-provision`` reaches it: its own CLI, ``readers enrol``.

The command prefix is local (``attendance-gateway``) or remote (``ssh pi@gateway sudo -u
attendance attendance-gateway``); the key and MQTT password go on the command's stdin as JSON,
never in its argv (visible in ``ps`` on both machines) and never on screen. Each answer is one
JSON object; anything else (ssh failing, the command missing, a timeout) means unreachable.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

DEFAULT_PREFIX = "attendance-gateway"
DEFAULT_CONFIG = "/etc/attendance/gateway.toml"
TIMEOUT_S = 60


class GatewayError(Exception):
    """The gateway refused (``code`` from the registry) or could not be reached (``code`` is
    ``unreachable``); ``str()`` is bilingual."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Gateway:
    prefix: str = DEFAULT_PREFIX
    config: str = DEFAULT_CONFIG

    def _call(self, args: list[str], stdin: dict[str, Any] | None = None) -> dict[str, Any]:
        argv = [*shlex.split(self.prefix), "readers", "enrol", "--config", self.config, *args]
        try:
            done = subprocess.run(argv, input=json.dumps(stdin) if stdin else "",
                                  capture_output=True, text=True, timeout=TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GatewayError("unreachable", _unreachable(self.prefix, str(exc))) from None
        try:
            answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            ok = answer["ok"]
        except (ValueError, IndexError, KeyError, TypeError):
            detail = (done.stderr or done.stdout).strip()[-300:] or f"exit {done.returncode}"
            raise GatewayError("unreachable", _unreachable(self.prefix, detail)) from None
        if not ok:
            raise GatewayError(answer.get("code", "error"),
                               f"{answer.get('message_vi', 'Lỗi')} / {answer.get('message')}")
        return answer

    def check_new(self, reader_id: int, name: str) -> dict[str, Any]:
        """The id (and name) are free; returns the gateway's school."""
        return self._call([str(reader_id), "--check", "--new", "--name", name])

    def check_existing(self, reader_id: int) -> dict[str, Any]:
        """The reader is registered and active; returns its gate, school and last boot."""
        return self._call([str(reader_id), "--check"])

    def enrol(self, reader_id: int, name: str, gate: str, key: bytes,
              mqtt_password: str) -> dict[str, Any]:
        return self._call([str(reader_id), "--name", name, "--gate", gate],
                          {"key_hex": key.hex(), "mqtt_password": mqtt_password})

    def replace(self, reader_id: int, key: bytes, mqtt_password: str) -> dict[str, Any]:
        return self._call([str(reader_id), "--replace"],
                          {"key_hex": key.hex(), "mqtt_password": mqtt_password})

    def undo(self, reader_id: int, key_id: int) -> dict[str, Any]:
        return self._call([str(reader_id), "--undo", str(key_id)])


def _unreachable(prefix: str, detail: str) -> str:
    return (f"Không liên lạc được với cổng qua `{prefix}` / cannot reach the gateway through "
            f"`{prefix}`: {detail}")
