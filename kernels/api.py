"""Public entry points: argument checking, dispatch to the compiled drivers, results."""

from __future__ import annotations

import functools
import math
import threading
from decimal import Decimal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
from numba.core import types

from . import _elements as E
from . import _drivers as D
from . import _math as M
from ._pool import OutputPool
from .errors import InputError, KernelError, index_text

INPUTS = ("logits", "probabilities", "margins")
LOSSES = ("cross_entropy", "focal", "hinge", "squared_hinge", "modified_huber",
          "exponential", "zero_one", "squared_error")
REDUCTIONS = ("mean", "sum", "none")
DTYPES_OUT = ("float64", "float32")
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


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per call
class LossResult:
    """``loss`` is the reduced loss (None for reduction="none"), ``losses`` the
    per-element losses (weighted when sample_weight is given) for reduction="none"."""

    loss: float | None
    losses: np.ndarray | None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class GradResult:
    """``grad`` is d(reduced loss)/d(predictions), the predictions' shape; with
    reduction="none" each element's own (weighted) derivative."""

    loss: float | None
    grad: np.ndarray
    losses: np.ndarray | None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParamGrad:
    """Mean logistic loss of a linear model and its gradient w.r.t. coef and intercept."""

    loss: float
    coef: np.ndarray
    intercept: float


# ---------------------------------------------------------------------------- threads

_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Threads per parallel call (None: Numba's default, one per CPU in the affinity
    mask). Numba's setting is per calling thread, so it is applied at every call."""
    global _threads
    if n is not None and not (1 <= int(n) <= numba.config.NUMBA_NUM_THREADS):
        raise InputError("threads", f"must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {n}")
    _threads = None if n is None else int(n)


# Result arrays of 1 MiB and more (losses, gradients) are recycled: see _pool.
OUTPUT_POOL_BYTES = 512 << 20
_output_pool = OutputPool(OUTPUT_POOL_BYTES)


def set_output_pool(max_bytes: int) -> None:
    """Bytes of result arrays kept for reuse once callers drop them (default 512 MiB;
    0 turns recycling off). Reused memory skips the OS's zeroing of fresh pages, which
    costs ``grad`` at n = 10^7 about a third of its time."""
    size = int(max_bytes)
    if size < 0:
        raise InputError("max_bytes", f"must be >= 0, got {max_bytes}")
    _output_pool.max_bytes = size
    if size == 0:
        _output_pool.clear()


def output_pool_stats() -> dict[str, int]:
    """The result pool's blocks and bytes, held and in use."""
    return _output_pool.stats()


def _apply_threads() -> None:
    want = numba.config.NUMBA_NUM_THREADS if _threads is None else _threads
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


# ---------------------------------------------------------------------------- kernels

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_compiled: dict[tuple, object] = {}
_compile_lock = threading.Lock()


def _compile_once(key: tuple, build, signatures):  # signatures: a callable, built lazily
    """A dispatcher compiled once for ``signatures`` (from the on-disk cache when it
    can), then frozen. Freezing matters twice: writable arrays then convert to the
    read-only signature instead of compiling a second one, and a block function passed
    to a driver converts to the driver's first-class function type instead of
    compiling (and caching) a specialisation for that one dispatcher."""
    fn = _compiled.get(key)
    if fn is None:
        with _compile_lock:
            fn = _compiled.get(key)
            if fn is None:
                fn = build()
                for sig in signatures():
                    fn.compile(sig)
                fn.disable_compile()
                _compiled[key] = fn
    return fn


def _block(kind: int, grad: bool, dtype: np.dtype):
    key = ("block", kind, grad, dtype.char)
    fn = _compiled.get(key)  # the per-call path: no closures built once compiled
    if fn is None:
        fn = _compile_once(key, lambda: D.make_block(kind, int(grad)),
                           lambda: [D.block_signature(dtype)])
    return fn


class _FunctionPointer(types.WrapperAddressProtocol):
    """A compiled function as a first-class function value for the parallel drivers.

    Passing the dispatcher itself works too, but Numba then converts it to a function
    pointer on every call (tens of microseconds of Python); this holds the address of
    the compiled overload's C wrapper, looked up once."""

    def __init__(self, dispatcher, signature) -> None:
        cres = dispatcher.get_compile_result(signature)
        self._address = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
        self._signature = signature
        self._dispatcher = dispatcher  # keeps the code alive

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


