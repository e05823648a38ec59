"""systemd integration without a dependency: ``sd_notify`` datagrams and the service watchdog.

The unit (``hardware/gateway/attendance-gateway.service``) is ``Type=notify`` with
``WatchdogSec=30s`` and ``NotifyAccess=main``. systemd passes ``NOTIFY_SOCKET`` (a path, or an
abstract socket name starting with ``@``) and ``WATCHDOG_USEC``/``WATCHDOG_PID``; this module
speaks the protocol of sd_notify(3) itself: one ``AF_UNIX`` datagram of newline-separated
``KEY=VALUE`` lines per message.

:func:`supervise` runs beside the transports in ``attendance-gateway run``:

* ``READY=1`` once started: by then the database is open and migrated, the readers' keys are
  loaded, the ingest writer runs and the transports have been started. (Not "once the broker
  answered": a broker that is down must not keep the unit in "activating" until systemd gives
  up, while RS-485 readers are being served; the MQTT state is in ``STATUS=`` instead.)
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``, but only while the gateway is healthy: each period
  a no-op transaction goes through the ingest's own queue and writer thread
  (``Ingest.run_in_transaction``) and must come back within the period. Its answer proves the
  event loop runs (it delivers the answer and sends the ping) and that the writer thread is alive
  and moving: idle, it answers at once; busy, it answers once the messages queued before the
  probe are handled. A writer stuck on the disk or in a deadlock never answers, the pings stop
  and systemd restarts the service after ``WatchdogSec`` (records are safe: readers keep them
  until acknowledged). A probe whose transaction *failed* (database locked, disk full) still
  proves a responsive writer: a restart would not cure that, the log and metrics say it.
* ``STATUS=…`` lines for ``systemctl status`` (running, MQTT connected or not, writer stalled).
* ``STOPPING=1`` as soon as a graceful stop begins.

Outside systemd (no ``NOTIFY_SOCKET``) :func:`supervise` returns at once and costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.ingest import Ingest

log = logging.getLogger("gateway.systemd")

Probe = Callable[[], Awaitable[object]]


class Notifier:
    """Sends sd_notify(3) messages to ``NOTIFY_SOCKET``; does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) as one datagram; True if sent.

        Never blocks and never raises: a notification that cannot be sent is logged once.
        """
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            target: bytes = b"\0" + os.fsencode(address[1:])
        elif address.startswith("/"):
            target = os.fsencode(address)
        else:  # e.g. vsock: (a virtual machine's manager), not a service on a Pi
            self._warn(f"unsupported NOTIFY_SOCKET address {address!r}")
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, target)
        except OSError as exc:
            self._warn(f"cannot notify systemd: {exc}")
            return False
        return True

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("systemd notification not sent", extra={"error": text})


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when the
    service has no watchdog or the watchdog is meant for another process (``WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _noop(conn: sqlite3.Connection) -> None:
    return None


def ingest_probe(ingest: Ingest) -> Probe:
    """A probe that passes once the ingest's writer thread ran an empty transaction."""
    async def probe() -> object:
        return await ingest.run_in_transaction(_noop)
    return probe


STATUS_RUNNING = "đang chạy / running"
STATUS_MQTT_UP = "MQTT đã kết nối / MQTT connected"
STATUS_MQTT_DOWN = "chờ máy chủ MQTT / waiting for the MQTT broker"
STATUS_STALLED = ("bộ ghi không trả lời, có thể bị khởi động lại / "
                  "writer not answering, may be restarted")
STATUS_STOPPING = "đang dừng / stopping"


async def supervise(ingest: Ingest, stop: asyncio.Event,
                    connected: asyncio.Event | None = None, *,
                    environ: Mapping[str, str] | None = None,
                    probe: Probe | None = None) -> None:
    """Tell systemd the gateway is ready, keep its watchdog fed while healthy, say when it stops.

    ``ingest``: the running :class:`gateway.ingest.Ingest` (its writer is probed);
    ``connected``: set while the MQTT session is up (shown in ``STATUS=``). Returns when
    ``stop`` is set (after ``STOPPING=1``), or at once outside systemd.
    """
    notifier = Notifier.from_environment(environ)
    if not notifier.enabled:
        return
    interval = watchdog_interval(environ)
    check = probe or ingest_probe(ingest)
    stopping_sent = False

    def status(healthy: bool) -> str:
        parts = [STATUS_RUNNING]
        if connected is not None:
            parts.append(STATUS_MQTT_UP if connected.is_set() else STATUS_MQTT_DOWN)
        if not healthy:
            parts.append(STATUS_STALLED)
        return "STATUS=" + "; ".join(parts)

    try:
        notifier.notify("READY=1", status(True))
        log.info("systemd notified: ready", extra={"watchdog_s": interval})
        await _feed(notifier, stop, check, interval or 15.0, interval is not None, status)
        notifier.notify("STOPPING=1", "STATUS=" + STATUS_STOPPING)
        stopping_sent = True
    finally:
        if not stopping_sent:  # cancelled: the gateway is going down all the same
            notifier.notify("STOPPING=1", "STATUS=" + STATUS_STOPPING)


async def _feed(notifier: Notifier, stop: asyncio.Event, check: Probe, interval: float,
                watchdog: bool, status: Callable[[bool], str]) -> None:
    """Every ``interval``: probe; ping the watchdog if the probe came back; keep STATUS fresh."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[Any] | None = None
    last_status = status(True)
    stalled = False
    try:
        while not stop.is_set():
            began = loop.time()
            if pending is None:
                pending = asyncio.ensure_future(check())
            waiters: set[asyncio.Future[Any]] = {pending, stopped}
            await asyncio.wait(waiters, timeout=interval,
                               return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                break
            healthy = pending.done()
            if healthy:
                exc = pending.exception()
                if exc is not None:  # the writer answered: a failed transaction, not a hang
                    log.warning("watchdog probe failed", extra={"error": str(exc)})
                pending = None
                if stalled:
                    log.warning("ingest writer answers again")
            elif not stalled:
                log.error("ingest writer not answering: watchdog not fed",
                          extra={"waited_s": round(loop.time() - began, 3)})
            stalled = not healthy
            fields = []
            if healthy and watchdog:
                fields.append("WATCHDOG=1")
            text = status(healthy)
            if text != last_status:
                fields.append(text)
                last_status = text
            if fields:
                notifier.notify(*fields)
            if healthy:  # the rest of the period; a stalled probe is waited on again at once
                rest = interval - (loop.time() - began)
                if rest > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stopped), rest)
                late = loop.time() - began - interval
                if late > interval:
                    log.warning("event loop was blocked", extra={"late_s": round(late, 3)})
    finally:
        stopped.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
        for future in (stopped, pending):
            if future is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await future
