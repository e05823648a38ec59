"""Fixtures: a gateway configuration the real ``attendance-gateway`` CLI runs with, and a virtual
board with the reader's code deployed (shared by the tests of a module: deploying takes seconds)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.technician.vboard import VirtualBoard

GATEWAY_PREFIX = f"{shlex.quote(sys.executable)} -m gateway.cli"
WIFI = {"ssid": "truong-thcs-a", "password": "mat-khau-wifi-123"}
BROKER = "192.168.1.2"
WIRING = {"mfrc522": {"cs": 5, "rst": 22, "cards": ["04a1b2c3d4e5f6"]}, "wifi": WIFI}


@pytest.fixture
def gateway_config(tmp_path: Path) -> Path:
    (tmp_path / "mqtt.password").write_text("gateway-secret\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "thcs-a"\ndatabase = "gateway.db"\n'
                    'master_key_file = "master.key"\n'
                    '[mqtt]\nusername = "gateway"\npassword_file = "mqtt.password"\n',
                    encoding="utf-8")
    return path


def configure_args(port: str, config: Path, reader_id: int = 17, *extra: str) -> list[str]:
    return ["configure", port, "--reader-id", str(reader_id), "--name", f"Cổng {reader_id}",
            "--gate", "main", "--board", "esp32-devkitc-mfrc522", "--broker", BROKER,
            "--wifi-ssid", WIFI["ssid"], "--wifi-password-env", "TEST_WIFI_PASSWORD",
            "--gateway", GATEWAY_PREFIX, "--gateway-config", str(config), *extra]


@pytest.fixture
def wifi_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WIFI_PASSWORD", WIFI["password"])


def deployed_board(wiring: dict[str, object]) -> Iterator[VirtualBoard]:
    from technician import deploy
    from technician.device import Device

    with VirtualBoard(wiring) as board:
        with Device(board.port) as device:
            deploy.deploy(device)
        yield board


@pytest.fixture(scope="module")
def board_image() -> Iterator[dict[str, bytes]]:
    """The files a deploy puts on a board, read back once per module (fast board set-up)."""
    from technician import deploy
    from technician.device import Device

    with VirtualBoard(hardware=False) as board, Device(board.port) as device:
        deploy.deploy(device)
        yield {p: device.read_file(p) or b"" for p in device.hashes(deploy.MANAGED)}


@pytest.fixture
def board(board_image: dict[str, bytes]) -> Iterator[VirtualBoard]:
    """A virtual board with the reader's code (as a deploy leaves it) and an MFRC522 with a
    card in its field, on a Wi-Fi network whose broker accepts nothing yet."""
    with VirtualBoard(WIRING, files=board_image) as vb:
        yield vb
