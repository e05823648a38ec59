"""Simulated reader hardware: what ``firmware/hw_esp32.py`` builds on the board, made in software.

``SimHardware`` has the same builder functions as ``firmware.hw_esp32``, so
``firmware.main.boot(fs, root, SimHardware(...))`` runs the real firmware under CPython: its
queue on real files, its MQTT client on real sockets, its tap path, debounce and feedback. Only
the card reader, the buzzer and LEDs, the network interface and the reset line are simulated;
the feedback also records which patterns were asked for (``RecordingFeedback.signals``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from firmware.clock import Clock
from firmware.feedback import Feedback
from protocol.card import check_uid

Card = tuple[int, bytes]  # (technology code, canonical UID)


class VirtualCardReader:
    """A card reader driver (``firmware.app.CardReader``) whose cards are tapped by software.

    Each ``tap`` is seen by exactly one ``poll``; holding a card is ``tap`` repeated, which the
    firmware's debouncer folds into one scan.
    """

    def __init__(self) -> None:
        self.tech = 0
        self.uid = bytearray(10)
        self.fault = False
        self._pending: deque[Card] = deque()

    def tap(self, card: Card) -> None:
        check_uid(card[0], card[1])
        self._pending.append(card)

    def poll(self, now_ms: int) -> int:
        if self.fault or not self._pending:
            return 0
        tech, uid = self._pending.popleft()
        self.tech = tech
        self.uid[: len(uid)] = uid
        return len(uid)


class _Output:
    """A buzzer (PWM) or LED (Pin) that remembers its last setting."""

    def __init__(self) -> None:
        self.last = 0

    def value(self, v: int) -> None:
        self.last = v

    def freq(self, v: int) -> None:
        self.last = v

    def duty_u16(self, v: int) -> None:
        self.last = v


class RecordingFeedback(Feedback):
    """The firmware's beeps and lights, also remembering every pattern the tap path asked for
    (``firmware.feedback.ACCEPTED``, ``ACCEPTED_QUEUED``, ...), in order, for the tests."""

    def __init__(self, buzzer: _Output, led_ok: _Output, led_error: _Output,
                 volume: int = 60) -> None:
        super().__init__(buzzer, led_ok, led_error, volume)
        self.signals: list[int] = []

    def signal(self, pattern: int) -> None:
        self.signals.append(pattern)
        super().signal(pattern)


class LoopbackNetwork:
    """The firmware's network interface on the host: up unless a test takes it down.

    On each link-up it sets the reader's clock from the host clock, as the SNTP sync after a
    real link-up does (``ntp=False`` leaves the reader unsynced, like a reader whose NTP server
    does not answer).
    """

    link_type = "wifi"

    def __init__(self, clock: Clock, ntp: bool = True, rssi_dbm: int = -58) -> None:
        self.clock = clock
        self.ntp = ntp
        self.rssi_dbm = rssi_dbm
        self.up = True

    def is_up(self) -> bool:
        return self.up

    async def run(self) -> None:
        if self.ntp:
            now = time.time()
            self.clock.set_time(int(now), int(now * 1000) % 1000)


class SimHardware:
    """The builders of ``firmware.hw_esp32`` for one simulated reader."""

    def __init__(self, ntp: bool = True, on_reboot: Callable[[], None] | None = None) -> None:
        self.reader = VirtualCardReader()
        self.ntp = ntp
        self.network: LoopbackNetwork | None = None
        self.feedback: RecordingFeedback | None = None
        self.rtc: list[int] = []
        self.reboots = 0
        self._on_reboot = on_reboot

    def build_reader(self, profile: dict[str, Any]) -> VirtualCardReader:
        return self.reader

    def build_feedback(self, profile: dict[str, Any], volume: int) -> RecordingFeedback:
        self.feedback = RecordingFeedback(_Output(), _Output(), _Output(), volume)
        return self.feedback

    def build_watchdog(self) -> None:
        return None

    def build_network(self, profile: dict[str, Any], config: Any, clock: Clock
                      ) -> LoopbackNetwork:
        self.network = LoopbackNetwork(clock, self.ntp)
        return self.network

    def set_rtc(self, unix_s: int) -> None:
        self.rtc.append(unix_s)

    def reboot(self) -> None:
        """``machine.reset()``: the simulator restarts the firmware from its files."""
        self.reboots += 1
        if self._on_reboot is not None:
            self._on_reboot()
