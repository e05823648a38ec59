"""``attendance-provision`` deploy, configure, selftest and replace against a virtual board (the
real MicroPython VM behind a pseudo-terminal, driven by the real mpremote) and the real gateway
CLI on a real database."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import struct
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import db
from gateway.registry import Registry
from technician import deploy, gateway_link, provision
from technician.device import Device
from technician.gateway_link import Gateway
from tests.technician.conftest import BROKER, WIFI, WIRING, configure_args
from tests.technician.vboard import VirtualBoard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("wifi_password")]
STAGED_AND_FINAL = ["/config.json", "/key.bin", "/config.json.new", "/key.bin.new"]


def registry(config: Path) -> Iterator[Registry]:
    conn = db.connect(config.parent / "gateway.db")
    try:
        yield Registry.open(conn, config.parent / "master.key")
    finally:
        conn.close()


def readers(config: Path) -> dict[int, tuple[str, list[str]]]:
    for reg in registry(config):
        return {r.reader_id: (r.status, [k.state for k in r.keys]) for r in reg.readers()}
    raise AssertionError


def gateway_key(config: Path, reader_id: int) -> bytes | None:
    for reg in registry(config):
        active = reg.key_ring().active(reader_id)
        return None if active is None else active.key
    raise AssertionError


def board_files(port: str, paths: list[str]) -> dict[str, bytes | None]:
    with Device(port, soft_reset=False) as device:
        return {p: device.read_file(p) for p in paths}


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    provision.console.width = provision.errors.width = 400  # one table row per line
    status = provision.main(argv)
    out, err = capsys.readouterr()
    return status, " ".join((out + err).split())


def test_deploy_copies_only_what_changed(capsys: pytest.CaptureFixture[str]) -> None:
    with VirtualBoard(hardware=False) as board:
        started = time.monotonic()
        status, text = run(capsys, ["deploy", board.port])
        first = time.monotonic() - started
        assert status == 0, text
        sources = deploy.runtime_sources()
        assert f"{len(sources) + 5} tệp đã chép / files copied, 0 không đổi" in text
        started = time.monotonic()
        status, text = run(capsys, ["deploy", board.port])
        second = time.monotonic() - started
        assert status == 0 and f"0 tệp đã chép / files copied, {len(sources) + 5} không đổi" \
            in text
        with Device(board.port) as device:
            device.write_file("/firmware/queue.mpy", b"old")
            device.write_file("/firmware/gone.py", b"print('stale')")
        status, text = run(capsys, ["deploy", board.port])
        assert "1 tệp đã chép / files copied" in text and "1 tệp cũ đã xóa" in text
        with Device(board.port) as device:
            assert device.exec("import firmware.main, firmware.selftest, protocol.codec\n"
                               "print(firmware.main.__file__)").strip() == "firmware/main.mpy"
            assert device.read_file("/firmware/gone.py") is None
        print(f"deploy into the virtual board: {first:.1f} s, unchanged: {second:.1f} s",
              file=__import__("sys").stderr)


def test_deploy_refuses_a_board_with_another_micropython(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "mpy_cross_format", lambda: ((1, 30), (6, 4)))
    with VirtualBoard(hardware=False) as board:
        status, text = run(capsys, ["deploy", board.port])
        assert status == 1
        assert "MicroPython 1.29.0" in text and "builds for 1.30: nothing copied" in text
        with Device(board.port) as device:
            assert device.hashes(deploy.MANAGED) == {}


def test_wrong_port(capsys: pytest.CaptureFixture[str], gateway_config: Path) -> None:
    for argv in (["deploy", "/dev/ttyUSB-missing"], ["selftest", "/dev/ttyUSB-missing"],
                 configure_args("/dev/ttyUSB-missing", gateway_config)):
        status, text = run(capsys, argv)
        assert status == 1 and "Không mở được cổng /dev/ttyUSB-missing" in text
        assert "cannot open port /dev/ttyUSB-missing" in text
    assert readers(gateway_config) == {}


def test_configure_registers_the_key_it_wrote_and_never_shows_it(
        board: VirtualBoard, gateway_config: Path, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, text = run(capfd, configure_args(board.port, gateway_config))
    assert status == 0, text
    files = board_files(board.port, STAGED_AND_FINAL)
    key, raw_config = files["/key.bin"], files["/config.json"]
    assert key is not None and len(key) == 32 and raw_config is not None
    assert files["/key.bin.new"] is None and files["/config.json.new"] is None
    config = json.loads(raw_config)
    assert (config["reader_id"], config["school"], config["gate"], config["board"]) == \
        (17, "thcs-a", "main", "esp32-devkitc-mfrc522")
    assert config["network"]["broker"] == BROKER
    assert gateway_key(gateway_config, 17) == key
    assert readers(gateway_config) == {17: ("active", ["active"])}
    password = config["network"]["mqtt_password"]
    shown = text + caplog.text
    for secret in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(), password):
        assert secret not in shown


def test_configure_hands_the_key_and_password_to_the_gateway_on_stdin_never_in_argv(
        board: VirtualBoard, gateway_config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gateway command ``configure`` runs (``technician/gateway_link.py``, the real
    gateway CLI behind it) has neither the key (hex, upper-case hex, base64) nor the MQTT
    password nor the Wi-Fi password in its argv, where ``ps`` shows it; they go on its stdin."""
    keys: list[bytes] = []
    passwords: list[str] = []

    def token_bytes(n: int) -> bytes:
        keys.append(secrets.token_bytes(n))
        return keys[-1]

    def token_urlsafe(n: int) -> str:
        passwords.append(secrets.token_urlsafe(n))
        return passwords[-1]

    monkeypatch.setattr(provision, "secrets", types.SimpleNamespace(
        token_bytes=token_bytes, token_urlsafe=token_urlsafe))
    calls: list[tuple[list[str], str]] = []

    def spy(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((list(argv), kwargs.get("input") or ""))
        return subprocess.run(argv, **kwargs)  # the real gateway CLI

    monkeypatch.setattr(gateway_link, "subprocess", types.SimpleNamespace(
        run=spy, TimeoutExpired=subprocess.TimeoutExpired))
    status, text = run(capsys, configure_args(board.port, gateway_config))
    (key,), (password,) = keys, passwords
    secrets_in_any_form = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                           base64.urlsafe_b64encode(key).decode().rstrip("="), password,
                           WIFI["password"]]
    for argv, _ in calls:
        for secret in secrets_in_any_form:
            assert not any(secret in element for element in [*argv, " ".join(argv)]), argv
    assert [argv[argv.index("enrol") + 1:] for argv, _ in calls] == [
        ["--config", str(gateway_config), "17", "--check", "--new", "--name", "Cổng 17"],
        ["--config", str(gateway_config), "17", "--name", "Cổng 17", "--gate", "main"]]
    assert status == 0, text
    assert json.loads(calls[1][1]) == {"key_hex": key.hex(), "mqtt_password": password}
    assert gateway_key(gateway_config, 17) == key == board_files(board.port, ["/key.bin"])[
        "/key.bin"]


