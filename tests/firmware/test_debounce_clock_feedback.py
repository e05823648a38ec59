"""Debounce, the reader clock and feedback patterns, on CPython and the MicroPython VM."""

from __future__ import annotations

import asyncio
from typing import Any

from firmware.clock import Clock
from firmware.debounce import Debouncer
from firmware.feedback import ACCEPTED, ACCEPTED_QUEUED, REJECTED, Feedback

A = bytes.fromhex("04a1b2c3")
B = bytes.fromhex("04224be2a13c80")
TICKS_MASK = (1 << 30) - 1


def _scans(debouncer: Debouncer, sightings: list[tuple[int, bytes]]) -> list[int]:
    return [t for t, uid in sightings if debouncer.sighting(2, uid, len(uid), t & TICKS_MASK)]


def test_a_held_card_makes_one_scan_and_comes_back_after_the_gap() -> None:
    d = Debouncer(gap_ms=2000)
    held = [(t, A) for t in range(0, 10_000, 50)]  # ten seconds on the reader
    assert _scans(d, held) == [0]
    assert _scans(d, [(11_000, A)]) == []  # back after 1.05 s away: same tap
    assert _scans(d, [(13_100, A)]) == [13_100]  # back after more than the gap


def test_different_cards_each_make_one_scan_even_when_swapped() -> None:
    d = Debouncer(gap_ms=2000)
    seq = [(0, A), (50, A), (100, B), (150, B), (200, A), (250, B), (3000, A)]
    assert _scans(d, seq) == [0, 100, 3000]


def test_debounce_across_the_tick_wrap_and_lru_slots() -> None:
    d = Debouncer(gap_ms=1000, slots=2)
    start = TICKS_MASK - 100
    assert _scans(d, [(start, A), (start + 400, A)]) == [start]  # wraps between the two
    c = bytes.fromhex("01020304")
    assert _scans(d, [(start + 500, B), (start + 600, c)]) == [start + 500, start + 600]
    assert _scans(d, [(start + 700, A)]) == [start + 700]  # A was evicted (only two slots)
    assert _scans(d, [(start + 800, c)]) == []  # c still remembered


def test_same_uid_bytes_of_another_technology_is_another_card() -> None:
    d = Debouncer()
    assert d.sighting(2, A, 4, 0)
    assert d.sighting(4, A, 4, 10)  # a Wiegand-34 number with the same bytes


def test_clock_provenance_and_uptime_across_wraps() -> None:
    now = [TICKS_MASK - 999]
    clock = Clock(rtc_seconds=lambda: 946_684_800, ticks=lambda: now[0] & TICKS_MASK)
    assert not clock.synced
    now[0] += 1500
    assert clock.now() == (946_684_801, 500)
    assert clock.uptime_ms() == 1500
    clock.set_time(1_795_420_800, 250)
    assert clock.synced
    for _ in range(10):  # 10 x 4 days: uptime keeps counting across many tick wraps
        now[0] += 4 * 86_400_000
        clock.uptime_ms()
        clock.now()
    assert clock.uptime_ms() == (1500 + 40 * 86_400_000) & 0xFFFFFFFF
    assert clock.now() == (1_795_420_800 + 40 * 86_400, 250)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def freq(self, value: int) -> None:
        self.events.append(("freq", value))

    def duty_u16(self, value: int) -> None:
        self.events.append(("duty", value))

    def value(self, value: int) -> None:
        self.events.append(("led", value))


async def test_feedback_plays_patterns_without_blocking_the_caller() -> None:
    buzzer, green, red = _Recorder(), _Recorder(), _Recorder()
    fb = Feedback(buzzer, green, red, volume=50)
    task = asyncio.create_task(fb.run())
    fb.signal(ACCEPTED)  # returns at once
    await asyncio.sleep(0.4)
    assert ("freq", 2700) in buzzer.events and ("duty", 50 * 327) in buzzer.events
    assert ("led", 1) in green.events and ("led", 1) not in red.events
    fb.signal(ACCEPTED_QUEUED)
    await asyncio.sleep(0.4)
    assert buzzer.events.count(("freq", 2700)) == 3  # one beep, then two
    fb.signal(REJECTED)
    await asyncio.sleep(0.7)
    assert ("freq", 440) in buzzer.events and ("led", 1) in red.events
    assert fb.played == 3
    fb.volume = 0
    before = buzzer.events.count(("freq", 2700))
    fb.signal(ACCEPTED)
    await asyncio.sleep(0.4)
    assert buzzer.events.count(("freq", 2700)) == before  # muted, lights only
    task.cancel()


def test_debounce_and_clock_on_micropython(mpvm: Any) -> None:
    code = """
from firmware.debounce import Debouncer
from firmware.clock import Clock
import gc
d = Debouncer(gap_ms=2000)
uid = bytes([4, 1, 2, 3])
print([t for t in range(0, 6000, 50) if d.sighting(2, uid, 4, t)] + [d.sighting(2, uid, 4, 8100)])
gc.collect()
t = 9000
before = gc.mem_alloc()
while t < 9000 + 50 * 200:  # a held card polled 200 times
    d.sighting(2, uid, 4, t)
    t += 50
print("alloc", gc.mem_alloc() - before)
now = [(1 << 30) - 1000]
c = Clock(rtc_seconds=lambda: 946684800, ticks=lambda: now[0] & ((1 << 30) - 1))
now[0] += 2500
print(c.now(), c.uptime_ms(), c.synced)
"""
    lines = mpvm.run(code).strip().splitlines()
    assert lines[0] == "[0, True]"
    assert lines[1] == "alloc 0"
    assert lines[2] == "(946684802, 500) 2500 False"
