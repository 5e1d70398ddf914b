"""The sync and async clients: one keep-alive httpx connection pool each (and a gRPC
channel, and shared memory segments, when those transports are used), sharing the
request building (``_calls``), the wire formats (``_codec``, ``_grpc``, ``_shm``), the
transport rule (``_transport``) and the retry policy (``_retry``); only the sending and
the sleeping differ."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from . import _shm
from ._calls import Call, logreg_call, loss_call
from ._codec import Outputs, ShmReader, decode_response, encode_request, error_message
from ._errors import LossdError
from ._results import GradResult, LossResult, ParamGrad
from ._retry import RETRYABLE_ERRORS, Retry, next_delay
from ._transport import TRANSPORTS, choose, grpc_module, is_loopback, request_bytes
from ._version import __version__

ArrayLike = Any  # anything np.asarray takes: ndarray, list, scalar

log = logging.getLogger("lossd_client")

_READY = "/v2/health/ready"
_LIVE = "/v2/health/live"
_METADATA = "/v2"
_SHM = "/v2/systemsharedmemory/region/"
_PROBE_TIMEOUT = 2.0  # seconds for the one gRPC ServerLive that checks the port is reachable


class _Base:
    """Settings shared by both clients, checked once, and what both know of the server."""

    def __init__(self, url: str, token: str | None, timeout: float | httpx.Timeout | None,
                 retries: int, backoff: float, binary: bool, transport: str, grpc_port: int | None) -> None:
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries = {retries!r} must be an integer >= 0")
        if not backoff >= 0:
            raise ValueError(f"backoff = {backoff!r} must be a number of seconds >= 0")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport = {transport!r} must be one of {', '.join(map(repr, TRANSPORTS))}")
        if grpc_port is not None and (int(grpc_port) != grpc_port or not 0 < grpc_port < 65536):
            raise ValueError(f"grpc_port = {grpc_port!r} must be a TCP port (1 to 65535)")
        self.url = str(url).rstrip("/")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.binary = bool(binary)
        self.transport = transport
        self.grpc_port = None if grpc_port is None else int(grpc_port)
        # what the server offers (found at the first call: GET /v2), and what the last call used
        self.available_transports: tuple[str, ...] | None = ("http",) if transport == "http" else None
        self.last_transport: str | None = None
        self._token = token
        self._host = httpx.URL(self.url).host
        if transport == "shm" and not is_loopback(self._host):
            raise ValueError(f"transport = 'shm' needs a server on this host (a loopback URL), got {self.url!r}")
        self._grpc = grpc_module()
        if transport == "grpc" and self._grpc is None:
            raise ImportError("transport = 'grpc' needs grpcio and protobuf: pip install 'lossd-client[grpc]'")
        if isinstance(timeout, httpx.Timeout):
            self._grpc_timeout = timeout.read
        else:
            self._grpc_timeout = None if timeout is None else float(timeout)
        self._shm: _shm.Pool | None = None
        self._grpc_call: Callable | None = None
        self._channel: Any = None
        headers = {"User-Agent": f"lossd-client/{__version__}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # one pool per client object: connections are kept alive between calls
        self._http_options: dict[str, Any] = {
            "base_url": self.url, "headers": headers, "timeout": httpx.Timeout(timeout)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.url!r}, retries={self.retries}, backoff={self.backoff}, "
                f"binary={self.binary}, transport={self.transport!r})")

    # ------------------------------------------------------------------ the transports
    def _offers(self, meta: dict) -> tuple[int | None, str | None]:
        """(gRPC port to try, shm key prefix) from the server's metadata and the arguments."""
        port = self.grpc_port or meta.get("grpc_port")
        grpc_port = port if isinstance(port, int) and self._grpc is not None else None
        prefix = meta.get("shm_prefix")
        shm_ok = (isinstance(prefix, str) and "system_shared_memory" in (meta.get("extensions") or ())
                  and is_loopback(self._host) and _shm.available())
        return grpc_port, prefix if shm_ok else None

    def _metadata(self, response: httpx.Response) -> dict:
        """The server metadata (GET /v2); a refusal (a wrong token) is raised for an explicit
        transport, and means plain HTTP for auto (whose infer call then gets the refusal)."""
        if response.status_code != 200 and self.transport != "auto":
            raise LossdError(response.status_code, error_message(response.content, response.status_code))
        try:
            meta = response.json() if response.status_code == 200 else {}
        except ValueError:
            meta = {}
        return meta if isinstance(meta, dict) else {}

    def _settle(self, available: list[str]) -> None:
        self.available_transports = tuple(available)
        log.debug("lossd_client: %s offers %s", self.url, ", ".join(available))

    def _pick(self, call: Call) -> str:
        if self.transport != "auto":
            if self.transport not in (self.available_transports or ()):
                why = {"grpc": "announces no gRPC port (LOSSD_GRPC_PORT; or pass grpc_port=)",
                       "shm": "offers no system shared memory (LOSSD_SHM)"}[self.transport]
                raise LossdError(501, f"transport = {self.transport!r}: the server at {self.url} {why}")
            return self.transport
        return choose(request_bytes(call.inputs), self.available_transports or ("http",))

    def _shm_refused(self, exc: LossdError) -> None:
        """auto: registering a region failed (another host's /dev/shm, another user, a prefix
        the server refuses): shared memory is off for this client, observably."""
        log.debug("lossd_client: shared memory refused by %s (%s); not using it", self.url, exc)
        self.available_transports = tuple(t for t in self.available_transports or () if t != "shm")

    @staticmethod
    def _http_outcome(response: httpx.Response, shm: ShmReader | None | bool) -> Outputs | None:
        """An infer answer's outputs (``shm``: its shared memory reader), or with
        ``shm=False`` nothing (a registration: 200 and an empty body)."""
        if response.status_code == 503:
            raise Retry(LossdError(503, error_message(response.content, 503)), response.headers.get("retry-after"))
        if shm is False:
            if response.status_code != 200:
                raise LossdError(response.status_code, error_message(response.content, response.status_code))
            return None
        return decode_response(response.status_code, response.headers, response.content, shm)

    def _shm_grpc_request(self, call: Call, layout: _shm.Layout, seg: _shm.Segment) -> bytes:
        return self._grpc.encode_request(call.model, call.inputs, call.parameters, layout.input_parameters(seg),
                                         layout.output_parameters(seg))

    @staticmethod
    def _registration(seg: _shm.Segment) -> tuple[str, bytes]:
        body = {"key": seg.key, "offset": 0, "byte_size": seg.size}
        return _SHM + seg.name + "/register", json.dumps(body).encode()


