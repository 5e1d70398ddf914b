"""The front door: one pure ASGI middleware for request ids, the bearer token, the body
limit, metrics and the access log (a single wrapper; Starlette's BaseHTTPMiddleware
would cost a task and a queue per request)."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterable

import orjson
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics

access_logger = logging.getLogger("lossd.access")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def _valid_request_id(raw: bytes | None) -> str | None:
    # echo a client's id only if it is short printable ASCII (it goes into logs)
    if raw and len(raw) <= 128 and all(33 <= c < 127 for c in raw):
        return raw.decode("ascii")
    return None


class FrontDoor:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_token: str | None,
                 open_paths: Iterable[str], metrics: Metrics, access_log: bool,
                 routes: Callable[[], list]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.token = None if api_token is None else api_token.encode()
        self.open_paths = tuple(open_paths)
        self.metrics = metrics
        self.access_log = access_log
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = _valid_request_id(_header(scope, b"x-request-id")) or uuid.uuid4().hex
        rid_header = (b"x-request-id", rid.encode())
        state = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            error = self._refuse(scope)
            if error is not None:
                await self._send_error(error, send_with_id, scope)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except ApiError as exc:  # raised by the body limit outside a route
            if not state["started"]:
                await self._send_error(exc, send_with_id, scope)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = self._route_label(scope)
            self.metrics.requests.labels(route, scope["method"], str(state["status"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if self.access_log:
                client = scope.get("client")
                access_logger.info('%s "%s %s" %d %.2fms rid=%s',
                                   f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                                   scope["path"], state["status"], elapsed * 1e3, rid)

    def _refuse(self, scope: Scope) -> ApiError | None:
        if self.token is not None and not scope["path"].startswith(self.open_paths):
            got = _header(scope, b"authorization") or b""
            scheme, _, credentials = got.partition(b" ")
            ok = scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
            if not ok:
                why = "missing" if not got else "wrong"
                return ApiError(401, f"bearer token {why}: send 'Authorization: Bearer <token>'",
                                {"www-authenticate": "Bearer"})
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return ApiError(400, "Content-Length is not a number")
            if n > self.max_body_bytes:
                return ApiError(413, f"the body has {n} bytes; the limit is {self.max_body_bytes}")
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive (chunked bodies have no Content-Length): the
        limit holds before anything is buffered whole."""
        limit = self.max_body_bytes
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"the body is over the limit of {limit} bytes")
            return message

        return receive_limited

    async def _send_error(self, exc: ApiError, send: Send, scope: Scope) -> None:
        body = orjson.dumps(exc.body(oip=scope["path"].startswith("/v2")))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        if exc.status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        for r in self.routes():  # refused before routing (401, 413): match it here
            path = getattr(r, "path", None)
            if path is not None and r.matches(scope)[0] is not Match.NONE:
                return path
        return "unmatched"
