# Two fresh-machine entry points (see README): `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml client/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
STAMP_RUN := $(VENV)/.installed-run-$(HASH)
STAMP_DEV := $(VENV)/.installed-dev-$(HASH)

export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install install-dev run test bench bench-kernels bench-service clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `make run` needs only the service's own dependencies (a plain `pip install .`).
$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(STAMP_RUN)

$(STAMP_DEV): pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]' -e ./client
	touch $(STAMP_DEV) $(STAMP_RUN)

install: $(STAMP_RUN)
install-dev: $(STAMP_DEV)

# Serves on 127.0.0.1:8000 (LOSSD_* variables or flags after `lossd serve` change it).
run: $(STAMP_RUN)
	$(BIN)/lossd serve

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -q

bench: bench-kernels bench-service

bench-kernels: $(STAMP_DEV)
	$(BIN)/python bench/kernels.py

bench-service: $(STAMP_DEV)
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
