"""Compare lossd's kernels with the frameworks themselves (we call them; no re-derivation).

* PyTorch: binary_cross_entropy_with_logits (weight per row, pos_weight per column,
  mean/sum/none, autograd gradients) and binary_cross_entropy on probabilities
  (log terms floored at -100).  Where PyTorch loses precision or returns NaN, an inline
  mpmath computation at 120 bits shows which side is right.
* Keras label smoothing (formula quoted below), against pre-smoothed labels.
* scikit-learn: log_loss, hinge_loss, brier_score_loss, zero_one_loss, the SGD loss
  functions (Hinge, SquaredHinge, ModifiedHuber) and the _loss module's
  HalfBinomialLoss / ExponentialLoss.
* optax: sigmoid_binary_cross_entropy, sigmoid_focal_loss and jax.grad of the focal mean.
* scipy.special: expit / log_expit identities.

Semantic differences that are part of our contract (and asserted as such here):
* reduction="mean" with sample_weight is sum(w*l) / (K*sum(w)) (scikit-learn's weighted
  average); PyTorch's `weight` mean divides by N*K instead.
* On probabilities, PyTorch's gradient divides by max(p(1-p), 1e-12); ours is the
  derivative of the value returned (0 where a log term's -100 floor is active).
"""

from __future__ import annotations

import math
import zlib

import mpmath
import numpy as np
import pytest
import scipy.special as sps
import torch
import torch.nn.functional as F

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import sklearn.metrics as skm  # noqa: E402
from sklearn._loss.loss import ExponentialLoss, HalfBinomialLoss  # noqa: E402
from sklearn.linear_model import _sgd_fast  # noqa: E402

from lossd import kernels  # noqa: E402

EPS = np.finfo(np.float64).eps
F64 = torch.float64


# ----------------------------------------------------------------------------- helpers

def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test's parameters (crc32: stable across processes)."""
    return np.random.default_rng([zlib.crc32(repr(k).encode()) for k in key] + [20240601])


def wide_logits(rng, shape, scale=4.0):
    """Mostly moderate logits plus a tail of large magnitudes (up to ~300)."""
    s = rng.normal(0.0, scale, size=shape)
    big = rng.random(shape) < 0.05
    s[big] = np.sign(rng.normal(size=shape))[big] * 10 ** rng.uniform(1, 2.5, size=shape)[big]
    return s


