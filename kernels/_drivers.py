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

# Numba's cache is invalidated only by the *kernel's* file; the element and math code it
# inlines lives elsewhere, so their hash is part of every kernel's closure (cache key).
SOURCE_STAMP = hashlib.sha256(b"".join(
    (Path(__file__).parent / f).read_bytes() for f in ("_math.py", "_elements.py", "_drivers.py")
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


# Columns of the per-block statistics table.
S_COUNT, S_SUM, S_M2, S_MIN, S_MAX, S_WSUM, S_BAD = range(7)
N_STATS = 7
# Layout of the float64 parameter vector.
# Label smoothing arrives as keep = 1 - ls and half = ls / 2, both rounded in Python:
# computed in the kernel, fast-math could fold them into y - ls·(y - 1/2).
P_LA, P_LB, P_KEEP, P_HALF, P_DISCRETE, P_GAMMA, P_ALPHA, P_LO, P_HI = range(9)
N_PARAMS = 9


def make_block(kind: int, grad: int):
    """Build the serial block function for element ``kind``; ``grad`` adds gradients.

    ``block(s, y, w, pwt, k, prm, scale, out, gout, table, b, i0, i1)`` processes the
    flat elements [i0, i1) of s, y (whole rows), writes losses to ``out`` (if not
    empty) and scaled, weighted gradients to ``gout`` (if ``grad``), and its statistics
    to ``table[b]``. w: N row weights or empty; pwt: pos_weight tiled over a block;
    prm: the N_PARAMS vector.
    """
    KIND, GRAD, STAMP = kind, grad, SOURCE_STAMP
    prob_input = 1 if kind in E.PROB_KINDS else 0
    t_first = 1 if kind in (E.CE_LOGITS, E.CE_LOGITS_PLAIN, E.FOCAL_LOGITS) else 0
    PLAIN = 1 if kind == E.CE_LOGITS_PLAIN else 0

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    def block(s, y, w, pwt, k, prm, scale, out, gout, table, b, i0, i1):
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
        if t_first:
            # t = e^-|s| in a loop of its own (into buf, which the next loop overwrites):
            # with exp and log1p in one loop body, the dependency chain per element is
            # too long for the out-of-order window (~30% slower).
            # In chunks, each preceded by prefetches of s and y PF_AHEAD elements on.
            for c in range(0, m, PF_CHUNK):
                for q in range(i0 + c + PF_AHEAD, i0 + c + PF_AHEAD + PF_CHUNK, PF_STEP):
                    prefetch(s, q)
                    prefetch(y, q)
                sc = sv[c:c + PF_CHUNK]  # views: indices from 0 need no wraparound checks
                tc = buf[c:c + PF_CHUNK]
                for j in range(sc.size):
                    tc[j] = M.exp_neg(-abs(np.float64(sc[j])))
        if PLAIN:
            # labels as given (no transform, pos_weight 1), soft labels in [0, 1]
            for j in range(m):
                si = np.float64(sv[j])
                yi = np.float64(yv[j])
                l, g = E.ce_logits_plain(si, yi, buf[j])
                buf[j] = l
                if GRAD:
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
        acc = 0.0
        for j in range(m):
            acc += buf[j]
        mean = acc / m
        if PLAIN and acc != acc:  # losses are never NaN for valid input, nor -inf
            bad += 1
        m2 = 0.0
        # min/max on the bit patterns: every loss is >= 0 (abs maps -0.0 to 0), where
        # the int64 order is the float order, and integer min/max reductions vectorise
        # (float ones do not without `nnan`, which would also drop the NaN checks).
        bmin = INF_BITS
        bmax = 0
        for j in range(m):
            d = buf[j] - mean
            m2 += d * d
            bits = M.f64_bits(buf[j]) & ABS_MASK
            bmin = bits if bits < bmin else bmin
            bmax = bits if bits > bmax else bmax
        lmin = M.bits_f64(bmin)
        lmax = M.bits_f64(bmax)
        if lmax == np.inf:
            m2 = np.inf
        wsum = acc
        if w.size > 0:
            # the weighted sum and the gradient scaling in separate loops: a float sum
            # in a loop that also stores could change order with a runtime alias check
            wsum = 0.0
            for r in range(i0 // k, (i1 + k - 1) // k):
                wr = w[r]
                rs = 0.0
                for c in range(r * k - i0, r * k - i0 + k):
                    rs += buf[c]
                wsum += 0.0 if wr == 0.0 else wr * rs
            if GRAD:
                for r in range(i0 // k, (i1 + k - 1) // k):
                    wr = w[r]
                    for c in range(r * k - i0, r * k - i0 + k):
                        gv[c] = 0.0 if wr == 0.0 else gv[c] * wr
        table[b, S_COUNT] = m
        table[b, S_SUM] = acc
        table[b, S_M2] = m2
        table[b, S_MIN] = lmin
        table[b, S_MAX] = lmax
        table[b, S_WSUM] = wsum
        table[b, S_BAD] = bad

    return block


@njit(cache=True, nogil=True, parallel=True)
def run_blocks(block, s, y, w, pwt, k, prm, scale, out, gout, table):
    """Run ``block`` (a first-class function, so this one driver serves every kind and
    caches) over all blocks of ``pwt.size`` elements, in parallel."""
    n = s.size
    bsize = pwt.size
    for b in prange(table.shape[0]):
        bi = np.int64(b)
        block(s, y, w, pwt, k, prm, scale, out, gout, table, bi, bi * bsize, min(n, (bi + 1) * bsize))


def make_logreg_block():
    """Build the block function of ``logreg_grad`` (a closure only for the cache stamp).

    ``block(X, y, coef, b0, w, gpart, spart, b, r0, r1)`` handles rows [r0, r1) in three
    vectorised steps: z = X·coef + b0 per row (rows stay in L2), the loss and
    r = w·(σ(z) - y) for all rows at once (the exp/log1p loop vectorises across rows),
    then gpart[b] = Σ r·x. X is read from memory once.
    spart[b] = (Σ w·l, Σ r, Σ w, invalid count).
    """
    STAMP = SOURCE_STAMP

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    def block(X, y, coef, b0, w, gpart, spart, b, r0, r1):
        _ = STAMP
        d = X.shape[1]
        m = r1 - r0
        z = np.empty(m)
        for i in range(m):
            xi = X[r0 + i]
            acc = 0.0
            for j in range(d):
                acc += np.float64(xi[j]) * coef[j]
            z[i] = acc + b0
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
            wi = w[r0 + i] if weighted else 1.0
            lw[i] = 0.0 if wi == 0.0 else wi * l
            z[i] = 0.0 if wi == 0.0 else wi * g
            # invalid whatever the weight: NaN in z (features) or a label not in {0, 1}
            bad += np.int64((zi != zi) | ((yi != 0.0) & (yi != 1.0)))
        lsum = 0.0
        for i in range(m):
            lsum += lw[i]
        rsum = 0.0
        for i in range(m):
            rsum += z[i]
        wsum = float(m)
        if weighted:
            wsum = 0.0
            for i in range(r0, r1):
                wsum += w[i]
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
        spart[b, 1] = rsum
        spart[b, 2] = wsum
        spart[b, 3] = bad

    return block


@njit(cache=True, nogil=True, parallel=True)
def run_logreg(block, X, y, coef, b0, w, gpart, spart, rows):
    """Run the logreg ``block`` over all blocks of ``rows`` rows, in parallel."""
    n = X.shape[0]
    for b in prange(gpart.shape[0]):
        bi = np.int64(b)
        block(X, y, coef, b0, w, gpart, spart, bi, bi * rows, min(n, (bi + 1) * rows))


def _logreg_types(dtype: np.dtype) -> tuple:
    ft = types.float32 if dtype == np.float32 else types.float64
    ro1 = types.Array(types.float64, 1, "C", readonly=True)
    return (types.Array(ft, 2, "C", readonly=True), ro1, ro1, types.float64, ro1,
            types.Array(types.float64, 2, "C"), types.Array(types.float64, 2, "C"))


def logreg_block_signature(dtype: np.dtype):
    return types.void(*_logreg_types(dtype), types.int64, types.int64, types.int64)


def logreg_driver_signature(dtype: np.dtype) -> tuple:
    return (types.FunctionType(logreg_block_signature(dtype)), *_logreg_types(dtype), types.int64)


@njit(cache=True, nogil=True, error_model="numpy")
def merge_blocks(table):
    """Combine per-block rows: Neumaier sums, Chan's pairwise M2, min, max, bad count.

    Returns (count, sum, mean, M2, min, max, wsum, bad).
    """
    count = 0.0
    mean = 0.0
    m2 = 0.0
    s = 0.0
    sc = 0.0
    ws = 0.0
    wc = 0.0
    lmin = np.inf
    lmax = -np.inf
    bad = 0.0
    for b in range(table.shape[0]):
        nb = table[b, S_COUNT]
        bs = table[b, S_SUM]
        # Neumaier-compensated running sums
        t = s + bs
        sc += (s - t) + bs if abs(s) >= abs(bs) else (bs - t) + s
        s = t
        bw = table[b, S_WSUM]
        t = ws + bw
        wc += (ws - t) + bw if abs(ws) >= abs(bw) else (bw - t) + ws
        ws = t
        bmean = bs / nb
        tot = count + nb
        if np.isfinite(bmean) and np.isfinite(mean):
            delta = bmean - mean
            mean += delta * (nb / tot)
            m2 += table[b, S_M2] + delta * delta * (count * nb / tot)
        else:
            mean = np.inf
            m2 = np.inf
        count = tot
        lmin = min(lmin, table[b, S_MIN])
        lmax = max(lmax, table[b, S_MAX])
        bad += table[b, S_BAD]
    total = s + sc if np.isfinite(s) else s
    wtotal = ws + wc if np.isfinite(ws) else ws
    return count, total, total / count, m2, lmin, lmax, wtotal, bad


def _array_types(dtype: np.dtype) -> tuple:
    ft = types.float32 if dtype == np.float32 else types.float64
    ro = lambda t: types.Array(t, 1, "C", readonly=True)  # noqa: E731
    rw = types.Array(types.float64, 1, "C")
    return (ro(ft), ro(ft), ro(types.float64), ro(types.float64), types.int64,
            ro(types.float64), types.float64, rw, rw, types.Array(types.float64, 2, "C"))


def block_signature(dtype: np.dtype):
    """The one signature each block function is compiled for: read-only C arrays
    (writable arrays convert to them, so frombuffer inputs and ordinary arrays share
    code), then the block index and range."""
    return types.void(*_array_types(dtype), types.int64, types.int64, types.int64)


def driver_signature(dtype: np.dtype) -> tuple:
    return (types.FunctionType(block_signature(dtype)), *_array_types(dtype))
