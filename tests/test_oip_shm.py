"""Triton's system shared memory extension (service/shm.py) through the real
``tritonclient.http`` and ``tritonclient.utils.shared_memory`` against a real ``lossd
serve`` with ``LOSSD_SHM=true`` and a bearer token (two workers: a registration must
reach every worker). Results are compared with ``kernels`` bit for bit; a client that
truncates or unlinks its region gets a 400 naming it and the workers stay alive. The
requests are computed by each worker's compute helper (LOSSD_SHM_COMPUTE=helper, the
default: service/shm_helper.py), which maps the regions; ``inline`` (preadv in the
worker) is tested by ``test_inline_mode``. The helper alone: ``test_shm_helper.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from lossd import kernels

tritonclient = pytest.importorskip("tritonclient.http")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402

from oip_helpers import expected_outputs  # noqa: E402
from service_helpers import assert_bits_equal, lossd_serve  # noqa: E402

from lossd.service.shm_helper import PROCESS_NAME  # noqa: E402

TOKEN = "shm-test-token"


def auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient adds Inference-Header-Content-Length
    to the dict it is given (a shared one would carry it into the next request)."""
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server():
    s = lossd_serve("--workers", "2", env={"LOSSD_SHM": "true", "LOSSD_API_TOKEN": TOKEN})
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture
def client(server):
    c = tritonclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60.0)
    yield c
    c.unregister_system_shared_memory(headers=auth())
    c.close()



@pytest.fixture
def region():
    """``region(name, key, byte_size)``: a shared memory region (destroyed after the test)."""
    handles = []

    def make(name: str, key: str, size: int):
        h = shm.create_shared_memory_region(name, key, size)
        handles.append(h)
        return h

    yield make
    for h in handles:
        try:
            shm.destroy_shared_memory_region(h)
        except Exception:  # unlinked by the test already
            pass


def helpers_of(server) -> dict[int, int]:
    """{helper pid: its worker's pid} of a running server."""
    out = {}
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if p.name() == PROCESS_NAME and p.status() != psutil.STATUS_ZOMBIE:
                out[p.pid] = p.ppid()
        except psutil.NoSuchProcess:
            pass
    return out


def workers_of(server) -> list[int]:
    """The uvicorn workers (the children but multiprocessing's resource tracker)."""
    return sorted(p.pid for p in psutil.Process(server.proc.pid).children()
                  if "resource_tracker" not in " ".join(p.cmdline()))


def wait_helpers(server, workers: list[int], timeout: float = 60.0) -> dict[int, int]:
    """The helpers once each worker has one (a new helper takes a few seconds to start)."""
    deadline = time.monotonic() + timeout
    while True:
        got = helpers_of(server)
        if sorted(got.values()) == sorted(workers):
            return got
        assert time.monotonic() < deadline, f"helpers {got} for workers {workers}"
        time.sleep(0.2)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def _path(key: str) -> str:
    return "/dev/shm/" + key.lstrip("/")


def _error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


def _inputs(pred, lab, region_name: str, offsets=(0, None)):
    a = tritonclient.InferInput("predictions", list(pred.shape), "FP64")
    a.set_shared_memory(region_name, pred.nbytes, offset=0)
    b = tritonclient.InferInput("labels", list(lab.shape), "FP64")
    b.set_shared_memory(region_name, lab.nbytes, offset=pred.nbytes)
    return [a, b]


def _write_inputs(h, pred, lab):
    shm.set_shared_memory_region(h, [pred])
    shm.set_shared_memory_region(h, [lab], offset=pred.nbytes)


def _small():
    rng = np.random.default_rng(14)
    return rng.normal(size=1000) * 3, (rng.random(1000) < 0.5).astype(np.float64)


def test_extension_listed_and_token_applies(client, server):
    assert "system_shared_memory" in client.get_server_metadata(headers=auth())["extensions"]
    r = httpx.get(f"{server.url}/v2/systemsharedmemory/status")
    assert r.status_code == 401
    assert client.get_system_shared_memory_status(headers=auth()) == []


