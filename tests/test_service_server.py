"""The real server: ``lossd serve`` (and ``python -m service``) as a process on a free
127.0.0.1 port, spoken to over HTTP with httpx (and raw sockets where the wire matters):
basics, 200 requests from 32 concurrent clients, malformed bodies and HTTP-level garbage
never hurting it, 413 for bodies over the limit, metrics summed over workers.

Servers are module-scoped fixtures (a start costs ~2 s); every one is stopped in its
teardown (SIGTERM to its process group, SIGKILL after a grace period). Expected numbers
come from ``kernels`` in this process and are compared to the last bit.
"""

from __future__ import annotations

import asyncio
import glob
import json
import math
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from lossd import kernels

from service_helpers import (JSON, _check_alive, _post, ServerProcess, assert_same, check_grad_body, dumps,
                             expected_loss_body, jsonable, lossd_serve, parse_raw_response, raw_http,
                             strict_json)

SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def small_server():
    """``python -m lossd serve`` with the body limit from LOSSD_MAX_BODY_BYTES."""
    s = ServerProcess([sys.executable, "-m", "lossd", "serve", "--host", "127.0.0.1", "--port", "{port}"],
                      env={"LOSSD_MAX_BODY_BYTES": str(SMALL_LIMIT)})
    try:
        yield s.start()
    finally:
        s.close()


# --------------------------------------------------------------------------- basics

def test_readyz_healthz_and_a_request(server):
    r = httpx.get(server.url + "/readyz", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "signatures": kernels.warmup()}
    _check_alive(server)
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in server.stderr() + server.stdout()


def test_415_and_404_on_the_wire(server):
    body = dumps({"predictions": [1.0], "labels": [1]})
    r = httpx.post(server.url + "/loss", content=body, timeout=10)  # no Content-Type
    assert r.status_code == 415
    assert r.json() == {"detail": "Content-Type is missing; send 'Content-Type: application/json'"}
    r = httpx.post(server.url + "/grad", content=body, headers={"content-type": "text/plain"}, timeout=10)
    assert r.status_code == 415
    assert r.json() == {"detail": "Content-Type 'text/plain' is not supported; send application/json"}
    assert httpx.get(server.url + "/nope", timeout=10).status_code == 404


def test_docs_work_offline(server):
    html = httpx.get(server.url + "/docs", timeout=10).text
    assert "https://" not in html and "http://" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(urls) >= 3 and all(u.startswith("/docs/assets/") for u in urls), urls
    for u in urls:
        a = httpx.get(server.url + u, timeout=10)
        assert a.status_code == 200 and len(a.content) > 100, u
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert "LossRequest" in spec["components"]["schemas"]


# ---------------------------------------------------------------------- concurrency

