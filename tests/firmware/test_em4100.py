"""The EM4100 (RDM6300 UART) driver against the RDM6300 emulator, on CPython and MicroPython."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.drivers.em4100 import Em4100Reader
from protocol.card import EM4100
from protocol.cardforms import printed_forms
from tests.firmware.emulators import rdm6300
from tests.firmware.emulators.rdm6300 import Rdm6300, bad_checksum_frame, frame

EMULATOR = Path(rdm6300.__file__)
TICKS_MASK = (1 << 30) - 1
A = bytes.fromhex("1f00c0ffee")  # a non-zero version byte: the full 40 bits must survive
B = bytes.fromhex("0100a1b2c3")
P = bytes.fromhex("3a5c000017")  # a phantom's "ID"

COUNTERS = ("frames", "framing_errors", "checksum_errors", "noise_bytes", "phantoms", "reads")


def counters(reader: Em4100Reader) -> dict[str, int]:
    return {name: getattr(reader, name) for name in COUNTERS}


def clean(**changes: int) -> dict[str, int]:
    out = dict.fromkeys(COUNTERS, 0)
    out.update(changes)
    return out


def drive(reader: Em4100Reader, emu: Rdm6300, end_ms: int, step_ms: int = 20,
          start_ms: int = 0) -> list[tuple[int, bytes]]:
    """Poll every ``step_ms`` up to ``end_ms``; the (time, UID) of every poll that saw a card."""
    seen = []
    for t in range(start_ms, end_ms + 1, step_ms):
        emu.now_ms = t
        n = reader.poll(t & TICKS_MASK)
        if n:
            assert n == 5
            assert reader.tech == EM4100
            seen.append((t, bytes(reader.uid[:n])))
    return seen


def spans(seen: list[tuple[int, bytes]], step_ms: int = 20) -> list[tuple[int, int, bytes]]:
    """Runs of consecutive polls reporting the same card: (first, last, uid)."""
    out: list[tuple[int, int, bytes]] = []
    for t, uid in seen:
        if out and out[-1][2] == uid and t - out[-1][1] == step_ms:
            out[-1] = (out[-1][0], t, uid)
        else:
            out.append((t, t, uid))
    return out


def test_frame_encoder_matches_the_datasheet_example() -> None:
    # The widely published RDM6300 example: card 62E3086CED -> checksum 08.
    assert frame(bytes.fromhex("62e3086ced")) == b"\x0262E3086CED08\x03"


def test_a_held_card_is_reported_on_every_poll_after_confirmation_until_it_goes() -> None:
    emu = Rdm6300()
    sent = emu.card(A, start_ms=100, duration_ms=500, period_ms=80)  # frames at 100, 180 ... 580
    reader = Em4100Reader(emu)
    # Frame 1 is complete at 114 ms (read by the 120 poll), frame 2 at 194 ms (the 200 poll):
    # confirmed then. The last frame is read at 600 ms; hold_ms=300 releases it after 900 ms.
    assert spans(drive(reader, emu, 1500)) == [(200, 900, A)]
    assert counters(reader) == clean(frames=sent, reads=1)
    assert sent == 7
    assert not reader.fault
    assert printed_forms(EM4100, reader.uid[:5])["hex"] == "1F00C0FFEE"


@pytest.mark.parametrize("uid", ["0000000000", "ffffffffff", "8000000001", "62e3086ced"])
def test_the_full_40_bit_id_is_reported(uid: str) -> None:
    emu = Rdm6300()
    emu.card(bytes.fromhex(uid), start_ms=0, duration_ms=200)
    reader = Em4100Reader(emu)
    assert {u for _, u in drive(reader, emu, 600)} == {bytes.fromhex(uid)}


def test_a_phantom_frame_is_never_reported_and_is_counted() -> None:
    emu = Rdm6300()
    emu.phantom(P, at_ms=100)
    emu.card(A, start_ms=1000, duration_ms=300)
    reader = Em4100Reader(emu)
    assert drive(reader, emu, 900) == []
    assert counters(reader) == clean(frames=1, phantoms=1)  # given up 300 ms after it was read
    assert spans(drive(reader, emu, 2000, start_ms=920)) == [(1100, 1560, A)]
    assert counters(reader) == clean(frames=5, phantoms=1, reads=1)


def test_a_phantom_just_before_a_real_card_does_not_delay_or_replace_it() -> None:
    emu = Rdm6300()
    emu.phantom(P, at_ms=100)
    emu.card(A, start_ms=140, duration_ms=160)  # frames at 140 and 220
    reader = Em4100Reader(emu)
    assert spans(drive(reader, emu, 1000)) == [(240, 540, A)]
    assert counters(reader) == clean(frames=3, phantoms=1, reads=1)


def test_corrupted_checksums_are_counted_and_never_confirm() -> None:
    emu = Rdm6300()
    for t in (100, 180, 260):
        emu.send(t, bad_checksum_frame(A))
    emu.send(340, frame(A))
    emu.send(420, bad_checksum_frame(A))
    emu.send(500, frame(A))  # two good frames 160 ms apart (window 300): confirmed
    reader = Em4100Reader(emu)
    assert spans(drive(reader, emu, 1200)) == [(520, 820, A)]
    assert counters(reader) == clean(frames=2, checksum_errors=4, reads=1)


def test_a_lost_frame_does_not_interrupt_the_hold() -> None:
    emu = Rdm6300()
    for i, t in enumerate(range(0, 800, 80)):
        emu.send(t, bad_checksum_frame(A) if i in (4, 5) else frame(A))
    reader = Em4100Reader(emu)
    # One continuous span: two lost frames leave a 240 ms hole, under hold_ms.
    assert spans(drive(reader, emu, 1500)) == [(100, 1040, A)]
    assert counters(reader) == clean(frames=8, checksum_errors=2, reads=1)


def test_noise_between_frames_is_skipped_and_counted() -> None:
    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=400)  # frames at 0, 80, 160, 240, 320
    for i, t in enumerate((20, 100, 180, 260, 340)):
        emu.noise(t, 7, seed=i + 1)  # no STX/ETX among them
    reader = Em4100Reader(emu)
    assert {u for _, u in drive(reader, emu, 1000)} == {A}
    assert counters(reader) == clean(frames=5, noise_bytes=35, reads=1)


def test_garbage_with_framing_bytes_resynchronises() -> None:
    emu = Rdm6300()
    emu.noise(0, 200, seed=7, framing=True)  # random bytes, STX and ETX included
    emu.card(A, start_ms=300, duration_ms=300)
    reader = Em4100Reader(emu)
    assert spans(drive(reader, emu, 1200)) == [(400, 860, A)]
    assert reader.frames == 4
    assert reader.reads == 1
    assert reader.noise_bytes + reader.framing_errors > 0


def test_a_stray_stx_inside_a_frame_restarts_it() -> None:
    emu = Rdm6300()
    emu.send(0, b"\x021F00C0" + frame(A))  # a partial frame, then a whole one
    emu.send(80, frame(A))
    reader = Em4100Reader(emu)
    assert spans(drive(reader, emu, 500)) == [(100, 400, A)]
    assert counters(reader) == clean(frames=2, framing_errors=1, reads=1)


def test_a_byte_too_many_drops_the_frame() -> None:
    emu = Rdm6300()
    good = frame(A)
    emu.send(0, good[:5] + b"7" + good[5:])  # the 14th byte is a digit, the ETX comes after
    reader = Em4100Reader(emu)
    assert drive(reader, emu, 500) == []
    assert counters(reader) == clean(framing_errors=1, noise_bytes=1)


def test_a_short_frame_and_a_non_hex_digit_are_framing_errors() -> None:
    emu = Rdm6300()
    good = frame(A)
    emu.send(0, good[:5] + good[6:])  # one digit lost: ETX arrives as the 13th byte
    emu.send(80, good[:3] + b"G" + good[4:])  # not a hex digit
    emu.send(160, good.lower())  # lower-case digits are accepted by the decoder
    reader = Em4100Reader(emu)
    assert drive(reader, emu, 500) == []
    assert counters(reader) == clean(frames=1, framing_errors=2, phantoms=1)


@pytest.mark.parametrize("max_read", [1, 2, 3, 5, 7, 13, 14, 15, 0])
@pytest.mark.parametrize("step_ms", [1, 7, 20, 50])
def test_frames_split_across_reads_at_any_point(max_read: int, step_ms: int) -> None:
    emu = Rdm6300(max_read=max_read)
    emu.card(A, start_ms=0, duration_ms=500, period_ms=60)
    emu.noise(20, 3)
    reader = Em4100Reader(emu)
    seen = drive(reader, emu, 1500, step_ms=step_ms)
    assert len(spans(seen, step_ms)) == 1
    assert {u for _, u in seen} == {A}
    assert counters(reader) == clean(frames=9, noise_bytes=3, reads=1)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=1, max_value=50), min_size=80, max_size=80),
    max_read=st.integers(min_value=0, max_value=20),
    period=st.integers(min_value=60, max_value=100),
    jitter=st.integers(min_value=0, max_value=10),
)
def test_any_read_split_and_poll_rhythm_gives_one_clean_read(
    steps: list[int], max_read: int, period: int, jitter: int
) -> None:
    emu = Rdm6300(max_read=max_read)
    sent = emu.card(B, start_ms=5, duration_ms=600, period_ms=period, jitter_ms=jitter)
    reader = Em4100Reader(emu)
    t = 0
    reported = []
    for step in [*steps, 1000, 1000]:  # read what is left, then see it go
        t += step
        emu.now_ms = t
        reported.append(reader.poll(t))
    assert counters(reader) == clean(frames=sent, reads=1)
    assert bytes(reader.uid[:5]) == B
    first = reported.index(5)
    last = len(reported) - 1 - reported[::-1].index(5)
    assert all(reported[first:last + 1]) and reported[-1] == 0  # one unbroken hold


def test_confirm_and_window_are_configurable() -> None:
    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=240)  # frames at 0, 80, 160
    three = Em4100Reader(emu, confirm=3)
    assert spans(drive(three, emu, 1000)) == [(180, 480, A)]

    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=240)
    one = Em4100Reader(emu, confirm=1, hold_ms=100)  # no phantom filter at all
    assert spans(drive(one, emu, 1000)) == [(20, 280, A)]

    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=1200, period_ms=400)  # frames further apart than window
    slow = Em4100Reader(emu, window_ms=300)
    assert drive(slow, emu, 2000) == []
    assert counters(slow) == clean(frames=3, phantoms=3)

    with pytest.raises(ValueError):
        Em4100Reader(emu, confirm=0)


def test_another_card_replaces_the_held_one_once_confirmed() -> None:
    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=400)  # 0 ... 320
    emu.card(B, start_ms=400, duration_ms=400)  # 400 ... 720
    reader = Em4100Reader(emu)
    assert spans(drive(reader, emu, 1500)) == [(100, 480, A), (500, 1040, B)]
    assert counters(reader) == clean(frames=10, reads=2)


def test_a_uart_error_is_a_fault_until_reads_work_again() -> None:
    emu = Rdm6300()
    emu.card(A, start_ms=0, duration_ms=400)
    reader = Em4100Reader(emu)
    emu.fail = True
    drive(reader, emu, 40)
    assert reader.fault
    assert reader.io_errors == 3
    emu.fail = False
    assert spans(drive(reader, emu, 1000, start_ms=60)) == [(100, 640, A)]
    assert not reader.fault
    emu.fail = True
    drive(reader, emu, 1100, start_ms=1100)
    assert reader.fault
    emu.fail = False
    drive(reader, emu, 1120, start_ms=1120)  # the UART answers, with nothing to read
    assert not reader.fault
    assert reader.io_errors == 4


def test_a_card_held_across_the_tick_wrap() -> None:
    start = TICKS_MASK + 1 - 300  # ticks_ms wraps 300 ms after the card arrives
    emu = Rdm6300()
    emu.card(A, start_ms=start, duration_ms=600)
    reader = Em4100Reader(emu)
    got = spans(drive(reader, emu, start + 1500, start_ms=start))
    assert got == [(start + 100, start + 880, A)]


# -- the same driver on the MicroPython VM ------------------------------------------------------

SCENARIO = """
import gc
import rdm6300_emu as emu_mod
from firmware.drivers.em4100 import Em4100Reader

