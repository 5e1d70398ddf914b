"""The recycling pool behind large result arrays: reuse only what callers dropped."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lossd import kernels
from lossd.kernels import runtime
from lossd.kernels._pool import MIN_BYTES, OutputPool

N = 2 * MIN_BYTES // 8  # 2 MiB of float64: pooled


@pytest.fixture
def pool():
    """A fresh pool of 64 MiB in place of the process's, restored afterwards."""
    saved = runtime._output_pool
    runtime._output_pool = OutputPool(64 << 20)
    try:
        yield runtime._output_pool
    finally:
        runtime._output_pool = saved


def _data(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 5.0, n), (rng.random(n) < 0.5).astype(np.float64)


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_dropped_result_is_reused(pool):
    s, y = _data(0)
    g = kernels.grad(s, y).grad
    addr = _addr(g)
    assert pool.stats() == {"blocks": 1, "in_use": 1, "bytes": 8 * N, "bytes_in_use": 8 * N}
    del g
    assert pool.stats()["in_use"] == 0
    assert _addr(kernels.grad(s, y).grad) == addr
    assert pool.stats()["blocks"] == 1


@pytest.mark.parametrize("keep", [
    lambda g: g, lambda g: g[5:], lambda g: g.reshape(2, -1), lambda g: g[::3],
    memoryview, lambda g: np.frombuffer(memoryview(g)),
], ids=["array", "slice", "reshape", "strided", "memoryview", "frombuffer"])
def test_held_results_are_never_overwritten(pool, keep):
    """Whatever view of a result a caller keeps, later calls write elsewhere."""
    s1, y1 = _data(1)
    r1 = kernels.grad(s1, y1, reduction="none")
    want = np.asarray(keep(r1.grad.copy()))
    held = keep(r1.grad)
    g_addr = _addr(r1.grad)
    del r1
    for seed in range(2, 5):
        s, y = _data(seed)
        r = kernels.grad(s, y, reduction="none")
        assert g_addr not in (_addr(r.grad), _addr(r.losses))
        del r
    np.testing.assert_array_equal(np.asarray(held), want)
    assert pool.stats()["in_use"] == 1


def test_pooled_results_equal_fresh_ones(pool):
    s, y = _data(7)
    want = [kernels.grad(s, y, reduction="none")]
    runtime._output_pool = OutputPool(0)
    fresh = kernels.grad(s, y, reduction="none")
    assert runtime._output_pool.stats()["blocks"] == 0
    np.testing.assert_array_equal(want[0].grad, fresh.grad)
    np.testing.assert_array_equal(want[0].losses, fresh.losses)


def test_small_results_bypass_the_pool(pool):
    s, y = _data(3, n=MIN_BYTES // 8 - 1)
    kernels.grad(s, y, reduction="none")
    assert pool.stats()["blocks"] == 0


def test_a_small_result_does_not_take_a_large_block(pool):
    s, y = _data(4, n=4 * N)
    kernels.grad(s, y)  # leaves a free 8 MiB block
    g = kernels.grad(*_data(5)).grad  # 2 MiB: a block at most twice its size
    assert g.base.nbytes == 8 * N
    assert pool.stats()["blocks"] == 2


def test_bytes_stay_within_the_bound():
    p = OutputPool(5 * MIN_BYTES)
    n = MIN_BYTES // 8
    held = [p.empty(n) for _ in range(7)]  # 5 pooled, then plain arrays
    assert p.stats() == {"blocks": 5, "in_use": 5, "bytes": 5 * MIN_BYTES,
                         "bytes_in_use": 5 * MIN_BYTES}
    assert [a.base is None for a in held] == [False] * 5 + [True] * 2
    del held
    big = p.empty(3 * n)  # free blocks are dropped to make room
    assert p.stats() == {"blocks": 3, "in_use": 1, "bytes": 5 * MIN_BYTES,
                         "bytes_in_use": 3 * MIN_BYTES}
    assert big.base is not None
    assert p.empty(6 * n).base is None  # larger than the whole pool


def test_set_output_pool_validates_and_turns_off():
    saved = runtime._output_pool.max_bytes
    try:
        with pytest.raises(ValueError, match="max_bytes"):
            kernels.set_output_pool(-1)
        kernels.set_output_pool(0)
        assert kernels.output_pool_stats()["blocks"] == 0
        g = kernels.grad(*_data(6)).grad
        assert kernels.output_pool_stats() == {"blocks": 0, "in_use": 0, "bytes": 0,
                                               "bytes_in_use": 0}
        assert g.size == N
    finally:
        kernels.set_output_pool(saved)


def test_threads_each_get_their_own_blocks(pool):
    """16 threads, each holding its results while the others run: every result is its own
    and exact (a block handed to two callers would show as a mismatch)."""
    inputs = [_data(100 + i) for i in range(16)]
    want = [np.where(y == 1.0, -1.0, 1.0) / (1.0 + np.exp(np.where(y == 1.0, s, -s))) / N
            for s, y in inputs]
    errors: list[str] = []
    barrier = threading.Barrier(16, timeout=60)

    def work(i: int) -> None:
        s, y = inputs[i]
        barrier.wait()
        held = [kernels.grad(s, y).grad for _ in range(3)]
        for g in held:
            if not np.allclose(g, want[i], rtol=1e-13, atol=0.0):
                errors.append(f"thread {i}: wrong gradient")
        if len({_addr(g) for g in held}) != 3:
            errors.append(f"thread {i}: two held results share memory")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert pool.stats()["in_use"] == 0
