"""The request model (service/requests.py) and compute (service/compute.py): one typed,
immutable request for every transport, and a compute that knows no wire format."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import orjson
import pytest

from lossd import kernels
from lossd.kernels.errors import InputError
from lossd.service import compute as compute_module
from lossd.service.codecs import json as json_codec
from lossd.service.codecs import oip_json
from lossd.service.codecs.oip_binary import HEADER_LENGTH
from lossd.service.compute import compute
from lossd.service.errors import RequestError
from lossd.service.requests import DEFAULT_OPTIONS, Options, ParamsRequest, PredictionsRequest, build

SERVICE = Path(__file__).resolve().parents[1] / "service"
PRED = np.array([[2.0, -1.0], [0.5, 3.0], [-0.25, 1.5]])
LAB = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
W = np.array([1.0, 2.0, 0.5])
OPTIONS = {"reduction": "none", "quantiles": [0.5, 0.9], "pos_weight": [2.0, 0.5]}


def _json_body() -> bytes:
    return orjson.dumps({"predictions": PRED.tolist(), "labels": LAB.tolist(), "sample_weight": W.tolist(),
                         **OPTIONS})


def _oip_params() -> dict:
    return {"reduction": "none", "quantiles": "0.5,0.9"}


def _oip_json_body() -> bytes:
    return orjson.dumps({"inputs": [
        {"name": "predictions", "datatype": "FP64", "shape": [3, 2], "data": PRED.reshape(-1).tolist()},
        {"name": "labels", "datatype": "FP64", "shape": [3, 2], "data": LAB.reshape(-1).tolist()},
        {"name": "sample_weight", "datatype": "FP64", "shape": [3], "data": W.tolist()},
        {"name": "pos_weight", "datatype": "FP64", "shape": [2], "data": [2.0, 0.5]}],
        "parameters": _oip_params()})


def _oip_binary_body() -> tuple[bytes, dict[str, str]]:
    blobs = [PRED.tobytes(), LAB.tobytes(), W.tobytes(), np.array([2.0, 0.5]).tobytes()]
    shapes = [[3, 2], [3, 2], [3], [2]]
    names = ["predictions", "labels", "sample_weight", "pos_weight"]
    head = orjson.dumps({"inputs": [{"name": n, "datatype": "FP64", "shape": s,
                                     "parameters": {"binary_data_size": len(b)}}
                                    for n, s, b in zip(names, shapes, blobs)], "parameters": _oip_params()})
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head))}


def _decoded_by_every_transport(op: str):
    body, headers = _oip_binary_body()
    return {"json": json_codec.CODEC.decode(_json_body(), op),
            "oip json": oip_json.CODEC.decode(_oip_json_body(), op),
            "oip binary": oip_json.CODEC.decode(body, op, headers)}


@pytest.mark.parametrize("op", ["loss", "grad"])
def test_every_transport_decodes_into_the_same_request(op):
    decoded = _decoded_by_every_transport(op)
    reqs = {k: d.request for k, d in decoded.items()}
    for transport, req in reqs.items():
        assert type(req) is PredictionsRequest and req.op == op, transport
        np.testing.assert_array_equal(req.predictions, PRED)
        np.testing.assert_array_equal(req.labels, LAB)
        np.testing.assert_array_equal(req.sample_weight, W)
        o = req.options
        assert (o.reduction, o.quantiles) == ("none", (0.5, 0.9)), transport
        np.testing.assert_array_equal(np.asarray(o.pos_weight), [2.0, 0.5])
    results = {k: compute(r) for k, r in reqs.items()}
    expect = (kernels.loss if op == "loss" else kernels.grad)(PRED, LAB, sample_weight=W, reduction="none",
                                                              quantiles=(0.5, 0.9), pos_weight=[2.0, 0.5])
    for transport, r in results.items():
        assert type(r) is type(expect), transport
        np.testing.assert_array_equal(r.losses, expect.losses)
        assert r.stats == expect.stats


def test_the_request_model_is_immutable_and_its_arrays_read_only():
    for transport, decoded in _decoded_by_every_transport("loss").items():
        req = decoded.request
        with pytest.raises(dataclasses.FrozenInstanceError):
            req.predictions = PRED  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            req.options.reduction = "sum"  # type: ignore[misc]
        for name, arr in req.arrays():
            assert not arr.flags.writeable, (transport, name)
        assert not req.options.pos_weight.flags.writeable
        assert not hasattr(req, "__dict__")  # slots


def test_binary_tensors_reach_the_request_without_a_copy():
    body, headers = _oip_binary_body()
    req = oip_json.CODEC.decode(body, "loss", headers).request
    raw = np.frombuffer(body, np.uint8)
    for arr in (req.predictions, req.labels, req.sample_weight, req.options.pos_weight):
        assert np.shares_memory(arr, raw)


def test_requests_pickle():
    for decoded in _decoded_by_every_transport("grad").values():
        again = pickle.loads(pickle.dumps(decoded))
        np.testing.assert_array_equal(again.request.predictions, decoded.request.predictions)
        assert again.request.options.quantiles == decoded.request.options.quantiles


def test_a_request_without_options_takes_the_defaults():
    req = build("loss", {"predictions": PRED, "labels": LAB}, lambda name, v: v)
    assert req.options is DEFAULT_OPTIONS and req.options == Options()
    assert compute(req).loss == kernels.loss(PRED, LAB).loss


def test_params_requests():
    body = orjson.dumps({"wrt": "params", "features": PRED.tolist(), "labels": [1.0, 0.0, 1.0],
                         "coef": [0.5, -0.25], "intercept": 0.125, "l2": 0.5})
    req = json_codec.CODEC.decode(body, "grad").request
    assert type(req) is ParamsRequest and (req.intercept, req.l2) == (0.125, 0.5)
    got = compute(req)
    expect = kernels.logreg_grad(PRED, [1.0, 0.0, 1.0], [0.5, -0.25], 0.125, l2=0.5)
    assert got.loss == expect.loss and got.intercept == expect.intercept
    np.testing.assert_array_equal(got.coef, expect.coef)


def test_the_element_limit_holds_for_every_transport():
    for transport, decoded in _decoded_by_every_transport("loss").items():
        with pytest.raises(RequestError) as info:
            compute(decoded.request, max_elements=5)
        e = info.value.detail[0]
        assert e["type"] == "too_long" and e["loc"] == ["body", "predictions"], transport
        assert "LOSSD_MAX_ELEMENTS" in e["msg"]
        compute(decoded.request, max_elements=6)


def test_a_kernel_error_becomes_a_request_error_with_its_argument_and_index():
    lab = LAB.copy()
    lab[2, 1] = 2.0
    req = build("loss", {"predictions": PRED, "labels": lab}, lambda name, v: v)
    with pytest.raises(RequestError) as info:
        compute(req)
    with pytest.raises(InputError) as direct:
        kernels.loss(PRED, lab)
    assert info.value.detail == [{"type": "value_error", "loc": ["body", "labels", 2, 1], "msg": str(direct.value)}]
    assert info.value.render("oip") == (400, {"error": str(direct.value)})
    assert info.value.render("json") == (422, {"detail": info.value.detail})


def test_compute_knows_no_wire_format():
    tree = ast.parse((SERVICE / "compute.py").read_text())
    imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("codec" in m or "json" in m or m in ("fastapi", "starlette") for m in imported), imported
    assert not hasattr(compute_module, "to_array")
