"""A small recycling pool for large result arrays (per-element losses, gradients).

A fresh 80 MB ``np.empty`` is cheap to ask for but not to use: glibc maps large blocks
from the OS on each call and unmaps them on free, so the kernel's first write to every
page faults and the OS zeroes it. At n = 10^7 that zeroing took ~6 ms of ``grad``'s
~24 ms, more than the gradient itself adds to the loss. Like PyTorch's and CuPy's
caching allocators, the pool keeps released blocks and hands them out again, with
their pages already mapped.

A block is free when nothing but the pool refers to it: every array handed out is a
view whose ``base`` is the block (NumPy keeps ``base`` pointing at the owner through
reshapes and slices), so CPython's reference count of the block says whether a caller
still holds one. Nothing is ever written into a block that a caller can see.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20  # below this, malloc reuses freed memory itself and a lock costs more


class OutputPool:
    """Hands out float64 arrays of length n from retained blocks, at most ``max_bytes``
    of them in all (blocks in use included); ``max_bytes = 0`` turns the pool off."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._blocks: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, n: int) -> np.ndarray:
        """An uninitialised float64 array of length n (a pooled block's view when large)."""
        nbytes = 8 * n
        if nbytes < MIN_BYTES or nbytes > self.max_bytes:
            return np.empty(n)
        with self._lock:
            block = self._take(n)
            if block is None:
                return np.empty(n)  # the pool is full of blocks that are in use
            return block[:n]

    def _take(self, n: int) -> np.ndarray | None:
        best = -1
        for i in range(len(self._blocks)):
            size = self._blocks[i].size
            # a block no larger than 2n, so a small result never pins a large block
            if n <= size <= 2 * n and self._is_free(i) and (
                    best < 0 or size < self._blocks[best].size):
                best = i
        if best >= 0:
            return self._blocks[best]
        held = sum(b.nbytes for b in self._blocks)
        # make room by dropping free blocks, largest first
        for i in sorted(range(len(self._blocks)), key=lambda j: self._blocks[j].size, reverse=True):
            if held + 8 * n <= self.max_bytes:
                break
            if self._is_free(i):
                held -= self._blocks[i].nbytes
                self._blocks[i] = None  # type: ignore[call-overload]
        self._blocks = [b for b in self._blocks if b is not None]
        if held + 8 * n > self.max_bytes:
            return None
        block = np.empty(n)
        self._blocks.append(block)
        return block

    def _is_free(self, i: int) -> bool:
        # two references: the list's and getrefcount's argument
        return sys.getrefcount(self._blocks[i]) == 2

    def stats(self) -> dict[str, int]:
        """Blocks held and in use, and their bytes (for tests and metrics)."""
        with self._lock:
            used = [i for i in range(len(self._blocks)) if not self._is_free(i)]
            return {"blocks": len(self._blocks), "in_use": len(used),
                    "bytes": sum(b.nbytes for b in self._blocks),
                    "bytes_in_use": sum(self._blocks[i].nbytes for i in used)}

    def clear(self) -> None:
        """Forget every block (those in use stay valid: their callers own them now)."""
        with self._lock:
            self._blocks = []
