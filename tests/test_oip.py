"""Open Inference Protocol v2 (KServe / Triton): the real ``tritonclient[http]`` client and
raw httpx frames against a real ``lossd serve`` process on a free 127.0.0.1 port.

One server per module (``service_helpers.lossd_serve``, stopped in the fixture teardown).
Every number the server answers is compared with ``kernels`` called in this process on
the very arrays the client sent, to the last bit (values and dtypes). Malformed frames
must get 400 with ``{"error": "<clear message>"}`` and never a 5xx; the last test reads
the server's /metrics and log to check that no request of this module got a 5xx.

Bugs found here were fixed; their tests stay as regression tests. Those whose symptom
was a 500 run in-process (FastAPI TestClient) so that the real server's "never 5xx"
check stays meaningful.
"""

from __future__ import annotations

import json
import math
import warnings

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lossd import kernels
from lossd import service
from lossd.service import Settings, create_app
from lossd.service.codecs.oip_json import decode_request

tritonclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

with warnings.catch_warnings():  # starlette's note about httpx at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

HCL = "Inference-Header-Content-Length"
STATS = ("count", "sum", "mean", "std", "min", "max")
TIMEOUT = 30.0


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def triton(server):
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


# ------------------------------------------------------------------------ health, metadata

def test_server_live_ready_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "lossd" and meta["version"] == service.__version__
    assert "binary_tensor_data" in meta["extensions"]


def test_health_endpoints_raw(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/loss/ready", "/v2/models/grad/ready"):
        assert httpx.get(server.url + path, timeout=TIMEOUT).status_code == 200, path


def test_model_ready_and_unknown_model(triton, server):
    assert triton.is_model_ready("loss")
    assert triton.is_model_ready("grad")
    assert not triton.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        infer(triton, "nope", {"predictions": np.zeros(2), "labels": np.zeros(2)})
    for method, path in (("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
                         ("POST", "/v2/models/nope/infer")):
        r = httpx.request(method, server.url + path, content=b"{}" if method == "POST" else None,
                          timeout=TIMEOUT)
        assert_error(r, 404, "unknown model 'nope'", "loss", "grad")


@pytest.mark.parametrize("model,inputs,outputs", [
    ("loss", {"predictions", "labels", "sample_weight", "pos_weight"},
     {"loss", "losses", *STATS}),
    ("grad", {"predictions", "labels", "sample_weight", "pos_weight", "features", "coef", "intercept"},
     {"loss", "losses", "grad", "coef_grad", "intercept_grad", *STATS}),
])
def test_model_metadata(triton, model, inputs, outputs):
    meta = triton.get_model_metadata(model)
    assert meta["name"] == model
    assert "1" in meta["versions"]
    assert {t["name"] for t in meta["inputs"]} == inputs
    assert {t["name"] for t in meta["outputs"]} == outputs
    for t in meta["inputs"] + meta["outputs"]:
        assert t["datatype"] in ("FP32", "FP64"), t
        assert t["shape"] and all(isinstance(d, int) and (d == -1 or d > 0) for d in t["shape"]), t
    by_name = {t["name"]: t for t in meta["inputs"] + meta["outputs"]}
    # variable dimensions are -1; the scalar outputs are [1]
    assert all(d == -1 for d in by_name["predictions"]["shape"])
    assert all(d == -1 for d in by_name["labels"]["shape"])
    assert by_name["losses"]["shape"][0] == -1
    for name in ("loss", *STATS):
        assert by_name[name]["shape"] == [1] and by_name[name]["datatype"] == "FP64"
    if model == "grad":
        assert all(d == -1 for d in by_name["grad"]["shape"])
        assert by_name["coef_grad"]["shape"] == [-1]
    # one datatype per tensor (FP64, accepted everywhere); every accepted one in parameters
    accepted = {t["name"]: t["parameters"]["datatypes"].split(",") for t in meta["inputs"]}
    assert accepted["labels"] == ["FP64", "FP32", "BOOL", "INT8", "INT16", "INT32", "INT64",
                                  "UINT8", "UINT16", "UINT32", "UINT64"]
    assert all(v == ["FP64", "FP32"] for k, v in accepted.items() if k != "labels")
    assert all(v[0] == by_name[k]["datatype"] for k, v in accepted.items())
    assert by_name["losses"]["parameters"]["datatypes"] == "FP64,FP32"
    np_types = {"FP64": np.float64, "FP32": np.float32, "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16,
                "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
                "UINT32": np.uint32, "UINT64": np.uint64}
    pred = np.array([0.5, -1.0])
    for dt in accepted["labels"]:  # each one listed is taken
        lab = np.array([1, 0]).astype(np_types[dt])
        check_result(infer(triton, model, {"predictions": pred, "labels": lab}),
                     expected_outputs((kernels.loss if model == "loss" else kernels.grad)(pred, lab)))
    # the versioned path answers the same
    assert triton.get_model_metadata(model, model_version="1") == meta


# ------------------------------------------------------------------------- inference

@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (True, False), (False, True),
                                                  (False, False)])
def test_loss_binary_and_json_inputs_and_outputs(triton, binary_in, binary_out, reduction):
    pred, lab = logits(257), hard01(257)
    outputs = [(n, binary_out) for n in expected_outputs(kernels.loss(pred, lab, reduction=reduction))]
    res = infer(triton, "loss", {"predictions": pred, "labels": lab}, binary=binary_in,
                outputs=outputs, parameters={"reduction": reduction})
    check_result(res, expected_outputs(kernels.loss(pred, lab, reduction=reduction)))


