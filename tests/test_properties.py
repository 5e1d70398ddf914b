"""Properties of the kernels over arbitrary inputs (hypothesis; issue 12).

What test_numerics/test_extremes check at chosen points and against mpmath, checked here
as properties over arbitrary floats (±inf, subnormals, 1e308), shapes and option sets:

1. losses are >= 0 and never NaN for valid input; gradients never NaN; /grad's loss and
   stats are /loss's bits;
2. the forms agree where they describe the same prediction: margins with y' = 2y - 1
   are the logits form of y; probabilities p = σ(s) give the logits' loss and, by the
   chain rule, gradient (up to what rounding p itself costs);
3. reduction ``sum`` equals ``mean`` × Σw (K·Σw for N×K; N·K without weights), for the
   loss and the gradient;
4. float32 inputs are computed in float64 (the same bits as their float64 values),
   ``dtype: "float32"`` rounds the float64 results, and float32-rounded inputs agree with
   the float64 ones to float32 precision (a bound from the loss's derivatives);
5. gradients match central finite differences wherever the loss is smooth;
6. the bits do not depend on the thread count, strides, memory order, alignment or
   read-only buffers, on either side of the parallel threshold.

Examples per test: tests/profiles.py (``ci`` bounded and derandomized; ``long`` on demand).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from lossd import kernels
from lossd.kernels import api

from profiles import examples
from reference import X, sigmoid, spacing, to_f64

INF = math.inf
F64_MAX = 1.7976931348623157e308
F32_MAX = float(np.finfo(np.float32).max)
MARGIN = ("hinge", "squared_hinge", "modified_huber", "exponential", "zero_one")
SOFT = ("cross_entropy", "focal", "squared_error")

# every valid (input, loss) pair and the labels it takes
COMBOS = ([("logits", loss, "soft") for loss in SOFT] + [("logits", loss, "01") for loss in MARGIN]
          + [("probabilities", loss, "soft") for loss in SOFT]
          + [("margins", loss, "pm1") for loss in (*SOFT, *MARGIN)])

any_float = st.one_of(st.floats(allow_nan=False),  # ±inf and ±1.8e308 included
                      st.floats(-50.0, 50.0),
                      st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 37.0, -37.0, 40.0, 710.0, -745.0, 800.0, INF, -INF]))
prob = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 5e-324, 1e-300, 2.0**-53, 1 - 2.0**-53]))
soft_label = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 5e-324, 1e-300, 0.5, 1 - 2.0**-53]))
LABELS = {"soft": soft_label, "01": st.sampled_from([0.0, 1.0]), "pm1": st.sampled_from([-1.0, 1.0])}
weight = st.one_of(st.floats(0.0, F64_MAX), st.floats(0.0, 10.0), st.sampled_from([0.0, 5e-324, 1e-300, 1.0, F64_MAX]))


def _bits(a: Any) -> Any:
    """A result's values as comparable bits (arrays as uint views, NaN-safe)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return (a.dtype.str, a.shape, np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}").tobytes())
    if isinstance(a, dict):
        return {k: _bits(v) for k, v in a.items()}
    return np.float64(a).view(np.uint64).item() if isinstance(a, float) else a


def same_bits(a, b, where: str) -> None:
    for f in ("loss", "losses", "grad", "stats"):
        if hasattr(a, f) or hasattr(b, f):
            assert _bits(getattr(a, f)) == _bits(getattr(b, f)), (where, f, getattr(a, f), getattr(b, f))


