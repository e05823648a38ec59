"""MFRC522 driver against the register-level emulator (and once on the real MicroPython VM)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.drivers.mfrc522 import MFRC522
from protocol import card as cardfmt
from tests.firmware.emulators.mfrc522 import (
    CRC_RESULT_LSB,
    HLTA,
    MODE,
    REQA,
    RF_CFG,
    SEL,
    T_MODE,
    TX_ASK,
    TX_CONTROL,
    WUPA,
    BusError,
    MFRC522Emulator,
    Picc,
    cascade_levels,
    crc_a,
)
from tests.mpvm import MPVM

EMULATOR_SOURCE = Path(__file__).with_name("emulators") / "mfrc522.py"
POLL_MS = 50

UID4 = bytes.fromhex("1234abcd")
UID7 = bytes.fromhex("04a1b2c3d4e5f6")
UID10 = bytes.fromhex("04112233445566778899")


class Rig:
    """An emulated chip, a driver on it, and a clock advancing one poll period per poll."""

    def __init__(self, *, rst: bool = False, emu: MFRC522Emulator | None = None) -> None:
        self.emu = emu or MFRC522Emulator()
        self.drv = MFRC522(self.emu.spi, self.emu.cs, self.emu.rst if rst else None)
        self.now = 0

    def poll(self) -> bytes | None:
        """One poll: the UID reported, or None; checks the uid buffer contract every time."""
        n = self.drv.poll(self.now)
        self.now += POLL_MS
        uid = bytes(self.drv.uid)
        assert len(uid) == cardfmt.MAX_UID_LEN
        if n == 0:
            assert uid == bytes(10), "uid must be all zero after a poll that returns 0"
            return None
        assert n in (4, 7, 10)
        assert uid[n:] == bytes(10 - n)
        cardfmt.check_uid(self.drv.tech, uid[:n])
        return uid[:n]

    def start(self) -> None:
        """The first poll resets the chip, the next one (50 ms later) initialises it."""
        assert self.poll() is None
        self.poll()
        assert not self.drv.fault

    def frames_since(self, mark: int) -> list[tuple[bytes, int, int]]:
        return self.emu.frames[mark:]


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield Rig()


# --- the emulator's own references ----------------------------------------------------------


def test_crc_a_reference_values() -> None:
    assert crc_a(b"\x00\x00") == 0x1EA0  # ISO/IEC 14443-3 annex example
    assert crc_a(bytes([HLTA, 0])) == 0xCD57  # HLTA is sent as 50 00 57 CD


def test_cascade_levels_follow_iso_14443_3() -> None:
    assert cascade_levels(UID4) == [UID4 + bytes([0x12 ^ 0x34 ^ 0xAB ^ 0xCD])]
    cl1, cl2 = cascade_levels(UID7)
    assert cl1[:4] == bytes([0x88]) + UID7[:3] and cl2[:4] == UID7[3:]
    cl1, cl2, cl3 = cascade_levels(UID10)
    assert cl1[0] == cl2[0] == 0x88 and cl3[:4] == UID10[6:]
    with pytest.raises(ValueError):
        Picc(bytes([0x88, 1, 2, 3]))


def test_strict_bus_rejects_transfers_without_chip_select() -> None:
    emu = MFRC522Emulator()
    with pytest.raises(BusError):
        emu.spi.write(b"\x6e\x00")
    emu.cs.value(0)
    with pytest.raises(BusError):
        emu.spi.write(b"\x6f\x00")  # bit 0 of the address byte must be 0


# --- initialisation -----------------------------------------------------------------------------


def test_init_configures_the_chip(rig: Rig) -> None:
    rig.start()
    emu = rig.emu
    assert emu.field_on
    assert emu.reg(TX_CONTROL) & 0x03 == 0x03  # antenna drivers on
    assert emu.reg(TX_ASK) & 0x40  # 100 % ASK
    assert emu.reg(MODE) & 0x03 == 0x01  # CRC preset 0x6363
    assert emu.reg(T_MODE) & 0x80  # TAuto
    assert 1000 <= emu.timeout_us() <= 5000
    assert emu.reg(RF_CFG) >> 4 & 0x07 == 7  # RxGain 48 dB by default
    assert rig.drv.version == 0x92
    assert rig.drv.tech == cardfmt.ISO14443A
    # the last CRC the coprocessor computed is the self-test of init: HLTA's CRC_A
    assert emu.reg(CRC_RESULT_LSB) == 0x57


def test_rx_gain_is_configurable_and_checked() -> None:
    emu = MFRC522Emulator()
    drv = MFRC522(emu.spi, emu.cs, rx_gain=4)
    drv.poll(0)
    drv.poll(50)
    assert emu.reg(RF_CFG) >> 4 & 0x07 == 4
    with pytest.raises(ValueError):
        MFRC522(emu.spi, emu.cs, rx_gain=8)


def test_clone_chip_versions_are_accepted() -> None:
    rig = Rig(emu=MFRC522Emulator(version=0x88))
    rig.start()
    rig.emu.add(Picc(UID4))
    assert rig.poll() == UID4
    assert rig.drv.version == 0x88


# --- reading cards ---------------------------------------------------------------------------


@pytest.mark.parametrize("uid", [UID4, UID7, UID10], ids=["4-byte", "7-byte", "10-byte"])
def test_reads_the_canonical_uid(rig: Rig, uid: bytes) -> None:
    rig.start()
    card = rig.emu.add(Picc(uid))
    mark = len(rig.emu.frames)
    got = rig.poll()
    # SPEC 3.1: the UID bytes in order of reception, without cascade tags or BCC
    assert got == uid
    assert rig.drv.sak == card.sak
    assert card.state == "HALT"
    frames = rig.frames_since(mark)
    levels = len(cascade_levels(uid))
    assert frames[0][:2] == (bytes([REQA]), 7)
    assert [f[0][0] for f in frames[1:-1]] == [s for s in SEL[:levels] for _ in (0, 1)]
    assert frames[-1][0] == bytes([HLTA, 0x00, 0x57, 0xCD])


def test_no_card_gives_zero(rig: Rig) -> None:
    rig.start()
    mark = len(rig.emu.frames)
    assert rig.poll() is None
    assert [f[0] for f in rig.frames_since(mark)] == [bytes([REQA]), bytes([WUPA])]
    assert not rig.drv.fault


def test_held_card_is_reported_on_every_poll(rig: Rig) -> None:
    rig.start()
    card = rig.emu.add(Picc(UID7))
    reports = [rig.poll() for _ in range(100)]
    assert reports == [UID7] * 100
    assert card.state == "HALT"  # halted after each read, woken by WUPA on the next poll
    rig.emu.remove(card)
    assert rig.poll() is None
    rig.emu.add(card)
    assert rig.poll() == UID7
    assert rig.drv.reads == 101


def test_card_left_awake_by_a_lost_hlta_is_still_reported(rig: Rig) -> None:
    rig.start()
    card = rig.emu.add(Picc(UID4))
    assert rig.poll() == UID4
    card.state = "ACTIVE"  # as if the HLTA never reached it
    assert rig.poll() == UID4  # REQA sends it to IDLE silently, WUPA wakes it


# --- several cards ----------------------------------------------------------------------------

PAIRS = {
    "4+4": (bytes.fromhex("1234abcd"), bytes.fromhex("1234abcc")),
    "4+7": (bytes.fromhex("1234abcd"), UID7),
    "7+7 same CL1": (bytes.fromhex("04a1b2c3d4e5f6"), bytes.fromhex("04a1b2c3d4e5f7")),
    "10+10 same CL1+CL2": (bytes.fromhex("04112233445566778899"),
                           bytes.fromhex("04112233445566778898")),
    "last UID bit": (bytes.fromhex("01020304"), bytes.fromhex("01020384")),
    "7+10": (UID7, UID10),
}


@pytest.mark.parametrize("pair", PAIRS.values(), ids=PAIRS.keys())
def test_two_cards_are_both_read(rig: Rig, pair: tuple[bytes, bytes]) -> None:
    rig.start()
    cards = [rig.emu.add(Picc(uid)) for uid in pair]
    first = rig.poll()
    second = rig.poll()
    assert {first, second} == set(pair), "each card that enters is read, one per poll"
    assert rig.drv.collisions >= 1
    # both held: the anticollision winner is reported from now on
    winner = rig.poll()
    assert winner in pair
    assert [rig.poll() for _ in range(5)] == [winner] * 5
    # the winner leaves: the other one is reported
    rig.emu.remove(next(c for c in cards if c.uid == winner))
    other = next(u for u in pair if u != winner)
    assert [rig.poll() for _ in range(3)] == [other] * 3


def test_new_card_is_read_while_another_is_held(rig: Rig) -> None:
    rig.start()
    rig.emu.add(Picc(UID4))
    assert [rig.poll() for _ in range(3)] == [UID4] * 3
    rig.emu.add(Picc(UID10))
    assert rig.poll() == UID10  # REQA reaches only the card that just entered
    assert rig.poll() in (UID4, UID10)


uids = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=7, max_size=7),
    st.binary(min_size=10, max_size=10),
).filter(lambda u: u[0] != 0x88 and not (len(u) == 7 and u[3] == 0x88))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(uids, min_size=2, max_size=4, unique=True))
def test_every_card_in_the_field_is_read(uid_list: list[bytes]) -> None:
    rig = Rig()
    rig.start()
    cards = [rig.emu.add(Picc(uid)) for uid in uid_list]
    seen = [rig.poll() for _ in uid_list]
    assert sorted(u for u in seen if u) == sorted(uid_list)
    # remove the held winner each time: the remaining ones are still reported
    remaining = list(cards)
    while remaining:
        got = rig.poll()
        assert got in [c.uid for c in remaining]
        gone = next(c for c in remaining if c.uid == got)
        rig.emu.remove(gone)
        remaining.remove(gone)
    assert rig.poll() is None


# --- a card leaving, corrupt frames ------------------------------------------------------------


@pytest.mark.parametrize("uid", [UID4, UID7, UID10], ids=["4-byte", "7-byte", "10-byte"])
@pytest.mark.parametrize("held", [False, True], ids=["fresh", "held"])
def test_card_removed_mid_anticollision_gives_no_partial_uid(uid: bytes, held: bool) -> None:
    levels = len(cascade_levels(uid))
    # frames up to and including the last SELECT: REQA (+ WUPA when held), 2 per level
    needed = (2 if held else 1) + 2 * levels
    for frames in range(needed + 2):
        rig = Rig()
        rig.start()
        card = rig.emu.add(Picc(uid))
        if held:
            assert rig.poll() == uid
        card.leave_after(frames)
        got = rig.poll()
        if frames < needed:
            assert got is None, f"card gone after {frames} frames"
        else:
            assert got == uid
        assert rig.poll() is None
        assert not rig.drv.fault


@pytest.mark.parametrize("level", [0, 1, 2])
def test_corrupt_bcc_is_rejected(rig: Rig, level: int) -> None:
    rig.start()
    card = rig.emu.add(Picc(UID10))
    card.bad_bcc, card.bad_bcc_level = 1, level
    assert rig.poll() is None
    assert rig.drv.frame_errors == 1
    assert rig.poll() == UID10  # the next clean answer is read
    card.bad_bcc, card.bad_bcc_level = 1_000, None
    assert [rig.poll() for _ in range(3)] == [None] * 3


@pytest.mark.parametrize("level", [0, 1])
def test_corrupt_sak_crc_is_rejected(rig: Rig, level: int) -> None:
    rig.start()
    card = rig.emu.add(Picc(UID7))
    card.bad_crc, card.bad_crc_level = 1, level
    assert rig.poll() is None
    assert rig.drv.frame_errors == 1
    assert rig.poll() == UID7
    card.bad_crc, card.bad_crc_level = 1_000, None
    assert [rig.poll() for _ in range(3)] == [None] * 3


def test_sak_contradicting_the_cascade_tag_is_rejected(rig: Rig) -> None:
    rig.start()
    rig.emu.add(Picc(UID4, sak=0x0C))  # "UID not complete" after a complete 4-byte UID
    assert rig.poll() is None
    assert rig.drv.frame_errors >= 1


def test_card_without_bit_frame_anticollision_is_ignored(rig: Rig) -> None:
    rig.start()
    rig.emu.add(Picc(UID4, atqa=b"\x00\x0c"))  # Topaz/Jewel-style ATQA
    assert rig.poll() is None
    assert not rig.drv.fault


# --- the chip failing -----------------------------------------------------------------------------


def run_until(rig: Rig, predicate: Callable[[], bool], limit_ms: int) -> int:
    """Poll until ``predicate()`` holds; the simulated milliseconds it took."""
    start = rig.now
    while rig.now - start <= limit_ms:
        rig.poll()
        if predicate():
            return rig.now - start
    raise AssertionError(f"not within {limit_ms} ms")


@pytest.mark.parametrize("miso", [0x00, 0xFF])
def test_chip_that_stops_answering_sets_fault_and_recovers(miso: int) -> None:
    rig = Rig()
    rig.start()
    rig.emu.add(Picc(UID4))
    assert rig.poll() == UID4
    rig.emu.power_off(miso)
    assert rig.poll() is None
    assert rig.drv.fault
    # 30 s without the chip: resets are retried with a backoff, not on every poll
    resets = rig.drv.resets
    for _ in range(30_000 // POLL_MS):
        assert rig.poll() is None
        assert rig.drv.fault
    attempts = rig.drv.resets - resets
    assert 5 <= attempts <= 15, attempts
    rig.emu.power_on()
    took = run_until(rig, lambda: not rig.drv.fault, 6_000)
    assert took <= 5_000 + 2 * POLL_MS
    assert rig.poll() == UID4


def test_chip_absent_from_the_start_is_a_fault() -> None:
    rig = Rig()
    rig.emu.power_off(0xFF)
    rig.poll()
    rig.poll()
    assert rig.drv.fault
    rig.emu.power_on()
    rig.emu.add(Picc(UID7))
    run_until(rig, lambda: not rig.drv.fault, 1_000)
    assert rig.poll() == UID7


def test_hung_chip_is_revived_by_the_reset_pin() -> None:
    rig = Rig(rst=True)
    rig.start()
    rig.emu.add(Picc(UID4))
    assert rig.poll() == UID4
    resets = rig.emu.resets
    rig.emu.hang(0xFF)
    assert rig.poll() is None
    assert rig.drv.fault
    took = run_until(rig, lambda: not rig.drv.fault, 500)
    assert took <= 3 * POLL_MS  # the next poll pulses rst, the probe 50 ms later succeeds
    assert rig.emu.resets == resets + 1
    assert rig.poll() == UID4


def test_hung_chip_without_reset_pin_stays_faulty() -> None:
    rig = Rig()
    rig.start()
    rig.emu.hang(0x00)
    for _ in range(200):
        assert rig.poll() is None
    assert rig.drv.fault


def test_stalled_commands_set_fault_and_soft_reset_recovers() -> None:
    rig = Rig()
    rig.start()
    rig.emu.add(Picc(UID7))
    assert rig.poll() == UID7
    rig.emu.stall()  # registers answer, commands never finish
    began = time.monotonic()
    assert [rig.poll() for _ in range(2)] == [None, None]
    assert not rig.drv.fault  # one stuck command is not yet a fault
    assert rig.poll() is None
    assert rig.drv.fault
    assert rig.drv.stuck == 3
    assert time.monotonic() - began < 1.0  # each stuck wait is bounded (8 ms)
    run_until(rig, lambda: not rig.drv.fault, 500)
    assert rig.poll() == UID7


def test_chip_reset_behind_the_drivers_back_is_reinitialised(rig: Rig) -> None:
    rig.start()
    rig.emu.add(Picc(UID10))
    assert rig.poll() == UID10
    rig.emu.brownout()  # registers back to reset values: antenna off, timer off
    assert not rig.emu.field_on
    assert rig.poll() == UID10
    assert rig.drv.reinits == 1
    assert not rig.drv.fault


# --- on the real MicroPython VM ---------------------------------------------------------------

VM_CODE = """
import gc
from mfrc522_emu import MFRC522Emulator, Picc, TapSPI
from firmware.drivers.mfrc522 import MFRC522

