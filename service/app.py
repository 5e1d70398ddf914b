"""The application factory."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numba
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from lossd import kernels

from . import __version__, shm
from .shm import Registry
from .shm_helper import ShmHelper
from .errors import ApiError
from .metrics import Metrics
from .middleware import FrontDoor, log_safe
from .protocol import error_body, protocol_of
from .bodies import BufferPool
from .drain import DRAINING, CloseWhenDraining
from .lane import LargeLane
from .limits import BodyDeadline, BodyLimits
from .routes_json import OPENAPI_MODELS, add_json_routes
from .routes_oip import OPENAPI_MODELS as OIP_MODELS, add_oip_routes
from .runner import KernelRunner, Readiness
from .schemas import GradRequest, LossRequest, ParamsGradRequest
from .settings import Settings

log = logging.getLogger("lossd")

# Health, readiness and the API docs stay reachable without the bearer token.
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/v2/health/")

# What a browser page on an allowed origin may send and read (LOSSD_CORS_ORIGINS).
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "Inference-Header-Content-Length")
CORS_RESPONSE_HEADERS = ("X-Request-ID", "Inference-Header-Content-Length", "Retry-After")

_DESCRIPTION = """Numerically exact binary cross-entropy (and relatives), gradients and
statistics. Non-finite numbers travel as the strings "Infinity" and "-Infinity"."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. ``settings`` default to the ``LOSSD_*`` environment."""
    settings = settings if settings is not None else Settings.from_env()
    metrics = Metrics()
    runner = KernelRunner(settings.max_concurrency, settings.max_queue, settings.lane_bytes,
                          timeout=settings.compute_timeout)
    readiness = Readiness()
    shm_registry, shm_owned = None, False
    if settings.shm:  # the registry of lossd serve (LOSSD_SHM_DIR), else this app's own
        # (an app's own directory is made at start and removed at shutdown, by its lifespan)
        shm_registry = Registry(settings.shm_dir or shm.directory_name(str(os.getpid())), settings.shm_prefix)
        shm_owned = settings.shm_dir is None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threads = min(settings.threads, numba.config.NUMBA_NUM_THREADS)
        if threads < settings.threads:
            log.warning("threads = %d (--threads or LOSSD_THREADS) is more than the %d CPUs available; using %d",
                        settings.threads, numba.config.NUMBA_NUM_THREADS, threads)
        kernels.set_threads(threads)
        kernels.set_output_pool(settings.output_pool_bytes)
        if settings.lane_bytes > 0:
            runner.lane_factory = lambda: LargeLane(threads, settings.output_pool_bytes)
            runner.lane = runner.lane_factory()
        grpc_server = None
        try:  # the kernel threads, the lane and the helper are stopped even when gRPC cannot bind
            if shm_owned:
                os.mkdir(shm_registry.directory, 0o700)
            if shm_registry is not None and settings.shm_compute == "helper":
                runner.helper = ShmHelper(threads, settings.output_pool_bytes, shm_registry)
            readiness.start(settings.warmup, runner.lane, runner.helper)
            if settings.grpc_port is not None:  # OIP over gRPC, in every worker (grpc_server.py)
                from .grpc_server import GrpcInference

                grpc_server = GrpcInference(settings, runner, metrics, readiness, shm_registry)
                app.state.grpc_port = await grpc_server.start()
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.graceful_timeout)
            runner.shutdown()
            if shm_owned:
                shm.remove_directory(shm_registry.directory)

    app = FastAPI(title="lossd", version=__version__, description=_DESCRIPTION, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json" if settings.docs else None, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.readiness = readiness

    pool = BufferPool(keep=settings.max_concurrency)
    limits = BodyLimits(max_json_depth=settings.max_json_depth, max_elements=settings.max_elements,
                        shm=shm_registry)
    add_json_routes(app, runner, metrics, pool, settings.inline_bytes, limits)
    add_oip_routes(app, runner, metrics, readiness, pool, settings.inline_bytes, limits)
    _add_operations(app, metrics, readiness)
    if settings.docs:
        _add_docs(app)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)
    app.add_middleware(BodyDeadline, timeout=settings.body_timeout)  # inside the front door
    app.add_middleware(FrontDoor, max_body_bytes=settings.max_body_bytes,
                       api_token=settings.api_token, open_paths=OPEN_PATHS, metrics=metrics,
                       access_log=settings.access_log, routes=lambda: app.router.routes)
    if settings.cors_origins:  # outside the front door: a preflight carries no token
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=list(CORS_REQUEST_HEADERS),
                           expose_headers=list(CORS_RESPONSE_HEADERS), max_age=600)
    app.add_middleware(CloseWhenDraining)  # while the server drains (SIGTERM): no keep-alive
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and worker processes."""
    return create_app(Settings.from_env())


_READINESS = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ready", "warming up", "failed", "draining"]},
    "signatures": {"type": "integer", "description": "Kernel signatures compiled so far."},
    "total": {"type": "integer", "description": "Signatures in all (while warming up)."}}}


def _add_operations(app: FastAPI, metrics: Metrics, readiness: Readiness) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="200 once every kernel signature is compiled",
             response_class=JSONResponse,
             responses={200: {"description": "Ready.", "content": {"application/json": {"schema": _READINESS}}},
                        503: {"description": "Still compiling (or compilation failed), or shutting down.",
                              "content": {"application/json": {"schema": _READINESS}}}})
    async def readyz() -> Response:
        if DRAINING.is_set():  # shutting down: take this process out of rotation
            return JSONResponse({"status": "draining"}, status_code=503)
        if readiness.ready.is_set():
            return JSONResponse({"status": "ready", "signatures": readiness.signatures})
        if readiness.error:  # the log has the error (it may name files); the client only the fact
            return JSONResponse({"status": "failed"}, status_code=503)
        return JSONResponse({"status": "warming up", "signatures": readiness.signatures,
                             "total": readiness.total}, status_code=503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_docs(app: FastAPI) -> None:
    """Swagger UI and ReDoc from assets installed with the package: /docs works offline."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount("/docs/assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="lossd — API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="lossd — API",
                              redoc_js_url="/docs/assets/redoc.standalone.js",
                              redoc_favicon_url="/docs/assets/favicon.png", with_google_fonts=False)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)  # RequestError too: 422 {"detail": [...]}, or 400 {"error"} under /v2
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        status, body = exc.render(protocol_of(request.url.path))
        return JSONResponse(body, status_code=status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # routing's own 404/405: under /v2 in OIP's {"error"} shape like every other answer
        # there (a model name that matches no route, e.g. an empty one, was {"detail"})
        if protocol_of(request.url.path) == "oip":
            return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                                status_code=exc.status_code, headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # nobody is left to answer; 499 (nginx's "client closed request") for the metrics
        log.info("client disconnected before its body was complete: %s %s", request.method,
                 log_safe(request.url.path))
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # logged with its traceback server-side; the client gets no internals
        log.error("unhandled error on %s %s", request.method, log_safe(request.url.path), exc_info=exc)
        message = "internal error; the server log has the details"
        return JSONResponse(error_body(protocol_of(request.url.path), message), status_code=500)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (LossRequest, GradRequest, ParamsGradRequest, *OPENAPI_MODELS, *OIP_MODELS):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                        mode="validation" if model.__name__.endswith("Request") else "serialization")
            components.update(s.pop("$defs", {}))
            components[model.__name__] = s
        if app.state.settings.api_token:  # lets the docs' Authorize button send the token
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
