"""Open Inference Protocol v2 (KServe / Triton): health, metadata and infer for the
models ``loss`` and ``grad``, with the binary tensor data extension."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from . import __version__
from .codec_oip import (FLOAT_TYPES, HEADER_LENGTH, HEADER_NAME, LABEL_TYPES, InferRequest, InferResponse,
                        OipError, decode_request, encode_response)
from .bodies import BufferPool, run_on_body
from .compute import compute_grad, compute_loss
from .errors import RequestError
from .limits import BodyLimits
from .metrics import Metrics
from .runner import KernelRunner, Readiness
from .schemas import LossOptions, ParamsOptions
from .schemas_oip import InferenceRequest, InferenceResponse, ModelMetadata, OipErrorBody, ServerMetadata

_LOSS_INPUTS = {"predictions": FLOAT_TYPES, "labels": LABEL_TYPES, "sample_weight": FLOAT_TYPES,
                "pos_weight": FLOAT_TYPES}
_GRAD_INPUTS = {**_LOSS_INPUTS, "features": FLOAT_TYPES, "coef": FLOAT_TYPES, "intercept": FLOAT_TYPES}
_STATS = ("count", "sum", "mean", "std", "min", "max")
# Parameters of the protocol itself (and of tritonclient) that are not loss options.
_PROTOCOL_PARAMS = {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start",
                    "sequence_end", "headers"}


class Model:
    def __init__(self, name: str, inputs: dict[str, tuple[str, ...]], options: tuple[str, ...],
                 outputs: list[dict[str, Any]], compute) -> None:
        self.name = name
        self.inputs = inputs
        self.options = set(options)
        self.outputs = outputs
        self.compute = compute

    def metadata(self) -> dict[str, Any]:
        """OIP gives a tensor one ``datatype``: FP64, which every input accepts and the
        results are exact in (what generic clients and load generators send); every
        datatype accepted is listed in the tensor's ``parameters.datatypes``."""
        return {
            "name": self.name, "versions": ["1"], "platform": "lossd",
            "inputs": [{"name": n, "datatype": "FP64",
                        "shape": [-1, -1] if n in ("predictions", "labels", "features") else [-1],
                        "parameters": {"datatypes": ",".join(sorted(types, key=_PREFERRED.index))}}
                       for n, types in self.inputs.items()],
            "outputs": self.outputs,
        }


