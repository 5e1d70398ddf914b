"""Mergeable loss summaries: ``summarize`` and ``LossSummary`` (its state, precision
and references are in ``_summary_state``'s docstring, shared with the client).

``summarize`` computes the per-element losses with the kernels (the same checks and
errors as ``loss``), then one compiled pass accumulates per group the count, the
double-double sums Σl, Σw·l and Σw, min, max, the number of infinite losses and the
two-pass M2; the KLL sketches take each group's losses as one contiguous slice.
"""

from __future__ import annotations

import numpy as np
from datasketches import kll_doubles_sketch

from . import _summary_nb as NB
from ._checks import _as_float32, _flag
from ._planner import _plan
from ._summary_state import KLL_K, KLL_RANK_ERROR, REDUCTIONS, LossSummary, merge_groups
from .errors import InputError

__all__ = ["LossSummary", "summarize", "merge_groups", "KLL_K", "KLL_RANK_ERROR", "REDUCTIONS"]


def _factorize(by, n_rows: int) -> tuple[list, np.ndarray]:
    """(keys, index per row into keys) for a 1-D column of integer or string keys."""
    keys = np.asarray(by)
    if keys.ndim != 1 or keys.shape[0] != n_rows:
        raise InputError("by", f"must have one key per row ({n_rows}), got shape {keys.shape}")
    kind = keys.dtype.kind
    if kind == "O":
        for i, v in enumerate(keys.tolist()):
            if isinstance(v, bool) or not isinstance(v, (int, str, np.integer, np.str_)):
                raise InputError("by", f"= {v!r:.40} is not an integer or string key", (i,))
    elif kind not in "iuUS":
        raise InputError("by", f"must hold integer or string keys, got dtype {keys.dtype}")
    if kind in "iu" and keys.size:
        lo, hi = int(keys.min()), int(keys.max())
        if hi - lo <= 4 * keys.size + 1024:  # a dense range: counted in O(n), no sort
            shifted = (keys - keys.min()).astype(np.int64)
            present = np.flatnonzero(np.bincount(shifted, minlength=hi - lo + 1))
            remap = np.zeros(hi - lo + 1, dtype=np.int64)
            remap[present] = np.arange(present.size)
            return [lo + int(x) for x in present.tolist()], remap[shifted]
    try:
        uniq, inv = np.unique(keys, return_inverse=True)
    except TypeError:
        raise InputError("by", "mixes integer and string keys") from None
    return uniq.tolist(), np.ascontiguousarray(inv.reshape(-1), dtype=np.int64)


def summary_of(losses: np.ndarray, w: np.ndarray, k: int, by=None, sketch: bool = True,
               kll_k: int = KLL_K) -> LossSummary | dict[object, LossSummary]:
    """Summaries of flat float64 ``losses`` (rows of ``k``) with row weights ``w``
    (empty: none); ``by``: a key per row, or None for one summary; ``sketch``: build
    the KLL sketches."""
    rows = losses.size // k
    if by is None:
        keys, groups = [None], np.empty(0, dtype=np.int64)
    else:
        keys, groups = _factorize(by, rows)
    acc, cnt = NB.new_tables(len(keys))
    NB.accumulate(losses, w, k, groups, acc, cnt)
    if not sketch:
        slices = [None] * len(keys)
    elif by is None:
        slices = [losses]
    else:  # each group's losses as one slice: one sketch update per group
        bounds = np.concatenate(([0], np.cumsum(cnt[:, NB.C_COUNT]))).astype(np.int64)
        ordered = NB.grouped(losses, k, groups, bounds)
        slices = [ordered[bounds[g]:bounds[g + 1]] for g in range(len(keys))]
    out = []
    for g, part in enumerate(slices):
        sk = None
        if part is not None:
            sk = kll_doubles_sketch(kll_k)
            sk.update(part)
        a, c = acc[g].tolist(), cnt[g].tolist()
        out.append(LossSummary(c[NB.C_COUNT], c[NB.C_INF], (a[NB.A_SUM], a[NB.A_SUM_LO]),
                               (a[NB.A_WSUM], a[NB.A_WSUM_LO]), (a[NB.A_W], a[NB.A_W_LO]),
                               a[NB.A_M2], a[NB.A_MIN], a[NB.A_MAX], sk))
    return out[0] if by is None else dict(zip(keys, out))


def summarize(predictions, labels, *, input: str = "logits", loss: str = "cross_entropy",
              sample_weight=None, pos_weight=None, label_smoothing: float = 0.0,
              eps: float | None = None, gamma: float = 2.0, alpha: float | None = None,
              dtype: str = "float64", by=None,
              sketch: bool = True) -> LossSummary | dict[object, LossSummary]:
    """A mergeable summary of the per-element losses of ``predictions`` against
    ``labels``: the options and errors of ``loss``.

    Args:
      predictions, labels, input, loss, sample_weight, pos_weight, label_smoothing,
        eps, gamma, alpha, dtype: as ``loss``.
      by: None, or a 1-D column of integer or string keys, one per row: one summary
        per key, in one pass.
      sketch: False leaves the KLL quantile sketch out (its update is most of the
        cost: ~30 ns per element against ~7 for the rest); ``quantile`` then raises.

    Returns:
      A ``LossSummary`` (``by=None``) or ``{key: LossSummary}``. ``s.loss`` is
      ``loss(..., reduction="mean")`` and ``s.reduce("sum")`` is ``reduction="sum"``,
      each within 1 ulp of the exact value; ``s.merge(t)`` summarises both parts.

    Example:
      >>> import numpy as np
      >>> from lossd.kernels import summarize
      >>> a = summarize(np.array([0.0, 2.0]), np.array([1.0, 0.0]))
      >>> b = summarize(np.array([-1.0]), np.array([1.0]))
      >>> s = a.merge(b)
      >>> s.count, round(s.loss, 6)
      (3, 1.377779)
    """
    if dtype != "float64":
        predictions, labels, sample_weight = _as_float32(dtype, predictions, labels, sample_weight)
    # "sum": the weights as given (a mean would scale them); no per-element array is built
    plan = _plan(predictions, labels, input, loss, "sum", sample_weight, pos_weight,
                 label_smoothing, eps, gamma, alpha, ())
    from .api import _run  # api imports this module (loss(..., summary=True))
    return _run(plan, grad=False, summary=True, by=by, sketch=_flag("sketch", sketch))[4]
