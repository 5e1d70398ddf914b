"""Issue 12, "Limits": every limit and timeout on a real ``lossd serve`` (short values set
through the environment, so the whole module takes seconds), with what a violating client
sees, while a well-behaved client keeps getting answers; and the JSON depth scanner
against a reference walk.

Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from lossd import kernels
from lossd.service import limits
from lossd.service.limits import JsonTooDeep, check_json_depth
from service_helpers import (assert_same, expected_loss_body, lossd_serve, parse_raw_response, raw_http,
                             strict_json)

JSON = {"content-type": "application/json"}
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 1.0
MAX_CONNECTIONS = 16
MAX_HEADER_BYTES = 2048
MAX_FIELDS = 16
MAX_ELEMENTS = 1000
MAX_DEPTH = 6
SLACK = 0.75  # s a cut-off may come after its deadline on a busy 2-core machine


@pytest.fixture(scope="module")
def server():
    s = lossd_serve(env={"LOSSD_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "LOSSD_BODY_TIMEOUT": str(BODY_TIMEOUT),
                         "LOSSD_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
                         "LOSSD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                         "LOSSD_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
                         "LOSSD_MAX_HEADER_FIELDS": str(MAX_FIELDS), "LOSSD_MAX_ELEMENTS": str(MAX_ELEMENTS),
                         "LOSSD_MAX_JSON_DEPTH": str(MAX_DEPTH)})
    try:
        yield s.start()
    finally:
        s.close()


# ------------------------------------------------------------------------ helpers

def trickle(port: int, head: bytes, drip: bytes, every: float, limit: float) -> tuple[bytes, float | None]:
    """Send ``head``, then ``drip`` one byte every ``every`` seconds, reading all along.
    Returns what the server sent and the seconds from the connection until it closed
    it (None if it was still open after ``limit`` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        got = b""
        if head:
            s.sendall(head)
        i = 0
        while time.monotonic() - start < limit:
            if i < len(drip):
                try:
                    s.send(drip[i:i + 1])
                except OSError:  # closed by the server
                    pass
                i += 1
            ready, _, _ = select.select([s], [], [], every)
            if ready:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return got, time.monotonic() - start
                got += chunk
        return got, None


class SteadyClient:
    """A well-behaved client sending small requests in a thread, each answer checked."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(400):  # bounded: ~20 s at most
                if self._stop.is_set():
                    return
                t = time.monotonic()
                r = c.post(self.url + "/loss", content=b'{"predictions": [0.5, -1], "labels": [1, 0]}',
                           headers=JSON)
                self.latencies.append(time.monotonic() - t)
                self.statuses.append(r.status_code)
                time.sleep(0.05)

    def __enter__(self) -> "SteadyClient":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def check(self) -> None:
        assert len(self.statuses) >= 5, self.statuses
        assert set(self.statuses) == {200}, self.statuses
        assert max(self.latencies) < 1.0, max(self.latencies)


def error_of(buf: bytes) -> tuple[int, dict, dict]:
    status, headers, body = parse_raw_response(buf)
    return status, headers, json.loads(body)


POST_HEAD = b"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"


# -------------------------------------------------------------- slow and idle clients

def test_a_head_trickled_byte_by_byte_gets_408_at_the_timeout_while_others_are_served(server):
    with SteadyClient(server.url) as steady:
        got, closed = trickle(server.port, b"", POST_HEAD, every=0.1, limit=HEADER_TIMEOUT + 5)
    assert closed is not None and HEADER_TIMEOUT - 0.1 <= closed <= HEADER_TIMEOUT + SLACK, closed
    status, headers, body = error_of(got)
    assert status == 408 and headers["connection"] == "close", got
    assert body == {"detail": f"the request head did not arrive within {HEADER_TIMEOUT:g} s (LOSSD_HEADER_TIMEOUT)"}
    steady.check()


def test_an_idle_connection_is_closed_at_the_head_timeout_without_an_answer(server):
    got, closed = trickle(server.port, b"", b"", every=0.1, limit=HEADER_TIMEOUT + 5)
    assert got == b"" and closed is not None and closed <= HEADER_TIMEOUT + SLACK, (got, closed)


def test_a_body_trickled_byte_by_byte_gets_408_at_the_timeout_while_others_are_served(server):
    with SteadyClient(server.url) as steady:
        got, closed = trickle(server.port, POST_HEAD, b"{" + b" " * 63, every=0.1, limit=BODY_TIMEOUT + 5)
    assert closed is not None and BODY_TIMEOUT - 0.1 <= closed <= BODY_TIMEOUT + SLACK, closed
    status, headers, body = error_of(got)
    assert status == 408 and headers["connection"] == "close" and "x-request-id" in headers, got
    assert body == {"detail": f"the body did not arrive within {BODY_TIMEOUT:g} s (LOSSD_BODY_TIMEOUT)"}
    steady.check()
    # on OIP too, in its error shape
    head = b"POST /v2/models/loss/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n"
    got, closed = trickle(server.port, head, b" " * 64, every=0.1, limit=BODY_TIMEOUT + 5)
    status, _, body = error_of(got)
    assert status == 408 and body == {"error": f"the body did not arrive within {BODY_TIMEOUT:g} s "
                                               "(LOSSD_BODY_TIMEOUT)"}, got


def test_a_body_nobody_reads_cannot_keep_its_connection_open(server):
    # no Content-Type: 415 at once, without reading the body; the client trickles on
    head = b"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n"
    got, closed = trickle(server.port, head, b" " * 64, every=0.1, limit=BODY_TIMEOUT + 6)
    assert parse_raw_response(got)[0] == 415, got
    assert closed is not None and closed <= BODY_TIMEOUT + 1.0 + SLACK, closed


def test_idle_keep_alive_connections_close_and_stray_newlines_do_not_keep_them(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    got, closed = trickle(server.port, request, b"", every=0.1, limit=KEEP_ALIVE + 5)
    assert got.startswith(b"HTTP/1.1 200") and closed is not None and closed <= KEEP_ALIVE + SLACK, (got, closed)
    got, closed = trickle(server.port, request, b"\r\n" * 30, every=0.1, limit=KEEP_ALIVE + 5)
    assert got.startswith(b"HTTP/1.1 200") and closed is not None and closed <= KEEP_ALIVE + SLACK, (got, closed)


# ----------------------------------------------------------------- the request head

def test_a_head_over_the_size_limit_gets_431(server):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    status, headers, body = error_of(raw_http(server.port, big))
    assert status == 431 and headers["connection"] == "close"
    assert body == {"detail": f"the request line and headers are over {MAX_HEADER_BYTES} bytes "
                              "(LOSSD_MAX_HEADER_BYTES)"}
    # one endless header line, sent in pieces: refused before it ends
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /v2 HTTP/1.1\r\nX-Endless: ")
        got = b""
        for _ in range(20):  # until the server answers (then sending more would only reset it)
            if select.select([s], [], [], 0.02)[0]:
                break
            s.sendall(b"b" * 512)
        s.settimeout(2)
        while chunk := _recv(s):
            got += chunk
    status, _, body = error_of(got)
    assert status == 431 and "LOSSD_MAX_HEADER_BYTES" in body["error"], got  # under /v2: OIP's shape
    # a long URL counts too
    status, _, body = error_of(raw_http(server.port, b"GET /" + b"u" * MAX_HEADER_BYTES + b" HTTP/1.1\r\n\r\n"))
    assert status == 431, body
    assert httpx.get(server.url + "/healthz", headers={"x-fits": "a" * 1000}).status_code == 200


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


def test_too_many_header_fields_get_431(server):
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    status, _, body = error_of(raw_http(server.port, b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n"))
    assert status == 431
    assert body == {"detail": f"the request has more than {MAX_FIELDS} header fields (LOSSD_MAX_HEADER_FIELDS)"}
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_FIELDS))
    assert raw_http(server.port, b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n").startswith(b"HTTP/1.1 200")


# -------------------------------------------------------------------- connections

def test_connections_beyond_the_limit_get_503_not_a_hang(server):
    flood = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        t = time.monotonic()
        status, headers, body = error_of(raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert time.monotonic() - t < 1.0
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert body == {"detail": f"the server has {MAX_CONNECTIONS} connections open (LOSSD_MAX_CONNECTIONS); "
                                  "retry shortly"}
        status, _, body = error_of(raw_http(server.port, b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and "LOSSD_MAX_CONNECTIONS" in body["error"]
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 5
    while True:  # the closes reach the server within moments
        r = httpx.get(server.url + "/healthz", timeout=5)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200


# ------------------------------------------------------------- elements and depth

def test_arrays_over_max_elements_are_refused_by_name(server):
    n = MAX_ELEMENTS + 1
    r = httpx.post(server.url + "/loss", json={"predictions": [0.0] * n, "labels": [1.0] * n})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"type": "too_long", "loc": ["body", "predictions"],
                                   "msg": f"predictions has {n} elements; the limit is {MAX_ELEMENTS} per array "
                                          "(LOSSD_MAX_ELEMENTS)"}]
    r = httpx.post(server.url + "/grad", json={"wrt": "params", "features": [[0.0] * 40] * 30,
                                               "labels": [1] * 30, "coef": [0.0] * 40})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "features"], r.text
    oip = {"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [n], "data": [0.0] * n},
                      {"name": "labels", "datatype": "FP64", "shape": [n], "data": [1.0] * n}]}
    r = httpx.post(server.url + "/v2/models/loss/infer", json=oip)
    assert r.status_code == 400 and "LOSSD_MAX_ELEMENTS" in r.json()["error"], r.text
    s = np.linspace(-3, 3, MAX_ELEMENTS)
    r = httpx.post(server.url + "/loss", json={"predictions": s.tolist(), "labels": [1.0] * MAX_ELEMENTS})
    assert r.status_code == 200
    assert_same(strict_json(r.text), expected_loss_body(kernels.loss(s, np.ones(MAX_ELEMENTS))))


def test_json_nested_deeper_than_the_limit_is_refused(server):
    deep = "[" * (MAX_DEPTH) + "1" + "]" * (MAX_DEPTH)  # inside the body object: one level more
    r = httpx.post(server.url + "/loss", content=f'{{"predictions": {deep}, "labels": [1]}}', headers=JSON)
    assert r.status_code == 422
    assert r.json()["detail"] == [{"type": "json_too_deep", "loc": ["body"],
                                   "msg": f"the JSON nests deeper than {MAX_DEPTH} levels (LOSSD_MAX_JSON_DEPTH)"}]
    r = httpx.post(server.url + "/v2/models/loss/infer", content=f'{{"inputs": [{deep}]}}', headers=JSON)
    assert r.status_code == 400 and "LOSSD_MAX_JSON_DEPTH" in r.json()["error"], r.text
    # brackets inside strings are not nesting: this one is judged on its content
    r = httpx.post(server.url + "/loss", headers=JSON,
                   content=b'{"predictions": [1], "labels": [1], "loss": "[[[[[[[[[[\\"[[[["}')
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "loss"], r.text
    # a hostile depth (simdjson's and orjson's own limit is 1024) is a 422 too, never a 500
    r = httpx.post(server.url + "/loss", content=b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", headers=JSON)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_too_deep"
    # 1000 nested objects: simdjson and orjson parse them, and the duplicate-key walk then
    # raised RecursionError (a 500) before there was a depth limit
    deep_objects = b'{"a": ' + b'{"b": ' * 1000 + b"1" + b"}" * 1000 + b"}"
    r = httpx.post(server.url + "/loss", content=deep_objects, headers=JSON)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_too_deep", r.text
    assert server.alive() and "Traceback" not in server.stderr()


def _depth(v) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


def _random_json(rng: random.Random, depth: int):
    kind = rng.random()
    if depth <= 0 or kind < 0.3:
        return rng.choice([1, 2.5, "x", 'q"[{', "\\", "\\\\\"]]", "}", None, True, "a\\\"b[", ""])
    if kind < 0.65:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "[", '"{', "\\", "k\\\\"]) + str(i): _random_json(rng, depth - 1)
            for i in range(rng.randint(0, 3))}


@pytest.mark.parametrize("chunk", [3, 7, 4 * 1024 * 1024])
def test_the_depth_scan_matches_a_walk(chunk, monkeypatch):
    monkeypatch.setattr(limits, "_CHUNK", chunk)  # runs of backslashes and strings across chunks
    rng = random.Random(chunk)
    for _ in range(300):
        doc = _random_json(rng, rng.randint(0, 9))
        text = json.dumps(doc).encode()
        want = _depth(doc)
        for limit in {max(0, want - 1), want}:
            if want > limit:
                with pytest.raises(JsonTooDeep):
                    check_json_depth(text, limit)
            else:
                check_json_depth(text, limit)
        check_json_depth(memoryview(bytearray(text)), want)


def test_the_depth_scan_is_cheap_for_flat_bodies():
    body = json.dumps({"predictions": list(np.linspace(-1, 1, 100_000)), "labels": [1.0] * 100_000}).encode()
    t = time.perf_counter()
    for _ in range(20):
        check_json_depth(body, 32)
    per_mib = (time.perf_counter() - t) / 20 / (len(body) / 2**20)
    assert per_mib < 0.005, f"{per_mib * 1e3:.2f} ms per MiB"  # parsing it costs ~1 ms per MiB


# ------------------------------------------------------------------ compute deadline

COMPUTE_TIMEOUT = 0.3


def slow_body(n: int) -> bytes:
    """A body that takes about a second to decode: a bare Infinity token sends it to the
    stdlib parser, which calls a Python function per number."""
    return json.dumps({"predictions": [0.5] * n + [math.inf], "labels": [1.0] * (n + 1)}).encode()


SLOW_N = 1_000_000
MEDIUM = json.dumps({"predictions": [0.5] * 10_000, "labels": [1.0] * 10_000}).encode()  # > inline bytes


@pytest.fixture(scope="module")
def deadline_server():
    s = lossd_serve(env={"LOSSD_COMPUTE_TIMEOUT": str(COMPUTE_TIMEOUT), "LOSSD_LANE_BYTES": "0",
                         "LOSSD_MAX_CONCURRENCY": "1", "LOSSD_MAX_QUEUE": "0"})
    try:
        yield s.start()
    finally:
        s.close()


def test_the_compute_deadline_answers_504_and_keeps_the_busy_slot_counted(deadline_server):
    url = deadline_server.url
    body = slow_body(SLOW_N)
    with httpx.Client(timeout=30) as c:
        t = time.monotonic()
        r = c.post(url + "/loss", content=body, headers=JSON)
        took = time.monotonic() - t
        assert r.status_code == 504, r.text
        assert r.json() == {"detail": f"not computed within {COMPUTE_TIMEOUT:g} s (LOSSD_COMPUTE_TIMEOUT); the "
                                      "request was too large for the time allowed, or the server is overloaded"}
        assert took < COMPUTE_TIMEOUT + 1.0, took
        # its thread still decodes: the only kernel slot is taken, so new work is refused
        r = c.post(url + "/loss", content=MEDIUM, headers=JSON)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        # small bodies, computed on the event loop, are answered meanwhile
        assert c.post(url + "/loss", content=b'{"predictions": [1], "labels": [1]}', headers=JSON).status_code == 200
        deadline = time.monotonic() + 20
        while (r := c.post(url + "/loss", content=MEDIUM, headers=JSON)).status_code == 503:
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.1)
        assert r.status_code == 200, r.text
    assert deadline_server.alive() and "Traceback" not in deadline_server.stderr()


@pytest.fixture(scope="module")
def lane_deadline_server():
    s = lossd_serve(env={"LOSSD_COMPUTE_TIMEOUT": str(COMPUTE_TIMEOUT)})  # 1 MiB bodies go to the lane
    try:
        yield s.start()
    finally:
        s.close()


def _lane_pids(server) -> set[int]:
    pids = set()
    for p in psutil.Process(server.proc.pid).children():
        try:
            if "spawn_main" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except psutil.Error:  # gone meanwhile (the old lane being reaped)
            pass
    return pids


def test_the_compute_deadline_kills_and_restarts_the_large_lane(lane_deadline_server):
    server = lane_deadline_server
    (old,) = _lane_pids(server)
    fast, s, y = _fast_large_body()
    with httpx.Client(timeout=30) as c:
        r = c.post(server.url + "/loss", content=slow_body(SLOW_N), headers=JSON)
        assert r.status_code == 504, r.text
        server.wait_for_output("is killed and a new one starts", timeout=5, stream="stderr")
        deadline = time.monotonic() + 60  # a new lane loads the kernels from the cache (3-25 s measured)
        while (r := c.post(server.url + "/loss", content=fast, headers=JSON)).status_code == 504:
            assert time.monotonic() < deadline, "no lane came back"
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert_same(strict_json(r.text), expected_loss_body(kernels.loss(s, y)))
    deadline = time.monotonic() + 10
    while old in (pids := _lane_pids(server)) or len(pids) != 1:  # the old one is reaped
        assert time.monotonic() < deadline, (old, pids)
        time.sleep(0.1)
    assert "the large lane is gone" not in server.stderr()  # killed on purpose: no false alarm


def _fast_large_body() -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    s, y = rng.normal(0, 3, 100_000), (rng.random(100_000) < 0.5).astype(np.float64)
    body = json.dumps({"predictions": s.tolist(), "labels": y.tolist()}).encode()
    assert len(body) > 1024 * 1024
    return body, s, y


# ------------------------------------------------------------------------ settings

@pytest.mark.parametrize("flag,value", [("--max-connections", "0"), ("--header-timeout", "0"),
                                        ("--max-json-depth", "2"), ("--compute-timeout", "-1")])
def test_limit_flags_are_checked_and_named(flag, value, monkeypatch, capsys):
    from lossd.service import cli

    for k in [k for k in os.environ if k.startswith("LOSSD_")]:
        monkeypatch.delenv(k)
    assert cli.main(["serve", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lossd: bad lossd settings: {flag}: "), err
