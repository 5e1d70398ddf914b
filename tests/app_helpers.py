"""The app in-process (FastAPI TestClient), for the tests that need no real server: the
``client`` (default settings) and ``token_client`` (with a bearer token) fixtures, which a
test module imports, and request helpers (moved from test_service_api.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lossd import kernels
from lossd.service import Settings, create_app

from service_helpers import dumps, strict_json

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


PARAMS = {"wrt": "params", "features": [[0.5, 1.0], [-1.5, 2.0], [0.0, -1.0]], "labels": [1, 0, 1],
          "coef": [0.1, -0.2]}
