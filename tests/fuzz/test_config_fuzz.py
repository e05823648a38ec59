"""Property tests of the TOML configuration (``gateway/config.py``): documents built from the
real schema (the complete example in fuzz/fuzz_config.py) with one value replaced by a wrong
type or an out-of-range value. Always a ``ConfigError`` naming the key, never another
exception; a document that is not TOML at all names ``(file)``."""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_config
from gateway.config import ConfigError, load_config
from tests.fuzz.support import fuzz_settings

BASE: dict[str, Any] = tomllib.loads(fuzz_config.SAMPLE)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08X}"
                             for c in value) + '"'
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _key(name: str) -> str:
    return name if name and all(c.isalnum() or c in "_-" for c in name) and name.isascii() \
        else _toml_value(name)


def dumps(document: dict[str, Any]) -> str:
    """A TOML writer for what tomllib reads back the same (inline tables for nesting)."""
    return "".join(f"{_key(k)} = {_toml_value(v)}\n" for k, v in document.items())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [(*prefix, k), *_paths(v, (*prefix, k))]]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return []


PATHS = _paths(BASE)


def _display(path: tuple[Any, ...], document: dict[str, Any], by_name: bool = True) -> str:
    """The key as ConfigError names it (arrays of tables by index, or by name once known)."""
    parts: list[str] = []
    node: Any = document
    for part in path:
        if isinstance(part, int):
            item = node[part]
            name = item.get("name") if isinstance(item, dict) else None
            if by_name and parts and parts[-1] in ("forward", "channel") \
                    and isinstance(name, str):
                parts[-1] = f"{parts[-1]}.{name}"
            else:
                parts[-1] = f"{parts[-1]}[{part}]"
        else:
            parts.append(part)
        node = node[part]
    return ".".join(parts)


wrong = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True), st.booleans(),
    st.text(max_size=20), st.text("0123456789:.-Tabc/", max_size=12),
    st.just(""), st.just("\x00"), st.just([]), st.just({}), st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=5), max_size=3), st.just([{}]), st.dates(), st.times(),
    st.datetimes(), st.sampled_from([0, -1, 1, 65535, 65536, 10**6, 2**40, 0.05, 1e9]))


@fuzz_settings(400)
@given(path=st.sampled_from(PATHS), value=wrong, drop=st.booleans())
def test_one_wrong_value_is_a_config_error_naming_its_key(tmp_path_factory: pytest.TempPathFactory,
                                                         path: tuple[Any, ...], value: Any,
                                                         drop: bool) -> None:
    document: dict[str, Any] = tomllib.loads(fuzz_config.SAMPLE)
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    if drop and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    text = dumps(document)
    if any(device in text for device in ("/dev", "/proc", "/sys")):
        return
    config_path = fuzz_config.scratch_dir() / "gateway.toml"
    config_path.write_text(text, encoding="utf-8")
    try:
        load_config(config_path)
    except ConfigError as exc:
        table = _display(path[:1], BASE)
        assert exc.key == "(file)" or exc.key.split(".")[0].split("[")[0] in (
            table.split(".")[0].split("[")[0], ""), (exc.key, path)
        if drop or isinstance(node, list):
            return
        # a value of the wrong type is named by its own key (range and cross-key rules may
        # name a sibling: retry_cap_s against retry_initial_s, session times against start)
        parent = path[:-1]
        assert not parent or exc.key.startswith((_display(parent, BASE),
                                                 _display(parent, BASE, by_name=False))), (
            exc.key, path)


@fuzz_settings(300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_config_error(data: bytes) -> None:
    fuzz_config.check(data)


@fuzz_settings(200)
@given(cut=st.integers(0, len(fuzz_config.SAMPLE)), insert=st.text(max_size=8))
def test_cut_and_spliced_documents_are_a_config_error(cut: int, insert: str) -> None:
    fuzz_config.check((fuzz_config.SAMPLE[:cut] + insert + fuzz_config.SAMPLE[cut:]).encode())


@pytest.mark.parametrize(("text", "key"), [
    ('[gateway]\nschool = "s"\n[mqtt]\npassword_file = "a\\u0000b"\n', "mqtt.password_file"),
    ('[gateway]\nschool = "s"\ndatabase = "db\\u0000"\n', "gateway.database"),
    ('[gateway]\nschool = "s"\ntimezone = "Asia"\n', "gateway.timezone"),
    ('[gateway]\nschool = "s"\ntimezone = "' + "a" * 300 + '"\n', "gateway.timezone"),
    ('[gateway]\nschool = "s"\n[metrics]\nlisten = "h:' + "9" * 5000 + '"\n', "metrics.listen"),
    ('[gateway]\nschool = "s"\n[metrics]\nlisten = "h:\\u0668\\u0660"\n', "metrics.listen"),
    ('[gateway]\nschool = "s"\n[dashboard]\nlisten = "h:' + "9" * 5000 + '"\n',
     "dashboard.listen"),
])
def test_regression_config_values_that_escaped_as_other_exceptions(tmp_path: Path, text: str,
                                                                   key: str) -> None:
    """Found by the config oracle: a NUL in a path (ValueError from the OS call), a time zone
    naming a tzdata folder (IsADirectoryError) or too long a name (OSError), a port of more
    than 4300 digits (ValueError from int()); a port in Arabic-Indic digits was accepted."""
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key


def test_regression_a_password_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "mqtt.password").write_bytes(b"\xff\xfe secret")
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "s"\n[mqtt]\npassword_file = "mqtt.password"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "mqtt.password_file"
