"""The reader's configuration (``config.json``) and key (``key.bin``) on its flash.

A bad file is refused with the key at fault, so the reader can show a fault pattern and the
technician's tools can print the reason. The key is only ever read into memory: nothing here
prints, logs or returns it in text.
"""

import json

from protocol import codec, topics
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEY_LEN = 32
# Settings the gateway may change with set_config: the ranges live in protocol/codec.py.
_TUNABLE = ("debounce_ms", "volume", "heartbeat_s", "batch_max_records")
DEFAULTS = {"debounce_ms": 2000, "volume": 60, "heartbeat_s": 60, "batch_max_records": 64,
            "queue_capacity": 20000, "bus_address": 0}
# Settings only the technician sets; bus_address 0 means "not on an RS-485 bus".
_LOCAL_RANGES = {"queue_capacity": (64, 1_000_000), "bus_address": (0, 247)}


class ConfigError(ValueError):
    """A configuration the reader cannot run with; the message starts with the key."""


def _range(name: str) -> "tuple[int, int]":
    for entry in codec.CONFIG_KEYS:
        if entry[0] == name:
            return entry[2], entry[3]
    return _LOCAL_RANGES[name]


def check_value(name: str, value: "Any") -> int:
    """Validate one numeric setting (also used when the gateway changes one)."""
    lowest, highest = _range(name)
    if type(value) is not int or not lowest <= value <= highest:
        raise ConfigError(name + ": must be an integer " + str(lowest) + ".." + str(highest))
    return value


class ReaderConfig:
    def __init__(self, data: "dict[str, Any]") -> None:
        if not isinstance(data, dict):
            raise ConfigError("config: must be a JSON object")
        reader_id = data.get("reader_id")
        if type(reader_id) is not int or not 1 <= reader_id <= 0xFFFFFFFE:
            raise ConfigError("reader_id: must be an integer 1..4294967294")
        self.reader_id: int = reader_id
        try:
            self.school: str = topics.check_school(data.get("school", ""))
        except (ProtocolError, TypeError):
            raise ConfigError("school: 1-32 characters of a-z 0-9 -") from None
        for name in ("gate", "board"):
            value = data.get(name)
            if not isinstance(value, str) or not 0 < len(value) <= 32:
                raise ConfigError(name + ": must be a string of 1-32 characters")
        self.gate: str = data["gate"]
        self.board: str = data["board"]
        self.values: dict[str, int] = {}
        for name, default in DEFAULTS.items():
            self.values[name] = check_value(name, data.get(name, default))
        network = data.get("network", {})
        if not isinstance(network, dict):
            raise ConfigError("network: must be a JSON object")
        self.network: dict[str, Any] = network
        self._data = data

    def get(self, name: str) -> int:
        return self.values[name]

    def update(self, changes: "dict[str, int]") -> None:
        """Apply settings the gateway sent (already range-checked by the codec)."""
        for name, value in changes.items():
            if name not in _TUNABLE:
                raise ConfigError(name + ": cannot be changed remotely")
            self.values[name] = check_value(name, value)
            self._data[name] = value

    def to_json(self) -> str:
        return json.dumps(self._data)


def parse_config(text: str) -> ReaderConfig:
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError("config: not valid JSON") from None
    return ReaderConfig(data)


def check_key(key: bytes) -> bytes:
    if len(key) != KEY_LEN:
        raise ConfigError("key: the key file must hold exactly 32 bytes")
    return key
