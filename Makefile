# Two commands for a newcomer: `make demo` and `make test`. Both create .venv as needed.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
BIN := $(VENV)/bin
MACHINE := $(shell uname -m)
# The torch/torchvision pair for this platform; override with CONSTRAINTS= on a Jetson (see README).
CONSTRAINTS ?= $(wildcard constraints/$(MACHINE).txt)
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.cotrain-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck pytest clean

$(STAMP): pyproject.toml $(wildcard constraints/*.txt)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install --progress-bar off $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/cotrain run experiments/quickstart.yaml --duration 20 --out runs/demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cotrain workloads controllers power_modes tests experiments

# mypy cannot follow setuptools' editable import hook, so it checks a link tree laid out as
# installed (cotrain/, cotrain/workloads -> workloads/, ...). Paths in its output read cotrain/<folder>/...
typecheck: setup
	rm -rf build/typecheck && mkdir -p build/typecheck/cotrain
	for f in cotrain/*; do ln -s "$(CURDIR)/$$f" build/typecheck/cotrain/; done
	for d in workloads controllers power_modes; do ln -s "$(CURDIR)/$$d" build/typecheck/cotrain/$$d; done
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p cotrain

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf build runs .pytest_cache .mypy_cache .ruff_cache
