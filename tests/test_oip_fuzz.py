"""A fuzzer for the Open Inference Protocol endpoints against a real server (issue 12).

Each example builds a valid infer request (binary or JSON tensors, random datatypes,
shapes and options), then garbles it: JSON header fields that lie (binary_data_size,
shape, datatype, names, data), dimensions that are huge or whose product overflows
int64, offsets past the end, binary tails cut short or too long, an
Inference-Header-Content-Length that lies or is no number, truncated or bit-flipped
header bytes, junk parameters and outputs; sometimes sent chunked. On one keep-alive
connection (plain ``http.client``, no retries):

- the garbled request gets a complete answer: 200 with a well-formed OIP response, or
  400/404 with ``{"error": "<message>"}``; never a 5xx, never a dropped connection;
- the valid request sent next on the same connection gets the kernels' bits.

After every test, the ``server_never_5xx`` fixture (conftest.py) checks the server's
/metrics and log: no 5xx and no unhandled error during that test, and still alive.
Bounded in count (tests/profiles.py) and in time (``TIME_BUDGET``).
"""

from __future__ import annotations

import http.client
import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from lossd import kernels

from profiles import budget, examples
from service_helpers import HCL, assert_oip_result, oip_outputs

pytestmark = pytest.mark.usefixtures("server_never_5xx")

TIME_BUDGET = budget(60.0)  # seconds for the whole fuzz test, whatever the example count
_clock: dict[str, float] = {}

LABEL_TYPES = {"FP64": "<f8", "FP32": "<f4", "INT8": "<i1", "INT64": "<i8", "UINT8": "<u1", "BOOL": "?"}
ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
             "FP32", "FP64", "BYTES", "BF16", "", "fp64"]
HUGE = [2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**30, -1, -(2**63), -(2**64)]


