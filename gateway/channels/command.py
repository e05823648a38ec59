"""Local command hook: a school's own executable gets each message as JSON on stdin.

``path`` (absolute, executable; run directly, never through a shell) with ``args``; stdin is
``gateway.channels._base.message_payload`` (the phone number only with ``include_phone =
true``), one JSON object, then EOF. The environment is minimal: ``PATH=/usr/bin:/bin``,
``LANG=C.UTF-8``, ``NOTIFY_MESSAGE_ID`` (the idempotency key, also in the JSON) and the
``env`` table of the settings; the working directory is ``/``; stdout and stderr are read and
dropped (they may hold personal data) a bounded chunk at a time.

Exit 0: delivered. Exit 75 (``EX_TEMPFAIL``, sysexits.h): retry. Any other exit: parked with
the code. Past ``timeout_s`` the hook's whole process group is killed and the message retried;
killed by a signal: retry. A hook that cannot be started (missing, not executable) is
:class:`TargetDown`. Never more than ``concurrency`` hook processes run at once, across all
``deliver`` calls of the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.channels import ChannelConfig, Message
from gateway.channels._base import channel_settings, json_bytes, message_payload
from gateway.forwarders import DeliveryResult, TargetDown
from gateway.forwarders._common import deliver_each
from gateway.types import Clock

log = logging.getLogger("gateway.notify.command")

SETTINGS = ("path", "args", "env", "timeout_s", "include_phone")
EX_TEMPFAIL = 75
BASE_ENV: Mapping[str, str] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_OUTPUT_MAX = 64 * 1024  # bytes of stdout/stderr read (and dropped) per run


@dataclass(frozen=True)
class CommandSettings:
    path: Path
    args: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    timeout_s: float
    include_phone: bool


def parse_settings(config: ChannelConfig, config_path: Path | None = None) -> CommandSettings:
    section = channel_settings(config, config_path)
    section.check_known(SETTINGS)
    path = Path(section.text("path"))
    if not path.is_absolute():
        raise section.error("path", "must be an absolute path (no shell, no PATH lookup)")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise section.error("path", f"{path} is not an executable file")
    args = section.table.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise section.error("args", "must be a list of strings")
    env = section.table.get("env", {})
    if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str)
            for k, v in env.items()):
        raise section.error("env", 'must be a table of strings like { SCHOOL = "THCS A" }')
    return CommandSettings(
        path=path, args=tuple(args), env=dict(env),
        timeout_s=section.number("timeout_s", 0.1, 600.0, 10.0),
        include_phone=section.boolean("include_phone", False),
    )


def build(config: ChannelConfig, *, clock: Clock, config_path: Path | None = None
          ) -> CommandChannel:
    """The channel for one ``[[notify.channel]]`` table of ``type = "command"``."""
    return CommandChannel(config, parse_settings(config, config_path), clock=clock)


class CommandChannel:
    def __init__(self, config: ChannelConfig, settings: CommandSettings, *, clock: Clock
                 ) -> None:
        self.name = config.name
        self.max_batch = config.max_batch
        self.concurrency = config.concurrency
        self.settings = settings
        self._clock = clock
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self.running = 0  # hook processes alive now (tests check the bound)
        self.most_running = 0

    def __repr__(self) -> str:
        return f"CommandChannel(name={self.name!r}, path={str(self.settings.path)!r})"

    async def close(self) -> None:
        return None

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        return await deliver_each(self.name, messages, max(1, self.concurrency), self._one, log)

    async def _one(self, message: Message) -> DeliveryResult:
        async with self._slots:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                return await self._run(message)
            finally:
                self.running -= 1

    async def _run(self, message: Message) -> DeliveryResult:
        settings = self.settings
        stdin = json_bytes(message_payload(message, include_phone=settings.include_phone))
        env = {**BASE_ENV, **settings.env, "NOTIFY_MESSAGE_ID": message.message_id}
        try:
            process = await asyncio.create_subprocess_exec(
                str(settings.path), *settings.args, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
                cwd="/", start_new_session=True)
        except OSError as exc:
            raise TargetDown(f"the hook cannot be started: {exc.strerror}") from None
        try:
            await asyncio.wait_for(self._talk(process, stdin), settings.timeout_s)
        except TimeoutError:
            _kill_group(process)
            await process.wait()
            log.warning("notification hook timed out",
                        extra={"channel": self.name, "timeout_s": settings.timeout_s})
            return DeliveryResult(message.item_id, "retry", reason=(
                f"the hook ran longer than {settings.timeout_s:g} s and was killed"))
        except BaseException:
            _kill_group(process)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
            raise
        code = process.returncode
        assert code is not None
        if code == 0:
            return DeliveryResult(message.item_id, "delivered")
        if code == EX_TEMPFAIL:
            return DeliveryResult(message.item_id, "retry",
                                  reason="the hook asked to retry (exit 75, EX_TEMPFAIL)")
        if code < 0:
            return DeliveryResult(message.item_id, "retry",
                                  reason=f"the hook was killed by signal {-code}")
        return DeliveryResult(message.item_id, "parked", reason=f"the hook exited with {code}")

    @staticmethod
    async def _talk(process: asyncio.subprocess.Process, stdin: bytes) -> None:
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin)
            await process.stdin.drain()
        process.stdin.close()
        await asyncio.gather(_drain(process.stdout), _drain(process.stderr))
        await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read and drop a stream, a bounded chunk at a time, so the hook never blocks on a full
    pipe and its output never fills our memory."""
    while await stream.read(_OUTPUT_MAX):
        pass


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