@pytest.mark.parametrize("model", ["loss", "grad"])
def test_inputs_and_outputs_in_shared_memory(client, region, model):
    pred, lab = _small()
    h_in = region("in", "/lossd_test_in", pred.nbytes + lab.nbytes)
    _write_inputs(h_in, pred, lab)
    client.register_system_shared_memory("in", "/lossd_test_in", pred.nbytes + lab.nbytes, headers=auth())
    fn = kernels.loss if model == "loss" else kernels.grad
    want = expected_outputs(fn(pred, lab, reduction="none"))
    big = "losses" if model == "loss" else "grad"
    h_out = region("out", "/lossd_test_out", 64 + want[big].nbytes)
    client.register_system_shared_memory("out", "/lossd_test_out", 64 + want[big].nbytes, headers=auth())
    status = client.get_system_shared_memory_status(headers=auth())
    assert sorted(s["name"] for s in status) == ["in", "out"]
    out = tritonclient.InferRequestedOutput(big)
    out.set_shared_memory("out", want[big].nbytes, offset=64)
    plain = tritonclient.InferRequestedOutput("mean", binary_data=True)
    # every worker sees the registration: several requests land on both
    for _ in range(6):
        res = client.infer(model, _inputs(pred, lab, "in"), outputs=[out, plain],
                           parameters={"reduction": "none"}, headers=auth())
        meta = res.get_output(big)
        assert meta["parameters"]["shared_memory_region"] == "out"
        assert meta["parameters"]["shared_memory_byte_size"] == want[big].nbytes
        got = shm.get_contents_as_numpy(h_out, np.float64, want[big].shape, offset=64)
        assert_bits_equal(got, want[big], big)
        assert_bits_equal(res.as_numpy("mean"), want["mean"], "mean")


def test_refusals_name_the_region(client, region, server):
    pred, lab = _small()
    size = pred.nbytes + lab.nbytes
    h = region("r", "/lossd_test_r", size)
    _write_inputs(h, pred, lab)
    # a key outside LOSSD_SHM_PREFIX (created, so that only the prefix refuses it)
    region("other", "/other_lossd_test", 64)
    msg = _error_of(client.register_system_shared_memory, "bad", "/other_lossd_test", 64, headers=auth())
    assert "'bad'" in msg and "/lossd" in msg
    # beyond the file
    msg = _error_of(client.register_system_shared_memory, "big", "/lossd_test_r", size + 1, headers=auth())
    assert "'big'" in msg and "beyond" in msg
    msg = _error_of(client.register_system_shared_memory, "off", "/lossd_test_r", size, offset=8, headers=auth())
    assert "'off'" in msg
    # no such key
    msg = _error_of(client.register_system_shared_memory, "nokey", "/lossd_test_none", 8, headers=auth())
    assert "'nokey'" in msg
    # unknown region at infer and status
    msg = _error_of(client.infer, "loss", _inputs(pred, lab, "r"), headers=auth())
    assert "'r'" in msg and "not registered" in msg
    msg = _error_of(client.get_system_shared_memory_status, "r", headers=auth())
    assert "'r'" in msg
    client.register_system_shared_memory("r", "/lossd_test_r", size, headers=auth())
    msg = _error_of(client.register_system_shared_memory, "r", "/lossd_test_r", size, headers=auth())
    assert "'r'" in msg and "already registered" in msg
    # offset/size beyond the registered region
    a, b = _inputs(pred, lab, "r")
    b.set_shared_memory("r", lab.nbytes, offset=pred.nbytes + 8)
    msg = _error_of(client.infer, "loss", [a, b], headers=auth())
    assert "'r'" in msg and "beyond" in msg
    # byte size not matching the shape
    b.set_shared_memory("r", lab.nbytes - 8, offset=pred.nbytes)
    msg = _error_of(client.infer, "loss", [a, b], headers=auth())
    assert "'r'" in msg
    # an output span too small for the output
    out = tritonclient.InferRequestedOutput("losses")
    out.set_shared_memory("r", 16)
    msg = _error_of(client.infer, "loss", _inputs(pred, lab, "r"), outputs=[out],
                    parameters={"reduction": "none"}, headers=auth())
    assert "'r'" in msg
    assert client.infer("loss", _inputs(pred, lab, "r"), headers=auth()).as_numpy("loss") is not None
    assert server.alive()


