"""``lossd`` (lossd/__main__.py -> service/cli.py): help and argument errors answer at once,
without importing Numba, NumPy, the kernels or the web stack (those load only once
serving starts), with exit code 0 for help and 2 for a bad argument or setting, and an
error that names the flag or variable. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service_helpers import LOSSD, ROOT, ServerProcess, _check_alive, free_port, server_env

HEAVY = ("numba", "numpy", "llvmlite", "lossd.kernels", "fastapi", "starlette", "uvicorn", "uvloop",
         "httptools", "prometheus_client")

# runs `lossd ARGS` as the console script does, then prints the heavy modules it imported
_PROBE = """
import json, runpy, sys
heavy = {heavy!r}
sys.argv = ["lossd", *{args!r}]
try:
    runpy.run_module("lossd", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)
print("\\nPROBE " + json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


def run_lossd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr without the probe line, heavy modules imported)."""
    code = _PROBE.format(heavy=HEAVY, args=list(args))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env(env), capture_output=True,
                       text=True, timeout=120)
    err, _, probe = r.stderr.rpartition("\nPROBE ")
    assert probe, f"no probe line (rc {r.returncode}):\n{r.stderr[-3000:]}"
    got = json.loads(probe)
    return got["code"], r.stdout, err, got["loaded"]


@pytest.mark.parametrize("args,needle", [(["--help"], "serve"), (["-h"], "serve"),
                                         (["serve", "--help"], "--max-elements"),
                                         (["bake", "--help"], "bake"),
                                         (["eval", "--help"], "--predictions")])
def test_help_exits_0_without_heavy_imports(args, needle):
    code, out, err, loaded = run_lossd(*args)
    assert code == 0, err
    assert needle in out and "usage: lossd" in out, out
    assert not loaded, f"`lossd {' '.join(args)}` imported {loaded}"


@pytest.mark.parametrize("args,env,names", [
    (["serve", "--port", "abc"], {}, ["--port", "'abc'"]),
    (["serve", "--bogus"], {}, ["--bogus"]),
    (["--bogus"], {}, ["--bogus"]),
    (["serve", "--log-level", "loud"], {}, ["--log-level", "'loud'"]),
    (["serve", "--max-elements", "many"], {}, ["--max-elements"]),
    (["serve", "--api-token", "secret"], {}, ["--api-token"]),
    (["eval", "x.parquet", "--labels", "y"], {}, ["--predictions"]),
    (["eval", "x.parquet", "--predictions", "p", "--labels", "y", "--quantiles", "2"], {}, ["--quantiles"]),
    (["serve"], {"LOSSD_PORT": "abc"}, ["LOSSD_PORT", "'abc'"]),
    (["serve"], {"LOSSD_MAX_QUEUE": "-1"}, ["LOSSD_MAX_QUEUE"]),
    (["serve", "--port", "0"], {"LOSSD_WORKERS": "many"}, ["LOSSD_WORKERS"]),
], ids=["port-abc", "unknown-flag", "unknown-top-flag", "log-level", "max-elements", "token-in-argv",
        "eval-no-predictions", "eval-quantile", "env-port", "env-max-queue", "env-workers"])
def test_argument_errors_exit_2_naming_the_flag_without_heavy_imports(args, env, names):
    code, out, err, loaded = run_lossd(*args, env=env)
    assert code == 2, (code, out, err)
    for name in names:
        assert name in err, err
    assert "Traceback" not in err, err
    assert not loaded, f"`lossd {' '.join(args)}` with {env} imported {loaded}"


def test_the_console_script_help_imports_no_numba():
    """The installed ``lossd`` script and ``python -X importtime -m lossd``: no Numba line."""
    r = subprocess.run([str(LOSSD), "--help"], env=server_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "serve" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lossd", "serve", "--help"], cwd=ROOT,
                       env=server_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "lossd.service.cli" in imported, imported[-20:]
    heavy = [m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY]
    assert not heavy, heavy


# ------------------------------------------------------------------- CLI entry points

def test_python_m_service_without_arguments_serves_from_env():
    s = ServerProcess([sys.executable, "-m", "lossd"], env={"LOSSD_PORT": "{port}", "LOSSD_HOST": "127.0.0.1"})
    try:
        s.start()
        _check_alive(s)
    finally:
        s.close()



def test_bad_settings_exit_with_code_2_and_a_message():
    cases = [
        ([str(LOSSD), "serve"], {"LOSSD_PORT": "abc"}, "LOSSD_PORT"),
        ([str(LOSSD), "serve"], {"LOSSD_PORT": "70000"}, "LOSSD_PORT"),
        ([str(LOSSD), "serve", "--workers", "0", "--port", str(free_port())], {}, "--workers: "),
        ([str(LOSSD), "serve", "--port", "70000"], {"LOSSD_PORT": "8123"}, "--port: "),
        ([sys.executable, "-m", "lossd", "serve", "--port", str(free_port())], {"LOSSD_MAX_BODY_BYTES": "12"},
         "LOSSD_MAX_BODY_BYTES"),
    ]
    procs = []
    try:
        for argv, env, _ in cases:
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=server_env(env), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        for (argv, env, var), p in zip(cases, procs):
            out, err = p.communicate(timeout=90)
            err = err.decode(errors="replace")
            assert p.returncode == 2, (argv, env, p.returncode, err[-2000:])
            assert err.startswith("lossd: ") and var in err, err
            wrong = "LOSSD_" + var[2:-2].replace("-", "_").upper() if var.startswith("--") else "--"
            assert wrong not in err, err  # the flag, not the variable it overrides
            assert "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
