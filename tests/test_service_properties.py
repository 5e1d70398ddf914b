"""Property tests (hypothesis) over the service's paths and transports (issue 11).

1. Any request the kernels answer gets the same bits on every path: arbitrary finite
   and ±inf arrays (subnormals, huge values, soft labels near 0 and 1), float32 or
   float64, weights, options -> ``kernels`` in this process (on float32-rounded inputs
   for ``dtype: "float32"``), the JSON fast path, the orjson path, the stdlib path,
   OIP JSON and OIP binary. A request refused anywhere is refused everywhere with the
   same message (422 over JSON, 400 over OIP).
2. Malformed bodies (duplicate keys at any depth, wrong types, nested junk, unknown
   fields) never get a 5xx, and always get exactly one error that names a field of the
   body (JSON) or a non-empty ``{"error"}`` (OIP); a repeated key is the error reported.

The app runs in this process (FastAPI TestClient) so that hundreds of requests stay
fast; tests/test_dtype_paths.py runs fixed cases against a real server. Examples are
bounded and derandomized under the default hypothesis profile (tests/profiles.py).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from lossd import kernels
from lossd.service import Settings, create_app
from lossd.service.codecs import json as codec_json
from lossd.service.fields import ARRAY_FIELDS as _ARRAY_FIELDS

from profiles import examples
from service_helpers import assert_oip_result, assert_same, jsonable, oip_frame, oip_outputs, strict_json

with warnings.catch_warnings():  # starlette's note about httpx at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

bounded = examples  # n examples under the ci profile, more under long (tests/profiles.py)
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def app():
    try:
        with TestClient(create_app(Settings(warmup=False)), raise_server_exceptions=False) as c:
            yield c
    finally:
        kernels.set_threads(None)


# ------------------------------------------------------------------ 1. same bits

# every magnitude: subnormals, ordinary values, the edges of float32 and float64
magnitudes = st.one_of(
    st.floats(min_value=0.0, max_value=50.0),
    st.floats(min_value=0.0, max_value=1.7976931348623157e308),
    st.floats(min_value=0.0, max_value=1e-300),
    st.floats(min_value=F32_MAX * 0.999, max_value=F32_MAX * 1.001),  # float32 overflow or not
    st.sampled_from([0.0, 5e-324, 1e-45, 37.0, 40.0, 710.0, 745.0, math.inf]),
)
logits = st.builds(lambda m, neg: -m if neg else m, magnitudes, st.booleans())
probabilities = st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.0, 1.0, 5e-324, 1 - 2**-53]))
soft_labels = st.one_of(st.floats(min_value=0.0, max_value=1.0),
                        st.sampled_from([0.0, 1.0, 1e-300, 5e-324, 1e-20, 1 - 2**-53, 0.5]))
weights = st.one_of(st.floats(min_value=0.0, max_value=1e3), st.sampled_from([0.0, 1e-320, 1e308, 0.1, 1e39]))

FORMS = {  # (input, loss): (predictions, labels)
    ("logits", "cross_entropy"): (logits, soft_labels),
    ("logits", "focal"): (logits, soft_labels),
    ("logits", "squared_error"): (logits, soft_labels),
    ("logits", "hinge"): (logits, st.sampled_from([0.0, 1.0])),
    ("probabilities", "cross_entropy"): (probabilities, soft_labels),
    ("probabilities", "focal"): (probabilities, st.sampled_from([0.0, 1.0])),
    ("margins", "exponential"): (logits, st.sampled_from([-1.0, 1.0])),
    ("margins", "modified_huber"): (logits, st.sampled_from([-1.0, 1.0])),
}


@st.composite
def requests(draw) -> dict[str, Any]:
    (input_, loss), (pred_st, lab_st) = draw(st.sampled_from(sorted(FORMS.items())))
    n = draw(st.integers(1, 12))
    k = draw(st.sampled_from([None, None, 1, 3]))
    shape = (n,) if k is None else (n, k)
    size = math.prod(shape)
    pred = np.array(draw(st.lists(pred_st, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    lab = np.array(draw(st.lists(lab_st, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    lab.flat[0] = 1.0  # a label of every form; the orjson path writes it as `true`
    opts: dict[str, Any] = {"input": input_, "loss": loss,
                            "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
                            "dtype": draw(st.sampled_from(["float64", "float32"]))}
    w = None
    if draw(st.booleans()):
        w = np.array(draw(st.lists(weights, min_size=n, max_size=n)), dtype=np.float64)
    if loss == "focal":
        opts["gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0, 7.5]))
        if draw(st.booleans()):
            opts["alpha"] = draw(st.floats(min_value=0.0, max_value=1.0))
    if loss == "cross_entropy" and input_ != "margins" and draw(st.booleans()):
        opts["pos_weight"] = draw(st.floats(min_value=0.0, max_value=100.0))
    if input_ != "margins" and loss in ("cross_entropy", "focal", "squared_error") and draw(st.booleans()):
        opts["label_smoothing"] = draw(st.floats(min_value=0.0, max_value=0.99))
    if draw(st.booleans()):
        opts["quantiles"] = draw(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=3))
    return {"predictions": pred, "labels": lab, "sample_weight": w, **opts}


def _overflow(req: dict[str, Any]) -> str | None:
    """The contract's refusal of dtype float32 for a finite value beyond float32."""
    if req["dtype"] != "float32":
        return None
    for name in ("predictions", "labels", "sample_weight"):
        a = req[name]
        if a is None:
            continue
        with np.errstate(over="ignore"):
            over = np.isinf(a.astype(np.float32)) & np.isfinite(a)
        if over.any():
            where = np.unravel_index(int(np.flatnonzero(over.ravel())[0]), a.shape)
            at = "[" + ", ".join(str(int(i)) for i in where) + "]"
            return f'{name}{at} = {float(a[where])!r} is beyond the float32 range (dtype = "float32")'
    return None


