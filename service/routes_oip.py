"""Open Inference Protocol v2 (KServe / Triton): health, metadata and infer for the
models ``loss`` and ``grad``, with the binary tensor data extension."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from . import __version__, fields
from .codecs.oip_binary import HEADER_LENGTH, HEADER_NAME
from .bodies import BufferPool, run_on_body
from .errors import ApiError, RequestError
from .shm import Registry
from .limits import BodyLimits
from .metrics import Metrics
from .pipeline import run_oip
from .runner import KernelRunner, Readiness
from .schemas_oip import InferenceRequest, InferenceResponse, ModelMetadata, OipErrorBody, ServerMetadata


def metadata_of(name: str) -> dict[str, Any]:
    """OIP gives a tensor one ``datatype``: FP64, which every input accepts and the
    results are exact in (what generic clients and load generators send); every datatype
    accepted is listed in the tensor's ``parameters.datatypes``. From ``fields.py``."""
    return {
        "name": name, "versions": ["1"], "platform": "lossd",
        "inputs": [{"name": t.name, "datatype": "FP64", "shape": list(t.shape),
                    "parameters": {"datatypes": ",".join(sorted(t.datatypes, key=fields.PREFERRED_TYPES.index))}}
                   for t in fields.OIP_INPUTS[name]],
        "outputs": [{"name": out, "datatype": fields.OUTPUT_DATATYPES.get(out, "FP64"), "shape": list(shape), **({"parameters": params} if params else {})}
                    for out, shape, params in fields.OIP_OUTPUTS[name]],
    }


MODELS = fields.OPERATIONS


def _model(name: str) -> str:
    if name not in MODELS:
        raise ApiError(404, f"unknown model {name!r}; this server has {', '.join(MODELS)}")
    return name


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
        return {"name": "lossd", "version": __version__,
                "extensions": ["binary_tensor_data", *(["system_shared_memory"] if limits.shm else [])]}

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
        return JSONResponse(metadata_of(_model(request.path_params["model_name"])))

    @app.get("/v2/models/{model_name}/versions/{version}", tags=tags, include_in_schema=False)
    async def model_version_metadata(request: Request) -> Response:
        _version(request.path_params["version"])
        return JSONResponse(metadata_of(_model(request.path_params["model_name"])))

    @app.get("/v2/models/{model_name}/ready", tags=tags, summary="200 once the model's kernels are compiled",
             response_model=None, response_class=Response, openapi_extra=_model_doc())
    async def model_ready(request: Request) -> Response:
        _model(request.path_params["model_name"])
        return Response(status_code=200 if readiness.ready.is_set() else 400)

    async def run_infer(request: Request) -> Response:
        model = _model(request.path_params["model_name"])
        header_length = request.headers.get(HEADER_LENGTH)
        # binary tensors cost nothing to decode: only all-JSON bodies go to the large lane
        content, headers, n = await run_on_body(request, pool, runner, inline_bytes, run_oip,
                                                model, header_length, limits, lane=header_length is None,
                                                heavy=_in_shm if limits.shm else None)
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


    if limits.shm is not None:
        add_shm_routes(app, limits.shm, tags)


def _in_shm(body) -> bool:
    """Whether a (small) infer body names a shared memory region: its work is not small."""
    return b"shared_memory_region" in bytes(body)


_REGISTER_KEYS = ("key", "offset", "byte_size")


def add_shm_routes(app: FastAPI, registry: Registry, tags: list[str]) -> None:
    """Triton's system shared memory extension (``shm.py``); added only when LOSSD_SHM is
    on (else these paths are 404, as on a server without the extension)."""
    tags = [*tags, "system shared memory"]
    base = "/v2/systemsharedmemory"

    @app.get(base + "/status", tags=tags, summary="Every registered region")
    async def shm_status() -> Response:
        return JSONResponse([r.status() for r in registry.regions()])

    @app.get(base + "/region/{region_name}/status", tags=tags, summary="One registered region")
    async def shm_region_status(request: Request) -> Response:
        return JSONResponse([registry.lookup(request.path_params["region_name"]).status()])

    @app.post(base + "/region/{region_name}/register", tags=tags,
              summary="Register a POSIX shared memory region: {key, offset, byte_size}")
    async def shm_register(request: Request) -> Response:
        name = request.path_params["region_name"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise RequestError.at((), f"shared memory region {name!r}: the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError.at((), f"shared memory region {name!r}: the body must be an object "
                                  "{key, offset, byte_size}")
        unknown = [k for k in body if k not in _REGISTER_KEYS]
        if unknown:
            raise RequestError.at((), f"shared memory region {name!r}: unknown field {unknown[0]!r} "
                                  "(expected key, offset, byte_size)")
        registry.register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
        return Response(status_code=200)

    @app.post(base + "/region/{region_name}/unregister", tags=tags, summary="Unregister one region")
    async def shm_unregister(request: Request) -> Response:
        registry.unregister(request.path_params["region_name"])
        return Response(status_code=200)

    @app.post(base + "/unregister", tags=tags, summary="Unregister every region")
    async def shm_unregister_all() -> Response:
        registry.unregister_all()
        return Response(status_code=200)


# models referenced by $ref above, added to components by the app's openapi()
OPENAPI_MODELS = (InferenceRequest, InferenceResponse, ModelMetadata, OipErrorBody)


def _version(version: str) -> None:
    if version != "1":
        raise ApiError(404, f"unknown model version {version!r}; the models have version 1")
