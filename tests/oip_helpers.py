"""Shared by the OIP test modules (test_oip*.py): the ``triton`` (tritonclient against the
module's real server; skips only its tests when tritonclient is missing) and ``app_client``
(in-process) fixtures, which a test module imports, random data, request builders and
checks (moved from test_oip.py)."""

from __future__ import annotations

import json
import math
import warnings

import httpx
import numpy as np
import orjson
import pytest

from lossd import kernels
from lossd.service import Settings, create_app

try:  # only the tests that use the client skip without it (the `triton` fixture says so)
    import tritonclient.http as tritonclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype
except ImportError:
    tritonclient = None

from service_helpers import OIP_DATATYPES

if tritonclient is None:
    def np_to_triton_dtype(dtype) -> str:  # the raw-frame helpers need only this
        return OIP_DATATYPES[np.dtype(dtype).str[1:]]

with warnings.catch_warnings():  # starlette's note about httpx at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

HCL = "Inference-Header-Content-Length"
STATS = ("count", "sum", "mean", "std", "min", "max")
TIMEOUT = 30.0


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def triton(server):
    pytest.importorskip("tritonclient.http")
    c = tritonclient.InferenceServerClient(f"127.0.0.1:{server.port}", connection_timeout=TIMEOUT,
                                           network_timeout=TIMEOUT)
    try:
        yield c
    finally:
        c.close()


