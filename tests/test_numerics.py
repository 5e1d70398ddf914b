"""Element values, gradients, reductions, stats and logreg_grad against tests/reference.py.

Every expected value comes from mpmath at >= 120 bits (reference.py) or, for reductions,
from exact sums of those values; the kernels are never compared with themselves.
Errors are measured in ulps of the float64 nearest to the exact value (subnormal
spacing 2^-1074 at the bottom; infinities must match exactly).

Bounds:
* 4 ulp for every result that is a sum or product of non-negative rounded terms: all
  losses with hard labels, cross-entropy with soft labels (y*softplus(-s) +
  (1-y)*softplus(s)), and every hard-label gradient.
* Differences use a *mixed* bound: 4 ulp of the largest term of the difference
  (reference.Elem.*_scale). With soft labels the cross-entropy gradient is
  (1-y)σ(s) - pw*y*σ(-s); each term carries a few half-ulp roundings of its own size,
  and when the terms nearly cancel the result inherits that absolute error, which no
  float64 evaluation of the terms can avoid. The same holds for squared_error,
  2((1-y)σ(s) - yσ(-s))σ(s)σ(-s), and for the focal gradient (three terms, two signs).
  squared_error's *loss* is the square of such a difference: an absolute error e in
  d = σ(s) - y moves d^2 by 2|d|e, so its scale is 2|d|*max term.
* focal with soft labels: 16 ulp on the loss. 1-p_t = yσ(-s) + (1-y)σ(s) is a sum of two
  rounded terms, raised to gamma (which multiplies its relative error by gamma), times
  a cross-entropy that itself carries up to ~4 ulp. The soft-label focal *gradient*
  (mixed bound) gets 16 ulp for the same reason: its terms contain (1-p_t)^gamma and
  (1-p_t)^(gamma-1) of that same rounded base.
"""

from __future__ import annotations

import math
import os
import sys
import zlib

import numpy as np
import pytest
from mpmath import mp, mpf

from lossd import kernels
from lossd.kernels._checks import _quantile_key as _qkey

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reference.py, any import mode
from reference import (  # noqa: E402
    MARGIN_LOSSES,
    X,
    element,
    elements,
    finite_difference,
    fsum_mp,
    smooth_labels,
    spacing,
    to_f64,
    ulp_diff,
)

INF = math.inf
N_SWEEP = 1500  # points per sweep; two sweeps per case

# --------------------------------------------------------------------------- cases
# (id, input, loss, label kind, options). Label kind "hard": {0,1} ({-1,+1} on margins);
# "soft": uniform [0,1] with some exact 0, 1 and 0.5.

CASES = [
    # logits
    ("logits-ce", "logits", "cross_entropy", "hard", {}),
    ("logits-ce-pw3", "logits", "cross_entropy", "hard", {"pos_weight": 3.0}),
    ("logits-ce-pw0", "logits", "cross_entropy", "hard", {"pos_weight": 0.0}),
    ("logits-ce-soft", "logits", "cross_entropy", "soft", {}),
    ("logits-ce-soft-pw0.7", "logits", "cross_entropy", "soft", {"pos_weight": 0.7}),
    ("logits-ce-ls0.1", "logits", "cross_entropy", "hard", {"label_smoothing": 0.1}),
    ("logits-focal", "logits", "focal", "hard", {}),
    ("logits-focal-g0.5-a0.25", "logits", "focal", "hard", {"gamma": 0.5, "alpha": 0.25}),
    ("logits-focal-g0-a0.75", "logits", "focal", "hard", {"gamma": 0.0, "alpha": 0.75}),
    ("logits-focal-g3", "logits", "focal", "hard", {"gamma": 3.0}),
    ("logits-focal-soft", "logits", "focal", "soft", {}),
    ("logits-focal-soft-g1.5-a0.25", "logits", "focal", "soft", {"gamma": 1.5, "alpha": 0.25}),
    ("logits-focal-ls0.2", "logits", "focal", "hard", {"label_smoothing": 0.2}),
    *[(f"logits-{m}", "logits", m, "hard", {}) for m in MARGIN_LOSSES],
    ("logits-se", "logits", "squared_error", "hard", {}),
    ("logits-se-soft", "logits", "squared_error", "soft", {}),
    ("logits-se-ls0.1", "logits", "squared_error", "hard", {"label_smoothing": 0.1}),
    # margins (labels -1/+1)
    ("margins-ce", "margins", "cross_entropy", "hard", {}),
    ("margins-ce-pw2.5", "margins", "cross_entropy", "hard", {"pos_weight": 2.5}),
    ("margins-focal", "margins", "focal", "hard", {}),
    ("margins-focal-g0.5-a0.25", "margins", "focal", "hard", {"gamma": 0.5, "alpha": 0.25}),
    *[(f"margins-{m}", "margins", m, "hard", {}) for m in MARGIN_LOSSES],
    ("margins-se", "margins", "squared_error", "hard", {}),
    # probabilities
    ("prob-ce", "probabilities", "cross_entropy", "hard", {}),
    ("prob-ce-soft", "probabilities", "cross_entropy", "soft", {}),
    ("prob-ce-pw2", "probabilities", "cross_entropy", "hard", {"pos_weight": 2.0}),
    ("prob-ce-eps1e-7", "probabilities", "cross_entropy", "hard", {"eps": 1e-7}),
    ("prob-ce-soft-eps1e-12", "probabilities", "cross_entropy", "soft", {"eps": 1e-12}),
    ("prob-ce-ls0.1", "probabilities", "cross_entropy", "hard", {"label_smoothing": 0.1}),
    ("prob-focal", "probabilities", "focal", "hard", {}),
    ("prob-focal-soft-a0.25", "probabilities", "focal", "soft", {"alpha": 0.25}),
    ("prob-focal-g0.5-eps1e-7", "probabilities", "focal", "hard", {"gamma": 0.5, "eps": 1e-7}),
    ("prob-se", "probabilities", "squared_error", "hard", {}),
    ("prob-se-soft", "probabilities", "squared_error", "soft", {}),
    ("prob-se-ls0.2", "probabilities", "squared_error", "hard", {"label_smoothing": 0.2}),
]
CASE_IDS = [c[0] for c in CASES]


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _labels(rng, n, inp, kind):
    if kind == "hard":
        y = rng.integers(0, 2, n).astype(np.float64)
        return 2 * y - 1 if inp == "margins" else y
    y = rng.uniform(0.0, 1.0, n)
    r = rng.uniform(size=n)
    y[r < 0.1] = 0.0
    y[(r >= 0.1) & (r < 0.2)] = 1.0
    y[(r >= 0.2) & (r < 0.25)] = 0.5
    return y


