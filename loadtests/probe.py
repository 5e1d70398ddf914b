"""A plain latency probe: small /loss requests from a few threads of the standard
library's ``http.client``, paced, timed with ``perf_counter`` around each request, beside
a locust run.

Why: locust's gevent loop adds its own delay to what it measures. Against the same idle
lossd, 30 users sending one n = 10 request per 100 ms measured p50 9 ms / p99 15 ms from
a bare FastHttpUser, but p50 1.4 / p99 3.3 ms from 30 greenlets of geventhttpclient
without locust, and p50 0.8 / p99 2.6 ms from 30 threads of http.client. A goal of a few
milliseconds is below what locust can see, so the goals run reports this probe's figures
for the small class too: the same requests, measured without the generator's overhead.

    python -m loadtests.probe --url http://127.0.0.1:8000 --threads 5 --pace-ms 100 --seconds 60 --out probe.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import payloads


def probe(url: str, threads: int, pace_ms: float, seconds: float, token: str | None = None) -> dict:
    u = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    # built before the clock starts: the first build imports the kernels (seconds)
    bodies = [payloads.build(payloads.SMALL, payloads.Sizes(), 10_000 + i, token) for i in range(threads)]
    end = time.monotonic() + seconds

    def user(p: payloads.Payload) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        time.sleep(random.uniform(0, pace_ms / 1e3))
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                conn.request("POST", p.path, body=p.body, headers=p.headers)
                r = conn.getresponse()
                content = r.read()
                problem = p.check(r.status, dict(r.getheaders()), content)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                problem = f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            with lock:
                (failures.append(problem) if problem else latencies.append(dt * 1e3))
            time.sleep(max(0.0, pace_ms / 1e3 - dt))
        conn.close()

    workers = [threading.Thread(target=user, args=(p,)) for p in bodies]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"threads": threads, "pace_ms": pace_ms, "seconds": seconds, "requests": len(latencies),
            "failures": len(failures), "first_failures": failures[:5],
            **{f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}, "max": float(np.max(lat))}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--threads", type=int, default=5)
    ap.add_argument("--pace-ms", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to wait before starting")
    ap.add_argument("--token", default=os.environ.get("LOSSD_API_TOKEN"),
                    help="bearer token (default: LOSSD_API_TOKEN, which keeps it out of ps)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    time.sleep(args.delay)
    result = probe(args.url, args.threads, args.pace_ms, args.seconds, args.token)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
