"""High-precision reference for lossd's per-element losses and their derivatives.

Everything here is computed with mpmath at PREC (>= 120) bits from the *exact* values of
the float64 inputs, so the only rounding left in a comparison is the kernel's own.
Nothing in this module imports ``kernels``: it is an independent transcription of the
contract (/work/shared/docs/api.md) and of the README's "Semantics where the contract
is silent":

* ``logits``:  l = pw*y*softplus(-s) + (1-y)*softplus(s),  dl/ds = (1-y)σ(s) - pw*y*σ(-s)
* ``margins``: labels y in {-1,+1}; cross_entropy / focal / squared_error use the logits
  form on y01 = (y+1)/2 (positive class y = +1 for pos_weight); margin losses use m = y*s.
* ``probabilities``: l = -[pw*y*log p + (1-y)*log(1-p)], each log floored at -100
  when eps is None (derivative 0 where the floor is active), p clipped to
  [eps, fl(1-eps)] otherwise (derivative 0 outside).
* margin losses of m = y'*s (y' = 2y-1 for {0,1} labels): hinge, squared_hinge,
  modified_huber, exponential, zero_one.
* focal: CE * (1-p_t)^gamma * (alpha*y + (1-alpha)*(1-y)),  1-p_t = y σ(-s) + (1-y) σ(s).
* squared_error: (σ(s) - y)^2, evaluated as ((1-y)σ(s) - yσ(-s))^2 so that it is exact
  even where σ(s) rounds to y at any finite precision.

±inf inputs give exact limits: products use ``mul0`` (0 * anything = 0, i.e. a zero
coefficient removes its term even where the term is infinite), which is the true limit
in every place it is used below (an exponentially vanishing factor against a linearly
growing one).

Label smoothing is *not* applied here: callers pass the label after
``smooth_labels`` (float64 arithmetic exactly as NumPy does it), and that float is then
treated as exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mpmath import mp, mpf

PREC = 128

ZERO = mpf(0)
ONE = mpf(1)
INF = mpf("inf")

LOSSES = (
    "cross_entropy",
    "focal",
    "hinge",
    "squared_hinge",
    "modified_huber",
    "exponential",
    "zero_one",
    "squared_error",
)
MARGIN_LOSSES = ("hinge", "squared_hinge", "modified_huber", "exponential", "zero_one")
PROB_LOSSES = ("cross_entropy", "focal", "squared_error")


# --------------------------------------------------------------------------- basics


def X(v) -> mpf:
    """The exact value of a float (or an mpf passed through unchanged)."""
    if isinstance(v, mpf):
        return v
    f = float(v)
    if math.isnan(f):
        raise ValueError("NaN has no reference value")
    return mpf(f)


def _prec():
    return mp.workprec(max(mp.prec, PREC))


def mul0(a, b):
    """a*b with 0*x = 0 for every x, inf included (a zero coefficient drops its term)."""
    if a == 0 or b == 0:
        return ZERO
    return a * b


def sigmoid(s: mpf) -> mpf:
    with _prec():
        if s == INF:
            return ONE
        if s == -INF:
            return ZERO
        if s >= 0:
            return ONE / (ONE + mp.exp(-s))
        e = mp.exp(s)
        return e / (ONE + e)


def softplus(s: mpf) -> mpf:
    """log(1 + e^s), exact at both ends (softplus(-inf) = 0, softplus(inf) = inf)."""
    with _prec():
        if s == INF:
            return INF
        if s == -INF:
            return ZERO
        if s > 0:
            return s + mp.log1p(mp.exp(-s))
        return mp.log1p(mp.exp(s))


def _pow(q: mpf, g: mpf) -> mpf:
    """q**g for q >= 0 with 0**0 = 1, 0**g = 0 (g > 0), 0**g = inf (g < 0)."""
    if q == 0:
        if g == 0:
            return ONE
        return ZERO if g > 0 else INF
    return q**g


def smooth_labels(labels, label_smoothing: float):
    """Keras label smoothing y*(1-ls) + ls/2, in float64 exactly as NumPy evaluates it."""
    y = np.asarray(labels, dtype=np.float64)
    ls = float(label_smoothing)
    if ls == 0.0:
        return y
    return y * (1.0 - ls) + ls / 2


# --------------------------------------------------------------------------- float64


def to_f64(x) -> float:
    """Round an mpf to the nearest float64 (ties to even), with gradual underflow and
    overflow to ±inf. (mpmath's own float() truncates, so it is not used.)"""
    x = X(x)
    if x == 0:
        return 0.0
    if mp.isinf(x):
        return math.inf if x > 0 else -math.inf
    sign, man, exp, bc = x._mpf_
    top = exp + bc - 1  # x in [2^top, 2^(top+1))
    if top < -1076:  # |x| < 2^-1075, under half the smallest subnormal
        return -0.0 if sign else 0.0
    if top > 1024:
        return -math.inf if sign else math.inf
    qe = -1074 if top < -1022 else top - 52  # exponent of the last kept bit
    shift = qe - exp
    if shift <= 0:
        n = man << (-shift)
    else:
        n = man >> shift
        rem = man & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (n & 1)):
            n += 1
    try:
        f = math.ldexp(n, qe)
    except OverflowError:
        f = math.inf
    return -f if sign else f


