"""Data and comparisons shared by tests/test_eval.py and tests/test_eval_dask.py."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

N = 40_000
BATCH = 4096  # many batches per file, none aligned with the row groups
# kernels/_summary_state.py: a merged sum, mean or loss is within 1 ulp of the exact value
# for any split and merge order, so two of them (merged, one-pass) within 2 ulp of each other
ULPS = 2


def close(a: float, b: float, ulps: int = ULPS) -> bool:
    if a == b:
        return True
    return abs(a - b) <= ulps * math.ulp(max(abs(a), abs(b)))


def assert_same(got, want) -> None:
    """Counts, min, max exact; sums and means within ULPS; the losses too."""
    assert got.count == want.count and got.inf_count == want.inf_count
    assert got.min == want.min and got.max == want.max
    for name in ("sum", "mean", "weight_sum", "weighted_sum"):
        assert close(getattr(got, name), getattr(want, name)), (name, getattr(got, name), getattr(want, name))
    assert close(got.loss, want.loss), (got.loss, want.loss)
    # M2 by Chan's update: a relative error of O(log(parts)·u·κ), no ulp bound
    assert got.m2 == want.m2 or math.isclose(got.m2, want.m2, rel_tol=1e-9), (got.m2, want.m2)


def assert_same_groups(got: dict, want: dict) -> None:
    assert sorted(got, key=str) == sorted(want, key=str)
    for k in want:
        assert_same(got[k], want[k])


def make_table(n: int = N, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    p = rng.normal(0.0, 4.0, n)
    p[[5, 17, 1000]] = [np.inf, -np.inf, 40.0]  # exact limits and a large margin
    y = (rng.random(n) < 0.4).astype(np.float64)
    y[[5, 17]] = 1.0  # +inf logit with label 1: loss 0; -inf with label 1: an infinite loss
    w = rng.uniform(0.0, 2.0, n)
    g = rng.integers(0, 7, n)
    return pa.table({"p": p, "y": y, "w": w, "g": g, "s": pa.array(np.array(["a", "bb", "c"])[g % 3])})


def arrays(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: table[c].to_numpy() for c in table.column_names}
