"""Smoke test of the OIP benchmark: ``bench/oip.py --quick`` starts lossd and the sink,
measures every case, checks lossd's answers against the kernels, reports and cleans up.

Speed is deliberately not asserted (the machine is shared and noisy): the benchmark's own
goal table is where the goals are judged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from bench_helpers import md_rows

REPO = Path(__file__).resolve().parents[1]
CASES = ("JSON /loss", "OIP binary", "OIP JSON", "sink")  # first cell of each results row
QUICK_SIZES = ("1e+03", "1e+04")


def test_bench_oip_quick_runs_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "oip.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    md_path, json_path = tmp_path / "oip.md", tmp_path / "oip.json"
    assert md_path.exists() and json_path.exists()
    md = md_path.read_text()
    assert md.strip() == proc.stdout.strip()
    assert "Load average at start" in md and "load average at end" in md
    for label in CASES:
        rows = md_rows(md, label)
        assert [r[0] for r in rows] == list(QUICK_SIZES), f"{label}: {rows}\n{md}"
        for n, body_mb, requests, eps, mbps, p50, p99 in rows:
            assert int(requests) > 0 and float(eps) > 0 and 0 < float(p50) <= float(p99)
    ratio_rows = [r for n in QUICK_SIZES for r in md_rows(md, n)]
    assert len(ratio_rows) == len(QUICK_SIZES) and all(r[-1].startswith("yes") for r in ratio_rows), md

    data = json.loads(json_path.read_text())
    assert data["quick"] is True and not data["errors"]
    assert {c["impl"] for c in data["cells"]} == set(CASES)
    assert {c["n"] for c in data["cells"]} == {1000, 10_000}
    assert len(data["goals"]) == 2  # n = 10^6 is not in a quick run: reported as n/a
    assert all(g["result"] == "n/a" for g in data["goals"])
    assert len(data["load_average_start"]) == 3
    # the servers' logs are there and no server is left listening on their ports
    assert (tmp_path / "oip-lossd.log").exists() and (tmp_path / "oip-sink.log").exists()
    assert "Traceback" not in (tmp_path / "oip-lossd.log").read_text()
    assert set(data["servers"]) == {"lossd", "sink"}
    for info in data["servers"].values():
        argv = info["cmd"].split()
        flag = "--port" if "--port" in argv else "--serve-sink"
        port = int(argv[argv.index(flag) + 1])
        with socket.socket() as sock:
            sock.settimeout(2.0)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{info['cmd']} still listens"


def test_bench_report_turns_results_into_a_benchmarks_page(tmp_path: Path) -> None:
    """bench/report.py on the results of a quick OIP run: that section keeps the run's
    own report and gets the latency plot; the benchmarks that did not run are named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "oip.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    md, plots = tmp_path / "BENCHMARKS.md", tmp_path / "plots"
    rep = subprocess.run([sys.executable, str(REPO / "bench" / "report.py"), "--out-dir", str(out),
                          "--md", str(md), "--plots", str(plots)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = md.read_text()
    oip = text.split("## Open Inference Protocol", 1)[1].split("\n## ", 1)[0]
    assert "Command: `python bench/oip.py`" in oip and "![" in oip and "(plots/latency.png)" in oip
    assert md_rows(oip, "OIP binary") and "### " in oip  # the run's tables, one level down
    assert (plots / "latency.png").stat().st_size > 10_000
    for missing in ("kernels.md", "service.md", "scaling.md", "capacity/sweep.md", "goals/goals.md"):
        assert f"_Not in this run: `{missing}` was not found" in text
    assert "| CPU |" in text and "| commit |" in text
