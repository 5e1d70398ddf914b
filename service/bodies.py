"""Request bodies read into reusable buffers.

Starlette's ``request.body()`` joins the received chunks into a new ``bytes`` object; for
a 16 MB body that is a fresh allocation whose every page faults on first write (about
as long as the copy itself). Large bodies with a Content-Length are instead copied into
a pooled ``bytearray`` that has been written before, and handed out as a read-only
memoryview (so ``np.frombuffer`` gives read-only arrays, as with ``bytes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request

from .errors import ApiError
from .runner import ComputeTimeout, KernelRunner

T = TypeVar("T")

POOLED_MIN_BYTES = 1 << 20  # below this the join is cheap


class BufferPool:
    """At most ``keep`` idle buffers; used only from the event loop thread."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[bytearray] = []

    def acquire(self, size: int) -> bytearray:
        best = None
        for i, buf in enumerate(self._idle):  # the smallest idle buffer that fits
            if len(buf) >= size and (best is None or len(buf) < len(self._idle[best])):
                best = i
        if best is not None:
            return self._idle.pop(best)
        return bytearray(max(size, POOLED_MIN_BYTES))

    def release(self, buf: bytearray) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(buf)
        else:  # keep the larger ones: they serve every size
            smallest = min(range(len(self._idle)), key=lambda i: len(self._idle[i]))
            if len(self._idle[smallest]) < len(buf):
                self._idle[smallest] = buf


def _no_release() -> None:
    return None


async def read_body(request: Request, pool: BufferPool) -> tuple[bytes | memoryview, Callable[[], None]]:
    """The whole body, and a function to call once nothing refers to it any more."""
    length = request.headers.get("content-length")
    size = int(length) if length is not None and length.isdigit() else -1
    if size < POOLED_MIN_BYTES:
        return await request.body(), _no_release
    buf = pool.acquire(size)
    view = memoryview(buf)
    pos = 0
    try:
        async for chunk in request.stream():
            end = pos + len(chunk)
            if end > size:  # the HTTP parser enforces Content-Length; never trust it blindly
                raise ApiError(400, f"the body is longer than its Content-Length ({size})")
            view[pos:end] = chunk
            pos = end
        if pos != size:
            raise ApiError(400, f"the body ended after {pos} of its {size} bytes")
    except BaseException:
        pool.release(buf)
        raise
    # Returned to the pool by the caller once the response is built: every array the
    # compute made from it is gone by then (results are fresh arrays, never views).
    return view[:size].toreadonly(), lambda: pool.release(buf)


async def run_on_body(request: Request, pool: BufferPool, runner: KernelRunner, inline_bytes: int,
                      fn: Callable[..., T], *args: Any, lane: bool = False,
                      in_shm: Callable[[Any], bool] | None = None) -> T:
    """``fn(body, *args)``: on the event loop for small bodies (the work takes less than
    a thread hop), in the kernel pool for large ones, and in the large lane (a process)
    for bodies from its size on when ``lane`` says that their decoding holds the GIL.
    A body for which ``in_shm`` is true (its tensors are in shared memory) goes to the
    shared memory compute helper (``shm_helper.py``), or the kernel pool without one."""
    body, release = await read_body(request, pool)
    try:
        shm = in_shm is not None and in_shm(body)
        if len(body) <= inline_bytes and not shm:
            result = fn(body, *args)
        else:
            result = await runner.run(fn, body, *args, lane=lane and runner.wants_lane(len(body)), shm=shm)
    except (asyncio.CancelledError, ComputeTimeout):
        raise  # the worker thread may still read the buffer: leave it to the garbage collector
    except BaseException:
        release()
        raise
    release()
    return result
