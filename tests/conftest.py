"""Session set-up: compile (or load) every kernel signature once, before any test.

Tests that start subprocesses (the benchmark smoke test, the thread test's fresh
interpreter) then find a warm on-disk cache instead of compiling for minutes inside
their own timeouts.
"""

import pytest

import kernels


@pytest.fixture(scope="session", autouse=True)
def _warm_kernels() -> None:
    kernels.warmup()
