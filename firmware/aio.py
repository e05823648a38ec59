"""asyncio helpers with the same spelling on MicroPython and CPython.

MicroPython has ``sleep_ms``/``wait_for_ms`` and ``asyncio.TimeoutError`` but no builtin
``TimeoutError``, so firmware catches ``asyncio.TimeoutError`` (the same class on CPython).
"""

import asyncio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable
    from typing import Any

    async def sleep_ms(ms: int) -> None: ...

    async def wait_ms(awaitable: "Awaitable[Any]", ms: int) -> bool: ...

else:
    _NATIVE = hasattr(asyncio, "sleep_ms")

    if _NATIVE:
        sleep_ms = asyncio.sleep_ms
    else:

        async def sleep_ms(ms):
            await asyncio.sleep(ms / 1000)

    async def wait_ms(awaitable, ms):
        """Await ``awaitable`` for at most ``ms``; False (and it is cancelled) on timeout."""
        try:
            if _NATIVE:
                await asyncio.wait_for_ms(awaitable, ms)
            else:
                # not wait_for: CPython 3.11's returns normally when a cancellation comes just as
                # the awaitable completes, and the cancelled task runs on (a reader stopped by
                # the simulator kept its link alive beside its successor)
                async with asyncio.timeout(ms / 1000):
                    await awaitable
        except asyncio.TimeoutError:
            return False
        return True
