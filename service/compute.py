"""The request model to a kernel call: ``compute(request) -> result``.

No wire format here: a ``requests.PredictionsRequest`` or ``ParamsRequest`` comes in,
whichever codec decoded it, and the kernels' own result (``kernels.LossResult``,
``GradResult``, ``ParamGrad``) goes out, for the same codec to encode. The element limit
(``LOSSD_MAX_ELEMENTS``) is checked here, once for every transport. Errors are
``RequestError``s: the kernels' ``InputError`` becomes one with its argument and index
as ``loc``.
"""

from __future__ import annotations

from lossd import kernels
from lossd.kernels.errors import InputError

from .errors import RequestError
from .limits import check_elements
from .requests import ParamsRequest, Request, Result


def compute(request: Request, max_elements: int | None = None) -> Result:
    """The kernels' answer to ``request``; arrays of more than ``max_elements`` numbers
    are refused."""
    if max_elements is not None:
        for name, arr in request.arrays():
            try:
                check_elements(name, arr, max_elements)
            except ValueError as exc:
                raise RequestError.at((name,), str(exc), kind="too_long") from None
    try:
        if isinstance(request, ParamsRequest):
            return kernels.logreg_grad(request.features, request.labels, request.coef, request.intercept,
                                       sample_weight=request.sample_weight, l2=request.l2)
        fn = kernels.loss if request.op == "loss" else kernels.grad
        o = request.options
        return fn(request.predictions, request.labels, sample_weight=request.sample_weight, input=o.input,
                  loss=o.loss, reduction=o.reduction, pos_weight=o.pos_weight, label_smoothing=o.label_smoothing,
                  eps=o.eps, gamma=o.gamma, alpha=o.alpha, quantiles=o.quantiles, dtype=o.dtype,
                  summary=o.summary)
    except InputError as exc:
        raise RequestError.from_kernel(exc) from None
