"""Board profiles: the reader's hardware described as data (hardware/boards/*.json).

The same checks run on the reader at boot and in the technician's tools on a laptop, so a profile
that names a pin twice, a pin the chip lacks, an input-only pin as an output, or a bus the chip
does not have is refused with a message that names the key at fault.
"""

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Profile = dict[str, Any]

PROFILE_VERSION = 1

# ESP32 (WROOM/WROVER modules): the GPIOs that exist, those wired to the module's flash, those that
# can only be inputs, the strapping pins that decide the boot mode, and the fixed RMII pins the
# Ethernet MAC takes. Buses usable by an application: SPI 1 (HSPI) and 2 (VSPI); UART 1 and 2
# (UART 0 is the REPL console the technician uses).
_ESP32 = {
    "gpios": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23,
              25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39),
    "flash": (6, 7, 8, 9, 10, 11),
    "input_only": (34, 35, 36, 37, 38, 39),
    "strapping": (0, 2, 5, 12, 15),
    "rmii": (19, 21, 22, 25, 26, 27),
    "spi": (1, 2),
    "uart": (1, 2),
    # MicroPython drives a UART's TX on its default pin unless told another: 1 -> 10, 2 -> 17.
    "uart_tx": (-1, 10, 17),
}
CHIPS = {"esp32": _ESP32}

# reader type -> (bus kind or None, {pin key: is an output})
_READERS = {
    "mfrc522": ("spi", {"sck": True, "mosi": True, "miso": False, "cs": True, "rst": True}),
    "rdm6300": ("uart", {"rx": False, "tx": True}),
    "wiegand": (None, {"d0": False, "d1": False}),
}
_NETWORKS = ("wifi", "ethernet", "rs485")
_ETHERNET_PINS = {"mdc": True, "mdio": True, "power": True, "ref_clk": True}


class BoardError(ValueError):
    """A profile that cannot drive this board; the message names the key and the reason."""


def _int_field(table: "Profile", key: str, where: str, lowest: int, highest: int) -> int:
    value = table.get(key)
    if type(value) is not int or not lowest <= value <= highest:
        raise BoardError(where + key + ": must be an integer " + str(lowest) + ".." + str(highest))
    return value


def _table(profile: "Profile", key: str) -> "Profile":
    value = profile.get(key)
    if not isinstance(value, dict):
        raise BoardError(key + ": must be a table")
    return value


class _Pins:
    """Collects every pin a profile uses, refusing duplicates and impossible uses."""

    def __init__(self, chip: "dict[str, tuple[int, ...]]") -> None:
        self.chip = chip
        self.used: dict[int, str] = {}
        self.warnings: list[str] = []

    def add(self, table: "Profile", key: str, where: str, output: bool,
            optional: bool = False) -> None:
        if optional and table.get(key) is None:
            return
        pin = _int_field(table, key, where, 0, 63)
        role = where + key
        if pin not in self.chip["gpios"]:
            raise BoardError(role + ": GPIO" + str(pin) + " does not exist on this chip")
        if pin in self.chip["flash"]:
            raise BoardError(role + ": GPIO" + str(pin) + " is wired to the module's flash")
        if output and pin in self.chip["input_only"]:
            raise BoardError(role + ": GPIO" + str(pin) + " is input-only and cannot drive "
                             + "an output")
        if pin in self.used:
            raise BoardError(role + ": GPIO" + str(pin) + " is already used by "
                             + self.used[pin])
        self.used[pin] = role
        if pin in self.chip["strapping"]:
            self.warnings.append(role + ": GPIO" + str(pin) + " is a strapping pin; keep it "
                                 + "at its boot level while the board resets")


