"""The shared memory compute helper (``LOSSD_SHM_COMPUTE=helper``, the default): requests
whose tensors are in system shared memory are decoded, computed and encoded in a process
of the worker's own, which maps the regions instead of copying them.

Why a process. Reading a region with ``preadv`` (``shm.Registry.read``, the ``inline``
mode) copies it at about 4 GB/s: at n = 10^7 FP64 the two inputs take ~40 ms against
~12 ms for the kernel, so the service stayed at a quarter of the kernel's throughput.
A mapping costs no copy: the kernel reads the client's pages. But a client that
truncates its region makes a mapped read fault (SIGBUS), which kills the process that
reads. Here that process is the helper: the worker sees its end of the socket close,
answers 400 naming the region (it looks at the region's file to say whether it shrank
or vanished), starts a new helper and lives on.

The helper runs the request's one path (``pipeline.run``: codec, ``compute``, codec)
with a ``MappedRegistry`` in place of the request's registry: an input is a read-only
NumPy view of a mapping, an output is copied into a writable mapping of its region.
Mappings are kept per region between requests and dropped when the region is
unregistered or its file is replaced (checked at each request and every second when
idle), so an unlinked region's memory is freed. Before it maps a region for a request,
the helper records which one (name, key, end) in memory it shares with the worker, so
that the worker can name it if the helper dies.

One request at a time (the kernels use every thread): requests queue on the helper's
I/O thread, the event loop awaits a future. While a helper starts (a few seconds of
imports, at the worker's start or after a helper died), requests are computed the
``inline`` way, in the worker's kernel threads with ``preadv``. Statuses when the helper dies while
computing: 400 if a region it read shrank, vanished, or it died of SIGBUS (only a region
cut short makes a mapped read fault); otherwise 503 with ``Retry-After`` (the server's
fault, e.g. the helper was killed; a new one serves the retry). A helper that passes
``LOSSD_COMPUTE_TIMEOUT`` is killed and restarted, and the request gets the usual 504.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import mmap
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ApiError, RequestError
from .lane import _call, _unwrap, _widen
from .limits import BodyLimits
from .shm import Region, Registry, ends_before, missing

log = logging.getLogger("lossd")

PROCESS_NAME = "lossd-shm-help"  # /proc/<pid>/comm (15 bytes at most)
PRUNE_EVERY = 1.0  # seconds idle between checks for mappings to drop
WARM_TIMEOUT = 600.0  # seconds for a helper's warm-up (a first start may compile)
STATUS_BYTES = 16 * 1024  # the shared record of a request's regions (``Progress``)


# ----------------------------------------------------------------- in the helper process


@dataclass
class _Map:
    key: str
    ident: tuple[int, int]  # (st_dev, st_ino) of the file mapped
    length: int
    mm: mmap.mmap


class Mappings:
    """The helper's mappings, one per (region name, writable); ``report(name, key, end)``
    is called before a request may touch one."""

    def __init__(self, report: Callable[[str, str, int], None]) -> None:
        self.report = report
        self._maps: dict[tuple[str, bool], _Map] = {}

    def get(self, region: Region, at: int, size: int, writable: bool, what: str) -> mmap.mmap | None:
        """A mapping of ``region``'s file covering bytes [at, at + size) (None when size is
        0); ``what`` ends the message when the file is now shorter."""
        path = Registry.key_path(region.key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise missing(region.name, region.key) from None
        if st.st_size < at + size:
            raise ends_before(region.name, region.key, at + size, what)
        m = self._maps.get((region.name, writable))
        if m is None or m.key != region.key or m.ident != (st.st_dev, st.st_ino) or m.length < at + size:
            m = self._map(region, at + size, writable, what)
            self._maps[(region.name, writable)] = m
        self.report(region.name, region.key, at + size)
        return m.mm if size else None

    @staticmethod
    def _map(region: Region, end: int, writable: bool, what: str) -> _Map:
        fd = Registry._open(region, os.O_RDWR if writable else os.O_RDONLY)  # refuses links, FIFOs
        try:
            st = os.fstat(fd)
            if st.st_size < end:
                raise ends_before(region.name, region.key, end, what)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, prot) if st.st_size else None
        finally:
            os.close(fd)
        return _Map(region.key, (st.st_dev, st.st_ino), st.st_size, mm)  # type: ignore[arg-type]

    def prune(self, registry: Registry) -> None:
        """Drop the mappings of regions no longer registered (or registered anew) and of
        files unlinked or replaced; unmapped once no array refers to them."""
        for (name, writable), m in list(self._maps.items()):
            try:
                keep = registry.lookup(name).key == m.key
                st = os.stat(Registry.key_path(m.key), follow_symlinks=False)
                keep = keep and (st.st_dev, st.st_ino) == m.ident
            except (RequestError, OSError):
                keep = False
            if not keep:
                del self._maps[(name, writable)]

    def __len__(self) -> int:
        return len(self._maps)


@dataclass(frozen=True, slots=True)
class MappedRegistry(Registry):
    """A registry whose tensors are views of mappings (the helper's), not copies."""
    maps: Mappings | None = field(default=None, compare=False)

    def read(self, name: str, params: dict, dtype: np.dtype, count: int, slot: int = 0) -> np.ndarray:
        region, at, size = self._input_span(name, params, dtype, count)
        mm = self.maps.get(region, at, size, False, f"input {name!r} could not be read")
        if mm is None:
            return np.empty(0, dtype=dtype)
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=at)  # read-only, as the mapping
        # the kernels are compiled for aligned arrays: an odd offset is copied (as inline)
        return arr if at % dtype.itemsize == 0 else arr.copy()

    def write(self, name: str, span: tuple[str, int, int, int], data: bytes | memoryview | np.ndarray) -> None:
        region, at, view = self._output_span(name, span, data)
        mm = self.maps.get(region, at, len(view), True, f"output {name!r} could not be written")
        if mm is not None:
            mm[at:at + len(view)] = view


