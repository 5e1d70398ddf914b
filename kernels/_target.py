"""Which CPU the kernels are compiled for: the one place that decides.

Numba keys every cached overload by the compiling machine's "magic tuple" (LLVM triple,
CPU name, CPU feature string), so a cache built for one CPU model is ignored on another.
Compiling for one of LLVM's x86-64 micro-architecture levels instead of the exact host
makes a cache that every host with that level's features can load: an image can carry
kernels compiled at build time and start in seconds on any x86-64 node.

Modes (``LOSSD_CPU_TARGET``):
- ``host`` (default): tuned for this CPU, exactly as Numba would, and on AVX-512 CPUs
  with 512-bit vectors allowed (LLVM prefers 256; these kernels are arithmetic-bound).
- ``portable``: the best level this CPU supports, ``x86-64-v4`` .. ``x86-64-v2``
  (``x86-64`` below that); what the container image uses, since it bakes those levels.
- ``x86-64-v2`` / ``x86-64-v3`` / ``x86-64-v4``: that level; refused on a CPU without
  its features (the code would die with SIGILL), unless ``allow_missing`` (compiling a
  cache for other machines, which never runs the code here).
An explicit ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` wins over all of this.

No Numba import here: ``_config`` applies the choice before Numba reads its settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MODES = ("host", "portable", "x86-64-v2", "x86-64-v3", "x86-64-v4")

# LLVM feature names (as llvmlite reports the host's) that each level requires, from the
# x86-64 psABI's level definitions. LLVM reports avx* only when the OS saves the vector
# registers (XCR0), so a "yes" here is usable, not only present in CPUID.
_V2 = frozenset({"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"})
_V3 = _V2 | {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVELS: dict[str, frozenset[str]] = {"x86-64-v4": _V4, "x86-64-v3": _V3, "x86-64-v2": _V2}

# LLVM tunes x86-64-v4 like Skylake-X (256-bit vectors preferred); allow 512 as on hosts.
_WIDE = "-prefer-256-bit"


@dataclass(frozen=True)
class Target:
    mode: str
    cpu_name: str | None      # None: the host's (Numba's default)
    cpu_features: str | None  # None: the host's

    def describe(self) -> str:
        name = self.cpu_name or "host"
        feats = f" [{self.cpu_features}]" if self.cpu_features and self.cpu_name else ""
        return f"{name}{feats} (LOSSD_CPU_TARGET={self.mode})"


def supported_levels(host_features: Mapping[str, bool]) -> list[str]:
    """The levels this host can run, best first."""
    have = {k for k, v in host_features.items() if v}
    return [level for level, need in LEVELS.items() if need <= have]


def choose(mode: str, host_features: Mapping[str, bool], host_flat: str,
           allow_missing: bool = False) -> Target:
    """The target for ``mode`` on a host with ``host_features`` (llvmlite's
    ``get_host_cpu_features()``; ``host_flat`` is its ``flatten()``)."""
    mode = (mode or "host").strip().lower()
    if mode not in MODES:
        raise ValueError(f"LOSSD_CPU_TARGET = {mode!r} is not one of {', '.join(MODES)}")
    if mode == "host":
        if host_features.get("avx512f"):
            return Target(mode, None, f"{host_flat},{_WIDE}")
        return Target(mode, None, None)
    levels = supported_levels(host_features)
    if mode == "portable":
        level = levels[0] if levels else "x86-64"
    else:
        level = mode
        if level not in levels and not allow_missing:
            missing = sorted(LEVELS[level] - {k for k, v in host_features.items() if v})
            raise ValueError(f"LOSSD_CPU_TARGET = {level}: this CPU lacks {', '.join(missing)}")
    return Target(mode, level, _WIDE if level == "x86-64-v4" else "")
