"""Same bad input, same error on every transport (issue 13).

For each bad input of the table, the Python API raises ``lossd.kernels.InputError``
(``argument``, ``index``, ``reason``; its message is ``argument[index] reason``), and a real
``lossd serve`` reports exactly that error on each transport:

- JSON ``/loss`` and ``/grad``: 422, ``detail[0].loc == ["body", argument, *index]`` and
  ``detail[0].msg == str(exc)``;
  (non-finite numbers as the "NaN"/"Infinity" strings, and also as Python's bare NaN token);
- OIP ``/v2/models/loss/infer`` (and ``grad``), JSON tensors and binary tensors: 400,
  ``{"error": str(exc)}``; options travel as the request's ``parameters``, every array
  (``pos_weight`` too) as an input tensor;
- OIP over gRPC (``LOSSD_GRPC_PORT``, tritonclient.grpc, raw_input_contents):
  INVALID_ARGUMENT with ``str(exc)`` as its message.

Raw httpx requests (the binary framing built here: JSON header,
``Inference-Header-Content-Length``, little-endian bytes), no service internals. Where a
transport cannot carry an input as such, the table says how it travels instead. Where the
server answers otherwise today, the case is ``xfail(strict=True)`` naming the difference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd.kernels import InputError

from service_helpers import HCL, OIP_DATATYPES, jsonable

pytestmark = pytest.mark.usefixtures("server_never_5xx")


@pytest.fixture(scope="module")
def server():
    """conftest's server with OIP over gRPC on (``server.grpc_port``)."""
    from service_helpers import lossd_serve_grpc

    s = lossd_serve_grpc()
    try:
        yield s.start()
    finally:
        s.close()

TIMEOUT = 30.0


def _put(shape, where, value, fill=0.0, dtype=np.float64) -> np.ndarray:
    a = np.full(shape, fill, dtype=dtype)
    a[where] = value
    return a


P = np.zeros((5, 2))
Y = np.zeros((5, 2))


@dataclass
class Case:
    id: str
    arrays: dict[str, np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # how the input travels where a transport cannot carry it as such
    xfail: dict[str, str] = field(default_factory=dict)  # transport -> the difference seen


CASES = [
    Case("label 2 at [3, 1]", {"predictions": P, "labels": _put((5, 2), (3, 1), 2.0)}),
    Case("integer label 2 at [3, 1]", {"predictions": P, "labels": _put((5, 2), (3, 1), 2, 0, np.int64)},
         note="JSON: the integer 2; OIP: an INT64 tensor"),
    Case("NaN prediction", {"predictions": _put((5, 2), (1, 1), np.nan), "labels": Y},
         note='JSON numbers have no NaN: JSON and OIP JSON send the string "NaN"'),
    Case("probability 1.5", {"predictions": _put((5, 2), (2, 1), 1.5, 0.5), "labels": Y},
         {"input": "probabilities"}),
    Case("negative sample_weight", {"predictions": P, "labels": Y,
                                    "sample_weight": _put(5, 2, -1.0, 1.0)}),
    Case("pos_weight NaN at a column", {"predictions": P, "labels": Y,
                                        "pos_weight": np.array([1.0, np.nan])},
         note='JSON: the list [1.0, "NaN"] (or the bare NaN token); OIP: an input tensor'),
    Case("quantile out of range", {"predictions": P, "labels": Y}, {"quantiles": (0.5, 1.5)},
         note='OIP: the parameter "0.5,1.5" (comma-separated, as OIP parameters are scalars)'),
    Case("float32 with 1e39", {"predictions": _put((5, 2), (2, 0), 1e39), "labels": Y}, {"dtype": "float32"},
         note="sent as float64 (1e39 is no float32); dtype float32 asks the kernels to round"),
    Case("shape mismatch", {"predictions": P, "labels": np.zeros((4, 2))}),
    Case("empty predictions", {"predictions": np.zeros(0), "labels": np.zeros(0)}),
]


def kernel_error(case: Case, fn=kernels.loss) -> InputError:
    with pytest.raises(InputError) as info:
        fn(**case.arrays, **case.options)
    exc = info.value
    assert str(exc) == f"{exc.argument}{kernels_index(exc.index)} {exc.reason}"
    return exc


def kernels_index(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, index)) + "]" if index else ""


