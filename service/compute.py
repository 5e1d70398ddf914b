"""Requests to kernel calls: options checked, arrays converted, results as plain dicts.

No HTTP here: every function takes the decoded body and returns the response payload
with the number of elements it processed, or raises ``RequestError`` (422).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from lossd import kernels

from .codec_json import to_array
from .errors import RequestError
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


def _required(arrays: dict[str, Any], name: str) -> np.ndarray:
    if name not in arrays or arrays[name] is None:
        raise RequestError.at((name,), f"{name} is required", kind="missing")
    return _array(name, arrays[name])


def _optional(arrays: dict[str, Any], name: str) -> np.ndarray | None:
    v = arrays.get(name)
    return None if v is None else _array(name, v)


def _array(name: str, v: Any) -> np.ndarray:
    # binary tensors arrive decoded, in their own dtype: the kernels take them as they are
    return v if isinstance(v, np.ndarray) else to_array(name, v)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        raise RequestError.from_kernel(exc) from None


def _kernel_options(opts: BaseModel) -> dict[str, Any]:
    out = opts.model_dump(exclude={"wrt"})
    out["quantiles"] = tuple(out["quantiles"])
    return out


def _predictions_request(data: dict[str, Any], model: type[BaseModel]):
    arrays, opts = _split(data, LOSS_ARRAYS, model)
    pred = _required(arrays, "predictions")
    lab = _required(arrays, "labels")
    # dtype = "float32" rounds these to float32 in the kernels: one rule for the Python
    # API and every path and transport
    return pred, lab, _optional(arrays, "sample_weight"), opts


def _header(opts: LossOptions) -> dict[str, Any]:
    return {"input": opts.input, "loss_type": opts.loss, "reduction": opts.reduction}


def compute_loss(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """POST /loss."""
    pred, lab, w, opts = _predictions_request(data, LossOptions)
    r = _call(kernels.loss, pred, lab, sample_weight=w, **_kernel_options(opts))
    return {"loss": r.loss, "losses": r.losses, "stats": r.stats, **_header(opts)}, pred.size


def compute_grad(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """POST /grad: ``wrt`` picks predictions (default) or the logistic model's params."""
    wrt = data.get("wrt", "predictions")
    if wrt == "params":
        return _params_grad(data)
    pred, lab, w, opts = _predictions_request(data, GradOptions)
    g = _call(kernels.grad, pred, lab, sample_weight=w, **_kernel_options(opts))
    return {"loss": g.loss, "grad": g.grad, "losses": g.losses, "stats": g.stats,
            **_header(opts)}, pred.size


def _params_grad(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    misplaced = [k for k in ("predictions", *LossOptions.model_fields) if k in data]
    if misplaced:
        raise RequestError.at((misplaced[0],), f'{misplaced[0]} does not apply to wrt = "params" '
                              "(it takes features, labels, coef, intercept, sample_weight, l2)",
                              kind="extra_forbidden")
    arrays, opts = _split(data, PARAMS_ARRAYS, ParamsOptions)
    X = _required(arrays, "features")  # non-finite features and coef: refused by the kernels
    y = _required(arrays, "labels")
    c = _required(arrays, "coef")
    p = _call(kernels.logreg_grad, X, y, c, opts.intercept,
              sample_weight=_optional(arrays, "sample_weight"), l2=opts.l2)
    return {"loss": p.loss, "grad": {"coef": p.coef, "intercept": p.intercept}}, X.size
