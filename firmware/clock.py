"""The reader's sense of time, with its provenance (invariant 5).

Wall time comes from the RTC, anchored at the last sync (NTP or the gateway's ``set_time``) and
advanced by the tick counter, which gives milliseconds the RTC does not keep. Until a sync in this
boot the clock is "unsynced" and records say so; ``uptime_ms`` extends the wrapping 30-bit tick
counter to the protocol's 32-bit milliseconds since boot. Both must be read at least every 6 days
(half the tick period), which the heartbeat does.
"""

import time

from firmware.ticks import ticks_diff, ticks_ms

_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports with a 2000 epoch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Clock:
    def __init__(self, rtc_seconds: "Callable[[], int] | None" = None,
                 set_rtc: "Callable[[int], None] | None" = None,
                 ticks: "Callable[[], int]" = ticks_ms) -> None:
        self._rtc_seconds = rtc_seconds or (lambda: int(time.time()) + _EPOCH_OFFSET)
        self._set_rtc = set_rtc
        self._ticks = ticks
        self.synced = False
        self._anchor_ticks = ticks()
        self._anchor_s = self._rtc_seconds()
        self._anchor_ms = 0
        self._boot_ticks = self._anchor_ticks
        self._last_ticks = self._anchor_ticks
        self._uptime = 0

    def uptime_ms(self) -> int:
        """Milliseconds since boot, wrapping at 2**32 as SPEC.md section 3 defines them."""
        now = self._ticks()
        self._uptime = (self._uptime + ticks_diff(now, self._last_ticks)) & 0xFFFFFFFF
        self._last_ticks = now
        return self._uptime

    def now(self) -> "tuple[int, int]":
        """``(unix seconds, milliseconds)`` of the reader's clock.

        Each call moves the anchor forward, so the wrapping tick difference stays small as long
        as the clock is read at least every 6 days (the heartbeat does).
        """
        now = self._ticks()
        elapsed = ticks_diff(now, self._anchor_ticks) + self._anchor_ms
        self._anchor_ticks = now
        self._anchor_s += elapsed // 1000
        self._anchor_ms = elapsed % 1000
        return self._anchor_s, self._anchor_ms

    def set_time(self, unix_s: int, ms: int = 0) -> None:
        """A trusted time (NTP, or the gateway's authenticated ``set_time``): now synced."""
        self._anchor_ticks = self._ticks()
        self._anchor_s = unix_s
        self._anchor_ms = ms
        self.synced = True
        if self._set_rtc is not None:
            self._set_rtc(unix_s)
