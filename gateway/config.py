"""The gateway's TOML configuration, validated: every bad or missing value names its key.

```toml
[gateway]
school = "thcs-nguyen-du"            # MQTT topic segment: a-z 0-9 -
database = "/var/lib/attendance/gateway.db"
master_key_file = "/etc/attendance/master.key"   # seals reader keys at rest (gateway/keystore.py)
timezone = "Asia/Ho_Chi_Minh"

[mqtt]
host = "127.0.0.1"
port = 1883
username = "gateway"
password_file = "/etc/attendance/mqtt.password"
keepalive_s = 30

[ingest]
group_commit_ms = 5        # batches arriving within this window share one durable commit
group_commit_max = 4096    # ... up to this many records
repeat_window_s = 120      # repeated taps of one card at one gate within this make one event

[[rs485]]                  # one table per bus; readers on it are registered with their address
port = "/dev/ttyUSB0"
baudrate = 115200

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat"]
holidays = ["2026-09-02", "2027-01-01"]

[[attendance.session]]
name = "morning"
start = "07:00"            # first tap from here on is a check-in
late_after = "07:15"       # a check-in after this is also 'late'
absent_at = "08:30"        # no check-in by this time: 'absent'
end = "11:30"              # a later tap after min_stay_min is a check-out
min_stay_min = 30

[metrics]
listen = "127.0.0.1:9108"  # Prometheus text format; empty to disable

[export]                   # the Ministry's daily attendance workbooks (gateway/export.py)
daily_dir = "/var/lib/attendance/export"   # written each school day; omit to turn off
daily_at = "17:30"
school_name = "Trường THCS Nguyễn Du"      # printed on the sheets (default: [gateway] school)
zip = false                # also a ZIP of the day's class workbooks, for the district

[[forward]]                # one table per upstream target (gateway/outbox.py, gateway/forwarders)
name = "so-gd"             # unique: a-z 0-9 _ -, used by the CLI and in metrics
type = "edfi"              # the adapter module gateway/forwarders/<type>.py
enabled = true             # false: no item is enqueued for it
max_batch = 50             # items per request
concurrency = 2            # requests in flight
base_url = "https://..."   # every other key goes to the adapter as `settings`
client_secret_file = "/etc/attendance/edfi.secret"

[outbox]                   # delivery timings of every [[forward]] target and [[notify.channel]]
poll_s = 1.0               # look for due items, pause, retries, probe requests this often (0.1-60)
retry_initial_s = 5.0      # an item's first retry; doubles per attempt (1-3600) ...
retry_cap_s = 600.0        # ... up to this (1-86400, at least retry_initial_s)
breaker_failures = 5       # whole-batch failures in a row that open the breaker (1-1000)
breaker_cooldown_s = 30.0  # open this long before the first probe (1-3600) ...
breaker_cooldown_cap_s = 600.0   # ... doubling per failed probe up to this (1-86400)

[notify]                   # parent notifications (gateway/notify.py, docs/notifications.md)
guardian_channel = "zalo"  # the [[notify.channel]] guardians' messages go through
kinds = ["check_in", "check_out", "late", "absent"]   # the school's opt-in, per kind
daily_cap = 8              # messages per guardian per school day
max_delay_min = 120        # an event decided later than this after its time sends nothing
default_locale = "vi"
[notify.quiet_hours]
start = "21:00"
end = "06:00"
hold = ["absent", "unknown_card"]   # held to the end; the other kinds are dropped
[notify.staff]             # unknown cards go to this recipient only
channel = "ops"
phone = "84901234567"      # optional
[notify.templates.vi]      # placeholders: {student} {class} {time} {date} {gate} {session}
check_in = "{student} ({class}) đã đến trường lúc {time}."      # {school} {card}
[notify.zalo.check_in]     # a ZNS template per kind: id and its parameters
template_id = "231456"
data = { student_name = "{student}", class_name = "{class}", time = "{time}" }
[[notify.channel]]         # gateway/channels/<type>.py; other keys are its settings
name = "zalo"
type = "zalo"

[dashboard]                # the operations dashboard (gateway/dashboard/, docs/dashboard.md)
listen = "127.0.0.1:8080"  # loopback by default; beyond it, put a TLS proxy in front
session_idle_min = 30      # a session ends after this long without a request ...
session_max_hours = 12     # ... and this long after the login, whatever happens
cookie_secure = false      # true when browsers reach it over HTTPS
anonymous_loopback_view = false   # true: read-only pages without a login, from loopback only
```

Relative paths are relative to the configuration file (in a ``[[forward]]`` table: the settings
whose name ends in ``_file``).
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import itertools
import os
import pkgutil
import re
import stat
import string
import tomllib
import types
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import channels, forwarders
from gateway.channels import ChannelConfig
from gateway.forwarders import ForwardTarget
from protocol import topics
from protocol.errors import ProtocolError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FORWARD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
FORWARD_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PORT = re.compile(r"[0-9]{1,5}")  # not str.isdecimal: other scripts' digits, 5000-digit int()
PASSWORD_FILE_MAX = 4096  # bytes: a password file, not a device or a log
_FORWARD_KEYS = ("name", "type", "enabled", "max_batch", "concurrency")


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
class IngestConfig:
    group_commit_ms: int = 5
    group_commit_max: int = 4096
    repeat_window_s: int = 120


@dataclass(frozen=True)
class OutboxConfig:
    """The ``[outbox]`` table: the delivery timings of forwarding targets and notification
    channels alike (``gateway.outbox.policy_from_config`` makes them an ``OutboxPolicy``; the
    defaults are the same)."""

    poll_s: float = 1.0
    retry_initial_s: float = 5.0
    retry_cap_s: float = 600.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    breaker_cooldown_cap_s: float = 600.0


OUTBOX_KEYS = ("poll_s", "retry_initial_s", "retry_cap_s", "breaker_failures",
               "breaker_cooldown_s", "breaker_cooldown_cap_s")


@dataclass(frozen=True)
class Rs485Bus:
    port: str
    baudrate: int = 115200


@dataclass(frozen=True)
class Session:
    name: str
    start: dt.time
    late_after: dt.time
    absent_at: dt.time
    end: dt.time
    min_stay_min: int = 30


@dataclass(frozen=True)
class AttendanceConfig:
    school_days: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # Monday = 0
    holidays: frozenset[dt.date] = frozenset()
    sessions: tuple[Session, ...] = ()


@dataclass(frozen=True)
class ExportConfig:
    daily_dir: Path | None = None  # None: no scheduled export
    daily_at: dt.time = dt.time(17, 30)
    school_name: str | None = None
    zip: bool = False


NOTIFY_KINDS = ("check_in", "check_out", "late", "absent", "unknown_card")
LOCALES = ("vi", "en")
PLACEHOLDERS = ("student", "class", "time", "date", "gate", "session", "school", "card")
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "vi": {
        "check_in": "{student} (lớp {class}) đã đến trường lúc {time} ngày {date}, cổng {gate}.",
        "late": "{student} (lớp {class}) đến trường muộn lúc {time} ngày {date}, cổng {gate}.",
        "check_out": "{student} (lớp {class}) đã ra về lúc {time} ngày {date}, cổng {gate}.",
        "absent": "{student} (lớp {class}) chưa đến trường ngày {date} "
                  "(tính đến {time}).",
        "unknown_card": "Thẻ chưa đăng ký {card} được quẹt lúc {time} ngày {date}, "
                        "cổng {gate}.",
    },
    "en": {
        "check_in": "{student} (class {class}) arrived at school at {time} on {date}, "
                    "gate {gate}.",
        "late": "{student} (class {class}) arrived late at {time} on {date}, gate {gate}.",
        "check_out": "{student} (class {class}) left school at {time} on {date}, gate {gate}.",
        "absent": "{student} (class {class}) has not arrived at school on {date} "
                  "(as of {time}).",
        "unknown_card": "Unregistered card {card} tapped at {time} on {date}, gate {gate}.",
    },
}
CHANNEL_KEYS = ("name", "type", "enabled", "max_batch", "concurrency")


@dataclass(frozen=True)
class QuietHours:
    start: dt.time
    end: dt.time  # may be before start: the window crosses midnight
    hold: frozenset[str] = frozenset({"absent", "unknown_card"})


@dataclass(frozen=True)
class StaffRecipient:
    channel: str
    phone: str | None = None
    locale: str = "vi"


@dataclass(frozen=True)
class ZaloTemplate:
    template_id: str
    data: Mapping[str, str]  # template parameter -> text with placeholders


@dataclass(frozen=True)
class NotifyConfig:
    """The ``[notify]`` table; ``enabled`` is False without one."""

    enabled: bool = False
    guardian_channel: str | None = None
    kinds: frozenset[str] = frozenset({"check_in", "check_out", "late", "absent"})
    daily_cap: int = 8
    max_delay_min: int = 120
    default_locale: str = "vi"
    quiet_hours: QuietHours | None = None
    staff: StaffRecipient | None = None
    templates: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: types.MappingProxyType(DEFAULT_TEMPLATES))
    zalo: Mapping[str, ZaloTemplate] = field(default_factory=dict)
    channels: tuple[ChannelConfig, ...] = ()


@dataclass(frozen=True)
class DashboardConfig:
    """The ``[dashboard]`` table; ``enabled`` is False without one."""

    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    session_idle_min: int = 30
    session_max_hours: int = 12
    cookie_secure: bool = False
    anonymous_loopback_view: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    school: str
    database: Path
    master_key_file: Path
    timezone: zoneinfo.ZoneInfo
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    rs485: tuple[Rs485Bus, ...] = ()
    attendance: AttendanceConfig = field(default_factory=AttendanceConfig)
    metrics_listen: str = ""
    forward: tuple[ForwardTarget, ...] = ()
    path: Path | None = None  # the file it was read from
    export: ExportConfig = field(default_factory=ExportConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

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

    def path(self, name: str, default: str | None = None) -> Path:
        text = self.text(name, default)
        if "\0" in text:  # no file system takes it: os calls would raise ValueError later
            raise self.error(name, "must not contain a NUL character")
        value = Path(text)
        return value if value.is_absolute() else self._path.parent / value

    def integer(self, name: str, default: int, lowest: int, highest: int) -> int:
        value = self._table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, "must be an integer")
        if not lowest <= value <= highest:
            raise self.error(name, f"must be between {lowest} and {highest}, not {value}")
        return value

    def number(self, name: str, default: float, lowest: float, highest: float) -> float:
        """An integer or a float (seconds, say) in [lowest, highest]."""
        value = self._table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, "must be a number")
        if not lowest <= value <= highest:  # also NaN
            raise self.error(name, f"must be between {lowest:g} and {highest:g}, not {value:g}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._table.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def clock_time(self, name: str) -> dt.time:
        text = self.text(name)
        try:
            return dt.time.fromisoformat(text)
        except ValueError:
            raise self.error(name, f"must be a time of day like 07:15, not {text!r}") from None

    def strings(self, name: str, default: list[str]) -> list[str]:
        value = self._table.get(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return value

    def table(self, name: str) -> _Section:
        return _Section(self._path, self._key(name), self._table.get(name, {}))

    def tables(self, name: str) -> list[_Section]:
        value = self._table.get(name, [])
        if not isinstance(value, list):
            raise self.error(name, "must be an array of tables ([[...]])")
        return [_Section(self._path, f"{self._key(name)}[{i}]", t) for i, t in enumerate(value)]

    def check_known(self, *names: str) -> None:
        for name in self._table:
            if name not in names:
                raise self.error(name, "unknown key (misspelt?)")


def _mqtt(section: _Section) -> MqttConfig:
    section.check_known("host", "port", "username", "password", "password_file", "keepalive_s")
    password = section.optional_text("password")
    if "password_file" in section._table:
        if password is not None:
            raise section.error("password_file", "give password or password_file, not both")
        file = section.path("password_file")
        try:
            with file.open("rb") as handle:  # a regular file of a few bytes, not /dev/zero
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise section.error("password_file", f"{file} is not a regular file")
                data = handle.read(PASSWORD_FILE_MAX + 1)
            if len(data) > PASSWORD_FILE_MAX:
                raise section.error("password_file",
                                    f"{file} is larger than {PASSWORD_FILE_MAX} bytes")
            password = data.decode("utf-8").strip()
        except OSError as exc:
            raise section.error("password_file", f"cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise section.error("password_file", f"{file} is not UTF-8 text") from None
    return MqttConfig(
        host=section.text("host", "127.0.0.1"),
        port=section.integer("port", 1883, 1, 65535),
        username=section.optional_text("username"),
        password=password,
        keepalive_s=section.integer("keepalive_s", 30, 5, 3600),
    )


def _session(section: _Section) -> Session:
    section.check_known("name", "start", "late_after", "absent_at", "end", "min_stay_min")
    session = Session(
        name=section.text("name"),
        start=section.clock_time("start"),
        late_after=section.clock_time("late_after"),
        absent_at=section.clock_time("absent_at"),
        end=section.clock_time("end"),
        min_stay_min=section.integer("min_stay_min", 30, 0, 24 * 60),
    )
    if not session.start <= session.late_after <= session.absent_at <= session.end:
        raise section.error("start", "times must satisfy start <= late_after <= absent_at <= end")
    return session


def _attendance(section: _Section) -> AttendanceConfig:
    section.check_known("school_days", "holidays", "session")
    days = []
    for name in section.strings("school_days", list(WEEKDAYS[:6])):
        if name not in WEEKDAYS:
            raise section.error("school_days", f"{name!r} is not one of {', '.join(WEEKDAYS)}")
        days.append(WEEKDAYS.index(name))
    holidays = set()
    for text in section.strings("holidays", []):
        try:
            holidays.add(dt.date.fromisoformat(text))
        except ValueError:
            raise section.error("holidays", f"{text!r} is not a date like 2026-09-02") from None
    sessions = tuple(_session(s) for s in section.tables("session"))
    names = [s.name for s in sessions]
    if len(set(names)) != len(names):
        raise section.error("session", "session names must be unique")
    ordered = sorted(sessions, key=lambda s: s.start)
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise section.error("session", f"{before.name} and {after.name} overlap")
    return AttendanceConfig(tuple(sorted(set(days))), frozenset(holidays), tuple(ordered))


def _export(section: _Section) -> ExportConfig:
    section.check_known("daily_dir", "daily_at", "school_name", "zip")
    zipped = section._table.get("zip", False)
    if not isinstance(zipped, bool):
        raise section.error("zip", "must be true or false")
    return ExportConfig(
        daily_dir=section.path("daily_dir") if "daily_dir" in section._table else None,
        daily_at=section.clock_time("daily_at") if "daily_at" in section._table
        else dt.time(17, 30),
        school_name=section.optional_text("school_name"),
        zip=zipped,
    )


def _outbox(section: _Section) -> OutboxConfig:
    section.check_known(*OUTBOX_KEYS)
    d = OutboxConfig()
    config = OutboxConfig(
        poll_s=section.number("poll_s", d.poll_s, 0.1, 60),
        retry_initial_s=section.number("retry_initial_s", d.retry_initial_s, 1, 3600),
        retry_cap_s=section.number("retry_cap_s", d.retry_cap_s, 1, 86_400),
        breaker_failures=section.integer("breaker_failures", d.breaker_failures, 1, 1000),
        breaker_cooldown_s=section.number("breaker_cooldown_s", d.breaker_cooldown_s, 1, 3600),
        breaker_cooldown_cap_s=section.number("breaker_cooldown_cap_s",
                                              d.breaker_cooldown_cap_s, 1, 86_400),
    )
    if config.retry_cap_s < config.retry_initial_s:
        raise section.error("retry_cap_s", f"must be at least retry_initial_s "
                                           f"({config.retry_initial_s:g}), not "
                                           f"{config.retry_cap_s:g}")
    if config.breaker_cooldown_cap_s < config.breaker_cooldown_s:
        raise section.error("breaker_cooldown_cap_s", f"must be at least breaker_cooldown_s "
                                                      f"({config.breaker_cooldown_s:g}), not "
                                                      f"{config.breaker_cooldown_cap_s:g}")
    return config


def forward_types() -> list[str]:
    """The adapter modules in ``gateway/forwarders/`` (the ``type`` of a ``[[forward]]``): those
    with a ``build`` (imported to tell; for error messages, not on the service's path)."""
    found = []
    for module in pkgutil.iter_modules(forwarders.__path__):
        if module.name.startswith("_"):
            continue
        try:
            imported = importlib.import_module(f"{forwarders.__name__}.{module.name}")
        except Exception:  # a broken adapter is reported when it is used
            continue
        if callable(getattr(imported, "build", None)):
            found.append(module.name)
    return sorted(found)


def _forward_type_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{forwarders.__name__}.{name}") is not None
    except (ImportError, ValueError):
        return False


def _forward(root: _Section) -> tuple[ForwardTarget, ...]:
    """The ``[[forward]]`` tables; errors name ``forward.<name>.<key>`` once the name is known."""
    targets: list[ForwardTarget] = []
    for numbered in root.tables("forward"):
        name = numbered.text("name")
        if not FORWARD_NAME.fullmatch(name):
            raise numbered.error("name", f"must be 1-32 characters a-z 0-9 _ - (not starting "
                                         f"with _ or -), not {name!r}")
        section = _Section(numbered._path, f"forward.{name}", numbered._table)
        if any(t.name == name for t in targets):
            raise section.error("name", "is used by two [[forward]] tables")
        kind = section.text("type")
        if not FORWARD_TYPE.fullmatch(kind) or not _forward_type_exists(kind):
            known = ", ".join(forward_types()) or "(none installed)"
            raise section.error("type", f"unknown type {kind!r}; one of {known}")
        settings: dict[str, Any] = {}
        for key, value in section._table.items():
            if key in _FORWARD_KEYS:
                continue
            if key.endswith("_file") and isinstance(value, str) and value:
                value = str(section.path(key))  # relative to the configuration file
            settings[key] = value
        targets.append(ForwardTarget(
            name=name,
            type=kind,
            settings=types.MappingProxyType(settings),
            max_batch=section.integer("max_batch", 50, 1, 1000),
            concurrency=section.integer("concurrency", 2, 1, 16),
            enabled=section.boolean("enabled", True),
        ))
    return tuple(targets)


def check_template(section: _Section, name: str, text: object) -> str:
    """A template text with only known ``{placeholder}`` fields (no attributes, indexes,
    conversions or format specs: the text comes from a file, the values from the roster)."""
    if not isinstance(text, str) or not text.strip():
        raise section.error(name, "must be a non-empty string")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise section.error(name, f"is not a valid template ({exc}); write {{{{ for a "
                                  f"brace") from None
    for _literal, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in PLACEHOLDERS:
            raise section.error(name, f"unknown placeholder {{{field_name}}}; one of "
                                      + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        if spec or conversion:
            raise section.error(name, f"placeholder {{{field_name}}} takes no format")
    return text


def _channel_type_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{channels.__name__}.{name}") is not None
    except (ImportError, ValueError):
        return False


def _kinds(section: _Section, name: str, default: list[str]) -> frozenset[str]:
    values = section.strings(name, default)
    for value in values:
        if value not in NOTIFY_KINDS:
            raise section.error(name, f"{value!r} is not one of {', '.join(NOTIFY_KINDS)}")
    return frozenset(values)


def _locale(section: _Section, name: str, default: str) -> str:
    value = section.text(name, default)
    if value not in LOCALES:
        raise section.error(name, f"must be one of {', '.join(LOCALES)}, not {value!r}")
    return value


def _notify(root: _Section) -> NotifyConfig:
    if "notify" not in root._table:
        return NotifyConfig()
    section = root.table("notify")
    section.check_known("enabled", "guardian_channel", "kinds", "daily_cap", "max_delay_min",
                        "default_locale", "quiet_hours", "staff", "templates", "zalo",
                        "channel")
    found: list[ChannelConfig] = []
    for numbered in section.tables("channel"):
        name = numbered.text("name")
        if not FORWARD_NAME.fullmatch(name):
            raise numbered.error("name", f"must be 1-32 characters a-z 0-9 _ - (not starting "
                                         f"with _ or -), not {name!r}")
        table = _Section(numbered._path, f"notify.channel.{name}", numbered._table)
        if any(c.name == name for c in found):
            raise table.error("name", "is used by two [[notify.channel]] tables")
        kind = table.text("type")
        if not FORWARD_TYPE.fullmatch(kind) or not _channel_type_exists(kind):
            raise table.error("type", f"unknown channel type {kind!r}")
        settings: dict[str, Any] = {}
        for key, value in table._table.items():
            if key in CHANNEL_KEYS:
                continue
            if key.endswith("_file") and isinstance(value, str) and value:
                value = str(table.path(key))
            settings[key] = value
        found.append(ChannelConfig(
            name=name, type=kind, settings=types.MappingProxyType(settings),
            max_batch=table.integer("max_batch", 20, 1, 1000),
            concurrency=table.integer("concurrency", 2, 1, 16),
            enabled=table.boolean("enabled", True)))
    names = {c.name for c in found}
    guardian_channel = section.optional_text("guardian_channel")
    if guardian_channel is not None and guardian_channel not in names:
        raise section.error("guardian_channel", f"no [[notify.channel]] named "
                                                f"{guardian_channel!r}")
    quiet = None
    if "quiet_hours" in section._table:
        q = section.table("quiet_hours")
        q.check_known("start", "end", "hold")
        quiet = QuietHours(q.clock_time("start"), q.clock_time("end"),
                           _kinds(q, "hold", ["absent", "unknown_card"]))
        if quiet.start == quiet.end:
            raise q.error("end", "must differ from start")
    staff = None
    if "staff" in section._table:
        st = section.table("staff")
        st.check_known("channel", "phone", "locale")
        channel = st.text("channel")
        if channel not in names:
            raise st.error("channel", f"no [[notify.channel]] named {channel!r}")
        phone = st.optional_text("phone")
        if phone is not None and not (phone.isdecimal() and 9 <= len(phone) <= 15):
            raise st.error("phone", "must be digits in international form without + "
                                    "(84...)")
        staff = StaffRecipient(channel, phone, _locale(st, "locale", "vi"))
    templates = {locale: dict(texts) for locale, texts in DEFAULT_TEMPLATES.items()}
    tpl = section.table("templates")
    tpl.check_known(*LOCALES)
    for locale in LOCALES:
        texts = tpl.table(locale)
        texts.check_known(*NOTIFY_KINDS)
        for kind in NOTIFY_KINDS:
            if kind in texts._table:
                templates[locale][kind] = check_template(texts, kind, texts._table[kind])
    zalo: dict[str, ZaloTemplate] = {}
    zs = section.table("zalo")
    zs.check_known(*NOTIFY_KINDS)
    for kind in NOTIFY_KINDS:
        if kind not in zs._table:
            continue
        one = zs.table(kind)
        one.check_known("template_id", "data")
        data = one.table("data")
        zalo[kind] = ZaloTemplate(one.text("template_id"), types.MappingProxyType(
            {key: check_template(data, key, value) for key, value in data._table.items()}))
    return NotifyConfig(
        enabled=section.boolean("enabled", True),
        guardian_channel=guardian_channel,
        kinds=_kinds(section, "kinds", ["check_in", "check_out", "late", "absent"]),
        daily_cap=section.integer("daily_cap", 8, 0, 1000),
        max_delay_min=section.integer("max_delay_min", 120, 0, 7 * 24 * 60),
        default_locale=_locale(section, "default_locale", "vi"),
        quiet_hours=quiet,
        staff=staff,
        templates=types.MappingProxyType(
            {k: types.MappingProxyType(v) for k, v in templates.items()}),
        zalo=types.MappingProxyType(zalo),
        channels=tuple(found),
    )


def _listen(section: _Section, name: str, default: str) -> str:
    """``host:port`` (an IPv6 host in brackets), port 1-65535."""
    value = section._table.get(name, default)
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not (host and _PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise section.error(name, f"must be host:port (e.g. {default}), not {value!r}")
    return str(value)


def _dashboard(root: _Section) -> DashboardConfig:
    if "dashboard" not in root._table:
        return DashboardConfig()
    section = root.table("dashboard")
    section.check_known("enabled", "listen", "session_idle_min", "session_max_hours",
                        "cookie_secure", "anonymous_loopback_view")
    config = DashboardConfig(
        enabled=section.boolean("enabled", True),
        listen=_listen(section, "listen", "127.0.0.1:8080"),
        session_idle_min=section.integer("session_idle_min", 30, 1, 24 * 60),
        session_max_hours=section.integer("session_max_hours", 12, 1, 30 * 24),
        cookie_secure=section.boolean("cookie_secure", False),
        anonymous_loopback_view=section.boolean("anonymous_loopback_view", False),
    )
    if config.session_idle_min > config.session_max_hours * 60:
        raise section.error("session_idle_min", f"must not exceed session_max_hours "
                                                f"({config.session_max_hours} h)")
    return config


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
    root.check_known("gateway", "mqtt", "ingest", "rs485", "attendance", "metrics",
                     "export", "forward", "notify", "outbox", "dashboard")
    gateway = root.table("gateway")
    gateway.check_known("school", "database", "master_key_file", "timezone")
    school = gateway.text("school")
    try:
        topics.check_school(school)
    except ProtocolError as exc:
        raise gateway.error("school", exc.detail) from None
    zone_name = gateway.text("timezone", "Asia/Ho_Chi_Minh")
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a folder
        raise gateway.error("timezone", f"unknown time zone {zone_name!r}") from None
    ingest = root.table("ingest")
    ingest.check_known("group_commit_ms", "group_commit_max", "repeat_window_s")
    buses = []
    for bus in root.tables("rs485"):
        bus.check_known("port", "baudrate")
        buses.append(Rs485Bus(bus.text("port"), bus.integer("baudrate", 115200, 9600, 921600)))
    if len({b.port for b in buses}) != len(buses):
        raise root.error("rs485", "a serial port is listed twice")
    metrics = root.table("metrics")
    metrics.check_known("listen")
    listen = metrics._table.get("listen", "127.0.0.1:9108")
    host, _, port = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
    if listen != "" and not (host and _PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise metrics.error("listen", "must be host:port (e.g. 127.0.0.1:9108) or empty")
    return GatewayConfig(
        school=school,
        database=gateway.path("database", "gateway.db"),
        master_key_file=gateway.path("master_key_file", "master.key"),
        timezone=zone,
        mqtt=_mqtt(root.table("mqtt")),
        ingest=IngestConfig(
            group_commit_ms=ingest.integer("group_commit_ms", 5, 0, 1000),
            group_commit_max=ingest.integer("group_commit_max", 4096, 1, 100_000),
            repeat_window_s=ingest.integer("repeat_window_s", 120, 0, 86_400),
        ),
        rs485=tuple(buses),
        attendance=_attendance(root.table("attendance")),
        metrics_listen=listen,
        export=_export(root.table("export")),
        forward=_forward(root),
        path=path,
        notify=_notify(root),
        outbox=_outbox(root.table("outbox")),
        dashboard=_dashboard(root),
    )