def test_selftest_passes_on_a_good_board_and_fails_on_a_dead_chip(
        board: VirtualBoard, gateway_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, configure_args(board.port, gateway_config))[0] == 0
    config = json.loads(board_files(board.port, ["/config.json"])["/config.json"] or b"")
    wiring = {**WIRING, "lan": {f"{BROKER}:1883": ["17", config["network"]["mqtt_password"]]}}
    with Device(board.port) as device:
        device.write_file("/lib/vboard.json", json.dumps(wiring).encode())
    status, text = run(capsys, ["selftest", board.port])
    assert status == 0, text
    for row in ("cấu hình / config │ ĐẠT / PASS", "MFRC522 answers, VersionReg 0x92",
                "played 2 of 2 patterns", "5 of 5 records read back",
                "accepted the reader's credentials", "all checks passed"):
        assert row in text
    with Device(board.port) as device:
        assert device.eval("__import__('os').listdir('/')").count("selftest.tmp") == 0
        assert device.read_file("/data/queue/acks.log") is None  # the real queue is untouched
        wiring["mfrc522"] = {**WIRING["mfrc522"], "dead": True}  # type: ignore[dict-item]
        wiring["lan"] = {}
        device.write_file("/lib/vboard.json", json.dumps(wiring).encode())
    status, text = run(capsys, ["selftest", board.port])
    assert status == 1
    assert "MFRC522 does not answer" in text and "unreachable" in text
    assert "2 mục lỗi / checks failed" in text


