"""The container image, end to end: built by `make image`, run read-only on a free loopback
port. Ready in under 10 s having loaded every kernel from the baked cache (nothing
compiled, nothing written), non-root, answers equal to the in-process kernels bit for
bit (JSON and binary OIP), and SIGTERM under a stream of requests answers every accepted
request and exits 0.

Skipped, with the reason, only where no Docker engine can run (deploy/docker-setup.sh
installs and starts one where it is missing and this runs as root)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from packaging.utils import canonicalize_name as canonical
from packaging.version import Version
from container_helpers import Container, build_image, docker_unavailable_reason
from service_helpers import assert_same, check_grad_body, expected_loss_body, free_port, jsonable
from stream_helpers import RequestStream, assert_drained

from lossd import kernels

READY_WITHIN = 10.0  # s from `docker run` to /readyz 200 (the goal)
GRACE = 8.0          # LOSSD_GRACEFUL_TIMEOUT of the container under test


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    reason = docker_unavailable_reason()
    if reason:
        print(f"\nSKIPPED container tests: {reason}")
        pytest.skip(reason)
    build_image(tmp_path_factory.mktemp("image") / "build.log")
    return "built"


@pytest.fixture(scope="module")
def container(image):
    c = Container(free_port(), env={"NUMBA_DEBUG_CACHE": "1", "LOSSD_GRACEFUL_TIMEOUT": str(GRACE),
                                    "LOSSD_WORKERS": "2", "LOSSD_ACCESS_LOG": "false"})
    try:
        c.start()
        c.ready_after = c.wait_ready(timeout=READY_WITHIN)
        yield c
    finally:
        c.remove()


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 6, n)
    s[:4] = [37.0, -745.5, np.inf, -np.inf]
    return s, (rng.random(n) > 0.4).astype(np.float64)


def test_ready_in_seconds_from_the_baked_cache(container):
    assert container.ready_after < READY_WITHIN
    logs = container.logs()
    loaded = re.findall(r"\[cache\] data loaded from", logs)
    saved = re.findall(r"\[cache\] (?:data|index) saved to.*", logs)
    assert not saved, f"compiled in the container: {saved[:5]}"
    assert len(loaded) >= 2 * 54, f"{len(loaded)} overloads loaded from the cache\n{logs[-3000:]}"
    # the kernels chose a portable level and linked the baked folder for it
    assert re.search(r"x86-64-v[234]", container.exec("sh", "-c", "ls -la /tmp/lossd-numba/*/ | head -5"))


@pytest.mark.parametrize("level", ["x86-64-v2", "x86-64-v3"])
def test_every_baked_level_loads_without_compiling(image, level):
    """This CPU picks the best level it runs; the other baked levels (what other CPUs pick)
    must be complete too. Skipped for a level this CPU cannot run."""
    import llvmlite.binding as llvm

    from lossd.kernels import _target

    if level not in _target.supported_levels(llvm.get_host_cpu_features()):
        pytest.skip(f"this CPU cannot run {level}")
    c = Container(free_port(), env={"NUMBA_DEBUG_CACHE": "1", "LOSSD_CPU_TARGET": level})
    try:
        c.start()
        c.wait_ready(timeout=READY_WITHIN)
        logs = c.logs()
    finally:
        c.remove()
    assert not re.findall(r"\[cache\] (?:data|index) saved to.*", logs), f"{level} compiled in the container"
    assert len(re.findall(r"\[cache\] data loaded from", logs)) >= 54


def test_runs_as_non_root(container):
    pids = container.host_pids()
    assert len(pids) >= 3, pids  # tini, lossd serve, 2 workers
    for pid in pids:
        uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
        assert uid != "0", f"process {pid} runs as root"
    assert container.exec("id", "-u").strip() == "10001"


def test_installs_exactly_the_service_lock_and_names_no_server(container):
    """Issue 12: the image's venv holds the service lock's versions and nothing else (but
    lossd; setuptools, which only built it, is removed), and answers carry no Server header."""
    import httpx
    from test_locks import LOCKS, read_lock

    out = container.exec("python3", "-c", "import importlib.metadata as m\n"
                         "for d in m.distributions(): print(d.metadata['Name'], d.version)")
    installed = {canonical(name): Version(v) for name, v in (line.split() for line in out.splitlines())}
    locked = {name: version for name, (version, _) in read_lock(LOCKS / "service.lock").items()}
    locked.pop("setuptools")
    installed.pop("lossd")
    assert installed == locked
    r = httpx.get(container.url + "/healthz", timeout=10)
    assert r.status_code == 200 and "server" not in r.headers and r.headers["x-content-type-options"] == "nosniff"


def test_answers_equal_the_in_process_kernels(container):
    import httpx

    s, y = _data(50_000, 3)  # many blocks: the parallel driver and the block merge
    r = kernels.loss(s, y, reduction="none", quantiles=(0.5,))
    got = httpx.post(container.url + "/loss", json={"predictions": jsonable(s), "labels": y.tolist(),
                                                    "reduction": "none", "quantiles": [0.5]}, timeout=60)
    assert got.status_code == 200, got.text
    assert_same(got.json(), expected_loss_body(r, reduction="none"))
    g = kernels.grad(s, y, pos_weight=2.0)
    got = httpx.post(container.url + "/grad", json={"predictions": jsonable(s), "labels": y.tolist(),
                                                    "pos_weight": 2.0}, timeout=60)
    assert got.status_code == 200, got.text
    check_grad_body(got.json(), g)


def test_binary_oip_infer_equals_the_in_process_kernels(container):
    httpclient = pytest.importorskip("tritonclient.http")
    s, y = _data(40_000, 4)
    s32 = s.astype(np.float32)
    c = httpclient.InferenceServerClient(f"127.0.0.1:{container.port}")
    inputs = [httpclient.InferInput("predictions", s32.shape, "FP32"),
              httpclient.InferInput("labels", y.shape, "FP64")]
    inputs[0].set_data_from_numpy(s32, binary_data=True)
    inputs[1].set_data_from_numpy(y, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("losses", "mean", "max")]
    res = c.infer("loss", inputs, outputs=outputs, parameters={"reduction": "none"})
    want = kernels.loss(s32, y, reduction="none")
    for name, value in (("losses", want.losses), ("mean", want.stats["mean"]), ("max", want.stats["max"])):
        got = np.asarray(res.as_numpy(name), dtype=np.float64).ravel()
        exp = np.atleast_1d(np.asarray(value, dtype=np.float64))
        assert got.shape == exp.shape and np.array_equal(got.view(np.uint64), exp.view(np.uint64)), name


def test_nothing_compiled_or_written_after_requests(container):
    # every cache entry is still a link to the baked tree: nothing was compiled for the
    # requests above either (a compile would write a real file next to the links)
    files = container.exec("find", "/tmp/lossd-numba", "-type", "f", "-not", "-name", ".lossd-link.lock")
    assert files.strip() == "", f"written in the container's cache: {files[:2000]}"
    assert int(container.exec("sh", "-c", "find /tmp/lossd-numba -type l | wc -l")) > 50


def test_sigterm_under_a_stream_answers_every_accepted_request_and_exits_0(image):
    small = {"predictions": [0.5, -1.0, 2.0, 3.5, -0.25, 1.0, 0.0, -3.0, 4.0, 0.125],
             "labels": [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]}
    small_loss = kernels.loss(np.array(small["predictions"]), np.array(small["labels"], float)).loss
    s, y = _data(200_000, 5)
    s = np.round(np.where(np.isfinite(s), s, 0.0), 6)
    big, big_loss = {"predictions": s.tolist(), "labels": y.tolist()}, kernels.loss(s, y).loss
    c = Container(free_port(), env={"LOSSD_GRACEFUL_TIMEOUT": str(GRACE), "LOSSD_WORKERS": "2",
                                    "LOSSD_ACCESS_LOG": "false"})
    try:
        c.start()
        c.wait_ready(timeout=30)
        fast = RequestStream(c.port, "/loss", small, small_loss, clients=6, max_seconds=60).start()
        slow = RequestStream(c.port, "/loss", big, big_loss, clients=2, max_seconds=60).start()
        time.sleep(1.5)
        t_term = time.monotonic()
        c.signal("TERM")
        code = c.wait_exit(timeout=GRACE + 20)
        took = time.monotonic() - t_term
        fast.join(30)
        slow.join(30)
        logs = c.logs()
    finally:
        c.remove()
    totals = fast.totals() + slow.totals()
    assert code == 0, f"exit code {code}\n{logs[-3000:]}"
    assert took < GRACE + 3, f"took {took:.1f} s to exit (grace {GRACE} s)"
    assert_drained([fast, slow], t_term, 2, logs)
    assert fast.totals()["ok"] > 50 and slow.totals()["ok"] > 2, totals
    assert all(o == "ok" for cl in slow.clients for t, o, _ in cl.outcomes if t < t_term), slow.totals()


def test_bench_container_start_quick_reports_start_and_link_times(image, tmp_path):
    import os
    import subprocess
    import sys

    from container_helpers import IMAGE, ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "container_start.py"), "--quick",
                           "--image", IMAGE, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "container_start.md").read_text()
    for label in ("portable (baked), 1 worker", "portable (baked), 2 workers"):
        (row,) = [ln for ln in md.splitlines() if ln.startswith(f"| {label} ")]
        assert 0 < float(row.split("|")[2]) < READY_WITHIN, row
    assert re.search(r"\| links, one per file \(x86-64-v[234]: \d+ files", md), md
