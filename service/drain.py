"""Graceful stop of one server process, so that no request the server accepted is lost.

uvicorn alone, on SIGTERM, closes its listening socket and its idle keep-alive connections
at once. Both lose requests that are already on their way: connections still in the
kernel's accept queue are reset when the listener closes, and a request that reached an
"idle" keep-alive connection a moment before it was closed is never read. So on SIGTERM
(or SIGINT) each worker first:

1. answers every response with ``Connection: close``, so a busy keep-alive client finishes
   its current request and then goes away on its own;
2. attaches a drop-everything socket filter to its listening sockets: the kernel stops
   completing new handshakes (those clients see a refused connection once the socket is
   closed: not accepted, safe to retry), while connections already queued stay queued;
3. keeps serving for ``ACCEPT_WINDOW`` seconds, so the event loop accepts what was queued
   and those requests arrive and start;
then hands the signal to uvicorn, which closes the (now empty) listener, lets in-flight
requests finish within ``LOSSD_GRACEFUL_TIMEOUT`` and exits. A second signal skips ahead.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import threading
from types import FrameType

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lossd")

ACCEPT_WINDOW = 0.25  # s: the accept queue empties in microseconds; requests on loopback in ~1 ms
_SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _drop_all_filter() -> tuple[bytes, ctypes.Array]:
    """A classic BPF program of one instruction, ``ret #0``: keep 0 bytes of every packet."""
    code = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    return struct.pack("HL", 1, ctypes.addressof(code)), code  # (struct sock_fprog, its storage)


def listening_sockets() -> list[int]:
    """File descriptors of this process's listening TCP sockets."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.type == socket.SOCK_STREAM and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    fds.append(fd)
        except OSError:
            continue
    return fds


def stop_new_connections() -> int:
    """Attach the drop-all filter to every listening socket; returns how many. The filter
    is on the socket itself, so it holds in every process that shares it."""
    prog, _keep = _drop_all_filter()
    done = 0
    for fd in listening_sockets():
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)
                done += 1
        except OSError as exc:  # not Linux, or not permitted: uvicorn's plain close remains
            log.warning("could not stop new connections on fd %d: %s", fd, exc)
    return done


class Drain:
    """Per worker: chains in front of uvicorn's signal handlers while the app runs."""

    def __init__(self, accept_window: float = ACCEPT_WINDOW) -> None:
        self.accept_window = accept_window
        self.draining = False
        self._previous: dict[int, object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> bool:
        """Called from the app's startup; only the main thread can handle signals (a
        TestClient runs the app elsewhere: then nothing is installed)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._hand_over(sig, frame)
            return
        self.draining = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain(sig, frame)))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        n = stop_new_connections()
        log.info("%s: draining (%d listening socket(s) closed to new connections)",
                 signal.Signals(sig).name, n)
        await asyncio.sleep(self.accept_window)
        self._hand_over(sig, frame)

    def _hand_over(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)


class CloseWhenDraining:
    """ASGI middleware: once draining, every response says ``Connection: close``."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)
