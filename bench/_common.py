"""What the benchmarks in bench/ share: running against the checkout, markdown output,
the machine's load and CPU, server subprocesses, and the raw ASGI apps' plumbing.

The scripts run as ``python bench/<name>.py``, so bench/ is ``sys.path[0]`` and they
import this as ``_common``, then call ``use_checkout()``; bench/plain_app.py, which
uvicorn imports as ``bench.plain_app``, imports it as ``bench._common``. Only the
standard library and NumPy are imported here at module level: the scripts import this
before ``use_checkout()`` has set NUMBA_CACHE_DIR, and the floor server must start fast.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# 1-minute load above this on 2 cores: the figures of an HTTP benchmark are pessimistic
BUSY_LOAD = 0.5


def use_checkout() -> None:
    """Import this checkout's `lossd` (its `lossd.kernels` and `lossd.service` come from
    the editable install that `make bench` makes), and keep bench/ off sys.path so that
    its scripts never stand in for packages. Also the
    Makefile's NUMBA_CACHE_DIR, before numba is imported; servers inherit it and load
    their compiled kernels from the cache instead of compiling at every start."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))


def log(msg: str) -> None:
    """Progress to stderr: stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits s ~ N(0, 3²) and labels 0/1, both float64: the input of every benchmark."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 3.0, n)
    y = (rng.random(n) < 0.5).astype(np.float64)
    return s, y


# --------------------------------------------------------------------------- output


def fmt(x: float, small: str = ".3f") -> str:
    """A figure with about 3 significant digits; `small` formats those below 0.1."""
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:{small}}"


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


@dataclass(frozen=True)
class Check:
    """One goal of a benchmark and how this run fared against it."""

    goal: str
    measured: str
    target: str
    ok: bool | None  # None: not measured in this run
    note: str = ""
    UNKNOWN: ClassVar[str] = "n/a"  # the verdict when ok is None

    @property
    def verdict(self) -> str:
        return self.UNKNOWN if self.ok is None else "PASS" if self.ok else "FAIL"


class Latencies:
    """Statistics of a cell's ``times``: the latencies (seconds) of its sequential requests."""

    times: list[float]

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def rps(self) -> float:
        """Sequential requests per second: requests over the time spent in them."""
        return len(self.times) / sum(self.times)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.times, q))

    def latency_summary(self) -> dict[str, float]:
        """p50, p90, p99, min, max and mean in milliseconds."""
        return {**{f"p{q}_ms": self.pct(q) * 1e3 for q in (50, 90, 99)},
                "min_ms": min(self.times) * 1e3, "max_ms": max(self.times) * 1e3,
                "mean_ms": float(np.mean(self.times)) * 1e3}


def checks_table(checks: Sequence[Check]) -> str:
    return md_table(["goal", "measured", "target", "result", "note"],
                    [[c.goal, c.measured, c.target, c.verdict, c.note] for c in checks])


def goals_json(checks: Sequence[Check]) -> list[dict[str, str]]:
    return [{"goal": c.goal, "measured": c.measured, "target": c.target, "result": c.verdict,
             "note": c.note} for c in checks]


def json_head(quick: bool, cfg: Any, load0: Sequence[float], load1: Sequence[float],
              cells: list[dict]) -> dict:
    """The keys an HTTP benchmark's JSON starts with: the run's kind, config, load and
    the summaries of the measured cells."""
    return {"quick": quick, "config": cfg.__dict__, "load_average_start": load0,
            "load_average_end": load1, "cells": cells}


def write_report(out: Path, stem: str, text: str, data: dict) -> None:
    """Print the markdown report and write it and the JSON as <out>/<stem>.md, .json."""
    print(text)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    log(f"wrote {out / f'{stem}.md'} and {out / f'{stem}.json'}")


def footer_line(quick: bool, t_start: float) -> str:
    """A report's last line: which kind of run, and how long it took since t_start."""
    return (f"_{'quick' if quick else 'full'} run, measured in "
            f"{time.perf_counter() - t_start:.0f} s_")


