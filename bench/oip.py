#!/usr/bin/env python
"""HTTP benchmark of lossd's Open Inference Protocol endpoint: binary tensors against JSON,
and against a ceiling that only moves the bytes, ratios measured in one run.

    python bench/oip.py [--quick] [--out bench/out] [--json-max-n N] [--oip-json-max-n N]
    python bench/oip.py --serve-sink PORT    (the ceiling server; the benchmark starts it)

Starts ``lossd serve`` (1 worker, body limit raised so that JSON at 10^7 fits) and a
"sink": this file's ``sink_app``, a raw ASGI app that receives every chunk of the request
body, keeps none, and answers an empty 200, under the same uvicorn settings as lossd
(uvloop, httptools, uvicorn access log off, log level warning). The sink does not join
the chunks into one ``bytes`` (as Starlette's ``request.body()`` does for lossd): a fresh
16-160 MB allocation per request costs the sink page faults that lossd, whose heap earlier
large requests have grown, often does not pay, and a joining sink came out *slower* than
lossd at 10^6 (no ceiling then). Receiving the bytes is what any server must do. Then, from one keep-alive HTTP/1.1
connection per server (the standard library's ``http.client``: one ``sendall`` per body,
so the client adds as little as a client can), sequential requests, for
n float64 logits + n float64 labels (mean binary cross-entropy, the defaults):

- ``JSON /loss``: ``POST /loss``, body ``orjson.dumps({"predictions", "labels"})``;
- ``OIP binary``: ``POST /v2/models/loss/infer``, a JSON header + the raw little-endian
  bytes (``Inference-Header-Content-Length``, ``binary_data_size``), outputs binary;
- ``OIP JSON``: the same endpoint with the tensors as JSON ``data`` (n <= --oip-json-max-n);
- ``sink``: the OIP binary body, byte for byte, to the sink: the ceiling.

Every body is built before the clock starts. Within one n the implementations take
turns request by request (the order reverses every turn; one that has spent its budget
drops out), so a burst of load on this shared 2-core machine hits them alike; ratios
measured in one run are more trustworthy than absolute figures. The load average is
recorded. Every lossd answer is
checked against ``kernels.loss`` in this process, to the last bit.

Why not httpx for the timed requests: its sync socket writer re-slices the remaining
``bytes`` after every partial ``send`` (encode/httpcore#1029), which is quadratic; even
with the body handed over in 1 MiB slices the client alone took ~8.5 ms to move a
16 MB body to the sink, more than the whole per-request budget of the 20x goal at 10^6.
httpx still polls the servers for readiness.

Writes ``<out>/oip.md`` (also printed) and ``<out>/oip.json``; server logs go to <out>.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# bench/ is sys.path[0] until use_checkout() takes it off
from _common import (BENCH_DIR, BadResponse, Check, CpuMeter, Latencies, Server, asgi_lifespan, checks_table,
                     child_env, exit_code, fmt, footer_line, free_port, goals_json,
                     http_environment, json_head, load_at_start, load_head, log, lossd_server,
                     make_data, md_table, receive_body, servers_cpu_s, start_all, stop_all,
                     stop_on_sigterm, use_checkout, write_report)

use_checkout()

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

# Stable row labels: tests/test_bench_oip_smoke.py looks for them in the table.
JSON_LOSS, OIP_BIN, OIP_JSON, SINK = "JSON /loss", "OIP binary", "OIP JSON", "sink"
IMPLS = (JSON_LOSS, OIP_BIN, OIP_JSON, SINK)
LEGEND = {
    JSON_LOSS: "`POST /loss` on lossd, body `orjson.dumps({predictions, labels})` (application/json)",
    OIP_BIN: "`POST /v2/models/loss/infer` on lossd: JSON header + raw FP64 bytes "
             "(Inference-Header-Content-Length, binary_data_size), `binary_data_output: true`",
    OIP_JSON: "the same endpoint with both tensors as JSON `data` lists, outputs JSON",
    SINK: "the ceiling: the OIP binary body and headers, byte for byte, to `sink_app` (this file), "
          "which receives the whole body (keeps none) and answers an empty 200",
}
GOAL_N = 10**6
GOAL_VS_JSON, GOAL_VS_SINK = 20.0, 0.3


# ------------------------------------------------------------------------------ sink

async def sink_app(scope, receive, send) -> None:
    """The ceiling: receives the whole body (every chunk, none kept), answers 200 with an
    empty body. Any path, any method (GET /healthz is the readiness probe)."""
    if scope["type"] == "lifespan":
        await asgi_lifespan(receive, send)
        return
    if scope["type"] != "http" or await receive_body(receive, keep=False) is None:
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def serve_sink(port: int) -> None:
    import uvicorn

    # the uvicorn settings of `lossd serve` (service/cli.py)
    uvicorn.run(sink_app, host="127.0.0.1", port=port, workers=1, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    budget_s: float    # per cell: keep sending while under it ...
    min_requests: int  # ... or while fewer than this many were timed ...
    max_requests: int  # ... but never more than this ...
    cap_s: float       # ... and stop once a cell has spent this long (slow JSON at 10^7)
    startup_s: float

    def done(self, cell: "Cell") -> bool:
        spent = sum(cell.times)
        return (cell.count >= self.max_requests or spent >= self.cap_s
                or (spent >= self.budget_s and cell.count >= self.min_requests))


FULL = Config(sizes=(10**3, 10**5, 10**6, 10**7), budget_s=1.5, min_requests=6,
              max_requests=200, cap_s=20.0, startup_s=300)
QUICK = Config(sizes=(10**3, 10**4), budget_s=0.1, min_requests=3, max_requests=50,
               cap_s=5.0, startup_s=100)


# --------------------------------------------------------------------------- servers

def oip_lossd_server(out: Path, max_body: int, access_log: bool) -> Server:
    """lossd with a body limit that admits the largest body of the run."""
    return lossd_server(out / "oip-lossd.log", access_log, ["--max-body-bytes", str(max_body)])


def sink_server(out: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-sink", str(port)]
    return Server(SINK, cmd, "/healthz", out / "oip-sink.log", child_env(), port)


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


def json_loss_request(s, y) -> Request:
    body = orjson.dumps({"predictions": s, "labels": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Request("/loss", body, {"content-type": "application/json"})


def oip_binary_request(s, y) -> Request:
    n = s.size
    head = orjson.dumps({
        "inputs": [{"name": "predictions", "datatype": "FP64", "shape": [n],
                    "parameters": {"binary_data_size": s.nbytes}},
                   {"name": "labels", "datatype": "FP64", "shape": [n],
                    "parameters": {"binary_data_size": y.nbytes}}],
        "parameters": {"binary_data_output": True}})
    body = head + s.astype("<f8", copy=False).tobytes() + y.astype("<f8", copy=False).tobytes()
    return Request("/v2/models/loss/infer", body, {"inference-header-content-length": str(len(head)),
                                                   "content-type": "application/octet-stream"})


def oip_json_request(s, y) -> Request:
    n = s.size
    body = orjson.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [n], "data": s},
                                    {"name": "labels", "datatype": "FP64", "shape": [n], "data": y}]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return Request("/v2/models/loss/infer", body, {"content-type": "application/json"})


def loss_of(impl: str, content: bytes, headers) -> float:
    """The mean loss in a lossd answer."""
    if impl == JSON_LOSS:
        return orjson.loads(content)["loss"]
    hlen = headers.get("inference-header-content-length")
    head = orjson.loads(content if hlen is None else content[:int(hlen)])
    offset = int(hlen or 0)
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if o["name"] == "loss":
            if size is None:
                return float(o["data"][0])
            assert o["datatype"] == "FP64" and size == 8, o
            return float(np.frombuffer(content, "<f8", count=1, offset=offset)[0])
        offset += size or 0
    raise ValueError("no loss output in the answer")


# --------------------------------------------------------------------------- timing

@dataclass
class Cell(Latencies):
    impl: str
    n: int
    body_bytes: int
    times: list[float] = field(default_factory=list)
    loss: float | None = None  # from the first answer (lossd cells)

    @property
    def eps(self) -> float:
        """Elements (of predictions) per second: n x requests over the time spent in them."""
        return self.n * len(self.times) / sum(self.times)

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times)

    @property
    def mbps(self) -> float:
        return self.body_bytes * len(self.times) / sum(self.times) / 1e6

    def summary(self) -> dict:
        return {"impl": self.impl, "n": self.n, "body_bytes": self.body_bytes, "requests": self.count,
                "elements_per_s": self.eps, "body_MB_per_s": self.mbps, **self.latency_summary(),
                "loss": self.loss}


@dataclass
class Reply:
    status_code: int
    content: bytes
    headers: dict[str, str]


# uvicorn closes a keep-alive connection idle for 5 s (its timeout_keep_alive): while the
# other implementations take their turns at 10^7 (seconds per JSON request) a server's
# connection can sit idle that long, and the next 160 MB body then hits a closed socket
# (BrokenPipeError). A connection idle longer than this is replaced before it is used.
IDLE_REOPEN_S = 4.0


class KeepAlive:
    """One persistent ``http.client`` connection per server (reconnects if one drops, or
    before one that sat idle long enough for the server to close it is used)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._conns: dict[tuple[str, int], http.client.HTTPConnection] = {}
        self._last_used: dict[tuple[str, int], float] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Reply:
        u = urllib.parse.urlsplit(url)
        key = (u.hostname, u.port)
        conn = self._conns.get(key)
        if conn is not None and time.monotonic() - self._last_used[key] > IDLE_REOPEN_S:
            conn.close()
            conn = None
        if conn is None:
            conn = self._conns[key] = http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout)
        try:
            conn.request("POST", u.path, body=body, headers=headers)
            r = conn.getresponse()
            content = r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del self._conns[key]
            raise
        finally:
            self._last_used[key] = time.monotonic()
        return Reply(r.status, content, {k.lower(): v for k, v in r.getheaders()})

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


