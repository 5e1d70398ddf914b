# Two fresh-machine entry points (see README): `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# Until the HTTP service exists, `make run` runs the kernel benchmark.
run: install
	$(BIN)/python bench/kernels.py

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/kernels.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
