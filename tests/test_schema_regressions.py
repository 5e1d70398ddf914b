"""Responses that did not match /openapi.json, found by schemathesis (issue 12), kept as
fixed requests to a real server checked by schemathesis's own validator (status, content
type, headers and body against the published schema; never a 5xx).

Each failed before its fix in service/ (see the case's comment).
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

F64_MAX = 1.7976931348623157e308


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def call_and_validate(schema, server, path: str, method: str, **case: Any):
    c = schema[path][method].Case(**case)
    response = c.call(base_url=server.url)
    c.validate_response(response)  # raises with every failed check
    return response


CASES = [
    # wrt params: an l2 term beyond the float range makes the loss and the coef gradient
    # ±inf, written as "Infinity" strings; the schema said number (ParamsGradResponse)
    ("/grad", "POST", {"body": {"wrt": "params", "features": [[1.0, 2.0]], "labels": [1.0], "coef": [1e200, -1e200],
                                "l2": 1e200}, "media_type": "application/json"}, 200),
    ("/grad", "POST", {"body": {"wrt": "params", "features": [[0.5]], "labels": [0.0], "coef": [2.0],
                                "l2": F64_MAX}, "media_type": "application/json"}, 200),
    # routing's own 404 under /v2 was FastAPI's {"detail"}; the documented 404 is {"error"}
    ("/v2/models/{model_name}", "GET", {"path_parameters": {"model_name": ""}}, 404),
    ("/v2/models/{model_name}/infer", "POST", {"path_parameters": {"model_name": "a/b"},
                                               "body": {"inputs": []}, "media_type": "application/json"}, 404),
    ("/v2/models/{model_name}/ready", "GET", {"path_parameters": {"model_name": "nope"}}, 404),
    # empty bodies were documented as application/json
    ("/v2/health/live", "GET", {}, 200),
    ("/v2/health/ready", "GET", {}, 200),
    ("/v2/models/{model_name}/ready", "GET", {"path_parameters": {"model_name": "loss"}}, 200),
    # /readyz: the JSON body is documented (it was an untyped 200 and a 503 without content)
    ("/readyz", "GET", {}, 200),
]


@pytest.mark.parametrize("path,method,case,status", CASES, ids=[f"{c[1]} {c[0]} {c[3]}" for c in CASES])
def test_response_matches_the_published_schema(schema, server, path, method, case, status):
    response = call_and_validate(schema, server, path, method, **case)
    assert response.status_code == status, response.text


def test_wrt_params_infinite_results_are_strings(schema, server):
    r = call_and_validate(schema, server, "/grad", "POST", body={
        "wrt": "params", "features": [[1.0, 2.0]], "labels": [1.0], "coef": [1e200, -1e200], "l2": 1e200},
        media_type="application/json")
    body = r.json()
    assert body["loss"] == "Infinity" and body["grad"]["coef"] == ["Infinity", "-Infinity"], body


P = {"name": "predictions", "datatype": "FP64", "shape": [2], "data": [0.5, -1.0]}
L = {"name": "labels", "datatype": "FP64", "shape": [2], "data": [1.0, 0.0]}


@pytest.mark.parametrize("head,message", [
    ({"inputs": [P, L], "parameters": []}, "parameters must be an object, got list"),
    ({"inputs": [{**P, "parameters": 0}, L]}, "input 'predictions': parameters must be an object, got int"),
    ({"inputs": [{**P, "contents": {}}, L]}, "input 'predictions': unknown field 'contents' (expected name, "
                                             "datatype, shape, parameters, data)"),
    ({"inputs": [{**P, "shape": [1], "data": 0.5}, {**L, "shape": [1], "data": [1.0]}]},
     "input 'predictions': data must be a (flat or nested) list, got float"),
    ({"inputs": [P, L], "outputs": [{"name": "loss", "x": 1}]},
     "outputs[0] ('loss'): unknown field 'x' (expected name, parameters)"),
    ({"inputs": [P, L], "outputs": [{"name": "loss", "parameters": ""}]},
     "outputs[0].parameters must be an object, got str"),
])  # fmt: skip
def test_infer_requests_outside_the_schema_are_refused(server, head, message):
    """The schema's negative cases: each was answered 200 as if the part were absent
    (a falsy parameters, a scalar data, an unknown key), now a 400 naming it."""
    import httpx

    r = httpx.post(f"{server.url}/v2/models/loss/infer", json=head, timeout=30)
    assert r.status_code == 400 and r.json() == {"error": message}, r.text


@pytest.mark.parametrize("path,body,status,message", [
    # schemathesis: "alpha" an object whose nested key held \u0000 -> 500 on /grad
    ("/grad", b'{"predictions": [1.0], "labels": [1.0], "alpha": {"q": {"x\\u0000": 1}}}', 422,
     "alpha: input should be a valid number"),
    ("/loss", b'{"predictions": [1.0], "labels": [1.0], "a\\u0000b": 1}', 422,
     "a\x00b is not a field of this request"),
    ("/loss", b'{"predictions": [1.0], "labels": [1.0], "x": {"a\\u0000": 1, "a\\u0000": 2}}', 422,
     'duplicate key "a\x00" in x'),
    # schemathesis: a parameter named with \u0000 -> 500 on infer
    ("/v2/models/loss/infer", b'{"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [1], '
                              b'"data": [1.0]}], "parameters": {"a\\u0000": false}}', 400,
     "unknown parameter 'a\\x00' for model 'loss'"),
])  # fmt: skip
def test_keys_holding_nul_are_refused_not_a_500(server, path, body, status, message):
    """pysimdjson looks a key up as a C string, so a key holding \\u0000 was never found:
    KeyError in the duplicate-key walk, a 500 for any body with such a key, at any depth."""
    import httpx

    r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    got = r.json()
    assert (got["detail"][0]["msg"] if status == 422 else got["error"]) == message, got