def _preds(rng, n, inp, sweep):
    if inp == "probabilities":
        if sweep == "uniform":
            return rng.uniform(0.0, 1.0, n)
        # tails: tiny p (down to subnormal), p near 1, and exact 0 and 1
        k = n // 2
        tiny = 10.0 ** rng.uniform(-323.5, 0.0, k)
        near1 = 1.0 - 10.0 ** rng.uniform(-17.0, 0.0, n - k)
        p = np.concatenate([tiny, near1])
        p[:5] = 0.0
        p[-5:] = 1.0
        return p
    if sweep == "uniform":
        return rng.uniform(-50.0, 50.0, n)
    mag = 10.0 ** rng.uniform(-310.0, 308.2, n)  # log-uniform, subnormal up to ~1.6e308
    return np.where(rng.uniform(size=n) < 0.5, -mag, mag)


def _kernel_opts(loss, opts):
    return {k: v for k, v in opts.items() if not (k in ("gamma", "alpha") and loss != "focal")}


def _is_soft(kind, opts):
    return kind == "soft" or opts.get("label_smoothing", 0.0) > 0.0


def _ref_opts(opts):
    return {k: v for k, v in opts.items() if k != "label_smoothing"}


def _bounds(loss, soft):
    """(loss ulp bound, loss mixed?, grad ulp bound, grad mixed?) -- see module docstring."""
    soft_focal = loss == "focal" and soft
    loss_bound = 16.0 if soft_focal else 4.0
    # The soft focal gradient's terms carry (1-p_t)^gamma and (1-p_t)^(gamma-1): the same
    # rounded base raised to a power that earns the loss its 16 ulp, so they get 16 too.
    grad_bound = 16.0 if soft_focal else 4.0
    loss_mixed = soft and loss == "squared_error"
    grad_mixed = soft or loss == "focal"  # hard-label focal terms share one sign: strict
    return loss_bound, loss_mixed, grad_bound, grad_mixed


def run_none(preds, labels, inp, loss, **opts):
    """Per-element losses and gradients from the kernels (reduction="none")."""
    r = kernels.loss(preds, labels, input=inp, loss=loss, reduction="none", **opts)
    g = kernels.grad(preds, labels, input=inp, loss=loss, reduction="none", **opts)
    assert r.loss is None
    losses = np.asarray(r.losses)
    grads = np.asarray(g.grad)
    assert losses.dtype == np.float64 and grads.dtype == np.float64
    assert losses.shape == np.shape(preds) and grads.shape == np.shape(preds)
    glosses = None if g.losses is None else np.asarray(g.losses)
    return losses, grads, glosses


def assert_ulps(what, got, refs, preds, labels, bound, mixed, ctx, skip_kinks=False):
    """Every got[i] within `bound` ulps of refs[i].<what> (mixed: of max(|ref|, scale))."""
    got = np.asarray(got).ravel()
    preds = np.asarray(preds).ravel()
    labels = np.asarray(labels).ravel()
    bad = []
    worst = 0.0
    for i, e in enumerate(refs):
        if skip_kinks and e.kink:
            continue
        ref = getattr(e, what)
        u = ulp_diff(got[i], ref, getattr(e, what + "_scale") if mixed else None)
        worst = max(worst, u) if u == u else math.inf
        if not u <= bound:
            bad.append((u, i))
    if bad:
        bad.sort(key=lambda t: -t[0])
        lines = [
            f"  pred={preds[i]!r} label={labels[i]!r} expected={to_f64(getattr(refs[i], what))!r} "
            f"got={got[i]!r} ulp={u:.3g}"
            + (f" (scale {to_f64(getattr(refs[i], what + '_scale')):.3g})" if mixed else "")
            for u, i in bad[:8]
        ]
        raise AssertionError(
            f"{ctx}: {what} off by more than {bound} ulp{' (mixed bound)' if mixed else ''} "
            f"at {len(bad)} of {len(refs)} points:\n" + "\n".join(lines)
        )
    return worst


def check_case(preds, raw_labels, inp, loss, kind, opts, ctx):
    soft = _is_soft(kind, opts)
    eff_labels = smooth_labels(raw_labels, opts.get("label_smoothing", 0.0))
    losses, grads, glosses = run_none(preds, raw_labels, inp, loss, **_kernel_opts(loss, opts))
    refs = elements(
        np.asarray(preds, dtype=np.float64), eff_labels, input=inp, loss=loss, **_ref_opts(opts)
    )
    lb, lm, gb, gm = _bounds(loss, soft)
    assert_ulps("loss", losses, refs, preds, eff_labels, lb, lm, ctx)
    if glosses is not None:
        assert_ulps("loss", glosses, refs, preds, eff_labels, lb, lm, ctx + " (grad().losses)")
    assert_ulps("grad", grads, refs, preds, eff_labels, gb, gm, ctx, skip_kinks=True)
    return refs


# --------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("sweep", ["uniform", "loguniform"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_random_sweep(case, sweep):
    cid, inp, loss, kind, opts = case
    rng = _rng(cid, sweep)
    preds = _preds(rng, N_SWEEP, inp, sweep)
    labels = _labels(rng, N_SWEEP, inp, kind)
    check_case(preds, labels, inp, loss, kind, opts, f"{cid}/{sweep}")


# --------------------------------------------------------------------------- tails

