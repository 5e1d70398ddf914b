"""Issue 12, security: what a response may reveal (no traceback, path, library version or
``Server`` header), the bearer token (constant-time check; a token file that keeps it out of
argv, the environment and the log; refused on the command line), CORS off unless
configured, request ids and logged paths that cannot forge log lines, the docs switch,
and bandit over the code. SECURITY.md says what each protects against.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import pytest

from lossd import kernels
from lossd.service import Settings, create_app
from lossd.service import auth as token_check
from lossd.service import middleware as front_door

from service_helpers import ROOT, lossd_serve, parse_raw_response, raw_http

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2 at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}
BODY = json.dumps({"predictions": [1.0, -2.0], "labels": [1, 0]}).encode()
TOKEN = "tok-" + "9f3c2a71d4e8b605" * 2
ORIGIN = "https://app.example.com"

# Libraries whose name or version must never reach a client.
LIBRARIES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "numba", "llvmlite",
             "numpy", "orjson", "httptools", "uvloop", "prometheus-client")
_LEAKS = [re.compile(p, re.I) for p in (
    r"traceback", r'file "', r"site-packages", r"\.py\b", r"(?<![\w-])/(usr|opt|work|tmp|home|root)/",
    r"\buvicorn\b", r"\bstarlette\b", r"\bpydantic\b", r"\bnumba\b", r"\bllvmlite\b", r"\bpython/\d",
    r"errors\.pydantic\.dev")]
_VERSIONS = [(name, re.compile(r"(?<![\w.])" + re.escape(importlib.metadata.version(name)) + r"(?![\w.])"))
             for name in LIBRARIES] + [("python", re.compile(re.escape("%d.%d.%d" % sys.version_info[:3])))]


def leaks(text: str) -> list[str]:
    """What in a response names a library, its version, a file or a traceback."""
    found = [p.pattern for p in _LEAKS if p.search(text)]
    return found + [f"{name} version" for name, p in _VERSIONS if p.search(text)]


def _client(**settings) -> TestClient:
    return TestClient(create_app(Settings(warmup=False, lane_bytes=0, **settings)))


@pytest.fixture(autouse=True)
def _reset_threads():
    yield
    kernels.set_threads(None)  # an app's lifespan sets the kernels' thread count


# ------------------------------------------------------------------ what responses show

def test_the_leak_check_itself_catches_leaks():
    """The check below must be able to fail."""
    assert leaks('Traceback (most recent call last):\n  File "/usr/lib/python3.11/x.py"')
    assert leaks(f"server: uvicorn/{importlib.metadata.version('uvicorn')}")
    assert leaks(f"pydantic {importlib.metadata.version('pydantic')}")
    assert not leaks('{"detail":"labels[1] = 7 is not in {0, 1}"}')


def _requests(port: int) -> list[tuple[str, bytes]]:
    """(what, raw response) for answers of every kind a client can provoke."""
    url = f"http://127.0.0.1:{port}"
    out = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for what, req in [
            ("200 loss", c.build_request("POST", "/loss", content=BODY, headers=JSON)),
            ("200 v2 metadata", c.build_request("GET", "/v2")),
            ("200 openapi", c.build_request("GET", "/openapi.json")),
            ("200 docs", c.build_request("GET", "/docs")),
            ("200 redoc", c.build_request("GET", "/redoc")),
            ("200 metrics", c.build_request("GET", "/metrics")),
            ("404", c.build_request("GET", "/no/such/path")),
            ("404 asset", c.build_request("GET", "/docs/assets/nothing.js")),
            ("405", c.build_request("DELETE", "/loss")),
            ("415", c.build_request("POST", "/loss", content=BODY)),
            ("422 json", c.build_request("POST", "/loss", content=b"{nope", headers=JSON)),
            ("422 value", c.build_request("POST", "/loss", content=b'{"predictions": [1], "labels": [7]}',
                                          headers=JSON)),
            ("422 type", c.build_request("POST", "/grad", content=b'{"predictions": {"a": 1}}', headers=JSON)),
            ("400 oip", c.build_request("POST", "/v2/models/loss/infer", content=b'{"inputs": 5}',
                                        headers=JSON)),
            ("404 oip model", c.build_request("GET", "/v2/models/../etc")),
        ]:
            r = c.send(req)
            head = "".join(f"{k}: {v}\n" for k, v in r.headers.items())
            out.append((what, r.status_code, r.headers, (head + r.text).encode()))
    for what, data in [
        ("400 bad request line", b"GARBAGE\r\n\r\n"),
        ("400 bad header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"),
        ("400 bad content-length", b"POST /loss HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"),
        ("404 traversal", b"GET /docs/assets/..%2f..%2f..%2f..%2fetc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]:
        raw = raw_http(port, data)
        status, headers, _ = parse_raw_response(raw) if raw else (0, {}, b"")
        out.append((what, status, headers, raw))
    return out


def test_no_server_header_traceback_path_or_version_in_any_response():
    with lossd_serve(env={"LOSSD_WARMUP": "false", "LOSSD_LANE_BYTES": "0"}) as server:
        answers = _requests(server.port)
        assert server.alive()
    for what, status, headers, raw in answers:
        if not raw and what.startswith("400 bad"):
            continue  # malformed HTTP may get the connection closed without a word
        assert status == int(what.split()[0]), (what, status, raw[:500])
        names = {k.lower() for k in headers}
        assert "server" not in names and "x-powered-by" not in names, (what, dict(headers))
        text = raw.decode("latin-1")
        assert not leaks(text), (what, leaks(text), text[:2000])


def test_a_500_says_nothing_of_the_error(caplog):
    app = create_app(Settings(warmup=False, lane_bytes=0))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail from /opt/lossd/lib/python3.11/site-packages/x.py")

    with caplog.at_level(logging.ERROR, logger="lossd"), TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500 and r.json() == {"detail": "internal error; the server log has the details"}
    assert not leaks(r.text) and "secret" not in r.text
    assert "secret detail" in caplog.text  # the operator still sees it


def test_responses_are_never_sniffed_as_html():
    with _client() as c:
        for r in (c.post("/loss", content=BODY, headers=JSON), c.get("/v2/models/<script>")):
            assert r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------- the token

def test_token_is_compared_as_equal_length_digests(monkeypatch):
    """hmac.compare_digest is constant-time only for equal lengths: the token check (auth.py) compares
    SHA-256 digests, so the time tells nothing of the token's length either."""
    calls = []
    real = token_check.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(token_check.hmac, "compare_digest", spy)
    with _client(api_token=TOKEN) as c:
        for auth, status in [(f"Bearer {TOKEN}", 200), (f"bearer {TOKEN}", 200), ("Bearer x", 401),
                             (f"Bearer {TOKEN}x", 401), (f"Bearer {TOKEN[:-1]}", 401), (f"Basic {TOKEN}", 401),
                             ("", 401)]:
            headers = {**JSON, "authorization": auth} if auth else JSON
            assert c.post("/loss", content=BODY, headers=headers).status_code == status, auth
    assert len(calls) == 7 and set(calls) == {(32, 32)}, calls


