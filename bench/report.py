#!/usr/bin/env python
"""BENCHMARKS.md and its plots from the results the benchmarks left in bench/out/.

    python bench/report.py [--out-dir bench/out] [--md BENCHMARKS.md] [--plots docs/bench]

``make bench`` runs every benchmark, then this. Each benchmark's own report (its tables,
goal checks and environment) goes in verbatim under a section that names the command
that produced it; the plots are copied or drawn into ``docs/bench/``:

- ``kernels.png``: kernel throughput against n per implementation (bench/kernels.py);
- ``latency.png``: service latency percentiles against payload size, per path (JSON
  /loss, OIP JSON, OIP binary; from bench/oip.py and bench/service.py);
- ``capacity.png``: requests/s and p99 against users (python -m loadtests sweep).

A benchmark that did not run is named as missing, never filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (section title, command, markdown report relative to the out dir)
SECTIONS = [
    ("Kernels", "python bench/kernels.py", "kernels.md"),
    ("Service: JSON /loss against a plain FastAPI app", "python bench/service.py", "service.md"),
    ("Open Inference Protocol: binary and JSON tensors", "python bench/oip.py", "oip.md"),
    ("MLServer beside lossd: OIP JSON", "bash bench/mlserver_setup.sh && python bench/mlserver.py",
     "mlserver.md"),
    ("The wire table: every transport against the in-process kernel", "python bench/wire.py", "wire.md"),
    ("Scaling: 1 against 2 workers", "python bench/scaling.py", "scaling.md"),
    ("Capacity: requests/s and p99 against users", "python -m loadtests sweep --out bench/out/capacity",
     "capacity/sweep.md"),
    ("Load-test goals: the mixed profile, 50 users, 2 workers", "python -m loadtests goals --out bench/out/goals",
     "goals/goals.md"),
    ("Dataset evaluation: streaming, Dask, scikit-learn, Spark",
     "bash bench/spark_setup.sh && python bench/eval.py", "eval.md"),
]
PLOTS = {"kernels.md": "kernels.png", "oip.md": "latency.png", "capacity/sweep.md": "capacity.png"}


def demote(md: str) -> str:
    """One heading level down, so that each report sits under its section."""
    return re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def machine() -> list[tuple[str, str]]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), "0") if Path("/proc/meminfo").exists() else "0"
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    return [("CPU", model), ("cores usable", str(len(os.sched_getaffinity(0)))),
            ("memory", f"{int(mem) / 2**20:.0f} GiB"), ("OS", platform.platform()),
            ("Python", platform.python_version()), ("commit", commit or "unknown"),
            ("load average when this report was written", ", ".join(f"{x:.2f}" for x in os.getloadavg()))]


def latency_plot(out_dir: Path, path: Path) -> bool:
    """p50/p90/p99 against n for JSON /loss, OIP JSON and OIP binary."""
    oip = out_dir / "oip.json"
    if not oip.exists():
        return False
    cells = json.loads(oip.read_text())["cells"]
    service = out_dir / "service.json"
    extra = []
    if service.exists():  # lossd JSON /loss, reduction mean, at sizes bench/oip.py does not run
        extra = [{**c, "impl": "JSON /loss"} for c in json.loads(service.read_text())["cells"]
                 if c["impl"] == "lossd" and c["reduction"] == "mean"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = ("JSON /loss", "OIP JSON", "OIP binary")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, impl in zip(axes, paths):
        by_n: dict[int, dict] = {}
        for c in [*extra, *cells]:
            if c["impl"] == impl:
                by_n.setdefault(c["n"], c)  # bench/oip.py's cell wins where both measured
        ns = sorted(by_n)
        for q, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
            ax.plot(ns, [by_n[n][f"{q}_ms"] for n in ns], style, label=q)
        ax.set(xscale="log", yscale="log", title=impl, xlabel="n (elements of predictions and labels)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms), sequential keep-alive requests")
    axes[0].legend()
    fig.suptitle("lossd: latency percentiles against payload size, per path (1 worker)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build(out_dir: Path, plots: Path, md_path: Path) -> str:
    plots.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Path] = {}
    if (out_dir / "kernels.png").exists():
        shutil.copyfile(out_dir / "kernels.png", plots / "kernels.png")
        drawn["kernels.md"] = plots / "kernels.png"
    if latency_plot(out_dir, plots / "latency.png"):
        drawn["oip.md"] = plots / "latency.png"
    if (out_dir / "capacity" / "sweep.png").exists():
        shutil.copyfile(out_dir / "capacity" / "sweep.png", plots / "capacity.png")
        drawn["capacity/sweep.md"] = plots / "capacity.png"

    rel = os.path.relpath(plots, md_path.parent)
    parts = [
        "# lossd benchmarks", "",
        f"Written by `make bench` (every benchmark below, then `python bench/report.py`) on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}. Each section names the command that produced it "
        "and keeps that benchmark's own report: its tables, goal checks (ratios measured in the "
        "same run) and the load of the machine while it ran. The machine is a shared 2-core VM: "
        "read ratios, not absolute figures, and rerun on a quiet machine before judging a goal.", "",
        "| machine | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in machine()), "",
    ]
    for title, cmd, report in SECTIONS:
        parts += [f"## {title}", "", f"Command: `{cmd}`", ""]
        if report in drawn:
            parts += [f"![{title}]({rel}/{drawn[report].name})", ""]
        src = out_dir / report
        if src.exists():
            parts += [demote(src.read_text().strip()), ""]
        else:
            parts += [f"_Not in this run: `{report}` was not found under `{out_dir.name}/`"
                      + (" (bench/scaling.py is not in this checkout yet)." if "scaling" in report
                         else " (`make bench` does not run it: MLServer needs its own venv, "
                              "`make bench-mlserver`)." if "mlserver" in report else ".")
                      + "_", ""]
    text = "\n".join(parts).rstrip() + "\n"
    md_path.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out", help="the benchmarks' results")
    ap.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--plots", type=Path, default=REPO / "docs" / "bench")
    args = ap.parse_args(argv)
    build(args.out_dir, args.plots, args.md)
    print(f"wrote {args.md} and the plots in {args.plots}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
