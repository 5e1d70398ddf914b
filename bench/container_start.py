#!/usr/bin/env python
"""Image start to ready: `docker run` until /readyz answers 200.

    python bench/container_start.py [--image lossd:latest] [--runs R] [--no-cold] [--out bench/out]

Every container runs as the tests and Kubernetes run it: --read-only, a tmpfs /tmp,
host network on a free 127.0.0.1 port. Rows:
- the image's default (LOSSD_CPU_TARGET=portable): the kernels load from the cache baked
  for the best x86-64 level this CPU runs, on any CPU model (1 and 2 workers);
- LOSSD_CPU_TARGET=host: code tuned for exactly this CPU, for which nothing is baked (an
  image's cache never matches a CPU model it was not built for): every signature
  compiles at start (skipped with --no-cold; takes minutes);
and how the baked folder reaches the writable cache at start: links (what lossd does)
against a full copy. Needs Docker and the image (`make image`). Writes
``<out>/container_start.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _common import BENCH_DIR, cpu_model, footer_line, free_port, log, md_table

_SEED_TIMING = r"""
import os, shutil, time
from lossd.kernels import _baked, _config
src = _config.BAKED
files = sum(len(f) for _, _, f in os.walk(src))
mb = sum(os.path.getsize(os.path.join(r, n)) for r, _, fs in os.walk(src) for n in fs) / 1e6
t = time.perf_counter(); _baked.link_tree(src, "/tmp/bench-links"); links = time.perf_counter() - t
t = time.perf_counter(); shutil.copytree(src, "/tmp/bench-copy"); copy = time.perf_counter() - t
print(f"{os.path.basename(src)} {files} {mb:.1f} {links * 1e3:.1f} {copy * 1e3:.1f}")
"""


def run_to_ready(image: str, env: dict[str, str], timeout: float) -> float:
    import httpx

    port = free_port()
    name = f"lossd-bench-{uuid.uuid4().hex[:8]}"
    argv = ["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "host",
            "-e", "LOSSD_HOST=127.0.0.1", "-e", f"LOSSD_PORT={port}"]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    t0 = time.perf_counter()
    try:
        subprocess.run([*argv, image], check=True, capture_output=True, timeout=120)
        while time.perf_counter() - t0 < timeout:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"not ready in {timeout} s with {env}")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="lossd:latest")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-cold", action="store_true", help="skip the host-tuned row (compiles for minutes)")
    ap.add_argument("--quick", action="store_true", help="2 runs, no cold row")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = ap.parse_args()
    runs, cold = (2, False) if args.quick else (args.runs, not args.no_cold)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", args.image], check=True,
                          capture_output=True, text=True).stdout.strip()
    rows = []
    for label, env in (("portable (baked), 1 worker", {}),
                       ("portable (baked), 2 workers", {"LOSSD_WORKERS": "2"})):
        times = sorted(run_to_ready(args.image, env, 60) for _ in range(runs))
        rows.append([label, f"{times[len(times) // 2]:.2f}", f"{times[0]:.2f} – {times[-1]:.2f}", str(runs)])
        log(f"{label}: {times}")
    if cold:
        t = run_to_ready(args.image, {"LOSSD_CPU_TARGET": "host"}, 900)
        rows.append(["host-tuned (nothing baked: compiles), 1 worker", f"{t:.1f}", "", "1"])
        log(f"host: {t:.1f} s")
    seed = subprocess.run(["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint",
                           "python", args.image, "-c", _SEED_TIMING], check=True, capture_output=True,
                          text=True, timeout=300).stdout.split()
    level, files, mb, links_ms, copy_ms = seed
    report = "\n".join([
        "# lossd image: docker run to /readyz 200\n",
        md_table(["configuration", "seconds (median)", "range", "runs"], rows), "",
        md_table(["baked cache into the tmpfs at start", "ms"], [
            [f"links, one per file ({level}: {files} files, {mb} MB)", links_ms],
            ["full copy (same files)", copy_ms]]), "",
        md_table(["environment", ""], [
            ["CPU", cpu_model(isa=True)],
            ["image", f"{args.image}, {int(size) / 1e6:.0f} MB"],
            ["load average before / after", f"{load0[0]:.2f} / {os.getloadavg()[0]:.2f}"],
        ]), "", footer_line(args.quick, t_start)])
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "container_start.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
