"""``python -m loadtests goals``: issue 10's goals in one run, with the ceilings that bound
them measured beside them.

1. the mixed profile (default 50 users, 60 s): zero failures, and small requests' p99 at
   most 5 ms while the large classes run beside them;
2. each large class alone, with as many users as it had in the mix and the same pace:
   its requests/s in the mix must be at least 0.8 of that.

The small class also runs alone: its p99 then is the floor this machine and load
generator allow (what waking a process costs on a busy VM), the ceiling of goal 1.

The load generator runs on the same 2 cores as lossd; the cores it, the server and other
processes used are reported with each run, so a goal missed because the client or a
neighbour took the CPU shows as such.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import payloads
from .locust_run import Load, run
from .results import RunResult, cores_line, md_table, summary_table

SMALL_P99_MS = 5.0
THROUGHPUT_RATIO = 0.8
GOALS_EXIT_CODE = 3


def goals(args: argparse.Namespace, host: str, out: Path, server_pid: int | None,
          describe: dict[str, str]) -> int:
    extra = tuple(args.locust_args)
    mix_load = Load(users=args.users, run_time_s=args.run_time or 60.0, processes=args.processes,
                    classes=args.classes, weights=args.weights, pace_ms=args.pace_ms, extra=extra,
                    spawn_rate=args.spawn_rate)
    mix = run(mix_load, host, out, "mix", server_pid, token=args.token)
    alone: dict[str, RunResult] = {}
    for key in (k for k in payloads.CLASSES if k in args.classes):
        users = mix.users.get(key, 0)
        if users:
            load = Load(users=users, run_time_s=args.alone_time, processes=1, classes=(key,),
                        pace_ms=args.pace_ms, extra=extra)
            alone[key] = run(load, host, out, f"alone-{key}", server_pid, token=args.token)

    rows, ok = [], True
    failed = sum(r.stats[k].failures for r in (mix, *alone.values()) for k in r.stats if k != "Aggregated")
    rows.append(["zero failures (mix and alone runs)", str(failed), "0", _verdict(failed == 0)])
    ok &= failed == 0
    small = mix.get(payloads.SMALL)
    p99 = small.p99 if small else math.nan
    rows.append(["small_loss p99 in the mix", f"{p99:g} ms", f"<= {SMALL_P99_MS:g} ms",
                 _verdict(p99 <= SMALL_P99_MS)])
    ok &= p99 <= SMALL_P99_MS
    small_alone = alone[payloads.SMALL].get(payloads.SMALL) if payloads.SMALL in alone else None
    floor = small_alone.p99 if small_alone else math.nan
    if small_alone:
        rows.append(["ceiling: small_loss p99 alone (same users and pace, nothing large beside)",
                     f"{floor:g} ms", "(measured, not a goal)", "n/a"])
    ratios = {}
    for key, a in alone.items():
        if key == payloads.SMALL:
            continue
        m, s = mix.get(key), a.get(key)
        ratio = m.rps / s.rps if m and s and s.rps > 0 else math.nan
        ratios[key] = ratio
        rows.append([f"{key} req/s in the mix / alone", f"{ratio:.2f} ({m.rps:.1f} / {s.rps:.1f})"
                     if m and s else "n/a", f">= {THROUGHPUT_RATIO:g}", _verdict(ratio >= THROUGHPUT_RATIO)])
        ok &= ratio >= THROUGHPUT_RATIO

    text = "\n".join([
        "## lossd load-test goals", "",
        f"Mixed profile: {mix_load.users} users, {mix_load.run_time_s:g} s, locust with "
        f"{mix_load.processes} worker processes; then each class alone ({args.alone_time:g} s, "
        "as many users as in the mix, the same pace, one locust process).", "",
        md_table(["goal", "measured", "target", "result"], rows), "",
        "### The mix", "", summary_table(mix, describe), "", cores_line(mix), "",
        "### Each class alone", "",
        md_table(["class", "users", "req/s", "p50 ms", "p99 ms", "failures", "cores: server / client / others"],
                 [[k, str(a.users.get(k, "")), f"{a.get(k).rps:.1f}", f"{a.get(k).p50:g}",
                   f"{a.get(k).p99:g}", str(a.get(k).failures),
                   " / ".join(f"{a.cores.get(n, math.nan):.2f}" for n in ("server", "client", "others"))]
                  for k, a in alone.items() if a.get(k)]),
        "", f"Results (locust CSV, HTML, logs) in `{out}`.",
    ])
    print(text)
    (out / "goals.md").write_text(text + "\n")
    (out / "goals.json").write_text(json.dumps({
        "mix": mix.to_json(), "alone": {k: a.to_json() for k, a in alone.items()},
        "small_p99_ms": p99, "small_alone_p99_ms": floor, "ratios": ratios, "failures": failed, "all_met": ok}, indent=2) + "\n")
    if failed:
        return 1
    return 0 if ok else GOALS_EXIT_CODE


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