def _job(i: int, rng: np.random.Generator):
    """(path, body bytes, check(body)) for request ``i``: a mix of endpoints, options and
    sizes (tiny, over the 64 KiB inline limit, over the kernels' parallel threshold)."""
    kind = i % 8
    n = [1, 3, 17, 100, 500][i % 5]
    if i % 40 == 13:
        n = 4000  # ~80 KB of JSON: runs in the kernel thread pool
    if i in (50, 150):
        n = 40000  # the kernels' parallel path
    pred = rng.normal(0, 4, n)
    lab = rng.integers(0, 2, n).astype(np.float64)
    if kind == 0:
        req = {"predictions": pred.tolist(), "labels": lab.tolist()}
        r = kernels.loss(pred, lab)
        return "/loss", dumps(req), lambda b: assert_same(b, expected_loss_body(r))
    if kind == 1:
        soft = rng.uniform(0, 1, n)
        w = rng.uniform(0, 2, n)
        req = {"predictions": pred.tolist(), "labels": soft.tolist(), "sample_weight": w.tolist(),
               "reduction": "none"}
        r = kernels.loss(pred, soft, sample_weight=w, reduction="none")
        return "/loss", dumps(req), lambda b: assert_same(b, expected_loss_body(r, reduction="none"))
    if kind == 2:
        p = 1 / (1 + np.exp(-pred))
        req = {"predictions": p.tolist(), "labels": lab.tolist(), "input": "probabilities",
               "loss": "focal", "alpha": 0.25, "reduction": "none"}
        g = kernels.grad(p, lab, input="probabilities", loss="focal", alpha=0.25, reduction="none")
        return "/grad", dumps(req), lambda b: check_grad_body(b, g, input="probabilities", loss="focal",
                                                              reduction="none")
    if kind == 3:
        k = 3
        rows = max(1, n // k)
        P = rng.normal(0, 2, (rows, k))
        Y = rng.integers(0, 2, (rows, k)).astype(np.float64)
        pw = [1.0, 2.0, 0.5]
        req = {"predictions": P.tolist(), "labels": Y.tolist(), "pos_weight": pw, "reduction": "sum",
               "quantiles": [0.5, 0.9]}
        r = kernels.loss(P, Y, pos_weight=pw, reduction="sum", quantiles=[0.5, 0.9])
        return "/loss", dumps(req), lambda b: assert_same(b, expected_loss_body(r, reduction="sum"))
    if kind == 4:
        rows = max(1, n // 4)
        X = rng.normal(size=(rows, 4))
        y = rng.integers(0, 2, rows).astype(np.float64)
        c = rng.normal(size=4)
        req = {"wrt": "params", "features": X.tolist(), "labels": y.tolist(), "coef": c.tolist(),
               "intercept": -0.5, "l2": 0.01}
        p = kernels.logreg_grad(X, y, c, -0.5, l2=0.01)
        want = {"loss": p.loss, "grad": {"coef": p.coef, "intercept": p.intercept}}
        return "/grad", dumps(req), lambda b: assert_same(b, want)
    if kind == 5:
        m = pred.copy()
        m[::7] = math.inf
        m[3::7] = -math.inf
        y = 2 * lab - 1
        req = {"predictions": m.tolist(), "labels": y.tolist(), "input": "margins", "loss": "hinge",
               "reduction": "none"}  # json.dumps writes bare Infinity tokens
        r = kernels.loss(m, y, input="margins", loss="hinge", reduction="none")
        return "/loss", dumps(req), lambda b: assert_same(b, expected_loss_body(
            r, input="margins", loss="hinge", reduction="none"))
    if kind == 6:
        s = pred.copy()
        s[1::5] = -math.inf
        req = {"predictions": jsonable(s), "labels": lab.tolist()}  # "-Infinity" strings
        g = kernels.grad(s, lab)
        return "/grad", dumps(req), lambda b: check_grad_body(b, g)
    p = 1 / (1 + np.exp(-pred))
    req = {"predictions": p.tolist(), "labels": lab.tolist(), "input": "probabilities", "eps": 1e-6,
           "dtype": "float32", "reduction": "none"}
    r = kernels.loss(p.astype(np.float32), lab.astype(np.float32), input="probabilities", eps=1e-6,
                     dtype="float32", reduction="none")
    return "/loss", dumps(req), lambda b: assert_same(b, expected_loss_body(
        r, input="probabilities", reduction="none"))


def test_200_requests_from_32_concurrent_clients_are_exact(server):
    rng = np.random.default_rng(2024)
    jobs = [_job(i, rng) for i in range(200)]
    results: list[tuple[int, str] | None] = [None] * len(jobs)
    in_flight = {"now": 0, "max": 0}

    async def client_loop(queue: asyncio.Queue) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as c:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path, body, _ = jobs[i]
                in_flight["now"] += 1
                in_flight["max"] = max(in_flight["max"], in_flight["now"])
                try:
                    r = await c.post(path, content=body, headers=JSON)
                finally:
                    in_flight["now"] -= 1
                results[i] = (r.status_code, r.text)

    async def main() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)
        await asyncio.wait_for(asyncio.gather(*(client_loop(queue) for _ in range(32))), timeout=120)

    t0 = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert in_flight["max"] > 16, in_flight  # the clients really overlapped
    for i, ((path, _, check), res) in enumerate(zip(jobs, results)):
        assert res is not None, f"request {i} got no answer"
        status, text = res
        assert status == 200, (i, path, text[:500])
        try:
            check(strict_json(text))
        except AssertionError as exc:
            raise AssertionError(f"request {i} ({path}): {exc}") from None
    assert server.alive() and elapsed < 120


# ------------------------------------------------------- client mistakes never 5xx

def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


MALFORMED = [
    b"", b" ", b"not json", b"{", b'{"predictions": [1, 2', b'{"predictions": [1], "labels": [1]} trailing',
    b"null", b"true", b"1", b'"text"', b"[]", b"[1, 2]", b"NaN", b"Infinity", b"{}",
    _nested(5000).encode(), ('{"a":' * 3000 + "1" + "}" * 3000).encode(),
    ('{"predictions": ' + _nested(5000, "NaN") + ', "labels": [1]}').encode(),
    ('{"predictions": ' + _nested(900, "NaN") + ', "labels": [1]}').encode(),
    ('{"predictions": ' + _nested(100) + ', "labels": ' + _nested(100) + "}").encode(),
    b'{"predictions": [1e400], "labels": [1]}', b'{"predictions": [-1e400, 1], "labels": [1, 0]}',
    ('{"predictions": [1, ' + "9" * 400 + '], "labels": [1, 0]}').encode(),
    b'{"predictions": [1], "labels": [1], "gamma": 1e999}',
    b'{"predictions": "abc", "labels": [1]}', b'{"predictions": ["x"], "labels": [1]}',
    ('{"predictions": ["' + "x" * 100_000 + '"], "labels": [1]}').encode(),
    b'{"predictions": [null], "labels": [1]}', b'{"predictions": null, "labels": null}',
    b'{"predictions": {"a": 1}, "labels": [1]}', b'{"predictions": [{"a": 1}], "labels": [1]}',
    b'{"predictions": [true], "labels": ["1"]}',
    b'{"predictions": [[[1, 2]]], "labels": [[[1, 0]]]}', b'{"predictions": [], "labels": []}',
    b'{"predictions": [[]], "labels": [[]]}', b'{"predictions": [1, 2, 3], "labels": [1, 0]}',
    b'{"predictions": [[1, 2], [3]], "labels": [[1, 0], [1]]}', b'{"predictions": [[1, 2], 3], "labels": [1, 0]}',
    b'{"predictions": [1, [2, 3]], "labels": [1, 0]}',
    b'{"predictions": [NaN], "labels": [1]}', b'{"predictions": [1], "labels": [NaN]}',
    b'{"predictions": [-NaN], "labels": [1]}', b'{"predictions": ["NaN", "nan"], "labels": [1, 0]}',
    b'{"predictions": [1], "labels": [1], "sample_weight": [NaN]}',
    b'{"predictions": [1], "labels": [1], "pos_weight": NaN}',
    b'{"predictions": [1], "labels": [1], "label_smoothing": NaN}',
    b'{"predictions": [1], "labels": [1], "quantiles": [NaN]}',
    b'{"predictions": [1], "labels": [1], "gamma": Infinity, "loss": "focal"}',
    b'{"predictions": [1], "labels": [1], "reduction": null}', b'{"predictions": [1], "labels": [1], "dtype": 32}',
    b'{"predictions": [1], "labels": [1], "quantiles": "all"}', b'{"predictions": [1], "labels": [1], "pos_weight": "x"}',
    b'{"predictions": [1], "labels": [1], "input": ' + _nested(500).encode() + b"}",
    b'{"predictions": [1], "labels": [1], "pos_weight": ' + _nested(900, "NaN").encode() + b"}",
    b'{"predictions": [1], "labels": [1], "extra": ' + _nested(900, "NaN").encode() + b"}",
    b'{"predictions": [1], "labels": [2]}', b'{"predictions": [1.5], "labels": [1], "input": "probabilities"}',
    b'\xff\xfe\x00{', b'{"predictions": [1], "labels": [1], "x": "\xff\xfe NaN"}',
    '{"predictions": [1], "labels": [1]}'.encode("utf-16"), b'{"predictions": ["\\ud800"], "labels": [1]}',
    b'{"predictions": [1], "labels": [1], "wrt": "params"}',
    b'{"wrt": "params", "features": [[1, 2]], "labels": [1], "coef": [1]}',
    b'{"wrt": "params", "features": "x", "labels": [1], "coef": [1]}',
    b'{"wrt": "params", "features": [[NaN]], "labels": [1], "coef": [1]}',
    b'{"wrt": "params", "features": [[1]], "labels": [1], "coef": [1], "intercept": NaN}',
    b'{"wrt": "params", "features": [[1]], "labels": [1], "coef": [1], "l2": -Infinity}',
    b"predictions=1&labels=1",
]


def test_malformed_bodies_are_4xx_and_never_hurt_the_server(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        for body in MALFORMED:
            for path in ("/loss", "/grad"):
                r = c.post(path, content=body, headers=JSON)
                assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text[:300])
                assert r.status_code == 422, (path, body[:80], r.text[:300])
                detail = r.json()["detail"]
                assert isinstance(detail, list) and detail[0]["msg"], detail
                assert "Traceback" not in r.text and 'File "' not in r.text
                assert len(r.content) < 10_000, "the error echoes too much of the body"
    _check_alive(server)
    log = server.stderr() + server.stdout()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def test_http_level_garbage_never_hurts_the_server(server):
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n",
        b"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /loss HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xff\xfe\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello
    ]
    for data in garbage:
        buf = raw_http(server.port, data, timeout=5.0)
        if buf:
            status, headers, _ = parse_raw_response(buf)
            assert status < 500, (data[:60], buf[:300])
            if b"X-Request-ID" in data:
                assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    _check_alive(server)


