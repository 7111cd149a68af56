# Two commands do all set-up on a fresh machine:
#   make run PROMPT="What is 17 + 25?"   answer a prompt with the embedded default model
#   make test                            the whole test suite (what CI runs)
# Everything installs into $(VENV) from the project's own files.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PROMPT ?= What is 17 + 25?
PYTEST_ARGS ?=

.PHONY: setup run test test-quick lint protos redis clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(wildcard client/pyproject.toml) | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev,bench]"
	if [ -f client/pyproject.toml ]; then $(PIP) install --quiet -e "./client[mcp]"; fi
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/powersampling reason "$(PROMPT)"

redis:
	scripts/ensure_redis.sh

test: setup redis
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: setup redis
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

protos: setup
	$(PY) scripts/gen_protos.py

lint: setup
	$(VENV)/bin/ruff check service client tests benchmarks
	$(VENV)/bin/ruff format --check service client tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
