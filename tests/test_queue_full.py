"""The 503 "queue full" path on a real server (service/runner.py ``KernelRunner.run``).

A request takes one of ``LOSSD_MAX_CONCURRENCY + LOSSD_MAX_QUEUE`` places once its body has
been read (not while it arrives), and holds it while its work runs in the kernel pool;
beyond that it gets 503 with ``Retry-After`` at once. Here the server has one slot and one
queue place (``LOSSD_INLINE_BYTES=0``: every body goes through the pool; no large lane).

No timing guesses: each round first sends every big request but its last byte (so none
holds a place yet), then the last bytes one after the other, then small JSON and OIP
requests. A big request (2 M elements, quantiles: a sort of the per-element losses) takes
tens of milliseconds in the pool, the server reads the held-back bytes in well under that,
and a slower machine slows the sort as much as the reads. Rounds repeat (a bounded few)
until both transports got a 503, in case a round happens to be served one by one.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import numpy as np
import pytest

from lossd import kernels

from service_helpers import (HCL, lossd_serve, oip_frame, oip_outputs,
                             parse_raw_response, request_statuses, status_delta)

N = 2_000_000  # elements of a big request: ~18 MB binary body
BIG_PER_ROUND = 6
SMALL_PER_ROUND = 4  # half JSON /loss, half OIP JSON
MAX_ROUNDS = 6
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def busy_server():
    s = lossd_serve(env={"LOSSD_MAX_CONCURRENCY": "1", "LOSSD_MAX_QUEUE": "1", "LOSSD_INLINE_BYTES": "0",
                         "LOSSD_LANE_BYTES": "0", "LOSSD_THREADS": "1", "LOSSD_WORKERS": "1"})
    try:
        yield s.start()
    finally:
        s.close()


def _request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _read_all(s: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return buf
        buf += chunk


def _round(port: int, big: bytes, smalls: list[bytes]) -> list[tuple[str, int, dict, bytes]]:
    """One round; the answers as (kind, status, headers, body)."""
    conns: list[tuple[str, socket.socket]] = []
    try:
        for _ in range(BIG_PER_ROUND):  # every big body but its last byte: no place taken yet
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            s.sendall(big[:-1])
            conns.append(("big", s))
        for _, s in conns:
            s.sendall(big[-1:])
        for i, raw in enumerate(smalls):
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            s.sendall(raw)
            conns.append(("json" if i % 2 == 0 else "oip", s))
        answers = []
        for kind, s in conns:
            status, headers, body = parse_raw_response(_read_all(s))
            answers.append((kind, status, headers, body))
        return answers
    finally:
        for _, s in conns:
            s.close()


def test_full_queue_answers_503_with_retry_after_and_recovers(busy_server):
    rng = np.random.default_rng(503)
    pred = rng.normal(size=N)
    lab = (rng.random(N) < 0.5).astype(np.uint8)
    body, headers = oip_frame({"predictions": pred, "labels": lab}, {"quantiles": "0.5,0.9"})
    big = _request("/v2/models/loss/infer", body, {**headers, "Content-Type": "application/octet-stream"})
    small_pred, small_lab = pred[:8].tolist(), lab[:8].astype(float).tolist()
    small_json = _request("/loss", json.dumps({"predictions": small_pred, "labels": small_lab}).encode(),
                          {"Content-Type": "application/json"})
    oip_body, _ = oip_frame({"predictions": pred[:8], "labels": lab[:8]}, binary=False)
    small_oip = _request("/v2/models/loss/infer", oip_body, {"Content-Type": "application/json"})
    smalls = [small_json, small_oip] * (SMALL_PER_ROUND // 2)

    before = request_statuses(busy_server)
    answers: list[tuple[str, int, dict, bytes]] = []
    deadline = time.monotonic() + 4 * TIMEOUT
    for _ in range(MAX_ROUNDS):
        answers += _round(busy_server.port, big, smalls)
        got = {kind for kind, status, _, _ in answers if status == 503}
        if {"json", "oip"} <= got or time.monotonic() > deadline:
            break

    statuses = [status for _, status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses  # no other 5xx, nor any 4xx
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    want = kernels.loss(pred, lab, quantiles=(0.5, 0.9))
    for kind, status, heads, content in answers:
        if status == 503:
            assert heads.get("retry-after", "").isdigit(), heads
            err = json.loads(content)
            key = "detail" if kind == "json" else "error"
            assert set(err) == {key} and err[key].startswith("busy:"), (kind, err)
        elif kind == "big":  # the ones served are exact
            out = oip_outputs(content, {HCL: heads[HCL.lower()]})
            assert out["loss"][0] == want.loss and out["p90"][0] == want.stats["p90"]
    seen = {kind for kind, status, _, _ in answers if status == 503}
    assert {"json", "oip"} <= seen, f"503s only on {seen} in {len(answers)} answers: {statuses}"

    # alive, answers 200, and its metrics counted exactly the 503s it sent
    assert busy_server.alive(), busy_server.stderr()[-3000:]
    r = httpx.post(busy_server.url + "/loss", json={"predictions": small_pred, "labels": small_lab},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    delta = status_delta(before, request_statuses(busy_server))
    assert delta.get("503", 0) == statuses.count(503), (delta, statuses.count(503))
    assert delta.get("200", 0) >= statuses.count(200) + 1, delta
    assert not [s for s in delta if s.startswith("5") and s != "503"], delta
    log = busy_server.stdout() + busy_server.stderr()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
