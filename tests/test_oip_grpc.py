"""The Open Inference Protocol over gRPC (LOSSD_GRPC_PORT) against a real ``lossd serve``
with tritonclient.grpc: health, metadata, infer of both models with every label datatype
and options as parameters, results bit for bit the kernels', errors as gRPC status codes
with the HTTP OIP's messages, the token, the body limit, two workers on one port. All
traffic is on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from lossd import kernels

from oip_helpers import assert_bits, expected_outputs, hard01, logits, probabilities
from service_helpers import free_port, lossd_serve

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

# after every test that uses the module's server: no 5xx or server-side gRPC code
# (INTERNAL, UNAVAILABLE, ...), no unhandled error, still alive
pytestmark = pytest.mark.usefixtures("server_never_5xx")

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TIMEOUT = 30.0  # s, every call's deadline (client_timeout)


def _serve(*args: str, env: dict[str, str] | None = None, flag: bool = False):
    """``lossd serve`` with gRPC on a free port, given by LOSSD_GRPC_PORT or --grpc-port."""
    port = free_port()
    if flag:
        s = lossd_serve("--grpc-port", str(port), *args, env=env)
    else:
        s = lossd_serve(*args, env={"LOSSD_GRPC_PORT": str(port), **(env or {})})
    s.grpc_port = port
    return s


@pytest.fixture(scope="module")
def server():
    s = _serve(env={"LOSSD_MAX_BODY_BYTES": str(1024 * 1024)})
    try:
        yield s.start()
        # no call of the module reached the catch-all (INTERNAL): every error was a client's
        assert "unhandled error" not in s.stderr() + s.stdout(), s.stderr()[-3000:]
    finally:
        s.close()


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


def _inputs(arrays: dict[str, np.ndarray]):
    out = []
    for name, a in arrays.items():
        t = grpcclient.InferInput(name, list(a.shape), _DT[a.dtype.str[1:]])
        t.set_data_from_numpy(a)
        out.append(t)
    return out


_DT = {"f8": "FP64", "f4": "FP32", "i1": "INT8", "i2": "INT16", "i4": "INT32", "i8": "INT64", "u1": "UINT8",
       "u2": "UINT16", "u4": "UINT32", "u8": "UINT64", "b1": "BOOL"}


def _infer(c, model: str, arrays: dict[str, np.ndarray], parameters=None, outputs=None, headers=None,
           request_id: str = ""):
    outs = None if outputs is None else [grpcclient.InferRequestedOutput(n) for n in outputs]
    return c.infer(model, _inputs(arrays), outputs=outs, parameters=parameters, headers=headers,
                   request_id=request_id, client_timeout=TIMEOUT)


def _check(result, expected: dict[str, np.ndarray]) -> None:
    names = [o.name for o in result.get_response().outputs]
    assert names == list(expected), (names, list(expected))
    for n, want in expected.items():
        assert_bits(result.as_numpy(n), want, n)


def _grpc_error(fn, *args, **kw) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        fn(*args, **kw)
    return exc.value


# ----------------------------------------------------------------- health, metadata

def test_live_ready_metadata(client):
    assert client.is_server_live(client_timeout=TIMEOUT)
    assert client.is_server_ready(client_timeout=TIMEOUT)
    assert client.is_model_ready("loss", client_timeout=TIMEOUT)
    assert client.is_model_ready("grad", client_timeout=TIMEOUT)
    meta = client.get_server_metadata(client_timeout=TIMEOUT)
    assert meta.name == "lossd"
    for model in ("loss", "grad"):
        m = client.get_model_metadata(model, client_timeout=TIMEOUT)
        http = httpx.get(f"http://127.0.0.1:{_http_port(client)}/v2/models/{model}", timeout=TIMEOUT).json()
        assert m.name == model and list(m.versions) == ["1"] and m.platform == "lossd"
        assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == \
            [(t["name"], t["datatype"], t["shape"]) for t in http["inputs"]]
        assert [(t.name, t.datatype, list(t.shape)) for t in m.outputs] == \
            [(t["name"], t["datatype"], t["shape"]) for t in http["outputs"]]
    e = _grpc_error(client.get_model_metadata, "nope", client_timeout=TIMEOUT)
    assert e.status() == "StatusCode.NOT_FOUND"
    assert e.message() == "unknown model 'nope'; this server has loss, grad"


_HTTP_PORTS: dict[int, int] = {}


def _http_port(client) -> int:
    return _HTTP_PORTS[id(client)]


@pytest.fixture(autouse=True, scope="module")
def _ports(server, client):
    _HTTP_PORTS[id(client)] = server.port


# ------------------------------------------------------------------------ infer

LABEL_TYPES = [np.float64, np.float32, np.int8, np.bool_, np.int16, np.int32, np.int64, np.uint8, np.uint16,
               np.uint32, np.uint64]  # every OIP datatype that labels accept


@pytest.mark.parametrize("ltype", LABEL_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("n", [7, 20_000])  # 20 000 × 8 B: over LOSSD_INLINE_BYTES, in the kernel threads
def test_loss_every_label_type(client, ltype, n):
    pred, lab = logits(n), hard01(n, ltype)
    sw = np.random.default_rng(n).random(n)
    r = _infer(client, "loss", {"predictions": pred, "labels": lab, "sample_weight": sw},
               parameters={"reduction": "none", "quantiles": "0.5,0.9"}, request_id="rid-1")
    assert r.get_response().id == "rid-1"
    _check(r, expected_outputs(kernels.loss(pred, lab, sample_weight=sw, reduction="none", quantiles=(0.5, 0.9))))


@pytest.mark.parametrize("ltype", LABEL_TYPES, ids=lambda t: np.dtype(t).name)
def test_grad_every_label_type(client, ltype):
    pred, lab = logits((5, 3), np.float32), hard01((5, 3), ltype)
    r = _infer(client, "grad", {"predictions": pred, "labels": lab})
    _check(r, expected_outputs(kernels.grad(pred, lab)))


def test_options_as_parameters(client):
    """Floats (double_param), strings, ints and bools as the JSON API's options."""
    p, y = probabilities(64), hard01(64, np.int8)
    params = {"input": "probabilities", "eps": 1e-6, "label_smoothing": 0.1, "reduction": "sum"}
    _check(_infer(client, "loss", {"predictions": p, "labels": y}, parameters=params),
           expected_outputs(kernels.loss(p, y, input="probabilities", eps=1e-6, label_smoothing=0.1,
                                         reduction="sum")))
    z = logits(64)
    params = {"loss": "focal", "gamma": 3, "alpha": 0.25}
    _check(_infer(client, "grad", {"predictions": z, "labels": y}, parameters=params),
           expected_outputs(kernels.grad(z, y, loss="focal", gamma=3, alpha=0.25)))
    _check(_infer(client, "grad", {"predictions": z, "labels": y}, parameters={"pos_weight": 2.5}),
           expected_outputs(kernels.grad(z, y, pos_weight=2.5)))
    params = {"dtype": "float32"}
    _check(_infer(client, "grad", {"predictions": z, "labels": y}, parameters=params),
           expected_outputs(kernels.grad(z, y, dtype="float32")))


