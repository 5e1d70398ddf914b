#!/usr/bin/env python
"""Dataset evaluation benchmark (issue 15): `lossd.evaluate` on a Parquet file.

    python bench/eval.py [--quick] [--rows N] [--data-dir /tmp/lossd-bench-eval] [--out bench/out]

On a Parquet file of 10^8 rows (logits p ~ N(0, 3²), labels y in {0, 1}, weights w, group
g of 100 keys; generated once and cached in --data-dir, outside the repository), each
measured in a fresh process: pyarrow merely reading the columns p and y, the local
streaming evaluation (and without the quantile sketch, and with weights and by), Dask with 1 worker × 1 thread and
2 workers × 1 thread (the cluster started and warmed before the clock), scikit-learn's
`log_loss` on the first 10^7 rows held in memory (the answer cross-checked with lossd's),
and Spark's logLoss evaluator where `bench/spark_setup.sh` has installed PySpark.
Prints the markdown tables and writes <out>/eval.md and <out>/eval.json. --quick: 2^21
rows (a smoke test; its figures are not the goals').
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# bench/ is sys.path[0] until use_checkout() takes it off; Dask's worker processes import
# this file again (as __mp_main__) with their own sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import Check, checks_table, cores, cpu_model, footer_line, fmt, log, md_table, use_checkout  # noqa: E402

use_checkout()  # also NUMBA_CACHE_DIR: before numba is imported

FULL_ROWS = 10**8
QUICK_ROWS = 1 << 21
SKLEARN_ROWS = 10**7
GROUPS = 100
SPARK_PY = _common.BENCH_DIR / ".venv-spark" / "bin" / "python"
CELLS = ("read", "sketch", "local", "local_nosketch", "local_wby", "dask1", "dask2", "sklearn", "spark")
LABELS = {"read": "pyarrow read", "sketch": "KLL update alone", "local": "lossd local", "local_nosketch": "lossd local, no sketch",
          "local_wby": "lossd local, weights + by",
          "dask1": "Dask 1×1", "dask2": "Dask 2×1", "sklearn": "scikit-learn", "spark": "Spark"}
LEGEND = {
    "read": "`pyarrow.parquet.ParquetFile.iter_batches` over p, y (lossd's reader and settings), each column `to_numpy` (zero-copy): the floor",
    "sketch": "`kll_doubles_sketch(200).update` over the same batches' p column, only the updates timed: the ceiling of any evaluation that keeps the quantile sketch (DataSketches holds the GIL)",
    "local": "`lossd.evaluate(path, predictions='p', labels='y')`: streamed in this process",
    "local_nosketch": "the same with `sketch=False` (no quantiles: what `lossd eval` does without --quantiles)",
    "local_wby": "the same as lossd local with `weights='w', by='g'` (100 groups)",
    "dask1": "`lossd.evaluate(..., scheduler=...)` on a LocalCluster of 1 worker process × 1 thread",
    "dask2": "the same on 2 worker processes × 1 thread",
    "sklearn": "`sklearn.metrics.log_loss(y, expit(s))` on the first 10^7 rows in memory (expit and reading not timed)",
    "spark": "`MulticlassClassificationEvaluator(metricName='logLoss')` in Spark local[2] (reading included)",
}


def row_group_rows(rows: int) -> int:
    return 1 << 20 if rows >= 1 << 24 else 1 << 18


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark's file, written in row groups under a temporary name, then renamed
    (an interrupted run leaves no file that looks complete)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(seed)
    chunk = row_group_rows(rows)
    schema = pa.schema([("p", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("g", pa.int32())])
    t0 = time.perf_counter()
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            writer.write_table(pa.table({
                "p": rng.normal(0.0, 3.0, n), "y": (rng.random(n) < 0.5).astype(np.float64),
                "w": rng.uniform(0.5, 1.5, n), "g": rng.integers(0, GROUPS, n, dtype=np.int32)}, schema=schema),
                row_group_size=chunk)
    tmp.rename(path)
    log(f"generated {path} ({rows:,} rows, {path.stat().st_size / 2**30:.2f} GiB) in "
        f"{time.perf_counter() - t0:.0f} s")


def dataset_path(data_dir: Path, rows: int) -> Path:
    path = data_dir / f"eval-{rows}.parquet"
    if not path.exists():
        generate(path, rows)
    return path


# --------------------------------------------------------------------------- cells (each in a fresh process)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_kernels() -> None:
    """Load every kernel a cell runs, serial and parallel (large arrays), before the clock."""
    import numpy as np

    from lossd import kernels

    for n in (1000, 1 << 20):
        s = np.linspace(-3, 3, n)
        y = (s > 0).astype(np.float64)
        kernels.summarize(s, y)
        kernels.summarize(s, y, sample_weight=np.ones(n), by=np.arange(n, dtype=np.int32) % 7)


def _warm_worker(path: str) -> None:
    """In a Dask worker: the kernels and the reading code (pyarrow.parquet, ...) loaded."""
    import lossd

    _warm_kernels()
    lossd.evaluate(path, predictions="p", labels="y")


def cell_read(path: Path, rows: int) -> dict:
    import pyarrow.parquet as pq

    from lossd.evaluation import BATCH_ROWS

    t0 = time.perf_counter()
    n, acc = 0, 0.0
    # the reader and settings of lossd.evaluation.sources: a batch decoded when asked for
    for rb in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=["p", "y"]):
        p, y = rb.column(0).to_numpy(), rb.column(1).to_numpy()
        acc += p[0] + y[-1]  # touch the arrays
        n += rb.num_rows
    return {"seconds": time.perf_counter() - t0, "rows": n}


def cell_sketch(path: Path, rows: int) -> dict:
    import pyarrow.parquet as pq
    from datasketches import kll_doubles_sketch

    from lossd.evaluation import BATCH_ROWS
    from lossd.kernels.summary import KLL_K

    sk, spent, n = kll_doubles_sketch(KLL_K), 0.0, 0
    for rb in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=["p"]):
        p = rb.column(0).to_numpy().copy()  # the binding takes writable arrays only (untimed)
        t0 = time.perf_counter()
        sk.update(p)
        spent += time.perf_counter() - t0
        n += rb.num_rows
    assert sk.n == n
    return {"seconds": spent, "rows": n}


def _summary_fields(r) -> dict:
    if isinstance(r, dict):
        from lossd.kernels import LossSummary

        total = LossSummary.merge_all(r.values())
        return {"value": total.loss, "count": total.count, "groups": len(r)}
    return {"value": r.loss, "count": r.count}


def cell_local(path: Path, rows: int, wby: bool = False, sketch: bool = True) -> dict:
    import lossd

    _warm_kernels()
    extra = {"weights": "w", "by": "g"} if wby else {}
    extra["sketch"] = sketch
    t0 = time.perf_counter()
    r = lossd.evaluate(str(path), predictions="p", labels="y", **extra)
    return {"seconds": time.perf_counter() - t0, "rows": rows, **_summary_fields(r)}


def cell_dask(path: Path, rows: int, workers: int) -> dict:
    from distributed import Client

    import lossd
    from lossd.evaluation.on_dask import client_for

    warm = path.parent / "eval-warm.parquet"
    if not warm.exists():
        generate(warm, 1 << 16)
    t0 = time.perf_counter()
    with client_for(None, workers) as client:
        started = time.perf_counter() - t0
        address = client.scheduler.address
        client.run(_warm_worker, str(warm))  # every worker, not only those a small file reaches
        with Client(address):
            lossd.evaluate(str(warm), predictions="p", labels="y", scheduler=address)
        t1 = time.perf_counter()
        r = lossd.evaluate(str(path), predictions="p", labels="y", scheduler=address)
        seconds = time.perf_counter() - t1
    return {"seconds": seconds, "rows": rows, "cluster_start_s": started, **_summary_fields(r)}


def cell_sklearn(path: Path, rows: int) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from scipy.special import expit
    from sklearn.metrics import log_loss

    from lossd import kernels

    n = min(rows, SKLEARN_ROWS)
    t = pq.ParquetFile(path).iter_batches(batch_size=n, columns=["p", "y"])
    rb = next(t)
    s, y = rb.column(0).to_numpy(), rb.column(1).to_numpy()
    prob = expit(s)
    t0 = time.perf_counter()
    v = float(log_loss(y, prob))
    seconds = time.perf_counter() - t0
    ref = kernels.loss(s, y).loss
    return {"seconds": seconds, "rows": n, "value": v, "lossd_value": ref,
            "rel_diff": abs(v - ref) / abs(ref)}


_SPARK = """
import json, sys, time
from pyspark.sql import SparkSession, functions as F
from pyspark.ml.functions import array_to_vector
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
path = sys.argv[1]
spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", "4g")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.range(10).count()  # the JVM and executors up before the clock
t0 = time.perf_counter()
df = spark.read.parquet(path).select("p", "y")
q = F.lit(1.0) / (F.lit(1.0) + F.exp(-F.col("p")))
# the evaluator wants a prediction column too (logLoss does not read it)
df = df.select(F.col("y").alias("label"), array_to_vector(F.array(F.lit(1.0) - q, q)).alias("probability"),
               (q > 0.5).cast("double").alias("prediction"))
