"""Process-wide Numba settings; imported before anything compiles.

- Threading layer: ``workqueue`` aborts the process when two Python threads enter a
  parallel region at once (FastAPI's threadpool does exactly that), so only the
  thread-safe layers are allowed: TBB first, OpenMP as fallback. The PyPI ``tbb`` wheel
  puts ``libtbb.so.12`` in ``<prefix>/lib``, which the loader does not search (numba
  issue #9740); loading it by path first lets numba's ``tbbpool`` find it.
- Cache: ``cache=True`` needs a writable directory or import fails; default to a
  per-user cache when ``NUMBA_CACHE_DIR`` is unset and the package dir is read-only.
- Vector width: LLVM prefers 256-bit vectors on AVX-512 CPUs; the kernels are
  arithmetic-bound with no frequency penalty worth the halved width, so allow 512.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path


def _default_cache_dir() -> str:
    here = Path(__file__).resolve().parent
    if os.access(here, os.W_OK):
        return str(here / "__pycache__")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    path = os.path.join(base, "lossd", "numba")
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), f"lossd-numba-{os.getuid()}")


def _preload_tbb() -> bool:
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix)):
        lib = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(lib):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_cache_dir()
os.makedirs(os.environ["NUMBA_CACHE_DIR"], exist_ok=True)
_preload_tbb()

import numba  # noqa: E402  (must follow the environment set-up above)
import llvmlite.binding as _llvm  # noqa: E402

numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
if os.environ.get("NUMBA_THREADING_LAYER") in (None, "", "default", "workqueue"):
    numba.config.THREADING_LAYER = "threadsafe"  # tbb, else omp; never workqueue
if not os.environ.get("NUMBA_CPU_FEATURES") and not os.environ.get("NUMBA_CPU_NAME"):
    _features = _llvm.get_host_cpu_features()
    if _features.get("avx512f"):
        numba.config.CPU_FEATURES = _features.flatten() + ",-prefer-256-bit"
