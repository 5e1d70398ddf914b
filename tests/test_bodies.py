"""Large bodies go through pooled receive buffers (service/bodies.py): the pool's
bookkeeping, and real requests whose buffers are reused across sizes (a stale tail
from a larger earlier body must never leak into a later, smaller one)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd.service.bodies import POOLED_MIN_BYTES, BufferPool
from service_helpers import json_array, lossd_serve, strict_json


def test_pool_hands_out_the_smallest_fitting_buffer_and_keeps_a_bounded_number():
    pool = BufferPool(keep=2)
    a, b, c = pool.acquire(3 << 20), pool.acquire(5 << 20), pool.acquire(POOLED_MIN_BYTES + 1)
    assert len(a) == 3 << 20 and len(b) == 5 << 20
    for buf in (a, b, c):
        pool.release(buf)
    # keep=2: the smallest (c) was dropped in favour of the larger ones
    got = pool.acquire(2 << 20)
    assert got is a  # the smallest idle buffer that fits
    assert pool.acquire(4 << 20) is b
    assert len(pool.acquire(1 << 20)) == POOLED_MIN_BYTES  # nothing idle: a new one


@pytest.fixture(scope="module")
def server():
    srv = lossd_serve(env={"LOSSD_ACCESS_LOG": "false"}).start()
    try:
        yield srv
    finally:
        srv.stop()


def _binary_infer(url: str, s: np.ndarray, y: np.ndarray, pad: int) -> float:
    head = json.dumps({"inputs": [
        {"name": "predictions", "datatype": "FP64", "shape": [s.size], "parameters": {"binary_data_size": s.nbytes}},
        {"name": "labels", "datatype": "FP64", "shape": [y.size], "parameters": {"binary_data_size": y.nbytes}}],
        "outputs": [{"name": "loss"}]}).encode() + b" " * pad
    r = httpx.post(url + "/v2/models/loss/infer", content=head + s.tobytes() + y.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)
    assert r.status_code == 200, r.text
    return float(r.json()["outputs"][0]["data"][0])


def test_pooled_buffers_reused_across_sizes_stay_exact(server):
    rng = np.random.default_rng(11)
    # sizes chosen so that each body reuses a buffer a larger one wrote before
    for n, pad in ((400_000, 0), (150_000, 3), (300_000, 5), (90_000, 1), (400_000, 7)):
        s = rng.normal(scale=4.0, size=n)
        y = (rng.random(n) < 0.3).astype(np.float64)
        assert s.nbytes * 2 > POOLED_MIN_BYTES
        assert _binary_infer(server.url, s, y, pad) == kernels.loss(s, y).loss
        body = json.dumps({"predictions": s.tolist(), "labels": y.tolist(), "reduction": "none"}).encode()
        r = httpx.post(server.url + "/loss", content=body, headers={"content-type": "application/json"},
                       timeout=60)
        assert r.status_code == 200, r.text
        got = json_array(strict_json(r.content)["losses"])
        np.testing.assert_array_equal(got, kernels.loss(s, y, reduction="none").losses)


def test_large_chunked_body_without_content_length(server):
    rng = np.random.default_rng(12)
    s, y = rng.normal(size=200_000), (rng.random(200_000) < 0.5) * 1.0
    body = json.dumps({"predictions": s.tolist(), "labels": y.tolist()}).encode()

    def pieces():
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = httpx.post(server.url + "/loss", content=pieces(), headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert "content-length" not in r.request.headers
    assert strict_json(r.content)["loss"] == kernels.loss(s, y).loss


def test_truncated_large_body_is_a_client_error(server):
    """A Content-Length above the bytes sent: the server must not hang or answer 5xx."""
    import socket
    head = (f"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {3 << 20}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(head + b"[" * 1000)
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    assert not data.startswith(b"HTTP/1.1 5"), data[:200]
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    assert "Traceback" not in server.stderr() and "Traceback" not in server.stdout()
