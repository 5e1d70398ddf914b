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

platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

# the image's dependencies are exactly the service's lock (setuptools, which builds lossd,
# included); pip checks every file against the lock's hashes
"$PY" -m pip download -q --disable-pip-version-check --dest "$DEST" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "${platforms[@]}" --require-hashes -r requirements/service.lock
echo "wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST" >&2
