#!/usr/bin/env bash
# MLServer's own venv for bench/mlserver.py: bench/.venv-mlserver (gitignored), never the
# project's venv and never its locks or CI (MLServer is a benchmark reference only).
# Idempotent: does nothing when the pinned version is already installed there.
# Prints the installed version last.
#
#   bash bench/mlserver_setup.sh            # MLSERVER_VERSION, MLSERVER_VENV, PY override
#
# MLSERVER_EXTRA: more packages for that venv (pip names, space-separated), e.g.
# MLSERVER_EXTRA=httptools==0.9.0 MLSERVER_VENV=bench/.venv-mlserver-httptools: `pip install mlserver`
# leaves uvicorn on its pure-Python h11 parser; with httptools uvicorn picks the C parser
# that lossd's `uvicorn[standard]` stack uses (bench/mlserver.py records which one ran).
#
# mlserver 1.7.1 supports Python >= 3.9, < 3.13 (its pyproject.toml).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MLSERVER_VENV:-$HERE/.venv-mlserver}"
VERSION="${MLSERVER_VERSION:-1.7.1}"
PY="${PY:-python3}"

installed() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/mlserver" ] &&
        "$VENV/bin/python" - "$VERSION" <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("mlserver") == sys.argv[1] else 1)
PYEOF
}

if installed; then
    echo "mlserver $VERSION already installed in $VENV" >&2
else
    echo "installing mlserver==$VERSION into $VENV ..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "mlserver==$VERSION"
    installed || { echo "mlserver $VERSION did not install in $VENV" >&2; exit 1; }
fi
if [ -n "${MLSERVER_EXTRA:-}" ]; then
    # shellcheck disable=SC2086  # word splitting wanted: a list of package names
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $MLSERVER_EXTRA
fi
"$VENV/bin/python" -c 'import importlib.metadata as m, platform; print("mlserver", m.version("mlserver"), "(Python " + platform.python_version() + ")")'
