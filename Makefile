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

# Services the integration tests talk to for real (PostgreSQL); see scripts/test-services.sh.
services:
	bash scripts/test-services.sh

test: setup services
	$(BIN)/python -m pytest

# During development: tests/unit only (no servers, no processes, no training), under a minute.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"
