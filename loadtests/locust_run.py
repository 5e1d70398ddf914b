"""One headless locust run of loadtests/locustfile.py as a subprocess: the command, the
CPU it and the server used, and its results read back from locust's own CSV files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import payloads
from .procs import REPO, CpuMeter, _die_with_parent, child_env
from .results import RunResult, read_run

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USER_CLASS = {payloads.SMALL: "SmallLoss", payloads.LARGE: "LargeLoss", payloads.GRAD: "Grad",
              payloads.OIP: "OipBinary", payloads.PARAMS: "GradParams"}
CLASS_KEY = {v: k for k, v in USER_CLASS.items()}


@dataclass
class Load:
    """What locust is asked to do."""

    users: int
    run_time_s: float
    processes: int = 1                  # locust worker processes (1: a single process)
    classes: Sequence[str] = payloads.CLASSES
    weights: dict[str, int] = field(default_factory=dict)  # class key -> weight
    fixed: dict[str, int] = field(default_factory=dict)    # class key -> fixed user count
    pace_ms: float | None = None        # None: each class's own pace
    budgets: str = ""
    extra: Sequence[str] = ()           # more locust options (payload sizes, ...)
    spawn_rate: float | None = None     # default: every user within a second

    @property
    def ramp_s(self) -> float:
        """Time added to locust's --run-time for starting the users (and building their
        payloads): statistics are reset once all are started, so the measured window is
        about run_time_s."""
        return 2.0 + self.users / (self.spawn_rate or max(1, self.users))

    def config_users(self) -> str | None:
        cfg = []
        for key in self.classes:
            entry: dict[str, object] = {}
            if key in self.weights:
                entry["weight"] = self.weights[key]
            if key in self.fixed:
                entry["fixed_count"] = self.fixed[key]
            if entry:
                cfg.append({"user_class_name": USER_CLASS[key], **entry})
        return json.dumps(cfg) if cfg else None


def locust_command(load: Load, host: str, prefix: Path) -> list[str]:
    """``python -m locust`` with the user classes first (``--config-users`` takes every
    argument after it), headless, CSV and HTML report at ``prefix``."""
    cmd = [sys.executable, "-m", "locust", *(USER_CLASS[k] for k in load.classes),
           "-f", str(LOCUSTFILE), "--headless", "-H", host,
           "-u", str(load.users), "-r", f"{load.spawn_rate or max(1, load.users):g}",
           "-t", f"{load.run_time_s + load.ramp_s:.0f}s", "--stop-timeout", "10",
           "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", "--reset-stats",
           "--exit-code-on-error", "1", "--logfile", f"{prefix}.log"]
    if load.processes > 1:
        cmd += ["--processes", str(load.processes)]
    if load.pace_ms is not None:
        cmd += ["--pace-ms", f"{load.pace_ms:g}"]
    if load.budgets:
        cmd += ["--budgets", load.budgets]
    cmd += list(load.extra)
    cfg = load.config_users()
    if cfg:
        cmd += ["--config-users", cfg]
    return cmd


def run(load: Load, host: str, out: Path, name: str, server_pid: int | None = None,
        at: Sequence[tuple[float, Callable[[], None]]] = (), token: str | None = None) -> RunResult:
    """Run locust to the end (bounded by its run time plus a grace period); ``at``:
    (seconds after the start, callback) pairs, e.g. memory samples of a soak."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / name
    cmd = locust_command(load, host, prefix)
    (out / f"{name}.cmd").write_text(" ".join(cmd) + "\n")
    Path(f"{prefix}_users.json").unlink(missing_ok=True)  # a stale one would rebase at once
    env = child_env({"LOSSD_API_TOKEN": token} if token else None)
    if not token:
        env.pop("LOSSD_API_TOKEN", None)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(f"{prefix}.stdout", "wb") as stdout:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    roots = {"client": proc.pid}
    if server_pid is not None:
        roots["server"] = server_pid
    meter = CpuMeter(roots).start()
    # locust resets its statistics once every user is started (and the locustfile then
    # writes <prefix>_users.json): the CPU figures cover the same window
    stop_watch = threading.Event()
    threading.Thread(target=_rebase_when, args=(Path(f"{prefix}_users.json"), meter, stop_watch),
                     daemon=True).start()
    timers = [threading.Timer(t, fn) for t, fn in at]
    for t in timers:
        t.start()
    try:
        code = proc.wait(timeout=load.run_time_s + load.ramp_s + 120)  # startup, stop-timeout
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    finally:
        for t in timers:
            t.cancel()
        stop_watch.set()
        cores = meter.stop()
    result = read_run(name, prefix, code, time.perf_counter() - t0, CLASS_KEY)
    result.cores = cores
    result.load = (load0, os.getloadavg())
    return result


def _rebase_when(path: Path, meter: CpuMeter, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        if path.exists():
            meter.rebase()
            return
