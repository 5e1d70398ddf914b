"""The Python client (``client/lossd_client``) against one real ``lossd serve`` process.

Every result is compared with ``kernels`` called in this process on the same arguments,
to the last bit (arrays byte for byte, floats with == and the sign of zero, stats dicts
with their key order). Retries are checked with a small stub HTTP server of our own that
answers 503 or drops the connection before passing requests on to the real server.
Async tests run their coroutines with ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd.kernels.api import INPUTS, LOSSES
from lossd_client import AsyncClient, Client, GradResult, LossdError, LossResult, ParamGrad
from lossd_client._calls import loss_call
from lossd_client._codec import HEADER_LENGTH, encode_request
from lossd_client._retry import MAX_BACKOFF, next_delay, retry_after_seconds

from service_helpers import free_port, lossd_serve

TOKEN = "client-test-token"
BODY_LIMIT = 4 << 20  # small enough that a 413 is cheap to provoke
SOFT = ("cross_entropy", "focal", "squared_error")  # the losses that take probabilities


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def server():
    """The module's one real server: a token and a 4 MiB body limit."""
    s = lossd_serve(env={"LOSSD_API_TOKEN": TOKEN, "LOSSD_MAX_BODY_BYTES": str(BODY_LIMIT),
                         "LOSSD_ACCESS_LOG": "false"})
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(scope="module")
def clients(server):
    """A binary and a JSON client, kept alive for the whole module."""
    with Client(server.url, TOKEN, timeout=20.0) as binary, \
            Client(server.url, TOKEN, timeout=20.0, binary=False) as json_client:
        yield {True: binary, False: json_client}


@pytest.fixture(params=[True, False], ids=["binary", "json"])
def client(request, clients) -> Client:
    return clients[request.param]


# ---------------------------------------------------------------------- exact comparison

def same_float(got: Any, want: Any, where: str) -> None:
    if want is None:
        assert got is None, f"{where}: {got!r} is not None"
        return
    assert type(got) is float, f"{where}: {got!r} is a {type(got).__name__}, not a float"
    assert got == want, f"{where}: {got!r} != {want!r}"
    assert math.copysign(1.0, got) == math.copysign(1.0, want), f"{where}: sign of zero differs"


def same_array(got: Any, want: np.ndarray | None, where: str) -> None:
    if want is None:
        assert got is None, f"{where}: expected None, got {got!r}"
        return
    assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__} is not an ndarray"
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{where}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    np.testing.assert_array_equal(got, want, err_msg=where)
    assert got.tobytes() == want.tobytes(), f"{where}: equal values but different bits (signed zeros?)"
    assert got.flags.writeable, f"{where}: read-only (the kernels' arrays are writable)"


def same_stats(got: dict, want: dict) -> None:
    assert list(got) == list(want), f"stats keys {list(got)} != {list(want)}"
    assert got == want, f"stats {got} != {want}"
    for key, value in got.items():
        assert type(value) is (int if key == "count" else float), f"stats[{key!r}] = {value!r}"


def same_result(got: Any, want: Any) -> None:
    """``got`` (client) equals ``want`` (kernels) field by field, to the last bit."""
    assert isinstance(got, (LossResult, GradResult, ParamGrad)) and type(got).__name__ == type(want).__name__
    for f in dataclasses.fields(want):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if f.name == "stats":
            same_stats(a, b)
        elif isinstance(b, np.ndarray) or (b is None and f.name in ("losses", "grad", "coef")):
            same_array(a, b, f.name)
        else:
            same_float(a, b, f.name)


