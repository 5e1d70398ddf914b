"""Input validation and accepted input layouts for kernels.loss / grad / logreg_grad.

Every bad input raises ValueError whose message names the argument, the (first, in
row-major order) offending index where there is one, and what is wrong, e.g.
``labels[17] = 2 is not in {0, 1}``, ``predictions[3] is NaN``,
``predictions[5] = 1.2 is outside [0, 1]``, ``predictions has 100 rows, labels 99``;
2-D indices are written ``labels[3, 1]``.

Accepted inputs (float32/float64, bool/int labels, strided, Fortran-ordered, read-only)
must give exactly the results of C-contiguous float64 copies, and leave the inputs alone.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from lossd import kernels

FNS = [kernels.loss, kernels.grad]
FN_IDS = ["loss", "grad"]


def check_raises(fn, args, kwargs, *fragments):
    """fn(*args, **kwargs) raises ValueError whose message contains every fragment
    (str: substring; re.Pattern: search)."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for f in fragments:
        if isinstance(f, re.Pattern):
            assert f.search(msg), f"message {msg!r} does not match {f.pattern!r}"
        else:
            assert f in msg, f"message {msg!r} does not contain {f!r}"
    return msg


def base(n=200, k=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n,) if k is None else (n, k)
    s = rng.normal(0.0, 2.0, size=shape)
    y = (rng.random(shape) < 0.5).astype(np.float64)
    p = rng.uniform(0.01, 0.99, size=shape)
    return s, y, p


OUTSIDE01 = re.compile(r"outside \[0, 1\]")
NOT01 = re.compile(r"not in \{0, 1\}")
NOT_PM1 = re.compile(r"not in \{-1, \+?1\}")
EMPTY = re.compile(r"empty|0 rows|no rows|at least|N >= 1|N ≥ 1", re.I)


# ------------------------------------------------------------- element values, 1-D

@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_predictions_nan_first_index(fn):
    s, y, _ = base()
    s[[7, 3, 150]] = np.nan
    check_raises(fn, (s, y), {}, "predictions[3] is NaN")
    check_raises(fn, (s, 2 * y - 1), {"input": "margins"}, "predictions[3]", "NaN")
    check_raises(fn, (s, y), {"loss": "hinge"}, "predictions[3]", "NaN")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("n", [10, 5000, 100_000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opts", [{}, {"pos_weight": 2.0}, {"label_smoothing": 0.1},
                                  {"reduction": "none"}], ids=["plain", "pw", "ls", "none"])
