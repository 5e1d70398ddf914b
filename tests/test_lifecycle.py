"""Process lifecycle of ``lossd serve`` on the host: SIGTERM drains (every accepted request
answered, exit code 0, within LOSSD_GRACEFUL_TIMEOUT), and a worker killed with SIGKILL
under load is replaced while the other keeps answering, with /metrics consistent."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import lossd_serve
from stream_helpers import RequestStream, assert_drained

from lossd import kernels

SMALL = {"predictions": [0.5, -1.0, 2.0, 3.5, -0.25, 1.0, 0.0, -3.0, 4.0, 0.125],
         "labels": [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]}
# ~20 ms of JSON work per request, so requests are in flight when the signal lands
BIG_N = 200_000


def _big_body() -> tuple[dict, float]:
    rng = np.random.default_rng(9)
    s = np.round(rng.normal(0, 3, BIG_N), 6)
    y = (rng.random(BIG_N) > 0.5).astype(float)
    return {"predictions": s.tolist(), "labels": y.tolist()}, kernels.loss(s, y).loss


def _workers(srv) -> list[int]:
    """uvicorn's worker processes (spawned children; not multiprocessing's resource tracker)."""
    out = []
    for pid in srv.children():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(pid)
    return out


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_in_flight_requests_and_exits_0(workers):
    grace = 10.0
    big, big_loss = _big_body()
    small_loss = kernels.loss(np.array(SMALL["predictions"]), np.array(SMALL["labels"], float)).loss
    with lossd_serve("--workers", str(workers), env={"LOSSD_GRACEFUL_TIMEOUT": str(grace),
                                                      "LOSSD_ACCESS_LOG": "false"}) as srv:
        small = RequestStream(srv.port, "/loss", SMALL, small_loss, clients=6, max_seconds=60).start()
        slow = RequestStream(srv.port, "/loss", big, big_loss, clients=2, max_seconds=60).start()
        time.sleep(1.5)
        t_term = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)  # the main process only, as tini or the kubelet does
        code = srv.proc.wait(grace + 10)
        took = time.monotonic() - t_term
        small.join(30)
        slow.join(30)
        log = srv.stderr() + srv.stdout()
    totals = small.totals() + slow.totals()
    assert code == 0, f"exit code {code}\n{log[-3000:]}"
    assert took < grace + 2, f"exit took {took:.1f} s with LOSSD_GRACEFUL_TIMEOUT={grace}"
    assert_drained([small, slow], t_term, workers, log)
    assert small.totals()["ok"] > 50 and slow.totals()["ok"] > 2, totals
    # requests sent before the signal, still running when it came, were all answered
    assert all(o == "ok" for c in slow.clients for t, o, _ in c.outcomes if t < t_term), slow.totals()


def test_sigkilled_worker_is_replaced_and_metrics_stay_consistent():
    loss = kernels.loss(np.array(SMALL["predictions"]), np.array(SMALL["labels"], float)).loss
    clients = 8
    with lossd_serve("--workers", "2", env={"LOSSD_ACCESS_LOG": "false"}) as srv:
        workers = _workers(srv)
        assert len(workers) == 2, workers
        stream = RequestStream(srv.port, "/loss", SMALL, loss, clients=clients, max_seconds=60).start()
        time.sleep(1.5)
        victim = workers[0]
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(srv)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        replaced = _workers(srv)
        # the replacement is serving: answers keep coming and /readyz is 200 on every worker
        time.sleep(2.0)
        stream.stop()
        # the replacement loads its kernels from the cache, then /readyz is 200 whichever
        # worker answers it
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = [httpx.get(srv.url + "/readyz", timeout=5).status_code for _ in range(20)]
            if set(ready) == {200}:
                break
            time.sleep(0.5)
        metrics = httpx.get(srv.url + "/metrics", timeout=5).text
        log = srv.stderr() + srv.stdout()
    assert len(replaced) == 2 and victim not in replaced, f"not replaced: {replaced}\n{log[-3000:]}"
    totals = stream.totals()
    assert set(totals) <= {"ok", "dropped", "unread"}, totals
    # at most the requests the dead worker held: one per connection it served
    per_client = [c.count("dropped") + c.count("unread") for c in stream.clients]
    assert max(per_client) <= 1, per_client
    assert all(end >= t_kill for c in stream.clients for _, o, end in c.outcomes if o in ("dropped", "unread"))
    assert stream.totals(after=t_kill + 1.0)["ok"] > 20, totals
    assert set(ready) == {200}, ready
    # /metrics: the dead worker's in-flight gauge is gone (nothing is in flight now), and the
    # requests it answered still count (its counter files stay). A request is counted just
    # after its answer is sent, so the dead worker may have answered, uncounted, the last
    # request of each connection it held (at most one per client), and counted, unanswered,
    # one that it was killed while sending (at most the drops).
    assert _metric(metrics, "lossd_requests_in_flight") == 1.0, \
        re.findall(r"^lossd_requests_in_flight.*$", metrics, re.M)  # only this /metrics request
    served = _metric(metrics, "lossd_requests_total", route="/loss", status="200")
    assert totals["ok"] - clients <= served <= totals["ok"] + totals["dropped"] + totals["unread"], (served, totals)


def test_while_draining_readyz_is_503_and_every_answer_closes_its_connection():
    import warnings

    from lossd.service import Settings, create_app
    from lossd.service.drain import DRAINING

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with TestClient(create_app(Settings(warmup=False))) as c:
        assert c.get("/readyz").status_code == 200
        assert "close" not in c.post("/loss", json=SMALL).headers.get("connection", "")
        DRAINING.set()
        try:
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "draining"}
            r = c.post("/loss", json=SMALL)
            assert r.status_code == 200 and r.headers["connection"] == "close"
            assert c.get("/healthz").status_code == 200  # alive: the liveness probe must not kill it
        finally:
            DRAINING.clear()


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_with_a_warmup_line_and_no_traceback(workers):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: workers and their
    large lanes too. The server exits 0 and nothing prints a traceback; the log shows
    when the warm-up was done."""
    with lossd_serve("--workers", str(workers)) as srv:
        line = srv.wait_for_output("warm-up done:", timeout=30, stream="stderr")
        assert re.search(r"warm-up done: \d+ kernel signatures in [\d.ms]+; /readyz answers 200", line), line
        assert httpx.post(srv.url + "/loss", json=SMALL, timeout=10).status_code == 200
        srv._signal_group(signal.SIGINT)
        code = srv.proc.wait(30)
        log = srv.stderr() + srv.stdout()
    assert code == 0, f"exit code {code}\n{log[-3000:]}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