def exit_code(errors: Sequence[str]) -> int:
    """The script's exit status: 1, with the errors repeated on stderr, if there were any."""
    if errors:
        log("ERRORS:\n" + "\n".join(errors))
        return 1
    return 0


# --------------------------------------------------------------------------- machine


def cpu_model(isa: bool = False) -> str:
    """The CPU's model name, with its widest vector ISA if asked (what numba targets)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [ln.split(":", 1)[1].strip() for ln in info.splitlines()
             if ln.startswith("model name")]
    name = names[0] if names else platform.processor()
    if not isa:
        return name
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    widest = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    return f"{name} ({widest})"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def loads_text(load: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def load_at_start() -> tuple[float, float, float]:
    """The load average now, logged, with a warning when the machine is already busy."""
    load0 = os.getloadavg()
    log(f"load average at start: {loads_text(load0)}")
    if load0[0] > BUSY_LOAD:
        log("WARNING: the machine is busy; the figures will be pessimistic")
    return load0


def load_head(title: str, load0: Sequence[float], who: str, advice: str) -> str:
    """A report's first section: the title, the load at start and, if the machine was
    busy, a warning that `who` competed with it, then `advice`."""
    head = f"{title}\n\nLoad average at start: {loads_text(load0)} on {cores()} cores."
    if load0[0] > BUSY_LOAD:
        head += (f"\n\n**Warning: the machine was busy at the start (1-minute load "
                 f"{load0[0]:.2f}); on {cores()} cores the client and {who} compete with "
                 f"it and absolute figures are pessimistic. {advice}**")
    return head


class CpuMeter:
    """CPU time other processes used during the run: on 2 cores, one busy neighbour
    halves what 2-thread code or a client and a server get."""

    def __init__(self, children: bool = False) -> None:
        # children: count reaped child processes as ours (not for servers whose CPU
        # time is passed to stop(): reaped, they would count twice)
        self.children = children
        self.start = self._snapshot()

    def _own(self) -> float:
        who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if self.children else (
            resource.RUSAGE_SELF,)
        return sum(getattr(resource.getrusage(w), f) for f in ("ru_utime", "ru_stime")
                   for w in who)

    def _snapshot(self) -> tuple[float, float, float, float]:
        """(wall clock, CPU s the machine was busy, CPU s of ours, CPU s stolen by the
        hypervisor); the machine's figures are nan without psutil."""
        try:
            import psutil
        except ImportError:
            return time.perf_counter(), math.nan, self._own(), math.nan
        c = psutil.cpu_times()
        busy = c.user + c.nice + c.system + c.irq + c.softirq
        return time.perf_counter(), busy, self._own(), getattr(c, "steal", 0.0)

    def stop(self, servers_cpu_s: float = 0.0) -> tuple[float, float]:
        """(cores used by other processes, cores stolen by the hypervisor), averaged over
        the run; servers_cpu_s: CPU time of our servers, not counted as others'."""
        (t0, b0, o0, s0), (t1, b1, o1, s1) = self.start, self._snapshot()
        wall = t1 - t0
        return max(0.0, (b1 - b0) - (o1 - o0 + servers_cpu_s)) / wall, (s1 - s0) / wall


def versions(*modules: str) -> str:
    """`name version` of each module, for the environment table."""
    return ", ".join(f"{m} {importlib.import_module(m).__version__}" for m in modules)


def http_environment(load0: Sequence[float], load1: Sequence[float], others: float,
                     servers: dict[str, dict], modules: Sequence[str]) -> list[tuple[str, str]]:
    """The environment rows of an HTTP benchmark: CPU, load, other processes' CPU use,
    versions of `modules`, and how each server was started."""
    rows = [
        ("CPU", f"{cpu_model()}, {cores()} cores usable"),
        ("load average at start (1, 5, 15 min)", loads_text(load0)),
        ("load average at end", loads_text(load1)),
        ("CPU used by other processes during the run",
         "unknown (no psutil)" if math.isnan(others) else f"{others:.2f} of {cores()} cores"),
        ("Python", platform.python_version()),
        ("versions", versions(*modules)),
    ]
    for name, info in servers.items():
        rows.append((f"{name} server", f"`{info['cmd']}`, ready after {info['startup_s']:.1f} s"
                     + (f", {info['cpu_s']:.1f} CPU s in all" if "cpu_s" in info else "")))
    return rows