S_TAILS = np.array(
    [0.0, -0.0, 1.0, -1.0, 37.0, -37.0, 40.0, -40.0, 710.0, -710.0, -745.0, 745.0,
     800.0, -800.0, INF, -INF,
     # results in the subnormal range (e^-s for s in (708, 745))
     708.5, -708.5, 720.0, -720.0, 740.0, -740.0, 744.4, -744.4, 745.13, -745.13,
     # tiny and huge inputs
     5e-324, -5e-324, 1e-310, -1e-300, 1e300, -1e300, 1e308, -1e308,
     1.7976931348623157e308, -1.7976931348623157e308]
)  # fmt: skip


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "probabilities"], ids=lambda c: c[0])
def test_tails(case):
    cid, inp, loss, kind, opts = case
    if kind == "hard":
        ys = [-1.0, 1.0] if inp == "margins" else [0.0, 1.0]
    else:
        ys = [0.0, 1.0, 0.3, 0.5, 0.999]
    preds = np.repeat(S_TAILS, len(ys))
    labels = np.tile(np.array(ys), len(S_TAILS))
    refs = check_case(preds, labels, inp, loss, kind, opts, f"{cid}/tails")
    # never NaN, and infinite inputs give exact limits
    assert not any(mp.isnan(e.loss) or mp.isnan(e.grad) for e in refs)


def test_tails_reach_subnormal_results():
    """The tail points really produce subnormal results (so the 2^-1074 spacing at the
    bottom is exercised), and the kernel gets them to within 4 * 2^-1074."""
    pts = []
    for v in (720.0, 740.0, 744.4, 745.13):
        pts += [("logits", "cross_entropy", -v, 0.0), ("logits", "cross_entropy", v, 1.0),
                ("logits", "exponential", v, 1.0), ("logits", "exponential", -v, 0.0),
                ("margins", "cross_entropy", v, 1.0), ("margins", "exponential", -v, -1.0),
                ("logits", "focal", -v / 3, 0.0)]  # σ(s)^2 * softplus(s) ~ e^(3s)
    n_sub = 0
    for inp, loss, v, y in pts:
        e = element(v, y, input=inp, loss=loss)
        n_sub += sum(1 for val in (e.loss, e.grad) if 0 < abs(to_f64(val)) < 2.2250738585072014e-308)
        losses, grads, _ = run_none(np.array([v]), np.array([y]), inp, loss)
        assert ulp_diff(losses[0], e.loss) <= 4, (inp, loss, v, y, losses[0], to_f64(e.loss))
        assert ulp_diff(grads[0], e.grad) <= 4, (inp, loss, v, y, grads[0], to_f64(e.grad))
    assert n_sub >= 24, n_sub


def test_ce_gradient_at_37_is_not_zero():
    """σ(-37) = 8.533047625744065066...e-17: σ(37) - 1 rounds to 0 (or -2^-53 garbage);
    the gradient must be -σ(-37). The correctly rounded value is -8.533047625744065e-17
    (0.40 ulp away); -8.533047625744066e-17 (0.60 ulp, what exp(-37)/(1+exp(-37)) gives
    in libm) is the other acceptable neighbour."""
    g = kernels.grad(np.array([37.0]), np.array([1.0]), reduction="none").grad[0]
    assert g in (-8.533047625744066e-17, -8.533047625744065e-17), repr(g)
    g = kernels.grad(np.array([-37.0]), np.array([0.0]), reduction="none").grad[0]
    assert g in (8.533047625744066e-17, 8.533047625744065e-17), repr(g)
    e = element(37.0, 1.0)
    assert to_f64(e.grad) == -8.533047625744065e-17


INF_LABELS = {"logits": [0.0, 0.3, 1.0], "margins": [-1.0, 1.0]}


INF_OPTS = (
    [("cross_entropy", {}), ("cross_entropy", {"pos_weight": 0.0}),
     ("cross_entropy", {"pos_weight": 2.5}), ("cross_entropy", {"label_smoothing": 0.1}),
     ("focal", {}), ("focal", {"gamma": 0.5, "alpha": 0.25}), ("focal", {"gamma": 0.0}),
     ("squared_error", {}), ("squared_error", {"label_smoothing": 0.1})]
    + [(m, {}) for m in MARGIN_LOSSES]
)  # fmt: skip


@pytest.mark.parametrize(
    "inp,loss,opts",
    [(i, lo, o) for i in ("logits", "margins") for lo, o in INF_OPTS
     if not (i == "margins" and "label_smoothing" in o)],  # smoothing is refused on margins
    ids=lambda v: str(v),
)  # fmt: skip
def test_infinite_inputs_exact_limits(inp, loss, opts):
    """s = ±inf: losses are exactly 0 or +inf (finite for bounded losses), gradients the
    exact limits (1-y, -pw*y, ±inf, 0), never NaN -- also with soft labels and pos_weight."""
    ys = INF_LABELS[inp]
    if loss in MARGIN_LOSSES and inp == "logits":
        ys = [0.0, 1.0]
    preds = np.repeat([INF, -INF], len(ys))
    labels = np.tile(ys, 2)
    losses, grads, _ = run_none(preds, labels, inp, loss, **opts)
    eff = smooth_labels(labels, opts.get("label_smoothing", 0.0))
    refs = elements(preds, eff, input=inp, loss=loss, **_ref_opts(opts))
    for i, e in enumerate(refs):
        ctx = (inp, loss, opts, preds[i], labels[i])
        assert not math.isnan(losses[i]) and not math.isnan(grads[i]), (ctx, losses[i], grads[i])
        ref = to_f64(e.loss)
        if ref in (0.0, INF):
            assert losses[i] == ref, (ctx, losses[i], ref)
        assert ulp_diff(losses[i], e.loss) <= 4, (ctx, losses[i], ref)
        if loss in ("cross_entropy", "focal", "hinge", "squared_hinge", "modified_huber", "exponential"):
            assert losses[i] in (0.0, INF), (ctx, losses[i])
        assert ulp_diff(grads[i], e.grad) <= 4, (ctx, grads[i], to_f64(e.grad))


# --------------------------------------------------------------------------- probabilities

