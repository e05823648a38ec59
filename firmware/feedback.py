"""Beeps and lights, played by their own task so a tap never waits for them.

``signal`` only records which pattern to play (no allocation, callable from the tap path); the
``run`` task plays it. A newer signal replaces one still playing. ``fault`` is a state, not an
event: while set, the red LED blinks between other patterns.
"""

import asyncio

from firmware.aio import sleep_ms, wait_ms
from protocol.compat import const

ACCEPTED = const(1)  # sent or about to be: one short high beep, green
ACCEPTED_QUEUED = const(2)  # stored on the reader while the link is down: two short beeps, green
REJECTED = const(3)  # unknown card format or a read error: one long low beep, red
FAULT = const(4)  # reader chip or flash fault: three low beeps, red

# Each pattern: (frequency Hz or 0 for silence, green LED, red LED, duration ms) steps, flattened.
_PATTERNS = (
    (),
    (2700, 1, 0, 90, 0, 1, 0, 210),
    (2700, 1, 0, 70, 0, 1, 0, 60, 2700, 1, 0, 70, 0, 1, 0, 100),
    (440, 0, 1, 350, 0, 0, 1, 250),
    (330, 0, 1, 120, 0, 0, 0, 80, 330, 0, 1, 120, 0, 0, 0, 80, 330, 0, 1, 120),
)
_BLINK_MS = const(500)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Buzzer(Protocol):  # machine.PWM
        def freq(self, value: int) -> None: ...

        def duty_u16(self, value: int) -> None: ...

    class Led(Protocol):  # machine.Pin
        def value(self, value: int) -> None: ...


class Feedback:
    def __init__(self, buzzer: "Buzzer", led_ok: "Led", led_error: "Led",
                 volume: int = 60) -> None:
        self._buzzer = buzzer
        self._led_ok = led_ok
        self._led_error = led_error
        self.volume = volume
        self.fault = False
        self._pending = 0
        self._event = asyncio.Event()
        self.played = 0

    def signal(self, pattern: int) -> None:
        self._pending = pattern
        self._event.set()

    def _output(self, freq: int, green: int, red: int) -> None:
        if freq and self.volume:
            self._buzzer.freq(freq)
            self._buzzer.duty_u16(self.volume * 327)  # 100 % volume = 50 % duty
        else:
            self._buzzer.duty_u16(0)
        self._led_ok.value(green)
        self._led_error.value(red)

    async def run(self) -> None:
        blink = 0
        while True:
            if not self._pending:
                self._event.clear()
                if self.fault:
                    blink ^= 1
                    self._output(0, 0, blink)
                    await wait_ms(self._event.wait(), _BLINK_MS)
                    continue
                self._output(0, 0, 0)
                await self._event.wait()
            pattern = _PATTERNS[self._pending]
            self._pending = 0
            self.played += 1
            for i in range(0, len(pattern), 4):
                self._output(pattern[i], pattern[i + 1], pattern[i + 2])
                await sleep_ms(pattern[i + 3])
                if self._pending:  # a newer tap: play its pattern at once
                    break