def _in_process(**settings):
    """The same app in this process (FastAPI TestClient); the caller uses it as a context
    manager. The app's lifespan sets the kernels' thread count: reset it afterwards."""
    return TestClient(create_app(Settings(warmup=False, **settings)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def app_client():
    try:
        with _in_process() as c:
            yield c
    finally:
        kernels.set_threads(None)


# ------------------------------------------------------------------------------ data

RNG = np.random.default_rng(20240611)


def logits(shape, dtype=np.float64) -> np.ndarray:
    return RNG.normal(0.0, 3.0, shape).astype(dtype)


def probabilities(shape, dtype=np.float64) -> np.ndarray:
    p = RNG.random(shape)
    p.flat[0], p.flat[-1] = 0.0, 1.0  # the -100 floor / the eps clip both apply
    return p.astype(dtype)


def hard01(shape, dtype=np.float64) -> np.ndarray:
    y = (RNG.random(shape) < 0.5)
    y.flat[0], y.flat[-1] = True, False
    return y.astype(dtype)


def soft01(shape) -> np.ndarray:
    return RNG.random(shape)


def pm1(shape) -> np.ndarray:
    return np.where(RNG.random(shape) < 0.5, -1.0, 1.0)


# ------------------------------------------------------------------------------ helpers

def tensor(name: str, arr: np.ndarray, binary: bool = True):
    t = tritonclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    return t.set_data_from_numpy(arr, binary_data=binary)


def infer(c, model: str, inputs: dict[str, np.ndarray], *, binary=True, outputs=None,
          parameters=None, request_id: str = ""):
    """``binary``: bool for every input, or {name: bool}. ``outputs``: None (all, binary)
    or [(name, binary_data)]."""
    flags = binary if isinstance(binary, dict) else {k: binary for k in inputs}
    ins = [tensor(k, v, flags[k]) for k, v in inputs.items()]
    outs = None if outputs is None else [tritonclient.InferRequestedOutput(n, binary_data=b)
                                         for n, b in outputs]
    return c.infer(model, ins, outputs=outs, parameters=parameters, request_id=request_id)


def kernel_kwargs(params: dict | None) -> dict:
    """Request parameters -> kernels keyword arguments (same names)."""
    kw = dict(params or {})
    if isinstance(kw.get("quantiles"), str):
        kw["quantiles"] = tuple(float(q) for q in kw["quantiles"].split(","))
    return kw


def expected_outputs(r) -> dict[str, np.ndarray]:
    """The outputs lossd must answer for a kernels result, in the order it answers them."""
    out: dict[str, np.ndarray] = {}
    if isinstance(r, kernels.api.ParamGrad):
        return {"loss": np.array([r.loss]), "coef_grad": np.asarray(r.coef, dtype=np.float64),
                "intercept_grad": np.array([r.intercept])}
    if r.loss is not None:
        out["loss"] = np.array([r.loss], dtype=np.float64)
    if r.losses is not None:
        out["losses"] = r.losses
    if getattr(r, "grad", None) is not None:
        out["grad"] = r.grad
    for k, v in r.stats.items():
        out[k] = np.array([float(v)], dtype=np.float64)
    return out


def assert_bits(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    """Same shape, same dtype, same values to the last bit (-0.0 is not 0.0)."""
    assert actual is not None, f"{where}: missing"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=where, strict=True)
    if expected.dtype.kind == "f":
        u = np.dtype(f"u{expected.dtype.itemsize}")
        same = np.ascontiguousarray(actual).view(u) == np.ascontiguousarray(expected).view(u)
        assert same.all(), f"{where}: bits differ at {np.flatnonzero(~same.ravel())[:5]}"


def check_result(result, expected: dict[str, np.ndarray], names: list[str] | None = None) -> None:
    """A tritonclient InferResult holds exactly ``names`` (default: all expected), in
    that order, each equal to the expectation."""
    names = list(expected) if names is None else names
    got = [o["name"] for o in result.get_response()["outputs"]]
    assert got == names, f"outputs {got} != {names}"
    for n in names:
        assert_bits(result.as_numpy(n), expected[n], n)


def binary_frame(head: dict | bytes, *blobs: bytes, pad_to: int | None = None) -> tuple[bytes, dict]:
    """A request body (JSON header + blobs) and its headers. ``pad_to``: pad the header
    with spaces until its length % 8 equals it (the blobs then start unaligned)."""
    h = head if isinstance(head, bytes) else orjson.dumps(head)
    if pad_to is not None:
        while len(h) % 8 != pad_to:
            h += b" "
    return h + b"".join(blobs), {HCL: str(len(h))}


def parse_response(r: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """A raw infer response: its JSON header and every output as an array (binary outputs
    decoded from the bytes after the header, little-endian, row-major)."""
    body = r.content
    hlen = r.headers.get(HCL)
    if hlen is None:
        head, blob = json.loads(body), b""
        assert r.headers["content-type"].startswith("application/json")
    else:
        head, blob = json.loads(body[:int(hlen)]), body[int(hlen):]
        assert r.headers["content-type"] == "application/octet-stream"
    types = {"FP64": "<f8", "FP32": "<f4"}
    arrays, offset = {}, 0
    for o in head["outputs"]:
        dt = np.dtype(types[o["datatype"]])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            vals = [{"Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) for v in o["data"]]
            arrays[o["name"]] = np.array(vals, dtype=dt).reshape(o["shape"])
        else:
            assert size == math.prod(o["shape"]) * dt.itemsize
            arrays[o["name"]] = np.frombuffer(blob, dt, count=math.prod(o["shape"]),
                                              offset=offset).reshape(o["shape"])
            offset += size
    assert offset == len(blob), "bytes after the last binary output"
    return head, arrays


def post(server, body: bytes, headers=None, model: str = "loss") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers or {},
                      timeout=TIMEOUT)


def assert_error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for needle in needles:
        assert needle in body["error"], f"{needle!r} not in {body['error']!r}"
    return body["error"]


def kernel_error(fn, *args, **kw) -> str:
    with pytest.raises(ValueError) as exc:
        fn(*args, **kw)
    return str(exc.value)


def jt(name: str, arr, datatype: str = "FP64", shape=None) -> dict:
    """A JSON tensor."""
    arr = np.asarray(arr)
    return {"name": name, "datatype": datatype, "shape": list(arr.shape) if shape is None else shape,
            "data": arr.ravel().tolist()}


def bt(name: str, arr: np.ndarray, datatype: str | None = None, size: int | None = None, shape=None) -> dict:
    """A binary tensor's header entry."""
    return {"name": name, "datatype": datatype or np_to_triton_dtype(arr.dtype),
            "shape": list(arr.shape) if shape is None else shape,
            "parameters": {"binary_data_size": arr.nbytes if size is None else size}}
