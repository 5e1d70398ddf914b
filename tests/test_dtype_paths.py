"""One request, one answer (issue 11 item 6): ``dtype: "float32"`` means the same on every
path and transport. Each case runs through

- ``kernels`` in this process, on the inputs rounded to float32 (the contract's meaning),
- the JSON fast path (simdjson: flat finite number lists),
- the JSON orjson path (the same body with one label written as ``true`` and ±inf as
  "Infinity" strings: the fast path does not take it),
- the JSON stdlib path (±inf as the bare tokens of ``json.dumps``), where the case has ±inf,
- OIP with JSON tensors and with binary tensors (FP64, narrowed by the server; and FP32),

all but the first against a real ``lossd serve``, and every answer must have the same
bits (or be the same refusal: 422 over JSON, 400 with the same message over OIP).
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import orjson
import pytest

from lossd import kernels
from lossd.service.codecs import json as codec_json
from lossd.service.fields import ARRAY_FIELDS as _ARRAY_FIELDS

from service_helpers import assert_oip_result, assert_same, jsonable, oip_frame, oip_outputs, strict_json

TIMEOUT = 30.0
RNG = np.random.default_rng(611)
INF = math.inf


def _logits(n):
    return RNG.normal(0.0, 4.0, n)


def _hard(n):
    y = (RNG.random(n) < 0.5).astype(np.float64)
    y[0] = 1.0  # written as `true` on the orjson path
    return y


def _soft(n):
    y = RNG.random(n)
    y[0] = 1.0
    return y


# id, predictions, labels, sample_weight, options (JSON names); values chosen so that
# float32 rounding changes them (0.1, 1/3, normal draws)
CASES = [
    ("plain", _logits(50), _hard(50), None, {}),
    ("weights", _logits(50), _soft(50), RNG.uniform(0.0, 3.0, 50), {}),
    ("weights-sum", _logits(50), _soft(50), np.full(50, 0.1), {"reduction": "sum"}),
    ("none", _logits(30), _soft(30), np.full(30, 1 / 3), {"reduction": "none", "quantiles": [0.5, 0.9]}),
    ("inf", np.array([INF, -INF, 0.1, -INF, 2.5, INF]), np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
     np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), {"reduction": "none"}),
    ("inf-mean", np.array([INF, -INF, 0.1]), np.array([1.0, 0.0, 1.0]), None, {}),
    ("probabilities-focal", 1 / (1 + np.exp(-_logits(40))), _hard(40), RNG.uniform(0.5, 2.0, 40),
     {"input": "probabilities", "loss": "focal", "gamma": 1.5, "alpha": 0.25}),
    ("margins-hinge", _logits(40), np.where(_hard(40) > 0, 1.0, -1.0), None,
     {"input": "margins", "loss": "hinge", "reduction": "none"}),
    ("nxk-pos_weight", _logits((12, 3)), _hard((12, 3)), RNG.uniform(0.1, 2.0, 12),
     {"pos_weight": [0.5, 1.0 / 3.0, 2.0], "reduction": "none"}),
    ("smoothing", _logits(40), _hard(40), np.full(40, 0.7), {"label_smoothing": 0.1}),
    # refused the same way everywhere: a finite value beyond float32 is not silently inf
    ("weight-overflow", np.array([0.5, -1.0]), np.array([1.0, 0.0]), np.array([1e39, 1.0]), {}),
    ("prediction-overflow", np.array([0.5, -3.5e38]), np.array([1.0, 0.0]), None, {}),
    ("label-overflow", np.array([0.5, -1.0]), np.array([1.0, 1e39]), None, {}),
]
ERRORS = {
    "weight-overflow": (["sample_weight", 0], 'sample_weight[0] = 1e+39 is beyond the float32 range (dtype = "float32")'),
    "prediction-overflow": (["predictions", 1], 'predictions[1] = -3.5e+38 is beyond the float32 range (dtype = "float32")'),
    "label-overflow": (["labels", 1], 'labels[1] = 1e+39 is beyond the float32 range (dtype = "float32")'),
}


def _f32(a):
    return None if a is None else np.asarray(a, dtype=np.float64).astype(np.float32)


def _expected(route: str, pred, lab, w, opts, dtype: str) -> dict:
    """The kernels in this process; float32 means the inputs rounded to float32."""
    if dtype == "float32":
        pred, lab, w = _f32(pred), _f32(lab), _f32(w)
    fn = kernels.loss if route == "loss" else kernels.grad
    try:
        r = fn(pred, lab, sample_weight=w, dtype=dtype, **{**opts, "quantiles": tuple(opts.get("quantiles", ()))})
    except ValueError as exc:  # refused: the service must say the same
        return {"error": str(exc)}
    out = {"loss": r.loss, "stats": r.stats}
    if r.losses is not None:
        out["losses"] = r.losses
    if route == "grad":
        out["grad"] = r.grad
    return out


# ------------------------------------------------------------------------------ bodies

def _json_bodies(pred, lab, w, opts, dtype) -> dict[str, bytes]:
    """The same request as each JSON path gets it."""
    req = {"predictions": pred.tolist(), "labels": lab.tolist(), **opts, "dtype": dtype}
    if w is not None:
        req["sample_weight"] = w.tolist()
    bodies = {}
    finite = all(np.isfinite(np.asarray(v)).all() for v in (pred, lab) + (() if w is None else (w,)))
    if finite and pred.ndim == 1:  # flat finite number lists: what simdjson takes
        bodies["fast"] = orjson.dumps(req)
    slow = {**req, "predictions": jsonable(pred), "sample_weight": None if w is None else jsonable(w)}
    first = slow["labels"][0]
    while isinstance(first, list):
        first = first[0]
    labels = [row[:] if isinstance(row, list) else row for row in req["labels"]]
    if isinstance(labels[0], list):
        labels[0][0] = True
    else:
        labels[0] = True  # 1.0 written as true: the same value, no fast path
    assert first == 1.0
    slow["labels"] = labels
    if w is None:
        del slow["sample_weight"]
    bodies["orjson"] = json.dumps(slow, allow_nan=False).encode()
    if not finite:
        bodies["stdlib"] = json.dumps(req, allow_nan=True).encode()  # bare Infinity tokens
    return bodies


def _oip_request(pred, lab, w, opts, dtype, *, binary: bool, wire=np.float64) -> tuple[bytes, dict]:
    tensors = {"predictions": pred, "labels": lab}
    if w is not None:
        tensors["sample_weight"] = w
    tensors = {k: np.asarray(v, dtype=wire) for k, v in tensors.items()}
    params = {k: v for k, v in opts.items() if k not in ("quantiles", "pos_weight")}
    if "quantiles" in opts:
        params["quantiles"] = ",".join(map(repr, opts["quantiles"]))
    if isinstance(opts.get("pos_weight"), list):
        tensors["pos_weight"] = np.array(opts["pos_weight"])  # per column: a tensor, never narrowed
    return oip_frame(tensors, {**params, "dtype": dtype}, binary=binary)


# ------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("route", ["loss", "grad"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_same_bits_on_every_path_and_transport(server, case, route, dtype):
    name, pred, lab, w, opts = case
    error = ERRORS.get(name) if dtype == "float32" else None
    want = {} if error else _expected(route, pred, lab, w, opts, dtype)
    if "error" in want:  # the kernels' refusal, e.g. a label outside [0, 1]
        head = want["error"].split(" ", 1)[0]
        error = ([head.split("[")[0], *map(int, head[head.index("[") + 1:-1].split(", "))], want["error"])
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        bodies = _json_bodies(pred, lab, w, opts, dtype)
        assert ("fast" in bodies) == bool(np.isfinite(pred).all() and pred.ndim == 1)
        for path, body in bodies.items():
            fast = codec_json.decode_body_fast(body, _ARRAY_FIELDS)
            assert (fast is not None) == (path == "fast"), path  # the path really taken
            r = c.post(f"/{route}", content=body, headers={"content-type": "application/json"})
            if error:
                assert r.status_code == 422, (path, r.text)
                assert r.json()["detail"] == [{"type": "value_error", "loc": ["body", *error[0]], "msg": error[1]}]
                continue
            assert r.status_code == 200, (path, r.text)
            got = strict_json(r.text)
            for key, value in want.items():
                assert_same(got[key], value, f"{path}: {key}")
        wires = [np.float64] + ([np.float32] if dtype == "float32" and not error else [])
        for binary in (False, True):
            for wire in wires:  # FP64 narrowed by the server; FP32 rounded by the client
                body, headers = _oip_request(pred, lab, w, opts, dtype, binary=binary, wire=wire)
                r = c.post(f"/v2/models/{route}/infer", content=body, headers=headers)
                where = f"OIP {'binary' if binary else 'JSON'} {np.dtype(wire).name}"
                if error:
                    assert r.status_code == 400 and r.json() == {"error": error[1]}, (where, r.text)
                    continue
                assert r.status_code == 200, (where, r.text)
                assert_oip_result(oip_outputs(r.content, r.headers), want, where)


def test_float32_narrowing_is_what_the_contract_says():
    """The reference itself: float32 inputs are the float64 values rounded to nearest."""
    assert _f32(np.array([0.1]))[0] == np.float32(0.1)
    assert float(_f32(np.array([1 / 3]))[0]) != 1 / 3
