"""The large lane: large JSON bodies are decoded, computed and encoded in a process of
their own, so that small requests never wait for this worker's GIL.

Why a process: a large JSON body holds the GIL for milliseconds in C calls that never
release it (orjson parses a 6 MB N×K body in ~25 ms; simdjson and orjson.dumps take
1-3 ms at 10^5 elements). A kernel thread holding it stops the event loop, so a request
of 10 elements queued behind it waited that long (measured with one locust user each:
small requests' p99 went from ~1 ms alone to 8 ms beside 10^5-element JSON bodies and
48 ms beside 10^4 x 32 features; 5 ms with the lane). In another process the GIL is
another GIL: the worker's event loop keeps answering small bodies inline while the lane
works, and the OS shares the cores.

The price is moving the body to the lane and the answer back. A ProcessPoolExecutor
pickles both through a 64 KiB pipe, one context switch per 64 KiB (+4.5 ms per request
at 2 MB); here the body goes as raw bytes over a socket pair with 4 MiB buffers, the
answer comes back pickled the same way. Binary OIP bodies, whose decoding costs
nothing, stay in the worker.

The lane serves one request at a time. If it dies, requests fall back to the worker's
kernel threads (and the error is logged). The service's errors (``ApiError``,
``RequestError``) cross back pickled as themselves; anything else as its traceback.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from .errors import ApiError

log = logging.getLogger("lossd")

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class LaneError(RuntimeError):
    """An unexpected error in the lane process; its traceback is in the message."""


class LaneGone(RuntimeError):
    """The lane process is gone and never got the request: run it elsewhere."""


# ----------------------------------------------------------------- in the lane process


def _serve(conn: Connection, threads: int, output_pool_bytes: int) -> None:
    """The lane's loop: (fn, args) then the body, answered with (kind, value)."""
    from lossd import kernels

    # Ctrl-C in a terminal reaches the whole process group: the worker shuts the lane
    # down (its end of the pipe closes), the lane itself has nothing to say about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kernels.set_threads(threads)
    kernels.set_output_pool(output_pool_bytes)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the worker is gone
            return
        if fn is None:  # warm-up
            conn.send(("ok", kernels.warmup()))
            continue
        body = conn.recv_bytes()
        conn.send(_call(fn, body, args))


def _call(fn: Callable[..., Any], body: bytes, args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(body, *args)
    except ApiError as exc:  # RequestError too: rendered by the worker for the request's protocol
        return "error", exc
    except Exception:  # noqa: BLE001 - re-raised in the worker, which logs it and answers 500
        return "bug", traceback.format_exc()


# ------------------------------------------------------------------- in the worker


def _unwrap(kind: str, value: Any) -> Any:
    if kind == "ok":
        return value
    if kind == "error":
        raise value
    raise LaneError(f"error in the large lane:\n{value}")


def _widen(conn: Connection) -> None:
    s = socket.socket(fileno=conn.fileno())
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    finally:
        s.detach()  # the Connection keeps the descriptor


class LargeLane:
    """One process per worker, spawned (the worker has threads, and numba's TBB must not
    be forked mid-use) when the worker starts."""

    def __init__(self, threads: int, output_pool_bytes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)  # a socket pair
        _widen(self._conn)
        _widen(child)
        self._proc = ctx.Process(target=_serve, args=(child, threads, output_pool_bytes),
                                 name="lossd-large-lane", daemon=True)
        self._proc.start()
        child.close()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lossd-lane-io")
        self._lock = threading.Lock()
        self.broken = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def warm(self) -> int:
        """Blocks until the lane has loaded every kernel signature (from the cache). Runs
        on the lane's I/O thread like any request: a request queued behind it has not
        reached the lane (the compute deadline drops it without killing the lane)."""
        return self.start_warm().result()

    def start_warm(self) -> Future:
        """``warm`` without waiting: the first job of the I/O thread when called first."""
        return self._io.submit(self._warm)

    def _warm(self) -> int:
        with self._lock:
            self._conn.send((None, ()))
            return _unwrap(*self._conn.recv())

    def _roundtrip(self, fn: Callable[..., Any], body: bytes | memoryview, args: tuple) -> tuple[str, Any]:
        with self._lock:
            # the lane never writes unasked: a readable socket now means it closed (died idle)
            if not self.broken and self._conn.poll(0):
                self._gone(EOFError("the lane closed its end"))
            if self.broken:
                raise LaneGone("the large lane is gone")
            try:
                self._conn.send((fn, args))
                self._conn.send_bytes(body)
            except OSError as exc:  # not received: safe to run elsewhere
                self._gone(exc)
                raise LaneGone("the large lane is gone") from exc
            try:
                return self._conn.recv()
            except (EOFError, OSError) as exc:  # died while computing it: a 500 for this one
                self._gone(exc)
                raise LaneError("the large lane died while computing this request") from exc

    def _gone(self, exc: BaseException) -> None:
        if self.broken:  # killed on purpose (``kill``): nothing unexpected to report
            return
        self.broken = True
        log.error("the large lane is gone (%s: %s); large bodies now run in the worker's threads",
                  type(exc).__name__, exc)

    def submit(self, fn: Callable[..., Any], body: bytes | memoryview, *args: Any) -> Future:
        """``fn(body, *args)`` in the lane (``fn`` and ``args`` must pickle: module-level
        functions and plain data), as a future; it raises ``LaneGone`` if the lane could
        not take it."""
        return self._io.submit(self._call, fn, body, args)

    def _call(self, fn: Callable[..., Any], body: bytes | memoryview, args: tuple) -> Any:
        return _unwrap(*self._roundtrip(fn, body, args))

    def kill(self) -> None:
        """Stop the lane now, whatever it computes (the call in progress ends with
        ``LaneError``, those queued behind it with ``LaneGone``); its pipe is closed by
        the I/O thread once that is done with it."""
        self.broken = True
        self._proc.kill()
        self._io.submit(self._close)
        self._io.shutdown(wait=False)

    def _close(self) -> None:
        self._conn.close()
        self._proc.join(timeout=5)

    def shutdown(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        self._conn.close()  # the lane sees EOF and returns
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