def assert_elementwise(ours, ref, atol, rtol=1e-12, what=""):
    """|ours - ref| <= rtol*|ref| + atol element by element (atol may be an array);
    equal infinities pass, NaN on either side fails. Reports the first bad element."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), ref.shape)
    with np.errstate(invalid="ignore"):
        ok = (ours == ref) | (np.abs(ours - ref) <= rtol * np.abs(ref) + atol)
    if not ok.all():
        i = np.unravel_index(int(np.flatnonzero(~ok.ravel())[0]), ref.shape)
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {ok.size} elements differ; first at {i}: "
            f"ours={ours[i]!r} ref={ref[i]!r} tol={rtol * abs(ref[i]) + atol[i]!r}")


def assert_scalar(ours, ref, rtol=1e-12, atol=0.0, what=""):
    assert ours is not None, f"{what}: result is None"
    assert math.isfinite(ours) == math.isfinite(ref) or ours == ref, f"{what}: {ours} vs {ref}"
    assert abs(ours - ref) <= rtol * abs(ref) + atol, (
        f"{what}: ours={ours!r} ref={ref!r} rel={abs(ours - ref) / max(abs(ref), 1e-300):.3g}")


def mean_denominator(shape, w):
    k = 1 if len(shape) == 1 else shape[1]
    return k * (shape[0] if w is None else float(np.sum(w)))


# ====================================================================== PyTorch (logits)

def torch_bce_logits(s, y, w, pw, reduction, contract_mean):
    """Value and autograd gradient of F.binary_cross_entropy_with_logits.
    contract_mean: for reduction="mean" with weights, differentiate our contract's mean
    sum(w*l)/(K*sum(w)) built from PyTorch's sum (PyTorch's own mean divides by N*K)."""
    S = torch.tensor(s, dtype=F64, requires_grad=True)
    Y = torch.tensor(y, dtype=F64)
    W = None
    if w is not None:
        W = torch.tensor(w if s.ndim == 1 else w[:, None], dtype=F64)
    PW = None if pw is None else torch.as_tensor(np.asarray(pw, dtype=np.float64), dtype=F64)
    if reduction == "mean" and contract_mean:
        out = F.binary_cross_entropy_with_logits(S, Y, weight=W, pos_weight=PW, reduction="sum")
        out = out / mean_denominator(s.shape, w)
    else:
        out = F.binary_cross_entropy_with_logits(S, Y, weight=W, pos_weight=PW, reduction=reduction)
    (out.sum() if reduction == "none" else out).backward()
    return out.detach().numpy(), S.grad.numpy()


@pytest.mark.parametrize("shape,pos", [((2000,), "none"), ((2000,), "scalar"), ((400, 5), "none"),
                                       ((400, 5), "scalar"), ((400, 5), "columns")],
                         ids=["N", "N-pw", "NxK", "NxK-pw", "NxK-pwcols"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_vs_torch(shape, pos, weighted, reduction):
    rng = rng_for("bcel", shape, weighted, pos, reduction)
    s = wide_logits(rng, shape)
    y = rng.random(shape)
    y[: shape[0] // 3] = np.round(y[: shape[0] // 3])
    w = rng.uniform(0.0, 2.0, size=shape[0]) if weighted else None
    pw = {"none": None, "scalar": 2.5,
          "columns": rng.uniform(0.2, 4.0, size=shape[-1])}[pos]
    opts = dict(reduction=reduction, sample_weight=w, pos_weight=pw)

    r = kernels.loss(s, y, **opts)
    g = kernels.grad(s, y, **opts)
    t_val, t_grad = torch_bce_logits(s, y, w, pw, reduction, contract_mean=True)

    # PyTorch's own error bound: a few ulps of the largest intermediate (|s|, the log
    # terms), times the weights; relative 1e-12 on top.
    wcol = np.ones(shape) if w is None else (w if len(shape) == 1 else w[:, None]) * np.ones(shape)
    pwcol = np.ones(shape) if pw is None else np.maximum(1.0, np.broadcast_to(pw, shape))
    elem_atol = 8 * EPS * (np.abs(s) + 1.0) * wcol * pwcol
    grad_atol = 8 * EPS * wcol * pwcol

    if reduction == "none":
        assert r.loss is None and r.losses is not None
        assert r.losses.shape == shape
        assert_elementwise(r.losses, t_val, elem_atol, what="losses")
        assert_elementwise(g.grad, t_grad, grad_atol, what="grad")
    else:
        denom = 1.0 if reduction == "sum" else mean_denominator(shape, w)
        assert_scalar(r.loss, float(t_val), rtol=1e-12, atol=elem_atol.sum() / denom, what="loss")
        assert_scalar(g.loss, float(t_val), rtol=1e-12, atol=elem_atol.sum() / denom, what="grad.loss")
        assert g.grad.shape == shape
        assert_elementwise(g.grad, t_grad, grad_atol / denom, what="grad")
        if reduction == "mean" and weighted:
            # PyTorch's weighted mean divides by N*K, ours (the contract) by K*sum(w).
            t_mean, _ = torch_bce_logits(s, y, w, pw, "mean", contract_mean=False)
            assert_scalar(r.loss * float(np.sum(w)) / shape[0], float(t_mean), rtol=1e-12,
                          atol=elem_atol.sum() / s.size, what="torch-style mean")


@pytest.mark.parametrize("shape", [(4095,), (4097,), (9000,), (32767,), (32768,), (50_001,),
                                   (1500, 7), (3000, 7), (12_000, 3)])
def test_bce_with_logits_vs_torch_across_block_sizes(shape):
    """Sizes around the kernels' block (4096) and serial/parallel (2^15) boundaries,
    with pos_weight per column and row weights: every element, sum and mean vs PyTorch."""
    rng = rng_for("sizes", shape)
    s = wide_logits(rng, shape)
    y = rng.random(shape)
    y[::3] = np.round(y[::3])
    w = rng.uniform(0.0, 2.0, size=shape[0])
    pw = 1.75 if len(shape) == 1 else rng.uniform(0.5, 3.0, size=shape[1])
    wcol = (w if len(shape) == 1 else w[:, None]) * np.ones(shape)
    elem_atol = 8 * EPS * (np.abs(s) + 1.0) * wcol * 3.0
    for reduction in ("none", "sum", "mean"):
        g = kernels.grad(s, y, reduction=reduction, sample_weight=w, pos_weight=pw)
        t_val, t_grad = torch_bce_logits(s, y, w, pw, reduction, contract_mean=True)
        denom = {"none": 1.0, "sum": 1.0, "mean": mean_denominator(shape, w)}[reduction]
        if reduction == "none":
            assert_elementwise(g.losses, t_val, elem_atol, what=f"{shape} losses")
        else:
            assert_scalar(g.loss, float(t_val), rtol=1e-12, atol=elem_atol.sum() / denom,
                          what=f"{shape} {reduction}")
        assert_elementwise(g.grad, t_grad, 24 * EPS * wcol / denom, what=f"{shape} {reduction} grad")
    t_val, _ = torch_bce_logits(s, y, None, pw, "none", contract_mean=True)
    r = kernels.loss(s, y, pos_weight=pw, reduction="none")
    assert_elementwise(r.losses, t_val, 24 * EPS * (np.abs(s) + 1.0), what=f"{shape} unweighted losses")
    assert r.stats["count"] == s.size
    assert_scalar(r.stats["sum"], float(t_val.sum()), rtol=1e-12, what=f"{shape} stats sum")


def test_bce_with_logits_stats_are_unweighted_torch_losses():
    rng = rng_for("stats")
    s = wide_logits(rng, (300, 3))
    y = rng.random((300, 3))
    w = rng.uniform(0.0, 3.0, size=300)
    r = kernels.loss(s, y, sample_weight=w, quantiles=(0.5, 0.9))
    t = F.binary_cross_entropy_with_logits(torch.tensor(s), torch.tensor(y), reduction="none").numpy()
    st = r.stats
    assert st["count"] == t.size
    assert_scalar(st["sum"], t.sum(), rtol=1e-12, what="sum")
    assert_scalar(st["mean"], t.mean(), rtol=1e-12, what="mean")
    assert_scalar(st["std"], t.std(), rtol=1e-9, what="std")
    assert_scalar(st["min"], t.min(), rtol=1e-12, atol=1e-15, what="min")
    assert_scalar(st["max"], t.max(), rtol=1e-12, what="max")
    assert_scalar(st["p50"], float(np.quantile(t, 0.5)), rtol=1e-12, atol=1e-15, what="p50")
    assert_scalar(st["p90"], float(np.quantile(t, 0.9)), rtol=1e-12, atol=1e-15, what="p90")


@pytest.mark.parametrize("n", [1000, 40_000])
def test_quantile_stats_match_numpy(n):
    """README: quantile keys use NumPy's default (linear) method on the per-element losses."""
    rng = rng_for("quantiles", n)
    s = wide_logits(rng, n)
    y = rng.random(n)
    qs = (0.0, 0.1, 0.5, 0.9, 0.999, 1.0)
    r = kernels.loss(s, y, quantiles=qs)
    ref = np.quantile(kernels.loss(s, y, reduction="none").losses, qs)
    for q, v in zip(qs, ref):
        key = "p" + format(100 * q, "g")
        assert r.stats[key] == v, (key, r.stats[key], v)


