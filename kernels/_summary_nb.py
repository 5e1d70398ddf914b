"""The compiled pass of ``summarize``: per-group count, double-double sums, min, max,
infinite-loss count and the two-pass M2, over losses already computed by the kernels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from . import _math as M

# Numba's cache key is this file only: _math's hash rides in the closure (as _drivers does).
_STAMP = hashlib.sha256(b"".join(
    (Path(__file__).parent / f).read_bytes() for f in ("_math.py", "_summary_nb.py"))).hexdigest()[:16]

# Columns of the float table (per group) and of the integer table.
(A_SUM, A_SUM_LO, A_WSUM, A_WSUM_LO, A_W, A_W_LO, A_M2, A_MIN, A_MAX) = range(9)
N_ACC = 9
(C_COUNT, C_INF, C_WINF) = range(3)
N_CNT = 3


def new_tables(ngroups: int) -> tuple[np.ndarray, np.ndarray]:
    acc = np.zeros((ngroups, N_ACC))
    acc[:, A_MIN] = np.inf
    acc[:, A_MAX] = -np.inf
    return acc, np.zeros((ngroups, N_CNT), dtype=np.int64)


def _build_flat():
    STAMP = _STAMP

    @njit(cache=True, nogil=True, error_model="numpy")
    def flat_sums(losses, acc, cnt):
        """The first pass of ``accumulate`` for one group without weights, into acc[0] and
        cnt[0]: four independent TwoSum chains (one chain is bound by its add latency,
        ~146 Melem/s), joined by TwoSum at the end, so the pair is as exact as one chain's."""
        _ = STAMP
        n = losses.size
        h0 = h1 = h2 = h3 = 0.0
        l0 = l1 = l2 = l3 = 0.0
        lo_min, hi_max = np.inf, -np.inf
        ninf = 0
        i = 0
        while i + 4 <= n:
            x0, x1, x2, x3 = losses[i], losses[i + 1], losses[i + 2], losses[i + 3]
            lo_min = min(lo_min, min(min(x0, x1), min(x2, x3)))
            hi_max = max(hi_max, max(max(x0, x1), max(x2, x3)))
            if x0 == np.inf or x1 == np.inf or x2 == np.inf or x3 == np.inf:
                ninf += (x0 == np.inf) + (x1 == np.inf) + (x2 == np.inf) + (x3 == np.inf)
                x0 = 0.0 if x0 == np.inf else x0
                x1 = 0.0 if x1 == np.inf else x1
                x2 = 0.0 if x2 == np.inf else x2
                x3 = 0.0 if x3 == np.inf else x3
            h0, e = M.two_sum(h0, x0)
            l0 += e
            h1, e = M.two_sum(h1, x1)
            l1 += e
            h2, e = M.two_sum(h2, x2)
            l2 += e
            h3, e = M.two_sum(h3, x3)
            l3 += e
            i += 4
        while i < n:
            x = losses[i]
            lo_min = min(lo_min, x)
            hi_max = max(hi_max, x)
            if x == np.inf:
                ninf += 1
            else:
                h0, e = M.two_sum(h0, x)
                l0 += e
            i += 1
        hi, lo = h0, l0
        for h, l in ((h1, l1), (h2, l2), (h3, l3)):
            hi, e = M.two_sum(hi, h)
            lo += e + l
        acc[0, A_SUM] = hi
        acc[0, A_SUM_LO] = lo
        acc[0, A_MIN] = min(acc[0, A_MIN], lo_min)
        acc[0, A_MAX] = max(acc[0, A_MAX], hi_max)
        cnt[0, C_COUNT] += n
        cnt[0, C_INF] += ninf
        cnt[0, C_WINF] += ninf

    @njit(cache=True, nogil=True, error_model="numpy")
    def flat_m2(losses, mean):
        """Σ(l - mean)² in four chains (finite losses only)."""
        _ = STAMP
        n = losses.size
        m0 = m1 = m2 = m3 = 0.0
        i = 0
        while i + 4 <= n:
            d0, d1 = losses[i] - mean, losses[i + 1] - mean
            d2, d3 = losses[i + 2] - mean, losses[i + 3] - mean
            m0 += d0 * d0
            m1 += d1 * d1
            m2 += d2 * d2
            m3 += d3 * d3
            i += 4
        while i < n:
            d = losses[i] - mean
            m0 += d * d
            i += 1
        return (m0 + m1) + (m2 + m3)

    return flat_sums, flat_m2


