"""The persistent boot counter (firmware/bootcount.py): never the same boot twice, whatever byte
the power cuts at, on CPython and on the MicroPython VM."""

from __future__ import annotations

import json
from pathlib import Path

from firmware.bootcount import NAMES, BootCounter
from firmware.fs import FS
from tests.firmware import powercut
from tests.mpvm import MPVM

POWERCUT = Path(powercut.__file__)


def test_counts_up_across_boots_alternating_slots(tmp_path: Path) -> None:
    values = [BootCounter(FS(sync=False), str(tmp_path)).advance() for _ in range(5)]
    assert values == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == list(NAMES)
    assert all(p.stat().st_size == 8 for p in tmp_path.iterdir())
    counter = BootCounter(FS(sync=False), str(tmp_path))
    assert counter.last()[0] == 5 and not counter.fault


def test_floor_lifts_the_value(tmp_path: Path) -> None:
    counter = BootCounter(FS(sync=False), str(tmp_path))
    assert counter.advance() == 1
    assert counter.advance(floor=41) == 42
    assert counter.advance(floor=3) == 43
    assert counter.value == 43


def test_torn_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    for _ in range(3):
        BootCounter(FS(sync=False), str(tmp_path)).advance()  # a=1, b=2, a=3
    (tmp_path / NAMES[0]).write_bytes(b"BC\x00")  # the write of 3 was torn: 3 was never used
    counter = BootCounter(FS(sync=False), str(tmp_path))
    assert counter.advance() == 3 and not counter.fault
    assert BootCounter(FS(sync=False), str(tmp_path)).advance() == 4


def test_both_slots_unreadable_is_a_fault_and_uses_the_floor(tmp_path: Path) -> None:
    for _ in range(2):
        BootCounter(FS(sync=False), str(tmp_path)).advance()
    for name in NAMES:
        data = bytearray((tmp_path / name).read_bytes())
        data[4] ^= 0xFF
        (tmp_path / name).write_bytes(data)
    counter = BootCounter(FS(sync=False), str(tmp_path))
    assert counter.advance(floor=7) == 8  # e.g. the queue's max_boot
    assert counter.fault


SWEEP = """
import os

from firmware.bootcount import BootCounter
from firmware.fs import FS
from powercut import PowerCut, PowerCutFS, rmtree


def sweep(root, rounds):
    rmtree(root)
    os.mkdir(root)
    counting = PowerCutFS()
    for _ in range(rounds):
        BootCounter(counting, root).advance()
    total = counting.spent
    for cut in range(total + 1):
        rmtree(root)
        os.mkdir(root)
        fs = PowerCutFS(cut)
        returned = []
        try:
            for _ in range(rounds):
                returned.append(BootCounter(fs, root).advance())
        except PowerCut:
            pass
        after = [BootCounter(FS(False), root).advance() for _ in range(2)]
        if returned and after[0] <= returned[-1] or after[1] != after[0] + 1:
            raise AssertionError("cut " + str(cut) + ": " + str(returned) + " then " + str(after))
        if returned != list(range(1, len(returned) + 1)):
            raise AssertionError("cut " + str(cut) + ": " + str(returned))
    rmtree(root)
    return total
"""


def test_power_cut_at_every_byte(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(SWEEP.replace("from powercut", "from tests.firmware.powercut"), namespace)
    total = namespace["sweep"](str(tmp_path / "bc"), 6)  # type: ignore[operator]
    assert total == 6 * 8


def test_power_cut_at_every_byte_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(SWEEP + "\nprint(sweep('/bc', 6))", files={"powercut.py": POWERCUT})
    assert json.loads(out) == 6 * 8
