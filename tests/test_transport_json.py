"""The HTTP service in-process (FastAPI TestClient): the JSON API of
../shared/docs/api.md, its error contract, and the operations endpoints.

Every expected number comes from ``kernels`` called in this process (or from an exact
mathematical limit), never from the service's own output; answers are compared to the
last bit (service_helpers.assert_same). The real server (uvicorn, several workers, body
limits on the wire) is tested in test_service_server.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import warnings
from importlib import resources

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lossd import kernels
from lossd.service import Settings, create_app
from lossd.service.settings import available_cores

from service_helpers import (assert_same, check_grad_body, dumps, expected_loss_body, json_array,
                             jsonable, oip_frame, strict_json)

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2 at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}
TOKEN = "s3cret-token"


# ------------------------------------------------------------------------------ fixtures

def _client(settings: Settings, **kw):
    app = create_app(settings)
    return TestClient(app, **kw)


@pytest.fixture(scope="module")
def client():
    try:
        with _client(Settings(warmup=False)) as c:
            yield c
    finally:
        kernels.set_threads(None)  # the app's lifespan set the kernels' thread count


@pytest.fixture(scope="module")
def token_client():
    try:
        with _client(Settings(warmup=False, api_token=TOKEN)) as c:
            yield c
    finally:
        kernels.set_threads(None)


def post(c, path: str, body, headers=JSON):
    content = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else dumps(body))
    return c.post(path, content=content, headers=headers)


def ok(c, path: str, body) -> dict:
    r = post(c, path, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return strict_json(r.text)


def rng_data(n=64, k=None, seed=0, labels="binary"):
    rng = np.random.default_rng(seed)
    shape = (n,) if k is None else (n, k)
    pred = rng.normal(0.0, 3.0, shape)
    if labels == "binary":
        lab = rng.integers(0, 2, shape).astype(np.float64)
    elif labels == "soft":
        lab = rng.uniform(0.0, 1.0, shape)
    elif labels == "pm1":
        lab = rng.choice([-1.0, 1.0], shape)
    else:
        raise ValueError(labels)
    return pred, lab


def probs(pred):
    return 1.0 / (1.0 + np.exp(-pred))


# ------------------------------------------------------------------------------- /loss

def test_loss_default_is_mean_cross_entropy_on_logits(client):
    pred, lab = rng_data(50)
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist()})
    assert_same(body, expected_loss_body(kernels.loss(pred, lab)))
    assert body["input"] == "logits" and body["loss_type"] == "cross_entropy"
    assert body["reduction"] == "mean" and body["losses"] is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_loss_reductions(client, reduction, weighted):
    pred, lab = rng_data(40, seed=1, labels="soft")
    req = {"predictions": pred.tolist(), "labels": lab.tolist(), "reduction": reduction}
    w = None
    if weighted:
        w = np.random.default_rng(2).uniform(0.0, 3.0, 40)
        req["sample_weight"] = w.tolist()
    body = ok(client, "/loss", req)
    r = kernels.loss(pred, lab, reduction=reduction, sample_weight=w)
    assert_same(body, expected_loss_body(r, reduction=reduction))
    # the semantics, independently of the kernels' reductions (approximately)
    plain = kernels.loss(pred, lab, reduction="none").losses
    ww = np.ones(40) if w is None else w
    if reduction == "none":
        assert body["loss"] is None
        np.testing.assert_allclose(json_array(body["losses"]), ww * plain, rtol=1e-15)
    elif reduction == "sum":
        assert body["losses"] is None
        assert math.isclose(body["loss"], float(np.sum(ww * plain)), rel_tol=1e-12)
    else:
        assert math.isclose(body["loss"], float(np.sum(ww * plain) / np.sum(ww)), rel_tol=1e-12)
    # stats describe the unweighted per-element losses
    assert body["stats"]["count"] == 40
    assert math.isclose(body["stats"]["sum"], float(plain.sum()), rel_tol=1e-12)


FORMS = [
    # (input, loss, options, label kind)
    ("logits", "cross_entropy", {}, "soft"),
    ("logits", "cross_entropy", {"label_smoothing": 0.1}, "binary"),
    ("probabilities", "cross_entropy", {}, "binary"),
    ("probabilities", "cross_entropy", {"eps": 1e-7}, "soft"),
    ("probabilities", "focal", {"gamma": 1.5, "alpha": 0.25}, "binary"),
    ("probabilities", "squared_error", {"label_smoothing": 0.2}, "binary"),
    ("logits", "focal", {"gamma": 0.0}, "soft"),
    ("logits", "squared_error", {}, "binary"),
    ("logits", "hinge", {}, "binary"),
    ("margins", "hinge", {}, "pm1"),
    ("margins", "cross_entropy", {}, "pm1"),
    ("logits", "squared_hinge", {}, "binary"),
    ("logits", "modified_huber", {}, "binary"),
    ("margins", "exponential", {}, "pm1"),
    ("logits", "zero_one", {}, "binary"),
]


@pytest.mark.parametrize("input,loss,opts,labels", FORMS,
                         ids=[f"{i}-{l}-{'-'.join(o) or 'plain'}" for i, l, o, _ in FORMS])
def test_loss_forms_and_options(client, input, loss, opts, labels):
    pred, lab = rng_data(33, seed=3, labels=labels)
    if input == "probabilities":
        pred = probs(pred)
        pred[:3] = [0.0, 1.0, 0.5]  # the exact ends (the -100 floor or the eps clip)
    for reduction in ("none", "mean"):
        req = {"predictions": pred.tolist(), "labels": lab.tolist(), "input": input,
               "loss": loss, "reduction": reduction, **opts}
        body = ok(client, "/loss", req)
        r = kernels.loss(pred, lab, input=input, loss=loss, reduction=reduction, **opts)
        assert_same(body, expected_loss_body(r, input=input, loss=loss, reduction=reduction))


def test_loss_nxk_with_pos_weight_per_column(client):
    pred, lab = rng_data(25, k=3, seed=4)
    pw = [0.5, 2.0, 3.0]
    w = np.random.default_rng(5).uniform(0.1, 2.0, 25)
    for reduction in ("none", "mean", "sum"):
        req = {"predictions": pred.tolist(), "labels": lab.tolist(), "pos_weight": pw,
               "sample_weight": w.tolist(), "reduction": reduction}
        body = ok(client, "/loss", req)
        r = kernels.loss(pred, lab, pos_weight=pw, sample_weight=w, reduction=reduction)
        assert_same(body, expected_loss_body(r, reduction=reduction))
    # PyTorch's semantics, independently: pw_j·y·(-log σ(s)) + (1-y)·(-log(1-σ(s))), weighted by row
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist(),
                                "pos_weight": pw, "reduction": "none"})
    ref = (np.array(pw) * lab * np.logaddexp(0.0, -pred) + (1 - lab) * np.logaddexp(0.0, pred))
    np.testing.assert_allclose(json_array(body["losses"]), ref, rtol=1e-12, atol=1e-300)
    assert json_array(body["losses"]).shape == (25, 3)
    # a scalar pos_weight applies to every column
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist(), "pos_weight": 2.5})
    assert_same(body, expected_loss_body(kernels.loss(pred, lab, pos_weight=2.5)))


def test_loss_quantiles_are_keys_in_stats(client):
    pred, lab = rng_data(101, seed=6)
    qs = [0.0, 0.025, 0.5, 0.99, 1.0]
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist(), "quantiles": qs})
    r = kernels.loss(pred, lab, quantiles=qs)
    assert_same(body, expected_loss_body(r))
    assert {"p0", "p2.5", "p50", "p99", "p100"} <= set(body["stats"])
    assert body["stats"]["p0"] == body["stats"]["min"] and body["stats"]["p100"] == body["stats"]["max"]
    plain = kernels.loss(pred, lab, reduction="none").losses
    assert body["stats"]["p50"] == float(np.median(plain))


@pytest.mark.parametrize("spelling", ["strings", "bare_tokens"])
def test_infinite_logits_give_exact_limits(client, spelling):
    """±inf as "Infinity"/"-Infinity" strings or as the bare tokens json.dumps writes:
    the exact limits, and +inf losses written as the string "Infinity", never null."""
    s = [math.inf, -math.inf, math.inf, -math.inf, 0.0]
    y = [1.0, 1.0, 0.0, 0.0, 1.0]
    preds = jsonable(s) if spelling == "strings" else s
    raw = dumps({"predictions": preds, "labels": y, "reduction": "none"})
    assert (b"Infinity" in raw) and ((b'"Infinity"' in raw) == (spelling == "strings"))
    r = post(client, "/loss", raw)
    assert r.status_code == 200, r.text
    body = strict_json(r.text)  # no bare tokens in the answer
    ln2 = math.log(2.0)
    assert body["losses"] == [0.0, "Infinity", "Infinity", 0.0, body["losses"][4]]
    assert math.isclose(body["losses"][4], ln2, rel_tol=1e-15)
    assert body["stats"]["sum"] == "Infinity" and body["stats"]["max"] == "Infinity"
    assert "null" not in r.text.replace('"loss":null', "")
    assert_same(body, expected_loss_body(kernels.loss(np.array(s), np.array(y), reduction="none"),
                                         reduction="none"))
    # the mean is +inf, written as a string
    body = ok(client, "/loss", dumps({"predictions": preds, "labels": y}))
    assert body["loss"] == "Infinity"
    # the gradient σ(s) - y at the limits: 0, -1, 1, 0
    body = ok(client, "/grad", dumps({"predictions": preds, "labels": y, "reduction": "none"}))
    assert body["grad"][:4] == [0.0, -1.0, 1.0, 0.0]
    check_grad_body(body, kernels.grad(np.array(s), np.array(y), reduction="none"), reduction="none")


def test_infinite_margins_give_exact_limits(client):
    s = [math.inf, -math.inf, math.inf, -math.inf]
    y = [1.0, -1.0, -1.0, 1.0]
    for loss, expect in [("cross_entropy", [0.0, 0.0, "Infinity", "Infinity"]),
                         ("hinge", [0.0, 0.0, "Infinity", "Infinity"]),
                         ("exponential", [0.0, 0.0, "Infinity", "Infinity"]),
                         ("zero_one", [0.0, 0.0, 1.0, 1.0])]:
        body = ok(client, "/loss", {"predictions": jsonable(s), "labels": y, "input": "margins",
                                    "loss": loss, "reduction": "none"})
        assert body["losses"] == expect, loss
        assert_same(body["losses"], kernels.loss(np.array(s), np.array(y), input="margins",
                                                 loss=loss, reduction="none").losses)


def test_dtype_float32_returns_float32_rounded_values(client):
    pred, lab = rng_data(40, seed=7)
    p32, l32 = pred.astype(np.float32), lab.astype(np.float32)
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist(),
                                "dtype": "float32", "reduction": "none"})
    r = kernels.loss(p32, l32, reduction="none", dtype="float32")
    assert r.losses.dtype == np.float32
    assert_same(body, expected_loss_body(r, reduction="none"))
    # written as float32 numbers (shortest float32 repr), not as float64 ones
    got = json_array(body["losses"])
    assert all(float(str(np.float32(v))) == v for v in got), body["losses"]
    assert np.any(got != kernels.loss(pred, lab, reduction="none").losses)
    body = ok(client, "/grad", {"predictions": pred.tolist(), "labels": lab.tolist(), "dtype": "float32"})
    g = kernels.grad(p32, l32, dtype="float32")
    assert g.grad.dtype == np.float32
    check_grad_body(body, g)


def test_bool_and_int_labels_are_accepted(client):
    pred, lab = rng_data(10, seed=8)
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": [bool(v) for v in lab]})
    assert_same(body, expected_loss_body(kernels.loss(pred, lab)))
    body = ok(client, "/loss", {"predictions": pred.tolist(), "labels": [int(v) for v in lab]})
    assert_same(body, expected_loss_body(kernels.loss(pred, lab)))


# ------------------------------------------------------------------------------- /grad

GRAD_CASES = [
    ("1d-mean", dict(n=30), {}),
    ("1d-none", dict(n=30), {"reduction": "none"}),
    ("2d-sum-pos_weight", dict(n=12, k=4), {"reduction": "sum", "pos_weight": [1.0, 2.0, 0.5, 3.0]}),
    ("prob-focal", dict(n=30, probs=True), {"input": "probabilities", "loss": "focal", "gamma": 2.5}),
    ("margins-hinge-weighted", dict(n=30, labels="pm1", weighted=True),
     {"input": "margins", "loss": "hinge"}),
    ("smoothing-quantiles", dict(n=30), {"label_smoothing": 0.05, "quantiles": [0.5]}),
]


@pytest.mark.parametrize("spec,opts", [c[1:] for c in GRAD_CASES], ids=[c[0] for c in GRAD_CASES])
def test_grad_wrt_predictions_equals_kernels(client, spec, opts):
    pred, lab = rng_data(spec["n"], k=spec.get("k"), seed=9, labels=spec.get("labels", "binary"))
    if spec.get("probs"):
        pred = probs(pred)
    req = {"predictions": pred.tolist(), "labels": lab.tolist(), **opts}
    kw = dict(opts)
    if spec.get("weighted"):
        w = np.random.default_rng(10).uniform(0, 2, spec["n"])
        req["sample_weight"] = w.tolist()
        kw["sample_weight"] = w
    g = kernels.grad(pred, lab, **kw)
    head = {k: opts[k] for k in ("input", "loss", "reduction") if k in opts}
    check_grad_body(ok(client, "/grad", req), g, **head)
    # wrt: "predictions" spelled out is the default
    check_grad_body(ok(client, "/grad", {**req, "wrt": "predictions"}), g, **head)


def test_grad_wrt_params_equals_logreg_grad(client):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 2, 30).astype(np.float64)
    coef = rng.normal(size=4)
    w = rng.uniform(0.1, 2.0, 30)
    req = {"wrt": "params", "features": X.tolist(), "labels": y.tolist(), "coef": coef.tolist(),
           "intercept": 0.3, "sample_weight": w.tolist(), "l2": 0.1}
    body = ok(client, "/grad", req)
    p = kernels.logreg_grad(X, y, coef, 0.3, sample_weight=w, l2=0.1)
    assert set(body) == {"loss", "grad"} and set(body["grad"]) == {"coef", "intercept"}
    assert_same(body["loss"], p.loss, "loss")
    assert_same(body["grad"]["coef"], p.coef, "grad.coef")
    assert_same(body["grad"]["intercept"], p.intercept, "grad.intercept")
    # the seed's formulas, independently (weighted, with the l2 term)
    z = X @ coef + 0.3
    r = 1.0 / (1.0 + np.exp(-z)) - y
    np.testing.assert_allclose(json_array(body["grad"]["coef"]), (w * r) @ X / w.sum() + 0.1 * coef, rtol=1e-12)
    assert math.isclose(body["grad"]["intercept"], float((w * r).sum() / w.sum()), rel_tol=1e-12)
    ref_loss = float((w * (np.logaddexp(0, z) - y * z)).sum() / w.sum() + 0.05 * coef @ coef)
    assert math.isclose(body["loss"], ref_loss, rel_tol=1e-12)
    # defaults: intercept 0, no weights, no l2
    body = ok(client, "/grad", {"wrt": "params", "features": X.tolist(), "labels": y.tolist(),
                                "coef": coef.tolist()})
    p = kernels.logreg_grad(X, y, coef)
    assert_same(body, {"loss": p.loss, "grad": {"coef": p.coef, "intercept": p.intercept}})


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_grad_wrt_params_never_nan_for_finite_input(client):
    # z = 1e-200*1e200 + 1e-200*1e200 = 2 exactly; the loss is log(1 + e^-2); l2 = 0
    req = {"wrt": "params", "features": [[1e-200, 1e-200]], "labels": [1], "coef": [1e200, 1e200]}
    r = post(client, "/grad", req)
    assert r.status_code == 200
    assert "NaN" not in r.text
    assert math.isclose(strict_json(r.text)["loss"], math.log1p(math.exp(-2.0)), rel_tol=1e-15)


def test_content_type_with_parameters_is_accepted(client):
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        r = post(client, "/loss", {"predictions": [1.0], "labels": [1]}, headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)


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
PARAMS = {"wrt": "params", "features": [[0.5, 1.0], [-1.5, 2.0], [0.0, -1.0]], "labels": [1, 0, 1],
          "coef": [0.1, -0.2]}

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
     ["label_smoothing"], re.compile(r"^label_smoothing: input should be less than 1")),
    ("label_smoothing-negative", "/loss", {"predictions": P, "labels": Y, "label_smoothing": -0.1},
     ["label_smoothing"], re.compile(r"^label_smoothing: input should be greater than or equal to 0")),
    ("label_smoothing-margins", "/loss",
     {"predictions": P, "labels": [1, -1, 1], "input": "margins", "label_smoothing": 0.1},
     ["label_smoothing"], re.compile(r"^label_smoothing applies to cross_entropy, focal and squared_error")),
    ("label_smoothing-string", "/loss", {"predictions": P, "labels": Y, "label_smoothing": "0.1"},
     ["label_smoothing"], re.compile(r"^label_smoothing: input should be a valid number")),
    ("eps-0", "/loss", {"predictions": [0.5], "labels": [1], "input": "probabilities", "eps": 0.0},
     ["eps"], re.compile(r"^eps: input should be greater than 0")),
    ("eps-half", "/loss", {"predictions": [0.5], "labels": [1], "input": "probabilities", "eps": 0.5},
     ["eps"], re.compile(r"^eps: input should be less than 0.5")),
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
     ["quantiles", 1], re.compile(r"^quantiles\[1\]: input should be less than or equal to 1")),
    ("quantile-negative", "/loss", {"predictions": P, "labels": Y, "quantiles": [-0.1]},
     ["quantiles", 0], re.compile(r"^quantiles\[0\]: input should be greater than or equal to 0")),
    ("gamma-negative", "/loss", {"predictions": P, "labels": Y, "loss": "focal", "gamma": -1},
     ["gamma"], re.compile(r"^gamma: input should be greater than or equal to 0")),
    ("alpha-above-1", "/loss", {"predictions": P, "labels": Y, "loss": "focal", "alpha": 1.5},
     ["alpha"], re.compile(r"^alpha: input should be less than or equal to 1")),
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
     ["l2"], re.compile(r"^l2: input should be greater than or equal to 0")),
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
    ("pos_weight", [1.0, "Infinity"], [1], "pos_weight[1]: input should be a valid number (got 'Infinity')"),
    ("pos_weight", [1.0, None], [1], "pos_weight[1]: input should be a valid number (got None)"),
    ("pos_weight", [[1.0]], [0], "pos_weight[0]: input should be a valid number"),
    ("pos_weight", "x", [], "pos_weight: input should be a number or an array (got 'x')"),
    ("pos_weight", True, [], "pos_weight: input should be a number or an array (got True)"),
    ("pos_weight", {"a": 1}, [], "pos_weight: input should be a number or an array"),
    ("eps", "Infinity", [], "eps: input should be a valid number (got 'Infinity')"),
    ("eps", [0.1], [], "eps: input should be a valid number"),
    ("alpha", "0.5", [], "alpha: input should be a valid number (got '0.5')"),
    ("quantiles", [0.5, "Infinity", 2.0], [1], "quantiles[1]: input should be a valid number (got 'Infinity')"),
    ("quantiles", [1.5, 2.0], [0], "quantiles[0]: input should be less than or equal to 1 (got 1.5)"),
    ("quantiles", 0.5, [], "quantiles: input should be a valid list (got 0.5)"),
    ("gamma", [2.0], [], "gamma: input should be a valid number"),
]


@pytest.mark.parametrize("path", ["/loss", "/grad"])
@pytest.mark.parametrize("field,value,where,msg", UNION_ERRORS, ids=[f"{c[0]}-{c[1]!r}" for c in UNION_ERRORS])
def test_option_errors_are_one_error_at_field_and_index(client, path, field, value, where, msg):
    """`"pos_weight": [1.0, "Infinity"]` gave two errors, one at loc
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


