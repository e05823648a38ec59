"""Capped exponential backoff with deterministic jitter, for every retry loop on the reader
(MQTT reconnects, Wi-Fi/Ethernet bring-up, NTP)."""

from protocol.compat import const

_JITTER_PCT = const(20)


class Backoff:
    """Capped exponential backoff with deterministic jitter, allocation-free per step.

    ``next()`` returns ``base +- 20 %`` (never above ``cap_ms``) and doubles ``base`` up to
    ``cap_ms``; ``reset()`` goes back to ``first_ms``. The jitter is a 16-bit xorshift (period
    65535) seeded from ``seed`` (the client id): small ints only, no ``random`` module needed.
    """

    def __init__(self, seed: "str | bytes", first_ms: int = 500, cap_ms: int = 30000) -> None:
        h = 0
        for b in seed.encode() if isinstance(seed, str) else seed:
            h = (h * 31 + b) & 0xFFFF
        self._state = h or 0xACE1
        self.first_ms = first_ms
        self.cap_ms = cap_ms
        self.base_ms = first_ms

    def _rand(self) -> int:
        x = self._state
        x ^= (x << 7) & 0xFFFF
        x ^= x >> 9
        x ^= (x << 8) & 0xFFFF
        self._state = x
        return x

    def next(self) -> int:
        base = self.base_ms
        pct = 100 - _JITTER_PCT + self._rand() % (2 * _JITTER_PCT + 1)
        delay = min(base * pct // 100, self.cap_ms)
        self.base_ms = min(base * 2, self.cap_ms)
        return delay

    def reset(self) -> None:
        self.base_ms = self.first_ms
