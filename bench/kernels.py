#!/usr/bin/env python
"""Kernel benchmark for lossd: mean binary cross-entropy on logits.

    python bench/kernels.py [--quick] [--out bench/out]

Compares ``kernels.loss`` (public API, Python overhead included) with NumPy, PyTorch,
scikit-learn and a parallel pass that only reads the inputs (the memory-bandwidth limit),
prints markdown tables (throughput, ratios, goal checks, environment) and writes
``<out>/kernels.png`` and ``<out>/kernels.md``.

The machine is shared and noisy: every figure is a median of samples taken in
interleaved rounds (all implementations of one size alternate), so ratios measured in
the same run are more trustworthy than absolute numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType

# bench/ is sys.path[0] until use_checkout() takes it off
import _common
from _common import (BENCH_DIR, CpuMeter, checks_table, cpu_model, footer_line, log, make_data,
                     md_table, use_checkout)

use_checkout()  # also NUMBA_CACHE_DIR: before numba is imported

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

Fn = Callable[[], object]
KIB = 1024

# Stable row labels: tests/test_bench_smoke.py looks for these in the table.
LOSSD, LOSSD_F32, LOSSD_GRAD = "lossd", "lossd float32", "lossd grad"
NP_BEST, NP_LAE, TORCH, SKLEARN, READ = (
    "NumPy best", "NumPy logaddexp", "PyTorch", "scikit-learn", "read pass")
LEGEND = {
    LOSSD: "`kernels.loss(s, y).loss`, float64 (public API incl. Python overhead)",
    LOSSD_F32: "`kernels.loss(s32, y32)`, the same data as float32",
    LOSSD_GRAD: "`kernels.grad(s, y)` (loss and d loss/ds), float64",
    NP_BEST: "`(np.maximum(s,0) - s*y + np.log1p(np.exp(-np.abs(s)))).mean()`",
    NP_LAE: "`(np.logaddexp(0, s) - s*y).mean()`",
    TORCH: "`F.binary_cross_entropy_with_logits` on `torch.from_numpy` tensors",
    SKLEARN: "`sklearn.metrics.log_loss(y, p)`; p = expit(s) precomputed, NOT timed",
    READ: "numba parallel pass summing s[i] + y[i] (reads both arrays: memory limit)",
}
PLOTTED = (LOSSD, NP_BEST, NP_LAE, TORCH, SKLEARN, READ)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    sample_s: float    # target duration of one sample (tiny calls are looped)
    min_samples: int
    max_samples: int
    budget_s: float    # per implementation and size: sample while under it (and max)
    passes: int        # sweeps over all sizes; a burst of load then spoils one sweep only
    logreg_n: int
    logreg_d: int
    beyond_n: int      # lossd vs the read pass at a size whose inputs exceed the L3

    @property
    def n_top(self) -> int:
        return max(self.sizes)


FULL = Config(sizes=tuple(10**k for k in range(1, 8)), sample_s=0.02, min_samples=12,
              max_samples=45, budget_s=1.2, passes=3, logreg_n=10**6, logreg_d=32, beyond_n=10**8)
QUICK = Config(sizes=tuple(10**k for k in range(1, 7)), sample_s=0.004, min_samples=3,
               max_samples=5, budget_s=0.05, passes=1, logreg_n=10**6, logreg_d=32, beyond_n=10**6)


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-call times (seconds) of one implementation at one size."""

    loops: int  # calls per sample
    samples: list[float] = field(default_factory=list)
    spent_s: float = 0.0

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: how noisy this cell was."""
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float((q3 - q1) / self.median)


def _sample(fn: Fn, loops: int, limit_s: float = math.inf) -> float:
    """Seconds per call over `loops` calls, cut short after limit_s: when a busy
    neighbour makes calls 100x slower than at calibration, one sample must not
    take minutes. Checked per chunk, so the clock is not read on every tiny call."""
    chunk = max(1, loops // 16)
    t0 = time.perf_counter_ns()
    limit = t0 + limit_s * 1e9
    done = 0
    while done < loops:
        for _ in range(min(chunk, loops - done)):
            fn()
        done += min(chunk, loops - done)
        if time.perf_counter_ns() > limit:
            break
    return (time.perf_counter_ns() - t0) / done / 1e9


def calibrate(fn: Fn, target_s: float) -> int:
    """Warm fn up, then pick how many calls make one sample last about target_s."""
    fn()  # first call: compilation, first-touch and allocator warm-up
    loops = 1
    while (per_call := _sample(fn, loops)) * loops < target_s / 5 and loops < 10**6:
        loops *= 10
    return max(1, math.ceil(target_s / per_call))


def calibrate_all(fns: dict[str, Fn], cfg: Config) -> dict[str, Timing]:
    return {k: Timing(calibrate(fn, cfg.sample_s)) for k, fn in fns.items()}


def collect(fns: dict[str, Fn], timings: dict[str, Timing], cfg: Config,
            share: float = 1.0) -> None:
    """Add samples in interleaved rounds (all fns alternate, so a burst of load hits
    them alike) until each has its share of cfg's sample counts and time budget."""
    lo, hi = math.ceil(cfg.min_samples * share), math.ceil(cfg.max_samples * share)

    def wants_more(t: Timing) -> bool:
        n = len(t.samples)
        return n < lo or (t.spent_s < cfg.budget_s * share and n < hi)

    gc.disable()  # as timeit does: a collection inside a sample is not the kernel's cost
    try:
        while active := [k for k, t in timings.items() if wants_more(t)]:
            for k in active:
                t = timings[k]
                t0 = time.perf_counter()
                t.samples.append(_sample(fns[k], t.loops, 10 * cfg.sample_s))
                t.spent_s += time.perf_counter() - t0
    finally:
        gc.enable()


