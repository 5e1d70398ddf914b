"""``lossd serve``: run the service with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import sys
import tempfile

from .settings import ENV_PREFIX, Settings, flag

# one flag per limit, named and described as its setting (README "Limits")
LIMIT_SETTINGS = ("max_elements", "max_json_depth", "max_header_bytes", "max_header_fields", "max_connections",
                  "header_timeout", "body_timeout", "keep_alive_timeout", "compute_timeout")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossd", description="lossd loss service")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the HTTP API (the default command)",
                           description="Flags override the LOSSD_* environment variables.")
    serve.add_argument("--host", help="address to bind (LOSSD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (LOSSD_PORT, default 8000)")
    serve.add_argument("--grpc-port", type=int,
                       help="port of the Open Inference Protocol over gRPC (LOSSD_GRPC_PORT, default: off)")
    serve.add_argument("--workers", type=int, help="worker processes (LOSSD_WORKERS, default 1)")
    serve.add_argument("--threads", type=int,
                       help="kernel threads per worker (LOSSD_THREADS, default cores / workers)")
    serve.add_argument("--max-body-bytes", type=int, help="LOSSD_MAX_BODY_BYTES, default 64 MiB")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                       help="LOSSD_LOG_LEVEL, default info")
    serve.add_argument("--graceful-timeout", type=float,
                       help="seconds after SIGTERM for in-flight requests (LOSSD_GRACEFUL_TIMEOUT, default 20)")
    for name in LIMIT_SETTINGS:
        field = Settings.model_fields[name]
        serve.add_argument(flag(name), type=field.annotation, metavar=name.split("_")[-1].upper(),
                           help=f"{field.description} ({ENV_PREFIX}{name.upper()}, default {field.default})")
    serve.add_argument("--api-token-file", "--token-file", metavar="PATH",
                       help="file holding the bearer token (LOSSD_API_TOKEN_FILE; or LOSSD_API_TOKEN)")
    # Refused, not taken: a token in argv is readable by every local user (ps, /proc/PID/cmdline).
    serve.add_argument("--api-token", "--token", dest="token_in_argv", nargs="?", const="",
                       help=argparse.SUPPRESS)
    from lossd import bake

    bake.add_arguments(sub.add_parser(
        "bake", help="compile every kernel signature ahead of time for CPU targets",
        description="Fills DEST/<target>/ for each target; serve it with LOSSD_BAKED_CACHE=DEST and "
                    "LOSSD_CPU_TARGET=portable."))
    from lossd.evaluation import cli as eval_cli

    eval_cli.add_arguments(sub.add_parser(
        "eval", help="the loss summary of Parquet, Arrow IPC or CSV files, streamed or on Dask",
        description="Streams each file in record batches (bounded memory), or runs on Dask with "
                    "--scheduler/--workers. Needs the eval extra: pip install 'lossd[eval]'."))
    return parser


def _log_config(level: str) -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["lossd"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["lossd.access"] = {"handlers": ["access_plain"], "level": "INFO", "propagate": False}
    config["handlers"]["access_plain"] = {"formatter": "default", "class": "logging.StreamHandler",
                                          "stream": "ext://sys.stdout"}
    return config


def serve(settings: Settings) -> None:
    import uvicorn

    from . import drain
    from .http_limits import HttpLimits, protocol
    from .metrics import MULTIPROC_ENV

    # Workers are new processes: they read the same settings from the environment.
    os.environ.update(settings.to_env())
    owned_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        owned_dir = tempfile.mkdtemp(prefix="lossd-metrics-")
        os.environ[MULTIPROC_ENV] = owned_dir
    shm_dir = None
    if settings.shm and settings.shm_dir is None:  # one registry for every worker (shm.py)
        from .shm import make_directory

        shm_dir = make_directory(str(os.getpid()))
        os.environ["LOSSD_SHM_DIR"] = shm_dir
    # SIGTERM/SIGINT end a graceful shutdown, then uvicorn re-raises the signal against the
    # handlers it found: with these no-ops the process then exits 0 (stopped as asked),
    # instead of dying by the signal (143), which orchestrators read as a crash.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        drain.run(uvicorn.Config("lossd.service.app:create_app_from_env", factory=True, host=settings.host,
                                 port=settings.port, workers=settings.workers, loop="uvloop",
                                 http=protocol(HttpLimits(settings.max_header_bytes, settings.max_header_fields,
                                                          settings.max_connections, settings.header_timeout,
                                                          settings.body_timeout)),
                                 timeout_keep_alive=settings.keep_alive_timeout,
                                 log_level=settings.log_level, access_log=False,
                                 server_header=False,  # no "server: uvicorn" (names the library)
                                 timeout_graceful_shutdown=settings.graceful_timeout,
                                 log_config=_log_config(settings.log_level)))
    finally:
        if owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)
        if shm_dir:
            shutil.rmtree(shm_dir, ignore_errors=True)


def _check_cpu_target(mode: str) -> None:
    """Refuse a level this CPU cannot run before any worker starts (the kernels would refuse
    it at import, in every worker); an explicit NUMBA_CPU_* overrides the setting."""
    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    import llvmlite.binding as llvm

    from lossd.bake import target_module

    features = llvm.get_host_cpu_features()
    target_module().choose(mode, features, features.flatten())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "bake":
        from lossd import bake

        return bake.run(args)
    if args.command == "eval":
        from lossd.evaluation import cli as eval_cli

        return eval_cli.run(args)
    if getattr(args, "token_in_argv", None) is not None:
        print("lossd: --api-token is not accepted (a command line is visible to every local user "
              "in ps); put the token in a file for --api-token-file or LOSSD_API_TOKEN_FILE, or in "
              "LOSSD_API_TOKEN", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "token_in_argv")}
    try:
        settings = Settings.from_env(**overrides)
        _check_cpu_target(settings.cpu_target)
    except ValueError as exc:
        print(f"lossd: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
