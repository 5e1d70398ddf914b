"""The public arguments as infer requests, and infer outputs as result objects.

Options travel as request parameters named as the contract's keywords, and only when
they differ from the defaults (the server applies the same defaults, so a short request
means the same thing). Pure functions, shared by the sync and async clients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._codec import Outputs, float_tensor, label_tensor
from ._errors import LossdError
from ._results import GradResult, LossResult, ParamGrad

# Outputs that are not statistics; every other output is a ``stats`` key.
_NOT_STATS = frozenset({"loss", "losses", "grad", "coef_grad", "intercept_grad", "summary"})

# The service's contract (``lossd.service.fields``), mirrored: the client must not import
# the service. tests/test_fields.py checks that the two agree.
LOSS_DEFAULTS = {"input": "logits", "loss": "cross_entropy", "reduction": "mean", "pos_weight": None,
                 "label_smoothing": 0.0, "eps": None, "gamma": 2.0, "alpha": None, "quantiles": (),
                 "dtype": "float64", "summary": False}
PARAMS_DEFAULTS = {"intercept": 0.0, "l2": 0.0}
INPUTS = {"loss": ("predictions", "labels", "sample_weight", "pos_weight"),
          "grad": ("predictions", "labels", "sample_weight", "pos_weight", "features", "coef", "intercept")}


@dataclass(frozen=True, slots=True)
class Call:
    """One infer request: the model, its inputs and parameters, and how to read the answer."""

    model: str
    inputs: Outputs
    parameters: dict[str, Any]
    parse: Callable[[Outputs], Any]

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"


# ------------------------------------------------------------------------------ options

def _number(value: Any) -> Any:
    """A numeric option as a Python float (its JSON repr round-trips exactly), converted
    as the kernels convert it (``float(value)``); a value that is no number is sent as
    given, for the server to refuse with its own message."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _differs(value: Any, default: float) -> bool:
    """True unless ``value`` is exactly ``default`` (sign of zero included: -0.0 is sent)."""
    if not isinstance(value, float):
        return True
    return value != default or math.copysign(1.0, value) != math.copysign(1.0, default)


def _quantiles(quantiles: Any) -> str | None:
    """OIP parameters are scalars: quantiles go as a comma-separated string of reprs
    (exact), in the caller's order, which is the order of the p-keys in ``stats``.
    A number or any iterable of numbers, as in ``lossd.kernels``."""
    if quantiles is None:
        return None
    if isinstance(quantiles, (str, bytes, dict, bool)):
        raise ValueError(f"quantiles must be a number in [0, 1] or a sequence of them, got "
                         f"{type(quantiles).__name__} {quantiles!r:.40}")
    if isinstance(quantiles, (int, float, np.number)) or (isinstance(quantiles, np.ndarray)
                                                           and quantiles.ndim == 0):
        quantiles = [quantiles]
    try:
        items = list(np.asarray(quantiles).reshape(-1)) if isinstance(quantiles, np.ndarray) else list(quantiles)
    except TypeError:
        raise ValueError(f"quantiles must be a number in [0, 1] or a sequence of them, got "
                         f"{type(quantiles).__name__}") from None
    qs = []
    for i, q in enumerate(items):
        if isinstance(q, (str, bytes, bool, np.bool_)) or not isinstance(q, (int, float, np.number)):
            raise ValueError(f"quantiles[{i}] = {q!r:.40} is not a number")
        qs.append(repr(float(q)))
    return ",".join(qs) or None


def loss_parameters(*, input: Any, loss: Any, reduction: Any, label_smoothing: Any, eps: Any,
                    gamma: Any, alpha: Any, quantiles: Sequence[float], dtype: Any,
                    summary: Any = False) -> dict[str, Any]:
    """The request parameters for the scalar options that differ from the defaults."""
    params: dict[str, Any] = {}
    for key, value in (("input", input), ("loss", loss), ("reduction", reduction), ("dtype", dtype)):
        if not (isinstance(value, str) and value == LOSS_DEFAULTS[key]):
            params[key] = value
    for key, value in (("label_smoothing", label_smoothing), ("gamma", gamma)):
        value = _number(value)
        if _differs(value, LOSS_DEFAULTS[key]):
            params[key] = value
    for key, value in (("eps", eps), ("alpha", alpha)):
        if value is not None:
            params[key] = _number(value)
    q = _quantiles(quantiles)
    if q is not None:
        params["quantiles"] = q
    if summary is not False:  # anything but a bool is sent, for the server to refuse
        params["summary"] = summary
    return params