def spacing(f: float) -> float:
    """Distance between f and the next float64 away from zero, 2^-1074 for subnormals
    and zero; for |f| = inf, the spacing of the largest binade."""
    f = abs(f)
    if math.isinf(f):
        return 2.0**971
    if f < 2.0**-1022:
        return 2.0**-1074
    return math.ldexp(1.0, math.frexp(f)[1] - 53)


def ulp_diff(got: float, ref, scale=None) -> float:
    """|got - ref| in units of the spacing of the float64 nearest to ref.

    With ``scale`` (a non-negative mpf) the unit is the spacing at max(|ref|, scale)
    instead: the mixed bound for results that are differences of larger terms.
    Infinities must match exactly (0.0 if they do, inf otherwise); NaN gives inf.
    """
    got = float(got)
    if math.isnan(got):
        return math.inf
    ref = X(ref)
    fr = to_f64(ref)
    if math.isinf(got) or math.isinf(fr):
        return 0.0 if got == fr else math.inf
    with _prec():
        s = abs(ref) if scale is None else max(abs(ref), abs(X(scale)))
        unit = spacing(to_f64(s))
        return float(abs(X(got) - ref) / X(unit))


# --------------------------------------------------------------------------- elements


@dataclass(frozen=True)
class Elem:
    """One element's reference.

    loss, grad:  exact values (mpf; may be ±inf).
    loss_scale, grad_scale: the largest magnitude among the terms whose difference forms
        the value (== |value| when there is no cancellation); used for mixed bounds.
    kink: the derivative is convention-dependent here (clip boundary, the -100 floor's
        threshold, the hinge corner); gradients are not compared at such points.
    """

    loss: mpf
    grad: mpf
    loss_scale: mpf
    grad_scale: mpf
    kink: bool = False


def _alpha_weight(y: mpf, alpha) -> mpf:
    if alpha is None:
        return ONE
    a = X(alpha)
    return a * y + X(1.0 - float(alpha)) * (ONE - y)


def _ce_logits(s, y, pw):
    A = pw * y
    B = ONE - y
    loss = mul0(A, softplus(-s)) + mul0(B, softplus(s))
    t1 = B * sigmoid(s)
    t2 = A * sigmoid(-s)
    return Elem(loss, t1 - t2, loss, max(t1, t2))


