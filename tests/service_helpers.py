"""Helpers for the HTTP service tests: a real ``lossd serve`` process on a free
127.0.0.1 port, and exact (bit-for-bit) comparison of JSON answers with in-process
``kernels`` results.

Every server started here is stopped by ``ServerProcess.stop()`` (SIGTERM to its process
group, then SIGKILL after a grace period), which the fixtures call in their teardown.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lossd import kernels

ROOT = Path(__file__).resolve().parents[1]
LOSSD = Path(sys.executable).parent / "lossd"
START_TIMEOUT = 90.0  # s until /readyz answers 200 (a warm Numba cache needs ~2 s)
STOP_TIMEOUT = 15.0  # s between SIGTERM and SIGKILL


# ------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without LOSSD_* and PROMETHEUS_MULTIPROC_DIR (the tests say
    what they want), with NUMBA_CACHE_DIR kept so the server finds the warm cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOSSD_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    if "NUMBA_CACHE_DIR" in os.environ:
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerProcess:
    """A service process. ``argv`` may contain ``{port}``, replaced by a free port (a new
    one is tried if the first is taken between the probe and the bind)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None,
                 port: int | None = None, ready_path: str = "/readyz") -> None:
        self.argv_template = argv
        self.extra_env = env or {}
        self.fixed_port = port
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None
        self._stopped = False
        self.port = 0
        self._dir = tempfile.TemporaryDirectory(prefix="lossd-test-")
        self.stdout_path = Path(self._dir.name) / "stdout.log"
        self.stderr_path = Path(self._dir.name) / "stderr.log"

    # -- lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            self.port = self.fixed_port or free_port()
            argv = [a.replace("{port}", str(self.port)) for a in self.argv_template]
            env = server_env({k: v.replace("{port}", str(self.port)) for k, v in self.extra_env.items()})
            self._stopped = False
            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready(deadline):
                return self
            exited = self.proc.poll() is not None
            self.stop()
            if not (exited and "address already in use" in self.stderr().lower()) or self.fixed_port:
                break
        raise RuntimeError(f"server {argv} did not become ready in {timeout:.0f} s\n"
                           f"--- stdout\n{self.stdout()[-4000:]}\n--- stderr\n{self.stderr()[-4000:]}")

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = httpx.get(self.url + self.ready_path, timeout=2.0)
                if r.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> int | None:
        """SIGTERM to the whole process group (workers too), SIGKILL after the grace period.
        Returns the exit code of the main process. Only signals a group this object
        started and has not already stopped (so never a reused group id)."""
        if self.proc is None or self._stopped:
            return None if self.proc is None else self.proc.returncode
        self._stopped = True
        try:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(STOP_TIMEOUT)
        finally:
            self._signal_group(signal.SIGKILL)  # stray workers of this server's own group
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the group id is the Popen'ed pid (new session)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._dir.cleanup()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- access
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_for_output(self, needle: str, timeout: float = 5.0, stream: str = "stdout") -> str:
        """The first line of the log holding ``needle`` (polled until ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout() if stream == "stdout" else self.stderr()
            for line in text.splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the server's {stream} after {timeout} s:\n"
                                     f"{text[-3000:]}")
            time.sleep(0.05)

    def children(self) -> list[int]:
        """Pids of the main process's direct children (uvicorn workers)."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                out.append(int(d.name))
        return out


