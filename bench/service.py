#!/usr/bin/env python
"""HTTP benchmark of lossd: POST /loss against a plain FastAPI app, ratios in one run.

    python bench/service.py [--quick] [--million] [--typed] [--out bench/out]

Starts ``lossd serve`` and bench/plain_app.py (the same endpoint written the way most
users would: pydantic ``list[float]``, NumPy, FastAPI's default JSON response) with the
same uvicorn settings (1 worker, uvloop, httptools, uvicorn access log off, log level
warning), then sends sequential keep-alive requests from one ``httpx.Client`` to each,
for n in 10, 10^3, 10^5 elements and reduction mean / none. Reports requests/s, p50 and
p99 latency, the lossd/plain ratios, and the bare cost of the data at 10^5 elements
(``orjson.loads`` of the body + ``np.array`` of both lists + ``orjson.dumps`` of lossd's
answer) against lossd's end-to-end latency; prints markdown tables (results, ratios,
goal checks, environment) and writes ``<out>/service.md`` and ``<out>/service.json``.

The machine is shared and has 2 cores (the client takes one while it encodes, sends and
reads): figures are only meaningful when it is otherwise idle. Each case alternates the
implementations in several rounds, so a burst of load hits them alike and the ratios
are more trustworthy than the absolute numbers; the load average is recorded.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# bench/ is sys.path[0] until use_checkout() takes it off
from _common import (BENCH_DIR, BadResponse, Check, CpuMeter, Latencies, Server, checks_table, child_env,
                     exit_code, fmt, footer_line, free_port, goals_json, http_environment,
                     json_head, load_at_start, load_head, log, lossd_server, make_data, md_table,
                     servers_cpu_s, start_all, stop_all, stop_on_sigterm, use_checkout,
                     write_report)

use_checkout()

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

# Stable row labels: tests/test_bench_service_smoke.py looks for these in the table.
LOSSD, PLAIN, PLAIN_TYPED, FLOOR = "lossd", "plain", "plain typed", "HTTP floor"
LEGEND = {
    LOSSD: "`lossd serve --workers 1` (its own access log on, as shipped, written to a file)",
    PLAIN: "bench/plain_app.py `app`: pydantic `list[float]` model, sync endpoint, NumPy, "
           "dict returned without annotation (jsonable_encoder + stdlib json)",
    PLAIN_TYPED: "bench/plain_app.py `typed_app`: the same with a `-> Resp` response model "
                 "(pydantic's Rust serialiser); informational, `--typed` only",
    FLOOR: "bench/plain_app.py `floor_app`: a raw ASGI app that reads the same body and "
           "sends a blob of the size of lossd's answer, parsing nothing: what moving the bytes "
           "costs (client, loopback, uvicorn), a lower bound for any server",
}
REDUCTIONS = ("mean", "none")
GOAL_N, SMALL_N = 10**5, 10
GOAL_SPEEDUP, GOAL_E2E = 8.0, 2.0
AGREE_RTOL = 1e-12
JSON_HEADERS = {"content-type": "application/json"}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]          # every implementation
    lossd_only: tuple[int, ...]     # sizes too slow for the plain app (--million)
    rounds: int       # implementations alternate this many times per case
    budget_s: float   # per implementation and case: keep sending while under it ...
    min_requests: int  # ... or while fewer than this many were timed ...
    max_requests: int  # ... but never more than this
    warmup: int       # untimed requests at the start of every round
    bare_samples: int  # after every server's round, for the bare data cost
    startup_s: float  # how long a server may take to become ready

    def share(self, total: int | float) -> int | float:
        """A per-round part of a per-case total."""
        return total / self.rounds if isinstance(total, float) else math.ceil(total / self.rounds)


FULL = Config(sizes=(10, 1000, 100_000), lossd_only=(), rounds=5, budget_s=2.0,
              min_requests=30, max_requests=6000, warmup=3, bare_samples=4, startup_s=300)
QUICK = Config(sizes=(10, 1000), lossd_only=(), rounds=1, budget_s=0.1, min_requests=5,
               max_requests=100, warmup=1, bare_samples=3, startup_s=100)


# --------------------------------------------------------------------------- servers


def plain_server(out: Path, name: str = PLAIN, app: str = "app") -> Server:
    port = free_port()
    # exactly the uvicorn settings `lossd serve` uses (service/cli.py)
    cmd = [sys.executable, "-m", "uvicorn", f"bench.plain_app:{app}", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--log-level", "warning"]
    slug = name.replace(" ", "-")
    return Server(name, cmd, "/healthz", out / f"service-{slug}.log", child_env(), port)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Case:
    n: int
    reduction: str
    body: bytes


def make_body(s: np.ndarray, y: np.ndarray, reduction: str) -> bytes:
    return orjson.dumps({"predictions": s, "labels": y, "reduction": reduction},
                        option=orjson.OPT_SERIALIZE_NUMPY)


# --------------------------------------------------------------------------- timing


@dataclass
class Cell(Latencies):
    """Latencies (seconds) of one implementation on one case."""

    impl: str
    n: int
    reduction: str
    times: list[float] = field(default_factory=list)
    first: dict | None = None  # the parsed first answer, for the agreement check
    first_len: int = 0         # its size in bytes (the floor server sends as many)

    def summary(self) -> dict:
        return {"impl": self.impl, "n": self.n, "reduction": self.reduction,
                "requests": self.count, "rps": self.rps, **self.latency_summary()}


def post(client: httpx.Client, url: str, body: bytes,
         headers: dict[str, str] = JSON_HEADERS) -> httpx.Response:
    r = client.post(url, content=body, headers=headers)  # reads the body fully
    if r.status_code != 200:
        raise BadResponse(f"{url}: HTTP {r.status_code}: {r.content[:500]!r}")
    return r


def run_round(client: httpx.Client, url: str, body: bytes, cell: Cell, cfg: Config,
              headers: dict[str, str] = JSON_HEADERS) -> None:
    """Warm-up requests, then timed sequential requests until this round's share of the
    budget and of the minimum count are both spent (or the maximum count is reached)."""
    for _ in range(cfg.warmup):
        r = post(client, url, body, headers)
        if cell.first is None:
            cell.first, cell.first_len = orjson.loads(r.content), len(r.content)
    budget, lo, hi = cfg.share(cfg.budget_s), cfg.share(cfg.min_requests), cfg.share(cfg.max_requests)
    times: list[float] = []
    spent = 0.0
    gc.disable()  # a client-side collection is not the server's latency
    try:
        while len(times) < hi and (spent < budget or len(times) < lo):
            t0 = time.perf_counter_ns()
            r = client.post(url, content=body, headers=headers)
            content = r.content
            dt = (time.perf_counter_ns() - t0) / 1e9
            if r.status_code != 200:
                raise BadResponse(f"{url}: HTTP {r.status_code}: {content[:500]!r}")
            if cell.first is None:
                cell.first, cell.first_len = orjson.loads(content), len(content)
            times.append(dt)
            spent += dt
    finally:
        gc.enable()
    cell.times += times


# --------------------------------------------------------------------------- bare cost


@dataclass
class Bare:
    """The data's own cost at one size: parse, convert, serialise the answer."""

    n: int
    reduction: str
    body_bytes: int
    answer_bytes: int = 0
    loads: list[float] = field(default_factory=list)
    arrays: list[float] = field(default_factory=list)
    dumps: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)

    def median(self, what: str = "total") -> float:
        return float(np.median(getattr(self, what)))

    def summary(self) -> dict:
        return {"n": self.n, "reduction": self.reduction, "body_bytes": self.body_bytes,
                "answer_bytes": self.answer_bytes, "samples": len(self.total),
                **{f"{k}_ms": self.median(k) * 1e3 for k in ("loads", "arrays", "dumps", "total")},
                "total_min_ms": min(self.total) * 1e3}


