"""The gateway's TOML configuration (``gateway/config.py``).

Input: a TOML document's bytes. ``load_config`` must raise nothing but ``ConfigError``, and that
error must name a key (the dotted TOML key, or ``(file)`` for a file that is not TOML at all).
Documents whose strings point into ``/dev``, ``/proc`` or ``/sys`` are skipped: the loader reads
``password_file``, and a device file there (``/dev/stdin``, ``/dev/zero``) would block the
fuzzer rather than find a parser bug.
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any

from fuzz.common import Bug, scratch_dir
from gateway.config import ConfigError, load_config

_DEVICES = ("/dev", "/proc", "/sys")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def check(data: bytes) -> None:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        document = {}
    if any(device in s for s in _strings(document) for device in _DEVICES):
        return
    path = scratch_dir() / "gateway.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        if not exc.key or not isinstance(exc.key, str):
            raise Bug(f"ConfigError without a key: {exc}") from None


SAMPLE = '''\
[gateway]
school = "thcs-nguyen-du"
database = "gateway.db"
master_key_file = "master.key"
timezone = "Asia/Ho_Chi_Minh"

[mqtt]
host = "127.0.0.1"
port = 1883
username = "gateway"
password = "secret"
keepalive_s = 30

[ingest]
group_commit_ms = 5
group_commit_max = 4096
repeat_window_s = 120

[[rs485]]
port = "ttyUSB0"
baudrate = 115200

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat"]
holidays = ["2026-09-02", "2027-01-01"]

[[attendance.session]]
name = "morning"
start = "07:00"
late_after = "07:15"
absent_at = "08:30"
end = "11:30"
min_stay_min = 30

[[attendance.session]]
name = "afternoon"
start = "13:00"
late_after = "13:15"
absent_at = "14:00"
end = "17:00"

[metrics]
listen = "127.0.0.1:9108"

[export]
daily_dir = "export"
daily_at = "17:30"
school_name = "Trường THCS Nguyễn Du"
zip = false

[[forward]]
name = "so-gd"
type = "relay"
enabled = true
max_batch = 50
concurrency = 2
url = "https://so-gd.example.org/attendance"

[outbox]
poll_s = 1.0
retry_initial_s = 5.0
retry_cap_s = 600.0
breaker_failures = 5
breaker_cooldown_s = 30.0
breaker_cooldown_cap_s = 600.0

[notify]
guardian_channel = "zalo"
kinds = ["check_in", "check_out", "late", "absent"]
daily_cap = 8
max_delay_min = 120
default_locale = "vi"
[notify.quiet_hours]
start = "21:00"
end = "06:00"
hold = ["absent", "unknown_card"]
[notify.staff]
channel = "zalo"
phone = "84901234567"
[notify.templates.vi]
check_in = "{student} ({class}) đã đến trường lúc {time}."
[notify.zalo.check_in]
template_id = "231456"
data = { student_name = "{student}", class_name = "{class}", time = "{time}" }
[[notify.channel]]
name = "zalo"
type = "zalo"

[dashboard]
listen = "127.0.0.1:8080"
session_idle_min = 30
session_max_hours = 12
cookie_secure = false
anonymous_loopback_view = false
'''


def seeds() -> list[bytes]:
    sample = SAMPLE.encode()
    return [sample, b'[gateway]\nschool = "s"\n', sample.replace(b"1883", b"70000"),
            sample.replace(b'"Asia/Ho_Chi_Minh"', b'"Asia"'),
            sample.replace(b'"127.0.0.1:9108"', b'"h:\\u0661\\u0662"')]


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
