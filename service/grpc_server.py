"""The Open Inference Protocol over gRPC: KServe's ``inference.GRPCInferenceService``
(ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on
``LOSSD_GRPC_PORT``, served by ``grpc.aio`` on the worker's event loop.

The app's lifespan starts one server in every worker; they share the port by
``SO_REUSEPORT`` (the kernel spreads connections over them), as uvicorn's workers share
the HTTP socket. ModelInfer is the HTTP OIP's one path with another codec
(``codecs/oip_grpc.py``): the request arrives as bytes (no deserializer: the codec reads
``raw_input_contents`` as views of them), runs inline or in the kernel threads by the
same ``LOSSD_INLINE_BYTES`` rule, and leaves as bytes. Models, metadata, parameters and
error messages are the HTTP OIP's; its statuses become gRPC codes (``CODES``). Messages
over ``LOSSD_MAX_BODY_BYTES`` are refused by grpc itself (RESOURCE_EXHAUSTED). With
``LOSSD_API_TOKEN`` every call but ServerLive/ServerReady (the HTTP health paths are
open too) needs the metadata ``authorization: Bearer <token>``. Calls are counted in
the same Prometheus metrics as HTTP requests, with the gRPC method as the route and
the status code's name as the status. With ``LOSSD_SHM`` the system shared memory calls
(SystemSharedMemoryStatus/Register/Unregister, Triton's messages) use the HTTP
routes' registry (``shm.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from . import __version__, pipeline
from .codecs import oip_grpc
from .auth import bearer_refusal, token_digest
from .drain import DRAINING
from .errors import ApiError
from .grpc_gen import grpc_predict_v2_pb2 as pb
from .limits import BodyLimits
from .metrics import Metrics
from .routes_oip import metadata_of
from .runner import KernelRunner, Readiness
from .settings import Settings
from .shm import Registry

log = logging.getLogger("lossd")

SERVICE = "inference.GRPCInferenceService"
# the HTTP OIP's statuses as gRPC codes (same messages)
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # as /v2/health/ over HTTP


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GrpcInference:
    """The service's methods; one per worker."""

    def __init__(self, settings: Settings, runner: KernelRunner, metrics: Metrics, readiness: Readiness,
                 shm: Registry | None = None) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.readiness = readiness
        self.token = None if settings.api_token is None else token_digest(settings.api_token.encode())
        self.limits = BodyLimits(max_json_depth=settings.max_json_depth, max_elements=settings.max_elements,
                                 shm=shm)
        self.shm = shm
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ methods
    def _ready(self) -> bool:
        return self.readiness.ready.is_set() and not DRAINING.is_set()

    async def server_live(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        oip_grpc.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._ready())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="lossd", version=__version__,
                                         extensions=["system_shared_memory"] if self.shm else [])

    async def model_metadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        meta = metadata_of(oip_grpc.check_model(request.name, request.version))
        # gRPC's TensorMetadata has no parameters: the datatypes each input accepts are
        # in the HTTP metadata (and the README)
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                                 shape=t["shape"]) for t in meta[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        **tensors)

    async def model_infer(self, body: bytes, context) -> bytes:
        in_shm = self.shm is not None and b"shared_memory_region" in body
        if len(body) <= self.settings.inline_bytes and not in_shm:
            content, _, n = pipeline.run_grpc(body, self.limits)
        else:
            content, _, n = await self.runner.run(pipeline.run_grpc, body, self.limits, shm=in_shm)
        self.metrics.elements.labels(f"/{SERVICE}/ModelInfer").inc(n)
        return content

    # system shared memory (shm.py; HTTP's routes_oip.add_shm_routes): UNIMPLEMENTED when off
    def _registry(self) -> Registry:
        if self.shm is None:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "system shared memory is off on this server (LOSSD_SHM)")
        return self.shm

    async def shm_status(self, request: pb.SystemSharedMemoryStatusRequest, context):
        reg = self._registry()
        regions = [reg.lookup(request.name)] if request.name else reg.regions()
        out = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            out.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return out

    async def shm_register(self, request: pb.SystemSharedMemoryRegisterRequest, context):
        self._registry().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def shm_unregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context):
        reg = self._registry()
        if request.name:
            reg.unregister(request.name)
        else:
            reg.unregister_all()
        return pb.SystemSharedMemoryUnregisterResponse()

    # -------------------------------------------------------------- plumbing
    def _wrap(self, name: str, fn):
        route = f"/{SERVICE}/{name}"
        auth = self.token is not None and name not in OPEN_METHODS

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            self.metrics.in_flight.inc()
            code = grpc.StatusCode.OK
            try:
                try:
                    if auth:
                        self._check_token(context)
                    return await fn(request, context)
                except _Abort as exc:
                    code, message = exc.code, exc.message
                except ApiError as exc:
                    code, message = CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message
                except Exception as exc:  # logged with its traceback; the client gets no internals
                    log.error("unhandled error on gRPC %s", route, exc_info=exc)
                    code, message = grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
                await context.abort(code, message)
            finally:
                self.metrics.in_flight.dec()
                self.metrics.requests.labels(route, "gRPC", code.name).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)

        return handler

    def _check_token(self, context: grpc.aio.ServicerContext) -> None:
        got = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode("latin-1")
        refusal = bearer_refusal(got.encode(), self.token)
        if refusal is not None:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(name, fn, req_cls, resp_cls):
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(name, fn), request_deserializer=req_cls.FromString if req_cls else None,
                response_serializer=resp_cls.SerializeToString if resp_cls else None)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary("ServerLive", self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary("ServerReady", self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary("ModelReady", self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary("ServerMetadata", self.server_metadata, pb.ServerMetadataRequest,
                                    pb.ServerMetadataResponse),
            "ModelMetadata": unary("ModelMetadata", self.model_metadata, pb.ModelMetadataRequest,
                                   pb.ModelMetadataResponse),
            "SystemSharedMemoryStatus": unary("SystemSharedMemoryStatus", self.shm_status,
                                              pb.SystemSharedMemoryStatusRequest, pb.SystemSharedMemoryStatusResponse),
            "SystemSharedMemoryRegister": unary("SystemSharedMemoryRegister", self.shm_register,
                                                pb.SystemSharedMemoryRegisterRequest,
                                                pb.SystemSharedMemoryRegisterResponse),
            "SystemSharedMemoryUnregister": unary("SystemSharedMemoryUnregister", self.shm_unregister,
                                                  pb.SystemSharedMemoryUnregisterRequest,
                                                  pb.SystemSharedMemoryUnregisterResponse),
            # bytes in, bytes out: the codec parses and writes the message itself
            "ModelInfer": unary("ModelInfer", self.model_infer, None, None),
        })

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        s = self.settings
        options = [
            # every worker binds the port; one worker alone does not share it, so a port
            # that another process holds is an error, as for HTTP
            ("grpc.so_reuseport", int(s.workers > 1)),
            ("grpc.max_receive_message_length", s.max_body_bytes),
            # a response is about as large as its request (losses, grad): not limited
            ("grpc.max_send_message_length", -1),
        ]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers((self.handlers(),))
        host = f"[{s.host}]" if ":" in s.host else s.host
        try:
            self.port = self.server.add_insecure_port(f"{host}:{s.grpc_port}")
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise RuntimeError(f"gRPC (LOSSD_GRPC_PORT): cannot bind {host}:{s.grpc_port} "
                               "(address already in use?)")
        await self.server.start()
        log.info("OIP over gRPC on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
