#!/usr/bin/env python
"""The kernels of two git revisions against each other, in one process, alternating.

    python bench/kernels_ab.py BASE [NEW] [--reps-small 300] [--reps-large 15]

BASE and NEW are revisions of this repository (NEW defaults to the working tree). Each
revision's ``kernels/`` is copied into a temporary folder as a package of its own
(``rev0``, ``rev1``; the package uses relative imports only), compiled into its own Numba
cache, and timed call by call in turn, so that drift of a shared, noisy machine hits both
alike; minimum times give the ratio. Prints new/base time per function and size.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _export(rev: str | None, dest: Path) -> None:
    if rev is None:
        shutil.copytree(REPO / "kernels", dest, ignore=shutil.ignore_patterns("__pycache__"))
        return
    dest.mkdir()
    files = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "kernels/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{f}"], check=True,
                              capture_output=True).stdout
        (dest / Path(f).name).write_bytes(blob)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--reps-small", type=int, default=300)
    ap.add_argument("--reps-large", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lossd-ab-"))
    os.environ["NUMBA_CACHE_DIR"] = str(tmp / "cache")
    try:
        _export(args.base, tmp / "rev0")
        _export(args.new, tmp / "rev1")
        sys.path.insert(0, str(tmp))
        mods = [importlib.import_module(m) for m in ("rev0", "rev1")]
        rng = np.random.default_rng(0)
        print(f"new = {args.new or 'working tree'}, base = {args.base}; ratio = new/base of the minimum time")
        for n, reps in ((10, args.reps_small * 10), (10**5, args.reps_small), (10**7, args.reps_large)):
            s = rng.normal(0, 3, n)
            y = (rng.random(n) < 0.5).astype(float)
            calls = {"loss": lambda k: k.loss(s, y), "grad": lambda k: k.grad(s, y)}
            for name, f in calls.items():
                for k in mods:  # compile or load, then warm the caches
                    f(k)
                    f(k)
                times = [[], []]
                for _ in range(reps):
                    for i, k in enumerate(mods):
                        t0 = time.perf_counter()
                        f(k)
                        times[i].append(time.perf_counter() - t0)
                print(f"n = {n:>8}  {name}: {min(times[1]) / min(times[0]):.3f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