class Client(_Base):
    """Blocking client of a lossd server; results are the ``kernels`` result types.

    ``timeout`` is in seconds (or an ``httpx.Timeout``); a 503 answer (gRPC: UNAVAILABLE)
    or a failed or dropped connection is retried up to ``retries`` times, waiting
    backoff·2^attempt seconds (the server's Retry-After when it is within 10 s).

    ``transport``: ``"http"`` is OIP over HTTP, binary tensors (``binary=False``: JSON
    tensors); ``"grpc"`` is OIP over gRPC (``pip install 'lossd-client[grpc]'``; the port
    from the server's metadata, or ``grpc_port``); ``"shm"`` puts the tensors in system
    shared memory (a server on this host with ``LOSSD_SHM``); ``"auto"`` (the default)
    picks, call by call, the fastest of those the server offers by the rule measured in
    ``bench/client_transports.py`` (``_transport.choose``), falling back silently to
    HTTP. ``available_transports`` (after the first call) and ``last_transport`` say
    what was found and used. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float | httpx.Timeout | None = 30.0,
                 retries: int = 3, backoff: float = 0.1, binary: bool = True, transport: str = "auto",
                 grpc_port: int | None = None) -> None:
        super().__init__(url, token, timeout, retries, backoff, binary, transport, grpc_port)
        self._http = httpx.Client(**self._http_options)
        self._discovery = threading.Lock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unregister and unlink the shared memory segments, close the connections."""
        try:
            if self._shm is not None:
                for seg in self._shm.drain():
                    try:
                        if seg.registered:
                            self._http.post(_SHM + seg.name + "/unregister")
                    except httpx.HTTPError:
                        pass  # the server is gone: its registry went with it
                    finally:
                        seg.close()
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self._http.close()

    def ready(self) -> bool:
        """True once the server has compiled every kernel (False while it warms up or
        cannot be reached)."""
        return self._health(_READY)

    def live(self) -> bool:
        """True while the server process answers."""
        return self._health(_LIVE)

    def _health(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    def loss(self, predictions: ArrayLike, labels: ArrayLike, *, input: str = "logits",
             loss: str = "cross_entropy", reduction: str = "mean", sample_weight: ArrayLike | None = None,
             pos_weight: ArrayLike | float | None = None, label_smoothing: float = 0.0,
             eps: float | None = None, gamma: float = 2.0, alpha: float | None = None,
             quantiles: Sequence[float] = (), dtype: str = "float64", summary: bool = False) -> LossResult:
        """``kernels.loss`` on the server (same arguments, same result)."""
        return self._infer(loss_call(
            "loss", predictions, labels, sample_weight=sample_weight, pos_weight=pos_weight, input=input,
            loss=loss, reduction=reduction, label_smoothing=label_smoothing, eps=eps, gamma=gamma,
            alpha=alpha, quantiles=quantiles, dtype=dtype, summary=summary))

    def grad(self, predictions: ArrayLike, labels: ArrayLike, *, input: str = "logits",
             loss: str = "cross_entropy", reduction: str = "mean", sample_weight: ArrayLike | None = None,
             pos_weight: ArrayLike | float | None = None, label_smoothing: float = 0.0,
             eps: float | None = None, gamma: float = 2.0, alpha: float | None = None,
             quantiles: Sequence[float] = (), dtype: str = "float64", summary: bool = False) -> GradResult:
        """``kernels.grad`` on the server (same arguments, same result)."""
        return self._infer(loss_call(
            "grad", predictions, labels, sample_weight=sample_weight, pos_weight=pos_weight, input=input,
            loss=loss, reduction=reduction, label_smoothing=label_smoothing, eps=eps, gamma=gamma,
            alpha=alpha, quantiles=quantiles, dtype=dtype, summary=summary))

    def logreg_grad(self, features: ArrayLike, labels: ArrayLike, coef: ArrayLike, intercept: float = 0.0, *,
                    sample_weight: ArrayLike | None = None, l2: float = 0.0) -> ParamGrad:
        """``kernels.logreg_grad`` on the server (same arguments, same result)."""
        return self._infer(logreg_call(features, labels, coef, intercept, sample_weight=sample_weight, l2=l2))

    # ------------------------------------------------------------------ plumbing
    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        n = 0
        while True:
            try:
                return attempt()
            except Retry as r:
                delay = next_delay(n, self.retries, self.backoff, r.retry_after)
                if delay is None:
                    raise r.error from None
            time.sleep(delay)
            n += 1

    def _post(self, path: str, content: bytes, headers: dict[str, str] | None = None,
              shm: ShmReader | None | bool = None) -> Outputs | None:
        try:
            response = self._http.post(path, content=content, headers=headers)
        except RETRYABLE_ERRORS as exc:
            raise Retry(exc) from None
        return self._http_outcome(response, shm)

    def _discover(self) -> None:
        """What the server offers, once (a failed look is repeated at the next call)."""
        if self.available_transports is not None:
            return
        meta: dict = {}
        if not (self.transport == "grpc" and self.grpc_port):
            try:
                response = self._http.get(_METADATA)
            except RETRYABLE_ERRORS as exc:
                if self.transport == "auto":
                    return  # over HTTP this time; looked at again at the next call
                raise Retry(exc) from None
            meta = self._metadata(response)
        grpc_port, prefix = self._offers(meta)
        available = ["http"]
        if grpc_port is not None and self.transport in ("auto", "grpc", "shm"):
            g = self._grpc
            self._channel = g.grpc.insecure_channel(g.target(self._host, grpc_port), options=g.CHANNEL_OPTIONS)
            self._grpc_call = self._channel.unary_unary(g.MODEL_INFER)
            try:  # the port a server announces may not be reachable from here (a proxy)
                if self.transport != "grpc":
                    self._channel.unary_unary(g.SERVER_LIVE)(b"", timeout=_PROBE_TIMEOUT)
                available.append("grpc")
            except g.grpc.RpcError as exc:
                log.debug("lossd_client: gRPC on port %d not reachable (%s)", grpc_port, exc.code())
                self._channel.close()
                self._channel = self._grpc_call = None
        if prefix is not None and self.transport in ("auto", "shm"):
            self._shm = _shm.Pool(prefix)
            available.append("shm")
        self._settle(available)

    def _infer(self, call: Call) -> Any:
        if self.available_transports is None:
            with self._discovery:  # threads' first calls at once: one look, one channel
                self._retrying(self._discover)
        how = self._pick(call)
        if how == "shm":
            try:
                return self._infer_shm(call)
            except _shm.Refused as exc:
                if self.transport != "auto":
                    raise
                self._shm_refused(exc)
                how = self._pick(call)
        self.last_transport = how
        if how == "grpc":
            body = self._grpc.encode_request(call.model, call.inputs, call.parameters)
            return call.parse(self._grpc.decode_response(self._retrying(lambda: self._grpc_send(body))))
        body, headers = encode_request(call.inputs, call.parameters, self.binary)
        return call.parse(self._retrying(lambda: self._post(call.path, body, headers)))

    def _grpc_send(self, body: bytes) -> bytes:
        md = self._grpc.metadata(self._token)
        try:
            return self._grpc_call(body, timeout=self._grpc_timeout, metadata=md)
        except self._grpc.grpc.RpcError as exc:
            raise self._grpc.refusal(exc) from None

    def _segment(self, size: int) -> _shm.Segment:
        """A registered segment of at least ``size`` bytes (a free one, replaced when small)."""
        seg = self._shm.take()
        if seg is not None and seg.size < size:
            self._unregister(seg)
            self._shm.drop(seg)
            seg = None
        if seg is None:
            seg = self._shm.new(size)
            try:
                self._register(seg)
            except BaseException:
                self._shm.drop(seg)
                raise
        return seg

    def _register(self, seg: _shm.Segment) -> None:
        path, body = self._registration(seg)
        try:
            self._retrying(lambda: self._post(path, body, {"Content-Type": "application/json"}, False))
        except LossdError as exc:
            raise _shm.Refused(exc.status, exc.message) from None
        seg.registered = True

    def _unregister(self, seg: _shm.Segment) -> None:
        try:
            self._http.post(_SHM + seg.name + "/unregister")
        except httpx.HTTPError:
            pass

    def _infer_shm(self, call: Call) -> Any:
        layout = _shm.Layout(call.model, call.inputs, call.parameters)
        seg = self._segment(layout.size)
        self.last_transport = "shm"
        try:
            layout.write(seg)
            try:
                return call.parse(self._shm_send(call, layout, seg))
            except LossdError as exc:
                if not _shm.forgotten(exc, seg):
                    raise
            # the server forgot the region (it restarted, or it was unregistered): once more
            self._register(seg)
            return call.parse(self._shm_send(call, layout, seg))
        finally:
            self._shm.give(seg)

    def _shm_send(self, call: Call, layout: _shm.Layout, seg: _shm.Segment) -> Outputs:
        if self._grpc_call is not None:  # the header over gRPC: a smaller per-call cost
            body = self._shm_grpc_request(call, layout, seg)
            return self._grpc.decode_response(self._retrying(lambda: self._grpc_send(body)), layout.reader(seg))
        body = layout.http_header(seg, call.parameters)
        headers = {"Content-Type": "application/json"}
        return self._retrying(lambda: self._post(call.path, body, headers, layout.reader(seg)))


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same arguments (gRPC over ``grpc.aio``),
    and coroutines that return the same results. Use it as an async context manager, or
    await :meth:`aclose`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float | httpx.Timeout | None = 30.0,
                 retries: int = 3, backoff: float = 0.1, binary: bool = True, transport: str = "auto",
                 grpc_port: int | None = None) -> None:
        super().__init__(url, token, timeout, retries, backoff, binary, transport, grpc_port)
        self._http = httpx.AsyncClient(**self._http_options)
        self._discovery = asyncio.Lock()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unregister and unlink the shared memory segments, close the connections."""
        try:
            if self._shm is not None:
                for seg in self._shm.drain():
                    try:
                        if seg.registered:
                            await self._http.post(_SHM + seg.name + "/unregister")
                    except httpx.HTTPError:
                        pass
                    finally:
                        seg.close()
        finally:
            if self._channel is not None:
                await self._channel.close()
                self._channel = None
            await self._http.aclose()

    close = aclose  # the name the sync client uses

    async def ready(self) -> bool:
        """True once the server has compiled every kernel (False while it warms up or
        cannot be reached)."""
        return await self._health(_READY)

    async def live(self) -> bool:
        """True while the server process answers."""
        return await self._health(_LIVE)

    async def _health(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    async def loss(self, predictions: ArrayLike, labels: ArrayLike, *, input: str = "logits",
                   loss: str = "cross_entropy", reduction: str = "mean", sample_weight: ArrayLike | None = None,
                   pos_weight: ArrayLike | float | None = None, label_smoothing: float = 0.0,
                   eps: float | None = None, gamma: float = 2.0, alpha: float | None = None,
                   quantiles: Sequence[float] = (), dtype: str = "float64", summary: bool = False) -> LossResult:
        """``kernels.loss`` on the server (same arguments, same result)."""
        return await self._infer(loss_call(
            "loss", predictions, labels, sample_weight=sample_weight, pos_weight=pos_weight, input=input,
            loss=loss, reduction=reduction, label_smoothing=label_smoothing, eps=eps, gamma=gamma,
            alpha=alpha, quantiles=quantiles, dtype=dtype, summary=summary))

    async def grad(self, predictions: ArrayLike, labels: ArrayLike, *, input: str = "logits",
                   loss: str = "cross_entropy", reduction: str = "mean", sample_weight: ArrayLike | None = None,
                   pos_weight: ArrayLike | float | None = None, label_smoothing: float = 0.0,
                   eps: float | None = None, gamma: float = 2.0, alpha: float | None = None,
                   quantiles: Sequence[float] = (), dtype: str = "float64", summary: bool = False) -> GradResult:
        """``kernels.grad`` on the server (same arguments, same result)."""
        return await self._infer(loss_call(
            "grad", predictions, labels, sample_weight=sample_weight, pos_weight=pos_weight, input=input,
            loss=loss, reduction=reduction, label_smoothing=label_smoothing, eps=eps, gamma=gamma,
            alpha=alpha, quantiles=quantiles, dtype=dtype, summary=summary))

    async def logreg_grad(self, features: ArrayLike, labels: ArrayLike, coef: ArrayLike, intercept: float = 0.0,
                          *, sample_weight: ArrayLike | None = None, l2: float = 0.0) -> ParamGrad:
        """``kernels.logreg_grad`` on the server (same arguments, same result)."""
        return await self._infer(logreg_call(features, labels, coef, intercept, sample_weight=sample_weight,
                                             l2=l2))

    # ------------------------------------------------------------------ plumbing
    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        n = 0
        while True:
            try:
                return await attempt()
            except Retry as r:
                delay = next_delay(n, self.retries, self.backoff, r.retry_after)
                if delay is None:
                    raise r.error from None
            await asyncio.sleep(delay)
            n += 1

    async def _post(self, path: str, content: bytes, headers: dict[str, str] | None = None,
                    shm: ShmReader | None | bool = None) -> Outputs | None:
        try:
            response = await self._http.post(path, content=content, headers=headers)
        except RETRYABLE_ERRORS as exc:
            raise Retry(exc) from None
        return self._http_outcome(response, shm)

    async def _discover(self) -> None:
        if self.available_transports is not None:
            return
        meta: dict = {}
        if not (self.transport == "grpc" and self.grpc_port):
            try:
                response = await self._http.get(_METADATA)
            except RETRYABLE_ERRORS as exc:
                if self.transport == "auto":
                    return  # over HTTP this time; looked at again at the next call
                raise Retry(exc) from None
            meta = self._metadata(response)
        grpc_port, prefix = self._offers(meta)
        available = ["http"]
        if grpc_port is not None and self.transport in ("auto", "grpc", "shm"):
            g = self._grpc
            # made here, inside the running loop (grpc.aio binds a channel to it)
            self._channel = g.grpc.aio.insecure_channel(g.target(self._host, grpc_port), options=g.CHANNEL_OPTIONS)
            self._grpc_call = self._channel.unary_unary(g.MODEL_INFER)
            try:
                if self.transport != "grpc":
                    await self._channel.unary_unary(g.SERVER_LIVE)(b"", timeout=_PROBE_TIMEOUT)
                available.append("grpc")
            except g.grpc.RpcError as exc:
                log.debug("lossd_client: gRPC on port %d not reachable (%s)", grpc_port, exc.code())
                await self._channel.close()
                self._channel = self._grpc_call = None
        if prefix is not None and self.transport in ("auto", "shm"):
            self._shm = _shm.Pool(prefix)
            available.append("shm")
        self._settle(available)

    async def _infer(self, call: Call) -> Any:
        if self.available_transports is None:
            async with self._discovery:  # concurrent first calls: one look, one channel
                await self._retrying(self._discover)
        how = self._pick(call)
        if how == "shm":
            try:
                return await self._infer_shm(call)
            except _shm.Refused as exc:
                if self.transport != "auto":
                    raise
                self._shm_refused(exc)
                how = self._pick(call)
        self.last_transport = how
        if how == "grpc":
            body = self._grpc.encode_request(call.model, call.inputs, call.parameters)
            return call.parse(self._grpc.decode_response(await self._retrying(lambda: self._grpc_send(body))))
        body, headers = encode_request(call.inputs, call.parameters, self.binary)
        return call.parse(await self._retrying(lambda: self._post(call.path, body, headers)))

    async def _grpc_send(self, body: bytes) -> bytes:
        md = self._grpc.metadata(self._token)
        try:
            return await self._grpc_call(body, timeout=self._grpc_timeout, metadata=md)
        except self._grpc.grpc.RpcError as exc:
            raise self._grpc.refusal(exc) from None

    async def _segment(self, size: int) -> _shm.Segment:
        seg = self._shm.take()
        if seg is not None and seg.size < size:
            await self._unregister(seg)
            self._shm.drop(seg)
            seg = None
        if seg is None:
            seg = self._shm.new(size)
            try:
                await self._register(seg)
            except BaseException:
                self._shm.drop(seg)
                raise
        return seg

    async def _register(self, seg: _shm.Segment) -> None:
        path, body = self._registration(seg)
        try:
            await self._retrying(lambda: self._post(path, body, {"Content-Type": "application/json"}, False))
        except LossdError as exc:
            raise _shm.Refused(exc.status, exc.message) from None
        seg.registered = True

    async def _unregister(self, seg: _shm.Segment) -> None:
        try:
            await self._http.post(_SHM + seg.name + "/unregister")
        except httpx.HTTPError:
            pass

    async def _infer_shm(self, call: Call) -> Any:
        layout = _shm.Layout(call.model, call.inputs, call.parameters)
        seg = await self._segment(layout.size)
        self.last_transport = "shm"
        try:
            layout.write(seg)
            try:
                return call.parse(await self._shm_send(call, layout, seg))
            except LossdError as exc:
                if not _shm.forgotten(exc, seg):
                    raise
            await self._register(seg)
            return call.parse(await self._shm_send(call, layout, seg))
        finally:
            self._shm.give(seg)

    async def _shm_send(self, call: Call, layout: _shm.Layout, seg: _shm.Segment) -> Outputs:
        if self._grpc_call is not None:
            body = self._shm_grpc_request(call, layout, seg)
            content = await self._retrying(lambda: self._grpc_send(body))
            return self._grpc.decode_response(content, layout.reader(seg))
        body = layout.http_header(seg, call.parameters)
        headers = {"Content-Type": "application/json"}
        return await self._retrying(lambda: self._post(call.path, body, headers, layout.reader(seg)))
