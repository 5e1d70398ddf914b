"""Block-parallel drivers: one fused pass computes losses, gradients, weighted sums,
statistics and an input-validity count.

The input (N or N×K, C order) is walked flat in blocks of B elements, B a multiple of
K so that a block holds whole rows. Per block, one vectorised loop computes each
element's loss (and gradient) into a block buffer (for logits after a loop that puts
e^-|s| there and prefetches the inputs) — the output array itself for
``reduction="none"``, a per-block scratch otherwise, so ``mean`` allocates nothing of
size n — and a second loop over that cache-resident buffer gives the block's exact
two-pass M2, min and max. Blocks are merged with Chan's formula. Kernels are built
by a factory whose closure holds only integers, so Numba folds the element switch at
compile time and the on-disk cache keys stay stable across processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import _elements as E
from . import _math as M
from . import _simd as S

# Numba's cache is invalidated only by the *kernel's* file; the element and math code it
# inlines lives elsewhere, so their hash is part of every kernel's closure (cache key):
# every function here that calls into another file is built by a factory for that.
SOURCE_STAMP = hashlib.sha256(b"".join(
    (Path(__file__).parent / f).read_bytes()
    for f in ("_math.py", "_simd.py", "_elements.py", "_drivers.py")
)).hexdigest()[:16]

INF_BITS = 0x7FF0000000000000
ABS_MASK = 0x7FFFFFFFFFFFFFFF
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}  # reassoc: vectorised reductions

# Software prefetch: the arithmetic-bound element loops issue loads too slowly for the
# hardware prefetchers to hide DRAM latency (one thread, CE loss at n = 1e7: 2.8 ns per
# element against 2.1 from cache; 2.5 with these prefetches). 128 to 1024 ahead measure
# about the same.
PF_CHUNK = 64  # elements per vectorised chunk of the first loop
PF_AHEAD = 256  # elements ahead of the chunk that is computed
PF_STEP = 8  # one prefetch per 64-byte line of float64 (float32: two per line)


@intrinsic
def prefetch(typingctx, arr, idx):  # noqa: ARG001
    """Hint the cache line of arr[idx] into L2 (llvm.prefetch, i.e. prefetcht1/t2; it
    never faults, so idx may lie past the end of arr)."""
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        # read, locality 1 (L2: y is read a loop later; L1 would evict it), data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 1), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


# Columns of the per-block statistics table, the first ten in the order of merge_blocks'
# result, so that a lone block's row is that result as it stands. Sums are double-doubles:
# S_SUM the rounded sum and S_SUM_LO what it leaves out (likewise S_WSUM); S_MEAN and
# S_WMEAN are the block's own means (the final ones when it is the only block); S_NAN
# counts NaN losses or gradients that valid input produced (a bug).
(S_COUNT, S_SUM, S_MEAN, S_M2, S_MIN, S_MAX, S_WSUM, S_WMEAN, S_BAD, S_NAN, S_SUM_LO,
 S_WSUM_LO) = range(12)
N_STATS = 12

# Layout of the float64 parameter vector.
# Label smoothing arrives as keep = 1 - ls and half = ls / 2, both rounded in Python:
# computed in the kernel, fast-math could fold them into y - ls·(y - 1/2).
P_LA, P_LB, P_KEEP, P_HALF, P_DISCRETE, P_GAMMA, P_ALPHA, P_LO, P_HI = range(9)
N_PARAMS = 9


# The named steps of a block, inlined into it at Numba-IR level (as the element
# functions are): they take the block's fast-math flags and compile to the same code
# as when they were written out in it.
_step = dict(inline="always", nogil=True, error_model="numpy")


@njit(**_step)
def _exp_neg_abs_prefetched(s, y, sv, buf, i0, m):
    """buf[j] = e^-|s_j| for the block's m elements, in a loop of its own: with exp and
    log1p in one loop body the dependency chain per element is too long for the
    out-of-order window (~30% slower). In chunks, each preceded by prefetches of s
    and y PF_AHEAD elements on."""
    for c in range(0, m, PF_CHUNK):
        for q in range(i0 + c + PF_AHEAD, i0 + c + PF_AHEAD + PF_CHUNK, PF_STEP):
            prefetch(s, q)
            prefetch(y, q)
        sc = sv[c:c + PF_CHUNK]  # views: indices from 0 need no wraparound checks
        tc = buf[c:c + PF_CHUNK]
        for j in range(sc.size):
            tc[j] = M.exp_neg(-abs(np.float64(sc[j])))


@njit(**_step)
def _min_max(buf, m):
    """The smallest and largest loss of buf[:m], compared as bit patterns: every loss
    is >= 0 (abs maps -0.0 to 0), where the int64 order is the float order, and
    integer min/max reductions vectorise (float ones do not without `nnan`). NaN bits
    are above inf's: a NaN loss makes the maximum NaN."""
    bmin = INF_BITS
    bmax = 0
    for j in range(m):
        lbits = M.f64_bits(buf[j]) & ABS_MASK
        bmin = lbits if lbits < bmin else bmin
        bmax = lbits if lbits > bmax else bmax
    return M.bits_f64(bmin), M.bits_f64(bmax)


