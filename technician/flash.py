"""``attendance-provision flash``: check the chip and the image, then write it with esptool.

An ESP-IDF image starts with a common header: magic 0xE9, segment count, SPI mode, flash
size/frequency, entry point (8 bytes), then the extended header (16 bytes) whose bytes 4-5 are
the chip id the image was built for (little-endian). MicroPython's ``firmware.bin`` begins with
the second-stage bootloader, so that header is the first thing in the file; it is written at
0x1000 on an ESP32 and at 0x0 on the later chips. The chip on the port is asked first (esptool's
detection: GET_SECURITY_INFO, or the ROM's chip-detect register on an ESP32), and nothing is
written unless the image was built for that chip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esptool import cmds  # type: ignore[import-untyped]
from esptool.util import FatalError  # type: ignore[import-untyped]
from serial import SerialException

IMAGE_MAGIC = 0xE9
HEADER_LEN = 24
# Image chip ids (ESP-IDF esp_chip_id_t), and where each chip's bootloader goes in flash.
CHIPS = {0: "ESP32", 2: "ESP32-S2", 5: "ESP32-C3", 9: "ESP32-S3", 12: "ESP32-C2",
         13: "ESP32-C6", 16: "ESP32-H2", 18: "ESP32-P4", 23: "ESP32-C5"}
BOOTLOADER_OFFSET = {"ESP32": 0x1000, "ESP32-S2": 0x1000}
SUPPORTED = ("ESP32",)  # chips with board profiles (firmware/board.py CHIPS)


class FlashError(Exception):
    """Refused before or during the write; ``str()`` is bilingual."""


@dataclass(frozen=True)
class Image:
    path: Path
    size: int
    chip: str
    segments: int

    @property
    def offset(self) -> int:
        return BOOTLOADER_OFFSET.get(self.chip, 0)


def read_image(path: Path) -> Image:
    """Parse the image header; ``FlashError`` when it is not an ESP image."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlashError(f"Không đọc được tệp / cannot read {path}: {exc.strerror}") from None
    if len(data) < HEADER_LEN or data[0] != IMAGE_MAGIC:
        raise FlashError(f"{path}: không phải ảnh firmware ESP (byte đầu phải là 0xE9) / not an "
                         "ESP firmware image (the first byte must be 0xE9)")
    chip_id = struct.unpack_from("<H", data, 12)[0]
    chip = CHIPS.get(chip_id)
    if chip is None:
        raise FlashError(f"{path}: mã chip {chip_id} trong ảnh không xác định / unknown chip id "
                         f"{chip_id} in the image header")
    return Image(path, len(data), chip, data[1])


def check_match(image: Image, chip: str) -> None:
    """Refuse an image built for another chip, or a chip the reader firmware does not support."""
    if image.chip != chip:
        raise FlashError(
            f"Ảnh {image.path.name} dành cho {image.chip}, nhưng chip trên cổng là {chip}: "
            f"không ghi / the image {image.path.name} is built for {image.chip} but the chip on "
            f"the port is {chip}: nothing written. Tải đúng bản MicroPython cho {chip} / get the "
            f"MicroPython build for {chip}.")
    if chip not in SUPPORTED:
        raise FlashError(f"Chip {chip} chưa có hồ sơ bo mạch / {chip} has no board profile "
                         f"(supported: {', '.join(SUPPORTED)})")


def detect(port: str, before: str, attempts: int) -> Any:
    """Connect to the ROM bootloader on ``port`` and return esptool's loader for its chip."""
    if not Path(port).exists() and "://" not in port:
        raise FlashError(f"Không có cổng {port} (cắm cáp USB? xem `ls /dev/ttyUSB* /dev/ttyACM*`)"
                         f" / no port {port} (is the USB cable in?)")
    try:
        return cmds.detect_chip(port, 115200, before, connect_attempts=attempts)
    except (FatalError, SerialException, OSError) as exc:
        raise FlashError(
            f"Không kết nối được bộ nạp ROM trên {port}: giữ nút BOOT, nhấn EN rồi thử lại / no "
            f"ESP bootloader answered on {port}: hold BOOT, press EN, try again ({exc})") from None


def write(esp: Any, image: Image, baud: int) -> None:
    """Load the flasher stub and write the image at its chip's offset, then reset the chip."""
    try:
        esp = cmds.run_stub(esp)
        if baud != esp.get_baud():
            esp.change_baud(baud)
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(image.offset, str(image.path))])
        cmds.reset_chip(esp, "hard-reset")
    except (FatalError, SerialException, OSError) as exc:
        raise FlashError(f"Ghi flash thất bại / writing the flash failed: {exc}. Thiết bị chưa "
                         "dùng được: nạp lại / the board is not usable: flash it again") from None
    finally:
        esp._port.close()


def flash(port: str, image_path: Path, *, before: str = "default-reset", attempts: int = 7,
          baud: int = 460800) -> Image:
    """The whole command: image first (no port needed to refuse a bad file), then the chip."""
    image = read_image(image_path)
    esp = detect(port, before, attempts)
    try:
        check_match(image, esp.CHIP_NAME)
    except FlashError:
        esp._port.close()
        raise
    write(esp, image, baud)
    return image
