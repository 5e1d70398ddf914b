"""System shared memory (Triton's extension): regions registered by name, tensors read
from and written to them instead of travelling in the body. No HTTP here.

Registration is shared by every worker process: the registry is a directory (``Settings
.shm_dir``; ``lossd serve`` makes one under ``/dev/shm`` named from its pid and removes it
at exit), one small file per region holding its key, offset and size. Registering creates
the file (``O_EXCL``: a second registration of the name is refused by whichever worker
gets it), unregistering removes it, and every worker looks the name up at each request.

Safety. A client may truncate or unlink its region at any time, also during a request;
touching a mapped page beyond a truncated file raises SIGBUS and kills the worker. So no
worker ever maps a region. By default (``LOSSD_SHM_COMPUTE=helper``) requests naming a
region are computed by a process of the worker's own that maps them
(``shm_helper.MappedRegistry``; a SIGBUS kills only that process). What follows is the
``inline`` mode, and the fallback while a helper starts: each request opens the region's key (``/dev/shm/<key>``), reads a
tensor with ``os.preadv`` into a fresh array and writes an output with ``os.pwrite``. A
read past the end of the file returns short instead of faulting (the request gets a 400
naming the region) and a write past it extends the file; an unlinked key fails to open
(400 naming the region). Opening at each request also means nothing is held open between
requests: unregistering, or the server stopping, releases everything. The cost is one
copy of the tensor (memcpy speed from the page cache) and an open/close per tensor.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from .errors import RequestError

# B108 reviewed: where POSIX shared memory objects live (shm_open), not a temp dir: keys are opened
# O_NOFOLLOW, and registry directories are made with random names and mode 0700
SHM_ROOT = "/dev/shm"  # nosec B108
_MAX_NAME = 200
_MAX_IO = 1 << 30  # bytes per preadv/pwrite call (Linux moves at most ~2 GiB in one)


def _error(msg: str, *loc: object) -> RequestError:
    return RequestError.at(loc, msg)


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def missing(name: str, key: str) -> RequestError:
    return _error(f"shared memory region {name!r}: key {key!r} does not exist (unlinked?)")


def ends_before(name: str, key: str, end: int, what: str) -> RequestError:
    """The region's file is now shorter than a tensor in it: ``what`` failed."""
    return _error(f"shared memory region {name!r}: {key!r} now ends before byte {end} (truncated?); {what}")


