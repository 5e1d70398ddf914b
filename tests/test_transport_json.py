"""The JSON API (/loss, /grad) in-process (FastAPI TestClient), as in ../shared/docs/api.md:
results equal to ``kernels`` bit for bit for every reduction, form and option, N×K with
pos_weight, quantiles, ±inf both ways, float32, bool/int labels, wrt predictions and
params. (Its errors: test_errors.py; request ids: test_middleware.py; the token:
test_auth.py; /readyz, /metrics, /docs: test_operations.py; the schema: test_openapi.py;
settings: test_settings.py; the real server: test_service_server.py.)

Every expected number comes from ``kernels`` called in this process (or from an exact
mathematical limit), never from the service's own output; answers are compared to the
last bit (service_helpers.assert_same).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lossd import kernels

from app_helpers import client, ok, post, probs, rng_data
from service_helpers import (assert_same, check_grad_body, dumps, expected_loss_body, json_array, jsonable,
                             strict_json)


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
