"""The CPU target the kernels compile for (kernels/_target.py, applied by _config), and the
link farm that serves a read-only baked cache (kernels/_baked.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lossd.kernels import _baked, _target

V2 = {f: True for f in _target.LEVELS["x86-64-v2"]}
V3 = {f: True for f in _target.LEVELS["x86-64-v3"]}
V4 = {f: True for f in _target.LEVELS["x86-64-v4"]}


def test_levels_nest_and_the_best_supported_comes_first():
    assert _target.LEVELS["x86-64-v2"] < _target.LEVELS["x86-64-v3"] < _target.LEVELS["x86-64-v4"]
    assert _target.supported_levels(V4) == ["x86-64-v4", "x86-64-v3", "x86-64-v2"]
    assert _target.supported_levels({**V4, "avx512bw": False}) == ["x86-64-v3", "x86-64-v2"]
    assert _target.supported_levels({**V3, "fma": False}) == ["x86-64-v2"]
    assert _target.supported_levels({"sse2": True}) == []


def test_portable_picks_the_best_level_the_host_runs():
    assert _target.choose("portable", V4, "").cpu_name == "x86-64-v4"
    assert _target.choose("portable", V3, "").cpu_name == "x86-64-v3"
    assert _target.choose("portable", {**V3, "avx2": False}, "") == _target.Target("portable", "x86-64-v2", "")
    assert _target.choose("portable", {"sse2": True}, "").cpu_name == "x86-64"
    # v4 keeps 512-bit vectors, as host tuning does on AVX-512 CPUs
    assert _target.choose("portable", V4, "").cpu_features == "-prefer-256-bit"


def test_host_mode_is_numbas_default_with_wide_vectors_on_avx512():
    assert _target.choose("host", V3, "+avx2") == _target.Target("host", None, None)
    assert _target.choose("host", V4, "+avx512f") == _target.Target("host", None, "+avx512f,-prefer-256-bit")
    assert _target.choose("", V3, "").mode == "host"


def test_a_level_the_cpu_lacks_is_refused_unless_only_compiling():
    with pytest.raises(ValueError, match="lacks avx512bw, avx512cd, avx512dq, avx512f, avx512vl"):
        _target.choose("x86-64-v4", V3, "")
    assert _target.choose("x86-64-v4", V3, "", allow_missing=True).cpu_name == "x86-64-v4"
    with pytest.raises(ValueError, match="is not one of"):
        _target.choose("skylake", V4, "")


def _probe(env: dict[str, str], code: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("NUMBA_CPU_", "LOSSD_", "_LOSSD_"))}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


_MAGIC = ("import numba\n"  # imported before the kernels, as lossd.service.app does
          "from lossd import kernels\n"
          "from numba.core.registry import cpu_target\n"
          "print(cpu_target.target_context.codegen().magic_tuple()[1:])")


def test_the_chosen_target_reaches_numba_even_if_numba_was_imported_first(tmp_path):
    import llvmlite.binding as llvm

    best = _target.supported_levels(llvm.get_host_cpu_features())
    if not best:
        pytest.skip("this CPU is below x86-64-v2")
    level = best[-1]  # the lowest: also what the image bakes
    out = _probe({"LOSSD_CPU_TARGET": level, "NUMBA_CACHE_DIR": str(tmp_path)}, _MAGIC)
    assert out == repr((level, "-prefer-256-bit" if level == "x86-64-v4" else ""))
    # an explicit NUMBA_CPU_NAME wins over LOSSD_CPU_TARGET
    out = _probe({"LOSSD_CPU_TARGET": level, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)},
                 _MAGIC)
    assert out == repr(("generic", ""))


def test_a_child_inherits_the_choice_but_not_as_an_explicit_override(tmp_path):
    code = ("import os; from lossd.kernels import _config; import subprocess, sys\n"
            "print(_config.TARGET.mode)\n"
            "env = dict(os.environ, LOSSD_CPU_TARGET='host')\n"
            "print(subprocess.run([sys.executable, '-c', 'from lossd.kernels import _config; "
            "print(_config.TARGET.mode)'], env=env, capture_output=True, text=True).stdout.strip())")
    out = _probe({"LOSSD_CPU_TARGET": "portable", "NUMBA_CACHE_DIR": str(tmp_path)}, code).split()
    assert out == ["portable", "host"]


def test_link_tree_mirrors_files_as_links_and_keeps_what_is_there(tmp_path):
    src = tmp_path / "baked" / "x86-64-v3"
    (src / "mod_abc").mkdir(parents=True)
    (src / "mod_abc" / "f-1.py311.nbi").write_bytes(b"index")
    (src / "mod_abc" / "f-1.py311.1.nbc").write_bytes(b"data")
    dst = tmp_path / "cache"
    (dst / "mod_abc").mkdir(parents=True)
    (dst / "mod_abc" / "f-1.py311.nbi").write_bytes(b"newer index, written here")
    assert _baked.seed(str(tmp_path / "baked"), "x86-64-v3", str(dst)) == str(src)
    data = dst / "mod_abc" / "f-1.py311.1.nbc"
    assert data.is_symlink() and data.read_bytes() == b"data"
    assert (dst / "mod_abc" / "f-1.py311.nbi").read_bytes() == b"newer index, written here"
    assert _baked.link_tree(str(src), str(dst)) == 0  # a second worker: nothing left to do
    assert _baked.seed(str(tmp_path / "baked"), "x86-64-v4", str(dst)) is None  # not baked
    assert _baked.seed(str(tmp_path / "baked"), None, str(dst)) is None  # host-tuned


_RESULTS = ("import sys, numpy as np\n"
            "from lossd import kernels\n"
            "rng = np.random.default_rng(11); n = 60_000\n"
            "s = rng.normal(0, 8, n); s[:6] = [37, -37, 745.5, -745.5, np.inf, -np.inf]\n"
            "y = (rng.random(n) > 0.5).astype(float)\n"
            "np.save(sys.argv[1], np.stack([kernels.loss(s, y, reduction='none').losses,\n"
            "                               kernels.grad(s, y, reduction='none').grad]))\n")


def test_levels_with_fma_give_the_host_tuned_bits_and_v2_stays_within_4_ulp(tmp_path):
    """The image serves a portable level: its answers must be the host-tuned ones. Levels
    with FMA (v3, v4) compile to the same arithmetic; v2 has no FMA, so a contracted
    multiply-add rounds twice there: a few elements differ by an ulp or two."""
    import llvmlite.binding as llvm

    levels = _target.supported_levels(llvm.get_host_cpu_features())
    if not levels:
        pytest.skip("this CPU is below x86-64-v2")
    script = tmp_path / "results.py"
    script.write_text(_RESULTS)
    cache = os.environ.get("NUMBA_CACHE_DIR") or str(tmp_path / "cache")
    out = {}
    for target in ("host", *levels):
        path = tmp_path / f"{target}.npy"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU_", "LOSSD_", "_LOSSD_"))}
        proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                              env={**base, "LOSSD_CPU_TARGET": target, "NUMBA_CACHE_DIR": cache}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[target] = np.load(path)
    host = out["host"].view(np.int64)
    for level in levels:
        ulps = np.abs(out[level].view(np.int64) - host)
        if level == "x86-64-v2":
            assert ulps.max() <= 4, (level, int(ulps.max()))
        else:
            assert ulps.max() == 0, (level, int(ulps.max()), float((ulps > 0).mean()))


def test_lossd_serve_refuses_a_bad_target_before_starting(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU_", "LOSSD_", "_LOSSD_"))}
    lossd = os.path.join(os.path.dirname(sys.executable), "lossd")
    proc = subprocess.run([lossd, "serve", "--port", "0"], capture_output=True, text=True, timeout=120,
                          env={**base, "LOSSD_CPU_TARGET": "skylake", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "LOSSD_CPU_TARGET" in proc.stderr and "Traceback" not in proc.stderr
