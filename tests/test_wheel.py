"""The built wheel installs one import package, ``lossd`` (plus its dist-info): nothing
named ``kernels`` or ``service`` lands at the top of a user's site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_lossd_package(tmp_path):
    # from a copy of what the build reads: setuptools leaves a build/ folder in the tree,
    # and stale files there would end up in later wheels
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("lossd", "kernels", "service"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                           "--wheel-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("lossd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"lossd"}, sorted(top)
    for module in ("lossd/__init__.py", "lossd/bake.py", "lossd/kernels/__init__.py", "lossd/kernels/_target.py",
                   "lossd/service/__init__.py", "lossd/service/cli.py", "lossd/service/drain.py",
                   "lossd/service/codecs/__init__.py", "lossd/service/codecs/json.py", "lossd/service/codecs/oip_json.py",
                   "lossd/service/codecs/oip_binary.py", "lossd/service/codecs/base.py"):
        assert module in names, module
    assert not any(n.startswith(("kernels/", "service/", "tests/", "bench/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info.pop()}/entry_points.txt").decode()
    assert "lossd = lossd.service.cli:main" in entry_points
