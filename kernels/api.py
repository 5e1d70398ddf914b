"""The public ``loss`` and ``grad``: plan the call, run the compiled blocks, build the result.

Argument checks live in _checks, planning in _planner, compile caches in _compile, the
process-wide settings in runtime, ``logreg_grad`` in logreg.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from . import _drivers as D
from . import _math as M
from . import runtime
from ._checks import _as_float32, _first_bad, _flag, _float32_result, _quantile_key
from ._compile import _block, _block_pointer, _compiled, _driver
from ._planner import PARALLEL_MIN, _Plan, _plan
from .errors import KernelError
from .results import GradResult, LossResult
from .summary import summary_of

# Kept importable from here: service/codec_oip.py, tests and older callers use these.
from ._checks import float32_values  # noqa: F401
from ._planner import INPUTS, LOSSES, REDUCTIONS  # noqa: F401
from .logreg import logreg_grad  # noqa: F401
from .results import ParamGrad  # noqa: F401

_NO_OUTPUT = np.empty(0, dtype=np.float64)  # size 0: the kernels never write it


def _single_block(table: np.ndarray) -> list:
    """merge_blocks' (count, sum, mean, M2, min, max, wsum, wmean, bad, nan) for a
    one-row table, without a compiled call (every serial call without pos_weight is one
    block, and a block finishes its own sums and means)."""
    return table[0, :D.S_SUM_LO].tolist()


def _stats(merged, losses_for_quantiles: np.ndarray | None, quantiles) -> dict[str, float]:
    # merged holds Python floats (from tolist or a compiled function's tuple)
    m2 = merged[3]
    out = {"count": int(merged[0]), "sum": merged[1], "mean": merged[2],
           "std": math.sqrt(m2 / merged[0]) if m2 < math.inf else math.inf,
           "min": merged[4], "max": merged[5]}
    if quantiles:
        with np.errstate(invalid="ignore"):
            vals = np.quantile(losses_for_quantiles, quantiles)
        # losses are never NaN or -inf: a NaN here is inf - inf between two +inf
        # neighbours, whose interpolation is +inf
        vals = np.where(np.isnan(vals), np.inf, vals)
        for q, v in zip(quantiles, np.atleast_1d(vals)):
            out[_quantile_key(q)] = float(v)
    return out


def _weighted_mean_denominator(plan: _Plan) -> tuple[float, float]:
    """K·Σ w·wscale as a double-double (the weighted mean's denominator)."""
    if not plan.w.w.size or plan.reduction != "mean":
        return 1.0, 0.0
    hi, lo = M.two_prod(float(plan.k), plan.w.total)
    return hi, lo + plan.k * plan.w.total_lo


def _run(plan: _Plan, grad: bool, summary: bool = False, by=None, sketch: bool = True):
    n = plan.pred.size
    keep = plan.reduction == "none" or plan.quantiles or summary
    out = runtime._output_pool.empty(n) if keep else _NO_OUTPUT
    gout = runtime._output_pool.empty(n) if grad else _NO_OUTPUT
    weighted = plan.w.w.size > 0
    wden_hi, wden_lo = _weighted_mean_denominator(plan) if weighted else (1.0, 0.0)
    if plan.reduction == "mean":
        scale = 1.0 / (wden_hi if weighted else n)
    else:
        scale = 1.0
    # _block's own lookup, inlined: a call frame is ~4% of a 10-element call
    block = _compiled.get(("block", plan.kind, grad, plan.pred.dtype.char))
    if block is None:
        block = _block(plan.kind, grad, plan.pred.dtype)
    flat = plan.pred.ndim == 1
    args = (plan.pred if flat else plan.pred.reshape(-1), plan.lab if flat else plan.lab.reshape(-1),
            plan.w.w, plan.pwt, plan.k, plan.prm, scale, plan.w.wscale, wden_hi, wden_lo, out, gout)
    nb = (n + plan.pwt.size - 1) // plan.pwt.size
    table = np.empty((nb, D.N_STATS))
    if n >= PARALLEL_MIN:
        runtime._apply_threads()
        _driver()(_block_pointer(plan.kind, grad, plan.pred.dtype), *args, table)
    elif nb == 1:  # every serial call without pos_weight: skip the loop's arithmetic
        block(*args, table, 0, 0, n)
    else:  # blocks must stay within pwt's length; a few compiled calls cost ~1 µs each
        for b in range(nb):
            block(*args, table, b, b * plan.pwt.size, min(n, (b + 1) * plan.pwt.size))
    merged = D.merge_blocks(table, wden_hi, wden_lo) if nb > 1 else _single_block(table)
    if merged[8] or merged[9]:
        bad = _first_bad(plan) if merged[8] else None
        if bad is not None:
            raise bad
        raise KernelError(f"NaN {'gradient' if merged[9] and grad else 'loss'} from valid input "
                          f"(kind {plan.kind}, n = {n}): a lossd bug, no result is returned")
    stats = _stats(merged, out if plan.quantiles else None, plan.quantiles)
    # out holds the unweighted losses here (weights multiply a copy, below)
    summ = summary_of(out, plan.w.w, plan.k, by, sketch) if summary else None
    if plan.reduction == "mean":
        value = merged[7] if weighted else merged[2]
    elif plan.reduction == "sum":
        value = merged[6]
    else:
        value = None
    losses = None
    if plan.reduction == "none":
        losses = out.reshape(plan.pred.shape)
        if weighted:
            wcol = plan.w.w.reshape((-1,) + (1,) * (losses.ndim - 1))
            # 0·inf counts as 0: a zero weight removes the element
            with np.errstate(over="ignore"):  # w·l beyond the float range is inf
                losses = np.multiply(losses, wcol, out=np.zeros_like(losses), where=wcol != 0.0)
    g = gout.reshape(plan.pred.shape) if grad else None
    return (None if value is None else float(value)), losses, stats, g, summ


def loss(predictions, labels, *, input: str = "logits", loss: str = "cross_entropy",
         reduction: str = "mean", sample_weight=None, pos_weight=None,
         label_smoothing: float = 0.0, eps: float | None = None, gamma: float = 2.0,
         alpha: float | None = None, quantiles: float | Iterable[float] = (),
         dtype: str = "float64", summary: bool = False) -> LossResult:
    """Loss of ``predictions`` (N or N×K) against ``labels``; see the README for forms.
    ``dtype="float32"``: the arrays are float32 values (predictions, labels and
    sample_weight rounded to float32 first) and the per-element array is returned as
    float32; the computation stays float64. ``summary=True`` adds ``.summary``, the
    mergeable ``LossSummary`` of the losses (as ``summarize``)."""
    if dtype != "float64":
        predictions, labels, sample_weight = _as_float32(dtype, predictions, labels, sample_weight)
    plan = _plan(predictions, labels, input, loss, reduction, sample_weight, pos_weight,
                 label_smoothing, eps, gamma, alpha, quantiles)
    value, losses, stats, _, summ = _run(plan, grad=False, summary=_flag("summary", summary))
    if dtype != "float64":
        losses = _float32_result(losses)
    return LossResult(value, losses, stats, summ)


def grad(predictions, labels, *, input: str = "logits", loss: str = "cross_entropy",
         reduction: str = "mean", sample_weight=None, pos_weight=None,
         label_smoothing: float = 0.0, eps: float | None = None, gamma: float = 2.0,
         alpha: float | None = None, quantiles: float | Iterable[float] = (),
         dtype: str = "float64", summary: bool = False) -> GradResult:
    """d(reduced loss)/d(predictions), with the loss and its statistics; ``dtype`` and
    ``summary`` as in ``loss``."""
    if dtype != "float64":
        predictions, labels, sample_weight = _as_float32(dtype, predictions, labels, sample_weight)
    plan = _plan(predictions, labels, input, loss, reduction, sample_weight, pos_weight,
                 label_smoothing, eps, gamma, alpha, quantiles)
    value, losses, stats, g, summ = _run(plan, grad=True, summary=_flag("summary", summary))
    if dtype != "float64":
        losses, g = _float32_result(losses), _float32_result(g)
    return GradResult(value, g, losses, stats, summ)

