"""The codecs (service/codecs/), the protocol decision (service/protocol.py) and the one
error type: codecs are plain modules behind one protocol, and every content error is a
RequestError rendered by the protocol of the request."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import orjson
import pytest

from lossd.service import pipeline
from lossd.service.codecs import Codec, json as json_codec, oip_binary, oip_grpc, oip_json
from lossd.service.errors import ApiError, RequestError
from lossd.service.lane import _call, _unwrap
from lossd.service.limits import BodyLimits
from lossd.service.protocol import error_body, protocol_of


def test_protocol_is_decided_by_one_function():
    assert protocol_of("/v2/models/loss/infer") == "oip" and protocol_of(b"/v2/health/ready") == "oip"
    assert protocol_of("/v2") == "oip"
    assert protocol_of("/loss") == "json" and protocol_of(b"/grad") == "json" and protocol_of("/") == "json"
    assert error_body("oip", "m") == {"error": "m"} and error_body("json", "m") == {"detail": "m"}


def test_every_codec_follows_the_protocol():
    for codec in (json_codec.CODEC, oip_json.CODEC, oip_grpc.CODEC):
        assert isinstance(codec, Codec)
    assert (json_codec.CODEC.name, oip_json.CODEC.name, oip_grpc.CODEC.name) == ("json", "oip", "oip-grpc")


def test_codecs_import_neither_fastapi_nor_the_routes():
    code = ("import sys; import lossd.service.codecs.json, lossd.service.codecs.oip_json, "
            "lossd.service.codecs.oip_binary, lossd.service.codecs.oip_grpc, lossd.service.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith(('fastapi', 'lossd.service.routes', "
            "'lossd.service.app'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ.copy(), check=True).stdout
    assert out.strip() == "[]"


def test_request_errors_render_by_protocol():
    e = RequestError.at(("labels", 3), "labels[3] = 2 is not in {0, 1}")
    assert e.render("json") == (422, {"detail": [{"type": "value_error", "loc": ["body", "labels", 3],
                                                  "msg": "labels[3] = 2 is not in {0, 1}"}]})
    assert e.render("oip") == (400, {"error": "labels[3] = 2 is not in {0, 1}"})
    other = ApiError(415, "Content-Type is missing", {"x": "y"})
    assert other.render("json") == (415, {"detail": "Content-Type is missing"})
    assert other.render("oip") == (415, {"error": "Content-Type is missing"})


@pytest.mark.parametrize("exc", [RequestError.at(("predictions", 1), "bad", kind="float_type"),
                                 ApiError(404, "unknown model 'x'"), ApiError(503, "busy", {"retry-after": "1"})])
def test_errors_cross_the_large_lane_as_themselves(exc):
    def raises(body):
        raise exc

    kind, value = _call(raises, b"", ())
    again = pickle.loads(pickle.dumps(value))
    with pytest.raises(ApiError) as info:
        _unwrap(kind, again)
    got = info.value
    assert type(got) is type(exc) and got.detail == exc.detail and got.headers == exc.headers
    assert got.render("oip") == exc.render("oip") and got.render("json") == exc.render("json")


def test_oip_codec_errors_are_request_errors_with_a_loc():
    body = orjson.dumps({"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2], "data": [1, 2]},
                                    {"name": "labels", "datatype": "FP99", "shape": [2], "data": [1, 0]}]})
    with pytest.raises(RequestError) as info:
        oip_json.CODEC.decode(body, "loss")
    assert info.value.detail[0]["loc"] == ["body", "inputs", 1]
    assert info.value.render("oip") == (400, {"error": "input 'labels': unknown datatype 'FP99'"})
    # an unknown parameter names it in loc
    bad = orjson.dumps({"inputs": orjson.loads(body.replace(b"FP99", b"FP64"))["inputs"], "parameters": {"bogus": 1}})
    with pytest.raises(RequestError) as info:
        oip_json.CODEC.decode(bad, "loss")
    assert info.value.detail[0]["loc"] == ["body", "parameters", "bogus"]
    assert info.value.render("oip") == (400, {"error": "unknown parameter 'bogus' for model 'loss'"})


def test_binary_framing_is_apart_from_json_tensors():
    head, blob = oip_binary.split(b'{"a": 1}xyz', "8")
    assert bytes(head) == b'{"a": 1}' and bytes(blob) == b"xyz"
    body, headers = oip_binary.frame(b"{}", [b"\x00" * 8])
    assert body == b"{}" + b"\x00" * 8 and headers[oip_binary.HEADER_LENGTH] == "2"
    assert oip_binary.frame(b"{}", []) == (b"{}", {"content-type": "application/json"})
    with pytest.raises(RequestError, match="Inference-Header-Content-Length = 0 must be positive"):
        oip_binary.split(b"{}", "0")


def test_the_pipeline_functions_pickle_for_the_large_lane():
    for fn in (pipeline.run_json, pipeline.run_oip):
        assert pickle.loads(pickle.dumps(fn)) is fn
    limits = pickle.loads(pickle.dumps(BodyLimits(max_json_depth=8, max_elements=100)))
    content, headers, n = pipeline.run_json(b'{"predictions": [1.0, 2.0], "labels": [1, 0]}', "loss", limits)
    assert n == 2 and headers == {"content-type": "application/json"} and orjson.loads(content)["loss"] > 0


def test_a_binary_output_is_framed_by_the_oip_codec():
    head = orjson.dumps({"inputs": [
        {"name": "predictions", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "labels", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": True}, "outputs": [{"name": "loss"}]})
    body = head + np.array([1.0, -1.0]).tobytes() + np.array([1.0, 0.0]).tobytes()
    content, headers, n = pipeline.run_oip(body, "loss", str(len(head)), BodyLimits())
    hlen = int(headers[oip_binary.HEADER_LENGTH])
    out = orjson.loads(content[:hlen])["outputs"]
    assert [o["name"] for o in out] == ["loss"] and n == 2
    assert np.frombuffer(content[hlen:], np.float64).size == 1
