"""Graceful stop of the server, so that no request the server accepted is lost.

uvicorn alone, on SIGTERM, stops accepting and closes idle keep-alive connections at once.
That loses requests already on their way: a request that reached an "idle" keep-alive
connection a moment before it was closed is never read, and connections the kernel had
queued on the listening socket are reset when it closes (with several workers the
supervisor keeps the socket open, so the kernel even goes on queueing new ones until it
exits). ``DrainingServer`` instead, when told to stop:

1. answers every response with ``Connection: close`` for ``CLOSE_WINDOW`` seconds while
   still accepting, so busy keep-alive clients finish their current request and leave on
   their own (``CloseWhenDraining``; the flag lives in this module: one per process);
2. stops the event loop's accepting, takes every connection already queued on the
   listening sockets itself and hands them to the HTTP protocol like any other, then
   shuts the listening sockets down: from then on the kernel refuses new connections
   (for every process sharing them), so a client is either served or refused, never
   left with a connection nobody reads;
3. waits until no open connection is idle: each one left either sends its request (served,
   then closed) or is closed, by its client or by the keep-alive timeout (uvicorn's
   ``timeout_keep_alive``, 5 s, bounds the wait; a second signal ends it),
then lets uvicorn finish in-flight requests within ``LOSSD_GRACEFUL_TIMEOUT`` and exit.
Step 1 also calls the ``on_drain`` hooks: the gRPC server (grpc_server.py) stops taking
connections and calls there, while its calls in progress finish.
(uvicorn would close idle connections at once: one whose client had just sent a request,
or had just connected and not yet sent it, would lose that request.)

``DrainingProcess`` makes uvicorn's worker supervisor run ``DrainingServer`` in each worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import multiprocess

log = logging.getLogger("lossd")

CLOSE_WINDOW = 0.3  # s: a busy client's current request ends well within this
DRAINING = threading.Event()
# called on the event loop when the drain begins (the gRPC server stops taking calls)
_ON_DRAIN: list[Callable[[], None]] = []


def on_drain(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` (on the event loop) when this process starts draining; returns
    what removes it again."""
    _ON_DRAIN.append(callback)
    return lambda: _ON_DRAIN.remove(callback) if callback in _ON_DRAIN else None


def start_draining() -> None:
    DRAINING.set()
    for callback in list(_ON_DRAIN):
        try:
            callback()
        except Exception:  # one hook failing must not stop the drain of the rest
            log.exception("a drain hook failed")


class CloseWhenDraining:
    """ASGI middleware: once the server drains, every response says ``Connection: close``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and DRAINING.is_set():
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)


def listening_sockets() -> list[socket.socket]:
    """This process's listening TCP sockets, as new descriptors (the caller closes them)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        if s.type == socket.SOCK_STREAM and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            found.append(s)
        else:
            s.close()
    return found


def take_queued(listener: socket.socket) -> list[socket.socket]:
    """Accept every connection the kernel has queued on ``listener``, then shut it down, so
    it refuses new ones. The two steps are microseconds apart, and the backlog is cut to
    its minimum first (``listen(0)``: one queued connection; the kernel drops further
    SYNs, whose clients retry and are then refused), so at most a connection or so that
    the kernel completes in between is reset unread: the client's first request on it
    fails, as with any server that closes its listener."""
    listener.setblocking(False)
    try:
        listener.listen(0)
    except OSError:
        pass
    taken = []
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError:  # already shut down by another worker
            break
        taken.append(conn)
    try:
        listener.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    return taken


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        start_draining()
        log.info("draining: every answer now closes its connection")
        await asyncio.sleep(CLOSE_WINDOW)
        listeners = listening_sockets()
        for server in self.servers:
            server.close()  # the loop stops accepting (and closes its descriptors)
        loop = asyncio.get_running_loop()
        taken = 0
        for listener in listeners:
            for conn in take_queued(listener):
                conn.setblocking(False)
                await loop.connect_accepted_socket(self._protocol, sock=conn)
                taken += 1
            listener.close()
        log.info("no longer accepting connections (%d taken from the queue)", taken)
        deadline = loop.time() + self.config.timeout_keep_alive
        while not self.force_exit and loop.time() < deadline and any(map(_idle, self.server_state.connections)):
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        # what uvicorn's startup builds for every accepted connection
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state)


def _idle(connection) -> bool:
    """An open connection with no request in progress: what uvicorn's own shutdown would
    close at once (the same test as its protocols' ``shutdown``)."""
    cycle = getattr(connection, "cycle", None)
    transport = getattr(connection, "transport", None)
    return (cycle is None or cycle.response_complete) and not (transport is None or transport.is_closing())


class DrainingProcess(multiprocess.Process):
    """uvicorn's worker process, serving with ``DrainingServer``."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


def run(config: uvicorn.Config) -> None:
    """``uvicorn.run`` for a ready ``config``, with draining servers (one or several workers)."""
    if config.workers > 1:
        sock = config.bind_socket()
        # uvicorn's supervisor creates its workers by this module-level name
        multiprocess.Process = DrainingProcess
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    else:
        config.load_app()
        server = DrainingServer(config=config)
        server.run()
        if not server.started:
            raise SystemExit(3)  # uvicorn's STARTUP_FAILURE