def test_truncate_and_unlink_after_registration(client, region, server):
    workers = sorted(server.children())
    assert len(workers) >= 2
    pred, lab = _small()
    size = pred.nbytes + lab.nbytes
    h = region("t", "/lossd_test_t", size)
    _write_inputs(h, pred, lab)
    client.register_system_shared_memory("t", "/lossd_test_t", size, headers=auth())
    want = kernels.loss(pred, lab)
    assert_bits_equal(client.infer("loss", _inputs(pred, lab, "t"), headers=auth()).as_numpy("loss"),
                      np.array([want.loss]), "loss")
    fd = os.open(_path("/lossd_test_t"), os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        for _ in range(4):  # both workers
            msg = _error_of(client.infer, "loss", _inputs(pred, lab, "t"), headers=auth())
            assert "'t'" in msg and "truncated" in msg
        out = tritonclient.InferRequestedOutput("loss")
        client.unregister_system_shared_memory("t", headers=auth())
        os.ftruncate(fd, size)
        _write_inputs(h, pred, lab)
        client.register_system_shared_memory("t", "/lossd_test_t", size, headers=auth())
        o = region("to", "/lossd_test_to", 8)
        client.register_system_shared_memory("to", "/lossd_test_to", 8, headers=auth())
        out.set_shared_memory("to", 8)
        client.infer("loss", _inputs(pred, lab, "t"), outputs=[out], headers=auth())
        assert_bits_equal(shm.get_contents_as_numpy(o, np.float64, [1]), np.array([want.loss]), "loss")
        # the output region truncated: the write is refused, nothing faults
        fd2 = os.open(_path("/lossd_test_to"), os.O_RDWR)
        os.ftruncate(fd2, 0)
        os.close(fd2)
        msg = _error_of(client.infer, "loss", _inputs(pred, lab, "t"), outputs=[out], headers=auth())
        assert "'to'" in msg and "truncated" in msg
    finally:
        os.close(fd)
    os.unlink(_path("/lossd_test_t"))
    for _ in range(4):
        msg = _error_of(client.infer, "loss", _inputs(pred, lab, "t"), headers=auth())
        assert "'t'" in msg and "does not exist" in msg
    assert server.alive() and sorted(server.children()) == workers  # no worker died (SIGBUS)
    p, l = _small()
    a, b = tritonclient.InferInput("predictions", [1000], "FP64"), tritonclient.InferInput("labels", [1000], "FP64")
    a.set_data_from_numpy(p)
    b.set_data_from_numpy(l)
    r = client.infer("loss", [a, b], headers=auth())
    assert_bits_equal(r.as_numpy("loss"), np.array([kernels.loss(p, l).loss]), "loss")


@pytest.mark.parametrize("cut", ["truncate", "unlink"])
def test_truncate_during_requests(client, region, server, cut):
    """A region truncated and restored (or unlinked and made anew) over and over while
    requests read it: each answer is 200 with a finite loss or a 400 naming the region,
    never a 5xx or a dead worker. A helper that faults (SIGBUS) is replaced: afterwards
    each worker has one again and the next request is exact."""
    workers = sorted(server.children())
    n = 1_000_000
    rng = np.random.default_rng(5)
    pred, lab = rng.normal(size=n), (rng.random(n) < 0.5).astype(np.float64)
    size = pred.nbytes + lab.nbytes
    key = f"/lossd_test_d_{cut}"
    h = region("d", key, size)
    _write_inputs(h, pred, lab)
    client.register_system_shared_memory("d", key, size, headers=auth())
    want = np.array([kernels.loss(pred, lab).loss])
    fd = os.open(_path(key), os.O_RDWR)
    stop = threading.Event()

    def restore(f: int) -> None:
        os.ftruncate(f, size)
        os.pwrite(f, pred.tobytes(), 0)  # zeroes past the cut: restore them
        os.pwrite(f, lab.tobytes(), pred.nbytes)

    def flip():
        while not stop.is_set():
            if cut == "truncate":
                os.ftruncate(fd, 8 * n // 2)
                restore(fd)
            else:  # a new file under the key: the helper maps it anew
                os.unlink(_path(key))
                f = os.open(_path(key), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                restore(f)
                os.close(f)

    t = threading.Thread(target=flip)
    t.start()
    outcomes = []
    deadline = time.monotonic() + 30
    try:
        for _ in range(30):
            if time.monotonic() > deadline:
                break
            try:
                r = client.infer("loss", _inputs(pred, lab, "d"), headers=auth())
                outcomes.append("200")
                assert np.isfinite(r.as_numpy("loss")).all()  # restored data may be mid-write
            except InferenceServerException as exc:
                assert "[400]" in str(exc) and "'d'" in str(exc), str(exc)
                outcomes.append("400")
    finally:
        stop.set()
        t.join()
        os.close(fd)
    assert outcomes
    assert_bits_equal(client.infer("loss", _inputs(pred, lab, "d"), headers=auth()).as_numpy("loss"), want, "loss")
    assert server.alive() and sorted(server.children()) == workers
    wait_helpers(server, workers_of(server))


def test_helpers_map_inputs_fp32_fp64_and_outputs(client, region, server):
    """One helper per worker computes every shared memory request, reading inputs through
    mappings it keeps (seen in its /proc/<pid>/maps): FP32 inputs with a per-element
    output region, and FP64 inputs at an offset that is no multiple of 8 (copied out of
    the mapping to be aligned), bit for bit the kernels'."""
    helpers = wait_helpers(server, workers_of(server))
    rng = np.random.default_rng(32)
    n = 3000
    p64, l64 = rng.normal(size=n) * 3, (rng.random(n) < 0.5).astype(np.float64)
    p32, l32 = p64.astype(np.float32), l64.astype(np.float32)
    want32 = kernels.loss(p32, l32, reduction="none")
    want64 = kernels.grad(p64, l64, reduction="none")
    h = region("m", "/lossd_test_m", 4 + p32.nbytes + l32.nbytes + p64.nbytes + l64.nbytes)
    shm.set_shared_memory_region(h, [p32, l32], offset=0)
    odd = p32.nbytes + l32.nbytes + 4
    shm.set_shared_memory_region(h, [p64, l64], offset=odd)
    client.register_system_shared_memory("m", "/lossd_test_m", odd + p64.nbytes + l64.nbytes, headers=auth())
    ho = region("mo", "/lossd_test_mo", want32.losses.nbytes + want64.grad.nbytes)
    client.register_system_shared_memory("mo", "/lossd_test_mo", want32.losses.nbytes + want64.grad.nbytes,
                                         headers=auth())

    def inputs(dt: str, pred, lab, at: int):
        a, b = tritonclient.InferInput("predictions", [n], dt), tritonclient.InferInput("labels", [n], dt)
        a.set_shared_memory("m", pred.nbytes, offset=at)
        b.set_shared_memory("m", lab.nbytes, offset=at + pred.nbytes)
        return [a, b]

    out32 = tritonclient.InferRequestedOutput("losses")
    out32.set_shared_memory("mo", want32.losses.nbytes)
    out64 = tritonclient.InferRequestedOutput("grad")
    out64.set_shared_memory("mo", want64.grad.nbytes, offset=want32.losses.nbytes)
    mean = tritonclient.InferRequestedOutput("mean", binary_data=True)
    for _ in range(6):  # both workers
        res = client.infer("loss", inputs("FP32", p32, l32, 0), outputs=[out32, mean],
                           parameters={"reduction": "none"}, headers=auth())
        assert_bits_equal(shm.get_contents_as_numpy(ho, want32.losses.dtype, [n]), want32.losses, "losses")
        assert_bits_equal(res.as_numpy("mean"), np.array([want32.stats["mean"]]), "mean")
        res = client.infer("grad", inputs("FP64", p64, l64, odd), outputs=[out64, mean],
                           parameters={"reduction": "none"}, headers=auth())
        assert_bits_equal(shm.get_contents_as_numpy(ho, np.float64, [n], offset=want32.losses.nbytes),
                          want64.grad, "grad")
        assert_bits_equal(res.as_numpy("mean"), np.array([want64.stats["mean"]]), "mean")
    # a helper that has just been started (after an earlier test) leaves requests to
    # its worker's threads until its imports are done: a few seconds
    deadline = time.monotonic() + 30
    while not any(_path("/lossd_test_m") in _maps(pid) for pid in helpers):
        assert time.monotonic() < deadline, "no helper maps the input region"
        client.infer("loss", inputs("FP32", p32, l32, 0), headers=auth())
        time.sleep(0.2)
    assert helpers_of(server) == helpers  # none died


def test_concurrent_requests_queue_on_the_helpers(server, region):
    """16 requests at once from 8 clients (connections spread over both workers): each
    worker's helper takes them one at a time, every answer exact."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    n = 20_000
    pred, lab = rng.normal(size=n), (rng.random(n) < 0.5).astype(np.float64)
    h = region("c", "/lossd_test_c", pred.nbytes + lab.nbytes)
    _write_inputs(h, pred, lab)
    c0 = tritonclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    c0.register_system_shared_memory("c", "/lossd_test_c", pred.nbytes + lab.nbytes, headers=auth())
    want = np.array([kernels.loss(pred, lab).loss])

    def two(_: int) -> list[np.ndarray]:
        c = tritonclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60.0)
        try:
            return [c.infer("loss", _inputs(pred, lab, "c"), headers=auth()).as_numpy("loss") for _ in range(2)]
        finally:
            c.close()

    try:
        with ThreadPoolExecutor(8) as pool:
            for got in pool.map(two, range(8), timeout=120):
                for g in got:
                    assert_bits_equal(g, want, "loss")
    finally:
        c0.unregister_system_shared_memory("c", headers=auth())
        c0.close()


def test_helper_killed_between_requests(client, region, server):
    """SIGKILL to every helper while idle: the next requests are served (by new helpers,
    one per worker), exact, and no worker died."""
    workers = workers_of(server)
    old = wait_helpers(server, workers)
    pred, lab = _small()
    h = region("k", "/lossd_test_k", pred.nbytes + lab.nbytes)
    _write_inputs(h, pred, lab)
    client.register_system_shared_memory("k", "/lossd_test_k", pred.nbytes + lab.nbytes, headers=auth())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    want = np.array([kernels.loss(pred, lab).loss])
    for _ in range(6):
        assert_bits_equal(client.infer("loss", _inputs(pred, lab, "k"), headers=auth()).as_numpy("loss"),
                          want, "loss")
    new = wait_helpers(server, workers)
    assert not set(new) & set(old)
    assert server.alive() and workers_of(server) == workers


def test_inline_mode():
    """LOSSD_SHM_COMPUTE=inline: no helper, the worker reads the regions with preadv; the
    same bits, and truncation is a 400 naming the region."""
    pred, lab = _small()
    h = shm.create_shared_memory_region("i", "/lossd_test_i", pred.nbytes + lab.nbytes)
    try:
        _write_inputs(h, pred, lab)
        with lossd_serve(env={"LOSSD_SHM": "true", "LOSSD_SHM_COMPUTE": "inline"}) as s:
            c = tritonclient.InferenceServerClient(f"127.0.0.1:{s.port}")
            c.register_system_shared_memory("i", "/lossd_test_i", pred.nbytes + lab.nbytes)
            assert_bits_equal(c.infer("loss", _inputs(pred, lab, "i")).as_numpy("loss"),
                              np.array([kernels.loss(pred, lab).loss]), "loss")
            os.truncate(_path("/lossd_test_i"), 8)
            msg = _error_of(c.infer, "loss", _inputs(pred, lab, "i"))
            assert "'i'" in msg and "truncated" in msg
            assert helpers_of(s) == {}
            c.close()
    finally:
        shm.destroy_shared_memory_region(h)


def test_unregister_frees(client, region):
    pred, lab = _small()
    size = pred.nbytes + lab.nbytes
    h = region("u", "/lossd_test_u", size)
    _write_inputs(h, pred, lab)
    client.register_system_shared_memory("u", "/lossd_test_u", size, headers=auth())
    client.register_system_shared_memory("u2", "/lossd_test_u", size, headers=auth())
    assert [s["name"] for s in client.get_system_shared_memory_status("u", headers=auth())] == ["u"]
    client.unregister_system_shared_memory("u", headers=auth())
    msg = _error_of(client.infer, "loss", _inputs(pred, lab, "u"), headers=auth())
    assert "'u'" in msg and "not registered" in msg
    assert [s["name"] for s in client.get_system_shared_memory_status(headers=auth())] == ["u2"]
    client.unregister_system_shared_memory(headers=auth())
    assert client.get_system_shared_memory_status(headers=auth()) == []
    client.register_system_shared_memory("u", "/lossd_test_u", size, headers=auth())  # free again


def test_off_by_default():
    with lossd_serve() as s:  # __enter__ starts it
        c = tritonclient.InferenceServerClient(f"127.0.0.1:{s.port}")
        assert "system_shared_memory" not in c.get_server_metadata()["extensions"]
        for call in (lambda: c.get_system_shared_memory_status(),
                     lambda: c.register_system_shared_memory("x", "/lossd_x", 8),
                     lambda: c.unregister_system_shared_memory()):
            _error_of(call)
        r = httpx.post(f"{s.url}/v2/systemsharedmemory/region/x/register",
                       json={"key": "/lossd_x", "offset": 0, "byte_size": 8})
        assert r.status_code == 404
        pred, lab = _small()
        msg = _error_of(c.infer, "loss", _inputs(pred, lab, "x"))
        assert "LOSSD_SHM" in msg


# ------------------------------------------------------------------ the registry alone

def _registry(tmp_path):
    from lossd.service.shm import Registry

    return Registry(str(tmp_path), "/lossd")


def test_registry_refuses_links_fifos_and_bad_keys(tmp_path):
    from lossd.service.errors import RequestError

    reg = _registry(tmp_path)
    made = []
    try:
        target = "/dev/shm/lossd_test_target"
        with open(target, "wb") as f:
            f.write(b"\0" * 64)
        made.append(target)
        os.symlink(target, "/dev/shm/lossd_test_link")
        made.append("/dev/shm/lossd_test_link")
        os.mkfifo("/dev/shm/lossd_test_fifo")
        made.append("/dev/shm/lossd_test_fifo")
        for key, words in (("/lossd_test_link", "cannot be opened"), ("/lossd_test_fifo", "not a shared memory"),
                           ("/lossd/../etc", "not a POSIX"), ("/lossd_test_target", None)):
            if words is None:
                assert reg.register("ok", key, 0, 64).byte_size == 64
                continue
            with pytest.raises(RequestError) as exc:
                reg.register("x", key, 0, 8)
            assert "'x'" in exc.value.message and words in exc.value.message
        for bad in ((-1, 8), (0, -8), (True, 8), (0, "8")):
            with pytest.raises(RequestError):
                reg.register("y", "/lossd_test_target", *bad)
        assert [r.name for r in reg.regions()] == ["ok"]
        assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]  # no temporary left
    finally:
        for m in made:
            os.unlink(m)


def test_registry_reads_and_writes(tmp_path):
    reg = _registry(tmp_path)
    key, path = "/lossd_test_rw", "/dev/shm/lossd_test_rw"
    data = np.arange(10, dtype=np.float64)
    with open(path, "wb") as f:
        f.write(b"\0" * 8 + data.tobytes() + b"\0" * 80)
    try:
        reg.register("rw", key, 8, 160)
        p = {"shared_memory_region": "rw", "shared_memory_byte_size": 80}
        assert np.array_equal(reg.read("x", p, np.dtype("<f8"), 10), data)
        span = reg.check_output("y", {**p, "shared_memory_offset": 80})
        reg.write("y", span, data * 2)
        with open(path, "rb") as f:
            assert np.array_equal(np.frombuffer(f.read()[88:168]), data * 2)
        assert np.array_equal(reg.read("x", p, np.dtype("<f8"), 10), data)  # the reused buffer, refilled
    finally:
        os.unlink(path)


def test_registry_and_helpers_gone_at_exit():
    """SIGTERM to lossd serve alone (not its process group): it exits 0, its registry
    directory is removed and no compute helper outlives it."""
    with lossd_serve("--workers", "2", env={"LOSSD_SHM": "true"}) as s:
        mine = [d for d in os.listdir("/dev/shm") if d.startswith(f"lossd-registry-{s.proc.pid}-")]
        assert len(mine) == 1
        helpers = [psutil.Process(pid) for pid in wait_helpers(s, workers_of(s))]
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
        gone, alive = psutil.wait_procs(helpers, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "helpers outlived the server"
    assert not os.path.exists(os.path.join("/dev/shm", mine[0]))


def test_grpc_shared_memory():
    """The same over gRPC (tritonclient.grpc): register, status, infer with inputs and an
    output in regions, refusals naming the region, unregister; the extension listed."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from service_helpers import free_port

    grpc_port = free_port()
    pred, lab = _small()
    size = pred.nbytes + lab.nbytes
    want = kernels.loss(pred, lab, reduction="none")
    h = shm.create_shared_memory_region("g", "/lossd_test_g", size)
    ho = shm.create_shared_memory_region("go", "/lossd_test_go", want.losses.nbytes)
    try:
        _write_inputs(h, pred, lab)
        with lossd_serve(env={"LOSSD_SHM": "true", "LOSSD_GRPC_PORT": str(grpc_port)}) as s:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            assert "system_shared_memory" in c.get_server_metadata(as_json=True)["extensions"]
            c.register_system_shared_memory("g", "/lossd_test_g", size)
            c.register_system_shared_memory("go", "/lossd_test_go", want.losses.nbytes)
            status = c.get_system_shared_memory_status(as_json=True)["regions"]
            assert sorted(status) == ["g", "go"] and int(status["g"]["byte_size"]) == size
            msg = _error_of(c.register_system_shared_memory, "g", "/lossd_test_g", size)
            assert "'g'" in msg and "already registered" in msg
            a = grpcclient.InferInput("predictions", [1000], "FP64")
            a.set_shared_memory("g", pred.nbytes)
            b = grpcclient.InferInput("labels", [1000], "FP64")
            b.set_shared_memory("g", lab.nbytes, offset=pred.nbytes)
            o = grpcclient.InferRequestedOutput("losses")
            o.set_shared_memory("go", want.losses.nbytes)
            m = grpcclient.InferRequestedOutput("mean")
            res = c.infer("loss", [a, b], outputs=[o, m], parameters={"reduction": "none"})
            assert_bits_equal(res.as_numpy("mean"), np.array([want.stats["mean"]]), "mean")
            assert_bits_equal(shm.get_contents_as_numpy(ho, np.float64, [1000]), want.losses, "losses")
            # computed by the worker's helper, through its mappings (ready once /readyz is 200)
            (helper,) = helpers_of(s)  # one worker, one helper
            assert all(_path(k) in _maps(helper) for k in ("/lossd_test_g", "/lossd_test_go"))
            c.unregister_system_shared_memory("g")
            msg = _error_of(c.infer, "loss", [a, b])
            assert "'g'" in msg and "not registered" in msg
            c.unregister_system_shared_memory()
            assert not c.get_system_shared_memory_status(as_json=True).get("regions")
            c.close()
        with lossd_serve(env={"LOSSD_GRPC_PORT": str(grpc_port)}):  # off: UNIMPLEMENTED, clear 400 at infer
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            assert "LOSSD_SHM" in _error_of(c.get_system_shared_memory_status)
            assert "LOSSD_SHM" in _error_of(c.infer, "loss", [a, b])
            c.close()
    finally:
        shm.destroy_shared_memory_region(h)
        shm.destroy_shared_memory_region(ho)


def test_app_in_process_owns_its_registry():
    """``create_app`` without LOSSD_SHM_DIR makes its own registry at start and removes it
    at shutdown (nothing is made by merely building the app)."""
    from fastapi.testclient import TestClient

    from lossd.service import Settings, create_app

    app = create_app(Settings(shm=True, warmup=False, lane_bytes=0))
    path = "/dev/shm/lossd_test_app"
    with open(path, "wb") as f:
        f.write(b"\0" * 16)
    try:
        before = set(os.listdir("/dev/shm"))
        with TestClient(app) as c:
            made = [d for d in set(os.listdir("/dev/shm")) - before if d.startswith("lossd-registry-")]
            assert len(made) == 1
            r = c.post("/v2/systemsharedmemory/region/a/register", json={"key": "/lossd_test_app", "byte_size": 16})
            assert r.status_code == 200, r.text
            assert c.get("/v2/systemsharedmemory/status").json() == [
                {"name": "a", "key": "/lossd_test_app", "offset": 0, "byte_size": 16}]
            r = c.post("/v2/systemsharedmemory/region/a/register", json={"key": "/lossd_test_app", "size": 16})
            assert r.status_code == 400 and "'a'" in r.json()["error"]
        assert not os.path.exists(os.path.join("/dev/shm", made[0]))
    finally:
        os.unlink(path)


def test_read_buffers_are_reused_and_capped(monkeypatch):
    """Inputs are read into a thread's kept buffers, all of them together under
    POOL_MAX_BYTES; beyond it a read gets fresh memory that is not kept."""
    import threading

    from lossd.service import shm as service_shm

    monkeypatch.setattr(service_shm, "POOL_MAX_BYTES", 1000)
    got = {}

    def run():
        a = service_shm._buffer(0, 600)
        got["reused"] = np.shares_memory(a, service_shm._buffer(0, 500))
        b = service_shm._buffer(1, 600)  # 600 + 600 > 1000: fresh, not kept
        got["fresh"] = not np.shares_memory(b, service_shm._buffer(1, 600))
        got["kept"] = sum(len(x) for x in service_shm._local.bufs if x is not None)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got == {"reused": True, "fresh": True, "kept": 600}