@pytest.mark.parametrize("shape", [(300,), (50, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("binary", [True, False])
def test_grad_model(triton, shape, reduction, binary):
    pred, lab = logits(shape), soft01(shape)
    exp = expected_outputs(kernels.grad(pred, lab, reduction=reduction))
    outputs = None if binary else [(n, False) for n in exp]  # None: all outputs, binary
    res = infer(triton, "grad", {"predictions": pred, "labels": lab}, binary=binary, outputs=outputs,
                parameters={"reduction": reduction})
    check_result(res, exp)


def test_mixed_binary_json_inputs_and_selected_outputs(triton):
    pred, lab, w = logits((40, 3)), hard01((40, 3), np.int8), RNG.random(40)
    exp = expected_outputs(kernels.grad(pred, lab, sample_weight=w, reduction="none"))
    picked = [("max", False), ("grad", True), ("losses", False), ("count", True)]
    res = infer(triton, "grad", {"predictions": pred, "labels": lab, "sample_weight": w},
                binary={"predictions": True, "labels": False, "sample_weight": True},
                outputs=picked, parameters={"reduction": "none"})
    check_result(res, exp, names=[n for n, _ in picked])
    params = {o["name"]: o.get("parameters", {}) for o in res.get_response()["outputs"]}
    assert "binary_data_size" in params["grad"] and "binary_data_size" in params["count"]
    assert "binary_data_size" not in params["losses"] and "binary_data_size" not in params["max"]


def test_request_id_is_echoed(triton):
    pred, lab = logits(5), hard01(5)
    res = infer(triton, "loss", {"predictions": pred, "labels": lab}, request_id="req-42/α")
    assert res.get_response()["id"] == "req-42/α"
    assert res.get_response()["model_name"] == "loss"
    res = infer(triton, "loss", {"predictions": pred, "labels": lab})
    assert "id" not in res.get_response()


# (name, request parameters, predictions maker, labels maker, shape)
PARAM_CASES = [
    ("defaults", {}, logits, hard01, (64,)),
    ("sum", {"reduction": "sum"}, logits, soft01, (16, 4)),
    ("none", {"reduction": "none"}, logits, soft01, (64,)),
    ("probabilities floor", {"input": "probabilities"}, probabilities, hard01, (64,)),
    ("probabilities eps", {"input": "probabilities", "eps": 1e-7}, probabilities, hard01, (8, 8)),
    ("margins", {"input": "margins"}, logits, pm1, (64,)),
    ("margins hinge", {"input": "margins", "loss": "hinge", "reduction": "none"}, logits, pm1, (64,)),
    ("focal", {"loss": "focal", "gamma": 1.5, "alpha": 0.25}, logits, soft01, (64,)),
    ("focal default gamma", {"loss": "focal", "reduction": "sum"}, logits, hard01, (16, 4)),
    ("focal probabilities", {"loss": "focal", "input": "probabilities", "gamma": 3}, probabilities,
     hard01, (64,)),
    ("hinge", {"loss": "hinge"}, logits, hard01, (64,)),
    ("squared_hinge", {"loss": "squared_hinge"}, logits, hard01, (64,)),
    ("modified_huber", {"loss": "modified_huber", "reduction": "none"}, logits, hard01, (64,)),
    ("exponential", {"loss": "exponential"}, logits, hard01, (64,)),
    ("zero_one", {"loss": "zero_one"}, logits, hard01, (64,)),
    ("squared_error", {"loss": "squared_error"}, logits, soft01, (64,)),
    ("brier", {"loss": "squared_error", "input": "probabilities"}, probabilities, hard01, (64,)),
    ("label_smoothing", {"label_smoothing": 0.1}, logits, hard01, (64,)),
    ("label_smoothing probabilities", {"label_smoothing": 0.2, "input": "probabilities",
                                       "reduction": "none"}, probabilities, hard01, (64,)),
    ("pos_weight scalar", {"pos_weight": 2.5}, logits, hard01, (16, 4)),
    ("pos_weight scalar none", {"pos_weight": 0.5, "reduction": "none"}, logits, soft01, (64,)),
    ("quantiles", {"quantiles": "0.5,0.9,0.99"}, logits, hard01, (64,)),
    ("quantiles none", {"quantiles": "0,0.25,1", "reduction": "none"}, logits, soft01, (16, 4)),
]


@pytest.mark.parametrize("model", ["loss", "grad"])
@pytest.mark.parametrize("case", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_parameters(triton, case, model):
    _, params, make_pred, make_lab, shape = case
    pred, lab = make_pred(shape), make_lab(shape)
    fn = kernels.loss if model == "loss" else kernels.grad
    r = fn(pred, lab, **kernel_kwargs(params))
    exp = expected_outputs(r)
    res = infer(triton, model, {"predictions": pred, "labels": lab}, parameters=params)
    check_result(res, exp)
    if "quantiles" in params:
        qs = [float(q) for q in params["quantiles"].split(",")]
        names = ["p" + format(q * 100, "g") for q in qs]
        assert all(n in exp for n in names), names  # the pNN outputs are there ...
        res = infer(triton, model, {"predictions": pred, "labels": lab}, parameters=params,
                    outputs=[(n, False) for n in names])  # ... and can be asked for by name
        check_result(res, exp, names=names)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("binary_out", [True, False])
def test_dtype_float32_outputs(triton, reduction, binary_out):
    pred, lab = logits((30, 2)), hard01((30, 2))
    params = {"dtype": "float32", "reduction": reduction}
    # FP64 inputs are narrowed to float32 values, as over JSON (README: dtype)
    p32, l32 = pred.astype(np.float32), lab.astype(np.float32)
    g = kernels.grad(p32, l32, dtype="float32", reduction=reduction)
    exp = expected_outputs(g)
    assert exp["grad"].dtype == np.float32
    res = infer(triton, "grad", {"predictions": pred, "labels": lab}, parameters=params,
                outputs=[(n, binary_out) for n in exp])
    check_result(res, exp)
    dts = {o["name"]: o["datatype"] for o in res.get_response()["outputs"]}
    assert dts["grad"] == "FP32" and dts["mean"] == "FP64"
    if reduction == "none":
        assert dts["losses"] == "FP32"
    else:
        assert dts["loss"] == "FP64"
    r = kernels.loss(p32, l32, dtype="float32", reduction=reduction)
    res = infer(triton, "loss", {"predictions": pred, "labels": lab}, parameters=params,
                binary=not binary_out)
    check_result(res, expected_outputs(r))


@pytest.mark.parametrize("model", ["loss", "grad"])
@pytest.mark.parametrize("binary", [True, False])
def test_pos_weight_tensor_per_column(triton, model, binary):
    pred, lab = logits((25, 3)), hard01((25, 3))
    pw = np.array([0.5, 1.0, 4.0])
    fn = kernels.loss if model == "loss" else kernels.grad
    for reduction in ("mean", "none"):
        exp = expected_outputs(fn(pred, lab, pos_weight=pw, reduction=reduction))
        res = infer(triton, model, {"predictions": pred, "labels": lab, "pos_weight": pw},
                    binary=binary, parameters={"reduction": reduction})
        check_result(res, exp)
    # FP32 weights are widened exactly
    pw32 = pw.astype(np.float32)
    res = infer(triton, model, {"predictions": pred, "labels": lab, "pos_weight": pw32}, binary=binary)
    check_result(res, expected_outputs(fn(pred, lab, pos_weight=pw32.astype(np.float64))))


@pytest.mark.parametrize("wdtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(120,), (40, 3)])
def test_sample_weight_tensor(triton, wdtype, shape):
    pred, lab = logits(shape), hard01(shape)
    w = (RNG.random(shape[0]) * 3).astype(wdtype)
    w[3] = 0.0
    for model, fn in (("loss", kernels.loss), ("grad", kernels.grad)):
        for reduction in ("mean", "sum", "none"):
            exp = expected_outputs(fn(pred, lab, sample_weight=w, reduction=reduction))
            res = infer(triton, model, {"predictions": pred, "labels": lab, "sample_weight": w},
                        parameters={"reduction": reduction})
            check_result(res, exp)


@pytest.mark.parametrize("xdtype", [np.float64, np.float32])
@pytest.mark.parametrize("binary", [True, False])
def test_wrt_params(triton, xdtype, binary):
    n, d = 200, 5
    X = RNG.normal(0, 1, (n, d)).astype(xdtype)
    y = hard01(n)
    coef = RNG.normal(0, 0.5, d)
    w = RNG.random(n)
    base = {"features": X, "labels": y, "coef": coef}
    # intercept and l2 as parameters
    res = infer(triton, "grad", base, binary=binary, parameters={"wrt": "params", "intercept": 0.3, "l2": 0.01})
    check_result(res, expected_outputs(kernels.logreg_grad(X, y, coef, 0.3, l2=0.01)))
    # with sample weights, INT8 labels and the intercept as a tensor
    res = infer(triton, "grad", {**base, "labels": y.astype(np.int8), "sample_weight": w,
                                 "intercept": np.array([-0.7])},
                binary=binary, parameters={"wrt": "params"},
                outputs=[("intercept_grad", False), ("coef_grad", True), ("loss", binary)])
    exp = expected_outputs(kernels.logreg_grad(X, y.astype(np.int8), coef, -0.7, sample_weight=w))
    check_result(res, exp, names=["intercept_grad", "coef_grad", "loss"])
    # defaults: intercept 0, no l2
    res = infer(triton, "grad", base, binary=binary, parameters={"wrt": "params"})
    check_result(res, expected_outputs(kernels.logreg_grad(X, y, coef)))


LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_, np.float32, np.float64]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [(97,), (31, 3)])
@pytest.mark.parametrize("pdtype", [np.float32, np.float64])
@pytest.mark.parametrize("ldtype", LABEL_DTYPES, ids=lambda t: np.dtype(t).name)
def test_prediction_and_label_datatypes(triton, ldtype, pdtype, shape, binary):
    pred = logits(shape, pdtype)
    lab = hard01(shape, ldtype)
    assert np_to_triton_dtype(lab.dtype) in ("INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL", "FP32", "FP64")
    g = kernels.grad(pred, lab, reduction="none")
    res = infer(triton, "grad", {"predictions": pred, "labels": lab}, binary=binary,
                parameters={"reduction": "none"})
    check_result(res, expected_outputs(g))
    r = kernels.loss(pred, lab)
    res = infer(triton, "loss", {"predictions": pred, "labels": lab}, binary=binary)
    check_result(res, expected_outputs(r))


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infinite_logits(triton, server, binary_in, binary_out):
    inf = math.inf
    pred = np.array([inf, -inf, inf, -inf, 0.5, -2.0])
    lab = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    for model, fn in (("loss", kernels.loss), ("grad", kernels.grad)):
        for reduction in ("none", "mean"):
            r = fn(pred, lab, reduction=reduction)
            exp = expected_outputs(r)
            res = infer(triton, model, {"predictions": pred, "labels": lab}, binary=binary_in,
                        outputs=[(n, binary_out) for n in exp], parameters={"reduction": reduction})
            check_result(res, exp)
    # exact limits, never NaN: losses 0, 0, +inf, +inf; JSON writes them as strings
    r = kernels.loss(pred, lab, reduction="none")
    assert list(r.losses[:4]) == [0.0, 0.0, inf, inf]
    if not binary_out:
        body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)],
                                      "parameters": {"reduction": "none"}}, pred.tobytes(), lab.tobytes())
        resp = post(server, body, headers)
        head = json.loads(resp.content)
        losses = next(o for o in head["outputs"] if o["name"] == "losses")
        assert losses["data"][:4] == [0.0, 0.0, "Infinity", "Infinity"]
        assert next(o for o in head["outputs"] if o["name"] == "max")["data"] == ["Infinity"]


