"""The lock files (requirements/*.lock, `make lock`) against the pyproject.toml files: every
dependency pinned to one version that its specifier allows, with hashes; the service's
lock the dev lock's subset at the same versions (the tests test what the image runs); and
this environment installed from them (`make install-dev`). SECURITY.md describes them."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
EXTRAS = ("test", "bench", "load", "eval")  # what `make install-dev` installs

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\\s*$")
_HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(\s*\\)?\s*$")


def read_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """{name: (version, number of hashes)}; fails on any line that is not a comment, a pin
    with hashes or a hash (an unpinned or hash-less requirement, an option, an URL)."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := _ENTRY.match(line):
            name = canonicalize_name(m.group(1))
            assert name not in pins, f"{path.name}:{n}: {name} pinned twice"
            pins[name] = (Version(m.group(2)), 0)
        elif _HASH.match(line) and name is not None:
            pins[name] = (pins[name][0], pins[name][1] + 1)
        else:
            raise AssertionError(f"{path.name}:{n}: not a pin with hashes: {line!r}")
    for name, (_, hashes) in pins.items():
        assert hashes, f"{path.name}: {name} has no hash"
    return pins


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _check(reqs: list[str], pins: dict[str, tuple[Version, int]], lock: str) -> None:
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{text} (pyproject.toml) is not in {lock}: run `make lock`"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), \
            f"{lock} pins {name}=={version}, outside {text}: run `make lock`"


def test_lock_files_are_pins_with_hashes():
    for path in sorted(LOCKS.glob("*.lock")):
        assert read_lock(path), path


def test_the_service_lock_holds_every_runtime_dependency():
    meta = _project(ROOT / "pyproject.toml")
    _check(meta["project"]["dependencies"] + meta["build-system"]["requires"],
           read_lock(LOCKS / "service.lock"), "service.lock")


def test_the_dev_lock_holds_every_extra_and_the_client():
    meta, client = _project(ROOT / "pyproject.toml"), _project(ROOT / "client" / "pyproject.toml")
    reqs = meta["project"]["dependencies"] + meta["build-system"]["requires"]
    reqs += [r for extra in EXTRAS for r in meta["project"]["optional-dependencies"][extra]]
    reqs += client["project"]["dependencies"] + client["build-system"]["requires"]
    _check(reqs, read_lock(LOCKS / "dev.lock"), "dev.lock")


def test_the_service_runs_the_versions_the_tests_test():
    service, dev = read_lock(LOCKS / "service.lock"), read_lock(LOCKS / "dev.lock")
    differ = {n: (v, dev.get(n, (None,))[0]) for n, (v, _) in service.items() if dev.get(n, (None,))[0] != v}
    assert not differ, f"service.lock and dev.lock disagree (run `make lock`): {differ}"


def test_the_tools_lock_holds_the_tools():
    reqs = [line.split("#")[0].strip() for line in (LOCKS / "tools.in").read_text().splitlines()]
    _check([r for r in reqs if r], read_lock(LOCKS / "tools.lock"), "tools.lock")


def test_this_environment_was_installed_from_the_dev_lock():
    """`make install-dev` installs exactly the dev lock's versions (a venv made otherwise,
    or before a lock change, fails here: run `make install-dev`)."""
    wrong = {}
    for name, (version, _) in read_lock(LOCKS / "dev.lock").items():
        try:
            got = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = (str(version), None)
            continue
        if got != version:
            wrong[name] = (str(version), str(got))
    assert not wrong, f"installed versions differ from dev.lock (locked, installed): {wrong}"


@pytest.mark.parametrize("name", ["Makefile", ".ci/run", "Dockerfile", "deploy/wheelhouse.sh"])
def test_every_install_checks_hashes(name):
    """No pip install of dependencies outside the locks: each install step names a lock and
    --require-hashes, or installs the project itself with --no-deps."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    steps = [line for line in text.splitlines() if re.search(r"pip(\s+|\S*\s+)(install|download)\b", line)
             and not line.lstrip().startswith("#")]
    if name == ".ci/run":
        assert "make test" in text and not steps, steps  # CI installs through make
        return
    assert steps, f"{name} installs nothing?"
    for line in steps:
        assert ("--require-hashes" in line and "LOCK" in line.upper()) or "--no-deps" in line, f"{name}: {line.strip()}"


_IMPORTORSKIP = re.compile(r"""importorskip\(\s*["']([A-Za-z0-9_.]+)["']""")


def test_every_importorskipped_module_is_installed():
    """Tests skip (``pytest.importorskip``) when an optional module is missing, so that a
    bare checkout can run what it can; the dev environment has them all, so in CI nothing
    may skip for that reason: a module missing there would silently skip a whole suite.
    Each one is imported in a fresh interpreter (a failure names it)."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    modules = sorted({m for f in tests.glob("*.py") if f.name != Path(__file__).name
                      for m in _IMPORTORSKIP.findall(f.read_text())})
    assert "tritonclient.http" in modules, modules  # the scan finds them
    missing = {}
    for name in modules:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode:
            missing[name] = r.stderr.strip().splitlines()[-1:]
    assert not missing, f"importorskip'ed modules missing from this environment (run `make install-dev`): {missing}"
