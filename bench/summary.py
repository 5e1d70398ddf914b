#!/usr/bin/env python
"""What a mergeable summary costs, against the loss itself.

    python bench/summary.py [--quick] [--out DIR] [--reps 5]

Per n (10^4 … 10^7; --quick: 10^4, 10^5): ``loss`` (mean), ``loss`` (none),
``summarize``, its two parts alone (the compiled accumulator pass over the losses, the
KLL sketch's update), ``summarize(by=…)`` with 100 integer keys, and merging 100
states. Minimum of ``--reps`` runs; Melem/s = n / time. Writes ``summary.json`` to
``--out`` (default bench/out/summary) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasketches import kll_doubles_sketch

from lossd import kernels
from lossd.kernels import LossSummary
from lossd.kernels import _summary_nb as NB

REPO = Path(__file__).resolve().parent.parent


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(sizes: list[int], reps: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        p = rng.standard_normal(n) * 3
        y = (rng.random(n) < 0.5).astype(np.float64)
        keys = rng.integers(0, 100, n)
        losses = kernels.loss(p, y, reduction="none").losses
        no_w, no_g = np.empty(0), np.empty(0, dtype=np.int64)
        kernels.summarize(p, y, by=keys)  # compiled before timing
        states = [kernels.summarize(p[i::100], y[i::100]) for i in range(100)]
        cells = {
            "loss_mean": lambda: kernels.loss(p, y),
            "loss_none": lambda: kernels.loss(p, y, reduction="none"),
            "summarize": lambda: kernels.summarize(p, y),
            "accumulate_only": lambda: NB.accumulate(losses, no_w, 1, no_g, *NB.new_tables(1)),
            "kll_update_only": lambda: kll_doubles_sketch(200).update(losses),
            "summarize_by_100": lambda: kernels.summarize(p, y, by=keys),
        }
        row = {"n": n}
        for name, fn in cells.items():
            t = _best(fn, reps)
            row[name] = {"seconds": t, "melem_s": n / t / 1e6}
        t = _best(lambda: LossSummary.merge_all(states), reps)
        row["merge_100_states"] = {"seconds": t}
        rows.append(row)
        print(f"n = {n:>9}: " + "  ".join(
            f"{k} {v['melem_s']:.0f} Melem/s" if "melem_s" in v else f"{k} {v['seconds'] * 1e3:.2f} ms"
            for k, v in row.items() if k != "n"), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 10^4 and 10^5 only, 2 runs each")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "summary")
    a = ap.parse_args()
    sizes = [10**4, 10**5] if a.quick else [10**4, 10**5, 10**6, 10**7]
    rows = run(sizes, 2 if a.quick else a.reps)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