_KEEP_ALIVE = KeepAlive(timeout=300.0)


def send(client, url: str, req: Request) -> Reply:
    """One timed request over the persistent connection (``client`` is only used for
    readiness polls)."""
    return _KEEP_ALIVE.post(url, req.body, req.headers)


def request_once(client, url: str, req: Request, cell: Cell, timed: bool = True) -> None:
    """One request; its latency (request sent to answer read) is added to the cell."""
    t0 = time.perf_counter_ns()
    r = send(client, url, req)
    content = r.content
    dt = (time.perf_counter_ns() - t0) / 1e9
    if r.status_code != 200:
        raise BadResponse(f"{cell.impl} n={cell.n}: HTTP {r.status_code}: {content[:500]!r}")
    if cell.impl != SINK and cell.loss is None:
        cell.loss = loss_of(cell.impl, content, r.headers)
    if timed:
        cell.times.append(dt)


# --------------------------------------------------------------------------- run

@dataclass
class Run:
    cfg: Config
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    expected: dict[int, float] = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)
    servers: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def cell(self, impl: str, n: int) -> Cell | None:
        c = self.cells.get((impl, n))
        return c if c is not None and c.times else None

    def ratio(self, a: str, b: str, n: int) -> float | None:
        x, y = self.cell(a, n), self.cell(b, n)
        return None if x is None or y is None else x.eps / y.eps