def test_quantile_stats_with_infinite_losses_are_not_nan():
    """±inf logits give +inf losses, never NaN (contract). NumPy's linear interpolation
    returns NaN between a finite value and +inf (inf - inf); the quantile itself is +inf."""
    s = np.array([-np.inf, -np.inf, 0.5, 1.0])
    y = np.array([1.0, 1.0, 1.0, 0.0])  # losses sorted: 0.474, 1.313, inf, inf
    r = kernels.loss(s, y, quantiles=(0.25, 0.5, 0.9))
    finite = np.sort(kernels.loss(s, y, reduction="none").losses)[:2]
    assert r.stats["p25"] == pytest.approx(finite[0] + 0.75 * (finite[1] - finite[0]), rel=1e-15)
    assert r.stats["p50"] == np.inf, r.stats  # between 1.313 and inf (t = 0.5)
    assert r.stats["p90"] == np.inf, r.stats  # between inf and inf
    assert not any(v != v for v in r.stats.values()), r.stats


# ================================================================ PyTorch (probabilities)

def special_probabilities(rng, n):
    p = rng.random(n)
    y = rng.random(n)
    y[: n // 2] = np.round(y[: n // 2])
    # Exact 0/1, values whose log is below the -100 floor, and values near 1.
    specials = [0.0, 1.0, 1e-50, 1e-300, 5e-324, 1 - 2**-53, 1 - 2**-40, 2**-60, 3e-44, 0.5]
    p[: len(specials)] = specials
    p[len(specials): 2 * len(specials)] = specials
    y[: len(specials)] = 1.0
    y[len(specials): 2 * len(specials)] = 0.0
    p[2 * len(specials): 3 * len(specials)] = specials  # soft labels at the specials
    return p, y


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_probabilities_values_vs_torch(weighted, reduction):
    rng = rng_for("bcep", weighted, reduction)
    p, y = special_probabilities(rng, 3000)
    w = rng.uniform(0.0, 2.0, size=p.size) if weighted else None
    r = kernels.loss(p, y, input="probabilities", reduction=reduction, sample_weight=w)
    W = None if w is None else torch.tensor(w)
    if reduction == "mean" and weighted:
        t = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), weight=W, reduction="sum").item() / w.sum()
    else:
        t = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), weight=W, reduction=reduction)
        t = t.numpy() if reduction == "none" else t.item()
    if reduction == "none":
        assert_elementwise(r.losses, t, atol=4 * EPS * (1 + (w if weighted else 0)), rtol=1e-13,
                           what="losses")
    else:
        assert_scalar(r.loss, t, rtol=1e-13, what="loss")


