"""The request model: what every codec decodes a body into and ``compute`` takes.

Typed and immutable (frozen dataclasses with slots, arrays read-only), and free of any
wire format: a JSON body, an OIP request with JSON tensors and one with binary tensors
all become the same objects. Field names are the kernels' keywords, the JSON fields and
the OIP tensors and parameters (``fields.py``). Instances pickle (the large lane).

``build`` turns the named values a codec found (arrays still in the codec's own form,
options as sent) into a request: options checked by the pydantic models of
``schemas.py`` (their messages are the contract's), arrays converted by the codec's
``to_array`` in the contract's order. Errors are ``RequestError``s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields as dc_fields
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from lossd.kernels import GradResult, LossResult, ParamGrad

from . import fields
from .errors import RequestError
from .schemas import GradOptions, LossOptions, ParamsOptions


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` read-only. The arrays come from the codecs, made from the body for this
    request (or read-only views of it already): nobody else holds them."""
    a.flags.writeable = False
    return a


@dataclass(frozen=True, slots=True)
class Options:
    """The scalar options of a loss or gradient w.r.t. the predictions: exactly the
    keywords of ``kernels.loss``/``kernels.grad`` besides the arrays."""
    input: str = fields.PREDICTIONS_OPTIONS["input"]
    loss: str = fields.PREDICTIONS_OPTIONS["loss"]
    reduction: str = fields.PREDICTIONS_OPTIONS["reduction"]
    pos_weight: float | np.ndarray | None = fields.PREDICTIONS_OPTIONS["pos_weight"]
    label_smoothing: float = fields.PREDICTIONS_OPTIONS["label_smoothing"]
    eps: float | None = fields.PREDICTIONS_OPTIONS["eps"]
    gamma: float = fields.PREDICTIONS_OPTIONS["gamma"]
    alpha: float | None = fields.PREDICTIONS_OPTIONS["alpha"]
    quantiles: tuple[float, ...] = fields.PREDICTIONS_OPTIONS["quantiles"]
    dtype: str = fields.PREDICTIONS_OPTIONS["dtype"]
    summary: bool = fields.PREDICTIONS_OPTIONS["summary"]

    def kwargs(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _OPTION_NAMES}


_OPTION_NAMES = tuple(f.name for f in dc_fields(Options))
DEFAULT_OPTIONS = Options()


@dataclass(frozen=True, slots=True)
class PredictionsRequest:
    """/loss, /grad with ``wrt = "predictions"``; the OIP models loss and grad."""
    op: Literal["loss", "grad"]
    predictions: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray | None = None
    options: Options = DEFAULT_OPTIONS

    @property
    def elements(self) -> int:
        return self.predictions.size

    def arrays(self) -> tuple[tuple[str, np.ndarray | None], ...]:
        return tuple((name, getattr(self, name)) for name in fields.PREDICTIONS_ARRAYS)


@dataclass(frozen=True, slots=True)
class ParamsRequest:
    """/grad with ``wrt = "params"``: a logistic model's loss and gradient."""
    features: np.ndarray
    labels: np.ndarray
    coef: np.ndarray
    sample_weight: np.ndarray | None = None
    intercept: float = fields.PARAMS_OPTIONS["intercept"]
    l2: float = fields.PARAMS_OPTIONS["l2"]

    op = "grad"  # a class attribute: not a field

    @property
    def elements(self) -> int:
        return self.features.size

    def arrays(self) -> tuple[tuple[str, np.ndarray | None], ...]:
        return tuple((name, getattr(self, name)) for name in fields.PARAMS_ARRAYS)


Request = PredictionsRequest | ParamsRequest
# what the kernels answer, and every codec encodes
Result = LossResult | GradResult | ParamGrad
ToArray = Callable[[str, Any], np.ndarray]


# ------------------------------------------------------------------------------ build

def build(op: str, data: dict[str, Any], to_array: ToArray) -> Request:
    """The request of operation ``op`` ("loss" or "grad") from a body's named values.

    ``data`` holds arrays (in the codec's form: ``to_array`` converts each) and options
    as sent; it is consumed. An option given as an array (an OIP ``pos_weight`` tensor)
    is taken as it is, after the other options are checked.
    """
    if op == "grad" and data.get("wrt", fields.WRT[0]) == "params":
        return _params(data, to_array)
    pos_weight = data.pop("pos_weight") if isinstance(data.get("pos_weight"), np.ndarray) else None
    arrays = {k: data.pop(k) for k in fields.PREDICTIONS_ARRAYS if k in data}
    # no options (the usual request): the defaults, which need no checking
    opts = _validate(LossOptions if op == "loss" else GradOptions, data) if data else None
    pred = _required(arrays, "predictions", to_array)
    lab = _required(arrays, "labels", to_array)
    weight = _optional(arrays, "sample_weight", to_array)
    if opts is None and pos_weight is None:
        options = DEFAULT_OPTIONS
    else:
        # the validated model's attributes (cheaper than model_dump)
        values = {} if opts is None else {k: getattr(opts, k) for k in _OPTION_NAMES}
        if "quantiles" in values:
            values["quantiles"] = tuple(values["quantiles"])
        if pos_weight is not None:
            values["pos_weight"] = _frozen(pos_weight)
        elif isinstance(values.get("pos_weight"), list):
            values["pos_weight"] = _frozen(np.array(values["pos_weight"], dtype=np.float64))
        options = Options(**values)
    # dtype = "float32" rounds the arrays to float32 in the kernels: one rule for the
    # Python API and every path and transport
    return PredictionsRequest(op, pred, lab, weight, options)  # type: ignore[arg-type]


def _params(data: dict[str, Any], to_array: ToArray) -> ParamsRequest:
    misplaced = [k for k in ("predictions", *fields.PREDICTIONS_OPTIONS) if k in data]
    if misplaced:
        raise RequestError.at((misplaced[0],), f'{misplaced[0]} does not apply to wrt = "params" '
                              "(it takes features, labels, coef, intercept, sample_weight, l2)",
                              kind="extra_forbidden")
    arrays = {k: data.pop(k) for k in fields.PARAMS_ARRAYS if k in data}
    opts = _validate(ParamsOptions, data)
    X = _required(arrays, "features", to_array)  # non-finite features and coef: refused by the kernels
    y = _required(arrays, "labels", to_array)
    c = _required(arrays, "coef", to_array)
    return ParamsRequest(X, y, c, _optional(arrays, "sample_weight", to_array), opts.intercept, opts.l2)


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError.from_validation(exc) from None


def _required(arrays: dict[str, Any], name: str, to_array: ToArray) -> np.ndarray:
    if arrays.get(name) is None:
        raise RequestError.at((name,), f"{name} is required", kind="missing")
    return _frozen(to_array(name, arrays[name]))


def _optional(arrays: dict[str, Any], name: str, to_array: ToArray) -> np.ndarray | None:
    v = arrays.get(name)
    return None if v is None else _frozen(to_array(name, v))