def plan(cfg: Config, json_max_n: int, oip_json_max_n: int) -> dict[int, list[str]]:
    return {n: [i for i in IMPLS if not (i == JSON_LOSS and n > json_max_n)
                and not (i == OIP_JSON and n > oip_json_max_n)] for n in cfg.sizes}


def run(cfg: Config, out: Path, json_max_n: int, oip_json_max_n: int, access_log: bool) -> Run:
    from lossd import kernels

    r = Run(cfg)
    which = plan(cfg, json_max_n, oip_json_max_n)
    for n, impls in which.items():
        for impl in IMPLS:
            if impl not in impls:
                limit = json_max_n if impl == JSON_LOSS else oip_json_max_n
                r.not_measured.append(f"{impl} at n = {n:.0e}: skipped (n > {limit:.0e}, see the options)")
    s_all, y_all = make_data(max(cfg.sizes))
    # the body limit must admit the largest body (JSON at 10^7 is ~230 MB)
    largest = max(n * 24 * 2 + 4096 if JSON_LOSS in impls or OIP_JSON in impls else n * 16 + 4096
                  for n, impls in which.items())
    max_body = max(64 * 1024 * 1024, largest)
    log("expected answers from kernels.loss in this process ...")
    for n in cfg.sizes:
        r.expected[n] = kernels.loss(s_all[:n], y_all[:n]).loss
    servers = [oip_lossd_server(out, max_body, access_log), sink_server(out)]
    by_name = {s.name: s for s in servers}
    limits = httpx.Limits(max_connections=len(servers), max_keepalive_connections=len(servers))
    # trust_env=False: a proxy from the environment must not carry loopback traffic
    with httpx.Client(timeout=300.0, trust_env=False, limits=limits) as client:
        try:
            log("starting lossd and the sink ...")
            start_all(servers, client, cfg.startup_s)
            for s in servers:
                r.servers[s.name] = s.info()
            for n, impls in which.items():
                s, y = s_all[:n], y_all[:n]
                reqs = {}
                for impl in impls:
                    if impl == JSON_LOSS:
                        reqs[impl] = json_loss_request(s, y)
                    elif impl == OIP_JSON:
                        reqs[impl] = oip_json_request(s, y)
                    else:
                        reqs[impl] = oip_binary_request(s, y)
                log(f"n={n:.0e}: " + ", ".join(f"{i} {len(q.body) / 1e6:.3g} MB" for i, q in reqs.items()))
                cells = {i: r.cells.setdefault((i, n), Cell(i, n, len(reqs[i].body))) for i in impls}
                urls = {i: (by_name[SINK].url + "/sink" if i == SINK else by_name["lossd"].url + reqs[i].path)
                        for i in impls}
                active = list(impls)
                turn = 0
                gc.disable()  # a client-side collection is not the server's latency
                try:
                    while active:
                        for impl in list(active if turn % 2 == 0 else active[::-1]):
                            try:
                                # one untimed warm-up request per cell, but not for JSON at
                                # >= 10^7 elements, where one request takes seconds
                                if turn == 0 and not (impl in (JSON_LOSS, OIP_JSON) and n >= 10**7):
                                    request_once(client, urls[impl], reqs[impl], cells[impl], timed=False)
                                request_once(client, urls[impl], reqs[impl], cells[impl])
                            except (BadResponse, httpx.HTTPError, OSError, http.client.HTTPException) as exc:
                                active.remove(impl)
                                cells[impl].times.clear()
                                r.errors.append(f"{impl} n={n:.0e}: {type(exc).__name__}: {exc}")
                                log(f"ERROR: {r.errors[-1]}")
                                continue
                            if cfg.done(cells[impl]):
                                active.remove(impl)
                        turn += 1
                finally:
                    gc.enable()
                del reqs
                for impl, c in cells.items():
                    if impl == SINK or c.loss is None:
                        continue
                    want = r.expected[n]
                    if np.float64(c.loss).view(np.uint64) != np.float64(want).view(np.uint64):
                        r.errors.append(f"{impl} n={n:.0e}: loss {c.loss!r} != kernels.loss {want!r}")
        finally:
            stop_all(servers, r.servers)
    return r


