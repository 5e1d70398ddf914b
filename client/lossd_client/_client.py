"""The sync and async clients: one keep-alive httpx connection pool each, sharing the
request building (``_calls``), the wire format (``_codec``) and the retry policy
(``_retry``); only the sending and the sleeping differ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ._calls import Call, logreg_call, loss_call
from ._codec import decode_response, encode_request
from ._results import GradResult, LossResult, ParamGrad
from ._retry import RETRYABLE_ERRORS, next_delay
from ._version import __version__

ArrayLike = Any  # anything np.asarray takes: ndarray, list, scalar

_READY = "/v2/health/ready"
_LIVE = "/v2/health/live"


class _Base:
    """Settings shared by both clients, checked once."""

    def __init__(self, url: str, token: str | None, timeout: float | httpx.Timeout | None,
                 retries: int, backoff: float, binary: bool) -> None:
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries = {retries!r} must be an integer >= 0")
        if not backoff >= 0:
            raise ValueError(f"backoff = {backoff!r} must be a number of seconds >= 0")
        self.url = str(url).rstrip("/")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.binary = bool(binary)
        headers = {"User-Agent": f"lossd-client/{__version__}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # one pool per client object: connections are kept alive between calls
        self._http_options: dict[str, Any] = {
            "base_url": self.url, "headers": headers, "timeout": httpx.Timeout(timeout)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.url!r}, retries={self.retries}, backoff={self.backoff}, "
                f"binary={self.binary})")


class Client(_Base):
    """Blocking client of a lossd server; results are the ``kernels`` result types.

    ``timeout`` is in seconds (or an ``httpx.Timeout``); a 503 answer or a failed or
    dropped connection is retried up to ``retries`` times, waiting backoff·2^attempt
    seconds (the server's Retry-After when it is within 10 s). ``binary=False`` sends
    and receives JSON tensors instead of the binary tensor data extension.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float | httpx.Timeout | None = 30.0,
                 retries: int = 3, backoff: float = 0.1, binary: bool = True) -> None:
        super().__init__(url, token, timeout, retries, backoff, binary)
        self._http = httpx.Client(**self._http_options)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections."""
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

    def _infer(self, call: Call) -> Any:
        body, headers = encode_request(call.inputs, call.parameters, self.binary)
        attempt = 0
        while True:
            try:
                response = self._http.post(call.path, content=body, headers=headers)
            except RETRYABLE_ERRORS:
                delay = next_delay(attempt, self.retries, self.backoff)
                if delay is None:
                    raise
            else:
                delay = (next_delay(attempt, self.retries, self.backoff, response.headers.get("retry-after"))
                         if response.status_code == 503 else None)
                if delay is None:
                    return call.parse(decode_response(response.status_code, response.headers, response.content))
            time.sleep(delay)
            attempt += 1


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same arguments, and coroutines that
    return the same results. Use it as an async context manager, or await :meth:`aclose`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float | httpx.Timeout | None = 30.0,
                 retries: int = 3, backoff: float = 0.1, binary: bool = True) -> None:
        super().__init__(url, token, timeout, retries, backoff, binary)
        self._http = httpx.AsyncClient(**self._http_options)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
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

    async def _infer(self, call: Call) -> Any:
        body, headers = encode_request(call.inputs, call.parameters, self.binary)
        attempt = 0
        while True:
            try:
                response = await self._http.post(call.path, content=body, headers=headers)
            except RETRYABLE_ERRORS:
                delay = next_delay(attempt, self.retries, self.backoff)
                if delay is None:
                    raise
            else:
                delay = (next_delay(attempt, self.retries, self.backoff, response.headers.get("retry-after"))
                         if response.status_code == 503 else None)
                if delay is None:
                    return call.parse(decode_response(response.status_code, response.headers, response.content))
            await asyncio.sleep(delay)
            attempt += 1
