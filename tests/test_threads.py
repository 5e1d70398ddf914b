"""Concurrent callers: kernels.loss / grad / logreg_grad from 16 Python threads at once.

Every concurrent result must equal (exactly) the single-threaded result of the same call,
including the ValueError message for bad inputs, and the process must not abort (Numba's
workqueue threading layer aborts on concurrent parallel launches; ours must not).

* test_threads_subprocess: a fresh interpreter runs 16 threads x 20 calls *first* (so
  lazy compilation / cache loading races too), then the same calls one by one, and
  compares. Run as a subprocess so that an abort or a hang is a clean test failure
  (bounded by a timeout) instead of taking pytest down.
* test_threads_in_process: a smaller run inside pytest's own process, where torch, jax
  and the other test modules' thread pools are loaded too.

Run `python tests/test_threads.py --worker` to execute the subprocess part by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_THREADS = 16
CALLS_PER_THREAD = 20
SUBPROCESS_TIMEOUT = 150.0  # seconds for the whole subprocess run (normally ~10 s)
THREAD_TIMEOUT = 90.0

OPTION_SETS = [
    ("loss", "logits", dict()),
    ("grad", "logits", dict(reduction="none")),
    ("loss", "logits", dict(reduction="sum", weighted=True)),
    ("grad", "probabilities", dict(eps=1e-7, weighted=True)),
    ("loss", "probabilities", dict(loss="focal", reduction="none")),
    ("grad", "margins", dict(loss="hinge", reduction="sum")),
    ("loss", "logits", dict(loss="modified_huber", weighted=True, quantiles=(0.5, 0.9))),
    ("grad", "logits2d", dict(reduction="none", pos_weight="columns", weighted=True)),
    ("grad", "logits", dict(loss="focal", alpha=0.25, gamma=1.5, quantiles=(0.999,))),
    ("loss", "probabilities", dict(loss="squared_error", label_smoothing=0.1)),
    ("grad", "logits", dict(loss="exponential", reduction="mean", weighted=True)),
    ("loss", "margins", dict(loss="zero_one")),
    ("grad", "logits2d", dict(label_smoothing=0.2, pos_weight=2.0)),
    ("loss", "probabilities", dict(reduction="sum")),
]


def build_cases(seed: int = 1234, n_cases: int = 42):
    """Deterministic list of (fn_name, args, kwargs): sizes 10 .. 200_000 (log-uniform,
    both ends included), every option set, logreg_grad calls and a few bad inputs."""
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.round(10 ** rng.uniform(1, np.log10(200_000), n_cases)).astype(int))
    sizes = [10, 200_000] + [int(s) for s in sizes]
    cases = []
    for i, n in enumerate(sizes):
        fn, inp, opts = OPTION_SETS[i % len(OPTION_SETS)]
        opts = dict(opts)
        shape = (max(1, n // 4), 4) if inp == "logits2d" else (n,)
        rows = shape[0]
        if inp == "probabilities":
            x = rng.random(shape)
            x[: max(1, n // 100)] = rng.choice([0.0, 1.0, 1e-60], size=max(1, n // 100))
        else:
            x = rng.normal(0.0, 5.0, size=shape)
            x.flat[: max(1, n // 200)] = rng.choice([np.inf, -np.inf, 800.0, -800.0], size=max(1, n // 200))
        y = (rng.random(shape) < 0.4).astype(np.float64)
        if inp == "margins":
            y = 2 * y - 1
        elif opts.get("loss", "cross_entropy") in ("cross_entropy", "focal", "squared_error") \
                and "label_smoothing" not in opts and i % 2 == 0:
            y = rng.random(shape)  # soft labels
        kw = {k: v for k, v in opts.items() if k != "weighted"}
        kw["input"] = "logits" if inp == "logits2d" else inp
        if opts.get("weighted"):
            kw["sample_weight"] = rng.uniform(0.0, 2.0, size=rows)
        if kw.get("pos_weight") == "columns":
            kw["pos_weight"] = rng.uniform(0.5, 3.0, size=shape[1])
        cases.append((fn, (x, y), kw))
    # logreg_grad
    for n, d in [(10, 1), (1000, 5), (30_000, 8), (100_000, 3), (200_000, 2)]:
        X = rng.normal(size=(n, d))
        yl = (rng.random(n) < 0.5).astype(np.float64)
        coef = rng.normal(size=d)
        cases.append(("logreg_grad", (X, yl, coef, 0.3), {}))
        cases.append(("logreg_grad", (X, yl, coef, -0.1),
                      {"sample_weight": rng.uniform(0.0, 2.0, size=n), "l2": 0.5}))
    # bad inputs: the error (and its first index) must not depend on concurrency
    n = 150_000
    s = rng.normal(size=n)
    y = (rng.random(n) < 0.5).astype(np.float64)
    s_bad = s.copy()
    s_bad[[140_000, 77_777, 100_001]] = np.nan
    y_bad = y.copy()
    y_bad[[120_000, 90_001]] = 2.0
    cases.append(("loss", (s_bad, y), {}))
    cases.append(("grad", (s, y_bad), {"loss": "hinge"}))
    cases.append(("loss", (s, y[:-1]), {}))
    cases.append(("grad", (s, y), {"reduction": "avg"}))
    return cases


def outcome(kernels, case):
    """A call's result as plain data: ("error", message) or ("ok", {field: value})."""
    fn, args, kw = case
    try:
        r = getattr(kernels, fn)(*args, **kw)
    except ValueError as exc:
        return ("error", str(exc))
    out = {}
    for name in ("loss", "losses", "grad", "coef", "intercept", "stats"):
        if hasattr(r, name):
            v = getattr(r, name)
            out[name] = np.array(v, copy=True) if isinstance(v, np.ndarray) else v
    return ("ok", out)


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_value(a[k], b[k]) for k in a))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def diff(a, b) -> str | None:
    """None when two outcomes are exactly equal, else a short description."""
    if a[0] != b[0]:
        return f"{a[0]} vs {b[0]}: {str(a[1])[:200]} / {str(b[1])[:200]}"
    if a[0] == "error":
        return None if a[1] == b[1] else f"message {a[1]!r} vs {b[1]!r}"
    for k in a[1].keys() | b[1].keys():
        if k not in a[1] or k not in b[1] or not _same_value(a[1][k], b[1][k]):
            va, vb = a[1].get(k), b[1].get(k)
            if isinstance(va, np.ndarray) and isinstance(vb, np.ndarray) and va.shape == vb.shape:
                bad = np.flatnonzero(~((va == vb) | (np.isnan(va) & np.isnan(vb))).ravel())
                return f"{k}: {bad.size} elements differ, first flat index {bad[:1]}"
            return f"{k}: {str(va)[:200]} vs {str(vb)[:200]}"
    return None


