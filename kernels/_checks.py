"""Argument checking: every public argument checked (or narrowed to float32) before
any kernel runs, and the error for the first bad element once a kernel has seen one.
Every error is an InputError naming the argument and, for an element, its index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np

from . import _drivers as D
from . import _elements as E
from ._compile import _compiled, _weight_prep
from .errors import InputError

if TYPE_CHECKING:
    from ._planner import _Plan

DTYPES_OUT = ("float64", "float32")


def _fmt(v) -> str:
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _choice(name: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InputError(name, f"= {value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def _flag(name: str, value) -> bool:
    """A boolean option (Python's or NumPy's bool), anything else refused."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise InputError(name, f"must be true or false, got {value!r:.40}")


def _number(name: str, value, lo: float, hi: float, lo_open=False, hi_open=False,
            index: tuple[int, ...] = ()) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(name, f"= {value!r} is not a number", index) from None
    if v != v:
        raise InputError(name, "is NaN", index)
    if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise InputError(name, f"= {_fmt(v)} is outside {lb}{_fmt(lo)}, {_fmt(hi)}{rb}", index)
    return v


def _as_array(name: str, a) -> np.ndarray:
    if type(a) is np.ndarray and a.dtype.kind in "fiub":
        return a
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"is not an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise InputError(name, f"must hold numbers, got dtype {arr.dtype}")
    return arr


def _shapes(pred: np.ndarray, lab: np.ndarray) -> None:
    if pred.ndim not in (1, 2):
        raise InputError("predictions", f"must be 1-D (N) or 2-D (N×K), got {pred.ndim}-D shape {pred.shape}")
    if lab.ndim != pred.ndim:
        raise InputError("predictions", f"is {pred.ndim}-D {pred.shape}, labels {lab.ndim}-D {lab.shape}")
    if pred.shape[0] != lab.shape[0]:
        raise InputError("predictions", f"has {pred.shape[0]} rows, labels {lab.shape[0]}")
    if pred.ndim == 2 and pred.shape[1] != lab.shape[1]:
        raise InputError("predictions", f"has {pred.shape[1]} columns, labels {lab.shape[1]}")
    if pred.size == 0:
        raise InputError("predictions", f"is empty (shape {pred.shape}); N >= 1 is required")


_F64 = np.dtype(np.float64)  # dtype objects of the builtin types are singletons
_F32 = np.dtype(np.float32)