def _kernels(req: dict[str, Any], route: str) -> dict[str, Any]:
    """The answer by ``kernels`` in this process, or {"error": message}."""
    message = _overflow(req)
    if message:
        return {"error": message}
    kw = {k: v for k, v in req.items() if k not in ("predictions", "labels", "sample_weight")}
    kw["quantiles"] = tuple(kw.get("quantiles", ()))
    pred, lab, w = req["predictions"], req["labels"], req["sample_weight"]
    if req["dtype"] == "float32":
        pred, lab = pred.astype(np.float32), lab.astype(np.float32)
        w = None if w is None else w.astype(np.float32)
    fn = kernels.loss if route == "loss" else kernels.grad
    try:
        with np.errstate(all="ignore"):
            r = fn(pred, lab, sample_weight=w, **kw)
    except ValueError as exc:
        return {"error": str(exc)}
    out = {"loss": r.loss, "stats": r.stats, "losses": r.losses}
    if route == "grad":
        out["grad"] = r.grad
    return out


def _json_bodies(req: dict[str, Any]) -> dict[str, bytes]:
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in req.items() if v is not None}
    finite = all(np.isfinite(req[k]).all() for k in ("predictions", "labels", "sample_weight")
                 if req[k] is not None)
    bodies = {}
    if finite and req["predictions"].ndim == 1:
        bodies["fast"] = json.dumps(plain).encode()
    slow = {k: jsonable(v) for k, v in plain.items()}
    labels = slow["labels"]
    if isinstance(labels[0], list):
        labels[0][0] = True
    else:
        labels[0] = True  # = 1: the same value, and no fast path
    bodies["orjson"] = json.dumps(slow, allow_nan=False).encode()
    if not finite:
        bodies["stdlib"] = json.dumps(plain, allow_nan=True).encode()  # bare Infinity tokens
    return bodies


