"""Request ids and the access log: echoed or generated, unfit ids replaced, the id in the
access log line (in-process, and on a real server's log)."""

from __future__ import annotations

import logging
import re
import uuid

import httpx

from app_helpers import JSON, client, post
from service_helpers import _post


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


# ---------------------------------------------------------------- ids and access log

def test_request_id_echoed_and_in_the_access_log(server):
    rid = f"test-{uuid.uuid4().hex[:12]}"
    r = _post(server.url + "/loss", {"predictions": [1.0], "labels": [1]}, headers={**JSON, "x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    line = server.wait_for_output(f"rid={rid}")
    assert '"POST /loss" 200' in line and "127.0.0.1:" in line
    # no id given: one is generated, returned and logged
    r = httpx.get(server.url + "/healthz", timeout=10)
    gen = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", gen)
    assert '"GET /healthz" 200' in server.wait_for_output(f"rid={gen}")
    # an id unfit for a log line is replaced
    r = _post(server.url + "/loss", {"predictions": [1.0], "labels": [5]},
              headers={**JSON, "x-request-id": "two words"})
    assert r.status_code == 422
    gen = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", gen)
    assert '"POST /loss" 422' in server.wait_for_output(f"rid={gen}")
    assert "two words" not in server.stdout()