def goal_checks(r: Run) -> list[Check]:
    checks = []
    for base, target, what in ((JSON_LOSS, GOAL_VS_JSON, "JSON /loss"), (SINK, GOAL_VS_SINK, "the sink (ceiling)")):
        x = r.ratio(OIP_BIN, base, GOAL_N)
        note = ""
        b, c, k = r.cell(OIP_BIN, GOAL_N), r.cell(base, GOAL_N), r.cell(SINK, GOAL_N)
        if b and c:
            note = f"p50 {b.pct(50) * 1e3:.2f} ms vs {c.pct(50) * 1e3:.2f} ms"
        if base == JSON_LOSS and c and k:
            # is the goal reachable at all? lossd cannot beat moving the bytes
            note += (f"; {target:g}x allows {c.mean * 1e3 / target:.2f} ms per request, the sink alone "
                     f"(moving the same binary bytes) takes {k.mean * 1e3:.2f} ms: at most "
                     f"{r.ratio(SINK, JSON_LOSS, GOAL_N):.1f}x is reachable with this client")
        checks.append(Check(f"n=1e6: OIP binary elements/s vs {what}",
                            "not measured" if x is None else f"{x:.2f}x", f">= {target:g}x",
                            None if x is None else x >= target, note))
    return checks


# --------------------------------------------------------------------------- output

def eng(x: float) -> str:
    return f"{x:.3g}" if x < 1e3 else f"{x:.3e}".replace("e+0", "e").replace("e+", "e")


def results_table(r: Run) -> str:
    body = []
    for (impl, n), c in sorted(r.cells.items(), key=lambda kv: (kv[0][1], IMPLS.index(kv[0][0]))):
        if c.times:
            body.append([impl, f"{n:.0e}", f"{c.body_bytes / 1e6:.3g}", str(c.count), eng(c.eps),
                         fmt(c.mbps), fmt(c.pct(50) * 1e3), fmt(c.pct(99) * 1e3)])
    legend = "\n".join(f"- {k}: {v}" for k, v in LEGEND.items())
    cfg = r.cfg
    return (md_table(["case", "n", "body MB", "requests", "elements/s", "body MB/s", "p50 ms", "p99 ms"], body)
            + f"\n\nSequential requests over one keep-alive connection per server (http.client; client time included); "
            f"within one n the cases take turns request by request; per cell at least {cfg.budget_s:g} s or "
            f"{cfg.min_requests} requests, at most {cfg.max_requests} requests and about {cfg.cap_s:g} s. "
            "elements/s = n x requests / time spent in them. With few requests p99 is about the "
            "maximum.\n" + legend)