def test_the_token_is_not_in_settings_repr_or_error_messages():
    s = Settings(api_token=TOKEN, warmup=False)
    assert TOKEN not in repr(s) and TOKEN not in str(s)
    for bad in (TOKEN + " x", TOKEN + "\n", TOKEN + "é"):
        with pytest.raises(ValueError) as info:
            Settings.from_env({"LOSSD_API_TOKEN": bad})
        assert "LOSSD_API_TOKEN" in str(info.value) and TOKEN not in str(info.value), str(info.value)


def test_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # `echo` writes a line end: not part of the token
    s = Settings.from_env({"LOSSD_API_TOKEN_FILE": str(path)})
    assert s.api_token == TOKEN
    env = s.to_env()
    assert "LOSSD_API_TOKEN" not in env and env["LOSSD_API_TOKEN_FILE"] == str(path)
    assert TOKEN not in json.dumps(env)
    assert Settings.from_env(env) == s  # what workers read back
    assert Settings.from_env({}, api_token_file=str(path)).api_token == TOKEN  # --api-token-file
    for content in ("", "\n", "two words\n"):
        path.write_text(content)
        with pytest.raises(ValueError) as info:
            Settings.from_env({"LOSSD_API_TOKEN_FILE": str(path)})
        assert "LOSSD_API_TOKEN_FILE" in str(info.value) and "two words" not in str(info.value)
    with pytest.raises(ValueError, match="LOSSD_API_TOKEN_FILE.*cannot read the token file"):
        Settings.from_env({"LOSSD_API_TOKEN_FILE": str(tmp_path / "missing")})
    path.write_text(TOKEN)
    with pytest.raises(ValueError, match="both"):
        Settings.from_env({"LOSSD_API_TOKEN_FILE": str(path), "LOSSD_API_TOKEN": TOKEN})


@pytest.mark.parametrize("argv", [["--api-token", TOKEN], [f"--api-token={TOKEN}"], ["--token", TOKEN]])
def test_a_token_on_the_command_line_is_refused_without_echoing_it(argv, capsys):
    from lossd.service import cli

    assert cli.main(["serve", *argv]) == 2
    captured = capsys.readouterr()
    assert "--api-token-file" in captured.err and TOKEN not in captured.err + captured.out


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode("latin-1")
    except OSError:  # exited meanwhile
        return ""