def check_profile(profile: "Profile") -> "list[str]":
    """Validate a parsed profile; return warnings, raise ``BoardError`` for errors."""
    if not isinstance(profile, dict):
        raise BoardError("profile: must be a JSON object")
    if profile.get("profile") != PROFILE_VERSION:
        raise BoardError("profile: unsupported profile format version " + repr(
            profile.get("profile")) + " (this firmware reads " + str(PROFILE_VERSION) + ")")
    name = profile.get("name")
    if not isinstance(name, str) or not name:
        raise BoardError("name: must be a non-empty string")
    chip = CHIPS.get(profile.get("chip", ""))
    if chip is None:
        raise BoardError("chip: unknown chip " + repr(profile.get("chip")))
    pins = _Pins(chip)

    network = _table(profile, "network")
    kind = network.get("type")
    if kind not in _NETWORKS:
        raise BoardError("network.type: must be one of " + ", ".join(_NETWORKS))
    if kind == "ethernet":
        if network.get("phy") != "LAN8720":
            raise BoardError("network.phy: only LAN8720 is supported")
        _int_field(network, "phy_addr", "network.", 0, 31)
        for pin in chip["rmii"]:
            pins.used[pin] = "network (Ethernet RMII)"
        for key, output in _ETHERNET_PINS.items():
            pins.add(network, key, "network.", output)
        if network.get("ref_clk_mode") not in ("in", "out"):
            raise BoardError("network.ref_clk_mode: must be in or out")

    reader = _table(profile, "reader")
    rtype = reader.get("type")
    if rtype not in _READERS:
        raise BoardError("reader.type: must be one of " + ", ".join(_READERS))
    bus, reader_pins = _READERS[rtype]
    if bus is not None:
        _int_field(reader, bus, "reader.", 0, 9)
        if reader[bus] not in chip[bus]:
            raise BoardError("reader." + bus + ": this chip has no " + bus.upper() + " "
                             + str(reader[bus]) + " for applications (use "
                             + " or ".join(str(b) for b in chip[bus]) + ")")
        _int_field(reader, "baudrate", "reader.", 1200, 20_000_000)
    if bus == "uart" and reader.get("tx") is None:
        # The RDM6300 only talks, but the UART still drives its TX pin: reserve the default one.
        default_tx = chip["uart_tx"][reader["uart"]]
        if default_tx in chip["flash"] or default_tx in pins.used:
            raise BoardError("reader.tx: UART " + str(reader["uart"]) + " would drive its "
                             + "default TX, GPIO" + str(default_tx) + ", which is "
                             + ("wired to the module's flash" if default_tx in chip["flash"]
                                else "used by " + pins.used[default_tx])
                             + "; name a free output pin as reader.tx")
        pins.used[default_tx] = "reader.tx (UART " + str(reader["uart"]) + " default)"
    for key, output in reader_pins.items():
        pins.add(reader, key, "reader.", output, optional=key in ("rst", "tx"))

    for key in ("buzzer", "led_ok", "led_error"):
        pins.add(profile, key, "", True)

    rs485 = profile.get("rs485")
    if rs485 is not None:
        if not isinstance(rs485, dict):
            raise BoardError("rs485: must be a table")
        uart = _int_field(rs485, "uart", "rs485.", 0, 9)
        if uart not in chip["uart"]:
            raise BoardError("rs485.uart: this chip has no UART " + str(uart)
                             + " for applications")
        if bus == "uart" and reader["uart"] == uart:
            raise BoardError("rs485.uart: UART " + str(uart) + " is already used by the reader")
        _int_field(rs485, "baudrate", "rs485.", 9600, 921600)
        for key, output in (("tx", True), ("rx", False), ("de", True)):
            pins.add(rs485, key, "rs485.", output)
    elif kind == "rs485":
        raise BoardError("rs485: network.type is rs485 but the profile has no rs485 table")
    return pins.warnings


def load_profile(text: str) -> "tuple[Profile, list[str]]":
    """Parse and validate a profile's JSON text; return it with its warnings."""
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise BoardError("profile: not valid JSON (" + str(exc) + ")") from None
    return profile, check_profile(profile)
