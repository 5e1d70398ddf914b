"""``python -m loadtests sweep``: capacity of each class alone, against the number of
users, for 1 and 2 lossd workers: requests/s and p99 per point, as a table
(``sweep.md``, ``sweep.json``) and a plot (``sweep.png``), with each class's saturation
point named.

Users send back to back (no pace): the offered load grows with the users until the
server (or the load generator, whose cores are reported per point) is saturated. The
saturation point of a class is the fewest users whose requests/s reach 90 % of the best
requests/s of that class and worker count: beyond it, more users add latency, not
throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .locust_run import Load, run
from .procs import LossdServer
from .results import md_table

SATURATION_SHARE = 0.9


@dataclass(frozen=True)
class Point:
    workers: int
    key: str
    users: int
    rps: float
    p50: float
    p99: float
    requests: int
    failures: int
    server_cores: float
    client_cores: float
    other_cores: float


def saturation(points: list[Point]) -> Point | None:
    """The first point (fewest users) reaching SATURATION_SHARE of the best req/s."""
    ok = [p for p in points if p.requests and not math.isnan(p.rps)]
    if not ok:
        return None
    best = max(p.rps for p in ok)
    return min((p for p in ok if p.rps >= SATURATION_SHARE * best), key=lambda p: p.users)


def sweep(args: argparse.Namespace, out: Path, describe: dict[str, str]) -> int:
    users = [int(u) for u in args.sweep_users.split(",")]
    workers = [int(w) for w in args.sweep_workers.split(",")]
    points: list[Point] = []
    for w in workers:
        server = LossdServer(w, out / f"lossd-{w}w.log", token=args.token, access_log=not args.no_access_log)
        print(f"starting lossd ({w} workers) ...", file=sys.stderr, flush=True)
        server.start()
        try:
            for key in args.classes:
                for u in users:
                    load = Load(users=u, run_time_s=args.point_time, processes=1 if u < 2 else args.processes,
                                classes=(key,), pace_ms=0.0, extra=tuple(args.locust_args))
                    r = run(load, server.url, out / "runs", f"{w}w-{key}-{u}u", server.proc.pid, token=args.token)
                    s = r.get(key)
                    p = Point(w, key, u, s.rps if s else math.nan, s.p50 if s else math.nan,
                              s.p99 if s else math.nan, s.requests if s else 0, s.failures if s else 0,
                              r.cores.get("server", math.nan), r.cores.get("client", math.nan),
                              r.cores.get("others", math.nan))
                    points.append(p)
                    print(f"{w} workers, {key}, {u} users: {p.rps:.1f} req/s, p99 {p.p99:g} ms, "
                          f"{p.failures} failures", file=sys.stderr, flush=True)
        finally:
            server.stop()
    text = report(points, describe, args)
    print(text)
    (out / "sweep.md").write_text(text + "\n")
    (out / "sweep.json").write_text(json.dumps({"points": [p.__dict__ for p in points],
                                                "saturation": saturation_rows(points)}, indent=2) + "\n")
    plot(points, out / "sweep.png")
    return 1 if any(p.failures for p in points) else 0


def saturation_rows(points: list[Point]) -> list[dict]:
    rows = []
    for w in sorted({p.workers for p in points}):
        for key in dict.fromkeys(p.key for p in points):
            s = saturation([p for p in points if p.workers == w and p.key == key])
            if s:
                rows.append({"workers": w, "class": key, "users": s.users, "rps": s.rps, "p99_ms": s.p99})
    return rows


def report(points: list[Point], describe: dict[str, str], args: argparse.Namespace) -> str:
    body = [[str(p.workers), p.key, str(p.users), f"{p.rps:.1f}", f"{p.p50:g}", f"{p.p99:g}",
             str(p.failures), f"{p.server_cores:.2f}", f"{p.client_cores:.2f}", f"{p.other_cores:.2f}"]
            for p in points]
    sat = [[str(r["workers"]), r["class"], describe.get(r["class"], ""), str(r["users"]), f"{r['rps']:.1f}",
            f"{r['p99_ms']:g}"] for r in saturation_rows(points)]
    return "\n".join([
        "## Capacity: requests/s and p99 per class against users", "",
        f"Each class alone, users back to back, {args.point_time:g} s per point (statistics reset "
        "once every user started); locust with 1 process below 2 users, else "
        f"{args.processes} worker processes. Cores: average use by lossd, by locust, and by "
        "everything else on the machine during the point.", "",
        "### Saturation points", "",
        f"The fewest users whose requests/s reach {SATURATION_SHARE:.0%} of the class's best.", "",
        md_table(["workers", "class", "request", "users", "req/s", "p99 ms"], sat), "",
        "### Every point", "",
        md_table(["workers", "class", "users", "req/s", "p50 ms", "p99 ms", "failures", "server cores",
                  "client cores", "other cores"], body),
    ])


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(p.key for p in points))
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        for w in sorted({p.workers for p in points}):
            pts = sorted((p for p in points if p.key == key and p.workers == w), key=lambda p: p.users)
            xs = [p.users for p in pts]
            label = f"{w} worker{'s' if w > 1 else ''}"
            axes[row][0].plot(xs, [p.rps for p in pts], marker="o", label=label)
            axes[row][1].plot(xs, [p.p99 for p in pts], marker="o", label=label)
            s = saturation(pts)
            if s:
                axes[row][0].annotate(f"{s.users}u", (s.users, s.rps), textcoords="offset points",
                                      xytext=(0, 6), ha="center", fontsize=8)
        axes[row][0].set_ylabel(f"{key}\nreq/s")
        axes[row][1].set_ylabel("p99 ms")
        axes[row][1].set_yscale("log")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[-1][0].set_xlabel("users (back to back)")
    axes[-1][1].set_xlabel("users (back to back)")
    fig.suptitle("lossd capacity per class (saturation point annotated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
