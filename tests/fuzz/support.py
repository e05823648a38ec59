"""Hypothesis settings for the fuzz tests: one deterministic profile, applied per test.

``fuzz`` (the default, and CI's) derandomises: every run tests the same examples, so a failure
reproduces and a green run stays green. ``FUZZ_PROFILE=explore`` draws fresh random examples, ten
times as many, for a local bug hunt. The profile is a parent of each test's own settings rather
than loaded globally, so the rest of the suite keeps its own hypothesis behaviour.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile("explore", settings.get_profile("fuzz"), derandomize=False)
PROFILE = os.environ.get("FUZZ_PROFILE", "fuzz")
_SCALE = 10 if PROFILE == "explore" else 1


def fuzz_settings(max_examples: int, **overrides: Any) -> settings:
    """The profile with this test's example budget (kept small: the whole run is ~30 s)."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples * _SCALE,
                    **overrides)
