"""``logreg_grad``: the mean logistic loss of a linear model and its gradient."""

from __future__ import annotations

import math

import numpy as np

from . import _drivers as D
from . import _math as M
from . import runtime
from ._checks import _as_array, _fmt, _index, _number, _weights
from ._compile import _logreg_block, _logreg_driver, _logreg_pointer
from ._planner import PARALLEL_MIN
from .errors import InputError, KernelError
from .results import ParamGrad

LOGREG_ROWS = 256  # rows per block: 256 x D values stay in L2 between the two reads


def logreg_grad(features, labels, coef, intercept: float = 0.0, *, sample_weight=None,
                l2: float = 0.0) -> ParamGrad:
    """Mean logistic loss of z = features·coef + intercept and its gradient (the seed's
    formulas): dJ/dw_j = (1/n) Σ x_j (σ(z) - y), dJ/db = (1/n) Σ (σ(z) - y).

    With sample_weight the sums are weighted and 1/n becomes 1/Σw (scikit-learn);
    l2 adds (l2/2)·‖coef‖² to the loss and l2·coef to its gradient, not to the intercept.
    """
    X = _as_array("features", features)
    if X.ndim != 2:
        raise InputError("features", f"must be 2-D (N×D), got {X.ndim}-D shape {X.shape}")
    n, d = X.shape
    if n == 0 or d == 0:
        raise InputError("features", f"is empty (shape {X.shape}); N >= 1 and D >= 1 are required")
    y = _as_array("labels", labels)
    if y.ndim != 1:
        raise InputError("labels", f"must be 1-D (N), got {y.ndim}-D shape {y.shape}")
    if y.shape[0] != n:
        raise InputError("features", f"has {n} rows, labels {y.shape[0]}")
    c = _as_array("coef", coef)
    if c.ndim != 1 or c.shape[0] != d:
        raise InputError("coef", f"must have one value per feature column ({d}), got shape {c.shape}")
    c = np.ascontiguousarray(c, dtype=np.float64)
    if not np.isfinite(c).all():
        i = int(np.flatnonzero(~np.isfinite(c))[0])
        raise InputError("coef", "is NaN" if c[i] != c[i] else f"= {_fmt(c[i])} is not finite", (i,))
    b0 = _number("intercept", intercept, -np.inf, np.inf, lo_open=True, hi_open=True)
    lam = _number("l2", l2, 0.0, np.inf, hi_open=True)
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    w = _weights(sample_weight, n, True)
    if w.w.size and not w.total > 0.0:
        raise InputError("sample_weight", "sums to 0: the mean loss is undefined")

    nb = (n + LOGREG_ROWS - 1) // LOGREG_ROWS
    gpart = np.empty((nb, d))
    spart = np.empty((nb, 5))
    block = _logreg_block(X.dtype)
    if n * d >= PARALLEL_MIN and nb > 1:
        runtime._apply_threads()
        _logreg_driver()(_logreg_pointer(X.dtype), X, y, c, b0, w.w, w.wscale, gpart, spart,
                         LOGREG_ROWS)
    else:
        for b in range(nb):
            block(X, y, c, b0, w.w, w.wscale, gpart, spart, b, b * LOGREG_ROWS,
                  min(n, (b + 1) * LOGREG_ROWS))
    if spart[:, 3].sum() > 0:
        raise _first_bad_logreg(X, y, c, b0)
    if spart[:, 4].sum() > 0:
        raise KernelError(f"NaN from valid input in logreg_grad (N = {n}, D = {d}): a lossd bug")
    den, den_lo = (w.total, w.total_lo) if w.w.size else (float(n), 0.0)
    lsum, lsum_lo = D.dd_total(spart[:, 0], spart[:, 1])
    with np.errstate(over="ignore", invalid="ignore"):  # l2·coef beyond the float range is inf
        gcoef = gpart.sum(axis=0) / den + lam * c
    if not np.isfinite(gcoef).all():  # maybe a sum overflowed on the way (inf + -inf: NaN): redo scaled
        gcoef = _coef_grad_scaled(X, y, c, b0, w, lam)
    loss_value = M.dd_div(lsum, lsum_lo, den, den_lo) + _half_l2_penalty(lam, c)
    return ParamGrad(float(loss_value), gcoef, float(np.sum(spart[:, 2]) / den))


def _coef_grad_scaled(X: np.ndarray, y: np.ndarray, c: np.ndarray, b0: float, w, lam: float) -> np.ndarray:
    """dJ/dcoef where the kernel's sums overflowed: Σ r·x_j / Σw + l2·c_j with every term
    scaled by a power of two first, so only a result beyond the float range is ±inf
    (two rows of x = 1e308 summed to inf, and beside an l2·c of -inf gave NaN).
    NumPy, float64; runs only when the fast result is not finite."""
    Xd = X.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = Xd @ c + b0
    t = np.exp(-np.abs(z))
    r = np.where(z >= 0, 1.0 / (1.0 + t), t / (1.0 + t)) - y
    if w.w.size:
        ww = np.asarray(w.w, dtype=np.float64)
        top = float(ww.max())
        ww = ww / top if top > 0 else ww  # weights up to 1: Σw no longer overflows
        r = r * ww
        den = float(ww.sum())
    else:
        den = float(len(y))
    out = np.empty(c.size)
    lm, le = math.frexp(lam)
    for j in range(c.size):
        col = Xd[:, j]
        big = float(np.max(np.abs(col)))
        k = math.frexp(big)[1] if big > 0 else 0
        a = float(np.sum(r * np.ldexp(col, -k))) / den  # |a| <= N: no overflow
        cm, ce = math.frexp(float(c[j]))
        e = max(k, le + ce)
        v = math.ldexp(a, k - e) + math.ldexp(lm * cm, le + ce - e)
        try:
            out[j] = math.ldexp(v, e)
        except OverflowError:
            out[j] = math.copysign(math.inf, v)
    return out


def _half_l2_penalty(lam: float, c: np.ndarray) -> float:
    """(l2/2)·‖c‖², without overflow or underflow in the steps: ‖c‖² of c = 1e200 is
    beyond the float range, while l2 = 1e-300 brings the penalty back to 5e99.
    Absent (0, not 0·inf) when l2 = 0."""
    big = float(np.max(np.abs(c))) if lam and c.size else 0.0
    if big == 0.0:
        return 0.0
    ce = math.frexp(big)[1]
    cs = np.ldexp(c, -ce)  # exact: a power of two; entries below 2^-1074 of the largest vanish
    lm, le = math.frexp(lam)
    try:
        return math.ldexp(0.5 * lm * float(np.sum(cs * cs)), le + 2 * ce)  # no BLAS: same bits every call
    except OverflowError:
        return math.inf


def _first_bad_logreg(X: np.ndarray, y: np.ndarray, c: np.ndarray, b0: float) -> InputError:
    bady = (y != 0.0) & (y != 1.0)
    if bady.any():
        i = int(np.flatnonzero(bady)[0])
        return InputError("labels", "is NaN" if y[i] != y[i] else f"= {_fmt(y[i])} is not in {{0, 1}}", (i,))
    badx = ~np.isfinite(X)
    if badx.any():
        i = int(np.flatnonzero(badx.ravel())[0])
        v = X.ravel()[i]
        what = "is NaN" if v != v else f"= {_fmt(v)} is not finite"
        return InputError("features", what, _index(i, X.shape))
    return InputError("features", f"· coef + intercept is NaN (intercept = {_fmt(b0)}): the products overflow")