def ratio_table(r: Run) -> str:
    body = []
    for n in r.cfg.sizes:
        row = [f"{n:.0e}"]
        for a, b in ((OIP_BIN, JSON_LOSS), (OIP_BIN, SINK), (OIP_JSON, JSON_LOSS)):
            x = r.ratio(a, b, n)
            row.append("n/a" if x is None else f"{x:.2f}")
        agree = [i for i in (JSON_LOSS, OIP_BIN, OIP_JSON) if r.cell(i, n) and r.cell(i, n).loss is not None]
        ok = all(np.float64(r.cell(i, n).loss).view(np.uint64) == np.float64(r.expected[n]).view(np.uint64)
                 for i in agree) if agree else None
        row.append("n/a" if ok is None else ("yes" if ok else "NO") + f" ({', '.join(agree)})")
        body.append(row)
    return (md_table(["n", "OIP binary / JSON /loss", "OIP binary / sink", "OIP JSON / JSON /loss",
                      "loss == kernels.loss (bits)"], body)
            + "\n\nRatios of elements/s in this run. OIP binary / sink is the share of the ceiling "
            "(same bytes, no work) that lossd reaches.")


def environment(r: Run, load0: tuple, load1: tuple, others: float) -> list[tuple[str, str]]:
    return http_environment(load0, load1, others, r.servers,
                            ("fastapi", "uvicorn", "httpx", "orjson", "numpy"))


def report(r: Run, checks: list[Check], env: list[tuple[str, str]], load0: tuple, footer: str) -> str:
    head = load_head("## lossd OIP benchmark: binary tensors vs JSON, mean cross-entropy on logits "
                     "(s ~ N(0, 3²), labels 0/1, float64)", load0, "the servers",
                     "Ratios from the same run hold up better.")
    sections = [head, "## Results", results_table(r), "## Ratios (same run)", ratio_table(r),
                "## Goal checks", checks_table(checks)]
    if r.not_measured:
        sections += ["## Not measured", "\n".join(f"- {m}" for m in r.not_measured)]
    if r.errors:
        sections += ["## Errors", "\n".join(f"- {e}" for e in r.errors)]
    sections += ["## Environment", md_table(["", ""], env), footer]
    return "\n\n".join(sections)


def to_json(r: Run, checks: list[Check], env, load0, load1, quick: bool) -> dict:
    return {
        **json_head(quick, r.cfg, load0, load1, [c.summary() for c in r.cells.values() if c.times]),
        "ratios": [{"n": n, "binary_vs_json": r.ratio(OIP_BIN, JSON_LOSS, n),
                    "binary_vs_sink": r.ratio(OIP_BIN, SINK, n),
                    "oip_json_vs_json": r.ratio(OIP_JSON, JSON_LOSS, n)} for n in r.cfg.sizes],
        "expected_loss": {str(n): v for n, v in r.expected.items()},
        "goals": goals_json(checks),
        "not_measured": r.not_measured,
        "servers": r.servers,
        "environment": dict(env),
        "errors": r.errors,
    }


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 10^3 and 10^4, a few requests (smoke test)")
    ap.add_argument("--json-max-n", type=float, default=1e7,
                    help="largest n for JSON /loss (default 1e7; at 1e7 a request takes seconds)")
    ap.add_argument("--oip-json-max-n", type=float, default=1e5,
                    help="largest n for OIP with JSON tensors (default 1e5)")
    ap.add_argument("--no-lossd-access-log", action="store_true",
                    help="start lossd with LOSSD_ACCESS_LOG=false (default: as shipped, on, to a file)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="directory for oip.md, oip.json, logs")
    ap.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_sink is not None:
        serve_sink(args.serve_sink)
        return 0
    stop_on_sigterm()
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = load_at_start()
    t_start, cpu = time.perf_counter(), CpuMeter()
    r = run(cfg, args.out, int(args.json_max_n), int(args.oip_json_max_n), not args.no_lossd_access_log)
    load1 = os.getloadavg()
    others, _ = cpu.stop(servers_cpu_s(r.servers))
    checks = goal_checks(r)
    env = environment(r, load0, load1, others)
    write_report(args.out, "oip", report(r, checks, env, load0, footer_line(args.quick, t_start)),
                 to_json(r, checks, env, load0, load1, args.quick))
    return exit_code(r.errors)


if __name__ == "__main__":
    sys.exit(main())