P_EDGES = np.array(
    [0.0, 5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 1e-60, 1e-45, 1e-40, 1e-20,
     1e-16, 1e-8, 1e-7, 0.1, 0.25, 0.5, 0.75, 0.9, 1 - 1e-7, 1 - 1e-8, 1 - 2.0**-40,
     1 - 2.0**-50, 1 - 2.0**-52, 1 - 2.0**-53, 1.0]
)  # fmt: skip


@pytest.mark.parametrize(
    "loss,opts,eps",
    [(lo, o, e) for lo, o in [("cross_entropy", {}), ("cross_entropy", {"pos_weight": 3.0}),
                              ("focal", {}), ("focal", {"gamma": 0.5, "alpha": 0.75})]
     for e in (None, 1e-7, 1e-15)]
    + [("squared_error", {}, None)],  # eps is a log-loss option
    ids=lambda v: str(v),
)  # fmt: skip
def test_probability_edges(loss, opts, eps):
    """p = 0 and 1 exactly, subnormal / tiny p, p one ulp below 1; floors and clipping."""
    opts = dict(opts)
    if eps is not None:
        opts["eps"] = eps
    ys = [0.0, 1.0, 0.3, 0.999]
    preds = np.repeat(P_EDGES, len(ys))
    labels = np.tile(ys, len(P_EDGES))
    kind = "soft"
    check_case(preds, labels, "probabilities", loss, kind, opts, f"prob-edges/{loss}/{opts}")
    # the hard-label points with the strict bound as well
    hard = np.isin(labels, [0.0, 1.0])
    check_case(preds[hard], labels[hard], "probabilities", loss, "hard", opts,
               f"prob-edges-hard/{loss}/{opts}")  # fmt: skip


def test_probability_floor_costs_100():
    """PyTorch's -100 floor (eps=None): p=0,y=1 and p=1,y=0 cost exactly 100 with
    derivative 0; p=y in {0,1} cost 0; p=1e-300 (log p = -690.8) is floored too."""
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-300, 1e-40])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    losses, grads, _ = run_none(p, y, "probabilities", "cross_entropy")
    assert losses[:5].tolist() == [100.0, 100.0, 0.0, 0.0, 100.0]
    # p=0,y=1 and p=1,y=0: the active log is floored, the other has coefficient 0 -> 0;
    # p=y=0: d/dp[-log(1-p)] = 1; p=y=1: d/dp[-log p] = -1; p=1e-300: floored -> 0
    assert grads[:5].tolist() == [0.0, 0.0, 1.0, -1.0, 0.0]
    assert ulp_diff(losses[5], -mp.log(X(1e-40))) <= 4
    assert ulp_diff(grads[5], -1 / X(1e-40)) <= 4  # floor not active: -1/p = -1e40
    # with eps the clipped p is used instead: p=0,y=1 costs -log(eps), derivative 0 outside
    losses, grads, _ = run_none(p[:2], y[:2], "probabilities", "cross_entropy", eps=1e-7)
    with mp.workprec(128):
        assert ulp_diff(losses[0], -mp.log(X(1e-7))) <= 4
        assert ulp_diff(losses[1], -mp.log(1 - X(1.0 - 1e-7))) <= 4
    assert grads.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- float32

F32_CASES = [c for c in CASES if c[0] in {
    "logits-ce-soft-pw0.7", "logits-ce-ls0.1", "logits-focal-soft", "logits-se-soft",
    "logits-hinge", "logits-exponential", "margins-ce", "margins-modified_huber",
    "prob-ce-soft", "prob-focal", "prob-se-soft", "prob-ce-eps1e-7"}]  # fmt: skip


