# vitlab: `make demo` and `make test` work on a fresh machine: they create .venv, install vitlab and the data they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VITLAB := $(VENV)/bin/vitlab
STAMP := $(VENV)/.vitlab-installed
# torch/torchvision builds this set-up uses (pip takes them from this machine's local disk); the package metadata
# itself only asks for torch>=2.4.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export VITLAB_DATA ?= $(HOME)/.cache/vitlab

.PHONY: install data demo test lint bench clean

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q $(TORCH_SPEC) && \
	$(PY) -m pip install -q -e ".[dev]" && \
	echo "install took $$(( $$(date +%s) - start )) s"
	@touch $@

install: $(STAMP)

data: install
	$(VITLAB) data install fashion_mnist
	$(VITLAB) data install mnist

demo: data
	$(VITLAB) demo

test: data
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q --durations=15 --doctest-modules tests src/vitlab

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: data
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