# ---------------------------------------------------------------------------- requests

def json_body(case: Case) -> dict[str, Any]:
    body: dict[str, Any] = {k: jsonable(v) for k, v in case.arrays.items()}
    for k, v in case.options.items():
        body[k] = list(v) if isinstance(v, tuple) else v
    return body


def oip_parameters(case: Case) -> dict[str, Any]:
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in case.options.items()}


def oip_json_body(case: Case) -> bytes:
    inputs = [{"name": k, "datatype": OIP_DATATYPES[v.dtype.str[1:]], "shape": list(v.shape),
               "data": jsonable(v.ravel().tolist())} for k, v in case.arrays.items()]
    return json.dumps({"inputs": inputs, "parameters": oip_parameters(case)}, allow_nan=False).encode()


def oip_binary_body(case: Case) -> tuple[bytes, dict[str, str]]:
    inputs, blobs = [], []
    for k, v in case.arrays.items():
        raw = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes()
        inputs.append({"name": k, "datatype": OIP_DATATYPES[v.dtype.str[1:]], "shape": list(v.shape),
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, "parameters": oip_parameters(case)}, allow_nan=False).encode()
    return head + b"".join(blobs), {HCL: str(len(head)), "Content-Type": "application/octet-stream"}


def grpc_error(server, case: Case, model: str) -> tuple[str, str]:
    """(status code, message) of the case sent by tritonclient.grpc (raw_input_contents)."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        inputs = []
        for k, v in case.arrays.items():
            t = grpcclient.InferInput(k, list(v.shape), OIP_DATATYPES[v.dtype.str[1:]])
            t.set_data_from_numpy(np.ascontiguousarray(v))
            inputs.append(t)
        with pytest.raises(InferenceServerException) as info:
            c.infer(model, inputs, parameters=oip_parameters(case), client_timeout=TIMEOUT)
    finally:
        c.close()
    return info.value.status(), info.value.message()


def _params(cases):
    out = []
    for c in cases:
        transports = ["json", "oip-json", "oip-binary", "oip-grpc"]
        if any(np.isnan(v).any() for v in c.arrays.values() if v.dtype.kind == "f"):
            transports.append("json-bare-nan")  # Python's json writes NaN as a bare token
        for transport in transports:
            marks = []
            if transport in c.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=c.xfail[transport]))
            out.append(pytest.param(c, transport, id=f"{c.id}-{transport}", marks=marks))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_python_api_raises_a_structured_input_error(case):
    for fn in (kernels.loss, kernels.grad):
        exc = kernel_error(case, fn)
        assert exc.argument in case.arrays or exc.argument in case.options, exc.argument
        assert isinstance(exc.index, tuple)
        assert str(kernel_error(case, kernels.grad)) == str(kernel_error(case, kernels.loss))


@pytest.mark.parametrize("case,transport", _params(CASES))
@pytest.mark.parametrize("model", ["loss", "grad"])
def test_every_transport_reports_the_kernels_error(server, case, transport, model):
    exc = kernel_error(case, kernels.loss if model == "loss" else kernels.grad)
    if transport in ("json", "json-bare-nan"):
        body = json_body(case) if transport == "json" else {**json_body(case), **{
            k: v.tolist() for k, v in case.arrays.items()}}
        r = httpx.post(f"{server.url}/{model}", content=json.dumps(body, allow_nan=True).encode(),
                       headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail[0]["loc"] == ["body", exc.argument, *exc.index], detail
        assert detail[0]["msg"] == str(exc), detail
        return
    if transport == "oip-grpc":
        code, message = grpc_error(server, case, model)
        assert (code, message) == ("StatusCode.INVALID_ARGUMENT", str(exc))
        return
    if transport == "oip-json":
        body, headers = oip_json_body(case), {"Content-Type": "application/json"}
    else:
        body, headers = oip_binary_body(case)
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": str(exc)}


def test_the_table_is_what_it_says():
    """The inputs are where the table says (guards against a silently different case)."""
    assert CASES[0].arrays["labels"][3, 1] == 2
    assert math.isnan(CASES[2].arrays["predictions"][1, 1])
    assert str(kernel_error(CASES[0])) == "labels[3, 1] = 2 is outside [0, 1]"
