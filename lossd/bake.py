"""``lossd bake`` (or ``python -m lossd.bake``): compile every kernel signature ahead of
time for portable CPU targets.

Each target compiles in its own process (Numba's target is fixed per process) into its own
folder ``<dest>/<target>``, so targets can compile in parallel without two processes
rewriting one cache index. At run time ``LOSSD_BAKED_CACHE=<dest>`` and
``LOSSD_CPU_TARGET=portable`` make the kernels load the best folder the CPU can run
(``lossd.kernels._baked``). Targets the build machine cannot run are compiled all the same
(the code is only compiled here, never run).

Needs only ``lossd.kernels`` (no web dependencies), so the image bakes in a stage that holds
the kernels alone: editing the service or the README does not recompile anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
# B404 reviewed: subprocess runs only this interpreter on a constant script (bake_one)
import subprocess  # nosec B404
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

DEFAULT_TARGETS = ("x86-64-v2", "x86-64-v3", "x86-64-v4")

# warmup() compiles every block function and driver; a few helpers compile lazily on first
# use (e.g. merging many blocks' statistics), so a run of the public API on inputs of many
# blocks follows where the build machine can run the target's code.
_WARM = """
import os, numpy as np
from lossd import kernels
n = kernels.warmup()
if os.environ.get("LOSSD_BAKE_EXERCISE") == "1":
    for dt in (np.float32, np.float64):
        s = np.linspace(-5, 5, 100_000, dtype=dt); y = (s > 0).astype(dt)
        kernels.loss(s, y); kernels.grad(s, y); kernels.loss(s, y, reduction="none")
        kernels.logreg_grad(s.reshape(-1, 4), y[::4], np.zeros(4, dtype=dt))
print(n)
"""


def target_module() -> ModuleType:
    """``lossd.kernels._target`` without importing ``lossd.kernels`` (which would set up
    Numba and compile its eager functions in this process for nothing)."""
    spec = importlib.util.find_spec("lossd.kernels")
    path = Path(spec.submodule_search_locations[0]) / "_target.py"
    module_spec = importlib.util.spec_from_file_location("lossd_bake_target", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    return module


def runnable(target: str) -> bool:
    """Whether this machine can run code compiled for ``target`` (else it is only compiled)."""
    import llvmlite.binding as llvm

    return target in target_module().supported_levels(llvm.get_host_cpu_features())


def _env(target: str, cache_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUMBA_CPU_") and k not in ("LOSSD_BAKED_CACHE", "_LOSSD_NUMBA_CPU_APPLIED")}
    env.update(LOSSD_CPU_TARGET=target, LOSSD_CPU_TARGET_COMPILE_ONLY="1", NUMBA_CACHE_DIR=cache_dir,
               LOSSD_BAKE_EXERCISE="1" if runnable(target) else "0")
    return env


def bake_one(target: str, dest: str) -> tuple[str, float, str]:
    """Compile every signature for ``target`` into ``dest/target``: (target, seconds, output)."""
    cache_dir = os.path.join(dest, target)
    os.makedirs(cache_dir, exist_ok=True)
    t0 = time.perf_counter()
    # B603 reviewed: argv is this interpreter and a constant script, no shell; the target
    # travels in the environment (NUMBA_CPU_NAME), never in argv
    proc = subprocess.run([sys.executable, "-c", _WARM], env=_env(target, cache_dir),
                          capture_output=True, text=True)  # nosec B603
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"baking {target} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return target, seconds, proc.stdout.strip()


def bake(targets: tuple[str, ...], dest: str, jobs: int) -> int:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for target, seconds, signatures in pool.map(lambda t: bake_one(t, dest), targets):
            print(f"lossd bake: {target}: {signatures} signatures in {seconds:.0f} s", flush=True)
    print(f"lossd bake: {len(targets)} targets into {dest} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lossd bake", description="Compile every kernel signature ahead "
                                 "of time into DEST/<target>/; serve it with LOSSD_BAKED_CACHE=DEST and "
                                 "LOSSD_CPU_TARGET=portable.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dest", required=True, help="folder to fill (one subfolder per target)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"comma-separated x86-64 levels (default {','.join(DEFAULT_TARGETS)})")
    ap.add_argument("--jobs", type=int, default=0,
                    help="targets compiled at once (default: all; each compile is one thread)")


def run(args: argparse.Namespace) -> int:
    targets = tuple(t for t in args.targets.split(",") if t)
    return bake(targets, args.dest, args.jobs or len(targets))


if __name__ == "__main__":
    sys.exit(main())
