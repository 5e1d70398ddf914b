"""The JSON codec's two decoders agree: the simdjson fast path (flat number lists straight
into float64 buffers) and the orjson path (everything, with exact error messages)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from lossd.service.codecs import json as codec_json
from lossd.service.errors import RequestError
from lossd import kernels
from lossd.service.fields import ARRAY_FIELDS as _ARRAY_FIELDS

FIELDS = _ARRAY_FIELDS


def slow(body: bytes) -> dict:
    data = codec_json.decode_body(body)
    return {k: (codec_json.to_array(k, v) if k in ("predictions", "labels") else v) for k, v in data.items()}


@pytest.mark.parametrize("values", [
    [0.0, -0.0, 1.5, -2.25, 1e-320, 5e-324, 1.7976931348623157e308, -1e300, 3],
    list(np.random.default_rng(1).normal(scale=50, size=2000)),
    [0.1, 0.2, 0.30000000000000004, 1 / 3, 2 ** -1074, 123456789012345678],
])
def test_fast_path_equals_the_orjson_path_bit_for_bit(values):
    body = json.dumps({"predictions": values, "labels": [1] * len(values), "reduction": "none",
                       "quantiles": [0.5, 0.9], "pos_weight": None, "gamma": 2}).encode()
    fast = codec_json.decode_body_fast(body, FIELDS)
    assert fast is not None  # flat number lists take the fast path
    ref = slow(body)
    assert fast.keys() == ref.keys()
    for k in ("predictions", "labels"):
        assert fast[k].dtype == np.float64
        np.testing.assert_array_equal(fast[k], ref[k])
        assert np.array_equal(fast[k].view(np.uint64), ref[k].astype(np.float64).view(np.uint64))
    assert fast["quantiles"] == [0.5, 0.9] and fast["pos_weight"] is None and fast["reduction"] == "none"
    # a pooled buffer arrives as a memoryview
    again = codec_json.decode_body_fast(memoryview(bytearray(body)), FIELDS)
    np.testing.assert_array_equal(again["predictions"], fast["predictions"])


def test_both_paths_give_float64_and_narrowing_is_one_function():
    """dtype float32 narrows after decoding, in the kernels, whichever path decoded: the
    same rule as kernels.loss(..., dtype="float32") on float64 arrays."""
    vals = [0.1, 1e-40, 3.4028234663852886e38, -7.5]
    body = json.dumps({"predictions": vals, "labels": [0, 1, 0, 1], "dtype": "float32"}).encode()
    fast = codec_json.decode_body_fast(body, FIELDS)
    assert fast["predictions"].dtype == np.float64
    np.testing.assert_array_equal(fast["predictions"], slow(body)["predictions"])
    narrow = kernels._checks._to_float32
    assert narrow("predictions", fast["predictions"]).tolist() == np.array(vals, np.float32).tolist()
    with pytest.raises(ValueError) as info:
        kernels.loss([1.0, 2.0], [1.0, 0.0], sample_weight=np.array([1.0, 1e39]), dtype="float32")
    err = RequestError.from_kernel(info.value)
    assert err.detail == [{"type": "value_error", "loc": ["body", "sample_weight", 1],
                           "msg": 'sample_weight[1] = 1e+39 is beyond the float32 range (dtype = "float32")'}]
    with pytest.raises(ValueError) as info:
        narrow("predictions", np.array([[1.0, 2.0], [-1e39, 0.0]]))
    assert RequestError.from_kernel(info.value).detail[0]["loc"] == ["body", "predictions", 1, 0]
    assert str(info.value).startswith("predictions[1, 0] = -1e+39 is beyond")
    # integers and booleans become float32 values too; ±inf stay
    assert narrow("labels", np.array([True, False])).dtype == np.float32
    assert narrow("labels", np.array([1, 0], np.int64)).tolist() == [1.0, 0.0]
    assert narrow("predictions", np.array([np.inf, -np.inf])).tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("body", [
    b'{"predictions": [[1, 2], [3, 4]], "labels": [[1, 0], [0, 1]]}',  # 2-D
    b'{"predictions": [[1], [2]], "labels": [1, 0]}',                  # N x 1 must not flatten
    b'{"predictions": [1, [2]], "labels": [1, 0]}',                    # mixed depth
    b'{"predictions": [1, "Infinity"], "labels": [1, 0]}',             # non-finite string
    b'{"predictions": [1, 2], "labels": [true, false]}',               # booleans
    b'{"predictions": [1, 2], "labels": [1, 0], "note": "a [b"}',      # "[" in a string
    b'{"predictions": [1, 2], "labels": [1, 0], "x": {"y": [1]}}',     # a list inside an object
    b'{"predictions": [1e400], "labels": [1]}',                        # beyond float64
    b'{"predictions": [Infinity], "labels": [1]}',                     # bare token
    b'\xef\xbb\xbf{"predictions": [1, 2], "labels": [1, 0]}',        # BOM: orjson refuses it
    b'[1, 2]', b'{"predictions": [1, 2', b'',
])
def test_unusual_bodies_take_the_orjson_path(body):
    assert codec_json.decode_body_fast(body, FIELDS) is None


DUPLICATES = [
    # body, loc after "body", message
    (b'{"predictions": [5.0], "labels": [1], "predictions": [0.5]}', ["predictions"],
     'duplicate key "predictions"'),
    (b'{"predictions": [[1], [2]], "labels": [[1], [0]], "labels": [[0], [0]]}', ["labels"],
     'duplicate key "labels"'),
    (b'{"predictions": [1, "Infinity"], "labels": [1, 0], "reduction": "sum", "reduction": "none"}',
     ["reduction"], 'duplicate key "reduction"'),
    (b'{"predictions": [1, Infinity], "labels": [1, 0], "gamma": 1, "gamma": 2}', ["gamma"],
     'duplicate key "gamma"'),
    (b'{"predictions": [1], "labels": [1], "x": {"a": 1, "a": 2}}', ["x", "a"], 'duplicate key "a" in x'),
    (b'{"predictions": [1], "labels": [1], "quantiles": [0.5, {"q": [{"b": 1, "b": 1}]}]}',
     ["quantiles", 1, "q", 0, "b"], 'duplicate key "b" in quantiles[1].q[0]'),
    (b'{"predictions": [1, {"a": 1, "a": 2}], "labels": [1, 0]}', ["predictions", 1, "a"],
     'duplicate key "a" in predictions[1]'),
    (b'{"predictions": [1], "labels": [1], "n": 100000000000000000000, "n": 1}', ["n"],
     'duplicate key "n"'),  # a 65-bit integer: simdjson refuses it, the stdlib check runs
]


@pytest.mark.parametrize("body,loc,msg", DUPLICATES)
def test_duplicate_keys_are_refused_on_every_path(body, loc, msg):
    want = [{"type": "duplicate_key", "loc": ["body", *loc], "msg": msg}]
    with pytest.raises(RequestError) as info:
        codec_json.decode(body, FIELDS)
    assert info.value.detail == want
    with pytest.raises(RequestError) as info:  # the orjson / stdlib path on its own
        codec_json.decode_body(body)
    assert info.value.detail == want


def test_duplicate_key_check_keeps_the_fast_path():
    body = json.dumps({"predictions": [0.5] * 100, "labels": [1] * 100, "quantiles": [0.5],
                       "x": {"a": 1, "b": {"a": 2}}}).encode()
    assert codec_json.decode_body_fast(body, FIELDS) is not None  # nested objects, no repeat
    assert codec_json.decode(body, FIELDS)["x"] == {"a": 1, "b": {"a": 2}}


def test_thread_parser_is_reused_and_results_stay_independent():
    """Each thread reuses one simdjson parser for bodies up to PARSER_REUSE_BYTES; arrays
    decoded earlier never change when the parser parses the next body, of any size."""
    rng = np.random.default_rng(5)
    bodies, wants = [], []
    for n in (3, 5000, 10, 40000, 1):
        s = rng.normal(size=n)
        bodies.append(orjson.dumps({"predictions": s.tolist(), "labels": [0.0] * n}))
        wants.append(s)
    got = [codec_json.decode_body_fast(b, FIELDS) for b in bodies]
    parser = codec_json._threads.parser
    got += [codec_json.decode_body_fast(b, FIELDS) for b in bodies]
    assert codec_json._threads.parser is parser  # one parser served all ten
    for g, want in zip(got, wants * 2):
        np.testing.assert_array_equal(g["predictions"], want)


def test_a_document_still_referenced_does_not_block_the_fast_path():
    body = orjson.dumps({"predictions": [1.0, 2.0], "labels": [0.0, 1.0]})
    codec_json.decode_body_fast(body, FIELDS)
    held = codec_json._threads.parser.parse(b'{"a": [1, 2]}')  # e.g. a frame kept alive
    fast = codec_json.decode_body_fast(body, FIELDS)
    assert fast is not None and fast["predictions"].tolist() == [1.0, 2.0]
    assert list(held.keys()) == ["a"]  # the old document is left intact


def test_large_bodies_get_a_parser_of_their_own(monkeypatch):
    monkeypatch.setattr(codec_json, "PARSER_REUSE_BYTES", 100)
    codec_json.decode_body_fast(b'{"predictions": [1.0], "labels": [1.0]}', FIELDS)
    parser = codec_json._threads.parser
    big = orjson.dumps({"predictions": [0.5] * 100, "labels": [1.0] * 100})
    assert codec_json.decode_body_fast(big, FIELDS)["predictions"].tolist() == [0.5] * 100
    assert codec_json._threads.parser is parser


def test_each_thread_has_its_own_parser():
    import threading

    body = orjson.dumps({"predictions": [0.25] * 1000, "labels": [1.0] * 1000})
    parsers, errors = [], []

    def work():
        try:
            for _ in range(50):
                assert codec_json.decode_body_fast(body, FIELDS)["predictions"].sum() == 250.0
            parsers.append(codec_json._threads.parser)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len({id(p) for p in parsers}) == 8
