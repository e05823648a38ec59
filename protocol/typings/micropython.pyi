# For type-checking the runtime-neutral protocol code under CPython (the firmware check uses the
# MicroPython ESP32 stubs instead). Same signature as theirs.
from typing import Any, TypeVar

_T = TypeVar("_T", int, float, str, bytes, tuple[Any, ...])

def const(expr: _T, /) -> _T: ...