def measure(fns: dict[str, Fn], cfg: Config) -> dict[str, Timing]:
    timings = calibrate_all(fns, cfg)
    collect(fns, timings, cfg)
    return timings


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    s: np.ndarray    # logits, float64, N(0, 3^2)
    y: np.ndarray    # labels in {0, 1}, float64
    s32: np.ndarray
    y32: np.ndarray
    p: np.ndarray    # expit(s) for scikit-learn, computed outside the timing

    @classmethod
    def make(cls, n: int, seed: int = 0) -> Data:
        from scipy.special import expit

        s, y = make_data(n, seed)
        y[:2] = (0.0, 1.0)  # log_loss refuses y with one class; n=10 could draw one
        return cls(s, y, s.astype(np.float32), y.astype(np.float32), expit(s))

    def head(self, n: int) -> Data:
        """The first n elements (contiguous views: no copies, same dtypes/layout)."""
        return Data(*(a[:n] for a in (self.s, self.y, self.s32, self.y32, self.p)))


@njit(parallel=True, fastmath={"contract", "reassoc", "nsz", "arcp"}, cache=True)
def read_pass(s: np.ndarray, y: np.ndarray) -> float:
    """Touch every element of both inputs once: no loss kernel can beat this."""
    acc = 0.0
    for i in prange(s.size):
        acc += s[i] + y[i]
    return acc


def numpy_best(s: np.ndarray, y: np.ndarray) -> float:
    return (np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))).mean()


def numpy_logaddexp(s: np.ndarray, y: np.ndarray) -> float:
    return (np.logaddexp(0, s) - s * y).mean()


