"""Smoke test of the wire table: ``bench/wire.py --quick`` starts lossd (HTTP, gRPC,
shared memory), measures every lossd case and the in-process kernel at two n, checks
every answer against the kernels, reports and cleans up (its shared memory region too).

MLServer is left out (``--mlserver-venv`` pointing nowhere: CI has no MLServer venv), and
named as not measured. Speed is not asserted: the machine is shared and noisy.
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
CASES = ("kernel", "JSON /loss", "OIP JSON", "OIP binary", "OIP gRPC", "shm HTTP", "shm gRPC")
QUICK_SIZES = ("1e+03", "1e+05")


def test_bench_wire_quick_runs_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "wire.py"), "--quick", "--out", str(tmp_path),
                           "--mlserver-venv", str(tmp_path / "no-venv")],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    md = (tmp_path / "wire.md").read_text()
    assert md.strip() == proc.stdout.strip()
    for case in CASES:
        rows = [r for r in md_rows(md, case) if len(r) == 6]  # the results table's rows
        assert [r[0] for r in rows] == list(QUICK_SIZES), f"{case}: {rows}\n{md}"
        for n, requests, p50, rps, melem, vs_kernel in rows:
            assert int(requests) >= 3 and float(p50) > 0 and float(rps) > 0 and float(melem) > 0
            assert float(vs_kernel) > 0 and (case != "kernel" or vs_kernel == "1.000")
        pivot = [r for r in md_rows(md, case) if len(r) == len(QUICK_SIZES)]
        assert len(pivot) == 1 and all("(" in cell for cell in pivot[0]), (case, pivot)
    assert "MLServer OIP JSON, MLServer gRPC: no MLServer venv" in md
    assert "written into the region once, before the timing" in md

    data = json.loads((tmp_path / "wire.json").read_text())
    assert data["quick"] is True and not data["errors"]
    assert {c["case"] for c in data["cells"]} == set(CASES)
    assert {c["n"] for c in data["cells"]} == {1000, 100_000}
    for c in data["cells"]:  # every answer within 1e-12 of the kernel's (the bench checks; so do we)
        want = data["expected_loss"][str(c["n"])]
        assert c["losses"] and all(abs(x - want) <= 1e-12 * abs(want) for x in c["losses"]), c
    log = (tmp_path / "wire-lossd.log").read_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    assert not Path("/dev/shm/lossd_bench_wire").exists()  # the region is removed
    argv = data["servers"]["lossd"]["cmd"].split()
    for flag in ("--port", "--grpc-port"):
        port = int(argv[argv.index(flag) + 1])
        with socket.socket() as sock:
            sock.settimeout(2.0)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{flag} {port} still listens"
