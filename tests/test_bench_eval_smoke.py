"""Smoke test of the dataset-evaluation benchmark: ``bench/eval.py --quick`` on a file of
2^18 rows generated into a temporary folder measures the read floor, the KLL update alone
(the ceiling with quantiles), the local streaming
evaluation, Dask with 2 workers and scikit-learn (the other cells are the same code paths
with other arguments; Spark needs a venv of its own, ``bench/spark_setup.sh``), reports
them, and its cross-checks hold: lossd's answer equals scikit-learn's and Dask's equals the
local one.

Speed is deliberately not asserted (the machine is shared and noisy): the benchmark's own
goal table is where the goals are judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_helpers import md_rows

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
CELLS = ("read", "sketch", "local", "dask2", "sklearn")


def test_bench_eval_quick_runs_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "eval.py"), "--quick", "--rows", str(1 << 18),
                           "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path), "--cells", ",".join(CELLS)],
                          capture_output=True, text=True, timeout=240, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    md = (tmp_path / "eval.md").read_text()
    data = json.loads((tmp_path / "eval.json").read_text())
    assert md.strip() == proc.stdout.strip()
    for name in CELLS:
        cell = data["cells"][name]
        assert cell["seconds"] > 0 and cell["rows"] > 0 and cell["maxrss_mib"] > 0, (name, cell)
    for name in ("local", "dask2"):
        assert data["cells"][name]["count"] == 1 << 18
    for name in ("local_nosketch", "local_wby", "dask1", "spark"):
        assert data["cells"][name] == {"skipped": "not asked (--cells)"}
    goals = {g["goal"]: g["result"] for g in data["goals"]}
    assert goals["same answer as scikit-learn"] == "PASS", md
    assert goals["local and Dask answers agree"] == "PASS", md
    assert md_rows(md, "lossd local") and md_rows(md, "Dask 2×1"), md