def _count(v: object, what: str, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _error(f"shared memory region {name!r}: {what} must be a non-negative integer, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class Registry:
    """The regions of one server (``directory``); keys must start with ``prefix``. Plain
    data: it travels to the kernel threads and the large lane with a request."""
    directory: str
    prefix: str = "/lossd"

    # ------------------------------------------------------------------ registration

    def _entry(self, name: str) -> str:
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
            raise _error(f"shared memory region name {name!r} must be 1 to {_MAX_NAME} characters")
        return os.path.join(self.directory, name.encode().hex())

    def register(self, name: str, key: object, offset: object, byte_size: object) -> Region:
        entry = self._entry(name)
        if not isinstance(key, str) or not key.startswith(self.prefix):
            raise _error(f"shared memory region {name!r}: key {key!r} is refused: keys must start with "
                         f"{self.prefix!r} (LOSSD_SHM_PREFIX)")
        base = key.lstrip("/")
        if not base or "/" in base or base in (".", "..") or "\0" in base:
            raise _error(f"shared memory region {name!r}: key {key!r} is not a POSIX shared memory name")
        region = Region(name, key, _count(offset, "offset", name), _count(byte_size, "byte_size", name))
        fd = self._open(region, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if region.offset + region.byte_size > size:
            raise _error(f"shared memory region {name!r}: offset {region.offset} + byte_size {region.byte_size} "
                         f"is beyond the {size} bytes of {key!r}")
        # written aside, then linked in place: a reader never sees a half-written entry, and
        # link() fails if the name exists (whichever worker registered it)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".", dir=self.directory)
        except FileNotFoundError:
            raise _error(f"shared memory region {name!r}: the server's registry is gone "
                         "(the server is stopping)") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(region.status(), f)
            os.link(tmp, entry)
        except FileExistsError:
            raise _error(f"shared memory region {name!r} is already registered") from None
        finally:
            os.unlink(tmp)
        return region

    def unregister(self, name: str) -> None:
        """Forget ``name``; unknown names are no error (as Triton)."""
        try:
            os.unlink(self._entry(name))
        except FileNotFoundError:
            pass

    def unregister_all(self) -> None:
        for region in self.regions():
            self.unregister(region.name)

    def regions(self) -> list[Region]:
        out = []
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.startswith("."):
                continue  # being written (register)
            try:
                out.append(self._read(bytes.fromhex(e).decode(), os.path.join(self.directory, e)))
            except (ValueError, OSError):
                continue  # removed meanwhile, or not ours
        return out

    def lookup(self, name: object) -> Region:
        if not isinstance(name, str):
            raise _error(f"shared_memory_region must be a string, got {name!r}")
        try:
            return self._read(name, self._entry(name))
        except FileNotFoundError:
            raise _error(f"shared memory region {name!r} is not registered") from None

    @staticmethod
    def _read(name: str, path: str) -> Region:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return Region(name, d["key"], d["offset"], d["byte_size"])

    @staticmethod
    def key_path(key: str) -> str:
        return os.path.join(SHM_ROOT, key.lstrip("/"))

    @staticmethod
    def _open(region: Region, flags: int) -> int:
        try:
            # O_NOFOLLOW: a symlink planted under /dev/shm does not lead elsewhere; O_NONBLOCK:
            # a FIFO does not hang the open (and is refused below)
            fd = os.open(Registry.key_path(region.key),
                         flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise missing(region.name, region.key) from None
        except OSError as exc:
            raise _error(f"shared memory region {region.name!r}: key {region.key!r} cannot be opened: "
                         f"{exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _error(f"shared memory region {region.name!r}: key {region.key!r} is not a shared "
                         "memory object (a regular file under /dev/shm)")
        return fd

    # ------------------------------------------------------------------ tensors

    def _span(self, what: str, params: dict) -> tuple[Region, int, int]:
        region = self.lookup(params.get("shared_memory_region"))
        size = _count(params.get("shared_memory_byte_size"), f"{what}: shared_memory_byte_size", region.name)
        offset = _count(params.get("shared_memory_offset", 0), f"{what}: shared_memory_offset", region.name)
        if offset + size > region.byte_size:
            raise _error(f"{what}: shared_memory_offset {offset} + shared_memory_byte_size {size} is beyond "
                         f"the {region.byte_size} bytes of shared memory region {region.name!r}")
        return region, region.offset + offset, size

    def _input_span(self, name: str, params: dict, dtype: np.dtype, count: int) -> tuple[Region, int, int]:
        region, at, size = self._span(f"input {name!r}", params)
        expect = count * dtype.itemsize
        if size != expect:
            raise _error(f"input {name!r}: shared_memory_byte_size = {size} does not match its shape and "
                         f"datatype ({expect} bytes; region {region.name!r})")
        return region, at, size

    def _output_span(self, name: str, span: tuple[str, int, int, int], data: bytes | memoryview | np.ndarray
                     ) -> tuple[Region, int, memoryview]:
        region_name, at, size, _ = span
        view = memoryview(data).cast("B")  # an array's own bytes: no copy
        if len(view) > size:
            raise _error(f"output {name!r} needs {len(view)} bytes, shared_memory_byte_size is {size} "
                         f"(region {region_name!r})")
        return self.lookup(region_name), at, view  # it may have been unregistered meanwhile

    def read(self, name: str, params: dict, dtype: np.dtype, count: int, slot: int = 0) -> np.ndarray:
        """Input ``name``'s ``count`` values of ``dtype`` from the region its ``params``
        name: a copy (the client may rewrite the region meanwhile), into this thread's
        buffer number ``slot`` (``_buffer``)."""
        region, at, size = self._input_span(name, params, dtype, count)
        arr = _buffer(slot, size).view(dtype)
        buf = memoryview(arr).cast("B")
        fd = self._open(region, os.O_RDONLY)
        try:
            done = 0
            while done < size:
                n = os.preadv(fd, [buf[done:done + _MAX_IO]], at + done)
                if n <= 0:
                    raise ends_before(region.name, region.key, at + size, f"input {name!r} could not be read")
                done += n
        finally:
            os.close(fd)
        return arr

    def check_output(self, name: str, params: dict) -> tuple[str, int, int, int]:
        """(region name, absolute offset, byte size, offset in the region) an output goes
        to, checked before compute."""
        region, at, size = self._span(f"output {name!r}", params)
        return region.name, at, size, at - region.offset

    def write(self, name: str, span: tuple[str, int, int, int], data: bytes | memoryview | np.ndarray) -> None:
        """Write output ``name`` at the start of its span (``check_output``); refuse when
        the span is too small or the file is now shorter than it. A concurrent truncate
        makes pwrite extend the file: no fault."""
        region, at, view = self._output_span(name, span, data)
        fd = self._open(region, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < at + len(view):
                raise ends_before(region.name, region.key, at + len(view), f"output {name!r} could not be written")
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:done + _MAX_IO], at + done)
        finally:
            os.close(fd)


_local = threading.local()
POOL_SLOTS = 8  # inputs per request read into reused buffers (a request has at most 7)
POOL_MAX_BYTES = 256 << 20  # bytes kept per kernel thread; beyond, fresh memory (not kept)


def _buffer(slot: int, size: int) -> np.ndarray:
    """``size`` bytes to read a tensor into. A buffer per input position and thread, kept
    and reused: a fresh array's pages fault in on first write, which cost more than the
    read itself (n = 10^7 FP64: about 26 to 120 ms fresh, 17 ms reused). Safe because a
    request is decoded, computed and encoded in one call on one thread, and neither the
    results nor the answer are views of the inputs: the buffer is free again when the
    thread takes its next request."""
    if slot >= POOL_SLOTS:
        return np.empty(size, dtype=np.uint8)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = [None] * POOL_SLOTS
    buf = bufs[slot]
    if buf is None or len(buf) < size:
        kept = sum(len(b) for b in bufs if b is not None) - (0 if buf is None else len(buf))
        buf = np.empty(size, dtype=np.uint8)
        if kept + size > POOL_MAX_BYTES:  # all of a thread's buffers together stay under it
            return buf
        bufs[slot] = buf
    return buf[:size]


def directory_name(tag: str) -> str:
    """A new registry directory's path (not made yet: ``os.mkdir(path, 0o700)``)."""
    root = SHM_ROOT if os.path.isdir(SHM_ROOT) else tempfile.gettempdir()
    return os.path.join(root, f"lossd-registry-{tag}-{secrets.token_hex(6)}")


def make_directory(tag: str) -> str:
    """A fresh registry directory under /dev/shm (else the temp dir), named from ``tag``."""
    root = SHM_ROOT if os.path.isdir(SHM_ROOT) else None
    return tempfile.mkdtemp(prefix=f"lossd-registry-{tag}-", dir=root)


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