# the order datatypes are listed in metadata: the one to send first
_PREFERRED = ("FP64", "FP32", "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_ARRAY_OUT = {"parameters": {"datatypes": "FP64,FP32"}}  # FP32 with the parameter dtype = float32


def _stat_outputs() -> list[dict[str, Any]]:
    return [{"name": s, "datatype": "FP64", "shape": [1]} for s in _STATS]


MODELS = {
    "loss": Model("loss", _LOSS_INPUTS, tuple(LossOptions.model_fields),
                  [{"name": "loss", "datatype": "FP64", "shape": [1]},
                   {"name": "losses", "datatype": "FP64", "shape": [-1, -1], **_ARRAY_OUT}, *_stat_outputs()],
                  compute_loss),
    "grad": Model("grad", _GRAD_INPUTS, (*LossOptions.model_fields, *ParamsOptions.model_fields),
                  [{"name": "loss", "datatype": "FP64", "shape": [1]},
                   {"name": "losses", "datatype": "FP64", "shape": [-1, -1], **_ARRAY_OUT},
                   {"name": "grad", "datatype": "FP64", "shape": [-1, -1], **_ARRAY_OUT},
                   {"name": "coef_grad", "datatype": "FP64", "shape": [-1]},
                   {"name": "intercept_grad", "datatype": "FP64", "shape": [1]}, *_stat_outputs()],
                  compute_grad),
}


def _model(name: str) -> Model:
    model = MODELS.get(name)
    if model is None:
        raise OipError(f"unknown model {name!r}; this server has {', '.join(MODELS)}", status=404)
    return model


def _options(model: Model, req: InferRequest) -> dict[str, Any]:
    """Request parameters → the contract's options (same names as the JSON fields)."""
    out: dict[str, Any] = {}
    for key, value in req.parameters.items():
        if key in _PROTOCOL_PARAMS:
            continue
        if key not in model.options:
            raise OipError(f"unknown parameter {key!r} for model {model.name!r}")
        if key == "quantiles" and isinstance(value, str):  # parameters are scalars in OIP
            try:
                value = [float(q) for q in value.split(",") if q.strip()]
            except ValueError:
                raise OipError(f"parameter quantiles = {value!r} is not a comma-separated list of numbers") from None
        out[key] = value
    return out


def _tensor_scalar(name: str, arr: np.ndarray) -> float:
    if arr.size != 1:
        raise OipError(f"input {name!r} must hold one value, got shape {list(arr.shape)}")
    return float(arr.reshape(-1)[0])


def infer(model: Model, req: InferRequest, max_elements: int | None = None) -> tuple[bytes, dict[str, str], int]:
    data = _options(model, req)
    inputs = dict(req.inputs)
    if "pos_weight" in inputs:  # per-column weights travel as a tensor
        if "pos_weight" in data:
            raise OipError("pos_weight is given both as a parameter and as an input tensor")
        pw = inputs.pop("pos_weight")
        data["pos_weight"] = pw.astype(np.float64).reshape(-1).tolist() if pw.ndim else float(pw)
    if "intercept" in inputs:
        if "intercept" in data:
            raise OipError("intercept is given both as a parameter and as an input tensor")
        data["intercept"] = _tensor_scalar("intercept", inputs.pop("intercept"))
    data.update(inputs)
    try:
        payload, n = model.compute(data, max_elements)
    except RequestError as exc:
        raise OipError(exc.message) from None
    outputs = _outputs(payload)
    if req.outputs is not None:
        outputs = _select(model, outputs, [name for name, _ in req.outputs])
    binary = {name: (req.binary_output if flag is None else flag)
              for name, flag in (req.outputs or [(name, None) for name, _ in outputs])}
    body, headers = encode_response(InferResponse(model.name, req.id, outputs), binary)
    return body, headers, n


def _outputs(payload: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = []
    if payload.get("loss") is not None:
        out.append(("loss", np.array([payload["loss"]], dtype=np.float64)))
    if payload.get("losses") is not None:
        out.append(("losses", payload["losses"]))
    g = payload.get("grad")
    if isinstance(g, dict):  # wrt params
        out.append(("coef_grad", np.asarray(g["coef"], dtype=np.float64)))
        out.append(("intercept_grad", np.array([g["intercept"]], dtype=np.float64)))
    elif g is not None:
        out.append(("grad", g))
    for key, value in (payload.get("stats") or {}).items():
        out.append((key, np.array([value], dtype=np.float64)))
    return out


def _select(model: Model, outputs: list[tuple[str, np.ndarray]], names: list[str]):
    have = dict(outputs)
    known = {o["name"] for o in model.outputs}
    picked = []
    for name in names:
        if name in have:
            picked.append((name, have[name]))
        elif name in known or (name.startswith("p") and name[1:].replace(".", "", 1).isdigit()):
            raise OipError(f"output {name!r} is not produced by this request "
                           f"(it produces {', '.join(have)})")
        else:
            raise OipError(f"unknown output {name!r}; model {model.name!r} has {', '.join(known)} "
                           "and pNN quantiles")
    return picked


def _decode_and_infer(body: bytes | memoryview, model: Model, header_length: str | None, limits: BodyLimits):
    return infer(model, decode_request(body, header_length, model.inputs, limits.max_json_depth),
                 limits.max_elements)


_MODEL_PARAM = {"name": "model_name", "in": "path", "required": True,
                "schema": {"type": "string", "enum": list(MODELS)}}
_VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}


def _ref(model: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("OipErrorBody")}}}