def lossd_serve(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """``lossd serve --host 127.0.0.1 --port {port} *args`` (not started yet)."""
    return ServerProcess([str(LOSSD), "serve", "--host", "127.0.0.1", "--port", "{port}", *args], env=env)


def lossd_serve_grpc(*args: str) -> ServerProcess:
    """``lossd_serve`` with OIP over gRPC on a free port too (``.grpc_port``; not started yet)."""
    grpc_port = free_port()
    s = lossd_serve(*args, env={"LOSSD_GRPC_PORT": str(grpc_port)})
    s.grpc_port = grpc_port
    return s


def raw_http(port: int, data: bytes, *, timeout: float = 5.0, then: bytes | None = None) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it, the timeout
    passes, or a whole response (headers and Content-Length bytes) arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if _complete(buf):
                break
        if then is not None:
            try:
                s.sendall(then)
            except OSError:
                pass
        return buf


def _complete(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False


def parse_raw_response(buf: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


# ------------------------------------------------------------------------ exact answers

class _BareConstant(ValueError):
    pass


def _reject_constant(name: str):
    raise _BareConstant(f"the response holds the bare token {name}, which is not JSON")


def strict_json(text: str | bytes) -> Any:
    """Parse a response: standard JSON only (no bare NaN/Infinity tokens); Python's parser
    rounds every float correctly, so a shortest-repr float comes back bit-for-bit."""
    return json.loads(text, parse_constant=_reject_constant)


_TEXT = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _as_float(v: Any, where: str) -> float:
    if isinstance(v, str):
        assert v in _TEXT, f"{where}: {v!r} is not a number nor a non-finite string"
        return _TEXT[v]
    assert isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)), \
        f"{where}: expected a number, got {v!r}"
    return float(v)


def json_array(v: Any, where: str = "value") -> np.ndarray:
    """A JSON (nested) list of numbers/"Infinity" strings as a float64 array; ``null`` and
    anything else fail the test."""
    assert isinstance(v, list), f"{where}: expected an array, got {v!r}"
    if v and isinstance(v[0], list):
        rows = [json_array(r, f"{where}[{i}]") for i, r in enumerate(v)]
        assert len({r.shape for r in rows}) == 1, f"{where}: ragged rows"
        return np.stack(rows)
    return np.array([_as_float(x, f"{where}[{i}]") for i, x in enumerate(v)], dtype=np.float64)


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    b64 = np.ascontiguousarray(b, dtype=np.float64)
    return a64.shape == b64.shape and bool(np.all(a64.view(np.uint64) == b64.view(np.uint64)))


def assert_same(actual: Any, expected: Any, where: str = "response") -> None:
    """``actual`` (parsed JSON) equals ``expected`` (kernels output) to the last bit.

    expected: float (non-finite ones must arrive as "Infinity"/"-Infinity" strings), int,
    str, None, dict (same keys), or ndarray (float64: exact; float32: the answer must round
    to exactly these float32 values)."""
    if isinstance(expected, np.ndarray):
        got = json_array(actual, where)
        assert got.shape == expected.shape, f"{where}: shape {got.shape} != {expected.shape}"
        if expected.dtype == np.float32:
            ok = bool(np.all(got.astype(np.float32).view(np.uint32) == expected.view(np.uint32)))
            assert ok, f"{where}: float32 values differ: {got[:5]} vs {expected[:5]}"
            return
        if not bits_equal(got, expected):
            bad = np.flatnonzero(got.ravel().view(np.uint64) != expected.astype(np.float64).ravel().view(np.uint64))
            i = int(bad[0])
            raise AssertionError(f"{where}: {bad.size} elements differ, first at flat index {i}: "
                                 f"{got.ravel()[i]!r} != {expected.ravel()[i]!r}")
        return
    if isinstance(expected, (float, np.floating)):
        expected = float(expected)
        if math.isfinite(expected):
            assert isinstance(actual, float), f"{where}: expected float {expected!r}, got {actual!r}"
            assert np.float64(actual).view(np.uint64) == np.float64(expected).view(np.uint64), \
                f"{where}: {actual!r} != {expected!r}"
        else:
            want = "NaN" if expected != expected else ("Infinity" if expected > 0 else "-Infinity")
            assert actual == want, f"{where}: expected the string {want!r}, got {actual!r}"
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}.{k}")
        return
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert actual == expected and type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"
        return
    if isinstance(expected, (int, np.integer)):
        assert type(actual) is int and actual == int(expected), f"{where}: {actual!r} != {expected!r}"
        return
    raise TypeError(f"cannot compare with {type(expected)}")