# ------------------------------------------------------------ binary extension, raw frames

@pytest.mark.parametrize("n", [13, 40_000])  # 40 000: the parallel kernels, off the event loop
@pytest.mark.parametrize("pad", [1, 3, 5])
def test_unaligned_binary_inputs(server, n, pad):
    pred, lab = logits(n), hard01(n)
    head = {"inputs": [bt("predictions", pred), bt("labels", lab)], "parameters": {"reduction": "none"}}
    body, headers = binary_frame(head, pred.tobytes(), lab.tobytes(), pad_to=pad)
    assert int(headers[HCL]) % 8 == pad
    out_head, arrays = parse_response(post(server, body, headers))
    exp = expected_outputs(kernels.loss(pred, lab, reduction="none"))
    assert list(arrays) == list(exp)
    for k in exp:
        assert_bits(arrays[k], exp[k], k)
    # FP32 predictions after 3 INT8 labels' worth of bytes: odd offsets inside the blob too
    p32, l8 = logits(n, np.float32), hard01(n, np.int8)
    sw = RNG.random(n)
    head = {"inputs": [bt("labels", l8), bt("predictions", p32), bt("sample_weight", sw)],
            "parameters": {"binary_data_output": True}}
    body, headers = binary_frame(head, l8.tobytes(), p32.tobytes(), sw.tobytes(), pad_to=pad)
    _, arrays = parse_response(post(server, body, headers, model="grad"))
    exp = expected_outputs(kernels.grad(p32, l8, sample_weight=sw))
    for k in exp:
        assert_bits(arrays[k], exp[k], k)