def bind_all(d: Data, kernels: ModuleType | None) -> dict[str, Fn]:
    """Zero-argument calls to time, one per table row; setup work happens here."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import log_loss

    ts, ty = torch.from_numpy(d.s), torch.from_numpy(d.y)  # zero-copy views
    fns: dict[str, Fn] = {}
    if kernels is not None:
        fns[LOSSD] = lambda: kernels.loss(d.s, d.y).loss
        fns[LOSSD_F32] = lambda: kernels.loss(d.s32, d.y32).loss
        fns[LOSSD_GRAD] = lambda: kernels.grad(d.s, d.y).grad
    fns[NP_BEST] = lambda: numpy_best(d.s, d.y)
    fns[NP_LAE] = lambda: numpy_logaddexp(d.s, d.y)
    fns[TORCH] = lambda: F.binary_cross_entropy_with_logits(ts, ty)
    fns[SKLEARN] = lambda: log_loss(d.y, d.p)
    fns[READ] = lambda: read_pass(d.s, d.y)
    return fns


# --------------------------------------------------------------------------- lossd


def load_kernels() -> tuple[ModuleType | None, str]:
    """Import the package and prove one call works; on failure say why, don't crash."""
    try:
        from lossd import kernels

        kernels.loss(np.zeros(3), np.zeros(3))
        return kernels, ""
    except Exception as e:  # noqa: BLE001 - anything here means "lossd not usable yet"
        return None, f"{type(e).__name__}: {e}"


def warm_lossd(kernels: ModuleType, d: Data) -> None:
    """Compile the lossd signatures used here before any other parallel code runs,
    so lossd (not our read pass) is what starts numba's threading layer. Not
    kernels.warmup(): it compiles every loss kind, which this benchmark never calls."""
    kernels.loss(d.s, d.y)
    kernels.loss(d.s32, d.y32)
    kernels.grad(d.s, d.y)


# --------------------------------------------------------------------------- logreg


def numpy_logreg(X: np.ndarray, y: np.ndarray, w: np.ndarray,
                 b: float) -> tuple[float, np.ndarray, float]:
    """The NumPy + BLAS baseline: mean loss and gradients w.r.t. coef and intercept."""
    from scipy.special import expit

    z = X @ w + b
    r = expit(z) - y
    loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean()
    return loss, X.T @ r / y.size, r.mean()


def measure_logreg(kernels: ModuleType, cfg: Config) -> dict[str, Timing]:
    from scipy.special import expit

    rng = np.random.default_rng(1)
    n, d = cfg.logreg_n, cfg.logreg_d
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d) / math.sqrt(d)
    b = 0.1
    y = (rng.random(n) < expit(X @ w + b)).astype(np.float64)
    fns: dict[str, Fn] = {
        "lossd": lambda: kernels.logreg_grad(X, y, w, b),
        "numpy": lambda: numpy_logreg(X, y, w, b),
    }
    return measure(fns, cfg)


def l3_bytes() -> int | None:
    """The last-level cache of CPU 0 (sysfs), None where unknown."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": KIB, "M": KIB**2, "G": KIB**3}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def measure_beyond_cache(kernels: ModuleType, cfg: Config) -> dict[str, Timing]:
    """lossd and the read pass at cfg.beyond_n: on a CPU whose L3 holds the 10^7 inputs
    (160 MB), the read pass there measures the L3, not memory; this size does."""
    s, y = make_data(cfg.beyond_n, seed=2)
    read_pass(s[:10], y[:10])
    fns: dict[str, Fn] = {LOSSD: lambda: kernels.loss(s, y).loss, READ: lambda: read_pass(s, y)}
    return measure(fns, cfg)


# --------------------------------------------------------------------------- peak RSS

# ru_maxrss of a process includes the peak RSS of whatever process spawned it (Linux
# copies the parent's high-water mark at exec), so a child of this big process would
# start with a peak of hundreds of MB and hide any growth. A small Python launcher in
# between has a tiny peak of its own, which is all its child inherits.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
# Small warm-up inputs: one below and one above any serial/parallel cut-off, so that the
# measured call starts no thread pool and compiles or loads no code.
WARM_SIZES = (1000, 1 << 16)
RSS_DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class RssResult:
    n: int
    dtype: str
    before_kib: int   # ru_maxrss before the call
    after_kib: int    # ru_maxrss after the call
    rss_kib: int      # current RSS just before the call

    @property
    def growth_kib(self) -> int:
        return self.after_kib - self.before_kib

    @property
    def blind_kib(self) -> int:
        """Allocations up to this size could hide under an earlier, higher peak."""
        return max(0, self.before_kib - self.rss_kib)


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // KIB


def _reset_peak_rss() -> None:
    """Lower the high-water mark to the current RSS (Linux >= 4.0), so the warm-up's
    compilation peak cannot mask the call; if refused, `blind_kib` reports the mask."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _labelled_inputs(n: int, dtype: str, rng: np.random.Generator):
    # Filled in place: a temporary here would raise the peak and mask the kernel's own.
    s, y = np.empty(n, dtype), np.empty(n, dtype)
    rng.standard_normal(dtype=s.dtype, out=s)
    s *= 3
    rng.random(dtype=y.dtype, out=y)
    np.rint(y, out=y)
    return s, y


