"""The gateway's TOML configuration, validated: every bad or missing value names its key."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import topics
from protocol.errors import ProtocolError


class ConfigError(Exception):
    """A configuration file that cannot be used; ``key`` is the dotted TOML key at fault."""

    def __init__(self, path: Path, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30


@dataclass(frozen=True)
class GatewayConfig:
    school: str
    keys_file: Path
    mqtt: MqttConfig

    @property
    def client_id(self) -> str:
        return f"gateway-{self.school}"


class _Section:
    """Typed reads from one TOML table, reporting the full key on error."""

    def __init__(self, path: Path, prefix: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, "must be a table")
        self._path, self._prefix, self._table = path, prefix, table

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self._path, self._key(name), reason)

    def text(self, name: str, default: str | None = None) -> str:
        value = self._table.get(name, default)
        if value is None:
            raise self.error(name, "is required")
        if not isinstance(value, str) or not value:
            raise self.error(name, "must be a non-empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if name in self._table else None

    def integer(self, name: str, default: int, lowest: int, highest: int) -> int:
        value = self._table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, "must be an integer")
        if not lowest <= value <= highest:
            raise self.error(name, f"must be between {lowest} and {highest}, not {value}")
        return value

    def table(self, name: str) -> _Section:
        return _Section(self._path, self._key(name), self._table.get(name, {}))

    def check_known(self, *names: str) -> None:
        for name in self._table:
            if name not in names:
                raise self.error(name, "unknown key (misspelt?)")


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the gateway configuration at ``path``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(file)", f"is not valid TOML: {exc}") from None
    root = _Section(path, "", raw)
    root.check_known("gateway", "mqtt")
    gateway = root.table("gateway")
    gateway.check_known("school", "keys_file")
    school = gateway.text("school")
    try:
        topics.check_school(school)
    except ProtocolError as exc:
        raise gateway.error("school", exc.detail) from None
    keys_file = Path(gateway.text("keys_file"))
    if not keys_file.is_absolute():
        keys_file = path.parent / keys_file
    mqtt = root.table("mqtt")
    mqtt.check_known("host", "port", "username", "password", "keepalive_s")
    return GatewayConfig(
        school=school,
        keys_file=keys_file,
        mqtt=MqttConfig(
            host=mqtt.text("host", "127.0.0.1"),
            port=mqtt.integer("port", 1883, 1, 65535),
            username=mqtt.optional_text("username"),
            password=mqtt.optional_text("password"),
            keepalive_s=mqtt.integer("keepalive_s", 30, 5, 3600),
        ),
    )