UID = bytes([0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6])

emu = MFRC522Emulator()
emu.add(Picc(UID))
assert repr(emu.cards[0]) == "Picc(04a1b2c3d4e5f6)"
tap = TapSPI(emu.spi, emu.cs)
drv = MFRC522(tap, tap.cs)

def polls(n, t, expect=7):
    bad = 0
    for _ in range(n):
        if drv.poll(t) != expect:
            bad += 1
        t += 50
    return bad

t = 0
drv.poll(t)
t += 50
first = drv.poll(t)
uid_ok = bytes(drv.uid[:first]) == UID and first == 7
t += 50
polls(5, t)  # warm up

# driver + emulator, both running on the VM (the emulator allocates: lists of bits)
gc.collect()
gc.disable()
a = gc.mem_alloc()
bad_live = polls(100, t)
live = gc.mem_alloc() - a
gc.enable()

# the driver alone: one steady-state poll recorded, then served back from the recording
def replayed(expect):
    recorded = drv.poll(t)  # in record mode
    tap.replay()
    gc.collect()
    samples = []
    for _ in range(3):
        a = gc.mem_alloc()
        bad = polls(100, t, expect)
        samples.append([gc.mem_alloc() - a, bad])
    return {"recorded": recorded, "samples": samples, "cycles": tap.cycles, "pos": tap.pos,
            "mismatches": tap.mismatches, "spi_bytes": len(tap.mosi)}

