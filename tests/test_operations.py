"""The operations endpoints, in-process: /readyz follows the warm-up (and reports a failed
one), /metrics counts requests and elements, /docs and /redoc render without internet.
"""

from __future__ import annotations

import re
import threading
import time
from importlib import resources

import pytest

from lossd import kernels
from lossd.service import Settings

from service_helpers import assert_same, expected_loss_body

from app_helpers import _sample, PARAMS, _client, client, ok, post, rng_data


# --------------------------------------------------------------------------- readiness

def _wait_status(c, path, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(path)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def test_readyz_is_503_until_warmup_has_compiled_everything(monkeypatch):
    release = threading.Event()
    started = threading.Event()

    def slow_warmup(progress=None):
        progress(3, 42)
        started.set()
        release.wait(10.0)
        return 42

    monkeypatch.setattr(kernels, "warmup", slow_warmup)
    try:
        with _client(Settings(warmup=True)) as c:
            assert started.wait(5.0)
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "warming up", "signatures": 3, "total": 42}
            assert c.get("/healthz").json() == {"status": "ok"}
            # a request does not wait for the warm-up (this session's kernels are compiled)
            pred, lab = rng_data(5)
            body = ok(c, "/loss", {"predictions": pred.tolist(), "labels": lab.tolist()})
            assert_same(body, expected_loss_body(kernels.loss(pred, lab)))
            release.set()
            r = _wait_status(c, "/readyz", 200)
            assert r.status_code == 200 and r.json() == {"status": "ready", "signatures": 42}
    finally:
        release.set()
        kernels.set_threads(None)


def test_readyz_reports_a_failed_warmup(monkeypatch, caplog):
    def broken(progress=None):
        raise RuntimeError("no compiler today in /opt/secret/path")

    monkeypatch.setattr(kernels, "warmup", broken)
    try:
        with _client(Settings(warmup=True)) as c:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and c.get("/readyz").json()["status"] == "warming up":
                time.sleep(0.02)
            r = c.get("/readyz")
            assert r.status_code == 503
            # the client learns the fact; the error (which may name files) goes to the log only
            assert r.json() == {"status": "failed"}
            assert "no compiler today in /opt/secret/path" in caplog.text
            assert c.get("/healthz").status_code == 200
    finally:
        kernels.set_threads(None)


def test_readyz_with_the_real_warmup_and_without_warmup():
    expected = kernels.warmup()  # compiled already: returns the signature count at once
    try:
        with _client(Settings(warmup=True)) as c:
            r = _wait_status(c, "/readyz", 200, timeout=60)
            assert r.status_code == 200 and r.json() == {"status": "ready", "signatures": expected}
        with _client(Settings(warmup=False)) as c:
            assert c.get("/readyz").status_code == 200
    finally:
        kernels.set_threads(None)


def test_metrics_count_requests_and_elements():
    try:
        with _client(Settings(warmup=False)) as c:
            sizes = [5, 7, 1]
            for n in sizes:
                ok(c, "/loss", {"predictions": [0.5] * n, "labels": [1] * n})
            ok(c, "/loss", {"predictions": [[0.5, 1.0, 2.0]] * 2, "labels": [[1, 0, 1]] * 2})  # 6
            ok(c, "/grad", {"predictions": [0.5] * 4, "labels": [1] * 4})
            ok(c, "/grad", PARAMS)  # 3 x 2 features
            post(c, "/loss", {"predictions": [0.5], "labels": [3]})  # 422
            c.get("/nope/1")
            c.get("/nope/2")
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
    finally:
        kernels.set_threads(None)
    assert _sample(text, "lossd_requests_total", route="/loss", method="POST", status="200") == 4
    assert _sample(text, "lossd_requests_total", route="/loss", method="POST", status="422") == 1
    assert _sample(text, "lossd_requests_total", route="/grad", method="POST", status="200") == 2
    assert _sample(text, "lossd_elements_total", route="/loss") == sum(sizes) + 6
    assert _sample(text, "lossd_elements_total", route="/grad") == 4 + 6
    # unknown paths share one label (no unbounded label values)
    assert _sample(text, "lossd_requests_total", route="unmatched", status="404") == 2
    assert _sample(text, "lossd_request_duration_seconds_count", route="/loss") == 5
    assert "lossd_requests_in_flight" in text


# ------------------------------------------------------------------------------- docs

def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_render_without_internet(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html, "the page loads something from the internet"
    urls = _asset_urls(html)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "/openapi.json" in html
    static = resources.files("fastapi_offline") / "static"
    types = {".css": "text/css", ".js": "javascript", ".png": "image/png"}
    for u in urls:
        a = client.get(u)
        assert a.status_code == 200, u
        name = u.rsplit("/", 1)[1]
        assert a.content == (static / name).read_bytes(), u
        assert types[name[name.rfind("."):]] in a.headers["content-type"], (u, a.headers["content-type"])
    if page == "/docs":
        assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
        assert any(u.endswith("swagger-ui.css") for u in urls)
        assert client.get("/docs/oauth2-redirect").status_code == 200
    else:
        assert any(u.endswith("redoc.standalone.js") for u in urls)
