#!/usr/bin/env python
"""lossd against MLServer 1.x over the Open Inference Protocol with JSON tensors: the same
request bodies, the same mean binary cross-entropy on logits (issue 14's reference).

    bash bench/mlserver_setup.sh       # once: MLServer in its own venv, bench/.venv-mlserver
    python bench/mlserver.py [--quick] [--out bench/out] [--mlserver-venv DIR]

Starts ``lossd serve`` (1 worker, access log off) and ``mlserver start`` on a copy of
``bench/mlserver_model/`` (an ``MLModel`` computing
``np.mean(np.maximum(s, 0) - s*y + np.log1p(np.exp(-np.abs(s))))`` on inputs decoded
with MLServer's ``NumpyCodec``; its ``settings.json``: parallel_workers 0, so inference
runs in the one server process as lossd's one worker does, metrics off, debug off (no
access log, as lossd here), gzip off (answers are a few hundred bytes), gRPC on a free
port of its own: MLServer 1.x always starts it). Both serve model ``loss`` at
``POST /v2/models/loss/infer``, so one body serves both: inputs ``predictions`` and
``labels``, FP64, shape [n], as JSON ``data`` lists, at n = 10, 10^3, 10^4 and 10^5.

Every body is built before the clock starts. From one keep-alive HTTP/1.1 connection per
server (``http.client``, as bench/oip.py), the two servers take turns request by request
(the order reverses every turn), the same number of requests each, so a burst of load on
this shared 2-core machine hits both alike: the ratio measured in one run is the figure
to trust. requests/s = requests / time spent in them (sequential, client time included).
Every answer is checked: lossd's loss equals ``kernels.loss`` in this process to the bit;
MLServer's (NumPy's pairwise mean is not exactly rounded) within 1e-12 relative of it.
The load average is recorded at the start, before each n and at the end.

Writes ``<out>/mlserver.md`` (also printed) and ``<out>/mlserver.json``; server logs
and MLServer's model folder copy go to <out>.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# bench/ is sys.path[0] until use_checkout() (oip.py calls it when imported) takes it off
from _common import (BENCH_DIR, BadResponse, Check, CpuMeter, Latencies, Server, _die_with_parent,
                     checks_table, exit_code, fmt, footer_line, free_port, goals_json,
                     http_environment, json_head, load_at_start, load_head, loads_text, log,
                     lossd_server, make_data, md_table, servers_cpu_s, start_all, stop_all,
                     stop_on_sigterm, use_checkout, write_report)
from oip import OIP_JSON, KeepAlive, loss_of, oip_json_request

use_checkout()

import httpx  # noqa: E402
import numpy as np  # noqa: E402

LOSSD, MLSERVER = "lossd", "MLServer"  # row labels (tests/test_bench_mlserver_smoke.py)
IMPLS = (LOSSD, MLSERVER)
MODEL_DIR = BENCH_DIR / "mlserver_model"
DEFAULT_VENV = BENCH_DIR / ".venv-mlserver"
INFER_PATH = "/v2/models/loss/infer"
REL_TOL = 1e-12
# issue 14: OIP JSON at least 1.5x MLServer's requests/s at n = 10^5, at least 1x at n = 10
GOALS = ((10**5, 1.5), (10, 1.0))
# what MLServer's venv is asked about (None: not installed)
MLSERVER_PACKAGES = ("mlserver", "numpy", "fastapi", "starlette", "uvicorn", "pydantic", "orjson",
                     "uvloop", "httptools")


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    budget_s: float    # per n: turns go on until both servers together spent 2x this ...
    min_requests: int  # ... and each answered at least this many ...
    max_requests: int  # ... but never more than this each ...
    cap_s: float       # ... and never longer than this in all (both servers)
    warmup: int        # untimed requests to each server before an n's first timed turn
    startup_s: float


FULL = Config(sizes=(10, 10**3, 10**4, 10**5), budget_s=4.0, min_requests=30, max_requests=3000,
              cap_s=40.0, warmup=5, startup_s=180)
QUICK = Config(sizes=(10, 10**3), budget_s=0.2, min_requests=5, max_requests=100, cap_s=5.0,
               warmup=2, startup_s=120)


# --------------------------------------------------------------------------- servers

@dataclass
class ServerIn(Server):
    """A server started in a directory of its own (MLServer puts ``.`` on its sys.path
    and may write there): the checkout stays out of its way."""

    cwd: Path | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)


def mlserver_env() -> dict[str, str]:
    """MLServer's environment: the caller's, without the project's venv or path, and
    without MLSERVER_* variables that could change its settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("LOSSD_", "MLSERVER_"))}


