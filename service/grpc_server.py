"""The Open Inference Protocol over gRPC: KServe's ``inference.GRPCInferenceService``
(ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on
``LOSSD_GRPC_PORT``, served by ``grpc.aio`` on the worker's event loop.

The app's lifespan starts one server in every worker; they share the port by
``SO_REUSEPORT`` (the kernel spreads connections over them), as uvicorn's workers share
the HTTP socket. ModelInfer is the HTTP OIP's one path with another codec
(``codecs/oip_grpc.py``): the request arrives as bytes (no deserializer: the codec reads
``raw_input_contents`` as views of them), runs inline or in the kernel threads by the
same ``LOSSD_INLINE_BYTES`` rule, or, for typed ``contents`` from ``LOSSD_LANE_BYTES``
on, in the large lane (protobuf's decoding of them holds the GIL as a JSON parse
does), and leaves as bytes. Models, metadata, parameters and error messages are the
HTTP OIP's; its statuses become gRPC codes (``CODES``).

The HTTP front door's limits hold here too, in gRPC's terms (``options``, ``_wrap``):
``LOSSD_MAX_CONNECTIONS`` caps both the connections grpc accepts and the calls in
progress per worker (HTTP/1.1 has one per connection; beyond it UNAVAILABLE with the
HTTP 503's words), ``LOSSD_HEADER_TIMEOUT`` bounds the connection's handshake,
``LOSSD_BODY_TIMEOUT`` the arrival of a call's message (every method is a stream-unary
handler so that it starts when the call does and times the read: DEADLINE_EXCEEDED),
``LOSSD_KEEP_ALIVE_TIMEOUT`` an idle connection's life (GOAWAY; clients reconnect on
their next call). Messages over ``LOSSD_MAX_BODY_BYTES`` get RESOURCE_EXHAUSTED with the
HTTP 413's words; grpc's own check (its message) is kept at twice the limit, to bound
what it buffers. When the HTTP drain begins (``drain.on_drain``) the gRPC server stops:
no new connections or calls (UNAVAILABLE, from lossd until grpc's stop has closed the
port and sent GOAWAY), those in progress have ``LOSSD_GRACEFUL_TIMEOUT`` to end.

With ``LOSSD_API_TOKEN`` every call but ServerLive/ServerReady (the HTTP health paths are
open too) needs the metadata ``authorization: Bearer <token>``. Calls are counted in the
same Prometheus metrics as HTTP requests: the gRPC method is the route, ``gRPC`` the
method, and the status the HTTP status lossd answers for the same outcome (``STATUS``),
so one ``status=~"5.."`` covers both transports. With ``LOSSD_SHM`` the system shared
memory calls (SystemSharedMemoryStatus/Register/Unregister, Triton's messages) use the
HTTP routes' registry (``shm.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from . import __version__, pipeline
from .codecs import oip_grpc
from .auth import bearer_refusal, token_digest
from .drain import DRAINING, on_drain
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
# a code lossd chose itself, as the HTTP status of the same outcome (metrics' status label)
STATUS = {grpc.StatusCode.OK: 200, grpc.StatusCode.UNAUTHENTICATED: 401,
          grpc.StatusCode.UNIMPLEMENTED: 404,  # shm off: the HTTP routes are absent
          grpc.StatusCode.CANCELLED: 499}  # the client left (or its deadline passed): nginx's 499
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # as /v2/health/ over HTTP
# grpc refuses messages over this many times LOSSD_MAX_BODY_BYTES itself (in its own words);
# those between are read, then refused by lossd with the HTTP 413's
TRANSPORT_MARGIN = 2
GRPC_INT_MAX = 2**31 - 1  # grpc's channel arguments are C ints


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS.get(code, 500) if status is None else status


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
        self.calls = 0  # in progress in this worker (LOSSD_MAX_CONNECTIONS)
        self._stopping: asyncio.Task | None = None
        self._forget_drain = lambda: None

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
            # raw tensors cost nothing to decode: only typed contents go to the large lane
            lane = not in_shm and self.runner.wants_lane(len(body)) and not oip_grpc.has_raw_inputs(body)
            content, _, n = await self.runner.run(pipeline.run_grpc, body, self.limits, lane=lane, shm=in_shm)
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
    def _wrap(self, name: str, fn, deserialize):
        """The method as a stream-unary handler: it runs when the call starts, so the
        calls-in-progress cap holds before a message is buffered and the message's
        arrival is timed (LOSSD_BODY_TIMEOUT)."""
        route = f"/{SERVICE}/{name}"
        auth = self.token is not None and name not in OPEN_METHODS
        s = self.settings

        async def handler(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            self.metrics.in_flight.inc()
            self.calls += 1
            code, status = grpc.StatusCode.OK, 200
            try:
                try:
                    if DRAINING.is_set() and name not in OPEN_METHODS:  # until grpc's own stop refuses them
                        raise ApiError(503, "the server is shutting down; retry on another instance")
                    if self.calls > s.max_connections:
                        raise ApiError(503, f"the server has {s.max_connections} calls in progress "
                                       "(LOSSD_MAX_CONNECTIONS); retry shortly")
                    if auth:
                        self._check_token(context)
                    body = await self._message(context)
                    return await fn(body if deserialize is None else _parse(deserialize, body, name), context)
                except _Abort as exc:
                    code, status, message = exc.code, exc.status, exc.message
                except ApiError as exc:
                    status = exc.render("oip")[0]  # the HTTP OIP's (a content error is 400)
                    code, message = CODES.get(status, grpc.StatusCode.UNKNOWN), exc.message
                except asyncio.CancelledError:  # the client left, or its deadline passed
                    code, status = grpc.StatusCode.CANCELLED, 499
                    raise
                except Exception as exc:  # logged with its traceback; the client gets no internals
                    log.error("unhandled error on gRPC %s", route, exc_info=exc)
                    code, status = grpc.StatusCode.INTERNAL, 500
                    message = "internal error; the server log has the details"
                await context.abort(code, message)
            finally:
                self.calls -= 1
                self.metrics.in_flight.dec()
                self.metrics.requests.labels(route, "gRPC", str(status)).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)

        return handler

    async def _message(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one message, within LOSSD_BODY_TIMEOUT of its start and at most
        LOSSD_MAX_BODY_BYTES (the HTTP front door's 408 and 413, in the same words)."""
        s = self.settings
        try:
            async with asyncio.timeout(s.body_timeout):
                body = await context.read()
        except TimeoutError:
            raise ApiError(408, f"the body did not arrive within {s.body_timeout:g} s (LOSSD_BODY_TIMEOUT)") from None
        if body is grpc.aio.EOF:  # no message, or over grpc's own limit (it has answered then)
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message", 400)
        if len(body) > s.max_body_bytes:
            raise ApiError(413, f"the body has {len(body)} bytes; the limit is {s.max_body_bytes}")
        return body

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
            # deserialized in the handler, after the size check (grpc would parse first)
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(name, fn, req_cls.FromString if req_cls else None),
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
    def options(self) -> list[tuple[str, int]]:
        """grpc's channel arguments: the HTTP front door's limits in gRPC's terms."""
        s = self.settings
        return [
            # every worker binds the port; one worker alone does not share it, so a port
            # that another process holds is an error, as for HTTP
            ("grpc.so_reuseport", int(s.workers > 1)),
            ("grpc.max_receive_message_length", min(GRPC_INT_MAX, TRANSPORT_MARGIN * s.max_body_bytes)),
            # a response is about as large as its request (losses, grad): not limited
            ("grpc.max_send_message_length", -1),
            # connections beyond are closed as they come (no call yet to answer on)
            ("grpc.max_allowed_incoming_connections", s.max_connections),
            ("grpc.server_handshake_timeout_ms", _ms(s.header_timeout)),
            ("grpc.max_connection_idle_ms", _ms(s.keep_alive_timeout)),
        ]

    async def start(self) -> int:
        s = self.settings
        self.server = grpc.aio.server(options=self.options())
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
        self._forget_drain = on_drain(self._drain)
        log.info("OIP over gRPC on %s:%d", host, self.port)
        return self.port

    def _drain(self) -> None:
        """The HTTP drain began: stop taking connections and calls now, let those in
        progress end within LOSSD_GRACEFUL_TIMEOUT (grpc sends GOAWAY)."""
        if self.server is not None and self._stopping is None:
            log.info("draining: the gRPC server takes no new calls")
            self._stopping = asyncio.get_running_loop().create_task(
                self.server.stop(self.settings.graceful_timeout))

    async def stop(self, grace: float | None = None) -> None:
        self._forget_drain()
        if self._stopping is not None:  # already stopping since the drain: its grace holds
            await self._stopping
        elif self.server is not None:
            await self.server.stop(grace)
        self.server = None


def _parse(deserialize, body: bytes, name: str) -> Any:
    """A method's request message; a malformed one is the client's mistake (INVALID_ARGUMENT)."""
    try:
        return deserialize(body)
    except DecodeError as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {name}Request: {exc}",
                     400) from None


def _ms(seconds: float) -> int:
    return min(GRPC_INT_MAX, max(1, round(seconds * 1000)))
