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
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from lossd import kernels

from .errors import ApiError
from .lane import LaneGone, LargeLane
from .shm_helper import HelperStarting, ShmHelper

T = TypeVar("T")
log = logging.getLogger("lossd")


class ComputeTimeout(ApiError):
    """504: the request's work passed the compute deadline (its thread may still run)."""


class KernelRunner:
    def __init__(self, max_concurrency: int, max_queue: int, lane_bytes: int = 0,
                 lane: LargeLane | None = None, timeout: float | None = None) -> None:
        self.capacity = max_concurrency + max_queue
        self.lane_bytes = lane_bytes  # bodies from this size go to the lane (if any)
        self.lane = lane
        self.lane_factory: Callable[[], LargeLane] | None = None  # restarts a lane killed at the deadline
        self.helper: ShmHelper | None = None  # computes requests with tensors in shared memory
        self.timeout = timeout
        self._pending = 0  # touched only on the event loop thread
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="lossd-kernel")

    def wants_lane(self, size: int) -> bool:
        return self.lane is not None and not self.lane.broken and size >= self.lane_bytes

    async def run(self, fn: Callable[..., T], *args, lane: bool = False, shm: bool = False) -> T:
        """``fn(*args)`` in the thread pool, or in the large lane if ``lane``, or in the
        shared memory compute helper if ``shm`` and there is one (then ``fn`` and
        ``args`` must pickle), answered within ``timeout`` seconds or 504.

        A kernel call cannot be interrupted (a Numba parallel region has no cancellation
        point), so at the deadline the request is answered 504 and its task ends, but a
        thread that already runs the call keeps its slot until the call returns: requests
        beyond the capacity then get 503 rather than more threads. Work still queued for a
        thread is dropped. A call running in the large lane or the helper is stopped by
        killing that process, and a new one starts."""
        if self._pending >= self.capacity:
            raise ApiError(503, f"busy: {self._pending} requests are running or queued; retry shortly",
                           {"retry-after": "1"})
        self._pending += 1
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        work: Future | None = None
        try:
            if shm and self.helper is not None:
                helper = self.helper
                work = helper.submit(fn, *args)
                try:
                    return await self._wait(work, deadline, helper.kill)
                except HelperStarting:
                    pass  # meanwhile the threads compute it (the registry's preadv)
            if lane and self.lane is not None:
                current = self.lane
                work = current.submit(fn, *args)
                try:
                    return await self._wait(work, deadline, lambda: self._restart_lane(current))
                except LaneGone:
                    pass  # the lane never saw it: the threads compute it
            work = self._pool.submit(fn, *args)
            return await self._wait(work, deadline, None)
        finally:
            if work is None or work.done():
                self._pending -= 1
            else:  # past the deadline (or cancelled) while a thread or the lane still works on it
                work.add_done_callback(lambda _: _call_soon(loop, self._release))

    def _release(self) -> None:
        self._pending -= 1

    async def _wait(self, work: Future, deadline: float | None, stop: Callable[[], None] | None) -> T:
        """``work``'s result; at the deadline, ``stop`` ends it if it already runs."""
        fut = asyncio.wrap_future(work)
        fut.add_done_callback(_retrieve)  # an abandoned result's exception is not an error to log
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the client left or the server stops: drop it if not started
            work.cancel()
            raise
        except TimeoutError:
            if fut.done():  # the work itself raised TimeoutError
                raise
            if not work.cancel() and stop is not None:  # running in the lane or helper: stop it there
                stop()
            raise ComputeTimeout(504, f"not computed within {self.timeout:g} s (LOSSD_COMPUTE_TIMEOUT); "
                                 "the request was too large for the time allowed, or the server is "
                                 "overloaded") from None

    def _restart_lane(self, lane: LargeLane) -> None:
        if self.lane is not lane:  # already replaced
            return
        log.warning("a request in the large lane passed LOSSD_COMPUTE_TIMEOUT (%g s): the lane (pid %s) "
                    "is killed and a new one starts", self.timeout, lane.pid)
        lane.kill()
        self.lane = self.lane_factory() if self.lane_factory is not None else None
        if self.lane is not None:  # loads the kernels (from the cache) before any request reaches it
            self.lane.start_warm().add_done_callback(_warmed)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.lane is not None:
            self.lane.shutdown()
        if self.helper is not None:
            self.helper.shutdown()


def _warmed(fut: Future) -> None:
    exc = None if fut.cancelled() else fut.exception()
    if exc is not None:  # its requests then fall back to the threads
        log.error("the new large lane failed to start: %s: %s", type(exc).__name__, exc)
    else:
        log.info("a new large lane is ready")


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed: the server has stopped
        pass


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class Readiness:
    """Compiles (or loads from the cache) every kernel signature in a background thread;
    ``/readyz`` answers 200 only once that is done. A compile that takes long is shown
    in the log (signatures done of total, time left) every ``report_every`` seconds."""

    def __init__(self, report_every: float = 10.0) -> None:
        self.ready = threading.Event()
        self.signatures = 0
        self.total = 0
        self.error: str | None = None
        self.report_every = report_every

    def start(self, warmup: bool, *others: LargeLane | ShmHelper | None) -> None:
        """Warms this process, then ``others`` (the lane, the helper). Without warmup, they
        too load kernels on first use."""
        if not warmup:
            self.ready.set()
            return
        threading.Thread(target=self._warm, args=others, name="lossd-warmup", daemon=True).start()

    def _warm(self, *others: LargeLane | ShmHelper | None) -> None:
        progress = WarmupProgress(self.report_every)
        try:
            self.signatures = kernels.warmup(progress=self._progress(progress))
            for other in others:  # after ours: they then load the signatures from the cache
                if other is not None:
                    other.warm()
        except Exception as exc:  # reported by /readyz; the process stays up for /healthz
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("warm-up failed: %s; /readyz answers 503", self.error)
            return
        progress.finish(self.signatures)
        self.ready.set()

    def _progress(self, progress: WarmupProgress) -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            self.signatures, self.total = done, total
            progress.update(done, total)
        return update


class WarmupProgress:
    """Log lines for a warm-up that takes a while: nothing when every signature loads from
    the cache within ``report_every`` seconds, else one line at each interval with the
    signatures done of total and the time left at the pace so far; one line at the end."""

    def __init__(self, report_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.report_every = report_every
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.reported = False

    def update(self, done: int, total: int) -> None:
        now = self.clock()
        if done >= total or now - self.last < self.report_every:
            return
        self.last = now
        if not self.reported:
            log.info("warm-up: compiling %d kernel signatures into the Numba cache (a first start only; "
                     "later starts load them in about a second); /readyz answers 503 until then", total)
            self.reported = True
        left = (now - self.start) / done * (total - done)  # done >= 1: warmup reports after a step
        log.info("warm-up: %d of %d kernel signatures ready, about %s left", done, total, _duration(left))

    def finish(self, total: int) -> None:
        log.info("warm-up done: %d kernel signatures in %s; /readyz answers 200",
                 total, _duration(self.clock() - self.start))


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