def rss_probe(n: int) -> list[RssResult]:
    """Runs in the fresh child: peak RSS growth of one kernels.loss call (mean) per
    dtype. All inputs exist and every signature is warm before the first reading."""
    kernels, why = load_kernels()
    if kernels is None:
        raise SystemExit(f"kernels not usable: {why}")
    rng = np.random.default_rng(0)
    inputs = {dt: _labelled_inputs(n, dt, rng) for dt in RSS_DTYPES}
    for s, y in inputs.values():
        for m in WARM_SIZES:
            kernels.loss(s[:m].copy(), y[:m].copy())
    results = []
    for dt, (s, y) in inputs.items():
        _reset_peak_rss()
        rss = _current_rss_kib()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kernels.loss(s, y, reduction="mean")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results.append(RssResult(n, dt, before, after, rss))
    return results


def measure_rss(n: int, timeout_s: float = 600) -> list[RssResult]:
    cmd = [sys.executable, "-c", LAUNCHER,
           sys.executable, str(Path(__file__).resolve()), "--rss-probe", str(n)]
    # Own session: on timeout the launcher *and* the probe it started are killed.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"RSS probe timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"RSS probe failed ({proc.returncode}): {err[-2000:]}")
    return [RssResult(**r) for r in json.loads(out.strip().splitlines()[-1])]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Row:
    """One implementation at one size."""

    impl: str
    n: int
    seconds: float   # median per call
    spread: float    # IQR / median
    samples: int

    @property
    def melem_s(self) -> float:
        return self.n / self.seconds / 1e6


class Check(_common.Check):
    """A goal of the kernels; SKIP, not n/a, when it could not be measured."""

    UNKNOWN = "SKIP"


class Results:
    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = {(r.impl, r.n): r for r in rows}

    def has(self, impl: str) -> bool:
        return any(k[0] == impl for k in self.rows)

    def thr(self, impl: str, n: int) -> float:
        return self.rows[impl, n].melem_s

    def ratio(self, a: str, b: str, n: int) -> float:
        """Throughput of a over b (equivalently time of b over a)."""
        return self.thr(a, n) / self.thr(b, n)

    def noise(self, impls: Sequence[str], n: int) -> str:
        """Name the cells behind a ratio whose samples were widely spread."""
        noisy = [self.rows[k, n] for k in impls if self.rows[k, n].spread > NOISY_SPREAD]
        return ", ".join(f"noisy: {r.impl} IQR {r.spread:.0%}" for r in noisy)


def run_throughput(data: Data, kernels: ModuleType | None, cfg: Config) -> list[Row]:
    fns = {n: bind_all(data.head(n), kernels) for n in cfg.sizes}
    timings = {n: calibrate_all(fns[n], cfg) for n in cfg.sizes}
    for p in range(1, cfg.passes + 1):
        for n in cfg.sizes:
            t0 = time.perf_counter()
            collect(fns[n], timings[n], cfg, share=p / cfg.passes)
            log(f"pass {p}/{cfg.passes}, n={n:.0e}: {time.perf_counter() - t0:.1f} s")
    return [Row(k, n, t.median, t.spread, len(t.samples))
            for n, ts in timings.items() for k, t in ts.items()]


