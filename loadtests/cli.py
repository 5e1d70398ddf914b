"""``python -m loadtests``: start lossd (or target ``--host``), run locust headless for a
bounded time, write locust's CSV and HTML report to a results folder, print a summary,
and exit non-zero when a request failed or a latency budget was exceeded.

    python -m loadtests [run]  [--users 50] [--run-time 60] [--workers 2] [--budgets small_loss:p99=5]
    python -m loadtests soak   [--run-time 660] [--soak-warmup 60]   (RSS of every worker)
    python -m loadtests goals  (issue 10's goals: the mix, then each large class alone)
    python -m loadtests sweep  (capacity: req/s and p99 per class against users; see sweep.py)

Options locust itself has (payload sizes ``--large-n``, ``--oip-n``, ...; see
``locust -f loadtests/locustfile.py --help``) are passed through after ``--``.

Exit codes: 0 all good; 1 a request failed (locust's ``--exit-code-on-error``); 3 a
budget was exceeded; 4 (soak) a worker's RSS grew by more than 10 %; 2 lossd or locust
could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import payloads
from .locust_run import Load, run
from .procs import LossdServer, rss_mib, worker_pids
from .results import RunResult, cores_line, failures_text, md_table, summary_table

RESULTS = Path(__file__).resolve().parent / "results"
SOAK_GROWTH_LIMIT = 0.10
SOAK_EXIT_CODE = 4


def _weights(spec: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, _, w = item.partition("=")
        if key not in payloads.CLASSES or not w.isdigit():
            raise argparse.ArgumentTypeError(f"weight {item!r} is not CLASS=INT with CLASS in "
                                             f"{', '.join(payloads.CLASSES)}")
        out[key] = int(w)
    return out


def _classes(spec: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in spec.split(",") if k.strip())
    bad = [k for k in keys if k not in payloads.CLASSES]
    if bad or not keys:
        raise argparse.ArgumentTypeError(f"unknown class {bad or spec!r}; the classes are "
                                         f"{', '.join(payloads.CLASSES)}")
    return keys


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "soak", "goals", "sweep"])
    ap.add_argument("--host", help="test this lossd (e.g. http://127.0.0.1:8000) instead of starting one")
    ap.add_argument("--workers", type=int, default=2, help="lossd workers when it is started here")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--spawn-rate", type=float, help="users started per second (default: all in 1 s)")
    ap.add_argument("--run-time", type=float, help="seconds (default 60; soak: 660)")
    ap.add_argument("--processes", type=int, default=2,
                    help="locust worker processes (a master coordinates them); 1: one process")
    ap.add_argument("--classes", type=_classes, default=payloads.CLASSES,
                    help=f"comma-separated subset of {','.join(payloads.CLASSES)}")
    ap.add_argument("--weights", type=_weights, default={}, help="e.g. small_loss=30,oip_binary=4")
    ap.add_argument("--pace-ms", type=float, help="one pace for every user (0: back to back); "
                                                  "default: each class's own (locustfile.py)")
    ap.add_argument("--budgets", default="", help="latency budgets, e.g. small_loss:p99=5,all:p95=500")
    ap.add_argument("--token", default=os.environ.get("LOSSD_API_TOKEN") or None,
                    help="bearer token (set on the lossd started here, sent by the users); default "
                         "LOSSD_API_TOKEN, which unlike a flag ps does not show")
    ap.add_argument("--no-access-log", action="store_true", help="start lossd with LOSSD_ACCESS_LOG=false")
    ap.add_argument("--soak-warmup", type=float, default=60.0,
                    help="soak: seconds of load before the first RSS sample")
    ap.add_argument("--alone-time", type=float, default=30.0,
                    help="goals: seconds of each large class alone")
    ap.add_argument("--sweep-users", default="1,2,4,8,16,32", help="sweep: user counts")
    ap.add_argument("--sweep-workers", default="1,2", help="sweep: lossd worker counts")
    ap.add_argument("--point-time", type=float, default=12.0, help="sweep: seconds per point")
    ap.add_argument("--out", type=Path, help="results folder (default loadtests/results/<time>-<mode>)")
    ap.epilog = "After --, more locust options for the locustfile (e.g. -- --large-n 20000 --oip-n 100000)."
    return ap


def describe_all(extra: Sequence[str]) -> dict[str, str]:
    """Each class's request as sized by the pass-through options (or the defaults)."""
    sizes = payloads.Sizes()
    args = list(extra)
    for name in payloads.Sizes.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        if flag in args and args.index(flag) + 1 < len(args):
            sizes = payloads.Sizes(**{**sizes.__dict__, name: int(args[args.index(flag) + 1])})
    return {k: payloads.describe(k, sizes) for k in payloads.CLASSES}


