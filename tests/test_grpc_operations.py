"""The gRPC server's operational limits on a real ``lossd serve`` (grpc_server.py): the
HTTP front door's settings in gRPC's terms. Calls in progress and connections capped by
LOSSD_MAX_CONNECTIONS (UNAVAILABLE with the HTTP 503's words; connections beyond closed),
a call's message must arrive within LOSSD_BODY_TIMEOUT (DEADLINE_EXCEEDED, the 408's
words), a connection that never speaks HTTP/2 is closed (LOSSD_HEADER_TIMEOUT), typed
``contents`` from LOSSD_LANE_BYTES go to the large lane (raw ones never), a full kernel
queue answers UNAVAILABLE ``busy: ...`` (HTTP's 503), and the HTTP drain (SIGTERM) stops
new calls while one in progress finishes.

No timing guesses: a call "in progress" is a stream call whose message the test holds
back (the server's handler runs from the call's start: ``lossd_requests_in_flight`` shows
it), released when the test says so. Every wait is bounded."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from lossd import kernels

from oip_helpers import assert_bits, expected_outputs, hard01, logits
from service_helpers import free_port, lossd_serve

grpc = pytest.importorskip("grpc")
pb = pytest.importorskip("tritonclient.grpc.service_pb2")

INFER = "/inference.GRPCInferenceService/ModelInfer"
TIMEOUT = 30.0
MAX_CALLS = 2
BODY_TIMEOUT = 4  # s: held calls are released well within it


def _serve(env: dict[str, str]):
    port = free_port()
    s = lossd_serve(env={"LOSSD_GRPC_PORT": str(port), "LOSSD_WORKERS": "1", **env})
    s.grpc_port = port
    return s


@pytest.fixture(scope="module")
def server():
    s = _serve({"LOSSD_MAX_CONNECTIONS": str(MAX_CALLS), "LOSSD_BODY_TIMEOUT": str(BODY_TIMEOUT),
                "LOSSD_HEADER_TIMEOUT": "1"})
    try:
        yield s.start()
        assert "unhandled error" not in s.stderr() + s.stdout(), s.stderr()[-3000:]
    finally:
        s.close()


def _request(n: int = 5) -> tuple[bytes, np.ndarray, np.ndarray]:
    z, y = logits(n), hard01(n, np.int8)
    req = pb.ModelInferRequest(model_name="loss")
    req.inputs.add(name="predictions", datatype="FP64", shape=[n])
    req.inputs.add(name="labels", datatype="INT8", shape=[n])
    req.raw_input_contents.extend([z.tobytes(), y.tobytes()])
    return req.SerializeToString(), z, y


def _check_loss(raw: bytes, z: np.ndarray, y: np.ndarray) -> None:
    resp = pb.ModelInferResponse.FromString(raw)
    want = expected_outputs(kernels.loss(z, y))
    assert [o.name for o in resp.outputs] == list(want)
    for o, data in zip(resp.outputs, resp.raw_output_contents):
        assert_bits(np.frombuffer(data, dtype="<f8").reshape(list(o.shape)), want[o.name], o.name)


class HeldCall:
    """A ModelInfer call whose one message waits for ``release()`` (a stream call: the
    server starts the call before its message, as for a slow client)."""

    def __init__(self, channel: grpc.Channel, body: bytes) -> None:
        self._go = threading.Event()

        def messages():
            if self._go.wait(TIMEOUT):
                yield body

        call = channel.stream_unary(INFER, request_serializer=None, response_deserializer=None)
        self.future = call.future(messages(), timeout=TIMEOUT)

    def send(self) -> None:
        self._go.set()

    def release(self) -> bytes:
        self.send()
        return self.future.result(TIMEOUT)


def _unary(channel: grpc.Channel, body: bytes) -> bytes:
    return channel.unary_unary(INFER)(body, timeout=TIMEOUT)


def _in_flight(server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    for line in text.splitlines():
        if line.startswith("lossd_requests_in_flight "):
            return float(line.split()[1]) - 1  # not this /metrics request
    raise AssertionError(text)


def _wait_in_flight(server, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (got := _in_flight(server)) != n:
        assert time.monotonic() < deadline, f"{got} calls in flight, expected {n}"
        time.sleep(0.02)


def _statuses(server) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text):
        for s in fam.samples:
            if s.name == "lossd_requests_total" and s.labels["route"] == INFER:
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
    return out


# --------------------------------------------------------------- LOSSD_MAX_CONNECTIONS

def test_calls_beyond_the_cap_get_unavailable_and_the_others_finish(server):
    before = _statuses(server)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        held = []
        for i in range(MAX_CALLS):
            body, z, y = _request()
            held.append((HeldCall(channel, body), z, y))
        _wait_in_flight(server, MAX_CALLS)
        body, _, _ = _request()
        with pytest.raises(grpc.RpcError) as exc:
            _unary(channel, body)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert exc.value.details() == (f"the server has {MAX_CALLS} calls in progress (LOSSD_MAX_CONNECTIONS); "
                                       "retry shortly")
        for call, z, y in held:  # the ones in progress are served
            _check_loss(call.release(), z, y)
        body, z, y = _request()
        _check_loss(_unary(channel, body), z, y)  # and a call fits again
    after = _statuses(server)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == \
        {"200": MAX_CALLS + 1, "503": 1}, (before, after)
    assert server.alive()


def _own_connection(server) -> grpc.Channel:
    # channels of one process otherwise share a connection to the same target
    return grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])


def test_connections_beyond_the_cap_are_closed(server):
    channels = [_own_connection(server) for _ in range(MAX_CALLS + 1)]
    try:
        body, z, y = _request()
        for c in channels[:MAX_CALLS]:  # each connects; kept open (idle timeout: 5 s)
            _check_loss(_unary(c, body), z, y)
        with pytest.raises(grpc.RpcError) as exc:
            _unary(channels[-1], body)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
        channels[0].close()  # one leaves: a new connection is taken (once the server saw it go)
        deadline = time.monotonic() + TIMEOUT
        while True:
            with _own_connection(server) as c:
                try:
                    _check_loss(c.unary_unary(INFER)(body, timeout=5), z, y)
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, e
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200  # HTTP's own cap
    finally:
        for c in channels:
            c.close()


def test_a_malformed_request_message_is_invalid_argument(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as exc:
            channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")(b"\xff\xff\xff", timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value
        assert exc.value.details().startswith("the request is not a valid ModelMetadataRequest: "), exc.value
        with pytest.raises(grpc.RpcError) as exc:  # ModelInfer: the codec's own words
            _unary(channel, b"\xff\xff\xff")
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value
        assert "not a valid ModelInferRequest" in exc.value.details(), exc.value
    assert server.alive() and "unhandled error" not in server.stderr()


# ----------------------------------------------------------------- timeouts

def test_a_message_that_does_not_arrive_gets_deadline_exceeded(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        go = threading.Event()

        def never():
            go.wait(TIMEOUT)
            return
            yield

        call = channel.stream_unary(INFER).future(never(), timeout=TIMEOUT)
        try:
            with pytest.raises(grpc.RpcError) as exc:
                call.result(TIMEOUT)
        finally:
            go.set()
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc.value
        assert exc.value.details() == f"the body did not arrive within {BODY_TIMEOUT} s (LOSSD_BODY_TIMEOUT)"
        body, z, y = _request()
        _check_loss(_unary(channel, body), z, y)


def test_a_connection_that_never_speaks_http2_is_closed(server):
    """LOSSD_HEADER_TIMEOUT = 1 s: grpc's handshake timeout closes it (no call to answer)."""
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=TIMEOUT) as s:
        start = time.monotonic()
        while s.recv(65536):  # the server's SETTINGS frame may come first; then EOF
            assert time.monotonic() - start < TIMEOUT
        assert time.monotonic() - start < 10