v = MulticlassClassificationEvaluator(metricName="logLoss", labelCol="label", probabilityCol="probability").evaluate(df)
print(json.dumps({"seconds": time.perf_counter() - t0, "value": v}))
spark.stop()
"""


def cell_spark(path: Path, rows: int) -> dict:
    if not SPARK_PY.exists():
        return {"skipped": f"{SPARK_PY} missing: run `bash bench/spark_setup.sh` (PySpark is no project "
                           "dependency: a 456 MB download)"}
    env = {**os.environ, "PYSPARK_PYTHON": str(SPARK_PY)}
    proc = subprocess.run([str(SPARK_PY), "-c", _SPARK, str(path)], capture_output=True, text=True,
                          timeout=3600, env=env)
    if proc.returncode != 0:
        return {"skipped": f"Spark failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
    return {"rows": rows, **json.loads(proc.stdout.strip().splitlines()[-1])}


def run_cell(name: str, path: Path, rows: int) -> dict:
    if name == "read":
        out = cell_read(path, rows)
    elif name == "sketch":
        out = cell_sketch(path, rows)
    elif name in ("local", "local_nosketch", "local_wby"):
        out = cell_local(path, rows, wby=name == "local_wby", sketch=name != "local_nosketch")
    elif name in ("dask1", "dask2"):
        out = cell_dask(path, rows, int(name[-1]))
    elif name == "sklearn":
        out = cell_sklearn(path, rows)
    else:
        out = cell_spark(path, rows)
    out["maxrss_mib"] = _maxrss_mib()
    return out


def measure(name: str, path: Path, rows: int) -> dict:
    """``name`` in a fresh interpreter: its own RSS, no warm state from other cells."""
    log(f"measuring {name} ...")
    proc = subprocess.run([sys.executable, __file__, "--cell", name, "--data", str(path), "--rows", str(rows)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def rate(r: dict) -> float | None:
    return r["rows"] / r["seconds"] if "seconds" in r and r.get("rows") else None


def build_checks(res: dict) -> list[Check]:
    def ratio(a: str, b: str) -> float | None:
        ra, rb = rate(res[a]), rate(res[b])
        return ra / rb if ra and rb else None

    checks = []
    for goal, a, b, target in (("local streaming ≥ 0.5 × pyarrow read", "local", "read", 0.5),
                               ("(ceiling) the KLL update alone / pyarrow read", "sketch", "read", 0.5),
                               ("the same without the sketch (`lossd eval` without --quantiles)",
                                "local_nosketch", "read", 0.5),
                               ("Dask 2×1 ≥ 1.5 × Dask 1×1", "dask2", "dask1", 1.5),
                               ("Dask 2×1 ≥ 0.7 × local streaming", "dask2", "local", 0.7)):
        x = ratio(a, b)
        checks.append(Check(goal, "n/a" if x is None else f"{x:.2f}", f"≥ {target}", None if x is None else x >= target))
    sk = res["sklearn"]
    if "rel_diff" in sk:
        checks.append(Check("same answer as scikit-learn", f"rel. diff {sk['rel_diff']:.1e}", "≤ 1e-9",
                            sk["rel_diff"] <= 1e-9))
    sp = res["spark"]
    if "value" in sp and "value" in res["local"]:
        d = abs(sp["value"] - res["local"]["value"]) / abs(res["local"]["value"])
        checks.append(Check("same answer as Spark", f"rel. diff {d:.1e}", "≤ 1e-9", d <= 1e-9))
    values = {n: res[n]["value"] for n in ("local", "local_nosketch", "dask1", "dask2") if "value" in res[n]}
    if len(values) > 1:
        ref = values["local"] if "local" in values else next(iter(values.values()))
        worst = max(abs(v - ref) / abs(ref) for v in values.values())
        checks.append(Check("local and Dask answers agree", f"rel. diff {worst:.1e}", "≤ 1e-12", worst <= 1e-12))
    return checks


def report(res: dict, path: Path, rows: int, quick: bool, t_start: float) -> tuple[str, dict]:
    size = path.stat().st_size
    body = []
    for name in CELLS:
        r = res[name]
        rr = rate(r)
        if rr is None:
            body.append([LABELS[name], "n/a", "n/a", "n/a", "n/a", r.get("skipped") or r.get("error", "")[-200:]])
            continue
        note = ""
        if "cluster_start_s" in r:
            note = f"cluster start {r['cluster_start_s']:.1f} s (not timed)"
        if name == "spark":
            note = "JVM in its own process: peak RSS is the Python driver's only"
        if name == "sklearn":
            note = f"{r['rows']:,} rows; lossd's answer differs by {r['rel_diff']:.1e} (relative)"
        read = rate(res["read"])
        body.append([LABELS[name], fmt(r["seconds"]), fmt(rr / 1e6), f"{rr / read:.2f}" if read else "n/a",
                     f"{r.get('maxrss_mib', 0):.0f}", note])
    checks = build_checks(res)
    text = "\n\n".join([
        f"# Dataset evaluation (issue 15)\n\n{rows:,} rows, {size / 2**30:.2f} GiB Parquet "
        f"({row_group_rows(rows):,}-row groups) on {cores()} cores, {cpu_model()}; load at start "
        f"{', '.join(f'{x:.2f}' for x in res['load_start'])}.",
        md_table(["cell", "seconds", "Mrows/s", "× read", "peak RSS MiB", "note"], body),
        checks_table(checks),
        "\n".join(f"- {LABELS[k]}: {v}" for k, v in LEGEND.items()),
        footer_line(quick, t_start)])
    data = {"quick": quick, "rows": rows, "file_bytes": size, "cells": {k: res[k] for k in CELLS},
            "goals": _common.goals_json(checks), "load_average_start": res["load_start"]}
    return text, data


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: a smoke test")
    ap.add_argument("--rows", type=int, help=f"rows of the file (default {FULL_ROWS:,}, --quick {QUICK_ROWS:,})")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/lossd-bench-eval"),
                    help="where the generated files are cached (default /tmp/lossd-bench-eval)")
    ap.add_argument("--out", type=Path, default=_common.BENCH_DIR / "out")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.cell, args.data, args.rows)))
        return 0
    t_start = time.perf_counter()
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    path = dataset_path(args.data_dir, rows)
    res = {"load_start": list(os.getloadavg())}
    wanted = set(args.cells.split(","))
    for name in CELLS:
        res[name] = measure(name, path, rows) if name in wanted else {"skipped": "not asked (--cells)"}
    text, data = report(res, path, rows, args.quick, t_start)
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_report(args.out, "eval", text, data)
    errors = [f"{k}: {res[k]['error']}" for k in CELLS if "error" in res[k]]
    return _common.exit_code(errors)


if __name__ == "__main__":
    sys.exit(main())
