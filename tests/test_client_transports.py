"""The client's transports (``transport=`` "http", "grpc", "shm", "auto") against one real
``lossd serve --workers 2`` with OIP over gRPC, ``LOSSD_SHM=true`` and a bearer token.

Every transport gives the kernels' results bit for bit (test_client.py's cases, sync and
async), the same errors with the same messages, and honours the token; ``auto`` picks by
the documented rule (``_transport.choose``) and falls back when the server has no gRPC
or no shared memory (servers of their own), when registering a region is refused, and
when grpcio cannot be imported (a fresh interpreter with ``grpc`` blocked). Shared memory
segments are unregistered and unlinked on close. The client's generated gRPC code is
checked to come from the service's proto.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd_client import AsyncClient, Client, LossdError
from lossd_client._transport import GRPC_MAX_BYTES, SHM_MIN_BYTES, choose

from service_helpers import free_port, lossd_serve
from test_client import CASES, LOGREG_CASES, _ids, hard, kernel_error, logits, same_result

TOKEN = "transport-test-token"
TRANSPORTS = ("http", "grpc", "shm", "auto")
SHM_ROOT = "/dev/shm"


@pytest.fixture(scope="module")
def server():
    grpc_port = free_port()
    s = lossd_serve("--workers", "2", "--grpc-port", str(grpc_port),
                    env={"LOSSD_SHM": "true", "LOSSD_API_TOKEN": TOKEN, "LOSSD_ACCESS_LOG": "false"})
    s.grpc_port = grpc_port
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(scope="module")
def clients(server):
    made = {t: Client(server.url, TOKEN, timeout=30.0, transport=t) for t in TRANSPORTS}
    # shared memory with its header over HTTP, as without grpcio or a server without gRPC
    made["shm-http"] = Client(server.url, TOKEN, timeout=30.0, transport="shm")
    made["shm-http"].loss(np.zeros(2), np.zeros(2))
    made["shm-http"]._grpc_call = None
    try:
        yield made
    finally:
        for c in made.values():
            c.close()


@pytest.fixture(params=[*TRANSPORTS, "shm-http"])
def client(request, clients) -> Client:
    return clients[request.param]


def _segments() -> set[str]:
    return {f for f in os.listdir(SHM_ROOT) if "-client-" in f}


def _registered(server) -> set[str]:
    r = httpx.get(server.url + "/v2/systemsharedmemory/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return {region["name"] for region in r.json()}


# ------------------------------------------------------------------------- same results

@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_loss_and_grad_bits_on_every_transport(client: Client, case) -> None:
    _, pred, lab, opts = case
    same_result(client.loss(pred, lab, **opts), kernels.loss(pred, lab, **opts))
    same_result(client.grad(pred, lab, **opts), kernels.grad(pred, lab, **opts))
    if client.transport != "auto":
        assert client.last_transport == client.transport


@pytest.mark.parametrize("case", LOGREG_CASES, ids=_ids(LOGREG_CASES))
def test_logreg_grad_bits_on_every_transport(client: Client, case) -> None:
    _, X, y, c, opts = case
    same_result(client.logreg_grad(X, y, c, **opts), kernels.logreg_grad(X, y, c, **opts))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_calls_on_every_transport(clients, dtype) -> None:
    """Above SHM_MIN_BYTES (auto takes shared memory), per-element outputs and reductions,
    weighted (a mean whose bits depend on the summation order)."""
    n = 200_000
    pred, lab = logits(n, dtype), hard(n, dtype)
    w = np.random.default_rng(3).uniform(0.0, 2.0, n)
    for t, c in clients.items():
        for red in ("none", "mean"):
            same_result(c.grad(pred, lab, reduction=red, sample_weight=w, quantiles=(0.5, 0.99)),
                        kernels.grad(pred, lab, reduction=red, sample_weight=w, quantiles=(0.5, 0.99)))
            same_result(c.loss(pred, lab, reduction=red), kernels.loss(pred, lab, reduction=red))
        assert c.last_transport == ("shm" if t in ("auto", "shm-http") else t)


def test_async_client_on_every_transport(server) -> None:
    """grpc.aio and the async shm path; concurrent calls each take a segment of their own."""
    cases = [CASES[2], CASES[5], CASES[-10]]
    big = (logits(150_000), hard(150_000), {"reduction": "none"})

    async def main() -> None:
        for t in TRANSPORTS:
            async with AsyncClient(server.url, TOKEN, transport=t) as c:
                # concurrent first calls: one discovery, then a segment each
                got = await asyncio.gather(*(c.loss(big[0] * k, big[1], **big[2]) for k in (1.0, 2.0, 3.0, 4.0)))
                for k, r in zip((1.0, 2.0, 3.0, 4.0), got):
                    same_result(r, kernels.loss(big[0] * k, big[1], **big[2]))
                for _, pred, lab, opts in cases:
                    same_result(await c.grad(pred, lab, **opts), kernels.grad(pred, lab, **opts))
                X, y, coef, opts = LOGREG_CASES[2][1:]
                same_result(await c.logreg_grad(X, y, coef, **opts), kernels.logreg_grad(X, y, coef, **opts))
                await c.loss(big[0], big[1], **big[2])
                assert c.last_transport == ("shm" if t in ("auto", "shm-http") else t)
                with pytest.raises(LossdError) as info:
                    await c.loss(np.array([0.5, 1.0]), np.array([1, 2]), loss="hinge")
                assert info.value.status == 400 and str(info.value) == "labels[1] = 2 is not in {0, 1}"

    before, registered = _segments(), _registered(server)  # the module's sync clients' own
    asyncio.run(asyncio.wait_for(main(), 120))
    assert _segments() == before and _registered(server) == registered


# ----------------------------------------------------------------------- same errors

@pytest.mark.parametrize("fn, args, kwargs", [
    ("loss", (np.array([0.5, 1.0, -2.0]), np.array([1, 2, 0])), {"loss": "hinge"}),
    ("loss", (np.array([0.5, np.nan]), np.array([1, 0])), {}),
    ("grad", (np.array([1.2, 0.5]), np.array([1, 0])), {"input": "probabilities", "reduction": "none"}),
    ("loss", (np.zeros(3), np.zeros(2)), {}),
    ("loss", (np.zeros(3), np.zeros(3)), {"sample_weight": np.array([1.0, -1.0, 0.0])}),
    ("loss", (np.zeros((2, 2)), np.zeros((2, 2))), {"pos_weight": np.ones(3)}),
    ("loss", (np.zeros(0), np.zeros(0)), {}),
    ("loss", (np.zeros(2), np.zeros(2)), {"quantiles": (0.5, 1.5), "reduction": "none"}),
    ("logreg_grad", (np.ones((2, 2)), np.array([1, 3]), np.zeros(2)), {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_errors_are_the_same_on_every_transport(clients, fn, args, kwargs) -> None:
    want = kernel_error(getattr(kernels, fn), *args, **kwargs)
    for t, c in clients.items():
        with pytest.raises(LossdError) as info:
            getattr(c, fn)(*args, **kwargs)
        assert (info.value.status, str(info.value)) == (400, want), t


def test_option_errors_are_the_same_on_every_transport(clients) -> None:
    for kwargs in ({"reduction": "avg"}, {"label_smoothing": 1.0}, {"gamma": "strong"}, {"dtype": "float16"},
                   {"loss": "bogus", "reduction": "none"}):
        got = set()
        for t, c in clients.items():
            with pytest.raises(LossdError) as info:
                c.grad(np.zeros(2), np.zeros(2), **kwargs)
            got.add((info.value.status, str(info.value)))
        assert len(got) == 1 and next(iter(got))[0] == 400, (kwargs, got)


def test_token_on_every_transport(server) -> None:
    pred, lab = logits(5), hard(5)
    for t in TRANSPORTS:
        with Client(server.url, TOKEN, transport=t) as c:
            same_result(c.loss(pred, lab), kernels.loss(pred, lab))
    for token in (None, "wrong"):
        got = set()
        for t in TRANSPORTS:
            with Client(server.url, token, transport=t, grpc_port=server.grpc_port, retries=0) as c:
                with pytest.raises(LossdError) as info:
                    c.loss(np.zeros(2), np.zeros(2))
            got.add((info.value.status, str(info.value)))
        assert len(got) == 1, got
        status, message = got.pop()
        assert status == 401 and "bearer token" in message


def test_body_limit_and_timeout_over_grpc(server) -> None:
    """A request over the server's limit is 413 (RESOURCE_EXHAUSTED); the client's deadline
    is 504 (DEADLINE_EXCEEDED), not retried."""
    with Client(server.url, TOKEN, transport="grpc") as c:
        n = 64 * 1024 * 1024 // 16 + 1  # predictions and labels FP64: just over the 64 MiB default
        with pytest.raises(LossdError) as info:
            c.loss(np.zeros(n), np.zeros(n))
        assert info.value.status == 413
    with Client(server.url, TOKEN, transport="grpc", grpc_port=server.grpc_port, timeout=1e-3, retries=3,
                backoff=5.0) as c:
        start = time.monotonic()
        with pytest.raises(LossdError) as info:  # 16 MB cannot even be sent in 1 ms
            c.loss(np.zeros(1_000_000), np.zeros(1_000_000))
        assert info.value.status == 504 and time.monotonic() - start < 5.0


def test_unavailable_grpc_is_retried_then_503() -> None:
    """Nothing listens on the port: UNAVAILABLE, retried as a 503 with the same backoff."""
    with Client(f"http://127.0.0.1:{free_port()}", transport="grpc", grpc_port=free_port(), retries=2,
                backoff=0.2) as c:
        start = time.monotonic()
        with pytest.raises(LossdError) as info:
            c.loss(np.zeros(2), np.zeros(2))
        assert info.value.status == 503 and time.monotonic() - start >= 0.2 + 0.4


# ---------------------------------------------------------------------------- auto

def test_metadata_names_the_grpc_port_and_the_shm_prefix(server) -> None:
    meta = httpx.get(server.url + "/v2", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert meta["grpc_port"] == server.grpc_port and meta["shm_prefix"] == "/lossd"
    assert "system_shared_memory" in meta["extensions"]


def test_auto_follows_the_rule(clients) -> None:
    c = clients["auto"]
    c.loss(np.zeros(2), np.zeros(2))
    assert c.available_transports == ("http", "grpc", "shm")
    for n in (10, SHM_MIN_BYTES // 16 - 1, SHM_MIN_BYTES // 16, GRPC_MAX_BYTES // 16 + 1):
        pred, lab = logits(n), hard(n)
        same_result(c.loss(pred, lab), kernels.loss(pred, lab))
        assert c.last_transport == choose(pred.nbytes + lab.nbytes, c.available_transports)
    assert choose(10, ("http", "grpc", "shm")) == "grpc"
    assert choose(SHM_MIN_BYTES, ("http", "grpc", "shm")) == "shm"
    assert choose(SHM_MIN_BYTES, ("http", "grpc")) == "grpc"
    assert choose(GRPC_MAX_BYTES, ("http", "grpc")) == "http"
    assert choose(10, ("http",)) == "http"


@pytest.mark.parametrize("grpc_on, shm_on", [(False, True), (True, False)], ids=["no-grpc", "no-shm"])
def test_auto_falls_back_when_the_server_lacks_a_transport(grpc_on: bool, shm_on: bool) -> None:
    args = ("--grpc-port", str(free_port())) if grpc_on else ()
    with lossd_serve(*args, env={"LOSSD_SHM": str(shm_on).lower(), "LOSSD_ACCESS_LOG": "false"}) as s:
        meta = httpx.get(s.url + "/v2").json()
        assert ("grpc_port" in meta, "shm_prefix" in meta) == (grpc_on, shm_on), meta  # absent when off
        want = ("http", *(["grpc"] if grpc_on else []), *(["shm"] if shm_on else []))
        with Client(s.url) as c:
            for n in (10, SHM_MIN_BYTES // 8):
                pred, lab = logits(n), hard(n)
                same_result(c.grad(pred, lab, reduction="none"), kernels.grad(pred, lab, reduction="none"))
                assert c.available_transports == want
                assert c.last_transport == choose(pred.nbytes + lab.nbytes, want)
        missing = "grpc" if not grpc_on else "shm"
        with Client(s.url, transport=missing) as c:
            with pytest.raises(LossdError, match=f"transport = '{missing}'"):
                c.loss(np.zeros(2), np.zeros(2))


def test_auto_falls_back_when_registration_is_refused(server) -> None:
    """The server refuses the client's region (here: a key outside its LOSSD_SHM_PREFIX, as a
    server whose /dev/shm is another's would refuse a key it cannot open): auto carries on
    over gRPC/HTTP and says so; transport="shm" raises the server's message."""
    pred, lab = logits(SHM_MIN_BYTES // 8), hard(SHM_MIN_BYTES // 8)
    with Client(server.url, TOKEN) as c:
        c.loss(np.zeros(2), np.zeros(2))
        c._shm.prefix = "/not-lossd"
        same_result(c.loss(pred, lab), kernels.loss(pred, lab))
        assert c.available_transports == ("http", "grpc") and c.last_transport == "grpc"
    with Client(server.url, TOKEN, transport="shm") as c:
        c.loss(np.zeros(2), np.zeros(2))
        c._shm.prefix = "/not-lossd"
        for seg in c._shm.drain():  # the next call makes a segment under the new prefix
            c._unregister(seg)
            seg.close()
        with pytest.raises(LossdError) as info:
            c.loss(pred, lab)
        assert info.value.status == 400 and "must start with '/lossd'" in str(info.value)
    assert not any(f.startswith("not-lossd") for f in _segments())


def test_auto_without_grpcio(server) -> None:
    """grpc cannot be imported: auto uses HTTP and shared memory, transport='grpc' says what
    to install; the client itself imports."""
    code = f"""
import sys
sys.modules["grpc"] = None  # import grpc raises ImportError
import numpy as np
from lossd_client import Client
with Client({server.url!r}, {TOKEN!r}) as c:
    r = c.loss(np.array([2.0, -1.0]), np.array([1, 0]))
    print(c.available_transports, c.last_transport, r.loss)
try:
    Client({server.url!r}, transport="grpc")
except ImportError as exc:
    print("ImportError", exc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    want = kernels.loss(np.array([2.0, -1.0]), np.array([1, 0])).loss
    assert lines[0] == f"('http', 'shm') http {want!r}"
    assert lines[1].startswith("ImportError") and "lossd-client[grpc]" in lines[1]


def test_no_service_imports_and_no_leftovers_without_close(server) -> None:
    """A fresh interpreter using every transport imports neither the service nor numba nor
    FastAPI, and a client it never closes leaves no shared memory object behind."""
    code = f"""
import sys
import numpy as np
from lossd_client import Client
c = Client({server.url!r}, {TOKEN!r}, transport="shm")
c.loss(np.zeros(200_000), np.zeros(200_000), reduction="none")
g = Client({server.url!r}, {TOKEN!r}, transport="grpc")
g.loss(np.zeros(3), np.zeros(3))
print(sorted(m for m in ("fastapi", "numba", "service", "lossd", "kernels") if m in sys.modules))
print(*(s.name for s in c._shm._all))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    imported, names = r.stdout.splitlines()
    assert imported == "[]" and names.startswith("lossd-client-")
    assert not set(names.split()) & _segments()


def test_shm_needs_a_loopback_url() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Client("http://192.0.2.1:8000", transport="shm")
    with pytest.raises(ValueError, match="transport"):
        Client("http://127.0.0.1:8000", transport="udp")


# --------------------------------------------------------------------- shared memory

def test_segments_are_reused_grown_and_removed_on_close(server) -> None:
    before = _segments()
    with Client(server.url, TOKEN, transport="shm") as c:
        c.loss(logits(10), hard(10))
        first = _segments() - before
        assert len(first) == 1 and first <= _registered(server)
        c.grad(logits(1000), hard(1000), reduction="none")
        assert _segments() - before == first  # reused
        pred, lab = logits(300_000), hard(300_000)
        same_result(c.grad(pred, lab, reduction="none"), kernels.grad(pred, lab, reduction="none"))
        grown = _segments() - before
        assert len(grown) == 1 and grown != first  # the small one is gone from both sides
        assert not first & _registered(server) and grown <= _registered(server)
    assert _segments() - before == set()
    assert not grown & _registered(server)


@pytest.mark.parametrize("header", ["grpc", "http"])
def test_a_region_the_server_forgot_is_registered_again(server, header) -> None:
    """The server forgets the region (here unregistered behind the client's back, as after
    a restart): the call registers it again and answers."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with Client(server.url, TOKEN, transport="shm") as c:
        c.loss(logits(10), hard(10))
        if header == "http":
            c._grpc_call = None
        (name,) = {seg.name for seg in c._shm._all}
        for _ in range(2):
            r = httpx.post(f"{server.url}/v2/systemsharedmemory/region/{name}/unregister", headers=auth)
            assert r.status_code == 200 and name not in _registered(server)
            pred, lab = logits(50), hard(50)
            same_result(c.grad(pred, lab, reduction="none"), kernels.grad(pred, lab, reduction="none"))
            assert name in _registered(server)


# ------------------------------------------------------------------- generated code

def test_generated_grpc_code_comes_from_the_services_proto() -> None:
    """The client's copy (make grpc-gen) and the service's: one descriptor, two pools, and
    both import in one process with tritonclient's."""
    from lossd.service.grpc_gen import grpc_predict_v2_pb2 as service_pb
    from lossd_client.grpc_gen import grpc_predict_v2_pb2 as client_pb

    assert client_pb.DESCRIPTOR.serialized_pb == service_pb.DESCRIPTOR.serialized_pb
    assert client_pb.DESCRIPTOR.pool is not service_pb.DESCRIPTOR.pool
    pytest.importorskip("tritonclient.grpc")
    msg = client_pb.ModelInferRequest(model_name="loss")
    assert service_pb.ModelInferRequest.FromString(msg.SerializeToString()).model_name == "loss"