def _focal_logits(s, y, gamma, alpha):
    g = X(gamma)
    a = _alpha_weight(y, alpha)
    sp, sn = sigmoid(s), sigmoid(-s)
    ce = mul0(y, softplus(-s)) + mul0(ONE - y, softplus(s))
    q = y * sn + (ONE - y) * sp
    qg = _pow(q, g)
    loss = mul0(a, mul0(ce, qg))
    T1 = a * qg * (ONE - y) * sp
    T2 = a * qg * y * sn
    ss = sp * sn
    if g == 0 or y * 2 == 1 or ss == 0 or a == 0:
        T3 = ZERO  # limits: sigma*sigma' -> 0 exponentially, ce grows linearly
    else:
        T3 = a * g * ce * _pow(q, g - 1) * (ONE - 2 * y) * ss
    grad = T1 - T2 + T3
    return Elem(loss, grad, loss, max(abs(T1), abs(T2), abs(T3)))


def _se_logits(s, y):
    sp, sn = sigmoid(s), sigmoid(-s)
    t1 = (ONE - y) * sp
    t2 = y * sn
    d = t1 - t2  # == sigma(s) - y, without cancellation inside mpmath
    M = max(t1, t2)
    # loss = d^2: an error e in d changes it by 2|d|e, so its scale is 2|d|M (>= d^2).
    return Elem(d * d, 2 * d * sp * sn, 2 * abs(d) * M, 2 * M * sp * sn)


def _margin(s, yp, loss):
    m = yp * s
    if loss == "hinge":
        h = max(ZERO, ONE - m)
        grad = -yp if m < 1 else ZERO
        return Elem(h, grad, h, abs(grad), kink=(m == 1))
    if loss == "squared_hinge":
        h = max(ZERO, ONE - m)
        grad = -2 * yp * h if h != 0 else ZERO
        return Elem(h * h, grad, h * h, abs(grad))
    if loss == "modified_huber":
        if m < -1:
            return Elem(-4 * m, -4 * yp, -4 * m, ONE * 4)
        h = max(ZERO, ONE - m)
        grad = -2 * yp * h if h != 0 else ZERO
        return Elem(h * h, grad, h * h, abs(grad))
    if loss == "exponential":
        e = mp.exp(-m)
        return Elem(e, -yp * e, e, e)
    if loss == "zero_one":
        v = ONE if m <= 0 else ZERO
        return Elem(v, ZERO, v, ZERO)
    raise ValueError(loss)


def _prob(p, y, loss, pw, gamma, alpha, eps):
    kink = False
    if eps is None:
        pc = p
        inside = True
    else:
        lo = X(eps)
        hi = X(1.0 - float(eps))  # 1 - eps rounded in float64, as np.clip(p, eps, 1 - eps)
        pc = min(max(p, lo), hi)
        inside = lo < p < hi
        kink = p == lo or p == hi
    one_m = ONE - pc

    if loss == "squared_error":
        d = pc - y
        M = max((ONE - y) * pc, y * one_m)
        grad = 2 * d if inside else ZERO
        return Elem(d * d, grad, 2 * abs(d) * M, 2 * M if inside else ZERO, kink)

    lp = mp.log(pc) if pc > 0 else -INF
    # log1p(-p), not log(1 - p): at PREC bits 1 - p rounds to 1 for p < 2^-PREC
    l1 = mp.log1p(-pc) if pc < 1 else -INF
    if eps is None:
        act_p = lp > -100
        act_1 = l1 > -100
        Lp = lp if act_p else mpf(-100)
        L1 = l1 if act_1 else mpf(-100)
        # points whose log lies within 1e-9 of the floor: which side the kernel's
        # rounded log falls on is not a property of the loss
        kink = kink or abs(lp + 100) < mpf("1e-9") or abs(l1 + 100) < mpf("1e-9")
    else:
        act_p = act_1 = True
        Lp, L1 = lp, l1
    A = pw * y
    B = ONE - y
    ce = -(mul0(A, Lp) + mul0(B, L1))
    tp = A / pc if (act_p and A != 0) else ZERO
    t1 = B / one_m if (act_1 and B != 0) else ZERO
    if not inside:
        tp = t1 = ZERO
    if loss == "cross_entropy":
        return Elem(ce, t1 - tp, ce, max(t1, tp), kink)

    # focal on probabilities: the (floored / clipped) CE times (1-p_t)^gamma, with
    # 1-p_t = y(1-p) + (1-y)p on the clipped p.
    g = X(gamma)
    a = _alpha_weight(y, alpha)
    q = y * one_m + B * pc
    qg = _pow(q, g)
    loss_v = mul0(a, mul0(ce, qg))
    T1 = a * qg * t1
    T2 = a * qg * tp
    if g == 0 or ce == 0 or y * 2 == 1 or not inside or a == 0:
        T3 = ZERO  # ce == 0 wherever q == 0 (y = p in {0,1}), and the limit is 0
    else:
        T3 = a * g * ce * _pow(q, g - 1) * (ONE - 2 * y)
    return Elem(loss_v, T1 - T2 + T3, loss_v, max(abs(T1), abs(T2), abs(T3)), kink)