def test_params_grad_and_outputs(client):
    rng = np.random.default_rng(3)
    x, w, y = rng.normal(size=(9, 4)), rng.normal(size=4), hard01(9, np.bool_)
    b = np.array([0.5])
    _check(_infer(client, "grad", {"features": x, "labels": y, "coef": w, "intercept": b},
                  parameters={"wrt": "params", "l2": 0.01}),
           expected_outputs(kernels.logreg_grad(x, y, w, 0.5, l2=0.01)))
    z, lab = logits(10), hard01(10)
    want = expected_outputs(kernels.loss(z, lab, reduction="none"))
    _check(_infer(client, "loss", {"predictions": z, "labels": lab}, parameters={"reduction": "none"},
                  outputs=["mean", "losses"]), {"mean": want["mean"], "losses": want["losses"]})


# ------------------------------------------------------------------------ errors

def _http_error(server, model: str, body: dict) -> str:
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def _json(name, a, datatype=None):
    return {"name": name, "datatype": datatype or _DT[a.dtype.str[1:]], "shape": list(a.shape),
            "data": a.ravel().tolist()}


@pytest.mark.parametrize("case", ["length", "unknown_param", "unknown_input", "kernel", "bad_option",
                                  "unknown_output"])
def test_bad_request_same_message_as_http(server, client, case):
    z, y = logits(4), hard01(4)
    arrays, params, outputs = {"predictions": z, "labels": y}, {}, None
    if case == "length":
        arrays["labels"] = hard01(3)
    elif case == "unknown_param":
        params = {"bogus": 1}
    elif case == "unknown_input":
        arrays["weights"] = z
    elif case == "kernel":
        arrays["predictions"] = np.array([0.5, 1.5, 0.2, 0.1])
        params = {"input": "probabilities"}
    elif case == "bad_option":
        params = {"reduction": "median"}
    elif case == "unknown_output":
        outputs = ["nope"]
    e = _grpc_error(_infer, client, "loss", arrays, parameters=params, outputs=outputs)
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e
    body = {"inputs": [_json(k, v) for k, v in arrays.items()], "parameters": params}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    assert e.message() == _http_error(server, "loss", body)


def test_unknown_model_not_found(client):
    e = _grpc_error(_infer, client, "nope", {"predictions": logits(3), "labels": hard01(3)})
    assert e.status() == "StatusCode.NOT_FOUND"
    assert e.message() == "unknown model 'nope'; this server has loss, grad"


