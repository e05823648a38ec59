"""The only module that touches ``machine``: builds the reader's hardware from its board profile.

The simulator and the tests build the same objects from emulators instead, so everything above
this layer runs unchanged in both places.
"""

import machine

from firmware.drivers.em4100 import Em4100Reader
from firmware.drivers.mfrc522 import MFRC522
from firmware.drivers.wiegand import WiegandReader
from firmware.feedback import Feedback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from firmware.app import CardReader
    from firmware.board import Profile
    from firmware.clock import Clock
    from firmware.config import ReaderConfig
    from firmware.net import NetLink

WATCHDOG_MS = 8000


def build_reader_uart(spec: "dict[str, Any]") -> "machine.UART":
    """The UART of a UART card reader (``profile["reader"]``); also read raw by firmware/diag."""
    if "tx" in spec:  # otherwise the UART's default TX, which board.py reserved
        return machine.UART(spec["uart"], baudrate=spec["baudrate"], rx=spec["rx"],
                            tx=spec["tx"], rxbuf=512)
    return machine.UART(spec["uart"], baudrate=spec["baudrate"], rx=spec["rx"], rxbuf=512)


def build_reader(profile: "Profile") -> "CardReader":
    spec = profile["reader"]
    kind = spec["type"]
    if kind == "mfrc522":
        spi = machine.SPI(spec["spi"], baudrate=spec["baudrate"], polarity=0, phase=0,
                          sck=machine.Pin(spec["sck"]), mosi=machine.Pin(spec["mosi"]),
                          miso=machine.Pin(spec["miso"]))
        cs = machine.Pin(spec["cs"], machine.Pin.OUT, value=1)
        rst = machine.Pin(spec["rst"], machine.Pin.OUT, value=1) if "rst" in spec else None
        return MFRC522(spi, cs, rst)
    if kind == "rdm6300":
        return Em4100Reader(build_reader_uart(spec))
    d0 = machine.Pin(spec["d0"], machine.Pin.IN, machine.Pin.PULL_UP)
    d1 = machine.Pin(spec["d1"], machine.Pin.IN, machine.Pin.PULL_UP)
    return WiegandReader(d0, d1)


def build_feedback(profile: "Profile", volume: int) -> Feedback:
    buzzer = machine.PWM(machine.Pin(profile["buzzer"]), freq=2700, duty_u16=0)
    led_ok = machine.Pin(profile["led_ok"], machine.Pin.OUT, value=0)
    led_error = machine.Pin(profile["led_error"], machine.Pin.OUT, value=0)
    return Feedback(buzzer, led_ok, led_error, volume)


def build_watchdog() -> machine.WDT:
    return machine.WDT(timeout=WATCHDOG_MS)


def set_rtc(unix_s: int) -> None:
    """Set the RTC from Unix seconds (the port's epoch may be 2000)."""
    import time

    offset = 946684800 if time.gmtime(0)[0] == 2000 else 0
    year, month, day, hour, minute, second, weekday, _ = time.gmtime(unix_s - offset)
    machine.RTC().datetime((year, month, day, weekday, hour, minute, second, 0))


def reboot() -> None:
    """The gateway's authenticated ``reboot`` command, once its result has been sent."""
    machine.reset()


def build_bus(profile: "Profile") -> "tuple[machine.UART, machine.Pin]":
    """The RS-485 transceiver from the profile's ``rs485`` table: ``(uart, de_pin)``.

    DE starts low (receiving) so a booting reader never holds the bus. ``timeout=0``: reads
    return at once with what is there (``firmware.bus_link`` polls). The 4 KiB receive ring holds
    what arrives while the event loop is blocked (a flash write, our own transmission).
    """
    spec = profile["rs485"]
    de = machine.Pin(spec["de"], machine.Pin.OUT, value=0)
    uart = machine.UART(
        spec["uart"],
        baudrate=spec["baudrate"],
        tx=spec["tx"],
        rx=spec["rx"],
        rxbuf=4096,
        timeout=0,
    )
    return uart, de


def build_network(profile: "Profile", config: "ReaderConfig", clock: "Clock") -> "NetLink | None":
    """The reader's IP link (``firmware/net.py``) from its board profile and ``config.network``:
    a Wi-Fi station or LAN8720 Ethernet; None when the board's link is the RS-485 bus. A bad
    ``network`` table raises ``ConfigError`` naming the key."""
    import network

    from firmware.net import EthernetLink, WifiLink, parse_network

    spec = profile["network"]
    kind = spec["type"]
    settings = parse_network(config.network, kind)
    seed = "reader-" + str(config.reader_id)  # readers restarted together spread their retries
    if kind == "wifi":
        return WifiLink(network, settings, clock, seed)
    if kind == "ethernet":
        return EthernetLink(network, machine.Pin, spec, settings, clock, seed)
    return None