def lossd_answer(parsed: dict) -> dict:
    """lossd's answer as the server holds it before encoding: arrays as ndarrays."""
    out = dict(parsed)
    if out.get("losses") is not None:
        out["losses"] = np.asarray(out["losses"], dtype=np.float64)
    return out


def bare_samples(bare: Bare, body: bytes, answer: dict, k: int) -> None:
    opt = orjson.OPT_SERIALIZE_NUMPY
    gc.disable()
    try:
        for _ in range(k):
            t0 = time.perf_counter_ns()
            d = orjson.loads(body)
            t1 = time.perf_counter_ns()
            s, y = np.array(d["predictions"]), np.array(d["labels"])
            t2 = time.perf_counter_ns()
            out = orjson.dumps(answer, option=opt)
            t3 = time.perf_counter_ns()
            del d, s, y  # freeing the parsed lists is outside the clock: a strict "bare"
            bare.loads.append((t1 - t0) / 1e9)
            bare.arrays.append((t2 - t1) / 1e9)
            bare.dumps.append((t3 - t2) / 1e9)
            bare.total.append((t3 - t0) / 1e9)
            bare.answer_bytes = len(out)
    finally:
        gc.enable()


# --------------------------------------------------------------------------- checks


def agreement(lossd: dict, plain: dict, reduction: str) -> tuple[float, str]:
    """Largest relative difference between the two answers (mean, and every element
    for reduction none) and a note; lossd's mean is `loss`, or `stats.mean` for none."""
    m_lossd = lossd["loss"] if reduction != "none" else lossd["stats"]["mean"]
    worst = abs(m_lossd - plain["loss"]) / abs(plain["loss"])
    note = f"mean {m_lossd:.17g}"
    if reduction == "none":
        a, b = np.asarray(lossd["losses"], float), np.asarray(plain["losses"], float)
        if a.shape != b.shape:
            return math.inf, f"losses shapes differ: {a.shape} vs {b.shape}"
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b) / np.abs(b))))
    return worst, note


