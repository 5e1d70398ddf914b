"""The same bits on every transport of a real server (hypothesis; issue 12).

test_service_properties.py checks every path in-process, for many examples; here fewer
examples of the same strategy go to a real ``lossd serve`` on 127.0.0.1: the JSON API
(fast, orjson and stdlib paths), OIP JSON, OIP binary and the Python client
(``lossd_client``, binary OIP) against ``kernels`` in this process, bit for bit, or the
same refusal. The logistic model (``wrt: params``, OIP model ``grad``) too, over
arbitrary finite values, which reach an infinite loss and coef gradient (huge l2).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from lossd import kernels

import test_service_properties as SP  # a module object: its tests are not collected twice
from profiles import examples
from service_helpers import assert_oip_result, assert_same, jsonable, oip_frame, oip_outputs, strict_json

lossd_client = pytest.importorskip("lossd_client")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    with lossd_client.Client(server.url) as c:
        yield c


def _client_bits(r: Any, want: dict[str, Any], where: str) -> None:
    assert_oip_result({**({"loss": np.array([r.loss])} if r.loss is not None else {}),
                       **({"losses": r.losses} if r.losses is not None else {}),
                       **({"grad": r.grad} if getattr(r, "grad", None) is not None else {}),
                       **{k: np.array([v], dtype=np.float64) for k, v in r.stats.items()}},
                      want, where)


@examples(80)
@given(req=SP.requests(), route=st.sampled_from(["loss", "grad"]))
def test_every_transport_of_a_real_server_gives_the_kernels_bits(http, client, req, route):
    want = SP._kernels(req, route)
    event("refused" if "error" in want else "answered")
    SP.check_every_path(http, route, req, want, check_fast=False)
    # the Python client, over binary OIP
    kw = {k: v for k, v in req.items() if k not in ("predictions", "labels")}
    kw["quantiles"] = tuple(kw.get("quantiles", ()))
    call = client.loss if route == "loss" else client.grad
    if "error" in want:
        with pytest.raises(lossd_client.LossdError) as exc:
            call(req["predictions"], req["labels"], **kw)
        assert want["error"] in str(exc.value)
    else:
        _client_bits(call(req["predictions"], req["labels"], **kw), want, "lossd_client")


finite = st.one_of(st.floats(-10.0, 10.0), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, 5e-324, 1e300, -1e300]))


@st.composite
def params_requests(draw) -> dict[str, Any]:
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    X = np.array(draw(st.lists(finite, min_size=n * d, max_size=n * d))).reshape(n, d)
    y = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    coef = np.array(draw(st.lists(finite, min_size=d, max_size=d)))
    out = {"features": X, "labels": y, "coef": coef, "intercept": draw(finite),
           "l2": draw(st.one_of(st.just(0.0), st.floats(0.0, 1e3), st.sampled_from([1e300, 1.7976931348623157e308])))}
    if draw(st.booleans()):
        w = np.array(draw(st.lists(st.floats(0.0, 1e3), min_size=n, max_size=n)))
        w[0] = max(w[0], 0.5)
        out["sample_weight"] = w
    return out


@examples(80)
@given(params_requests())
def test_logistic_model_gives_the_kernels_bits_on_every_transport(http, client, req):
    try:
        p = kernels.logreg_grad(req["features"], req["labels"], req["coef"], req["intercept"],
                                sample_weight=req.get("sample_weight"), l2=req["l2"])
        want: dict[str, Any] = {"loss": p.loss, "coef": p.coef, "intercept": p.intercept}
        event(f"loss finite: {math.isfinite(p.loss)}")
    except ValueError as exc:
        want = {"error": str(exc)}
        event("refused")
    body = {"wrt": "params", **{k: (jsonable(v) if isinstance(v, np.ndarray) else v) for k, v in req.items()}}
    r = http.post("/grad", content=json.dumps(body, allow_nan=False), headers={"content-type": "application/json"})
    if "error" in want:
        assert r.status_code == 422 and r.json()["detail"][0]["msg"] == want["error"], r.text
    else:
        assert r.status_code == 200, r.text
        got = strict_json(r.text)
        assert_same(got, {"loss": want["loss"], "grad": {"coef": want["coef"], "intercept": want["intercept"]}})
    tensors = {k: req[k] for k in ("features", "labels", "coef", "sample_weight") if k in req}
    params = {"wrt": "params", "intercept": req["intercept"], "l2": req["l2"]}
    for path, binary in (("OIP JSON", False), ("OIP binary", True)):
        frame, headers = oip_frame(tensors, params, binary=binary)
        r = http.post("/v2/models/grad/infer", content=frame, headers=headers)
        if "error" in want:
            assert r.status_code == 400 and r.json() == {"error": want["error"]}, (path, r.text)
            continue
        assert r.status_code == 200, (path, r.text)
        got = oip_outputs(r.content, r.headers)
        assert set(got) == {"loss", "coef_grad", "intercept_grad"}, (path, sorted(got))
        for key, value in (("loss", np.array([want["loss"]])), ("coef_grad", want["coef"]),
                           ("intercept_grad", np.array([want["intercept"]]))):
            assert got[key].dtype == np.float64 and got[key].tobytes() == value.astype(np.float64).tobytes(), \
                (path, key, got[key], value)
    if "error" in want:
        with pytest.raises(lossd_client.LossdError):
            client.logreg_grad(req["features"], req["labels"], req["coef"], req["intercept"],
                               sample_weight=req.get("sample_weight"), l2=req["l2"])
    else:
        q = client.logreg_grad(req["features"], req["labels"], req["coef"], req["intercept"],
                               sample_weight=req.get("sample_weight"), l2=req["l2"])
        assert np.float64(q.loss).tobytes() == np.float64(want["loss"]).tobytes()
        assert q.coef.tobytes() == want["coef"].tobytes() and q.intercept == want["intercept"]
