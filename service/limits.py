"""Request limits checked by the application: JSON nesting depth, numbers per array, and
the time a request's body may take to arrive. (Limits on the request head, connections
and the keep-alive/head timeouts live in the HTTP protocol, ``http_limits.py``.)

Each is a setting (``Settings``: ``LOSSD_MAX_JSON_DEPTH``, ``LOSSD_MAX_ELEMENTS``,
``LOSSD_BODY_TIMEOUT``) and each is answered with a message that names it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .shm import Registry


@dataclass(frozen=True)
class BodyLimits:
    """What a decoded body may hold; plain data, so it travels to the large lane."""
    max_json_depth: int | None = None
    max_elements: int | None = None
    shm: Registry | None = None  # system shared memory (LOSSD_SHM): the regions' registry


# ------------------------------------------------------------------------ JSON depth

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
# "[" | 0x20 == "{" and "]" | 0x20 == "}" (and no other byte maps there): one OR, one compare
_OPEN, _CLOSE = ord("{"), ord("}")
_CHUNK = 256 * 1024  # bytes per pass of the full scan: its temporaries stay small and warm
_BLOCK = 256 * 1024  # bytes per pass of the bracket count
_local = threading.local()


class JsonTooDeep(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the JSON nests deeper than {limit} levels (LOSSD_MAX_JSON_DEPTH)")
        self.limit = limit


def check_json_depth(body: bytes | memoryview, limit: int | None) -> None:
    """``JsonTooDeep`` if the JSON text ``body`` nests more than ``limit`` arrays and
    objects (``{"a": [[1]]}`` is 3 deep), before any parser or recursive walk sees it
    (orjson and simdjson stop at 1024, but the duplicate-key walk of a document 1000
    objects deep exceeded the interpreter's recursion limit: a 500, before this check).

    Exact for valid JSON (brackets inside strings do not count); invalid JSON may be
    judged either way, and its parser refuses it next. A body with no more opening
    brackets than the limit costs one vectorised pass; others a few, in chunks, so that
    an adversarial body (64 MiB of brackets or backslashes) needs little memory.
    """
    if limit is None:
        return
    if isinstance(body, bytes) and len(body) <= 8192:  # NumPy's call overhead is more here
        if body.count(b"[") + body.count(b"{") <= limit:
            return
    a = np.frombuffer(body, dtype=np.uint8)
    if _opening_brackets(a, limit) <= limit:  # cannot be deeper
        return
    depth = 0
    in_string = False
    carried = 0  # backslashes that ended the previous chunk (a run that may go on)
    for start in range(0, a.size, _CHUNK):
        chunk = a[start:start + _CHUNK]
        quotes = np.flatnonzero(chunk == _QUOTE)
        if quotes.size and (carried or np.any(chunk == _BACKSLASH)):
            quotes = quotes[~_escaped(chunk, quotes, carried)]
        carried = _trailing_backslashes(chunk, carried)
        low = chunk | 0x20
        opens = low == _OPEN
        at = np.flatnonzero(opens | (low == _CLOSE))
        if at.size:
            # a bracket is inside a string when an odd number of real quotes precede it
            outside = at[(np.searchsorted(quotes, at) + in_string) % 2 == 0]
            if outside.size:
                levels = np.cumsum(np.where(opens[outside], 1, -1), dtype=np.int64) + depth
                if int(levels.max()) > limit:
                    raise JsonTooDeep(limit)
                depth = int(levels[-1])
        in_string = bool((in_string + quotes.size) % 2)


def _opening_brackets(a: np.ndarray, limit: int) -> int:
    """How many "[" and "{" ``a`` holds (counting stops past ``limit``), in blocks through a
    per-thread scratch buffer: whole-body temporaries cost more in page faults than the
    count itself (2 ms instead of 0.2 ms at 2.5 MB)."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = np.empty(_BLOCK, np.uint8)
    total = 0
    for start in range(0, a.size, _BLOCK):
        block = a[start:start + _BLOCK]
        s = scratch[:block.size]
        np.bitwise_or(block, 0x20, out=s)
        total += int(np.count_nonzero(np.equal(s, _OPEN, out=s.view(np.bool_))))
        if total > limit:
            break
    return total


def _escaped(chunk: np.ndarray, quotes: np.ndarray, carried: int) -> np.ndarray:
    """Which ``quotes`` follow an odd run of backslashes (``carried`` of them ended the
    previous chunk and continue a run that starts this one)."""
    slashes = np.flatnonzero(chunk == _BACKSLASH)
    if slashes.size == 0:
        return (quotes == 0) & (carried % 2 == 1)
    # for every backslash, where its run of adjacent backslashes starts
    starts = np.ones(slashes.size, bool)
    starts[1:] = slashes[1:] != slashes[:-1] + 1
    run_start = slashes[np.maximum.accumulate(np.where(starts, np.arange(slashes.size), 0))]
    j = np.maximum(np.searchsorted(slashes, quotes) - 1, 0)  # the last backslash before a quote
    touching = (slashes[j] == quotes - 1) & (slashes[j] < quotes)
    run = np.where(touching, quotes - run_start[j], 0)
    run += np.where((touching & (run_start[j] == 0)) | (quotes == 0), carried, 0)
    return run % 2 == 1


def _trailing_backslashes(chunk: np.ndarray, carried: int) -> int:
    rev = chunk[::-1] != _BACKSLASH
    last = int(rev.argmax())
    return carried + chunk.size if not rev[last] else last


# ----------------------------------------------------------------------- elements

def check_elements(name: str, arr: Any, limit: int | None) -> None:
    """``ValueError`` naming the array when it holds more than ``limit`` numbers."""
    if limit is not None and getattr(arr, "size", 0) > limit:
        raise ValueError(f"{name} has {arr.size} elements; the limit is {limit} per array "
                         "(LOSSD_MAX_ELEMENTS)")


# -------------------------------------------------------------------- body timeout

class BodyDeadline:
    """ASGI middleware: a request's body must arrive within ``timeout`` seconds of its
    head, else 408 and the connection is closed (uvicorn alone waits as long as a client
    trickles bytes). The protocol (``http_limits.py``) closes a connection whose body is
    still unread a little later, in case the application never asked for it."""

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        complete = False

        async def receive_in_time() -> Message:
            nonlocal complete
            if complete:  # afterwards only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, f"the body did not arrive within {self.timeout:g} s "
                               "(LOSSD_BODY_TIMEOUT)", {"connection": "close"}) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, receive_in_time, send)