def expected_loss_body(r, *, input="logits", loss="cross_entropy", reduction="mean") -> dict:
    """The /loss answer for a kernels.LossResult (contract fields)."""
    return {"loss": r.loss, "losses": r.losses, "stats": r.stats, "input": input,
            "loss_type": loss, "reduction": reduction}


def check_grad_body(body: dict, g, *, input="logits", loss="cross_entropy", reduction="mean") -> None:
    """The /grad (wrt predictions) answer equals kernels.GradResult ``g``: exactly the
    fields of the /loss answer (``GradResponse`` extends ``LossResponse``: ``losses``,
    ``stats``, ``input``, ``loss_type`` and ``reduction`` are always sent) plus ``grad``."""
    expected = {"loss": g.loss, "grad": g.grad, "losses": g.losses, "stats": g.stats,
                "input": input, "loss_type": loss, "reduction": reduction}
    missing = set(expected) - set(body)
    assert not missing, f"missing fields {sorted(missing)}"
    unknown = set(body) - set(expected)
    assert not unknown, f"unexpected fields {sorted(unknown)}"
    for k, v in expected.items():
        assert_same(body[k], v, k)


def dumps(body: Any) -> bytes:
    """Request JSON as Python writes it (±inf as bare Infinity tokens, exact floats)."""
    return json.dumps(body, allow_nan=True).encode()


def jsonable(a: Any) -> Any:
    """An array as a JSON list with ±inf as the "Infinity"/"-Infinity" strings."""
    if isinstance(a, np.ndarray):
        a = a.tolist()
    if isinstance(a, list):
        return [jsonable(x) for x in a]
    if isinstance(a, float) and not math.isfinite(a):
        return "NaN" if a != a else ("Infinity" if a > 0 else "-Infinity")
    return a


# ------------------------------------------------------------------------ OIP frames

HCL = "Inference-Header-Content-Length"
OIP_DATATYPES = {"f8": "FP64", "f4": "FP32", "i1": "INT8", "i2": "INT16", "i4": "INT32", "i8": "INT64",
                 "u1": "UINT8", "u2": "UINT16", "u4": "UINT32", "u8": "UINT64", "b1": "BOOL"}