def test_over_body_limit_resource_exhausted(server, client):
    """Over LOSSD_MAX_BODY_BYTES: the HTTP 413's words (the message size in them); over
    twice the limit grpc refuses the message itself, in its own."""
    n = 1200 * 1024 // 16  # 1200 KiB of FP64 predictions and labels, LOSSD_MAX_BODY_BYTES = 1 MiB
    e = _grpc_error(_infer, client, "loss", {"predictions": logits(n), "labels": hard01(n)})
    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED", e
    m = re.fullmatch(r"the body has (\d+) bytes; the limit is 1048576", e.message())
    assert m and 1200 * 1024 < int(m.group(1)) < 1300 * 1024, e.message()
    http = httpx.post(f"{server.url}/v2/models/loss/infer", content=b"x" * (1024 * 1024 + 1), timeout=TIMEOUT)
    assert http.status_code == 413 and http.json()["error"] == "the body has 1048577 bytes; the limit is 1048576"
    n = 2100 * 1024 // 16
    e = _grpc_error(_infer, client, "loss", {"predictions": logits(n), "labels": hard01(n)})
    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in e.message(), e
    z, y = logits(3), hard01(3)  # and the server goes on
    _check(_infer(client, "loss", {"predictions": z, "labels": y}), expected_outputs(kernels.loss(z, y)))


def test_metrics_count_grpc_calls(server, client):
    """Counted as HTTP requests are: the method as the route, ``gRPC`` as the method, the
    HTTP status of the same outcome (200, 400, 404, ...) as the status."""
    route = "/inference.GRPCInferenceService/ModelInfer"
    before = _grpc_counts(server, route)
    _infer(client, "loss", {"predictions": logits(3), "labels": hard01(3)})
    _grpc_error(_infer, client, "nope", {"predictions": logits(3), "labels": hard01(3)})
    bad = {"predictions": logits(3), "labels": np.array([0.0, 2.0, 1.0])}
    _grpc_error(_infer, client, "loss", bad)
    after = _grpc_counts(server, route)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == \
        {"200": 1, "404": 1, "400": 1}, (before, after)


