"""The JSON API's error contract, in-process: every contract error with its status, ``loc``
and message; the kernels' messages kept; non-finite parameters refused on every path (OIP
too); union-typed options and repeated keys give one error naming the field; 415 for other
content types; an unexpected error is a 500 without internals.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from lossd import kernels
from lossd.service import Settings

from service_helpers import assert_same, dumps, jsonable, oip_frame, strict_json

from app_helpers import PARAMS, _client, client, ok, post


# ----------------------------------------------------------------------- error contract

def _err(c, path, body, loc, msg, status=422):
    """The answer is ``status`` with FastAPI's error shape; the first error's loc equals
    ``loc`` and its msg equals ``msg`` (str) or matches it (re.Pattern)."""
    r = post(c, path, body)
    assert r.status_code == status, r.text
    detail = strict_json(r.text)["detail"]
    assert isinstance(detail, list) and detail, detail
    for e in detail:
        assert set(e) >= {"type", "loc", "msg"} and e["loc"][0] == "body"
    first = detail[0]
    if isinstance(msg, re.Pattern):
        assert msg.search(first["msg"]), first["msg"]
    else:
        assert first["msg"] == msg, first["msg"]
    if loc is not None:
        assert first["loc"] == ["body", *loc], first["loc"]
    assert "Traceback" not in r.text
    return first


P = [0.5, -1.0, 2.0]


Y = [1, 0, 1]


ERRORS = [
    # id, path, body (dict or raw JSON text), loc, message
    ("nan-token", "/loss", '{"predictions": [0.5, NaN, 1], "labels": [1, 0, 1]}',
     ["predictions", 1], "predictions[1] is NaN"),
    ("nan-string", "/loss", {"predictions": [0.5, 1, "NaN"], "labels": [1, 0, 1]},
     ["predictions", 2], "predictions[2] is NaN"),
    ("nan-label", "/loss", '{"predictions": [0.5, 1], "labels": [1, NaN]}',
     ["labels", 1], "labels[1] is NaN"),
    ("nan-2d", "/loss", {"predictions": [[0.5, 1], [2, "NaN"]], "labels": [[1, 0], [0, 1]]},
     ["predictions", 1, 1], "predictions[1, 1] is NaN"),
    ("label-not-01-margin-loss", "/loss", {"predictions": P, "labels": [1, 0, 0.5], "loss": "hinge"},
     ["labels", 2], "labels[2] = 0.5 is not in {0, 1}"),
    ("label-not-pm1-margins", "/loss", {"predictions": P, "labels": [1, 0, -1], "input": "margins"},
     ["labels", 1], "labels[1] = 0 is not in {-1, 1}"),
    ("label-outside-01-soft", "/loss", {"predictions": P, "labels": [1, 2, 1]},
     ["labels", 1], "labels[1] = 2 is outside [0, 1]"),
    ("label-outside-01-2d", "/loss", {"predictions": [[0.5, 0.2], [1, 2]], "labels": [[1, 0], [0, -1]]},
     ["labels", 1, 1], "labels[1, 1] = -1 is outside [0, 1]"),
    ("probability-above-1", "/loss",
     {"predictions": [0.1, 0.2, 0.3, 0.4, 0.5, 1.2, 0.7], "labels": [1, 0, 1, 0, 1, 0, 1],
      "input": "probabilities"},
     ["predictions", 5], re.compile(r"^predictions\[5\] = 1\.2 is outside \[0, 1\]")),
    ("probability-negative", "/loss", {"predictions": [0.1, -0.25], "labels": [1, 0], "input": "probabilities"},
     ["predictions", 1], re.compile(r"^predictions\[1\] = -0\.25 is outside \[0, 1\]")),
    ("rows-mismatch", "/loss", {"predictions": [0.0] * 100, "labels": [1] * 99},
     ["predictions"], "predictions has 100 rows, labels 99"),
    ("columns-mismatch", "/loss", {"predictions": [[1, 2, 3]], "labels": [[1, 0]]},
     ["predictions"], "predictions has 3 columns, labels 2"),
    ("ndim-mismatch", "/loss", {"predictions": [1, 2], "labels": [[1], [0]]},
     ["predictions"], "predictions is 1-D (2,), labels 2-D (2, 1)"),
    ("ragged-rows", "/loss", {"predictions": [[1, 2], [3]], "labels": [[1, 0], [1]]},
     ["predictions", 1], re.compile(r"^predictions\[1\] has 1 elements, predictions\[0\] has 2")),
    ("3d", "/loss", {"predictions": [[[1]]], "labels": [[[1]]]},
     ["predictions"], re.compile(r"^predictions must be 1-D \(N\) or 2-D \(N×K\), got 3-D")),
    ("empty", "/loss", {"predictions": [], "labels": []},
     ["predictions"], re.compile(r"^predictions is empty")),
    ("empty-rows", "/loss", {"predictions": [[]], "labels": [[]]},
     ["predictions"], re.compile(r"^predictions is empty")),
    ("negative-weight", "/loss", {"predictions": P, "labels": Y, "sample_weight": [1, -1, 1]},
     ["sample_weight", 1], "sample_weight[1] = -1 is not a finite weight >= 0"),
    ("nan-weight", "/loss", {"predictions": P, "labels": Y, "sample_weight": [1, 1, "NaN"]},
     ["sample_weight", 2], "sample_weight[2] is NaN"),
    ("weight-length", "/loss", {"predictions": P, "labels": Y, "sample_weight": [1, 1]},
     ["sample_weight"], "sample_weight must have one weight per row (3), got shape (2,)"),
    ("weights-sum-0", "/loss", {"predictions": P, "labels": Y, "sample_weight": [0, 0, 0]},
     ["sample_weight"], re.compile(r"^sample_weight sums to 0")),
    ("unknown-input", "/loss", {"predictions": P, "labels": Y, "input": "raw"},
     ["input"], re.compile(r"^input: .*'logits', 'probabilities' or 'margins' \(got 'raw'\)")),
    ("unknown-loss", "/loss", {"predictions": P, "labels": Y, "loss": "bce"},
     ["loss"], re.compile(r"^loss: .*'cross_entropy'.*\(got 'bce'\)")),
    ("unknown-reduction", "/loss", {"predictions": P, "labels": Y, "reduction": "avg"},
     ["reduction"], re.compile(r"^reduction: .*'mean', 'sum' or 'none' \(got 'avg'\)")),
    ("unknown-dtype", "/loss", {"predictions": P, "labels": Y, "dtype": "float16"},
     ["dtype"], re.compile(r"^dtype: .*'float64' or 'float32'")),
    ("unknown-field", "/loss", {"predictions": P, "labels": Y, "foo": 1},
     ["foo"], "foo is not a field of this request"),
    ("wrt-on-loss", "/loss", {"predictions": P, "labels": Y, "wrt": "predictions"},
     ["wrt"], "wrt is not a field of this request"),
    ("unknown-wrt", "/grad", {"predictions": P, "labels": Y, "wrt": "weights"},
     ["wrt"], re.compile(r"^wrt: .*'predictions'")),
    ("label_smoothing-1", "/loss", {"predictions": P, "labels": Y, "label_smoothing": 1.0},
     ["label_smoothing"], "label_smoothing = 1 is outside [0, 1)"),
    ("label_smoothing-negative", "/loss", {"predictions": P, "labels": Y, "label_smoothing": -0.1},
     ["label_smoothing"], "label_smoothing = -0.1 is outside [0, 1)"),
    ("label_smoothing-margins", "/loss",
     {"predictions": P, "labels": [1, -1, 1], "input": "margins", "label_smoothing": 0.1},
     ["label_smoothing"], re.compile(r"^label_smoothing applies to cross_entropy, focal and squared_error")),
    ("label_smoothing-string", "/loss", {"predictions": P, "labels": Y, "label_smoothing": "0.1"},
     ["label_smoothing"], re.compile(r"^label_smoothing: input should be a valid number")),
    ("eps-0", "/loss", {"predictions": [0.5], "labels": [1], "input": "probabilities", "eps": 0.0},
     ["eps"], "eps = 0 is below 2^-53 = 1.1102230246251565e-16: 1 - eps would round to 1 and clip nothing near 1"),
    ("eps-half", "/loss", {"predictions": [0.5], "labels": [1], "input": "probabilities", "eps": 0.5},
     ["eps"], "eps = 0.5 is outside [0, 0.5)"),
    ("eps-with-logits", "/loss", {"predictions": P, "labels": Y, "eps": 1e-7},
     ["eps"], 'eps applies to input = "probabilities" with cross_entropy or focal only'),
    ("pos_weight-hinge", "/loss", {"predictions": P, "labels": Y, "loss": "hinge", "pos_weight": 2.0},
     ["pos_weight"], "pos_weight applies to cross_entropy only, not 'hinge'"),
    ("pos_weight-length", "/loss", {"predictions": [[1, 2, 3]], "labels": [[1, 0, 1]], "pos_weight": [1, 2]},
     ["pos_weight"], "pos_weight must be a scalar or one weight per column (3), got shape (2,)"),
    ("pos_weight-negative", "/loss", {"predictions": P, "labels": Y, "pos_weight": -1.0},
     ["pos_weight", 0], "pos_weight[0] = -1 is not a finite weight >= 0"),
    ("probabilities-margin-loss", "/loss",
     {"predictions": [0.5, 0.2], "labels": [1, 0], "input": "probabilities", "loss": "hinge"},
     ["loss"], re.compile(r"""^loss = 'hinge' does not accept input = "probabilities\"""")),
    ("quantile-above-1", "/loss", {"predictions": P, "labels": Y, "quantiles": [0.5, 1.5]},
     ["quantiles", 1], "quantiles[1] = 1.5 is outside [0, 1]"),
    ("quantile-negative", "/loss", {"predictions": P, "labels": Y, "quantiles": [-0.1]},
     ["quantiles", 0], "quantiles[0] = -0.1 is outside [0, 1]"),
    ("gamma-negative", "/loss", {"predictions": P, "labels": Y, "loss": "focal", "gamma": -1},
     ["gamma"], "gamma = -1 is outside [0, inf)"),
    ("alpha-above-1", "/loss", {"predictions": P, "labels": Y, "loss": "focal", "alpha": 1.5},
     ["alpha"], "alpha = 1.5 is outside [0, 1]"),
    ("missing-labels", "/loss", {"predictions": P}, ["labels"], "labels is required"),
    ("missing-predictions", "/grad", {"labels": Y}, ["predictions"], "predictions is required"),
    ("predictions-string", "/loss", {"predictions": "abc", "labels": Y},
     ["predictions"], "predictions must be an array of numbers, got a string"),
    ("predictions-null-element", "/loss", {"predictions": [None, 1, 2], "labels": Y},
     ["predictions", 0], "predictions[0] = null is not a number"),
    ("predictions-bad-string", "/loss", {"predictions": [1, "inf", 2], "labels": Y},
     ["predictions", 1], 'predictions[1] = "inf" is not a number'),
    ("body-array", "/loss", "[1, 2]", [], re.compile(r"^the body must be a JSON object")),
    ("invalid-json", "/loss", '{"predictions": [1,', [], re.compile(r"^the body is not valid JSON")),
    ("params-missing-features", "/grad", {k: v for k, v in PARAMS.items() if k != "features"},
     ["features"], "features is required"),
    ("params-missing-coef", "/grad", {k: v for k, v in PARAMS.items() if k != "coef"},
     ["coef"], "coef is required"),
    ("params-coef-length", "/grad", {**PARAMS, "coef": [0.1, 0.2, 0.3]},
     ["coef"], "coef must have one value per feature column (2), got shape (3,)"),
    ("params-features-1d", "/grad", {**PARAMS, "features": [0.5, 1.0, 2.0]},
     ["features"], "features must be 2-D (N×D), got 1-D shape (3,)"),
    ("params-features-3d", "/grad", {**PARAMS, "features": [[[0.5, 1.0]], [[1, 2]], [[3, 4]]]},
     ["features"], "features must be 2-D (N×D), got 3-D shape (3, 1, 2)"),
    ("params-rows", "/grad", {**PARAMS, "labels": [1, 0]}, ["features"], "features has 3 rows, labels 2"),
    ("params-labels", "/grad", {**PARAMS, "labels": [1, 0, 2]}, ["labels", 2], "labels[2] = 2 is not in {0, 1}"),
    ("params-nan-feature", "/grad", {**PARAMS, "features": [[0.5, 1.0], [-1.5, "NaN"], [0.0, -1.0]]},
     ["features", 1, 1], "features[1, 1] is NaN"),
    ("params-with-predictions", "/grad", {**PARAMS, "predictions": [1, 2, 3]},
     ["predictions"], re.compile(r'^predictions does not apply to wrt = "params"')),
    ("params-with-reduction", "/grad", {**PARAMS, "reduction": "sum"},
     ["reduction"], re.compile(r'^reduction does not apply to wrt = "params"')),
    ("params-negative-l2", "/grad", {**PARAMS, "l2": -1.0},
     ["l2"], "l2 = -1 is outside [0, inf)"),
    ("params-unknown-field", "/grad", {**PARAMS, "bias": 1.0}, ["bias"], "bias is not a field of this request"),
]