def test_binary_outputs_layout(server):
    """Outputs asked as binary follow the JSON header, in order, little-endian, row-major,
    each with its binary_data_size; the others are inline JSON."""
    pred, lab = logits((4, 3)), hard01((4, 3))
    head = {"id": "wire", "inputs": [bt("predictions", pred), jt("labels", lab)],
            "outputs": [{"name": "grad", "parameters": {"binary_data": True}}, {"name": "mean"},
                        {"name": "losses", "parameters": {"binary_data": True}}],
            "parameters": {"reduction": "none"}}
    body, headers = binary_frame(head, pred.tobytes())
    r = post(server, body, headers, model="grad")
    assert r.status_code == 200, r.text
    g = kernels.grad(pred, lab, reduction="none")
    assert r.headers["content-type"] == "application/octet-stream"
    hlen = int(r.headers[HCL])
    header = json.loads(r.content[:hlen])
    assert header["id"] == "wire" and header["model_name"] == "grad"
    assert [o["name"] for o in header["outputs"]] == ["grad", "mean", "losses"]
    og, om, ol = header["outputs"]
    assert og == {"name": "grad", "datatype": "FP64", "shape": [4, 3],
                  "parameters": {"binary_data_size": 96}}
    assert om["data"] == [g.stats["mean"]] and "parameters" not in om
    blob = r.content[hlen:]
    assert len(blob) == 96 + 96
    assert blob[:96] == np.ascontiguousarray(g.grad, dtype="<f8").tobytes()
    assert blob[96:] == np.ascontiguousarray(g.losses, dtype="<f8").tobytes()
    # all JSON: no header-length header, plain JSON body
    head["outputs"] = [{"name": "grad"}]
    body, headers = binary_frame(head, pred.tobytes())
    r = post(server, body, headers, model="grad")
    assert HCL.lower() not in r.headers and r.headers["content-type"].startswith("application/json")
    assert json.loads(r.content)["outputs"][0]["data"] == g.grad.ravel().tolist()


def test_json_only_request_without_header_length(server):
    pred, lab = logits(7), hard01(7)
    body = orjson.dumps({"inputs": [jt("predictions", pred), jt("labels", lab)]})
    _, arrays = parse_response(post(server, body, {"content-type": "application/json"}))
    exp = expected_outputs(kernels.loss(pred, lab))
    for k in exp:
        assert_bits(arrays[k], exp[k], k)


def test_binary_inputs_are_read_only_zero_copy_views():
    """The codec hands the kernels np.frombuffer views of the body: no copies."""
    pred, lab = logits(10), hard01(10, np.int8)
    body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)]},
                                 pred.tobytes(), lab.tobytes(), pad_to=3)
    req = decode_request(body, headers[HCL], {"predictions": ("FP64",), "labels": ("INT8",)})
    raw = np.frombuffer(body, np.uint8)
    for name, src in (("predictions", pred), ("labels", lab)):
        arr = req.inputs[name]
        assert not arr.flags.writeable and not arr.flags.owndata
        assert np.shares_memory(arr, raw), name
        np.testing.assert_array_equal(arr, src, strict=True)
    assert not req.inputs["predictions"].flags.aligned  # header length 3 mod 8


def test_infer_error_through_tritonclient(triton):
    pred, lab = logits(4), np.array([0.0, 1.0, 2.0, 1.0])
    with pytest.raises(InferenceServerException) as exc:
        infer(triton, "loss", {"predictions": pred, "labels": lab}, parameters={"loss": "hinge"})
    assert exc.value.status() == "400"
    assert exc.value.message() == "labels[2] = 2 is not in {0, 1}"
    with pytest.raises(InferenceServerException, match="unknown parameter 'bogus'"):
        infer(triton, "loss", {"predictions": pred, "labels": lab}, parameters={"bogus": 1})


# ---------------------------------------------------------------- malformed frames -> 400

P2 = np.array([0.5, -1.0])
L2 = np.array([1.0, 0.0])
GOOD = [bt("predictions", P2), bt("labels", L2)]
BLOB = P2.tobytes() + L2.tobytes()


def _frame(head, blob=BLOB, hcl=None):
    h = head if isinstance(head, bytes) else orjson.dumps(head)
    return h + blob, {HCL: str(len(h)) if hcl is None else hcl}


def _json(head):
    return (head if isinstance(head, bytes) else json.dumps(head).encode()), {}


