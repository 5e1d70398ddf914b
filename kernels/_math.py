"""Branch-free elementary functions that LLVM can vectorise.

Numba from PyPI has no SVML, so ``np.exp``/``np.log1p`` inside a loop stay scalar libm
calls and block vectorisation. These versions are plain arithmetic (range reduction, a
polynomial, and 2^k built from bits), so a loop calling them vectorises with AVX-512.
They are compiled *without* fast-math: the error-free steps (split ln 2, the log1p
rounding correction) must not be reassociated away, and fast-math flags stay attached
to each instruction when LLVM inlines these into a kernel that does use them.

Accuracy (proved in tests/test_math.py against mpmath): exp, log and log1p within 1 ulp
over their whole domain, including subnormal results and ±inf.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def f64_bits(typingctx, x):  # noqa: ARG001
    """Reinterpret a float64 as int64 (a bit-cast, not a conversion)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def bits_f64(typingctx, x):  # noqa: ARG001
    """Reinterpret an int64 as float64."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):  # noqa: ARG001
    """a * b + c with a single rounding (llvm.fma: one instruction on x86-64 with FMA)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)

    return sig, codegen


# ln 2 split so that k * LN2_HI is exact for |k| < 2^11 (fdlibm's constants).
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
# Beyond these exp is +inf / 0; clamping keeps k inside the two-step scale's range.
EXP_HI = 710.0
EXP_LO = -746.0
TINY = 2.2250738585072014e-308  # smallest normal float64
TWO54 = 18014398509481984.0

# log(1+f) = f - hfsq + s*(hfsq + R(s^2)): fdlibm e_log.c minimax coefficients.
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01
LG = (LG1, LG2, LG3, LG4, LG5, LG6, LG7)
# The same form with one more term, fitted (Chebyshev, 200-bit arithmetic) for |s| <= 1/5,
# the range of log1p_unit_split's exact reduction: |R(z)/z error| < 3.8e-17 there.
# (fdlibm's seven reach 2.6e-13 at |s| = 1/5, ~40 ulp of the result; seven refitted
# ones 2.8e-15, ~0.4 ulp.)
LU = (0.6666666666666666, 0.400000000000078, 0.2857142856733919, 0.22222223037807243,
      0.18181738454723026, 0.15388834677801916, 0.1321036048513262, 0.13604015707124079)
SQRT2 = 1.4142135623730951

# Every function here is compiled eagerly, at import, with an explicit signature:
# Numba compiles a callee that has no overload yet with its *caller's* fast-math flags
# (and caches that), which would let a kernel's `reassoc` undo the error-free steps.
# Compiled first, the strict overload is the one every caller links.
_opts = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_strict = dict(cache=True, nogil=True, error_model="numpy")  # no FMA contraction either
# Compositions of the above, inlined at Numba-IR level (see _elements): they take the
# caller's fast-math flags, so anything with an error-free step stays in _opts.
_inline = dict(inline="always", nogil=True, error_model="numpy")


@njit("float64(int64)", **_opts)
def pow2i(k: int) -> float:
    """2^k for an integer k in [-1022, 1023], built from its exponent bits."""
    return bits_f64((k + 1023) << 52)


@njit(**_inline)
def _expm1_bracket(r: float) -> float:
    """p with e^r - 1 = r + r^2·p, p = 1/2! + r/3! + ... + r^11/13!, for |r| <= ln2/2.

    Estrin's scheme (pairs, then powers r^2, r^4, r^8): a dependency chain of 4 FMAs
    instead of Horner's 12, so a vectorised loop is not latency-bound. No error-free
    step: inlined, it may take its caller's flags (exp_dd's and exp_neg's are strict).
    """
    r2 = r * r
    r4 = r2 * r2
    a0 = 0.5 + r * 0.16666666666666666
    a1 = 0.041666666666666664 + r * 0.008333333333333333
    a2 = 0.001388888888888889 + r * 0.0001984126984126984
    a3 = 2.48015873015873e-05 + r * 2.7557319223985893e-06
    a4 = 2.755731922398589e-07 + r * 2.505210838544172e-08
    a5 = 2.08767569878681e-09 + r * 1.6059043836821613e-10
    b0 = a0 + r2 * a1
    b1 = a2 + r2 * a3
    b2 = a4 + r2 * a5
    return (b0 + r4 * b1) + (r4 * r4) * b2


