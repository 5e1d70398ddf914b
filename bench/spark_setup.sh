#!/usr/bin/env bash
# PySpark's own venv for bench/eval.py's Spark cell: bench/.venv-spark (gitignored), never the
# project's venv, locks or CI (Spark is a benchmark reference only, and PySpark is a 456 MB
# source distribution that bundles Spark's jars). Needs a Java runtime (`java -version`;
# Spark 4 wants Java 17 or 21). Idempotent: does nothing when the pinned version is there.
# Prints the installed version last.
#
#   bash bench/spark_setup.sh            # SPARK_VERSION, SPARK_VENV, PY override
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SPARK_VENV:-$HERE/.venv-spark}"
VERSION="${SPARK_VERSION:-4.3.0}"
PY="${PY:-python3}"

command -v java >/dev/null || { echo "spark_setup: no java on PATH (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

installed() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$VERSION" <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
import numpy, pyspark.ml  # the evaluator needs numpy
sys.exit(0 if m.version("pyspark") == sys.argv[1] else 1)
PYEOF
}

if installed; then
    echo "pyspark $VERSION already installed in $VENV" >&2
else
    echo "installing pyspark==$VERSION into $VENV (a 456 MB download, then a wheel build) ..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "pyspark==$VERSION" numpy
    installed || { echo "pyspark $VERSION did not install in $VENV" >&2; exit 1; }
fi
"$VENV/bin/python" -c 'import importlib.metadata as m, platform; print("pyspark", m.version("pyspark"), "(Python " + platform.python_version() + ")")'