def mlserver_model_copy(out: Path, http_port: int, grpc_port: int) -> Path:
    """bench/mlserver_model/ copied to <out>/mlserver/loss/, its settings.json with this
    run's ports (and nothing else changed)."""
    dest = out / "mlserver" / "loss"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("model.py", "model-settings.json"):
        shutil.copy2(MODEL_DIR / name, dest / name)
    settings = json.loads((MODEL_DIR / "settings.json").read_text())
    settings.update(http_port=http_port, grpc_port=grpc_port)
    (dest / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return dest


def mlserver_server(out: Path, venv: Path) -> tuple[ServerIn, dict]:
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    folder = mlserver_model_copy(out.resolve(), port, grpc_port)
    cmd = [str(venv / "bin" / "mlserver"), "start", str(folder)]
    server = ServerIn(MLSERVER, cmd, "/v2/models/loss/ready", out / "mlserver-mlserver.log",
                      mlserver_env(), port, cwd=folder.parent)
    return server, json.loads((folder / "settings.json").read_text())


def mlserver_venv_info(venv: Path) -> dict:
    """Versions of MLServer and what it runs on, asked of its own venv's Python."""
    code = ("import importlib.metadata as m, json, platform, sys\n"
            "def version(p):\n"
            "    try:\n"
            "        return m.version(p)\n"
            "    except m.PackageNotFoundError:\n"
            "        return None\n"
            "print(json.dumps({'python': platform.python_version(),\n"
            "                  'packages': {p: version(p) for p in sys.argv[1:]}}))\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code, *MLSERVER_PACKAGES], capture_output=True,
                       text=True, timeout=60, env=mlserver_env(), check=True)
    return json.loads(r.stdout)


def lossd_bench_server(out: Path, threads: int | None) -> Server:
    extra = [] if threads is None else ["--threads", str(threads)]
    return lossd_server(out / "mlserver-lossd.log", access_log=False, extra=extra)


# --------------------------------------------------------------------------- timing

@dataclass
class Cell(Latencies):
    impl: str
    n: int
    body_bytes: int
    times: list[float] = field(default_factory=list)
    losses: set[float] = field(default_factory=set)  # every distinct answer

    @property
    def loss(self) -> float | None:
        return next(iter(self.losses)) if len(self.losses) == 1 else None

    def summary(self) -> dict:
        return {"impl": self.impl, "n": self.n, "body_bytes": self.body_bytes, "requests": self.count,
                "requests_per_s": self.rps, **self.latency_summary(), "losses": sorted(self.losses)}


@dataclass
class Run:
    cfg: Config
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    expected: dict[int, float] = field(default_factory=dict)
    load_before: dict[int, tuple] = field(default_factory=dict)
    servers: dict[str, dict] = field(default_factory=dict)
    mlserver: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def cell(self, impl: str, n: int) -> Cell | None:
        c = self.cells.get((impl, n))
        return c if c is not None and c.times else None

    def ratio(self, n: int) -> float | None:
        """lossd's requests/s over MLServer's at n."""
        a, b = self.cell(LOSSD, n), self.cell(MLSERVER, n)
        return None if a is None or b is None else a.rps / b.rps

    def rel_diff(self, n: int) -> float | None:
        """|MLServer's loss - lossd's| / |lossd's| at n."""
        a, b = self.cell(LOSSD, n), self.cell(MLSERVER, n)
        if a is None or b is None or a.loss is None or b.loss is None:
            return None
        return abs(b.loss - a.loss) / abs(a.loss)


def done(cfg: Config, cells: Sequence[Cell]) -> bool:
    spent = sum(sum(c.times) for c in cells)
    count = min(c.count for c in cells)
    return (count >= cfg.max_requests or spent >= cfg.cap_s
            or (spent >= 2 * cfg.budget_s and count >= cfg.min_requests))


def one_request(conn: KeepAlive, url: str, body: bytes, headers: dict, cell: Cell, timed: bool) -> None:
    t0 = time.perf_counter_ns()
    r = conn.post(url, body, headers)
    dt = (time.perf_counter_ns() - t0) / 1e9
    if r.status_code != 200:
        raise BadResponse(f"{cell.impl} n={cell.n}: HTTP {r.status_code}: {r.content[:500]!r}")
    cell.losses.add(loss_of(OIP_JSON, r.content, r.headers))
    if timed:
        cell.times.append(dt)


def measure(r: Run, n: int, s: np.ndarray, y: np.ndarray, urls: dict[str, str]) -> None:
    """Both servers in turns at one n (one body, built here before the clock)."""
    cfg = r.cfg
    req = oip_json_request(s, y)
    log(f"n={n:.0e}: OIP JSON body {len(req.body) / 1e6:.3g} MB, load {loads_text(os.getloadavg())}")
    r.load_before[n] = os.getloadavg()
    cells = [r.cells.setdefault((impl, n), Cell(impl, n, len(req.body))) for impl in IMPLS]
    conn = KeepAlive(timeout=300.0)
    turn = 0
    gc.disable()  # a client-side collection is not the servers' latency
    try:
        for c in cells:
            for _ in range(cfg.warmup):
                one_request(conn, urls[c.impl], req.body, req.headers, c, timed=False)
        while not done(cfg, cells):
            for c in (cells if turn % 2 == 0 else cells[::-1]):
                one_request(conn, urls[c.impl], req.body, req.headers, c, timed=True)
            turn += 1
    except (BadResponse, OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        r.errors.append(f"n={n:.0e}: {type(exc).__name__}: {exc}")
        log(f"ERROR: {r.errors[-1]}")
        for c in cells:
            c.times.clear()
    finally:
        gc.enable()
        conn.close()
    check_answers(r, n, cells)


def check_answers(r: Run, n: int, cells: Sequence[Cell]) -> None:
    want = r.expected[n]
    for c in cells:
        if not c.losses:
            continue
        if len(c.losses) > 1:
            r.errors.append(f"{c.impl} n={n:.0e}: answers differ between requests: {sorted(c.losses)}")
            continue
        got = c.loss
        if c.impl == LOSSD:
            if np.float64(got).view(np.uint64) != np.float64(want).view(np.uint64):
                r.errors.append(f"lossd n={n:.0e}: loss {got!r} != kernels.loss {want!r}")
        elif not abs(got - want) <= REL_TOL * abs(want):
            r.errors.append(f"MLServer n={n:.0e}: loss {got!r} differs from kernels.loss {want!r} by "
                            f"{abs(got - want) / abs(want):.3g} relative (> {REL_TOL:g})")


# --------------------------------------------------------------------------- run

def run(cfg: Config, out: Path, venv: Path, lossd_threads: int | None) -> Run:
    from lossd import kernels

    r = Run(cfg)
    r.mlserver = {"venv": str(venv), **mlserver_venv_info(venv)}
    model_py = (MODEL_DIR / "model.py").read_bytes()
    r.mlserver["model_code"] = {"path": "bench/mlserver_model/model.py",
                                "sha256": hashlib.sha256(model_py).hexdigest()}
    s_all, y_all = make_data(max(cfg.sizes))
    for n in cfg.sizes:
        r.expected[n] = kernels.loss(s_all[:n], y_all[:n]).loss
    ml, settings = mlserver_server(out, venv)
    r.mlserver["settings"] = settings
    servers = [lossd_bench_server(out, lossd_threads), ml]
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        try:
            log("starting lossd and MLServer ...")
            start_all(servers, client, cfg.startup_s)
            for srv in servers:
                r.servers[srv.name] = srv.info()
            meta = client.get(ml.url + "/v2")
            r.mlserver["server_metadata"] = meta.json() if meta.status_code == 200 else None
            urls = {srv.name: srv.url + INFER_PATH for srv in servers}
            for n in cfg.sizes:
                measure(r, n, s_all[:n], y_all[:n], urls)
        finally:
            stop_all(servers, r.servers)
    return r


def goal_checks(r: Run) -> list[Check]:
    checks = []
    for n, target in GOALS:
        x = r.ratio(n)
        a, b = r.cell(LOSSD, n), r.cell(MLSERVER, n)
        note = f"p50 {a.pct(50) * 1e3:.3g} ms vs {b.pct(50) * 1e3:.3g} ms" if a and b else ""
        checks.append(Check(f"n={n:.0e}: lossd OIP JSON requests/s vs MLServer",
                            "not measured" if x is None else f"{x:.2f}x", f">= {target:g}x",
                            None if x is None else x >= target, note))
    return checks


# --------------------------------------------------------------------------- output

def results_table(r: Run) -> str:
    body = []
    for (impl, n), c in sorted(r.cells.items(), key=lambda kv: (kv[0][1], IMPLS.index(kv[0][0]))):
        if c.times:
            body.append([impl, f"{n:.0e}", f"{c.body_bytes / 1e6:.3g}", str(c.count), fmt(c.rps),
                         fmt(c.pct(50) * 1e3), fmt(c.pct(90) * 1e3), fmt(c.pct(99) * 1e3)])
    cfg = r.cfg
    return (md_table(["server", "n", "body MB", "requests", "requests/s", "p50 ms", "p90 ms", "p99 ms"], body)
            + "\n\nSequential requests over one keep-alive connection per server (http.client; client "
            "time included), the two servers in turns request by request, the same count each; per n "
            f"about {2 * cfg.budget_s:g} s in all and at least {cfg.min_requests} requests each, at most "
            f"{cfg.max_requests} each and about {cfg.cap_s:g} s. requests/s = requests / time spent in them.")


def ratio_table(r: Run) -> str:
    body = []
    for n in r.cfg.sizes:
        x, d = r.ratio(n), r.rel_diff(n)
        a, b = r.cell(LOSSD, n), r.cell(MLSERVER, n)
        p50 = f"{b.pct(50) / a.pct(50):.2f}" if a and b else "n/a"
        load = loads_text(r.load_before[n][:1]) if n in r.load_before else "n/a"
        body.append([f"{n:.0e}", "n/a" if x is None else f"{x:.2f}", p50,
                     "n/a" if a is None or a.loss is None else repr(a.loss),
                     "n/a" if b is None or b.loss is None else repr(b.loss),
                     "n/a" if d is None else f"{d:.1e}",
                     "n/a" if d is None else ("yes" if d <= REL_TOL else "NO"), load])
    return (md_table(["n", "requests/s lossd / MLServer", "p50 MLServer / lossd", "loss (lossd)",
                      "loss (MLServer)", "relative difference", f"agree (<= {REL_TOL:g})",
                      "1-min load before"], body)
            + "\n\nlossd's loss equals `kernels.loss` in the benchmark's process to the bit; MLServer's "
            "is NumPy's `mean` (pairwise summation), so it is compared within 1e-12 relative.")


def mlserver_rows(r: Run) -> list[tuple[str, str]]:
    m = r.mlserver
    pk = m.get("packages", {})
    meta = m.get("server_metadata") or {}
    parser = "httptools" if pk.get("httptools") else "h11 (httptools not installed)"
    rows = [
        ("MLServer version", f"{pk.get('mlserver')} (server metadata `GET /v2`: {meta.get('name')} "
                     f"{meta.get('version')}), venv `{m.get('venv')}`, Python {m.get('python')}"),
        ("MLServer's venv", ", ".join(f"{p} {pk.get(p) or 'not installed'}" for p in MLSERVER_PACKAGES[1:])),
        ("MLServer's HTTP", f"uvicorn, loop {'uvloop' if pk.get('uvloop') else 'asyncio'}, "
                            f"parser {parser} (uvicorn's automatic choice: httptools when installed, which "
                            "`pip install mlserver` alone does not do; see bench/mlserver_setup.sh)"),
        ("MLServer's model", f"`{m['model_code']['path']}` (sha256 {m['model_code']['sha256'][:16]}...), "
                             "`model-settings.json` beside it"),
        ("MLServer's settings.json", "`" + json.dumps(m.get("settings", {}), separators=(", ", ": ")) + "`"),
    ]
    return rows


def environment(r: Run, load0: tuple, load1: tuple, others: float) -> list[tuple[str, str]]:
    rows = http_environment(load0, load1, others, r.servers,
                            ("fastapi", "uvicorn", "orjson", "numpy", "numba"))
    rows = [("versions (lossd's venv)", v) if k == "versions" else (k, v) for k, v in rows]
    return rows + mlserver_rows(r)


def report(r: Run, checks: list[Check], env: list[tuple[str, str]], load0: tuple, footer: str) -> str:
    head = load_head("## lossd against MLServer: OIP JSON, mean cross-entropy on logits "
                     "(s ~ N(0, 3²), labels 0/1, float64)", load0, "the servers",
                     "The ratio from the same run holds up better.")
    sections = [head, "## Results", results_table(r), "## lossd / MLServer (same run)", ratio_table(r),
                "## Goal checks (issue 14)", checks_table(checks)]
    if r.errors:
        sections += ["## Errors", "\n".join(f"- {e}" for e in r.errors)]
    sections += ["## Environment", md_table(["", ""], env), footer]
    return "\n\n".join(sections)


def to_json(r: Run, checks: list[Check], env, load0, load1, quick: bool) -> dict:
    return {
        **json_head(quick, r.cfg, load0, load1, [c.summary() for c in r.cells.values() if c.times]),
        "ratios": [{"n": n, "lossd_vs_mlserver_requests_per_s": r.ratio(n),
                    "relative_loss_difference": r.rel_diff(n),
                    "load_average_before": r.load_before.get(n)} for n in r.cfg.sizes],
        "expected_loss": {str(n): v for n, v in r.expected.items()},
        "goals": goals_json(checks),
        "mlserver": r.mlserver,
        "servers": r.servers,
        "environment": dict(env),
        "errors": r.errors,
    }


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 10 and 10^3, a few requests (smoke test)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="directory for mlserver.md, .json, logs")
    ap.add_argument("--mlserver-venv", type=Path, default=DEFAULT_VENV,
                    help="MLServer's venv (default bench/.venv-mlserver, made by bench/mlserver_setup.sh)")
    ap.add_argument("--lossd-threads", type=int, default=None,
                    help="kernel threads of lossd's worker (default: as shipped, cores / workers)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    venv = args.mlserver_venv.resolve()
    if not (venv / "bin" / "mlserver").exists():
        log(f"no MLServer at {venv / 'bin' / 'mlserver'}: run `bash bench/mlserver_setup.sh` first "
            "(MLServer lives in its own venv, not in the project's)")
        return 2
    stop_on_sigterm()
    cfg = QUICK if args.quick else FULL
    # absolute: MLServer runs in a directory of its own and is handed its model folder by
    # path (a relative one made it start with its defaults: port 8080, no model)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = load_at_start()
    t_start, cpu = time.perf_counter(), CpuMeter()
    r = run(cfg, args.out, venv, args.lossd_threads)
    load1 = os.getloadavg()
    others, _ = cpu.stop(servers_cpu_s(r.servers))
    checks = goal_checks(r)
    env = environment(r, load0, load1, others)
    write_report(args.out, "mlserver", report(r, checks, env, load0, footer_line(args.quick, t_start)),
                 to_json(r, checks, env, load0, load1, args.quick))
    return exit_code(r.errors)


if __name__ == "__main__":
    sys.exit(main())
