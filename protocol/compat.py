"""``const()`` on both runtimes.

MicroPython's parser folds ``NAME = const(expr)`` by the bare name ``const`` whatever it is bound
to; on CPython the import below fails and ``const`` is the identity.
"""

__all__ = ["const"]

try:
    from micropython import const
except ImportError:
    from typing import Any, TypeVar

    # constrained as in the MicroPython stubs, so both type checks see one signature
    _T = TypeVar("_T", int, float, str, bytes, "tuple[Any, ...]")

    def const(__expr: _T) -> _T:
        return __expr
