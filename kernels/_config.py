"""Process-wide Numba settings; imported before anything compiles.

- Threading layer: ``workqueue`` aborts the process when two Python threads enter a
  parallel region at once (FastAPI's threadpool does exactly that), so only the
  thread-safe layers are allowed: TBB first, OpenMP as fallback. The PyPI ``tbb`` wheel
  puts ``libtbb.so.12`` in ``<prefix>/lib``, which the loader does not search (numba
  issue #9740); loading it by path first lets numba's ``tbbpool`` find it.
- Cache: ``cache=True`` needs a writable directory or import fails; default to a
  per-user cache when ``NUMBA_CACHE_DIR`` is unset and the package dir is read-only.
  ``LOSSD_BAKED_CACHE`` names read-only caches compiled ahead of time, one folder per
  CPU target (the container image's); the chosen target's is linked into the writable
  cache (``_baked``).
- CPU target: ``_target.choose`` decides (``LOSSD_CPU_TARGET``: host-tuned by default,
  or a portable x86-64 level whose cache loads on any CPU that has it); the choice is
  written to ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` before Numba reads them, so
  worker processes inherit it. An explicit ``NUMBA_CPU_*`` wins.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path

from . import _baked, _target


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


_EXPLICIT = "explicit NUMBA_CPU_*"
_APPLIED = "_LOSSD_NUMBA_CPU_APPLIED"  # what we wrote: inherited by children, not the user's


def _select_target() -> _target.Target:
    name, feats = os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES")
    if (name or feats) and os.environ.get(_APPLIED) != f"{name}|{feats}":
        return _target.Target(_EXPLICIT, name, feats)
    os.environ.pop("NUMBA_CPU_NAME", None)
    os.environ.pop("NUMBA_CPU_FEATURES", None)
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    target = _target.choose(os.environ.get("LOSSD_CPU_TARGET", "host"), features, features.flatten(),
                            allow_missing=os.environ.get("LOSSD_CPU_TARGET_COMPILE_ONLY") == "1")
    if target.cpu_name is not None:
        os.environ["NUMBA_CPU_NAME"] = target.cpu_name
    if target.cpu_features is not None:
        os.environ["NUMBA_CPU_FEATURES"] = target.cpu_features
    os.environ[_APPLIED] = f"{os.environ.get('NUMBA_CPU_NAME')}|{os.environ.get('NUMBA_CPU_FEATURES')}"
    return target


TARGET = _select_target()
if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_cache_dir()
os.makedirs(os.environ["NUMBA_CACHE_DIR"], exist_ok=True)
BAKED = _baked.seed(os.environ.get("LOSSD_BAKED_CACHE"), TARGET.cpu_name, os.environ["NUMBA_CACHE_DIR"])
_preload_tbb()

import numba  # noqa: E402  (must follow the environment set-up above)

numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
# Numba may have been imported before this module (it reads NUMBA_CPU_* once, at import):
# set the target on its config too. Later config reloads read the same values from the env.
if TARGET.mode != _EXPLICIT:  # (explicit ones Numba read itself)
    numba.config.CPU_NAME = TARGET.cpu_name
    numba.config.CPU_FEATURES = TARGET.cpu_features
if os.environ.get("NUMBA_THREADING_LAYER") in (None, "", "default", "workqueue"):
    numba.config.THREADING_LAYER = "threadsafe"  # tbb, else omp; never workqueue
