"""The gateway's configuration: bad input names the key and the reason.

Reader keys at rest are tested in test_keystore.py and test_registry.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_with_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[gateway]\nschool = "thpt-1"\n'))
    assert config.school == "thpt-1"
    assert config.master_key_file == tmp_path / "master.key"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == ("127.0.0.1", 1883, 30)
    assert config.client_id == "gateway-thpt-1"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[gateway\n", "(file)", "not valid TOML"),
        ('[gateway]\n', "gateway.school", "is required"),
        ('[gateway]\nschool = "Trường A"\n', "gateway.school", "a-z"),
        ('[gateway]\nschool = 5\n', "gateway.school", "non-empty string"),
        ('[gateway]\nschool = "s"\n[mqtt]\nport = 70000\n', "mqtt.port",
         "between 1 and 65535"),
        ('[gateway]\nschool = "s"\n[mqtt]\nport = "1883"\n', "mqtt.port",
         "integer"),
        ('[gateway]\nschool = "s"\n[mqtt]\nprot = 1\n', "mqtt.prot", "unknown"),
        ('[gateway]\nschool = "s"\n[mqtt]\nkeepalive_s = true\n',
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



@pytest.mark.parametrize("target", ["/dev/zero", "big", "folder"])
def test_the_mqtt_password_file_must_be_a_small_regular_file(tmp_path: Path, target: str) -> None:
    """Found by fuzzing: /dev/zero as the password file would hang the loader for ever."""
    (tmp_path / "big").write_bytes(b"x" * 5000)
    (tmp_path / "folder").mkdir()
    (tmp_path / "ok").write_text("secret\n", encoding="utf-8")
    base = '[gateway]\nschool = "thpt-1"\n[mqtt]\npassword_file = "{}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, base.format(target)))
    assert "mqtt.password_file" in str(info.value)
    assert load_config(_write(tmp_path, base.format("ok"))).mqtt.password == "secret"
