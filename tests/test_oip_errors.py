"""OIP errors (raw frames, JSON and binary, to a real server; a few in-process): ~80
malformed frames get 400 with a clear ``{"error"}`` message, values outside their set get
the kernels' message, a wrong version is 404, the regressions of service bugs found here;
after every test, no 5xx (``server_never_5xx``), and the malformed battery counted as 400s
in the server's metrics."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import orjson
import pytest

from lossd import kernels

from service_helpers import NoServerErrors

from oip_helpers import (HCL, TIMEOUT, app_client, assert_bits, assert_error, binary_frame, bt, check_result,
                         expected_outputs, hard01, infer, jt, kernel_error, logits, parse_response, post,
                         probabilities, triton)

# after every test that uses the module's server: no 5xx, no unhandled error, still alive
pytestmark = pytest.mark.usefixtures("server_never_5xx")


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
     ["label_smoothing = 2 is outside [0, 1)"]),
    ("eps = 0.6", "grad",
     _json({"inputs": [jt("predictions", [0.5, 0.1]), jt("labels", L2)],
            "parameters": {"input": "probabilities", "eps": 0.6}}), ["eps = 0.6 is outside [0, 0.5)"]),
    ("dtype float16", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"dtype": "float16"}}),
     ["dtype:", "float16"]),
    ("quantiles not numbers", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"quantiles": "0.5,x"}}),
     ["parameter quantiles = '0.5,x' is not a comma-separated list of numbers"]),
    ("quantile above 1", "loss",
     _json({"inputs": [jt("predictions", P2), jt("labels", L2)], "parameters": {"quantiles": "0.5,2"}}),
     ["quantiles[1] = 2 is outside [0, 1]"]),
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


# ------------------------------------------------------------------------- 5xx

def test_malformed_battery_gets_400_and_the_server_still_works(server, triton):
    """The whole malformed battery: every frame counted as a 400 in the server's own
    metrics (a snapshot before, compared after), none a 5xx, nothing unhandled in the log;
    then the server is up and answers correctly. (Every other test of this module gets
    the no-5xx check too, from the ``server_never_5xx`` fixture.)"""
    watch = NoServerErrors(server)
    for _, model, (body, headers), _ in MALFORMED:
        assert post(server, body, headers, model=model).status_code == 400
    pred, lab = logits((9, 2)), hard01((9, 2))
    res = infer(triton, "grad", {"predictions": pred, "labels": lab})
    check_result(res, expected_outputs(kernels.grad(pred, lab)))
    assert triton.is_server_ready() and triton.is_model_ready("loss")
    delta = watch.check("the malformed battery")
    assert delta.get("400", 0) >= len(MALFORMED) and delta.get("200", 0) >= 1, delta