def _oip_bodies(req: dict[str, Any]) -> dict[str, tuple[bytes, dict]]:
    tensors = {k: req[k] for k in ("predictions", "labels", "sample_weight") if req[k] is not None}
    params = {k: v for k, v in req.items() if k not in tensors and k != "sample_weight"}
    if "quantiles" in params:
        if not params["quantiles"]:
            del params["quantiles"]
        else:
            params["quantiles"] = ",".join(map(repr, params["quantiles"]))
    out = {"OIP JSON": oip_frame(tensors, params, binary=False),
           "OIP binary": oip_frame(tensors, params, binary=True)}
    if req["dtype"] == "float32" and _overflow(req) is None:  # the client rounds: FP32 tensors
        with np.errstate(over="ignore"):
            out["OIP binary FP32"] = oip_frame({k: v.astype(np.float32) for k, v in tensors.items()}, params)
    return out


def check_every_path(http, route: str, req: dict, want: dict, *, check_fast: bool = True) -> None:
    """Every JSON body and OIP frame of ``req`` sent with ``http`` (a TestClient or an
    httpx client of a real server) gives ``want``'s bits, or its one refusal."""
    for path, body in _json_bodies(req).items():
        if check_fast:
            assert (codec_json.decode_body_fast(body, _ARRAY_FIELDS) is not None) == (path == "fast"), path
        r = http.post(f"/{route}", content=body, headers={"content-type": "application/json"})
        if "error" in want:
            assert r.status_code == 422, (path, r.text)
            detail = r.json()["detail"]
            assert len(detail) == 1 and detail[0]["msg"] == want["error"], (path, detail)
            continue
        assert r.status_code == 200, (path, r.text)
        got = strict_json(r.text)
        for key, value in want.items():
            assert_same(got[key], value, f"{path}: {key}")
    for path, (body, headers) in _oip_bodies(req).items():
        r = http.post(f"/v2/models/{route}/infer", content=body, headers=headers)
        if "error" in want:
            assert r.status_code == 400 and r.json() == {"error": want["error"]}, (path, r.text)
            continue
        assert r.status_code == 200, (path, r.text)
        assert_oip_result(oip_outputs(r.content, r.headers), want, path)


@bounded(70)
@given(req=requests(), route=st.sampled_from(["loss", "grad"]))
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no NumPy overflow warning on any path
def test_every_path_gives_the_kernels_bits(app, req, route):
    want = _kernels(req, route)
    event("refused" if "error" in want else "answered")
    check_every_path(app, route, req, want)


# -------------------------------------------------------------- 2. malformed bodies

class Obj(list):
    """A JSON object as (key, value) pairs: it may repeat a key."""


def dump(v: Any) -> str:
    if isinstance(v, Obj):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(x)}" for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(dump(x) for x in v) + "]"
    return json.dumps(v, allow_nan=True)  # bare Infinity/NaN tokens too


def first_repeat(v: Any, path: tuple = ()) -> tuple | None:
    """The path of the repeated key the contract reports: depth first in document
    order, an object's own keys before its children's."""
    if isinstance(v, Obj):
        seen = set()
        for k, _ in v:
            if k in seen:
                return (*path, k)
            seen.add(k)
        seen_children = {}
        for k, x in v:
            seen_children.setdefault(k, x)  # a repeated key's first value (no repeat here)
        children = seen_children.items()
    elif isinstance(v, list):
        children = enumerate(v)
    else:
        return None
    for k, x in children:
        found = first_repeat(x, (*path, k))
        if found:
            return found
    return None


FIELDS = ["predictions", "labels", "sample_weight", "input", "loss", "reduction", "pos_weight",
          "label_smoothing", "eps", "gamma", "alpha", "quantiles", "dtype", "wrt", "features", "coef",
          "intercept", "l2"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                    st.text(max_size=4), st.sampled_from(["Infinity", "-Infinity", "NaN", "logits", "params",
                                                          "float32", "none", "focal"]))

@st.composite
def objects(draw, keys: list[str], values) -> Obj:
    """An object of ``values``, now and then with a key repeated."""
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
    pairs = [(k, draw(values)) for k in chosen]
    if pairs and draw(st.integers(0, 7)) == 0:
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(st.sampled_from(chosen)), draw(values)))
    return Obj(pairs)


junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     objects(["a", "b", "labels", "name"], inner)),
                    max_leaves=10)