# --------------------------------------------------------------------------- run


@dataclass
class Run:
    cfg: Config
    impls: list[str]
    cells: dict[tuple[str, int, str], Cell] = field(default_factory=dict)
    bare: dict[str, Bare] = field(default_factory=dict)
    agree: dict[tuple[int, str], tuple[float, str]] = field(default_factory=dict)
    servers: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def cell(self, impl: str, n: int, reduction: str) -> Cell | None:
        c = self.cells.get((impl, n, reduction))
        return c if c is not None and c.times else None

    def ratio(self, n: int, reduction: str, base: str = PLAIN) -> float | None:
        a, b = self.cell(LOSSD, n, reduction), self.cell(base, n, reduction)
        return None if a is None or b is None else a.rps / b.rps

    def above_floor(self, impl: str, n: int, reduction: str) -> float | None:
        """p50 latency minus the HTTP floor's: the server's own work (seconds)."""
        a, f = self.cell(impl, n, reduction), self.cell(FLOOR, n, reduction)
        return None if a is None or f is None else a.pct(50) - f.pct(50)


def run(cfg: Config, out: Path, typed: bool, access_log: bool) -> Run:
    servers = [lossd_server(out / "service-lossd.log", access_log), plain_server(out)]
    if typed:
        servers.append(plain_server(out, PLAIN_TYPED, "typed_app"))
    servers.append(plain_server(out, FLOOR, "floor_app"))  # lossd first: it sets the size
    r = Run(cfg, [s.name for s in servers])
    bare_n = GOAL_N if GOAL_N in cfg.sizes else max(cfg.sizes)
    s_all, y_all = make_data(max(cfg.sizes + cfg.lossd_only))
    limits = httpx.Limits(max_connections=len(servers), max_keepalive_connections=len(servers))
    # trust_env=False: a proxy from the environment must not carry loopback traffic
    with httpx.Client(timeout=120.0, trust_env=False, limits=limits) as client:
        try:
            log(f"starting {', '.join(s.name for s in servers)} ...")
            start_all(servers, client, cfg.startup_s)
            for s in servers:
                r.servers[s.name] = s.info(ready=True)
            for n in sorted(cfg.sizes + cfg.lossd_only):
                here = servers if n in cfg.sizes else servers[:1]
                for red in REDUCTIONS:
                    case = Case(n, red, make_body(s_all[:n], y_all[:n], red))
                    log(f"n={n:.0e} {red}: body {len(case.body) / 1e6:.3g} MB ...")
                    run_case(r, client, here, case, bare_n)
        finally:
            stop_all(servers, r.servers)
    return r