@pytest.mark.parametrize("case", F32_CASES, ids=lambda c: c[0])
def test_float32_inputs_computed_in_float64(case):
    """float32 predictions/labels give the float64 result of their exact values (within
    the same ulp bounds of the reference on the converted inputs): nothing is computed
    in float32."""
    cid, inp, loss, kind, opts = case
    rng = _rng(cid, "f32")
    n = 600
    if inp == "probabilities":
        p = np.concatenate([rng.uniform(0, 1, n // 2), 10.0 ** rng.uniform(-46, 0, n // 2)])
        p32 = p.astype(np.float32)
        p32[:4] = [0.0, 1.0, np.float32(1e-45), np.nextafter(np.float32(1), np.float32(0))]
    else:
        s = np.concatenate([rng.uniform(-50, 50, n // 2),
                            np.sign(rng.uniform(-1, 1, n // 2)) * 10.0 ** rng.uniform(-45, 38.5, n // 2)])
        with np.errstate(over="ignore"):
            p32 = s.astype(np.float32)  # overflowing values become ±inf on purpose
        p32[:4] = [np.float32(3.4028235e38), np.float32(-3.4028235e38), np.float32(1e-45), np.float32(-88.5)]
    y32 = _labels(rng, n, inp, kind).astype(np.float32)
    assert p32.dtype == np.float32 and y32.dtype == np.float32
    soft = _is_soft(kind, opts) or not np.all(np.isin(y32, [0, 1, -1]))
    losses, grads, _ = run_none(p32, y32, inp, loss, **_kernel_opts(loss, opts))
    eff = smooth_labels(y32.astype(np.float64), opts.get("label_smoothing", 0.0))
    refs = elements(p32.astype(np.float64), eff, input=inp, loss=loss, **_ref_opts(opts))
    lb, lm, gb, gm = _bounds(loss, soft)
    assert_ulps("loss", losses, refs, p32, eff, lb, lm, cid + "/float32")
    assert_ulps("grad", grads, refs, p32, eff, gb, gm, cid + "/float32", skip_kinks=True)


# --------------------------------------------------------------------------- finite differences

FD_CASES = [
    ("logits", "cross_entropy", "soft", {"pos_weight": 1.7}),
    ("logits", "focal", "soft", {"gamma": 1.5, "alpha": 0.25}),
    ("logits", "focal", "hard", {"gamma": 3.0}),
    ("logits", "squared_error", "soft", {}),
    ("logits", "hinge", "hard", {}),
    ("logits", "squared_hinge", "hard", {}),
    ("logits", "modified_huber", "hard", {}),
    ("logits", "exponential", "hard", {}),
    ("margins", "cross_entropy", "hard", {"pos_weight": 0.4}),
    ("probabilities", "cross_entropy", "soft", {"pos_weight": 2.0}),
    ("probabilities", "cross_entropy", "soft", {"eps": 1e-4}),
    ("probabilities", "focal", "soft", {"gamma": 2.0, "alpha": 0.75}),
    ("probabilities", "squared_error", "soft", {}),
]


@pytest.mark.parametrize("inp,loss,kind,opts", FD_CASES, ids=lambda v: str(v))
def test_gradient_matches_finite_differences(inp, loss, kind, opts):
    """Central differences of the reference *loss* in mpmath (256 bits, step 2^-70
    relative) agree with the reference derivative to 1e-30 (validating reference.py's
    derivative formulas) and with the kernel's gradient within the ulp bounds."""
    rng = _rng("fd", inp, loss, kind, repr(opts))
    n = 24
    if inp == "probabilities":
        x = rng.uniform(1e-6, 1 - 1e-6, n)
        if "eps" in opts:
            x[:4] = [1e-5, 5e-5, 1 - 5e-5, 1 - 2e-5]  # clipped, derivative 0
    else:
        x = rng.uniform(-30, 30, n)
    y = _labels(rng, n, inp, kind)
    if loss in MARGIN_LOSSES:
        yp = y if inp == "margins" else 2 * y - 1
        m = yp * x
        ok = (np.abs(m - 1) > 1e-3) & (np.abs(m + 1) > 1e-3) & (np.abs(m) > 1e-3)
        x, y = x[ok], y[ok]
    _, grads, _ = run_none(x, y, inp, loss, **opts)
    _, _, gb, gm = _bounds(loss, kind == "soft")
    for i in range(len(x)):
        e = element(x[i], y[i], input=inp, loss=loss, **opts)
        fd = finite_difference(x[i], y[i], input=inp, loss=loss, **opts)
        with mp.workprec(256):
            tol = mpf("1e-30") * max(abs(fd), e.grad_scale, mpf("1e-300"))
            assert abs(e.grad - fd) <= tol, ("reference derivative", x[i], y[i], e.grad, fd)
        u = ulp_diff(grads[i], fd, e.grad_scale if gm else None)
        assert u <= gb, (inp, loss, opts, x[i], y[i], grads[i], to_f64(fd), u)


# --------------------------------------------------------------------------- reductions

RED_CASES = [
    # id, input, loss, shape, label kind, options, weights?
    ("logits-ce-NxK-pw", "logits", "cross_entropy", (120, 3), "hard",
     {"pos_weight": np.array([0.5, 1.0, 4.0])}, True),
    ("logits-ce-soft-pw", "logits", "cross_entropy", (300,), "soft", {"pos_weight": 2.0}, True),
    ("logits-focal-soft", "logits", "focal", (300,), "soft", {"gamma": 2.0, "alpha": 0.25}, True),
    ("logits-se-NxK", "logits", "squared_error", (50, 4), "soft", {}, False),
    ("margins-hinge", "margins", "hinge", (200,), "hard", {}, True),
    ("margins-ce-NxK-pw", "margins", "cross_entropy", (60, 2), "hard",
     {"pos_weight": np.array([3.0, 0.25])}, True),
    ("prob-ce-NxK", "probabilities", "cross_entropy", (80, 4), "soft", {}, True),
    ("prob-ce-eps", "probabilities", "cross_entropy", (200,), "hard", {"eps": 1e-7}, False),
]  # fmt: skip


def _red_data(case):
    cid, inp, loss, shape, kind, opts, weighted = case
    rng = _rng("red", cid)
    n = int(np.prod(shape))
    preds = _preds(rng, n, inp, "uniform").reshape(shape)
    if inp == "probabilities":
        preds.ravel()[:3] = [0.0, 1.0, 1e-30]
    labels = _labels(rng, n, inp, kind).reshape(shape)
    w = None
    if weighted:
        w = rng.uniform(0.0, 3.0, shape[0])
        w[::17] = 0.0
    return preds, labels, w


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", RED_CASES, ids=lambda c: c[0])
def test_reductions(case, reduction):
    """mean = Σ w_i l_ij / (K Σ w_i), sum = Σ w_i l_ij (exact sums of the reference,
    ~1e-14 relative); grad = g_ij * w_i / (K Σ w) (mean) or g_ij * w_i (sum)."""
    cid, inp, loss, shape, kind, opts, weighted = case
    preds, labels, w = _red_data(case)
    K = shape[1] if len(shape) == 2 else 1
    N = shape[0]
    kopts = dict(opts)
    if w is not None:
        kopts["sample_weight"] = w
    r = kernels.loss(preds, labels, input=inp, loss=loss, reduction=reduction, **kopts)
    g = kernels.grad(preds, labels, input=inp, loss=loss, reduction=reduction, **kopts)
    assert r.losses is None
    ropts = dict(opts)
    pw = ropts.pop("pos_weight", None)
    if pw is not None:
        ropts["pos_weight"] = np.broadcast_to(pw, shape)
    refs = elements(preds, labels, input=inp, loss=loss, **ropts)
    wr = np.ones(N) if w is None else w
    welem = np.repeat(wr, K)  # row weight of each element (row-major)
    with mp.workprec(128):
        total = fsum_mp(X(wi) * e.loss for wi, e in zip(welem, refs) if wi != 0)
        denom = K * fsum_mp(wr) if reduction == "mean" else mpf(1)
        expected = total / denom
        assert abs(X(r.loss) - expected) <= mpf("1e-14") * abs(expected), (cid, r.loss, to_f64(expected))
        assert abs(X(g.loss) - expected) <= mpf("1e-14") * abs(expected), (cid, g.loss, to_f64(expected))
        grad = np.asarray(g.grad)
        assert grad.shape == shape and grad.dtype == np.float64
        soft = kind == "soft"
        for i, (wi, e, gv) in enumerate(zip(welem, refs, grad.ravel())):
            ref = X(wi) * e.grad / denom
            scale = X(wi) * (e.grad_scale if (soft or loss == "focal") else abs(e.grad)) / denom
            assert abs(X(gv) - ref) <= mpf("1e-14") * max(abs(ref), scale), (
                cid, reduction, i, preds.ravel()[i], labels.ravel()[i], wi, gv, to_f64(ref))


def test_reduction_none_with_weights():
    """reduction="none" with sample_weight returns w*l and its own derivative w*g."""
    rng = _rng("none-w")
    s = rng.uniform(-40, 40, (100, 2))
    y = rng.integers(0, 2, (100, 2)).astype(float)
    w = rng.uniform(0, 2, 100)
    w[:5] = 0.0
    s[0, 0], y[0, 0] = -INF, 1.0  # weight 0 removes an infinite loss: 0*inf = 0
    r = kernels.loss(s, y, reduction="none", sample_weight=w, pos_weight=np.array([2.0, 0.5]))
    g = kernels.grad(s, y, reduction="none", sample_weight=w, pos_weight=np.array([2.0, 0.5]))
    assert r.loss is None
    refs = elements(s, y, pos_weight=np.broadcast_to([2.0, 0.5], s.shape))
    welem = np.repeat(w, 2)
    got_l = np.asarray(r.losses).ravel()
    got_g = np.asarray(g.grad).ravel()
    for i, (wi, e) in enumerate(zip(welem, refs)):
        # one more rounding (the product with w) on top of the 4-ulp element: 5 ulp
        exp_l = X(wi) * e.loss if wi != 0 else mpf(0)
        assert ulp_diff(got_l[i], exp_l) <= 5, (i, wi, got_l[i], to_f64(exp_l))
        assert ulp_diff(got_g[i], X(wi) * e.grad) <= 5, (i, wi, got_g[i], to_f64(X(wi) * e.grad))


def test_zero_weight_removes_infinite_loss():
    s = np.array([-INF, 0.0, 3.0])
    y = np.array([1.0, 1.0, 0.0])
    w = np.array([0.0, 1.0, 2.0])
    refs = elements(s, y)
    exp_sum = to_f64(refs[1].loss + 2 * refs[2].loss)
    for red, expected in [("sum", exp_sum), ("mean", to_f64((refs[1].loss + 2 * refs[2].loss) / 3))]:
        r = kernels.loss(s, y, reduction=red, sample_weight=w)
        g = kernels.grad(s, y, reduction=red, sample_weight=w)
        assert math.isfinite(r.loss) and abs(r.loss - expected) <= 1e-15 * expected, (red, r.loss)
        assert np.all(np.isfinite(g.grad)) and g.grad[0] == 0.0, (red, g.grad)
    # without the zero weight the loss is +inf, its gradient finite (-pw*y*σ(inf) = -1)
    r = kernels.loss(s, y, reduction="sum")
    assert r.loss == INF
    assert kernels.grad(s, y, reduction="sum").grad[0] == -1.0


# --------------------------------------------------------------------------- stats

QS = [0.0, 0.25, 0.5, 0.9, 0.999, 1.0]


def test_quantile_key_names():
    """The kernels' own key function: 100·q from q's shortest decimal, so that close
    quantiles keep distinct keys (``"p%g"`` would give p12.3457 for both below)."""
    assert [_qkey(q) for q in QS] == ["p0", "p25", "p50", "p90", "p99.9", "p100"]
    assert _qkey(0.1234567) == "p12.34567"
    assert _qkey(0.12345671) == "p12.345671"
    assert _qkey(1e-7) == "p0.00001"
    r = kernels.loss([0.0, 1.0, 2.0], [0.0, 1.0, 1.0], quantiles=[0.1234567, 0.12345671])
    assert {"p12.34567", "p12.345671"} <= set(r.stats)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_stats(reduction):
    """count, sum, mean, std (population), min, max of the *unweighted* per-element
    losses (even when sample_weight is given), against mpmath on the exact losses;
    quantiles equal np.quantile (linear)."""
    rng = _rng("stats")
    s = rng.uniform(-20, 20, (250, 2))
    y = rng.uniform(0, 1, (250, 2))
    w = rng.uniform(0, 3, 250)
    r = kernels.loss(s, y, reduction=reduction, sample_weight=w, pos_weight=1.5, quantiles=QS)
    refs = elements(s, y, pos_weight=1.5)
    st = r.stats
    with mp.workprec(128):
        vals = [e.loss for e in refs]
        n = len(vals)
        total = mp.fsum(vals)
        mean = total / n
        std = mp.sqrt(mp.fsum((v - mean) ** 2 for v in vals) / n)
        assert st["count"] == n == 500
        assert abs(X(st["sum"]) - total) <= mpf("1e-14") * total, (st["sum"], to_f64(total))
        assert abs(X(st["mean"]) - mean) <= mpf("1e-14") * mean, (st["mean"], to_f64(mean))
        assert abs(X(st["std"]) - std) <= mpf("1e-13") * std, (st["std"], to_f64(std))
        assert ulp_diff(st["min"], min(vals)) <= 4, (st["min"], to_f64(min(vals)))
        assert ulp_diff(st["max"], max(vals)) <= 4, (st["max"], to_f64(max(vals)))
    ref_f = np.array([to_f64(v) for v in vals])
    losses = kernels.loss(s, y, reduction="none", pos_weight=1.5).losses.ravel()
    for q in QS:
        key = _qkey(q)
        assert key in st, (key, sorted(st))
        # np.quantile of the kernel's own per-element losses (the quantile computation)...
        assert st[key] == pytest.approx(np.quantile(losses, q), rel=1e-14, abs=0), (key, st[key])
        # ... and of the correctly rounded reference losses (the losses themselves)
        assert st[key] == pytest.approx(np.quantile(ref_f, q), rel=1e-14, abs=0), (key, st[key])
    # grad() carries the same stats
    gst = kernels.grad(s, y, reduction=reduction, sample_weight=w, pos_weight=1.5, quantiles=QS).stats
    assert gst["count"] == n
    assert gst["sum"] == pytest.approx(to_f64(total), rel=1e-14)


def test_stats_with_infinite_loss():
    s = np.array([-INF, 0.0, 2.0, -3.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    st = kernels.loss(s, y, reduction="sum").stats
    assert st["count"] == 4
    assert st["sum"] == INF and st["mean"] == INF and st["max"] == INF
    assert st["std"] == INF
    assert ulp_diff(st["min"], element(-3.0, 0.0).loss) <= 4


def test_stats_plain():
    """A tiny hand-checkable case: losses 0 (p=y) and 100 (floor) on probabilities."""
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    st = kernels.loss(p, y, input="probabilities", quantiles=[0.5, 0.75]).stats
    assert (st["count"], st["sum"], st["mean"], st["std"], st["min"], st["max"]) == (4, 200.0, 50.0, 50.0, 0.0, 100.0)
    assert st["p50"] == 50.0 and st["p75"] == 100.0


# --------------------------------------------------------------------------- logreg_grad


def _logreg_ref(Xf, y, coef, b, w, l2):
    """The seed's formulas in mpmath: z exact, σ(z) - y, (1/Σw) Σ w x (σ(z)-y) + l2*coef."""
    with mp.workprec(160):
        n, d = Xf.shape
        wv = [mpf(1)] * n if w is None else [X(v) for v in w]
        W = mp.fsum(wv)
        loss_terms, gc_terms, gcs_terms = [], [[] for _ in range(d)], [[] for _ in range(d)]
        gb_terms = []
        for i in range(n):
            z = mp.fsum(X(Xf[i, j]) * X(coef[j]) for j in range(d)) + X(b)
            e = element(z, y[i])
            loss_terms.append(wv[i] * e.loss)
            r = wv[i] * e.grad  # = w (σ(z) - y)
            gb_terms.append(r)
            for j in range(d):
                gc_terms[j].append(X(Xf[i, j]) * r)
                gcs_terms[j].append(abs(X(Xf[i, j]) * r))
        c = [X(v) for v in coef]
        loss = mp.fsum(loss_terms) / W + X(l2) / 2 * mp.fsum(v * v for v in c)
        gcoef = [mp.fsum(gc_terms[j]) / W + X(l2) * c[j] for j in range(d)]
        # scale of each component: the sum of absolute terms (the sums cancel)
        scoef = [mp.fsum(gcs_terms[j]) / W + abs(X(l2) * c[j]) for j in range(d)]
        gint = mp.fsum(gb_terms) / W
        sint = mp.fsum(abs(t) for t in gb_terms) / W
        return loss, gcoef, scoef, gint, sint


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logreg_grad_mpmath(weighted, l2):
    rng = _rng("logreg", weighted, l2)
    n, d = 50, 4
    Xf = rng.normal(0, 2, (n, d))
    y = rng.integers(0, 2, n).astype(float)
    coef = rng.normal(0, 1, d)
    b = 0.2
    w = rng.uniform(0, 2, n) if weighted else None
    kw = {"l2": l2}
    if w is not None:
        kw["sample_weight"] = w
    p = kernels.logreg_grad(Xf, y, coef, b, **kw)
    loss, gcoef, scoef, gint, sint = _logreg_ref(Xf, y, coef, b, w, l2)
    tol = mpf("1e-13")
    assert abs(X(p.loss) - loss) <= tol * loss, (p.loss, to_f64(loss))
    pc = np.asarray(p.coef)
    assert pc.shape == (d,) and pc.dtype == np.float64
    for j in range(d):
        assert abs(X(pc[j]) - gcoef[j]) <= tol * scoef[j], (j, pc[j], to_f64(gcoef[j]))
    assert abs(X(p.intercept) - gint) <= tol * sint, (p.intercept, to_f64(gint))


def test_logreg_grad_matches_sample_weight_semantics():
    """Integer sample weights equal repeating rows (scikit-learn semantics: 1/n -> 1/Σw)."""
    rng = _rng("logreg-rep")
    Xf = rng.normal(0, 1, (30, 3))
    y = rng.integers(0, 2, 30).astype(float)
    coef = rng.normal(0, 1, 3)
    w = rng.integers(0, 4, 30).astype(float)
    a = kernels.logreg_grad(Xf, y, coef, -0.3, sample_weight=w, l2=0.1)
    rep = np.repeat(np.arange(30), w.astype(int))
    b = kernels.logreg_grad(Xf[rep], y[rep], coef, -0.3, l2=0.1)
    assert a.loss == pytest.approx(b.loss, rel=1e-13)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-12, atol=1e-13 * np.abs(b.coef).max())
    assert a.intercept == pytest.approx(b.intercept, rel=1e-12, abs=1e-14)


def test_logreg_grad_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = _rng("logreg-torch")
    n, d, l2 = 2000, 16, 0.05
    Xf = rng.normal(0, 1.5, (n, d))
    y = rng.integers(0, 2, n).astype(float)
    coef = rng.normal(0, 0.5, d)
    b = -0.7
    w = rng.uniform(0, 2, n)
    for weights in (None, w):
        kw = {"l2": l2} if weights is None else {"l2": l2, "sample_weight": weights}
        p = kernels.logreg_grad(Xf, y, coef, b, **kw)
        tc = torch.tensor(coef, dtype=torch.float64, requires_grad=True)
        tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        z = torch.tensor(Xf) @ tc + tb
        tw = torch.ones(n, dtype=torch.float64) if weights is None else torch.tensor(weights)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(
            z, torch.tensor(y), weight=tw, reduction="sum") / tw.sum()
        L = ce + l2 / 2 * (tc * tc).sum()
        L.backward()
        assert p.loss == pytest.approx(L.item(), rel=1e-12)
        gc = tc.grad.numpy()
        scale = np.abs(gc).max()
        assert np.max(np.abs(np.asarray(p.coef) - gc)) <= 1e-12 * scale, (p.coef, gc)
        assert abs(p.intercept - tb.grad.item()) <= 1e-12 * max(abs(tb.grad.item()), scale)


# --------------------------------------------------------------------------- the reference itself


def test_reference_agrees_with_frameworks():
    """reference.py against independent implementations at ordinary points (their own
    float64 rounding allows ~1e-12): torch BCEWithLogits (pos_weight) and BCELoss (the
    -100 floor), optax sigmoid_focal_loss, scikit-learn's SGD hinge / squared hinge /
    modified Huber losses and derivatives, and torch autograd derivatives."""
    torch = pytest.importorskip("torch")
    from sklearn.linear_model import _sgd_fast as sgd

    rng = _rng("ref-frameworks")
    n = 200
    s = rng.uniform(-15, 15, n)
    y = rng.uniform(0, 1, n)
    y[:50] = np.round(y[:50])
    pw = 1.7

    def close(a, b, scale=None, rtol=1e-12):
        a, b = float(a), float(b)
        sc = max(abs(b), abs(float(scale)) if scale is not None else 0.0, 1e-300)
        return abs(a - b) <= rtol * sc

    ts = torch.tensor(s, requires_grad=True)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(
        ts, torch.tensor(y), pos_weight=torch.tensor(pw, dtype=torch.float64), reduction="none")
    ce.sum().backward()
    for i in range(n):
        e = element(s[i], y[i], pos_weight=pw)
        # torch's (1-y)s + softplus(-s) form cancels: its error is relative to |s|
        assert close(to_f64(e.loss), ce[i].item(), abs(s[i]) * (1 + pw)), (s[i], y[i])
        # frameworks form σ(s) - y-like differences, so their error is relative to O(1)
        assert close(to_f64(e.grad), ts.grad[i].item(), 1.0), (s[i], y[i])

    p = np.concatenate([rng.uniform(0, 1, 100), [0.0, 1.0, 1e-300, 1e-30]])
    yp = np.concatenate([y[:100], [1.0, 0.0, 1.0, 1.0]])
    tp = torch.tensor(p)
    bce = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(yp), reduction="none")
    for i in range(len(p)):
        e = element(p[i], yp[i], input="probabilities")
        assert close(to_f64(e.loss), bce[i].item()), (p[i], yp[i])

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    def focal_and_grad(sv, yv, gamma, alpha):
        def f(a, b):
            return optax.sigmoid_focal_loss(a, b, gamma=gamma, alpha=alpha)

        return f(sv, yv), jax.vmap(jax.grad(f))(sv, yv)

    focal_and_grad = jax.jit(focal_and_grad, static_argnums=(2, 3))
    for gamma, alpha in [(2.0, None), (0.5, 0.25), (3.0, 0.75)]:
        fl, dfl = map(np.asarray, focal_and_grad(jnp.asarray(s), jnp.asarray(y), gamma, alpha))
        for i in range(n):
            e = element(s[i], y[i], loss="focal", gamma=gamma, alpha=alpha)
            assert close(to_f64(e.loss), fl[i], abs(s[i]), rtol=1e-11), (gamma, alpha, s[i], y[i], fl[i])
            assert close(to_f64(e.grad), dfl[i], 1.0, rtol=1e-11), (gamma, alpha, s[i], y[i])

    tss = torch.tensor(s, requires_grad=True)
    se = (torch.sigmoid(tss) - torch.tensor(y)) ** 2
    se.sum().backward()
    for i in range(n):
        e = element(s[i], y[i], loss="squared_error")
        d = math.sqrt(to_f64(e.loss))  # torch's σ(s) - y carries an error relative to 1
        assert close(to_f64(e.loss), se[i].item(), 2 * d, rtol=1e-12), (s[i], y[i])
        assert close(to_f64(e.grad), tss.grad[i].item(), 1.0, rtol=1e-12), (s[i], y[i])

    sk = {"hinge": sgd.Hinge(1.0), "squared_hinge": sgd.SquaredHinge(1.0), "modified_huber": sgd.ModifiedHuber()}
    yy = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    for name, f in sk.items():
        for i in range(n):
            if abs(abs(s[i] * yy[i]) - 1) < 1e-9:
                continue
            e = element(s[i], yy[i], input="margins", loss=name)
            assert close(to_f64(e.loss), f.py_loss(s[i], yy[i])), (name, s[i], yy[i])
            assert close(to_f64(e.grad), f.py_dloss(s[i], yy[i])), (name, s[i], yy[i])
    for i in range(n):
        e = element(s[i], yy[i], input="margins", loss="exponential")
        assert close(to_f64(e.loss), math.exp(-yy[i] * s[i]))
        assert close(to_f64(e.grad), -yy[i] * math.exp(-yy[i] * s[i]))


def test_ulp_diff_helper():
    """The measuring stick itself."""
    assert ulp_diff(1.0, mpf(1)) == 0
    assert ulp_diff(1.0 + 2**-52, mpf(1)) == 1
    assert ulp_diff(5e-324, mpf(0)) == 1  # subnormal spacing at the bottom
    assert ulp_diff(0.0, mpf(2) ** -1074 * 3) == 3
    assert ulp_diff(INF, mpf("inf")) == 0 and ulp_diff(1e308, mpf("inf")) == INF
    assert ulp_diff(INF, mpf(2) ** 1024) == 0  # rounds to inf
    assert ulp_diff(float("nan"), mpf(1)) == INF
    with mp.workprec(200):
        assert to_f64(mpf(1) / 3) == 1 / 3
        assert to_f64(mpf(2) ** -1075) == 0.0  # tie -> even (0)
        assert to_f64(mpf(2) ** -1075 * (1 + mpf(2) ** -100)) == 5e-324
        # 1 - 2^-54 is a tie between 1 - 2^-53 and 1: rounds to 1.0 (even), spacing 2^-52
        assert ulp_diff(1.0, mpf(1) - mpf(2) ** -54) == 0.25
    assert spacing(1.0) == 2**-52 and spacing(0.0) == 5e-324
