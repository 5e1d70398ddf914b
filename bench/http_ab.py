#!/usr/bin/env python
"""Two lossd checkouts served side by side, timed on the same bodies request by request.

    python bench/http_ab.py BASE_DIR [NEW_DIR]

BASE_DIR and NEW_DIR (default: this checkout) are checkouts with their own ``.venv``
(``make install-dev``) and ``.numba_cache``; e.g. ``git worktree add ../base <rev>``.
Each runs ``lossd serve`` (1 worker, 1 kernel thread) on a free 127.0.0.1 port; then for
JSON /loss, OIP JSON and OIP binary bodies at several n, the two servers take turns
request by request (the order flips every turn) over one keep-alive connection each, so
load from elsewhere on a shared machine hits both alike. Prints a Markdown table of
p50 and minimum latencies and new/base.
"""
import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

BASE = Path(sys.argv[1]).resolve()
NEW = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else Path(__file__).resolve().parents[1]
def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
servers = {}
for tag, d in (("base", BASE), ("new", NEW)):
    p = port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.update(NUMBA_CACHE_DIR=f"{d}/.numba_cache", LOSSD_MAX_BODY_BYTES=str(1 << 30), LOSSD_THREADS="1")
    proc = subprocess.Popen([f"{d}/.venv/bin/lossd", "serve", "--port", str(p), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    servers[tag] = (p, proc)
for tag, (p, proc) in servers.items():
    for _ in range(600):  # up to 5 min: a cold Numba cache compiles first
        try:
            c = http.client.HTTPConnection("127.0.0.1", p, timeout=5); c.request("GET", "/readyz")
            if c.getresponse().status == 200: break
        except OSError: pass
        time.sleep(0.5)
rng = np.random.default_rng(0)
def oip_binary(n):
    x = rng.normal(0, 3, n); y = (rng.random(n) < 0.5).astype(np.float64)
    head = orjson.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [n], "parameters": {"binary_data_size": 8 * n}},
                                    {"name": "labels", "datatype": "FP64", "shape": [n], "parameters": {"binary_data_size": 8 * n}}],
                         "parameters": {"binary_data_output": True}})
    return "/v2/models/loss/infer", head + x.tobytes() + y.tobytes(), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
def json_loss(n):
    x = rng.normal(0, 3, n); y = (rng.random(n) < 0.5).astype(np.float64)
    return "/loss", orjson.dumps({"predictions": x, "labels": y}, option=orjson.OPT_SERIALIZE_NUMPY), {"Content-Type": "application/json"}
def oip_json(n):
    x = rng.normal(0, 3, n); y = (rng.random(n) < 0.5).astype(np.float64)
    return "/v2/models/loss/infer", orjson.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [n], "data": x},
        {"name": "labels", "datatype": "FP64", "shape": [n], "data": y}]}, option=orjson.OPT_SERIALIZE_NUMPY), {"Content-Type": "application/json"}
cases = [("JSON /loss", json_loss, 10, 400), ("JSON /loss", json_loss, 10**5, 60), ("OIP JSON", oip_json, 10, 400),
         ("OIP JSON", oip_json, 10**5, 30), ("OIP binary", oip_binary, 10**5, 200), ("OIP binary", oip_binary, 10**6, 60),
         ("OIP binary", oip_binary, 10**7, 16)]
conns = {t: http.client.HTTPConnection("127.0.0.1", p, timeout=60) for t, (p, _) in servers.items()}
print("| case | n | base p50 ms | new p50 ms | base min ms | new min ms | new/base p50 |\n| --- | --- | --- | --- | --- | --- | --- |")
try:
    for name, make, n, reps in cases:
        path, body, headers = make(n)
        t = {k: [] for k in conns}
        for i in range(reps + 2):
            order = list(conns) if i % 2 == 0 else list(conns)[::-1]
            for k in order:
                t0 = time.perf_counter(); conns[k].request("POST", path, body, headers); r = conns[k].getresponse(); r.read()
                assert r.status == 200, (k, r.status)
                if i >= 2: t[k].append((time.perf_counter() - t0) * 1e3)
        b, nw = np.median(t["base"]), np.median(t["new"])
        print(f"| {name} | {n:.0e} | {b:.3f} | {nw:.3f} | {min(t['base']):.3f} | {min(t['new']):.3f} | {nw / b:.3f} |", flush=True)
finally:
    for _, proc in servers.values():
        os.killpg(proc.pid, 15)
print("load average", os.getloadavg())
