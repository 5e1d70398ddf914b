"""Settings (LOSSD_* variables and ``lossd serve`` flags): types, defaults, overrides, and
bad values naming the variable or the flag.
"""

from __future__ import annotations

import os

import pytest

from lossd.service import Settings
from lossd.service.settings import available_cores


# ---------------------------------------------------------------------------- settings

def test_settings_from_env_types():
    env = {"LOSSD_HOST": "127.0.0.2", "LOSSD_PORT": "8123", "LOSSD_WORKERS": "3", "LOSSD_THREADS": "1",
           "LOSSD_MAX_BODY_BYTES": "2048", "LOSSD_LOG_LEVEL": "debug", "LOSSD_API_TOKEN": "t0k",
           "LOSSD_WARMUP": "false", "LOSSD_ACCESS_LOG": "0", "LOSSD_MAX_QUEUE": "5",
           "LOSSD_MAX_CONCURRENCY": "4", "LOSSD_INLINE_BYTES": "0", "UNRELATED": "x"}
    s = Settings.from_env(env)
    assert (s.host, s.port, s.workers, s.threads, s.max_body_bytes) == ("127.0.0.2", 8123, 3, 1, 2048)
    assert (s.log_level, s.api_token, s.warmup, s.access_log) == ("debug", "t0k", False, False)
    assert (s.max_queue, s.max_concurrency, s.inline_bytes) == (5, 4, 0)
    assert all(type(getattr(s, k)) is int for k in ("port", "workers", "threads", "max_body_bytes"))
    assert Settings.from_env(s.to_env()) == s  # what worker processes read back


def test_settings_defaults_and_overrides():
    s = Settings.from_env({})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.max_body_bytes == 64 * 1024 * 1024 and s.log_level == "info" and s.api_token is None
    assert s.threads == max(1, available_cores()) and s.warmup is True
    assert Settings.from_env({"LOSSD_WORKERS": "256"}).threads == 1
    assert Settings.from_env({"LOSSD_PORT": "", "LOSSD_API_TOKEN": ""}) == s  # empty = unset
    # flags win over the environment; None (flag not given) does not
    assert Settings.from_env({"LOSSD_PORT": "1234"}, port=4321).port == 4321
    assert Settings.from_env({"LOSSD_PORT": "1234"}, port=None).port == 1234
    # system shared memory: off, keys under /lossd, the registry made by lossd serve
    assert (s.shm, s.shm_prefix, s.shm_dir) == (False, "/lossd", None)
    on = Settings.from_env({"LOSSD_SHM": "true", "LOSSD_SHM_PREFIX": "/mine", "LOSSD_SHM_DIR": "/dev/shm/x"})
    assert (on.shm, on.shm_prefix, on.shm_dir) == (True, "/mine", "/dev/shm/x")
    assert Settings.from_env(on.to_env()) == on


@pytest.mark.parametrize("var,value", [
    ("LOSSD_PORT", "abc"), ("LOSSD_PORT", "70000"), ("LOSSD_PORT", "-1"), ("LOSSD_PORT", "80.5"),
    ("LOSSD_WORKERS", "0"), ("LOSSD_WORKERS", "many"), ("LOSSD_THREADS", "0"),
    ("LOSSD_MAX_BODY_BYTES", "10"), ("LOSSD_MAX_BODY_BYTES", "1e6x"), ("LOSSD_LOG_LEVEL", "loud"),
    ("LOSSD_WARMUP", "maybe"), ("LOSSD_MAX_QUEUE", "-1"),
    ("LOSSD_SHM", "perhaps"), ("LOSSD_SHM_PREFIX", "lossd"), ("LOSSD_SHM_PREFIX", "/a/b"), ("LOSSD_SHM_PREFIX", "/"),
])
def test_settings_bad_values_name_the_variable(var, value):
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value), str(info.value)


SETTING_FLAGS = [  # lossd serve's flags with a bad value each (argparse checks the types)
    ("--port", "70000", "LOSSD_PORT"), ("--port", "-1", "LOSSD_PORT"), ("--workers", "0", "LOSSD_WORKERS"),
    ("--threads", "0", "LOSSD_THREADS"), ("--max-body-bytes", "10", "LOSSD_MAX_BODY_BYTES"),
]


@pytest.mark.parametrize("flag,value,var", SETTING_FLAGS)
def test_bad_flag_values_name_the_flag_not_the_variable(flag, value, var, monkeypatch, capsys):
    """Issue 11 item 13: `lossd serve --port 70000` said LOSSD_PORT."""
    from lossd.service import cli

    for k in [k for k in os.environ if k.startswith("LOSSD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(var, "8")  # a valid value in the variable: the flag overrides it
    code = cli.main(["serve", flag, value])  # refused before anything is served
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"lossd: bad lossd settings: {flag}: "), err
    assert var not in err and f"(got {int(value)})" in err, err
    # the same value from the environment names the variable
    monkeypatch.setenv(var, value)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lossd: bad lossd settings: {var}: ") and flag not in err, err


def test_settings_overrides_are_named_as_flags():
    with pytest.raises(ValueError) as info:
        Settings.from_env({"LOSSD_PORT": "70000"}, max_body_bytes=10)
    msg = str(info.value)
    assert "LOSSD_PORT: " in msg and "--max-body-bytes: " in msg and "LOSSD_MAX_BODY_BYTES" not in msg, msg
