"""The reader application: asyncio tasks around the tap path, fed to a watchdog only when healthy.

Tasks: ``_poll`` (card driver -> tap path, every ``poll_ms``), ``_flush`` (RAM ring -> flash),
the feedback player, ``_heartbeat`` (status for the link), the link's own task
(``firmware/mqtt_link.py`` or ``firmware/bus_link.py``) and ``_watchdog``, which feeds the
hardware watchdog only while the poll and flush tasks have both made progress recently — a hung
driver, a stuck flash write or a dead event loop resets the reader instead of leaving a gate
without a working reader.
"""

import asyncio
import gc

from firmware.aio import sleep_ms
from firmware.debounce import Debouncer
from firmware.taps import TapRecorder
from firmware.ticks import ticks_diff, ticks_ms
from protocol import codec
from protocol.compat import const
from protocol.hmac256 import HmacSha256

FW_VERSION = "0.1.0"
_POLL_MS = const(40)
_FLUSH_MS = const(200)
_WDT_CHECK_MS = const(1000)
_POLL_STALL_MS = const(3000)
_FLUSH_STALL_MS = const(15000)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from firmware.clock import Clock
    from firmware.config import ReaderConfig
    from firmware.feedback import Feedback
    from firmware.queue import RecordQueue

    class CardReader(Protocol):
        tech: int
        uid: bytearray
        fault: bool

        def poll(self, now_ms: int) -> int: ...

    class Watchdog(Protocol):  # machine.WDT
        def feed(self) -> None: ...

    class Link(Protocol):  # the uploader of the reader-gateway link
        online: bool
        link_type: str
        rssi_dbm: int

        def send_status(self, heartbeat: bytes) -> None: ...

        async def run(self) -> None: ...


def _free_heap() -> int:
    mem_free = getattr(gc, "mem_free", None)  # MicroPython only
    return int(mem_free()) if mem_free is not None else 0


class ReaderApp:
    def __init__(self, config: "ReaderConfig", key: bytes, boot: int, reader: "CardReader",
                 feedback: "Feedback", queue: "RecordQueue", clock: "Clock",
                 watchdog: "Watchdog | None" = None, link: "Link | None" = None) -> None:
        self.config = config
        self.boot = boot
        self.reader = reader
        self.feedback = feedback
        self.queue = queue
        self.clock = clock
        self.watchdog = watchdog
        self.link = link
        self.signer = HmacSha256(key)
        self.debouncer = Debouncer(config.get("debounce_ms"))
        self.taps = TapRecorder(config.reader_id, boot, self.signer, queue, clock,
                                self.debouncer, feedback)
        self.flash_fault = False
        self.last_ack = (0, 0)
        self.scans = 0
        now = ticks_ms()
        self._poll_alive = now
        self._flush_alive = now
        self.watchdog_fed = 0

    # --- tasks ----------------------------------------------------------------------------------

    async def _poll(self) -> None:
        reader = self.reader
        while True:
            now = ticks_ms()
            n = reader.poll(now)
            if n and self.taps.sighting(reader.tech, reader.uid, n, now):
                self.scans += 1
            self.feedback.fault = reader.fault or self.flash_fault
            self.taps.online = self.link is not None and self.link.online
            self._poll_alive = now
            await sleep_ms(_POLL_MS)

    async def _flush(self) -> None:
        while True:
            try:
                self.queue.flush()
                self.flash_fault = False
            except OSError:
                self.flash_fault = True  # records stay in the RAM ring; retried next round
            self._flush_alive = ticks_ms()
            await sleep_ms(_FLUSH_MS)

    def healthy(self) -> bool:
        now = ticks_ms()
        return (ticks_diff(now, self._poll_alive) < _POLL_STALL_MS
                and ticks_diff(now, self._flush_alive) < _FLUSH_STALL_MS)

    async def _watchdog(self) -> None:
        while True:
            if self.watchdog is not None and self.healthy():
                self.watchdog.feed()
                self.watchdog_fed += 1
            await sleep_ms(_WDT_CHECK_MS)

    async def _heartbeat(self) -> None:
        while True:
            status = self.heartbeat()
            if self.link is not None:
                self.link.send_status(status)
            await sleep_ms(self.config.get("heartbeat_s") * 1000)

    async def run(self) -> None:
        """Run every task; if one fails, stop them all so the watchdog resets the reader."""
        coros = [self._poll(), self._flush(), self.feedback.run(), self._watchdog(),
                 self._heartbeat()]
        if self.link is not None:
            coros.append(self.link.run())
        tasks = [asyncio.create_task(c) for c in coros]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    # --- status ---------------------------------------------------------------------------------

    def faults(self) -> "list[str]":
        out = []
        if self.reader.fault:
            out.append("reader_chip")
        if self.flash_fault:
            out.append("flash")
        if self.queue.full:
            out.append("queue_full")
        return out

    def heartbeat(self, state: str = "") -> bytes:
        """A signed heartbeat (SPEC.md section 6) of the reader's state now."""
        time_s, _ = self.clock.now()
        uptime_ms = self.clock.uptime_ms()
        faults = self.faults()
        fields: dict[str, Any] = {
            "reader_id": self.config.reader_id, "boot": self.boot,
            "state": state or ("fault" if faults else "online"), "faults": faults,
            "fw_version": FW_VERSION,
            "link": self.link.link_type if self.link is not None else "none",
            "rssi_dbm": self.link.rssi_dbm if self.link is not None else 0,
            "clock_synced": self.clock.synced, "time_s": time_s, "uptime_s": uptime_ms // 1000,
            "free_heap": _free_heap(), "queue_depth": self.queue.depth,
            "oldest_unsent_age_s": self.queue.oldest_age_s(self.boot, uptime_ms, time_s,
                                                           self.clock.synced),
            "dropped": self.queue.dropped, "last_ack_boot": self.last_ack[0],
            "last_ack_seq": self.last_ack[1],
        }
        return codec.encode_heartbeat(fields, self.signer)

    def apply_config(self, changes: "dict[str, int]") -> None:
        """Settings changed by an authenticated command: take effect at once."""
        self.config.update(changes)
        self.debouncer.gap_ms = self.config.get("debounce_ms")
        self.feedback.volume = self.config.get("volume")
