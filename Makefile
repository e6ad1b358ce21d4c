# Entry points: `make train` (a real meta-training run), `make test` (the whole suite, as CI)
# and `make test-fast` (the tests not marked slow).
# Each builds .venv on first use with the tested versions (requirements/constraints.txt);
# later calls reuse it. docs/install.md does the same by hand, or into any environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
PIP := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
ARGS ?=

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(PIP) torch torchvision cython setuptools wheel
	# learn2learn 0.2.0's sdist ships C made by an old Cython that Python 3.11 rejects:
	# rebuild it from its .pyx (build_ext), and skip its extras (qpth pins numpy<2, gsutil).
	$(PIP) --no-build-isolation --no-deps --config-settings=--global-option=build_ext learn2learn
	$(PIP) --no-build-isolation -e ".[sweeps,hf,timm,digits,dev]"
	touch $(STAMP)

.PHONY: install train test test-fast constraints
install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# The developer's tier: everything but the tests marked slow (real-data trainings, runs of
# several processes, sweeps); CI runs `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider $(ARGS)

# After upgrading a package in .venv and passing the tests: pin what was tested.
constraints: $(STAMP)
	{ sed -n '/^#/p' $(CONSTRAINTS); $(BIN)/python -m pip freeze --all --exclude-editable \
		| grep -viE '^(metalearn|pip)(==| @)'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