# ------------------------------------------------------------------------------ requests

def loss_call(model: str, predictions: Any, labels: Any, *, sample_weight: Any, pos_weight: Any,
              **options: Any) -> Call:
    """An infer request for the ``loss`` or ``grad`` model (wrt predictions)."""
    params = loss_parameters(**options)
    inputs = [("predictions", float_tensor("predictions", predictions)), ("labels", label_tensor(labels))]
    if sample_weight is not None:
        inputs.append(("sample_weight", float_tensor("sample_weight", sample_weight)))
    if pos_weight is not None:
        if np.ndim(pos_weight) == 0:  # a scalar is a parameter, per-column weights a tensor
            params["pos_weight"] = _number(pos_weight)
        else:
            inputs.append(("pos_weight", float_tensor("pos_weight", pos_weight)))
    parse = to_grad_result if model == "grad" else to_loss_result
    return Call(model, inputs, params, parse)


def logreg_call(features: Any, labels: Any, coef: Any, intercept: Any, *, sample_weight: Any,
                l2: Any) -> Call:
    """An infer request for the ``grad`` model with ``wrt = "params"``."""
    params: dict[str, Any] = {"wrt": "params"}
    for key, value in (("intercept", intercept), ("l2", l2)):
        value = _number(value)
        if _differs(value, PARAMS_DEFAULTS[key]):
            params[key] = value
    inputs = [("features", float_tensor("features", features)), ("labels", label_tensor(labels)),
              ("coef", float_tensor("coef", coef))]
    if sample_weight is not None:
        inputs.append(("sample_weight", float_tensor("sample_weight", sample_weight)))
    return Call("grad", inputs, params, to_param_grad)


# ------------------------------------------------------------------------------- results

def _required(named: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in named:
        raise LossdError(200, f"malformed inference response: no output {name!r} "
                              f"(got {', '.join(named) or 'none'})")
    return named[name]


def _float(arr: np.ndarray | None) -> float | None:
    return None if arr is None else float(arr.reshape(-1)[0])


def _stats(outputs: Outputs) -> dict[str, float]:
    """The statistics in the server's order, which is the kernels' (count, sum, mean,
    std, min, max, then the quantiles as asked); count is an integer, as in kernels."""
    stats: dict[str, Any] = {}
    for name, arr in outputs:
        if name not in _NOT_STATS:
            value = _float(arr)
            stats[name] = int(value) if name == "count" else value
    return stats


def _summary(named: dict[str, np.ndarray]) -> Any:
    """The ``summary`` output (one BYTES element) as a ``LossSummary``, or None."""
    arr = named.get("summary")
    if arr is None:
        return None
    try:
        from ._summary_state import LossSummary  # needs datasketches: lossd-client[summary]
    except ImportError as exc:
        raise LossdError(200, f"summary=True needs the datasketches package (pip install "
                              f"'lossd-client[summary]'): {exc}") from None
    try:
        return LossSummary.from_bytes(arr.reshape(-1)[0])
    except (ValueError, IndexError) as exc:
        raise LossdError(200, f"malformed inference response: output 'summary': {exc}") from None


def to_loss_result(outputs: Outputs) -> LossResult:
    named = dict(outputs)
    return LossResult(_float(named.get("loss")), named.get("losses"), _stats(outputs), _summary(named))


def to_grad_result(outputs: Outputs) -> GradResult:
    named = dict(outputs)
    return GradResult(_float(named.get("loss")), _required(named, "grad"), named.get("losses"),
                      _stats(outputs), _summary(named))


def to_param_grad(outputs: Outputs) -> ParamGrad:
    named = dict(outputs)
    return ParamGrad(_float(_required(named, "loss")), _required(named, "coef_grad"),
                     _float(_required(named, "intercept_grad")))