def test_lone_nan_is_found_anywhere(fn, n, dtype, opts):
    """Cross-entropy on logits without options finds a NaN through its block's sum
    rather than a compare per element: a lone NaN must be caught at every position,
    also next to infinite losses and under a zero weight."""
    rng = np.random.default_rng(n)
    for where in sorted({0, 4095 % n, 4096 % n, n // 2, n - 1}):
        for arr in ("predictions", "labels"):
            s = rng.normal(0.0, 3.0, n).astype(dtype)
            y = (rng.random(n) < 0.5).astype(dtype)
            s[(where + 1) % n], y[(where + 1) % n] = np.inf, 0.0  # an infinite loss nearby
            (s if arr == "predictions" else y)[where] = np.nan
            w = np.ones(n)
            w[where] = 0.0
            check_raises(fn, (s, y), opts, f"{arr}[{where}] is NaN")
            check_raises(fn, (s, y), {**opts, "sample_weight": w}, f"{arr}[{where}] is NaN")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_infinite_logits_are_accepted(fn):
    s, y, _ = base()
    s[[0, 1, 2, 3]] = [np.inf, -np.inf, np.inf, -np.inf]
    y[[0, 1, 2, 3]] = [1, 0, 0, 1]
    r = fn(s, y, reduction="none")
    assert not np.isnan(r.losses).any()


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_probabilities_outside_unit_interval(fn):
    _, y, p = base()
    q = p.copy()
    q[[9, 5]] = [-0.5, 1.2]
    check_raises(fn, (q, y), {"input": "probabilities"}, "predictions[5] = 1.2", OUTSIDE01)
    for bad, text in [(-1e-300, "predictions[2]"), (np.inf, "predictions[2]"),
                      (-np.inf, "predictions[2]"), (1.0000000000000002, "predictions[2]")]:
        q = p.copy()
        q[2] = bad
        check_raises(fn, (q, y), {"input": "probabilities"}, text, OUTSIDE01)
    q = p.copy()
    q[[6, 8]] = [np.nan, 1.5]
    check_raises(fn, (q, y), {"input": "probabilities"}, "predictions[6] is NaN")
    q = p.copy()
    q[[3, 8]] = [1.5, np.nan]
    check_raises(fn, (q, y), {"input": "probabilities", "loss": "focal"}, "predictions[3] = 1.5", OUTSIDE01)
    q = p.copy()
    q[0] = 7.0
    check_raises(fn, (q, y), {"input": "probabilities", "loss": "squared_error"}, "predictions[0] = 7", OUTSIDE01)
    # exact ends and -0.0 are fine
    q = p.copy()
    q[:3] = [0.0, 1.0, -0.0]
    fn(q, y, input="probabilities")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_soft_labels_outside_unit_interval(fn):
    s, y, p = base()
    for lab_bad, text in [((5, 1.2), "labels[5] = 1.2"), ((0, -0.25), "labels[0] = -0.25"),
                          ((2, np.inf), "labels[2]"), ((2, -np.inf), "labels[2]")]:
        yy = y.copy()
        yy[lab_bad[0]] = lab_bad[1]
        yy[150] = 3.0
        check_raises(fn, (s, yy), {}, text, OUTSIDE01)
        check_raises(fn, (p, yy), {"input": "probabilities"}, text, OUTSIDE01)
        check_raises(fn, (s, yy), {"loss": "focal"}, text, OUTSIDE01)
        check_raises(fn, (s, yy), {"loss": "squared_error"}, text, OUTSIDE01)
    yy = y.copy()
    yy[[11, 12]] = [np.nan, 5.0]
    check_raises(fn, (s, yy), {}, "labels[11] is NaN")
    check_raises(fn, (p, yy), {"input": "probabilities"}, "labels[11] is NaN")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("loss", ["hinge", "squared_hinge", "modified_huber", "exponential", "zero_one"])
def test_margin_losses_need_hard_labels(fn, loss):
    s, y, _ = base()
    yi = y.astype(np.int64)
    yi[[17, 40]] = [2, -1]
    check_raises(fn, (s, yi), {"loss": loss}, "labels[17] = 2 is not in {0, 1}")
    yy = y.copy()
    yy[[17, 20]] = [0.5, 2.0]
    check_raises(fn, (s, yy), {"loss": loss}, "labels[17] = 0.5", NOT01)
    # on margins: {-1, +1}
    ypm = 2 * y - 1
    ypm[[4, 9]] = [0.0, 0.5]
    check_raises(fn, (s, ypm), {"loss": loss, "input": "margins"}, "labels[4] = 0", NOT_PM1)


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "squared_error"])
def test_margins_input_needs_pm1_labels(fn, loss):
    s, y, _ = base()
    ypm = 2 * y - 1
    ypm[[4, 9]] = [0.0, 2.0]
    check_raises(fn, (s, ypm), {"loss": loss, "input": "margins"}, "labels[4]", NOT_PM1)
    ypm = 2 * y - 1
    ypm[[6, 9]] = [0.5, np.nan]
    check_raises(fn, (s, ypm), {"loss": loss, "input": "margins"}, "labels[6]", NOT_PM1)
    ypm = 2 * y - 1
    ypm[[6, 9]] = [np.nan, 0.5]
    check_raises(fn, (s, ypm), {"loss": loss, "input": "margins"}, "labels[6] is NaN")


def test_int_label_two_for_cross_entropy():
    s, y, _ = base()
    yi = y.astype(np.int64)
    yi[17] = 2
    check_raises(kernels.loss, (s, yi), {}, "labels[17] = 2",
                 re.compile(r"outside \[0, 1\]|not in \{0, 1\}"))


# ------------------------------------------------------------- element values, 2-D