_pointers: dict[tuple, _FunctionPointer] = {}


def _pointer(key: tuple, dispatcher, signature) -> _FunctionPointer:
    """The function pointer of a compiled block (``dispatcher`` and ``signature`` are
    callables, only run the first time)."""
    ptr = _pointers.get(key)
    if ptr is None:
        ptr = _pointers[key] = _FunctionPointer(dispatcher(), signature())
    return ptr


def _block_pointer(kind: int, grad: bool, dtype: np.dtype) -> _FunctionPointer:
    return _pointer((kind, grad, dtype.char), lambda: _block(kind, grad, dtype),
                    lambda: D.block_signature(dtype))


def _logreg_pointer(dtype: np.dtype) -> _FunctionPointer:
    return _pointer(("logreg", dtype.char), lambda: _logreg_block(dtype),
                    lambda: D.logreg_block_signature(dtype))


def _driver():
    return _compile_once(("driver", "loss"), lambda: D.run_blocks,
                         lambda: [D.driver_signature(dt) for dt in DTYPES])


def _logreg_block(dtype: np.dtype):
    return _compile_once(("block", "logreg", dtype.char),
                         D.make_logreg_block, lambda: [D.logreg_block_signature(dtype)])


def _logreg_driver():
    return _compile_once(("driver", "logreg"), lambda: D.run_logreg,
                         lambda: [D.logreg_driver_signature(dt) for dt in DTYPES])


def _weight_prep():
    return _compile_once(("weights",), lambda: D.weight_prep, lambda: [_WEIGHT_PREP_SIG])


def _merges() -> None:
    # the merges compile for the one signature each call site uses
    D.merge_blocks(np.zeros((2, D.N_STATS)), 1.0, 0.0)
    spart = np.zeros((2, 5))
    D.dd_total(spart[:, 0], spart[:, 1])


def _warmup_steps() -> list[tuple[Callable[[], object], int]]:
    """Every compilation warmup() does, in order, with how many signatures each makes."""
    steps: list[tuple[Callable[[], object], int]] = []
    for dt in DTYPES:
        for kind in range(E.N_KINDS):
            for g in (False, True):
                steps.append((functools.partial(_block_pointer, kind, g, dt), 1))
        steps.append((functools.partial(_logreg_pointer, dt), 1))
    steps += [(_driver, len(DTYPES)), (_logreg_driver, len(DTYPES)), (_weight_prep, 1), (_merges, 2)]
    return steps


def warmup(progress: Callable[[int, int], None] | None = None) -> int:
    """Compile (or load from the on-disk cache) every block function and driver the
    public functions can dispatch to, and the helpers they call; returns how many
    signatures are ready. ``progress(done, total)`` is called after each step, from this
    thread (a first compile takes minutes, a load from the cache about a second)."""
    steps = _warmup_steps()
    total = sum(n for _, n in steps)
    done = 0
    for step, n in steps:
        step()
        done += n
        if progress is not None:
            progress(done, total)
    return total


# ---------------------------------------------------------------------- argument checks

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
_WEIGHT_PREP_SIG = types.Tuple((types.int64, types.float64, types.float64, types.float64))(
    types.Array(types.float64, 1, "C", readonly=True), types.boolean)


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


_NO_OUTPUT = np.empty(0, dtype=np.float64)  # size 0: the kernels never write it
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


def _run(plan: _Plan, grad: bool):
    n = plan.pred.size
    out = _output_pool.empty(n) if (plan.reduction == "none" or plan.quantiles) else _NO_OUTPUT
    gout = _output_pool.empty(n) if grad else _NO_OUTPUT
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
        _apply_threads()
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
    return (None if value is None else float(value)), losses, stats, g


def loss(predictions, labels, *, input: str = "logits", loss: str = "cross_entropy",
         reduction: str = "mean", sample_weight=None, pos_weight=None,
         label_smoothing: float = 0.0, eps: float | None = None, gamma: float = 2.0,
         alpha: float | None = None, quantiles: float | Iterable[float] = (),
         dtype: str = "float64") -> LossResult:
    """Loss of ``predictions`` (N or N×K) against ``labels``; see the README for forms.
    ``dtype="float32"``: the arrays are float32 values (predictions, labels and
    sample_weight rounded to float32 first) and the per-element array is returned as
    float32; the computation stays float64."""
    if dtype != "float64":
        predictions, labels, sample_weight = _as_float32(dtype, predictions, labels, sample_weight)
    plan = _plan(predictions, labels, input, loss, reduction, sample_weight, pos_weight,
                 label_smoothing, eps, gamma, alpha, quantiles)
    value, losses, stats, _ = _run(plan, grad=False)
    if dtype != "float64":
        losses = _float32_result(losses)
    return LossResult(value, losses, stats)


