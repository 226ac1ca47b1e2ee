# Two commands for a newcomer: `make demo` and `make test`. Both create .venv as needed.
# Installing elsewhere (a Jetson, the PyTorch CPU wheel index): docs/install.md.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
BIN := $(VENV)/bin
MACHINE := $(shell uname -m)
# The torch/torchvision pair for this platform; CONSTRAINTS=constraints/jetpack6.txt on a Jetson.
CONSTRAINTS ?= $(wildcard constraints/$(MACHINE).txt)
# With the JetPack 6 constraints, the torch, torchvision and jetson-stats already installed on the
# system are pinned as they are, so pip never replaces NVIDIA's builds (constraints/installed_pins.py).
PINS := $(if $(filter %jetpack6.txt,$(CONSTRAINTS)),build/installed-pins.txt,)
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),) $(if $(PINS),-c $(PINS),)
# More pip options, e.g. PIP_INDEX="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
PIP_INDEX ?=
# Optional extras beyond what each target needs, e.g. EXTRAS=jetson on a Jetson.
EXTRAS ?=
comma := ,
DEMO_SPEC := .$(if $(EXTRAS),[$(EXTRAS)],)
TEST_SPEC := .[dev,federated,serve$(if $(EXTRAS),$(comma)$(EXTRAS),)]
DEMO_STAMP := $(VENV)/.cotrain-demo$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)),)
TEST_STAMP := $(VENV)/.cotrain-test$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)),)
# The default suite leaves out the long end-to-end runs (marked slow); `make test-all` runs them too.
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo test test-all lint typecheck pytest clean

define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(PINS),mkdir -p build && $(PYTHON) constraints/installed_pins.py > $(PINS))
	$(BIN)/pip install --progress-bar off $(PIP_INDEX) $(PIP_CONSTRAINTS) -e '$(1)'
endef

$(DEMO_STAMP): pyproject.toml $(wildcard constraints/*.txt)
	$(call install,$(DEMO_SPEC))
	touch $@

$(TEST_STAMP): pyproject.toml $(wildcard constraints/*.txt)
	$(call install,$(TEST_SPEC))
	touch $@ $(DEMO_STAMP)

setup: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/cotrain run experiments/quickstart.yaml --duration 20 --out runs/demo --force

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cotrain workloads controllers power_modes tests experiments constraints

# mypy cannot follow setuptools' editable import hook, so it checks a link tree laid out as
# installed (cotrain/, cotrain/workloads -> workloads/, ...). Paths in its output read cotrain/<folder>/...
typecheck: $(TEST_STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/cotrain
	for f in cotrain/*; do ln -s "$(CURDIR)/$$f" build/typecheck/cotrain/; done
	for d in workloads controllers power_modes; do ln -s "$(CURDIR)/$$d" build/typecheck/cotrain/$$d; done
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p cotrain

pytest: $(TEST_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

test-all: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf build runs .pytest_cache .mypy_cache .ruff_cache
