"""Options to plan: the element kind, the parameter vector, the checked arrays and
weights that one call of the drivers needs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _elements as E
from ._checks import (_F32, _F64, _Weights, _as_array, _choice, _float_pair, _fmt, _number,
                      _pos_weight_columns, _quantile_values, _shapes, _weights)
from .errors import InputError

INPUTS = ("logits", "probabilities", "margins")
LOSSES = ("cross_entropy", "focal", "hinge", "squared_hinge", "modified_huber",
          "exponential", "zero_one", "squared_error")
REDUCTIONS = ("mean", "sum", "none")
_MARGIN_KINDS = {"hinge": E.HINGE, "squared_hinge": E.SQUARED_HINGE,
                 "modified_huber": E.MODIFIED_HUBER, "exponential": E.EXPONENTIAL,
                 "zero_one": E.ZERO_ONE}
_SOFT_LOSSES = ("cross_entropy", "focal", "squared_error")

# The smallest eps that clips at both ends: 1 - 2^-53 is the float below 1.
EPS_MIN = 2.0**-53
# Below this many elements the serial build wins: a parallel launch costs microseconds.
PARALLEL_MIN = 1 << 15
# Elements per block: the block buffer (32 KiB) stays in L1/L2 for the second pass.
BLOCK = 4096


@dataclass(slots=True)  # not frozen: a frozen __init__ costs microseconds per call
class _Plan:
    """Everything the driver needs, resolved from the public arguments."""

    kind: int
    pred: np.ndarray
    lab: np.ndarray
    w: _Weights
    pwt: np.ndarray
    k: int
    prm: np.ndarray
    reduction: str
    quantiles: tuple[float, ...]
    input: str


_ONES = np.ones(BLOCK, dtype=np.float64)
_ONES.setflags(write=False)
# Serial calls without pos_weight run as one block of up to PARALLEL_MIN elements: one
# compiled call instead of several (the buffer, 256 KiB at most, stays in L2).
_ONES_SERIAL = np.ones(PARALLEL_MIN, dtype=np.float64)
_ONES_SERIAL.setflags(write=False)


def _options(input, loss, reduction, label_smoothing, eps, gamma, alpha) -> tuple[int, np.ndarray]:
    """Check the scalar options; return the element kind and the kernel's parameter
    vector (read-only, shared by every call with the same options)."""
    _choice("input", input, INPUTS)
    _choice("loss", loss, LOSSES)
    _choice("reduction", reduction, REDUCTIONS)
    if input == "probabilities" and loss not in _SOFT_LOSSES:
        raise InputError("loss", f'= {loss!r} does not accept input = "probabilities" '
                         f"(only cross_entropy, focal and squared_error do)")
    ls = _number("label_smoothing", label_smoothing, 0.0, 1.0, hi_open=True)
    if ls != 0.0 and (loss not in _SOFT_LOSSES or input == "margins"):
        raise InputError("label_smoothing", "applies to cross_entropy, focal and squared_error "
                         'with input "logits" or "probabilities"')
    g = _number("gamma", gamma, 0.0, np.inf, hi_open=True)
    a = -1.0 if alpha is None else _number("alpha", alpha, 0.0, 1.0)
    lo, hi = 0.0, 1.0
    if eps is not None:
        if input != "probabilities" or loss not in ("cross_entropy", "focal"):
            raise InputError("eps", 'applies to input = "probabilities" with cross_entropy or focal only')
        e = _number("eps", eps, 0.0, 0.5, hi_open=True)
        if e < EPS_MIN:
            raise InputError("eps", f"= {_fmt(e)} is below 2^-53 = {EPS_MIN!r}: 1 - eps would round "
                             "to 1 and clip nothing near 1")
        lo, hi = e, 1.0 - e

    if loss == "cross_entropy":
        kind = (E.CE_PROB if input == "probabilities"
                else E.CE_LOGITS_PLAIN if input == "logits" and ls == 0.0 else E.CE_LOGITS)
    elif loss == "focal":
        kind = E.FOCAL_PROB if input == "probabilities" else E.FOCAL_LOGITS
    elif loss == "squared_error":
        kind = E.SE_PROB if input == "probabilities" else E.SE_LOGITS
    else:
        kind = _MARGIN_KINDS[loss]
    # Labels: margins take {-1, +1}, mapped to y01 = (y + 1) / 2; margin losses on
    # logits need hard {0, 1}; cross_entropy/focal/squared_error accept soft labels.
    la, lb = (0.5, 0.5) if input == "margins" else (1.0, 0.0)
    discrete = input == "margins" or loss in _MARGIN_KINDS
    prm = np.array((la, lb, 1.0 - ls, ls / 2.0, float(discrete), g, a, lo, hi), dtype=np.float64)
    prm.setflags(write=False)
    return kind, prm


# Option sets repeat from call to call; resolving them is most of a tiny call's cost.
_options_cached = functools.lru_cache(maxsize=512)(_options)


def _plan(predictions, labels, input, loss, reduction, sample_weight, pos_weight,
          label_smoothing, eps, gamma, alpha, quantiles) -> _Plan:
    try:
        kind, prm = _options_cached(input, loss, reduction, label_smoothing, eps, gamma, alpha)
    except TypeError:  # an unhashable option value: check it the slow way
        kind, prm = _options(input, loss, reduction, label_smoothing, eps, gamma, alpha)
    qs = () if (type(quantiles) is tuple and not quantiles) else _quantile_values(quantiles)

    pred, lab = predictions, labels
    if not (type(pred) is np.ndarray and type(lab) is np.ndarray and pred.dtype is lab.dtype
            and (pred.dtype is _F64 or pred.dtype is _F32) and pred.ndim == 1
            and lab.shape == pred.shape and pred.size and pred.flags.c_contiguous
            and lab.flags.c_contiguous):
        # anything but two contiguous float vectors of one dtype and length: full checks
        pred = _as_array("predictions", pred)
        lab = _as_array("labels", lab)
        _shapes(pred, lab)
        pred, lab = _float_pair(pred, lab)
    n_rows = pred.shape[0]
    k = 1 if pred.ndim == 1 else pred.shape[1]

    w = _weights(sample_weight, n_rows, reduction == "mean")
    if reduction == "mean" and w.w.size and not w.total > 0.0:
        raise InputError("sample_weight", 'sums to 0: reduction = "mean" is undefined')

    rows_per_block = max(1, BLOCK // k)
    if pos_weight is None:
        if k == 1 and n_rows < PARALLEL_MIN:
            pwt = _ONES_SERIAL
        else:
            pwt = _ONES if k * rows_per_block == BLOCK else np.ones(k * rows_per_block)
    else:
        if loss != "cross_entropy":
            raise InputError("pos_weight", f"applies to cross_entropy only, not {loss!r}")
        pwt = np.tile(_pos_weight_columns(pos_weight, k), rows_per_block)
        kind = E.CE_LOGITS if kind == E.CE_LOGITS_PLAIN else kind
    return _Plan(kind, pred, lab, w, pwt, k, prm, reduction, qs, input)