# ---------------------------------------------------------------------- large lane

def test_typed_contents_go_to_the_large_lane_raw_ones_do_not():
    """With the lane stopped (SIGSTOP), a raw call is answered (it never goes there) while
    a typed-contents call of the same size waits for the lane until its deadline; once
    the lane runs again a typed call is answered by it, exact."""
    s = _serve({"LOSSD_LANE_BYTES": "1024", "LOSSD_INLINE_BYTES": "0"})
    with s:
        kids = [p for p in psutil.Process(s.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(kids) == 1, [p.cmdline() for p in kids]
        lane = kids[0]
        n = 2000  # 16 kB of FP64 predictions: over LOSSD_LANE_BYTES either way
        body, z, y = _request(n)
        req = pb.ModelInferRequest(model_name="loss")
        req.inputs.add(name="predictions", datatype="FP64", shape=[n]).contents.fp64_contents.extend(z.tolist())
        req.inputs.add(name="labels", datatype="INT8", shape=[n]).contents.int_contents.extend(y.tolist())
        typed = req.SerializeToString()
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            lane.suspend()
            try:
                _check_loss(_unary(channel, body), z, y)
                with pytest.raises(grpc.RpcError) as exc:
                    channel.unary_unary(INFER)(typed, timeout=3)
                assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc.value
            finally:
                lane.resume()
            _check_loss(_unary(channel, typed), z, y)
        assert lane.is_running() and "the large lane is gone" not in s.stderr()


# ---------------------------------------------------------------------------- drain

def test_the_http_drain_stops_new_calls_and_lets_one_in_progress_finish():
    s = _serve({})
    with s:
        target = f"127.0.0.1:{s.grpc_port}"
        with grpc.insecure_channel(target) as channel:
            body, z, y = _request()
            held = HeldCall(channel, body)
            _wait_in_flight(s, 1)
            s._signal_group(15)  # SIGTERM: the drain begins
            s.wait_for_output("the gRPC server takes no new calls", timeout=TIMEOUT, stream="stderr")
            with grpc.insecure_channel(target) as fresh:  # on the held call's connection and a new one
                for c in (channel, fresh):
                    with pytest.raises(grpc.RpcError) as exc:
                        _unary(c, _request()[0])
                    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
            _check_loss(held.release(), z, y)  # the call in progress is served
        assert s.proc.wait(TIMEOUT) == 0


# ------------------------------------------------------------------ kernel queue full

BIG = 2_000_000  # elements: quantiles sort them, tens of milliseconds in the one slot
HELD_PER_ROUND, MAX_ROUNDS = 4, 5


def test_a_full_kernel_queue_answers_unavailable_busy_as_http_503():
    """One kernel slot, no queue: calls whose messages are released together find it
    taken (HTTP's 503 ``busy: ...``, as UNAVAILABLE); the ones served are exact. As
    test_queue_full.py: no timing guess, rounds (a bounded few) until one was refused."""
    s = _serve({"LOSSD_MAX_CONCURRENCY": "1", "LOSSD_MAX_QUEUE": "0", "LOSSD_INLINE_BYTES": "0",
                "LOSSD_LANE_BYTES": "0", "LOSSD_THREADS": "1"})
    with s:
        z, y = logits(BIG), hard01(BIG, np.int8)
        req = pb.ModelInferRequest(model_name="loss")
        req.inputs.add(name="predictions", datatype="FP64", shape=[BIG])
        req.inputs.add(name="labels", datatype="INT8", shape=[BIG])
        req.parameters["quantiles"].string_param = "0.5,0.9"
        req.raw_input_contents.extend([z.tobytes(), y.tobytes()])
        body = req.SerializeToString()
        want = kernels.loss(z, y, quantiles=(0.5, 0.9))
        before = _statuses(s)
        outcomes: list[str] = []
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}",
                                   options=[("grpc.max_send_message_length", -1)]) as channel:
            for _ in range(MAX_ROUNDS):
                held = [HeldCall(channel, body) for _ in range(HELD_PER_ROUND)]
                _wait_in_flight(s, HELD_PER_ROUND)
                for h in held:  # every message at once: one takes the slot, the others find it taken
                    h.send()
                for h in held:
                    try:
                        resp = pb.ModelInferResponse.FromString(h.future.result(TIMEOUT))
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                        assert e.details() == "busy: 1 requests are running or queued; retry shortly", e
                        outcomes.append("busy")
                        continue
                    got = {o.name: np.frombuffer(r, "<f8")[0] for o, r in zip(resp.outputs, resp.raw_output_contents)}
                    assert got["loss"] == want.loss and got["p90"] == want.stats["p90"], got
                    outcomes.append("ok")
                if "busy" in outcomes:
                    break
        assert "busy" in outcomes and "ok" in outcomes, outcomes
        after = _statuses(s)
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert delta == {"200": outcomes.count("ok"), "503": outcomes.count("busy")}, (delta, outcomes)
        assert s.alive()