def _float_pair(pred: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as one float dtype, C-contiguous, without copies where possible.
    float32 stays float32 only if the labels fit it exactly (float32, int8/16, bool)."""
    lab_f32_ok = lab.dtype == np.float32 or lab.dtype.kind == "b" or lab.dtype in (np.int8, np.uint8, np.int16, np.uint16)
    dtype = np.float32 if (pred.dtype == np.float32 and lab_f32_ok) else np.float64
    pred = np.ascontiguousarray(pred, dtype=dtype)
    lab = np.ascontiguousarray(lab, dtype=dtype)
    return pred, lab


@dataclass(slots=True)
class _Weights:
    """Row weights as the kernels use them: w·wscale, and Σ w·wscale as (hi, lo)."""

    w: np.ndarray
    wscale: float
    total: float
    total_lo: float


_NO_WEIGHTS = _Weights(np.empty(0), 1.0, 0.0, 0.0)
_NO_WEIGHTS.w.setflags(write=False)


def _weights(sample_weight, n_rows: int, normalize: bool) -> _Weights:
    """Check the weights and measure them in one compiled pass. ``normalize`` (weighted
    means): scale them by the power of two that brings the largest into [1, 2), so
    that no sum overflows or underflows and a common factor leaves the mean as it is."""
    if sample_weight is None:
        return _NO_WEIGHTS
    w = _as_array("sample_weight", sample_weight)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise InputError("sample_weight", f"must have one weight per row ({n_rows}), got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not w.flags.aligned:  # the compiled code takes aligned arrays
        w = w.copy()
    prep = _compiled.get(("weights",)) or _weight_prep()
    bad, wscale, total, total_lo = prep(w, normalize)
    if bad:
        ok = np.isfinite(w) & (w >= 0.0)
        i = int(np.flatnonzero(~ok)[0])
        what = "is NaN" if w[i] != w[i] else f"= {_fmt(w[i])} is not a finite weight >= 0"
        raise InputError("sample_weight", what, (i,))
    return _Weights(w, wscale, total, total_lo)


def _pos_weight_columns(pos_weight, k: int) -> np.ndarray:
    pw = _as_array("pos_weight", pos_weight).astype(np.float64, copy=False)
    if pw.ndim == 0:
        pw = np.full(k, float(pw))
    if pw.ndim != 1 or pw.shape[0] != k:
        raise InputError("pos_weight", f"must be a scalar or one weight per column ({k}), got shape {pw.shape}")
    ok = np.isfinite(pw) & (pw >= 0.0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        what = "is NaN" if pw[i] != pw[i] else f"= {_fmt(pw[i])} is not a finite weight >= 0"
        raise InputError("pos_weight", what, (i,))
    return pw


def _quantile_key(q: float) -> str:
    """"p" + 100·q written from q's shortest decimal (0.5 -> p50, 0.999 -> p99.9,
    0.12345671 -> p12.345671): distinct quantiles always get distinct keys."""
    return "p" + format(Decimal(repr(float(q))).scaleb(2).normalize(), "f")


def _quantile_values(quantiles) -> tuple[float, ...]:
    """``quantiles`` as a tuple of q in [0, 1]: a number, or any iterable of numbers
    (a list, a tuple, an array, a generator); anything else is an InputError naming
    the argument (a string is not a sequence of quantiles here)."""
    if quantiles is None:
        return ()
    if isinstance(quantiles, (str, bytes, dict)) or isinstance(quantiles, (bool, np.bool_)):
        raise InputError("quantiles", "must be a number in [0, 1] or a sequence of them, got "
                         f"{type(quantiles).__name__} {quantiles!r:.40}")
    if isinstance(quantiles, (int, float, np.number)) or (isinstance(quantiles, np.ndarray)
                                                           and quantiles.ndim == 0):
        return (_number("quantiles", quantiles, 0.0, 1.0),)
    if isinstance(quantiles, np.ndarray) and quantiles.ndim > 1:
        raise InputError("quantiles", f"must be a number or a 1-D sequence, got shape {quantiles.shape}")
    try:
        items = list(quantiles)
    except TypeError:
        raise InputError("quantiles", "must be a number in [0, 1] or a sequence of them, got "
                         f"{type(quantiles).__name__}") from None
    out = []
    for i, q in enumerate(items):
        if isinstance(q, (str, bytes, bool, np.bool_)) or not isinstance(q, (int, float, np.number)):
            raise InputError("quantiles", f"= {q!r:.40} is not a number", (i,))
        out.append(_number("quantiles", q, 0.0, 1.0, index=(i,)))
    return tuple(out)



def _first_bad(plan: _Plan) -> InputError | None:
    """The error for the first invalid element (only run once the kernel saw one);
    None if there is none (then the kernel's NaN came from valid input: a bug)."""
    p = plan.pred.ravel()
    if plan.kind in E.PROB_KINDS:
        badp = ~((p >= 0.0) & (p <= 1.0))
    else:
        badp = np.isnan(p)
    if badp.any():
        i = int(np.flatnonzero(badp)[0])
        where = _index(i, plan.pred.shape)
        if p[i] != p[i]:
            return InputError("predictions", "is NaN", where)
        return InputError("predictions", f'= {_fmt(p[i])} is outside [0, 1] (input = "probabilities")', where)
    y = plan.lab.ravel()
    la, lb, discrete = plan.prm[D.P_LA], plan.prm[D.P_LB], plan.prm[D.P_DISCRETE] != 0
    y01 = y * la + lb
    bady = ~((y01 >= 0.0) & (y01 <= 1.0))
    if discrete:
        bady |= (y01 != 0.0) & (y01 != 1.0)
    if not bady.any():
        return None
    i = int(np.flatnonzero(bady)[0])
    where = _index(i, plan.lab.shape)
    if y[i] != y[i]:
        return InputError("labels", "is NaN", where)
    if plan.input == "margins":
        return InputError("labels", f"= {_fmt(y[i])} is not in {{-1, 1}}", where)
    if discrete:
        return InputError("labels", f"= {_fmt(y[i])} is not in {{0, 1}}", where)
    return InputError("labels", f"= {_fmt(y[i])} is outside [0, 1]", where)



def _as_float32(dtype, predictions, labels, sample_weight) -> tuple:
    """The arrays as float32 values for ``dtype="float32"`` (the service's JSON numbers
    and FP64 tensors get the same rounding, so every transport gives the same bits): a
    finite value beyond the float32 range is an InputError naming array and index, not an
    infinity that would change the loss unseen."""
    _choice("dtype", dtype, DTYPES_OUT)
    return (_to_float32("predictions", predictions), _to_float32("labels", labels),
            None if sample_weight is None else _to_float32("sample_weight", sample_weight))


def _to_float32(name: str, a) -> np.ndarray:
    arr = _as_array(name, a)
    if arr.dtype == np.float32:
        return arr
    narrow, i = float32_values(arr if arr.dtype.kind == "f" else arr.astype(np.float64))
    if i is not None:
        raise InputError(name, f'= {_fmt(arr.reshape(-1)[i])} is beyond the float32 range (dtype = "float32")',
                         _index(i, arr.shape))
    return narrow


def float32_values(wide: np.ndarray) -> tuple[np.ndarray, int | None]:
    """``wide`` rounded to float32, and the flat index of the first finite value that
    became infinite (which would change a loss unseen), or None."""
    with np.errstate(over="ignore"):  # overflow is found (and named by the caller) below
        narrow = wide.astype(np.float32)
    if np.isfinite(narrow).all():
        return narrow, None
    over = (np.isinf(narrow) & np.isfinite(wide)).reshape(-1)
    return narrow, (int(np.flatnonzero(over)[0]) if over.any() else None)


def _float32_result(a: np.ndarray | None) -> np.ndarray | None:
    """A result array as float32: a loss or gradient beyond the float32 range is inf
    there, which is what float32 results mean (no NumPy warning)."""
    if a is None:
        return None
    with np.errstate(over="ignore"):
        return a.astype(np.float32)

