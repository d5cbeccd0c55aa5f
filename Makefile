# Two commands for a newcomer:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build on machines without a GPU; override, e.g. TORCH_SPEC='torch' on a CUDA node.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Extra `invattn demo` overrides, e.g. DEMO_ARGS="train.epochs=3" (tests/test_newcomer.py uses a short one).
DEMO_ARGS ?=

.PHONY: install demo test bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/invattn demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/simulator.py

clean-demo:
	rm -rf data/nbody_demo results/demo