def test_a_reader_id_already_in_use_is_refused(
        board: VirtualBoard, gateway_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for reg in registry(gateway_config):
        reg.register(17, "Cổng cũ", "back")
    status, text = run(capsys, configure_args(board.port, gateway_config))
    assert status == 1
    assert "Mã đầu đọc này đã được đăng ký / reader id 17 is already registered" in text
    assert board_files(board.port, STAGED_AND_FINAL) == dict.fromkeys(STAGED_AND_FINAL)
    assert readers(gateway_config) == {17: ("active", ["active"])}


def test_an_unreachable_gateway_leaves_nothing_behind(
        board: VirtualBoard, gateway_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = configure_args(board.port, gateway_config)
    argv[argv.index("--gateway") + 1] = "ssh -o ConnectTimeout=1 nobody@127.0.0.1 -p 1 true"
    status, text = run(capsys, argv)
    assert status == 1 and "cannot reach the gateway" in text
    assert board_files(board.port, STAGED_AND_FINAL) == dict.fromkeys(STAGED_AND_FINAL)
    assert readers(gateway_config) == {}


def test_a_board_lost_after_registration_rolls_the_registration_back(
        board: VirtualBoard, gateway_config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = Gateway.enrol

    def enrol_then_unplug(self: Gateway, *args: object) -> dict[str, object]:
        answer = real(self, *args)  # type: ignore[arg-type]
        assert readers(gateway_config) == {17: ("active", ["active"])}
        board.unplug()
        return answer

    monkeypatch.setattr(Gateway, "enrol", enrol_then_unplug)
    status, text = run(capsys, configure_args(board.port, gateway_config))
    assert status == 1
    assert "the registration was undone" in text
    assert readers(gateway_config) == {}


def test_a_profile_with_a_pin_conflict_is_refused_before_anything(
        tmp_path: Path, gateway_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = json.loads((deploy.BOARDS / "esp32-devkitc-mfrc522.json").read_text())
    profile["led_ok"] = profile["buzzer"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(profile))
    argv = configure_args("/dev/ttyUSB-never-opened", gateway_config)
    argv[argv.index("--board"):argv.index("--board") + 2] = ["--board-file", str(bad)]
    status, text = run(capsys, argv)
    assert status == 1
    assert "led_ok: GPIO25 is already used by buzzer" in text and "Hồ sơ bo mạch sai" in text
    assert readers(gateway_config) == {}


def boot_slots(port: str) -> int:
    files = board_files(port, ["/data/boot.a", "/data/boot.b"])
    return max(struct.unpack_from(">I", v, 2)[0] for v in files.values() if v)


def test_replace_moves_the_id_with_a_new_key_and_boots_above_the_last_seen(
        board: VirtualBoard, board_image: dict[str, bytes], gateway_config: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, configure_args(board.port, gateway_config))[0] == 0
    old_key = gateway_key(gateway_config, 17)
    conn = db.connect(gateway_config.parent / "gateway.db")
    conn.execute("INSERT INTO reader_boots (reader_id, boot, first_seen_ms) VALUES (17, 41, 0)")
    conn.close()
    with VirtualBoard(WIRING, files=board_image) as new_board:
        argv = configure_args(new_board.port, gateway_config)
        for option in ("--name", "--gate"):
            i = argv.index(option)
            del argv[i:i + 2]
        status, text = run(capsys, ["replace", *argv[1:]])
        assert status == 0, text
        assert "old keys revoked, boots continue after 41" in text
        new_key = board_files(new_board.port, ["/key.bin"])["/key.bin"]
        assert new_key is not None and new_key != old_key
        assert gateway_key(gateway_config, 17) == new_key
        assert readers(gateway_config) == {17: ("active", ["revoked", "active"])}
        assert boot_slots(new_board.port) > 41
        with Device(new_board.port) as device:  # the firmware's own boot: the next boot is 43
            assert device.exec("from firmware.fs import FS\nfrom firmware.bootcount import "
                               "BootCounter\nprint(BootCounter(FS(), '/data').advance())"
                               ).strip() == "43"
