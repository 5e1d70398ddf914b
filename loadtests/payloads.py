"""The load test's traffic classes: each request body, and the answer it must get.

A payload is built once per simulated user from its own seed, and its expected answer is
computed beforehand in this process with ``lossd.kernels`` (what the server runs), so a
wrong number is a failure, not only a non-200. The kernels are bit-reproducible whatever
the layout or thread count, and JSON floats round-trip exactly, so answers must match to
the last bit. Checking a 2 MB answer number by number on every request would make the
load generator the bottleneck; instead each answer is first compared byte for byte with
the last answer of this payload that passed the full check (lossd's answers to one
request are byte-identical), and only an answer that differs is decoded and checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

SMALL, LARGE, GRAD, OIP, PARAMS = "small_loss", "large_loss", "grad", "oip_binary", "grad_params"
CLASSES = (SMALL, LARGE, GRAD, OIP, PARAMS)
LARGE_CLASSES = (LARGE, GRAD, OIP, PARAMS)  # everything that is not the small class


@dataclass(frozen=True)
class Sizes:
    """Payload sizes of every class (command line ``--small-n`` ... or LOSSD_LOAD_*)."""

    small_n: int = 10
    large_n: int = 100_000
    grad_n: int = 10_000
    oip_n: int = 1_000_000
    params_n: int = 10_000
    params_d: int = 32


def describe(key: str, sizes: Sizes) -> str:
    """What one request of a class is, for reports."""
    return {
        SMALL: f"POST /loss, JSON, n = {sizes.small_n:,}, reduction mean",
        LARGE: f"POST /loss, JSON, n = {sizes.large_n:,}, reduction none",
        GRAD: f"POST /grad, JSON, n = {sizes.grad_n:,}, wrt predictions",
        OIP: f"POST /v2/models/loss/infer, binary FP64 predictions + INT8 labels, n = {sizes.oip_n:,}",
        PARAMS: f"POST /grad, JSON, wrt params, features {sizes.params_n:,} x {sizes.params_d}",
    }[key]


Check = Callable[[int, Mapping[str, str], bytes], "str | None"]


@dataclass
class Payload:
    """One class's request for one user, and how to judge an answer to it."""

    key: str
    path: str
    body: bytes
    headers: dict[str, str]
    decode: Callable[[int, Mapping[str, str], bytes], Any]  # answer -> comparable structure
    expected: Any
    _good: bytes | None = field(default=None, repr=False)

    def check(self, status: int, headers: Mapping[str, str], content: bytes) -> str | None:
        """None if the answer is right, else what is wrong with it."""
        if status != 200:
            return f"HTTP {status}: {content[:300]!r}"
        if self._good is not None and content == self._good:
            return None
        try:
            got = self.decode(status, headers, content)
        except Exception as exc:  # noqa: BLE001 - any undecodable answer is a failure
            return f"undecodable answer ({type(exc).__name__}: {exc}): {content[:200]!r}"
        problem = difference(self.expected, got, "")
        if problem is None:
            self._good = bytes(content)
        return problem


# ------------------------------------------------------------------------ comparing


def difference(expected: Any, got: Any, where: str) -> str | None:
    """The first place where ``got`` differs from ``expected`` (bit for bit for floats),
    or None. Dicts compare only the keys of ``expected``."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where or 'answer'}: expected an object, got {type(got).__name__}"
        for k, v in expected.items():
            if k not in got:
                return f"{where}{'.' if where else ''}{k} is missing"
            problem = difference(v, got[k], f"{where}{'.' if where else ''}{k}")
            if problem:
                return problem
        return None
    if isinstance(expected, np.ndarray):
        try:
            arr = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            return f"{where}: not an array of numbers ({exc})"
        if arr.shape != expected.shape:
            return f"{where}: shape {arr.shape}, expected {expected.shape}"
        bad = np.flatnonzero(arr.reshape(-1).view(np.int64) != expected.reshape(-1).view(np.int64))
        if bad.size:
            i = int(bad[0])
            return (f"{where}[{i}] = {arr.reshape(-1)[i]!r}, expected {expected.reshape(-1)[i]!r} "
                    f"({bad.size} elements differ)")
        return None
    if expected is None:
        return None if got is None else f"{where} = {got!r}, expected null"
    value = _number(got)
    if value is None or not _same_float(value, float(expected)):
        return f"{where} = {got!r}, expected {float(expected)!r}"
    return None


def _number(x: Any) -> float | None:
    """A JSON number, a 1-element array, or a ±inf string as a float."""
    if isinstance(x, np.ndarray):
        return float(x.reshape(-1)[0]) if x.size == 1 else None
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, str) and x in ("Infinity", "-Infinity"):
        return float(x.lower().replace("infinity", "inf"))
    return None


def _same_float(a: float, b: float) -> bool:
    return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (a != a and b != b)


def _as_arrays(x: Any) -> Any:
    """float64 arrays where the kernels give arrays, so expected values compare by bits."""
    return np.ascontiguousarray(x, dtype=np.float64) if isinstance(x, np.ndarray) else x


# ------------------------------------------------------------------------ building


JSON_HEADERS = {"Content-Type": "application/json"}


def _logits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits s ~ N(0, 3²) and labels 0/1, as the benchmarks use."""
    return rng.normal(0.0, 3.0, n), (rng.random(n) < 0.5).astype(np.float64)


