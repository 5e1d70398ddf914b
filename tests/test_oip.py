"""Open Inference Protocol v2 (KServe / Triton) through the real ``tritonclient[http]``
client against a real ``lossd serve`` process on a free 127.0.0.1 port: health, model
metadata, inference with binary and JSON inputs and outputs, every parameter, label and
prediction datatype, ±inf. (Raw binary frames: test_oip_binary.py; errors and malformed
frames: test_oip_errors.py; fuzzing: test_oip_fuzz.py; shared helpers: oip_helpers.py.)

One server per module (``service_helpers.lossd_serve``, stopped in the fixture teardown).
Every number the server answers is compared with ``kernels`` called in this process on
the very arrays the client sent, to the last bit (values and dtypes). After every test
that uses the server, its /metrics and log are checked for 5xx answers and unhandled
errors (the ``server_never_5xx`` fixture in conftest.py). Without tritonclient, only the
tests that use it skip.
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd import service

try:  # only the tests that use the client skip without it (the `triton` fixture says so)
    import tritonclient.http as tritonclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype
except ImportError:
    tritonclient = None

from service_helpers import OIP_DATATYPES
from oip_helpers import (RNG, STATS, TIMEOUT, assert_error, binary_frame, bt, check_result, expected_outputs,
                         hard01, infer, kernel_kwargs, logits, pm1, post, probabilities, soft01, triton)

if tritonclient is None:
    def np_to_triton_dtype(dtype) -> str:  # the raw-frame helpers need only this
        return OIP_DATATYPES[np.dtype(dtype).str[1:]]

# after every test that uses the module's server: no 5xx, no unhandled error, still alive
pytestmark = pytest.mark.usefixtures("server_never_5xx")


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
     {"loss", "losses", *STATS, "summary"}),
    ("grad", {"predictions", "labels", "sample_weight", "pos_weight", "features", "coef", "intercept"},
     {"loss", "losses", "grad", "coef_grad", "intercept_grad", *STATS, "summary"}),
])
def test_model_metadata(triton, model, inputs, outputs):
    meta = triton.get_model_metadata(model)
    assert meta["name"] == model
    assert "1" in meta["versions"]
    assert {t["name"] for t in meta["inputs"]} == inputs
    assert {t["name"] for t in meta["outputs"]} == outputs
    for t in meta["inputs"] + meta["outputs"]:
        # BYTES: the summary output (the option summary = true)
        assert t["datatype"] in (("BYTES",) if t["name"] == "summary" else ("FP32", "FP64")), t
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


def test_infer_error_through_tritonclient(triton):
    pred, lab = logits(4), np.array([0.0, 1.0, 2.0, 1.0])
    with pytest.raises(InferenceServerException) as exc:
        infer(triton, "loss", {"predictions": pred, "labels": lab}, parameters={"loss": "hinge"})
    assert exc.value.status() == "400"
    assert exc.value.message() == "labels[2] = 2 is not in {0, 1}"
    with pytest.raises(InferenceServerException, match="unknown parameter 'bogus'"):
        infer(triton, "loss", {"predictions": pred, "labels": lab}, parameters={"bogus": 1})