A = bytes([0x1F, 0x00, 0xC0, 0xFF, 0xEE])
P = bytes([0x3A, 0x5C, 0x00, 0x00, 0x17])
emu = emu_mod.Rdm6300(max_read=5)
emu.noise(0, 20, seed=3, framing=True)
emu.phantom(P, 100)
emu.send(140, emu_mod.bad_checksum_frame(A))
emu.card(A, 400, 2000, period_ms=70, jitter_ms=8)
reader = Em4100Reader(emu)
mem = getattr(gc, "mem_alloc", None)
try:
    from micropython import heap_lock, heap_unlock  # allocating while locked: MemoryError
except ImportError:
    heap_lock = heap_unlock = None
deltas = [0] * 150
polls = 0
last = (0, "")
for t in range(0, 3000, 20):
    emu.now_ms = t
    locked = heap_lock is not None and 600 <= t < 2200
    if locked:
        heap_lock()
    before = mem() if mem else 0
    n = reader.poll(t)
    after = mem() if mem else 0
    if locked:
        heap_unlock()
    if t >= 600 and n:
        deltas[polls] = after - before
        polls += 1
    cur = (n, "".join("%02x" % b for b in reader.uid[:n]))
    if cur != last:
        print(t, cur[0], cur[1])
        last = cur