@njit("float64(float64, float64)", **_opts)
def exp_dd(x: float, dx: float) -> float:
    """e^(x + dx) for a double-double argument (|dx| <= ulp(x)), any float64 x.

    Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2 (dx joins r after the exact
    steps), then e^r - 1 by its Taylor series to degree 13 (truncation < 1e-17
    relative), evaluated by Estrin's scheme. 2^k is applied in two halves so that k down to -1076 (subnormal
    results) and up to 1024 (overflow to inf) are exact scalings and one rounding.
    """
    x = min(max(x, EXP_LO), EXP_HI)
    kf = np.floor(x * INV_LN2 + 0.5)
    k = np.int64(kf)
    r = ((x - kf * LN2_HI) - kf * LN2_LO) + dx
    em1 = r + (r * r) * _expm1_bracket(r)
    y = 1.0 + em1
    k1 = k >> 1
    return (y * pow2i(k1)) * pow2i(k - k1)


@njit("float64(float64)", **_opts)
def exp(x: float) -> float:
    """e^x for every float64 x, ±inf included (e^-inf = 0, e^inf = inf), within 1 ulp."""
    return exp_dd(x, 0.0)


# Round-to-nearest by adding 1.5·2^52: for |v| < 2^51, v + SHIFT lands in [2^52, 2^53),
# where the spacing is 1, and its low mantissa bits are the integer round(v).
SHIFT = 6755399441055744.0
# 2^(k+64) from those low bits: (bits << 52) keeps k's 12 low bits in the exponent field.
EXP_NEG_SCALE = (1023 + 64) << 52
TWO_M64 = 5.421010862427522e-20  # 2^-64


@njit("float64(float64)", **_opts)
def exp_neg(x: float) -> float:
    """e^x for x <= 0 (-inf included: e^-inf = 0), within 1 ulp; e^-|s| of softplus.

    exp's method with three savings that x <= 0 allows: k = round(x/ln2) comes from
    the shifter (x/ln2 + 1.5·2^52) rather than floor and a conversion, 2^(k+64) is
    built from the shifter's low bits (k >= -1076, so k+64 is a normal exponent), and
    y·2^(k+64) is exact, so the final ·2^-64 is the one rounding, exact for
    subnormal results too.
    """
    x = max(x, EXP_LO)
    z = x * INV_LN2 + SHIFT
    kf = z - SHIFT
    r = (x - kf * LN2_HI) - kf * LN2_LO
    y = 1.0 + (r + (r * r) * _expm1_bracket(r))
    return (y * bits_f64((f64_bits(z) << 52) + EXP_NEG_SCALE)) * TWO_M64