_ERRORS = {
    "401": _error("Bearer token missing or wrong (when LOSSD_API_TOKEN is set)."),
    "404": _error("Unknown model (or version)."),
}
_INFER_DOC = {
    "parameters": [_MODEL_PARAM, {
        "name": HEADER_NAME, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 1},
        "description": "Length of the JSON header when binary tensors follow it (binary tensor data "
                       "extension); required for an application/octet-stream body."}],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": _ref("InferenceRequest")},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "The InferenceRequest JSON header (Inference-Header-Content-Length bytes), "
                           "then each binary input's binary_data_size bytes in input order."}}},
    "responses": {
        "200": {"description": "The outputs; binary ones follow the JSON header (its length in the "
                               "Inference-Header-Content-Length response header).",
                "content": {"application/json": {"schema": _ref("InferenceResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "400": _error("Malformed request: sizes, datatypes, unknown tensors, parameters or outputs, "
                      "bad values (the JSON API's messages)."),
        **_ERRORS,
        "408": _error("The body did not arrive within LOSSD_BODY_TIMEOUT."),
        "413": _error("The body is over LOSSD_MAX_BODY_BYTES."),
        "503": _error("Too many requests queued (retry after the Retry-After delay), or more connections "
                      "than LOSSD_MAX_CONNECTIONS."),
        "504": _error("Not computed within LOSSD_COMPUTE_TIMEOUT."),
    },
}


def _model_doc(body_model: str | None = None) -> dict[str, Any]:
    if body_model:
        ok = {"200": {"description": "Model metadata.", "content": {"application/json": {"schema": _ref(body_model)}}}}
    else:  # readiness: the protocol's "4xx is false", empty bodies
        ok = {"200": {"description": "Ready."}, "400": {"description": "Not ready yet."}}
    return {"parameters": [_MODEL_PARAM], "responses": {**ok, **_ERRORS}}


def add_oip_routes(app: FastAPI, runner: KernelRunner, metrics: Metrics, readiness: Readiness,
                   pool: BufferPool, inline_bytes: int, limits: BodyLimits = BodyLimits()) -> None:
    """Path parameters are read from ``request.path_params``: as endpoint arguments
    FastAPI would document (and answer) a 422 that OIP clients never get."""
    tags = ["open inference protocol v2"]

    @app.get("/v2", tags=tags, summary="Server metadata", response_model=ServerMetadata)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "lossd", "version": __version__, "extensions": ["binary_tensor_data"]}

    # empty bodies: documented without content (FastAPI would list an application/json one)
    @app.get("/v2/health/live", tags=tags, summary="200 while the process runs", response_class=Response,
             responses={200: {"description": "Live (empty body)."}})
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=tags, summary="200 once every kernel is compiled, else 400",
             response_class=Response, responses={200: {"description": "Ready (empty body)."},
                                                 400: {"description": "Not ready yet (empty body)."}})
    async def ready() -> Response:
        return Response(status_code=200 if readiness.ready.is_set() else 400)

    @app.get("/v2/models/{model_name}", tags=tags, summary="Model metadata: inputs and outputs",
             response_model=None, openapi_extra=_model_doc("ModelMetadata"))
    async def model_metadata(request: Request) -> Response:
        return JSONResponse(_model(request.path_params["model_name"]).metadata())

    @app.get("/v2/models/{model_name}/versions/{version}", tags=tags, include_in_schema=False)
    async def model_version_metadata(request: Request) -> Response:
        _version(request.path_params["version"])
        return JSONResponse(_model(request.path_params["model_name"]).metadata())

    @app.get("/v2/models/{model_name}/ready", tags=tags, summary="200 once the model's kernels are compiled",
             response_model=None, response_class=Response, openapi_extra=_model_doc())
    async def model_ready(request: Request) -> Response:
        _model(request.path_params["model_name"])
        return Response(status_code=200 if readiness.ready.is_set() else 400)

    async def run_infer(request: Request) -> Response:
        model = _model(request.path_params["model_name"])
        header_length = request.headers.get(HEADER_LENGTH)
        # binary tensors cost nothing to decode: only all-JSON bodies go to the large lane
        content, headers, n = await run_on_body(request, pool, runner, inline_bytes, _decode_and_infer,
                                                model, header_length, limits, lane=header_length is None)
        metrics.elements.labels(request.scope["route"].path).inc(n)
        return Response(content, headers=headers)

    @app.post("/v2/models/{model_name}/infer", tags=tags, summary="Inference (JSON or binary tensors)",
              response_model=None, openapi_extra=_INFER_DOC)
    async def model_infer(request: Request) -> Response:
        """Inputs `predictions`, `labels` (also INT*/UINT*/BOOL), `sample_weight`, `pos_weight`,
        `features`, `coef`, `intercept`; options as request `parameters` named as in the
        JSON API. Outputs `loss`, `losses`, `grad` or `coef_grad`/`intercept_grad`, and the
        stats `count`, `sum`, `mean`, `std`, `min`, `max` (+ `pNN` quantiles)."""
        return await run_infer(request)

    @app.post("/v2/models/{model_name}/versions/{version}/infer", tags=tags, include_in_schema=False)
    async def model_version_infer(request: Request) -> Response:
        _version(request.path_params["version"])
        return await run_infer(request)


# models referenced by $ref above, added to components by the app's openapi()
OPENAPI_MODELS = (InferenceRequest, InferenceResponse, ModelMetadata, OipErrorBody)


def _version(version: str) -> None:
    if version != "1":
        raise OipError(f"unknown model version {version!r}; the models have version 1", status=404)
