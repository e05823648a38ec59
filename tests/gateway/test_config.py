"""The gateway's configuration and key file: bad input names the key and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.keys import KeyFileError, load_reader_keys, write_reader_keys


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_with_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[gateway]\nschool = "thpt-1"\nkeys_file = "k.toml"\n'))
    assert config.school == "thpt-1"
    assert config.keys_file == tmp_path / "k.toml"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == ("127.0.0.1", 1883, 30)
    assert config.client_id == "gateway-thpt-1"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[gateway\n", "(file)", "not valid TOML"),
        ('[gateway]\nkeys_file = "k"\n', "gateway.school", "is required"),
        ('[gateway]\nschool = "Trường A"\nkeys_file = "k"\n', "gateway.school", "a-z"),
        ('[gateway]\nschool = 5\nkeys_file = "k"\n', "gateway.school", "non-empty string"),
        ('[gateway]\nschool = "s"\nkeys_file = "k"\n[mqtt]\nport = 70000\n', "mqtt.port",
         "between 1 and 65535"),
        ('[gateway]\nschool = "s"\nkeys_file = "k"\n[mqtt]\nport = "1883"\n', "mqtt.port",
         "integer"),
        ('[gateway]\nschool = "s"\nkeys_file = "k"\n[mqtt]\nprot = 1\n', "mqtt.prot", "unknown"),
        ('[gateway]\nschool = "s"\nkeys_file = "k"\n[mqtt]\nkeepalive_s = true\n',
         "mqtt.keepalive_s", "integer"),
        ('gateway = 3\n', "gateway", "must be a table"),
        ('[gateways]\n', "gateways", "unknown"),
    ],
)
def test_bad_config_names_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.key == key
    assert reason in info.value.reason


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    keys = {17: bytes(range(32)), 4_294_967_294: b"\xff" * 32}
    write_reader_keys(path, keys)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_reader_keys(path) == keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[readers]\n17 = "00"\n', "64 hex digits"),
        ('[readers]\n17 = "zz' + "0" * 62 + '"\n', "64 hex digits"),
        ('[readers]\n0 = "' + "0" * 64 + '"\n', "not a reader id"),
        ('[readers]\n017 = "' + "0" * 64 + '"\n', "not a reader id"),
        ('[readers]\nabc = "' + "0" * 64 + '"\n', "not a reader id"),
        ('[other]\n', "needs a [readers] table"),
        ('[readers\n', "not a valid key file"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message.replace("[", r"\[")):
        load_reader_keys(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write_reader_keys(path, {1: bytes(32)})
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_reader_keys(path)
