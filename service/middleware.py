"""The front door: one pure ASGI middleware for request ids, the bearer token, the body
limit, metrics and the access log (a single wrapper; Starlette's BaseHTTPMiddleware
would cost a task and a queue per request)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable

import orjson
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import bearer_refusal, token_digest
from .errors import ApiError
from .metrics import Metrics
from .protocol import protocol_of

access_logger = logging.getLogger("lossd.access")
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


# Characters of ids that tracing systems send (UUIDs, W3C/B3 trace ids, AWS's
# "Root=1-...;Parent=..."); no quotes, backslashes, angle brackets, "%" or "$": the id is
# echoed in a header and printed in log lines that other tools parse or render.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:;=+/@-]{1,128}")


def _valid_request_id(raw: bytes | None) -> str | None:
    if raw and _REQUEST_ID.fullmatch(raw):
        return raw.decode("ascii")
    return None


# printable ASCII but space, double quote, backslash and "%": the log line quotes the path
_LOG_PLAIN = re.compile(r'[!#$&-\[\]-~]{0,512}')


def log_safe(text: str, limit: int = 512) -> str:
    """A client-controlled string (a path: percent-decoded, so "%0a" is a line end) made fit
    for one log line: anything but printable ASCII, and quotes, are percent-escaped, and it is
    cut short."""
    if _LOG_PLAIN.fullmatch(text):  # the usual case, at regex speed
        return text
    out = "".join(c if _LOG_PLAIN.fullmatch(c) else
                  "".join(f"%{b:02X}" for b in c.encode("utf-8", "backslashreplace"))
                  for c in text[:limit])
    return out if len(text) <= limit else out + "..."


class FrontDoor:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_token: str | None,
                 open_paths: Iterable[str], metrics: Metrics, access_log: bool,
                 routes: Callable[[], list]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.token = None if api_token is None else token_digest(api_token.encode())
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
                # nosniff: error messages quote the request; no browser may read them as HTML
                message["headers"] = [*message.get("headers", ()), rid_header, _NOSNIFF]
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
                                   log_safe(scope["path"]), state["status"], elapsed * 1e3, rid)

    def _refuse(self, scope: Scope) -> ApiError | None:
        if self.token is not None and not scope["path"].startswith(self.open_paths):
            refusal = bearer_refusal(_header(scope, b"authorization") or b"", self.token)
            if refusal is not None:
                return ApiError(401, refusal, {"www-authenticate": "Bearer"})
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
        status, content = exc.render(protocol_of(scope["path"]))
        body = orjson.dumps(content)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        if status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": headers})
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