def test_bce_probabilities_floor_cases_exact():
    # p = 0 with y = 1 and p = 1 with y = 0 cost exactly 100 (log floored at -100),
    # like PyTorch; p = 1e-50 (log = -115) is floored too.
    p = np.array([0.0, 1.0, 1e-50, 1 - 2**-53, 0.0, 1.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.3])
    t = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), reduction="none").numpy()
    ours = kernels.loss(p, y, input="probabilities", reduction="none").losses
    np.testing.assert_array_equal(t[:3], [100.0, 100.0, 100.0])
    np.testing.assert_array_equal(ours[:3], [100.0, 100.0, 100.0])
    assert ours[4] == 0.0 and ours[5] == 0.0
    assert_elementwise(ours, t, atol=1e-15, rtol=1e-14, what="floor cases")
    assert_scalar(ours[6], 30.0, rtol=1e-15, what="soft label at p=0")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_probabilities_grad_vs_torch_interior(reduction):
    """Gradients are compared only where no floor/clamp is active: p in [1e-3, 1-1e-3]
    (PyTorch divides by max(p(1-p), 1e-12), which differs from the true derivative of
    the floored value at p in {0, 1} and below e^-100)."""
    rng = rng_for("bcep-grad", reduction)
    n = 2000
    p = rng.uniform(1e-3, 1 - 1e-3, size=n)
    y = rng.random(n)
    y[: n // 2] = np.round(y[: n // 2])
    w = rng.uniform(0.0, 2.0, size=n)
    g = kernels.grad(p, y, input="probabilities", reduction=reduction, sample_weight=w)
    P = torch.tensor(p, requires_grad=True)
    out = F.binary_cross_entropy(P, torch.tensor(y), weight=torch.tensor(w), reduction="sum")
    if reduction == "mean":
        out = out / w.sum()
    if reduction == "none":
        out = F.binary_cross_entropy(P, torch.tensor(y), weight=torch.tensor(w), reduction="none").sum()
    out.backward()
    denom = w.sum() if reduction == "mean" else 1.0
    scale = (y / p + (1 - y) / (1 - p)) * w / denom  # size of the two terms that cancel
    assert_elementwise(g.grad, P.grad.numpy(), atol=8 * EPS * scale, rtol=1e-12, what="grad")


def test_bce_probabilities_grad_differs_from_torch_where_floor_active():
    """Documented difference: where the -100 floor (or p in {0,1}) is involved, PyTorch's
    gradient is (p-y)/max(p(1-p),1e-12); ours is the derivative of the value returned."""
    p = np.array([0.0, 1.0, 1e-50, 0.0, 1.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.3])
    P = torch.tensor(p, requires_grad=True)
    F.binary_cross_entropy(P, torch.tensor(y), reduction="sum").backward()
    # (PyTorch's clamp constant is float(1e-12) = 9.99999996e-13, hence rtol 1e-8)
    np.testing.assert_allclose(P.grad.numpy()[:3], [-1e12, 1e12, -1e12], rtol=1e-8)
    ours = kernels.grad(p, y, input="probabilities", reduction="sum").grad
    # floor active on the only weighted term -> 0; otherwise d/dp of -(1-y)log(1-p) or -y log p
    np.testing.assert_array_equal(ours[:3], [0.0, 0.0, 0.0])
    assert_elementwise(ours[3:], [1.0, -1.0, 0.7], atol=0, rtol=1e-15, what="true derivative")


# ===================================================== where PyTorch is wrong: mpmath

def mp_ce(s, y, pw=1.0):
    """pw*y*softplus(-s) + (1-y)*softplus(s) at 120 bits (finite s)."""
    with mpmath.workprec(120):
        s, y, pw = mpmath.mpf(float(s)), mpmath.mpf(float(y)), mpmath.mpf(float(pw))
        return float(pw * y * mpmath.log1p(mpmath.exp(-s)) + (1 - y) * mpmath.log1p(mpmath.exp(s)))


def mp_ce_grad(s, y, pw=1.0):
    """(1-y)*sigmoid(s) - pw*y*sigmoid(-s) at 120 bits."""
    with mpmath.workprec(120):
        s, y, pw = mpmath.mpf(float(s)), mpmath.mpf(float(y)), mpmath.mpf(float(pw))
        sig = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
        return float((1 - y) * sig(s) - pw * y * sig(-s))


def test_infinite_logits_torch_nan_ours_exact_limits():
    inf = np.inf
    s = np.array([inf, -inf, inf, -inf, inf, -inf])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.3])
    for pw in (None, 2.5):
        pwv = 1.0 if pw is None else pw
        t = F.binary_cross_entropy_with_logits(
            torch.tensor(s), torch.tensor(y), reduction="none",
            pos_weight=None if pw is None else torch.tensor(pw, dtype=F64)).numpy()
        assert np.isnan(t).any(), "PyTorch 2.13 returns NaN at infinite logits"
        r = kernels.loss(s, y, reduction="none", pos_weight=pw)
        np.testing.assert_array_equal(r.losses, [0.0, 0.0, inf, inf, inf, inf])
        g = kernels.grad(s, y, reduction="none", pos_weight=pw)
        assert np.isfinite(g.grad).all()
        assert_elementwise(g.grad, [0.0, 0.0, 1.0, -pwv, 0.7, -0.3 * pwv], atol=0, rtol=2 * EPS,
                           what="grad at infinite logits")
        assert kernels.loss(s[:2], y[:2], pos_weight=pw).loss == 0.0
        assert kernels.loss(s, y, pos_weight=pw).loss == inf


CANCEL_CASES = [  # (s, y, pw): PyTorch computes these by cancellation or rounding
    (-40.0, 0.0, None), (-30.0, 0.0, None), (-36.7, 0.0, 3.0), (40.0, 1.0, 2.0),
    (-700.0, 0.0, None), (45.0, 1.0, None), (-20.0, 1e-12, None), (25.0, 1.0 - 2**-40, 0.5),
]


@pytest.mark.parametrize("s,y,pw", CANCEL_CASES)
def test_large_logits_ours_match_mpmath(s, y, pw):
    ref = mp_ce(s, y, 1.0 if pw is None else pw)
    gref = mp_ce_grad(s, y, 1.0 if pw is None else pw)
    ours = kernels.loss(np.array([s]), np.array([y]), reduction="sum", pos_weight=pw).loss
    ours_g = kernels.grad(np.array([s]), np.array([y]), reduction="sum", pos_weight=pw).grad[0]
    assert_scalar(ours, ref, rtol=8 * EPS, what="loss vs mpmath")
    assert_scalar(ours_g, gref, rtol=8 * EPS, what="grad vs mpmath")