@njit(**_step)
def _sum_sq_dev(buf, m, mean):
    """Σ (l - mean)², the second pass of the two-pass M2."""
    m2 = 0.0
    for j in range(m):
        d = buf[j] - mean
        m2 += d * d
    return m2


@njit(**_step)
def _weighted_sum(buf, w, wscale, k, i0, i1, m):
    """Σ w·l over the block as Dot2: the rounded products summed by dd_sum, their
    exact errors (TwoProduct) summed plainly; a zero weight removes its element, an
    infinite loss too. Returns the double-double (hi, lo)."""
    wl = np.empty(m)
    pe = np.empty(m)
    if k == 1:
        wv = w[i0:i1]
        for j in range(m):
            wj = wv[j] * wscale
            prod, err = M.two_prod(wj, buf[j])
            wl[j] = 0.0 if wj == 0.0 else prod
            pe[j] = 0.0 if wj == 0.0 else err
    else:
        for r in range(i0 // k, (i1 + k - 1) // k):
            wr = w[r] * wscale
            for c in range(r * k - i0, r * k - i0 + k):
                prod, err = M.two_prod(wr, buf[c])
                wl[c] = 0.0 if wr == 0.0 else prod
                pe[c] = 0.0 if wr == 0.0 else err
    wsum, wsum_lo = S.dd_sum(wl, 1.0, 0, m)
    esum = 0.0
    for j in range(m):
        esum += pe[j]
    return wsum, (wsum_lo + esum if abs(wsum) < np.inf else 0.0)


@njit(**_step)
def _weight_gradients(gv, w, wscale, k, i0, i1, m):
    """Each gradient times its row's weight (a zero weight gives 0, even beside inf)."""
    if k == 1:
        wv = w[i0:i1]
        for j in range(m):
            wj = wv[j] * wscale
            gv[j] = 0.0 if wj == 0.0 else gv[j] * wj
    else:
        for r in range(i0 // k, (i1 + k - 1) // k):
            wr = w[r] * wscale
            for c in range(r * k - i0, r * k - i0 + k):
                gv[c] = 0.0 if wr == 0.0 else gv[c] * wr


def make_block(kind: int, grad: int):
    """Build the serial block function for element ``kind``; ``grad`` adds gradients.

    ``block(s, y, w, pwt, k, prm, scale, wscale, wden_hi, wden_lo, out, gout, table, b, i0, i1)``
    processes the flat elements [i0, i1) of s, y (whole rows), writes losses to
    ``out`` (if not empty) and scaled, weighted gradients to ``gout`` (if ``grad``),
    and its statistics to ``table[b]``. w: N row weights or empty, each used as
    w·wscale (a power of two that keeps Σ w·l and Σ w in range); wden_hi + wden_lo: the
    weighted mean's denominator K·Σ w·wscale; pwt: pos_weight tiled over a block;
    prm: the N_PARAMS vector.
    """
    KIND, GRAD, STAMP = kind, grad, SOURCE_STAMP
    prob_input = 1 if kind in E.PROB_KINDS else 0
    t_first = 1 if kind in (E.CE_LOGITS, E.CE_LOGITS_PLAIN, E.FOCAL_LOGITS) else 0
    PLAIN = 1 if kind == E.CE_LOGITS_PLAIN else 0

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    def block(s, y, w, pwt, k, prm, scale, wscale, wden_hi, wden_lo, out, gout, table, b, i0, i1):
        _ = STAMP  # in the closure, hence in the cache key
        la = prm[P_LA]
        lb = prm[P_LB]
        keep = prm[P_KEEP]
        half_ls = prm[P_HALF]
        # y01·(1 - y01) is >= 0 exactly for y01 in [0, 1] (NaN fails every compare)
        # and 0 exactly for y01 in {0, 1}: one product bounds both label checks.
        vmax = 0.0 if prm[P_DISCRETE] != 0.0 else np.inf
        gamma = prm[P_GAMMA]
        alpha = prm[P_ALPHA]
        lo = prm[P_LO]
        hi = prm[P_HI]
        m = i1 - i0
        # Views rather than s[i0 + j]: LLVM vectorises the offset-free loop better.
        sv = s[i0:i1]
        yv = y[i0:i1]
        gv = gout[i0:i1]
        buf = out[i0:i1] if out.size > 0 else np.empty(m)
        bad = 0
        nan = 0
        if t_first:
            _exp_neg_abs_prefetched(s, y, sv, buf, i0, m)  # buf: e^-|s|, overwritten next
        if PLAIN:
            # labels as given (no transform, pos_weight 1), soft labels in [0, 1]
            for j in range(m):
                si = np.float64(sv[j])
                yi = np.float64(yv[j])
                l, g = E.ce_logits_plain(si, yi, buf[j])
                buf[j] = l
                if GRAD:  # (1-y)σ(s) - yσ(-s) of finite parts: NaN only from NaN input
                    gv[j] = g * scale
                # a NaN in s or y makes l NaN, which the block's sum reveals below
                vy = yi * (1.0 - yi)
                bad += np.int64(not (vy >= 0.0))
        else:
            for j in range(m):
                si = np.float64(sv[j])
                y01 = np.float64(yv[j]) * la + lb
                yi = M.affine(y01, keep, half_ls)
                if KIND == E.CE_LOGITS:
                    l, g = E.ce_logits(si, yi, pwt[j], buf[j])
                elif KIND == E.CE_PROB:
                    l, g = E.ce_prob(si, yi, pwt[j], lo, hi)
                elif KIND == E.FOCAL_LOGITS:
                    l, g = E.focal_logits(si, yi, gamma, alpha, buf[j])
                elif KIND == E.FOCAL_PROB:
                    l, g = E.focal_prob(si, yi, gamma, alpha, lo, hi)
                elif KIND == E.SE_LOGITS:
                    l, g = E.se_logits(si, yi)
                elif KIND == E.SE_PROB:
                    l, g = E.se_prob(si, yi)
                else:
                    l, g = E.margin_loss(KIND, si, yi)
                buf[j] = l
                if GRAD:
                    gv[j] = g * scale
                    nan += np.int64(g != g)
                if prob_input:
                    vs = si * (1.0 - si)
                    bad_s = not (vs >= 0.0)
                else:
                    bad_s = si != si
                vy = y01 * (1.0 - y01)
                bad += np.int64(bad_s | (not ((vy >= 0.0) & (vy <= vmax))))
        # Sums run over the float64 buffer, not in the element loop: the order of a
        # vectorised reduction follows the loop's vector shape, which differs between
        # float32 and float64 inputs; over buf it is one and the same for both.
        # Compensated: the mean of equal losses is that loss, and no sum is less
        # accurate than NumPy's pairwise one. min/max: a pass of its own over the block
        # in cache costs less than keeping them in the element loops.
        lmin, lmax = _min_max(buf, m)
        acc, acc_lo = S.dd_sum_nonneg(buf, m, lmax)
        if acc != acc:  # losses are never NaN for valid input, nor -inf
            if PLAIN:  # a NaN in s or y always makes l NaN: the input check of this kind
                bad += 1
            else:
                nan += 1
        mean = M.dd_div(acc, acc_lo, float(m), 0.0)
        m2 = np.inf if lmax == np.inf else _sum_sq_dev(buf, m, mean)
        wsum, wsum_lo = acc, acc_lo
        if w.size > 0:
            wsum, wsum_lo = _weighted_sum(buf, w, wscale, k, i0, i1, m)
            if GRAD:
                _weight_gradients(gv, w, wscale, k, i0, i1, m)
        total, total_lo = M.two_sum(acc, acc_lo)  # the rounded sum, and what it leaves out
        wtotal, wtotal_lo = M.two_sum(wsum, wsum_lo)
        table[b, S_COUNT] = m
        table[b, S_SUM] = total
        table[b, S_SUM_LO] = total_lo if abs(total) < np.inf else 0.0
        table[b, S_M2] = m2
        table[b, S_MIN] = lmin
        table[b, S_MAX] = lmax
        table[b, S_WSUM] = wtotal
        table[b, S_WSUM_LO] = wtotal_lo if abs(wtotal) < np.inf else 0.0
        table[b, S_BAD] = bad
        table[b, S_NAN] = nan
        table[b, S_MEAN] = mean
        table[b, S_WMEAN] = M.dd_div(wsum, wsum_lo, wden_hi, wden_lo)

    return block


@njit(cache=True, nogil=True, parallel=True)
def run_blocks(block, s, y, w, pwt, k, prm, scale, wscale, wden_hi, wden_lo, out, gout, table):
    """Run ``block`` (a first-class function, so this one driver serves every kind and
    caches) over all blocks of ``pwt.size`` elements, in parallel."""
    n = s.size
    bsize = pwt.size
    for b in prange(table.shape[0]):
        bi = np.int64(b)
        block(s, y, w, pwt, k, prm, scale, wscale, wden_hi, wden_lo, out, gout, table, bi, bi * bsize,
              min(n, (bi + 1) * bsize))


def make_logreg_block():
    """Build the block function of ``logreg_grad`` (a closure only for the cache stamp).

    ``block(X, y, coef, b0, w, wscale, gpart, spart, b, r0, r1)`` handles rows
    [r0, r1) in three vectorised steps: z = X·coef + b0 per row (rows stay in L2), the
    loss and r = w·(σ(z) - y) for all rows at once (the exp/log1p loop vectorises
    across rows), then gpart[b] = Σ r·x. X is read from memory once. Weights are used
    as w·wscale (see weight_prep).
    spart[b] = (Σ w·l as hi, lo; Σ r; invalid count; NaN count).
    """
    STAMP = SOURCE_STAMP

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    def block(X, y, coef, b0, w, wscale, gpart, spart, b, r0, r1):
        _ = STAMP
        d = X.shape[1]
        m = r1 - r0
        z = np.empty(m)
        xbad = 0
        for i in range(m):
            xi = X[r0 + i]
            acc = 0.0
            for j in range(d):
                acc += np.float64(xi[j]) * coef[j]
            z[i] = acc + b0
            if not (abs(z[i]) < np.inf):  # a non-finite feature makes z so (coef is finite)
                for j in range(d):
                    xbad += np.int64(not (abs(np.float64(xi[j])) < np.inf))
        # Element loop: stores only (and an exact integer count). Float sums run in
        # store-free loops below: a loop that also stores gets a runtime alias check
        # whose scalar fallback would sum in another order, and results would vary by
        # an ulp from call to call.
        lw = np.empty(m)
        bad = 0
        weighted = w.size > 0
        yv = y[r0:r1]
        for i in range(m):  # e^-|z| in a loop of its own, as in make_block
            lw[i] = M.exp_neg(-abs(z[i]))
        for i in range(m):
            yi = yv[i]
            zi = z[i]
            l, g = E.ce_logits(zi, yi, 1.0, lw[i])
            wi = w[r0 + i] * wscale if weighted else 1.0
            lw[i] = 0.0 if wi == 0.0 else wi * l
            z[i] = 0.0 if wi == 0.0 else wi * g
            # invalid whatever the weight: NaN in z or a label not in {0, 1}
            bad += np.int64((zi != zi) | ((yi != 0.0) & (yi != 1.0)))
        lsum, lsum_lo = S.dd_sum(lw, 1.0, 0, m)
        rsum = 0.0
        nan = 0
        for i in range(m):
            rsum += z[i]
            nan += np.int64(z[i] != z[i])
        gacc = gpart[b]
        for j in range(d):
            gacc[j] = 0.0
        # X's rows of the next block (most likely this thread's next) are prefetched
        # meanwhile: without it, DRAM sits idle during everything but the z pass.
        xf = X.reshape(-1)
        for i in range(m):
            xi = X[r0 + i]
            r = z[i]
            for q in range((r1 + i) * d, (r1 + i + 1) * d, PF_STEP):
                prefetch(xf, q)
            for j in range(d):
                gacc[j] += r * np.float64(xi[j])
        spart[b, 0] = lsum
        spart[b, 1] = lsum_lo
        spart[b, 2] = rsum
        spart[b, 3] = bad + xbad
        spart[b, 4] = nan + np.int64(lsum != lsum)

    return block


@njit(cache=True, nogil=True, parallel=True)
def run_logreg(block, X, y, coef, b0, w, wscale, gpart, spart, rows):
    """Run the logreg ``block`` over all blocks of ``rows`` rows, in parallel."""
    n = X.shape[0]
    for b in prange(gpart.shape[0]):
        bi = np.int64(b)
        block(X, y, coef, b0, w, wscale, gpart, spart, bi, bi * rows, min(n, (bi + 1) * rows))


def _logreg_types(dtype: np.dtype) -> tuple:
    ft = types.float32 if dtype == np.float32 else types.float64
    ro1 = types.Array(types.float64, 1, "C", readonly=True)
    return (types.Array(ft, 2, "C", readonly=True), ro1, ro1, types.float64, ro1, types.float64,
            types.Array(types.float64, 2, "C"), types.Array(types.float64, 2, "C"))


def logreg_block_signature(dtype: np.dtype):
    return types.void(*_logreg_types(dtype), types.int64, types.int64, types.int64)


def logreg_driver_signature(dtype: np.dtype) -> tuple:
    return (types.FunctionType(logreg_block_signature(dtype)), *_logreg_types(dtype), types.int64)


def _build_dd_total():
    STAMP = SOURCE_STAMP

    @njit(cache=True, nogil=True, error_model="numpy")
    def dd_total(hi, lo) -> tuple[float, float]:
        """Σ (hi[i] + lo[i]) of per-block double-doubles, as (hi, lo)."""
        _ = STAMP
        th = 0.0
        tl = 0.0
        for i in range(hi.size):
            th, e = M.two_sum(th, hi[i])
            tl += e + lo[i]
        return th, (tl if np.isfinite(th) else 0.0)

    return dd_total


dd_total = _build_dd_total()


def _build_merge_blocks():
    STAMP = SOURCE_STAMP

    @njit(cache=True, nogil=True, error_model="numpy")
    def merge_blocks(table, wden_hi, wden_lo):
        """Combine per-block rows: double-double sums (the blocks' his by TwoSum, their los
        added), Chan's pairwise M2, min, max, bad and NaN counts; the means by dd_div, the
        weighted one over wden_hi + wden_lo.

        Returns (count, sum, mean, M2, min, max, wsum, wmean, bad, nan).
        """
        _ = STAMP
        count = 0.0
        cmean = 0.0
        m2 = 0.0
        sh = 0.0
        sl = 0.0
        wh = 0.0
        wl = 0.0
        lmin = np.inf
        lmax = -np.inf
        bad = 0.0
        nan = 0.0
        for b in range(table.shape[0]):
            nb = table[b, S_COUNT]
            sh, e = M.two_sum(sh, table[b, S_SUM])
            sl += e + table[b, S_SUM_LO]
            wh, e = M.two_sum(wh, table[b, S_WSUM])
            wl += e + table[b, S_WSUM_LO]
            bmean = table[b, S_MEAN]
            tot = count + nb
            if np.isfinite(bmean) and np.isfinite(cmean):
                delta = bmean - cmean
                cmean += delta * (nb / tot)
                m2 += table[b, S_M2] + delta * delta * (count * nb / tot)
            else:
                cmean = np.inf
                m2 = np.inf
            count = tot
            lmin = min(lmin, table[b, S_MIN])
            lmax = max(lmax, table[b, S_MAX])
            bad += table[b, S_BAD]
            nan += table[b, S_NAN]
        sl = sl if np.isfinite(sh) else 0.0
        wl = wl if np.isfinite(wh) else 0.0
        return (count, sh + sl, M.dd_div(sh, sl, count, 0.0), m2, lmin, lmax, wh + wl,
                M.dd_div(wh, wl, wden_hi, wden_lo), bad, nan)

    return merge_blocks


merge_blocks = _build_merge_blocks()


def _build_weight_prep():
    STAMP = SOURCE_STAMP

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    def weight_prep(w, normalize: bool) -> tuple[int, float, float, float]:
        """One look at the row weights: (invalid count, wscale, Σ w·wscale as hi, lo).

        Invalid = NaN, negative or infinite. With ``normalize`` (a weighted mean), wscale
        is the power of two that brings the largest weight into [1, 2) (capped at 2^1000
        for subnormal weights): the mean is then the same for any common scale of the
        weights (bit for bit for powers of two), and neither Σ w nor Σ w·l can overflow
        or lose a tiny weight's worth to underflow. Otherwise wscale = 1.
        """
        _ = STAMP
        n = w.size
        bad = 0
        bmax = 0
        for i in range(n):
            v = w[i]
            bad += np.int64(not ((v >= 0.0) & (v <= 1.7976931348623157e308)))
            bits = M.f64_bits(v) & ABS_MASK
            bmax = bits if bits > bmax else bmax
        if bad > 0:
            return bad, 1.0, 0.0, 0.0
        wscale = 1.0
        if normalize and bmax > 0:
            e = (bmax >> 52) - 1023  # the largest weight's binary exponent (-1023: subnormal)
            wscale = M.pow2i(min(max(-e, -1022), 1000))
        hi, lo = S.dd_sum(w, wscale, 0, n)
        return 0, wscale, hi, lo

    return weight_prep


weight_prep = _build_weight_prep()


def _array_types(dtype: np.dtype) -> tuple:
    ft = types.float32 if dtype == np.float32 else types.float64
    ro = lambda t: types.Array(t, 1, "C", readonly=True)  # noqa: E731
    rw = types.Array(types.float64, 1, "C")
    return (ro(ft), ro(ft), ro(types.float64), ro(types.float64), types.int64,
            ro(types.float64), types.float64, types.float64, types.float64, types.float64, rw, rw,
            types.Array(types.float64, 2, "C"))


def block_signature(dtype: np.dtype):
    """The one signature each block function is compiled for: read-only C arrays
    (writable arrays convert to them, so frombuffer inputs and ordinary arrays share
    code), then the block index and range."""
    return types.void(*_array_types(dtype), types.int64, types.int64, types.int64)


def driver_signature(dtype: np.dtype) -> tuple:
    return (types.FunctionType(block_signature(dtype)), *_array_types(dtype))
