"""End-to-end throughput of OIP infer with system shared memory (LOSSD_SHM) against the
kernel called in this process, at n values.

    python bench/shm.py [--n 10000000] [--repeat 10] [--threads 2]

Starts ``lossd serve --workers 1 --threads T`` with ``LOSSD_SHM=true`` on a free port,
writes predictions and labels (FP64) once into a region, registers it, then times
``tritonclient.http`` infer of model ``loss`` (reduction mean) ``R`` times; the kernel
figure is ``kernels.loss`` on the same arrays in this process with T threads. Prints the
median seconds and elements per second of each and their ratio. Variant ``--losses``
asks for the per-element losses too, written into an output region (8·n more bytes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from lossd import kernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--losses", action="store_true")
    args = ap.parse_args()
    import tritonclient.http as tc
    import tritonclient.utils.shared_memory as shm
    from service_helpers import lossd_serve

    n = args.n
    rng = np.random.default_rng(0)
    pred, lab = rng.normal(size=n) * 3, (rng.random(n) < 0.5).astype(np.float64)
    kernels.set_threads(args.threads)
    red = "none" if args.losses else "mean"
    kernels.loss(pred, lab, reduction=red)
    kt = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        want = kernels.loss(pred, lab, reduction=red)
        kt.append(time.perf_counter() - t)

    server = lossd_serve("--workers", "1", "--threads", str(args.threads), env={"LOSSD_SHM": "true"}).start()
    h = shm.create_shared_memory_region("bench_in", "/lossd_bench_in", 16 * n)
    ho = shm.create_shared_memory_region("bench_out", "/lossd_bench_out", 8 * n) if args.losses else None
    try:
        shm.set_shared_memory_region(h, [pred])
        shm.set_shared_memory_region(h, [lab], offset=8 * n)
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=600)
        c.register_system_shared_memory("bench_in", "/lossd_bench_in", 16 * n)
        a = tc.InferInput("predictions", [n], "FP64")
        a.set_shared_memory("bench_in", 8 * n)
        b = tc.InferInput("labels", [n], "FP64")
        b.set_shared_memory("bench_in", 8 * n, offset=8 * n)
        outs = [tc.InferRequestedOutput("mean", binary_data=True)]
        if args.losses:
            c.register_system_shared_memory("bench_out", "/lossd_bench_out", 8 * n)
            o = tc.InferRequestedOutput("losses")
            o.set_shared_memory("bench_out", 8 * n)
            outs.append(o)
        st = []
        for i in range(args.repeat + 1):
            t = time.perf_counter()
            res = c.infer("loss", [a, b], outputs=outs, parameters={"reduction": red})
            if i:
                st.append(time.perf_counter() - t)
        got = res.as_numpy("mean")[0]
        assert got == want.stats["mean"] or (np.isnan(got) and np.isnan(want.stats["mean"])), (got, want.stats)
        if args.losses:
            assert np.array_equal(shm.get_contents_as_numpy(ho, np.float64, [n]), want.losses)
    finally:
        shm.destroy_shared_memory_region(h)
        if ho is not None:
            shm.destroy_shared_memory_region(ho)
        server.close()
    k, s = statistics.median(kt), statistics.median(st)
    print(f"n = {n}, threads = {args.threads}, outputs = {'mean + losses in shm' if args.losses else 'mean'}")
    print(f"kernel in process : {k * 1e3:8.1f} ms  {n / k / 1e6:8.1f} M elements/s")
    print(f"shm end to end    : {s * 1e3:8.1f} ms  {n / s / 1e6:8.1f} M elements/s")
    print(f"ratio             : {k / s:.2f}")


if __name__ == "__main__":
    main()