print("frames", reader.frames, "reads", reader.reads, "phantoms", reader.phantoms,
      "checksum", reader.checksum_errors, "framing", reader.framing_errors,
      "noise", reader.noise_bytes)
if mem:
    d = deltas[:polls]
    print("ALLOC", polls, max(d), sum(d))
"""


def _run_on_cpython(code: str, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setitem(sys.modules, "rdm6300_emu", rdm6300)
    exec(compile(code, "<scenario>", "exec"), {})
    return capsys.readouterr().out


def test_same_behaviour_on_micropython_and_no_allocation_while_held(
    mpvm: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = mpvm.run(SCENARIO, files={"rdm6300_emu.py": EMULATOR})
    lines = out.strip().splitlines()
    alloc = [ln for ln in lines if ln.startswith("ALLOC")]
    behaviour = [ln for ln in lines if not ln.startswith("ALLOC")]
    on_cpython = _run_on_cpython(SCENARIO, monkeypatch, capsys).strip().splitlines()
    print("\nEM4100 on MicroPython:", *lines, sep="\n  ")
    assert behaviour == on_cpython
    assert behaviour[0] == "500 5 1f00c0ffee"  # confirmed by the second good frame (477 ms)
    assert behaviour[1].split()[1:] == ["0"]  # released once the frames stop
    assert len(behaviour) == 3
    assert "phantoms 1 checksum 1" in behaviour[-1]
    _, polls, worst, total = alloc[0].split()
    assert int(polls) > 80
    assert (int(worst), int(total)) == (0, 0), "poll allocates while a card is held"