# ------------------------------------------------------------------------ body limit

def _padded(body: dict, size: int) -> bytes:
    raw = dumps(body)
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))  # trailing whitespace is valid JSON


def test_python_m_service_serve_starts_and_reads_env(small_server):
    _check_alive(small_server)
    assert small_server.argv_template[1:3] == ["-m", "lossd"]
    r = _post(small_server.url + "/loss", _padded({"predictions": [1.0], "labels": [1]}, SMALL_LIMIT + 1))
    assert r.status_code == 413  # LOSSD_MAX_BODY_BYTES from the environment


def test_413_by_content_length(small_server):
    url = small_server.url + "/loss"
    body = {"predictions": [0.5, -2.0], "labels": [1, 0]}
    r = _post(url, _padded(body, SMALL_LIMIT))  # exactly the limit: accepted
    assert r.status_code == 200, r.text
    assert_same(strict_json(r.text), expected_loss_body(kernels.loss(np.array([0.5, -2.0]), np.array([1.0, 0.0]))))
    r = _post(url, _padded(body, SMALL_LIMIT + 1))
    assert r.status_code == 413
    assert r.json() == {"detail": f"the body has {SMALL_LIMIT + 1} bytes; the limit is {SMALL_LIMIT}"}
    r = _post(small_server.url + "/grad", b"x" * 100_000)
    assert r.status_code == 413
    _check_alive(small_server)