# (id, model, (body, headers), message fragments)
MALFORMED = [
    ("header length beyond the body", "loss", _frame({"inputs": GOOD}, hcl="100000"),
     ["Inference-Header-Content-Length = 100000 is beyond the body's"]),
    ("header length not a number", "loss", _frame({"inputs": GOOD}, hcl="12abc"),
     ["Inference-Header-Content-Length = '12abc' is not a number"]),
    ("header length cuts the JSON", "loss", _frame({"inputs": GOOD}, hcl="10"), ["not valid JSON"]),
    ("binary_data_size vs shape x datatype", "loss",
     _frame({"inputs": [bt("predictions", P2, size=12), bt("labels", L2)]}),
     ["input 'predictions'", "binary_data_size = 12 does not match shape [2] × FP64 (8 bytes) = 16"]),
    ("binary_data_size vs datatype FP32", "loss",
     _frame({"inputs": [bt("predictions", P2, datatype="FP32"), bt("labels", L2)]}),
     ["binary_data_size = 16 does not match shape [2] × FP32 (4 bytes) = 8"]),
    ("blob shorter than declared", "loss", _frame({"inputs": GOOD}, blob=BLOB[:-3]),
     ["input 'labels'", "runs past"]),
    ("blob longer than declared", "loss", _frame({"inputs": GOOD}, blob=BLOB + b"\0" * 5),
     ["5 bytes of binary data follow the last binary input"]),
    ("binary data but no binary input", "loss",
     _frame({"inputs": [jt("predictions", P2), jt("labels", L2)]}, blob=b"\0" * 8),
     ["8 bytes of binary data follow"]),
    ("binary input without header length", "loss",
     (orjson.dumps({"inputs": GOOD}), {}),
     ["input 'predictions' has binary_data_size but the request has no Inference-Header-Content-Length header"]),
    ("binary body without header length", "loss", (orjson.dumps({"inputs": GOOD}) + BLOB, {}),
     ["binary tensors (binary_data_size) but no Inference-Header-Content-Length header"]),
    ("unknown datatype FP16", "loss",
     _json({"inputs": [jt("predictions", P2, "FP16"), jt("labels", L2)]}),
     ["input 'predictions': unknown datatype 'FP16'"]),
    ("unknown datatype BYTES", "loss",
     _json({"inputs": [jt("predictions", P2), {**jt("labels", L2), "datatype": "BYTES"}]}),
     ["input 'labels': unknown datatype 'BYTES'"]),
    ("missing datatype", "loss", _json({"inputs": [{"name": "predictions", "shape": [2], "data": [1, 2]},
                                                   jt("labels", L2)]}),
     ["input 'predictions': unknown datatype None"]),
    ("INT32 predictions", "loss", _json({"inputs": [jt("predictions", [1, 2], "INT32"), jt("labels", L2)]}),
     ["input 'predictions': datatype INT32 is not accepted (use FP32, FP64)"]),
    ("INT8 sample_weight", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("sample_weight", [1, 1], "INT8")]}),
     ["input 'sample_weight': datatype INT8 is not accepted"]),
    ("unknown tensor", "loss", _json({"inputs": [jt("predictions", P2), jt("labelz", L2)]}),
     ["unknown input tensor 'labelz'", "predictions, labels"]),
    ("features on the loss model", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("features", [[1.0], [2.0]])]}),
     ["unknown input tensor 'features'"]),
    ("missing predictions", "loss", _json({"inputs": [jt("labels", L2)]}), ["predictions is required"]),
    ("missing labels", "grad", _json({"inputs": [jt("predictions", P2)]}), ["labels is required"]),
    ("no inputs", "loss", _json({"inputs": []}), ["inputs must be a non-empty list of tensors"]),
    ("data length vs shape", "loss",
     _json({"inputs": [jt("predictions", P2, shape=[3]), jt("labels", L2)]}),
     ["input 'predictions': data has 2 elements, shape [3] needs 3"]),
    ("data and binary_data_size", "loss",
     _frame({"inputs": [{**jt("predictions", P2), "parameters": {"binary_data_size": 16}}, bt("labels", L2)]},
            blob=L2.tobytes()),
     ["input 'predictions' has both data and binary_data_size"]),
    ("neither data nor binary_data_size", "loss",
     _json({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2]}, jt("labels", L2)]}),
     ["input 'predictions' has neither data nor binary_data_size"]),
    ("data not numbers", "loss", _json({"inputs": [jt("predictions", ["a", "b"]), jt("labels", L2)]}),
     ["input 'predictions'", "is not a number"]),
    ("ragged data", "loss",
     _json({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2], "data": [[1.0], [2.0, 3.0]]},
                       jt("labels", L2)]}),
     ["input 'predictions': data must be a flat (row-major) or nested list of numbers"]),
    ("BOOL labels as numbers", "loss", _json({"inputs": [jt("predictions", P2), jt("labels", [1, 0], "BOOL")]}),
     ["input 'labels': BOOL data must be true/false"]),
    ("INT8 labels as fractions", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", [0.5, 1.0], "INT8")]}),
     ["input 'labels': INT8 data must be integers"]),
    ("duplicate tensor", "loss", _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("labels", L2)]}),
     ["input 'labels' appears twice"]),
    ("duplicate request parameter", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [1], "data": [0.5]}, '
           b'{"name": "labels", "datatype": "FP64", "shape": [1], "data": [1]}], '
           b'"parameters": {"reduction": "sum", "reduction": "none"}}'),
     ['duplicate key "reduction" in parameters']),
    ("duplicate key in an input tensor", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "datatype": "FP32", "shape": [1], '
           b'"data": [0.5]}, {"name": "labels", "datatype": "FP64", "shape": [1], "data": [1]}]}'),
     ['duplicate key "datatype" in inputs[0]']),
    ("duplicate key in outputs[].parameters", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [1], "data": [0.5]}, '
           b'{"name": "labels", "datatype": "FP64", "shape": [1], "data": [1]}], '
           b'"outputs": [{"name": "loss", "parameters": {"binary_data": true, "binary_data": false}}]}'),
     ['duplicate key "binary_data" in outputs[0].parameters']),
    ("duplicate top-level key", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [1], "data": [0.5]}, '
           b'{"name": "labels", "datatype": "FP64", "shape": [1], "data": [1]}], "id": "a", "id": "b"}'),
     ['duplicate key "id" at its top level']),
    ("duplicate key in a binary header's tensor parameters", "loss",
     _frame(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2], '
            b'"parameters": {"binary_data_size": 16, "binary_data_size": 16}}, '
            b'{"name": "labels", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}]}'),
     ['duplicate key "binary_data_size" in inputs[0].parameters']),
    ("duplicate key with a bare NaN token", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [1], "data": [NaN]}, '
           b'{"name": "labels", "datatype": "FP64", "shape": [1], "data": [1], "shape": [1]}]}'),
     ['duplicate key "shape" in inputs[1]']),
    ("unknown parameter", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"bogus": 1}}),
     ["unknown parameter 'bogus' for model 'loss'"]),
    ("wrt on the loss model", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"wrt": "params"}}),
     ["unknown parameter 'wrt' for model 'loss'"]),
    ("input = x", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"input": "x"}}),
     ["input:", "'logits', 'probabilities' or 'margins'", "'x'"]),
    ("reduction = 3", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"reduction": 3}}),
     ["reduction:", "'mean', 'sum' or 'none'", "3"]),
    ("label_smoothing = 2", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"label_smoothing": 2}}),
     ["label_smoothing:", "less than 1", "2"]),
    ("eps = 0.6", "grad",
     _json({"inputs": [jt("predictions", [0.5, 0.1]), jt("labels", L2)],
            "parameters": {"input": "probabilities", "eps": 0.6}}), ["eps:", "0.6"]),
    ("dtype float16", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"dtype": "float16"}}),
     ["dtype:", "float16"]),
    ("quantiles not numbers", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"quantiles": "0.5,x"}}),
     ["parameter quantiles = '0.5,x' is not a comma-separated list of numbers"]),
    ("quantile above 1", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"quantiles": "0.5,2"}}),
     ["quantiles[1]", "less than or equal to 1"]),
    ("pos_weight twice", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("pos_weight", [2.0])],
            "parameters": {"pos_weight": 2.0}}),
     ["pos_weight is given both as a parameter and as an input tensor"]),
    ("pos_weight with hinge", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"pos_weight": 2.0,
                                                                                  "loss": "hinge"}}),
     ["pos_weight applies to cross_entropy only"]),
    ("binary_data_output not a bool", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"binary_data_output": 1}}),
     ["request parameter binary_data_output must be true or false, got 1"]),
    ("output binary_data not a bool", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)],
            "outputs": [{"name": "loss", "parameters": {"binary_data": "yes"}}]}),
     ["output 'loss' parameter binary_data must be true or false"]),
    ("unknown output", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": [{"name": "bogus"}]}),
     ["unknown output 'bogus'"]),
    ("grad output on the loss model", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": [{"name": "grad"}]}),
     ["unknown output 'grad'"]),
    ("output not produced", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": [{"name": "losses"}]}),
     ["output 'losses' is not produced by this request"]),
    ("quantile output not asked for", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": [{"name": "p50"}]}),
     ["output 'p50' is not produced by this request"]),
    ("outputs not a list", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": "loss"}),
     ["outputs must be a list"]),
    ("output without a name", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "outputs": [{}]}),
     ["outputs[0] must be an object with a name"]),
    ("invalid JSON header", "loss", _json(b'{"inputs": [{"name": "predictions",'), ["not valid JSON"]),
    ("invalid JSON with a NaN token", "loss", _json(b'{"inputs": NaN, }'), ["not valid JSON"]),
    ("invalid UTF-8", "loss", _json(b'{"id": "\xff\xfe"}'), ["not valid JSON"]),
    ("non-object body", "loss", _json(b"[1, 2, 3]"), ["the request must be a JSON object"]),
    ("empty body", "loss", _json(b""), ["not valid JSON"]),
    ("unknown request field", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "model": "x"}),
     ["unknown request field 'model'"]),
    ("id not a string", "loss", _json({"id": 7, "inputs": [jt("predictions", P2), jt("labels", L2)]}),
     ["id must be a string"]),
    ("parameters not an object", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": [1]}),
     ["parameters must be an object"]),
    ("tensor parameters not an object", "loss",
     _json({"inputs": [{**jt("predictions", P2), "parameters": 5}, jt("labels", L2)]}),
     ["input 'predictions': parameters must be an object"]),
    ("tensor without a name", "loss", _json({"inputs": [{"datatype": "FP64"}]}),
     ["inputs[0] must be an object with a name"]),
    ("negative shape", "loss", _json({"inputs": [jt("predictions", P2, shape=[-2]), jt("labels", L2)]}),
     ["input 'predictions': shape must be a list of non-negative integers, got [-2]"]),
    ("fractional shape", "loss", _json({"inputs": [jt("predictions", P2, shape=[2.0]), jt("labels", L2)]}),
     ["shape must be a list of non-negative integers"]),
    ("negative binary_data_size", "loss",
     _frame({"inputs": [bt("predictions", P2, size=-16), bt("labels", L2)]}),
     ["binary_data_size must be a non-negative integer, got -16"]),
    ("empty predictions", "loss",
     _json({"inputs": [jt("predictions", [], shape=[0]), jt("labels", [], shape=[0])]}),
     ["predictions is empty"]),
    ("3-D predictions", "loss",
     _json({"inputs": [jt("predictions", np.zeros((2, 1, 1))), jt("labels", np.zeros((2, 1, 1)))]}),
     ["predictions must be 1-D (N) or 2-D (N×K)"]),
    ("row mismatch", "loss", _json({"inputs": [jt("predictions", P2), jt("labels", [1.0, 0.0, 1.0])]}),
     ["predictions has 2 rows, labels 3"]),
    ("sample_weight length", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("sample_weight", [1.0])]}),
     ["sample_weight must have one weight per row (2)"]),
    ("negative sample_weight", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2), jt("sample_weight", [1.0, -1.0])]}),
     ["sample_weight[1] = -1 is not a finite weight >= 0"]),
    ("NaN in predictions (bare token)", "loss",
     _json(b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [3], "data": [0.5, NaN, 1]},'
           b' {"name": "labels", "datatype": "FP64", "shape": [3], "data": [1, 0, 1]}]}'),
     ["predictions[1] is NaN"]),
    ("NaN in binary predictions", "grad",
     _frame({"inputs": GOOD}, blob=np.array([0.5, np.nan]).tobytes() + L2.tobytes()),
     ["predictions[1] is NaN"]),
    ("NaN in N×K predictions", "loss",
     _frame({"inputs": [bt("predictions", np.zeros((2, 2))), bt("labels", np.zeros((2, 2)))]},
            blob=np.array([0.5, 0.1, 0.2, np.nan]).tobytes() + np.zeros(4).tobytes()),
     ["predictions[1, 1] is NaN"]),
    ("wrt params with predictions", "grad",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"wrt": "params"}}),
     ["predictions does not apply to wrt"]),
    ("wrt params without coef", "grad",
     _json({"inputs": [jt("features", [[1.0], [2.0]]), jt("labels", L2)], "parameters": {"wrt": "params"}}),
     ["coef is required"]),
    ("wrt = coef", "grad",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"wrt": "coef"}}),
     ["wrt:", "'coef'"]),
    ("intercept tensor with two values", "grad",
     _json({"inputs": [jt("features", [[1.0], [2.0]]), jt("labels", L2), jt("coef", [0.5]),
                       jt("intercept", [0.5, 1.0])], "parameters": {"wrt": "params"}}),
     ["input 'intercept' must hold one value, got shape [2]"]),
    ("intercept twice", "grad",
     _json({"inputs": [jt("features", [[1.0], [2.0]]), jt("labels", L2), jt("coef", [0.5]),
                       jt("intercept", [0.5])], "parameters": {"wrt": "params", "intercept": 1.0}}),
     ["intercept is given both as a parameter and as an input tensor"]),
    ("coef length", "grad",
     _json({"inputs": [jt("features", [[1.0], [2.0]]), jt("labels", L2), jt("coef", [0.5, 1.0])],
            "parameters": {"wrt": "params"}}),
     ["coef must have one value per feature column (1)"]),
]


