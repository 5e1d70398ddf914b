#!/usr/bin/env python
"""What a portable CPU target costs against host-tuned kernels.

    python bench/cpu_targets.py [--quick] [--rounds R] [--out bench/out]

One worker process per target (``LOSSD_CPU_TARGET`` = host, x86-64-v4, -v3, -v2: those
this CPU runs), each compiling only what it times (seconds, cached in the checkout's
.numba_cache: several targets share one cache, keyed by CPU name). The workers measure
in interleaved rounds, so the machine's noise spreads over all targets alike; each figure
is the median of the rounds' medians. Rows: ``kernels.loss`` and ``kernels.grad`` (mean
cross-entropy on logits, float64) at n = 10^7 and 10^5, and float32 loss at 10^7;
Melem/s and the ratio to the host-tuned row. Writes ``<out>/cpu_targets.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import BENCH_DIR, CpuMeter, cpu_model, footer_line, log, md_table, use_checkout

use_checkout()

CASES = (("loss", "float64", 10_000_000), ("grad", "float64", 10_000_000),
         ("loss", "float32", 10_000_000), ("loss", "float64", 100_000), ("grad", "float64", 100_000))

# A worker: compiles what CASES need for its target, then times one sample set per "run".
_WORKER = r"""
import json, sys, time
import numpy as np
from lossd import kernels
from lossd.kernels import _config
cases = json.loads(sys.argv[1]); samples = int(sys.argv[2])
rng = np.random.default_rng(0)
data = {}
for op, dt, n in cases:
    if (dt, n) not in data:
        s = rng.normal(0, 3, n).astype(dt); y = (rng.random(n) < 0.5).astype(dt)
        data[dt, n] = (s, y)
fns = {(op, dt, n): (lambda f=getattr(kernels, op), a=data[dt, n]: f(*a)) for op, dt, n in cases}
for f in fns.values():
    f()  # compile (or load) and touch the pages
print(json.dumps({"target": _config.TARGET.describe()}), flush=True)
for line in sys.stdin:
    out = {}
    for key, f in fns.items():
        reps = max(1, int(2e7 // key[2]))
        times = []
        for _ in range(samples):
            t = time.perf_counter()
            for _ in range(reps):
                f()
            times.append((time.perf_counter() - t) / reps)
        out["|".join(map(str, key))] = sorted(times)[len(times) // 2]
    print(json.dumps(out), flush=True)
"""


def targets_here() -> list[str]:
    import llvmlite.binding as llvm

    from lossd.kernels import _target

    return ["host", *_target.supported_levels(llvm.get_host_cpu_features())]


def start_worker(target: str, samples: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU_", "_LOSSD_", "LOSSD_"))}
    env["LOSSD_CPU_TARGET"] = target
    return subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(CASES), str(samples)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 samples (the smoke test)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = ap.parse_args()
    rounds, samples = (2, 3) if args.quick else (args.rounds, 5)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    targets = targets_here()
    log(f"targets: {', '.join(targets)} (compiling what is not cached)")
    workers = {t: start_worker(t, samples) for t in targets}
    described = {t: json.loads(w.stdout.readline())["target"] for t, w in workers.items()}
    meter = CpuMeter(children=True)
    results: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    for r in range(rounds):
        for t, w in workers.items():
            w.stdin.write("run\n")
            w.stdin.flush()
            for key, sec in json.loads(w.stdout.readline()).items():
                results[t].setdefault(key, []).append(sec)
        log(f"round {r + 1}/{rounds}")
    for w in workers.values():
        w.stdin.close()
        w.wait(60)
    others, stolen = meter.stop()
    median = {t: {k: sorted(v)[len(v) // 2] for k, v in res.items()} for t, res in results.items()}

    header = ["target", *[f"{op} {dt} n={n:.0e}".replace("e+0", "e") for op, dt, n in CASES]]
    rows = []
    for t in targets:
        cells = [described[t]]
        for op, dt, n in CASES:
            key = f"{op}|{dt}|{n}"
            mels = n / median[t][key] / 1e6
            ratio = median["host"][key] / median[t][key]
            cells.append(f"{mels:,.0f} Melem/s ({ratio:.2f}x host)")
        rows.append(cells)
    report = "\n".join([
        "# lossd kernels per CPU target\n",
        md_table(header, rows), "",
        "Ratio: host-tuned time / this target's time (below 1: the target is slower).\n",
        md_table(["environment", ""], [
            ["CPU", cpu_model(isa=True)],
            ["load average before / after", f"{load0[0]:.2f} / {os.getloadavg()[0]:.2f}"],
            ["cores used by other processes (mean)", f"{others:.2f} (stolen {stolen:.2f})"],
            ["rounds x samples", f"{rounds} x {samples}"],
        ]), "", footer_line(args.quick, t_start)])
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_targets.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
