"""Smoke test of the HTTP benchmark: it starts both servers, measures, reports, cleans up.

Speed goals are deliberately not asserted: this machine is shared and noisy, and the
benchmark's own goal table is where they are judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench_helpers import md_rows

REPO = Path(__file__).resolve().parents[1]
# Row labels of the results table (first cell of each row).
IMPLEMENTATIONS = ("lossd", "plain", "HTTP floor")


def test_bench_service_quick_runs_and_reports_both_servers(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR",
                                                           str(REPO / ".numba_cache"))}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "service.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    md = (tmp_path / "service.md").read_text()
    assert md.strip() == proc.stdout.strip()
    for label in IMPLEMENTATIONS:
        rows = md_rows(md, label)
        # quick mode: n = 10 and 1000, reductions mean and none
        assert len(rows) == 4, f"{label}: {rows}\n{md}"
        for row in rows:
            n, reduction, requests, rps, p50, p99 = row
            assert reduction in ("mean", "none")
            assert int(requests) > 0 and float(rps) > 0 and 0 < float(p50) <= float(p99)

    data = json.loads((tmp_path / "service.json").read_text())
    assert data["quick"] is True and not data["errors"]
    assert {c["impl"] for c in data["cells"]} == set(IMPLEMENTATIONS)
    assert data["agreement"] and all(a["max_rel_diff"] <= 1e-12 for a in data["agreement"])
    assert len(data["goals"]) == 6 and data["bare"]
    assert "load average at start" in md