def oip_frame(tensors: dict[str, np.ndarray], parameters: dict | None = None, *,
              binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """An infer request body and its headers: each tensor (its own datatype) as binary
    data after the JSON header, or as JSON ``data`` (±inf as strings); binary requests
    ask for binary outputs."""
    inputs, blobs = [], []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        t = {"name": name, "datatype": OIP_DATATYPES[a.dtype.str[1:]], "shape": list(a.shape)}
        if binary:
            t["parameters"] = {"binary_data_size": a.nbytes}
            blobs.append(a.astype(a.dtype.newbyteorder("<")).tobytes())
        else:
            t["data"] = jsonable(a.ravel().tolist())
        inputs.append(t)
    params = dict(parameters or {})
    if binary:
        params["binary_data_output"] = True
    head = json.dumps({"inputs": inputs, "parameters": params}, allow_nan=False).encode()
    return head + b"".join(blobs), ({HCL: str(len(head))} if binary else {})


def oip_outputs(content: bytes, headers) -> dict[str, np.ndarray]:
    """Every output of an infer response as an array (binary ones read from the bytes
    after the JSON header)."""
    hlen = headers.get(HCL) or headers.get(HCL.lower())
    head, blob = (json.loads(content[:int(hlen)]), content[int(hlen):]) if hlen else (json.loads(content), b"")
    out, offset = {}, 0
    for o in head["outputs"]:
        dt = np.dtype({"FP64": "<f8", "FP32": "<f4"}[o["datatype"]])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.array([_TEXT.get(v, v) if isinstance(v, str) else v for v in o["data"]],
                                      dtype=dt).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(blob, dt, count=math.prod(o["shape"]), offset=offset).reshape(o["shape"])
            offset += size
    assert offset == len(blob), "bytes after the last binary output"
    return out


def assert_bits_equal(a: np.ndarray, b: np.ndarray, where: str, any_nan: bool = False) -> None:
    """Same dtype, shape and bits (-0.0 is not 0.0); with ``any_nan`` a NaN equals any
    NaN (JSON writes every NaN as "NaN", without sign or payload)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
    u = np.dtype(f"u{a.dtype.itemsize}")
    same = np.ascontiguousarray(a).view(u) == np.ascontiguousarray(b).view(u)
    if any_nan and a.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    assert same.all(), f"{where}: {a.ravel()[~same.ravel()][:3]} != {b.ravel()[~same.ravel()][:3]}"


def assert_oip_result(got: dict[str, np.ndarray], want: dict, where: str) -> None:
    """OIP outputs equal a {"loss", "losses", "grad", "stats"} expectation bit for bit
    (a NaN equals any NaN: JSON outputs cannot carry its sign or payload)."""
    expected: dict[str, np.ndarray] = {}
    for key, value in want.items():
        if key == "stats":
            expected.update({s: np.array([v], dtype=np.float64) for s, v in value.items()})
        elif isinstance(value, np.ndarray):
            expected[key] = value
        elif value is not None:
            expected[key] = np.array([value], dtype=np.float64)
    assert set(got) == set(expected), (where, sorted(got), sorted(expected))
    for key, value in expected.items():
        assert_bits_equal(got[key], value, f"{where}: {key}", any_nan=True)


# ------------------------------------------------------------------------ metrics, log

def request_statuses(server: ServerProcess, timeout: float = 30.0) -> dict[str, float]:
    """``lossd_requests_total`` summed by status from the server's /metrics, every route
    but /readyz (which answers 503 while the server warms up and the fixtures poll it)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=timeout).text
    statuses: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "lossd_requests":
            for s in fam.samples:
                if s.name == "lossd_requests_total" and s.labels["route"] != "/readyz":
                    statuses[s.labels["status"]] = statuses.get(s.labels["status"], 0) + s.value
    return statuses


def status_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The requests counted between two ``request_statuses`` snapshots, by status."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


class NoServerErrors:
    """Snapshot a server's status counts and log; ``check()`` then asserts that since the
    snapshot no request got a 5xx, nothing reached the catch-all handler ('unhandled
    error' or a traceback in the log) and the process is alive."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.before = request_statuses(server)
        self.log_at = (len(server.stdout()), len(server.stderr()))

    def new_log(self) -> str:
        return self.server.stdout()[self.log_at[0]:] + self.server.stderr()[self.log_at[1]:]

    def check(self, what: str = "") -> dict[str, float]:
        assert self.server.alive(), f"{what}: the server died\n{self.server.stderr()[-3000:]}"
        log = self.new_log()
        assert "unhandled error" not in log and "Traceback" not in log, f"{what}:\n{log[-3000:]}"
        delta = status_delta(self.before, request_statuses(self.server))
        # gRPC calls are counted with the HTTP status of the same outcome (grpc_server.STATUS)
        assert not [s for s in delta if s.startswith("5")], \
            f"{what}: 5xx answers {delta}"
        return delta


JSON = {"content-type": "application/json"}



def _post(url: str, body, headers=JSON, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else dumps(body)
    return httpx.post(url, content=content, headers=headers, timeout=30.0, **kw)



def _check_alive(s: ServerProcess) -> None:
    """The server still runs and answers a request correctly."""
    assert s.alive(), s.stderr()[-3000:]
    assert httpx.get(s.url + "/healthz", timeout=10).json() == {"status": "ok"}
    pred = np.array([0.25, -3.0, 8.0])
    lab = np.array([1.0, 0.0, 1.0])
    r = _post(s.url + "/loss", {"predictions": pred.tolist(), "labels": lab.tolist()})
    assert r.status_code == 200, r.text
    assert_same(strict_json(r.text), expected_loss_body(kernels.loss(pred, lab)))
