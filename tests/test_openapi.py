"""The OpenAPI schema (/openapi.json): every model, the request and response fields, its
examples validate, the OIP infer endpoint documented.
"""

from __future__ import annotations

import json
import re

import pytest


from app_helpers import client, ok, post


# ---------------------------------------------------------------------------- openapi

@pytest.fixture(scope="module")
def openapi(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _resolve(doc, node):
    while isinstance(node, dict) and "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _types(doc, prop) -> set[str]:
    prop = _resolve(doc, prop)
    if "anyOf" in prop:
        return set().union(*(_types(doc, p) for p in prop["anyOf"]))
    if "type" in prop:
        return {prop["type"]}
    return set()


def _numeric_branch(doc, prop) -> dict:
    prop = _resolve(doc, prop)
    for p in prop.get("anyOf", [prop]):
        if p.get("type") in ("number", "integer"):
            return p
    raise AssertionError(f"no number in {prop}")


def test_openapi_has_every_model(openapi):
    schemas = openapi["components"]["schemas"]
    for name in ("LossRequest", "GradRequest", "ParamsGradRequest", "LossResponse", "GradResponse",
                 "ParamsGradResponse", "ValidationErrorBody", "ErrorBody"):
        assert name in schemas, name
    # every $ref resolves
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(openapi))
    assert refs and all(r in schemas for r in refs), set(refs) - set(schemas)
    paths = openapi["paths"]
    assert paths["/loss"]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/LossRequest"}
    grad_body = paths["/grad"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in grad_body["oneOf"]} == {"GradRequest", "ParamsGradRequest"}
    for p in ("/loss", "/grad"):
        assert {"200", "413", "415", "422"} <= set(paths[p]["post"]["responses"]), p
    for p in ("/healthz", "/readyz", "/metrics"):
        assert "get" in paths[p], p


LOSS_FIELDS = {
    # name: (types, default or ..., enum, bounds of the numeric branch)
    "predictions": ({"array"}, ..., None, {}),
    "labels": ({"array"}, ..., None, {}),
    "sample_weight": ({"array", "null"}, None, None, {}),
    "input": ({"string"}, "logits", ["logits", "probabilities", "margins"], {}),
    "loss": ({"string"}, "cross_entropy", ["cross_entropy", "focal", "hinge", "squared_hinge",
                                           "modified_huber", "exponential", "zero_one", "squared_error"], {}),
    "reduction": ({"string"}, "mean", ["mean", "sum", "none"], {}),
    "pos_weight": ({"number", "string", "array", "null"}, None, None, {}),  # string: "Infinity", ..., "NaN"
    "label_smoothing": ({"number"}, 0.0, None, {"minimum": 0.0, "exclusiveMaximum": 1.0}),
    "eps": ({"number", "null"}, None, None, {"exclusiveMinimum": 0.0, "exclusiveMaximum": 0.5}),
    "gamma": ({"number"}, 2.0, None, {"minimum": 0.0}),
    "alpha": ({"number", "null"}, None, None, {"minimum": 0.0, "maximum": 1.0}),
    "quantiles": ({"array"}, ..., None, {}),
    "dtype": ({"string"}, "float64", ["float64", "float32"], {}),
}


@pytest.mark.parametrize("model", ["LossRequest", "GradRequest"])
def test_openapi_loss_and_grad_request_fields(openapi, model):
    s = openapi["components"]["schemas"][model]
    props = s["properties"]
    expected = dict(LOSS_FIELDS)
    if model == "GradRequest":
        assert props["wrt"].get("const", (props["wrt"].get("enum") or [None])[0]) == "predictions"
        assert props["wrt"]["default"] == "predictions"
    assert set(expected) <= set(props), set(expected) - set(props)
    assert set(s["required"]) == {"predictions", "labels"}
    assert s.get("additionalProperties") is False
    for name, (types, default, enum, bounds) in expected.items():
        p = props[name]
        assert _types(openapi, p) == types, (name, p)
        if default is not ...:
            assert p.get("default", "<none>") == default, (name, p)
        if enum is not None:
            assert _resolve(openapi, p)["enum"] == enum, name
        if bounds:
            num = _numeric_branch(openapi, p)
            for k, v in bounds.items():
                assert num.get(k) == v, (name, k, num)
        assert p.get("description"), f"{name} has no description"
    q = props["quantiles"]["items"]
    assert q["type"] == "number" and q["minimum"] == 0.0 and q["maximum"] == 1.0
    # 1-D or 2-D arrays of numbers, ±inf spelled as strings
    branches = props["predictions"]["anyOf"]
    assert sorted(b["items"].get("type", "scalar") for b in branches) == ["array", "scalar"]
    for b in branches:
        scalar = b["items"]["items"] if b["items"].get("type") == "array" else b["items"]
        kinds = {x.get("type") for x in scalar["anyOf"]}
        assert kinds == {"number", "string"}, scalar
        assert {"Infinity", "-Infinity"} <= {v for x in scalar["anyOf"] for v in x.get("enum", ())}


