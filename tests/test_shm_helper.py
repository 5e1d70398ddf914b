"""The shared memory compute helper (service/shm_helper.py) in this process, with its real
helper process: a real SIGBUS (a region cut short under a mapped read) becomes a 400
naming the region and a new helper; a helper killed while computing is a 503, while
idle nothing; one past the compute deadline is killed (504) and replaced; mappings are
dropped when a region is unregistered. The same through a real server:
``test_oip_shm.py``."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import orjson
import pytest

from lossd import kernels
from lossd.service.errors import ApiError, RequestError
from lossd.service.limits import BodyLimits
from lossd.service.pipeline import run_oip
from lossd.service.runner import ComputeTimeout, KernelRunner
from lossd.service.shm import Registry
from lossd.service.shm_helper import HelperGone, HelperStarting, ShmHelper, death_error

N = 4096


# -- functions the helper runs (module level: they pickle by name; the helper imports
#    this module from the sys.path it inherits)

def fault_after_mapping(body: bytes, limits: BodyLimits) -> float:
    """Maps the input as a request would, then cuts the file short and reads: SIGBUS."""
    name, key = orjson.loads(body)
    params = {"shared_memory_region": name, "shared_memory_byte_size": 8 * N}
    arr = limits.shm.read("predictions", params, np.dtype("<f8"), N)
    os.truncate(Registry.key_path(key), 0)
    return float(arr.sum())


def sleep(body: bytes, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def own_pid(body: bytes) -> int:
    return os.getpid()


def when_ready(helper: ShmHelper, fn, *args, timeout: float = 60.0):
    """``fn(*args)`` in the helper, once it has started (until then it refuses work)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return helper.submit(fn, *args).result(timeout)
        except HelperStarting:
            assert time.monotonic() < deadline, "the helper did not start"
            time.sleep(0.1)


# -- fixtures

@pytest.fixture
def registry(tmp_path):
    return Registry(str(tmp_path), "/lossd")


@pytest.fixture
def helper(registry):
    h = ShmHelper(1, 0, registry)
    assert h.warm() > 0  # waits for the start, loads the kernels
    yield h
    h.shutdown()
    assert not h._proc.is_alive()


@pytest.fixture
def region(registry):
    """``region(name, values)``: a region holding ``values`` (FP64), registered."""
    keys = []

    def make(name: str, values: np.ndarray) -> str:
        key = f"/lossd_test_helper_{name}"
        with open(Registry.key_path(key), "wb") as f:
            f.write(values.tobytes())
        keys.append(key)
        registry.register(name, key, 0, values.nbytes)
        return key

    yield make
    for key in keys:
        try:
            os.unlink(Registry.key_path(key))
        except FileNotFoundError:
            pass


def infer_body(name: str, n: int) -> bytes:
    def tensor(t: str, offset: int) -> dict:
        return {"name": t, "datatype": "FP64", "shape": [n], "parameters": {
            "shared_memory_region": name, "shared_memory_byte_size": 8 * n, "shared_memory_offset": offset}}
    return orjson.dumps({"inputs": [tensor("predictions", 0), tensor("labels", 8 * n)]})


def loss_of(content: bytes) -> float:
    return orjson.loads(content)["outputs"][0]["data"][0]


