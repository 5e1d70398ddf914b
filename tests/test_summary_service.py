"""Mergeable summaries over the service (real server, 2 workers, gRPC on): ``"summary": true``
on JSON /loss and /grad, the BYTES output ``summary`` over OIP JSON, OIP binary and gRPC,
the model metadata, bad values as 4xx, and the Python client sharding one dataset over
several requests and merging the states it gets back against the one-pass kernels'
summary (count, min, max, inf_count exact; sums, mean and loss within 1 ulp of the exact
values). All traffic on 127.0.0.1; every wait bounded."""

from __future__ import annotations

import asyncio
import base64
import json
from fractions import Fraction

import httpx
import numpy as np
import pytest

from lossd import kernels
from lossd.kernels import LossSummary

import lossd_client
from lossd_client import AsyncClient, Client
from service_helpers import lossd_serve_grpc
from test_summary import state, ulps

pytestmark = pytest.mark.usefixtures("server_never_5xx")

TIMEOUT = 30.0
RNG = np.random.default_rng(1515)


@pytest.fixture(scope="module")
def server():
    s = lossd_serve_grpc("--workers", "2")
    try:
        yield s.start()
    finally:
        s.close()


def _data(n: int = 600, k: int = 1):
    pred = RNG.standard_normal((n, k) if k > 1 else n) * 4
    lab = (RNG.random(pred.shape) < 0.5).astype(np.float64)
    return pred, lab, RNG.random(n) * 3


def _same_state(got: LossSummary, want: LossSummary) -> None:
    """Equal states; the sketches hold the same number of values (KLL's compaction draws
    random bits, so their bytes may differ)."""
    assert state(got) == state(want)
    assert got.count == want.count