def schedule(n_cases, n_threads, calls, seed=99):
    """Which case each thread runs, in order: every case is run by several threads,
    the largest ones by many threads at the same time."""
    rng = np.random.default_rng(seed)
    return [[int(c) for c in rng.integers(0, n_cases, size=calls)] for _ in range(n_threads)]


def run_concurrently(kernels, cases, n_threads, calls, timeout):
    """n_threads threads start together (barrier) and run their schedule.
    Returns ({(thread, call): outcome}, errors, elapsed); raises on timeout."""
    plan = schedule(len(cases), n_threads, calls)
    barrier = threading.Barrier(n_threads, timeout=timeout)

    def work(t):
        barrier.wait()
        return [(t, j, c, outcome(kernels, cases[c])) for j, c in enumerate(plan[t])]

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="lossd-test")
    futs = [pool.submit(work, t) for t in range(n_threads)]
    done, not_done = wait(futs, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {n_threads} threads still running after {timeout} s")
    results = []
    for f in futs:
        results.extend(f.result())  # re-raises anything but ValueError (already captured)
    return results, time.perf_counter() - t0


def compare(kernels, cases, results, expected=None):
    if expected is None:
        expected = [outcome(kernels, c) for c in cases]
    mismatches = []
    for t, j, c, got in results:
        d = diff(got, expected[c])
        if d is not None:
            fn, args, kw = cases[c]
            mismatches.append(f"thread {t} call {j} case {c} ({fn}, shape {np.shape(args[0])}, "
                              f"{sorted(kw)}): {d}")
    return mismatches, expected


def worker_main() -> int:
    """Subprocess entry point: concurrent first (cold), sequential after; JSON summary."""
    sys.path.insert(0, str(ROOT))
    from lossd import kernels

    cases = build_cases()
    results, elapsed = run_concurrently(kernels, cases, N_THREADS, CALLS_PER_THREAD, THREAD_TIMEOUT)
    mismatches, expected = compare(kernels, cases, results)
    # and once more, now warm, against the same expectations
    results2, elapsed2 = run_concurrently(kernels, cases, N_THREADS, CALLS_PER_THREAD // 2, THREAD_TIMEOUT)
    mismatches2, _ = compare(kernels, cases, results2, expected)
    import numba

    summary = {
        "threading_layer": numba.threading_layer(),
        "calls": len(results) + len(results2),
        "cases": len(cases),
        "errors_expected": sum(e[0] == "error" for e in expected),
        "elapsed_cold": elapsed,
        "elapsed_warm": elapsed2,
        "mismatches": (mismatches + mismatches2)[:20],
        "n_mismatches": len(mismatches) + len(mismatches2),
    }
    print("SUMMARY " + json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------- the tests

def test_threads_subprocess():
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"concurrent run did not finish in {SUBPROCESS_TIMEOUT} s "
                             f"(deadlock?); stderr tail: {str(exc.stderr)[-2000:]}") from None
    assert proc.returncode == 0, (f"worker exited with {proc.returncode} (negative = signal, e.g. "
                                  f"-6 abort); stderr tail:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert line, f"no summary; stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    summary = json.loads(line[-1][len("SUMMARY "):])
    assert summary["calls"] == N_THREADS * (CALLS_PER_THREAD + CALLS_PER_THREAD // 2)
    assert summary["errors_expected"] == 4, summary
    assert summary["n_mismatches"] == 0, (f"{summary['n_mismatches']} concurrent results differ from the "
                                          f"sequential ones (threading layer "
                                          f"{summary['threading_layer']}):\n" + "\n".join(summary["mismatches"]))
    assert "Terminating" not in proc.stderr and "Concurrent access" not in proc.stderr, proc.stderr[-2000:]


def test_threads_in_process():
    from lossd import kernels

    cases = build_cases(seed=777, n_cases=24)
    expected = [outcome(kernels, c) for c in cases]  # single-threaded first
    # sanity: the expected outcomes are real results (and the bad inputs really fail)
    assert sum(e[0] == "error" for e in expected) == 4
    assert all(e[0] == "ok" for e in expected[:-4])
    results, elapsed = run_concurrently(kernels, cases, N_THREADS, 8, THREAD_TIMEOUT)
    assert len(results) == N_THREADS * 8
    mismatches, _ = compare(kernels, cases, results, expected)
    assert not mismatches, "\n".join(mismatches[:20])


def test_error_messages_under_concurrency_name_first_index():
    """The four bad-input cases give the documented messages (first offending index)."""
    from lossd import kernels

    cases = build_cases(seed=5, n_cases=3)[-4:]
    msgs = [outcome(kernels, c) for c in cases]
    assert all(m[0] == "error" for m in msgs), msgs
    assert "predictions[77777] is NaN" in msgs[0][1]
    assert "labels[90001] = 2 is not in {0, 1}" in msgs[1][1]
    assert "predictions has 150000 rows, labels 149999" in msgs[2][1]
    assert "reduction" in msgs[3][1] and "avg" in msgs[3][1]
    results, _ = run_concurrently(kernels, cases, N_THREADS, 4, THREAD_TIMEOUT)
    for t, j, c, got in results:
        assert got == msgs[c], (t, j, c, got, msgs[c])


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main())
    print(__doc__)


def test_set_threads_changes_the_count_not_the_bits():
    import numba
    import pytest

    from lossd import kernels

    rng = np.random.default_rng(3)
    s = rng.normal(size=100_000) * 4
    y = rng.random(100_000)
    try:
        kernels.set_threads(1)
        one = kernels.grad(s, y)
        assert numba.get_num_threads() == 1
        kernels.set_threads(None)
        many = kernels.grad(s, y)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        kernels.set_threads(None)
    assert one.loss == many.loss and np.array_equal(one.grad, many.grad) and one.stats == many.stats
    with pytest.raises(ValueError, match="threads"):
        kernels.set_threads(0)