@pytest.mark.parametrize("model,frame,needles", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_frames_get_400(server, model, frame, needles):
    body, headers = frame
    assert_error(post(server, body, headers, model=model), 400, *needles)


# labels outside their set: the message is exactly the kernels' own
LABEL_CASES = [
    ("hinge {0,1}", {"loss": "hinge"}, [0.5, -1.0, 2.0], [1.0, 2.0, 0.0], "labels[1] = 2 is not in {0, 1}"),
    ("zero_one {0,1}", {"loss": "zero_one"}, [0.5, -1.0, 2.0], [1.0, 0.0, 0.5],
     "labels[2] = 0.5 is not in {0, 1}"),
    ("margins {-1,1}", {"input": "margins"}, [0.5, -1.0, 2.0], [1.0, 0.0, -1.0],
     "labels[1] = 0 is not in {-1, 1}"),
    ("cross_entropy [0,1]", {}, [0.5, -1.0, 2.0], [1.0, 0.0, -0.25], "labels[2] = -0.25 is outside [0, 1]"),
    ("probabilities [0,1]", {"input": "probabilities"}, [0.5, 1.5, 0.2], [1.0, 0.0, 1.0],
     'predictions[1] = 1.5 is outside [0, 1] (input = "probabilities")'),
]


@pytest.mark.parametrize("model", ["loss", "grad"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("params,pred,lab,message", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_values_outside_their_set_get_the_kernels_message(server, params, pred, lab, message, model, binary):
    pred, lab = np.array(pred), np.array(lab)
    fn = kernels.loss if model == "loss" else kernels.grad
    assert kernel_error(fn, pred, lab, **params) == message
    if binary:
        body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)],
                                      "parameters": params}, pred.tobytes(), lab.tobytes())
    else:
        body, headers = json.dumps({"inputs": [jt("predictions", pred), jt("labels", lab)],
                                    "parameters": params}).encode(), {}
    assert assert_error(post(server, body, headers, model=model), 400) == message


