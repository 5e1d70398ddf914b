"""Hypothesis profiles and fuzzing budgets for every property and fuzz test.

``ci`` (the default) is bounded and derandomized: the same examples on every run, within
a few seconds per test. ``long`` (``HYPOTHESIS_PROFILE=long``, on demand) draws fresh
examples every run, ``LONG_SCALE`` times as many, keeps failures in ``.hypothesis/`` and
gives the fuzzers (schemathesis, the OIP frame fuzzer) ``LONG_SCALE`` times the time.
``LOSSD_TEST_EXAMPLES_SCALE`` overrides the multiplier of either profile.

Tests ask for ``examples(n)``: n examples under ``ci``, n × scale under ``long``. A
test's own ``max_examples`` would otherwise pin the count and the profile would change
nothing.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG_SCALE = 20
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
            HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
# not derandomized: each long run explores new examples; failures replay from .hypothesis/
settings.register_profile("long", max_examples=50 * LONG_SCALE, deadline=None, derandomize=False,
                          suppress_health_check=_SLOW_OK, print_blob=True)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE = {PROFILE!r}: use 'ci' (default) or 'long'")
settings.load_profile(PROFILE)

SCALE = float(os.environ.get("LOSSD_TEST_EXAMPLES_SCALE", LONG_SCALE if PROFILE == "long" else 1))


def examples(n: int) -> settings:
    """Settings for a test that runs ``n`` examples under the ``ci`` profile."""
    return settings(max_examples=max(1, int(n * SCALE)))


def budget(seconds: float) -> float:
    """A fuzzer's time budget: ``seconds`` under ``ci``, scaled like the examples."""
    return seconds * SCALE