good = {"predictions": [0.5, -1.0, 2.0], "labels": [1, 0, 1]}


@st.composite
def malformed(draw) -> Obj:
    pairs = [(k, v) for k, v in good.items() if draw(st.booleans())]
    extra = draw(st.lists(st.sampled_from(FIELDS + ["bogus"]), min_size=1, max_size=4, unique=True))
    pairs = [(k, v) for k, v in pairs if k not in extra] + [(k, draw(junk)) for k in extra]
    if draw(st.integers(0, 4)) == 0:  # a repeated top-level key
        pairs.append((draw(st.sampled_from([k for k, _ in pairs])), draw(junk)))
    return Obj(draw(st.permutations(pairs)))


def _names_a_field(detail: list, body: Obj) -> None:
    assert len(detail) == 1, detail
    loc = detail[0]["loc"]
    assert loc[0] == "body" and len(loc) >= 2 and isinstance(loc[1], str), detail
    assert loc[1] in {k for k, _ in body} or detail[0]["type"] == "missing", detail
    assert detail[0]["msg"] and "Traceback" not in detail[0]["msg"], detail


@bounded(150)
@given(body=malformed(), route=st.sampled_from(["/loss", "/grad"]))
def test_malformed_json_bodies_get_one_error_naming_a_field(app, body, route):
    raw = dump(body).encode()
    r = app.post(route, content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), (r.status_code, raw, r.text)
    event(f"status {r.status_code}" + (" duplicate" if first_repeat(body) else ""))
    if r.status_code == 200:
        return
    detail = r.json()["detail"]
    _names_a_field(detail, body)
    repeat = first_repeat(body)
    if repeat:
        assert detail[0]["type"] == "duplicate_key" and detail[0]["loc"] == ["body", *repeat], (raw, detail)
        assert detail[0]["msg"].startswith(f'duplicate key "{repeat[-1]}"'), detail


tensor_fields = objects(["name", "datatype", "shape", "data", "parameters", "x"],
                        st.one_of(junk, st.sampled_from(["predictions", "labels", "FP64", "INT8"]),
                                  st.just([2]), st.just([0.5, 1.0])))


@st.composite
def malformed_oip(draw) -> Obj:
    tensors = [Obj([("name", "predictions"), ("datatype", "FP64"), ("shape", [2]), ("data", [0.5, -1.0])]),
               Obj([("name", "labels"), ("datatype", "FP64"), ("shape", [2]), ("data", [1, 0])])]
    tensors = [t for t in tensors if draw(st.booleans())] + draw(st.lists(tensor_fields, max_size=2))
    pairs = [("inputs", draw(st.permutations(tensors)))]
    for key in draw(st.lists(st.sampled_from(["parameters", "outputs", "id", "x"]), unique=True, max_size=3)):
        value = draw(st.one_of(junk, objects(["reduction", "gamma", "binary_data", "quantiles", "dtype"], junk),
                               st.lists(st.builds(lambda p: Obj([("name", "loss"), ("parameters", p)]),
                                                  objects(["binary_data"], st.booleans())), max_size=2)))
        pairs.append((key, value))
    if draw(st.integers(0, 4)) == 0:  # a repeated top-level key
        pairs.append((draw(st.sampled_from([k for k, _ in pairs])), draw(junk)))
    return Obj(draw(st.permutations(pairs)))


@bounded(120)
@given(body=malformed_oip(), model=st.sampled_from(["loss", "grad"]))
def test_malformed_oip_requests_get_400_with_one_message(app, body, model):
    raw = dump(body).encode()
    r = app.post(f"/v2/models/{model}/infer", content=raw)
    assert r.status_code in (200, 400), (r.status_code, raw, r.text)
    event(f"status {r.status_code}" + (" duplicate" if first_repeat(body) else ""))
    if r.status_code == 200:
        return
    err = r.json()
    assert set(err) == {"error"} and isinstance(err["error"], str) and err["error"], err
    repeat = first_repeat(body)
    if repeat:
        assert f'duplicate key "{repeat[-1]}"' in err["error"], (raw, err)