def _close(a: float, b: float, ulps: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b
    return abs(a - b) <= ulps * spacing(max(abs(a), abs(b)))


# ----------------------------------------------------------------------- requests


@st.composite
def valid_calls(draw, combos=COMBOS, finite: bool = False, f32: bool = True) -> dict[str, Any]:
    """Arguments of a valid kernels.loss/grad call: shape N or N×K, any option the combo
    takes, float32 or float64 arrays."""
    inp, loss, kind = draw(st.sampled_from(combos))
    n = draw(st.integers(1, 9))
    k = draw(st.sampled_from([None, None, 1, 3]))
    shape = (n,) if k is None else (n, k)
    size = math.prod(shape)
    pred_st = prob if inp == "probabilities" else (st.floats(-1e300, 1e300) if finite else any_float)
    s = np.array(draw(st.lists(pred_st, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    y = np.array(draw(st.lists(LABELS[kind], min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    kw: dict[str, Any] = {"input": inp, "loss": loss, "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if draw(st.booleans()):
        w = np.array(draw(st.lists(weight, min_size=n, max_size=n)))
        w[0] = max(w[0], 5e-324)  # mean refuses Σw = 0
        kw["sample_weight"] = w
    if loss == "cross_entropy" and draw(st.booleans()):
        if k is not None and draw(st.booleans()):
            kw["pos_weight"] = np.array(draw(st.lists(st.floats(0.0, 1e4), min_size=k, max_size=k)))
        else:
            kw["pos_weight"] = draw(st.floats(0.0, 1e4))
    if loss in SOFT and inp != "margins" and draw(st.booleans()):
        kw["label_smoothing"] = draw(st.floats(0.0, 0.99))
    if inp == "probabilities" and loss != "squared_error" and draw(st.booleans()):
        kw["eps"] = draw(st.floats(2.0**-53, 0.49))
    if draw(st.booleans()):  # checked always, used by focal only
        kw["gamma"] = draw(st.one_of(st.floats(0.0, 10.0), st.sampled_from([0.0, 37.0, 3000.0, 1e6])))
        kw["alpha"] = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    if f32 and draw(st.integers(0, 3)) == 0:  # float32 arrays, results in float32
        with np.errstate(over="ignore"):
            s, y = s.astype(np.float32), y.astype(np.float32)
        if "sample_weight" in kw:
            w = np.minimum(kw["sample_weight"], F32_MAX).astype(np.float32)
            w[0] = max(w[0], np.float32(1e-45))  # 5e-324 is 0 in float32
            kw["sample_weight"] = w
        kw["dtype"] = "float32"
    return {"s": s, "y": y, "kw": kw}


# ----------------------------------------------------------------------- 1. >= 0, no NaN


@examples(300)
@given(valid_calls())
def test_losses_are_nonnegative_and_never_nan(call):
    s, y, kw = call["s"], call["y"], call["kw"]
    event(f"{kw['input']}/{kw['loss']}/{kw['reduction']}")
    r = kernels.loss(s, y, **kw)
    g = kernels.grad(s, y, **kw)
    if kw["reduction"] == "none":
        assert r.loss is None and r.losses.shape == s.shape
        assert not np.isnan(r.losses).any() and (r.losses >= 0).all(), r.losses
    else:
        assert r.losses is None and not math.isnan(r.loss) and r.loss >= 0, r.loss
    st_ = r.stats
    assert st_["count"] == s.size
    for key in ("sum", "mean", "std", "min", "max"):
        assert not math.isnan(st_[key]) and st_[key] >= 0, (key, st_)
    assert st_["min"] <= st_["mean"] <= st_["max"], st_
    assert g.grad.shape == s.shape and not np.isnan(g.grad).any(), g.grad
    assert g.grad.dtype == (np.float32 if kw.get("dtype") == "float32" else np.float64)
    # /grad answers /loss's loss, losses and stats, bit for bit
    assert _bits(g.loss) == _bits(r.loss) and _bits(g.stats) == _bits(r.stats)
    assert _bits(g.losses) == _bits(r.losses)


# ----------------------------------------------------------------------- 2. forms agree


@examples(150)
@given(valid_calls(combos=[c for c in COMBOS if c[0] == "logits" and c[2] in ("soft", "01")], f32=False),
       st.data())
def test_margins_are_the_logits_form_of_their_labels(call, data):
    """margins(s, 2y - 1) = logits(s, y) for {0, 1} labels, every loss and option that
    both forms take (label smoothing is a {0, 1}-label option only)."""
    s, kw = call["s"], dict(call["kw"])
    kw.pop("label_smoothing", None)
    y = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=s.size, max_size=s.size))).reshape(s.shape)
    a = kernels.grad(s, y, **kw)
    b = kernels.grad(s, 2.0 * y - 1.0, **dict(kw, input="margins"))
    for what in ("losses", "grad"):
        x, z = getattr(a, what), getattr(b, what)
        if x is not None:
            bad = [(i, u, v) for i, (u, v) in enumerate(zip(x.ravel().tolist(), z.ravel().tolist()))
                   if not _close(u, v, 2)]
            assert not bad, (what, kw, bad[:3])
    if a.loss is not None:
        assert _close(a.loss, b.loss, 4), (a.loss, b.loss)
    for key in ("sum", "mean", "min", "max"):
        assert _close(a.stats[key], b.stats[key], 4), (key, a.stats, b.stats)


def _sigmoid64(s: float) -> float:
    return to_f64(sigmoid(X(s)))  # correctly rounded


@examples(200)
@given(st.lists(st.tuples(st.floats(-30.0, 30.0), soft_label), min_size=1, max_size=8),
       st.sampled_from(["cross_entropy", "squared_error"]), st.one_of(st.none(), st.floats(0.0, 20.0)))
def test_probabilities_of_sigmoid_give_the_logits_loss(pairs, loss, pos_weight):
    """With p = σ(s) rounded once, the probabilities form gives the logits form's loss
    and (times dp/ds = p(1 - p)) its gradient, to within what rounding p costs:
    |Δp| <= 2^-53 p moves -log p by 2^-53 and -log(1 - p) by 2^-53·p/(1 - p) = 2^-53·e^s.
    |s| <= 30 keeps p off 0 and 1, where the probability form loses everything."""
    s = np.array([a for a, _ in pairs])
    y = np.array([b for _, b in pairs])
    p = np.array([_sigmoid64(v) for v in s.tolist()])
    kw = {"loss": loss, "reduction": "none"}
    if loss == "cross_entropy" and pos_weight is not None:
        kw["pos_weight"] = pos_weight
    pw = 1.0 if pos_weight is None or loss != "cross_entropy" else pos_weight
    gs = kernels.grad(s, y, input="logits", **kw)
    gp = kernels.grad(p, y, input="probabilities", **kw)
    for i in range(len(s)):
        ls, lp = gs.losses[i], gp.losses[i]
        if loss == "cross_entropy":
            tol = 2.0**-52 * (pw * y[i] + (1 - y[i]) * (1 + math.exp(s[i]))) + 8 * spacing(max(ls, lp))
            gtol = 2.0**-48 * max(1.0, pw)
        else:
            tol = 2.0**-50 + 8 * spacing(max(ls, lp))
            gtol = 2.0**-48
        assert abs(ls - lp) <= tol, (s[i], p[i], y[i], ls, lp, tol)
        chain = gp.grad[i] * p[i] * (1.0 - p[i])
        assert abs(gs.grad[i] - chain) <= gtol + 8 * spacing(abs(gs.grad[i])), (s[i], y[i], gs.grad[i], chain)


# ----------------------------------------------------------------------- 3. sum = mean × Σw


@st.composite
def reduced_calls(draw) -> dict[str, Any]:
    inp, loss, kind = draw(st.sampled_from(COMBOS))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.sampled_from([1, 2, 7, 100, 4097, 40_000]))
    k = draw(st.sampled_from([None, 1, 4]))
    shape = (n,) if k is None else (n, k)
    if inp == "probabilities":
        s = rng.random(shape)
    else:
        s = rng.normal(0.0, draw(st.sampled_from([1.0, 30.0, 700.0])), shape)
    y = (rng.random(shape) < 0.5).astype(np.float64)
    if kind == "pm1":
        y = 2 * y - 1
    elif kind == "soft" and draw(st.booleans()):
        y = rng.random(shape)
    kw: dict[str, Any] = {"input": inp, "loss": loss}
    if draw(st.booleans()):
        lo, hi = draw(st.sampled_from([(0, 0), (-3, 3), (-300, 300), (-1074, -1000), (300, 308)]))
        w = np.minimum(10.0 ** rng.uniform(lo, hi, n), F64_MAX)
        w[rng.random(n) < 0.1] = 0.0
        w[0] = max(w[0], 5e-324)
        kw["sample_weight"] = w
    if loss == "cross_entropy" and draw(st.booleans()):
        kw["pos_weight"] = draw(st.floats(0.0, 10.0))
    return {"s": s, "y": y, "kw": kw}


@examples(80)
@given(reduced_calls())
def test_sum_is_mean_times_total_weight(call):
    """sum = mean × W with W = K·Σw (N·K without weights), both within a rounding or
    two; where mean × W is beyond the float range, sum is +inf. The gradients too."""
    s, y, kw = call["s"], call["y"], call["kw"]
    k = 1 if s.ndim == 1 else s.shape[1]
    w = kw.get("sample_weight")
    total = k * (sum(map(Fraction, w.tolist()), Fraction(0)) if w is not None else s.shape[0])
    gm = kernels.grad(s, y, reduction="mean", **kw)
    gs = kernels.grad(s, y, reduction="sum", **kw)
    mean, summed = gm.loss, gs.loss
    assert mean >= 0 and summed >= 0
    if math.isinf(mean):
        assert summed == INF, (mean, summed)
        return
    want = Fraction(mean) * total
    if summed == INF:  # only where mean × W is at the top of the float range or beyond
        event("sum beyond the float range")
        assert want >= Fraction(F64_MAX) * (1 - Fraction(1, 2**50)), (mean, float(total))
        return
    # each is within 2^-53 (relative) of its exact value; absolute errors of subnormal
    # terms (2^-1075 each) add up, and a subnormal mean's comes multiplied by W
    tiny = Fraction(1, 2**1075)  # half the smallest subnormal (2.0**-1075 is 0.0 as a float)
    bound = Fraction(2.0**-51) * want + total * tiny + (2 * s.size + 2) * tiny
    assert abs(Fraction(summed) - want) <= bound, (mean, float(total), summed, float(want))
    # gradients: d(sum)/ds = W · d(mean)/ds, element by element (where both are normal)
    if total > Fraction(F64_MAX):
        return
    tw = float(total)
    a, b = gm.grad.ravel(), gs.grad.ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        ok = (np.isfinite(a) & np.isfinite(b) & (np.abs(a) >= 2.0**-1000) & (np.abs(b) >= 2.0**-1000)
              & np.isfinite(a * tw))
        prod = a[ok] * tw
    diff = np.abs(b[ok] - prod)
    # the mean's gradient w·g/W rounds a few times (W itself, 1/W, the products): 16 ulps
    assert (diff <= 16 * np.spacing(np.maximum(np.abs(b[ok]), np.abs(prod)))).all(), \
        (tw, b[ok][diff.argmax()], prod[diff.argmax()])


# ----------------------------------------------------------------------- 4. float32


@examples(120)
@given(valid_calls(finite=True, f32=False), st.data())
def test_float32_inputs_agree_with_float64(call, data):
    s, y, kw = call["s"], call["y"], call["kw"]
    if kw["input"] != "probabilities":
        s = np.clip(s, -1e30, 1e30)  # float32 holds them: no inf from narrowing
    w = kw.pop("sample_weight", None)
    if w is not None:
        w = np.minimum(w, F32_MAX)
        kw["sample_weight"] = w
    s32, y32 = s.astype(np.float32), y.astype(np.float32)
    w32 = None if w is None else w.astype(np.float32)
    if w32 is not None:
        assume(w32.sum(dtype=np.float64) > 0)  # a weight of 5e-324 is 0 in float32
    k32 = dict(kw, sample_weight=w32) if w is not None else kw

    # float32 arrays are their float64 values: the same bits
    a = kernels.grad(s32, y32, **k32)
    b = kernels.grad(s32.astype(np.float64), y32.astype(np.float64),
                     **(dict(kw, sample_weight=w32.astype(np.float64)) if w is not None else kw))
    same_bits(a, b, "float32 arrays vs their float64 values")
    # dtype float32: float64 arrays are narrowed as float32 arrays are; results rounded once
    c = kernels.grad(s, y, dtype="float32", **kw)
    d = kernels.grad(s32, y32, dtype="float32", **k32)
    same_bits(c, d, "dtype float32: float64 arrays vs float32 arrays")
    with np.errstate(over="ignore"):
        assert c.grad.dtype == np.float32 and _bits(c.grad) == _bits(b.grad.astype(np.float32))
        if b.losses is not None:
            assert _bits(c.losses) == _bits(b.losses.astype(np.float32))
    assert _bits(c.loss) == _bits(b.loss) and _bits(c.stats) == _bits(b.stats)

    # float32-rounded inputs move cross-entropy on logits no further than its derivatives
    # allow: |dl/ds| <= max(1, pw), |dl/dy| <= max(1, pw)·(|s| + log 2)
    if kw["input"] != "logits" or kw["loss"] != "cross_entropy" or "label_smoothing" in kw:
        return
    pw = kw.get("pos_weight", 1.0)
    pw = float(np.max(pw)) if isinstance(pw, np.ndarray) else pw
    l64 = kernels.loss(s, y, input="logits", reduction="none", pos_weight=kw.get("pos_weight")).losses
    l32 = kernels.loss(s32, y32, input="logits", reduction="none", pos_weight=kw.get("pos_weight")).losses
    ds = np.abs(s - s32.astype(np.float64))
    dy = np.abs(y - y32.astype(np.float64))
    lip = max(1.0, pw)
    bound = lip * (ds + (np.abs(s) + 1.0) * dy + ds * dy) + 8 * np.spacing(np.maximum(l64, l32))
    assert (np.abs(l64 - l32) <= bound).all(), (s, y, l64, l32)


# ----------------------------------------------------------------------- 5. finite differences


_KINKS = {"hinge": (1.0,), "squared_hinge": (1.0,), "modified_huber": (-1.0, 1.0), "zero_one": (0.0,)}


@examples(150)
@given(st.sampled_from(COMBOS), st.lists(st.floats(-20.0, 20.0), min_size=1, max_size=6),
       st.data())
def test_gradients_match_finite_differences(combo, xs, data):
    """Central differences of the kernels' own loss (float64, step ~2^-17 relative for
    logits, 2^-24 for probabilities in [0.02, 0.98]) match the gradient wherever the loss
    is smooth: away from the margin losses' kinks and the eps clip."""
    inp, loss, kind = combo
    n = len(xs)
    y = np.array(data.draw(st.lists(LABELS[kind], min_size=n, max_size=n)))
    kw: dict[str, Any] = {"input": inp, "loss": loss}
    if loss == "focal":
        kw["gamma"] = data.draw(st.sampled_from([0.0, 1.0, 2.0, 3.5]))
        kw["alpha"] = data.draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    if loss == "cross_entropy" and data.draw(st.booleans()):
        kw["pos_weight"] = data.draw(st.floats(0.0, 10.0))
    if loss in SOFT and inp != "margins" and data.draw(st.booleans()):
        kw["label_smoothing"] = data.draw(st.floats(0.0, 0.5))
    if inp == "probabilities":
        x = 0.02 + 0.96 * (np.array(xs) + 20.0) / 40.0
        h = np.full(n, 2.0**-24)
        if loss != "squared_error" and data.draw(st.booleans()):
            kw["eps"] = data.draw(st.sampled_from([1e-3, 0.05, 0.2]))
            e = kw["eps"]
            assume(np.all(np.abs(x - e) > 4 * h) and np.all(np.abs(x - (1 - e)) > 4 * h))
    else:
        x = np.array(xs)
        h = 2.0**-17 * np.maximum(1.0, np.abs(x))
        if loss in _KINKS:
            yp = y if inp == "margins" else 2 * y - 1
            m = yp * x
            assume(all(np.all(np.abs(m - kink) > 8 * h) for kink in _KINKS[loss]))
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    if reduction != "none" and data.draw(st.booleans()):
        kw["sample_weight"] = np.array(data.draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n)))
    g = kernels.grad(x, y, reduction=reduction, **kw)
    for i in range(n):
        xp, xm = x.copy(), x.copy()
        xp[i] += h[i]
        xm[i] -= h[i]
        lp = kernels.loss(xp, y, reduction=reduction, **kw)
        lm = kernels.loss(xm, y, reduction=reduction, **kw)
        fp, fm = (lp.losses[i], lm.losses[i]) if reduction == "none" else (lp.loss, lm.loss)
        fd = (fp - fm) / (xp[i] - xm[i])
        # truncation (~h^2) plus the rounding of both losses, divided by the step
        tol = (1e-5 * abs(g.grad[i]) + 16 * 2.0**-52 * max(abs(fp), abs(fm)) / (2 * h[i])
               + h[i] ** 2 * (abs(fp) + abs(g.grad[i]) + 1.0) + 1e-12)
        assert abs(fd - g.grad[i]) <= tol, (inp, loss, kw, reduction, x[i], y[i], g.grad[i], fd, tol)


# ----------------------------------------------------------------------- 6. layouts, threads


def _strided(a: np.ndarray, step: int) -> np.ndarray:
    big = np.full((a.shape[0] * step,) + a.shape[1:], 7.0, dtype=a.dtype)
    big[::step] = a
    return big[::step]


def _unaligned(a: np.ndarray, offset: int) -> np.ndarray:
    raw = b"\0" * offset + np.ascontiguousarray(a).tobytes()
    out = np.frombuffer(raw, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    assert not out.flags.writeable
    return out


LAYOUTS = {
    "strided": lambda a: _strided(a, 3),
    "unaligned": lambda a: _unaligned(a, 3),
    "unaligned-8": lambda a: _unaligned(a, 8),  # aligned, read-only (np.frombuffer of a body)
    "fortran": np.asfortranarray,
    "reversed-copy": lambda a: np.ascontiguousarray(a[::-1])[::-1],  # negative strides
}


@st.composite
def large_calls(draw) -> dict[str, Any]:
    inp, loss, kind = draw(st.sampled_from(COMBOS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 5, 4095, 4097, api.PARALLEL_MIN - 1, api.PARALLEL_MIN + 3, 70_001]))
    k = draw(st.sampled_from([None, None, 3]))
    shape = (n,) if k is None else (n, k)
    if inp == "probabilities":
        s = rng.random(shape)
        s.flat[rng.integers(0, s.size, 3)] = [0.0, 1.0, 5e-324]
    else:
        s = rng.normal(0.0, 20.0, shape)
        s.flat[rng.integers(0, s.size, 4)] = [INF, -INF, 1e300, -5e-324]
    y = (rng.random(shape) < 0.5).astype(np.float64)
    y = 2 * y - 1 if kind == "pm1" else (rng.random(shape) if kind == "soft" and draw(st.booleans()) else y)
    kw: dict[str, Any] = {"input": inp, "loss": loss, "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if draw(st.booleans()):
        kw["sample_weight"] = rng.uniform(0.0, 3.0, n)
    if loss == "cross_entropy" and k and draw(st.booleans()):
        kw["pos_weight"] = rng.uniform(0.0, 3.0, k)
    if draw(st.booleans()):
        kw["quantiles"] = [0.5, 0.99]
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    with np.errstate(over="ignore"):
        s, y = s.astype(dtype), y.astype(dtype)
    return {"s": s, "y": y, "kw": kw,
            "layout": draw(st.sampled_from(sorted(LAYOUTS))), "threads": draw(st.sampled_from([1, None]))}


@examples(60)
@given(large_calls())
def test_bits_do_not_depend_on_threads_strides_or_alignment(call):
    s, y, kw = call["s"], call["y"], call["kw"]
    event(f"n >= PARALLEL_MIN: {s.shape[0] >= api.PARALLEL_MIN}")
    ref_loss, ref_grad = kernels.loss(s, y, **kw), kernels.grad(s, y, **kw)
    change = LAYOUTS[call["layout"]]
    kw2 = dict(kw)
    if "sample_weight" in kw:
        kw2["sample_weight"] = change(kw["sample_weight"])
    if "pos_weight" in kw:
        kw2["pos_weight"] = change(kw["pos_weight"])
    try:
        kernels.set_threads(call["threads"])
        got_loss = kernels.loss(change(s), change(y), **kw2)
        got_grad = kernels.grad(change(s), change(y), **kw2)
    finally:
        kernels.set_threads(None)
    same_bits(got_loss, ref_loss, f"loss, {call['layout']}, threads {call['threads']}")
    same_bits(got_grad, ref_grad, f"grad, {call['layout']}, threads {call['threads']}")


# ----------------------------------------------------------------------- logistic model


@st.composite
def logreg_calls(draw) -> dict[str, Any]:
    n = draw(st.integers(1, 6))
    d = draw(st.integers(1, 3))
    big = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-10.0, 10.0),
                    st.sampled_from([0.0, 1e308, -1e308, 5e-324, 1e-300]))
    X = np.array(draw(st.lists(big, min_size=n * d, max_size=n * d))).reshape(n, d)
    y = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    coef = np.array(draw(st.lists(big, min_size=d, max_size=d)))
    kw: dict[str, Any] = {"intercept": draw(big), "l2": draw(st.one_of(st.just(0.0), st.floats(0.0, F64_MAX)))}
    if draw(st.booleans()):
        w = np.array(draw(st.lists(weight, min_size=n, max_size=n)))
        w[0] = max(w[0], 5e-324)
        kw["sample_weight"] = w
    return {"X": X, "y": y, "coef": coef, "kw": kw}


# Two rows whose gradient sum overflows (its mean is 1e308) beside an l2·coef of -inf
# (-2.7e308): summed as computed, inf + -inf; the true gradient is -1.7e308.
OVERFLOWING_SUMS = {"X": np.array([[1e308, 1.7e308], [1e308, 1.7e308]]), "y": np.array([0.0, 0.0]),
                    "coef": np.array([-1.5, 1.0]), "kw": {"intercept": 0.0, "l2": F64_MAX}}


@examples(200)
@given(logreg_calls())
@example(OVERFLOWING_SUMS)
def test_logreg_loss_is_nonnegative_and_never_nan(call):
    """Any finite features, coef, intercept, l2 and weights: a loss >= 0 and gradients
    without NaN (the intercept's gradient is a weighted mean of σ(z) - y: within
    [-1, 1]), or the one refusal of valid-looking input, z = X·coef overflowing to NaN."""
    try:
        p = kernels.logreg_grad(call["X"], call["y"], call["coef"], **call["kw"])
    except ValueError as exc:
        assert str(exc).startswith("features · coef + intercept is NaN"), str(exc)
        event("refused: z overflows")
        return
    assert not math.isnan(p.loss) and p.loss >= 0, p.loss
    assert not np.isnan(p.coef).any(), p.coef
    assert abs(p.intercept) <= 1.0 + 2.0**-50, p.intercept


def test_logreg_gradient_survives_overflowing_sums():
    """The case above exactly: coef gradient [-1.7e308, inf] (it was [NaN, inf])."""
    c = OVERFLOWING_SUMS
    p = kernels.logreg_grad(c["X"], c["y"], c["coef"], **c["kw"])
    assert p.coef[1] == INF and p.loss == INF
    assert p.coef[0] == pytest.approx(float(Fraction(1e308) - Fraction(3, 2) * Fraction(F64_MAX)), rel=1e-15), p.coef


def test_mean_of_a_sum_at_the_top_of_the_range_is_a_number():
    """hinge at s = 1.8e308 is 1.8e308; with five losses of 1 the sum rounds to the
    largest float and the mean was NaN (found by the long profile), now sum / 6."""
    s = np.array([0.0] * 5 + [F64_MAX])
    r = kernels.loss(s, np.zeros(6), loss="hinge")
    assert r.loss == r.stats["mean"] == float((Fraction(F64_MAX) + 5) / 6), r
    w = kernels.loss(s, np.zeros(6), loss="hinge", sample_weight=np.ones(6))
    assert w.loss == r.loss
