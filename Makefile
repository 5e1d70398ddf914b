# Two fresh-machine entry points (see README): `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml client/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
STAMP_RUN := $(VENV)/.installed-run-$(HASH)
STAMP_DEV := $(VENV)/.installed-dev-$(HASH)
STAMP_LOAD := $(VENV)/.installed-load-$(HASH)

export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install install-dev run test bench bench-kernels bench-service loadtest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `make run` needs only the service's own dependencies (a plain `pip install .`).
$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(STAMP_RUN)

$(STAMP_DEV): pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench,load]' -e ./client
	touch $(STAMP_DEV) $(STAMP_RUN) $(STAMP_LOAD)

# locust and what the load tests use (the client's OIP framing among them)
$(STAMP_LOAD): pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[load]' -e ./client
	touch $(STAMP_LOAD) $(STAMP_RUN)

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
	if [ -f bench/scaling.py ]; then $(BIN)/python bench/scaling.py; fi
	$(BIN)/python -m loadtests sweep --out bench/out/capacity
	@# a missed goal is a result for the report, not a reason to stop (failed requests are too)
	-$(BIN)/python -m loadtests goals --out bench/out/goals
	$(BIN)/python bench/report.py

bench-kernels: $(STAMP_DEV)
	$(BIN)/python bench/kernels.py

bench-service: $(STAMP_DEV)
	$(BIN)/python bench/service.py

# A load test against a lossd it starts (2 workers, the mixed profile, 50 users, 60 s);
# e.g. make loadtest LOADTEST_ARGS="--users 20 --run-time 30 --budgets small_loss:p99=5"
loadtest: $(STAMP_LOAD)
	$(BIN)/python -m loadtests $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
