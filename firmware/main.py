"""Boot: board profile, config and key, queue recovery, boot counter, hardware, then the app.

On the reader ``/main.py`` calls ``run()``. Tests and the simulator call ``boot`` with their own
root directory and a hardware builder made of emulators instead of ``firmware.hw_esp32``.
"""

import asyncio
import gc
import sys

import firmware
from firmware.app import ReaderApp
from firmware.clock import Clock
from firmware.config import check_key, parse_config
from firmware.fs import FS, join
from firmware.queue import RecordQueue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _read(fs: FS, path: str) -> bytes:
    data = fs.read_file(path)
    if data is None:
        raise OSError("missing " + path)
    return data


_BOOT_ONLY = ("board", "bootcount")


def _forget_boot_only_modules() -> None:
    """Modules needed only to start free their RAM (as .mpy, code lives on the heap)."""
    for name in _BOOT_ONLY:
        sys.modules.pop("firmware." + name, None)
        if hasattr(firmware, name):
            delattr(firmware, name)
    gc.collect()


def boot(fs: FS, root: str, hardware: "Any") -> ReaderApp:
    """Build the application from the files under ``root`` (config.json, key.bin, boards/)."""
    from firmware.board import load_profile
    from firmware.bootcount import BootCounter

    config = parse_config(_read(fs, join(root, "config.json")).decode())
    key = check_key(_read(fs, join(root, "key.bin")))
    profile, _ = load_profile(_read(fs, join(root, "boards/" + config.board + ".json")).decode())
    data = join(root, "data")
    fs.makedirs(join(data, "queue"))
    queue = RecordQueue(fs, join(data, "queue"), capacity=config.get("queue_capacity")).open()
    boot_number = BootCounter(fs, data).advance(floor=queue.max_boot)
    app = ReaderApp(config, key, boot_number, hardware.build_reader(profile),
                    hardware.build_feedback(profile, config.get("volume")), queue,
                    Clock(set_rtc=hardware.set_rtc), hardware.build_watchdog())
    _forget_boot_only_modules()
    return app


def run() -> None:
    from firmware import hw_esp32

    app = boot(FS(), "/", hw_esp32)
    asyncio.run(app.run())
