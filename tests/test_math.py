"""The vectorisable elementary functions of kernels._math against mpmath (120 bits)."""

import mpmath
import numpy as np
import pytest
from numba import njit

from lossd import kernels  # noqa: F401  (configures numba first)
from lossd.kernels import _math as M

mpmath.mp.prec = 120
RNG = np.random.default_rng(20261129)


def ulps(got: float, ref) -> float:
    """|got - ref| in units of the spacing of the float64 nearest ref (2^-1074 at the bottom)."""
    r = float(ref)
    if np.isinf(r):
        return 0.0 if got == r else np.inf
    spacing = np.spacing(abs(r)) if r != 0.0 else 5e-324
    return float(abs(mpmath.mpf(got) - ref) / spacing)


def _vec(fn):
    @njit
    def apply(a):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = fn(a[i])
        return out

    return apply


def _exact(f, x):
    if np.isinf(x):
        return None
    return f(mpmath.mpf(float(x)))


EXP_POINTS = np.concatenate([
    RNG.uniform(-50, 50, 2000), RNG.uniform(-746, 710, 2000),
    -np.logspace(-300, np.log10(745.1), 300), np.logspace(-300, np.log10(709.7), 300),
    [0.0, -0.0, 709.78, 709.79, -708.39, -708.4, -744.4, -745.1, -745.14, -745.2, -800.0,
     800.0, 1e-320, -1e-320, 37.0, -37.0, 40.0, -40.0],
])


def test_exp_within_one_ulp_everywhere_including_subnormal_results():
    got = _vec(M.exp)(EXP_POINTS)
    worst = max(ulps(g, mpmath.exp(mpmath.mpf(float(x)))) for x, g in zip(EXP_POINTS, got))
    assert worst <= 1.0, worst


def test_exp_limits():
    got = _vec(M.exp)(np.array([np.inf, -np.inf, 710.0, 1e308, -746.0, -1e308]))
    assert list(got) == [np.inf, 0.0, np.inf, np.inf, 0.0, 0.0]
    # smallest subnormal: e^-744.44 rounds to 2^-1074
    assert _vec(M.exp)(np.array([-744.44]))[0] == 5e-324



def test_exp_neg_within_one_ulp_on_its_domain_including_subnormal_results():
    x = -np.abs(EXP_POINTS)
    got = _vec(M.exp_neg)(x)
    worst = max(ulps(g, mpmath.exp(mpmath.mpf(float(v)))) for v, g in zip(x, got))
    assert worst <= 1.0, worst
    lim = _vec(M.exp_neg)(np.array([-np.inf, -746.0, -1e308, -744.44, 0.0, -0.0]))
    assert list(lim) == [0.0, 0.0, 0.0, 5e-324, 1.0, 1.0]

LOG_POINTS = np.concatenate([
    RNG.uniform(0, 1, 2000), RNG.uniform(0.5, 2, 1000), np.logspace(-323, 308, 2000),
    [5e-324, 1e-310, 2.2250738585072014e-308, 0.5, 1.0, 2.0, 1 - 2**-53, 1 + 2**-52, 1.7976931348623157e308],
])


def test_log_within_one_ulp_including_subnormal_inputs():
    got = _vec(M.log)(LOG_POINTS)
    worst = max(ulps(g, mpmath.log(mpmath.mpf(float(x)))) for x, g in zip(LOG_POINTS, got))
    assert worst <= 1.0, worst


def test_log_limits():
    assert list(_vec(M.log)(np.array([0.0, np.inf, 1.0]))) == [-np.inf, np.inf, 0.0]


LOG1P_POINTS = np.concatenate([
    RNG.uniform(-1, 1, 2000), np.logspace(-320, 308, 2000), -np.logspace(-320, -1e-16, 1000),
    [0.0, 5e-324, 2**-53, 2**-52, 1e-17, 0.414, 0.4142135623730951, 1.0, 3.0, -0.5, -1 + 2**-53],
])


def test_log1p_within_one_ulp():
    got = _vec(M.log1p)(LOG1P_POINTS)
    worst = max(ulps(g, mpmath.log1p(mpmath.mpf(float(x)))) for x, g in zip(LOG1P_POINTS, got))
    assert worst <= 1.0, worst


def test_log1p_limits_and_tiny_arguments_are_exact():
    got = _vec(M.log1p)(np.array([-1.0, np.inf, 1e-300, 5e-324, -1e-300]))
    assert list(got) == [-np.inf, np.inf, 1e-300, 5e-324, -1e-300]


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.7])
def test_pow_split_keeps_precision_for_tiny_powers(gamma):
    @njit
    def f(g, a, b):
        return M.pow_split(g, a, b)

    for s in (5.0, 37.0, 300.0, 700.0):
        # q = σ(-s): log q = -s - log1p(e^-s), split as (-s) + (-log1p(e^-s))
        b = -float(mpmath.log1p(mpmath.exp(-s)))
        ref = mpmath.power(1 / (1 + mpmath.exp(mpmath.mpf(s))), gamma)
        assert ulps(f(gamma, -s, b), ref) <= 3.0, (gamma, s)


@pytest.mark.parametrize("a,b", [(2, 0), (0, 2), (2, 1), (1, 2), (1, 1)])
def test_sigmoid_power_within_two_ulp(a, b):
    @njit
    def f(s, a, b):
        out = np.empty_like(s)
        for i in range(s.size):
            out[i] = M.sigmoid_power(s[i], a, b)
        return out

    s = np.concatenate([RNG.uniform(-5, 5, 600), RNG.uniform(-800, 800, 400), [0.0, 37.0, -37.0, -745.0, 745.0]])
    got = f(s, float(a), float(b))
    worst = 0.0
    for x, v in zip(s, got):
        X = mpmath.mpf(float(x))
        ref = (1 / (1 + mpmath.exp(-X))) ** a * (1 / (1 + mpmath.exp(X))) ** b
        worst = max(worst, ulps(v, ref))
    assert worst <= 2.0, worst
    inf = f(np.array([np.inf, -np.inf]), float(a), float(b))
    assert list(inf) == [float(b == 0), float(a == 0)]


def test_log1p_unit_within_one_ulp_on_its_domain():
    t = np.concatenate([RNG.uniform(0, 1, 2000), np.logspace(-320, 0, 1500),
                        [0.0, 1.0, 0.41421356237309503, 0.4142135623730951, 2**-53]])
    got = _vec(M.log1p_unit)(t)
    worst = max(ulps(g, mpmath.log1p(mpmath.mpf(float(x)))) for x, g in zip(t, got))
    assert worst <= 1.0, worst
