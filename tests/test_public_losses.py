"""The optax-style per-element functions (kernels/losses.py): their doctests, equality
with ``loss(..., reduction="none")``, independent references (mpmath at 200 bits,
PyTorch when installed) and their InputErrors."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from mpmath import mp, mpf

from lossd import kernels
from lossd.kernels import (InputError, binary_cross_entropy, logistic_loss,
                           sigmoid_binary_cross_entropy, sigmoid_focal_loss)
from lossd.kernels import losses as losses_module

INF = math.inf
# Logits where the float64 formulas break: ±37 (e^-37 is below 2^-53), ±800 (e^800
# overflows), ±inf.
EDGES = [-INF, -800.0, -37.0, -1.0, 0.0, 1e-300, 2.5, 37.0, 800.0, INF]


def test_doctests_run_and_pass():
    failed, attempted = doctest.testmod(losses_module, raise_on_error=False, verbose=False)
    assert attempted > 0
    assert failed == 0


# ------------------------------------------------------------------ mpmath references

def _mul0(a, b):
    """a·b with 0·anything = 0: a zero coefficient removes its (maybe infinite) term."""
    return mpf(0) if a == 0 or b == 0 else a * b


def _softplus(x):
    return mp.log1p(mp.exp(x)) if x < 0 else x + mp.log1p(mp.exp(-x))


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x))


def _ce_logits(s, y):
    s, y = mpf(s), mpf(y)
    return _mul0(y, _softplus(-s)) + _mul0(1 - y, _softplus(s))


def _focal(s, y, gamma, alpha):
    s, y = mpf(s), mpf(y)
    q = _mul0(y, _sigmoid(-s)) + _mul0(1 - y, _sigmoid(s))  # 1 - p_t
    v = _mul0(_ce_logits(s, y), q ** mpf(gamma) if gamma else mpf(1))
    return v if alpha is None else _mul0(v, alpha * y + (1 - alpha) * (1 - y))


def _bce_prob(p, y, eps):
    p, y = mpf(p), mpf(y)
    if eps is None:
        lp = max(mp.log(p), mpf(-100)) if p > 0 else mpf(-100)
        lq = max(mp.log1p(-p), mpf(-100)) if p < 1 else mpf(-100)  # 1 - 1e-300 is 1 at 200 bits
    else:
        pc = min(max(p, mpf(eps)), mpf(1.0 - eps))  # 1 - eps as a float, as the kernels do
        lp, lq = mp.log(pc), mp.log1p(-pc)
    return -(_mul0(y, lp) + _mul0(1 - y, lq))


def _close(got: float, want, ulps: float = 4.0) -> bool:
    want = float(want)
    if math.isinf(want) or want == 0.0:
        return got == want
    return abs(got - want) <= ulps * math.ulp(want)


@pytest.mark.parametrize("y", [0.0, 1.0, 0.25])
def test_sigmoid_bce_against_mpmath(y):
    got = sigmoid_binary_cross_entropy(np.array(EDGES), np.full(len(EDGES), y))
    with mp.workprec(200):
        for s, g in zip(EDGES, got):
            assert _close(float(g), _ce_logits(s, y)), (s, y, g)


def test_logistic_loss_against_mpmath():
    s = np.array(EDGES * 2)
    y = np.repeat([-1.0, 1.0], len(EDGES))
    got = logistic_loss(s, y)
    with mp.workprec(200):
        for si, yi, g in zip(s, y, got):
            want = _softplus(-mpf(yi) * mpf(si)) if math.isfinite(si) else (
                mpf(0) if yi * si > 0 else mp.inf)
            assert _close(float(g), want), (si, yi, g)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, 0.25), (0.0, None)])
def test_focal_against_mpmath(gamma, alpha):
    s = np.array(EDGES * 2)
    y = np.repeat([0.0, 1.0], len(EDGES))
    got = sigmoid_focal_loss(s, y, gamma=gamma, alpha=alpha)
    with mp.workprec(200):
        for si, yi, g in zip(s, y, got):
            assert _close(float(g), _focal(si, yi, gamma, alpha), ulps=16), (si, yi, g)


@pytest.mark.parametrize("eps", [None, 1e-7])
def test_bce_probabilities_against_mpmath(eps):
    p = np.array([0.0, 1e-300, 1e-50, 0.1, 0.5, 0.9, 1 - 2.0**-53, 1.0])
    for y in (0.0, 1.0, 0.3):
        got = binary_cross_entropy(p, np.full(p.size, y), eps=eps)
        with mp.workprec(200):
            for pi, g in zip(p, got):
                assert _close(float(g), _bce_prob(pi, y, eps)), (pi, y, eps, g)


# ------------------------------------------------------------- the same as loss(...)

def _data(shape=(50, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 6, shape), rng.random(shape), (rng.random(shape) < 0.5).astype(float)


def test_each_is_loss_with_reduction_none():
    s, soft, hard = _data()
    p = 1 / (1 + np.exp(-s))
    pairs = [
        (sigmoid_binary_cross_entropy(s, soft), kernels.loss(s, soft, reduction="none")),
        (binary_cross_entropy(p, soft), kernels.loss(p, soft, input="probabilities", reduction="none")),
        (binary_cross_entropy(p, soft, eps=1e-6),
         kernels.loss(p, soft, input="probabilities", eps=1e-6, reduction="none")),
        (logistic_loss(s, 2 * hard - 1), kernels.loss(s, 2 * hard - 1, input="margins", reduction="none")),
        (sigmoid_focal_loss(s, soft, alpha=0.3, gamma=1.5),
         kernels.loss(s, soft, loss="focal", alpha=0.3, gamma=1.5, reduction="none")),
    ]
    for got, want in pairs:
        assert got.shape == s.shape and got.dtype == np.float64
        np.testing.assert_array_equal(got, want.losses)


def test_float32_input_gives_float32_as_loss_with_dtype_float32():
    s, soft, _ = _data((40,), seed=1)
    s32 = s.astype(np.float32)
    got = sigmoid_binary_cross_entropy(s32, soft)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, kernels.loss(s32, soft, reduction="none", dtype="float32").losses)
    assert sigmoid_focal_loss(s32, soft).dtype == np.float32
    assert sigmoid_binary_cross_entropy(s32.tolist(), soft).dtype == np.float64  # a list: float64


# --------------------------------------------------------------------------- PyTorch

def test_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    s = rng.uniform(-30, 30, 400)
    y = rng.random(400)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    want = F.binary_cross_entropy_with_logits(t(s), t(y), reduction="none").numpy()
    np.testing.assert_allclose(sigmoid_binary_cross_entropy(s, y), want, rtol=1e-12, atol=1e-15)

    p = np.concatenate([rng.random(400), [0.0, 1.0, 0.0, 1.0]])
    yp = np.concatenate([rng.random(400), [1.0, 0.0, 0.0, 1.0]])
    want = F.binary_cross_entropy(t(p), t(yp), reduction="none").numpy()  # logs floored at -100
    np.testing.assert_allclose(binary_cross_entropy(p, yp), want, rtol=1e-12, atol=1e-15)

    ypm = np.where(rng.random(400) < 0.5, -1.0, 1.0)
    want = torch.log1p(torch.exp(-t(ypm) * t(s))).numpy()
    np.testing.assert_allclose(logistic_loss(s, ypm), want, rtol=1e-12, atol=1e-15)

    # focal as torchvision.ops.sigmoid_focal_loss writes it, in torch (no torchvision needed)
    sf = rng.uniform(-5, 5, 400)
    yh = (rng.random(400) < 0.5).astype(float)
    for gamma, alpha in ((2.0, 0.25), (1.0, None)):
        ts, ty = t(sf), t(yh)
        pr = torch.sigmoid(ts)
        ce = F.binary_cross_entropy_with_logits(ts, ty, reduction="none")
        p_t = pr * ty + (1 - pr) * (1 - ty)
        ref = ce * (1 - p_t) ** gamma
        if alpha is not None:
            ref = (alpha * ty + (1 - alpha) * (1 - ty)) * ref
        np.testing.assert_allclose(sigmoid_focal_loss(sf, yh, alpha=alpha, gamma=gamma), ref.numpy(),
                                   rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,argument,index,reason", [
    (lambda: sigmoid_binary_cross_entropy([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 2.0]),
     "labels", (3,), "= 2 is outside [0, 1]"),
    (lambda: logistic_loss([0.0, 1.0], [1.0, 0.0]), "labels", (1,), "= 0 is not in {-1, 1}"),
    (lambda: binary_cross_entropy([[0.5, 1.5]], [[1.0, 0.0]]), "predictions", (0, 1),
     '= 1.5 is outside [0, 1] (input = "probabilities")'),
    (lambda: sigmoid_focal_loss([0.0, math.nan], [1.0, 0.0]), "predictions", (1,), "is NaN"),
    (lambda: sigmoid_focal_loss([0.0], [1.0], gamma=-1.0), "gamma", (), "= -1 is outside [0, inf)"),
    (lambda: binary_cross_entropy([0.5], [1.0], eps=1e-20), "eps", (),
     f"= 1e-20 is below 2^-53 = {2.0**-53!r}: 1 - eps would round to 1 and clip nothing near 1"),
])
def test_errors_are_input_errors(call, argument, index, reason):
    with pytest.raises(InputError) as info:
        call()
    exc = info.value
    assert (exc.argument, exc.index, exc.reason) == (argument, index, reason)
    where = "[" + ", ".join(map(str, index)) + "]" if index else ""
    assert str(exc) == f"{argument}{where} {reason}"