@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_2d_indices(fn):
    s, y, p = base(50, 4)
    ss = s.copy()
    ss[7, 0] = ss[3, 2] = ss[3, 1] = np.nan
    check_raises(fn, (ss, y), {}, "predictions[3, 1] is NaN")
    pp = p.copy()
    pp[5, 0] = 1.2
    pp[9, 3] = -1.0
    check_raises(fn, (pp, y), {"input": "probabilities"}, "predictions[5, 0] = 1.2", OUTSIDE01)
    yi = y.astype(np.int64)
    yi[3, 1] = 2
    yi[3, 3] = 5
    yi[10, 0] = 7
    check_raises(fn, (s, yi), {"loss": "hinge"}, "labels[3, 1] = 2 is not in {0, 1}")
    yy = y.copy()
    yy[0, 3] = -0.5
    yy[1, 0] = 1.5
    check_raises(fn, (s, yy), {}, "labels[0, 3] = -0.5", OUTSIDE01)
    yy = y.copy()
    yy[49, 3] = np.nan
    check_raises(fn, (s, yy), {}, "labels[49, 3] is NaN")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_2d_index_is_logical_not_memory_order(fn):
    """A Fortran-ordered array reports the first bad element in row-major (logical)
    order: (0, 3) comes before (1, 0) even though (1, 0) is earlier in memory."""
    s, y, _ = base(20, 4)
    sf = np.asfortranarray(s)
    sf[1, 0] = np.nan
    sf[0, 3] = np.nan
    check_raises(fn, (sf, y), {}, "predictions[0, 3] is NaN")
    yf = np.asfortranarray(y)
    yf[1, 0] = 3.0
    yf[0, 3] = 2.0
    check_raises(fn, (s, yf), {}, "labels[0, 3] = 2")
    # strided view: index refers to the view, not the base array
    big = np.zeros(400)
    big[::2] = base(200)[0]
    big[20] = np.nan  # view index 10
    big[21] = np.nan  # not in the view
    big[60] = np.nan  # view index 30
    check_raises(fn, (big[::2], base(200)[1]), {}, "predictions[10] is NaN")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("n", [40_000, 200_000])
