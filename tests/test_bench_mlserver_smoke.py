"""Smoke test of the MLServer comparison: ``bench/mlserver.py --quick`` starts lossd and
MLServer (from its own venv, ``bench/.venv-mlserver``), sends both the same OIP JSON
bodies, checks their answers agree, reports and cleans up.

MLServer is no project dependency (not in the locks, not in CI): the run is skipped, with
the reason, where ``bash bench/mlserver_setup.sh`` has not made that venv. The model's
files and the script's refusal without MLServer are checked everywhere.
Speed is not asserted (the machine is shared): the report's goal table judges it.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench_helpers import md_rows

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "mlserver.py"
MODEL_DIR = REPO / "bench" / "mlserver_model"
VENV = REPO / "bench" / ".venv-mlserver"
QUICK_SIZES = ("1e+01", "1e+03")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return env


def test_mlserver_model_serves_loss_in_one_process_without_metrics() -> None:
    """The settings the comparison rests on: model `loss` (the URL lossd serves too),
    the runtime class that exists, inference in the server process, metrics and the
    access log off."""
    model = json.loads((MODEL_DIR / "model-settings.json").read_text())
    assert model["name"] == "loss" and model["implementation"] == "model.BinaryCrossEntropy"
    assert [i["name"] for i in model["inputs"]] == ["predictions", "labels"]
    assert all(t["datatype"] == "FP64" for t in model["inputs"] + model["outputs"])
    settings = json.loads((MODEL_DIR / "settings.json").read_text())
    assert settings["parallel_workers"] == 0 and settings["metrics_endpoint"] is None
    assert settings["debug"] is False and settings["http_port"] != settings["grpc_port"]
    tree = ast.parse((MODEL_DIR / "model.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BinaryCrossEntropy")
    methods = {f.name for f in cls.body if isinstance(f, ast.AsyncFunctionDef)}
    assert {"load", "predict"} <= methods
    src = (MODEL_DIR / "model.py").read_text()
    assert "np.log1p(np.exp(-np.abs(s)))" in src and "NumpyCodec" in src


def test_without_mlserver_the_benchmark_says_how_to_get_it(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "out"),
                           "--mlserver-venv", str(tmp_path / "no-venv")],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=_env(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "bench/mlserver_setup.sh" in proc.stderr and not proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (VENV / "bin" / "mlserver").exists(),
                    reason="bench/.venv-mlserver not found: MLServer is no project dependency; "
                           "run `bash bench/mlserver_setup.sh` to run this comparison")
def test_bench_mlserver_quick_runs_and_reports(tmp_path: Path) -> None:
    # --out relative to the working directory, as a person types it (MLServer runs
    # elsewhere: a relative model folder once made it start with its defaults)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", os.path.relpath(tmp_path, REPO)],
                          capture_output=True, text=True, timeout=240, cwd=REPO, env=_env(), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    md = (tmp_path / "mlserver.md").read_text()
    assert md.strip() == proc.stdout.strip()
    assert "Load average at start" in md and "load average at end" in md
    for label in ("lossd", "MLServer"):
        rows = md_rows(md, label)
        assert [r[0] for r in rows] == list(QUICK_SIZES), f"{label}: {rows}\n{md}"
        for n, body_mb, requests, rps, p50, p90, p99 in rows:
            assert int(requests) > 0 and float(rps) > 0 and 0 < float(p50) <= float(p99)
    ratio_rows = [r for n in QUICK_SIZES for r in md_rows(md, n)]
    assert len(ratio_rows) == len(QUICK_SIZES) and all(r[5] == "yes" for r in ratio_rows), md
    assert "| MLServer version | 1." in md and "MLServer's settings.json" in md

    data = json.loads((tmp_path / "mlserver.json").read_text())
    assert data["quick"] is True and not data["errors"]
    assert {(c["impl"], c["n"]) for c in data["cells"]} == {(i, n) for i in ("lossd", "MLServer") for n in (10, 1000)}
    counts = {(c["impl"], c["n"]): c["requests"] for c in data["cells"]}
    assert all(counts["lossd", n] == counts["MLServer", n] for n in (10, 1000))  # in turns
    assert data["mlserver"]["packages"]["mlserver"].startswith("1.")
    assert data["mlserver"]["server_metadata"]["version"] == data["mlserver"]["packages"]["mlserver"]
    assert all(r["relative_loss_difference"] <= 1e-12 for r in data["ratios"])
    # no n = 10^5 in a quick run; n = 10 is judged
    assert [g["result"] for g in data["goals"]][0] == "n/a" and data["goals"][1]["result"] in ("PASS", "FAIL")
    assert "Traceback" not in (tmp_path / "mlserver-lossd.log").read_text()
    ml_log = (tmp_path / "mlserver-mlserver.log").read_text()
    assert "Traceback" not in ml_log
    # MLServer ran with the benchmark's settings.json, not its defaults (port 8080, metrics)
    assert f"HTTP server running on http://127.0.0.1:{data['mlserver']['settings']['http_port']}" in ml_log
    assert "Metrics server running" not in ml_log and "inference pool" not in ml_log
    # no server is left listening on its ports (MLServer's gRPC port included)
    ports = [int(data["mlserver"]["settings"][k]) for k in ("http_port", "grpc_port")]
    argv = data["servers"]["lossd"]["cmd"].split()
    ports.append(int(argv[argv.index("--port") + 1]))
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(2.0)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listens"
