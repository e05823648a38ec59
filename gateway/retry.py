"""The one retry policy: capped exponential backoff with jitter, reset after a success."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 0.5, cap_s: float = 30.0, factor: float = 2.0,
                 jitter: float = 0.2, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= cap_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1, 0 <= jitter < 1")
        self.initial_s, self.cap_s, self.factor, self.jitter = initial_s, cap_s, factor, jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        """The wait before the next attempt: grows by ``factor`` up to ``cap_s``, +/- jitter."""
        base = min(self.cap_s, self.initial_s * self.factor ** self._attempt)
        self._attempt += 1
        return base * (1 + self.jitter * (2 * self._rng.random() - 1))

    def reset(self) -> None:
        self._attempt = 0