def _json_body(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)


def _decode_json(status: int, headers: Mapping[str, str], content: bytes) -> Any:
    return orjson.loads(content)


def _decode_oip(status: int, headers: Mapping[str, str], content: bytes) -> dict[str, np.ndarray]:
    from lossd_client._codec import HEADER_LENGTH, decode_response  # the project's OIP framing

    # header names are case-insensitive; the decoder looks one up by its canonical name
    length = next((v for k, v in headers.items() if k.lower() == HEADER_LENGTH.lower()), None)
    return dict(decode_response(status, {HEADER_LENGTH: length} if length else {}, content))


def _loss_expected(r: Any) -> dict[str, Any]:
    return {"loss": r.loss, "losses": _as_arrays(r.losses), "stats": dict(r.stats)}


def build(key: str, sizes: Sizes, seed: int, token: str | None = None) -> Payload:
    """The payload of class ``key`` for one user, with its answer computed by the kernels."""
    from lossd import kernels  # imported here: only a process that sends traffic needs numba

    rng = np.random.default_rng(seed)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    if key in (SMALL, LARGE):
        s, y = _logits(rng, sizes.small_n if key == SMALL else sizes.large_n)
        reduction = "mean" if key == SMALL else "none"
        expected = _loss_expected(kernels.loss(s, y, reduction=reduction))
        body = _json_body({"predictions": s, "labels": y, "reduction": reduction})
        return Payload(key, "/loss", body, {**JSON_HEADERS, **auth}, _decode_json, expected)
    if key == GRAD:
        s, y = _logits(rng, sizes.grad_n)
        g = kernels.grad(s, y)
        expected = {"loss": g.loss, "grad": _as_arrays(g.grad), "stats": dict(g.stats)}
        body = _json_body({"predictions": s, "labels": y})
        return Payload(key, "/grad", body, {**JSON_HEADERS, **auth}, _decode_json, expected)
    if key == OIP:
        from lossd_client._codec import encode_request

        s, y = _logits(rng, sizes.oip_n)
        labels = y.astype(np.int8)
        r = kernels.loss(s, labels)
        expected = {"loss": r.loss, **r.stats}
        body, headers = encode_request([("predictions", s), ("labels", labels)], {}, binary=True)
        return Payload(key, "/v2/models/loss/infer", body, {**headers, **auth}, _decode_oip, expected)
    if key == PARAMS:
        X = rng.normal(0.0, 1.0, (sizes.params_n, sizes.params_d))
        coef = rng.normal(0.0, 0.5, sizes.params_d)
        y = (rng.random(sizes.params_n) < 0.5).astype(np.float64)
        p = kernels.logreg_grad(X, y, coef, 0.25)
        expected = {"loss": p.loss, "grad": {"coef": _as_arrays(p.coef), "intercept": p.intercept}}
        body = _json_body({"wrt": "params", "features": X, "labels": y, "coef": coef,
                           "intercept": 0.25})
        return Payload(key, "/grad", body, {**JSON_HEADERS, **auth}, _decode_json, expected)
    raise ValueError(f"unknown class {key!r}; the classes are {', '.join(CLASSES)}")
