"""The processes of a load test: lossd itself (started here or not), and what the server
and the load generator cost in CPU and memory while it runs.

On a 2-core machine the load generator competes with the server for the same cores, so
every run reports the cores each side used: a figure is only about the server when the
client left it room.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this process dies, even by SIGKILL, so no
    server or generator outlives a killed load test."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the checkout first on the path and the Makefile's Numba cache
    (servers and generators load compiled kernels instead of compiling them)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    env.update(extra or {})
    return env


@dataclass
class LossdServer:
    """``lossd serve`` on 127.0.0.1 and a free port, its output in ``log_path``."""

    workers: int
    log_path: Path
    token: str | None = None
    access_log: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        exe = Path(sys.executable).parent / "lossd"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "lossd"]
        return [*base, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--log-level", "warning"]

    def start(self, timeout_s: float = 600.0) -> None:
        import httpx

        env = {k: v for k, v in child_env().items() if not k.startswith("LOSSD_")}
        env["LOSSD_ACCESS_LOG"] = "true" if self.access_log else "false"
        if self.token:
            env["LOSSD_API_TOKEN"] = self.token
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        deadline = t0 + timeout_s
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"lossd exited with code {self.proc.returncode}; log "
                                       f"{self.log_path}:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        self.startup_s = time.perf_counter() - t0
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"lossd not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's spawned workers, or the main
        process itself when there is one worker."""
        if self.proc is None:
            return []
        return worker_pids(self.proc.pid, self.workers)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def worker_pids(pid: int, workers: int) -> list[int]:
    """Request-serving processes of the server ``pid``: itself when it has one worker
    (its spawned child is then its large lane), else its spawned children (uvicorn's
    workers)."""
    if workers == 1:
        return [pid]
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    spawned = []
    for k in kids:
        try:
            if "spawn_main" in " ".join(k.cmdline()):
                spawned.append(k.pid)
        except psutil.Error:
            pass
    return sorted(spawned)


def rss_mib(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


class CpuMeter:
    """CPU seconds of process trees (a server with its workers, a generator with its
    forked workers), sampled while they run so that children that exit still count, and
    of the whole machine, over one run."""

    def __init__(self, roots: dict[str, int], interval_s: float = 0.5) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self._last: dict[str, dict[int, float]] = {name: {} for name in roots}
        self._base: dict[str, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)

    def _sample(self) -> None:
        for name, root in self.roots.items():
            try:
                procs = [psutil.Process(root)]
                procs += procs[0].children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    self._last[name][p.pid] = t.user + t.system
                except psutil.Error:
                    pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> "CpuMeter":
        self.rebase()
        self._thread.start()
        return self

    def rebase(self) -> None:
        """Count from now on (e.g. once the load generator has started every user)."""
        self._sample()
        self._base = {name: dict(d) for name, d in self._last.items()}
        self._t0 = time.perf_counter()
        c = psutil.cpu_times()
        self._busy0 = c.user + c.nice + c.system + c.irq + c.softirq

    def stop(self) -> dict[str, float]:
        """Cores used on average by each tree, and by everything else ("others")."""
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.perf_counter() - self._t0
        c = psutil.cpu_times()
        busy = c.user + c.nice + c.system + c.irq + c.softirq - self._busy0
        cores = {}
        for name, last in self._last.items():
            base = self._base.get(name, {})
            cores[name] = sum(v - base.get(pid, 0.0) for pid, v in last.items()) / wall
        cores["others"] = max(0.0, busy / wall - sum(cores.values()))
        return cores
