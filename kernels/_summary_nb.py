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
        for r in range(rows):
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
