"""Kernel calls off the event loop, with bounded concurrency and a bounded queue.

A kernel call holds a thread for its whole duration (the parallel region releases the
GIL, the JSON parse does not), so it runs in a small dedicated pool; the event loop
stays free to accept and answer other requests. Large JSON bodies, whose parsing holds
the GIL for milliseconds, go to the large lane (a process, see lane.py) when there is
one. When the pool and its queue are full, new requests get 503 with ``Retry-After``
instead of piling up without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lossd import kernels

from .errors import ApiError
from .lane import LaneGone, LargeLane

T = TypeVar("T")


class KernelRunner:
    def __init__(self, max_concurrency: int, max_queue: int, lane_bytes: int = 0,
                 lane: LargeLane | None = None) -> None:
        self.capacity = max_concurrency + max_queue
        self.lane_bytes = lane_bytes  # bodies from this size go to the lane (if any)
        self.lane = lane
        self._pending = 0  # touched only on the event loop thread
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="lossd-kernel")

    def wants_lane(self, size: int) -> bool:
        return self.lane is not None and not self.lane.broken and size >= self.lane_bytes

    async def run(self, fn: Callable[..., T], *args, lane: bool = False) -> T:
        """``fn(*args)`` in the thread pool, or in the large lane if ``lane`` (then
        ``fn`` and ``args`` must pickle)."""
        if self._pending >= self.capacity:
            raise ApiError(503, f"busy: {self._pending} requests are running or queued; retry shortly",
                           {"retry-after": "1"})
        self._pending += 1
        try:
            if lane and self.lane is not None:
                try:
                    return await self.lane.run(fn, *args)
                except LaneGone:
                    pass  # the lane never saw it: the threads compute it
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.lane is not None:
            self.lane.shutdown()


class Readiness:
    """Compiles (or loads from the cache) every kernel signature in a background thread;
    ``/readyz`` answers 200 only once that is done."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.signatures = 0
        self.error: str | None = None

    def start(self, warmup: bool, lane: LargeLane | None = None) -> None:
        """Without warmup, the lane too starts on first use."""
        if not warmup:
            self.ready.set()
            return
        threading.Thread(target=self._warm, args=(lane,), name="lossd-warmup", daemon=True).start()

    def _warm(self, lane: LargeLane | None) -> None:
        try:
            self.signatures = kernels.warmup()
            if lane is not None:  # after ours: it then loads the signatures from the cache
                lane.warm()
        except Exception as exc:  # reported by /readyz; the process stays up for /healthz
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.ready.set()
