"""Session set-up: compile (or load) every kernel signature once, before any test.

Tests that start subprocesses (the benchmark smoke test, the thread test's fresh
interpreter) then find a warm on-disk cache instead of compiling for minutes inside
their own timeouts.
"""

import pytest

import profiles  # noqa: F401  (loads the hypothesis profile before any test module)
from lossd import kernels


@pytest.fixture(scope="session", autouse=True)
def _warm_kernels() -> None:
    kernels.warmup()


@pytest.fixture(scope="module")
def server():
    """A real ``lossd serve`` on a free 127.0.0.1 port with default settings, one per test
    module that asks for it (modules needing other settings define their own)."""
    from service_helpers import lossd_serve

    s = lossd_serve()
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture
def server_never_5xx(request):
    """For a test that uses the module's ``server``: after the test, none of the requests
    made during it got a 5xx or reached the catch-all handler, and the server is alive.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("server_never_5xx")``; it
    checks after every test, so it holds whatever order or subset of tests runs."""
    if "server" not in request.fixturenames:
        yield
        return
    from service_helpers import NoServerErrors

    watch = NoServerErrors(request.getfixturevalue("server"))
    yield
    watch.check(request.node.nodeid)