def _set_process_name(name: str) -> None:
    try:  # prctl(PR_SET_NAME): ps and /proc/<pid>/comm show it
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Progress:
    """What the helper has done with the current request, in memory shared with the
    worker (no message, no wake-up): the request's number once received, then each region
    it maps. The worker reads it only when the helper died."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared
        self.seq = 0
        self.touched: list[tuple[str, str, int]] = []

    def got(self, seq: int) -> None:
        self.seq, self.touched = seq, []
        self._write()

    def region(self, name: str, key: str, end: int) -> None:
        self.touched.append((name, key, end))
        self._write()

    def _write(self) -> None:
        data = json.dumps([self.seq, self.touched]).encode()
        while len(data) >= len(self.shared) and self.touched:  # the first regions named suffice
            self.touched.pop()
            data = json.dumps([self.seq, self.touched]).encode()
        self.shared.value = data

    @staticmethod
    def read(shared: Any) -> tuple[int, list[tuple[str, str, int]]]:
        if not shared.value:  # no request received yet
            return 0, []
        try:
            seq, touched = json.loads(shared.value)
            return seq, [tuple(t) for t in touched]
        except ValueError:  # died while writing it
            return -1, []


def _serve(conn, status: Any, threads: int, output_pool_bytes: int, directory: str, prefix: str) -> None:
    """The helper's loop: (request number, fn, args) then the body, answered with (kind,
    value) as the large lane's; its progress is in ``status`` (``Progress``)."""
    _set_process_name(PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker shuts it down
    from lossd import kernels

    kernels.set_threads(threads)
    kernels.set_output_pool(output_pool_bytes)
    conn.send(("ready",))
    progress = Progress(status)
    maps = Mappings(progress.region)
    registry = MappedRegistry(directory, prefix, maps)
    while True:
        try:
            if not conn.poll(PRUNE_EVERY):
                maps.prune(registry)
                continue
            seq, fn, args = conn.recv()
        except (EOFError, OSError):  # the worker is gone
            return
        try:
            if fn is None:  # warm-up
                conn.send(("ok", kernels.warmup()))
                continue
            body = conn.recv_bytes()
            progress.got(seq)  # dying from now on is this request's business
            maps.prune(registry)
            args = tuple(dataclasses.replace(a, shm=registry) if isinstance(a, BodyLimits) and a.shm is not None
                         else a for a in args)
            conn.send(_call(fn, body, args))
        except (EOFError, OSError):  # the worker went away meanwhile
            return


# ------------------------------------------------------------------- in the worker


class HelperGone(RuntimeError):
    """The helper died while it computed a request that was given up (the deadline)."""


class HelperStarting(RuntimeError):
    """The helper cannot take the request now (it is starting): compute it in the worker."""


class ShmHelper:
    """The worker's helper process (spawned: the worker has threads), restarted when it
    dies; ``submit`` runs ``fn(body, *args)`` in it."""

    def __init__(self, threads: int, output_pool_bytes: int, registry: Registry) -> None:
        self._args = (threads, output_pool_bytes, registry.directory, registry.prefix)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lossd-shm-io")
        self._lock = threading.Lock()
        self._killed = False  # by ``kill``: its request was already answered
        self._closed = False  # shut down: no new helper
        self._ready = False  # the helper said "ready" (its imports are done)
        self._seq = 0  # requests sent
        self.restarts = 0
        self._start()
        threading.Thread(target=self._watch, name="lossd-shm-watch", daemon=True).start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)  # a socket pair
        _widen(self._conn)
        _widen(child)
        self._status = ctx.RawArray(ctypes.c_char, STATUS_BYTES)
        proc = ctx.Process(target=_serve, args=(child, self._status, *self._args), name="lossd-shm-helper",
                           daemon=True)
        proc.start()
        self._proc = proc  # started: the watcher may look at it
        child.close()
        self._killed = False
        self._ready = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _watch(self) -> None:
        """A helper that dies idle (killed) is replaced at once, not at the next request
        (which may not come for a while: a client keeps its connection to one worker)."""
        while not self._closed:
            proc = self._proc
            if wait([proc.sentinel], timeout=1.0) and proc is self._proc and not self._closed:
                try:
                    self._io.submit(self._revive, proc).result()
                except RuntimeError:  # shut down meanwhile
                    return

    def _revive(self, proc: multiprocessing.process.BaseProcess) -> None:
        with self._lock:
            if proc is self._proc and not self._closed:  # else a request saw it die: replaced
                self._restart("died while idle")

    def warm(self) -> int:
        """Blocks until the helper has loaded every kernel signature (from the cache; run
        after the worker's warm-up). A helper that cannot warm up still serves: its
        requests compile what they need."""
        try:
            return self._io.submit(self._call, None, b"", ()).result(timeout=WARM_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - logged; the helper is restarted if it died
            if isinstance(exc, TimeoutError):  # hung: /readyz must not wait for ever
                self.kill()
            log.error("the shared memory compute helper did not warm up: %s: %s", type(exc).__name__, exc)
            return 0

    def submit(self, fn: Callable[..., Any], body: bytes | memoryview, *args: Any) -> Future:
        """``fn(body, *args)`` in the helper (module-level ``fn``, plain-data ``args``)."""
        return self._io.submit(self._call, fn, body, args)

    def _available(self, wait: bool) -> None:
        """Restart the helper if it died idle; unless ``wait``, ``HelperStarting`` while a
        (new) helper is still importing."""
        if not self._ready:
            try:
                if self._conn.poll(0):
                    self._ready = self._conn.recv()[0] == "ready"
                elif not self._proc.is_alive():
                    self._restart("died while starting")
            except (EOFError, OSError):
                self._restart("died while starting")
        # once ready it never writes unasked: a readable socket means it died idle (killed)
        elif self._conn.poll(0) or not self._proc.is_alive():
            self._restart("died while idle")
        if not self._ready and not wait:
            raise HelperStarting("the shared memory compute helper is starting")

    def _call(self, fn: Callable[..., Any] | None, body: bytes | memoryview, args: tuple) -> Any:
        with self._lock:
            for _ in range(2):  # a second time only if the helper died before it got the request
                if self._closed:
                    raise HelperGone("the server is stopping")
                self._available(wait=fn is None)
                self._seq += 1
                try:
                    self._conn.send((self._seq, fn, args))
                    if fn is not None:
                        self._conn.send_bytes(body)
                    while True:
                        msg = self._conn.recv()
                        if msg[0] != "ready":
                            return _unwrap(*msg)
                        self._ready = True
                except (EOFError, OSError):
                    if self._closed:
                        raise HelperGone("the server is stopping") from None
                    pid, killed = self._proc.pid, self._killed
                    self._proc.join(timeout=5)
                    code = self._proc.exitcode
                    seq, touched = Progress.read(self._status)
                    got = fn is None or seq in (self._seq, -1)
                    self._restart(f"died (exit code {code}) "
                                  f"{'while computing a request' if got else 'before it got a request'}")
                    if killed:
                        raise HelperGone("killed at the compute deadline") from None
                    if got:
                        raise death_error(touched, code, pid) from None
            raise HelperStarting("the helper died twice before it got the request")

    def _restart(self, why: str) -> None:
        log.warning("the shared memory compute helper (pid %s) %s; a new one starts", self._proc.pid, why)
        self._close_process()
        self.restarts += 1
        self._start()

    def _close_process(self) -> None:
        self._conn.close()  # the helper sees EOF and returns
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def kill(self) -> None:
        """Stop the request the helper computes now (the compute deadline): the I/O thread
        sees it die and starts a new one."""
        self._killed = True
        self._proc.kill()

    def shutdown(self) -> None:
        """Stop the helper (a request still computing is given up: the server stops)."""
        self._closed = True
        self._io.shutdown(wait=False, cancel_futures=True)
        self._close_process()


def death_error(touched: list[tuple[str, str, int]], exitcode: int | None, pid: int | None) -> ApiError:
    """The answer to a request whose helper died: 400 naming the region the client cut
    short (or removed), or 503 when nothing the client did explains it."""
    seen = dict.fromkeys(touched)
    for name, key, end in seen:
        try:
            size = os.stat(Registry.key_path(key), follow_symlinks=False).st_size
        except FileNotFoundError:
            return missing(name, key)
        except OSError:
            continue
        if size < end:
            return ends_before(name, key, end, "the request's read or write faulted (SIGBUS)")
    if exitcode == -signal.SIGBUS and seen:
        names = ", ".join(repr(name) for name in dict.fromkeys(name for name, _, _ in seen))
        return RequestError.at((), f"shared memory region {names}: truncated while this request read or "
                                   "wrote it (an access beyond the end of the file faulted: SIGBUS)")
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return ApiError(503, f"the shared memory compute helper (pid {pid}) died ({how}) while computing this "
                         "request; a new one has started: retry", {"retry-after": "1"})