# A cell whose interquartile range exceeds this fraction of its median is flagged.
NOISY_SPREAD = 0.25


def ratio_check(goal: str, value: float, lo: float | None = None,
                hi: float | None = None, note: str = "") -> Check:
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    target = f">= {lo:g}" if lo is not None else f"<= {hi:g}"
    return Check(goal, f"{value:.3g}x", target, ok, note)


def noisy_timings(timings: dict[str, Timing]) -> str:
    """", noisy: <impl> IQR <x>%" for each widely spread entry of a side measurement."""
    return "".join(f", noisy: {k} IQR {t.spread:.0%}" for k, t in timings.items()
                   if t.spread > NOISY_SPREAD)


def cell_check(res: Results, goal: str, a: str, b: str, n: int, **target: float) -> Check:
    """Goal on the throughput ratio a / b at size n, with a word on noisy cells."""
    return ratio_check(f"{goal} (n={n:.0e})", res.ratio(a, b, n), **target,
                       note=res.noise((a, b), n))


def goal_checks(res: Results, cfg: Config, logreg: dict[str, Timing] | None,
                rss: list[RssResult], missing: str,
                beyond: dict[str, Timing] | None = None) -> list[Check]:
    n = cfg.n_top
    if not res.has(LOSSD):
        return [Check("all lossd goals", "-", "-", None, f"kernels not usable: {missing}")]
    min_n = min(cfg.sizes, key=lambda m: res.ratio(LOSSD, NP_BEST, m))
    min_note = ", ".join(filter(None, [f"minimum at n={min_n:.0e}",
                                       res.noise((LOSSD, NP_BEST), min_n)]))
    checks = [
        cell_check(res, "lossd / NumPy best", LOSSD, NP_BEST, n, lo=8),
        cell_check(res, "lossd / PyTorch", LOSSD, TORCH, n, lo=8),
        cell_check(res, "lossd / read pass", LOSSD, READ, n, lo=0.5),
        *([] if beyond is None else [beyond_check(beyond, cfg)]),
        ratio_check("lossd / NumPy best, minimum over all n",
                    res.ratio(LOSSD, NP_BEST, min_n), lo=1, note=min_note),
        cell_check(res, "float32 / float64 throughput", LOSSD_F32, LOSSD, n, lo=1),
        # Throughput of loss over grad is the time of grad over loss.
        cell_check(res, "grad time / loss time", LOSSD, LOSSD_GRAD, n, hi=1.5),
    ]
    logreg_goal = f"logreg_grad vs NumPy+BLAS (N={cfg.logreg_n:.0e}, D={cfg.logreg_d})"
    if logreg is None:
        checks.append(Check(logreg_goal, "-", ">= 1.5", None, "kernels.logreg_grad missing"))
    else:
        ours, base = logreg["lossd"], logreg["numpy"]
        note = f"{ours.median * 1e3:.1f} ms vs {base.median * 1e3:.1f} ms"
        note += noisy_timings(logreg)
        checks.append(ratio_check(logreg_goal, base.median / ours.median, lo=1.5, note=note))
    for r in rss:
        note = f"maxrss {r.before_kib} -> {r.after_kib} KiB"
        if r.blind_kib > KIB:  # an earlier peak could hide up to this much
            note += f"; blind to the first {r.blind_kib} KiB"
        checks.append(Check(f"peak RSS growth, mean, n={r.n:.0e} {r.dtype}",
                            f"{r.growth_kib} KiB", "< 1024 KiB",
                            r.growth_kib < KIB and r.blind_kib <= KIB, note))
    return checks


