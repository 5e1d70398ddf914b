"""The extremes where lossd once answered a wrong number with success (issue 11).

Each class found by trying lossd as a demanding user has a test here that failed before
the fix: focal losses with a large gamma (NaN from 0·inf), soft labels near 0 and 1
(fast-math regrouping cancelled α y + (1-α)(1-y)), weights near the ends of the float
range (Σw overflowed or underflowed), sums and means that drifted below their own
minimum, and a NaN from valid input that would have been reported as a result.
Property tests (hypothesis) range over the extremes, not only those points.

Every expected element value comes from tests/reference.py (mpmath); every expected
sum from exact rational arithmetic on the kernels' own per-element losses.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lossd import kernels
from lossd.kernels import api

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reference.py, any import mode
import test_numerics as TN  # noqa: E402  (a module object: its tests are not collected twice)
from profiles import examples  # noqa: E402
from reference import element, elements, to_f64, ulp_diff  # noqa: E402

INF = math.inf
TINY = 2.2250738585072014e-308
PROPS = examples(60)  # the hypothesis profile decides how many more (tests/profiles.py)

# --------------------------------------------------------------------------- soft labels

# The issue asks for soft labels down to 1e-300 and up to 1 - 2^-53 for every loss;
# subnormal labels are added where no weight multiplies them.
Y_NORMAL = [1e-300, 1e-100, 1e-20, 1e-10, 2.0**-53, 0.3, 0.5, 1 - 2.0**-53, 1 - 1e-10,
            1 - 2.0**-30, 1 - 1e-5]
Y_SUBNORMAL = [5e-324, 1e-310]
LOGIT_POINTS = np.concatenate([TN.S_TAILS, np.linspace(-5.0, 5.0, 11)])
PROB_POINTS = np.concatenate([TN.P_EDGES, np.linspace(0.0, 1.0, 11)])

SOFT_CASES = [
    ("logits", "cross_entropy", {}),
    ("logits", "cross_entropy", {"label_smoothing": 0.2}),
    ("logits", "cross_entropy", {"pos_weight": 0.7}),
    ("logits", "cross_entropy", {"pos_weight": 4.0}),
    ("logits", "focal", {}),
    ("logits", "focal", {"alpha": 1.0}),
    ("logits", "focal", {"alpha": 0.0}),
    ("logits", "focal", {"alpha": 1 - 2.0**-53}),
    ("logits", "focal", {"alpha": 2.0**-53}),
    ("logits", "focal", {"gamma": 0.5, "alpha": 0.25}),
    ("logits", "focal", {"gamma": 0.0, "alpha": 0.5}),
    ("logits", "focal", {"gamma": 37.0}),
    ("logits", "focal", {"gamma": 3000.0}),
    ("logits", "focal", {"gamma": 1e4, "alpha": 1.0}),
    ("logits", "squared_error", {}),
    ("probabilities", "cross_entropy", {}),
    ("probabilities", "cross_entropy", {"pos_weight": 3.0}),
    ("probabilities", "cross_entropy", {"eps": 1e-12}),
    ("probabilities", "focal", {}),
    ("probabilities", "focal", {"alpha": 1.0}),
    ("probabilities", "focal", {"alpha": 0.0}),
    ("probabilities", "focal", {"gamma": 1e4}),
    ("probabilities", "squared_error", {}),
]


def _gamma_ulps(loss: str, opts: dict) -> float:
    """q^γ multiplies the relative error of the computed q by γ: a focal bound grows
    by 4γ ulps (q itself is a rounded sum of two terms)."""
    return 4.0 * opts.get("gamma", 2.0) if loss == "focal" else 0.0


def check_soft(preds, labels, inp, loss, opts, ctx):
    """Losses and gradients within the soft-label bounds of test_numerics (+4γ)."""
    losses, grads, _ = TN.run_none(preds, labels, inp, loss, **opts)
    eff = TN.smooth_labels(labels, opts.get("label_smoothing", 0.0))
    refs = elements(preds, eff, input=inp, loss=loss, **TN._ref_opts(opts))
    lb, lm, gb, gm = TN._bounds(loss, True)
    extra = _gamma_ulps(loss, opts)
    TN.assert_ulps("loss", losses, refs, preds, eff, lb + extra, lm, ctx)
    TN.assert_ulps("grad", grads, refs, preds, eff, gb + extra, gm, ctx, skip_kinks=True)
    assert not np.isnan(losses).any() and not np.isnan(grads).any(), ctx


@pytest.mark.parametrize("inp,loss,opts", SOFT_CASES, ids=lambda v: str(v))
def test_soft_labels_near_0_and_1(inp, loss, opts):
    """Every soft-label loss at labels from 1e-300 to 1 - 2^-53 (and subnormal ones
    where no weight multiplies them), over the tails of s (±inf, ±800, ±37, subnormal
    results) or of p (0, 1, subnormal, one ulp below 1)."""
    ys = Y_NORMAL + ([] if "pos_weight" in opts or "label_smoothing" in opts else Y_SUBNORMAL)
    base = LOGIT_POINTS if inp == "logits" else PROB_POINTS
    preds = np.repeat(base, len(ys))
    labels = np.tile(np.array(ys), len(base))
    check_soft(preds, labels, inp, loss, opts, f"{inp}/{loss}/{opts}")


# --------------------------------------------------------------------------- the cases


def test_focal_with_large_gamma_is_a_number():
    """gamma = 3000 at s = 2, y = 0.3: the true value underflows to 0 (it was NaN, and
    /grad answered "NaN"); probabilities p = 1e-300, y = 0, gamma = 1e4 likewise."""
    r = kernels.loss([2.0], [0.3], loss="focal", gamma=3000.0)
    e = element(2.0, 0.3, loss="focal", gamma=3000.0)
    assert r.loss == to_f64(e.loss) == 0.0
    g = kernels.grad([2.0], [0.3], loss="focal", gamma=3000.0, reduction="none")
    assert g.grad[0] == to_f64(e.grad) and g.losses[0] == 0.0
    r = kernels.loss([1e-300], [0.0], input="probabilities", loss="focal", gamma=1e4)
    assert r.loss == 0.0 and r.stats["min"] == 0.0 and r.stats["max"] == 0.0
    # where q^γ underflows but CE is huge, the product is still a number: 7e-158
    s, y = 1e308, 0.3
    e = element(s, y, loss="focal", gamma=3000.0)
    got = kernels.loss([s], [y], loss="focal", gamma=3000.0).loss
    assert 0.0 < got and ulp_diff(got, e.loss) <= 4 + 4 * 3000, (got, to_f64(e.loss))


def test_focal_alpha_with_tiny_soft_labels_does_not_cancel():
    """α y + (1-α)(1-y) at α = 1, y = 1e-20 is 1e-20, not 0: the loss is 3.774e-21."""
    for y in (1e-20, 1e-10, 1e-300):
        got = kernels.loss([0.5], [y], loss="focal", alpha=1.0).loss
        ref = element(0.5, y, loss="focal", alpha=1.0).loss
        assert got > 0.0 and ulp_diff(got, ref) <= 16, (y, got, to_f64(ref))


def test_extreme_weights_give_the_unweighted_mean():
    """Weights of 1e308 (Σw overflowed: NaN), 1e-320 (1/Σw overflowed: ±inf gradients)
    and [5e-324, 0] (Σ w·l underflowed: 0) are all valid; equal weights of any size
    give the unweighted mean."""
    s, y = np.array([1.0, 2.0]), np.array([1.0, 0.0])
    plain = kernels.grad(s, y)
    for v in (1e308, 1.7976931348623157e308, 1e-320, 5e-324, 3.0):
        g = kernels.grad(s, y, sample_weight=[v, v])
        assert g.loss == plain.loss, v
        assert np.all(np.abs(g.grad - plain.grad) <= 2 * np.abs(np.spacing(plain.grad))), (v, g.grad, plain.grad)
    only_first = kernels.loss(s[:1], y[:1]).loss
    assert kernels.loss(s, y, sample_weight=[5e-324, 0.0]).loss == only_first
    assert kernels.loss(s, y, sample_weight=[1e308, 0.0]).loss == only_first
    X = np.array([[1.0], [2.0]])
    base = kernels.logreg_grad(X, y, [0.5])
    for v in (1e308, 1e-320):
        p = kernels.logreg_grad(X, y, [0.5], sample_weight=[v, v])
        assert p.loss == base.loss and p.intercept == pytest.approx(base.intercept, rel=4e-16)
        assert p.coef[0] == pytest.approx(base.coef[0], rel=4e-16)


def test_sum_of_huge_weights_is_the_true_sum():
    """reduction="sum" is Σ w·l with the weights as given: inf only where the true
    value is beyond the float range."""
    s, y = np.array([1.0, 2.0]), np.array([1.0, 0.0])
    l = kernels.loss(s, y, reduction="none").losses
    got = kernels.loss(s, y, reduction="sum", sample_weight=[1e-300, 1e-300]).loss
    assert got == pytest.approx(1e-300 * (l[0] + l[1]), rel=1e-15)
    assert kernels.loss(s, y, reduction="sum", sample_weight=[1e308, 1e308]).loss == INF


def test_equal_losses_have_that_mean():
    """4096 equal losses averaged 10 ulp below the element, 32767 19 ulp, with
    mean < min and std 1.1e-15. Now the mean is the element, std 0, at every size and
    on both the serial and the parallel path, float32 included."""
    e = kernels.loss([0.7], [1.0]).loss
    for n in (3, 7, 100, 4095, 4096, 4097, 32767, 32768, 100_003):
        for dt in (np.float64, np.float32):
            r = kernels.loss(np.full(n, 0.7, dt), np.ones(n, dt))
            one = kernels.loss(np.array([0.7], dt), np.array([1.0], dt)).loss
            st_ = r.stats
            assert r.loss == one == st_["mean"] == st_["min"] == st_["max"], (n, dt, r.loss, one)
            assert st_["std"] == 0.0, (n, dt, st_["std"])
            assert st_["sum"] == float(Fraction(one) * n), (n, dt)
    assert e == kernels.loss([0.7] * 5, [1.0] * 5, sample_weight=[0.1, 3, 7e-300, 1e300, 5]).loss


def test_nan_from_valid_input_is_an_error_not_a_result():
    """A NaN loss or gradient that valid input produced (a kernel bug) raises
    KernelError (the service answers 500) instead of being returned. Provoked here by
    a parameter vector that the public checks never let through (gamma = NaN)."""
    for grad in (False, True):
        plan = api._plan(np.array([0.5, -1.0]), np.array([0.3, 1.0]), "logits", "focal", "mean",
                         None, None, 0.0, None, 2.0, None, ())
        prm = plan.prm.copy()
        prm[api.D.P_GAMMA] = math.nan
        prm.setflags(write=False)
        plan.prm = prm
        with pytest.raises(api.KernelError):
            api._run(plan, grad)


# --------------------------------------------------------------------------- sums and means


def _exact(values) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


def _err(got: float, exact: Fraction) -> Fraction:
    return abs(Fraction(got) - exact) if math.isfinite(got) else Fraction(10**400)


def _half_ulp(exact: Fraction) -> Fraction:
    f = float(exact)
    return Fraction(np.spacing(abs(f))) / 2 if f else Fraction(2.0**-1075)


LOSS_NAMES = ("cross_entropy", "focal", "hinge", "exponential", "squared_error")


@st.composite
def loss_inputs(draw):
    n = draw(st.sampled_from([1, 2, 5, 16, 17, 100, 4095, 4097, 40_000]))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 700.0, 1e10]))
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, scale, n)
    y = (rng.random(n) < 0.5).astype(np.float64)
    loss = draw(st.sampled_from(LOSS_NAMES))
    if loss in ("cross_entropy", "focal", "squared_error") and draw(st.booleans()):
        y = rng.random(n)
    return s, y, loss


@PROPS
@given(loss_inputs())
def test_sums_and_means_are_correctly_rounded(data):
    """stats sum/mean and the sum/mean reductions are the correctly rounded exact
    values of the per-element losses, hence never less accurate than NumPy's pairwise
    summation on the same losses, and min <= mean <= max."""
    s, y, loss = data
    losses = kernels.loss(s, y, loss=loss, reduction="none").losses
    assume(np.isfinite(losses).all())
    exact = _exact(losses.tolist())
    n = len(losses)
    r = kernels.loss(s, y, loss=loss)
    rs = kernels.loss(s, y, loss=loss, reduction="sum")
    st_ = r.stats
    for got in (st_["sum"], rs.loss):
        assert _err(got, exact) <= _half_ulp(exact) * (1 + Fraction(1, 2**40)), (got, float(exact))
        assert _err(got, exact) <= _err(float(np.sum(losses)), exact)
    mean = exact / n
    for got in (st_["mean"], r.loss):
        assert _err(got, mean) <= _half_ulp(mean) * (1 + Fraction(1, 2**40)), (got, float(mean))
        assert _err(got, mean) <= _err(float(np.mean(losses)), mean)
    assert st_["min"] <= st_["mean"] <= st_["max"]
    assert st_["min"] == losses.min() and st_["max"] == losses.max()


@st.composite
def weighted_inputs(draw):
    n = draw(st.sampled_from([1, 2, 3, 31, 4096, 5000, 40_000]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 5.0, n)
    y = (rng.random(n) < 0.5).astype(np.float64)
    exps = draw(st.sampled_from([(0, 0), (-5, 5), (-300, 300), (-1074, -1000), (300, 308), (-320, 308)]))
    w = 10.0 ** rng.uniform(exps[0], exps[1], n)
    w[rng.random(n) < 0.1] = 0.0
    w[0] = max(w[0], 5e-324)
    return s, y, np.minimum(w, 1.7976931348623157e308)


@PROPS
@given(weighted_inputs(), st.integers(-60, 60), st.floats(1e-3, 1e3))
def test_weighted_mean_is_scale_invariant_and_correctly_rounded(data, k, c):
    """The weighted mean is Σ w·l / Σ w correctly rounded, whatever the weights' range
    (Σ w neither overflows nor underflows); multiplying every weight by 2^k changes no
    bit (where no weight leaves the float range), by any c at most what rounding the
    weights themselves changes; it lies within [min, max] of the losses."""
    s, y, w = data
    losses = kernels.loss(s, y, reduction="none").losses
    r = kernels.loss(s, y, sample_weight=w)
    exact = _exact((Fraction(a) * Fraction(b) for a, b in zip(w.tolist(), losses.tolist()))) / _exact(w.tolist())
    assert _err(r.loss, exact) <= _half_ulp(exact) * (1 + Fraction(1, 2**40)), (r.loss, float(exact))
    assert r.stats["min"] <= r.loss <= r.stats["max"]
    g = kernels.grad(s, y, sample_weight=w)
    assert g.loss == r.loss and np.isfinite(g.grad).all()
    with np.errstate(over="ignore", under="ignore"):
        w2 = np.ldexp(w, k)
    if np.isfinite(w2).all() and np.all((w2 == 0) == (w == 0)) and np.all(np.ldexp(w2, -k) == w):
        assert kernels.loss(s, y, sample_weight=w2).loss == r.loss
        assert np.array_equal(kernels.grad(s, y, sample_weight=w2).grad, g.grad)
    with np.errstate(over="ignore", under="ignore"):
        w3 = w * c
    if np.isfinite(w3).all() and w3.max() > 0:
        got = kernels.loss(s, y, sample_weight=w3).loss
        # each weight moves by <= 2^-53 relative: the mean by <= 2^-52 of the losses' spread
        spread = float(losses.max() - losses.min())
        assert abs(got - r.loss) <= 2.0**-51 * spread + 2 * np.spacing(r.loss), (got, r.loss)


# --------------------------------------------------------------------------- options at their ends

@st.composite
def option_sets(draw):
    inp = draw(st.sampled_from(["logits", "probabilities"]))
    loss = draw(st.sampled_from(["cross_entropy", "focal", "squared_error"]))
    opts = {}
    if loss == "focal":
        opts["gamma"] = draw(st.sampled_from([0.0, 0.25, 2.0, 37.0, 3000.0, 1e6]))
        opts["alpha"] = draw(st.sampled_from([None, 0.0, 2.0**-53, 0.25, 1 - 2.0**-53, 1.0]))
    if loss == "cross_entropy" and draw(st.booleans()):
        opts["pos_weight"] = draw(st.sampled_from([0.0, 1e-300, 0.5, 3.0, 1e4]))
    if inp == "probabilities" and loss != "squared_error" and draw(st.booleans()):
        opts["eps"] = draw(st.sampled_from([2.0**-53, 1e-12, 0.25]))
    n = draw(st.integers(1, 6))
    if inp == "logits":
        preds = draw(st.lists(st.one_of(st.sampled_from(TN.S_TAILS.tolist()),
                                        st.floats(-1e308, 1e308, allow_nan=False)), min_size=n, max_size=n))
    else:
        preds = draw(st.lists(st.one_of(st.sampled_from(TN.P_EDGES.tolist()), st.floats(0.0, 1.0)),
                              min_size=n, max_size=n))
    labels = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 1e-300, 1 - 2.0**-53]), st.floats(0.0, 1.0)),
                           min_size=n, max_size=n))
    if "pos_weight" in opts:  # pos_weight times a subnormal label rounds at the bottom of the range
        labels = [v if v == 0.0 or v >= TINY else 0.0 for v in labels]
    return inp, loss, opts, np.array(preds), np.array(labels)


def _allowed_mixed(refs, opts) -> list[float]:
    """pos_weight multiplies a float64 softplus(-s) and σ(-s); where those are subnormal
    (s > 708) their absolute error, up to 2^-1075, comes multiplied by pos_weight."""
    pw = opts.get("pos_weight", 1.0)
    return [4 * pw * 2.0**-1074 for _ in refs]


@PROPS
@given(option_sets())
def test_options_at_their_extremes_never_give_nan(case):
    """Any gamma >= 0, alpha in [0, 1], pos_weight, eps, soft labels at the ends of
    [0, 1], predictions at the tails: no NaN, and the value of the reference within the
    soft-label bounds (+4γ ulps for focal; plus pos_weight times the absolute error of
    a subnormal softplus where the loss is that small)."""
    inp, loss, opts, preds, labels = case
    losses, grads, _ = TN.run_none(preds, labels, inp, loss, **opts)
    assert not np.isnan(losses).any() and not np.isnan(grads).any()
    refs = elements(preds, labels, input=inp, loss=loss, **opts)
    lb, lm, gb, gm = TN._bounds(loss, True)
    extra = _gamma_ulps(loss, opts)
    for i, e in enumerate(refs):
        slack = _allowed_mixed(refs, opts)[i]
        for what, got, bound, mixed in (("loss", losses[i], lb, lm), ("grad", grads[i], gb, gm)):
            if what == "grad" and e.kink:
                continue
            ref = getattr(e, what)
            u = ulp_diff(got, ref, getattr(e, what + "_scale") if mixed else None)
            ok = u <= bound + extra or (math.isfinite(to_f64(ref)) and abs(got - to_f64(ref)) <= slack)
            assert ok, (what, inp, loss, opts, preds[i], labels[i], got, to_f64(ref), u)


def test_eps_clips_without_the_floor_and_must_clip():
    """With eps, p = 0 costs -log(eps) (scikit-learn's clip), not PyTorch's floor of 100
    (it was 100 for any eps below e^-100); an eps so small that 1 - eps rounds to 1
    would clip nothing near 1, so it is refused."""
    for eps in (2.0**-53, 1e-12):
        r = kernels.loss([0.0, 1.0], [1.0, 0.0], input="probabilities", eps=eps, reduction="none")
        assert ulp_diff(r.losses[0], element(0.0, 1.0, input="probabilities", eps=eps).loss) <= 4
        assert ulp_diff(r.losses[1], element(1.0, 0.0, input="probabilities", eps=eps).loss) <= 4
    assert kernels.loss([0.0], [1.0], input="probabilities").loss == 100.0
    for eps in (1e-17, 1e-300, 5e-324):
        with pytest.raises(ValueError, match=r"^eps = .* is below 2\^-53"):
            kernels.loss([0.5], [1.0], input="probabilities", eps=eps)


# --------------------------------------------------------------------------- quantiles, logreg


def test_distinct_quantiles_get_distinct_keys():
    """0.12345671 and 0.12345679 were both "p12.3457"; keys now come from the shortest
    decimal of q, so distinct quantiles never collide and short ones read as before."""
    qs = [0.12345671, 0.12345679, 0.5, 0.999, 0.0, 1.0, 1 / 3, 1e-5]
    st_ = kernels.loss(np.linspace(-3, 3, 50), np.ones(50), quantiles=qs).stats
    keys = [k for k in st_ if k.startswith("p")]
    assert keys == ["p12.345671", "p12.345679", "p50", "p99.9", "p0", "p100", "p33.33333333333333", "p0.001"]
    losses = kernels.loss(np.linspace(-3, 3, 50), np.ones(50), reduction="none").losses
    for q, key in zip(qs, keys):
        assert st_[key] == pytest.approx(np.quantile(losses, q), rel=1e-15)


@pytest.mark.parametrize("value,expected", [
    (0.5, ["p50"]), (np.float32(0.25), ["p25"]), ((q / 4 for q in range(3)), ["p0", "p25", "p50"]),
    (np.array([0.1, 0.9]), ["p10", "p90"]), (np.array(0.75), ["p75"]), ([], []), (None, []),
])  # fmt: skip
def test_quantiles_accept_a_number_or_any_iterable(value, expected):
    st_ = kernels.loss([1.0, 2.0, 3.0], [1.0, 0.0, 1.0], quantiles=value).stats
    assert [k for k in st_ if k.startswith("p")] == expected


@pytest.mark.parametrize("value,message", [
    ("0.5", "quantiles must be a number in [0, 1] or a sequence of them, got str '0.5'"),
    ([0.5, "0.9"], "quantiles[1] = '0.9' is not a number"),
    ([0.5, None], "quantiles[1] = None is not a number"),
    (True, "quantiles must be a number in [0, 1] or a sequence of them, got bool True"),
    (object(), "quantiles must be a number in [0, 1] or a sequence of them, got object"),
    ([1.5], "quantiles[0] = 1.5 is outside [0, 1]"),
    (np.zeros((2, 2)), "quantiles must be a number or a 1-D sequence, got shape (2, 2)"),
])  # fmt: skip
def test_bad_quantiles_are_a_value_error_naming_the_argument(value, message):
    with pytest.raises(ValueError) as exc:
        kernels.loss([1.0], [1.0], quantiles=value)
    assert str(exc.value) == message


@pytest.mark.parametrize("bad,coef,where", [
    (INF, 1.0, "[0, 0]"), (-INF, 0.0, "[0, 0]"), (math.nan, 1.0, "[0, 0]"), (INF, 0.0, "[0, 0]"),
])  # fmt: skip
def test_logreg_refuses_non_finite_features_always(bad, coef, where):
    """features = [[inf], [1]] with coef [1] answered coef ["NaN"]; with coef [0] a 422:
    non-finite features are refused whatever the coefficients."""
    X = np.array([[bad], [1.0]])
    with pytest.raises(ValueError) as exc:
        kernels.logreg_grad(X, [1.0, 0.0], [coef])
    assert str(exc.value).startswith(f"features{where} "), str(exc.value)


def test_logreg_l2_extremes_without_warnings():
    """A huge l2 printed NumPy's "overflow encountered in multiply"; a tiny l2 with a
    huge coef gave inf where the penalty is 5e99."""
    X = np.array([[1.0], [2.0]])
    y = np.array([1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = kernels.logreg_grad(X, y, [1e200], l2=1e200)
        assert p.loss == INF and p.coef[0] == INF
        q = kernels.logreg_grad(X, y, [1e200], l2=1e-300)
    unpenalised = kernels.logreg_grad(X, y, [1e200]).loss
    assert q.loss == pytest.approx(unpenalised + 0.5 * 1e-300 * 1e200 * 1e200, rel=1e-15)
    assert q.loss < INF


@pytest.mark.parametrize("values", [
    [1.7976931348623157e308, 1e292, 1.0],              # the split's sigma would overflow: TwoSum
    [1e308, 1e308],                                      # the sum itself overflows
    [5e-324] * 33 + [1e-310],                            # subnormal summands
    [0.0] * 40,
    [1.0, 2.0**-60, 2.0**-120] * 11,                    # far below an ulp of the sum
    [3.0, math.inf, 1.0],
])  # fmt: skip
def test_compensated_sums_at_the_ends_of_the_range(values):
    """The block sums by themselves: hi + lo is the exact sum rounded once (or inf)."""
    from lossd.kernels import _simd as S

    x = np.array(values, dtype=np.float64)
    exact = _exact([v for v in values if math.isfinite(v)])
    try:
        want = float(exact) if np.isfinite(x).all() else math.inf
    except OverflowError:  # beyond the float range: inf is the rounded value
        want = math.inf
    for hi, lo in (S.dd_sum_nonneg(x.copy(), x.size, float(x.max())), S.dd_sum(x.copy(), 1.0, 0, x.size)):
        assert hi + lo == want, (values[:3], hi, lo, want)
