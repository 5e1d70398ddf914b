"""Limits at the HTTP protocol: how long and how large a request head may be, how many
connections a worker keeps, and a backstop for bodies that never finish.

uvicorn (0.55, httptools) has none of these: a connection that sends nothing, or its
head one byte at a time, is kept forever (its keep-alive timer runs only between
requests and every byte received cancels it), a head of any size is buffered, and
``limit_concurrency`` answers a plain-text 503 to requests only once their head is in.
``LimitedHttpToolsProtocol`` is uvicorn's ``HttpToolsProtocol`` with:

- a head timeout (``LOSSD_HEADER_TIMEOUT``): the head must be complete within that many
  seconds of the connection (first request) or of its first byte (later requests);
  then 408 and the connection is closed (closed without an answer if not a byte came);
- a head size and field count (``LOSSD_MAX_HEADER_BYTES``, ``LOSSD_MAX_HEADER_FIELDS``):
  431 and the connection is closed, as soon as the head is known to be over;
- a connection cap (``LOSSD_MAX_CONNECTIONS``, per worker): a connection beyond it is
  answered 503 (``Retry-After``) once its head is in, without running the application,
  then closed; it never waits for a slot;
- a body backstop: a connection whose request body is still arriving
  ``LOSSD_BODY_TIMEOUT`` + 1 s after its head is closed (``limits.BodyDeadline``
  answers 408 at the deadline itself when the application reads the body; this covers
  bodies that nobody reads, e.g. after an early 401 or 415).

Refusals answer ``{"detail": "..."}`` (``{"error": "..."}`` under ``/v2``) naming the
setting. ``lossd serve`` passes ``protocol(limits)`` to uvicorn as its ``http``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .protocol import Protocol, error_body, protocol_of

log = logging.getLogger("lossd")

BODY_GRACE = 1.0  # s after LOSSD_BODY_TIMEOUT: the application's own 408 goes first


@dataclass(frozen=True)
class HttpLimits:
    """The protocol's limits, from ``Settings`` (which holds their defaults)."""
    max_header_bytes: int
    max_header_fields: int
    max_connections: int
    header_timeout: float
    body_timeout: float


def protocol(limits: HttpLimits) -> functools.partial:
    """What uvicorn's ``Config(http=...)`` takes: a protocol factory (it pickles, for workers)."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)


class HeadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(status: int, message: str, protocol: Protocol, extra: list[tuple[bytes, bytes]] = ()) -> tuple[bytes, list]:
    body = orjson.dumps(error_body(protocol, message))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra, (b"connection", b"close")]
    return body, headers


def over_capacity(limit: int):
    """The ASGI app a connection beyond ``limit`` gets instead of lossd's."""
    message = f"the server has {limit} connections open (LOSSD_MAX_CONNECTIONS); retry shortly"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, headers = _answer(503, message, protocol_of(scope.get("path", "")),
                                [(b"retry-after", b"1")])
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._in_head = True  # the current request's head is not complete yet
        self._head_began: float | None = None  # when its first byte came
        self._raw_head = 0  # bytes of reads that held nothing but this head
        self._parsed_head = 0  # URL, names and values as parsed (+4 per field: ": ", CRLF)
        self._fields = 0
        self._events = 0  # heads and messages completed: a read with one is not all head
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_open = False  # a body is still arriving
        self._body_deadline = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._refusal: HeadRefused | None = None
        self._deferred = False  # a refusal waits for the previous response to end

    # -- connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = over_capacity(self.limits.max_connections)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # -- reads (uvicorn's data_received, with the refusals and the timers)
    def data_received(self, data: bytes) -> None:
        # unlike uvicorn, a read does not stop the keep-alive timer, a request's first byte
        # does (on_message_begin): stray CRLFs, which the parser skips, cannot keep a
        # connection open
        events = self._events
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            if self._events == events:  # all of this read is head (the split of others is unknown)
                self._raw_head += len(data)
                if self._raw_head > self.limits.max_header_bytes:
                    self._refusal = self._too_large()
                    self._refuse()
                    return
            if self._head_timer is None and self._head_began is not None:  # a head arrives in pieces
                self._head_timer = self.loop.call_at(self._head_began + self.limits.header_timeout,
                                                     self._head_timeout)
        elif self._body_open and self._body_timer is None:
            self._body_timer = self.loop.call_at(self._body_deadline + BODY_GRACE, self._body_timeout)

    # -- parser callbacks
    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()
        self._head_began = self.loop.time()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._parsed_head += len(url)
        if self._parsed_head > self.limits.max_header_bytes:
            self._refuse_head(self._too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._fields += 1
        self._parsed_head += len(name) + len(value) + 4
        if self._fields > self.limits.max_header_fields:
            self._refuse_head(HeadRefused(431, f"the request has more than {self.limits.max_header_fields} "
                                          "header fields (LOSSD_MAX_HEADER_FIELDS)"))
        if self._parsed_head > self.limits.max_header_bytes:
            self._refuse_head(self._too_large())

    def _refuse_head(self, refusal: HeadRefused) -> None:
        self._refusal = refusal
        raise refusal  # the parser stops, and data_received answers

    def _too_large(self) -> HeadRefused:
        return HeadRefused(431, f"the request line and headers are over {self.limits.max_header_bytes} "
                           "bytes (LOSSD_MAX_HEADER_BYTES)")

    def on_headers_complete(self) -> None:
        self._events += 1
        self._in_head = False
        self._head_began = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body_open = True
        self._body_deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._events += 1
        self._in_head = True
        self._raw_head = self._parsed_head = self._fields = 0
        self._body_open = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_began is not None:  # the next head is arriving: its own deadline applies
            self._unset_keepalive_if_required()
        if self._deferred and not self.transport.is_closing():
            self._deferred = False
            self._refuse()

    # -- timeouts and refusals
    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # the previous request is still being answered: this head is judged after it
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)
            return
        if self._head_began is None:  # not a byte: an idle connection is closed without a word
            self.transport.close()
            return
        self._refusal = HeadRefused(408, f"the request head did not arrive within {self.limits.header_timeout:g} s "
                                    "(LOSSD_HEADER_TIMEOUT)")
        self._refuse()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._body_open and not self.transport.is_closing():
            log.info("closing a connection whose request body was not complete %g s after its head "
                     "(LOSSD_BODY_TIMEOUT)", self.limits.body_timeout + BODY_GRACE)
            self.transport.close()

    def _refuse(self) -> None:
        """Answer the refusal and close; after the response in progress, if there is one
        (pipelined requests), reading nothing more meanwhile."""
        refusal = self._refusal
        if self.transport.is_closing() or refusal is None:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._deferred = True
            self.flow.pause_reading()
            return
        self._cancel_timers()
        log.info("refused a request: %d %s", refusal.status, refusal.message)
        body, headers = _answer(refusal.status, refusal.message, protocol_of(getattr(self, "url", b"")))
        content = [STATUS_LINE[refusal.status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", body]
        self.transport.write(b"".join(content))
        self.transport.close()