def beyond_check(beyond: dict[str, Timing], cfg: Config) -> Check:
    ours, read = beyond[LOSSD], beyond[READ]
    l3 = l3_bytes()
    size = 16 * cfg.beyond_n
    where = ("" if l3 is None else
             f"inputs {size / KIB**2:.0f} MiB {'>' if size > l3 else '<='} L3 {l3 / KIB**2:.0f} MiB; ")
    note = (where + f"read pass {cfg.beyond_n / read.median / 1e6:.0f} Melem/s, "
            f"lossd {cfg.beyond_n / ours.median / 1e6:.0f}")
    note += noisy_timings(beyond)
    return ratio_check(f"lossd / read pass beyond the L3 (n={cfg.beyond_n:.0e})",
                       read.median / ours.median, lo=0.5, note=note)


# --------------------------------------------------------------------------- output


fmt = partial(_common.fmt, small=".2g")  # Melem/s of tiny n: 2 significant digits


def throughput_table(res: Results, cfg: Config) -> str:
    header = ["implementation", *(f"{n:.0e}" for n in cfg.sizes)]
    body = [[k, *(fmt(res.thr(k, n)) if (k, n) in res.rows else "n/a" for n in cfg.sizes)]
            for k in LEGEND]  # lossd rows say n/a when kernels is not usable
    noisiest = max(res.rows.values(), key=lambda r: r.spread)
    legend = "\n".join(f"- {k}: {v}" for k, v in LEGEND.items())
    return (md_table(header, body)
            + f"\n\nMelem/s (higher is better), median of {cfg.min_samples}-"
            f"{cfg.max_samples} samples per cell; noisiest cell: {noisiest.impl} at "
            f"n={noisiest.n:.0e}, IQR {noisiest.spread:.0%} of its median.\n{legend}")


def ratio_table(res: Results, cfg: Config) -> str:
    specs = [  # (label, ratio at n); throughput ratios, or a time ratio for grad
        ("lossd / NumPy best", lambda n: res.ratio(LOSSD, NP_BEST, n)),
        ("lossd / PyTorch", lambda n: res.ratio(LOSSD, TORCH, n)),
        ("lossd / read pass", lambda n: res.ratio(LOSSD, READ, n)),
        ("float32 / float64", lambda n: res.ratio(LOSSD_F32, LOSSD, n)),
        ("grad time / loss time", lambda n: res.ratio(LOSSD, LOSSD_GRAD, n)),
    ]
    header = ["ratio", *(f"{n:.0e}" for n in cfg.sizes)]
    return md_table(header, [[label, *(f"{f(n):.2f}" for n in cfg.sizes)]
                             for label, f in specs])


def environment(kernels: ModuleType | None,
                others: tuple[float, float]) -> list[tuple[str, str]]:
    import sklearn
    import threadpoolctl
    import torch

    try:
        layer = numba.threading_layer()  # only known after a parallel call
    except ValueError:
        layer = "not started"
    backend = next((ln.split(":", 1)[1].strip() for ln in
                    torch.__config__.parallel_info().splitlines()
                    if ln.startswith("ATen parallel backend")), "?")
    blas = ", ".join(f"{i['internal_api']}={i['num_threads']}"
                     for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    return [
        ("CPU", cpu_model(isa=True)),
        ("cores usable (affinity)", str(len(os.sched_getaffinity(0)))),
        ("Python", platform.python_version()),
        ("numba", f"{numba.__version__}, threading layer {layer}, "
                  f"{numba.get_num_threads()} threads"),
        ("numpy", f"{np.__version__}, BLAS threads: {blas}"),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} threads, {backend}"),
        ("scikit-learn", sklearn.__version__),
        ("kernels package", "importable" if kernels is not None else "NOT usable"),
        ("CPU used by other processes during the run",
         f"{others[0]:.2f} of {os.cpu_count()} cores on average "
         f"(hypervisor steal {others[1]:.2f})"),
    ]


