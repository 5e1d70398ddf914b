"""POST /loss and POST /grad: JSON in, JSON out (``codecs/json.py`` via ``pipeline``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response

from .errors import ApiError
from .limits import BodyLimits
from .metrics import Metrics
from .bodies import BufferPool, run_on_body
from .pipeline import run_json
from .runner import KernelRunner
from .schemas import (ErrorBody, GradResponse, LossResponse, ParamsGradResponse,
                      ValidationErrorBody)

_ERRORS = {
    401: {"model": ErrorBody, "description": "Bearer token missing or wrong (when LOSSD_API_TOKEN is set)."},
    408: {"model": ErrorBody, "description": "The body did not arrive within LOSSD_BODY_TIMEOUT."},
    413: {"model": ErrorBody, "description": "The body is over LOSSD_MAX_BODY_BYTES."},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json."},
    422: {"model": ValidationErrorBody, "description": "Invalid content: `loc` names the field and "
          "index, `msg` what is wrong (also: an array over LOSSD_MAX_ELEMENTS, JSON nested deeper "
          "than LOSSD_MAX_JSON_DEPTH)."},
    503: {"model": ErrorBody, "description": "Too many requests queued (retry after the Retry-After delay), "
          "or more connections than LOSSD_MAX_CONNECTIONS."},
    504: {"model": ErrorBody, "description": "Not computed within LOSSD_COMPUTE_TIMEOUT."},
}


def _body_ref(*names: str) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{n}"} for n in names]
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}}}}


def check_json_type(request: Request) -> None:
    ctype = request.headers.get("content-type")
    if ctype is None:
        raise ApiError(415, "Content-Type is missing; send 'Content-Type: application/json'")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, f"Content-Type {ctype!r} is not supported; send application/json")


def add_json_routes(app: FastAPI, runner: KernelRunner, metrics: Metrics, pool: BufferPool,
                    inline_bytes: int, limits: BodyLimits = BodyLimits()) -> None:
    # registered on the app itself (not an included router) so that the front door can
    # match a refused request to its route for the metrics label

    async def answer(request: Request, op: str, route: str) -> Response:
        check_json_type(request)
        content, headers, n = await run_on_body(request, pool, runner, inline_bytes, run_json, op, limits,
                                                lane=True)
        metrics.elements.labels(route).inc(n)
        return Response(content, headers=headers)

    @app.post("/loss", tags=["losses"], summary="Loss, per-element losses and their statistics",
                 response_model=None, openapi_extra=_body_ref("LossRequest"),
                 responses={200: {"model": LossResponse, "description": "The loss and statistics."},
                            **_ERRORS})
    async def loss(request: Request) -> Response:
        """Cross-entropy (and relatives) of `predictions` against `labels`.
        Non-finite values travel as the strings "Infinity", "-Infinity"."""
        return await answer(request, "loss", "/loss")

    @app.post("/grad", tags=["losses"], summary="Gradient w.r.t. the predictions or a logistic model's params",
                 response_model=None, openapi_extra=_body_ref("GradRequest", "ParamsGradRequest"),
                 responses={200: {"description": "`wrt: predictions` → GradResponse; "
                                  "`wrt: params` → ParamsGradResponse.",
                                  "content": {"application/json": {"schema": {"oneOf": [
                                      {"$ref": "#/components/schemas/GradResponse"},
                                      {"$ref": "#/components/schemas/ParamsGradResponse"}]}}}},
                            **_ERRORS})
    async def grad(request: Request) -> Response:
        """`wrt: predictions` (default): d(reduced loss)/d(predictions), the predictions' shape.
        `wrt: params`: the mean logistic loss of z = features·coef + intercept and its
        gradient, dJ/dw_j = (1/n) Σ x_j (σ(z) - y), dJ/db = (1/n) Σ (σ(z) - y)."""
        return await answer(request, "grad", "/grad")


# models referenced by $ref above, added to components by the app's openapi()
OPENAPI_MODELS = (LossResponse, GradResponse, ParamsGradResponse)