def grad(predictions, labels, *, input: str = "logits", loss: str = "cross_entropy",
         reduction: str = "mean", sample_weight=None, pos_weight=None,
         label_smoothing: float = 0.0, eps: float | None = None, gamma: float = 2.0,
         alpha: float | None = None, quantiles: float | Iterable[float] = (),
         dtype: str = "float64") -> GradResult:
    """d(reduced loss)/d(predictions), with the loss and its statistics; ``dtype`` as
    in ``loss``."""
    if dtype != "float64":
        predictions, labels, sample_weight = _as_float32(dtype, predictions, labels, sample_weight)
    plan = _plan(predictions, labels, input, loss, reduction, sample_weight, pos_weight,
                 label_smoothing, eps, gamma, alpha, quantiles)
    value, losses, stats, g = _run(plan, grad=True)
    if dtype != "float64":
        losses, g = _float32_result(losses), _float32_result(g)
    return GradResult(value, g, losses, stats)


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


LOGREG_ROWS = 256  # rows per block: 256 x D values stay in L2 between the two reads


def logreg_grad(features, labels, coef, intercept: float = 0.0, *, sample_weight=None,
                l2: float = 0.0) -> ParamGrad:
    """Mean logistic loss of z = features·coef + intercept and its gradient (the seed's
    formulas): dJ/dw_j = (1/n) Σ x_j (σ(z) - y), dJ/db = (1/n) Σ (σ(z) - y).

    With sample_weight the sums are weighted and 1/n becomes 1/Σw (scikit-learn);
    l2 adds (l2/2)·‖coef‖² to the loss and l2·coef to its gradient, not to the intercept.
    """
    X = _as_array("features", features)
    if X.ndim != 2:
        raise InputError("features", f"must be 2-D (N×D), got {X.ndim}-D shape {X.shape}")
    n, d = X.shape
    if n == 0 or d == 0:
        raise InputError("features", f"is empty (shape {X.shape}); N >= 1 and D >= 1 are required")
    y = _as_array("labels", labels)
    if y.ndim != 1:
        raise InputError("labels", f"must be 1-D (N), got {y.ndim}-D shape {y.shape}")
    if y.shape[0] != n:
        raise InputError("features", f"has {n} rows, labels {y.shape[0]}")
    c = _as_array("coef", coef)
    if c.ndim != 1 or c.shape[0] != d:
        raise InputError("coef", f"must have one value per feature column ({d}), got shape {c.shape}")
    c = np.ascontiguousarray(c, dtype=np.float64)
    if not np.isfinite(c).all():
        i = int(np.flatnonzero(~np.isfinite(c))[0])
        raise InputError("coef", "is NaN" if c[i] != c[i] else f"= {_fmt(c[i])} is not finite", (i,))
    b0 = _number("intercept", intercept, -np.inf, np.inf, lo_open=True, hi_open=True)
    lam = _number("l2", l2, 0.0, np.inf, hi_open=True)
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    w = _weights(sample_weight, n, True)
    if w.w.size and not w.total > 0.0:
        raise InputError("sample_weight", "sums to 0: the mean loss is undefined")

    nb = (n + LOGREG_ROWS - 1) // LOGREG_ROWS
    gpart = np.empty((nb, d))
    spart = np.empty((nb, 5))
    block = _logreg_block(X.dtype)
    if n * d >= PARALLEL_MIN and nb > 1:
        _apply_threads()
        _logreg_driver()(_logreg_pointer(X.dtype), X, y, c, b0, w.w, w.wscale, gpart, spart,
                         LOGREG_ROWS)
    else:
        for b in range(nb):
            block(X, y, c, b0, w.w, w.wscale, gpart, spart, b, b * LOGREG_ROWS,
                  min(n, (b + 1) * LOGREG_ROWS))
    if spart[:, 3].sum() > 0:
        raise _first_bad_logreg(X, y, c, b0)
    if spart[:, 4].sum() > 0:
        raise KernelError(f"NaN from valid input in logreg_grad (N = {n}, D = {d}): a lossd bug")
    den, den_lo = (w.total, w.total_lo) if w.w.size else (float(n), 0.0)
    lsum, lsum_lo = D.dd_total(spart[:, 0], spart[:, 1])
    with np.errstate(over="ignore", invalid="ignore"):  # l2·coef beyond the float range is inf
        gcoef = gpart.sum(axis=0) / den + lam * c
    if not np.isfinite(gcoef).all():  # maybe a sum overflowed on the way (inf + -inf: NaN): redo scaled
        gcoef = _coef_grad_scaled(X, y, c, b0, w, lam)
    loss_value = M.dd_div(lsum, lsum_lo, den, den_lo) + _half_l2_penalty(lam, c)
    return ParamGrad(float(loss_value), gcoef, float(np.sum(spart[:, 2]) / den))