def kernel_error(fn: Callable, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------- inputs

RNG = np.random.default_rng(20240604)


def logits(shape, dtype=np.float64) -> np.ndarray:
    return RNG.normal(0.0, 4.0, size=shape).astype(dtype)


def probabilities(shape, dtype=np.float64) -> np.ndarray:
    p = RNG.uniform(0.0, 1.0, size=shape)
    p.flat[0], p.flat[-1] = 0.0, 1.0  # the ends: log floors and clipping at work
    return p.astype(dtype)


def hard(shape, dtype=np.float64) -> np.ndarray:
    return RNG.integers(0, 2, size=shape).astype(dtype)


def soft(shape, dtype=np.float64) -> np.ndarray:
    return RNG.uniform(0.0, 1.0, size=shape).astype(dtype)


def signs(shape, dtype=np.float64) -> np.ndarray:
    return (2 * RNG.integers(0, 2, size=shape) - 1).astype(dtype)


def _cases() -> list:
    """(id, predictions, labels, options) for loss and grad."""
    out = []
    # dtype x shape x reduction
    for dt in (np.float32, np.float64):
        for shape in ((7,), (5, 3)):
            for red in ("mean", "sum", "none"):
                name = f"{np.dtype(dt).name}-{'x'.join(map(str, shape))}-{red}"
                out.append((name, logits(shape, dt), hard(shape, dt), {"reduction": red}))
    # every loss with every input form it accepts
    for loss in LOSSES:
        for inp in INPUTS:
            if inp == "probabilities" and loss not in SOFT:
                continue
            pred = probabilities(9) if inp == "probabilities" else logits(9)
            lab = signs(9) if inp == "margins" else hard(9)
            out.append((f"{loss}-{inp}", pred, lab, {"input": inp, "loss": loss, "reduction": "none"}))
            out.append((f"{loss}-{inp}-2d-mean", pred.reshape(3, 3), lab.reshape(3, 3),
                        {"input": inp, "loss": loss}))
    # options
    w = RNG.uniform(0.0, 3.0, size=6)
    w[2] = 0.0
    for red in ("mean", "sum", "none"):
        out.append((f"sample_weight-{red}", logits(6), hard(6), {"sample_weight": w, "reduction": red}))
        out.append((f"sample_weight-2d-{red}", logits((6, 4)), hard((6, 4)),
                    {"sample_weight": w.astype(np.float32), "reduction": red}))
    out += [
        ("pos_weight-scalar", logits(8), hard(8), {"pos_weight": 2.5}),
        ("pos_weight-scalar-2d-none", logits((4, 3)), hard((4, 3)), {"pos_weight": 0.5, "reduction": "none"}),
        ("pos_weight-columns", logits((5, 3)), hard((5, 3)), {"pos_weight": np.array([1.0, 2.0, 0.25])}),
        ("pos_weight-columns-none-f32", logits((5, 3), np.float32), hard((5, 3), np.float32),
         {"pos_weight": [3.0, 0.0, 1.5], "reduction": "none"}),
        ("pos_weight-one-column-array", logits(5), hard(5), {"pos_weight": np.array([4.0])}),
        ("label_smoothing-logits", logits(8), hard(8), {"label_smoothing": 0.1, "reduction": "none"}),
        ("label_smoothing-probabilities", probabilities(8), hard(8),
         {"input": "probabilities", "label_smoothing": 0.2, "reduction": "sum"}),
        ("eps-cross_entropy", probabilities(8), hard(8), {"input": "probabilities", "eps": 1e-7, "reduction": "none"}),
        ("eps-focal", probabilities(8), hard(8), {"input": "probabilities", "loss": "focal", "eps": 0.01}),
        ("focal-gamma-alpha-logits", logits(8), hard(8), {"loss": "focal", "gamma": 0.5, "alpha": 0.25,
                                                           "reduction": "none"}),
        ("focal-gamma-alpha-probabilities", probabilities(8), soft(8),
         {"input": "probabilities", "loss": "focal", "gamma": 3.0, "alpha": 0.75}),
        ("focal-gamma0", logits(8), hard(8), {"loss": "focal", "gamma": 0, "reduction": "none"}),
        ("soft-labels", logits((4, 2)), soft((4, 2)), {"reduction": "none"}),
        ("quantiles-mean", logits(11), hard(11), {"quantiles": (0.5, 0.9, 0.0, 1.0, 0.25)}),
        ("quantiles-none-2d", logits((4, 3)), hard((4, 3)),
         {"quantiles": [0.99, 0.01], "reduction": "none"}),
        ("dtype-float32-none", logits((4, 3)), hard((4, 3)), {"dtype": "float32", "reduction": "none"}),
        ("dtype-float32-mean", logits(6, np.float32), hard(6, np.float32), {"dtype": "float32"}),
        ("inf-logits", np.array([np.inf, -np.inf, 3.0, -np.inf, np.inf, -0.0]),
         np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0]), {"reduction": "none"}),
        ("inf-logits-f32-focal", np.array([np.inf, -np.inf, 1.0], dtype=np.float32),
         np.array([1, 0, 1], dtype=np.int8), {"loss": "focal", "reduction": "none", "quantiles": (0.5,)}),
        ("inf-margins-hinge", np.array([np.inf, -np.inf, 0.5, -np.inf]), np.array([1, -1, -1, 1]),
         {"input": "margins", "loss": "hinge", "reduction": "none"}),
        ("inf-logits-pos_weight", np.array([-np.inf, np.inf]), np.array([0.0, 1.0]), {"pos_weight": 3.0}),
        ("everything-2d-f32", logits((6, 4), np.float32), soft((6, 4), np.float32),
         {"sample_weight": w, "pos_weight": np.array([1.0, 2.0, 0.5, 3.0]), "label_smoothing": 0.05,
          "quantiles": (0.25, 0.75), "dtype": "float32", "reduction": "none"}),
        ("lists", [2.0, -1.0, 37.0, -np.inf], [1, 0, 1, 0], {"reduction": "none"}),
        ("fortran-bigendian", np.asfortranarray(logits((4, 3))), hard((4, 3)).astype(">f8"), {"reduction": "none"}),
        ("parallel-2d-f32", logits((10000, 4), np.float32), hard((10000, 4), np.int8),
         {"sample_weight": RNG.uniform(0.0, 1.0, 10000), "quantiles": (0.5,)}),
    ]
    # label dtypes, with float32 and float64 predictions
    for pdt in (np.float32, np.float64):
        for ldt in (np.bool_, np.int8, np.int64, np.uint8, np.int16, np.uint64, np.float16):
            out.append((f"labels-{np.dtype(ldt).name}-{np.dtype(pdt).name}", logits((3, 2), pdt),
                        hard((3, 2)).astype(ldt), {"reduction": "none"}))
    out.append(("labels-int8-margins", logits(6), signs(6, np.int8), {"input": "margins", "loss": "exponential"}))
    return out


