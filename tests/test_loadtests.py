"""loadtests/: latency budgets judged on locust's own statistics objects, answers checked
bit for bit, and ``python -m loadtests`` (run, budgets, failures, soak, sweep, goals) with
real locust against real lossd servers on 127.0.0.1, each run a few seconds long.

Speed is never asserted (the machine is shared): only that every part runs, reports and
exits as documented.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

# locust's package monkey-patches the standard library with gevent when imported, which
# would change every other test in this process; its statistics need no patching
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
try:
    from locust.stats import RequestStats
finally:
    del os.environ["LOCUST_SKIP_MONKEY_PATCH"]

from lossd import kernels
from lossd.service.codecs.oip_json import InferResponse, encode_response
from loadtests import budgets, payloads
from service_helpers import lossd_serve

REPO = Path(__file__).resolve().parents[1]
# payloads small enough for a few-second run on a busy 2-core machine
SMALL_SIZES = ["--large-n", "2000", "--grad-n", "1000", "--oip-n", "20000", "--params-n", "300",
               "--params-d", "8"]


def loadtests(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOSSD_", "LOCUST_"))}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return subprocess.run([sys.executable, "-m", "loadtests", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def port_closed(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ------------------------------------------------------------------------------ budgets


def test_budgets_parse_and_refuse_malformed_ones() -> None:
    assert budgets.parse("small_loss:p99=5, all:p95=250.5") == [
        budgets.Budget("small_loss", 99.0, 5.0), budgets.Budget("all", 95.0, 250.5)]
    assert budgets.parse("") == []
    for bad in ("small_loss=5", "small_loss:99=5", "small_loss:p100=5", "x:p99=0", "x:p99=abc"):
        with pytest.raises(ValueError, match="budget"):
            budgets.parse(bad)


def test_budgets_are_judged_on_locusts_request_stats() -> None:
    stats = RequestStats()
    for ms in [2] * 97 + [40, 60, 80]:
        stats.log_request("POST", "small_loss", ms, 100)
    # locust's own percentile (what its CSV and HTML report show), between the 2 largest
    p99 = stats.get("small_loss", "POST").get_response_time_percentile(0.99)
    assert p99 in (60, 80)
    ok = f"small_loss:p99={p99},small_loss:p50=2,all:p95=2"
    assert budgets.exceeded(budgets.parse(ok), stats) == []
    over = budgets.exceeded(budgets.parse(f"small_loss:p99={p99 - 1}"), stats)
    assert len(over) == 1 and f"was {p99} ms over 100 requests" in over[0]
    missing = budgets.exceeded(budgets.parse("grad:p99=1000"), stats)
    assert missing == ["budget grad:p99=1000: no grad requests were made"]


# ------------------------------------------------------------------------------ answers


def test_a_json_answer_one_bit_off_or_not_200_is_a_failure() -> None:
    p = payloads.build(payloads.LARGE, payloads.Sizes(large_n=500), seed=7)
    s, y = (np.asarray(orjson.loads(p.body)[k], dtype=np.float64) for k in ("predictions", "labels"))
    r = kernels.loss(s, y, reduction="none")
    answer = {"loss": None, "losses": r.losses, "stats": r.stats, "input": "logits",
              "loss_type": "cross_entropy", "reduction": "none"}
    right = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    assert p.check(200, {}, right) is None
    assert p.check(200, {}, right) is None  # the byte-equal fast path
    losses = r.losses.copy()
    losses[123] = np.nextafter(losses[123], np.inf)
    wrong = orjson.dumps({**answer, "losses": losses}, option=orjson.OPT_SERIALIZE_NUMPY)
    problem = p.check(200, {}, wrong)
    assert problem is not None and problem.startswith("losses[123] = ") and "1 elements differ" in problem
    mean_off = orjson.dumps({**answer, "stats": {**r.stats, "mean": r.stats["mean"] * (1 + 2**-52)}},
                            option=orjson.OPT_SERIALIZE_NUMPY)
    assert "stats.mean" in p.check(200, {}, mean_off)
    assert p.check(503, {}, b'{"detail": "busy"}').startswith("HTTP 503")
    assert p.check(200, {}, b"not json").startswith("undecodable answer")


def test_a_binary_oip_answer_one_bit_off_is_a_failure() -> None:
    p = payloads.build(payloads.OIP, payloads.Sizes(oip_n=3000), seed=5)
    assert p.path == "/v2/models/loss/infer" and "Inference-Header-Content-Length" in p.headers
    expected = p.expected  # computed by the kernels from the payload's own arrays
    outputs = [("loss", np.array([expected["loss"]]))] + [
        (k, np.array([float(expected[k])])) for k in ("count", "sum", "mean", "std", "min", "max")]
    body, headers = encode_response(InferResponse("loss", None, outputs), {k: True for k, _ in outputs})
    assert p.check(200, headers, body) is None
    flipped = bytearray(body)
    flipped[int(headers["inference-header-content-length"])] ^= 1  # the lowest bit of loss
    problem = p.check(200, headers, bytes(flipped))
    assert problem is not None and problem.startswith("loss = ")


def test_every_class_builds_a_request_with_its_kernels_answer() -> None:
    sizes = payloads.Sizes(small_n=10, large_n=100, grad_n=50, oip_n=64, params_n=40, params_d=3)
    for key in payloads.CLASSES:
        p = payloads.build(key, sizes, seed=1, token="t0k")
        assert p.key == key and p.body and p.headers["Authorization"] == "Bearer t0k"
        assert p.expected["loss"] is None or np.isfinite(p.expected["loss"])
    with pytest.raises(ValueError, match="unknown class"):
        payloads.build("nope", sizes, seed=1)


# ------------------------------------------------------------------------------ runs


def test_a_load_test_of_every_class_passes_and_reports(tmp_path: Path) -> None:
    proc = loadtests("--users", "7", "--run-time", "6", "--workers", "2", "--processes", "2",
                     "--weights", "small_loss=3,large_loss=1,grad=1,oip_binary=1,grad_params=1",
                     "--out", str(tmp_path), "--", *SMALL_SIZES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["stats"]) == {*payloads.CLASSES, "Aggregated"}
    for key in payloads.CLASSES:
        s = summary["stats"][key]
        assert s["requests"] > 0 and s["failures"] == 0 and s["p50"] <= s["p99"], (key, s)
    assert summary["users"] == {"small_loss": 3, "large_loss": 1, "grad": 1, "oip_binary": 1,
                                "grad_params": 1}
    assert set(summary["cores"]) == {"server", "client", "others"} and summary["cores"]["client"] > 0
    for name in ("locust_stats.csv", "locust_failures.csv", "locust.html", "summary.md", "lossd.log"):
        assert (tmp_path / name).exists(), name
    md = (tmp_path / "summary.md").read_text()
    assert md.strip() in proc.stdout and "| small_loss | POST /loss, JSON, n = 10," in md
    assert "Traceback" not in (tmp_path / "lossd.log").read_text()
    cmd = (tmp_path / "locust.cmd").read_text().split()
    assert port_closed(cmd[cmd.index("-H") + 1])  # the lossd it started is stopped


def test_failed_requests_and_exceeded_budgets_exit_non_zero(tmp_path: Path) -> None:
    server = lossd_serve("--workers", "1", env={"LOSSD_API_TOKEN": "s3cret"})
    with server:
        # without the token every request is a 401: locust's own exit code for failures
        proc = loadtests("--host", server.url, "--users", "2", "--run-time", "3", "--processes", "1",
                         "--classes", "small_loss", "--out", str(tmp_path / "401"))
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        summary = json.loads((tmp_path / "401" / "summary.json").read_text())
        assert summary["stats"]["small_loss"]["failures"] == summary["stats"]["small_loss"]["requests"] > 0
        assert any("HTTP 401" in f["error"] for f in summary["failures"])
        # with it, no failure, but a budget for a class that made no request is not met
        proc = loadtests("--host", server.url, "--token", "s3cret", "--users", "2", "--run-time", "3",
                         "--processes", "1", "--classes", "small_loss", "--budgets", "grad:p99=1000",
                         "--out", str(tmp_path / "budget"))
        assert proc.returncode == budgets.BUDGET_EXIT_CODE, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "no grad requests were made" in (tmp_path / "budget" / "locust.log").read_text()
        summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
        assert summary["stats"]["small_loss"]["failures"] == 0
        assert server.alive()


def test_soak_reports_the_rss_of_every_worker_and_lane(tmp_path: Path) -> None:
    proc = loadtests("soak", "--users", "4", "--run-time", "12", "--soak-warmup", "4", "--workers", "2",
                     "--processes", "1", "--classes", "small_loss,large_loss", "--out", str(tmp_path),
                     "--", "--large-n", "200000")  # 4 MB bodies: the large lane works too
    summary = json.loads((tmp_path / "summary.json").read_text())
    start, end = summary["rss_mib"]["start"], summary["rss_mib"]["end"]
    assert len(start) == 4 and set(start) == set(end), summary["rss_mib"]  # 2 workers, 2 lanes
    grew = any(end[pid] > 1.10 * start[pid] for pid in start)
    assert proc.returncode == (4 if grew else 0), proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (tmp_path / "summary.md").read_text()
    assert "RSS of the server processes" in md and md.count("%") >= 4


def test_the_capacity_sweep_names_each_saturation_point(tmp_path: Path) -> None:
    proc = loadtests("sweep", "--sweep-users", "1,2", "--sweep-workers", "1", "--point-time", "3",
                     "--classes", "small_loss,oip_binary", "--out", str(tmp_path), "--", "--oip-n", "20000")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [(p["key"], p["users"]) for p in data["points"]] == [
        ("small_loss", 1), ("small_loss", 2), ("oip_binary", 1), ("oip_binary", 2)]
    assert all(p["requests"] > 0 and p["failures"] == 0 for p in data["points"])
    sat = {r["class"]: r for r in data["saturation"]}
    assert set(sat) == {"small_loss", "oip_binary"}
    for key, r in sat.items():
        best = max(p["rps"] for p in data["points"] if p["key"] == key)
        assert r["rps"] >= 0.9 * best and r["users"] in (1, 2)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert "### Saturation points" in (tmp_path / "sweep.md").read_text()


def test_goals_compare_the_mix_with_each_large_class_alone(tmp_path: Path) -> None:
    proc = loadtests("goals", "--users", "6", "--run-time", "5", "--alone-time", "3", "--processes", "1",
                     "--classes", "small_loss,oip_binary", "--weights", "small_loss=4,oip_binary=2",
                     "--out", str(tmp_path), "--", "--oip-n", "20000")
    data = json.loads((tmp_path / "goals.json").read_text())
    assert data["failures"] == 0 and set(data["ratios"]) == {"oip_binary"}
    assert data["mix"]["users"] == {"small_loss": 4, "oip_binary": 2}
    assert data["alone"]["oip_binary"]["users"] == {"oip_binary": 2}
    # the plain probe ran beside the mix and beside the small class alone, and judges the goal
    assert set(data["probes"]) == {"mix", "small alone"}
    assert all(pr["requests"] > 0 and pr["failures"] == 0 for pr in data["probes"].values())
    met = data["probes"]["mix"]["p99"] <= 5 and data["ratios"]["oip_binary"] >= 0.8
    assert data["all_met"] == met and proc.returncode == (0 if met else 3), proc.stderr[-2000:]
    assert data["alone"]["small_loss"]["users"] == {"small_loss": 4} and data["small_alone_p99_ms"] > 0
    md = (tmp_path / "goals.md").read_text()
    assert md.count("| PASS |") + md.count("| FAIL |") == 4 and "### The plain probe" in md
