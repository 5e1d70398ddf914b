"""One typed settings object, read from ``LOSSD_*`` environment variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "LOSSD_"
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def available_cores() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core host must not start 64 threads)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def flag(name: str) -> str:
    """The ``lossd serve`` flag of a setting: max_body_bytes -> --max-body-bytes."""
    return "--" + name.replace("_", "-")


# never echoed in an error message (the message goes to a terminal or a log)
SECRET_FIELDS = frozenset({"api_token"})


def _problem(e: dict, sources: dict[str, str]) -> str:
    name = str(e["loc"][0]) if e["loc"] else ""
    where = sources.get(name) or (ENV_PREFIX + name.upper() if name else "settings")
    got = f" (got {e['input']!r})" if name in sources and name not in SECRET_FIELDS else ""
    return f"{where}: {e['msg']}{got}"


def _token_problem(token: str) -> str | None:
    """What is wrong with a token, in words that never quote it."""
    if not token:
        return "the token is empty"
    if not all(33 <= ord(c) < 127 for c in token):
        return "the token must be printable ASCII without spaces (it travels in a header)"
    return None


def _read_token(path: str) -> str:
    """The token file's content without the line end (``echo`` and editors add one)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file ({type(exc).__name__})") from None


class Settings(BaseModel):
    """Service configuration. Every field ``name`` is read from ``LOSSD_NAME``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    grpc_port: int | None = Field(
        None, ge=0, le=65535,
        description="TCP port of the Open Inference Protocol over gRPC (on host, shared by every "
                    "worker); unset: no gRPC (0: any free port, for tests).")
    workers: int = Field(1, ge=1, le=256, description="Worker processes.")
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="Kernel threads per worker; default: available cores / workers.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # repr=False: a settings object in a log line or traceback never shows the token
    api_token: str | None = Field(
        None, min_length=1, repr=False,
        description="When set, every endpoint but health and docs needs 'Authorization: Bearer <token>'.")
    api_token_file: str | None = Field(
        None, min_length=1,
        description="File holding the bearer token (one line); workers read it too, so the token is "
                    "in no process's arguments or environment.")
    cors_origins: tuple[str, ...] = Field(
        (), description="Origins (comma-separated) whose browser pages may call the API; none: CORS off.")
    docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json (open without the token).")
    max_concurrency: int | None = Field(
        None, ge=1, le=1024,
        description="Kernel calls running at once per worker; default: the kernel threads, at least 2.")
    max_queue: int = Field(
        256, ge=0, description="Requests waiting for a kernel slot before new ones get 503.")
    inline_bytes: int = Field(
        64 * 1024, ge=0,
        description="Bodies up to this size are handled on the event loop (a thread hop costs more).")
    output_pool_bytes: int = Field(
        256 * 1024 * 1024, ge=0,
        description="Bytes of large result arrays kept for reuse (skips zeroing fresh pages); 0: off.")
    lane_bytes: int = Field(
        1024 * 1024, ge=0,
        description="JSON bodies from this size are decoded and computed in a process of their own "
                    "(the large lane), so small requests never wait for their GIL; 0: no lane.")
    # Limits (README "Limits"): each answered with a clear error, never a hang or a 500.
    max_elements: int = Field(
        16 * 1024 * 1024, ge=1,
        description="Most numbers in one array of a request (predictions, labels, features, ...; "
                    "N×K counts N·K); more get 422 (OIP: 400).")
    max_json_depth: int = Field(
        32, ge=5, le=512,
        description="Deepest nesting of a JSON body (or OIP header); deeper gets 422 (OIP: 400). "
                    "Requests need 3 (JSON API) to 5 (OIP with nested data).")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request head (request line and header fields); larger gets 431.")
    max_header_fields: int = Field(
        100, ge=8, le=10_000, description="Most header fields in a request; more get 431.")
    max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="Open connections per worker; requests on connections beyond it get 503.")
    header_timeout: float = Field(
        10.0, gt=0, le=3600,
        description="Seconds for a request's head to arrive (from the connection or the request's "
                    "first byte); then 408 and the connection is closed.")
    body_timeout: float = Field(
        60.0, gt=0, le=3600,
        description="Seconds for a request's body to arrive after its head; then 408 and the "
                    "connection is closed.")
    keep_alive_timeout: float = Field(
        5.0, gt=0, le=3600, description="Seconds an idle keep-alive connection stays open.")
    compute_timeout: float = Field(
        60.0, gt=0, le=3600,
        description="Seconds a request may wait for and use a kernel slot or the large lane (decode, "
                    "compute, encode); then 504 (see README: what is freed).")
    warmup: bool = Field(True, description="Compile every kernel signature at start; /readyz waits for it.")
    access_log: bool = True
    graceful_timeout: float = Field(
        20.0, gt=0, le=3600,
        description="Seconds after SIGTERM for in-flight requests to finish (no new connections are "
                    "accepted meanwhile); requests still running then are cancelled.")
    cpu_target: Literal["host", "portable", "x86-64-v2", "x86-64-v3", "x86-64-v4"] = Field(
        "host",
        description="CPU the kernels are compiled for: 'host' (tuned for this CPU), 'portable' (the "
                    "best x86-64-vN level this CPU runs, whose cache loads on any such CPU) or a level. "
                    "Read by lossd.kernels when it is imported.")
    shm: bool = Field(
        False, description="Triton's system shared memory extension: clients on this host register "
                           "POSIX shared memory regions and infer tensors are read from / written to them.")
    shm_prefix: str = Field(
        "/lossd", min_length=2, pattern=r"^/[^/]+$",
        description="Only shared memory keys starting with this are registered (LOSSD_SHM).")
    shm_compute: Literal["helper", "inline"] = Field(
        "helper",
        description="Where requests with tensors in shared memory are computed: 'helper' (a process "
                    "per worker that maps the regions, no copy; a region truncated under it kills only "
                    "the helper: 400 naming the region, and a new helper) or 'inline' (the worker's "
                    "kernel threads copy the regions with preadv: slower, no extra process).")
    shm_dir: str | None = Field(
        None, min_length=1,
        description="Directory of the shared memory registry, shared by the workers; default: "
                    "'lossd serve' makes one under /dev/shm and removes it at exit.")
    baked_cache: str | None = Field(
        None, min_length=1,
        description="Folder of caches compiled ahead of time by 'lossd bake', one per target; the "
                    "chosen target's is linked into NUMBA_CACHE_DIR (the container image sets it).")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):  # LOSSD_CORS_ORIGINS="https://a.example,https://b.example"
            return tuple(o.strip() for o in v.split(",") if o.strip())
        return v

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for origin in v:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return v

    @field_validator("api_token")
    @classmethod
    def _check_token(cls, v: str | None) -> str | None:
        if v is not None and (why := _token_problem(v)):
            raise ValueError(why)
        return v

    @field_validator("api_token_file")
    @classmethod
    def _check_token_file(cls, v: str | None) -> str | None:
        if v is not None and (why := _token_problem(_read_token(v))):
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _token_from_file(self) -> "Settings":
        if self.api_token_file is not None:
            if self.api_token is not None:
                raise ValueError("LOSSD_API_TOKEN and LOSSD_API_TOKEN_FILE (--api-token-file) are both "
                                 "set; give one")
            object.__setattr__(self, "api_token", _read_token(self.api_token_file))
        return self

    @model_validator(mode="after")
    def _resolve_defaults(self) -> "Settings":
        if self.threads is None:
            object.__setattr__(self, "threads", max(1, available_cores() // self.workers))
        if self.max_concurrency is None:
            object.__setattr__(self, "max_concurrency", max(2, self.threads))
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from ``LOSSD_*`` variables; ``overrides`` (CLI flags) win.
        Raises ``ValueError`` naming where a bad value came from: the flag
        (``--max-body-bytes``) for an override, else the variable (``LOSSD_MAX_BODY_BYTES``)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for name in cls.model_fields:
            var = ENV_PREFIX + name.upper()
            raw = env.get(var)
            if raw is not None and raw != "":
                values[name], sources[name] = raw, var
        for name, v in overrides.items():
            if v is not None:
                values[name], sources[name] = v, flag(name)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(_problem(e, sources) for e in exc.errors(include_url=False))
            raise ValueError(f"bad lossd settings: {problems}") from None

    def to_env(self) -> dict[str, str]:
        """The ``LOSSD_*`` variables that reproduce these settings in a worker process."""
        out = {}
        for name, value in self.model_dump().items():
            if name == "api_token" and self.api_token_file is not None:
                continue  # the workers read the file: the token stays out of their environment
            if isinstance(value, tuple):
                value = ",".join(value) if value else None
            if value is not None:
                out[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out