def plot(res: Results, cfg: Config, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k in PLOTTED:
        ns = [n for n in cfg.sizes if (k, n) in res.rows]
        if ns:
            label = f"{k} (log_loss only)" if k == SKLEARN else k
            ax.plot(ns, [res.thr(k, n) for n in ns], marker="o", label=label,
                    lw=2.5 if k == LOSSD else 1.5, ls="--" if k == READ else "-")
    ax.set(xscale="log", yscale="log", xlabel="n (elements)",
           ylabel="throughput (Melem/s)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples, n up to 1e6 (smoke test, < 60 s)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out",
                    help="directory for kernels.png and kernels.md")
    ap.add_argument("--rss-probe", type=int, metavar="N", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


@dataclass
class Run:
    """Everything one benchmark run measured."""

    cfg: Config
    kernels: ModuleType | None
    missing: str  # why kernels is not usable, if it is not
    res: Results
    logreg: dict[str, Timing] | None = None
    rss: list[RssResult] = field(default_factory=list)
    beyond: dict[str, Timing] | None = None


def run(cfg: Config) -> Run:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # all cores, as numba uses
    kernels, missing = load_kernels()
    if kernels is None:
        log(f"WARNING: lossd rows and goals skipped, kernels not usable: {missing}")

    log(f"generating data (n={cfg.n_top:.0e}) ...")
    data = Data.make(cfg.n_top)
    if kernels is not None:
        warm_lossd(kernels, data)
    r = Run(cfg, kernels, missing, Results(run_throughput(data, kernels, cfg)))
    del data  # free ~0.3 GB before the logreg inputs

    if kernels is not None:
        if hasattr(kernels, "logreg_grad"):  # the API is still being written
            log("logreg_grad ...")
            r.logreg = measure_logreg(kernels, cfg)
        log(f"lossd and the read pass at n={cfg.beyond_n:.0e} ...")
        r.beyond = measure_beyond_cache(kernels, cfg)
        log("peak RSS probe ...")
        r.rss = measure_rss(cfg.n_top)
    return r


# Above this many cores busy with other work, say that 2-thread figures are pessimistic.
BUSY_WARNING_CORES = 0.25


def report(r: Run, others: tuple[float, float], footer: str) -> str:
    warn = (f"**Warning: other processes used {others[0]:.2f} cores on average during this "
            "run; multi-threaded rows (lossd, PyTorch above all, read pass, BLAS) are "
            "pessimistic. Rerun on a quiet machine before judging the goals.**")
    sections = [
        "## Throughput: mean binary cross-entropy on logits, s ~ N(0, 3²), labels 0/1, "
        "float64 unless noted",
        throughput_table(r.res, r.cfg),
    ]
    if r.kernels is not None:
        sections += ["## Ratios by n (throughput ratios; grad: time ratio)",
                     ratio_table(r.res, r.cfg)]
    sections += ["## Goal checks (ratios measured in this run)",
                 *([warn] if others[0] > BUSY_WARNING_CORES else []),
                 checks_table(goal_checks(r.res, r.cfg, r.logreg, r.rss, r.missing, r.beyond)),
                 "## Environment",
                 md_table(["", ""], environment(r.kernels, others)),
                 footer]
    return "\n\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_probe:  # internal: we are the fresh child of measure_rss
        print(json.dumps([r.__dict__ for r in rss_probe(args.rss_probe)]))
        return 0

    cfg = QUICK if args.quick else FULL
    t_start, cpu = time.perf_counter(), CpuMeter(children=True)  # the RSS probe is ours
    result = run(cfg)
    text = report(result, cpu.stop(), footer_line(args.quick, t_start))
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.md").write_text(text + "\n")
    plot(result.res, cfg, args.out / "kernels.png",
         f"mean BCE on logits, float64 — {cpu_model(isa=True)}")
    log(f"wrote {args.out / 'kernels.png'} and {args.out / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
