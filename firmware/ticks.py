"""MicroPython's wrapping tick counters as plain ints, with the same arithmetic on CPython.

On the reader these are ``time.ticks_ms`` and friends. On CPython (simulator, tests) the fallback
wraps at the same period, so code that handles the wrap is exercised on both. Type checkers see
int-typed declarations (the MicroPython stubs use opaque tick types).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:

    def ticks_ms() -> int: ...

    def ticks_us() -> int: ...

    def ticks_add(ticks: int, delta: int) -> int: ...

    def ticks_diff(ticks1: int, ticks2: int) -> int: ...

else:
    try:
        from time import ticks_add, ticks_diff, ticks_ms, ticks_us
    except ImportError:
        import time as _time

        _MASK = (1 << 30) - 1  # MicroPython's TICKS_PERIOD is 2**30
        _HALF = 1 << 29

        def ticks_ms():
            return int(_time.monotonic() * 1000) & _MASK

        def ticks_us():
            return int(_time.monotonic() * 1_000_000) & _MASK

        def ticks_add(ticks, delta):
            return (ticks + delta) & _MASK

        def ticks_diff(ticks1, ticks2):
            """``ticks1 - ticks2`` in the wrapped domain: negative when ticks1 is earlier."""
            return ((ticks1 - ticks2 + _HALF) & _MASK) - _HALF
