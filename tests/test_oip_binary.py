"""The OIP binary tensor extension on the wire (raw frames to a real server): unaligned
binary inputs, the binary outputs' layout, a JSON-only request without
Inference-Header-Content-Length, binary inputs decoded as read-only zero-copy views."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from lossd import kernels
from lossd.service.codecs.oip_json import decode_request

from oip_helpers import (HCL, RNG, assert_bits, binary_frame, bt, expected_outputs, hard01, jt, logits,
                         parse_response, post)

# after every test that uses the module's server: no 5xx, no unhandled error, still alive
pytestmark = pytest.mark.usefixtures("server_never_5xx")


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