CASES = _cases()


def _logreg_cases() -> list:
    X = RNG.normal(size=(7, 3))
    y = hard(7)
    c = RNG.normal(size=3)
    return [
        ("plain", X, y, c, {}),
        ("intercept", X, y.astype(np.int8), c, {"intercept": -0.75}),
        ("sample_weight-l2", X, y.astype(np.bool_), c, {"intercept": 0.5, "sample_weight": RNG.uniform(0, 2, 7),
                                                         "l2": 0.1}),
        ("float32", X.astype(np.float32), y, c.astype(np.float32), {"l2": 1e-3}),
        ("lists", [[0.5, 1.0], [-1.5, 2.0], [0.0, -1.0]], [1, 0, 1], [0.1, -0.2], {"intercept": 0.0}),
        ("parallel", RNG.normal(size=(10000, 4)), hard(10000, np.uint8), RNG.normal(size=4),
         {"intercept": 0.25, "sample_weight": RNG.uniform(0, 1, 10000), "l2": 0.5}),
    ]


LOGREG_CASES = _logreg_cases()


def _ids(cases) -> list[str]:
    return [c[0] for c in cases]


# ---------------------------------------------------------------------- round-trips

@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_loss_and_grad_round_trip(client: Client, case) -> None:
    _, pred, lab, opts = case
    same_result(client.loss(pred, lab, **opts), kernels.loss(pred, lab, **opts))
    same_result(client.grad(pred, lab, **opts), kernels.grad(pred, lab, **opts))


@pytest.mark.parametrize("case", LOGREG_CASES, ids=_ids(LOGREG_CASES))
def test_logreg_grad_round_trip(client: Client, case) -> None:
    _, X, y, c, opts = case
    kw = {k: v for k, v in opts.items() if k != "intercept"}
    args = (X, y, c, opts["intercept"]) if "intercept" in opts else (X, y, c)  # positional, as kernels allow
    same_result(client.logreg_grad(*args, **kw), kernels.logreg_grad(*args, **kw))


