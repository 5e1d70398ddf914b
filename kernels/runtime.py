"""Process-wide kernel settings: threads per parallel call and the result-array pool.

These are settings of the *process*, not of a caller: an application (or a library
inside it) that calls ``set_threads`` or ``set_output_pool`` changes them for every
caller in the process, from every thread. Numba's own thread count is a per-thread
setting, so the process value kept here is re-applied at each parallel call, whichever
thread makes it; the output pool is one object per process, shared by all threads.
"""

from __future__ import annotations

import numba

from ._pool import OutputPool
from .errors import InputError

_threads: int | None = None  # None: Numba's default


def set_threads(n: int | None) -> None:
    """Threads per parallel call, for the whole process (None: Numba's default, one
    per CPU in the affinity mask).

    Process-wide: it applies to every later call from any thread. Numba's own setting
    is per calling thread, so this value is applied at every parallel call."""
    global _threads
    if n is not None and not (1 <= int(n) <= numba.config.NUMBA_NUM_THREADS):
        raise InputError("threads", f"must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {n}")
    _threads = None if n is None else int(n)


def _apply_threads() -> None:
    """Make the calling thread's Numba thread count the process's (before a parallel call)."""
    want = numba.config.NUMBA_NUM_THREADS if _threads is None else _threads
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


# Result arrays of 1 MiB and more (losses, gradients) are recycled: see _pool.
OUTPUT_POOL_BYTES = 512 << 20
# The one pool of the process (read as runtime._output_pool at each call, so a test
# may put a pool of its own in its place).
_output_pool = OutputPool(OUTPUT_POOL_BYTES)


def set_output_pool(max_bytes: int) -> None:
    """Bytes of result arrays kept for reuse once callers drop them (default 512 MiB;
    0 turns recycling off). Reused memory skips the OS's zeroing of fresh pages, which
    costs ``grad`` at n = 10^7 about a third of its time.

    Process-wide: there is one pool per process, shared by every caller and thread."""
    size = int(max_bytes)
    if size < 0:
        raise InputError("max_bytes", f"must be >= 0, got {max_bytes}")
    _output_pool.max_bytes = size
    if size == 0:
        _output_pool.clear()


def output_pool_stats() -> dict[str, int]:
    """The process's result pool: blocks and bytes, held and in use."""
    return _output_pool.stats()