def test_torch_loses_precision_where_ours_does_not():
    """The cases above, against PyTorch: documents that its relative error is large."""
    worst_torch = 0.0
    for s, y, pw in CANCEL_CASES:
        ref = mp_ce(s, y, 1.0 if pw is None else pw)
        t = F.binary_cross_entropy_with_logits(
            torch.tensor([s], dtype=F64), torch.tensor([y], dtype=F64), reduction="sum",
            pos_weight=None if pw is None else torch.tensor(pw, dtype=F64)).item()
        worst_torch = max(worst_torch, abs(t - ref) / abs(ref))
        ours = kernels.loss(np.array([s]), np.array([y]), reduction="sum", pos_weight=pw).loss
        assert abs(ours - ref) <= 8 * EPS * abs(ref), (s, y, pw, ours, ref)
    assert worst_torch > 1e-3  # e.g. s=-40, y=0: PyTorch returns 0, truth 4.25e-18


def test_float32_inputs_ours_exact_where_torch_float32_is_not():
    s32 = np.array([-20.0, -17.0, 20.0, 30.0, -88.0, 16.5, 3.3, -0.1], dtype=np.float32)
    y32 = np.array([0, 0, 1, 1, 0, 1, 0, 1], dtype=np.float32)
    ref = np.array([mp_ce(a, b) for a, b in zip(s32.astype(np.float64), y32)])
    gref = np.array([mp_ce_grad(a, b) for a, b in zip(s32.astype(np.float64), y32)])
    ours = kernels.loss(s32, y32, reduction="none").losses
    ours_g = kernels.grad(s32, y32, reduction="none").grad
    assert ours.dtype == np.float64 and ours_g.dtype == np.float64
    assert_elementwise(ours, ref, atol=0, rtol=8 * EPS, what="float32 losses vs mpmath")
    assert_elementwise(ours_g, gref, atol=0, rtol=8 * EPS, what="float32 grad vs mpmath")
    t = F.binary_cross_entropy_with_logits(torch.tensor(s32), torch.tensor(y32), reduction="none").numpy()
    assert t[0] == 0.0 and ref[0] > 2e-9  # torch float32: 0, truth 2.06e-9


def test_large_logit_grad_torch_rounds_to_zero():
    s = np.array([40.0, -40.0, 50.0])
    y = np.array([1.0, 0.0, 1.0])
    S = torch.tensor(s, requires_grad=True)
    F.binary_cross_entropy_with_logits(S, torch.tensor(y), reduction="sum").backward()
    ours = kernels.grad(s, y, reduction="sum").grad
    ref = np.array([mp_ce_grad(a, b) for a, b in zip(s, y)])
    assert_elementwise(ours, ref, atol=0, rtol=8 * EPS, what="grad vs mpmath")
    assert S.grad.numpy()[0] == 0.0  # torch: sigmoid(40) - 1 rounds to 0; truth -4.25e-18


# ===================================================================== Keras smoothing

def keras_smooth(y, ls):
    # Keras binary_crossentropy (keras.losses.binary_crossentropy docs/source):
    #   y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    # i.e. "squeeze the labels towards 0.5".
    return y * (1.0 - ls) + 0.5 * ls