def _grpc_counts(server, route: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "lossd_requests_total" and s.labels["route"] == route:
                assert s.labels["method"] == "gRPC", s.labels
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
    return out


# ------------------------------------------------------------------- token, workers

def test_token_unauthenticated():
    s = _serve(env={"LOSSD_API_TOKEN": TOKEN})
    with s:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        try:
            assert c.is_server_live(client_timeout=TIMEOUT)  # health is open, as /v2/health/
            arrays = {"predictions": logits(3), "labels": hard01(3)}
            for headers, why in ((None, "missing"), ({"authorization": "Bearer wrong"}, "wrong")):
                e = _grpc_error(_infer, c, "loss", arrays, headers=headers)
                assert e.status() == "StatusCode.UNAUTHENTICATED"
                http = httpx.post(f"{s.url}/v2/models/loss/infer", json={}, headers=headers or {},
                                  timeout=TIMEOUT)
                assert http.status_code == 401 and e.message() == http.json()["error"], (e, http.text)
                assert why in e.message()
            e = _grpc_error(c.get_model_metadata, "loss", client_timeout=TIMEOUT)
            assert e.status() == "StatusCode.UNAUTHENTICATED"
            r = _infer(c, "loss", arrays, headers=AUTH)
            _check(r, expected_outputs(kernels.loss(arrays["predictions"], arrays["labels"])))
        finally:
            c.close()


def test_two_workers_share_the_port():
    """Both workers listen on the gRPC port (SO_REUSEPORT) and calls on new channels,
    which the kernel spreads over them, all succeed."""
    psutil = pytest.importorskip("psutil")
    s = _serve("--workers", "2", env={"LOSSD_THREADS": "1"}, flag=True)
    with s:
        listeners = set()
        deadline = time.monotonic() + 60
        while len(listeners) < 2 and time.monotonic() < deadline:  # workers bind in their lifespan
            listeners = {pid for pid in s.children() for conn in _tcp(psutil, pid)
                         if conn.status == psutil.CONN_LISTEN and conn.laddr.port == s.grpc_port}
            time.sleep(0.1)
        assert len(listeners) == 2, (listeners, s.children())
        for _ in range(8):  # a new channel (connection) per call
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
            try:
                z, y = logits(5), hard01(5)
                _check(_infer(c, "loss", {"predictions": z, "labels": y}), expected_outputs(kernels.loss(z, y)))
            finally:
                c.close()
        assert s.stop() == 0  # SIGTERM: both gRPC servers stop in the lifespan, exit 0


def _tcp(psutil, pid: int) -> list:
    try:
        return psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return []


# ------------------------------------------------------- typed contents, raw framing

def _stub(server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel), service_pb2


def test_typed_contents_and_raw_count(server):
    """Tensors in ``contents`` (no raw_input_contents) decode as the raw ones do; raw
    contents must be one per input; a datatype's data in another contents field is refused."""
    import grpc

    channel, stub, pb = _stub(server)
    try:
        z, y = logits(6), hard01(6, np.int8)
        req = pb.ModelInferRequest(model_name="grad", id="typed")
        req.inputs.add(name="predictions", datatype="FP64", shape=[6]).contents.fp64_contents.extend(z.tolist())
        req.inputs.add(name="labels", datatype="INT8", shape=[6]).contents.int_contents.extend(y.tolist())
        resp = stub.ModelInfer(req, timeout=TIMEOUT)
        assert resp.id == "typed" and resp.model_version == "1"
        want = expected_outputs(kernels.grad(z, y))
        assert [o.name for o in resp.outputs] == list(want)
        for o, raw in zip(resp.outputs, resp.raw_output_contents):
            got = np.frombuffer(raw, dtype="<f8").reshape(list(o.shape))
            assert o.datatype == "FP64"
            assert_bits(got, want[o.name], o.name)

        bad = pb.ModelInferRequest()
        bad.CopyFrom(req)
        bad.inputs[1].contents.Clear()
        bad.inputs[1].contents.fp64_contents.extend([1.0] * 6)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(bad, timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details() == "input 'labels': INT8 data goes in contents.int_contents, got contents.fp64_contents"

        raw = pb.ModelInferRequest(model_name="loss")
        raw.inputs.add(name="predictions", datatype="FP64", shape=[6])
        raw.inputs.add(name="labels", datatype="INT8", shape=[6])
        raw.raw_input_contents.append(z.tobytes())
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(raw, timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents has 1 entries for 2 inputs" in exc.value.details()
        raw.raw_input_contents.append(y.tobytes()[:5])
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(raw, timeout=TIMEOUT)
        assert exc.value.details() == ("input 'labels': raw_input_contents[1] holds 5 bytes; shape [6] × INT8 "
                                       "(1 bytes) = 6")
        with pytest.raises(grpc.RpcError) as exc:  # a method of Triton's, not of KServe's service
            stub.ModelConfig(pb.ModelConfigRequest(name="loss"), timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()


# ------------------------------------------------------------------- in-process codec

def test_raw_inputs_are_views_of_the_message():
    """The codec (no server): raw_input_contents decode as read-only views of the received
    bytes, typed with the tensor's datatype, and outputs come back as raw_output_contents."""
    from lossd.service.codecs import oip_grpc
    from lossd.service.compute import compute
    from lossd.service.grpc_gen import grpc_predict_v2_pb2 as pb  # its own descriptor pool

    z, y = logits((3, 2), np.float32), hard01((3, 2), np.uint8)
    req = pb.ModelInferRequest(model_name="grad", id="v")
    req.inputs.add(name="predictions", datatype="FP32", shape=[3, 2])
    req.inputs.add(name="labels", datatype="UINT8", shape=[3, 2])
    req.raw_input_contents.extend([z.tobytes(), y.tobytes()])
    req.parameters["reduction"].string_param = "sum"
    body = req.SerializeToString()
    decoded = oip_grpc.CODEC.decode(body)
    whole = np.frombuffer(body, dtype=np.uint8)
    for name, want in (("predictions", z), ("labels", y)):
        arr = getattr(decoded.request, name)
        assert np.shares_memory(arr, whole) and not arr.flags.writeable, name
        assert_bits(arr, want, name)
    content, headers = oip_grpc.CODEC.encode(decoded, compute(decoded.request))
    assert headers == {}
    resp = pb.ModelInferResponse.FromString(content)
    want = expected_outputs(kernels.grad(z, y, reduction="sum"))
    assert (resp.model_name, resp.id, [o.name for o in resp.outputs]) == ("grad", "v", list(want))
    for o, raw in zip(resp.outputs, resp.raw_output_contents):
        assert_bits(np.frombuffer(raw, dtype=want[o.name].dtype).reshape(list(o.shape)), want[o.name], o.name)


def test_a_taken_port_stops_one_worker_from_starting():
    """One worker binds the gRPC port without SO_REUSEPORT: a port another process
    listens on is an error at start, not a silently shared port."""
    import socket

    with socket.socket() as taken:
        # SO_REUSEPORT on the holder too: only lossd's not asking for it makes the bind fail
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = lossd_serve(env={"LOSSD_GRPC_PORT": str(port)})
        try:
            with pytest.raises(RuntimeError):
                s.start(timeout=60)
            assert "cannot bind 127.0.0.1:" in s.stderr() + s.stdout()
        finally:
            s.close()
