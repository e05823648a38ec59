"""The Wiegand D0/D1 driver against the pulse-train emulator, on CPython and MicroPython."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.drivers.wiegand import WiegandReader
from protocol.card import WIEGAND26, WIEGAND34, WIEGAND37
from protocol.cardforms import wiegand_fields
from tests.firmware.emulators import wiegand as wiegand_emu
from tests.firmware.emulators.wiegand import (
    TICKS_PERIOD,
    WiegandBus,
    card_value,
    frame_bits,
    uid_of,
)

EMULATOR = Path(wiegand_emu.__file__)
TECH = {26: WIEGAND26, 34: WIEGAND34, 37: WIEGAND37}
COUNTERS = ("frames", "length_errors", "parity_errors", "overflows", "dropped")
MS = 1000


def counters(reader: WiegandReader) -> dict[str, int]:
    return {name: getattr(reader, name) for name in COUNTERS}


def clean(**changes: int) -> dict[str, int]:
    out = dict.fromkeys(COUNTERS, 0)
    out.update(changes)
    return out


def make(start_us: int = 0, **kwargs: Any) -> tuple[WiegandBus, WiegandReader]:
    bus = WiegandBus(start_us)
    return bus, WiegandReader(bus.d0, bus.d1, now_us=bus.now_us, **kwargs)


def drive(bus: WiegandBus, reader: WiegandReader, end_us: int, step_us: int = 20 * MS,
          start_us: int | None = None) -> list[tuple[int, int, bytes]]:
    """Poll every ``step_us`` up to ``end_us``: (time, tech, UID) of every poll that read a card."""
    out = []
    t = bus.t_us if start_us is None else start_us
    while t <= end_us:
        bus.run_until(t)
        n = reader.poll(bus.now_ms())
        if n:
            out.append((t, reader.tech, bytes(reader.uid[:n])))
        t += step_us
    return out


def test_handlers_are_registered_on_falling_edges() -> None:
    bus, reader = make()
    assert bus.d0.trigger == bus.d0.IRQ_FALLING and bus.d1.trigger == bus.d1.IRQ_FALLING
    assert bus.d0.handler is not None and not bus.d0.hard
    reader.deinit()
    assert bus.d0.handler is None and bus.d1.handler is None
    bus = WiegandBus()
    WiegandReader(bus.d0, bus.d1, hard=True)
    assert bus.d0.hard and bus.d1.hard
    with pytest.raises(ValueError):
        WiegandReader(bus.d0, bus.d1, timeout_ms=0)


@pytest.mark.parametrize(
    ("nbits", "facility", "number", "uid"),
    [
        (26, 123, 45678, "7bb26e"),
        (26, 0, 0, "000000"),
        (26, 255, 65535, "ffffff"),
        (34, 0xBEEF, 0x1234, "beef1234"),
        (34, 0, 1, "00000001"),
        (37, 0xFFFF, 0x7FFFF, "07ffffffff"),
        (37, 1234, 367890, "0026959d12"),
    ],
)
def test_one_frame_is_one_read_with_the_exact_uid(
    nbits: int, facility: int, number: int, uid: str
) -> None:
    bus, reader = make()
    value = card_value(nbits, facility, number)
    assert uid_of(nbits, value).hex() == uid
    last = bus.send_card(nbits, value, start_us=5 * MS)
    got = drive(bus, reader, 500 * MS)
    # the poll after the lines have been quiet for 25 ms, and only that one
    first_poll = (last + 25 * MS + 20 * MS - 1) // (20 * MS) * (20 * MS)
    assert got == [(first_poll, TECH[nbits], bytes.fromhex(uid))]
    assert wiegand_fields(TECH[nbits], bytes.fromhex(uid)) == (facility, number)
    assert counters(reader) == clean(frames=1)
    assert not reader.fault


def test_a_frame_is_finished_only_after_the_timeout() -> None:
    bus, reader = make(timeout_ms=25)
    last = bus.send_card(26, card_value(26, 1, 2), start_us=0)
    got = drive(bus, reader, 200 * MS, step_us=1 * MS)  # polled every millisecond, mid-frame too
    assert [t for t, _, _ in got] == [(last // MS + 25) * MS]
    bus, reader = make(timeout_ms=60)
    last = bus.send_card(26, card_value(26, 1, 2), start_us=0)
    got = drive(bus, reader, 200 * MS, step_us=1 * MS)
    assert [t for t, _, _ in got] == [(last // MS + 60) * MS]


@pytest.mark.parametrize(
    ("spacing_us", "jitter_us"),
    [(600, 0), (600, 250), (1000, 0), (1000, 450), (2000, 0), (2000, 450), (5000, 2000)],
)
def test_pulse_spacing_and_jitter(spacing_us: int, jitter_us: int) -> None:
    bus, reader = make()
    value = card_value(34, 0x0A0B, 0x0C0D)
    bus.send_card(34, value, 1 * MS, spacing_us=spacing_us, jitter_us=jitter_us, seed=spacing_us)
    assert [(tech, uid) for _, tech, uid in drive(bus, reader, 600 * MS)] == [
        (WIEGAND34, uid_of(34, value))
    ]
    assert counters(reader) == clean(frames=1)


def test_missing_and_extra_bits_are_length_errors() -> None:
    bus, reader = make()
    bits = frame_bits(26, card_value(26, 7, 7))
    end = bus.send_bits(bits[:12] + bits[13:], 0)  # one pulse lost: 25 bits
    end = bus.send_bits([*bits, 1], end + 100 * MS)  # one glitch pulse more: 27 bits
    bus.send_bits([0], end + 100 * MS)  # a lone glitch
    assert drive(bus, reader, 600 * MS) == []
    assert counters(reader) == clean(length_errors=3)


@pytest.mark.parametrize("nbits", [26, 34, 37])
@pytest.mark.parametrize("where", ["leading", "trailing", "data"])
def test_wrong_parity_is_a_parity_error(nbits: int, where: str) -> None:
    bus, reader = make()
    bits = frame_bits(nbits, card_value(nbits, 0x55, 0x1234))
    flip = {"leading": 0, "trailing": nbits - 1, "data": 3}[where]
    bits[flip] ^= 1
    bus.send_bits(bits, 0)
    assert drive(bus, reader, 300 * MS) == []
    assert counters(reader) == clean(parity_errors=1)


def test_wiegand37_parity_spans_overlap_at_bit_18() -> None:
    # H10304: even parity over bits 0-18, odd over bits 18-36; bit 18 is in both spans, so
    # flipping it breaks both parities; flipping bit 17 (even span only) breaks one.
    value = card_value(37, 0x1234, 0x2345)
    for flip in (17, 18, 19):
        bus, reader = make()
        bits = frame_bits(37, value)
        bits[flip] ^= 1
        bus.send_bits(bits, 0)
        assert drive(bus, reader, 300 * MS) == []
        assert counters(reader) == clean(parity_errors=1)


def test_more_than_64_bits_is_an_overflow_and_the_next_frame_reads() -> None:
    bus, reader = make()
    end = bus.send_bits([1, 0] * 40, 0)  # 80 bits
    end = bus.send_bits([1] * 64, end + 50 * MS)  # exactly 64 bits: fits, but no such format
    value = card_value(26, 9, 99)
    bus.send_card(26, value, end + 50 * MS)
    got = drive(bus, reader, 1000 * MS)
    assert [(tech, uid) for _, tech, uid in got] == [(WIEGAND26, uid_of(26, value))]
    assert counters(reader) == clean(frames=1, length_errors=2, overflows=1)


def test_two_frames_back_to_back_are_two_reads_in_order() -> None:
    bus, reader = make()
    a, b = card_value(26, 1, 1000), card_value(37, 2, 2000)
    end = bus.send_card(26, a, 0)
    bus.send_card(37, b, end + 30 * MS)  # 30 ms of quiet between them (timeout 25 ms)
    got = drive(bus, reader, 500 * MS)
    assert [(tech, uid) for _, tech, uid in got] == [
        (WIEGAND26, uid_of(26, a)),
        (WIEGAND37, uid_of(37, b)),
    ]
    assert counters(reader) == clean(frames=2)


def test_frames_that_arrive_while_the_loop_is_busy_wait_in_order() -> None:
    bus, reader = make()
    values = [card_value(26, i, 100 + i) for i in range(3)]
    end = -30 * MS
    for v in values:
        end = bus.send_card(26, v, end + 30 * MS)
    bus.run_until(end + 200 * MS)  # no poll during the three frames
    got = []
    for _ in range(4):
        n = reader.poll(0)
        got.append(bytes(reader.uid[:n]))
    assert got == [uid_of(26, v) for v in values] + [b""]
    assert counters(reader) == clean(frames=3)


def test_a_fourth_waiting_frame_is_dropped_and_counted() -> None:
    bus, reader = make()
    values = [card_value(26, i, 200 + i) for i in range(5)]
    end = -30 * MS
    for v in values:
        end = bus.send_card(26, v, end + 30 * MS)
    bus.run_until(end + 200 * MS)
    got = []
    for _ in range(5):
        n = reader.poll(0)
        got.append(bytes(reader.uid[:n]))
    # Three closed frames wait; the fourth has nowhere to go when the fifth starts; the fifth,
    # still in its buffer, is read once quiet.
    assert got == [uid_of(26, values[i]) for i in (0, 1, 2, 4)] + [b""]
    assert counters(reader) == clean(frames=4, dropped=1)


def test_an_edge_during_poll_does_not_mix_frames() -> None:
    # The next frame's first edge fires inside poll, right after poll read the clock (as a soft or
    # hard interrupt can): the first frame is still read whole, then the second.
    bus = WiegandBus()
    a, b = card_value(26, 3, 333), card_value(26, 4, 444)
    end = bus.send_card(26, a, 0)
    second = end + 40 * MS
    bus.send_card(26, b, second)
    armed = [False]

    def clock() -> int:
        now = bus.now_us()
        if armed[0]:
            armed[0] = False
            bus.run_until(second)  # the interrupt: one edge at `second`
        return now

    reader = WiegandReader(bus.d0, bus.d1, now_us=clock)
    bus.run_until(end + 30 * MS)
    armed[0] = True
    bus.t_us = second
    first = reader.poll(0)
    got = [bytes(reader.uid[:first])] if first else []
    assert first == 0  # poll saw the new frame start and left both for later
    got += [uid for _, _, uid in drive(bus, reader, second + 300 * MS)]
    assert got == [uid_of(26, a), uid_of(26, b)]
    assert counters(reader) == clean(frames=2)


@settings(max_examples=40, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from([26, 34, 37]),
            st.integers(min_value=0, max_value=(1 << 24) - 1),
            st.integers(min_value=26, max_value=400),  # quiet before the frame, ms
            st.integers(min_value=500, max_value=2500),  # bit spacing, us
        ),
        min_size=1,
        max_size=8,
    ),
    poll_ms=st.integers(min_value=1, max_value=60),
)
def test_any_frame_sequence_and_poll_rhythm(frames: list[tuple[int, int, int, int]],
                                            poll_ms: int) -> None:
    bus, reader = make(start_us=TICKS_PERIOD - 700 * MS)  # the us ticks wrap in the middle
    t = bus.t_us
    expected = []
    for nbits, value, quiet_ms, spacing in frames:
        t = bus.send_card(nbits, value, t + quiet_ms * MS, spacing_us=spacing, jitter_us=200)
        expected.append((TECH[nbits], uid_of(nbits, value)))
    got = drive(bus, reader, t + 100 * MS, step_us=poll_ms * MS)
    assert [(tech, uid) for _, tech, uid in got] == expected
    assert counters(reader) == clean(frames=len(frames))


def test_a_stuck_line_is_a_fault_until_it_recovers() -> None:
    bus, reader = make()
    bus.d0.stuck_low = True
    bus.pulse(0, 1 * MS)  # the line falls once and stays low
    drive(bus, reader, 60 * MS)
    assert reader.fault
    bus.d0.stuck_low = False
    drive(bus, reader, 100 * MS, start_us=80 * MS)
    assert not reader.fault
    # a frame polled every millisecond sees pulses low now and then, never a fault
    bus.send_card(26, card_value(26, 5, 5), 200 * MS)
    faults = []
    t = 200 * MS
    while t < 400 * MS:
        bus.run_until(t)
        reader.poll(0)
        faults.append(reader.fault)
        t += 40
    assert not any(faults)
    assert counters(reader) == clean(frames=1, length_errors=1)  # the lone fall of the stuck line


def test_a_frame_across_the_tick_wrap() -> None:
    bus, reader = make(start_us=TICKS_PERIOD - 20 * MS)
    value = card_value(34, 0xFFFF, 0xFFFF)
    bus.send_card(34, value, bus.t_us + 1 * MS)  # the clock wraps mid-frame
    got = drive(bus, reader, bus.t_us + 300 * MS)
    assert [(tech, uid) for _, tech, uid in got] == [(WIEGAND34, b"\xff\xff\xff\xff")]


# -- the same driver on the MicroPython VM ------------------------------------------------------

SCENARIO = """
import gc
import wiegand_emu as emu
from firmware.drivers.wiegand import WiegandReader