def test_integer_labels_outside_the_set(server):
    pred = np.array([0.5, -1.0, 2.0])
    lab = np.array([1, 0, 3], dtype=np.int16)
    message = kernel_error(kernels.loss, pred, lab, loss="hinge")
    assert message == "labels[2] = 3 is not in {0, 1}"
    body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)],
                                  "parameters": {"loss": "hinge"}}, pred.tobytes(), lab.tobytes())
    assert assert_error(post(server, body, headers), 400) == message


def test_wrong_version_is_404(server):
    r = httpx.post(server.url + "/v2/models/loss/versions/2/infer", content=b"{}", timeout=TIMEOUT)
    assert_error(r, 404, "unknown model version '2'")
    r = httpx.get(server.url + "/v2/models/grad/versions/7", timeout=TIMEOUT)
    assert_error(r, 404, "unknown model version '7'")
    pred, lab = logits(3), hard01(3)
    body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)]},
                                 pred.tobytes(), lab.tobytes())
    r = httpx.post(server.url + "/v2/models/loss/versions/1/infer", content=body, headers=headers,
                   timeout=TIMEOUT)
    _, arrays = parse_response(r)
    assert_bits(arrays["loss"], np.array([kernels.loss(pred, lab).loss]), "loss")


# --------------------------------------------------------------------------- API token

