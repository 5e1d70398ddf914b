"""Latency of one call through ``lossd_client.Client`` over each transport, by n: the
measurement behind ``transport="auto"`` (``client/lossd_client/_transport.py``).

    python bench/client_transports.py [--quick] [--out bench/out] [--workers 1] [--threads 2]
                                      [--sizes 3e5,2e6] [--repeat R] [--budget S]

Starts ``lossd serve --workers W --threads T --grpc-port P`` with ``LOSSD_SHM=true`` on
free ports, then, for n = 10, 10^3, 10^5, 10^6 (and 10^7 unless ``--quick``), times
sequential calls of one client per transport (``http``: binary tensors; ``http-json``
up to 10^5; ``grpc``; ``shm``, its header over gRPC; ``shm-http``, its header over HTTP) for two calls: ``loss`` with reduction="mean" (FP64
predictions and labels in, scalars out) and ``grad`` with reduction="none" (2·n FP64
out too). Each cell runs until ``repeat`` calls or ``budget`` seconds, after warm-up
calls, and checks its last answer against ``kernels`` bit for bit. Prints a markdown
table of median and p90 milliseconds, the fastest transport per row, and the rule that
``auto`` applies (``choose``) per row; ``--out`` also gets the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import log, make_data, use_checkout

use_checkout()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

from lossd import kernels  # noqa: E402
from lossd_client import Client  # noqa: E402
from lossd_client._transport import GRPC_MAX_BYTES, SHM_MIN_BYTES, choose  # noqa: E402

TRANSPORTS = ("http", "http-json", "grpc", "shm", "shm-http")
JSON_MAX_N = 100_000  # JSON tensors beyond this take seconds: not a contender
CALLS = {"loss mean": ("loss", "mean"), "grad none": ("grad", "none")}


def same(got, want) -> bool:
    for name in ("loss", "losses", "grad"):
        a, b = getattr(got, name, None), getattr(want, name, None)
        if isinstance(b, np.ndarray):
            if not (isinstance(a, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()):
                return False
        elif a != b and not (a is None and b is None):
            return False
    return got.stats == want.stats


def cell(client: Client, call: str, s, y, repeat: int, budget: float, warmup: int) -> dict:
    model, reduction = CALLS[call]
    fn = getattr(client, model)
    for _ in range(warmup):
        fn(s, y, reduction=reduction)
    times = []
    deadline = time.perf_counter() + budget
    got = None
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() < deadline):
        t = time.perf_counter()
        got = fn(s, y, reduction=reduction)
        times.append(time.perf_counter() - t)
    want = getattr(kernels, model)(s, y, reduction=reduction)
    times.sort()
    return {"calls": len(times), "p50_ms": 1e3 * statistics.median(times),
            "p90_ms": 1e3 * times[min(len(times) - 1, int(0.9 * len(times)))],
            "used": client.last_transport, "exact": same(got, want)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n up to 10^6, a few calls per cell (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="directory for client_transports.{md,json}")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=lambda v: [int(float(x)) for x in v.split(",")], default=None,
                    help="comma-separated n values instead of the default ones (e.g. 3e5,2e6)")
    ap.add_argument("--repeat", type=int, default=None, help="calls per cell (quick: 5, full: 200)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per cell at most (quick: 0.5, full: 5)")
    args = ap.parse_args(argv)
    from service_helpers import free_port, lossd_serve

    sizes = args.sizes or [10, 1_000, 100_000, 1_000_000] + ([] if args.quick else [10_000_000])
    repeat, budget, warmup = (5, 0.5, 1) if args.quick else (200, 5.0, 3)
    repeat, budget = args.repeat or repeat, args.budget or budget
    kernels.set_threads(args.threads)
    grpc_port = free_port()
    server = lossd_serve("--workers", str(args.workers), "--threads", str(args.threads), "--grpc-port",
                         str(grpc_port), env={"LOSSD_SHM": "true", "LOSSD_ACCESS_LOG": "false",
                                              "LOSSD_MAX_BODY_BYTES": str(1 << 30)})
    rows = []
    load0 = os.getloadavg()
    try:
        server.start()
        clients = {"http": Client(server.url, transport="http", timeout=600),
                   "http-json": Client(server.url, transport="http", binary=False, timeout=600),
                   "grpc": Client(server.url, transport="grpc", timeout=600),
                   "shm": Client(server.url, transport="shm", timeout=600),
                   "shm-http": Client(server.url, transport="shm", timeout=600)}
        # the shm header over HTTP, as a client without grpcio (or a server without gRPC) sends it
        clients["shm-http"].loss(np.zeros(2), np.zeros(2))
        clients["shm-http"]._grpc_call = None
        auto = Client(server.url, timeout=600)
        try:
            for n in sizes:
                s, y = make_data(n)
                for call in CALLS:
                    row = {"n": n, "call": call, "bytes": s.nbytes + y.nbytes, "cells": {}}
                    for t in TRANSPORTS:
                        if t == "http-json" and n > JSON_MAX_N:
                            continue
                        log(f"n = {n:.0e} {call} {t}")
                        row["cells"][t] = cell(clients[t], call, s, y, repeat, budget, warmup)
                    getattr(auto, CALLS[call][0])(s, y, reduction=CALLS[call][1])
                    row["auto"] = auto.last_transport
                    row["rule"] = choose(row["bytes"], auto.available_transports or ("http",))
                    row["fastest"] = min(row["cells"], key=lambda t: row["cells"][t]["p50_ms"])
                    rows.append(row)
        finally:
            for c in (*clients.values(), auto):
                c.close()
    finally:
        server.close()
    load1 = os.getloadavg()

    head = "| n | call | " + " | ".join(f"{t} p50 / p90 ms" for t in TRANSPORTS) + " | fastest | auto |"
    lines = [f"# lossd_client: latency per transport ({'quick' if args.quick else 'full'} run)", "",
             f"Server: lossd serve --workers {args.workers} --threads {args.threads}, gRPC and LOSSD_SHM on, "
             f"127.0.0.1. auto: shm from {SHM_MIN_BYTES} bytes of tensors, else gRPC below {GRPC_MAX_BYTES}, "
             "else HTTP. "
             f"Load average at start {load0[0]:.2f}, at end {load1[0]:.2f}.", "", head,
             "|" + "---|" * (len(TRANSPORTS) + 4)]
    bad = []
    for r in rows:
        cells = []
        for t in TRANSPORTS:
            c = r["cells"].get(t)
            cells.append("—" if c is None else f"{c['p50_ms']:.3g} / {c['p90_ms']:.3g}")
            if c is not None and not c["exact"]:
                bad.append(f"n = {r['n']} {r['call']} {t}: not the kernels' bits")
            if c is not None and c["used"] != t.split("-")[0]:
                bad.append(f"n = {r['n']} {r['call']} {t}: the client used {c['used']}")
        lines.append(f"| {r['n']:.0e} | {r['call']} | " + " | ".join(cells) + f" | {r['fastest']} | {r['auto']} |")
    lines += ["", *(f"- ERROR {b}" for b in bad)]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "client_transports.md").write_text(report + "\n")
        (args.out / "client_transports.json").write_text(json.dumps(
            {"quick": args.quick, "pid": os.getpid(), "workers": args.workers, "threads": args.threads, "shm_min_bytes": SHM_MIN_BYTES, "grpc_max_bytes": GRPC_MAX_BYTES,
             "load_average_start": load0, "load_average_end": load1, "rows": rows, "errors": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