def test_first_index_in_large_inputs(fn, n):
    """Large inputs take the parallel path: the reported index must still be the first."""
    rng = np.random.default_rng(n)
    s = rng.normal(size=n)
    y = (rng.random(n) < 0.5).astype(np.float64)
    bad = [n - 1, int(n * 0.75), int(n * 0.6) + 1, n // 2 + 3]
    ss = s.copy()
    ss[bad] = np.nan
    check_raises(fn, (ss, y), {}, f"predictions[{n // 2 + 3}] is NaN")
    yy = y.copy()
    yy[bad] = 1.5
    check_raises(fn, (s, yy), {}, f"labels[{n // 2 + 3}] = 1.5", OUTSIDE01)
    yy[n - 7] = 1.5
    yy[1] = 2.5
    check_raises(fn, (s, yy), {}, "labels[1] = 2.5", OUTSIDE01)
    s2 = s.reshape(n // 4, 4).copy()
    s2[n // 8, 2] = np.nan
    s2[n // 8 + 1, 0] = np.nan
    s2[n // 4 - 1, 3] = np.nan
    check_raises(fn, (s2, y.reshape(n // 4, 4)), {}, f"predictions[{n // 8}, 2] is NaN")


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_shape_mismatch(fn):
    s, y, _ = base(100)
    check_raises(fn, (s, y[:99]), {}, "predictions has 100 rows, labels 99")
    check_raises(fn, (s[:99], y), {}, "predictions has 99 rows, labels 100")
    s2, y2, _ = base(10, 3)
    check_raises(fn, (s2, y2[:, :2]), {}, "predictions", "labels")
    check_raises(fn, (s2, y2[:, 0]), {}, "predictions", "labels")
    check_raises(fn, (s2[:, 0], y2), {}, "predictions", "labels")
    check_raises(fn, (s2, y2[:9]), {}, "predictions has 10 rows, labels 9")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_bad_dimensions(fn):
    s = np.zeros((2, 3, 4))
    y = np.zeros((2, 3, 4))
    check_raises(fn, (s, y), {}, "predictions")
    check_raises(fn, (np.zeros((2, 3)), y), {}, "labels")
    check_raises(fn, (np.float64(0.5), np.float64(1.0)), {}, "predictions")
    check_raises(fn, (0.5, 1.0), {}, "predictions")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_empty_input(fn, shape):
    check_raises(fn, (np.zeros(shape), np.zeros(shape)), {}, "predictions", EMPTY)


# ------------------------------------------------------------------------------ options

@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("name,value", [("reduction", "avg"), ("reduction", None), ("reduction", "Mean "),
                                        ("input", "foo"), ("input", "logit"), ("loss", "bar"),
                                        ("loss", "bce"), ("loss", None)])
def test_unknown_option_values(fn, name, value):
    s, y, _ = base()
    msg = check_raises(fn, (s, y), {name: value}, name)
    if isinstance(value, str):
        assert value in msg


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("loss", ["hinge", "squared_hinge", "modified_huber", "exponential", "zero_one"])
def test_probabilities_only_for_soft_losses(fn, loss):
    _, y, p = base()
    check_raises(fn, (p, y), {"input": "probabilities", "loss": loss}, "probabilities")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_sample_weight_values(fn):
    s, y, _ = base()
    w = np.ones(200)
    for idx, val, text in [([2], [-1.0], "sample_weight[2]"), ([4], [np.nan], "sample_weight[4] is NaN"),
                           ([1], [np.inf], "sample_weight[1]"), ([7, 3], [-1.0, np.nan], "sample_weight[3] is NaN"),
                           ([199], [-1e-300], "sample_weight[199]")]:
        ww = w.copy()
        ww[idx] = val
        check_raises(fn, (s, y), {"sample_weight": ww}, text)
    s2, y2, _ = base(50, 4)
    ww = np.ones(50)
    ww[[30, 12]] = -2.0
    check_raises(fn, (s2, y2), {"sample_weight": ww}, "sample_weight[12]")
    # large, parallel path
    n = 100_000
    sb, yb = np.zeros(n), np.ones(n)
    wb = np.ones(n)
    wb[[90_000, 45_001, 70_000]] = -1.0
    check_raises(fn, (sb, yb), {"sample_weight": wb}, "sample_weight[45001]")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_sample_weight_shape(fn):
    s, y, _ = base()
    check_raises(fn, (s, y), {"sample_weight": np.ones(199)}, "sample_weight")
    check_raises(fn, (s, y), {"sample_weight": np.ones(201)}, "sample_weight")
    check_raises(fn, (s, y), {"sample_weight": np.ones((200, 2))}, "sample_weight")
    s2, y2, _ = base(50, 4)
    check_raises(fn, (s2, y2), {"sample_weight": np.ones(200)}, "sample_weight")  # N*K, not N
    check_raises(fn, (s2, y2), {"sample_weight": np.ones((50, 4))}, "sample_weight")
    check_raises(fn, (s2, y2), {"sample_weight": np.ones(4)}, "sample_weight")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_sample_weight_zero_sum(fn):
    s, y, _ = base()
    check_raises(fn, (s, y), {"sample_weight": np.zeros(200)}, "sample_weight")
    check_raises(fn, (s, y), {"sample_weight": np.zeros(200), "reduction": "mean"}, "sample_weight")
    # sum and none are defined
    assert fn(s, y, sample_weight=np.zeros(200), reduction="sum").loss == 0.0
    r = kernels.loss(s, y, sample_weight=np.zeros(200), reduction="none")
    assert np.array_equal(r.losses, np.zeros(200))


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_pos_weight(fn):
    s, y, _ = base()
    for bad in (-1.0, np.nan, np.inf, -np.inf):
        check_raises(fn, (s, y), {"pos_weight": bad}, "pos_weight")
    s2, y2, _ = base(50, 4)
    check_raises(fn, (s2, y2), {"pos_weight": np.array([1.0, 2.0, -3.0, -1.0])}, "pos_weight[2]")
    check_raises(fn, (s2, y2), {"pos_weight": np.array([1.0, np.nan, 2.0, 1.0])}, "pos_weight[1]")
    check_raises(fn, (s2, y2), {"pos_weight": np.ones(5)}, "pos_weight")
    check_raises(fn, (s2, y2), {"pos_weight": np.ones(3)}, "pos_weight")
    check_raises(fn, (s2, y2), {"pos_weight": np.ones((4, 1))}, "pos_weight")
    for loss in ("focal", "hinge", "squared_error", "exponential"):
        check_raises(fn, (s, y), {"pos_weight": 2.0, "loss": loss}, "pos_weight")
    # fine: scalar for N×K, zero, per-column list
    fn(s2, y2, pos_weight=2.0)
    fn(s2, y2, pos_weight=[1.0, 2.0, 0.0, 3.0])
    fn(s, y, pos_weight=0.0)


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_label_smoothing(fn):
    s, y, p = base()
    for bad in (-0.1, 1.0, 1.5, np.nan, np.inf):
        check_raises(fn, (s, y), {"label_smoothing": bad}, "label_smoothing")
    for loss in ("hinge", "squared_hinge", "modified_huber", "exponential", "zero_one"):
        check_raises(fn, (s, y), {"label_smoothing": 0.1, "loss": loss}, "label_smoothing")
    check_raises(fn, (s, 2 * y - 1), {"label_smoothing": 0.1, "input": "margins"}, "label_smoothing")
    fn(p, y, label_smoothing=0.1, input="probabilities")
    fn(s, y, label_smoothing=0.999, loss="focal")
    fn(s, y, label_smoothing=0.0, loss="hinge")  # zero smoothing is "no smoothing"


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_eps_gamma_alpha_quantiles(fn):
    s, y, p = base()
    for bad in (0.0, 0.5, -0.1, 0.7, np.nan):
        check_raises(fn, (p, y), {"input": "probabilities", "eps": bad}, "eps")
    fn(p, y, input="probabilities", eps=1e-15)
    fn(p, y, input="probabilities", eps=0.4999)
    for bad in (-0.5, -1e-300, np.nan):
        check_raises(fn, (s, y), {"loss": "focal", "gamma": bad}, "gamma")
    fn(s, y, loss="focal", gamma=0.0)
    for bad in (-0.1, 1.5, np.nan):
        check_raises(fn, (s, y), {"loss": "focal", "alpha": bad}, "alpha")
    fn(s, y, loss="focal", alpha=0.0)
    fn(s, y, loss="focal", alpha=1.0)
    for bad in ([0.5, 1.5], [-0.1], [np.nan], (0.2, 0.5, 2.0)):
        check_raises(fn, (s, y), {"quantiles": bad}, "quantiles")
    r = fn(s, y, quantiles=[0.0, 1.0, 0.5])
    assert {"p0", "p100", "p50"} <= set(r.stats)


# ---------------------------------------------------------------------------- logreg_grad

def logreg_base(n=120, d=5, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.5).astype(np.float64)
    coef = rng.normal(size=d)
    return X, y, coef


def test_logreg_grad_validation():
    X, y, coef = logreg_base()
    XX = X.copy()
    XX[3, 1] = XX[7, 0] = np.nan
    check_raises(kernels.logreg_grad, (XX, y, coef), {}, "features[3, 1]", "NaN")
    yy = y.astype(np.int64)
    yy[[5, 9]] = [2, 3]
    check_raises(kernels.logreg_grad, (X, yy, coef), {}, "labels[5] = 2", NOT01)
    yy = y.copy()
    yy[8] = 0.5
    check_raises(kernels.logreg_grad, (X, yy, coef), {}, "labels[8]", NOT01)
    check_raises(kernels.logreg_grad, (X, y[:-1], coef), {}, "features", "labels")
    check_raises(kernels.logreg_grad, (X, y, coef[:-1]), {}, "coef")
    check_raises(kernels.logreg_grad, (X, y, np.append(coef, 1.0)), {}, "coef")
    cc = coef.copy()
    cc[1] = np.nan
    check_raises(kernels.logreg_grad, (X, y, cc), {}, "coef")
    check_raises(kernels.logreg_grad, (X, y, coef, np.nan), {}, "intercept")
    check_raises(kernels.logreg_grad, (X[:, 0], y, coef[:1]), {}, "features")
    check_raises(kernels.logreg_grad, (X[:0], y[:0], coef), {}, "features")
    w = np.ones(len(y))
    w[[10, 4]] = -1.0
    check_raises(kernels.logreg_grad, (X, y, coef), {"sample_weight": w}, "sample_weight[4]")
    check_raises(kernels.logreg_grad, (X, y, coef), {"sample_weight": np.ones(len(y) + 1)}, "sample_weight")
    check_raises(kernels.logreg_grad, (X, y, coef), {"sample_weight": np.zeros(len(y))}, "sample_weight")
    for bad in (-1.0, np.nan):
        check_raises(kernels.logreg_grad, (X, y, coef), {"l2": bad}, "l2")


# ------------------------------------------------------------------- accepted layouts

def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only array backed by bytes (np.frombuffer), same values and shape."""
    out = np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype).reshape(a.shape)
    assert not out.flags.writeable
    return out


def same_result(a, b, what):
    """Every field of two results exactly equal (NaN == NaN)."""
    for name in ("loss", "losses", "grad", "coef", "intercept"):
        if not hasattr(a, name):
            continue
        va, vb = getattr(a, name), getattr(b, name)
        if va is None or vb is None:
            assert va is None and vb is None, f"{what}: {name} {va!r} vs {vb!r}"
        elif isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            va, vb = np.asarray(va), np.asarray(vb)
            assert va.shape == vb.shape, f"{what}: {name} shape {va.shape} vs {vb.shape}"
            assert va.dtype == vb.dtype == np.float64, f"{what}: {name} dtype {va.dtype} vs {vb.dtype}"
            if not np.array_equal(va, vb, equal_nan=True):
                i = np.unravel_index(int(np.flatnonzero(~((va == vb) | (np.isnan(va) & np.isnan(vb))))[0]),
                                     va.shape)
                raise AssertionError(f"{what}: {name} differs at {i}: {va[i]!r} vs {vb[i]!r}")
        else:
            assert va == vb or (va != va and vb != vb), f"{what}: {name} {va!r} vs {vb!r}"
    if hasattr(a, "stats"):
        assert a.stats.keys() == b.stats.keys(), what
        for key in a.stats:
            x, z = a.stats[key], b.stats[key]
            assert x == z or (x != x and z != z), f"{what}: stats[{key}] {x!r} vs {z!r}"


def f32_exact(rng, shape, kind):
    """float64 values that are exactly representable in float32."""
    if kind == "prob":
        x = rng.random(shape)
        x.flat[:3] = [0.0, 1.0, 0.5]
    else:
        x = rng.normal(0.0, 4.0, size=shape)
    return x.astype(np.float32).astype(np.float64)


CONFIGS = {
    "ce-logits-mean-w-q": dict(input="logits", kw=dict(quantiles=(0.5, 0.99)), weighted=True),
    "ce-prob-none": dict(input="probabilities", kw=dict(reduction="none"), weighted=False),
    "ce-prob-eps-sum-w": dict(input="probabilities", kw=dict(reduction="sum", eps=1e-7), weighted=True),
    "hinge-margins-sum": dict(input="margins", kw=dict(reduction="sum", loss="hinge"), weighted=False),
    "focal-logits-mean": dict(input="logits", kw=dict(loss="focal", alpha=0.25, gamma=1.5), weighted=True),
    "ce-logits-pw-none": dict(input="logits", kw=dict(reduction="none", pos_weight=3.0), weighted=True),
    "mh-logits-none": dict(input="logits", kw=dict(reduction="none", loss="modified_huber"), weighted=False),
    "se-prob-mean-ls": dict(input="probabilities", kw=dict(loss="squared_error", label_smoothing=0.1),
                            weighted=True),
}


def make_case(config, shape, seed):
    rng = np.random.default_rng(seed)
    inp = CONFIGS[config]["input"]
    x = f32_exact(rng, shape, "prob" if inp == "probabilities" else "logit")
    y01 = (rng.random(shape) < 0.5)
    y = y01.astype(np.float64)
    if inp == "margins":
        y = 2 * y - 1
    w = rng.uniform(0.0, 2.0, size=shape[0]).astype(np.float32).astype(np.float64) \
        if CONFIGS[config]["weighted"] else None
    return x, y, y01, w


def variants_pred(x):
    yield "float32", x.astype(np.float32)
    yield "readonly", readonly(x)
    yield "readonly-f32", readonly(x.astype(np.float32))
    big = np.empty((2 * x.shape[0],) + x.shape[1:])
    big[::2] = x
    big[1::2] = np.nan
    yield "strided-rows", big[::2]
    yield "reversed", np.ascontiguousarray(x[::-1])[::-1]
    if x.ndim == 2:
        yield "fortran", np.asfortranarray(x)
        wide = np.full((x.shape[0], 2 * x.shape[1]), np.nan)
        wide[:, ::2] = x
        yield "strided-cols", wide[:, ::2]
        yield "fortran-f32", np.asfortranarray(x.astype(np.float32))
    else:
        yield "strided-f32", np.repeat(x.astype(np.float32), 3)[::3]


def variants_labels(y, y01, inp):
    yield "float32", y.astype(np.float32)
    yield "readonly", readonly(y)
    if inp == "margins":
        for dt in (np.int8, np.int16, np.int32, np.int64):
            yield f"{np.dtype(dt).name}", y.astype(dt)
    else:
        yield "bool", y01.copy()
        yield "readonly-bool", readonly(y01)
        for dt in (np.int8, np.uint8, np.int32, np.int64, np.uint64):
            yield f"{np.dtype(dt).name}", y.astype(dt)
    big = np.zeros((3 * y.shape[0],) + y.shape[1:])
    big[::3] = y
    big[1::3] = 7.0
    yield "strided", big[::3]
    if y.ndim == 2:
        yield "fortran", np.asfortranarray(y)
        yield "fortran-int8", np.asfortranarray(y.astype(np.int8))


def variants_weight(w):
    yield "float32", w.astype(np.float32)
    yield "readonly", readonly(w)
    yield "strided", np.repeat(w, 2)[::2]
    yield "list", w.tolist()


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
@pytest.mark.parametrize("shape", [(257,), (61, 3), (50_000,)], ids=["N", "NxK", "N-large"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_accepted_layouts_match_contiguous_float64(fn, shape, config):
    x, y, y01, w = make_case(config, shape, seed=len(config) * 7 + shape[0])
    kw = dict(CONFIGS[config]["kw"], input=CONFIGS[config]["input"], sample_weight=w)
    ref = fn(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64), **kw)
    for name, xv in variants_pred(x):
        before = np.array(xv, copy=True)
        same_result(fn(xv, y, **kw), ref, f"predictions {name}")
        assert np.array_equal(xv, before, equal_nan=True), f"predictions {name} was modified"
    for name, yv in variants_labels(y, y01, kw["input"]):
        before = np.array(yv, copy=True)
        same_result(fn(x, yv, **kw), ref, f"labels {name}")
        assert np.array_equal(yv, before), f"labels {name} was modified"
    # predictions and labels both in the narrow / odd layout at once
    same_result(fn(readonly(x.astype(np.float32)), readonly(y.astype(np.float32)), **kw), ref,
                "float32 read-only pair")
    if w is not None:
        for name, wv in variants_weight(w):
            same_result(fn(x, y, **dict(kw, sample_weight=wv)), ref, f"sample_weight {name}")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_pos_weight_layouts(fn):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(80, 4))
    y = rng.random((80, 4))
    pw = np.array([0.5, 2.0, 1.0, 3.25])
    ref = fn(x, y, pos_weight=pw, reduction="none")
    for name, pv in [("list", pw.tolist()), ("tuple", tuple(pw)), ("float32", pw.astype(np.float32)),
                     ("readonly", readonly(pw)), ("strided", np.repeat(pw, 2)[::2])]:
        same_result(fn(x, y, pos_weight=pv, reduction="none"), ref, f"pos_weight {name}")
    same_result(fn(x, y, pos_weight=np.float64(2.0)), fn(x, y, pos_weight=np.full(4, 2.0)),
                "scalar pos_weight == constant columns")


@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_integer_predictions_are_converted(fn):
    rng = np.random.default_rng(5)
    xi = rng.integers(-40, 40, size=300)
    y = (rng.random(300) < 0.5).astype(np.float64)
    ref = fn(xi.astype(np.float64), y, reduction="none")
    for dt in (np.int8, np.int32, np.int64):
        same_result(fn(xi.astype(dt), y, reduction="none"), ref, f"predictions {np.dtype(dt).name}")


@pytest.mark.parametrize("argument", ["predictions", "labels", "sample_weight"])
@pytest.mark.parametrize("fn", FNS, ids=FN_IDS)
def test_non_native_byte_order(fn, argument):
    """Big-endian arrays (e.g. np.frombuffer of network data) are accepted for predictions,
    labels and sample_weight, and give bit for bit the native-order result (the contract:
    the kernels convert, they do not refuse)."""
    rng = np.random.default_rng(6)
    args = {"predictions": rng.normal(size=(50, 2)),
            "labels": (rng.random((50, 2)) < 0.5).astype(np.float64),
            "sample_weight": rng.uniform(0.0, 2.0, size=50)}
    for reduction in ("mean", "none"):
        ref = fn(**args, reduction=reduction)
        swapped = dict(args)
        swapped[argument] = args[argument].astype(">f8")
        assert not swapped[argument].dtype.isnative
        same_result(fn(**swapped, reduction=reduction), ref, f"big-endian {argument}, {reduction}")


def test_logreg_grad_layouts():
    X, y, coef = logreg_base(300, 6)
    X = X.astype(np.float32).astype(np.float64)
    w = np.random.default_rng(1).uniform(0.0, 2.0, size=300)
    for kw in ({}, {"sample_weight": w, "l2": 0.3}):
        ref = kernels.logreg_grad(np.ascontiguousarray(X), y, coef, 0.25, **kw)
        wide = np.full((300, 12), np.nan)
        wide[:, ::2] = X
        for name, Xv in [("fortran", np.asfortranarray(X)), ("readonly", readonly(X)),
                         ("float32", X.astype(np.float32)), ("strided-cols", wide[:, ::2])]:
            same_result(kernels.logreg_grad(Xv, y, coef, 0.25, **kw), ref, f"features {name}")
        for name, yv in [("bool", y.astype(bool)), ("int8", y.astype(np.int8)), ("readonly", readonly(y)),
                         ("strided", np.repeat(y, 2)[::2])]:
            same_result(kernels.logreg_grad(X, yv, coef, 0.25, **kw), ref, f"labels {name}")
        same_result(kernels.logreg_grad(X, y, readonly(coef), 0.25, **kw), ref, "coef readonly")
        same_result(kernels.logreg_grad(X, y, coef.tolist(), 0.25, **kw), ref, "coef list")


def test_logreg_nan_feature_is_refused_even_with_zero_weight():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 3))
    y = (rng.random(300) < 0.5).astype(float)
    w = np.ones(300)
    X[123, 2] = np.nan
    w[123] = 0.0
    with pytest.raises(ValueError, match=r"features\[123, 2\] is NaN"):
        kernels.logreg_grad(X, y, np.zeros(3), sample_weight=w)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_dtype_float32_means_float32_arrays_in_and_out(reduction):
    """dtype="float32": the arrays are float32 values (inputs rounded to float32, as the
    service does with JSON numbers), computed in float64, per-element results returned
    as float32; the loss and the stats stay float64."""
    rng = np.random.default_rng(7)
    s = rng.normal(scale=5.0, size=(300, 3))
    y = (rng.random((300, 3)) < 0.4).astype(np.float64)
    w = rng.random(300) * 3
    for kw in ({}, {"sample_weight": w}):
        kw32 = {k: v.astype(np.float32) for k, v in kw.items()}
        f32 = kernels.grad(s.astype(np.float32), y.astype(np.float32), reduction=reduction, **kw32)
        narrow = kernels.grad(s, y, reduction=reduction, dtype="float32", **kw)
        assert narrow.grad.dtype == np.float32
        np.testing.assert_array_equal(narrow.grad, f32.grad.astype(np.float32))
        assert narrow.loss == f32.loss and narrow.stats == f32.stats  # scalars stay float64
        l32 = kernels.loss(s.astype(np.float32), y.astype(np.float32), reduction=reduction, **kw32)
        ln = kernels.loss(s, y, reduction=reduction, dtype="float32", **kw)
        if reduction == "none":
            assert ln.losses.dtype == np.float32
            np.testing.assert_array_equal(ln.losses, l32.losses.astype(np.float32))
        else:
            assert ln.losses is None and ln.loss == l32.loss
    with pytest.raises(ValueError, match=r'^predictions\[1, 2\] = 1e\+39 is beyond the float32 range'):
        s2 = s.copy()
        s2[1, 2] = 1e39
        kernels.loss(s2, y, dtype="float32")


@pytest.mark.parametrize("fn", [kernels.loss, kernels.grad])
def test_dtype_unknown(fn):
    with pytest.raises(ValueError, match=r"^dtype = 'float16' is not one of 'float64', 'float32'$"):
        fn(np.zeros(3), np.zeros(3), dtype="float16")


def test_logreg_without_l2_ignores_an_overflowing_coef_norm():
    # ‖coef‖² = 2e400 overflows, but without l2 it is not part of the loss (0·inf would be NaN)
    X = np.array([[1e-200, 1e-200]])
    p = kernels.logreg_grad(X, np.array([1.0]), np.array([1e200, 1e200]))
    assert p.loss == float(np.log1p(np.exp(-2.0)))
    # with l2 > 0 the penalty really is infinite
    assert kernels.logreg_grad(X, np.array([1.0]), np.array([1e200, 1e200]), l2=0.5).loss == np.inf


@pytest.mark.parametrize("fn", [kernels.loss, kernels.grad])
def test_unaligned_inputs_are_bit_identical(fn):
    """np.frombuffer on a request body gives read-only, possibly unaligned arrays."""
    rng = np.random.default_rng(3)
    n = 40_000  # parallel path
    s, y, w = rng.normal(size=n), (rng.random(n) < 0.5) * 1.0, rng.uniform(0, 1, n)

    def unaligned(a: np.ndarray) -> np.ndarray:
        raw = b"\0" + a.tobytes()
        out = np.frombuffer(raw, dtype=np.float64, count=a.size, offset=1)
        assert not out.flags.aligned and not out.flags.writeable
        return out

    ref = fn(s, y, sample_weight=w)
    got = fn(unaligned(s), unaligned(y), sample_weight=unaligned(w))
    assert got.loss == ref.loss and got.stats == ref.stats
    if fn is kernels.grad:
        np.testing.assert_array_equal(got.grad, ref.grad)


def test_quantiles_as_an_array():
    r = kernels.loss(np.array([1.0, -2.0, 3.0]), np.array([1.0, 0.0, 0.0]), quantiles=np.array([0.99, 0.01]))
    assert list(r.stats)[-2:] == ["p99", "p1"]