def element(
    pred,
    label,
    *,
    input: str = "logits",
    loss: str = "cross_entropy",
    pos_weight=None,
    gamma: float = 2.0,
    alpha=None,
    eps=None,
) -> Elem:
    """Reference loss and d(loss)/d(pred) for one element.

    ``pred`` is a float (or an mpf, for finite differences); ``label`` is the label the
    kernel sees *after* label smoothing (see ``smooth_labels``), treated as exact.
    """
    with _prec():
        s = X(pred)
        y = X(label)
        pw = ONE if pos_weight is None else X(pos_weight)
        if input == "probabilities":
            if loss not in PROB_LOSSES:
                raise ValueError(f"{loss} does not accept probabilities")
            if not (0 <= s <= 1):
                raise ValueError("probability outside [0, 1]")
            return _prob(s, y, loss, pw, gamma, alpha, eps)
        if input == "margins":
            if y not in (-1, 1):
                raise ValueError("margins need labels in {-1, +1}")
            yp = y
            y01 = (y + 1) / 2
        elif input == "logits":
            y01 = y
            yp = 2 * y - 1
        else:
            raise ValueError(input)
        if loss == "cross_entropy":
            return _ce_logits(s, y01, pw)
        if loss == "focal":
            return _focal_logits(s, y01, gamma, alpha)
        if loss == "squared_error":
            return _se_logits(s, y01)
        if loss in MARGIN_LOSSES:
            if y01 not in (0, 1):
                raise ValueError("margin losses need hard labels")
            return _margin(s, yp, loss)
        raise ValueError(loss)


def elements(preds, labels, **opts) -> list[Elem]:
    """``element`` over flat arrays; ``pos_weight`` may be one value per element."""
    preds = np.asarray(preds)
    labels = np.broadcast_to(np.asarray(labels), preds.shape).ravel()
    pw = opts.pop("pos_weight", None)
    pws = [None] * preds.size if pw is None else np.broadcast_to(pw, preds.shape).ravel()
    preds = preds.ravel()
    return [element(p, y, pos_weight=w, **opts) for p, y, w in zip(preds, labels, pws)]


def finite_difference(pred: float, label: float, *, prec: int = 256, rel_step=None, **opts) -> mpf:
    """Central difference (f(x+h) - f(x-h)) / 2h of the reference loss, at ``prec`` bits.

    The step is 2^-70 relative (~1e-21; for probabilities relative to min(p, 1-p)), so
    truncation is ~1e-42 relative and cancellation costs 70 of the ``prec`` bits.
    """
    with mp.workprec(prec):
        x = X(pred)
        base = min(x, ONE - x) if opts.get("input") == "probabilities" else max(ONE, abs(x))
        h = base * (X(rel_step) if rel_step is not None else mpf(2) ** -70)
        fp = element(x + h, label, **opts).loss
        fm = element(x - h, label, **opts).loss
        return (fp - fm) / (2 * h)


def fsum_mp(values) -> mpf:
    """Exact-enough sum (PREC bits) of mpf/float values."""
    with _prec():
        return mp.fsum(X(v) for v in values)
