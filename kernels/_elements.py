"""Per-element losses and their derivatives w.r.t. the prediction.

Each function returns ``(loss, dloss/dprediction)`` for one element and is pure
arithmetic, so a kernel loop calling it vectorises. Labels arrive as ``y``, the
probability of the positive class after label mapping and smoothing; the margin losses
use y' = 2y - 1. The logit forms of cross-entropy and focal loss also take
t = e^-|s|, which the drivers compute in a loop of their own. Zero coefficients are
selected to 0 rather than multiplied, so that 0 * inf never produces NaN: every ±inf
input gives the exact limit.

These functions take the drivers' fast-math flags (``reassoc`` among them), so any sum
of label-weighted terms, where regrouping could cancel, goes through the strict
``M.dot2``, and products of more than two factors that could overflow or underflow
in another order through ``M.mul4``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _math as M

# Inlined into the drivers at Numba-IR level: LLVM's inliner declines element functions
# once exp/log1p are inside them, which would leave scalar calls in the hot loop. They
# inherit the driver's fast-math flags, so they hold no error-free tricks (those live
# in _math, which LLVM inlines with its own strict flags).
_opts = dict(inline="always", nogil=True, error_model="numpy")

FLOOR = -100.0  # PyTorch's floor for each log term of binary_cross_entropy
# Below this q^γ has (or nearly has) lost bits to underflow: CE·q^γ is then formed in one power.
QG_TINY = 2.0 ** -960

# Element kinds: the compile-time switch of the drivers.
CE_LOGITS = 0
CE_PROB = 1
FOCAL_LOGITS = 2
FOCAL_PROB = 3
SE_LOGITS = 4
SE_PROB = 5
HINGE = 6
SQUARED_HINGE = 7
MODIFIED_HUBER = 8
EXPONENTIAL = 9
ZERO_ONE = 10
# CE_LOGITS without pos_weight and label smoothing, the common case: compiled without
# their steps (a label transform, a weight load and product; ~11% of the element loop).
CE_LOGITS_PLAIN = 11
N_KINDS = 12
PROB_KINDS = (CE_PROB, FOCAL_PROB, SE_PROB)


@njit(**_opts)
def ce_logits(s: float, y: float, pw: float, t: float) -> tuple[float, float]:
    """Binary cross-entropy on a logit, with PyTorch's pos_weight; t = e^-|s|.

    l = pw·y·softplus(-s) + (1-y)·softplus(s)   (= (1-y)s - log σ(s) for pw = 1)
    dl/ds = (1-y)·σ(s) - pw·y·σ(-s)
    Reference: PyTorch ``binary_cross_entropy_with_logits``; the stable softplus split
    is the one of optax ``sigmoid_binary_cross_entropy``.
    """
    sp_pos, sp_neg, _ = M.softplus_parts(s, t)
    sig_p, sig_n = M.sigmoid_pair(s, t)
    c1 = pw * y
    c0 = 1.0 - y
    return M.dot2(c1, sp_neg, c0, sp_pos), M.dot2(c0, sig_p, -c1, sig_n)


@njit(**_opts)
def ce_logits_plain(s: float, y: float, t: float) -> tuple[float, float]:
    """ce_logits without pos_weight, in fewer operations; t = e^-|s|.

    l = log1p(t) + m·|s|, m = 1-y for s > 0 and y otherwise (the softplus split of
    ce_logits with the common log1p(t) taken out: both terms >= 0, no cancellation),
    and m·|s| = 0 when m = 0, so s = ±inf gives 0 or +inf, never inf - inf.
    dl/ds = (1-y)·σ(s) - y·σ(-s), both sigmoids computed without cancellation.
    """
    lp = M.log1p_unit(t)
    c0 = 1.0 - y
    m = c0 if s > 0.0 else y
    sig_p, sig_n = M.sigmoid_pair(s, t)
    # m·|s| strict: regrouped with m = 1 - y it could become |s| - y|s|, which loses
    # everything for y near 1 and large |s|. The gradient is a difference of two terms
    # <= 1 in any grouping, within a few ulps of its larger term: left to fast-math.
    return lp + (0.0 if m == 0.0 else M.mul(m, abs(s))), c0 * sig_p - y * sig_n


@njit(**_opts)
def _prob_logs(p: float, lo: float, hi: float) -> tuple[float, float, float, float]:
    """(log p, log(1-p), d/dp log p, d/dp log(1-p)) for the probabilities form.

    Without eps (lo = 0, hi = 1) each log is floored at -100 (PyTorch); with eps, p is
    clipped to [lo, hi] = [eps, 1 - eps] (scikit-learn, Keras) and nothing is floored:
    -log(eps) is the cost of p = 0. Where a clip or a floor is active the derivative is
    0: these are derivatives of the value actually returned.
    """
    floor = FLOOR if lo == 0.0 else -np.inf
    pc = min(max(p, lo), hi)
    inside = p >= lo and p <= hi
    lp = M.log(pc)
    lq = M.log1p(-pc)
    dlp = (1.0 / pc) if (lp > floor and inside) else 0.0
    dlq = (-1.0 / (1.0 - pc)) if (lq > floor and inside) else 0.0
    return max(lp, floor), max(lq, floor), dlp, dlq


@njit(**_opts)
def ce_prob(p: float, y: float, pw: float, lo: float, hi: float) -> tuple[float, float]:
    """-[pw·y log p + (1-y) log(1-p)], log terms floored at -100 (PyTorch
    ``binary_cross_entropy``; pos_weight as in ``binary_cross_entropy_with_logits``)."""
    lp, lq, dlp, dlq = _prob_logs(p, lo, hi)
    c1 = pw * y
    c0 = 1.0 - y
    return -M.dot2(c1, lp, c0, lq), -M.dot2(c1, dlp, c0, dlq)


@njit(**_opts)
def _focal_factor(gamma: float, q: float, la: float, lb: float) -> float:
    """q^gamma with log q = la + lb (la exact, lb small); q^0 = 1 even for q = 0."""
    if gamma == 0.0:
        return 1.0
    return 0.0 if q == 0.0 else M.pow_split(gamma, la, lb)


@njit(**_opts)
def _alpha_weight(alpha: float, y: float, c0: float) -> float:
    """a_t = α y + (1-α)(1-y), 1 when alpha < 0 (None); c0 = 1 - y."""
    return 1.0 if alpha < 0.0 else M.dot2(alpha, y, 1.0 - alpha, c0)


@njit(**_opts)
def focal_logits(s: float, y: float, gamma: float, alpha: float, t: float) -> tuple[float, float]:
    """Sigmoid focal loss (Lin et al. 2017; optax ``sigmoid_focal_loss``); t = e^-|s|.

    l = a_t · CE(s, y) · q^γ with q = 1 - p_t = y·σ(-s) + (1-y)·σ(s),
    a_t = α y + (1-α)(1-y) (1 when alpha < 0, i.e. None).
    For hard labels log q = -softplus(±s) is formed from its exact parts, so q^γ keeps
    full precision where q underflows towards 1e-300; soft labels use log q directly.
    dl/ds = a_t · [CE'·q^γ + CE·γ·q^γ·h], h = d(log q)/ds.
    """
    sp_pos, sp_neg, lp = M.softplus_parts(s, t)
    sig_p, sig_n = M.sigmoid_pair(s, t)
    c0 = 1.0 - y
    ce = M.dot2(y, sp_neg, c0, sp_pos)
    dce = M.dot2(c0, sig_p, -y, sig_n)
    if y == 1.0:
        q, la, lb = sig_n, -max(s, 0.0), -lp
        h = -sig_p
    elif y == 0.0:
        q, la, lb = sig_p, -max(-s, 0.0), -lp
        h = sig_n
    else:
        q = M.dot2(y, sig_n, c0, sig_p)
        la, lb = M.log_split(q)
        h = (1.0 - 2.0 * y) * sig_p * sig_n / q
    qg = _focal_factor(gamma, q, la, lb)
    # CE·q^γ with CE's exponent inside the power: with soft labels CE can be huge
    # (y|s| for |s| = 1e300) where q^γ alone underflows. ce = inf (s = ±inf against
    # the label's mass) has q > 0: the limit is inf.
    if ce == np.inf or gamma == 0.0:
        ceqg = ce
    elif qg < QG_TINY and ce > 1.0:  # q^γ at or near subnormal: CE·q^γ may still be normal
        ceqg = 0.0 if q == 0.0 else M.pow_times(gamma, la, lb, ce)
    else:
        ceqg = ce * qg
    at = _alpha_weight(alpha, y, c0)
    loss = 0.0 if at == 0.0 else at * ceqg
    # γ·h·CE·q^γ as (γ·h)·(CE·q^γ): |h| <= 1, so neither factor overflows where the tail does not
    tail = 0.0 if (h == 0.0 or gamma == 0.0 or ceqg == 0.0) else M.mul4(gamma, h, ceqg, 1.0)
    g = 0.0 if at == 0.0 else at * (dce * qg + tail)
    return loss, g


@njit(**_opts)
def focal_prob(p: float, y: float, gamma: float, alpha: float, lo: float, hi: float) -> tuple[float, float]:
    """Focal loss on probabilities: CE as in ``ce_prob`` times q^γ, q = y(1-p) + (1-y)p.

    log q is formed as an exact hi + small lo (1 - p is exact for p >= 1/2), so q^γ
    keeps full precision for q near 1e-300; the derivative's CE·q^(γ-1) is
    evaluated as (CE / q)·q^γ, which stays near q^γ even where CE and q are subnormal.
    """
    lp, lq, dlp, dlq = _prob_logs(p, lo, hi)
    pc = min(max(p, lo), hi)
    inside = p >= lo and p <= hi
    c0 = 1.0 - y
    ce = -M.dot2(y, lp, c0, lq)
    dce = -M.dot2(y, dlp, c0, dlq)
    if y == 1.0:
        q = 1.0 - pc
        if pc >= 0.5:
            a, b = M.log_split(q)
        else:
            a, b = M.log1p(-pc), 0.0
    elif y == 0.0:
        q = pc
        a, b = M.log_split(pc)
    else:
        q = M.dot2(y, 1.0 - pc, c0, pc)
        a, b = M.log_split(q)
    qg = _focal_factor(gamma, q, a, b)
    dq = (1.0 - 2.0 * y) if inside else 0.0
    at = _alpha_weight(alpha, y, c0)
    loss = 0.0 if (at == 0.0 or qg == 0.0) else M.mul4(at, ce, qg, 1.0)
    if dq == 0.0 or gamma == 0.0 or ce == 0.0 or qg == 0.0:
        tail = 0.0
    else:
        tail = gamma * dq * M.ratio_times(ce, q, qg)
    g = 0.0 if at == 0.0 else at * (dce * qg + tail)
    return loss, g


@njit(**_opts)
def se_logits(s: float, y: float) -> tuple[float, float]:
    """Squared error of the probability, (σ(s) - y)², and 2(σ(s) - y)·σ(s)·σ(-s).

    For hard labels both are one power of sigmoids (σ(s)² and 2σ(s)²σ(-s) for y = 0,
    σ(-s)² and -2σ(s)σ(-s)² for y = 1) evaluated in log space, so they keep ~2.5 ulp;
    soft labels form σ(s) - y as (1-y)σ(s) - yσ(-s), a difference that may cancel.
    """
    if y == 0.0:
        return M.sigmoid_power(s, 2.0, 0.0), 2.0 * M.sigmoid_power(s, 2.0, 1.0)
    if y == 1.0:
        return M.sigmoid_power(s, 0.0, 2.0), -2.0 * M.sigmoid_power(s, 1.0, 2.0)
    sig_p, sig_n = M.sigmoid_pair(s, M.exp_neg(-abs(s)))
    d = M.dot2(1.0 - y, sig_p, -y, sig_n)
    return d * d, 2.0 * d * M.sigmoid_power(s, 1.0, 1.0)


@njit(**_opts)
def se_prob(p: float, y: float) -> tuple[float, float]:
    """Brier score term (p - y)² and its derivative 2(p - y)."""
    d = p - y
    return d * d, 2.0 * d


@njit(**_opts)
def margin_loss(kind: int, s: float, y: float) -> tuple[float, float]:
    """Margin losses of m = y'·s with y' = 2y - 1 in {-1, +1} (scikit-learn's SGD losses).

    hinge max(0, 1-m); squared_hinge max(0, 1-m)²; modified_huber -4m for m < -1 else
    max(0, 1-m)²; exponential e^-m; zero_one [m <= 0]. Derivatives w.r.t. s, with the
    subgradient 0 at the hinge's kink m = 1.
    """
    yp = 2.0 * y - 1.0
    m = yp * s
    h = max(0.0, 1.0 - m)
    if kind == HINGE:
        return h, (-yp if m < 1.0 else 0.0)
    if kind == SQUARED_HINGE:
        return h * h, -2.0 * yp * h
    if kind == MODIFIED_HUBER:
        small = m < -1.0
        return (-4.0 * m if small else h * h), (-4.0 * yp if small else -2.0 * yp * h)
    if kind == EXPONENTIAL:
        e = M.exp(-m)
        return e, -yp * e
    return (1.0 if m <= 0.0 else 0.0), 0.0