def test_api_token_guards_inference_not_health():
    token = "t0k3n"
    pred, lab = logits(6), hard01(6)
    body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)]},
                                 pred.tobytes(), lab.tobytes())
    try:
        with _in_process(api_token=token) as c:
            for path in ("/v2/health/live", "/v2/health/ready"):
                assert c.get(path).status_code == 200, path
            for method, path in (("GET", "/v2"), ("GET", "/v2/models/loss"), ("GET", "/v2/models/loss/ready"),
                                 ("POST", "/v2/models/loss/infer")):
                r = c.request(method, path, content=body if method == "POST" else None, headers=headers)
                assert_error(r, 401, "bearer token missing")
                assert r.headers["www-authenticate"] == "Bearer"
            r = c.post("/v2/models/loss/infer", content=body, headers={**headers, "Authorization": "Bearer nope"})
            assert_error(r, 401, "bearer token wrong")
            r = c.post("/v2/models/loss/infer", content=body,
                       headers={**headers, "Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            _, arrays = parse_response(r)
            assert_bits(arrays["loss"], np.array([kernels.loss(pred, lab).loss]), "loss")
            assert c.get("/v2/models/grad", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        kernels.set_threads(None)


# ----------------------------------------------------------------- known service bugs

@pytest.mark.parametrize("datatype,value,bounds", [("INT8", 257, "[-128, 127]"), ("INT16", 65537, "[-32768, 32767]"),
                                                   ("UINT8", -1, "[0, 255]"), ("UINT8", 257, "[0, 255]")])
def test_integer_json_data_outside_its_datatype_is_refused(server, datatype, value, bounds):
    """Not wrapped by astype (INT8 257 would silently become 1, a valid label)."""
    body = json.dumps({"inputs": [jt("predictions", [0.5, -1.0, 2.0]),
                                  jt("labels", [1, 0, value], datatype)]}).encode()
    assert_error(post(server, body), 400, f"input 'labels': data[2] = {value} is outside the {datatype} range {bounds}")


@pytest.mark.parametrize("datatype,value,message", [
    # beyond int64: NumPy makes floats (or objects) of such lists; orjson reads 2^64 as a float
    ("UINT64", 2**64 - 1, "labels[2] = 1.8446744073709552e+19 is outside [0, 1]"),
    ("INT64", 2**64, "input 'labels': data[2] = 1.8446744073709552e+19 is outside the INT64 range "
                     "[-9223372036854775808, 9223372036854775807]"),
    ("INT64", 2**63, "input 'labels': data[2] = 9223372036854775808 is outside the INT64 range"),
    ("UINT64", -1, "input 'labels': data[2] = -1 is outside the UINT64 range [0, 18446744073709551615]"),
    ("UINT64", 2**64, "input 'labels': data[2] = 1.8446744073709552e+19 is outside the UINT64 range"),
    ("INT8", 0.5, "input 'labels': INT8 data must be integers, got data[2] = 0.5"),
])
def test_64_bit_label_data_says_out_of_range(server, datatype, value, message):
    """Issue 11 item 10: not "data must be integers" for integers that NumPy cannot hold."""
    labels = {"name": "labels", "datatype": datatype, "shape": [3], "data": [1, 0, value]}
    body = json.dumps({"inputs": [jt("predictions", [0.5, -1.0, 2.0]), labels]}).encode()
    assert assert_error(post(server, body), 400).startswith(message)
    # the largest UINT64 is a valid UINT64: the kernels' own message names it
    if datatype == "UINT64" and value == 2**64 - 1:
        lab = np.array([1, 0, value], dtype=np.uint64)
        assert kernel_error(kernels.loss, np.array([0.5, -1.0, 2.0]), lab) == message
        body, headers = binary_frame({"inputs": [bt("predictions", np.array([0.5, -1.0, 2.0])), bt("labels", lab)],
                                      "parameters": {"loss": "hinge"}},
                                     np.array([0.5, -1.0, 2.0]).tobytes(), lab.tobytes())
        assert assert_error(post(server, body, headers), 400) == "labels[2] = 1.8446744073709552e+19 is not in {0, 1}"


def test_fp32_json_data_beyond_float32_range_is_refused(server):
    body = json.dumps({"inputs": [jt("predictions", [1.0, 1e39], "FP32"),
                                  jt("labels", [0.0, 1.0], "FP32")]}).encode()
    msg = assert_error(post(server, body), 400, "predictions")
    assert "float32" in msg or "FP32" in msg, msg


def test_json_data_mixing_numbers_and_infinity_strings(server):
    """±inf as the strings lossd itself writes, among plain numbers, flat and nested."""
    pred = np.array([-math.inf, 1.0, math.inf])
    lab = np.array([0.0, 1.0, 1.0])
    body = json.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [3],
                                   "data": ["-Infinity", 1.0, "Infinity"]}, jt("labels", lab)],
                       "parameters": {"reduction": "none"}}).encode()
    r = post(server, body)
    assert r.status_code == 200, r.text
    _, arrays = parse_response(r)
    exp = expected_outputs(kernels.loss(pred, lab, reduction="none"))
    for k in exp:
        assert_bits(arrays[k], exp[k], k)
    p2 = np.array([[-math.inf, 0.25], [1.5, math.inf]])
    l2 = np.array([[0.0, 1.0], [1.0, 1.0]])
    body = json.dumps({"inputs": [{"name": "predictions", "datatype": "FP32", "shape": [2, 2],
                                   "data": [["-Infinity", 0.25], [1.5, "+Infinity"]]}, jt("labels", l2)],
                       "parameters": {"reduction": "none"}}).encode()
    _, arrays = parse_response(post(server, body))
    exp = expected_outputs(kernels.loss(p2.astype(np.float32), l2, reduction="none"))
    for k in exp:
        assert_bits(arrays[k], exp[k], k)
    body = json.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2],
                                   "data": ["Infinity", "inf"]}, jt("labels", [1.0, 1.0])]}).encode()
    assert_error(post(server, body), 400, "input 'predictions': data[1] = 'inf' is not a number")


@pytest.mark.parametrize("case", ["65 dims JSON", "65 dims binary", "huge zero-size JSON", "huge zero-size binary"])
def test_shapes_numpy_cannot_hold_get_400(app_client, case):
    shape = [1] * 65 if case.startswith("65") else [2**62, 0]
    count = math.prod(shape)
    if case.endswith("JSON"):
        pred = {"name": "predictions", "datatype": "FP64", "shape": shape, "data": [0.5] * count}
        body, headers = json.dumps({"inputs": [pred, jt("labels", [1.0] * count)]}).encode(), {}
    else:
        pred = {"name": "predictions", "datatype": "FP64", "shape": shape,
                "parameters": {"binary_data_size": 8 * count}}
        body, headers = binary_frame(json.dumps({"inputs": [pred, jt("labels", [1.0] * count)]}).encode(),
                                     np.full(count, 0.5).tobytes())
    r = app_client.post("/v2/models/loss/infer", content=body, headers=headers)
    assert_error(r, 400, "predictions")


@pytest.mark.parametrize("datatype", [[], {}, ["FP64"], 64])
def test_datatype_not_a_string_is_400(app_client, datatype):
    """Found by the property tests: a list or object as datatype was unhashable (500)."""
    body = json.dumps({"inputs": [{"name": "predictions", "datatype": datatype, "shape": [1], "data": [0.5]},
                                  jt("labels", [1.0])]}).encode()
    assert_error(app_client.post("/v2/models/loss/infer", content=body), 400,
                 f"input 'predictions': unknown datatype {datatype!r}")


# ------------------------------------------------------------------------- last: 5xx

def test_zz_server_never_answered_5xx_and_still_works(server, triton):
    """Runs last in this module (and works alone too): the whole malformed battery once
    more, then the server is up, answers correctly, and none of its requests (those of
    the whole module when run in order) got a 5xx: its own metrics and log say so."""
    for _, model, (body, headers), _ in MALFORMED:
        assert post(server, body, headers, model=model).status_code == 400
    assert server.alive(), server.stderr()[-3000:]
    pred, lab = logits((9, 2)), hard01((9, 2))
    res = infer(triton, "grad", {"predictions": pred, "labels": lab})
    check_result(res, expected_outputs(kernels.grad(pred, lab)))
    assert triton.is_server_ready() and triton.is_model_ready("loss")
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    statuses: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "lossd_requests":
            for s in fam.samples:
                # /readyz answers 503 while the server warms up (the fixture polls it)
                if s.name == "lossd_requests_total" and s.labels["route"] != "/readyz":
                    statuses[s.labels["status"]] = statuses.get(s.labels["status"], 0) + s.value
    assert statuses.get("400", 0) >= len(MALFORMED) and statuses.get("200", 0) >= 1, statuses
    assert not [s for s in statuses if s.startswith("5")], statuses
    log = server.stdout() + server.stderr()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
