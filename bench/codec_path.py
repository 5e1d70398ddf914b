"""Per-request in-process cost of a request's path: decode + compute + encode, no HTTP.

    python bench/codec_path.py [--repeat R]

For each case the body is built once, then the function a route runs on the body (the
JSON /loss path, the OIP infer path with JSON tensors, the OIP infer path with binary
tensors, and OIP over gRPC's ModelInfer with raw_input_contents where it exists) is timed ``R`` times with ``time.perf_counter``; the table has the minimum and
the median in microseconds. The kernels run with one thread so that the figures say
what the path costs, not how the machine's cores were shared at the time.

Works on both sides of issue 13 (the codec/request-model split): it uses the codecs
(``lossd.service.codecs``) when they exist, else the old route helpers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from _common import log, make_data, md_table, use_checkout

use_checkout()

import orjson  # noqa: E402

from lossd import kernels  # noqa: E402


def _paths() -> tuple[Callable, Callable]:
    """(json_loss(body), oip_infer(body, header_length)) for this checkout."""
    from lossd.service.limits import BodyLimits

    limits = BodyLimits(max_json_depth=64, max_elements=None)
    try:
        from lossd.service import pipeline  # after issue 13
    except ImportError:
        pipeline = None
    if pipeline is not None:
        def json_loss(body):
            return pipeline.run_json(body, "loss", limits)

        def oip_infer(body, header_length):
            return pipeline.run_oip(body, "loss", header_length, limits)
        return json_loss, oip_infer

    from lossd.service import routes_json, routes_oip  # before issue 13
    from lossd.service.compute import compute_loss

    model = routes_oip.MODELS["loss"]

    def json_loss(body):
        return routes_json._run_json(body, compute_loss, limits)

    def oip_infer(body, header_length):
        return routes_oip._decode_and_infer(body, model, header_length, limits)
    return json_loss, oip_infer


# the options of the "with options" cases: validated, unlike a request without any
OPTIONS = {"reduction": "none", "quantiles": [0.5, 0.9], "label_smoothing": 0.1}


def json_body(n: int, options: bool = False) -> bytes:
    s, y = make_data(n)
    return orjson.dumps({"predictions": s, "labels": y, **(OPTIONS if options else {})},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def oip_json_body(n: int, options: bool = False) -> bytes:
    s, y = make_data(n)
    params = {**OPTIONS, "quantiles": "0.5,0.9"} if options else {}
    return orjson.dumps({"inputs": [
        {"name": "predictions", "datatype": "FP64", "shape": [n], "data": s},
        {"name": "labels", "datatype": "FP64", "shape": [n], "data": y}], "parameters": params},
        option=orjson.OPT_SERIALIZE_NUMPY)


def oip_binary_body(n: int) -> tuple[bytes, str]:
    s, y = make_data(n)
    head = orjson.dumps({"inputs": [
        {"name": "predictions", "datatype": "FP64", "shape": [n], "parameters": {"binary_data_size": 8 * n}},
        {"name": "labels", "datatype": "FP64", "shape": [n], "parameters": {"binary_data_size": 8 * n}}],
        "parameters": {"binary_data_output": True}})
    return head + s.tobytes() + y.tobytes(), str(len(head))


def _grpc_path() -> Callable | None:
    """grpc_infer(body) when this checkout serves OIP over gRPC, else None."""
    try:
        from lossd.service import pipeline
        from lossd.service.grpc_gen import grpc_predict_v2_pb2  # noqa: F401
    except ImportError:
        return None
    from lossd.service.limits import BodyLimits

    limits = BodyLimits(max_json_depth=64, max_elements=None)
    return lambda body: pipeline.run_grpc(body, limits)


def oip_grpc_body(n: int) -> bytes:
    """A serialized ModelInferRequest with raw_input_contents (what tritonclient.grpc sends)."""
    from lossd.service.grpc_gen import grpc_predict_v2_pb2 as pb

    s, y = make_data(n)
    req = pb.ModelInferRequest(model_name="loss")
    req.inputs.add(name="predictions", datatype="FP64", shape=[n])
    req.inputs.add(name="labels", datatype="FP64", shape=[n])
    req.raw_input_contents.extend([s.tobytes(), y.tobytes()])
    return req.SerializeToString()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm: parsers, pools, caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e6, statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=0, help="runs per case (default: by size)")
    args = ap.parse_args()
    kernels.set_threads(1)
    json_loss, oip_infer = _paths()
    cases = []
    for n in (10, 100_000):
        body = json_body(n)
        cases.append((f"JSON /loss, n = {n:,}", len(body), lambda b=body: json_loss(b), n))
    body = json_body(10, options=True)
    cases.append(("JSON /loss, n = 10, with options", len(body), lambda b=body: json_loss(b), 10))
    for n in (10, 100_000):
        body = oip_json_body(n)
        cases.append((f"OIP JSON, n = {n:,}", len(body), lambda b=body: oip_infer(b, None), n))
    body = oip_json_body(10, options=True)
    cases.append(("OIP JSON, n = 10, with options", len(body), lambda b=body: oip_infer(b, None), 10))
    for n in (100_000, 1_000_000):
        body, hl = oip_binary_body(n)
        cases.append((f"OIP binary, n = {n:,}", len(body), lambda b=body, h=hl: oip_infer(b, h), n))
    grpc_infer = _grpc_path()
    if grpc_infer is not None:
        for n in (100_000, 1_000_000):
            body = oip_grpc_body(n)
            cases.append((f"OIP gRPC, n = {n:,}", len(body), lambda b=body: grpc_infer(b), n))
    rows = []
    for name, size, fn, n in cases:
        repeat = args.repeat or (2000 if n <= 10 else 200 if n <= 100_000 else 40)
        log(f"{name}: {repeat} runs")
        best, median = timed(fn, repeat)
        rows.append([name, f"{size:,}", f"{best:,.1f}", f"{median:,.1f}"])
    print(md_table(["case", "body bytes", "min µs", "median µs"], rows))


if __name__ == "__main__":
    main()
