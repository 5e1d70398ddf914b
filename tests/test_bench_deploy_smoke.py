"""Smoke tests of the deployment benchmarks (bench/cpu_targets.py, bench/scaling.py): each
quick mode runs, reports every row, and writes its table. No speed is asserted here (the
machine is shared); the reports' own goal tables judge that."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import md_rows

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, timeout: float) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout


def test_cpu_targets_quick_reports_host_and_every_level_the_cpu_runs(tmp_path):
    import llvmlite.binding as llvm

    from lossd.kernels import _target

    out = _run("cpu_targets.py", tmp_path, 900)
    md = (tmp_path / "cpu_targets.md").read_text()
    assert md.strip() == out.strip()
    levels = _target.supported_levels(llvm.get_host_cpu_features())
    rows = [line for line in md.splitlines() if line.startswith("| ") and "LOSSD_CPU_TARGET=" in line]
    assert len(rows) == 1 + len(levels), md
    assert "(LOSSD_CPU_TARGET=host)" in rows[0] and "1.00x host" in rows[0]
    for level in levels:
        assert any(row.startswith(f"| {level} ") for row in rows), (level, md)
    for row in rows:
        assert len(re.findall(r"[\d,]+ Melem/s \([\d.]+x host\)", row)) == 5, row


@pytest.mark.skipif(shutil.which("wrk") is None and os.geteuid() != 0,
                    reason="wrk is missing and cannot be installed without root")
def test_scaling_quick_reports_1_and_2_workers(tmp_path):
    out = _run("scaling.py", tmp_path, 600)
    md = (tmp_path / "scaling.md").read_text()
    assert md.strip() == out.strip()
    for workers in ("1", "2"):
        (row,) = md_rows(md, workers)
        rps, p50, p99, server, per_core, client, errors = row
        assert float(rps.replace(",", "")) > 0 and 0 < float(p50) <= float(p99), row
        assert float(per_core.replace(",", "")) > 0, row
        assert float(server) > 0 and float(client) > 0 and errors == "0", row
    (check,) = md_rows(md, "2 workers / 1 worker requests/s")
    assert check[0] == ">= 1.6x" and check[2] in ("yes", "NO")
