"""Request ids, in-process: echoed or generated, and in the access log line.
"""

from __future__ import annotations

import logging
import re


from app_helpers import JSON, client, post


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