class Conn:
    """One keep-alive connection; ``send`` fails the test if the server drops it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, path: str, body: bytes, headers: dict[str, str], chunked: bool = False,
             what: str = "") -> tuple[int, dict[str, str], bytes]:
        try:
            if chunked:  # no Content-Length: the body arrives in pieces
                parts = [body[i:i + 7] for i in range(0, len(body), 7)]
                self.c.request("POST", path, body=iter(parts), headers=headers, encode_chunked=True)
            else:
                self.c.request("POST", path, body=body, headers=headers)
            r = self.c.getresponse()
            data = r.read()
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise AssertionError(f"the server dropped the connection ({type(exc).__name__}: {exc}) "
                                 f"on {what}: headers {headers}, body {body[:300]!r}") from None
        heads = {k.lower(): v for k, v in r.getheaders()}
        assert len(data) == int(heads.get("content-length", len(data))), (what, heads)
        if heads.get("connection", "").lower() == "close":  # only ever with 413 (not sent here)
            raise AssertionError(f"the server closed the connection after {r.status} on {what}: {data[:300]!r}")
        return r.status, heads, data

    def close(self) -> None:
        self.c.close()


@pytest.fixture(scope="module")
def conn(server):
    c = Conn(server.port)
    try:
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------------ valid requests


@st.composite
def valid_requests(draw) -> dict[str, Any]:
    """A valid request: its tensors, parameters and what the kernels answer."""
    model = draw(st.sampled_from(["loss", "grad"]))
    n = draw(st.integers(1, 6))
    shape = draw(st.sampled_from([(n,), (n, 2)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pdt = draw(st.sampled_from(["FP64", "FP32"]))
    ldt = draw(st.sampled_from(sorted(LABEL_TYPES)))
    pred = rng.normal(0, 5, shape).astype(np.dtype(LABEL_TYPES[pdt]).newbyteorder("="))
    if draw(st.booleans()):
        pred.flat[0] = -np.inf
    lab = (rng.random(shape) < 0.5).astype(np.dtype(LABEL_TYPES[ldt]).newbyteorder("="))
    tensors = {"predictions": pred, "labels": lab}
    if draw(st.booleans()):
        tensors["sample_weight"] = rng.uniform(0.1, 2.0, n)
    params = {"reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if draw(st.booleans()):
        params["quantiles"] = "0.5,0.9"
    fn = kernels.loss if model == "loss" else kernels.grad
    r = fn(pred, lab, sample_weight=tensors.get("sample_weight"), reduction=params["reduction"],
           quantiles=(0.5, 0.9) if "quantiles" in params else ())
    want = {"loss": r.loss, "losses": r.losses, "stats": r.stats}
    if model == "grad":
        want["grad"] = r.grad
    return {"model": model, "tensors": tensors, "params": params, "want": want,
            "binary": draw(st.booleans()), "binary_out": draw(st.booleans())}


def _json_value(v: float) -> Any:
    return v if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")


def build(req: dict[str, Any]) -> tuple[dict, list[bytes]]:
    """The JSON header (a dict, to be garbled) and the binary blobs in input order."""
    inputs, blobs = [], []
    for name, a in req["tensors"].items():
        dt = {"f8": "FP64", "f4": "FP32", "i1": "INT8", "i8": "INT64", "u1": "UINT8", "b1": "BOOL"}[a.dtype.str[1:]]
        t: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(a.shape)}
        if req["binary"]:
            raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = a.ravel().tolist()
            t["data"] = [_json_value(v) if isinstance(v, float) else v for v in flat]
        inputs.append(t)
    params = dict(req["params"])
    if req["binary_out"]:
        params["binary_data_output"] = True
    return {"inputs": inputs, "parameters": params}, blobs


def frame(head: dict | bytes, blobs: list[bytes], binary: bool) -> tuple[bytes, dict[str, str]]:
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers[HCL] = str(len(raw))
        headers["Content-Type"] = "application/octet-stream"
    return raw + b"".join(blobs), headers


# ------------------------------------------------------------------------ garbling

junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.sampled_from(HUGE), st.floats(),
                 st.text(max_size=6), st.lists(st.integers(-2, 5), max_size=3), st.just({}), st.just({"a": 1}))
dims = st.one_of(st.integers(0, 8), st.sampled_from(HUGE))
shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.sampled_from([[2**62, 2**62], [2**32, 2**32, 2**32], [0, 2**64], [0, 2**63], [2**63 - 1, 2, 0],
                     [1] * 40, [0] * 40, [], [1.5], ["2"], [True], [[2]]]),
    junk,
)


@st.composite
def field_lie(draw, tensor: dict, blob_size: int | None) -> str:
    """Garble one field of one input tensor in place; say which."""
    what = draw(st.sampled_from(["binary_data_size", "shape", "datatype", "name", "data", "parameters",
                                 "drop_key", "extra_key"]))
    if what == "binary_data_size":
        size = blob_size if blob_size is not None else 8
        tensor.setdefault("parameters", {})
        if not isinstance(tensor["parameters"], dict):
            tensor["parameters"] = {}
        tensor["parameters"]["binary_data_size"] = draw(st.one_of(
            st.integers(-size - 8, 2 * size + 8), st.sampled_from(HUGE), junk))
    elif what == "shape":
        tensor["shape"] = draw(shapes)
    elif what == "datatype":
        tensor["datatype"] = draw(st.one_of(st.sampled_from(ALL_TYPES), junk))
    elif what == "name":
        tensor["name"] = draw(st.one_of(st.sampled_from(["predictions", "labels", "sample_weight", "pos_weight",
                                                         "features", "coef", "intercept", "bogus", ""]), junk))
    elif what == "data":
        tensor["data"] = draw(st.one_of(
            junk, st.lists(st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.sampled_from(["Infinity", "NaN", "x"]),
                                     st.booleans(), st.lists(st.floats(-2, 2), max_size=2)), max_size=8)))
    elif what == "parameters":
        tensor["parameters"] = draw(st.one_of(junk, st.dictionaries(
            st.sampled_from(["binary_data_size", "shared_memory_region", "x"]), junk, max_size=2)))
    elif what == "drop_key":
        key = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]))
        tensor.pop(key, None)
        what += f" {key}"
    else:
        tensor[draw(st.sampled_from(["x", "contents", "id"]))] = draw(junk)
    return what


@st.composite
def garbled(draw, req: dict[str, Any]) -> tuple[bytes, dict[str, str], list[str]]:
    """The request garbled by 1-3 lies; returns body, headers and what was done."""
    head, blobs = build(req)
    binary = req["binary"]
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "inputs", "parameters", "outputs", "top"]))
        inputs = head.get("inputs")
        listed = isinstance(inputs, list) and all(isinstance(t, dict) for t in inputs)
        if kind == "field" and listed and inputs:
            i = draw(st.integers(0, len(head["inputs"]) - 1))
            done.append("inputs[%d].%s" % (i, draw(field_lie(head["inputs"][i], len(blobs[i]) if i < len(blobs) else None))))
        elif kind == "inputs":
            op = draw(st.sampled_from(["reverse", "duplicate", "drop", "empty", "junk"]))
            if op == "reverse" and listed:
                inputs.reverse()  # the blobs stay in order: offsets now lie
            elif op == "duplicate" and listed and inputs:
                inputs.append(dict(inputs[0]))
            elif op == "drop" and listed and inputs:
                inputs.pop(draw(st.integers(0, len(inputs) - 1)))
            elif op == "empty":
                head["inputs"] = []
            else:
                head["inputs"] = draw(junk)
            done.append(f"inputs {op}")
        elif kind == "parameters":
            key = draw(st.sampled_from(["binary_data_output", "reduction", "quantiles", "dtype", "loss", "gamma",
                                        "pos_weight", "bogus", "timeout", "wrt", "eps"]))
            if not isinstance(head.get("parameters"), dict):
                head["parameters"] = {}
            head["parameters"][key] = draw(st.one_of(junk, st.sampled_from(["none", "float32", "0.5,x", "1,2",
                                                                            "focal", "params", ",,,"])))
            done.append(f"parameters.{key}")
        elif kind == "outputs":
            head["outputs"] = draw(st.one_of(junk, st.lists(st.one_of(junk, st.fixed_dictionaries(
                {"name": st.sampled_from(["loss", "losses", "grad", "mean", "p50", "p99", "coef_grad", "x"])},
                optional={"parameters": st.one_of(junk, st.fixed_dictionaries({"binary_data": junk}))})),
                max_size=3)))
            done.append("outputs")
        else:
            key = draw(st.sampled_from(["id", "model_name", "inputs", "parameters", "x"]))
            head[key] = draw(junk)
            done.append(f"top-level {key}")
    raw = json.dumps(head, allow_nan=True).encode()
    # byte-level lies: the header cut or flipped, the tail cut or padded, the length header
    byte_ops = draw(st.lists(st.sampled_from(["flip", "cut_header", "cut_tail", "pad_tail", "hcl"]), max_size=2))
    tail = b"".join(blobs)
    hcl: str | None = str(len(raw)) if binary else None
    for op in byte_ops:
        if op == "flip" and raw:
            b = bytearray(raw)
            for _ in range(draw(st.integers(1, 4))):
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
            raw = bytes(b)
        elif op == "cut_header" and raw:
            raw = raw[:draw(st.integers(0, len(raw) - 1))]
        elif op == "cut_tail" and tail:
            tail = tail[:draw(st.integers(0, len(tail) - 1))]
        elif op == "pad_tail":
            tail += bytes(draw(st.binary(min_size=1, max_size=24)))
        elif op == "hcl":
            true = len(raw)
            hcl = draw(st.one_of(st.none(), st.integers(-true, 2 * true).map(str), st.sampled_from(HUGE).map(str),
                                 st.sampled_from(["", "abc", " 12", "+5", "0x10", "1e3", "1_0", "9" * 5000, "-0"])))
        done.append(op)
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if hcl is not None:
        headers[HCL] = hcl
    return raw + tail, headers, done


# ------------------------------------------------------------------------ the fuzz test


def check_answer(status: int, heads: dict[str, str], data: bytes, what: str) -> None:
    assert status < 500, f"{status} on {what}: {data[:500]!r}"
    assert status in (200, 400, 404), f"{status} on {what}: {data[:500]!r}"
    if status == 200:
        oip_outputs(data, heads)  # well-formed: header length, sizes and shapes agree
        return
    body = json.loads(data)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], (what, body)
    assert "Traceback" not in body["error"] and "internal error" not in body["error"], (what, body)


@examples(500)
@given(st.data())
def test_garbled_infer_requests_never_break_the_server(conn, data):
    start = _clock.setdefault("start", time.monotonic())
    if time.monotonic() - start > TIME_BUDGET:
        event("skipped: time budget spent")
        return
    req = data.draw(valid_requests(), "request")
    body, headers, done = data.draw(garbled(req), "garbled")
    what = f"{req['model']} infer garbled by {done}"
    chunked = data.draw(st.integers(0, 4)) == 0
    path = data.draw(st.sampled_from([f"/v2/models/{req['model']}/infer",
                                      f"/v2/models/{req['model']}/versions/1/infer"]))
    status, heads, answer = conn.send(path, body, headers, chunked=chunked, what=what)
    event(f"status {status}")
    check_answer(status, heads, answer, what)
    # the same connection, the valid request: the kernels' bits
    good, good_headers = frame(*build(req), binary=req["binary"])
    status, heads, answer = conn.send(f"/v2/models/{req['model']}/infer", good, good_headers,
                                      what=f"the valid request after {what}")
    assert status == 200, (what, answer[:500])
    assert_oip_result(oip_outputs(answer, heads), req["want"], f"after {what}")


@pytest.mark.parametrize("shape", [[2**62, 2**62], [2**63], [2**64], [0, 2**64], [2**32, 2**32, 2**32],
                                   [-1], [2**31, 2**31, 4]])
@pytest.mark.parametrize("binary", [True, False])
def test_dimensions_that_overflow_get_400(conn, shape, binary):
    """Shapes whose product overflows int64 (or whose dimensions do), with a size or data
    that matches nothing: a 400 naming the input, over a connection that stays open."""
    n = 2
    t: dict[str, Any] = {"name": "predictions", "datatype": "FP64", "shape": shape}
    if binary:
        t["parameters"] = {"binary_data_size": 16}
    else:
        t["data"] = [0.5, 1.0]
    head = {"inputs": [t, {"name": "labels", "datatype": "FP64", "shape": [n], "data": [1.0, 0.0]}]}
    body, headers = frame(head, [np.array([0.5, 1.0]).tobytes()] if binary else [], binary)
    status, heads, answer = conn.send("/v2/models/loss/infer", body, headers, what=f"shape {shape}")
    assert status == 400, answer
    msg = json.loads(answer)["error"]
    assert "'predictions'" in msg, msg