def test_result_types_mirror_the_kernels() -> None:
    """Same names, fields (in order), slots and frozenness as the kernels' dataclasses."""
    for mine, theirs in ((LossResult, kernels.LossResult), (GradResult, kernels.GradResult),
                         (ParamGrad, kernels.ParamGrad)):
        assert mine.__name__ == theirs.__name__
        assert [f.name for f in dataclasses.fields(mine)] == [f.name for f in dataclasses.fields(theirs)]
        assert mine.__slots__ == theirs.__slots__
        assert mine.__dataclass_params__.frozen == theirs.__dataclass_params__.frozen


def test_health(clients, server) -> None:
    assert clients[True].ready() and clients[True].live()
    with Client(f"http://127.0.0.1:{free_port()}", retries=0, timeout=2.0) as nobody:
        assert not nobody.ready() and not nobody.live()


# ------------------------------------------------------------------------------- errors

def test_bad_label_gives_the_kernels_message(client: Client) -> None:
    pred, lab = np.array([0.5, 1.0, -2.0]), np.array([1, 2, 0])
    want = kernel_error(kernels.loss, pred, lab, loss="hinge")
    assert want == "labels[1] = 2 is not in {0, 1}"
    with pytest.raises(LossdError) as info:
        client.loss(pred, lab, loss="hinge")
    err = info.value
    assert isinstance(err, ValueError) and err.status == 400
    assert str(err) == err.message == want


