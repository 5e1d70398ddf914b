"""The bearer token (LOSSD_API_TOKEN), in-process: required on the API when set; health,
readiness and docs stay open; refused requests counted and logged.
"""

from __future__ import annotations

import logging

import numpy as np

from lossd import kernels
from lossd.service import Settings

from service_helpers import dumps

from oip_helpers import _in_process, assert_bits, assert_error, binary_frame, bt, hard01, logits, parse_response
from app_helpers import _sample, JSON, TOKEN, _client, token_client


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


# --------------------------------------------------------------------------- API token

def test_api_token_guards_inference_not_health():
    token = "t0k3n"
    pred, lab = logits(6), hard01(6)
    body, headers = binary_frame({"inputs": [bt("predictions", pred), bt("labels", lab)]},
                                 pred.tobytes(), lab.tobytes())
    try:
        with _in_process(api_token=token) as c:
            for path in ("/v2/health/live", "/v2/health/ready"):
                assert c.get(path).status_code == 200, path
            for method, path in (("GET", "/v2"), ("GET", "/v2/models/loss"), ("GET", "/v2/models/loss/ready"),
                                 ("POST", "/v2/models/loss/infer")):
                r = c.request(method, path, content=body if method == "POST" else None, headers=headers)
                assert_error(r, 401, "bearer token missing")
                assert r.headers["www-authenticate"] == "Bearer"
            r = c.post("/v2/models/loss/infer", content=body, headers={**headers, "Authorization": "Bearer nope"})
            assert_error(r, 401, "bearer token wrong")
            r = c.post("/v2/models/loss/infer", content=body,
                       headers={**headers, "Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            _, arrays = parse_response(r)
            assert_bits(arrays["loss"], np.array([kernels.loss(pred, lab).loss]), "loss")
            assert c.get("/v2/models/grad", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        kernels.set_threads(None)