def dead(pid: int) -> None:
    """Wait until ``pid`` is dead (a zombie: its parent, the helper's owner, reaps it)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline
        time.sleep(0.05)


def maps_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


# -- tests

def test_results_and_mapping_kept(helper, registry, region):
    rng = np.random.default_rng(3)
    pred, lab = rng.normal(size=N), (rng.random(N) < 0.5).astype(np.float64)
    key = region("in", np.concatenate([pred, lab]))
    limits = BodyLimits(shm=registry)
    for _ in range(2):
        content, _, n = helper.submit(run_oip, infer_body("in", N), "loss", None, limits).result(60)
        assert n == N and loss_of(content) == kernels.loss(pred, lab).loss
    assert Registry.key_path(key) in maps_of(helper.pid)  # read through a mapping, kept
    registry.unregister("in")
    deadline = time.monotonic() + 10  # dropped within a second when idle
    while Registry.key_path(key) in maps_of(helper.pid):
        assert time.monotonic() < deadline, "the mapping of an unregistered region was kept"
        time.sleep(0.2)
    assert helper.restarts == 0


def test_sigbus_is_a_400_naming_the_region(helper, registry, region):
    rng = np.random.default_rng(4)
    pred, lab = rng.normal(size=N), (rng.random(N) < 0.5).astype(np.float64)
    key = region("cut", pred)
    first = helper.pid
    with pytest.raises(RequestError) as exc:
        helper.submit(fault_after_mapping, orjson.dumps(["cut", key]), BodyLimits(shm=registry)).result(60)
    assert "'cut'" in exc.value.message and "truncated" in exc.value.message
    assert helper.restarts == 1 and helper.pid != first
    os.unlink(Registry.key_path(key))
    # the same, when the file is gone by the time the worker looks
    region("cut2", pred)
    with pytest.raises(RequestError) as exc:
        when_ready(helper, fault_after_mapping, orjson.dumps(["cut2", "/lossd_test_helper_cut2"]),
                   BodyLimits(shm=registry))
    assert "'cut2'" in exc.value.message
    region("ok", np.concatenate([pred, lab]))
    content, _, _ = when_ready(helper, run_oip, infer_body("ok", N), "loss", None, BodyLimits(shm=registry))
    assert loss_of(content) == kernels.loss(pred, lab).loss


def test_killed_helper(helper):
    pid = helper.submit(own_pid, b"").result(60)
    assert pid == helper.pid
    os.kill(pid, signal.SIGKILL)  # idle: the next request finds it dead and starts a new one
    dead(pid)
    with pytest.raises(HelperStarting):
        helper.submit(own_pid, b"").result(60)
    assert helper.restarts == 1
    assert when_ready(helper, own_pid, b"") not in (pid, None)
    work = helper.submit(sleep, b"", 30.0)  # killed while computing, no region involved: 503
    time.sleep(1.0)
    os.kill(helper.pid, signal.SIGKILL)
    with pytest.raises(ApiError) as exc:
        work.result(60)
    assert exc.value.status == 503 and exc.value.headers == {"retry-after": "1"}
    assert "signal 9" in exc.value.message
    assert when_ready(helper, own_pid, b"") == helper.pid and helper.restarts == 2


def test_deadline_kills_and_replaces_the_helper(registry):
    """Through the runner: while the helper starts, the worker's threads compute; a call
    past the deadline is a 504 and its helper is killed and replaced."""
    runner = KernelRunner(2, 4, timeout=60.0)
    runner.helper = ShmHelper(1, 0, registry)
    try:
        first = runner.helper.pid

        async def go():
            assert await runner.run(own_pid, b"", shm=True) == os.getpid()  # starting: here
            runner.helper.warm()
            assert await runner.run(own_pid, b"", shm=True) == first
            runner.timeout = 1.0
            started = time.monotonic()
            with pytest.raises(ComputeTimeout) as exc:
                await runner.run(sleep, b"", 30.0, shm=True)
            assert exc.value.status == 504 and time.monotonic() - started < 10
            runner.helper.warm()  # the new one
            return await runner.run(own_pid, b"", shm=True)

        pid = asyncio.run(go())
        assert pid == runner.helper.pid != first and runner.helper.restarts == 1
    finally:
        runner.shutdown()


def test_death_error_names_what_the_client_did(tmp_path):
    key = "/lossd_test_helper_diag"
    path = Registry.key_path(key)
    with open(path, "wb") as f:
        f.write(b"\0" * 64)
    try:
        e = death_error([("r", key, 128)], -signal.SIGBUS, 1)
        assert e.status == 422 and "'r'" in e.message and "truncated" in e.message  # OIP renders 400
        e = death_error([("r", key, 32), ("r", key, 64)], -signal.SIGBUS, 1)  # two inputs of one region
        assert isinstance(e, RequestError) and "truncated" in e.message
        assert e.message.startswith("shared memory region 'r': ")
        e = death_error([("r", key, 64)], -signal.SIGKILL, 1)
        assert e.status == 503
    finally:
        os.unlink(path)
    e = death_error([("r", key, 64)], -signal.SIGKILL, 1)
    assert isinstance(e, RequestError) and "'r'" in e.message and "does not exist" in e.message
    with pytest.raises(HelperGone):
        raise HelperGone("x")