# --------------------------------------------------------------------------- servers


class BadResponse(RuntimeError):
    """A server answered other than HTTP 200."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when this benchmark dies, even by SIGKILL
    (a test timeout), so no server outlives it holding a port and a core."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_on_sigterm() -> None:
    """SIGTERM (a CI timeout) must still reach the finally that stops the servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@dataclass
class Server:
    """A server subprocess on a port of its own, polled until ready."""

    name: str
    cmd: list[str]
    ready_path: str
    log_path: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen | None = None
    ready_info: object = None  # the readiness answer's JSON, if it had a body
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)

    def poll_ready(self, client: Any) -> bool:
        """One readiness request with an httpx.Client; raises if the server has exited."""
        import httpx  # here: the kernel benchmark starts no server

        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before "
                               f"it was ready; log {self.log_path}:\n{self.log_tail()}")
        try:
            r = client.get(self.url + self.ready_path, timeout=2.0)
        except httpx.TransportError:
            return False
        if r.status_code == 200:
            self.ready_info = r.json() if r.content else None
            self.startup_s = time.perf_counter() - self._t0
            return True
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def info(self, ready: bool = False) -> dict:
        """How it was started, for the report and the JSON (with the readiness answer
        if asked; keys in the order the reports have always had)."""
        d: dict = {"cmd": " ".join(self.cmd), "startup_s": self.startup_s}
        if ready:
            d["ready"] = self.ready_info
        d["log"] = str(self.log_path)
        return d

    def cpu_s(self) -> float:
        """CPU seconds the server used so far (0 if psutil is missing or it is gone)."""
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except Exception:  # noqa: BLE001 - only used for the load report
            return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


def child_env() -> dict[str, str]:
    """The environment of a server: the caller's LOSSD_* variables (a token, a port,
    threads) must not change the run, and the checkout comes first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def lossd_server(log_path: Path, access_log: bool, extra: Sequence[str] = ()) -> Server:
    """`lossd serve` with 1 worker on a free port; `extra` arguments go last."""
    port = free_port()
    exe = Path(sys.executable).parent / "lossd"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "lossd"]
    env = child_env()
    env["LOSSD_ACCESS_LOG"] = "true" if access_log else "false"
    cmd = [*base, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--log-level", "warning", *extra]
    return Server("lossd", cmd, "/readyz", log_path, env, port)


def start_all(servers: Sequence[Server], client: Any, timeout_s: float) -> None:
    """Start every server, then poll them all until ready (they start in parallel)."""
    for s in servers:
        s.start()
    waiting = list(servers)
    deadline = time.perf_counter() + timeout_s
    while waiting:
        waiting = [s for s in waiting if not s.poll_ready(client)]
        if waiting and time.perf_counter() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise RuntimeError(f"not ready after {timeout_s:.0f} s: {names}\n"
                               + "\n".join(s.log_tail() for s in waiting))
        if waiting:
            time.sleep(0.1)
    for s in servers:
        log(f"{s.name} ready on {s.url} after {s.startup_s:.1f} s")


def servers_cpu_s(infos: dict[str, dict]) -> float:
    """CPU seconds of all servers, as stop_all() recorded them."""
    return sum(info.get("cpu_s", 0.0) for info in infos.values())


def stop_all(servers: Sequence[Server], infos: dict[str, dict]) -> None:
    """Record the CPU time of every started server in `infos` (startup included), then
    stop them all."""
    for s in servers:
        if s.name in infos:
            infos[s.name]["cpu_s"] = s.cpu_s()
        s.stop()


# --------------------------------------------------------------------------- ASGI


async def asgi_lifespan(receive, send) -> None:
    """Answer the lifespan protocol of a raw ASGI app, which has nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def receive_body(receive, keep: bool) -> list[bytes] | None:
    """Receive every chunk of a request body; the chunks if `keep` (else an empty list),
    None if the client disconnected first."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if keep:
            chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return chunks