@pytest.mark.parametrize("inp", ["logits", "probabilities"])
@pytest.mark.parametrize("ls", [0.1, 0.37, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_label_smoothing_keras(inp, ls, reduction):
    rng = rng_for("ls", inp, ls, reduction)
    shape = (200, 3)
    y = (rng.random(shape) < 0.5).astype(np.float64)
    w = rng.uniform(0.1, 2.0, size=shape[0])
    if inp == "logits":
        x = wide_logits(rng, shape)
    else:
        x = rng.uniform(1e-4, 1 - 1e-4, size=shape)
        x[0, :] = [0.0, 1.0, 0.5]
    ys = keras_smooth(y, ls)
    opts = dict(input=inp, reduction=reduction, sample_weight=w)
    a = kernels.loss(x, y, label_smoothing=ls, **opts)
    b = kernels.loss(x, ys, **opts)
    ga = kernels.grad(x, y, label_smoothing=ls, **opts)
    gb = kernels.grad(x, ys, **opts)
    big = np.abs(x) + 100.0 if inp == "logits" else np.full(shape, 100.0)  # d loss / d y
    if reduction == "none":
        assert_elementwise(a.losses, b.losses, atol=4 * EPS * big * w[:, None], rtol=1e-14,
                           what="smoothing vs pre-smoothed")
    else:
        assert_scalar(a.loss, b.loss, rtol=1e-13, what="smoothing vs pre-smoothed")
    interior = np.ones(shape, bool) if inp == "logits" else (x > 0) & (x < 1)
    assert_elementwise(ga.grad[interior], gb.grad[interior], atol=1e-15, rtol=1e-12,
                       what="grad smoothing vs pre-smoothed")
    # ... and against PyTorch on the smoothed labels
    X, Ys, W = torch.tensor(x), torch.tensor(ys), torch.tensor(w[:, None])
    fn = F.binary_cross_entropy_with_logits if inp == "logits" else F.binary_cross_entropy
    if reduction == "none":
        t = fn(X, Ys, weight=W, reduction="none").numpy()
        assert_elementwise(a.losses, t, atol=8 * EPS * big * w[:, None], rtol=1e-12, what="vs torch")
    else:
        t = fn(X, Ys, weight=W, reduction="sum").item() / (shape[1] * w.sum())
        assert_scalar(a.loss, t, rtol=1e-12, what="vs torch")
    if inp == "probabilities":
        # smoothed labels are never hard: p = 0 or 1 costs 100 * (ls/2) on the floored term
        assert np.all(a.losses[0, :2] > 0) if reduction == "none" else True


# ======================================================================== scikit-learn

def test_sklearn_log_loss_clip_behaviour():
    """Check the assumption: scikit-learn 1.9 clips y_proba to [eps, 1-eps], eps the
    machine epsilon of y_proba's dtype."""
    e64 = np.finfo(np.float64).eps
    e32 = np.finfo(np.float32).eps
    assert skm.log_loss([1], [0.0], labels=[0, 1]) == pytest.approx(-math.log(e64), rel=1e-15)
    assert skm.log_loss([0], [1.0], labels=[0, 1]) == pytest.approx(-math.log(e64), rel=1e-15)
    v32 = skm.log_loss([1], np.array([0.0], dtype=np.float32), labels=[0, 1])
    assert v32 == pytest.approx(-math.log(e32), rel=1e-6)


@pytest.mark.parametrize("n", [3000, 5000, 40_000])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sklearn_log_loss(weighted, n):
    rng = rng_for("logloss", weighted, n)
    p, _ = special_probabilities(rng, n)
    y = (rng.random(n) < 0.5).astype(np.int64)
    w = rng.uniform(0.0, 3.0, size=n) if weighted else None
    ref = skm.log_loss(y, p, sample_weight=w, labels=[0, 1])
    ours = kernels.loss(p, y, input="probabilities", eps=np.finfo(np.float64).eps, sample_weight=w).loss
    # sklearn computes log(1 - p) with 1 - p rounded: absolute error <= eps per element
    assert_scalar(ours, ref, rtol=1e-13, atol=2 * EPS, what="log_loss")
    # the clip reaches p = 0 and 1: cost -log(eps) = 36.04, not the -100 floor
    r = kernels.loss(np.array([0.0, 1.0]), np.array([1, 0]), input="probabilities",
                     eps=np.finfo(np.float64).eps, reduction="none")
    assert_elementwise(r.losses, [-math.log(EPS)] * 2, atol=0, rtol=1e-15, what="clipped ends")


def test_sklearn_log_loss_float32():
    rng = rng_for("logloss32")
    n = 3000
    p = rng.random(n).astype(np.float32)
    p[:4] = [0.0, 1.0, 1e-9, 1 - 2**-24]
    y = (rng.random(n) < 0.5).astype(np.int8)
    ref = skm.log_loss(y, p, labels=[0, 1])  # clips at float32 eps, computes in float32
    ours = kernels.loss(p, y, input="probabilities", eps=float(np.finfo(np.float32).eps)).loss
    assert_scalar(ours, ref, rtol=2e-6, what="log_loss float32")


@pytest.mark.parametrize("form", ["margins", "logits"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sklearn_hinge_loss(form, weighted):
    rng = rng_for("hinge", form, weighted)
    n = 4000
    s = rng.normal(0.0, 2.0, size=n)
    s[:4] = [1.0, -1.0, 0.0, 1.0]
    y01 = (rng.random(n) < 0.5).astype(np.int64)
    y = 2 * y01 - 1 if form == "margins" else y01
    w = rng.uniform(0.0, 3.0, size=n) if weighted else None
    ref = skm.hinge_loss(y, s, sample_weight=w)
    ours = kernels.loss(s, y, input=form, loss="hinge", sample_weight=w).loss
    assert_scalar(ours, ref, rtol=1e-13, what="hinge_loss")


@pytest.mark.parametrize("form", ["probabilities", "logits"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sklearn_brier_score(form, weighted):
    rng = rng_for("brier", form, weighted)
    n = 4000
    y = (rng.random(n) < 0.4).astype(np.int64)
    w = rng.uniform(0.0, 3.0, size=n) if weighted else None
    # behaviour check: binary brier_score_loss is the plain mean of (p - y)^2
    assert skm.brier_score_loss([0, 1, 1], [0.2, 0.7, 0.4]) == pytest.approx((0.04 + 0.09 + 0.36) / 3)
    if form == "probabilities":
        x = rng.random(n)
        x[:3] = [0.0, 1.0, 0.5]
        prob = x
    else:
        x = wide_logits(rng, n)
        prob = sps.expit(x)
    ref = skm.brier_score_loss(y, prob, sample_weight=w)
    ours = kernels.loss(x, y, input=form, loss="squared_error", sample_weight=w).loss
    assert_scalar(ours, ref, rtol=1e-12, what="brier")


@pytest.mark.parametrize("form", ["margins", "logits"])
def test_sklearn_zero_one_loss(form):
    rng = rng_for("01", form)
    n = 4000
    s = rng.normal(0.0, 2.0, size=n)
    s[s == 0.0] = 1e-3  # sklearn thresholds at s > 0; see test_zero_one_at_zero
    y01 = (rng.random(n) < 0.5).astype(np.int64)
    w = rng.uniform(0.0, 3.0, size=n)
    if form == "margins":
        y, pred = 2 * y01 - 1, np.where(s > 0, 1, -1)
    else:
        y, pred = y01, (s > 0).astype(np.int64)
    for sw in (None, w):
        ref = skm.zero_one_loss(y, pred, sample_weight=sw)
        ours = kernels.loss(s, y, input=form, loss="zero_one", sample_weight=sw).loss
        assert_scalar(ours, ref, rtol=1e-13, what="zero_one_loss")


def test_zero_one_at_zero():
    # Contract: zero_one is [m <= 0], so s = 0 is an error for either class (sklearn's
    # predict would call it class 0 / -1 and count only the positive row).
    r = kernels.loss(np.zeros(2), np.array([0, 1]), loss="zero_one", reduction="none")
    np.testing.assert_array_equal(r.losses, [1.0, 1.0])


SGD_LOSSES = {
    "hinge": lambda: _sgd_fast.Hinge(1.0),
    "squared_hinge": lambda: _sgd_fast.SquaredHinge(1.0),
    "modified_huber": lambda: _sgd_fast.ModifiedHuber(),
}


@pytest.mark.parametrize("name", sorted(SGD_LOSSES))
@pytest.mark.parametrize("form", ["margins", "logits"])
def test_sklearn_sgd_loss_functions(name, form):
    rng = rng_for("sgd", name, form)
    n = 400
    s = rng.normal(0.0, 3.0, size=n)
    ypm = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    s[:6] = [1.0, -1.0, 0.0, 2.0, -1.0, 1.0]  # margins at the kinks
    ypm[:6] = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    y = ypm if form == "margins" else (ypm + 1) / 2
    lf = SGD_LOSSES[name]()
    ref = np.array([lf.py_loss(a, b) for a, b in zip(s, ypm)])
    dref = np.array([lf.py_dloss(a, b) for a, b in zip(s, ypm)])
    ours = kernels.loss(s, y, input=form, loss=name, reduction="none").losses
    g = kernels.grad(s, y, input=form, loss=name, reduction="none").grad
    assert_elementwise(ours, ref, atol=0, rtol=1e-15, what=f"{name} loss")
    # sklearn's Hinge takes the subgradient -y at m == 1; ours takes 0 (README) -> skip kinks
    m = ypm * s
    smooth = (m != 1.0) if name == "hinge" else np.ones(n, bool)
    assert_elementwise(g[smooth], dref[smooth], atol=0, rtol=1e-15, what=f"{name} dloss")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sklearn_half_binomial_and_exponential(weighted):
    rng = rng_for("sk_loss", weighted)
    n = 3000
    s = wide_logits(rng, n, scale=3.0)
    s = np.clip(s, -600, 600)  # exponential loss overflows beyond ~709
    y = rng.random(n)
    y01 = (rng.random(n) < 0.5).astype(np.float64)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    hb = HalfBinomialLoss()
    ref = hb.loss(y_true=y, raw_prediction=s, sample_weight=w)
    dref = hb.gradient(y_true=y, raw_prediction=s, sample_weight=w)
    r = kernels.loss(s, y, reduction="none", sample_weight=w)
    g = kernels.grad(s, y, reduction="none", sample_weight=w)
    ww = np.ones(n) if w is None else w
    assert_elementwise(r.losses, ref, atol=8 * EPS * (np.abs(s) + 1) * ww, rtol=1e-12, what="HalfBinomial")
    assert_elementwise(g.grad, dref, atol=8 * EPS * ww, rtol=1e-12, what="HalfBinomial grad")
    ex = ExponentialLoss()
    ref = ex.loss(y_true=y01, raw_prediction=s, sample_weight=w)
    dref = ex.gradient(y_true=y01, raw_prediction=s, sample_weight=w)
    r = kernels.loss(s, y01, loss="exponential", reduction="none", sample_weight=w)
    g = kernels.grad(s, y01, loss="exponential", reduction="none", sample_weight=w)
    assert_elementwise(r.losses, ref, atol=0, rtol=1e-13, what="Exponential")
    assert_elementwise(g.grad, dref, atol=0, rtol=1e-13, what="Exponential grad")


# =============================================================================== optax

def test_optax_sigmoid_binary_cross_entropy():
    rng = rng_for("optax-bce")
    shape = (500, 4)
    s = wide_logits(rng, shape)
    y = rng.random(shape)
    y[:100] = np.round(y[:100])
    ref = np.asarray(optax.sigmoid_binary_cross_entropy(jnp.asarray(s), jnp.asarray(y)))
    assert ref.dtype == np.float64
    ours = kernels.loss(s, y, reduction="none").losses
    assert_elementwise(ours, ref, atol=8 * EPS * (np.abs(s) + 1), rtol=1e-12, what="optax bce")
    assert_scalar(kernels.loss(s, y).loss, float(ref.mean()), rtol=1e-12, what="optax bce mean")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
def test_optax_sigmoid_focal_loss(gamma, alpha):
    rng = rng_for("focal", gamma, alpha)
    shape = (400, 3)
    s = rng.normal(0.0, 5.0, size=shape)
    y = (rng.random(shape) < 0.3).astype(np.float64)
    y[:50] = rng.random((50, 3))  # optax >= 0.2.5 supports continuous labels
    ref = np.asarray(optax.losses.sigmoid_focal_loss(jnp.asarray(s), jnp.asarray(y), alpha=alpha, gamma=gamma))
    r = kernels.loss(s, y, loss="focal", gamma=gamma, alpha=alpha, reduction="none")
    assert_elementwise(r.losses, ref, atol=1e-300, rtol=1e-11, what="focal")
    assert_scalar(kernels.loss(s, y, loss="focal", gamma=gamma, alpha=alpha).loss, float(ref.mean()),
                  rtol=1e-11, what="focal mean")


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_jax_grad_of_focal_mean(gamma, alpha, weighted):
    rng = rng_for("focal-grad", gamma, alpha, weighted)
    shape = (300, 2)
    s = rng.normal(0.0, 4.0, size=shape)
    y = (rng.random(shape) < 0.3).astype(np.float64)
    y[:40] = rng.random((40, 2))
    w = rng.uniform(0.0, 2.0, size=shape[0]) if weighted else None
    wj = jnp.ones(shape[0]) if w is None else jnp.asarray(w)

    def mean_focal(logits):
        l = optax.losses.sigmoid_focal_loss(logits, jnp.asarray(y), alpha=alpha, gamma=gamma)
        return jnp.sum(wj[:, None] * l) / (shape[1] * jnp.sum(wj))

    ref_val = float(mean_focal(jnp.asarray(s)))
    ref_grad = np.asarray(jax.grad(mean_focal)(jnp.asarray(s)))
    assert np.isfinite(ref_grad).all()
    g = kernels.grad(s, y, loss="focal", gamma=gamma, alpha=alpha, sample_weight=w)
    assert_scalar(g.loss, ref_val, rtol=1e-11, what="focal mean")
    scale = np.max(np.abs(ref_grad))
    assert_elementwise(g.grad, ref_grad, atol=1e-13 * scale, rtol=1e-10, what="focal grad")


def test_focal_gamma_zero_is_optax_bce():
    rng = rng_for("focal0")
    s = wide_logits(rng, 1000)
    y = rng.random(1000)
    ours = kernels.loss(s, y, loss="focal", gamma=0.0, reduction="none").losses
    ref = np.asarray(optax.sigmoid_binary_cross_entropy(jnp.asarray(s), jnp.asarray(y)))
    assert_elementwise(ours, ref, atol=8 * EPS * (np.abs(s) + 1), rtol=1e-12, what="focal gamma=0")


# =============================================================================== scipy

@pytest.mark.parametrize("n", [4000, 20_000, 40_000])  # one block, serial blocks, parallel
def test_scipy_log_expit_identities(n):
    rng = rng_for("scipy", n)
    mag = 10 ** rng.uniform(-4, 2.6, size=n)
    s = np.where(rng.random(n) < 0.5, -mag, mag)
    y = rng.random(n)
    y[: n // 2] = np.round(y[: n // 2])
    # logits CE = -y log_expit(s) - (1-y) log_expit(-s): two non-negative terms
    ref = -y * sps.log_expit(s) - (1 - y) * sps.log_expit(-s)
    ours = kernels.loss(s, y, reduction="none").losses
    assert_elementwise(ours, ref, atol=1e-300, rtol=1e-13, what="CE logits vs log_expit")
    # margins CE = -log_expit(y s), y in {-1, +1}
    ypm = np.where(y >= 0.5, 1.0, -1.0)
    ref_m = -sps.log_expit(ypm * s)
    ours_m = kernels.loss(s, ypm, input="margins", reduction="none").losses
    assert_elementwise(ours_m, ref_m, atol=1e-300, rtol=1e-13, what="CE margins vs log_expit")
    # probabilities form equals the logits form for p = expit(s) away from p ~ 1
    keep = s < 30
    p = sps.expit(s[keep])
    ours_p = kernels.loss(p, y[keep], input="probabilities", reduction="none").losses
    ref_p = -y[keep] * np.maximum(np.log(p), -100) - (1 - y[keep]) * np.maximum(np.log1p(-p), -100)
    assert_elementwise(ours_p, ref_p, atol=1e-300, rtol=1e-13, what="CE probabilities vs log")
    # gradient of the logits form: expit(s) - y
    g = kernels.grad(s, y, reduction="none").grad
    assert_elementwise(g, sps.expit(s) - y, atol=4 * EPS, rtol=1e-13, what="grad vs expit")
    # squared error on logits: (expit(s) - y)^2, its gradient 2 (expit(s)-y) expit(s) expit(-s)
    y01 = np.round(y)
    se = kernels.loss(s, y01, loss="squared_error", reduction="none").losses
    assert_elementwise(se, (sps.expit(s) - y01) ** 2, atol=8 * EPS, rtol=1e-12, what="squared_error")
    gse = kernels.grad(s, y01, loss="squared_error", reduction="none").grad
    ref_gse = 2 * (sps.expit(s) - y01) * sps.expit(s) * sps.expit(-s)
    assert_elementwise(gse, ref_gse, atol=8 * EPS * sps.expit(s) * sps.expit(-s), rtol=1e-12,
                       what="squared_error grad")
