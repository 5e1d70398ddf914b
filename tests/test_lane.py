"""The large lane (service/lane.py) on a real server: JSON bodies from LOSSD_LANE_BYTES on
are computed in a process of the worker's own, with the same bits and the same errors as
in the worker, and when that process is gone the worker computes them itself."""

from __future__ import annotations

import json
import time
import httpx
import numpy as np
import psutil
import pytest

from lossd import kernels
from service_helpers import assert_same, expected_loss_body, lossd_serve, strict_json

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def lane_server():
    # every JSON body of 1 KiB or more goes to the lane (none is computed inline)
    s = lossd_serve("--workers", "1", env={"LOSSD_LANE_BYTES": "1024", "LOSSD_INLINE_BYTES": "0"})
    try:
        yield s.start()
    finally:
        s.close()


def lane_pid(server) -> int:
    kids = [p for p in psutil.Process(server.proc.pid).children()
            if "spawn_main" in " ".join(p.cmdline())]
    assert len(kids) == 1, [p.cmdline() for p in kids]  # the lane of the single worker
    return kids[0].pid


def body(n: int, **extra) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    s, y = rng.normal(0, 3, n), (rng.random(n) < 0.5).astype(np.float64)
    return json.dumps({"predictions": s.tolist(), "labels": y.tolist(), **extra}).encode(), s, y


def test_the_lane_answers_with_the_kernels_bits(lane_server):
    raw, s, y = body(5000, reduction="none")
    r = httpx.post(lane_server.url + "/loss", content=raw, headers=JSON, timeout=60)
    assert r.status_code == 200, r.text
    assert_same(strict_json(r.text), expected_loss_body(kernels.loss(s, y, reduction="none"),
                                                        reduction="none"))
    raw, s, y = body(3000)
    r = httpx.post(lane_server.url + "/grad", content=raw, headers=JSON, timeout=60)
    assert r.status_code == 200, r.text
    g = kernels.grad(s, y)
    got = strict_json(r.text)
    assert_same(got["grad"], g.grad, "grad")
    assert_same(got["loss"], g.loss, "loss")


def test_errors_from_the_lane_keep_their_status_and_message(lane_server):
    raw, _, _ = body(2000)
    bad = raw.replace(b'"labels": [', b'"labels": [2.0, ', 1).replace(b'"predictions": [', b'"predictions": [0.5, ', 1)
    r = httpx.post(lane_server.url + "/loss", content=bad, headers=JSON, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == "labels[0] = 2 is outside [0, 1]"
    assert r.json()["detail"][0]["loc"] == ["body", "labels", 0]
    # an all-JSON OIP body goes to the lane too; its errors are OIP's 400
    oip = {"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [400], "data": [0.0] * 400},
                      {"name": "labels", "datatype": "FP64", "shape": [400], "data": [3.0] * 400}]}
    r = httpx.post(lane_server.url + "/v2/models/loss/infer", json=oip, timeout=60)
    assert r.status_code == 400, r.text
    assert "labels[0] = 3" in r.json()["error"]


def test_without_its_lane_the_worker_computes_large_bodies_itself(lane_server):
    pid = lane_pid(lane_server)
    raw, s, y = body(4000)
    proc = psutil.Process(pid)
    proc.kill()
    deadline = time.monotonic() + 10
    while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:  # its parent reaps it later
        assert time.monotonic() < deadline, "the lane did not die"
        time.sleep(0.05)
    for _ in range(3):
        r = httpx.post(lane_server.url + "/loss", content=raw, headers=JSON, timeout=60)
        assert r.status_code == 200, r.text + lane_server.stderr()[-3000:]
        assert_same(strict_json(r.text)["loss"], kernels.loss(s, y).loss, "loss")
    # logged (uvicorn's default handler writes to stderr), and the server carries on
    lane_server.wait_for_output("the large lane is gone", timeout=5, stream="stderr")
    assert lane_server.alive()