# ------------------------------------------------------------------------ request ids

def test_request_id_echoed_or_generated(client):
    r = post(client, "/loss", {"predictions": [1.0], "labels": [1]},
             headers={**JSON, "x-request-id": "client-id-42"})
    assert r.headers["x-request-id"] == "client-id-42"
    r = post(client, "/loss", {"predictions": [1.0], "labels": [7]},
             headers={**JSON, "x-request-id": "client-id-43"})
    assert r.status_code == 422 and r.headers["x-request-id"] == "client-id-43"
    ids = set()
    for bad in (None, "has space", "x" * 129, "tab\tid"):
        headers = dict(JSON) if bad is None else {**JSON, "x-request-id": bad}
        r = post(client, "/loss", {"predictions": [1.0], "labels": [1]}, headers=headers)
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        ids.add(rid)
    assert len(ids) == 4  # a new id each time
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["x-request-id"])


def test_access_log_line_has_the_request_id(client, caplog):
    with caplog.at_level(logging.INFO, logger="lossd.access"):
        post(client, "/loss", {"predictions": [1.0], "labels": [1]},
             headers={**JSON, "x-request-id": "log-me-7"})
    lines = [r.getMessage() for r in caplog.records if r.name == "lossd.access"]
    assert any('"POST /loss" 200' in m and "rid=log-me-7" in m for m in lines), lines


