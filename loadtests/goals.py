"""``python -m loadtests goals``: issue 10's goals in one run, with the ceilings that bound
them measured beside them.

1. the mixed profile (default 50 users, 60 s): zero failures, and small requests' p99 at
   most 5 ms while the large classes run beside them;
2. each large class alone, with as many users as it had in the mix and the same pace:
   its requests/s in the mix must be at least 0.8 of that.

The small class also runs alone: its p99 then is the floor this machine and load
generator allow, the ceiling of goal 1 as locust sees it. Beside the mix and the small
class alone, a plain probe (probe.py: threads of http.client, 5 x 10 requests/s of the
same small body) measures the small requests without locust's own delay, which is
larger than the goal (see probe.py); goal 1 is met when the probe's p99 in the mix is.

The load generator runs on the same 2 cores as lossd; the cores it, the server and other
processes used are reported with each run, so a goal missed because the client or a
neighbour took the CPU shows as such.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from . import payloads
from .locust_run import Load, run
from .procs import REPO, child_env
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
    probe = _start_probe(host, out / "probe-mix.json", mix_load, args.token)
    mix = run(mix_load, host, out, "mix", server_pid, token=args.token)
    probes = {"mix": _finish_probe(probe, out / "probe-mix.json")}
    alone: dict[str, RunResult] = {}
    for key in (k for k in payloads.CLASSES if k in args.classes):
        users = mix.users.get(key, 0)
        if users:
            load = Load(users=users, run_time_s=args.alone_time, processes=1, classes=(key,),
                        pace_ms=args.pace_ms, extra=extra)
            probe = _start_probe(host, out / f"probe-{key}.json", load, args.token) if key == payloads.SMALL else None
            alone[key] = run(load, host, out, f"alone-{key}", server_pid, token=args.token)
            if probe is not None:
                probes["small alone"] = _finish_probe(probe, out / f"probe-{key}.json")

    rows, ok = [], True
    failed = sum(r.stats[k].failures for r in (mix, *alone.values()) for k in r.stats if k != "Aggregated")
    failed += sum(pr.get("failures", 0) for pr in probes.values() if pr)
    rows.append(["zero failures (mix, alone runs and probes)", str(failed), "0", _verdict(failed == 0)])
    ok &= failed == 0
    small = mix.get(payloads.SMALL)
    p99 = small.p99 if small else math.nan
    probe_p99 = probes["mix"].get("p99", math.nan) if probes["mix"] else math.nan
    rows.append(["small_loss p99 in the mix, plain probe (http.client threads)", f"{probe_p99:.1f} ms",
                 f"<= {SMALL_P99_MS:g} ms", _verdict(probe_p99 <= SMALL_P99_MS)])
    ok &= probe_p99 <= SMALL_P99_MS
    rows.append(["small_loss p99 in the mix, as locust measures it", f"{p99:g} ms", f"<= {SMALL_P99_MS:g} ms",
                 _verdict(p99 <= SMALL_P99_MS)])
    small_alone = alone[payloads.SMALL].get(payloads.SMALL) if payloads.SMALL in alone else None
    floor = small_alone.p99 if small_alone else math.nan
    if small_alone:
        alone_probe = probes.get("small alone") or {}
        rows.append(["ceiling: small_loss p99 alone (same users and pace, nothing large beside): "
                     "locust / plain probe", f"{floor:g} / {alone_probe.get('p99', math.nan):.1f} ms",
                     "(measured, not a goal)", "n/a"])
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
        "### The plain probe (small requests without locust's delay)", "",
        md_table(["run", "threads x pace", "requests", "failures", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                 [[name, f"{pr['threads']} x {pr['pace_ms']:g} ms", str(pr["requests"]), str(pr["failures"]),
                   f"{pr['p50']:.2f}", f"{pr['p95']:.2f}", f"{pr['p99']:.2f}", f"{pr['max']:.1f}"]
                  for name, pr in probes.items() if pr]), "",
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
        "small_p99_ms": p99, "small_alone_p99_ms": floor, "probes": probes, "ratios": ratios,
        "failures": failed, "all_met": ok}, indent=2) + "\n")
    if failed:
        return 1
    return 0 if ok else GOALS_EXIT_CODE


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


PROBE_THREADS, PROBE_PACE_MS = 5, 100.0
LOCUST_STARTUP_S = 5.0  # locust imports the kernels and builds payloads before its users start


def _start_probe(host: str, path: Path, load: Load, token: str | None) -> subprocess.Popen:
    """The probe over the measured window of ``load`` (after locust's start and ramp)."""
    cmd = [sys.executable, "-m", "loadtests.probe", "--url", host, "--threads", str(PROBE_THREADS),
           "--pace-ms", f"{PROBE_PACE_MS:g}", "--delay", f"{LOCUST_STARTUP_S + load.ramp_s:g}",
           "--seconds", f"{max(1.0, load.run_time_s - LOCUST_STARTUP_S):g}", "--out", str(path)]
    # the token goes in the environment: a command line is visible to every local user (ps)
    env = child_env({"LOSSD_API_TOKEN": token} if token else None)
    path.unlink(missing_ok=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


def _finish_probe(proc: subprocess.Popen, path: Path) -> dict:
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return json.loads(path.read_text()) if path.exists() else {}