def run_case(r: Run, client: httpx.Client, servers: Sequence[Server], case: Case,
             bare_n: int) -> None:
    cfg = r.cfg
    cells = {s.name: r.cells.setdefault((s.name, case.n, case.reduction),
                                        Cell(s.name, case.n, case.reduction)) for s in servers}
    bare = None
    if case.n == bare_n:
        bare = r.bare[case.reduction] = Bare(case.n, case.reduction, len(case.body))
    for k in range(cfg.rounds):
        # alternate the order too: neither implementation always runs first
        for s in (servers if k % 2 == 0 else servers[::-1]):
            headers = JSON_HEADERS
            if s.name == FLOOR:  # lossd ran before it in round 0: answer as many bytes
                headers = {**JSON_HEADERS, "x-answer-bytes": str(cells[LOSSD].first_len)}
            run_round(client, s.url + "/loss", case.body, cells[s.name], cfg, headers)
            if bare is not None:  # spread over the case: the same load as the requests
                bare_samples(bare, case.body, lossd_answer(cells[LOSSD].first),
                             cfg.bare_samples)
    if PLAIN in cells and cells[PLAIN].first is not None:
        diff, note = agreement(cells[LOSSD].first, cells[PLAIN].first, case.reduction)
        r.agree[(case.n, case.reduction)] = (diff, note)
        if not diff <= AGREE_RTOL:
            r.errors.append(f"n={case.n} {case.reduction}: lossd and plain disagree, "
                            f"max relative difference {diff:.3g} > {AGREE_RTOL:g}")


def _speedup_note(r: Run, red: str) -> str:
    """Is the goal reachable at all? Compare the time it allows per request with what
    moving the bytes (floor) and the bare data cost take, whatever the server does."""
    p, f, b = r.cell(PLAIN, GOAL_N, red), r.cell(FLOOR, GOAL_N, red), r.bare.get(red)
    if p is None or f is None or b is None or b.n != GOAL_N:
        return ""
    allowed, floor = p.pct(50) / GOAL_SPEEDUP, f.pct(50) + b.median()
    return (f"{GOAL_SPEEDUP:g}x allows {allowed * 1e3:.2f} ms per request; floor + bare take "
            f"{floor * 1e3:.2f} ms (ceiling {p.pct(50) / floor:.1f}x with orjson-based decoding)")


def goal_checks(r: Run) -> list[Check]:
    checks = []
    for red in ("none", "mean"):
        x = r.ratio(GOAL_N, red)
        checks.append(Check(f"n=1e5 {red}: lossd req/s vs plain",
                            "not measured" if x is None else f"{x:.2f}x", f">= {GOAL_SPEEDUP:g}x",
                            None if x is None else x >= GOAL_SPEEDUP, _speedup_note(r, red)))
    for red in ("mean", "none"):
        x = r.ratio(SMALL_N, red)
        checks.append(Check(f"n=10 {red}: lossd req/s vs plain",
                            "not measured" if x is None else f"{x:.2f}x", ">= 1x",
                            None if x is None else x >= 1.0))
    for red in ("mean", "none"):
        b, c = r.bare.get(red), r.cell(LOSSD, GOAL_N, red)
        if b is None or c is None or b.n != GOAL_N:
            checks.append(Check(f"n=1e5 {red}: lossd e2e p50 / bare data cost", "not measured",
                                f"<= {GOAL_E2E:g}x", None))
            continue
        x = c.pct(50) / b.median()
        checks.append(Check(f"n=1e5 {red}: lossd e2e p50 / bare data cost", f"{x:.2f}x",
                            f"<= {GOAL_E2E:g}x", x <= GOAL_E2E,
                            f"p50 {c.pct(50) * 1e3:.2f} ms, bare {b.median() * 1e3:.2f} ms"))
    return checks