@pytest.mark.parametrize("path,body,loc,msg", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_contract_errors(client, path, body, loc, msg):
    _err(client, path, body, loc, msg)


def test_kernel_errors_keep_the_kernels_message(client):
    """The service's 422 message is the kernels' own ValueError message."""
    pred = [0.1, 0.2, 0.3, 0.4, 0.5, 1.2]
    lab = [1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError) as info:
        kernels.loss(np.array(pred), np.array(lab, dtype=float), input="probabilities")
    _err(client, "/loss", {"predictions": pred, "labels": lab, "input": "probabilities"},
         ["predictions", 5], str(info.value))


def test_numbers_beyond_float_range_are_refused(client):
    _err(client, "/loss", '{"predictions": [1e400], "labels": [1]}', [],
         re.compile(r"^the body is not valid JSON: number is infinity"))
    _err(client, "/loss", '{"predictions": [1], "labels": [1], "gamma": -1e400}', [],
         re.compile(r"^the body is not valid JSON"))


def test_numbers_beyond_float_range_are_refused_with_bare_tokens_too(client):
    r = post(client, "/loss", '{"predictions": [1e400, Infinity], "labels": [1, 1]}')
    assert r.status_code == 422, r.text


# ------------------------------------------- non-finite params (issue 11 item 4), OIP too

def oip(c, model: str, tensors: dict, parameters: dict | None = None, binary: bool = True):
    """An OIP infer request with ``tensors`` (name -> array) as binary or JSON inputs."""
    body, headers = oip_frame(tensors, parameters, binary=binary)
    return c.post(f"/v2/models/{model}/infer", content=body, headers=headers)


NONFINITE_PARAMS = [
    # field, its value with one non-finite element, loc after the field, message
    ("features", [[math.inf], [1.0]], [0, 0], "features[0, 0] = inf is not finite"),
    ("features", [[1.0], [-math.inf]], [1, 0], "features[1, 0] = -inf is not finite"),
    ("features", [[1.0], [math.nan]], [1, 0], "features[1, 0] is NaN"),
    ("coef", [math.inf], [0], "coef[0] = inf is not finite"),
    ("coef", [math.nan], [0], "coef[0] is NaN"),
    ("labels", [1.0, math.inf], [1], "labels[1] = inf is not in {0, 1}"),
    ("labels", [1.0, math.nan], [1], "labels[1] is NaN"),
    ("sample_weight", [1.0, math.inf], [1], "sample_weight[1] = inf is not a finite weight >= 0"),
]


@pytest.mark.parametrize("coef", [1.0, 0.0])
@pytest.mark.parametrize("field,value,where,msg", NONFINITE_PARAMS,
                         ids=[f"{c[0]}-{c[3].split()[-1]}-{i}" for i, c in enumerate(NONFINITE_PARAMS)])
def test_nonfinite_params_are_refused_on_every_path(client, field, value, where, msg, coef):
    """`features [["Infinity"], [1.0]]` with `coef [1.0]` answered 200 with coef "NaN"
    (with coef [0.0], a 422): refused always, the same way over JSON and OIP."""
    req = {"wrt": "params", "features": [[0.5], [1.0]], "labels": [1.0, 0.0], "coef": [coef], field: value}
    _err(client, "/grad", {k: jsonable(v) for k, v in req.items()}, [field, *where], msg)  # strings
    _err(client, "/grad", dumps(req), [field, *where], msg)  # bare Infinity/NaN tokens
    tensors = {k: np.array(v, dtype=np.float64) for k, v in req.items() if k != "wrt"}
    for binary in (True, False):
        for dtype in (np.float64, np.float32):
            if field == "features":
                tensors["features"] = np.array(value, dtype=dtype)
            r = oip(client, "grad", tensors, {"wrt": "params"}, binary=binary)
            assert r.status_code == 400 and r.json() == {"error": msg}, (binary, dtype, r.text)


def test_nonfinite_features_in_a_zero_weight_row_are_refused(client):
    req = {"wrt": "params", "features": [[0.5], ["Infinity"]], "labels": [1, 0], "coef": [1.0],
           "sample_weight": [1.0, 0.0]}
    _err(client, "/grad", req, ["features", 1, 0], "features[1, 0] = inf is not finite")


def test_huge_finite_features_are_not_refused(client):
    """The finiteness check sums first: finite features whose sum overflows still pass."""
    req = {"wrt": "params", "features": [[1e308], [1e308]], "labels": [1, 0], "coef": [1e-308]}
    body = ok(client, "/grad", req)
    p = kernels.logreg_grad(np.array(req["features"]), np.array([1.0, 0.0]), np.array([1e-308]))
    assert_same(body, {"loss": p.loss, "grad": {"coef": p.coef, "intercept": p.intercept}})


# ---------------------------------------------- union-typed options (issue 11 item 9)

UNION_ERRORS = [
    # field, bad value, loc after the field, message
    ("pos_weight", "Infinity", [0], "pos_weight[0] = inf is not a finite weight >= 0"),
    ("pos_weight", "NaN", [0], "pos_weight[0] is NaN"),
    ("pos_weight", "-Infinity", [0], "pos_weight[0] = -inf is not a finite weight >= 0"),
    ("pos_weight", [1.0, "inf"], [1], "pos_weight[1]: input should be a valid number (got 'inf')"),
    ("pos_weight", [1.0, None], [1], "pos_weight[1]: input should be a valid number (got None)"),
    ("pos_weight", [[1.0]], [0], "pos_weight[0]: input should be a valid number"),
    ("pos_weight", "x", [], "pos_weight: input should be a number or an array (got 'x')"),
    ("pos_weight", True, [], "pos_weight: input should be a number or an array (got True)"),
    ("pos_weight", {"a": 1}, [], "pos_weight: input should be a number or an array"),
    ("eps", "Infinity", [], "eps: input should be a valid number (got 'Infinity')"),
    ("eps", [0.1], [], "eps: input should be a valid number"),
    ("alpha", "0.5", [], "alpha: input should be a valid number (got '0.5')"),
    ("quantiles", [0.5, "Infinity", 2.0], [1], "quantiles[1]: input should be a valid number (got 'Infinity')"),
    ("quantiles", [1.5, 2.0], [0], "quantiles[0] = 1.5 is outside [0, 1]"),
    ("quantiles", 0.5, [], "quantiles: input should be a valid list (got 0.5)"),
    ("gamma", [2.0], [], "gamma: input should be a valid number"),
]


@pytest.mark.parametrize("path", ["/loss", "/grad"])
@pytest.mark.parametrize("field,value,where,msg", UNION_ERRORS, ids=[f"{c[0]}-{c[1]!r}" for c in UNION_ERRORS])
def test_option_errors_are_one_error_at_field_and_index(client, path, field, value, where, msg):
    """`"pos_weight": [1.0, "inf"]` gave two errors, one at loc
    ["body", "pos_weight", "list[float]", 1]: pydantic's union branches leaked."""
    for labels in ([1, 0], [True, False]):  # the fast path and the orjson path
        r = post(client, path, {"predictions": [0.5, -1.0], "labels": labels, field: value})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == [{"type": r.json()["detail"][0]["type"], "loc": ["body", field, *where],
                                       "msg": msg}]
    # the same message over OIP (a parameter; pos_weight also as a tensor)
    r = oip(client, "loss", {"predictions": np.array([0.5, -1.0]), "labels": np.array([1.0, 0.0])}, {field: value})
    assert r.status_code == 400 and r.json() == {"error": msg}, r.text


def test_several_bad_options_give_one_error(client):
    r = post(client, "/loss", {"predictions": [0.5], "labels": [1], "gamma": -1, "alpha": 2, "eps": "x"})
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 1 and detail[0]["loc"] == ["body", "eps"], detail


# ----------------------------------------------------- duplicate keys (issue 11 item 7)

DUPLICATE_BODIES = [
    # raw body, loc after "body", message
    ('{"predictions": [0.5, 1], "labels": [1, 0], "labels": [0, 0]}', ["labels"], 'duplicate key "labels"'),
    ('{"predictions": [0.5, 1], "labels": [true, false], "labels": [0, 0]}', ["labels"], 'duplicate key "labels"'),
    ('{"predictions": [0.5, Infinity], "labels": [1, 0], "labels": [0, 0]}', ["labels"], 'duplicate key "labels"'),
    ('{"predictions": [[0.5], [1]], "labels": [[1], [0]], "reduction": "sum", "reduction": "none"}',
     ["reduction"], 'duplicate key "reduction"'),
    ('{"predictions": [0.5], "labels": [1], "pos_weight": {"a": 1, "a": 2}}', ["pos_weight", "a"],
     'duplicate key "a" in pos_weight'),
    ('{"predictions": [0.5], "labels": [1], "quantiles": [{"q": 1, "q": 2}]}', ["quantiles", 0, "q"],
     'duplicate key "q" in quantiles[0]'),
]


@pytest.mark.parametrize("path", ["/loss", "/grad"])
@pytest.mark.parametrize("body,loc,msg", DUPLICATE_BODIES)
def test_duplicate_keys_are_422_naming_the_key(client, path, body, loc, msg):
    """The last of two "labels" used to win (the fast path's simdjson would take the first)."""
    r = post(client, path, body)
    assert r.status_code == 422 and r.json() == {"detail": [{"type": "duplicate_key", "loc": ["body", *loc],
                                                             "msg": msg}]}, r.text


def test_duplicate_keys_in_params_grad(client):
    body = json.dumps(PARAMS)[:-1] + ', "coef": [0.0, 0.0]}'
    _err(client, "/grad", body, ["coef"], 'duplicate key "coef"')


def test_l2_error_names_the_field(client):
    _err(client, "/grad", dumps({**PARAMS, "l2": math.inf}), ["l2"], re.compile(r"^l2 = inf is outside"))


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/xml", "multipart/form-data; boundary=x", None])
@pytest.mark.parametrize("path", ["/loss", "/grad"])
def test_unsupported_content_type_is_415(client, path, ctype):
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post(path, content=dumps({"predictions": [1.0], "labels": [1]}), headers=headers)
    assert r.status_code == 415, r.text
    detail = r.json()["detail"]
    if ctype is None:
        assert detail == "Content-Type is missing; send 'Content-Type: application/json'"
    else:
        assert detail == f"Content-Type {ctype!r} is not supported; send application/json"


def test_unexpected_errors_are_500_without_internals(monkeypatch):
    """A bug (not a client mistake) is a 500 whose body carries no traceback or message."""
    def boom(*a, **k):
        raise RuntimeError("secret internal detail")
    try:
        with _client(Settings(warmup=False), raise_server_exceptions=False) as c:
            monkeypatch.setattr(kernels, "loss", boom)
            r = post(c, "/loss", {"predictions": [1.0], "labels": [1]})
    finally:
        kernels.set_threads(None)
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error; the server log has the details"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_float32_overflow_is_refused(client):
    """dtype float32 must not turn a finite 1e39 into infinity behind the caller's back."""
    r = post(client, "/loss", {"predictions": [1.0, 1e39], "labels": [1, 0], "dtype": "float32"})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"type": "value_error", "loc": ["body", "predictions", 1],
                                   "msg": 'predictions[1] = 1e+39 is beyond the float32 range (dtype = "float32")'}]
    # infinities themselves stay allowed
    body = ok(client, "/loss", {"predictions": [1.0, "Infinity"], "labels": [1, 1], "dtype": "float32",
                                "reduction": "none"})
    assert body["losses"][1] == 0.0