mem = getattr(gc, "mem_alloc", None)
bus = emu.WiegandBus()
reader = WiegandReader(bus.d0, bus.d1, now_us=bus.now_us)
t = 100000
cards = ((26, emu.card_value(26, 123, 45678)), (34, emu.card_value(34, 0xBEEF, 0x1234)),
         (37, emu.card_value(37, 0xFFFF, 0x7FFFF)))
for nbits, value in cards:
    t = bus.send_card(nbits, value, t + 30000, spacing_us=1500, jitter_us=300)
bad = emu.frame_bits(26, emu.card_value(26, 1, 1))
bad[0] ^= 1
t = bus.send_bits(bad, t + 30000)
t = bus.send_bits(bad[:20], t + 30000)
t = bus.send_card(26, emu.card_value(26, 9, 9), t + 300000, spacing_us=2000, jitter_us=400)
end = t + 400000

idle = [0] * 4
frame_deltas = [0] * 8
frames = 0
now = 0
while now <= end:
    before = mem() if mem else 0
    bus.run_until(now)           # the interrupt handlers of the edges due by now
    n = reader.poll(now // 1000)
    after = mem() if mem else 0
    if n:
        print(now, reader.tech, "".join("%02x" % b for b in reader.uid[:n]))
        frame_deltas[frames] = after - before
        frames += 1
    now += 20000
print("frames", reader.frames, "length", reader.length_errors, "parity", reader.parity_errors,
      "dropped", reader.dropped, "fault", reader.fault)

# steady state: idle polls, then one frame's 26 handler calls and the poll that decodes it
for i in range(4):
    before = mem() if mem else 0
    bus.run_until(now)
    reader.poll(now // 1000)
    idle[i] = (mem() if mem else 0) - before
    now += 20000
last = bus.send_card(26, emu.card_value(26, 200, 300), now + 1000)
bus.run_until(now)  # the first pulse is scheduled after `now`: nothing fires yet
before = mem() if mem else 0
bus.run_until(last + 26000)
isr = (mem() if mem else 0) - before
before = mem() if mem else 0
n = reader.poll(0)
decode = (mem() if mem else 0) - before
print("last", n, reader.tech, "".join("%02x" % b for b in reader.uid[:n]), bus.fired)
if mem:
    # as a hard interrupt would run: with the heap locked, any allocation raises MemoryError
    from micropython import heap_lock, heap_unlock
    now += 100000
    last = bus.send_card(37, emu.card_value(37, 77, 7777), now + 1000)
    heap_lock()
    try:
        bus.run_until(last + 26000)
        n = reader.poll(0)
    finally:
        heap_unlock()
    print("ALLOC locked", n, "".join("%02x" % b for b in reader.uid[:n]))
    print("ALLOC idle", max(idle), "isr26", isr, "decode", decode,
          "frames", " ".join(str(d) for d in frame_deltas[:frames]))
"""


def test_same_behaviour_on_micropython_and_no_allocation(
    mpvm: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = mpvm.run(SCENARIO, files={"wiegand_emu.py": EMULATOR})
    lines = out.strip().splitlines()
    alloc = [ln for ln in lines if ln.startswith("ALLOC")]
    behaviour = [ln for ln in lines if not ln.startswith("ALLOC")]
    monkeypatch.setitem(sys.modules, "wiegand_emu", wiegand_emu)
    exec(compile(SCENARIO, "<scenario>", "exec"), {})
    on_cpython = capsys.readouterr().out.strip().splitlines()
    print("\nWiegand on MicroPython:", *lines, sep="\n  ")
    assert behaviour == on_cpython
    assert [ln.split()[1:] for ln in behaviour[:4]] == [
        [str(WIEGAND26), "7bb26e"],
        [str(WIEGAND34), "beef1234"],
        [str(WIEGAND37), "07ffffffff"],
        [str(WIEGAND26), "090009"],
    ]
    assert behaviour[4] == "frames 4 length 1 parity 1 dropped 0 fault False"
    assert behaviour[5].split()[:4] == ["last", "3", str(WIEGAND26), "c8012c"]
    assert alloc[0] == "ALLOC locked 5 0002681e61"
    words = alloc[1].split()
    assert words[1:7] == ["idle", "0", "isr26", "0", "decode", "0"], alloc[1]
    assert set(words[8:]) == {"0"}, alloc[1]
