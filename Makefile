# Two entry points: `make train` (a real meta-training run) and `make test`.
# Each builds .venv on first use; later calls reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1 cython setuptools wheel
	# learn2learn 0.2.0's sdist ships C made by an old Cython that Python 3.11 rejects:
	# rebuild it from its .pyx (build_ext), and skip its heavy extras (qpth pins numpy<2).
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps \
		--config-settings=--global-option=build_ext learn2learn==0.2.0
	$(BIN)/python -m pip install -q numpy scipy requests tqdm gym pillow
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	$(BIN)/python -m pip install -q hydra-core omegaconf wandb pytest
	# sweeps: optuna<3 keeps hydra-optuna-sweeper at 1.3.0; sqlalchemy<2 for its sqlite storage
	$(BIN)/python -m pip install -q hydra-optuna-sweeper==1.3.0 optuna==2.10.1 "sqlalchemy<2" \
		"alembic<1.14" hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 matplotlib
	touch $(STAMP)

.PHONY: install train test
install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)