tap.record()
held = replayed(7)
tap.passthrough()
emu.cards[0].leave_after(0)
t += 50
polls(2, t, 0)
tap.record()
empty = replayed(0)

import json
print(json.dumps({"uid_ok": uid_ok, "first": first, "bad_live": bad_live, "live": live,
                  "held": held, "empty": empty}))
"""


def test_steady_state_poll_allocates_nothing_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(VM_CODE, files={"mfrc522_emu.py": EMULATOR_SOURCE.read_text()})
    result = json.loads(out.strip().splitlines()[-1])
    assert result["uid_ok"], result
    assert result["bad_live"] == 0
    figures = {}
    for phase, expect in (("held", 7), ("empty", 0)):
        run = result[phase]
        assert run["recorded"] == expect, run
        assert run["mismatches"] == 0, "the replayed polls must send exactly the recorded bytes"
        assert run["cycles"] == 300 and run["pos"] == 0, run
        assert all(bad == 0 for _alloc, bad in run["samples"]), run
        figures[phase] = [alloc / 100 for alloc, _bad in run["samples"]]
        figures[phase + " SPI bytes"] = run["spi_bytes"]
    print(
        f"\nMFRC522 poll on MicroPython, bytes allocated per poll: {figures}; "
        f"driver + emulator, card held: {result['live'] / 100:.0f}"
    )
    # measured 0 on every sample: one allocation per poll (>= 16 bytes) would fail this
    assert max(figures["held"] + figures["empty"]) <= 1.0, figures
