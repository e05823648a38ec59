"""Board profiles as data: every shipped profile loads; impossible ones are refused clearly."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from firmware.board import BoardError, check_profile, load_profile

BOARDS = Path(__file__).resolve().parents[2] / "hardware" / "boards"
PROFILES = sorted(BOARDS.glob("*.json"))


def _profile(name: str) -> dict[str, Any]:
    return json.loads((BOARDS / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_the_four_required_boards_are_shipped() -> None:
    names = {p.stem for p in PROFILES}
    assert {"esp32-devkitc-mfrc522", "esp32-devkitc-rdm6300", "esp32-devkitc-wiegand",
            "olimex-esp32-poe-mfrc522"} <= names
    readers = {_profile(n)["reader"]["type"] for n in names}
    assert readers == {"mfrc522", "rdm6300", "wiegand"}
    assert any(_profile(n)["network"]["type"] == "ethernet" for n in names)
    assert any("rs485" in _profile(n) for n in names)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_is_valid_and_named_after_its_file(path: Path) -> None:
    profile, warnings = load_profile(path.read_text())
    assert profile["name"] == path.stem
    assert all("strapping pin" in w for w in warnings)


def _mutated(name: str, change: Any) -> dict[str, Any]:
    profile = copy.deepcopy(_profile(name))
    change(profile)
    return profile


def _set(*path_and_value: Any) -> Any:
    *keys, last, value = path_and_value

    def change(profile: dict[str, Any]) -> None:
        table = profile
        for key in keys:
            table = table[key]
        table[last] = value

    return change


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("esp32-devkitc-mfrc522", _set("buzzer", 5), "buzzer: GPIO5 is already used by reader.cs"),
        ("esp32-devkitc-mfrc522", _set("led_ok", 35), "led_ok: GPIO35 is input-only"),
        ("esp32-devkitc-mfrc522", _set("reader", "sck", 35), "reader.sck: GPIO35 is input-only"),
        ("esp32-devkitc-mfrc522", _set("led_error", 7), "wired to the module's flash"),
        ("esp32-devkitc-mfrc522", _set("led_error", 24), "GPIO24 does not exist"),
        ("esp32-devkitc-mfrc522", _set("led_error", "27"), "led_error: must be an integer"),
        ("esp32-devkitc-mfrc522", _set("reader", "spi", 3), "no SPI 3"),
        ("esp32-devkitc-rdm6300", _set("reader", "uart", 0), "no UART 0"),
        ("esp32-devkitc-rdm6300", _set("reader", "type", "pn532"), "reader.type: must be one of"),
        ("esp32-devkitc-rdm6300", _set("buzzer", 17), "buzzer: GPIO17 is already used by "
         "reader.tx (UART 2 default)"),
        ("esp32-devkitc-rdm6300", _set("reader", "uart", 1), "reader.tx: UART 1 would drive its "
         "default TX, GPIO10, which is wired to the module's flash"),
        ("esp32-devkitc-rdm6300", _set("reader", "tx", 34), "reader.tx: GPIO34 is input-only"),
        ("esp32-devkitc-wiegand", _set("rs485", "de", 33), "rs485.de: GPIO33 is already used by "
         "reader.d1"),
        ("esp32-devkitc-wiegand", _set("rs485", "uart", 3), "rs485.uart: this chip has no UART 3"),
        ("esp32-devkitc-wiegand", _set("rs485", "baudrate", 50), "rs485.baudrate"),
        ("olimex-esp32-poe-mfrc522", _set("led_ok", 21), "already used by network (Ethernet RMII)"),
        ("olimex-esp32-poe-mfrc522", _set("network", "phy", "W5500"), "only LAN8720"),
        ("olimex-esp32-poe-mfrc522", _set("network", "ref_clk", 36), "network.ref_clk: GPIO36 is "
         "input-only"),
        ("esp32-devkitc-mfrc522", _set("chip", "esp8266"), "chip: unknown chip"),
        ("esp32-devkitc-mfrc522", _set("profile", 2), "unsupported profile format version 2"),
        ("esp32-devkitc-mfrc522", _set("network", "type", "rs485"), "no rs485 table"),
    ],
)
def test_impossible_profiles_are_refused_with_the_key(name: str, change: Any,
                                                       message: str) -> None:
    with pytest.raises(BoardError) as info:
        check_profile(_mutated(name, change))
    assert message in str(info.value)


def test_rdm6300_and_rs485_cannot_share_a_uart() -> None:
    profile = _profile("esp32-devkitc-rdm6300")
    profile["rs485"] = {"uart": 2, "tx": 17, "rx": 4, "de": 13, "baudrate": 115200}
    with pytest.raises(BoardError, match="UART 2 is already used by the reader"):
        check_profile(profile)


def test_rdm6300_with_its_own_tx_pin_frees_the_default_one() -> None:
    profile = _profile("esp32-devkitc-rdm6300")
    profile["reader"].update(uart=1, tx=4)
    profile["buzzer"] = 17
    check_profile(profile)


def test_bad_json_is_a_board_error() -> None:
    with pytest.raises(BoardError, match="not valid JSON"):
        load_profile("{ not json")


def test_profiles_validate_on_micropython(mpvm: Any) -> None:
    files = {f"boards/{p.name}": p.read_text() for p in PROFILES}
    bad = _mutated("esp32-devkitc-mfrc522", _set("buzzer", 5))
    files["boards/bad.json"] = json.dumps(bad)
    code = """
import os
from firmware.board import BoardError, load_profile
for name in sorted(os.listdir("boards")):
    try:
        profile, warnings = load_profile(open("boards/" + name).read())
        print(name, "ok", len(warnings))
    except BoardError as exc:
        print(name, "error", exc)
"""
    lines = mpvm.run(code, files=files).strip().splitlines()
    assert lines[0] == "bad.json error buzzer: GPIO5 is already used by reader.cs"
    assert [line.split()[1] for line in lines[1:]] == ["ok"] * len(PROFILES)