def test_openapi_params_request_and_responses(openapi):
    schemas = openapi["components"]["schemas"]
    s = schemas["ParamsGradRequest"]
    props = s["properties"]
    assert set(s["required"]) == {"wrt", "features", "labels", "coef"}
    assert props["wrt"].get("const", (props["wrt"].get("enum") or [None])[0]) == "params"
    assert props["features"]["type"] == "array" and props["features"]["items"]["type"] == "array"
    assert props["labels"]["type"] == "array" and props["coef"]["type"] == "array"
    assert props["intercept"]["type"] == "number" and props["intercept"]["default"] == 0.0
    assert props["l2"]["type"] == "number" and props["l2"]["default"] == 0.0 and props["l2"]["minimum"] == 0.0
    assert _types(openapi, props["sample_weight"]) == {"array", "null"}
    for name in ("predictions", "input", "loss", "reduction"):
        assert name not in props
    lr = schemas["LossResponse"]["properties"]
    assert set(lr) == {"loss", "losses", "stats", "input", "loss_type", "reduction", "summary"}
    assert "summary" not in schemas["LossResponse"].get("required", [])  # only with summary = true
    state = schemas["SummaryState"]["properties"]
    assert {"count", "inf_count", "sum", "weighted_sum", "weight_sum", "m2", "min", "max", "sketch"} <= set(state)
    stats = _resolve(openapi, lr["stats"])
    assert {"count", "sum", "mean", "std", "min", "max"} <= set(stats["properties"])
    gr = schemas["GradResponse"]["properties"]
    assert {"loss", "grad"} <= set(gr)
    pr = schemas["ParamsGradResponse"]["properties"]
    assert set(pr) == {"loss", "grad"}
    assert set(_resolve(openapi, pr["grad"])["properties"]) == {"coef", "intercept"}


def _valid(doc, schema, value) -> bool:
    """A JSON-schema subset (type, enum, const, anyOf/oneOf, items, properties, required,
    additionalProperties: false, numeric bounds), enough for these schemas."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema or "oneOf" in schema:
        return any(_valid(doc, s, value) for s in schema.get("anyOf", schema.get("oneOf")))
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    t = schema.get("type")
    checks = {"number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
              "object": lambda v: isinstance(v, dict)}
    if t is not None and not checks[t](value):
        return False
    if t == "array" and "items" in schema:
        return all(_valid(doc, schema["items"], v) for v in value)
    if t == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
        return all(_valid(doc, props[k], v) for k, v in value.items() if k in props)
    return True


def test_openapi_examples_of_the_responses_validate(openapi):
    schemas = openapi["components"]["schemas"]
    for name in ("LossResponse", "ParamsGradRequest"):
        for ex in schemas[name].get("examples", []):
            assert _valid(openapi, schemas[name], ex), (name, ex)


def test_openapi_request_examples_validate(openapi):
    schemas = openapi["components"]["schemas"]
    ex = schemas["LossRequest"]["examples"]
    assert ex and all(_valid(openapi, schemas["LossRequest"], e) for e in ex)


def test_openapi_documents_the_infer_endpoint(openapi, client):
    """Issue 11: the infer endpoint had no request body and a 422 HTTPValidationError,
    where the real errors are 400/404 {"error": ...}."""
    schemas = openapi["components"]["schemas"]
    op = openapi["paths"]["/v2/models/{model_name}/infer"]["post"]
    content = op["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    params = {p["name"]: p for p in op["parameters"]}
    assert params["model_name"]["in"] == "path" and params["model_name"]["schema"]["enum"] == ["loss", "grad"]
    assert params["Inference-Header-Content-Length"]["in"] == "header"
    assert "422" not in op["responses"] and {"200", "400", "404"} <= set(op["responses"])
    for status in ("400", "404"):
        assert op["responses"][status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/OipErrorBody"}
    assert schemas["OipErrorBody"]["required"] == ["error"]
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceResponse"}
    for path, item in openapi["paths"].items():
        if path.startswith("/v2"):
            for method, o in item.items():
                assert "422" not in o["responses"], (path, method)
    # real bodies match the documented schemas
    req = {"id": "a", "inputs": [{"name": "predictions", "datatype": "FP64", "shape": [2], "data": [0.5, "-Infinity"]},
                                 {"name": "labels", "datatype": "INT8", "shape": [2], "data": [1, 0]}],
           "parameters": {"reduction": "none", "quantiles": "0.5"}, "outputs": [{"name": "losses"}]}
    assert _valid(openapi, schemas["InferenceRequest"], req)
    assert all(_valid(openapi, schemas["InferenceRequest"], e) for e in schemas["InferenceRequest"]["examples"])
    r = client.post("/v2/models/loss/infer", content=json.dumps(req))
    assert r.status_code == 200 and _valid(openapi, schemas["InferenceResponse"], r.json()), r.text
    for model in ("loss", "grad"):
        assert _valid(openapi, schemas["ModelMetadata"], client.get(f"/v2/models/{model}").json())
    r = client.post("/v2/models/nope/infer", content=b"{}")
    assert r.status_code == 404 and _valid(openapi, schemas["OipErrorBody"], r.json())
    r = client.post("/v2/models/loss/infer", content=b"{}")
    assert r.status_code == 400 and _valid(openapi, schemas["OipErrorBody"], r.json())