# --------------------------------------------------------------------------- output


def results_table(r: Run) -> str:
    body = []
    for (impl, n, red), c in sorted(r.cells.items(), key=lambda kv: (kv[0][1], kv[0][2],
                                                                     r.impls.index(kv[0][0]))):
        if c.times:
            body.append([impl, f"{n:.0e}", red, str(c.count), fmt(c.rps),
                         fmt(c.pct(50) * 1e3), fmt(c.pct(99) * 1e3)])
    legend = "\n".join(f"- {k}: {v}" for k, v in LEGEND.items() if k in r.impls)
    return (md_table(["implementation", "n", "reduction", "requests", "req/s", "p50 ms",
                      "p99 ms"], body)
            + f"\n\nSequential keep-alive requests from one httpx client (client time "
            f"included), {r.cfg.rounds} interleaved round(s) per case, at least "
            f"{r.cfg.budget_s:g} s and {r.cfg.min_requests} requests per cell (at most "
            f"{r.cfg.max_requests}). With few requests, p99 is close to the maximum.\n"
            + legend)


def ratio_table(r: Run) -> str:
    bases = [b for b in (PLAIN, PLAIN_TYPED) if b in r.impls]
    header = ["n", "reduction", *(f"req/s lossd / {b}" for b in bases),
              "p50 plain / lossd", "p50 above the floor: plain / lossd",
              "answers agree (max rel. diff)"]
    body = []
    for n in r.cfg.sizes:
        for red in REDUCTIONS:
            row = [f"{n:.0e}", red]
            for b in bases:
                x = r.ratio(n, red, b)
                row.append("n/a" if x is None else f"{x:.2f}")
            a, p = r.cell(LOSSD, n, red), r.cell(PLAIN, n, red)
            row.append("n/a" if a is None or p is None else f"{p.pct(50) / a.pct(50):.2f}")
            la, lp = r.above_floor(LOSSD, n, red), r.above_floor(PLAIN, n, red)
            row.append("n/a" if la is None or lp is None else
                       f"{lp / la:.2f} ({fmt(lp * 1e3)} / {fmt(la * 1e3)} ms)" if la > 0 else
                       "lossd at the floor")
            d = r.agree.get((n, red))
            row.append("n/a" if d is None else f"{'yes' if d[0] <= AGREE_RTOL else 'NO'} "
                       f"({d[0]:.1e})")
            body.append(row)
    return (md_table(header, body)
            + f"\n\nThe floor is the {FLOOR} row: the same request and response bytes through "
            "the same client and uvicorn, with no parsing; what is above it is each server's own "
            "work. Ratios of tiny differences (n = 10) are noisy.")


def bare_table(r: Run) -> str:
    body = []
    for red, b in r.bare.items():
        c, f = r.cell(LOSSD, b.n, red), r.cell(FLOOR, b.n, red)
        p50 = c.pct(50) if c else math.nan
        floor = f.pct(50) if f else math.nan
        body.append([f"{b.n:.0e}", red, f"{b.body_bytes / 1e6:.2f}", f"{b.answer_bytes / 1e6:.3f}",
                     fmt(b.median("loads") * 1e3), fmt(b.median("arrays") * 1e3),
                     fmt(b.median("dumps") * 1e3),
                     f"{fmt(b.median() * 1e3)} ({fmt(min(b.total) * 1e3)})", fmt(p50 * 1e3),
                     f"{p50 / b.median():.2f}", fmt(floor * 1e3),
                     fmt((p50 - floor - b.median()) * 1e3)])
    return (md_table(["n", "reduction", "body MB", "answer MB", "orjson.loads ms",
                      "np.array x2 ms", "orjson.dumps ms", "bare ms (min)", "lossd p50 ms",
                      "lossd p50 / bare", "floor p50 ms", "rest ms"], body)
            + "\n\nBare: medians of `orjson.loads(body)`, `np.array` of both lists and "
            "`orjson.dumps(answer, option=OPT_SERIALIZE_NUMPY)` of lossd's own answer "
            "(losses as an ndarray), timed in this process after every server's round, so "
            "under the same load as the requests (freeing the parsed lists is not timed); "
            "the minimum is what it costs undisturbed. Rest = lossd p50 - floor p50 - bare: lossd's work "
            "beyond moving the bytes and the bare data cost (kernel, validation, framework).")


