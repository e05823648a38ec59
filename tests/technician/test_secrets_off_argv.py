"""Secrets never on a command line (docs/SECURITY.md, actor 7), where ``ps`` on the laptop or the
gateway, and the shell's history, would show them: the Wi-Fi password is read from an
environment variable or asked with ``getpass``, never taken from an argument; the reader's key
and MQTT password reach the gateway command on its stdin. Fast: no board (the whole configure
flow is tests/technician/test_provision.py::
test_configure_hands_the_key_and_password_to_the_gateway_on_stdin_never_in_argv)."""

from __future__ import annotations

import argparse
import base64
import getpass as getpass_module
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from technician import gateway_link, provision
from technician.gateway_link import Gateway
from tests.technician.conftest import WIFI, configure_args

SECRET_WORDS = ("pass", "secret", "key", "token", "credential")
WIFI_PASSWORD = WIFI["password"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in provision._parser()._actions
              if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_wifi_password_is_never_taken_from_an_argument(
        gateway_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. No option or positional of any subcommand takes a secret as its value: the only one
    # whose name speaks of a password takes the name of an environment variable.
    found = {}
    for command, parser in subcommands().items():
        for action in parser._actions:
            names = [*action.option_strings, action.dest]
            if action.nargs == 0 or not any(w in n.lower() for n in names for w in SECRET_WORDS):
                continue
            if isinstance(action, provision._RefusePassword):  # takes a value only to refuse it
                continue
            found[(command, action.dest)] = action
    assert set(found) == {("configure", "wifi_password_env"), ("replace", "wifi_password_env")}
    for action in found.values():
        assert action.option_strings == ["--wifi-password-env"] and action.metavar == "VAR"

    # 2. From the environment variable it names.
    monkeypatch.setenv("TEST_WIFI_PASSWORD", WIFI_PASSWORD)
    argv = configure_args("/dev/ttyUSB0", gateway_config)
    args = provision._parser().parse_args(argv)
    settings = provision._settings(args, "thcs-a", "main", "mqtt-password")
    assert settings.config["network"]["password"] == WIFI_PASSWORD
    assert not any(WIFI_PASSWORD in a for a in argv)
    assert WIFI_PASSWORD not in repr(vars(args))

    # 3. Without it, asked with getpass (no echo) when a person is at the terminal.
    asked: list[str] = []

    def getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "typed-" + WIFI_PASSWORD

    monkeypatch.setattr(getpass_module, "getpass", getpass)
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: True))
    i = argv.index("--wifi-password-env")
    argv = argv[:i] + argv[i + 2:]
    args = provision._parser().parse_args(argv)
    settings = provision._settings(args, "thcs-a", "main", "mqtt-password")
    assert settings.config["network"]["password"] == "typed-" + WIFI_PASSWORD
    assert asked == ["Mật khẩu Wi-Fi / Wi-Fi password: "]
    assert not any(WIFI_PASSWORD in a for a in argv)

    # 4. A variable that is not set is named in the error; no value is invented.
    monkeypatch.delenv("TEST_WIFI_PASSWORD")
    args = provision._parser().parse_args(configure_args("/dev/ttyUSB0", gateway_config))
    with pytest.raises(provision.ProvisionError, match="TEST_WIFI_PASSWORD is not set"):
        provision._settings(args, "thcs-a", "main", "mqtt-password")

    # 5. Without a terminal and without the variable: an error, not an empty password.
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: False))
    args = provision._parser().parse_args(argv)
    with pytest.raises(provision.ProvisionError, match="no Wi-Fi password"):
        provision._settings(args, "thcs-a", "main", "mqtt-password")


@pytest.mark.parametrize("given", [["--wifi-password", WIFI_PASSWORD],
                                   [f"--wifi-password={WIFI_PASSWORD}"],
                                   ["--wifi-password-env", WIFI_PASSWORD + "!"]])
def test_a_password_typed_on_the_command_line_is_refused_without_being_shown(
        gateway_config: Path, given: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the threat model's tests: ``--wifi-password X`` was taken as an abbreviation of
    ``--wifi-password-env`` and the error then printed X as the name of a variable."""
    argv = configure_args("/dev/ttyUSB0", gateway_config)
    i = argv.index("--wifi-password-env")
    argv = argv[:i] + given + argv[i + 2:]
    with pytest.raises((SystemExit, provision.ProvisionError)) as info:
        provision._settings(provision._parser().parse_args(argv), "thcs-a", "main", "mqtt")
    shown = capsys.readouterr()
    assert WIFI_PASSWORD not in shown.out + shown.err + str(info.value)
    assert "--wifi-password" in shown.err + str(info.value)


def test_enrol_and_replace_hand_the_secrets_to_the_gateway_on_stdin_never_in_argv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((list(argv), kwargs.get("input") or ""))
        return subprocess.CompletedProcess(argv, 0, json.dumps({"ok": True}), "")

    monkeypatch.setattr(gateway_link, "subprocess", types.SimpleNamespace(
        run=run, TimeoutExpired=subprocess.TimeoutExpired))
    key, password = bytes(range(100, 132)), "mqtt-Pa55word-for-the-test"
    gateway = Gateway("ssh pi@10.0.0.2 sudo -u attendance attendance-gateway")
    gateway.enrol(17, "Cổng 17", "main", key, password)
    gateway.replace(17, key, password)
    assert len(calls) == 2
    for argv, stdin in calls:
        assert_no_secret_in(argv, key, password)
        assert json.loads(stdin) == {"key_hex": key.hex(), "mqtt_password": password}


def secret_forms(key: bytes, password: str) -> list[str]:
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
            base64.urlsafe_b64encode(key).decode().rstrip("="), password]


def assert_no_secret_in(argv: list[str], key: bytes, password: str) -> None:
    for secret in secret_forms(key, password):
        for element in [*argv, " ".join(argv)]:
            assert secret not in element, f"a secret is in the gateway command's argv: {argv}"