@njit("Tuple((float64, int64))(float64)", **_opts)
def _frexp_sqrt2(x: float) -> tuple[float, int]:
    """(m, e) with x = m·2^e and m in [sqrt(2)/2, sqrt(2)), for normal x > 0, read
    from the exponent bits (a halving of m when the mantissa is >= sqrt(2) is exact)."""
    bits = f64_bits(x)
    e = ((bits >> 52) & 0x7FF) - 1023
    m = bits_f64((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    big = m >= SQRT2
    return (m * 0.5 if big else m), (e + 1 if big else e)


@njit(**_inline)
def _log_poly(s: float, c: tuple) -> float:
    """R with log(1+f) = f - hfsq + s(hfsq + R), s = f/(2+f): R = z·(c0 + c1 z + ... +
    c6 z^6), z = s^2, a fit of (log((1+s)/(1-s)) - 2s)/s, as two chains in z^2.

    Pure products and sums (no error-free step), so it may be inlined with its caller's
    flags. Its error enters the result multiplied by s, far below an ulp of it.
    """
    z = s * s
    w = z * z
    t1 = w * (c[1] + w * (c[3] + w * c[5]))
    t2 = z * (c[0] + w * (c[2] + w * (c[4] + w * c[6])))
    return t2 + t1


@njit(**_inline)
def _log_poly_unit(s: float) -> float:
    """_log_poly's R for |s| <= 1/5 with the eight coefficients LU (z^8 the last term)."""
    z = s * s
    w = z * z
    t1 = w * (LU[1] + w * (LU[3] + w * (LU[5] + w * LU[7])))
    t2 = z * (LU[0] + w * (LU[2] + w * (LU[4] + w * LU[6])))
    return t2 + t1


@njit("UniTuple(float64, 2)(float64, float64, float64)", **_opts)
def _log_reduced(f: float, dk: float, c: float) -> tuple[float, float]:
    """dk·ln2 + log(1 + f + c) as (hi, lo), for 1 + f in [sqrt(2)/2, sqrt(2)) and a tiny
    c (the rounding error of the argument, for log1p).

    fdlibm's e_log.c core: log(1+f) = f - (hfsq - s(hfsq + R)), s = f/(2+f), R a
    minimax polynomial in s^2 (two chains in s^4); hi = dk·ln2_hi is exact for |dk| <
    2^11. log(1 + f + c) - log(1 + f) = c/(1 + f) + O(c^2), with 1/(1 + f) replaced by
    its series to f^4 (error f^5 |c|, far below an ulp) so that the only division is s.
    """
    corr = c * (1.0 - f * (1.0 - f * (1.0 - f * (1.0 - f))))
    s = f / (2.0 + f)
    R = _log_poly(s, LG)
    hfsq = 0.5 * f * f
    return dk * LN2_HI, -((hfsq - (s * (hfsq + R) + (dk * LN2_LO + corr))) - f)


@njit("UniTuple(float64, 2)(float64)", **_opts)
def log_split(x: float) -> tuple[float, float]:
    """log x as hi + lo, hi = e·ln2_hi exact, for x >= 0 (subnormals included).

    fdlibm's method: x = 2^e (1+f) with 1+f in [sqrt(2)/2, sqrt(2)),
    log(1+f) = f - (hfsq - s(hfsq + R)), s = f/(2+f), R a minimax polynomial in s^2.
    hi + lo is log x to within an ulp of lo (|lo| < 0.35 + e·2e-10), which is what
    q^gamma = e^(gamma log q) needs when |log q| is large. log 0 = (-inf, 0).
    """
    sub = x < TINY
    m, e = _frexp_sqrt2(x * TWO54 if sub else x)
    hi, lo = _log_reduced(m - 1.0, float(e - 54 if sub else e), 0.0)
    hi = -float("inf") if x == 0.0 else hi
    hi = float("inf") if x == float("inf") else hi
    lo = 0.0 if (x == 0.0 or x == float("inf")) else lo
    return hi, lo


@njit("float64(float64)", **_opts)
def log(x: float) -> float:
    """Natural log for x >= 0 (log 0 = -inf, log inf = inf), within 1 ulp."""
    hi, lo = log_split(x)
    return hi + lo


@njit("float64(float64, float64, float64)", **_strict)
def ratio_times(a: float, b: float, c: float) -> float:
    """(a / b) * c in this order: under fast-math it could become (a * c) / b, whose
    product underflows where the result does not (a, b subnormal; c tiny)."""
    return (a / b) * c


@njit("float64(float64, float64, float64)", **_strict)
def affine(y: float, a: float, b: float) -> float:
    """y*a + b rounded twice, as NumPy computes it: compiled without fast-math so that
    LLVM neither fuses it into an FMA nor reassociates (label smoothing must give the
    very labels that ``y*(1-ls) + ls/2`` gives in NumPy, PyTorch and Keras)."""
    return y * a + b


@njit("UniTuple(float64, 2)(float64)", **_opts)
def log1p_split(t: float) -> tuple[float, float]:
    """log(1 + t) for t >= -1, accurate for tiny t, with one division.

    u = 1 + t is rounded and c = t - (u - 1) is the rounding error (exact: Fast2Sum,
    valid for |t| <= 1 and for t > 1 when u's error is representable). With
    u = 2^e * (1 + f), log1p(t) = e ln2 + log(1 + f) + c 2^-e / (1 + f); the last term
    is tiny, so 1/(1 + f) is replaced by its series to f^4 (error f^5 |c|, far below
    an ulp) and the only division left is fdlibm's s = f / (2 + f).
    Returned as hi + lo with hi = e·ln2_hi exact (e is 0 or 1 for t in [0, 1]).
    """
    u = 1.0 + t
    big_t = t > 1.0
    # Fast2Sum needs the larger operand first.
    c = (1.0 - (u - t)) if big_t else (t - (u - 1.0))
    c = 0.0 if (u == 0.0 or u == float("inf")) else c
    m, e = _frexp_sqrt2(u)
    f = m - 1.0
    hi, lo = _log_reduced(f, float(e), c * pow2i(-min(max(e, -1022), 1022)))
    special = u == 0.0 or u == float("inf")
    hi = (-float("inf") if u == 0.0 else float("inf")) if special else hi
    return hi, (0.0 if special else lo)


@njit("float64(float64)", **_opts)
def log1p(t: float) -> float:
    """log(1 + t) for t >= -1, within 1 ulp (see log1p_split)."""
    hi, lo = log1p_split(t)
    return hi + lo


@njit("UniTuple(float64, 2)(float64)", **_opts)
def log1p_unit_split(t: float) -> tuple[float, float]:
    """log(1 + t) for t in [0, 1] (the e^-|s| of softplus) as hi + lo, hi = dk·ln2_hi.

    The reduction is exact, so no rounding error of 1 + t needs carrying: for t < 1/2,
    1 + f = 1 + t with f = t itself; for t >= 1/2, (1 + t)/2 = 1 + f with
    f = (t - 1)/2 in [-1/4, 0], where t - 1 is exact (Sterbenz) and so is the halving.
    Then fdlibm's core as in _log_reduced: log(1+f) = f - (hfsq - s(hfsq + R)),
    s = f/(2+f), now with |s| <= 1/5 and R refitted for that range (_log_poly_unit:
    one FMA more, where the saved steps were ten operations). Compared with rounding u = 1 + t
    and correcting by c/(1+f), this saves the Fast2Sum and the correction series.
    """
    big = t >= 0.5
    f = (t - 1.0) * 0.5 if big else t
    dk = 1.0 if big else 0.0
    s = f / (2.0 + f)
    R = _log_poly_unit(s)
    hfsq = 0.5 * f * f
    return dk * LN2_HI, -((hfsq - (s * (hfsq + R) + dk * LN2_LO)) - f)


@njit("float64(float64)", **_opts)
def log1p_unit(t: float) -> float:
    """log(1 + t) for t in [0, 1], within 1 ulp."""
    hi, lo = log1p_unit_split(t)
    return hi + lo


@njit(**_inline)
def softplus_parts(s: float, t: float) -> tuple[float, float, float]:
    """(softplus(s), softplus(-s), L) given t = e^-|s| (``exp_neg(-abs(s))``), with
    L = log1p(t).

    softplus(±s) = max(±s, 0) + L: both terms are non-negative, so there is no
    cancellation, and e^-|s| <= 1 never overflows. ±inf give (inf, 0) or (0, inf).
    One exp and one log1p serve both signs. t is an argument so that a kernel can
    compute it in a loop of its own (see _drivers).
    """
    lp = log1p_unit(t)
    # one compare and two selects: max(±s, 0) would add NaN-propagating compares, and
    # a NaN s is reported as invalid input whatever its loss
    pos = s > 0.0
    return (s + lp if pos else lp), (lp if pos else lp - s), lp


@njit(**_inline)
def sigmoid_pair(s: float, t: float) -> tuple[float, float]:
    """(σ(s), σ(-s)) given t = e^-|s|, each computed without cancellation.

    σ(|s|) = 1/(1+t) and σ(-|s|) = t/(1+t); the small one is never formed as 1 - σ,
    so σ(37) - 1 comes out as -σ(-37) = -8.53e-17 rather than 0.
    """
    d = 1.0 / (1.0 + t)
    big = d
    small = t * d
    pos = s >= 0.0
    return (big if pos else small), (small if pos else big)


@njit("float64(float64, float64, float64)", **_opts)
def pow_split(gamma: float, a: float, b: float) -> float:
    """e^(gamma * (a + b)) for a large exact part a <= 0 and a small part b.

    gamma * a is split into its rounded value and its exact error (an FMA), so the
    result does not inherit |gamma * a| ulps of argument rounding: a power q^gamma
    with log q = a + b stays within a few ulp even when q is tiny. The parts are added
    into one double-double argument (TwoSum) before the one exp: two exps multiplied
    would give 0 * inf = NaN once gamma * a is below -745 and gamma * b above 709.
    """
    p = gamma * a
    big = abs(p) == np.inf
    err = 0.0 if big else fma(gamma, a, -p)
    c = err + gamma * b
    x = p + c
    bp = x - p
    dx = (p - (x - bp)) + (c - bp)  # TwoSum: x + dx == p + c exactly
    return exp_dd(p if big else x, 0.0 if (big or abs(x) == np.inf) else dx)


@njit("float64(float64, float64, float64, float64)", **_opts)
def pow_times(gamma: float, a: float, b: float, v: float) -> float:
    """v · e^(gamma * (a + b)) for finite v >= 0, as pow_split with v's binary exponent
    moved into the exponential: v·q^γ stays exact where q^γ alone underflows but v is
    large (a focal loss with |s| = 1e300: CE = 3e299 times q^γ = 1e-400).

    v = 2m·2^(e-1) (m in [sqrt(2)/2, sqrt(2)), from the bits; subnormal v scaled
    first; e - 1 so that e^x stays below the overflow threshold when v is near the
    largest float and q^γ = 1); the argument γ(a+b) + (e-1)·ln2 is carried as a
    double-double ((e-1)·ln2_hi exact, the rest TwoSummed) into one exp, then times 2m.
    """
    sub = v < TINY
    m, e = _frexp_sqrt2(v * TWO54 if sub else v)
    ef = float(e - 55 if sub else e - 1)
    p = gamma * a
    big = abs(p) == np.inf
    err = 0.0 if big else fma(gamma, a, -p)
    k = ef * LN2_HI
    x1 = p + k
    bp = x1 - p
    e1 = (p - (x1 - bp)) + (k - bp)  # TwoSum: x1 + e1 == p + k
    c = ((err + gamma * b) + ef * LN2_LO) + e1
    x = x1 + c
    bp = x - x1
    dx = (x1 - (x - bp)) + (c - bp)
    r = (2.0 * m) * exp_dd(x1 if big else x, 0.0 if (big or abs(x) == np.inf) else dx)
    return 0.0 if v == 0.0 else r


@njit("UniTuple(float64, 2)(float64, float64)", **_strict)
def two_sum(a: float, b: float) -> tuple[float, float]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum, any order of
    magnitudes). Strict: a caller's reassoc would simplify e to 0. With an infinite
    operand e is NaN; callers drop it once the sum is infinite."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


@njit("UniTuple(float64, 2)(float64, float64)", **_strict)
def two_prod(a: float, b: float) -> tuple[float, float]:
    """(p, e) with p = fl(a·b) and p + e = a·b exactly (while a·b neither overflows nor
    underflows); e = 0 when p is not finite."""
    p = a * b
    return p, (fma(a, b, -p) if abs(p) < np.inf else 0.0)


@njit("float64(float64, float64, float64, float64)", **_strict)
def dd_div(ahi: float, alo: float, bhi: float, blo: float) -> float:
    """(ahi + alo) / (bhi + blo) for double-doubles, correctly rounded but in cases
    within 2^-100 of a tie: q = ahi/bhi, then one correction by the exact residual
    a - q·b (the product's error by an FMA; ahi - q·bhi is exact by Sterbenz).
    A mean computed so is never further from the true mean than any float, hence
    always within [min, max] of the values averaged. Non-finite q is returned as is.
    Strict: contracting ahi - q·bhi into an FMA would count the product's error twice.
    Near the top of the range q·bhi may round past the largest float (a sum of 1.8e308
    over 6 gave inf - inf: a NaN mean): such a dividend is scaled by 2^-4 first, which
    changes no rounding, and the quotient scaled back exactly.
    """
    scale = 1.0
    if abs(ahi) > 2.0**1020:
        ahi *= 0.0625
        alo *= 0.0625
        scale = 16.0
    q = ahi / bhi
    p = q * bhi
    r = ((((ahi - p) - fma(q, bhi, -p)) + alo) - q * blo) / bhi
    return scale * (q + r) if (abs(q) < np.inf and q == q and bhi != 0.0) else scale * q


@njit("float64(float64, float64, float64, float64)", **_strict)
def dot2(c1: float, a: float, c0: float, b: float) -> float:
    """c1*a + c0*b as written, where a zero coefficient contributes exactly 0 (even if
    a or b is inf).

    The label-weighted sums of the losses (y·softplus(-s) + (1-y)·softplus(s), the
    focal loss's α y + (1-α)(1-y), ...) go through here: compiled strict, they cannot
    be rewritten by a caller's fast-math flags, which may expand (1-α)(1-y) into
    (1-y) - α(1-y) and regroup it with α y: for α = 1, y = 1e-20 that gives 0.
    """
    return (0.0 if c1 == 0.0 else c1 * a) + (0.0 if c0 == 0.0 else c0 * b)


@njit("float64(float64, float64)", **_strict)
def mul(a: float, b: float) -> float:
    """a * b that a fast-math caller cannot distribute or regroup with its neighbours."""
    return a * b


@njit("float64(float64, float64, float64, float64)", **_strict)
def mul4(a: float, b: float, c: float, d: float) -> float:
    """(a * b) * (c * d) in this order, for callers that pair the factors so that
    neither pair can overflow or underflow where the product does not (fast-math
    may otherwise reassociate a product of four into one that does)."""
    return (a * b) * (c * d)


@njit("float64(float64, float64, float64)", **_opts)
def sigmoid_power(s: float, a: float, b: float) -> float:
    """σ(s)^a · σ(-s)^b for small integers a, b >= 0 (a + b <= 3).

    It is e^X with X = -(c|s| + (a+b)·log1p(e^-|s|)), c = a for s < 0 else b. X is
    carried as a double-double: c|s| split exactly by an FMA, log1p as e·ln2_hi
    (exact, also times a+b) plus a small part, the big parts added by TwoSum; then one
    exp of the double-double. About 1.5 ulp, where a product of separately rounded
    sigmoids gives 4 to 5.
    """
    c = a if s < 0.0 else b
    n = a + b
    p = 0.0 if c == 0.0 else c * -abs(s)  # c = 0 with s = ±inf: no 0·inf
    e1 = 0.0 if (c == 0.0 or abs(p) == np.inf) else fma(c, -abs(s), -p)
    l_hi, l_lo = log1p_unit_split(exp_neg(-abs(s)))
    big = l_hi + l_lo  # Fast2Sum (|l_hi| >= |l_lo| or l_hi = 0): big + e_l == l_hi + l_lo
    e_l = (l_hi - big) + l_lo
    q = -n * big
    e3 = fma(-n, big, -q)
    x = p + q
    # TwoSum: x + e2 == p + q exactly
    bp = x - p
    e2 = (p - (x - bp)) + (q - bp)
    e2 = 0.0 if abs(x) == np.inf else e2
    return exp_dd(x, (e1 + e2) + (e3 - n * e_l))