def environment(r: Run, load0: tuple, load1: tuple, others: float) -> list[tuple[str, str]]:
    return http_environment(load0, load1, others, r.servers,
                            ("fastapi", "uvicorn", "pydantic", "httpx", "orjson", "numpy"))


def report(r: Run, checks: list[Check], env: list[tuple[str, str]], load0: tuple,
           footer: str) -> str:
    head = load_head("## lossd HTTP benchmark: POST /loss, binary cross-entropy on logits "
                     "(s ~ N(0, 3²), labels 0/1)", load0, "the server",
                     "Rerun when idle before judging.")
    sections = [head, "## Results", results_table(r), "## Ratios (same run)", ratio_table(r)]
    if r.bare:
        sections += ["## End-to-end vs the bare cost of the data", bare_table(r)]
    sections += ["## Goal checks", checks_table(checks)]
    if r.errors:
        sections += ["## Errors", "\n".join(f"- {e}" for e in r.errors)]
    sections += ["## Environment", md_table(["", ""], env), footer]
    return "\n\n".join(sections)


def to_json(r: Run, checks: list[Check], env: list[tuple[str, str]], load0: tuple,
            load1: tuple, quick: bool) -> dict:
    return {
        **json_head(quick, r.cfg, load0, load1,
                    [c.summary() for c in r.cells.values() if c.times]),
        "ratios": [{"n": n, "reduction": red, "base": b, "rps_ratio": r.ratio(n, red, b)}
                   for n in r.cfg.sizes for red in REDUCTIONS
                   for b in (PLAIN, PLAIN_TYPED) if b in r.impls],
        "bare": [b.summary() for b in r.bare.values()],
        "above_floor_p50_ms": [{"impl": i, "n": n, "reduction": red,
                                "ms": None if (x := r.above_floor(i, n, red)) is None else x * 1e3}
                               for i in r.impls if i != FLOOR
                               for n in r.cfg.sizes + r.cfg.lossd_only for red in REDUCTIONS],
        "agreement": [{"n": n, "reduction": red, "max_rel_diff": d}
                      for (n, red), (d, _) in r.agree.items()],
        "goals": goals_json(checks),
        "servers": r.servers,
        "environment": dict(env),
        "errors": r.errors,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="n up to 1000 and a few requests per case (smoke test, ~15 s)")
    ap.add_argument("--million", action="store_true",
                    help="also n = 10^6, lossd only (the plain app takes seconds per request)")
    ap.add_argument("--typed", action="store_true",
                    help="also measure the plain app with a typed response model")
    ap.add_argument("--no-lossd-access-log", action="store_true",
                    help="start lossd with LOSSD_ACCESS_LOG=false (default: as shipped, on)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out",
                    help="directory for service.md, service.json and the server logs")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    cfg = QUICK if args.quick else FULL
    if args.million:
        cfg = Config(**{**cfg.__dict__, "lossd_only": (10**6,)})
    args.out.mkdir(parents=True, exist_ok=True)

    load0 = load_at_start()
    t_start, cpu = time.perf_counter(), CpuMeter()
    r = run(cfg, args.out, args.typed, not args.no_lossd_access_log)
    load1 = os.getloadavg()
    others, _ = cpu.stop(servers_cpu_s(r.servers))
    checks = goal_checks(r)
    env = environment(r, load0, load1, others)
    text = report(r, checks, env, load0, footer_line(args.quick, t_start))
    write_report(args.out, "service", text, to_json(r, checks, env, load0, load1, args.quick))
    return exit_code(r.errors)


if __name__ == "__main__":
    sys.exit(main())