def _coef_grad_scaled(X: np.ndarray, y: np.ndarray, c: np.ndarray, b0: float, w, lam: float) -> np.ndarray:
    """dJ/dcoef where the kernel's sums overflowed: Σ r·x_j / Σw + l2·c_j with every term
    scaled by a power of two first, so only a result beyond the float range is ±inf
    (two rows of x = 1e308 summed to inf, and beside an l2·c of -inf gave NaN).
    NumPy, float64; runs only when the fast result is not finite."""
    Xd = X.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = Xd @ c + b0
    t = np.exp(-np.abs(z))
    r = np.where(z >= 0, 1.0 / (1.0 + t), t / (1.0 + t)) - y
    if w.w.size:
        ww = np.asarray(w.w, dtype=np.float64)
        top = float(ww.max())
        ww = ww / top if top > 0 else ww  # weights up to 1: Σw no longer overflows
        r = r * ww
        den = float(ww.sum())
    else:
        den = float(len(y))
    out = np.empty(c.size)
    lm, le = math.frexp(lam)
    for j in range(c.size):
        col = Xd[:, j]
        big = float(np.max(np.abs(col)))
        k = math.frexp(big)[1] if big > 0 else 0
        a = float(np.sum(r * np.ldexp(col, -k))) / den  # |a| <= N: no overflow
        cm, ce = math.frexp(float(c[j]))
        e = max(k, le + ce)
        v = math.ldexp(a, k - e) + math.ldexp(lm * cm, le + ce - e)
        try:
            out[j] = math.ldexp(v, e)
        except OverflowError:
            out[j] = math.copysign(math.inf, v)
    return out


def _half_l2_penalty(lam: float, c: np.ndarray) -> float:
    """(l2/2)·‖c‖², without overflow or underflow in the steps: ‖c‖² of c = 1e200 is
    beyond the float range, while l2 = 1e-300 brings the penalty back to 5e99.
    Absent (0, not 0·inf) when l2 = 0."""
    big = float(np.max(np.abs(c))) if lam and c.size else 0.0
    if big == 0.0:
        return 0.0
    ce = math.frexp(big)[1]
    cs = np.ldexp(c, -ce)  # exact: a power of two; entries below 2^-1074 of the largest vanish
    lm, le = math.frexp(lam)
    try:
        return math.ldexp(0.5 * lm * float(np.sum(cs * cs)), le + 2 * ce)  # no BLAS: same bits every call
    except OverflowError:
        return math.inf


def _first_bad_logreg(X: np.ndarray, y: np.ndarray, c: np.ndarray, b0: float) -> InputError:
    bady = (y != 0.0) & (y != 1.0)
    if bady.any():
        i = int(np.flatnonzero(bady)[0])
        return InputError("labels", "is NaN" if y[i] != y[i] else f"= {_fmt(y[i])} is not in {{0, 1}}", (i,))
    badx = ~np.isfinite(X)
    if badx.any():
        i = int(np.flatnonzero(badx.ravel())[0])
        v = X.ravel()[i]
        what = "is NaN" if v != v else f"= {_fmt(v)} is not finite"
        return InputError("features", what, _index(i, X.shape))
    return InputError("features", f"· coef + intercept is NaN (intercept = {_fmt(b0)}): the products overflow")
