"""``attendance-provision flash``: the image and the chip are checked before anything is written.

The chip is detected by the real esptool over a pseudo-terminal whose far end is a fake ROM
bootloader (fake_rom.py); the write itself needs real hardware (docs/technician.md, bench
procedure), so the tests stop at it: ``flash.write`` is replaced by a recorder.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from technician import flash, provision
from tests.technician.fake_rom import WRITE_OPS, FakeRom


def image(tmp_path: Path, chip_id: int, name: str = "firmware.bin") -> Path:
    header = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000)
    extended = bytes([0xEE, 0, 0, 0]) + struct.pack("<HBHH", chip_id, 0, 0, 0xFFFF) + bytes(5)
    path = tmp_path / name
    path.write_bytes(header + extended + bytes(1000))
    return path


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    done: list[tuple[str, int]] = []

    def record(esp: Any, img: flash.Image, baud: int) -> None:
        done.append((esp.CHIP_NAME, img.offset))
        esp._port.close()

    monkeypatch.setattr(flash, "write", record)
    return done


@pytest.fixture
def rom(request: pytest.FixtureRequest) -> Iterator[FakeRom]:
    r = FakeRom(getattr(request, "param", "ESP32"))
    yield r
    r.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = provision.main(["flash", *argv, "--before", "no-reset", "--attempts", "1"])
    out, err = capsys.readouterr()
    return status, " ".join((out + err).split())


def test_a_matching_image_reaches_the_write_at_the_chips_offset(
        rom: FakeRom, tmp_path: Path, writes: list[tuple[str, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, rom.port, str(image(tmp_path, 0)))
    assert status == 0, text
    assert writes == [("ESP32", 0x1000)]
    assert "MicroPython written" in text


def test_an_esp32_s3_image_is_refused_for_an_esp32(
        rom: FakeRom, tmp_path: Path, writes: list[tuple[str, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, rom.port, str(image(tmp_path, 9)))
    assert status == 1
    assert writes == [] and not WRITE_OPS & set(rom.ops)
    assert "dành cho ESP32-S3" in text and "built for ESP32-S3 but the chip on the port is " \
        "ESP32" in text


@pytest.mark.parametrize("rom", ["ESP32-S3", "ESP32-C3"], indirect=True)
def test_an_esp32_image_is_refused_for_a_later_chip(
        rom: FakeRom, tmp_path: Path, writes: list[tuple[str, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, rom.port, str(image(tmp_path, 0)))
    assert status == 1 and writes == []
    assert "built for ESP32 but the chip on the port is ESP32-" in text


@pytest.mark.parametrize("rom", ["ESP32-C3"], indirect=True)
def test_a_matching_image_for_a_chip_without_board_profiles_is_refused(
        rom: FakeRom, tmp_path: Path, writes: list[tuple[str, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, rom.port, str(image(tmp_path, 5)))
    assert status == 1 and writes == []
    assert "ESP32-C3 has no board profile" in text


def test_not_an_image_is_refused_without_touching_the_port(
        rom: FakeRom, tmp_path: Path, writes: list[tuple[str, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"hello, this is not firmware" * 10)
    status, text = run(capsys, rom.port, str(bad))
    assert status == 1 and rom.ops == [] and writes == []
    assert "0xE9" in text
    status, text = run(capsys, rom.port, str(image(tmp_path, 77)))
    assert status == 1 and "unknown chip id 77" in text


def test_a_port_that_does_not_exist(tmp_path: Path, writes: list[tuple[str, int]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, "/dev/ttyUSB-missing", str(image(tmp_path, 0)))
    assert status == 1 and writes == []
    assert "Không có cổng /dev/ttyUSB-missing" in text and "no port" in text


def test_a_port_where_no_bootloader_answers(tmp_path: Path, writes: list[tuple[str, int]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    master, slave = os.openpty()
    try:
        status, text = run(capsys, os.ttyname(slave), str(image(tmp_path, 0)))
    finally:
        os.close(master)
        os.close(slave)
    assert status == 1 and writes == []
    assert "no ESP bootloader answered" in text and "giữ nút BOOT" in text
