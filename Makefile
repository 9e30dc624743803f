# Two commands do all set-up on a fresh machine (Python 3.11+, make):
#   make train   create .venv, install charrnn, run the main job
#   make test    create .venv, install charrnn with its test extras, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Stamps: reinstall only when pyproject.toml changes.
CORE   := $(VENV)/.installed-core
TEST   := $(VENV)/.installed-test

.PHONY: train test sweep ui clean

train: $(CORE)
	$(BIN)/charrnn-train

# One BLAS thread per xdist worker: two workers already fill two cores, and oversubscribed BLAS
# threads make the engine's small matmuls about ten times slower.
test: $(TEST)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

sweep: $(CORE)
	$(BIN)/charrnn-train experiment=grid hydra/launcher=joblib

ui: $(CORE)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(CORE)

clean:
	rm -rf outputs multirun mlruns .pytest_cache
