"""Requests to kernel calls: options checked, arrays converted, results as plain dicts.

No HTTP here: every function takes the decoded body and returns the response payload
with the number of elements it processed, or raises ``RequestError`` (422).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from lossd import kernels
from lossd.kernels.errors import InputError

from .codec_json import to_array
from .errors import RequestError
from .limits import check_elements
from .schemas import GradOptions, LossOptions, ParamsOptions

LOSS_ARRAYS = ("predictions", "labels", "sample_weight")
PARAMS_ARRAYS = ("features", "labels", "coef", "sample_weight")


def _split(data: dict[str, Any], array_fields: tuple[str, ...], model: type[BaseModel]):
    arrays = {k: data.pop(k) for k in array_fields if k in data}
    try:
        opts = model.model_validate(data)
    except ValidationError as exc:
        raise RequestError.from_validation(exc) from None
    return arrays, opts


def _required(arrays: dict[str, Any], name: str, max_elements: int | None) -> np.ndarray:
    if name not in arrays or arrays[name] is None:
        raise RequestError.at((name,), f"{name} is required", kind="missing")
    return _array(name, arrays[name], max_elements)


def _optional(arrays: dict[str, Any], name: str, max_elements: int | None) -> np.ndarray | None:
    v = arrays.get(name)
    return None if v is None else _array(name, v, max_elements)


def _array(name: str, v: Any, max_elements: int | None) -> np.ndarray:
    # binary tensors arrive decoded, in their own dtype: the kernels take them as they are
    arr = v if isinstance(v, np.ndarray) else to_array(name, v)
    try:
        check_elements(name, arr, max_elements)
    except ValueError as exc:
        raise RequestError.at((name,), str(exc), kind="too_long") from None
    return arr


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InputError as exc:
        raise RequestError.from_kernel(exc) from None


def _kernel_options(opts: BaseModel) -> dict[str, Any]:
    out = opts.model_dump(exclude={"wrt"})
    out["quantiles"] = tuple(out["quantiles"])
    return out


def _predictions_request(data: dict[str, Any], model: type[BaseModel], max_elements: int | None):
    arrays, opts = _split(data, LOSS_ARRAYS, model)
    pred = _required(arrays, "predictions", max_elements)
    lab = _required(arrays, "labels", max_elements)
    # dtype = "float32" rounds these to float32 in the kernels: one rule for the Python
    # API and every path and transport
    return pred, lab, _optional(arrays, "sample_weight", max_elements), opts


def _header(opts: LossOptions) -> dict[str, Any]:
    return {"input": opts.input, "loss_type": opts.loss, "reduction": opts.reduction}


def compute_loss(data: dict[str, Any], max_elements: int | None = None) -> tuple[dict[str, Any], int]:
    """POST /loss. Arrays of more than ``max_elements`` numbers are refused (422)."""
    pred, lab, w, opts = _predictions_request(data, LossOptions, max_elements)
    r = _call(kernels.loss, pred, lab, sample_weight=w, **_kernel_options(opts))
    return {"loss": r.loss, "losses": r.losses, "stats": r.stats, **_header(opts)}, pred.size


def compute_grad(data: dict[str, Any], max_elements: int | None = None) -> tuple[dict[str, Any], int]:
    """POST /grad: ``wrt`` picks predictions (default) or the logistic model's params."""
    wrt = data.get("wrt", "predictions")
    if wrt == "params":
        return _params_grad(data, max_elements)
    pred, lab, w, opts = _predictions_request(data, GradOptions, max_elements)
    g = _call(kernels.grad, pred, lab, sample_weight=w, **_kernel_options(opts))
    return {"loss": g.loss, "grad": g.grad, "losses": g.losses, "stats": g.stats,
            **_header(opts)}, pred.size


def _params_grad(data: dict[str, Any], max_elements: int | None) -> tuple[dict[str, Any], int]:
    misplaced = [k for k in ("predictions", *LossOptions.model_fields) if k in data]
    if misplaced:
        raise RequestError.at((misplaced[0],), f'{misplaced[0]} does not apply to wrt = "params" '
                              "(it takes features, labels, coef, intercept, sample_weight, l2)",
                              kind="extra_forbidden")
    arrays, opts = _split(data, PARAMS_ARRAYS, ParamsOptions)
    X = _required(arrays, "features", max_elements)  # non-finite features and coef: refused by the kernels
    y = _required(arrays, "labels", max_elements)
    c = _required(arrays, "coef", max_elements)
    p = _call(kernels.logreg_grad, X, y, c, opts.intercept,
              sample_weight=_optional(arrays, "sample_weight", max_elements), l2=opts.l2)
    return {"loss": p.loss, "grad": {"coef": p.coef, "intercept": p.intercept}}, X.size
