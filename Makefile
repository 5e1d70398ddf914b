# Two fresh-machine entry points (see README): `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every dependency comes from a lock file (requirements/, see SECURITY.md), each file
# checked against its hash; `make lock` regenerates them from the pyproject.toml files.
SERVICE_LOCK := requirements/service.lock
DEV_LOCK := requirements/dev.lock
TOOLS_LOCK := requirements/tools.lock
HASH := $(shell cat pyproject.toml client/pyproject.toml $(SERVICE_LOCK) $(DEV_LOCK) 2>/dev/null | sha1sum | cut -c1-12)
STAMP_RUN := $(VENV)/.installed-run-$(HASH)
STAMP_DEV := $(VENV)/.installed-dev-$(HASH)
TOOLS ?= .venv-tools

export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install install-dev run test grpc-gen bench bench-kernels bench-service bench-eval bench-mlserver bench-wire bench-targets bench-scaling bench-image image run-image loadtest lock lock-upgrade audit clean

# The venv keeps the pip that comes with Python: nothing is fetched that no lock names.
$(BIN)/python:
	$(PY) -m venv $(VENV)

# `make run` needs only the service's own dependencies. The project itself installs without
# dependencies or build isolation: its build backend (setuptools) is in the lock too.
$(STAMP_RUN): pyproject.toml $(SERVICE_LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q --require-hashes -r $(SERVICE_LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP_RUN)

# The test, bench, load and eval extras and the client's dependencies with its grpc extra
# (the load tests use the client's OIP framing, the client's tests every transport): one
# lock, a superset of the service's with the same versions.
$(STAMP_DEV): pyproject.toml client/pyproject.toml $(DEV_LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . -e ./client
	touch $(STAMP_DEV) $(STAMP_RUN)

install: $(STAMP_RUN)
install-dev: $(STAMP_DEV)

# Serves on 127.0.0.1:8000 (LOSSD_* variables or flags after `lossd serve` change it).
run: $(STAMP_RUN)
	$(BIN)/lossd serve

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -q

# Every benchmark, then BENCHMARKS.md and its plots (docs/bench/) from their results.
# bench/scaling.py (1 vs 2 workers) runs when it exists.
bench: $(STAMP_DEV)
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/oip.py
	$(BIN)/python bench/wire.py
	if [ -f bench/scaling.py ]; then $(BIN)/python bench/scaling.py; fi
	$(BIN)/python -m loadtests sweep --out bench/out/capacity
	@# a missed goal is a result for the report, not a reason to stop (failed requests are too)
	-$(BIN)/python -m loadtests goals --out bench/out/goals
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/report.py

bench-kernels: $(STAMP_DEV)
	$(BIN)/python bench/kernels.py

bench-service: $(STAMP_DEV)
	$(BIN)/python bench/service.py

# `lossd eval` on a 10^8-row Parquet file (generated once into /tmp/lossd-bench-eval), with
# Spark's evaluator beside it: PySpark goes in a venv of its own (bench/.venv-spark), as
# MLServer does; `make bench` runs bench/eval.py without it (its Spark cell says so).
bench-eval: $(STAMP_DEV)
	bash bench/spark_setup.sh
	$(BIN)/python bench/eval.py

# lossd against MLServer over OIP JSON (issue 14). MLServer goes in a venv of its own
# (bench/.venv-mlserver, pinned in the script), never in this project's venv or locks;
# `make bench` does not run this.
bench-mlserver: $(STAMP_DEV)
	bash bench/mlserver_setup.sh
	$(BIN)/python bench/mlserver.py

# The wire table: every transport against the in-process kernel, with MLServer beside it
# when bench/.venv-mlserver exists (`make bench-mlserver` makes it).
bench-wire: $(STAMP_DEV)
	$(BIN)/python bench/wire.py

# Deployment figures (README, Deploy): portable CPU levels against host-tuned kernels,
# 1 vs 2 workers under wrk (installed from Debian's packages when missing), image start.
bench-targets: $(STAMP_DEV)
	$(BIN)/python bench/cpu_targets.py

bench-scaling: $(STAMP_DEV)
	$(BIN)/python bench/scaling.py

bench-image: $(STAMP_DEV) image
	$(BIN)/python bench/container_start.py --image $(IMAGE)

# The container image (see the README's Deploy section). deploy/docker-setup.sh installs
# Debian's docker.io and starts dockerd where no engine runs (it says so); base-image.sh makes
# debian:bookworm-slim locally when the registry is unreachable; wheelhouse.sh downloads the
# wheels outside the build (pip inside a build may not trust the network's certificate).
IMAGE ?= lossd:latest
PORT = $(or $(LOSSD_PORT),8000)

image:
	@deploy/docker-setup.sh || { echo "make image: no Docker engine can run here (reason above)" >&2; exit 1; }
	deploy/base-image.sh
	PY=$(PY) deploy/wheelhouse.sh
	DOCKER_BUILDKIT=$(or $(DOCKER_BUILDKIT),$(shell docker buildx version >/dev/null 2>&1 && echo 1 || echo 0)) \
	  docker build -t $(IMAGE) .
	@docker image inspect -f 'make image: {{index .RepoTags 0}}, {{.Size}} bytes' $(IMAGE)

# Read-only root and a tmpfs /tmp, as in Kubernetes; every LOSSD_* variable of this shell
# passes through (LOSSD_HOST excepted: the container binds 0.0.0.0, published on 127.0.0.1).
run-image:
	docker run --rm $(if $(shell test -t 0 && echo y),-it) --read-only --tmpfs /tmp \
	  -p 127.0.0.1:$(PORT):$(PORT) \
	  $(foreach v,$(filter-out LOSSD_HOST,$(filter LOSSD_%,$(.VARIABLES))),-e $(v)) $(IMAGE)

# A load test against a lossd it starts (2 workers, the mixed profile, 50 users, 60 s);
# e.g. make loadtest LOADTEST_ARGS="--users 20 --run-time 30 --budgets small_loss:p99=5"
loadtest: $(STAMP_DEV)
	$(BIN)/python -m loadtests $(LOADTEST_ARGS)

# The lock files, from pyproject.toml and client/pyproject.toml (pip-compile, hashes of every
# file PyPI and this machine's package sources hold for each pinned version). Existing pins
# are kept; `make lock-upgrade` moves every pin to the newest allowed version. The dev lock
# is resolved first and the service lock from its pins, so both hold the same versions.
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-find-links --no-emit-index-url --no-emit-trusted-host
COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile $(LOCK_FLAGS)

$(TOOLS)/.installed: $(TOOLS_LOCK)
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --require-hashes -r $(TOOLS_LOCK)
	touch $@

lock: $(TOOLS)/.installed
	$(COMPILE) $(LOCK_UPGRADE) --all-build-deps --extra test --extra bench --extra load --extra eval --extra grpc \
	  -o $(DEV_LOCK) pyproject.toml client/pyproject.toml
	cp $(DEV_LOCK) $(SERVICE_LOCK)
	$(COMPILE) --all-build-deps -o $(SERVICE_LOCK) pyproject.toml
	$(COMPILE) $(LOCK_UPGRADE) -o $(TOOLS_LOCK) requirements/tools.in

lock-upgrade:
	$(MAKE) lock LOCK_UPGRADE=--upgrade

# service/grpc_gen/ and client/lossd_client/grpc_gen/: messages and stubs of KServe's
# grpc_predict_v2.proto (OIP over gRPC; the one .proto is service/grpc_gen's), by the tools
# venv's grpcio-tools; committed, so neither building nor running needs protoc. The client
# gets a copy of its own because it must not import the service (tests/test_client_transports
# .py checks that both copies hold the same descriptor). The import is made relative (protoc
# writes `import grpc_predict_v2_pb2`), and the messages go in a descriptor pool of their own:
# tritonclient.grpc (or KServe), the service's copy and the client's in one process each
# register the same inference.* names, and a second one in the default pool would fail.
GRPC_GEN_DIRS := service/grpc_gen client/lossd_client/grpc_gen
grpc-gen: $(TOOLS)/.installed
	for d in $(GRPC_GEN_DIRS); do \
	  $(TOOLS)/bin/python -m grpc_tools.protoc -Iservice/grpc_gen --python_out=$$d --pyi_out=$$d \
	    --grpc_python_out=$$d service/grpc_gen/grpc_predict_v2.proto && \
	  sed -i 's/^import grpc_predict_v2_pb2 as/from . import grpc_predict_v2_pb2 as/' \
	    $$d/grpc_predict_v2_pb2_grpc.py && \
	  sed -i 's/_descriptor_pool\.Default()/_descriptor_pool.DescriptorPool()/' $$d/grpc_predict_v2_pb2.py && \
	  grep -q '_descriptor_pool.DescriptorPool()' $$d/grpc_predict_v2_pb2.py || exit 1; \
	done

# Known vulnerabilities of every locked version (pip-audit). Needs a vulnerability database:
# PyPI's JSON API (the default) or OSV (AUDIT_FLAGS="--vulnerability-service osv"), which
# these machines cannot reach. --strict: a package that could not be looked up fails the
# audit (without it pip-audit skips it and still says "No known vulnerabilities found").
AUDIT_FLAGS ?=
audit: $(TOOLS)/.installed
	$(TOOLS)/bin/pip-audit --strict --require-hashes --disable-pip $(AUDIT_FLAGS) -r $(SERVICE_LOCK)
	$(TOOLS)/bin/pip-audit --strict --require-hashes --disable-pip $(AUDIT_FLAGS) -r $(DEV_LOCK)
	$(TOOLS)/bin/pip-audit --strict --require-hashes --disable-pip $(AUDIT_FLAGS) -r $(TOOLS_LOCK)

clean:
	rm -rf $(VENV) $(TOOLS) .numba_cache .pytest_cache build deploy/wheelhouse/*.whl
