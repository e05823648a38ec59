"""Boot: board profile, config and key, queue recovery, boot counter, hardware, link, the app.

On the reader ``/main.py`` calls ``run()``. Tests and the simulator call ``boot`` with their own
root directory and a hardware builder made of emulators instead of ``firmware.hw_esp32``.
"""

import asyncio
import gc
import sys

import firmware
from firmware.app import ReaderApp
from firmware.clock import Clock
from firmware.commands import CommandHandler
from firmware.config import check_key, parse_config
from firmware.fs import FS, join
from firmware.queue import RecordQueue
from firmware.uplink import Uplink

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
    commands = CommandHandler(app, fs, root, hardware.reboot)
    app.link = _build_link(app, commands, profile, hardware, root)
    _forget_boot_only_modules()
    return app


def _build_link(app: ReaderApp, commands: CommandHandler, profile: "Any", hardware: "Any",
                root: str) -> "Any":
    """RS-485 when the board's network is the bus, else MQTT over Wi-Fi or Ethernet."""
    if profile["network"]["type"] == "rs485":
        from firmware.bus_link import BusLink
        from protocol import frame

        uart, de = hardware.build_bus(profile)
        return BusLink(Uplink(app, commands, frame.MAX_PAYLOAD), uart, de,
                       app.config.get("bus_address"), profile["rs485"]["baudrate"])
    from firmware.mqtt_link import MqttLink

    network = app.config.network
    return MqttLink(app, Uplink(app, commands), hardware.build_network(profile, app.config,
                                                                       app.clock),
                    network["broker"], network.get("port", 1883), network.get("mqtt_password"),
                    ssl=_tls_context(root, network.get("ca_file")))


def _tls_context(root: str, ca_file: "str | None") -> "Any":
    """TLS to the broker when the config names the school CA's certificate (PEM, on flash)."""
    if not ca_file:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the broker (CERT_REQUIRED)
    context.load_verify_locations(cafile=join(root, ca_file))
    return context


def run() -> None:
    from firmware import hw_esp32

    app = boot(FS(), "/", hw_esp32)
    asyncio.run(app.run())
