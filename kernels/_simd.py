"""Compensated sums written as vector IR.

LLVM vectorises a plain reduction (with ``reassoc``) but not an error-free one: TwoSum
carries each partial sum into the next step, and a scalar TwoSum loop costs ~1 ns per
element where the whole loss costs ~2.5. So the loops are emitted directly as
``<8 x double>`` IR, in two forms:

- ``dd_sum``: TwoSum in two accumulator pairs (16 lanes), folded by scalar TwoSums at
  the end (~0.25 ns per element) — any summands (weights, weighted losses, logreg).
- ``dd_sum_nonneg``: for a block of losses whose maximum the kernel already has, Rump,
  Ogita and Oishi's ExtractVector split (``q = (sigma + x) - sigma``, exact in any order,
  and the small residuals) — five vector ops per 8 values where TwoSum takes seven.

The IR carries no fast-math flags, and Numba applies a function's flags to every
instruction in it, so the intrinsics are only ever called from the strict wrappers in
this module, which LLVM inlines into the kernels with the flags intact (as ``_math``
does for its error-free steps).

Accuracy: hi + lo is the exact sum to ~2^-100 relative for non-negative summands (to
~2^-100 of Σ|x| in general; ~2^-60 for the split), so ``fl(hi + lo)`` is the correctly
rounded sum but for near-ties, whatever the order of the summands; deterministic.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._math import f64_bits, pow2i

VL = 8  # doubles per vector
NACC = 2  # accumulator pairs: two vectors in flight hide the add latency
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_DBL = ir.DoubleType()
_VEC = ir.VectorType(_DBL, VL)


def _loop(builder, start, stop, step, init, body):
    """Emit ``for i in range(start, stop, step)`` (stop - start a multiple of step,
    possibly 0) carrying the values ``init``: body(i, values) -> new values. Returns
    the values after the loop."""
    pre = builder.block
    loop = builder.append_basic_block("loop")
    after = builder.append_basic_block("loop.after")
    builder.cbranch(builder.icmp_signed("<", start, stop), loop, after)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    vals = [builder.phi(v.type) for v in init]
    i.add_incoming(start, pre)
    for phi, v in zip(vals, init):
        phi.add_incoming(v, pre)
    new = body(i, vals)
    nxt = builder.add(i, ir.Constant(_I64, step))
    end = builder.block
    i.add_incoming(nxt, end)
    for phi, v in zip(vals, new):
        phi.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", nxt, stop), loop, after)
    builder.position_at_end(after)
    out = []
    for v0, v in zip(init, new):
        phi = builder.phi(v0.type)
        phi.add_incoming(v0, pre)
        phi.add_incoming(v, end)
        out.append(phi)
    return out


def _two_sum(builder, a, b):
    s = builder.fadd(a, b)
    bp = builder.fsub(s, a)
    return s, builder.fadd(builder.fsub(a, builder.fsub(s, bp)), builder.fsub(b, bp))


def _splat(builder, x):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, VL), [0] * VL))


def _lane(builder, v, j: int):
    return builder.extract_element(v, ir.Constant(_I32, j))


def _emit_sum(builder, base, count, scale):
    """(hi, lo) of base[0:count]·scale by TwoSum lanes."""
    step = NACC * VL
    vscale = _splat(builder, scale)
    zero = ir.Constant(_VEC, [0.0] * VL)

    def body(i, vals):
        out = list(vals)
        for a in range(NACC):
            ptr = builder.gep(base, [builder.add(i, ir.Constant(_I64, a * VL))])
            x = builder.fmul(builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=8), vscale)
            s, e = _two_sum(builder, vals[2 * a], x)
            out[2 * a] = s
            out[2 * a + 1] = builder.fadd(vals[2 * a + 1], e)
        return out

    vec_end = builder.mul(builder.sdiv(count, ir.Constant(_I64, step)), ir.Constant(_I64, step))
    vals = _loop(builder, ir.Constant(_I64, 0), vec_end, step, [zero] * (2 * NACC), body)
    hi = ir.Constant(_DBL, 0.0)
    lo = ir.Constant(_DBL, 0.0)
    for a in range(NACC):
        for j in range(VL):
            hi, e = _two_sum(builder, hi, _lane(builder, vals[2 * a], j))
            lo = builder.fadd(lo, builder.fadd(e, _lane(builder, vals[2 * a + 1], j)))

    def tail_body(i, vals):
        x = builder.fmul(builder.load(builder.gep(base, [i])), scale)
        s, e = _two_sum(builder, vals[0], x)
        return [s, builder.fadd(vals[1], e)]

    return _loop(builder, vec_end, count, 1, [hi, lo], tail_body)


@intrinsic
def _sum_lanes(typingctx, arr, scale, start, count):  # noqa: ARG001
    """(hi, lo) of Σ arr[start:start+count]·scale."""
    sig = types.UniTuple(types.float64, 2)(arr, types.float64, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        vals = _emit_sum(builder, builder.gep(ary.data, [args[2]]), args[3], args[1])
        return context.make_tuple(builder, signature.return_type, vals)

    return sig, codegen


@intrinsic
def _split_lanes(typingctx, arr, sigma, count):  # noqa: ARG001
    """(Q, R) = (Σ q, Σ r) over arr[0:count], q = (sigma + x) - sigma and r = x - q
    (Rump, Ogita and Oishi's ExtractVector): with sigma a power of two at least
    2·count·max|x|, every q is a multiple of ulp(sigma) and every partial sum of them
    below 2·sigma, so Q is exact in any order; each |r| <= ulp(sigma)/2, so R's own
    rounding is ~2^-60 of the sum. Five vector ops per 8 values where TwoSum takes seven."""
    sig = types.UniTuple(types.float64, 2)(arr, types.float64, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        base, sigma, count = ary.data, args[1], args[2]
        vs = _splat(builder, sigma)
        zero = ir.Constant(_VEC, [0.0] * VL)

        def split(x, s):
            q = builder.fsub(builder.fadd(s, x), s)
            return q, builder.fsub(x, q)

        def body(i, vals):
            out = list(vals)
            for a in range(NACC):
                ptr = builder.gep(base, [builder.add(i, ir.Constant(_I64, a * VL))])
                q, r = split(builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=8), vs)
                out[2 * a] = builder.fadd(vals[2 * a], q)
                out[2 * a + 1] = builder.fadd(vals[2 * a + 1], r)
            return out

        step = NACC * VL
        vec_end = builder.mul(builder.sdiv(count, ir.Constant(_I64, step)), ir.Constant(_I64, step))
        vals = _loop(builder, ir.Constant(_I64, 0), vec_end, step, [zero] * (2 * NACC), body)
        qv, rv = vals[0], vals[1]
        for a in range(1, NACC):
            qv, rv = builder.fadd(qv, vals[2 * a]), builder.fadd(rv, vals[2 * a + 1])
        Q, R = _lane(builder, qv, 0), _lane(builder, rv, 0)
        for j in range(1, VL):
            Q, R = builder.fadd(Q, _lane(builder, qv, j)), builder.fadd(R, _lane(builder, rv, j))

        def tail(i, vals):
            q, r = split(builder.load(builder.gep(base, [i])), sigma)
            return [builder.fadd(vals[0], q), builder.fadd(vals[1], r)]

        return context.make_tuple(builder, signature.return_type, _loop(builder, vec_end, count, 1, [Q, R], tail))

    return sig, codegen


_ARRAYS = ("Array(float64, 1, 'C')", "Array(float64, 1, 'C', readonly=True)")
_strict = dict(cache=True, nogil=True, error_model="numpy")


@njit([f"UniTuple(float64, 2)({a}, float64, intp, intp)" for a in _ARRAYS], **_strict)
def dd_sum(x, scale: float, start: int, count: int) -> tuple[float, float]:
    """Σ x[start:start+count]·scale (scale a power of two, so the products are exact)
    as a double-double (hi, lo). An infinite sum has lo = 0 (its TwoSum errors are
    NaN); a NaN summand makes hi NaN."""
    hi, lo = _sum_lanes(x, scale, start, count)
    return hi, (lo if abs(hi) < np.inf else 0.0)


@njit("UniTuple(float64, 2)(Array(float64, 1, 'C'), intp, float64)", **_strict)
def dd_sum_nonneg(x, count: int, xmax: float) -> tuple[float, float]:
    """Σ x[0:count] of values in [0, xmax] as a double-double (hi, lo), as ``dd_sum`` but
    for a known bound: the ExtractVector split (``_split_lanes``), with sigma =
    2^(e + b) for xmax < 2^e and 2^b >= 2·count. A NaN or infinite bound, or one so
    large that sigma would overflow, takes ``dd_sum``."""
    e = ((f64_bits(xmax) >> 52) & 0x7FF) - 1022  # xmax < 2^e (xmax = 0: e = -1022)
    b = 1
    while (1 << b) < 2 * count:
        b += 1
    if not (xmax < np.inf) or e + b > 1023:
        return dd_sum(x, 1.0, 0, count)
    Q, R = _split_lanes(x, pow2i(max(e + b, -1022)), count)
    hi = Q + R  # TwoSum: Q carries the bulk exactly, R the rest
    bp = hi - Q
    return hi, (Q - (hi - bp)) + (R - bp)
