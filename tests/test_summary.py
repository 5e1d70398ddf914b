"""Mergeable loss summaries (kernels/summary.py, kernels/_summary_state.py): precision of
any split merged in any order against exact rational sums, merge laws, ±inf, empty
parts, float32, group-by, serialisation, and agreement with ``loss``/``stats``.

Bounds under test: count, inf_count, min and max exact; sum, weighted_sum, weight_sum,
mean and the mean reduction (``loss``) within 1 ulp of the exact value for every split
and merge order; m2 within a relative 1e-9 of the exact value; quantiles within twice
the sketch's documented normalized rank error (1.33% for k = 200).
"""

from __future__ import annotations

import json
import math
import pickle
import random
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lossd.kernels import InputError, LossSummary, grad, loss, merge_groups, summarize
from lossd.kernels._summary_state import KLL_RANK_ERROR
from lossd.kernels.summary import summary_of
from profiles import examples

ROOT = Path(__file__).resolve().parent.parent


def ulps(a: float, b: float) -> int:
    """Distance in units in the last place between two floats >= 0 (inf == inf: 0)."""
    if a == b:
        return 0
    ia, ib = (struct.unpack("<q", struct.pack("<d", x))[0] for x in (a, b))
    return abs(ia - ib)


def exact(losses: np.ndarray, w: np.ndarray | None, k: int = 1) -> dict:
    """The exact (rational) sums, mean and M2 of finite losses; w per row."""
    ls = [Fraction(x) for x in losses.tolist()]
    ws = [Fraction(1)] * len(ls) if w is None else [Fraction(x) for x in np.repeat(w, k).tolist()]
    n = len(ls)
    s = sum(ls, Fraction(0))
    mean = s / n
    return {"sum": s, "weighted_sum": sum((a * b for a, b in zip(ls, ws)), Fraction(0)),
            "weight_sum": sum(ws, Fraction(0)), "mean": mean,
            "m2": sum(((x - mean) ** 2 for x in ls), Fraction(0))}


def check_exact(s: LossSummary, losses: np.ndarray, w: np.ndarray | None, k: int = 1) -> None:
    assert s.count == losses.size
    assert s.min == losses.min() and s.max == losses.max()
    assert s.inf_count == int(np.isinf(losses).sum())
    if s.inf_count:
        assert s.sum == s.mean == s.m2 == math.inf
        return
    e = exact(losses, w, k)
    for f in ("sum", "weighted_sum", "weight_sum", "mean"):
        assert ulps(getattr(s, f), float(e[f])) <= 1, (f, getattr(s, f), float(e[f]))
    if e["weight_sum"] > 0:
        assert ulps(s.loss, float(e["weighted_sum"] / e["weight_sum"])) <= 1
    if e["m2"] < 2**1000:  # beyond, the squares themselves may overflow (M2 = inf is right)
        assert s.m2 == pytest.approx(float(e["m2"]), rel=1e-9, abs=1e-300)


def split_points(rnd: random.Random, n: int, parts: int) -> list[tuple[int, int]]:
    cuts = sorted(rnd.randint(0, n) for _ in range(parts - 1))  # repeats: empty parts
    bounds = [0, *cuts, n]
    return list(zip(bounds[:-1], bounds[1:]))


def merge_randomly(rnd: random.Random, states: list[LossSummary]) -> LossSummary:
    """Merge in a random tree: pick two, merge them in a random order, put it back."""
    pool = list(states)
    while len(pool) > 1:
        a = pool.pop(rnd.randrange(len(pool)))
        b = pool.pop(rnd.randrange(len(pool)))
        pool.insert(rnd.randrange(len(pool) + 1), a.merge(b) if rnd.random() < 0.5 else b.merge(a))
    return pool[0]


def state(s: LossSummary) -> dict:
    """The state without the sketch (KLL compaction draws random bits)."""
    d = s.to_dict()
    d.pop("sketch")
    return d


