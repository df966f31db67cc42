# The two commands a newcomer needs (README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast services

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	# The reference Kronos implementation is a test oracle only; its pins are old, so no deps.
	$(BIN)/python -m pip install --no-deps 'kronos-model-arch==0.1.0'
	touch $@

demo: setup
	$(BIN)/kronos-rolling demo

# The programs behind the integration tests' real services (PostgreSQL's binaries); installs,
# starts nothing: the tests start a throwaway cluster (and moto's S3) on free ports in temp
# folders and stop them. See scripts/test-services.sh.
services:
	bash scripts/test-services.sh

# Everything, with the slowest tests listed. Safe while the demo's server holds port 5000: every
# test uses free ports and its own KRONOS_HOME. Spread over TEST_WORKERS processes (pytest-xdist):
# one test at a time to whichever is free, a module's tests together where they share a
# module-scoped fixture (tests/conftest.py).
TEST_WORKERS ?= 2

test: setup services
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=30

# During development: tests/unit only (no servers, no processes, no training), under a minute.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"
