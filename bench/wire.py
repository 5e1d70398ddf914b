#!/usr/bin/env python
"""The wire table: one loss over every transport lossd speaks, against the kernel called
in this process, with MLServer beside it (issue 14).

    python bench/wire.py [--quick] [--out bench/out] [--mlserver-venv DIR]
                         [--json-max-n N] [--mlserver-max-n N]

Starts one ``lossd serve`` (1 worker, access log off, HTTP + OIP over gRPC + system
shared memory, body limit raised so that JSON at 10^7 fits) and, if MLServer's venv
exists (``make bench-mlserver`` / bench/mlserver_setup.sh makes bench/.venv-mlserver),
MLServer on bench/mlserver_model/ as bench/mlserver.py starts it. Then, for each n, the
same mean binary cross-entropy on n float64 logits and labels (``make_data``) over:

- ``kernel``: ``kernels.loss`` in this process (the kernel threads the server has: every
  core), the ceiling every transport is measured against;
- ``JSON /loss``, ``OIP JSON``, ``OIP binary``: bench/oip.py's bodies, over one
  keep-alive ``http.client`` connection;
- ``OIP gRPC``: a serialized ``ModelInferRequest`` with ``raw_input_contents``, sent as
  bytes on one grpc channel (no client-side (de)serialization in the timing);
- ``shm HTTP``, ``shm gRPC``: the inputs in a POSIX shared memory region
  (``tritonclient.utils.shared_memory``), registered once; the request only names it.
  **The region is written once, before any timing: the figures exclude the client's copy
  of the tensors into shared memory** (a client that produces its tensors in the region
  pays nothing more; one that copies them pays ~16 bytes per element at memcpy speed);
- ``MLServer OIP JSON``: the OIP JSON body to MLServer (its NumPy model), and
  ``MLServer gRPC``: a ``ModelInferRequest`` with typed ``fp64_contents`` to its gRPC port
  (typed contents are what MLServer's gRPC reads in every 1.x release).

Every body is built before the clock starts. Within one n the cases take turns request by
request (the order reverses every turn; one that has spent its budget drops out), so a
burst of load on this shared machine hits them alike: the ratios of one run are the
figures to trust. A cell ends after ``budget`` seconds and ``min`` requests, or ``max``
requests, or ``cap`` seconds (so a 10^7 JSON cell ends in bounded time). Every answer is
cross-checked: within 1e-12 relative of ``kernels.loss`` in this process (lossd's are
equal to the bit; MLServer's NumPy mean is not exactly rounded).

Writes ``<out>/wire.md`` (also printed) and ``<out>/wire.json``; server logs go to <out>.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import http.client
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# bench/ is sys.path[0] until use_checkout() (oip.py calls it when imported) takes it off
from _common import (BENCH_DIR, BadResponse, CpuMeter, Latencies, Server, exit_code, fmt, footer_line,
                     http_environment, json_head, load_at_start, load_head, log, lossd_server, make_data,
                     md_table, servers_cpu_s, start_all, stop_all, stop_on_sigterm, write_report)
from mlserver import DEFAULT_VENV, mlserver_server, mlserver_venv_info  # imports oip: use_checkout()
from oip import JSON_LOSS, OIP_JSON, KeepAlive, json_loss_request, loss_of, oip_binary_request, oip_json_request

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

# Stable row labels: tests/test_bench_wire_smoke.py looks for them in the table.
KERNEL, OIP_BIN, GRPC, SHM_HTTP, SHM_GRPC = "kernel", "OIP binary", "OIP gRPC", "shm HTTP", "shm gRPC"
ML_JSON, ML_GRPC = "MLServer OIP JSON", "MLServer gRPC"
CASES = (KERNEL, JSON_LOSS, OIP_JSON, OIP_BIN, GRPC, SHM_HTTP, SHM_GRPC, ML_JSON, ML_GRPC)
LEGEND = {
    KERNEL: "`kernels.loss(s, y)` in this process: no transport (the ceiling)",
    JSON_LOSS: "lossd `POST /loss`, body `orjson.dumps({predictions, labels})`",
    OIP_JSON: "lossd `POST /v2/models/loss/infer`, both tensors as JSON `data`",
    OIP_BIN: "lossd, the same endpoint with a JSON header + raw FP64 bytes (binary tensor data extension)",
    GRPC: "lossd `inference.GRPCInferenceService/ModelInfer`, FP64 `raw_input_contents`",
    SHM_HTTP: "lossd OIP over HTTP, inputs in a registered system shared memory region (written once, untimed)",
    SHM_GRPC: "lossd OIP over gRPC, the same region",
    ML_JSON: "MLServer 1.x (bench/mlserver_model/, NumPy) `POST /v2/models/loss/infer`, the OIP JSON body",
    ML_GRPC: "MLServer's ModelInfer, FP64 typed `contents.fp64_contents`",
}
INFER_PATH = "/v2/models/loss/infer"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
REL_TOL = 1e-12
GRPC_MAX = 2**31 - 1  # bytes: grpc's largest message length setting
SHM_KEY, SHM_REGION = "/lossd_bench_wire", "wire_inputs"  # the key under LOSSD_SHM_PREFIX (/lossd)


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    budget_s: float    # per cell: keep sending while under it ...
    min_requests: int  # ... or while fewer than this many were timed ...
    max_requests: int  # ... but never more than this ...
    cap_s: float       # ... and stop once a cell has spent this long
    startup_s: float

    def done(self, cell: "Cell") -> bool:
        spent = sum(cell.times)
        return (cell.count >= self.max_requests or spent >= self.cap_s
                or (spent >= self.budget_s and cell.count >= self.min_requests))


FULL = Config(sizes=(10**3, 10**4, 10**5, 10**6, 10**7), budget_s=1.5, min_requests=5, max_requests=500,
              cap_s=8.0, startup_s=300)
QUICK = Config(sizes=(10**3, 10**5), budget_s=0.05, min_requests=3, max_requests=20, cap_s=2.0,
               startup_s=120)


@dataclass
class Cell(Latencies):
    case: str
    n: int
    body_bytes: int
    times: list[float] = field(default_factory=list)
    losses: set[float] = field(default_factory=set)

    @property
    def melem_s(self) -> float:
        """Million elements (of predictions) per second: n x requests over their time."""
        return self.n * len(self.times) / sum(self.times) / 1e6

    def summary(self) -> dict:
        return {"case": self.case, "n": self.n, "body_bytes": self.body_bytes, "requests": self.count,
                "requests_per_s": self.rps, "melem_per_s": self.melem_s, **self.latency_summary(),
                "losses": sorted(self.losses)}


@dataclass
class Run:
    cfg: Config
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    expected: dict[int, float] = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)
    servers: dict[str, dict] = field(default_factory=dict)
    mlserver: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def cell(self, case: str, n: int) -> Cell | None:
        c = self.cells.get((case, n))
        return c if c is not None and c.times else None

    def vs_kernel(self, case: str, n: int) -> float | None:
        """The case's elements/s as a share of the in-process kernel's."""
        a, k = self.cell(case, n), self.cell(KERNEL, n)
        return None if a is None or k is None else a.melem_s / k.melem_s


# --------------------------------------------------------------------------- requests

def grpc_raw_request(s: np.ndarray, y: np.ndarray, pb) -> bytes:
    req = pb.ModelInferRequest(model_name="loss")
    for name, a in (("predictions", s), ("labels", y)):
        req.inputs.add(name=name, datatype="FP64", shape=[a.size])
        req.raw_input_contents.append(a.astype("<f8", copy=False).tobytes())
    return req.SerializeToString()


def grpc_typed_request(s: np.ndarray, y: np.ndarray, pb) -> bytes:
    req = pb.ModelInferRequest(model_name="loss")
    for name, a in (("predictions", s), ("labels", y)):
        req.inputs.add(name=name, datatype="FP64", shape=[a.size]).contents.fp64_contents.extend(a)
    return req.SerializeToString()


def shm_spans(n: int, n_max: int) -> dict[str, tuple[int, int]]:
    """(offset, bytes) of each input in the region: predictions at 0, labels at 8·n_max
    (each n uses the first n of both: the region is written once for every n)."""
    return {"predictions": (0, 8 * n), "labels": (8 * n_max, 8 * n)}


def shm_http_body(n: int, n_max: int) -> bytes:
    inputs = [{"name": name, "datatype": "FP64", "shape": [n],
               "parameters": {"shared_memory_region": SHM_REGION, "shared_memory_offset": off,
                              "shared_memory_byte_size": size}}
              for name, (off, size) in shm_spans(n, n_max).items()]
    return orjson.dumps({"inputs": inputs})


def shm_grpc_request(n: int, n_max: int, pb) -> bytes:
    req = pb.ModelInferRequest(model_name="loss")
    for name, (off, size) in shm_spans(n, n_max).items():
        t = req.inputs.add(name=name, datatype="FP64", shape=[n])
        t.parameters["shared_memory_region"].string_param = SHM_REGION
        t.parameters["shared_memory_offset"].int64_param = off
        t.parameters["shared_memory_byte_size"].int64_param = size
    return req.SerializeToString()


def grpc_loss(content: bytes, pb) -> float:
    """The output ``loss`` of a serialized ModelInferResponse (raw or typed)."""
    resp = pb.ModelInferResponse.FromString(content)
    for i, o in enumerate(resp.outputs):
        if o.name == "loss":
            if resp.raw_output_contents:
                return float(np.frombuffer(resp.raw_output_contents[i], "<f8", count=1)[0])
            return float(o.contents.fp64_contents[0])
    raise ValueError("no loss output in the answer")


# --------------------------------------------------------------------------- servers

def wire_lossd_server(out: Path, max_body: int) -> tuple[Server, int]:
    from _common import free_port

    grpc_port = free_port()
    srv = lossd_server(out / "wire-lossd.log", access_log=False,
                       extra=["--max-body-bytes", str(max_body), "--grpc-port", str(grpc_port)])
    srv.env["LOSSD_SHM"] = "true"
    return srv, grpc_port


# --------------------------------------------------------------------------- run

Sender = Callable[[], float]  # one request; returns the loss it answered


def http_sender(conn: KeepAlive, url: str, body: bytes, headers: dict[str, str], kind: str) -> Sender:
    def send() -> float:
        r = conn.post(url, body, headers)
        if r.status_code != 200:
            raise BadResponse(f"HTTP {r.status_code}: {r.content[:300]!r}")
        return loss_of(kind, r.content, r.headers)
    return send


def grpc_sender(call, body: bytes, pb) -> Sender:
    return lambda: grpc_loss(call(body, timeout=600), pb)


def kernel_sender(s: np.ndarray, y: np.ndarray) -> Sender:
    from lossd import kernels

    return lambda: kernels.loss(s, y).loss


def measure(r: Run, n: int, senders: dict[str, Sender], sizes: dict[str, int]) -> None:
    """Every case at one n, in turns; a case that fails drops out with its error."""
    import grpc

    cfg = r.cfg
    cells = {c: r.cells.setdefault((c, n), Cell(c, n, sizes[c])) for c in senders}
    active = list(senders)
    turn = 0
    gc.disable()  # a client-side collection is not the server's latency
    try:
        while active:
            for case in list(active if turn % 2 == 0 else active[::-1]):
                cell = cells[case]
                try:
                    if turn == 0 and not (case in (JSON_LOSS, OIP_JSON, ML_JSON) and n >= 10**7):
                        cell.losses.add(senders[case]())  # one untimed warm-up (not for seconds-long JSON)
                    t0 = time.perf_counter_ns()
                    loss = senders[case]()
                    cell.times.append((time.perf_counter_ns() - t0) / 1e9)
                    cell.losses.add(loss)
                except (BadResponse, OSError, http.client.HTTPException, grpc.RpcError, ValueError, KeyError) as exc:
                    active.remove(case)
                    cell.times.clear()
                    msg = exc.details() if isinstance(exc, grpc.RpcError) else exc
                    r.errors.append(f"{case} n={n:.0e}: {type(exc).__name__}: {str(msg)[:500]}")
                    log(f"ERROR: {r.errors[-1]}")
                    continue
                if cfg.done(cell):
                    active.remove(case)
            turn += 1
    finally:
        gc.enable()
    want = r.expected[n]
    for case, c in cells.items():
        bad = [x for x in c.losses if not abs(x - want) <= REL_TOL * abs(want)]
        if bad:
            r.errors.append(f"{case} n={n:.0e}: loss {bad[0]!r} differs from kernels.loss {want!r} by "
                            f"{abs(bad[0] - want) / abs(want):.3g} relative (> {REL_TOL:g})")


def run(cfg: Config, out: Path, venv: Path | None, json_max_n: int, mlserver_max_n: int) -> Run:
    import grpc
    import tritonclient.grpc.service_pb2 as pb
    import tritonclient.utils.shared_memory as shm

    from lossd import kernels

    r = Run(cfg)
    n_max = max(cfg.sizes)
    s_all, y_all = make_data(n_max)
    for n in cfg.sizes:
        r.expected[n] = kernels.loss(s_all[:n], y_all[:n]).loss
    # the body limit admits the largest JSON body of the run (~25 bytes a number)
    max_body = max(64 * 1024 * 1024, 2 * 26 * min(n_max, json_max_n) + 4096)
    lossd, grpc_port = wire_lossd_server(out, max_body)
    servers: list[Server] = [lossd]
    ml_grpc_port = None
    if venv is not None:
        r.mlserver = {"venv": str(venv), **mlserver_venv_info(venv)}
        ml, settings = mlserver_server(out, venv)
        # grpc's 4 MB default would refuse MLServer's typed 10^6 message (16 MB): raised, as
        # lossd's body limit is, in the run's copy of its settings only
        settings["grpc_max_message_length"] = GRPC_MAX
        (out.resolve() / "mlserver" / "loss" / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        r.mlserver["settings"] = settings
        ml_grpc_port = settings["grpc_port"]
        servers.append(ml)
    else:
        r.not_measured.append(f"{ML_JSON}, {ML_GRPC}: no MLServer venv ({DEFAULT_VENV.name}; "
                              "`make bench-mlserver` or bash bench/mlserver_setup.sh makes it)")
    region = shm.create_shared_memory_region(SHM_REGION, SHM_KEY, 16 * n_max)
    channel_options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channels: list = []
    conn = KeepAlive(timeout=600.0)
    with httpx.Client(timeout=60.0, trust_env=False) as client:
        try:
            # written once, before any timing (see the docstring)
            shm.set_shared_memory_region(region, [s_all.astype("<f8")])
            shm.set_shared_memory_region(region, [y_all.astype("<f8")], offset=8 * n_max)
            log("starting the servers ...")
            start_all(servers, client, cfg.startup_s)
            for srv in servers:
                r.servers[srv.name] = srv.info()
            reg = client.post(f"{lossd.url}/v2/systemsharedmemory/region/{SHM_REGION}/register",
                              json={"key": SHM_KEY, "offset": 0, "byte_size": 16 * n_max})
            if reg.status_code != 200:
                raise RuntimeError(f"registering the shared memory region: {reg.status_code} {reg.text}")
            lossd_channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=channel_options)
            channels.append(lossd_channel)
            lossd_call = lossd_channel.unary_unary(INFER_METHOD)
            ml_call = None
            if ml_grpc_port is not None:
                ml_channel = grpc.insecure_channel(f"127.0.0.1:{ml_grpc_port}", options=channel_options)
                channels.append(ml_channel)
                ml_call = ml_channel.unary_unary(INFER_METHOD)
            for n in cfg.sizes:
                s, y = s_all[:n], y_all[:n]
                senders: dict[str, Sender] = {KERNEL: kernel_sender(s, y)}
                sizes = {KERNEL: 0}
                oip_json = oip_json_request(s, y)
                if n <= json_max_n:
                    req = json_loss_request(s, y)
                    senders[JSON_LOSS] = http_sender(conn, lossd.url + req.path, req.body, req.headers, JSON_LOSS)
                    senders[OIP_JSON] = http_sender(conn, lossd.url + INFER_PATH, oip_json.body, oip_json.headers,
                                                    OIP_JSON)
                    sizes.update({JSON_LOSS: len(req.body), OIP_JSON: len(oip_json.body)})
                else:
                    r.not_measured.append(f"{JSON_LOSS}, {OIP_JSON} at n = {n:.0e}: n > --json-max-n")
                req = oip_binary_request(s, y)
                senders[OIP_BIN] = http_sender(conn, lossd.url + INFER_PATH, req.body, req.headers, OIP_BIN)
                sizes[OIP_BIN] = len(req.body)
                body = grpc_raw_request(s, y, pb)
                senders[GRPC], sizes[GRPC] = grpc_sender(lossd_call, body, pb), len(body)
                body = shm_http_body(n, n_max)
                senders[SHM_HTTP] = http_sender(conn, lossd.url + INFER_PATH, body,
                                                {"content-type": "application/json"}, OIP_JSON)
                sizes[SHM_HTTP] = len(body)
                body = shm_grpc_request(n, n_max, pb)
                senders[SHM_GRPC], sizes[SHM_GRPC] = grpc_sender(lossd_call, body, pb), len(body)
                if ml_call is not None and n <= mlserver_max_n:
                    ml_url = servers[1].url + INFER_PATH
                    senders[ML_JSON] = http_sender(conn, ml_url, oip_json.body, oip_json.headers, OIP_JSON)
                    body = grpc_typed_request(s, y, pb)
                    senders[ML_GRPC], sizes[ML_GRPC] = grpc_sender(ml_call, body, pb), len(body)
                    sizes[ML_JSON] = len(oip_json.body)
                elif ml_call is not None:
                    r.not_measured.append(f"{ML_JSON}, {ML_GRPC} at n = {n:.0e}: n > --mlserver-max-n")
                log(f"n={n:.0e}: {len(senders)} cases, load {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
                measure(r, n, senders, sizes)
                del senders, oip_json, req, body
        finally:
            conn.close()
            for ch in channels:
                ch.close()
            stop_all(servers, r.servers)
            shm.destroy_shared_memory_region(region)
    return r


# --------------------------------------------------------------------------- output

def results_table(r: Run) -> str:
    body = []
    for (case, n), c in sorted(r.cells.items(), key=lambda kv: (kv[0][1], CASES.index(kv[0][0]))):
        if c.times:
            share = r.vs_kernel(case, n)
            body.append([case, f"{n:.0e}", str(c.count), fmt(c.pct(50) * 1e3), fmt(c.rps), fmt(c.melem_s),
                         "n/a" if share is None else f"{share:.3f}"])
    cfg = r.cfg
    legend = "\n".join(f"- {k}: {v}" for k, v in LEGEND.items())
    return (md_table(["case", "n", "requests", "p50 ms", "requests/s", "Melem/s", "vs kernel"], body)
            + "\n\nSequential requests, one connection (or channel) per server, client time included; "
            f"within one n the cases take turns request by request; per cell at least {cfg.budget_s:g} s and "
            f"{cfg.min_requests} requests, at most {cfg.max_requests} requests or about {cfg.cap_s:g} s. "
            "Melem/s = n x requests / time spent in them; vs kernel = Melem/s over the in-process kernel's "
            "at the same n (the kernel's own row is 1). Shared memory: the inputs were written into the "
            "region once, before the timing; that copy is not in these figures.\n" + legend)


def wire_table(r: Run) -> str:
    """One row per case, one column per n: Melem/s (share of the kernel)."""
    body = []
    for case in CASES:
        row = [case]
        for n in r.cfg.sizes:
            c, share = r.cell(case, n), r.vs_kernel(case, n)
            row.append("—" if c is None else f"{fmt(c.melem_s)} ({share:.2g})")
        if any(cell != "—" for cell in row[1:]):
            body.append(row)
    return (md_table(["Melem/s (vs kernel)", *(f"n = {n:.0e}" for n in r.cfg.sizes)], body)
            + "\n\n— : not measured (see below).")


def report(r: Run, env: list[tuple[str, str]], load0: tuple, footer: str) -> str:
    head = load_head("## lossd over every wire: mean cross-entropy on logits (s ~ N(0, 3²), labels 0/1, "
                     "float64), with MLServer beside it", load0, "the servers",
                     "The ratios of one run hold up better.")
    sections = [head, "## The wire table", wire_table(r), "## Results", results_table(r)]
    if r.not_measured:
        sections += ["## Not measured", "\n".join(f"- {m}" for m in r.not_measured)]
    if r.errors:
        sections += ["## Errors", "\n".join(f"- {e}" for e in r.errors)]
    sections += ["## Environment", md_table(["", ""], env), footer]
    return "\n\n".join(sections)


def to_json(r: Run, env, load0, load1, quick: bool) -> dict:
    return {
        **json_head(quick, r.cfg, load0, load1, [c.summary() for c in r.cells.values() if c.times]),
        "vs_kernel": [{"case": case, "n": n, "ratio": r.vs_kernel(case, n)}
                      for (case, n) in r.cells if r.cell(case, n)],
        "expected_loss": {str(n): v for n, v in r.expected.items()},
        "not_measured": r.not_measured,
        "servers": r.servers,
        "mlserver": r.mlserver,
        "environment": dict(env),
        "errors": r.errors,
    }


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 10^3 and 10^5, a few requests (smoke test)")
    ap.add_argument("--sizes", type=str, default=None,
                    help="comma-separated n instead of the mode's (e.g. 1e6,1e7: one decade alone)")
    ap.add_argument("--json-max-n", type=float, default=1e7, help="largest n for JSON /loss and OIP JSON")
    ap.add_argument("--mlserver-max-n", type=float, default=1e6,
                    help="largest n for MLServer (default 1e6: at 1e7 its pydantic model of the JSON "
                         "body needs gigabytes)")
    ap.add_argument("--mlserver-venv", type=Path, default=DEFAULT_VENV,
                    help="MLServer's venv (default bench/.venv-mlserver); missing: MLServer is not measured")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="directory for wire.md, wire.json, logs")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    cfg = QUICK if args.quick else FULL
    if args.sizes:
        cfg = dataclasses.replace(cfg, sizes=tuple(int(float(x)) for x in args.sizes.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    venv = args.mlserver_venv if (args.mlserver_venv / "bin" / "mlserver").exists() else None
    load0 = load_at_start()
    t_start, cpu = time.perf_counter(), CpuMeter()
    r = run(cfg, args.out, venv, int(args.json_max_n), int(args.mlserver_max_n))
    load1 = os.getloadavg()
    others, _ = cpu.stop(servers_cpu_s(r.servers))
    env = http_environment(load0, load1, others, r.servers, ("fastapi", "uvicorn", "grpc", "orjson", "numpy"))
    write_report(args.out, "wire", report(r, env, load0, footer_line(args.quick, t_start)),
                 to_json(r, env, load0, load1, args.quick))
    return exit_code(r.errors)


if __name__ == "__main__":
    sys.exit(main())
