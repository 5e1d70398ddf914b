"""schemathesis against a real server's /openapi.json (issue 12).

Every operation, every phase (examples, coverage, fuzzing, stateful), every check: no
5xx, every status, content type, header and body as /openapi.json describes them (errors
included), schema-invalid requests refused with a 4xx. The CLI runs against a real
``lossd serve`` on 127.0.0.1, bounded by ``--max-time`` (tests/profiles.py: about two
minutes under ``ci`` with a fixed seed, twenty times that and a fresh seed under
``long``). tests/schemathesis.toml holds the one thing the schema cannot say.

Failures it found were fixed; each has a fixed-input regression test in
tests/test_schema_regressions.py.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from profiles import PROFILE, budget

pytest.importorskip("schemathesis")

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_TIME = int(budget(110))
SEED = 20261206


def test_schemathesis_every_operation_every_phase(server, tmp_path):
    argv = [str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run", f"{server.url}/openapi.json",
            "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--max-time", str(MAX_TIME),
            "--workers", "1", "--request-timeout", "20", "--max-failures", "20", "--output-truncate", "false",
            "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")]
    if PROFILE == "ci":
        argv += ["--seed", str(SEED)]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME + 180)
    out = proc.stdout + proc.stderr
    print(out[-6000:])  # the summary: operations, test cases, phases (pytest -s or -rP shows it)
    assert proc.returncode == 0, f"schemathesis failed (exit {proc.returncode}):\n{out[-30000:]}"

    # every operation of the schema was tested
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    operations = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    tested = " | ".join(tc.get("name", "") for tc in ET.parse(tmp_path / "junit.xml").iter("testcase"))
    missing = sorted(op for op in operations if op not in tested)
    assert not missing, f"not tested: {missing}\n{out[-3000:]}"
    log = server.stdout() + server.stderr()
    assert "unhandled error" not in log, log[-3000:]