@pytest.mark.parametrize("fn, args, kwargs", [
    ("loss", (np.array([0.5, np.nan]), np.array([1, 0])), {}),
    ("grad", (np.array([1.2, 0.5]), np.array([1, 0])), {"input": "probabilities"}),
    ("loss", (np.zeros(3), np.zeros(2)), {}),
    ("loss", (np.zeros((2, 3)), np.zeros((2, 2))), {}),
    ("grad", (np.zeros(3), np.array([1, -1, 0])), {"input": "margins"}),
    ("loss", (np.zeros(3), np.zeros(3)), {"loss": "hinge", "input": "probabilities"}),
    ("loss", (np.zeros(3), np.zeros(3)), {"sample_weight": np.array([1.0, -1.0, 0.0])}),
    ("loss", (np.zeros(3), np.zeros(3)), {"sample_weight": np.zeros(3)}),
    ("loss", (np.zeros((2, 2)), np.zeros((2, 2))), {"pos_weight": np.ones(3)}),
    ("loss", (np.zeros(0), np.zeros(0)), {}),
    ("loss", (np.zeros((1, 1, 1)), np.zeros((1, 1, 1))), {}),
    ("logreg_grad", (np.ones((2, 2)), np.array([1, 3]), np.zeros(2)), {}),
    ("logreg_grad", (np.ones((2, 2)), np.array([1, 0]), np.zeros(3)), {}),
    ("logreg_grad", (np.ones((2, 2)), np.array([1, 0]), np.array([0.0, np.inf])), {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_errors_pass_through(client: Client, fn: str, args, kwargs) -> None:
    """Invalid values are refused with exactly the kernels' ValueError message."""
    want = kernel_error(getattr(kernels, fn), *args, **kwargs)
    with pytest.raises(LossdError) as info:
        getattr(client, fn)(*args, **kwargs)
    assert info.value.status == 400 and str(info.value) == want


def test_bad_options_are_refused(client: Client) -> None:
    """Option values the server's schema refuses (a ValueError in kernels too)."""
    for kwargs, field in (({"reduction": "avg"}, "reduction"), ({"label_smoothing": 1.0}, "label_smoothing"),
                          ({"gamma": "strong"}, "gamma"), ({"dtype": "float16"}, "dtype"),
                          ({"quantiles": (0.5, 1.5)}, "quantiles[1]")):
        kernel_error(kernels.loss, np.zeros(2), np.zeros(2), **kwargs)
        with pytest.raises(LossdError) as info:
            client.loss(np.zeros(2), np.zeros(2), **kwargs)
        assert info.value.status == 400 and field in str(info.value), (kwargs, str(info.value))


def test_local_errors() -> None:
    """Arguments that cannot become tensors fail before any request (as ValueError)."""
    with Client("http://127.0.0.1:9", retries=0) as c:  # nothing is sent
        with pytest.raises(ValueError, match="predictions must hold numbers"):
            c.loss(np.array(["a", "b"]), np.zeros(2))
        with pytest.raises(ValueError, match=r"quantiles\[1\] = 'x' is not a number"):
            c.loss(np.zeros(2), np.zeros(2), quantiles=(0.5, "x"))
    for bad in ({"retries": -1}, {"retries": 1.5}, {"backoff": -0.1}):
        with pytest.raises(ValueError):
            Client("http://127.0.0.1:9", **bad)


def test_token_missing_or_wrong(server) -> None:
    for token in (None, "wrong"):
        with Client(server.url, token, retries=0) as c:
            with pytest.raises(LossdError) as info:
                c.loss(np.zeros(2), np.zeros(2))
            assert info.value.status == 401 and "bearer token" in str(info.value)


def test_unknown_path_is_404(server) -> None:
    with Client(server.url + "/not-lossd", TOKEN, retries=0) as c:
        with pytest.raises(LossdError) as info:
            c.loss(np.zeros(2), np.zeros(2))
    assert info.value.status == 404 and str(info.value) == "Not Found"


def test_body_over_the_limit_is_413(clients) -> None:
    n = BODY_LIMIT // 16 + 1000  # two float64 tensors: just over the limit
    with pytest.raises(LossdError) as info:
        clients[True].loss(np.zeros(n), np.zeros(n))
    assert info.value.status == 413 and "limit" in str(info.value)
    same_result(clients[True].loss(np.zeros(4), np.ones(4)), kernels.loss(np.zeros(4), np.ones(4)))  # still usable


def test_binary_body_keeps_tensors_aligned() -> None:
    """Every binary tensor starts at a multiple of its item size (the server reads them
    in place; misaligned float64 weights change the last bit of the mean: see
    lossd_client._codec.encode_request)."""
    call = loss_call("loss", np.zeros(3, np.float32), np.zeros(3, np.int8), sample_weight=np.ones(3),
                     pos_weight=np.ones(1), input="logits", loss="cross_entropy", reduction="mean",
                     label_smoothing=0.0, eps=None, gamma=2.0, alpha=None, quantiles=(), dtype="float64")
    body, headers = encode_request(call.inputs, call.parameters, binary=True)
    offset = int(headers[HEADER_LENGTH])
    assert offset % 8 == 0
    names = []
    for t in json.loads(body[:offset])["inputs"]:
        itemsize = {"FP64": 8, "FP32": 4, "INT8": 1}[t["datatype"]]
        assert offset % itemsize == 0, t
        offset += t["parameters"]["binary_data_size"]
        names.append(t["name"])
    assert offset == len(body) and names == ["sample_weight", "pos_weight", "predictions", "labels"]


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(LossdError(422, "labels[1] = 2 is not in {0, 1}")))
    assert (err.status, str(err)) == (422, "labels[1] = 2 is not in {0, 1}") and isinstance(err, ValueError)


# -------------------------------------------------------------------- retries (a stub)

class Stub:
    """A tiny HTTP/1.1 server on 127.0.0.1: each POST takes the next action of ``script``
    (the last one repeats): "503" (with ``retry_after``), "drop" (close without an
    answer), "slow" (the same, 0.6 s later) or "proxy" (pass the request on to
    ``upstream`` and its answer back).
    Records every request's Authorization header."""

    def __init__(self, upstream: str, script: list[str], retry_after: str | None = "0") -> None:
        self.upstream, self.script, self.retry_after = upstream, list(script), retry_after
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with stub.lock:
                    stub.auth.append(self.headers.get("authorization"))
                    action = stub.script[min(len(stub.auth), len(stub.script)) - 1]
                if action in ("drop", "slow"):
                    if action == "slow":
                        time.sleep(0.6)  # longer than the client's timeout in the test
                    self.close_connection = True
                    return
                if action == "503":
                    self._answer(503, {"content-type": "application/json",
                                       **({"retry-after": stub.retry_after} if stub.retry_after else {})},
                                 b'{"error": "busy: retry shortly"}')
                    return
                keep = ("content-type", "inference-header-content-length", "authorization")
                r = httpx.post(stub.upstream + self.path, content=body, timeout=10.0,
                               headers={k: v for k, v in self.headers.items() if k.lower() in keep})
                self._answer(r.status_code, {k: v for k, v in r.headers.items() if k.lower() in keep}, r.content)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "Stub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)


PRED, LAB = np.array([2.0, -1.0, 37.0, -np.inf]), np.array([1, 0, 1, 0], dtype=np.int8)


def test_retries_503_then_succeeds(server) -> None:
    with Stub(server.url, ["503", "503", "proxy"]) as stub, \
            Client(stub.url, TOKEN, retries=3, backoff=0.01) as c:
        same_result(c.loss(PRED, LAB, reduction="none"), kernels.loss(PRED, LAB, reduction="none"))
    assert stub.auth == [f"Bearer {TOKEN}"] * 3


def test_gives_up_after_retries(server) -> None:
    with Stub(server.url, ["503"]) as stub, Client(stub.url, TOKEN, retries=2, backoff=0.01) as c:
        with pytest.raises(LossdError) as info:
            c.grad(PRED, LAB)
    assert info.value.status == 503 and str(info.value) == "busy: retry shortly"
    assert len(stub.auth) == 3  # the first attempt and two retries
    with Stub(server.url, ["503"]) as stub, Client(stub.url, TOKEN, retries=0) as c:
        with pytest.raises(LossdError):
            c.loss(PRED, LAB)
    assert len(stub.auth) == 1


def test_retry_after_within_the_cap_is_honoured(server, monkeypatch) -> None:
    """Retry-After: 0 overrides a long backoff; one beyond the cap falls back to it."""
    with Stub(server.url, ["503", "proxy"], retry_after="0") as stub, \
            Client(stub.url, TOKEN, backoff=3.0) as c:
        start = time.monotonic()
        c.loss(PRED, LAB)
        assert time.monotonic() - start < 1.5
    monkeypatch.setattr("lossd_client._retry.MAX_BACKOFF", 0.5)  # a short cap: a mistake costs 1 s
    with Stub(server.url, ["503", "proxy"], retry_after="1") as stub, \
            Client(stub.url, TOKEN, backoff=0.01) as c:
        start = time.monotonic()
        c.loss(PRED, LAB)
        assert time.monotonic() - start < 0.8
    assert len(stub.auth) == 2


def test_read_timeout_is_not_retried(server) -> None:
    """A slow answer raises httpx's timeout at once: retrying would multiply the wait."""
    with Stub(server.url, ["slow"]) as stub, Client(stub.url, TOKEN, timeout=0.2, backoff=0.01) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.loss(PRED, LAB)
    assert len(stub.auth) == 1


def test_dropped_connection_is_retried(server) -> None:
    with Stub(server.url, ["drop", "proxy"]) as stub, Client(stub.url, TOKEN, backoff=0.01) as c:
        same_result(c.logreg_grad(np.ones((2, 2)), [1, 0], np.zeros(2)),
                    kernels.logreg_grad(np.ones((2, 2)), [1, 0], np.zeros(2)))
    assert len(stub.auth) == 2


def test_connection_refused_raises_the_httpx_error_after_retries() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, timeout=2.0) as c:
        start = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            c.loss(PRED, LAB)
        assert time.monotonic() - start >= 0.03  # slept 0.01 + 0.02 between the three attempts


def test_backoff_schedule() -> None:
    assert [next_delay(a, 5, 0.1) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, None]
    assert next_delay(20, 30, 0.1) == MAX_BACKOFF
    assert next_delay(0, 3, 0.1, "2") == 2.0  # Retry-After within the cap wins
    assert next_delay(0, 3, 0.1, "3600") == 0.1  # beyond the cap: the backoff
    assert next_delay(0, 3, 0.1, "soon") == 0.1
    assert next_delay(3, 3, 0.1, "0") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0
    assert retry_after_seconds(None) is None and retry_after_seconds("-3") == 0.0


# ----------------------------------------------------------------------------- async

ASYNC_CASES = [c for c in CASES if c[0] in ("float32-7-none", "float64-5x3-mean", "focal-probabilities",
                                             "pos_weight-columns", "quantiles-mean", "dtype-float32-none",
                                             "inf-logits", "labels-bool-float32", "everything-2d-f32")]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_async_round_trips(server, binary: bool) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, TOKEN, binary=binary, timeout=20.0) as ac:
            assert await ac.ready() and await ac.live()
            calls = [(ac.loss, kernels.loss, c) for c in ASYNC_CASES] + [(ac.grad, kernels.grad, c) for c in ASYNC_CASES]
            results = await asyncio.gather(*(remote(pred, lab, **opts) for remote, _, (_, pred, lab, opts) in calls))
            for (_, local, (_, pred, lab, opts)), got in zip(calls, results):
                same_result(got, local(pred, lab, **opts))
            for _, X, y, c, opts in LOGREG_CASES[:3]:
                same_result(await ac.logreg_grad(X, y, c, **opts), kernels.logreg_grad(X, y, c, **opts))
            with pytest.raises(LossdError) as info:
                await ac.loss(np.array([0.5, 1.0]), np.array([1, 2]), loss="hinge")
            assert info.value.status == 400 and str(info.value) == "labels[1] = 2 is not in {0, 1}"

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_retries_and_token(server) -> None:
    async def main() -> None:
        with Stub(server.url, ["503", "drop", "proxy"]) as stub:
            async with AsyncClient(stub.url, TOKEN, backoff=0.01) as ac:
                same_result(await ac.grad(PRED, LAB, reduction="sum"), kernels.grad(PRED, LAB, reduction="sum"))
            assert stub.auth == [f"Bearer {TOKEN}"] * 3
        with Stub(server.url, ["503"]) as stub:
            async with AsyncClient(stub.url, TOKEN, retries=1, backoff=0.01) as ac:
                with pytest.raises(LossdError) as info:
                    await ac.loss(PRED, LAB)
            assert info.value.status == 503 and len(stub.auth) == 2
        async with AsyncClient(server.url) as ac:
            with pytest.raises(LossdError) as info:
                await ac.loss(PRED, LAB)
            assert info.value.status == 401

    asyncio.run(asyncio.wait_for(main(), 60))


# ------------------------------------------------------------------------- packaging

def test_imports_without_fastapi_or_numba() -> None:
    code = ("import sys; import lossd_client; "
            "assert 'fastapi' not in sys.modules and 'numba' not in sys.modules and 'kernels' not in sys.modules, "
            "sorted(m for m in ('fastapi', 'numba', 'kernels', 'service') if m in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr


def test_dtype_float32_means_the_same_as_in_the_kernels(clients) -> None:
    """dtype="float32" rounds the inputs to float32 and returns float32 arrays, in the
    kernels and over the wire alike (the service applies the kernels' rule), so the
    client sends it as given, whatever the inputs' dtype."""
    rng = np.random.default_rng(11)
    pred, lab, w = rng.normal(0, 3, 9), np.array([1, 0, 1, 1, 0, 0, 1, 0, 1]), rng.random(9) * 3
    for c in clients.values():
        for kw in (dict(reduction="none"), dict(sample_weight=w), dict(reduction="none", sample_weight=w)):
            want = kernels.grad(pred, lab, dtype="float32", **kw)
            got = c.grad(pred, lab, dtype="float32", **kw)
            assert want.grad.dtype == got.grad.dtype == np.float32
            assert np.array_equal(want.grad, got.grad) and want.loss == got.loss
            np.testing.assert_array_equal(kernels.grad(pred.astype(np.float32), lab, sample_weight=(
                None if "sample_weight" not in kw else w.astype(np.float32)), dtype="float32",
                reduction=kw.get("reduction", "mean")).grad, got.grad)