@pytest.mark.parametrize("op", ["loss", "grad"])
def test_json_summary_true_returns_the_state(server, op):
    pred, lab, w = _data(k=2)
    body = {"predictions": pred.tolist(), "labels": lab.tolist(), "sample_weight": w.tolist(), "summary": True,
            "quantiles": [0.5]}
    r = httpx.post(f"{server.url}/{op}", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    got = LossSummary.from_dict(r.json()["summary"])
    _same_state(got, kernels.summarize(pred, lab, sample_weight=w))
    assert got.loss == r.json()["loss"] or ulps(got.loss, r.json()["loss"]) <= 1
    del body["summary"]
    assert "summary" not in httpx.post(f"{server.url}/{op}", json=body, timeout=TIMEOUT).json()


def test_json_infinite_losses_travel_as_strings(server):
    pred, lab = np.array([-1000.0, 1.0]), np.array([1.0, 1.0])
    r = httpx.post(f"{server.url}/loss", json={"predictions": pred.tolist(), "labels": lab.tolist(),
                                               "input": "margins", "loss": "exponential", "summary": True},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    d = r.json()["summary"]
    assert d["sum"][0] == "Infinity" and d["inf_count"] == 1
    _same_state(LossSummary.from_dict(d), kernels.summarize(pred, lab, input="margins", loss="exponential"))


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_json_summary_must_be_a_bool(server, value):
    r = httpx.post(f"{server.url}/loss", json={"predictions": [0.5], "labels": [1], "summary": value},
                   timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "summary"


def test_summary_does_not_apply_to_params(server):
    r = httpx.post(f"{server.url}/grad", json={"wrt": "params", "features": [[1.0]], "labels": [1], "coef": [0.5],
                                               "summary": True}, timeout=TIMEOUT)
    assert r.status_code == 422 and "summary" in r.text


def test_oip_json_output_is_base64_bytes(server):
    pred, lab, w = _data()
    body = {"inputs": [{"name": "predictions", "datatype": "FP64", "shape": [pred.size], "data": pred.tolist()},
                       {"name": "labels", "datatype": "FP64", "shape": [lab.size], "data": lab.tolist()},
                       {"name": "sample_weight", "datatype": "FP64", "shape": [w.size], "data": w.tolist()}],
            "parameters": {"summary": True}}
    r = httpx.post(f"{server.url}/v2/models/loss/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    s = out["summary"]
    assert s["datatype"] == "BYTES" and s["shape"] == [1] and s["parameters"]["content_type"] == "base64"
    _same_state(LossSummary.from_bytes(base64.b64decode(s["data"][0])), kernels.summarize(pred, lab, sample_weight=w))
    # asked by name only: just that output
    body["outputs"] = [{"name": "summary"}]
    r = httpx.post(f"{server.url}/v2/models/loss/infer", json=body, timeout=TIMEOUT)
    assert [o["name"] for o in r.json()["outputs"]] == ["summary"]
    body["parameters"] = {"summary": "true"}
    r = httpx.post(f"{server.url}/v2/models/loss/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and "summary" in r.json()["error"]
    body["parameters"] = {}
    r = httpx.post(f"{server.url}/v2/models/loss/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and "summary" in r.json()["error"]  # not produced without summary = true


@pytest.mark.parametrize("model", ["loss", "grad"])
def test_oip_binary_output_with_tritonclient(server, model):
    http = pytest.importorskip("tritonclient.http")
    pred, lab, _ = _data(k=3)
    c = http.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=TIMEOUT)
    try:
        inputs = []
        for name, a in (("predictions", pred), ("labels", lab)):
            t = http.InferInput(name, list(a.shape), "FP64")
            t.set_data_from_numpy(a, binary_data=True)
            inputs.append(t)
        outs = [http.InferRequestedOutput("summary", binary_data=True), http.InferRequestedOutput("loss")]
        r = c.infer(model, inputs, outputs=outs, parameters={"summary": True, "reduction": "sum"})
        blob = r.as_numpy("summary")
        assert blob.shape == (1,) and r.get_output("summary")["datatype"] == "BYTES"
        got = LossSummary.from_bytes(blob[0])
        _same_state(got, kernels.summarize(pred, lab))
        assert ulps(got.reduce("sum"), float(r.as_numpy("loss")[0])) <= 1
        meta = c.get_model_metadata(model)
        assert {"name": "summary", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"}} \
            in meta["outputs"]
    finally:
        c.close()


def test_grpc_output(server):
    grpc = pytest.importorskip("tritonclient.grpc")
    pred, lab, w = _data()
    c = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        inputs = []
        for name, a in (("predictions", pred), ("labels", lab), ("sample_weight", w)):
            t = grpc.InferInput(name, list(a.shape), "FP64")
            t.set_data_from_numpy(a)
            inputs.append(t)
        r = c.infer("grad", inputs, parameters={"summary": True}, client_timeout=TIMEOUT)
        _same_state(LossSummary.from_bytes(r.as_numpy("summary")[0]), kernels.summarize(pred, lab, sample_weight=w))
        meta = c.get_model_metadata("loss", as_json=True)
        assert any(o["name"] == "summary" and o["datatype"] == "BYTES" for o in meta["outputs"])
    finally:
        c.close()


def _exact_check(merged, pred, lab, w, **opts) -> None:
    one = kernels.summarize(pred, lab, sample_weight=w, **opts)
    losses = kernels.loss(pred, lab, reduction="none", **opts).losses.reshape(-1)
    for f in ("count", "inf_count", "min", "max"):
        assert getattr(merged, f) == getattr(one, f), f
    k = losses.size // len(w)
    finite = np.isfinite(losses)
    ws = np.repeat(w, k)
    exact = {"sum": sum(map(Fraction, losses[finite].tolist()), Fraction(0)),
             "weight_sum": sum(map(Fraction, ws.tolist()), Fraction(0))}
    if merged.inf_count:
        assert merged.sum == one.sum == float("inf")
        assert merged.weighted_sum == one.weighted_sum
    else:
        exact["weighted_sum"] = sum((Fraction(a) * Fraction(b) for a, b in zip(losses.tolist(), ws.tolist())),
                                    Fraction(0))
        assert ulps(merged.sum, float(exact["sum"])) <= 1 and ulps(merged.mean, float(exact["sum"] / losses.size)) <= 1
        assert ulps(merged.weighted_sum, float(exact["weighted_sum"])) <= 1
        assert ulps(merged.loss, float(exact["weighted_sum"] / exact["weight_sum"])) <= 1
        assert merged.m2 == pytest.approx(one.m2, rel=1e-9)
    assert ulps(merged.weight_sum, float(exact["weight_sum"])) <= 1


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_client_shards_and_merges(server, binary):
    """One dataset in 7 uneven shards, one request each (the 2 workers share them), merged
    client-side in a tree: the one-pass summary's count, min, max exactly, sums within 1 ulp."""
    n, k = 5000, 2
    pred = RNG.standard_normal((n, k)) * 50
    lab = np.where(RNG.random((n, k)) < 0.5, 1.0, -1.0)
    pred[17, 1] = -1000.0  # e^1000: an infinite loss in one shard
    w = RNG.random(n) * 2
    w[::11] = 0.0
    opts = {"input": "margins", "loss": "exponential"}
    # reduction sum: a shard may hold only zero weights (the first: w[0] = 0), whose mean is undefined
    cuts = [0, 1, 700, 701, 2500, 3100, 4999, n]
    with Client(server.url, timeout=TIMEOUT, binary=binary) as c:
        states = [c.loss(pred[a:b], lab[a:b], sample_weight=w[a:b], reduction="sum", summary=True,
                         **opts).summary
                  for a, b in zip(cuts[:-1], cuts[1:])]
    assert all(type(s) is lossd_client.LossSummary for s in states)  # the client's own class
    merged = lossd_client.LossSummary.merge_all(states)
    _exact_check(merged, pred, lab, w, **opts)
    # without the infinite element: every sum checked against the exact one
    pred[17, 1] = 1.0
    with Client(server.url, timeout=TIMEOUT, binary=binary) as c:
        states = [c.grad(pred[a:b], lab[a:b], sample_weight=w[a:b], reduction="sum", summary=True,
                         **opts).summary
                  for a, b in zip(cuts[:-1], cuts[1:])]
        assert c.loss(pred[:5], lab[:5], **opts).summary is None
    merged = states[3].merge(states[0]).merge(lossd_client.LossSummary.merge_all(states[4:])).merge(
        states[2].merge(states[1]))
    _exact_check(merged, pred, lab, w, **opts)
    assert json.loads(json.dumps(merged.to_dict())) == merged.to_dict()


def test_async_client_concurrent_shards(server):
    pred, lab, w = _data(n=4000)

    async def run():
        async with AsyncClient(server.url, timeout=TIMEOUT) as c:
            return await asyncio.gather(*(c.loss(pred[a:a + 500], lab[a:a + 500], sample_weight=w[a:a + 500],
                                                 summary=True) for a in range(0, 4000, 500)))

    results = asyncio.run(asyncio.wait_for(run(), 120))
    _exact_check(lossd_client.LossSummary.merge_all([r.summary for r in results]), pred, lab, w)


def test_client_refuses_a_non_bool_through_the_server(server):
    with Client(server.url, timeout=TIMEOUT) as c:
        with pytest.raises(lossd_client.LossdError, match="summary") as e:
            c.loss(np.zeros(2), np.ones(2), summary="yes")
    assert e.value.status == 400