def test_413_is_sent_before_the_body_arrives(small_server):
    """A Content-Length over the limit is refused from the headers alone: the answer
    comes while the client has sent none of the body."""
    head = (b"POST /loss HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    t0 = time.monotonic()
    buf = raw_http(small_server.port, head, timeout=5.0)
    assert buf, "no answer before the body"
    status, headers, body = parse_raw_response(buf)
    assert status == 413 and time.monotonic() - t0 < 5.0
    assert json.loads(body) == {"detail": f"the body has 1000000000 bytes; the limit is {SMALL_LIMIT}"}
    assert headers.get("connection") == "close"
    _check_alive(small_server)


def test_413_for_a_chunked_body(small_server):
    """No Content-Length (httpx streams a generator with Transfer-Encoding: chunked):
    the limit is counted as the body streams in."""
    url = small_server.url + "/loss"

    def chunks(data: bytes, size: int = 1000):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    pred, lab = np.array([0.5, -2.0]), np.array([1.0, 0.0])
    body = {"predictions": pred.tolist(), "labels": lab.tolist()}
    with httpx.Client(timeout=30.0) as c:
        r = c.post(url, content=chunks(_padded(body, SMALL_LIMIT)), headers=JSON)  # the limit: accepted
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.request.headers
        assert r.status_code == 200, r.text
        r = c.post(url, content=chunks(_padded(body, SMALL_LIMIT + 1)), headers=JSON)
        assert r.status_code == 413
        assert r.json() == {"detail": f"the body is over the limit of {SMALL_LIMIT} bytes"}
        r = c.post(url, content=chunks(b" " * 200_000, 8192), headers=JSON)
        assert r.status_code == 413
        # the same client (and connection, if kept) still works afterwards
        r = c.post(url, content=dumps(body), headers=JSON)
        assert r.status_code == 200
        assert_same(strict_json(r.text), expected_loss_body(kernels.loss(pred, lab)))
    _check_alive(small_server)


def test_413_chunked_before_the_body_ends(small_server):
    """Chunks over the limit and no final chunk: the 413 arrives anyway (the server does
    not wait to buffer the whole body)."""
    head = (b"POST /loss HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"800\r\n" + b" " * 0x800 + b"\r\n"
    buf = raw_http(small_server.port, head + chunk * 3, timeout=5.0)
    assert buf, "no answer while the body is still open"
    status, _, body = parse_raw_response(buf)
    assert status == 413
    assert json.loads(body) == {"detail": f"the body is over the limit of {SMALL_LIMIT} bytes"}
    _check_alive(small_server)


def test_413_by_content_length_is_logged_without_a_traceback(small_server):
    rid = f"big-{uuid.uuid4().hex[:10]}"
    r = _post(small_server.url + "/loss", b" " * (SMALL_LIMIT + 10), headers={**JSON, "x-request-id": rid})
    assert r.status_code == 413 and r.headers["x-request-id"] == rid
    time.sleep(0.3)
    assert "AttributeError" not in small_server.stderr()
    assert '"POST /loss" 413' in small_server.wait_for_output(f"rid={rid}", timeout=2.0)


# --------------------------------------------------------------------- multiprocess

def _samples(text: str, name: str, **labels) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _per_worker_loss_counts(mp_dir: str) -> dict[str, float]:
    out = {}
    for f in glob.glob(os.path.join(mp_dir, "counter_*.db")):
        n = 0.0
        for m in MultiProcessCollector.merge([f], accumulate=False):
            for s in m.samples:
                if s.name == "lossd_requests_total" and s.labels.get("route") == "/loss":
                    n += s.value
        out[os.path.basename(f)] = n
    return out


def test_metrics_are_summed_over_workers():
    s = lossd_serve("--workers", "2")
    mp_dir = None
    workers: list[int] = []
    try:
        s.start()
        for pid in s.children():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"spawn_main" in cmd:
                workers.append(pid)
                mp_dir = next((e.split(b"=", 1)[1].decode() for e in env
                               if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")), mp_dir)
        assert len(workers) == 2, workers
        assert mp_dir and os.path.isdir(mp_dir), mp_dir

        sent = {"ok": 0, "bad": 0, "elements": 0}

        def one(i: int) -> int:
            n = 1 + i % 9
            body = {"predictions": [0.5] * n, "labels": [1] * n}
            if i % 10 == 9:
                body["labels"] = [3] * n  # a 422: counted as a request, no elements
            # a new connection each time, so that both workers take some
            r = httpx.post(s.url + "/loss", content=dumps(body), headers={**JSON, "connection": "close"},
                           timeout=30)
            return r.status_code, n

        with ThreadPoolExecutor(16) as pool:
            for _ in range(10):  # batches until both workers have answered (bounded)
                for status, n in pool.map(one, range(40)):
                    if status == 200:
                        sent["ok"] += 1
                        sent["elements"] += n
                    else:
                        assert status == 422
                        sent["bad"] += 1
                if sum(1 for v in _per_worker_loss_counts(mp_dir).values() if v > 0) >= 2:
                    break
        per_worker = _per_worker_loss_counts(mp_dir)
        assert sum(1 for v in per_worker.values() if v > 0) >= 2, per_worker

        # any worker may answer the scrape; each must report the sum over both workers
        deadline = time.monotonic() + 15
        scrapes = 0
        while True:
            text = httpx.get(s.url + "/metrics", headers={"connection": "close"}, timeout=10).text
            scrapes += 1
            ok = _samples(text, "lossd_requests_total", route="/loss", method="POST", status="200")
            bad = _samples(text, "lossd_requests_total", route="/loss", method="POST", status="422")
            elements = _samples(text, "lossd_elements_total", route="/loss")
            timed = _samples(text, "lossd_request_duration_seconds_count", route="/loss")
            # the counters are bumped as each answer goes out: a scrape may trail, never lead
            assert ok <= sent["ok"] and bad <= sent["bad"] and elements == sent["elements"], (
                ok, bad, elements, sent)
            if (ok, bad, timed) == (sent["ok"], sent["bad"], sent["ok"] + sent["bad"]) and scrapes >= 4:
                break
            assert time.monotonic() < deadline, (ok, bad, elements, timed, sent)
            time.sleep(0.05)
    finally:
        rc = s.stop()
        s.close()
    assert rc == 0, s.stderr()[-3000:]
    # the metrics directory the CLI made is removed, and no worker is left behind
    assert mp_dir and not os.path.exists(mp_dir)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
