"""End-to-end throughput of OIP infer with system shared memory (LOSSD_SHM) in both
compute modes (LOSSD_SHM_COMPUTE = helper, inline) against the kernel called in this
process, at n values.

    python bench/shm.py [--n 10000000] [--repeat 10] [--threads 2] [--mode both] [--losses] [--losses-body] [--quick]

For each mode it starts ``lossd serve --workers 1 --threads T`` with ``LOSSD_SHM=true`` on a
free port, writes predictions and labels (FP64) once into a region, registers it, then
times ``tritonclient.http`` infer of model ``loss`` (reduction mean) ``R`` times; the
kernel figure is ``kernels.loss`` on the same arrays in this process with T threads,
alone first, then once after each infer (on a shared machine the load changes by the
second: each mode's ratio is to the kernel timed alternately with it). Prints the median
seconds and elements per second of each, each mode's ratio against the goal (0.5), and
the two copy ceilings of the input bytes: ``preadv`` from the region's file (what
``inline`` does) and a copy out of a mapping (the bound of any copying design; ``helper``
copies nothing). ``--losses`` asks for the per-element losses too, written into an
output region (8·n more bytes); ``--losses-body`` asks for them in the response body
(binary). ``--quick``: n = 10^6, 3 repeats (a smoke run).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from lossd import kernels  # noqa: E402

GOAL = 0.5
MODES = ("helper", "inline")


def _median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_ceilings(path: str, nbytes: int, repeat: int) -> tuple[float, float]:
    """Seconds (median) to read ``nbytes`` of ``path`` with preadv, and to copy them out
    of a mapping, each into a buffer written before (no page faults)."""
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        def pread() -> None:
            done = 0
            while done < nbytes:
                done += os.preadv(fd, [view[done:done + (1 << 30)]], done)

        mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ)
        src = np.frombuffer(mm, dtype=np.uint8, count=nbytes)
        try:
            return _median_time(pread, repeat), _median_time(lambda: np.copyto(buf, src), repeat)
        finally:
            del src
            mm.close()
    finally:
        os.close(fd)


def end_to_end(mode: str, pred: np.ndarray, lab: np.ndarray, want, kernel, args) -> tuple[float, float]:
    """Median seconds of one infer through a server in ``mode`` (its answer checked) and
    of ``kernel()`` timed alternately with it, so that both see the same load."""
    import tritonclient.http as tc
    import tritonclient.utils.shared_memory as shm
    from service_helpers import lossd_serve

    n = len(pred)
    server = lossd_serve("--workers", "1", "--threads", str(args.threads),
                         env={"LOSSD_SHM": "true", "LOSSD_SHM_COMPUTE": mode}).start()
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
        if args.losses_body:
            outs.append(tc.InferRequestedOutput("losses", binary_data=True))
        red = "none" if args.losses or args.losses_body else "mean"
        st, kt = [], []
        for i in range(args.repeat + 1):
            t = time.perf_counter()
            res = c.infer("loss", [a, b], outputs=outs, parameters={"reduction": red})
            if i:
                st.append(time.perf_counter() - t)
                t = time.perf_counter()
                kernel()
                kt.append(time.perf_counter() - t)
        got = res.as_numpy("mean")[0]
        assert got == want.stats["mean"] or (np.isnan(got) and np.isnan(want.stats["mean"])), (got, want.stats)
        if args.losses:
            assert np.array_equal(shm.get_contents_as_numpy(ho, np.float64, [n]), want.losses)
        if args.losses_body:
            assert np.array_equal(res.as_numpy("losses"), want.losses)
    finally:
        shm.destroy_shared_memory_region(h)
        if ho is not None:
            shm.destroy_shared_memory_region(ho)
        server.close()
    return statistics.median(st), statistics.median(kt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("both", *MODES), default="both")
    ap.add_argument("--losses", action="store_true")
    ap.add_argument("--losses-body", action="store_true",
                    help="the per-element losses come back in the response body (binary), not a region")
    ap.add_argument("--quick", action="store_true", help="n = 10^6, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 1_000_000, 3
    import tritonclient.utils.shared_memory as shm

    n = args.n
    rng = np.random.default_rng(0)
    pred, lab = rng.normal(size=n) * 3, (rng.random(n) < 0.5).astype(np.float64)
    kernels.set_threads(args.threads)
    red = "none" if args.losses or args.losses_body else "mean"
    want = kernels.loss(pred, lab, reduction=red)
    k = _median_time(lambda: kernels.loss(pred, lab, reduction=red), args.repeat)

    h = shm.create_shared_memory_region("ceiling", "/lossd_bench_ceiling", 16 * n)
    try:
        shm.set_shared_memory_region(h, [pred, lab])
        pread, mcopy = copy_ceilings("/dev/shm/lossd_bench_ceiling", 16 * n, args.repeat)
    finally:
        shm.destroy_shared_memory_region(h)

    modes = MODES if args.mode == "both" else (args.mode,)
    kernel = lambda: kernels.loss(pred, lab, reduction=red)  # noqa: E731
    ends = {mode: end_to_end(mode, pred, lab, want, kernel, args) for mode in modes}

    outputs = "mean" + (" + losses in shm" if args.losses else "") + (" + losses in the body" if args.losses_body else "")
    print(f"n = {n}, threads = {args.threads}, outputs = {outputs}, "
          f"repeat = {args.repeat} (medians)")
    print(f"kernel in process      : {k * 1e3:8.1f} ms  {n / k / 1e6:8.1f} M elements/s")
    for mode, (s, km) in ends.items():
        verdict = "meets" if km / s >= GOAL else "misses"
        print(f"shm end to end, {mode:6s} : {s * 1e3:8.1f} ms  {n / s / 1e6:8.1f} M elements/s  "
              f"ratio {km / s:.2f} to the kernel timed alternately ({km * 1e3:.1f} ms): {verdict} the goal {GOAL}")
    print(f"copy ceilings, {16 * n / 1e6:.0f} MB of inputs: preadv {pread * 1e3:.1f} ms "
          f"({16 * n / pread / 1e9:.1f} GB/s), copy from a mapping {mcopy * 1e3:.1f} ms "
          f"({16 * n / mcopy / 1e9:.1f} GB/s); kernel + preadv would give ratio {k / (k + pread):.2f}")


if __name__ == "__main__":
    main()
