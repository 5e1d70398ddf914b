"""Docker for the container tests: make sure an engine runs (the documented
deploy/docker-setup.sh), build the image with `make image`, and run containers that are
always removed afterwards."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("LOSSD_TEST_IMAGE", "lossd:latest")
BUILD_TIMEOUT = 45 * 60  # s: a cold build compiles three CPU targets (~4-10 min on 2 cores)


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers (after the setup script had its go), else why not."""
    setup = subprocess.run([str(ROOT / "deploy" / "docker-setup.sh")], capture_output=True, text=True,
                           timeout=600)
    if setup.returncode != 0:
        return f"Docker cannot run here: {setup.stderr.strip()[-800:]}"
    return None


def build_image(log_path: Path) -> None:
    """`make image` (layers are cached: seconds when nothing changed). LOSSD_TEST_IMAGE names
    an image to test instead, without building."""
    if "LOSSD_TEST_IMAGE" in os.environ:
        return
    with open(log_path, "wb") as log:
        proc = subprocess.run(["make", "-s", "image", f"IMAGE={IMAGE}"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"make image failed:\n{log_path.read_text(errors='replace')[-5000:]}")


class Container:
    """``docker run -d`` of the image, read-only with a tmpfs /tmp, on the host's network
    bound to 127.0.0.1:``port`` (traffic stays on loopback)."""

    def __init__(self, port: int, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.name = f"lossd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.port = port
        self.env = {"LOSSD_HOST": "127.0.0.1", "LOSSD_PORT": str(port), **(env or {})}
        self.args = args
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Container":
        argv = ["docker", "run", "-d", "--name", self.name, "--read-only", "--tmpfs", "/tmp",
                "--network", "host"]
        for k, v in self.env.items():
            argv += ["-e", f"{k}={v}"]
        self.started_at = time.monotonic()
        subprocess.run([*argv, IMAGE, *self.args], check=True, capture_output=True, timeout=60)
        return self

    def wait_ready(self, timeout: float) -> float:
        """Seconds from `docker run` to the first 200 of /readyz; raises after ``timeout``."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"/readyz not 200 within {timeout} s of docker run\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        p = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=60)
        return p.stdout + p.stderr

    def exec(self, *argv: str) -> str:
        return subprocess.run(["docker", "exec", self.name, *argv], check=True, capture_output=True,
                              text=True, timeout=60).stdout

    def host_pids(self) -> list[int]:
        out = subprocess.run(["docker", "top", self.name, "-o", "pid"], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        return [int(x) for x in out.split()[1:]]

    def signal(self, sig: str) -> None:
        subprocess.run(["docker", "kill", "--signal", sig, self.name], check=True, capture_output=True,
                       timeout=60)

    def wait_exit(self, timeout: float) -> int:
        p = subprocess.run(["docker", "wait", self.name], capture_output=True, text=True, timeout=timeout)
        return int(p.stdout.strip())

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
