"""System shared memory (Triton's extension) from the client's side, for a server on the
same host: inputs are written into a POSIX shared memory object the client owns, the
server reads them from there and writes the per-element outputs (``losses``, ``grad``)
back into it; only a small JSON header travels over HTTP.

Each :class:`Segment` is one object under ``/dev/shm`` (the server opens it by that
name: ``os.open`` on the same path, not ``multiprocessing.shared_memory``, whose resource
tracker would add a process and unlink at its own moments), registered with the server
once under a name of its own and reused call after call; a call that needs more room
gets a new, larger segment (the old one unregistered and unlinked). Concurrent calls take
different segments from a pool. ``close`` unregisters and unlinks them all. Local
operations only here; registering is the client's (HTTP).
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import threading
import weakref
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np

from ._codec import _DATATYPES, Outputs
from ._errors import LossdError

# B108 reviewed: where Linux keeps POSIX shared memory objects (shm_open; the server opens the
# same path), not a temp dir: objects are created O_EXCL|O_NOFOLLOW, mode 0600, random names
SHM_ROOT = "/dev/shm"  # nosec B108
_ALIGN = 64  # every tensor starts on a cache line (and so at a multiple of its item size)
_MIN_BYTES = 1 << 16
_RESULT_ITEM = 8  # per-element outputs are FP64 at most: the room each element needs
STATS = ("count", "sum", "mean", "std", "min", "max")  # the server's order, the kernels'


class Refused(LossdError):
    """The server refused to register a region (the server's message): its /dev/shm is
    another (a container, another host behind a loopback port), it runs as another user,
    or it wants another key prefix."""


def forgotten(exc: LossdError, seg: "Segment") -> bool:
    """Whether ``exc`` is the server saying it does not know ``seg``'s region (it restarted,
    or the region was unregistered behind the client's back): registering again mends it."""
    return exc.status == 400 and f"shared memory region {seg.name!r} is not registered" in exc.message


def available() -> bool:
    return os.path.isdir(SHM_ROOT)


def _round(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class Segment:
    """One shared memory object of ``size`` bytes, created (exclusively, mode 0600) and
    mapped; ``name`` is the region's name on the server, ``key`` the object's name."""

    def __init__(self, prefix: str, size: int) -> None:
        self.key = f"{prefix}-client-{os.getpid()}-{secrets.token_hex(6)}"
        self.name = self.key.lstrip("/")
        self.size = size
        self.path = os.path.join(SHM_ROOT, self.name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self.registered = False
        # a client never closed still leaves nothing in /dev/shm: at collection or exit
        self._release = weakref.finalize(self, _release, self.map, self.path)

    def write(self, offset: int, arr: np.ndarray) -> None:
        if arr.nbytes:
            np.frombuffer(self.map, dtype=np.uint8, count=arr.nbytes, offset=offset)[:] = \
                arr.reshape(-1).view(np.uint8)

    def read(self, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A copy (the segment is reused by the next call): writable, native-endian."""
        if offset < 0 or offset + nbytes > self.size:
            raise ValueError(f"shared memory output at {offset} + {nbytes} is beyond the {self.size} bytes "
                             f"of region {self.name!r}")
        raw = np.frombuffer(self.map, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        return raw.astype(dtype.newbyteorder("=")).reshape(shape)

    def close(self) -> None:
        """Unmap and unlink (the server opens the key per request: once unregistered, it
        holds nothing)."""
        self._release()


def _release(mapping: mmap.mmap, path: str) -> None:
    try:
        mapping.close()
    except BufferError:  # a view still alive somewhere: the mapping goes with it
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Pool:
    """Segments for concurrent calls: ``take`` one (a free one, else a new one), ``give``
    it back after the call. Thread-safe; the asyncio client uses it from one thread."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._free: list[Segment] = []
        self._all: list[Segment] = []
        self._lock = threading.Lock()

    def take(self) -> Segment | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def new(self, size: int) -> Segment:
        seg = Segment(self.prefix, max(_MIN_BYTES, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE))
        with self._lock:
            self._all.append(seg)
        return seg

    def give(self, seg: Segment) -> None:
        with self._lock:
            if seg in self._all:
                self._free.append(seg)

    def drop(self, seg: Segment) -> None:
        with self._lock:
            if seg in self._all:
                self._all.remove(seg)
        seg.close()

    def drain(self) -> list[Segment]:
        """Every segment, forgotten by the pool (the caller unregisters and closes them)."""
        with self._lock:
            segs, self._all, self._free = self._all, [], []
        return segs


# ------------------------------------------------------------------------ the call's layout

def quantile_key(q: float) -> str:
    """The kernels' key of quantile ``q`` (``kernels._checks._quantile_key``): "p" + 100·q
    from q's shortest decimal (0.5 -> p50, 0.999 -> p99.9)."""
    return "p" + format(Decimal(repr(float(q))).scaleb(2).normalize(), "f")


def output_names(model: str, parameters: Mapping[str, Any]) -> tuple[list[str], list[str]] | None:
    """(per-element outputs, then every output in the server's order) of a call, or None
    when the call has no per-element output (logreg_grad: nothing to put in shared
    memory). A request that names its outputs gets only those, so all are named: loss or
    losses, grad, the statistics and the quantiles' keys, as ``kernels`` makes them."""
    if parameters.get("wrt") == "params":
        return None
    per_element = ["losses"] if parameters.get("reduction", "mean") == "none" else []
    names = ["loss"] if not per_element else list(per_element)
    if model == "grad":
        per_element.append("grad")
        names.append("grad")
    names += STATS
    q = parameters.get("quantiles")
    if isinstance(q, str):
        for key in (quantile_key(float(x)) for x in q.split(",")):
            if key not in names:
                names.append(key)
    return per_element, names


class Layout:
    """Where a call's inputs and per-element outputs go in a segment, and the parameters
    that say so (OIP's ``shared_memory_region`` / ``_byte_size`` / ``_offset``)."""

    def __init__(self, model: str, inputs: Outputs, parameters: Mapping[str, Any]) -> None:
        self.inputs: list[tuple[str, np.ndarray, int]] = []
        at = 0
        for name, arr in inputs:
            self.inputs.append((name, arr, at))
            at = _round(at + arr.nbytes)
        self.outputs: dict[str, tuple[int, int]] = {}
        self.names: list[str] | None = None
        named = output_names(model, parameters)
        if named is not None:
            per_element, self.names = named
            n = inputs[0][1].size  # predictions: the per-element outputs have its shape
            for name in per_element:
                self.outputs[name] = (at, n * _RESULT_ITEM)
                at = _round(at + n * _RESULT_ITEM)
        self.size = max(at, 1)

    def write(self, seg: Segment) -> None:
        for _, arr, at in self.inputs:
            seg.write(at, arr)

    def input_parameters(self, seg: Segment) -> dict[str, dict[str, Any]]:
        return {name: {"shared_memory_region": seg.name, "shared_memory_byte_size": arr.nbytes,
                       "shared_memory_offset": at} for name, arr, at in self.inputs}

    def output_parameters(self, seg: Segment) -> list[tuple[str, dict[str, Any]]] | None:
        if self.names is None:
            return None
        return [(name, {"shared_memory_region": seg.name, "shared_memory_byte_size": self.outputs[name][1],
                        "shared_memory_offset": self.outputs[name][0]} if name in self.outputs else {})
                for name in self.names]

    def http_header(self, seg: Segment, parameters: Mapping[str, Any]) -> bytes:
        """The JSON body of an HTTP infer request with every tensor in ``seg``; the
        scalar outputs come back as binary tensors."""
        shm = self.input_parameters(seg)
        header: dict[str, Any] = {"inputs": [
            {"name": name, "datatype": _DATATYPES[arr.dtype], "shape": list(arr.shape), "parameters": shm[name]}
            for name, arr, _ in self.inputs]}
        outputs = self.output_parameters(seg)
        if outputs is not None:
            header["outputs"] = [{"name": name, **({"parameters": p} if p else {})} for name, p in outputs]
        header["parameters"] = {**parameters, "binary_data_output": True}
        return json.dumps(header, separators=(",", ":"), allow_nan=True, default=str).encode()

    def reader(self, seg: Segment):
        """Reads an output the server wrote to ``seg`` (``_codec.ShmReader``)."""
        def read(name: str, params: Mapping[str, Any], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
            if params.get("shared_memory_region") != seg.name:
                raise ValueError(f"output {name!r} is in region {params.get('shared_memory_region')!r}, "
                                 f"not {seg.name!r}")
            return seg.read(int(params.get("shared_memory_offset", 0)), int(params["shared_memory_byte_size"]),
                            dtype, shape)
        return read
