"""The ``[dashboard]`` table: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, DashboardConfig, load_config

BASE = '[gateway]\nschool = "thcs-test"\n'


def load(tmp_path: Path, table: str) -> DashboardConfig:
    path = tmp_path / "gateway.toml"
    path.write_text(BASE + table, encoding="utf-8")
    return load_config(path).dashboard


def test_off_without_a_table_and_loopback_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "") == DashboardConfig(enabled=False)
    config = load(tmp_path, "[dashboard]\n")
    assert config == DashboardConfig(enabled=True, listen="127.0.0.1:8080",
                                     session_idle_min=30, session_max_hours=12,
                                     cookie_secure=False, anonymous_loopback_view=False)
    config = load(tmp_path, '[dashboard]\nlisten = "[::1]:9000"\ncookie_secure = true\n'
                            'session_idle_min = 10\nsession_max_hours = 1\n'
                            'anonymous_loopback_view = true\n')
    assert (config.listen, config.cookie_secure, config.session_idle_min,
            config.session_max_hours, config.anonymous_loopback_view) == (
        "[::1]:9000", True, 10, 1, True)
    assert not load(tmp_path, "[dashboard]\nenabled = false\n").enabled


@pytest.mark.parametrize(("table", "key", "reason"), [
    ('listen = "8080"', "dashboard.listen", "must be host:port"),
    ('listen = "127.0.0.1:0"', "dashboard.listen", "must be host:port"),
    ("listen = 8080", "dashboard.listen", "must be host:port"),
    ("session_idle_min = 0", "dashboard.session_idle_min", "between 1 and 1440"),
    ("session_max_hours = 1000", "dashboard.session_max_hours", "between 1 and 720"),
    ("session_idle_min = 120\nsession_max_hours = 1", "dashboard.session_idle_min",
     "must not exceed session_max_hours"),
    ('cookie_secure = "yes"', "dashboard.cookie_secure", "true or false"),
    ("anonymous_loopback_view = 1", "dashboard.anonymous_loopback_view", "true or false"),
    ("loopback_login = false", "dashboard.loopback_login", "unknown key"),
])
def test_errors_name_the_key(tmp_path: Path, table: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[dashboard]\n" + table + "\n")
    assert caught.value.key == key
    assert reason in caught.value.reason