def report(r: RunResult, load: Load, title: str, describe: dict[str, str]) -> str:
    lines = [f"## {title}", "",
             f"{load.users} users, {load.run_time_s:g} s, locust with {load.processes} worker "
             f"process(es); statistics reset once every user was started. Results in `{r.out}`.", "",
             summary_table(r, describe), "", cores_line(r)]
    if r.failures:
        lines += ["", failures_text(r)]
    lines += ["", f"locust exit code {r.exit_code}."]
    return "\n".join(lines)


def _load(args: argparse.Namespace, run_time: float) -> Load:
    return Load(users=args.users, run_time_s=run_time, processes=args.processes, classes=args.classes,
                weights=args.weights, pace_ms=args.pace_ms, budgets=args.budgets,
                extra=tuple(args.locust_args), spawn_rate=args.spawn_rate)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Our options, then (after ``--``) locust's, passed through untouched."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:cut])
    args.locust_args = argv[cut + 1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    out = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.mode}"
    out.mkdir(parents=True, exist_ok=True)
    server = None
    host = args.host
    if args.mode == "sweep":  # starts a lossd per worker count itself
        from .sweep import sweep

        try:
            return sweep(args, out, describe_all(args.locust_args))
        except RuntimeError as exc:
            print(f"loadtests: {exc}", file=sys.stderr)
            return 2
    try:
        if host is None:
            server = LossdServer(args.workers, out / "lossd.log", token=args.token,
                                 access_log=not args.no_access_log)
            print(f"starting lossd ({args.workers} workers) ...", file=sys.stderr, flush=True)
            server.start()
            host = server.url
        server_pid = server.proc.pid if server else None
        if args.mode == "soak":
            return soak(args, host, out, server_pid)
        if args.mode == "goals":
            from .goals import goals

            return goals(args, host, out, server_pid, describe_all(args.locust_args))
        load = _load(args, args.run_time or 60.0)
        r = run(load, host, out, "locust", server_pid, token=args.token)
        text = report(r, load, "lossd load test", describe_all(args.locust_args))
        print(text)
        (out / "summary.md").write_text(text + "\n")
        (out / "summary.json").write_text(json.dumps(r.to_json(), indent=2) + "\n")
        return r.exit_code
    except RuntimeError as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()


def soak(args: argparse.Namespace, host: str, out: Path, server_pid: int | None) -> int:
    """Steady load for --run-time; RSS of every worker (and its large lane) after the
    warm-up and at the end; a growth over 10 % fails."""
    if server_pid is None:
        print("loadtests: soak needs the lossd it starts (no --host): it reads the workers' memory",
              file=sys.stderr)
        return 2
    workers = args.workers
    run_time = args.run_time or 660.0
    samples: dict[str, dict[int, float]] = {}

    def sample(label: str) -> None:
        pids = [p for w in worker_pids(server_pid, workers) for p in [w, *_lane_pids(w)]]
        samples[label] = rss_mib(pids)

    load = _load(args, run_time)
    r = run(load, host, out, "locust", server_pid, token=args.token,
            at=[(args.soak_warmup, lambda: sample("start")), (run_time - 5, lambda: sample("end"))])
    rows, grew = [], []
    start, end = samples.get("start", {}), samples.get("end", {})
    for pid in sorted(set(start) | set(end)):
        a, b = start.get(pid), end.get(pid)
        growth = (b - a) / a if a and b else float("nan")
        if not growth <= SOAK_GROWTH_LIMIT:
            grew.append(pid)
        rows.append([str(pid), f"{a:.0f}" if a else "gone", f"{b:.0f}" if b else "gone",
                     f"{growth * 100:+.1f} %" if growth == growth else "n/a"])
    text = report(r, load, "lossd soak test", describe_all(args.locust_args))
    text += ("\n\n### RSS of the server processes (MiB)\n\n"
             f"Sampled {args.soak_warmup:g} s after the start and 5 s before the end; a growth over "
             f"{SOAK_GROWTH_LIMIT:.0%} fails.\n\n"
             + md_table(["pid", "start", "end", "growth"], rows))
    if not rows:
        text += "\n\nNo RSS sample was taken (run shorter than the warm-up?)."
    print(text)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({**r.to_json(), "rss_mib": samples}, indent=2) + "\n")
    if r.exit_code:
        return r.exit_code
    return SOAK_EXIT_CODE if grew or not rows else 0


def _lane_pids(worker: int) -> list[int]:
    import psutil

    try:
        return [k.pid for k in psutil.Process(worker).children()
                if "spawn_main" in " ".join(k.cmdline())]
    except psutil.Error:
        return []
