#!/usr/bin/env python
"""How far one lossd process goes with 1 and 2 workers: small requests, many clients.

    python bench/scaling.py [--quick] [--seconds S] [--rounds R] [--out bench/out]

POST /loss with n = 10 (logits, mean) from 8 concurrent keep-alive connections, driven by
wrk (a C client that needs little CPU: a Python load generator would take the cores the
server needs; installed from Debian's packages when missing and run as root). Servers are
`lossd serve --workers W` on 127.0.0.1 (access log off), started once each; rounds
alternate 1 and 2 workers so the machine's noise hits both alike; figures are medians.
Reports requests/s, latency, the ratio 2 workers / 1 worker, and the CPU the client and
the servers used. Writes ``<out>/scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (BENCH_DIR, CpuMeter, cores, cpu_model, footer_line, free_port, log, md_table,
                     stop_on_sigterm, use_checkout)

use_checkout()

BODY = {"predictions": [0.5, -1.0, 2.0, 3.5, -0.25, 1.0, 0.0, -3.0, 4.0, 0.125],
        "labels": [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]}
CONNECTIONS, THREADS = 8, 2
GOAL = 1.6  # 2 workers / 1 worker on 2 cores


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: apt-get install wrk (Debian's package)")
    log("installing wrk (apt-get)")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or "wrk"


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (workers are not reaped yet)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def start_server(workers: int, log_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    exe = Path(sys.executable).parent / "lossd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.update(LOSSD_ACCESS_LOG="false", LOSSD_LOG_LEVEL="warning")
    out = open(log_dir / f"server-{workers}.log", "wb")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server with {workers} workers exited:\n"
                             + (log_dir / f"server-{workers}.log").read_text()[-3000:])
        try:
            # every worker ready: several in a row, since any worker may answer
            if all(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
                   for _ in range(10)):
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server with {workers} workers not ready in 600 s")


def run_wrk(wrk: str, port: int, seconds: float, script: Path) -> dict:
    """One wrk run: requests/s, latency percentiles (ms), errors, and wrk's own CPU time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency",
                             "-s", str(script), f"http://127.0.0.1:{port}/loss"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "",
            "client_cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s (the smoke test)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = ap.parse_args()
    seconds, rounds = (2.0, 1) if args.quick else (args.seconds, args.rounds)
    stop_on_sigterm()
    t_start = time.perf_counter()
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="lossd-scaling-"))
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(BODY))}\n")
    load0 = os.getloadavg()
    servers = {}
    try:
        for w in (1, 2):
            servers[w] = start_server(w, tmp)
            log(f"{w} worker(s) ready on port {servers[w][1]}")
        for w, (_, port) in servers.items():  # warm the connections and caches
            run_wrk(wrk, port, 1, script)
        meter = CpuMeter()
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(rounds):
            for w, (proc, port) in servers.items():
                cpu0 = tree_cpu_s(proc.pid)
                res = run_wrk(wrk, port, seconds, script)
                res["server_cpu_s"] = tree_cpu_s(proc.pid) - cpu0
                runs[w].append(res)
                log(f"round {r + 1}/{rounds}, {w} worker(s): {res['rps']:,.0f} req/s")
        server_cpu = sum(x["server_cpu_s"] for v in runs.values() for x in v)
        client_cpu = sum(x["client_cpu_s"] for v in runs.values() for x in v)
        others, stolen = meter.stop(servers_cpu_s=server_cpu + client_cpu)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)

    def med(w: int, key: str) -> float:
        vals = sorted(x[key] for x in runs[w])
        return vals[len(vals) // 2]

    ratio = med(2, "rps") / med(1, "rps")
    rows = []
    for w in (1, 2):
        per_core = sorted(x["rps"] * x["wall_s"] / x["server_cpu_s"] for x in runs[w])[len(runs[w]) // 2]
        rows.append([f"{w}", f"{med(w, 'rps'):,.0f}", f"{med(w, 'p50_ms'):.2f}", f"{med(w, 'p99_ms'):.2f}",
                     f"{med(w, 'server_cpu_s') / med(w, 'wall_s'):.2f}", f"{per_core:,.0f}",
                     f"{med(w, 'client_cpu_s') / med(w, 'wall_s'):.2f}",
                     f"{sum(x['non_2xx'] for x in runs[w])}"
                     + (f" ({runs[w][-1]['socket_errors']})" if runs[w][-1]["socket_errors"] else "")])
    ok = ratio >= GOAL
    report = "\n".join([
        "# lossd: 1 vs 2 workers, small requests\n",
        f"POST /loss, n = 10, {CONNECTIONS} connections, wrk -t{THREADS}, {seconds:g} s per run, "
        f"{rounds} round(s), medians.\n",
        md_table(["workers", "requests/s", "p50 ms", "p99 ms", "server cores used",
                  "requests per server CPU-second", "client (wrk) cores used", "errors"], rows), "",
        "2 workers can only scale when the machine has a second core free: compare the cores "
        "used (and the other processes' share below) before reading the ratio.\n",
        md_table(["check", "goal", "measured", "met"],
                 [["2 workers / 1 worker requests/s", f">= {GOAL}x", f"{ratio:.2f}x", "yes" if ok else "NO"]]),
        "",
        md_table(["environment", ""], [
            ["CPU", f"{cpu_model(isa=True)}, {cores()} cores usable"],
            ["load average before / after", f"{load0[0]:.2f} / {os.getloadavg()[0]:.2f}"],
            ["cores used by other processes (mean)", f"{others:.2f} (stolen {stolen:.2f})"],
        ]), "", footer_line(args.quick, t_start)])
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.md").write_text(report + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