# ----------------------------------------------------------------------------- auth

def test_bearer_token_required_when_set(token_client):
    c = token_client
    req = dumps({"predictions": [1.0], "labels": [1]})
    for path in ("/loss", "/grad"):
        r = c.post(path, content=req, headers=JSON)
        assert r.status_code == 401
        assert r.json()["detail"] == "bearer token missing: send 'Authorization: Bearer <token>'"
        assert r.headers["www-authenticate"] == "Bearer"
        for auth in ("Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
            r = c.post(path, content=req, headers={**JSON, "authorization": auth})
            assert r.status_code == 401, auth
            assert r.json()["detail"] == "bearer token wrong: send 'Authorization: Bearer <token>'"
        r = c.post(path, content=req, headers={**JSON, "authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        # RFC 7235: the scheme name is case-insensitive
        r = c.post(path, content=req, headers={**JSON, "authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200, r.text
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_health_readiness_and_docs_stay_open_with_a_token(token_client):
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css",
                 "/docs/oauth2-redirect"):
        r = token_client.get(path)
        assert r.status_code == 200, (path, r.status_code)
    schema = token_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearer": []}]


def test_refused_requests_are_counted_and_logged(caplog):
    try:
        with _client(Settings(warmup=False, api_token=TOKEN)) as c:  # server exceptions raise
            with caplog.at_level(logging.INFO, logger="lossd.access"):
                r = c.post("/loss", content=dumps({"predictions": [1.0], "labels": [1]}), headers=JSON)
            assert r.status_code == 401
            assert any('"POST /loss" 401' in m.getMessage() for m in caplog.records)
            text = c.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
            assert _sample(text, "lossd_requests_total", route="/loss", method="POST", status="401") == 1
    finally:
        kernels.set_threads(None)


# --------------------------------------------------------------------------- readiness

def _wait_status(c, path, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(path)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def test_readyz_is_503_until_warmup_has_compiled_everything(monkeypatch):
    release = threading.Event()
    started = threading.Event()

    def slow_warmup(progress=None):
        progress(3, 42)
        started.set()
        release.wait(10.0)
        return 42

    monkeypatch.setattr(kernels, "warmup", slow_warmup)
    try:
        with _client(Settings(warmup=True)) as c:
            assert started.wait(5.0)
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "warming up", "signatures": 3, "total": 42}
            assert c.get("/healthz").json() == {"status": "ok"}
            # a request does not wait for the warm-up (this session's kernels are compiled)
            pred, lab = rng_data(5)
            body = ok(c, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist()})
            assert_same(body, expected_loss_body(kernels.loss(pred, lab)))
            release.set()
            r = _wait_status(c, "/readyz", 200)
            assert r.status_code == 200 and r.json() == {"status": "ready", "signatures": 42}
    finally:
        release.set()
        kernels.set_threads(None)


def test_readyz_reports_a_failed_warmup(monkeypatch, caplog):
    def broken(progress=None):
        raise RuntimeError("no compiler today in /opt/secret/path")

    monkeypatch.setattr(kernels, "warmup", broken)
    try:
        with _client(Settings(warmup=True)) as c:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and c.get("/readyz").json()["status"] == "warming up":
                time.sleep(0.02)
            r = c.get("/readyz")
            assert r.status_code == 503
            # the client learns the fact; the error (which may name files) goes to the log only
            assert r.json() == {"status": "failed"}
            assert "no compiler today in /opt/secret/path" in caplog.text
            assert c.get("/healthz").status_code == 200
    finally:
        kernels.set_threads(None)


def test_readyz_with_the_real_warmup_and_without_warmup():
    expected = kernels.warmup()  # compiled already: returns the signature count at once
    try:
        with _client(Settings(warmup=True)) as c:
            r = _wait_status(c, "/readyz", 200, timeout=60)
            assert r.status_code == 200 and r.json() == {"status": "ready", "signatures": expected}
        with _client(Settings(warmup=False)) as c:
            assert c.get("/readyz").status_code == 200
    finally:
        kernels.set_threads(None)


# ----------------------------------------------------------------------------- metrics

def _sample(text: str, name: str, **labels) -> float:
    total = 0.0
    found = False
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
                found = True
    return total if found else 0.0


def test_metrics_count_requests_and_elements():
    try:
        with _client(Settings(warmup=False)) as c:
            sizes = [5, 7, 1]
            for n in sizes:
                ok(c, "/loss", {"predictions": [0.5] * n, "labels": [1] * n})
            ok(c, "/loss", {"predictions": [[0.5, 1.0, 2.0]] * 2, "labels": [[1, 0, 1]] * 2})  # 6
            ok(c, "/grad", {"predictions": [0.5] * 4, "labels": [1] * 4})
            ok(c, "/grad", PARAMS)  # 3 x 2 features
            post(c, "/loss", {"predictions": [0.5], "labels": [3]})  # 422
            c.get("/nope/1")
            c.get("/nope/2")
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
    finally:
        kernels.set_threads(None)
    assert _sample(text, "lossd_requests_total", route="/loss", method="POST", status="200") == 4
    assert _sample(text, "lossd_requests_total", route="/loss", method="POST", status="422") == 1
    assert _sample(text, "lossd_requests_total", route="/grad", method="POST", status="200") == 2
    assert _sample(text, "lossd_elements_total", route="/loss") == sum(sizes) + 6
    assert _sample(text, "lossd_elements_total", route="/grad") == 4 + 6
    # unknown paths share one label (no unbounded label values)
    assert _sample(text, "lossd_requests_total", route="unmatched", status="404") == 2
    assert _sample(text, "lossd_request_duration_seconds_count", route="/loss") == 5
    assert "lossd_requests_in_flight" in text


# ------------------------------------------------------------------------------- docs

def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_render_without_internet(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html, "the page loads something from the internet"
    urls = _asset_urls(html)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "/openapi.json" in html
    static = resources.files("fastapi_offline") / "static"
    types = {".css": "text/css", ".js": "javascript", ".png": "image/png"}
    for u in urls:
        a = client.get(u)
        assert a.status_code == 200, u
        name = u.rsplit("/", 1)[1]
        assert a.content == (static / name).read_bytes(), u
        assert types[name[name.rfind("."):]] in a.headers["content-type"], (u, a.headers["content-type"])
    if page == "/docs":
        assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
        assert any(u.endswith("swagger-ui.css") for u in urls)
        assert client.get("/docs/oauth2-redirect").status_code == 200
    else:
        assert any(u.endswith("redoc.standalone.js") for u in urls)


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
    "pos_weight": ({"number", "array", "null"}, None, None, {}),
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
    assert set(lr) == {"loss", "losses", "stats", "input", "loss_type", "reduction"}
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


# ---------------------------------------------------------------------------- settings

def test_settings_from_env_types():
    env = {"LOSSD_HOST": "127.0.0.2", "LOSSD_PORT": "8123", "LOSSD_WORKERS": "3", "LOSSD_THREADS": "1",
           "LOSSD_MAX_BODY_BYTES": "2048", "LOSSD_LOG_LEVEL": "debug", "LOSSD_API_TOKEN": "t0k",
           "LOSSD_WARMUP": "false", "LOSSD_ACCESS_LOG": "0", "LOSSD_MAX_QUEUE": "5",
           "LOSSD_MAX_CONCURRENCY": "4", "LOSSD_INLINE_BYTES": "0", "UNRELATED": "x"}
    s = Settings.from_env(env)
    assert (s.host, s.port, s.workers, s.threads, s.max_body_bytes) == ("127.0.0.2", 8123, 3, 1, 2048)
    assert (s.log_level, s.api_token, s.warmup, s.access_log) == ("debug", "t0k", False, False)
    assert (s.max_queue, s.max_concurrency, s.inline_bytes) == (5, 4, 0)
    assert all(type(getattr(s, k)) is int for k in ("port", "workers", "threads", "max_body_bytes"))
    assert Settings.from_env(s.to_env()) == s  # what worker processes read back


def test_settings_defaults_and_overrides():
    s = Settings.from_env({})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.max_body_bytes == 64 * 1024 * 1024 and s.log_level == "info" and s.api_token is None
    assert s.threads == max(1, available_cores()) and s.warmup is True
    assert Settings.from_env({"LOSSD_WORKERS": "256"}).threads == 1
    assert Settings.from_env({"LOSSD_PORT": "", "LOSSD_API_TOKEN": ""}) == s  # empty = unset
    # flags win over the environment; None (flag not given) does not
    assert Settings.from_env({"LOSSD_PORT": "1234"}, port=4321).port == 4321
    assert Settings.from_env({"LOSSD_PORT": "1234"}, port=None).port == 1234


@pytest.mark.parametrize("var,value", [
    ("LOSSD_PORT", "abc"), ("LOSSD_PORT", "70000"), ("LOSSD_PORT", "-1"), ("LOSSD_PORT", "80.5"),
    ("LOSSD_WORKERS", "0"), ("LOSSD_WORKERS", "many"), ("LOSSD_THREADS", "0"),
    ("LOSSD_MAX_BODY_BYTES", "10"), ("LOSSD_MAX_BODY_BYTES", "1e6x"), ("LOSSD_LOG_LEVEL", "loud"),
    ("LOSSD_WARMUP", "maybe"), ("LOSSD_MAX_QUEUE", "-1"),
])
def test_settings_bad_values_name_the_variable(var, value):
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value), str(info.value)


SETTING_FLAGS = [  # lossd serve's flags with a bad value each (argparse checks the types)
    ("--port", "70000", "LOSSD_PORT"), ("--port", "-1", "LOSSD_PORT"), ("--workers", "0", "LOSSD_WORKERS"),
    ("--threads", "0", "LOSSD_THREADS"), ("--max-body-bytes", "10", "LOSSD_MAX_BODY_BYTES"),
]


@pytest.mark.parametrize("flag,value,var", SETTING_FLAGS)
def test_bad_flag_values_name_the_flag_not_the_variable(flag, value, var, monkeypatch, capsys):
    """Issue 11 item 13: `lossd serve --port 70000` said LOSSD_PORT."""
    from lossd.service import cli

    for k in [k for k in os.environ if k.startswith("LOSSD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(var, "8")  # a valid value in the variable: the flag overrides it
    code = cli.main(["serve", flag, value])  # refused before anything is served
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"lossd: bad lossd settings: {flag}: "), err
    assert var not in err and f"(got {int(value)})" in err, err
    # the same value from the environment names the variable
    monkeypatch.setenv(var, value)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lossd: bad lossd settings: {var}: ") and flag not in err, err


def test_settings_overrides_are_named_as_flags():
    with pytest.raises(ValueError) as info:
        Settings.from_env({"LOSSD_PORT": "70000"}, max_body_bytes=10)
    msg = str(info.value)
    assert "LOSSD_PORT: " in msg and "--max-body-bytes: " in msg and "LOSSD_MAX_BODY_BYTES" not in msg, msg


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