_flat_sums, _flat_m2 = _build_flat()


def _build_accumulate():
    STAMP = _STAMP

    @njit(cache=True, nogil=True, error_model="numpy")
    def accumulate(losses, w, k, groups, acc, cnt):
        """Fill acc/cnt (from new_tables) for the flat ``losses`` of rows of ``k``
        elements; ``w``: row weights or empty, ``groups``: a group index per row or
        empty (one group). Strict IEEE (no fast-math): TwoSum's error term must not be
        simplified away. Infinite losses stay out of the sums (counted in C_INF, and
        in C_WINF when their weight is not 0), so the finite part stays exact."""
        _ = STAMP
        rows = losses.size // k
        weighted = w.size > 0
        grouped = groups.size > 0
        flat = not weighted and not grouped
        if flat:
            _flat_sums(losses, acc, cnt)
        for r in range(0 if flat else rows):
            g = groups[r] if grouped else 0
            wr = w[r] if weighted else 1.0
            for i in range(r * k, r * k + k):
                x = losses[i]
                cnt[g, C_COUNT] += 1
                if x < acc[g, A_MIN]:
                    acc[g, A_MIN] = x
                if x > acc[g, A_MAX]:
                    acc[g, A_MAX] = x
                if weighted:
                    hi, e = M.two_sum(acc[g, A_W], wr)
                    acc[g, A_W] = hi
                    acc[g, A_W_LO] += e
                if x == np.inf:
                    cnt[g, C_INF] += 1
                    cnt[g, C_WINF] += np.int64(wr != 0.0)
                    continue
                hi, e = M.two_sum(acc[g, A_SUM], x)
                acc[g, A_SUM] = hi
                acc[g, A_SUM_LO] += e
                if weighted and wr != 0.0:
                    p, pe = M.two_prod(wr, x)
                    hi, e = M.two_sum(acc[g, A_WSUM], p)
                    acc[g, A_WSUM] = hi
                    acc[g, A_WSUM_LO] += e + pe
        # Renormalise each pair to hi = fl(hi + lo); an overflowed sum keeps lo = 0.
        ngroups = acc.shape[0]
        means = np.zeros(ngroups)
        for g in range(ngroups):
            if not weighted:
                acc[g, A_WSUM] = acc[g, A_SUM]
                acc[g, A_WSUM_LO] = acc[g, A_SUM_LO]
                acc[g, A_W] = float(cnt[g, C_COUNT])
            for c in (A_SUM, A_WSUM, A_W):
                if abs(acc[g, c]) < np.inf:
                    acc[g, c], acc[g, c + 1] = M.two_sum(acc[g, c], acc[g, c + 1])
                else:
                    acc[g, c + 1] = 0.0
            if cnt[g, C_INF] > 0 or not abs(acc[g, A_SUM]) < np.inf:
                acc[g, A_SUM] = np.inf
                acc[g, A_SUM_LO] = 0.0
                acc[g, A_M2] = np.inf
            elif cnt[g, C_COUNT] > 0:
                means[g] = M.dd_div(acc[g, A_SUM], acc[g, A_SUM_LO], float(cnt[g, C_COUNT]), 0.0)
            if cnt[g, C_WINF] > 0:
                acc[g, A_WSUM] = np.inf
                acc[g, A_WSUM_LO] = 0.0
        # Second pass: M2 about each finite group's mean.
        if flat and acc[0, A_M2] != np.inf:
            acc[0, A_M2] += _flat_m2(losses, means[0])
            return
        for r in range(rows):
            g = groups[r] if grouped else 0
            if acc[g, A_M2] == np.inf:
                continue
            mean = means[g]
            m2 = 0.0
            for i in range(r * k, r * k + k):
                d = losses[i] - mean
                m2 += d * d
            acc[g, A_M2] += m2

    return accumulate


accumulate = _build_accumulate()


def _build_grouped():
    STAMP = _STAMP

    @njit(cache=True, nogil=True)
    def grouped(losses, k, groups, starts):
        """The losses reordered group by group (a counting sort: O(n), stable, so each
        group's losses keep their order); group g at [starts[g], starts[g + 1])."""
        _ = STAMP
        pos = starts[:-1].copy()
        out = np.empty(losses.size)
        for r in range(losses.size // k):
            g = groups[r]
            p = pos[g]
            for c in range(k):
                out[p + c] = losses[r * k + c]
            pos[g] = p + k
        return out

    return grouped


grouped = _build_grouped()
