"""The OIP JSON fast path (issue 14): ``oip_json.decode_header_fast`` reads each input's
flat number list with simdjson straight into a buffer. Whatever it takes, it must give
what the slow path (orjson, Python lists, ``np.array``) gives: the same request model
bit for bit, the same response bytes, the same error (status, type, loc, message). Each
body here is decoded and answered twice, once with the fast path and once with it
switched off, and the two are compared; a few tests check that the fast path is
actually taken where it should be (plain FP64/FP32 and integer data) and left where it
must be.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from lossd.service import pipeline
from lossd.service.codecs import json as json_codec
from lossd.service.codecs import oip_json
from lossd.service.errors import RequestError
from lossd.service.limits import BodyLimits

from profiles import examples

LIMITS = BodyLimits(max_json_depth=64, max_elements=None)
FP32_MAX = float(np.finfo(np.float32).max)
# the largest float64 that still rounds to FP32_MAX, and the next one (rounds to inf)
FP32_EDGE = float(np.nextafter(np.float64(FP32_MAX) + np.float64(2.0 ** 103), 0))
FP32_OVER = float(np.float64(FP32_MAX) + np.float64(2.0 ** 103))


@contextmanager
def _slow_only():
    with mock.patch.object(oip_json, "decode_header_fast", lambda raw: None):
        yield


def _outcome(fn, *args):
    """("ok", value) or ("error", the RequestError's detail)."""
    try:
        return "ok", fn(*args)
    except RequestError as exc:
        return "error", exc.detail


def _both(fn, *args):
    fast = _outcome(fn, *args)
    with _slow_only():
        slow = _outcome(fn, *args)
    return fast, slow


def _same_array(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            and a.flags.writeable == b.flags.writeable)


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _same_array(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_same_value(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, (list, tuple)) and type(a) is type(b):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def check_same(body: bytes, op: str = "loss") -> tuple:
    """Decode and answer ``body`` by both paths; assert they agree. Returns the fast
    path's (decode outcome, response outcome)."""
    fast, slow = _both(oip_json.decode_request, body, None, oip_json.ALLOWED_INPUTS[op], 64)
    assert fast[0] == slow[0], (body[:300], fast, slow)
    assert _same_value(fast[1], slow[1]), (body[:300], fast, slow)
    fast_d, slow_d = _both(oip_json.CODEC.decode, body, op, None, LIMITS)
    assert fast_d[0] == slow_d[0] and _same_value(fast_d[1], slow_d[1]), (body[:300], fast_d, slow_d)
    fast_r, slow_r = _both(pipeline.run_oip, body, op, None, LIMITS)
    assert fast_r == slow_r, (body[:300], fast_r, slow_r)
    return fast_d, fast_r


# ------------------------------------------------------------------------- bodies

def num(v) -> str:
    """A JSON number as written here: floats by repr (shortest round trip), ints as ints."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ",".join(num(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def tensor(name: str, datatype: str, shape, data, **extra) -> str:
    parts = [f'"name":{json.dumps(name)}', f'"datatype":{json.dumps(datatype)}', f'"shape":{json.dumps(shape)}']
    if data is not None:
        parts.append(f'"data":{data if isinstance(data, str) else num(data)}')
    parts += [f"{json.dumps(k)}:{v if isinstance(v, str) else json.dumps(v)}" for k, v in extra.items()]
    return "{" + ",".join(parts) + "}"


def infer(*tensors: str, parameters: dict | None = None, outputs: list | None = None, rid: str | None = None,
          raw_tail: str = "") -> bytes:
    parts = []
    if rid is not None:
        parts.append(f'"id":{json.dumps(rid)}')
    parts.append('"inputs":[' + ",".join(tensors) + "]")
    if parameters is not None:
        parts.append(f'"parameters":{json.dumps(parameters)}')
    if outputs is not None:
        parts.append(f'"outputs":{json.dumps(outputs)}')
    return ("{" + ",".join(parts) + raw_tail + "}").encode()


P4 = [2.0, -1.0, 37.0, -0.5]
Y4 = [1, 0, 1, 0]


def plain(n: int = 4, pdt: str = "FP64", ydt: str = "FP64", **kw) -> bytes:
    rng = np.random.default_rng(n)
    p = rng.normal(0, 3, n).tolist()
    y = rng.integers(0, 2, n).tolist()
    return infer(tensor("predictions", pdt, [n], p), tensor("labels", ydt, [n], y), **kw)


INT_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]

TABLE = {
    "plain FP64": plain(),
    "plain FP32": plain(pdt="FP32", ydt="FP32"),
    "FP64 labels written as floats": infer(tensor("predictions", "FP64", [4], P4),
                                           tensor("labels", "FP64", [4], [1.0, 0.0, 1.0, 0.0])),
    "2-D flat": infer(tensor("predictions", "FP64", [2, 2], P4), tensor("labels", "FP64", [2, 2], Y4)),
    "2-D nested": infer(tensor("predictions", "FP64", [2, 2], [[2.0, -1.0], [37.0, -0.5]]),
                        tensor("labels", "FP64", [2, 2], [[1, 0], [1, 0]])),
    "nested, ragged": infer(tensor("predictions", "FP64", [2, 2], [[2.0, -1.0, 3.0], []]),
                            tensor("labels", "FP64", [4], Y4)),
    "nested, a row empty": infer(tensor("predictions", "FP64", [2], [[2.0, -1.0], []]),
                                 tensor("labels", "FP64", [2], [1, 0])),
    "shape mismatch": infer(tensor("predictions", "FP64", [5], P4), tensor("labels", "FP64", [4], Y4)),
    "empty data": infer(tensor("predictions", "FP64", [0], []), tensor("labels", "FP64", [0], [])),
    "empty data, INT8": infer(tensor("predictions", "FP64", [0], []), tensor("labels", "INT8", [0], [])),
    "empty data, bad shape": infer(tensor("predictions", "FP64", [2], []), tensor("labels", "INT8", [0], [])),
    "infinities as strings": infer(tensor("predictions", "FP64", [4], [2.0, "Infinity", "-Infinity", "NaN"]),
                                   tensor("labels", "FP64", [4], Y4)),
    "FP32 infinities as strings": infer(tensor("predictions", "FP32", [4], [2.0, "Infinity", "-Infinity", 1.0]),
                                        tensor("labels", "FP32", [4], Y4)),
    "a bad string": infer(tensor("predictions", "FP64", [4], [2.0, "two", 1.0, 0.0]),
                          tensor("labels", "FP64", [4], Y4)),
    "a boolean among numbers": infer(tensor("predictions", "FP64", [4], [2.0, True, 1.0, 0.0]),
                                     tensor("labels", "FP64", [4], Y4)),
    "a null among numbers": infer(tensor("predictions", "FP64", [4], "[2.0,null,1.0,0.0]"),
                                  tensor("labels", "FP64", [4], Y4)),
    "FP32 at its limit": infer(tensor("predictions", "FP32", [4], [FP32_MAX, -FP32_MAX, FP32_EDGE, 1e-45]),
                               tensor("labels", "FP64", [4], Y4)),
    "FP32 overflow": infer(tensor("predictions", "FP32", [4], [1.0, 2.0, FP32_OVER, 1e39]),
                           tensor("labels", "FP64", [4], Y4)),
    "FP32 overflow, a fraction among the values": infer(
        tensor("predictions", "FP32", [4], [0.5, 2.0, FP32_OVER, 1e39]), tensor("labels", "FP64", [4], Y4)),
    "FP32 large integers, a fraction among them": infer(
        tensor("predictions", "FP32", [4], [0.5, 2**53 + 1, 2**60 + 2**36 + 1, 1e30]), tensor("labels", "FP64", [4], Y4)),
    "FP32 overflow, small": infer(tensor("predictions", "FP32", [4], [1.0, 2.0, 1e300, 0.0]),
                                  tensor("labels", "FP64", [4], Y4)),
    "FP32 subnormals": infer(tensor("predictions", "FP32", [4], [1e-40, 5e-324, -1e-46, 1.4e-45]),
                             tensor("labels", "FP64", [4], Y4)),
    "FP32 integers beyond 2^53": infer(tensor("predictions", "FP32", [4], [2**53 + 1, 2**60 + 2**36 + 1, 3, 4]),
                                       tensor("labels", "FP64", [4], Y4)),
    "FP32 integers at 2^53": infer(tensor("predictions", "FP32", [4], [2**53, -2**53, 2**24 + 1, 16777217]),
                                   tensor("labels", "FP64", [4], Y4)),
    "FP64 integers beyond 2^53": infer(tensor("predictions", "FP64", [4], [2**53 + 1, 2**63 - 1, 2**63 + 1025, 2**64 - 1]),
                                       tensor("labels", "FP64", [4], Y4)),
    "FP64 integers beyond 2^53, one negative": infer(
        tensor("predictions", "FP64", [4], [-(2**63), 2**63 + 1025, 2**64 - 1, 7]), tensor("labels", "FP64", [4], Y4)),
    "FP64 integers beyond 64 bits": infer(tensor("predictions", "FP64", [4], [2**64, 1, 2, 3]),
                                          tensor("labels", "FP64", [4], Y4)),
    "FP64 extremes": infer(tensor("predictions", "FP64", [4], [1e308, -1.7976931348623157e308, 5e-324, -0.0]),
                           tensor("labels", "FP64", [4], Y4)),
    "FP64 beyond float range": infer(tensor("predictions", "FP64", [4], "[1e400,1,2,3]"),
                                     tensor("labels", "FP64", [4], Y4)),
    "FP64 underflow to zero": infer(tensor("predictions", "FP64", [4], "[1e-400,-1e-400,2,3]"),
                                    tensor("labels", "FP64", [4], Y4)),
    "minus zero as an integer": infer(tensor("predictions", "FP64", [4], "[-0,0,-0.0,0.0]"),
                                      tensor("labels", "FP64", [4], "[-0,0,1,-0]")),
    "minus zero, FP32": infer(tensor("predictions", "FP32", [4], "[-0,0,-0.0,0.0]"),
                              tensor("labels", "FP32", [4], "[-0,0,1,-0]")),
    "exponents": infer(tensor("predictions", "FP64", [4], "[1E2,1e-2,-2.5E+3,0.1e1]"),
                       tensor("labels", "FP64", [4], "[1e0,0E5,1,0]")),
    "many digits": infer(tensor("predictions", "FP64", [3],
                                "[0.1000000000000000055511151231257827021181583404541015625,"
                                "2.2250738585072011e-308,9007199254740993.0]"),
                         tensor("labels", "FP64", [3], [1, 0, 1])),
    "BOOL labels": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "BOOL", [4], [True, False, True, False])),
    "BOOL labels as numbers": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "BOOL", [4], Y4)),
    "INT labels as floats": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT8", [4], [1.0, 0, 1, 0])),
    "INT labels, a fraction": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT8", [4], [1.5, 0, 1, 0])),
    "INT labels out of range": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT8", [4], [1, 300, 1, -129])),
    "UINT labels negative": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "UINT8", [4], [1, -1, 1, 0])),
    "INT64 beyond 2^53": infer(tensor("predictions", "FP64", [4], P4),
                               tensor("labels", "INT64", [4], [2**53 + 1, 0, 1, 2**63 - 1])),
    "INT64 beyond int64": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT64", [4], [2**63, 0, 1, 0])),
    "UINT64 at its top": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "UINT64", [4], [2**64 - 1, 0, 1, 0])),
    "UINT64 beyond": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "UINT64", [4], [2**64, 0, 1, 0])),
    "INT64 below int64": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT64", [4], [-(2**63) - 1, 0, 1, 0])),
    "INT labels, a string": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "INT32", [4], [1, "1", 1, 0])),
    "predictions as INT8": infer(tensor("predictions", "INT8", [4], Y4), tensor("labels", "FP64", [4], Y4)),
    "unknown datatype": infer(tensor("predictions", "FP16", [4], P4), tensor("labels", "FP64", [4], Y4)),
    "datatype not a string": infer(tensor("predictions", ["FP64"], [4], P4), tensor("labels", "FP64", [4], Y4)),
    "data not a list": infer(tensor("predictions", "FP64", [1], "2.0"), tensor("labels", "FP64", [1], [1])),
    "data an object": infer(tensor("predictions", "FP64", [1], '{"a": 1}'), tensor("labels", "FP64", [1], [1])),
    "no data": infer(tensor("predictions", "FP64", [4], None), tensor("labels", "FP64", [4], Y4)),
    "data and binary_data_size": infer(tensor("predictions", "FP64", [4], P4, parameters={"binary_data_size": 32}),
                                       tensor("labels", "FP64", [4], Y4)),
    "binary_data_size, no header": infer(tensor("predictions", "FP64", [4], None, parameters={"binary_data_size": 32}),
                                         tensor("labels", "FP64", [4], Y4)),
    "tensor parameters": infer(tensor("predictions", "FP64", [4], P4, parameters={"content_type": "np"}),
                               tensor("labels", "FP64", [4], Y4)),
    "unknown tensor field": infer(tensor("predictions", "FP64", [4], P4, extra=1), tensor("labels", "FP64", [4], Y4)),
    "unknown input": infer(tensor("predictions", "FP64", [4], P4), tensor("label", "FP64", [4], Y4)),
    "input twice": infer(tensor("predictions", "FP64", [4], P4), tensor("predictions", "FP64", [4], P4),
                         tensor("labels", "FP64", [4], Y4)),
    "missing labels": infer(tensor("predictions", "FP64", [4], P4)),
    "no inputs": infer(),
    "an input not an object": infer(tensor("predictions", "FP64", [4], P4), "[1, 2]"),
    "shape not integers": infer(tensor("predictions", "FP64", [4.0], P4), tensor("labels", "FP64", [4], Y4)),
    "shape negative": infer(tensor("predictions", "FP64", [-4], P4), tensor("labels", "FP64", [4], Y4)),
    "sample_weight and pos_weight": infer(
        tensor("predictions", "FP64", [2, 2], P4), tensor("labels", "INT8", [2, 2], Y4),
        tensor("sample_weight", "FP64", [2], [0.5, 2.0]), tensor("pos_weight", "FP32", [2], [2.0, 1.0])),
    "pos_weight as tensor and parameter": infer(
        tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], Y4),
        tensor("pos_weight", "FP64", [1], [2.0]), parameters={"pos_weight": 2.0}),
    "parameters": plain(parameters={"reduction": "none", "quantiles": "0.5,0.9", "label_smoothing": 0.1}),
    "parameters, quantiles a list": plain(parameters={"reduction": "sum", "quantiles": [0.25, 0.75]}),
    "parameters, float32": plain(pdt="FP64", parameters={"dtype": "float32", "reduction": "none"}),
    "parameters, float32 and FP32 data": plain(pdt="FP32", ydt="INT8", parameters={"dtype": "float32"}),
    "parameters, bad value": plain(parameters={"reduction": "avg"}),
    "parameters, out of range": plain(parameters={"alpha": 2.0, "loss": "focal"}),
    "parameters, unknown": plain(parameters={"foo": 1}),
    "parameters, protocol's own": plain(parameters={"binary_data_output": False, "priority": 1}),
    "parameters not an object": plain(parameters=[1]),
    "outputs": plain(parameters={"reduction": "none"}, outputs=[{"name": "losses"}, {"name": "mean"}]),
    "outputs, binary": plain(outputs=[{"name": "loss", "parameters": {"binary_data": True}}, {"name": "max"}]),
    "outputs, unknown": plain(outputs=[{"name": "nope"}]),
    "outputs, twice": plain(outputs=[{"name": "loss"}, {"name": "loss"}]),
    "binary_data_output": plain(parameters={"binary_data_output": True}),
    "id": plain(rid="req-1"),
    "id with a bracket": plain(rid="a[0]"),
    "id not a string": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], Y4), raw_tail=',"id":7'),
    "id with an escape": plain(rid="caf\u00e9 \u2603 \"q\""),
    "a lone surrogate": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], Y4),
                              raw_tail=',"id":"\\ud800"'),
    "a NUL in a key": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], Y4),
                            raw_tail=',"\\u0000":1'),
    "unknown request field": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], Y4),
                                   raw_tail=',"model":"x"'),
    "non-finite literal": infer(tensor("predictions", "FP64", [4], "[Infinity,1,2,3]"), tensor("labels", "FP64", [4], Y4)),
    "NaN literal": infer(tensor("predictions", "FP64", [4], "[NaN,1,2,3]"), tensor("labels", "FP64", [4], Y4)),
    "not an object": b"[1, 2]",
    "invalid JSON": plain()[:-5],
    "trailing garbage": plain() + b" x",
    "BOM": b"\xef\xbb\xbf" + plain(),
    "whitespace around": b" \n\t" + plain() + b"\r\n ",
    "mismatched sizes for the kernels": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [3], [1, 0, 1])),
    "labels not 0/1": infer(tensor("predictions", "FP64", [4], P4), tensor("labels", "FP64", [4], [1, 0, 2, 0])),
}

DUPLICATES = {
    "top level": plain()[:-1] + b',"id":"x","id":"y"}',
    "top level inputs": plain()[:-1] + b',"inputs":[]}',
    "in a tensor": infer(tensor("predictions", "FP64", [4], P4)[:-1] + ',"datatype":"FP32"}',
                         tensor("labels", "FP64", [4], Y4)),
    "data twice": infer(tensor("predictions", "FP64", [4], P4)[:-1] + ',"data":[1,2,3,4]}', tensor("labels", "FP64", [4], Y4)),
    "in tensor parameters": infer(tensor("predictions", "FP64", [4], P4, parameters='{"a":1,"a":2}'),
                                  tensor("labels", "FP64", [4], Y4)),
    "in parameters": plain()[:-1] + b',"parameters":{"reduction":"sum","reduction":"none"}}',
    "in outputs": plain()[:-1] + b',"outputs":[{"name":"loss","name":"mean"}]}',
    "in output parameters": plain()[:-1] + b',"outputs":[{"name":"loss","parameters":{"binary_data":true,"binary_data":false}}]}',
    "in an object in data": infer(tensor("predictions", "FP64", [1], '[{"a":1,"a":2}]'), tensor("labels", "FP64", [1], [1])),
    "deep in parameters": plain()[:-1] + b',"parameters":{"x":[{"y":{"z":1,"z":2}}]}}',
}


@pytest.mark.parametrize("body", TABLE.values(), ids=TABLE.keys())
def test_fast_and_slow_paths_agree(body):
    check_same(body)


@pytest.mark.parametrize("body", TABLE.values(), ids=TABLE.keys())
def test_fast_and_slow_paths_agree_for_grad(body):
    check_same(body, "grad")


@pytest.mark.parametrize("body", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_a_repeated_key_anywhere_is_the_slow_paths_error(body):
    (decoded, _), _ = check_same(body)
    assert decoded == "error"
    assert oip_json.decode_header_fast(body) is None


@pytest.mark.parametrize("dtype", INT_TYPES + ["FP32", "FP64"])
@pytest.mark.parametrize("shape", [[6], [2, 3], [3, 2], [1, 6]])
def test_every_label_datatype_and_shape(dtype, shape):
    y = [1, 0, 1, 1, 0, 0]
    body = infer(tensor("predictions", "FP64", shape, [0.5, -1.0, 3.0, 37.0, -37.0, 0.0]),
                 tensor("labels", dtype, shape, y), parameters={"reduction": "none"})
    (decoded, _), (response, _) = check_same(body)
    assert decoded == "ok" and response == "ok"
    header = oip_json.decode_header_fast(body)
    assert header is not None and isinstance(header["inputs"][1]["data"], oip_json.Numbers)


# ------------------------------------------------------------------------- the fast path is taken

def _fast_inputs(body: bytes) -> list | None:
    header = oip_json.decode_header_fast(body)
    return None if header is None else [t["data"] for t in header["inputs"]]


@pytest.mark.parametrize("pdt, ydt", [("FP64", "FP64"), ("FP32", "FP32"), ("FP64", "INT8"), ("FP32", "UINT64"),
                                      ("FP64", "INT64")])
def test_the_fast_path_is_taken_for_flat_number_lists(pdt, ydt):
    body = plain(1000, pdt, ydt, parameters={"reduction": "sum"}, outputs=[{"name": "loss"}], rid="r")
    data = _fast_inputs(body)
    assert data is not None and all(isinstance(d, oip_json.Numbers) for d in data)
    assert data[0].values.dtype == np.float64 and data[0].values.size == 1000
    assert data[1].values.dtype == (np.int64 if ydt.startswith(("INT", "UINT")) else np.float64)


def test_decode_request_uses_the_fast_path():
    body = plain(100)
    calls = []
    real = oip_json.decode_header_fast

    def spy(raw):
        out = real(raw)
        calls.append(out is not None)
        return out
    with mock.patch.object(oip_json, "decode_header_fast", spy):
        oip_json.CODEC.decode(body, "loss", None, LIMITS)
        pipeline.run_oip(body, "loss", None, LIMITS)
    assert calls == [True, True]


def test_framed_bodies_keep_the_slow_path():
    body = plain(4)
    with mock.patch.object(oip_json, "decode_header_fast", side_effect=AssertionError("called")):
        out = oip_json.decode_request(body, str(len(body)), oip_json.ALLOWED_INPUTS["loss"], 64)
    assert out.inputs["predictions"].shape == (4,)


@pytest.mark.parametrize("name", ["2-D nested", "nested, a row empty", "infinities as strings", "a boolean among numbers",
                                  "BOOL labels", "BOOL labels as numbers", "INT labels as floats",
                                  "INT64 beyond int64", "UINT64 at its top", "FP32 integers beyond 2^53",
                                  "FP32 overflow", "FP64 integers beyond 64 bits", "non-finite literal", "BOM",
                                  "invalid JSON", "id with a bracket", "not an object", "unknown datatype",
                                  "datatype not a string", "a NUL in a key"])
def test_the_fast_path_leaves_the_unusual_to_the_slow_one(name):
    assert oip_json.decode_header_fast(TABLE[name]) is None


@pytest.mark.parametrize("name", ["FP32 at its limit", "FP32 overflow, a fraction among the values",
                                  "FP32 large integers, a fraction among them", "FP64 integers beyond 2^53",
                                  "minus zero as an integer", "empty data, INT8", "INT labels out of range"])
def test_the_fast_path_takes_edge_values_it_can_read_exactly(name):
    assert oip_json.decode_header_fast(TABLE[name]) is not None


def test_fast_arrays_are_read_only_and_typed():
    body = infer(tensor("predictions", "FP32", [2, 2], P4), tensor("labels", "UINT8", [2, 2], Y4),
                 tensor("sample_weight", "FP64", [2], [1.0, 2.0]))
    req = oip_json.CODEC.decode(body, "loss", None, LIMITS).request
    assert req.predictions.dtype == np.float32 and req.predictions.shape == (2, 2)
    assert req.labels.dtype == np.uint8 and req.sample_weight.dtype == np.float64
    assert not any(a.flags.writeable for a in (req.predictions, req.labels, req.sample_weight))


# ------------------------------------------------------------------------- properties

FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e3, 1e3),
    st.sampled_from([0.0, -0.0, FP32_MAX, -FP32_MAX, FP32_EDGE, FP32_OVER, 1e39, 5e-324, 1e-45, 2.0 ** 53, 1e300]),
)
INTS = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**64), 2**64 + 5),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 127, 128, 255, 256, -129]),
)
VALUES = st.one_of(FLOATS, INTS, st.sampled_from(["Infinity", "-Infinity", "NaN", "x", True, False]))
DATATYPES = st.sampled_from(["FP64", "FP32", "BOOL", *INT_TYPES])


@st.composite
def tensors(draw, name: str):
    n = draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["floats", "ints", "mixed", "any", "small"]))
    elem = {"floats": FLOATS, "ints": INTS, "mixed": st.one_of(FLOATS, INTS), "any": VALUES,
            "small": st.integers(0, 1)}[kind]
    values = draw(st.lists(elem, min_size=n, max_size=n))
    shape = draw(st.sampled_from([[n], [1, n], [n, 1]] + ([[2, n // 2]] if n % 2 == 0 else []) + [[n + 1]]))
    data = values
    if draw(st.integers(0, 9)) == 0 and n % 2 == 0 and n:  # nested rows
        data = [values[: n // 2], values[n // 2:]]
    text = num(data)
    if draw(st.booleans()):  # integral floats written as floats, or ints with a fraction part
        text = text.replace(",0,", ",0.0,")
    return tensor(name, draw(DATATYPES), shape, text)


@given(st.data())
@examples(300)
def test_fast_and_slow_paths_agree_on_random_tensors(data):
    op = data.draw(st.sampled_from(["loss", "grad"]))
    names = data.draw(st.lists(st.sampled_from(["predictions", "labels", "sample_weight", "pos_weight"]),
                               min_size=1, max_size=3, unique=True))
    if data.draw(st.integers(0, 3)):
        names = sorted(set(names) | {"predictions", "labels"}, key=["predictions", "labels", "sample_weight",
                                                                     "pos_weight"].index)
    params = data.draw(st.sampled_from([None, {}, {"reduction": "none"}, {"dtype": "float32"},
                                        {"reduction": "none", "dtype": "float32", "quantiles": "0.5"}]))
    body = infer(*[data.draw(tensors(n)) for n in names], parameters=params)
    event("fast path" if oip_json.decode_header_fast(body) is not None else "slow path")
    check_same(body, op)


# ------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("values", [[np.inf], [-np.inf], [np.nan], [1.5], [0.1, np.nan], [0.1, 2.0]])
def test_outputs_spell_non_finite_numbers_as_the_json_api_does(values, dtype):
    arr = np.array(values, dtype=dtype)
    body, headers = oip_json.encode_response(oip_json.InferResponse("loss", None, [("losses", arr)]), {})
    out = orjson.loads(body)["outputs"][0]
    assert headers["content-type"] == "application/json"
    assert out["datatype"] == ("FP64" if dtype == np.float64 else "FP32") and out["shape"] == [len(values)]
    assert out["data"] == orjson.loads(orjson.dumps(json_codec._finite_safe(arr), option=orjson.OPT_SERIALIZE_NUMPY))
