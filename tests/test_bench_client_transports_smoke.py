"""Smoke test of ``bench/client_transports.py --quick``: it starts lossd (gRPC and shared
memory on), times every transport through the client, checks each answer against the
kernels and reports a row per n and call. Speed is not asserted (a shared, noisy
machine); only that every cell ran, exactly, over the transport it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_client_transports_quick_runs_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "client_transports.py"), "--quick",
                           "--sizes", "10,2e5", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    md = (tmp_path / "client_transports.md").read_text()
    assert md.strip() == proc.stdout.strip()
    data = json.loads((tmp_path / "client_transports.json").read_text())
    assert data["quick"] is True and not data["errors"]
    assert [(r["n"], r["call"]) for r in data["rows"]] == [(n, c) for n in (10, 200_000)
                                                           for c in ("loss mean", "grad none")]
    for r in data["rows"]:
        assert set(r["cells"]) == {"http", "grpc", "shm", "shm-http"} | ({"http-json"} if r["n"] <= 100_000 else set())
        assert all(c["exact"] and c["calls"] >= 3 and 0 < c["p50_ms"] <= c["p90_ms"] for c in r["cells"].values())
        assert r["auto"] == r["rule"] == ("grpc" if r["n"] == 10 else "shm")
    # the benchmark's clients closed: none of its shared memory objects is left
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"lossd-client-{data['pid']}-")]