def _group(pgid: int) -> list[int]:
    """Pids of the processes in a process group (a server, its workers and their lanes)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (stat := _proc_text(int(d.name), "stat")):
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                out.append(int(d.name))
    return out


def test_token_file_keeps_the_token_out_of_argv_environment_and_log(tmp_path):
    """Two workers and their large lanes: the token is in no process's command line (ps)
    or environment, and not in the log, while requests are checked against it."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    with lossd_serve("--workers", "2", "--api-token-file", str(path), "--log-level", "debug",
                     env={"LOSSD_WARMUP": "false"}) as server:
        url = server.url + "/loss"
        assert httpx.post(url, content=BODY, headers=JSON, timeout=10).status_code == 401
        for _ in range(4):  # both workers, most likely
            r = httpx.post(url, content=BODY, headers={**JSON, "authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert r.status_code == 200
        pids = _group(server.proc.pid)
        assert len(pids) >= 5, pids  # the supervisor, two workers and their large lanes
        for pid in pids:
            assert TOKEN not in _proc_text(pid, "cmdline"), pid
            assert TOKEN not in _proc_text(pid, "environ"), pid
        assert TOKEN not in server.stdout() + server.stderr()


# -------------------------------------------------------------------------------- CORS

def test_cors_is_off_by_default():
    with _client() as c:
        pre = c.options("/loss", headers={"origin": ORIGIN, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in pre.headers and pre.status_code in (401, 405)
        r = c.post("/loss", content=BODY, headers={**JSON, "origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_for_the_configured_origins_only():
    settings = Settings.from_env({"LOSSD_CORS_ORIGINS": f"{ORIGIN}, http://localhost:5173",
                                  "LOSSD_API_TOKEN": TOKEN, "LOSSD_WARMUP": "false", "LOSSD_LANE_BYTES": "0"})
    assert settings.cors_origins == (ORIGIN, "http://localhost:5173")
    with TestClient(create_app(settings)) as c:
        # a preflight carries no token: answered before the token check
        pre = c.options("/loss", headers={"origin": ORIGIN, "access-control-request-method": "POST",
                                          "access-control-request-headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = c.post("/loss", content=BODY, headers={**JSON, "origin": ORIGIN, "authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = "https://evil.example"
        pre = c.options("/loss", headers={"origin": other, "access-control-request-method": "POST"})
        assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
        r = c.post("/loss", content=BODY, headers={**JSON, "origin": other, "authorization": f"Bearer {TOKEN}"})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/", "https://a.example/path",
                                 "javascript:alert(1)", "https://a b"])
def test_cors_origins_must_be_origins(bad):
    with pytest.raises(ValueError, match="LOSSD_CORS_ORIGINS"):
        Settings.from_env({"LOSSD_CORS_ORIGINS": bad})


# ------------------------------------------------------------------ request ids and logs

@pytest.mark.parametrize("rid", ['a"b', "a\\b", "<script>", "${jndi:x}", "a%0ab", "id'1", "x" * 129, "a b"])
def test_request_ids_unfit_for_a_log_line_are_replaced(rid):
    with _client() as c:
        r = c.post("/loss", content=BODY, headers={**JSON, "x-request-id": rid})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers["x-request-id"]


@pytest.mark.parametrize("rid", ["0af7651916cd43dd8448eb211c80319c", "f47ac10b-58cc-4372-a567-0e02b2c3d479",
                                 "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
                                 "svc.api:req/42+retry@host_1"])
def test_tracing_ids_are_kept(rid):
    with _client() as c:
        assert c.post("/loss", content=BODY, headers={**JSON, "x-request-id": rid}).headers["x-request-id"] == rid


def test_a_path_cannot_forge_a_log_line(caplog):
    forged = '127.0.0.1:1 "GET /admin" 200 0.1ms rid=forged'
    with caplog.at_level(logging.INFO, logger="lossd.access"), _client() as c:
        c.get("/x%0d%0a" + forged.replace(" ", "%20").replace('"', "%22"))
    lines = [r.getMessage() for r in caplog.records if r.name == "lossd.access"]
    assert len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0], lines
    assert '"GET /x%0D%0A127.0.0.1:1%20%22GET%20/admin%22' in lines[0], lines
    assert front_door.log_safe("/é\x1b[2J") == "/%C3%A9%1B[2J"
    assert front_door.log_safe("/" + "a" * 600).endswith("...") and len(front_door.log_safe("/" + "a" * 600)) == 515


# ------------------------------------------------------------------------------ the docs

def test_docs_can_be_turned_off():
    with _client(docs=False) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert c.get(path).status_code == 404, path
        assert c.post("/loss", content=BODY, headers=JSON).status_code == 200
    with _client() as c:
        assert c.get("/openapi.json").status_code == 200


# ------------------------------------------------------------------------------ bandit

SCANNED = ("kernels", "service", "client/lossd_client", "lossd")


def test_bandit_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", *SCANNED, "-f", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "\n".join(findings)
    assert not report["errors"], report["errors"]
    assert report["metrics"]["_totals"]["loc"] > 3000  # it did read the code


def test_every_nosec_names_the_test_and_says_why():
    for folder in SCANNED:
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                if "nosec" in line.split("#", 1)[-1] and "#" in line:
                    where = f"{path.relative_to(ROOT)}:{i + 1}"
                    assert re.search(r"# nosec B\d{3}\s*$", line), f"{where}: name the bandit test"
                    test = re.search(r"B\d{3}", line).group(0)
                    assert f"{test} reviewed:" in "\n".join(lines[max(0, i - 3):i + 1]), \
                        f"{where}: say why above it ('# {test} reviewed: ...')"
