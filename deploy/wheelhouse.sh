#!/usr/bin/env bash
# Download the wheels the image installs into deploy/wheelhouse/, with this machine's pip
# (which trusts the network's certificate; pip inside a build here does not). The
# Dockerfile installs from that folder, offline, whenever it holds wheels; where it is
# empty (an ordinary machine), the build installs from PyPI itself.
# Wheels are for the image's interpreter (Debian bookworm: CPython 3.11, glibc 2.36, x86-64),
# whatever Python runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=deploy/wheelhouse
PY=${PY:-python3}

reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
# the runtime dependencies, read from pyproject.toml (one source of truth), and what builds lossd
"$PY" - "$reqs" <<'PYEOF'
import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
build = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
open(sys.argv[1], "w").write("\n".join([*deps, *build, "wheel"]) + "\n")
PYEOF

platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

"$PY" -m pip download -q --disable-pip-version-check --dest "$DEST" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "${platforms[@]}" -r "$reqs"
echo "wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST" >&2
