"""Smoke test of the kernel benchmark: it runs, plots, and reports every implementation.

Speed goals are deliberately not asserted: this machine is shared and noisy, and the
benchmark's own goal table is where they are judged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Row labels of the throughput table (first cell of each row).
IMPLEMENTATIONS = ("lossd", "lossd float32", "lossd grad", "NumPy best", "NumPy logaddexp",
                   "PyTorch", "scikit-learn", "read pass")


def _table_row(text: str, label: str) -> list[str] | None:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells[1:]
    return None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_bench_quick_runs_and_reports_every_implementation(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kernels.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]

    png = tmp_path / "kernels.png"
    assert png.is_file() and png.stat().st_size > 0

    for label in IMPLEMENTATIONS:
        cells = _table_row(proc.stdout, label)
        assert cells, f"no table row for {label!r}:\n{proc.stdout}"
        # "n/a" would mean the implementation was not measured (e.g. lossd not importable).
        assert all(_is_number(c) for c in cells), f"{label}: {cells}"