# Losses spanning the double range, 2^-1000 .. 2^1000 (no sum of these lists overflows),
# zeros included; and lists of one magnitude, where every rounding of a plain sum shows.
_wide_value = st.builds(lambda m, e: math.ldexp(m, e), st.floats(0.5, 1.0, exclude_max=True),
                        st.integers(-1000, 1000)) | st.just(0.0)
wide = st.one_of(st.lists(_wide_value, min_size=1, max_size=120),
                 st.lists(st.floats(0.5, 2.0), min_size=50, max_size=300))


@examples(60)
@given(losses=wide, weighted=st.booleans(),
       parts=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_any_split_merged_in_any_order_is_within_one_ulp(losses, weighted, parts, seed):
    rnd = random.Random(seed)
    x = np.array(losses)
    w = np.array([math.ldexp(rnd.random(), rnd.randint(-30, 30)) for _ in x]) if weighted else None
    wv = np.empty(0) if w is None else w
    one = summary_of(x, wv, 1)
    check_exact(one, x, w)
    states = [summary_of(x[a:b], wv[a:b] if weighted else wv, 1) for a, b in split_points(rnd, x.size, parts)]
    merged = merge_randomly(rnd, states)
    check_exact(merged, x, w)
    assert LossSummary.merge_all(states).count == x.size


@examples(30)
@given(n=st.integers(1, 400), k=st.integers(1, 4), scale=st.sampled_from([1e-3, 1.0, 1e3, 1e150]),
       weighted=st.booleans(), parts=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_summarize_splits_of_rows(n, k, scale, weighted, parts, seed):
    """summarize on row splits of logits over a wide range, merged in random trees."""
    rnd = np.random.default_rng(seed)
    pred = rnd.standard_normal((n, k)) * scale
    lab = (rnd.random((n, k)) < 0.5).astype(np.float64)
    w = rnd.random(n) * 10.0 if weighted else None
    ref = loss(pred, lab, reduction="none").losses.reshape(-1)
    one = summarize(pred, lab, sample_weight=w)
    check_exact(one, ref, w, k)
    pr = random.Random(seed)
    states = [summarize(pred[a:b], lab[a:b], sample_weight=None if w is None else w[a:b])
              if b > a else LossSummary.empty() for a, b in split_points(pr, n, parts)]
    check_exact(merge_randomly(pr, states), ref, w, k)


@examples(40)
@given(parts=st.lists(st.lists(_wide_value, max_size=20) | st.lists(st.floats(0.5, 2.0), max_size=100),
                     min_size=3, max_size=3))
def test_merge_is_commutative_bit_for_bit_and_associative(parts):
    a, b, c = (summary_of(np.array(p, dtype=np.float64), np.empty(0), 1) for p in parts)
    assert state(a.merge(b)) == state(b.merge(a))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    for f in ("count", "inf_count", "min", "max"):
        assert getattr(left, f) == getattr(right, f)
    everything = np.array([x for p in parts for x in p])
    if everything.size:
        check_exact(left, everything, None)
        check_exact(right, everything, None)


def test_empty_is_the_identity_and_has_no_statistics():
    e = LossSummary.empty()
    s = summarize(np.array([0.5, -2.0]), np.array([1.0, 0.0]))
    assert state(e.merge(s)) == state(s) == state(s.merge(e))
    assert LossSummary.merge_all([]).count == 0
    assert e.merge(e).count == 0 and e.mean == 0.0
    for what in (lambda: e.stats(), lambda: e.loss, lambda: e.quantile(0.5), lambda: e.std):
        with pytest.raises(ValueError, match="empty"):
            what()
    with pytest.raises(TypeError):
        s.merge({"count": 1})


def test_infinite_losses_count_and_make_sums_inf_never_nan():
    pred = np.array([-1000.0, 1.0, 800.0, 0.5])  # exponential loss e^-ys: e^1000 = inf
    lab = np.array([1.0, 1.0, -1.0, -1.0])
    opts = {"input": "margins", "loss": "exponential"}
    r = loss(pred, lab, reduction="sum", quantiles=[0.5], **opts)
    s = summarize(pred, lab, **opts)
    assert s.inf_count == 2 and s.count == 4
    assert s.sum == s.mean == s.m2 == s.std == s.max == s.weighted_sum == s.loss == math.inf
    assert s.min == r.stats["min"]
    for key in ("count", "sum", "mean", "std", "min", "max"):
        assert s.stats()[key] == r.stats[key], key
    # merged with finite parts it stays inf; a zero weight removes the infinite element
    f = summarize(np.array([0.2]), np.array([1.0]), **opts)
    m = f.merge(s).merge(f)
    assert m.inf_count == 2 and m.sum == m.m2 == math.inf and not math.isnan(m.mean)
    sw = summarize(pred, lab, sample_weight=np.array([0.0, 1.0, 0.0, 2.0]), **opts)
    assert sw.inf_count == 2 and sw.sum == math.inf and math.isfinite(sw.weighted_sum)
    ref = loss(pred, lab, sample_weight=np.array([0.0, 1.0, 0.0, 2.0]), **opts)
    assert ulps(sw.loss, ref.loss) <= 1
    assert summarize(pred, lab, sample_weight=np.array([0.0, 1.0, 1e-300, 2.0]), **opts).loss == math.inf
    d = json.loads(json.dumps(m.to_dict()))
    assert LossSummary.from_dict(d) == m and d["sum"][0] == "Infinity"


@pytest.mark.parametrize("opts", [
    {}, {"loss": "focal", "gamma": 1.5, "alpha": 0.25}, {"pos_weight": 3.0},
    {"input": "probabilities", "eps": 1e-7}, {"input": "margins", "loss": "hinge"},
    {"label_smoothing": 0.1}, {"loss": "squared_error"}])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_agrees_with_loss_and_its_stats(opts, k, weighted):
    rng = np.random.default_rng(7)
    n = 3000
    pred = rng.standard_normal((n, k)) * 3
    lab = (rng.random((n, k)) < 0.4).astype(np.float64)
    if opts.get("input") == "probabilities":
        pred = 1.0 / (1.0 + np.exp(-pred))
    if opts.get("input") == "margins":
        lab = 2.0 * lab - 1.0
    w = rng.random(n) * 4.0 if weighted else None
    if k == 1:
        pred, lab = pred[:, 0], lab[:, 0]
    s = summarize(pred, lab, sample_weight=w, **opts)
    mean = loss(pred, lab, sample_weight=w, quantiles=[0.5], **opts)
    total = loss(pred, lab, sample_weight=w, reduction="sum", **opts)
    assert ulps(s.loss, mean.loss) <= 1 and ulps(s.reduce("sum"), total.loss) <= 1
    for key in ("count", "min", "max"):
        assert s.stats()[key] == mean.stats[key]
    assert ulps(s.sum, mean.stats["sum"]) <= 1 and ulps(s.mean, mean.stats["mean"]) <= 1
    assert s.std == pytest.approx(mean.stats["std"], rel=1e-12)
    # loss(..., summary=True) and grad(..., summary=True) carry the same state
    for r in (loss(pred, lab, sample_weight=w, summary=True, **opts),
              loss(pred, lab, sample_weight=w, reduction="none", summary=True, **opts),
              grad(pred, lab, sample_weight=w, summary=True, **opts)):
        assert state(r.summary) == state(s)
    assert loss(pred, lab, **opts).summary is None


def test_float32_inputs():
    rng = np.random.default_rng(3)
    pred = rng.standard_normal(5000).astype(np.float32) * 4
    lab = (rng.random(5000) < 0.5).astype(np.float32)
    w = rng.random(5000).astype(np.float32)
    s32 = summarize(pred, lab, sample_weight=w)
    s64 = summarize(pred.astype(np.float64), lab.astype(np.float64), sample_weight=w.astype(np.float64))
    assert state(s32) == state(s64)
    sd = summarize(pred.astype(np.float64) * (1 + 2.0**-40), lab, sample_weight=w, dtype="float32")
    assert state(sd) == state(s32)  # dtype="float32" rounds the inputs first, as loss does
    assert ulps(s32.loss, loss(pred, lab, sample_weight=w, dtype="float32").loss) <= 1
    with pytest.raises(InputError, match="float32 range"):
        summarize(np.array([1e300]), np.array([1.0]), dtype="float32")


def test_quantiles_within_the_sketch_rank_error():
    rng = np.random.default_rng(11)
    n = 60_000
    pred = rng.standard_normal(n) * 2
    lab = (rng.random(n) < 0.5).astype(np.float64)
    ref = np.sort(loss(pred, lab, reduction="none").losses)
    parts = [summarize(pred[a:a + 7000], lab[a:a + 7000]) for a in range(0, n, 7000)]
    for s in (summarize(pred, lab), LossSummary.merge_all(parts)):
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            v = s.quantile(q)
            rank = np.searchsorted(ref, v, side="right") / n
            assert abs(rank - q) <= 2 * KLL_RANK_ERROR, (q, rank)
        assert set(s.stats([0.5, 0.999])) == {"count", "sum", "mean", "std", "min", "max", "p50", "p99.9"}
    with pytest.raises(ValueError, match="outside"):
        parts[0].quantile(1.5)


@pytest.mark.parametrize("keys", [
    lambda rng, n: rng.integers(-3, 4, n),
    lambda rng, n: np.array(["a", "bb", "ccc", "é"])[rng.integers(0, 4, n)],
    lambda rng, n: np.array([["x", 5, "y"][i % 2 * 2] for i in rng.integers(0, 5, n)], dtype=object),
    lambda rng, n: rng.integers(0, 3, n).astype(np.uint8),
    lambda rng, n: rng.integers(-2, 3, n) * 10**15])  # a sparse range: factorised by sorting
@pytest.mark.parametrize("k", [1, 2])
def test_group_by_equals_each_groups_own_summary(keys, k):
    rng = np.random.default_rng(5)
    n = 2500
    pred = rng.standard_normal((n, k)) * 5
    lab = (rng.random((n, k)) < 0.5).astype(np.float64)
    w = rng.random(n)
    by = keys(rng, n)
    groups = summarize(pred, lab, sample_weight=w, by=by)
    assert set(groups) == set(np.unique(by).tolist())
    assert sum(g.count for g in groups.values()) == n * k
    for key, g in groups.items():
        rows = np.array([b == key for b in by.tolist()])
        own = summarize(pred[rows], lab[rows], sample_weight=w[rows])
        assert state(g) == state(own), key  # the same pass over the same elements in the same order
        check_exact(g, loss(pred[rows], lab[rows], reduction="none").losses.reshape(-1), w[rows], k)
        assert type(key) in (int, str)
    whole = LossSummary.merge_all(list(groups.values()))
    check_exact(whole, loss(pred, lab, reduction="none").losses.reshape(-1), w, k)
    # merge_groups: two halves' groups merge key-wise into the whole's
    h = n // 2
    a = summarize(pred[:h], lab[:h], sample_weight=w[:h], by=by[:h])
    b = summarize(pred[h:], lab[h:], sample_weight=w[h:], by=by[h:])
    both = merge_groups(a, b)
    assert set(both) == set(groups)
    for key in groups:
        for f in ("count", "inf_count", "min", "max"):
            assert getattr(both[key], f) == getattr(groups[key], f)
        assert ulps(both[key].sum, groups[key].sum) <= 2 and ulps(both[key].loss, groups[key].loss) <= 2


@pytest.mark.parametrize("by, match", [
    (np.arange(5), r"by.*one key per row \(4\)"),
    (np.zeros((4, 1), dtype=int), "one key per row"),
    (np.array([0.5, 1.0, 2.0, 3.0]), "integer or string keys"),
    (np.array([1, "a", 2, None], dtype=object), r"by\[3\] = None is not an integer or string key"),
    (np.array([1, True, 2, 3], dtype=object), r"by\[1\] = True"),
    (np.array([1, "a", 2, "b"], dtype=object), "mixes integer and string keys")])
def test_group_by_errors_name_the_argument(by, match):
    with pytest.raises(InputError, match=match) as e:
        summarize(np.zeros(4), np.ones(4), by=by)
    assert e.value.argument == "by"


@pytest.mark.parametrize("kwargs", [
    {"labels": np.array([1.0, 2.0, 0.0])}, {"sample_weight": np.array([1.0, -1.0, 1.0])},
    {"sample_weight": np.ones(2)}, {"loss": "nope"}, {"alpha": 1.5},
    {"predictions": np.array([0.1, np.nan, 0.2])}])
def test_errors_are_the_kernels(kwargs):
    args = {"predictions": np.array([0.1, 0.2, 0.3]), "labels": np.array([1.0, 0.0, 1.0]), **kwargs}
    with pytest.raises(InputError) as want:
        loss(**args)
    with pytest.raises(InputError) as got:
        summarize(**args)
    assert str(got.value) == str(want.value)
    with pytest.raises(InputError, match="summary"):
        loss(np.zeros(2), np.ones(2), summary="yes")


def test_serialisation_round_trips_bit_for_bit():
    rng = np.random.default_rng(1)
    s = summarize(rng.standard_normal(1000) * 40, (rng.random(1000) < 0.5) * 1.0, sample_weight=rng.random(1000))
    b = s.to_bytes()
    back = LossSummary.from_bytes(b)
    assert back == s and back.to_bytes() == b
    assert LossSummary.from_bytes(bytearray(b)) == s and LossSummary.from_bytes(memoryview(b)) == s
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert LossSummary.from_dict(d) == s
    assert pickle.loads(pickle.dumps(s)) == s
    for f in ("count", "sum", "mean", "m2", "min", "max", "weighted_sum", "weight_sum"):
        assert getattr(LossSummary.from_dict(d), f) == getattr(s, f)
    e = LossSummary.empty()
    assert LossSummary.from_bytes(e.to_bytes()) == e
    assert LossSummary.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(AttributeError, match="immutable"):
        s.count = 3


def test_foreign_or_corrupted_bytes_are_a_value_error():
    s = summarize(np.array([0.5, 1.5, -3.0]), np.array([1.0, 0.0, 1.0]))
    b = s.to_bytes()
    bad = [b"", b"LSUM", b"hello world" * 20, b[:-1], b[:50], b + b"x",
           b[:4] + bytes([9]) + b[5:],  # another version
           *(b[:i] + bytes([b[i] ^ 0x40]) + b[i + 1:] for i in (6, 20, 60, len(b) - 10, len(b) - 2))]
    for x in bad:
        with pytest.raises(ValueError):
            LossSummary.from_bytes(x)
    d = s.to_dict()
    for change in ({"count": -1}, {"count": "3"}, {"sum": [1.0]}, {"min": "NaN"}, {"max": None},
                   {"sketch": "!!"}, {"version": 2}, {"extra": 1}, {"count": 4}):
        with pytest.raises(ValueError):
            LossSummary.from_dict({**d, **change})
    with pytest.raises(ValueError, match="missing"):
        LossSummary.from_dict({k: v for k, v in d.items() if k != "m2"})
    with pytest.raises(ValueError):
        LossSummary.from_dict([1, 2])


def test_reductions_a_summary_gives():
    s = summarize(np.array([0.5, -1.0]), np.array([1.0, 0.0]), sample_weight=np.array([2.0, 0.0]))
    assert s.reduce("sum") == loss(np.array([0.5, -1.0]), np.array([1.0, 0.0]),
                                   sample_weight=np.array([2.0, 0.0]), reduction="sum").loss
    with pytest.raises(ValueError, match="per-element losses are not kept"):
        s.reduce("none")
    z = summarize(np.array([0.5]), np.array([1.0]), sample_weight=np.array([0.0]))
    with pytest.raises(ValueError, match="sums to 0"):
        z.loss
    assert z.reduce("sum") == 0.0


def test_client_carries_the_same_state_module():
    """The client merges the service's states with this very code (it cannot import the
    kernels, which need numba): the two files must be identical."""
    a = (ROOT / "kernels" / "_summary_state.py").read_bytes()
    b = (ROOT / "client" / "lossd_client" / "_summary_state.py").read_bytes()
    assert a == b
    code = ("import sys, lossd_client._summary_state as m; m.LossSummary.empty();"
            "sys.exit(sorted({'numba', 'lossd'} & set(sys.modules)) != [])")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_without_the_sketch():
    rng = np.random.default_rng(2)
    p, y, w = rng.standard_normal(3000), (rng.random(3000) < 0.5) * 1.0, rng.random(3000)
    full = summarize(p, y, sample_weight=w)
    bare = summarize(p, y, sample_weight=w, sketch=False)
    assert state(bare) == state(full) and bare.k is None and full.k == 200
    assert bare.stats() == full.stats()
    with pytest.raises(ValueError, match="no quantile sketch"):
        bare.quantile(0.5)
    with pytest.raises(ValueError, match="no quantile sketch"):
        full.merge(bare).stats([0.5])
    m = LossSummary.merge_all([bare, full, LossSummary.empty()])
    assert m.k is None and m.count == 6000
    assert LossSummary.from_bytes(bare.to_bytes()) == bare and len(bare.to_bytes()) == 101
    d = json.loads(json.dumps(bare.to_dict()))
    assert d["sketch"] is None and LossSummary.from_dict(d) == bare
    groups = summarize(p, y, by=(p > 0).astype(int), sketch=False)
    assert all(g.k is None for g in groups.values()) and sum(g.count for g in groups.values()) == 3000
    with pytest.raises(InputError, match="sketch"):
        summarize(p, y, sketch="no")


def test_bench_quick(tmp_path):
    """bench/summary.py --quick runs and writes its figures."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [row["n"] for row in rows] == [10**4, 10**5]
    assert all(row["summarize"]["melem_s"] > 0 for row in rows)


def test_docstring_examples():
    import doctest

    import lossd.kernels.summary as module
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("n", range(0, 12))
def test_four_chain_pass_without_weights_is_exact_at_every_length_and_inf_position(n):
    """summary_of without weights and groups takes four TwoSum chains (a tail of n mod 4
    on the first): every length and every position of an infinite loss gives the exact
    count, min, max, inf_count and sums within 1 ulp, and the same as the weighted pass
    with weights 1 (the one-chain loop) but for the order of its additions."""
    rnd = random.Random(n)
    x = np.array([math.ldexp(rnd.random(), rnd.randint(-300, 300)) for _ in range(n)])
    ones = np.ones(n)
    for pos in [None, *range(n)]:
        y = x.copy()
        if pos is not None:
            y[pos] = math.inf
        flat, chain = summary_of(y, np.empty(0), 1), summary_of(y, ones, 1)
        if n:
            check_exact(flat, y, None)
        else:
            assert flat.count == 0
        for f in ("count", "inf_count", "min", "max"):
            assert getattr(flat, f) == getattr(chain, f), (f, pos)
        assert ulps(flat.sum, chain.sum) <= 1 and flat.m2 == pytest.approx(chain.m2, rel=1e-12)


@pytest.mark.parametrize("n", [4000, 4001, 4002, 4003])
def test_four_chain_pass_keeps_every_rounding_error(n):
    """Thousands of losses of one magnitude: a plain float sum drifts by many ulp here,
    so a chain that dropped its error terms would miss the 1-ulp bound."""
    x = np.random.default_rng(n).uniform(0.5, 2.0, n)
    assert ulps(float(np.cumsum(x)[-1]), float(sum(Fraction(v) for v in x.tolist()))) > 1  # the trap is armed
    check_exact(summary_of(x, np.empty(0), 1), x, None)
