# lossd service image: Debian bookworm's Python, the project in a venv at /opt/lossd, kernels
# compiled at build time for the x86-64-v2/v3/v4 levels (ready in seconds on any x86-64
# host), non-root, read-only root filesystem friendly (writes go to /tmp only).
#   docker build -t lossd .      (an ordinary machine: pip installs from PyPI)
#   make image                    (also where the registry and pip's TLS are not available:
#                                  see deploy/ and the README's Deploy section)
ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- deps: venv + dependencies
FROM ${BASE_IMAGE} AS deps
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/lossd
# Exactly the service's lock file, every file checked against its hash: this layer survives
# source edits. Wheels in deploy/wheelhouse/ (if any) are used offline; otherwise PyPI.
COPY deploy/wheelhouse/ /wheelhouse/
COPY requirements/service.lock /src/requirements/
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi \
 && /opt/lossd/bin/pip install -q --require-hashes "$@" -r /src/requirements/service.lock

# ---------------------------------------------------------------- bake: compiled kernels
# Only the kernels, at the path pip installs them to (Numba keys its cache by the source
# file's folder and content): editing the service or the README reuses this layer.
FROM deps AS bake
ARG SITE=/opt/lossd/lib/python3.11/site-packages
COPY lossd/ ${SITE}/lossd/
COPY kernels/ ${SITE}/lossd/kernels/
# Every signature for each x86-64 level, one process per level, in parallel.
RUN NUMBA_CACHE_DIR=/tmp/bake /opt/lossd/bin/python -m lossd.bake --dest /opt/lossd/numba-cache \
 && chmod -R a+rX,go-w /opt/lossd/numba-cache

# ---------------------------------------------------------------- build: the project
FROM deps AS build
COPY pyproject.toml README.md /src/
COPY lossd/ /src/lossd/
COPY kernels/ /src/kernels/
COPY service/ /src/service/
# No dependency left to fetch; then drop what only installing needed, and test suites.
RUN /opt/lossd/bin/pip install -q --no-deps --no-build-isolation --no-index /src \
 && /opt/lossd/bin/pip uninstall -q -y setuptools pip \
 && find /opt/lossd/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin lossd
COPY --from=build /opt/lossd /opt/lossd
COPY --from=bake /opt/lossd/numba-cache /opt/lossd/numba-cache
# At start the kernels pick the best level this CPU runs (LOSSD_CPU_TARGET=portable) and
# link that level's baked folder into NUMBA_CACHE_DIR, a tmpfs under --read-only: loaded,
# not compiled.
ENV PATH=/opt/lossd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOSSD_HOST=0.0.0.0 \
    LOSSD_PORT=8000 \
    LOSSD_CPU_TARGET=portable \
    LOSSD_BAKED_CACHE=/opt/lossd/numba-cache \
    NUMBA_CACHE_DIR=/tmp/lossd-numba
USER 10001:10001
WORKDIR /tmp
# 8001: OIP over gRPC, served when LOSSD_GRPC_PORT=8001 is set (off by default)
EXPOSE 8000 8001
# /healthz: the process answers (readiness, /readyz, is for the orchestrator to poll).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOSSD_PORT', '8000'), timeout=2)"]
# tini as PID 1: forwards SIGTERM to `lossd serve` (graceful shutdown) and reaps zombies.
ENTRYPOINT ["/usr/bin/tini", "--", "lossd"]
CMD ["serve"]
